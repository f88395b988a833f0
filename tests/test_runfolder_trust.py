"""Issue 11: a run folder is checked, not trusted; nothing stored is believed; the empirical
bound sees interior maxima and stores its witness. Every hostile case checks the exit code, the
one-line message, and that no file in the folder changed."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from subsetsum_lth import cli
from subsetsum_lth.errors import RunFolderError
from subsetsum_lth.target import Target, Layer, random_target, save_target
from tests.helpers import rebuild_g
from tests.helpers import FAULT_ENV, fault_env

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--workers", "1", "--no-plots", "--no-progress", "--solver", "mitm"]


def _env(**extra):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), MPLBACKEND="Agg")
    env.update(extra)
    return fault_env(env) if FAULT_ENV in extra else env


def _sub(*args, timeout=120, **env):
    return subprocess.run([sys.executable, "-m", "subsetsum_lth", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=_env(**env), cwd=ROOT)


def _snap(d: Path) -> dict:
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(d.rglob("*")) if p.is_file() and not p.is_symlink()}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    d = tmp_path_factory.mktemp("trust")
    tgt = d / "t342.safetensors"
    save_target(random_target([3, 4, 2], seed=1), tgt)
    run = d / "run"
    # --width auto: the expected messages below quote this run's widths (hidden_units 92)
    assert cli.main(["approximate", "--target", str(tgt), "--out", str(run), "--input-radius", "1", *FAST,
                     "--width", "auto"]) == 0
    return {"target": tgt, "run": run}


def _copy(base, tmp_path, name="run") -> Path:
    d = tmp_path / name
    shutil.copytree(base["run"], d)
    return d


def _certify(d: Path, capsys, *extra) -> tuple[int, str]:
    capsys.readouterr()
    rc = cli.main(["certify", str(d), "--samples", "64", "--steps", "10", *extra])
    return rc, capsys.readouterr().err.strip()


def _refused(d: Path, capsys, *words, extra=()):
    before = _snap(d)
    rc, err = _certify(d, capsys, *extra)
    assert rc == 2, err
    assert err.startswith("error: ") and "\n" not in err, err
    for w in words:
        assert w in err, (w, err)
    assert _snap(d) == before
    return err


def _append_layers(d: Path) -> None:
    for name in ("random_net.safetensors", "masks.safetensors"):
        st = load_file(str(d / name))
        mask = name.startswith("masks")
        for k in ("8", "10"):
            eye = torch.eye(2)
            st[f"{k}.weight"] = eye.to(torch.uint8) if mask else 10 * eye
            st[f"{k}.bias"] = torch.zeros(2, dtype=torch.uint8 if mask else torch.float32)
        save_file(st, str(d / name))


def _forge_manifest(d: Path, name: str) -> None:
    """Rewrite manifest.json so that it lists ``name`` with its current hash: an attacker who edits
    a file and its manifest entry, so that the content checks (not the manifest) must refuse it."""
    from subsetsum_lth.manifest import MANIFEST, sha256_file
    m = json.loads((d / MANIFEST).read_text())
    h, size = sha256_file(d / name)
    m["files"][name] = {**m["files"][name], "sha256": h, "size": size}
    (d / MANIFEST).write_text(json.dumps(m, indent=2) + "\n")


def _edit(d: Path, fn) -> None:
    r = json.loads((d / "report.json").read_text())
    fn(r)
    (d / "report.json").write_text(json.dumps(r))


# ----------------------------------------------------------------------------- layout

def test_appended_layers_refused_by_every_reader(base, tmp_path, capsys):
    from subsetsum_lth.api import export_pruned, masked_model
    from subsetsum_lth.compare import compare_runs
    from subsetsum_lth.edge_popup import EdgePopupConfig, load_random_net
    d = _copy(base, tmp_path)
    _append_layers(d)
    _refused(d, capsys, "random_net.safetensors has 6 Linear layers", "exactly 4", "recreate the run")
    before = _snap(d)
    for call in (lambda: masked_model(d), lambda: export_pruned(d),
                 lambda: load_random_net(EdgePopupConfig(from_run=str(d))),
                 lambda: compare_runs([d], tmp_path / "cmp", plots=False,
                                      data={"x": np.ones((4, 3), np.float32), "y": np.zeros(4, np.int64)})):
        with pytest.raises(RunFolderError, match="6 Linear layers"):
            call()
    assert _snap(d) == before and not (tmp_path / "cmp" / "comparison.json").exists()


def test_good_run_certify_and_masked_model_agree(base, tmp_path, capsys):
    from subsetsum_lth.api import masked_model
    from subsetsum_lth.target import load_target
    d = _copy(base, tmp_path)
    capsys.readouterr()
    assert cli.main(["certify", str(d), "--json", "--samples", "64", "--steps", "10"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["matches_report"] is True
    g = masked_model(d, torch.float64)
    t = load_target(d / "target.safetensors")
    x = torch.randn(4000, 3, dtype=torch.float64)
    x = x / x.norm(dim=1, keepdim=True)
    with torch.no_grad():
        assert float((t.forward(x) - g(x)).norm(dim=1).max()) <= res["certified_bound"]
        assert torch.allclose(g(x), rebuild_g(d)(x))


def test_relu_after_in_subset_sum_run_refused(base, tmp_path, capsys):
    from subsetsum_lth.api import masked_model
    d = _copy(base, tmp_path)
    _edit(d, lambda r: r.__setitem__("relu_after", [False, True, True]))
    _refused(d, capsys, "report.json", "'relu_after'", "subset-sum run")
    with pytest.raises(RunFolderError, match="relu_after"):
        masked_model(d)


def _mask_outside_block(d: Path) -> None:
    st = load_file(str(d / "masks.safetensors"))
    w = st["0.weight"].clone()
    w[0, :] = 0
    w[0, 1] = 1          # unit 0 belongs to block 0: an edge from input 1 is pre-pruned
    st["0.weight"] = w
    save_file(st, str(d / "masks.safetensors"))


def _drop(key):
    def f(d: Path) -> None:
        for name in ("random_net.safetensors", "masks.safetensors"):
            st = load_file(str(d / name))
            st.pop(key)
            save_file(st, str(d / name))
    return f


def _retype_mask(d: Path) -> None:
    st = load_file(str(d / "masks.safetensors"))
    st["0.weight"] = st["0.weight"].float()
    save_file(st, str(d / "masks.safetensors"))


def _mask_two(d: Path) -> None:
    st = load_file(str(d / "masks.safetensors"))
    st["2.weight"] = st["2.weight"] * 2
    save_file(st, str(d / "masks.safetensors"))


def _widen(d: Path) -> None:
    """Both files get one more hidden unit in layer 0: shapes no longer the recorded widths."""
    for name in ("random_net.safetensors", "masks.safetensors"):
        st = load_file(str(d / name))
        st["0.weight"] = torch.cat([st["0.weight"], torch.zeros_like(st["0.weight"][:1])])
        st["0.bias"] = torch.cat([st["0.bias"], torch.zeros_like(st["0.bias"][:1])])
        st["2.weight"] = torch.cat([st["2.weight"], torch.zeros_like(st["2.weight"][:, :1])], dim=1)
        save_file(st, str(d / name))


@pytest.mark.parametrize("mutate,words", [
    (_drop("2.bias"), ("random_net.safetensors", "missing 2.bias")),
    (_mask_outside_block, ("masks.safetensors", "0.weight", "outside the blocks")),
    (_retype_mask, ("masks.safetensors", "uint8")),
    (_mask_two, ("masks.safetensors", "other than 0 and 1")),
    (_widen, ("random_net.safetensors", "0.weight", "construction recorded")),
], ids=["missing-2.bias", "mask-outside-block", "mask-float32", "mask-value-2", "widened-hidden"])
def test_tensor_layout_refused(base, tmp_path, capsys, mutate, words):
    d = _copy(base, tmp_path)
    mutate(d)
    _refused(d, capsys, *words)


# ----------------------------------------------------------------------------- report fields

def _set(key, value):
    return lambda r: r.__setitem__(key, value)


def _layer(key, value):
    return lambda r: r["layers"][0].__setitem__(key, value)


RAW = {
    "list": (b"[]", "holds an array, not a JSON object"),
    "null": (b"null", "holds null"),
    "number": (b"42", "holds a number"),
    "string": (b'"report"', "holds a string"),
    "binary": (bytes(range(256)), "not UTF-8"),
    "deep-nesting": (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    "empty": (b"", "not valid JSON"),
    "truncated": (b'{"solver": "mitm", ', "not valid JSON"),
}
FIELDS = {
    "domain-banana": (_set("input_domain", "banana"), "'input_domain' must be one of"),
    "domain-7": (_set("input_domain", 7), "'input_domain' must be one of"),
    "domain-missing": (lambda r: r.pop("input_domain"), "lacks 'input_domain'"),
    "radius-0": (_set("input_radius", 0), "'input_radius' must be a finite number > 0"),
    "radius-neg": (_set("input_radius", -5), "'input_radius' must be a finite number > 0"),
    "radius-nan": (_set("input_radius", float("nan")), "'input_radius' must be a finite number > 0"),
    "radius-1e308": (_set("input_radius", 1e308), "'input_radius' must be a finite number > 0"),
    "radius-string": (_set("input_radius", "1"), "'input_radius' must be a finite number"),
    "radius-bool": (_set("input_radius", True), "'input_radius' must be a finite number"),
    "radius-null": (_set("input_radius", None), "'input_radius' must be a finite number"),
    "seed-string": (_set("seed", "x"), "'seed' must be an integer >= 0"),
    "seed-float": (_set("seed", 1.5), "'seed' must be an integer >= 0"),
    "seed-negative": (_set("seed", -3), "'seed' must be an integer >= 0"),
    "eps-negative": (_set("eps", -1), "'eps' must be a finite number > 0 or null"),
    "bound-string": (_set("certified_bound", "x"), "'certified_bound' must be a finite number"),
    "solver-number": (_set("solver", 3), "'solver' must be a solver name"),
    "no-solver-no-method": (lambda r: r.pop("solver"), "neither 'solver'"),
    "method-other": (_set("method", "magic"), "'method' must be"),
    "sizes-string": (_set("target_sizes", "3-4-2"), "'target_sizes' must be a list"),
    "sizes-wrong": (_set("target_sizes", [3, 5, 2]), "target_shape"),
    "layers-dict": (_set("layers", {}), "'layers' must list 2 layers"),
    "layers-empty": (_set("layers", []), "'layers' must list 2 layers"),
    "layers-item-int": (lambda r: r["layers"].__setitem__(0, 5), "'layers'[0] must be an object"),
    "block-width-string": (_layer("block_width", "x"), "'block_width' must be an integer >= 1"),
    "block-width-wrong": (_layer("block_width", 3), "hidden_units 92 but the block widths give"),
    "block-width-wrong-no-hidden": (lambda r: (r["layers"][0].pop("hidden_units"), _layer("block_width", 3)(r)),
                                    "construction recorded"),
    "extensions-short": (_layer("block_extensions", [1]), "'block_extensions' must be a list of 4"),
    "has-bias-string": (_layer("has_bias", "yes"), "'has_bias' must be true or false"),
    "relu-after-string": (_set("relu_after", "yes"), "'relu_after'"),
    "witness-list": (_set("witness", [1]), "'witness' must be an object"),
}


@pytest.mark.parametrize("data,words", list(RAW.values()), ids=list(RAW))
def test_malformed_report_json_bytes(base, tmp_path, capsys, data, words):
    d = _copy(base, tmp_path)
    (d / "report.json").write_bytes(data)
    _refused(d, capsys, "report.json", words, "recreate the run")


@pytest.mark.parametrize("mutate,words", list(FIELDS.values()), ids=list(FIELDS))
def test_malformed_report_fields(base, tmp_path, capsys, mutate, words):
    from subsetsum_lth.api import masked_model
    d = _copy(base, tmp_path)
    _edit(d, mutate)
    _refused(d, capsys, "report.json", words)
    with pytest.raises(RunFolderError):      # the API reads the folder through the same checks
        masked_model(d)


@pytest.mark.parametrize("data,words", [
    (b"[]", "holds an array, not a JSON object"), (b"null", "holds null"), (bytes(range(256)), "not UTF-8"),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"), (b"{", "not valid JSON"),
], ids=["list", "null", "binary", "deep-nesting", "truncated"])
def test_malformed_run_config_on_resume(base, tmp_path, capsys, data, words):
    d = _copy(base, tmp_path)
    (d / "run_config.json").write_bytes(data)
    _forge_manifest(d, "run_config.json")
    before = _snap(d)
    capsys.readouterr()
    rc = cli.main(["approximate", "--target", str(base["target"]), "--out", str(d), "--input-radius", "1",
                   "--resume", *FAST])
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert "run_config.json" in err and words in err and "--overwrite" in err and "\n" not in err
    assert _snap(d) == before


def test_resume_with_other_settings_names_the_setting(base, tmp_path, capsys):
    """A run started with --width auto (the former default) resumed without --width: refused
    before anything changes, naming the nested setting with both values."""
    d = _copy(base, tmp_path)
    before = _snap(d)
    capsys.readouterr()
    rc = cli.main(["approximate", "--target", str(base["target"]), "--out", str(d), "--input-radius", "1",
                   "--resume", *FAST])
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert "different settings (construction.width: was 'auto', now 'adaptive')" in err, err
    assert "\n" not in err
    assert _snap(d) == before


def test_radius_override_out_of_range(base, tmp_path, capsys):
    d = _copy(base, tmp_path)
    _refused(d, capsys, "--input-radius", extra=("--input-radius", "1e300"))


# ----------------------------------------------------------------------------- non-regular files

def test_fifo_report_json_does_not_hang(base, tmp_path):
    d = _copy(base, tmp_path)
    (d / "report.json").unlink()
    os.mkfifo(d / "report.json")
    before = _snap(d)
    p = _sub("certify", d, timeout=120)         # a hang fails the test by TimeoutExpired
    assert p.returncode == 2, p.stderr
    err = p.stderr.strip()
    assert "report.json is a FIFO, not a regular file" in err and "\n" not in err
    assert _snap(d) == before


def test_directory_and_device_in_place_of_files(base, tmp_path, capsys):
    d = _copy(base, tmp_path)
    (d / "report.json").unlink()
    (d / "report.json").mkdir()
    _refused(d, capsys, "report.json is a directory")
    d2 = _copy(base, tmp_path, "run2")
    (d2 / "masks.safetensors").unlink()
    os.symlink("/dev/zero", d2 / "masks.safetensors")
    _refused(d2, capsys, "masks.safetensors is a device")


# ----------------------------------------------------------------------------- edge-popup runs

@pytest.fixture(scope="module")
def ep_run(base, tmp_path_factory):
    from subsetsum_lth.edge_popup import EdgePopupConfig, run_edge_popup
    rng = np.random.default_rng(0)
    x = rng.random((64, 3)).astype(np.float32)
    data = {"x_train": x, "y_train": (x[:, 0] > 0.5).astype(np.int64),
            "x_test": x[:16], "y_test": (x[:16, 0] > 0.5).astype(np.int64)}
    out = tmp_path_factory.mktemp("ep") / "ep"
    run_edge_popup(EdgePopupConfig(from_run=str(base["run"]), keep=0.5, epochs=1, batch_size=16, device="cpu",
                                   inner_relu=False, structure="structured", plots=False), out, data=data)
    return out


def test_edge_popup_relu_after_honoured_identically(ep_run, tmp_path, capsys):
    from subsetsum_lth.api import masked_model
    from subsetsum_lth.compare import masked_sequential
    from subsetsum_lth.runcheck import read_run
    run = read_run(ep_run)
    assert run.kind == "edge-popup" and run.relu_after == [False, True, False]
    m = masked_model(ep_run, torch.float64)
    assert [type(q).__name__ for q in m] == ["Linear", "Identity", "Linear", "ReLU", "Linear", "Identity", "Linear"]
    x = torch.rand(32, 3, dtype=torch.float64)
    ref = masked_sequential(run.random_state, run.masks, dtype=torch.float64, relu_after=run.relu_after)
    with torch.no_grad():
        assert torch.allclose(m(x), ref(x))
    # certify does not certify a network used without its ReLUs
    d = tmp_path / "ep"
    shutil.copytree(ep_run, d)
    _refused(d, capsys, "relu_after", "drops some ReLUs")


@pytest.mark.parametrize("value", ["yes", [True], [1, 0, 1], None], ids=["string", "short", "ints", "null"])
def test_edge_popup_relu_after_malformed(ep_run, tmp_path, capsys, value):
    from subsetsum_lth.api import masked_model
    d = tmp_path / "ep"
    shutil.copytree(ep_run, d)
    _edit(d, _set("relu_after", value))
    if value is None:     # null means the default layout (a ReLU after every hidden layer)
        assert masked_model(d) is not None
        return
    _refused(d, capsys, "'relu_after' must list 3 booleans")
    with pytest.raises(RunFolderError, match="relu_after"):
        masked_model(d)


def test_structured_edge_popup_mask_outside_blocks_refused(ep_run, tmp_path, capsys):
    from subsetsum_lth.api import masked_model
    d = tmp_path / "ep"
    shutil.copytree(ep_run, d)
    _mask_outside_block(d)
    _refused(d, capsys, "masks.safetensors", "outside the blocks")
    with pytest.raises(RunFolderError, match="outside the blocks"):
        masked_model(d)


def test_edge_popup_from_run_refuses_appended_layers(base, tmp_path, capsys):
    d = _copy(base, tmp_path)
    _append_layers(d)
    before = _snap(d)
    capsys.readouterr()
    rc = cli.main(["edge-popup", "--from-run", str(d), "--out", str(tmp_path / "o"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "6 Linear layers" in err and "\n" not in err
    assert _snap(d) == before and not (tmp_path / "o" / "report.json").exists()


# ----------------------------------------------------------------------------- resume store

def _killed_run(base, out: Path, after: int = 6):
    args = ["approximate", "--target", base["target"], "--out", out, "--input-radius", 1, *FAST,
            "--batch-size", 2, "--block-width", 30, "--width", "formula"]
    p = _sub(*args, SUBSETSUM_LTH_FAULT_AFTER_BATCHES=str(after))
    assert p.returncode == 137, p.stderr
    parts = sorted((out / "partial").glob("*.npz"))
    assert len(parts) == after
    return args, parts


def _true_max_errors(run: Path) -> float:
    from subsetsum_lth.api import load_run
    from subsetsum_lth.certify import certified_bound, layer_maps
    r = load_run(run)
    c = certified_bound(r.target, layer_maps(r.random_state, r.masks, r.target.depth), 1.0, r.input_domain)
    return max(max(L["max_weight_error"], L["max_bias_error"]) for L in c.layers)


def test_resume_recomputes_zeroed_selections(base, tmp_path):
    """Zeroed selections in three stored batches, with their checksums forged to match: the
    recomputed errors contradict the stored statuses, so the batches are solved again."""
    from subsetsum_lth.solve import _result_digest
    out = tmp_path / "run"
    args, parts = _killed_run(base, out)
    for p in parts[:3]:
        z = dict(np.load(p, allow_pickle=False))
        z["selections"] = np.zeros_like(z["selections"])
        z["result_sha256"] = np.array(_result_digest(z["ids"], z["selections"], z["status"]))
        np.savez(p, **z)
    r = _sub(*args, "--resume")
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("discarding stored batch") == 3 and "contradict the errors recomputed" in r.stderr
    rep = json.loads((out / "report.json").read_text())
    true = _true_max_errors(out)
    assert rep["infeasible_count"] == 0 and true <= rep["weight_eps"] * (1 + 1e-6)
    assert abs(max(max(L["max_weight_error"], L["max_bias_error"]) for L in rep["layers"]) - true) < 1e-9


def test_resume_discards_tampered_and_garbage_batches(base, tmp_path):
    out = tmp_path / "run"
    args, parts = _killed_run(base, out)
    z = dict(np.load(parts[0], allow_pickle=False))
    z["inputs_sha256"] = np.array("0" * 64)
    np.savez(parts[0], **z)
    z = dict(np.load(parts[1], allow_pickle=False))
    z["selections"] = np.zeros_like(z["selections"])       # checksum not updated
    np.savez(parts[1], **z)
    parts[2].write_bytes(b"garbage")
    r = _sub(*args, "--resume")
    assert r.returncode == 0, r.stderr
    assert "inputs hash does not match" in r.stderr and "result checksum does not match" in r.stderr
    assert "ignoring unreadable partial result" in r.stderr
    rep = json.loads((out / "report.json").read_text())
    assert rep["infeasible_count"] == 0 and _true_max_errors(out) <= rep["weight_eps"] * (1 + 1e-6)


def test_resume_does_not_believe_forged_infeasible_claims(base, tmp_path):
    """Three stored batches forged to claim every instance INFEASIBLE (empty selections, errors
    outside τ, checksums recomputed): the claim cannot be checked from the selections, so those
    instances are solved again and the masks are byte-identical to an uninterrupted run's."""
    from subsetsum_lth.solve import _result_digest
    out = tmp_path / "run"
    args, parts = _killed_run(base, out)
    forged = 0
    for p in parts:
        z = dict(np.load(p, allow_pickle=False))
        z["selections"] = np.zeros_like(z["selections"])
        z["status"] = np.full_like(z["status"], 2)                    # Status.INFEASIBLE
        z["result_sha256"] = np.array(_result_digest(z["ids"], z["selections"], z["status"]))
        np.savez(p, **z)
    r = _sub(*args, "--resume")
    assert r.returncode == 0, r.stderr
    contradict = r.stderr.count("contradict the errors recomputed")
    assert contradict < len(parts), r.stderr           # some forged batches pass the error checks ...
    assert "stored instances claimed infeasible, timed out or failed are solved again (no stored " \
           "selection proves such a claim)" in r.stderr, r.stderr       # ... but their claims are not believed
    clean = tmp_path / "clean"
    assert _sub(*[clean if a == out else a for a in args]).returncode == 0
    assert (out / "masks.safetensors").read_bytes() == (clean / "masks.safetensors").read_bytes()
    assert json.loads((out / "report.json").read_text())["infeasible_count"] == 0


