"""`subsetsum-lth bench`: output shape and agreement of exact backends (no timing assertions)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from subsetsum_lth.cli import main

ROW_FIELDS = {"backend", "objective", "instances", "seconds", "instances_per_second", "cores",
              "exact", "max_error_diff", "speedup_vs_baseline"}


def _bench_json(capsys, *args):
    code = main(["bench", "solvers", "--json", *args])
    out = capsys.readouterr().out
    assert code == 0
    return json.loads(out)


@pytest.mark.parametrize("objective", ["error", "cardinality"])
def test_bench_solvers_json_fields_and_agreement(capsys, objective):
    rows = _bench_json(capsys, "--n", "9", "--count", "24", "--baseline-count", "4",
                       "--objective", objective, "--time-budget", "20")
    names = [r["backend"] for r in rows]
    assert {"mitm", "ortools", "cpsat"} <= set(names)
    for r in rows:
        assert ROW_FIELDS <= set(r), set(ROW_FIELDS) - set(r)
        assert r["objective"] == objective and r["cores"] == 1
        assert r["instances"] >= 1 and r["seconds"] >= 0 and r["instances_per_second"] > 0
        if r["exact"]:
            assert r["max_error_diff"] is not None and r["max_error_diff"] <= 1e-9, r
        if objective == "cardinality" and r["exact"]:
            assert r["max_cardinality_diff"] == 0, r
    base = [r for r in rows if r["baseline"]]
    assert [r["backend"] for r in base] == ["cpsat"]
    assert base[0]["instances"] <= 4 and base[0]["speedup_vs_baseline"] == pytest.approx(1.0)
    fast = {r["backend"]: r for r in rows}
    assert fast["mitm"]["instances"] == 24 and fast["mitm"]["speedup_vs_baseline"] > 0


def test_bench_solvers_subset_targets_file_and_table(tmp_path, capsys):
    m = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    path = tmp_path / "t.pt"
    torch.save(m.state_dict(), path)
    rows = _bench_json(capsys, "--n", "6", "--count", "10", "--solvers", "mitm,ortools",
                       "--targets", str(path), "--baseline-count", "2", "--clock", "cpu")
    # the baseline is always timed along with the requested backends
    assert [r["backend"] for r in rows] == ["mitm", "ortools", "cpsat"]
    assert all(r["clock"] == "cpu" for r in rows)
    code = main(["bench", "solvers", "--n", "6", "--count", "10", "--solvers", "mitm",
                 "--baseline-count", "2"])
    out = capsys.readouterr().out
    assert code == 0
    for word in ("backend", "inst/s", "speedup", "mitm", "cpsat"):
        assert word in out


def test_bench_instances_look_like_the_construction():
    from subsetsum_lth.bench import SolverBenchConfig, draw_instances
    b = draw_instances(SolverBenchConfig(n=21, count=2000, seed=3))
    assert b.coefficients.shape == (2000, 21) and (b.counts == 21).all()
    assert np.abs(b.coefficients).max() <= 1.0 and np.abs(b.targets).max() <= 1.0
    # product of two independent U[-1,1]: E|c| = 1/4, symmetric
    assert abs(np.abs(b.coefficients).mean() - 0.25) < 0.01
    assert abs(b.coefficients.mean()) < 0.01
    again = draw_instances(SolverBenchConfig(n=21, count=2000, seed=3))
    np.testing.assert_array_equal(again.coefficients, b.coefficients)


def test_bench_bad_solver_is_a_clear_error(capsys):
    code = main(["bench", "solvers", "--count", "3", "--solvers", "nope"])
    assert code != 0
    assert "unknown solver" in capsys.readouterr().err


def test_bench_approximate_json(tmp_path, capsys):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))
    path = tmp_path / "target.pt"
    torch.save(m.state_dict(), path)
    code = main(["bench", "approximate", "--target", str(path), "--solver", "mitm", "--workers", "1",
                 "--out", str(tmp_path / "run"), "--no-plots", "--json"])
    out = capsys.readouterr().out
    assert code == 0
    rep = json.loads(out)
    for key in ("wall_seconds", "core_seconds", "peak_memory_mb", "timings", "instances"):
        assert key in rep
    assert set(rep["timings"]) >= {"build", "solve", "certify", "evaluate", "write"}
    assert rep["instances"] > 0 and rep["core_seconds"] > 0
    assert (tmp_path / "run" / "report.json").exists()
    assert rep["width"] == "adaptive"            # approximate's default
    run = json.loads((tmp_path / "run" / "report.json").read_text())
    assert {L["width_mode"] for L in run["layers"]} == {"adaptive"}


def test_bench_approximate_width_is_passed_on(tmp_path, capsys):
    """bench approximate --width auto times the Theorem 1 width's run (the README's auto rows)."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))
    path = tmp_path / "target.pt"
    torch.save(m.state_dict(), path)
    assert main(["bench", "approximate", "--target", str(path), "--solver", "mitm", "--workers", "1",
                 "--width", "auto", "--out", str(tmp_path / "run"), "--no-plots", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    run = json.loads((tmp_path / "run" / "report.json").read_text())
    assert rep["width"] == "auto" and {L["width_mode"] for L in run["layers"]} == {"auto"}
    assert [L["block_width"] for L in run["layers"]] == [L["formula_block_width"] for L in run["layers"]]


def test_bench_solvers_beyond_exact_search_several_sizes_and_options(capsys):
    """`--n 48,64` times the default auto backend (fix-and-search beyond n = 40) and its knapsack
    B&B (`auto[fixsearch=false]`, under --time-limit) on the same instances, in one command."""
    rows = _bench_json(capsys, "--n", "48,64", "--count", "6", "--solvers", "auto,auto[fixsearch=false]",
                       "--baseline-count", "1", "--time-budget", "1", "--time-limit", "0.2", "--clock", "cpu")
    got = {(r["backend"], r["n"]) for r in rows}
    assert got == {(b, n) for b in ("auto", "auto[fixsearch=false]", "cpsat") for n in (48, 64)}
    for r in rows:
        if r["backend"] == "auto":
            assert r["instances"] == 6 and r["optimal"] == 6 and r["instances_per_second"] > 0, r
    code = main(["bench", "solvers", "--n", "48", "--count", "2", "--solvers", "auto,auto[fixsearch=false;"
                 "time_limit=0.1]", "--baseline-count", "1", "--time-limit", "0.1"])
    out = capsys.readouterr().out
    assert code == 0 and "auto[fixsearch=false,time_limit=0.1]" in out and "within τ" in out


@pytest.mark.parametrize("spec,words", [
    ("ortools[fixsearh=false]", ("no option fixsearh", "fixsearch")),
    ("ortools[fixsearch]", ("is not key=value",)),
    ("ortools[fixsearch=false", ("cannot read", "NAME[key=value")),
])
def test_bench_solver_options_are_checked(capsys, spec, words):
    assert main(["bench", "solvers", "--n", "4", "--count", "2", "--solvers", spec]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for w in words:
        assert w in err, err
