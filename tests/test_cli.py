"""The command line end to end: approximate, certify, solvers; determinism; refusals."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from subsetsum_lth.cli import main


@pytest.fixture
def small_target(tmp_path):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    with torch.no_grad():
        for mod in m:
            if isinstance(mod, nn.Linear):
                mod.weight.mul_(0.8)
    path = tmp_path / "target.pt"
    torch.save(m.state_dict(), path)
    return path


def _approx(target, out, *extra):
    return main(["approximate", "--target", str(target), "--out", str(out), "--solver", "mitm",
                 "--block-width", "36", "--no-progress", "--samples", "64", "--steps", "20", *extra])


def test_approximate_writes_run_folder_and_certify_agrees(small_target, tmp_path, capsys):
    out = tmp_path / "run"
    assert _approx(small_target, out, "--eps", "0.1", "--input-domain", "signed", "--workers", "1") == 0
    text = capsys.readouterr().out
    assert "certified bound" in text
    for name in ("random_net.safetensors", "masks.safetensors", "report.json", "metrics.csv",
                 "weight_error_hist.png", "target.safetensors"):
        assert (out / name).exists(), name
    assert not (out / "partial").exists()
    r = json.loads((out / "report.json").read_text())
    for key in ("eps", "input_radius", "input_domain", "seed", "solver", "objective", "certified_bound",
                "empirical_bound", "kept_parameters", "total_parameters", "infeasible_count",
                "wall_seconds", "versions", "layers"):
        assert key in r, key
    for L in r["layers"]:
        for key in ("target_shape", "block_width", "instances", "max_weight_error", "mean_weight_error",
                    "kept_coefficients", "kept_units", "kept_parameters", "seconds"):
            assert key in L, key
    assert r["empirical_bound"] <= r["certified_bound"] <= 0.1
    assert 0 < r["kept_parameters"] < r["total_parameters"]
    assert main(["certify", str(out), "--json", "--samples", "64", "--steps", "10"]) == 0
    c = json.loads(capsys.readouterr().out)
    assert c["matches_report"] is True
    assert c["certified_bound"] == pytest.approx(r["certified_bound"], rel=1e-12)


def test_same_seed_same_masks_for_1_and_2_workers(small_target, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    args = ("--weight-eps", "0.01", "--input-domain", "nonnegative", "--batch-size", "7", "--seed", "3")
    assert _approx(small_target, a, *args, "--workers", "1") == 0
    assert _approx(small_target, b, *args, "--workers", "2") == 0
    for name in ("masks.safetensors", "random_net.safetensors"):
        assert (a / name).read_bytes() == (b / name).read_bytes()


def test_infeasible_exits_nonzero_lists_and_writes(small_target, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["approximate", "--target", str(small_target), "--out", str(out), "--solver", "mitm",
               "--block-width", "3", "--weight-eps", "1e-6", "--no-progress", "--workers", "1",
               "--steps", "5", "--samples", "16", "--width", "formula"])
    err = capsys.readouterr().err
    assert rc == 3
    assert "instances are not within" in err and "layer 0 row" in err
    assert (out / "masks.safetensors").exists()
    r = json.loads((out / "report.json").read_text())
    assert r["infeasible_count"] > 0 and r["infeasible_examples"]
    # the same with --allow-infeasible exits 0
    assert main(["approximate", "--target", str(small_target), "--out", str(out), "--overwrite",
                 "--solver", "mitm", "--block-width", "3", "--weight-eps", "1e-6", "--no-progress",
                 "--workers", "1", "--allow-infeasible", "--steps", "5", "--samples", "16",
                 "--width", "formula"]) == 0


def test_solvers_json(capsys):
    assert main(["solvers", "--json"]) == 0
    infos = json.loads(capsys.readouterr().out)
    names = {i["name"]: i for i in infos}
    assert {"ortools", "mitm", "gurobi", "cpsat"} <= set(names)
    for i in infos:
        assert {"name", "available", "exact", "objectives"} <= set(i)
        if not i["available"]:
            assert i["reason"]


@pytest.mark.parametrize("args,code,words", [
    (["--eps", "0"], 2, ["positive"]),
    (["--eps", "-0.1"], 2, ["positive"]),
    (["--weight-eps", "nan"], 2, ["positive"]),
    (["--eps", "0.1", "--weight-eps", "0.1"], 2, ["not allowed"]),
    (["--solver", "nosuch"], 2, ["unknown solver", "nosuch"]),
    (["--solver", "ortools", "--objective", "bogus"], 2, ["invalid choice"]),
    (["--input-radius", "-1"], 2, ["positive"]),
    (["--block-width", "0"], 2, ["positive integer"]),
])
def test_bad_options(small_target, tmp_path, capsys, args, code, words):
    with pytest.raises(SystemExit) as ei:
        rc = main(["approximate", "--target", str(small_target), "--out", str(tmp_path / "o"), *args])
        raise SystemExit(rc)
    assert ei.value.code == code
    err = capsys.readouterr().err.lower()
    for w in words:
        assert w in err, err
    assert not (tmp_path / "o" / "masks.safetensors").exists()


def test_bad_target_message(tmp_path, capsys):
    sd = {"0.weight": torch.randn(4, 3), "2.weight": torch.randn(2, 4) * float("nan")}
    save_file(sd, str(tmp_path / "t.safetensors"))
    rc = main(["approximate", "--target", str(tmp_path / "t.safetensors"), "--out", str(tmp_path / "o")])
    assert rc == 2
    assert "nan/inf" in capsys.readouterr().err.lower()
    assert not (tmp_path / "o").exists()


def test_refuses_existing_run_without_resume(small_target, tmp_path, capsys):
    out = tmp_path / "run"
    assert _approx(small_target, out, "--workers", "1", "--input-domain", "signed") == 0
    before = (out / "masks.safetensors").read_bytes()
    assert _approx(small_target, out, "--workers", "1", "--input-domain", "signed") == 2
    assert "--resume" in capsys.readouterr().err
    assert (out / "masks.safetensors").read_bytes() == before


def test_gurobi_missing_or_present_is_clear(small_target, tmp_path, capsys):
    from subsetsum_lth.solvers.registry import backend_info
    info = backend_info("gurobi")
    rc = main(["approximate", "--target", str(small_target), "--out", str(tmp_path / "g"), "--solver",
               "gurobi", "--block-width", "16", "--no-progress", "--workers", "1", "--allow-infeasible",
               "--steps", "5", "--samples", "16"])
    if info["available"]:
        assert rc == 0
    else:
        assert rc == 2 and "gurobi" in capsys.readouterr().err.lower()


def test_console_script_and_module_help():
    for cmd in ([sys.executable, "-m", "subsetsum_lth", "--help"],
                [sys.executable, "-m", "subsetsum_lth", "approximate", "--help"]):
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert res.returncode == 0 and "usage" in res.stdout.lower()


def test_masked_model_and_export(small_target, tmp_path):
    from torch.nn.utils import prune

    from subsetsum_lth.api import export_pruned, masked_model
    from subsetsum_lth.target import load_target
    out = tmp_path / "run"
    assert _approx(small_target, out, "--workers", "1", "--input-domain", "signed") == 0
    m = masked_model(out)
    assert all(prune.is_pruned(mod) for mod in m if isinstance(mod, nn.Linear))
    e = export_pruned(m)
    assert not any(prune.is_pruned(mod) for mod in e if isinstance(mod, nn.Linear))
    x = torch.randn(32, 6)
    assert torch.equal(m(x), e(x))
    t = load_target(small_target)
    r = json.loads((out / "report.json").read_text())
    # points inside the unit ball (the run's input ball): the exported network obeys the certificate
    xb = x / x.norm(dim=1, keepdim=True) * torch.rand(32, 1)
    with torch.no_grad():
        dev = (t.forward(xb.double()) - e.double()(xb.double())).norm(dim=1)
    assert float(dev.max()) <= r["certified_bound"] + 1e-6


def test_stdout_closed_early_is_quiet():
    """`subsetsum-lth solvers | head -1`: the reader goes away; no traceback, exit 128 + SIGPIPE."""
    import os
    import signal
    r, w = os.pipe()
    os.close(r)                                   # a reader that has already exited
    try:
        res = subprocess.run([sys.executable, "-m", "subsetsum_lth", "solvers"], stdout=w,
                             stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(w)
    assert res.stderr == "" and res.returncode == 128 + signal.SIGPIPE


def test_a_broken_pipe_that_is_not_our_output_is_not_hidden(monkeypatch):
    from subsetsum_lth.commands import solvers_cmd

    def broken(args):
        raise BrokenPipeError(32, "Broken pipe")   # e.g. a worker's pipe, while stdout is fine
    monkeypatch.setattr(solvers_cmd, "run", broken)
    with pytest.raises(BrokenPipeError):
        main(["solvers"])