def test_store_returns_recomputed_errors_not_stored_ones(tmp_path, caplog):
    from subsetsum_lth.solvers.instances import InstanceBatch, recompute_errors
    from subsetsum_lth.solve import ResumeStore, SolveConfig, batch_key, solve_all
    rng = np.random.default_rng(0)
    b = InstanceBatch.from_lists(rng.uniform(-1, 1, 6), [rng.uniform(-1, 1, 12) for _ in range(6)], 0.05)
    store = ResumeStore(tmp_path / "partial")
    first = solve_all(b, SolveConfig(solver="mitm", workers=1, batch_size=6), store=store)
    (path,) = store.folder.glob("*.npz")
    z = dict(np.load(path, allow_pickle=False))
    z["errors"] = np.zeros_like(z["errors"])               # not covered by the checksum: never read
    np.savez(path, **z)
    got = store.get(batch_key("mitm", b), b, "mitm")
    assert got is not None and np.array_equal(got.errors, recompute_errors(b, first.selections))
    assert np.array_equal(got.errors, first.errors)
    wrong = InstanceBatch(b.ids, b.targets, b.coefficients, b.counts, 0.01, b.objective)   # another τ
    with caplog.at_level("WARNING"):
        assert store.get(batch_key("mitm", b), wrong, "mitm") is None
    assert "inputs hash does not match" in caplog.text


