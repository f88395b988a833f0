"""Which engine solved what (issue 22): the default portfolio ``auto`` and its routing table,
``ortools`` = OR-Tools only, mitm's reach as one number, every row's engine in report.json, and
run folders written before ``auto`` existed (solver "ortools") that still resume and read."""
from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from subsetsum_lth import limits
from subsetsum_lth.cli import main
from subsetsum_lth.manifest import sha256_file
from subsetsum_lth.solvers import mitm, portfolio
from subsetsum_lth.solvers.instances import InstanceBatch, Status
from subsetsum_lth.solvers.registry import DEFAULT_SOLVER, get_backend
from subsetsum_lth.target import random_target, save_target
from tests.helpers import FAULT_ENV, subprocess_env

ROOT = Path(__file__).resolve().parents[1]
#: a run whose blocks grow past exact search's reach (a bias of -8: fix-and-search answers those)
ARGS = ["--weight-eps", "0.02", "--workers", "1", "--batch-size", "16", "--no-progress", "--no-plots",
        "--samples", "16", "--steps", "5", "--seed", "3"]


@pytest.fixture(scope="module")
def target(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("engines") / "t.safetensors"
    t = random_target((10, 6, 3), bias=True, seed=4)
    t.layers[0].bias[0] = -8.0          # far outside [-1, 1]: its block grows beyond 40 live units
    save_target(t, path)
    return path


def _approximate(target, out, *extra, env=None):
    return subprocess.run([sys.executable, "-m", "subsetsum_lth", "approximate", "--target", str(target),
                           "--out", str(out), *ARGS, *extra], capture_output=True, text=True, timeout=300,
                          env=subprocess_env(**(env or {})))


def test_default_is_auto_and_every_row_records_its_engine(target, tmp_path, capsys):
    assert DEFAULT_SOLVER == "auto"
    out = tmp_path / "run"
    assert main(["approximate", "--target", str(target), "--out", str(out), *ARGS]) == 0
    printed = capsys.readouterr().out
    rep = json.loads((out / "report.json").read_text())
    assert rep["solver"] == "auto"
    eng = rep["engines"]
    assert sum(eng["total"].values()) == rep["instances"]
    assert [sum(d.values()) for d in eng["per_layer"]] == [L["instances"] for L in rep["layers"]]
    assert eng["total"]["mitm"] > 0 and eng["total"]["fixsearch"] >= 1     # the grown bias row
    assert rep["beyond_exact_count"] >= 1
    line = next(ln for ln in printed.splitlines() if ln.startswith("engines: "))
    assert f"mitm {eng['total']['mitm']:,}" in line and "fixsearch" in line
    assert main(["certify", str(out)]) == 0           # the counts pass certify's audit


def test_certify_checks_that_engine_counts_sum_to_the_instances():
    from subsetsum_lth.report_check import Audit, _engine_counts
    rep = {"instances": 5, "layers": [{"instances": 3}, {"instances": 2}],
           "engines": {"total": {"mitm": 4, "fixsearch": 1}, "per_layer": [{"mitm": 2, "fixsearch": 1}, {"mitm": 2}]}}
    a = Audit()
    _engine_counts(a, rep)
    assert a.mismatches == [] and len(a.checked) == 4
    rep["engines"]["per_layer"][1] = {"mitm": 3}                # one instance too many
    a = Audit()
    _engine_counts(a, rep)
    assert {m["field"] for m in a.mismatches} == {"engines.per_layer[1] (sum)", "engines.total"}


def test_solvers_prints_autos_routing_table(capsys):
    assert main(["solvers"]) == 0
    out = capsys.readouterr().out
    assert "auto routes each instance" in out
    assert f"error        n = 0..{mitm.MAX_N}    -> mitm" in out
    assert main(["solvers", "--json"]) == 0
    info = {b["name"]: b for b in json.loads(capsys.readouterr().out)}
    assert info["auto"]["routing"] == portfolio.routing_table()
    assert info["auto"]["default"] and info["mitm"]["reach"] == mitm.MAX_N == info["mitm"]["max_n"]
    assert info["ortools"]["reach"] is None
    # the table covers every live count of every objective, without overlap
    for objective in ("error", "feasible", "cardinality"):
        rows = [r for r in portfolio.ROUTES if r.objective == objective]
        assert rows[0].lo == 0 and rows[-1].hi is None
        assert all(a.hi + 1 == b.lo for a, b in zip(rows, rows[1:]))


def test_mitm_reach_is_one_number_and_what_it_enumerates():
    assert mitm.MeetInTheMiddleSolver.capabilities.max_n == mitm.MAX_N == limits.EXACT_MAX_N == 40
    assert limits._solver_reach("mitm") == limits._solver_reach("auto") == mitm.MAX_N
    rng = np.random.default_rng(0)
    n = 36                                   # beyond the 34 mitm advertised before: it enumerates it
    coef = np.zeros((3, 41))
    coef[:2, :n] = rng.uniform(-1, 1, (2, n))
    coef[2] = rng.uniform(-1, 1, 41)
    batch = InstanceBatch(np.arange(3), np.array([0.3, -0.7, 0.1]), coef, np.array([n, n, 41]), 1e-3)
    res = get_backend("mitm").solve(batch)
    assert list(res.status[:2]) == [Status.OPTIMAL, Status.OPTIMAL]
    assert res.status[2] == Status.ERROR and f"n <= {mitm.MAX_N}" in res.messages[2]


def _rewrite_as_old_version(run: Path, report: bool) -> None:
    """Edit a run folder back to the form the version before 'auto' wrote: solver "ortools" in
    run_config.json (no "solver_names"), and in report.json (no "engines"); stored batches
    without their engines; the manifest's hashes to match, as that version wrote them."""
    names = ["run_config.json"] + (["report.json"] if report else [])
    for name in names:
        doc = json.loads((run / name).read_text())
        doc["solver"] = "ortools"
        doc.pop("solver_names", None)
        doc.pop("engines", None)
        (run / name).write_text(json.dumps(doc, indent=2))
    for npz in sorted((run / "partial").glob("*.npz")):
        with np.load(npz, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files if k != "engines"}
        arrays["solver"] = np.array("ortools")
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        npz.write_bytes(buf.getvalue())
    m = json.loads((run / "manifest.json").read_text())
    for name in names:
        digest, size = sha256_file(run / name)
        m["files"][name] = {"sha256": digest, "size": size}
    (run / "manifest.json").write_text(json.dumps(m, indent=2))


def _in_process(target, out, *extra) -> int:
    return main(["approximate", "--target", str(target), "--out", str(out), *ARGS, *extra])


def test_an_old_interrupted_ortools_run_resumes_as_auto(target, tmp_path, caplog, capsys):
    ref = tmp_path / "ref"
    assert _in_process(target, ref) == 0
    cut = tmp_path / "cut"
    p = _approximate(target, cut, env={FAULT_ENV: "2"})
    assert p.returncode == 137, p.stderr[-500:]          # killed after 2 stored batches
    _rewrite_as_old_version(cut, report=False)
    stored = sorted(p.name for p in (cut / "partial").glob("*.npz"))
    # --solver ortools means OR-Tools only now: refused in one line that says what the old name ran
    assert _in_process(target, cut, "--resume", "--solver", "ortools") == 2
    err = capsys.readouterr().err
    assert "solver: was 'auto', now 'ortools'" in err and "called 'auto' now" in err and "Traceback" not in err
    assert sorted(p.name for p in (cut / "partial").glob("*.npz")) == stored      # nothing lost
    assert _in_process(target, cut, "--resume") == 0     # the default solver: auto
    assert "resume: " in caplog.text                     # the old folder's stored batches were found
    assert (cut / "masks.safetensors").read_bytes() == (ref / "masks.safetensors").read_bytes()
    rep = json.loads((cut / "report.json").read_text())
    assert rep["solver"] == "auto" and sum(rep["engines"]["total"].values()) == rep["instances"]
    assert main(["certify", str(cut)]) == 0


def test_an_old_finished_ortools_run_reads_and_resumes(target, tmp_path, caplog):
    run = tmp_path / "old"
    assert _in_process(target, run) == 0
    _rewrite_as_old_version(run, report=True)
    assert main(["certify", str(run)]) == 0              # 'ortools' in both files: the portfolio
    from subsetsum_lth.api import load_run
    assert load_run(run).report["solver"] == "ortools"
    from subsetsum_lth.compare import _describe, _read_runs     # compare's reader (its data needs 784 inputs)
    runs = _read_runs([run, run], ["a", "b"])
    assert _describe(runs.reports[0]) == "subset-sum ortools τ=0.02"
    import logging
    caplog.set_level(logging.INFO)
    assert _in_process(target, run, "--resume") == 0
    assert "already complete" in caplog.text
    assert main(["certify", str(run)]) == 0


def test_explicit_ortools_is_or_tools_only(tmp_path):
    out = tmp_path / "run"
    t = tmp_path / "t.safetensors"
    save_target(random_target((6, 4, 2), bias=True, seed=1), t)
    assert main(["approximate", "--target", str(t), "--out", str(out), "--solver", "ortools",
                 "--width", "formula", "--block-width", "8", *ARGS, "--allow-infeasible"]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["solver"] == "ortools"
    assert set(rep["engines"]["total"]) <= {"ortools", "mitm"} and rep["engines"]["total"].get("ortools", 0) > 0


def test_auto_batches_hash_as_the_old_ortools_batches_did():
    """An old run folder's partial/ names each finished batch by the sha256 the version before
    'auto' computed (label "ortools"); auto's batches must hash the same to be found on --resume,
    and today's OR-Tools-only ortools must not find them."""
    import hashlib

    from subsetsum_lth.solve import batch_digest
    rng = np.random.default_rng(1)
    b = InstanceBatch(np.arange(4), rng.uniform(-1, 1, 4), rng.uniform(-1, 1, (4, 9)), None, 0.01)
    old = hashlib.sha256(b"ortools|error|")          # the old formula, written out
    for a in (b.ids, b.targets, b.coefficients, b.counts, b.tolerances):
        old.update(np.ascontiguousarray(a).tobytes())
    assert batch_digest("auto", b) == old.hexdigest()
    assert batch_digest("ortools", b) != old.hexdigest()


def test_fallback_overwrites_the_engine_of_the_rows_it_solves(monkeypatch):
    """A backend (a plug-in) that leaves rows ERROR: the fallback (mitm) re-solves them, and those
    rows -- only those -- record mitm."""
    from subsetsum_lth.solve import SolveConfig, solve_all
    from subsetsum_lth.solvers import registry
    from subsetsum_lth.solvers.base import Capabilities, SolverBackend
    from subsetsum_lth.solvers.instances import finalize

    class HalfBroken(SolverBackend):
        name = "half-broken"
        capabilities = Capabilities(exact=True, objectives=("error",))

        def solve(self, batch):
            t0, sel, status, messages = self.start(batch)
            status[::2] = Status.OPTIMAL          # claims the empty subset is optimal on even rows
            sel[::2] = False
            return finalize(batch, sel, status, self.name, 0.0, messages)

    monkeypatch.setitem(registry._extra, "half-broken", HalfBroken)
    rng = np.random.default_rng(2)
    b = InstanceBatch(np.arange(6), rng.uniform(-0.05, 0.05, 6), rng.uniform(-1, 1, (6, 8)), None, 10.0)
    res = solve_all(b, SolveConfig(solver="half-broken", workers=1))
    assert list(res.engines) == ["half-broken", "mitm"] * 3
    assert (res.status == Status.OPTIMAL).all()