# ----------------------------------------------------------------------------- empirical bound

def test_empirical_bound_finds_maximum_at_centre():
    """f(x) = relu(1 - 10x) on x in [0, 1] against ĝ = 0: the error is 1 at x = 0 and 0 on the
    whole outer part of the ball, where the gradient vanishes too."""
    from subsetsum_lth.certify import empirical_bound
    t = Target([Layer(np.array([[-10.0]]), np.array([1.0])), Layer(np.array([[1.0]]), np.array([0.0]))])

    class Zero(torch.nn.Module):
        def forward(self, x):
            return torch.zeros(x.shape[0], 1, dtype=x.dtype)

    res = empirical_bound(t, Zero(), 1.0, "nonnegative", samples=32, steps=20)
    assert res["empirical_bound"] == 1.0 and res["source"] == "centre (x = 0)"
    assert np.array_equal(res["witness"]["x"], [0.0])


def test_orthant_vertices_exhaustive_for_small_p():
    from subsetsum_lth.certify import orthant_vertices
    v = orthant_vertices(3, 2.0, False, 5, np.random.default_rng(0))
    assert len(v) == 8 and np.allclose(np.linalg.norm(v, axis=1), 2.0)
    assert len({tuple(np.sign(r)) for r in v}) == 8
    assert len(orthant_vertices(3, 1.0, True, 5, np.random.default_rng(0))) == 7


def test_interior_maximum_witness_stored_and_reevaluated(tmp_path, capsys):
    tfile = tmp_path / "t.pt"
    torch.save({"0.weight": torch.tensor([[-1.0], [-0.8]]), "0.bias": torch.tensor([0.5, 0.4]),
                "2.weight": torch.tensor([[0.9, -0.7]]), "2.bias": torch.tensor([0.1])}, tfile)
    out = tmp_path / "run"
    assert cli.main(["approximate", "--target", str(tfile), "--out", str(out), "--input-radius", "1",
                     "--input-domain", "nonnegative", "--weight-eps", "0.05", *FAST]) == 0
    rep = json.loads((out / "report.json").read_text())
    from subsetsum_lth.target import load_target
    t = load_target(out / "target.safetensors")
    g = rebuild_g(out)                                    # ĝ from the two files, no package code
    zero = torch.zeros(1, 1, dtype=torch.float64)
    with torch.no_grad():
        at_zero = float((t.forward(zero) - g(zero)).norm())
    assert at_zero > 0.01 and rep["empirical_bound"] >= at_zero     # was 0.003 < 0.018 before
    assert rep["witness"] == {"file": "witness.safetensors", "error": rep["empirical_bound"]}
    x = load_file(str(out / "witness.safetensors"))["x"]
    assert x.dtype == torch.float64 and x.shape == (1,)
    with torch.no_grad():
        indep = float((t.forward(x[None]) - g(x[None])).norm())
    assert abs(indep - rep["witness"]["error"]) <= 1e-12
    before = _snap(out)
    capsys.readouterr()
    assert cli.main(["certify", str(out), "--json", "--samples", "64", "--steps", "10"]) == 0
    res = json.loads(capsys.readouterr().out)
    w = res["witness"]
    assert w["matches_report"] is True and abs(w["error"] - indep) <= 1e-12
    assert w["error"] <= res["certified_bound"] and res["empirical_bound"] >= w["error"]
    assert _snap(out) == before
    capsys.readouterr()
    assert cli.main(["certify", str(out), "--samples", "64", "--steps", "10"]) == 0
    assert "stored witness:  error" in capsys.readouterr().out


def test_malformed_witness_refused_and_outside_ball_skipped(tmp_path, base, capsys):
    d = _copy(base, tmp_path)
    save_file({"x": torch.tensor([5.0, 0.0], dtype=torch.float64)}, str(d / "witness.safetensors"))
    _refused(d, capsys, "witness.safetensors", "one tensor 'x' of shape (3,)")
    # a witness outside the ball is not evaluated (it would be no lower bound for this ball)
    save_file({"x": torch.tensor([5.0, 0.0, 0.0], dtype=torch.float64)}, str(d / "witness.safetensors"))
    before = _snap(d)
    capsys.readouterr()
    assert cli.main(["certify", str(d), "--samples", "64", "--steps", "10"]) == 0
    assert "lies outside this input ball; not evaluated" in capsys.readouterr().out
    assert _snap(d) == before


# ----------------------------------------------------------------------------- float64 target

def test_float64_target_stored_as_float64_and_certify_matches(tmp_path, capsys):
    gen = torch.Generator().manual_seed(3)
    sd = {"0.weight": torch.randn(4, 3, generator=gen, dtype=torch.float64) * 0.7,
          "0.bias": torch.randn(4, generator=gen, dtype=torch.float64) * 0.1,
          "2.weight": torch.randn(2, 4, generator=gen, dtype=torch.float64) * 0.7,
          "2.bias": torch.randn(2, generator=gen, dtype=torch.float64) * 0.1}
    tfile = tmp_path / "t64.pt"
    torch.save(sd, tfile)
    out = tmp_path / "run"
    assert cli.main(["approximate", "--target", str(tfile), "--out", str(out), "--input-radius", "1", *FAST]) == 0
    stored = load_file(str(out / "target.safetensors"))
    assert all(v.dtype == torch.float64 and torch.equal(v, sd[k]) for k, v in stored.items())
    rep = json.loads((out / "report.json").read_text())
    capsys.readouterr()
    assert cli.main(["certify", str(out), "--json", "--samples", "64", "--steps", "10"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["certified_bound"] == rep["certified_bound"] and res["matches_report"] is True


def test_float32_target_still_stored_as_float32(tmp_path):
    t = random_target([3, 4, 2], seed=1)
    save_target(t, tmp_path / "t.safetensors")
    assert all(v.dtype == torch.float32 for v in load_file(str(tmp_path / "t.safetensors")).values())


def test_witness_far_larger_than_p_values_is_refused_before_reading(tmp_path, base, capsys):
    """A witness.safetensors whose header announces a 20 GB tensor (a sparse file) would make the
    reader allocate it all: refused by size, before it is opened."""
    import struct
    d = _copy(base, tmp_path)
    path = d / "witness.safetensors"
    hdr = json.dumps({"x": {"dtype": "F64", "shape": [2_500_000_000],
                            "data_offsets": [0, 20_000_000_000]}}).encode()
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(hdr)) + hdr)
        fh.truncate(8 + len(hdr) + 20_000_000_000)
    st = path.stat()
    path.rename(tmp_path / "w.tmp")
    before = _snap(d)                   # (without reading the 20 GB)
    (tmp_path / "w.tmp").rename(path)
    rc, err = _certify(d, capsys)
    assert rc == 2
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    path.rename(tmp_path / "w.tmp")
    assert _snap(d) == before
    assert err == (f"error: {path} must hold one tensor 'x' of shape (3,), but it is 20,000,000,088 bytes; "
                   "recreate the run (or restore the file the tool wrote)")


def test_random_net_larger_than_memory_is_refused_before_reading(tmp_path, base, capsys, monkeypatch):
    """A random_net.safetensors (here a sparse file whose header announces a 4 GB tensor) larger
    than the machine's memory is refused by its size before it is read."""
    import struct
    from subsetsum_lth import runfolder
    monkeypatch.setattr(runfolder, "_physical_memory", lambda: 1 << 30)    # a 1 GB machine
    d = _copy(base, tmp_path)
    path = d / "random_net.safetensors"
    hdr = json.dumps({"0.weight": {"dtype": "F32", "shape": [1 << 30], "data_offsets": [0, 4 << 30]}}).encode()
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(hdr)) + hdr)
        fh.truncate(8 + len(hdr) + (4 << 30))
    st = path.stat()
    path.rename(tmp_path / "rn.tmp")
    before = _snap(d)                   # (without reading the 4 GB)
    (tmp_path / "rn.tmp").rename(path)
    rc, err = _certify(d, capsys)
    assert rc == 2
    assert err == (f"error: {path} is {st.st_size / 1e9:,.1f} GB, more than this machine's memory (1.1 GB) can "
                   "load; recreate the run (or restore the file the tool wrote)")
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    path.rename(tmp_path / "rn.tmp")
    assert _snap(d) == before


# ----------------------------------------------------------------------------- the run kind is the manifest's

def test_approximate_run_disguised_as_edge_popup_refused(base, tmp_path, capsys):
    """report.json of an approximate run edited to read as an edge-popup run (whose fields are
    optional and whose masks keep no pre-pruning): manifest.json records an approximate run, and
    that is the kind the folder is read as, so the disguise is refused by every reader."""
    from subsetsum_lth.api import masked_model
    d = _copy(base, tmp_path)
    _edit(d, lambda r: (r.pop("solver"), r.__setitem__("method", "edge-popup")))
    _refused(d, capsys, "report.json", "manifest.json", "approximate run folder")
    with pytest.raises(RunFolderError, match="manifest.json"):
        masked_model(d)


def test_folder_whose_manifest_is_not_a_run_refused(base, tmp_path, capsys):
    from subsetsum_lth.manifest import FORMAT, MANIFEST, VERSION
    d = _copy(base, tmp_path)
    (d / MANIFEST).write_text(json.dumps({"format": FORMAT, "version": VERSION, "kind": "target",
                                          "files": {}, "stores": []}))
    _refused(d, capsys, "target folder", "not a run folder")
    (d / MANIFEST).write_text("{")            # a damaged manifest: one line naming it and the fix
    _refused(d, capsys, "manifest.json", "not a valid subsetsum-lth manifest", "recreate the run")
