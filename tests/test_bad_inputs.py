"""Bad-input suite: every CLI command fed malformed or hostile inputs.

Each row of the table builds its inputs in a fresh folder, runs ``subsetsum_lth.cli.main`` in
process, and asserts: a non-zero exit code, one clear message on stderr (no traceback) holding
the expected words, and no artifact presented as complete (report.json, masks.safetensors,
comparison.json) in the output folder.
"""
from __future__ import annotations

import gzip
import pickle
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from subsetsum_lth.cli import main

COMPLETE = ("report.json", "masks.safetensors", "comparison.json", "checkpoint.pt", "target.safetensors")
QUICK = ["--solver", "mitm", "--block-width", "12", "--no-progress", "--no-plots", "--samples", "16",
         "--steps", "5", "--workers", "1"]


def _mlp_sd(p=6, h=5, q=3, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(p, h), nn.ReLU(), nn.Linear(h, q)).state_dict()


@pytest.fixture(scope="module")
def good_run(tmp_path_factory):
    """One small valid target and run folder (certify/compare/edge-popup read it)."""
    d = tmp_path_factory.mktemp("good")
    torch.save(_mlp_sd(), d / "target.pt")
    assert main(["approximate", "--target", str(d / "target.pt"), "--out", str(d / "run"),
                 "--weight-eps", "0.02", "--input-domain", "signed", *QUICK]) == 0
    return d


class Ctx:
    def __init__(self, tmp: Path, good: Path, monkeypatch):
        self.tmp, self.good, self.mp = tmp, good, monkeypatch
        self.out = tmp / "out"

    def target(self, name="t.pt", sd=None):
        path = self.tmp / name
        torch.save(_mlp_sd() if sd is None else sd, path)
        return str(path)

    def evil(self, name="evil.pt"):
        marker = self.tmp / "pwned"

        class Evil:
            def __reduce__(self):
                return (exec, (f"open({str(marker)!r}, 'w').write('pwned')",))
        path = self.tmp / name
        with open(path, "wb") as fh:
            pickle.dump({"0.weight": Evil(), "0.bias": torch.zeros(3)}, fh)
        return str(path)

    def run_copy(self, mutate: Callable[[Path], None] | None = None) -> str:
        dst = self.tmp / "run_copy"
        shutil.copytree(self.good / "run", dst)
        if mutate:
            mutate(dst)
        return str(dst)

    def truncated_mnist(self) -> str:
        d = self.tmp / "mnist"
        d.mkdir()
        names = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                 "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
        for n in names:   # a header declaring MNIST's 60000 (10000) 28x28 images, then only a few bytes
            count = 60000 if n.startswith("train") else 10000
            with gzip.open(d / n, "wb") as fh:
                fh.write(bytes([0, 0, 8, 3 if "images" in n else 1]) + count.to_bytes(4, "big") +
                         ((28).to_bytes(4, "big") * 2 if "images" in n else b"") + b"\x00" * 100)
        return str(d)

    def file_as_dir(self) -> str:
        f = self.tmp / "a_file"
        f.write_text("not a folder")
        return str(f / "run")


def _truncate(path: Path, keep: int = 40) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:keep])


@dataclass
class Case:
    id: str
    argv: Callable[[Ctx], list]
    words: tuple
    code: int = 2
    setup: Callable[[Ctx], None] | None = None
    check: Callable[[Ctx], None] | None = None
    extra: dict = field(default_factory=dict)


def _nonfinite(bad):
    def build(c: Ctx):
        sd = _mlp_sd()
        sd["2.weight"][1, 2] = bad
        return ["approximate", "--target", c.target("n.pt", sd), "--out", str(c.out), *QUICK]
    return build


def _no_mitm(c: Ctx):
    from subsetsum_lth.solvers.mitm import MeetInTheMiddleSolver
    c.mp.setattr(MeetInTheMiddleSolver, "is_available", classmethod(lambda cls: (False, "simulated: not installed")))


def _no_dask(c: Ctx):
    from subsetsum_lth import executors
    c.mp.setattr(executors, "dask_available",
                 lambda: (False, f"the Dask executor needs dask[distributed]: {executors.DASK_HINT}"))


def _no_cryptography(c: Ctx):
    import importlib.util

    from subsetsum_lth import executors
    if not executors.dask_available()[0]:
        c.mp.setattr(executors, "dask_available", lambda: (True, None))
    real = importlib.util.find_spec
    c.mp.setattr(executors.importlib.util, "find_spec",
                 lambda name, *a: None if name == "cryptography" else real(name, *a))


def _disk_full(c: Ctx):
    import collections

    from subsetsum_lth import runfolder
    usage = collections.namedtuple("usage", "total used free")
    c.mp.setattr(runfolder.shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 1000, 1000))


def _pwned_absent(c: Ctx):
    assert not (c.tmp / "pwned").exists(), "the pickle payload ran"


def _approx(*args):
    return lambda c: ["approximate", "--target", c.target(), "--out", str(c.out), *QUICK, *args]


CASES = [
    # ---- approximate: targets
    Case("approx-wrong-type", lambda c: ["approximate", "--target", str(c.tmp / "x.txt"), "--out", str(c.out)],
         ("unsupported target file type",), setup=lambda c: (c.tmp / "x.txt").write_text("hello")),
    Case("approx-truncated-safetensors", lambda c: ["approximate", "--target", str(c.tmp / "t.safetensors"),
                                                    "--out", str(c.out)], ("cannot read",),
         setup=lambda c: (save_file(_mlp_sd(), str(c.tmp / "t.safetensors")),
                          _truncate(c.tmp / "t.safetensors", 60))),
    Case("approx-truncated-pt", lambda c: ["approximate", "--target", str(c.tmp / "t.pt"), "--out", str(c.out)],
         ("t.pt",), setup=lambda c: (c.target("t.pt"), _truncate(c.tmp / "t.pt", 100))),
    Case("approx-pickle-runs-code", lambda c: ["approximate", "--target", c.evil(), "--out", str(c.out)],
         ("weights_only",), check=_pwned_absent),
    Case("approx-pickled-module", lambda c: ["approximate", "--target", str(c.tmp / "m.pt"), "--out", str(c.out)],
         ("state_dict",), setup=lambda c: torch.save(nn.Sequential(nn.Linear(2, 2)), c.tmp / "m.pt")),
    Case("approx-nan-weights", _nonfinite(float("nan")), ("nan/inf",)),
    Case("approx-inf-weights", _nonfinite(float("inf")), ("nan/inf",)),
    Case("approx-missing-target", lambda c: ["approximate", "--target", str(c.tmp / "none.pt"), "--out", str(c.out)],
         ("does not exist",)),
    # ---- approximate: numbers
    Case("approx-eps-zero", _approx("--eps", "0"), ("positive",)),
    Case("approx-eps-negative", _approx("--eps", "-0.5"), ("positive",)),
    Case("approx-weight-eps-inf", _approx("--weight-eps", "inf"), ("positive",)),
    Case("approx-weight-eps-nan", _approx("--weight-eps", "nan"), ("positive",)),
    Case("approx-absurd-width", lambda c: ["approximate", "--target", c.target(), "--out", str(c.out),
                                           "--solver", "mitm", "--block-width", "1000000000", "--no-progress"],
         ("gb", "--block-width")),
    Case("approx-negative-retries", _approx("--retries", "-1"), ("--retries",)),
    Case("approx-samples-negative", _approx("--samples", "-5"), ("--samples", "must be a positive integer")),
    Case("approx-samples-zero-steps-zero", _approx("--samples", "0", "--steps", "0"),
         ("--samples", "must be a positive integer")),
    Case("approx-steps-negative", _approx("--steps", "-5"), ("--steps", "must be a non-negative integer")),
    Case("approx-max-growth-negative", _approx("--max-growth", "-5"),
         ("--max-growth", "must be a non-negative integer")),
    Case("approx-max-hours-zero", _approx("--max-hours", "0"), ("--max-hours", "must be a positive number")),
    Case("approx-dask-local-no-cryptography", _approx("--executor", "dask-local"),
         ("cryptography", "--executor process"), setup=lambda c: _no_cryptography(c)),
    Case("approx-bad-batch-timeout", _approx("--batch-timeout", "0"), ("positive",)),
    # ---- approximate: environment
    Case("approx-unwritable-out", lambda c: ["approximate", "--target", c.target(), "--out", c.file_as_dir(),
                                             *QUICK], ("cannot write to the run folder",)),
    Case("approx-disk-full", _approx(), ("not enough disk space",), setup=_disk_full),
    Case("approx-backend-missing", _approx(), ("mitm", "not available", "simulated"), setup=_no_mitm),
    Case("approx-unknown-solver", lambda c: ["approximate", "--target", c.target(), "--out", str(c.out),
                                             "--solver", "nosuch"], ("unknown solver",)),
    Case("approx-dask-missing", _approx("--executor", "dask-local"), ("pip install 'subsetsum-lth[dask]'",),
         setup=_no_dask),
    Case("approx-dask-no-scheduler", _approx("--executor", "dask"), ("--scheduler",)),
    Case("approx-scheduler-without-dask", _approx("--scheduler", "tcp://127.0.0.1:1"), ("--executor dask",)),
    Case("approx-truncated-mnist", lambda c: ["approximate", "--target", c.target("m.pt", _mlp_sd(784, 4, 10)),
                                              "--out", str(c.out), "--data", "mnist", "--data-dir",
                                              c.truncated_mnist(), *QUICK], ("truncated",)),
    Case("approx-mnist-size-mismatch", lambda c: ["approximate", "--target", c.target(), "--out", str(c.out),
                                                  "--data", "mnist", "--data-dir", c.truncated_mnist(), *QUICK],
         ("mnist",)),
    # ---- train-target
    Case("train-truncated-idx", lambda c: ["train-target", "--out", str(c.out), "--hidden", "8", "--epochs", "1",
                                           "--data-dir", c.truncated_mnist()], ("truncated",)),
    Case("train-hidden-garbage", lambda c: ["train-target", "--out", str(c.out), "--hidden", "abc"],
         ("hidden",)),
    Case("train-epochs-zero", lambda c: ["train-target", "--out", str(c.out), "--epochs", "0"], ("positive",)),
    Case("train-lr-nan", lambda c: ["train-target", "--out", str(c.out), "--lr", "nan"], ("positive",)),
    # ---- certify
    Case("certify-missing", lambda c: ["certify", str(c.tmp / "nothing")], ("nothing",)),
    Case("certify-not-a-run", lambda c: ["certify", str(c.tmp)], ("does not exist",)),
    Case("certify-truncated-masks", lambda c: ["certify", c.run_copy(lambda d: _truncate(d / "masks.safetensors"))],
         ("masks.safetensors",)),
    Case("certify-garbage-report", lambda c: ["certify", c.run_copy(lambda d: (d / "report.json").write_text("{"))],
         ("report.json",)),
    Case("certify-nan-random-net", lambda c: ["certify", c.run_copy(_nan_random_net)], ("nan",)),
    Case("certify-radius-zero", lambda c: ["certify", str(c.good / "run"), "--input-radius", "0"], ("positive",)),
    # ---- solvers
    Case("solvers-bad-flag", lambda c: ["solvers", "--nope"], ("unrecognized",)),
    # ---- edge-popup
    Case("edge-popup-missing-run", lambda c: ["edge-popup", "--from-run", str(c.tmp / "none"), "--out", str(c.out)],
         ("does not exist",)),
    Case("edge-popup-pickle-runs-code", lambda c: ["edge-popup", "--from-target", c.evil(), "--out", str(c.out)],
         ("weights_only",), check=_pwned_absent),
    Case("edge-popup-wide-garbage", lambda c: ["edge-popup", "--wide", "784,abc,10", "--out", str(c.out)],
         ("--wide",)),
    Case("edge-popup-absurd-wide", lambda c: ["edge-popup", "--wide", "784,100000000000,10",
                                              "--out", str(c.out)], ("--wide", "GB")),
    Case("edge-popup-keep-too-big", lambda c: ["edge-popup", "--wide", "784,8,10", "--keep", "1.5",
                                               "--out", str(c.out)], ("keep",)),
    Case("edge-popup-truncated-masks", lambda c: ["edge-popup", "--from-run",
                                                  c.run_copy(lambda d: _truncate(d / "random_net.safetensors")),
                                                  "--out", str(c.out)], ("random_net.safetensors",)),
    Case("edge-popup-truncated-idx", lambda c: ["edge-popup", "--wide", "784,8,10", "--epochs", "1",
                                                "--out", str(c.out), "--data-dir", c.truncated_mnist(),
                                                "--no-progress"], ("truncated",)),
    # ---- compare
    Case("compare-missing-run", lambda c: ["compare", str(c.good / "run"), str(c.tmp / "none"), "--out", str(c.out)],
         ("none",)),
    Case("compare-truncated-masks", lambda c: ["compare", str(c.good / "run"),
                                               c.run_copy(lambda d: _truncate(d / "masks.safetensors")),
                                               "--out", str(c.out)], ("masks.safetensors",)),
    Case("compare-pickle-target", lambda c: ["compare", str(c.good / "run"), "--target", c.evil(),
                                             "--out", str(c.out)], ("weights_only",), check=_pwned_absent),
]


def _nan_random_net(d: Path) -> None:
    from safetensors.torch import load_file
    sd = load_file(str(d / "random_net.safetensors"))
    sd["0.weight"][0, 0] = float("nan")
    save_file(sd, str(d / "random_net.safetensors"))


def _id(c):
    return (c.values[0] if hasattr(c, "values") else c).id


@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_bad_input(case: Case, good_run, tmp_path, monkeypatch, capsys):
    c = Ctx(tmp_path, good_run, monkeypatch)
    if case.setup:
        case.setup(c)
    argv = case.argv(c)
    try:
        rc = main(argv)
    except SystemExit as exc:            # argparse refusals
        rc = exc.code
    err = capsys.readouterr().err
    assert rc not in (0, None), f"accepted: {argv}"
    assert rc == case.code, err
    low = err.lower()
    for w in case.words:
        assert w.lower() in low, f"{w!r} not in: {err}"
    assert "traceback" not in low, err
    assert len([ln for ln in err.splitlines() if ln.startswith("error:") or "error:" in ln[:20]]) <= 1, err
    for name in COMPLETE:
        assert not (c.out / name).exists(), f"{name} left in the out folder of a refused run"
    if case.check:
        case.check(c)


def test_gurobi_size_limited_licence_is_an_error_status():
    """A model beyond the pip wheel's size-limited licence (2000 variables) is an ERROR row with
    Gurobi's message, never a crash."""
    from subsetsum_lth.solvers.registry import backend_info, get_backend
    if not backend_info("gurobi")["available"]:
        pytest.skip("gurobipy not available")
    from subsetsum_lth.solvers.instances import InstanceBatch, Status
    from subsetsum_lth.solve import SolveConfig, solve_all

    rng = np.random.default_rng(0)
    n = 2001
    batch = InstanceBatch(np.arange(1), np.array([0.3]), rng.uniform(-1, 1, (1, n)) * 1e-3, None, 0.01)
    res = get_backend("gurobi").solve(batch)
    if res.status[0] == Status.OPTIMAL:
        pytest.skip("this Gurobi licence is not size-limited")
    assert res.status[0] == Status.ERROR
    assert "gurobi" in res.messages[0].lower() and "licen" in res.messages[0].lower()
    out = solve_all(batch, SolveConfig(solver="gurobi", workers=1, fallback=False))
    assert out.status[0] == Status.ERROR and "licen" in out.messages[0].lower()
    # (with fallback on, the driver re-solves it with ortools: see tests/test_executors.py)


@pytest.mark.parametrize("radius", ["1e13", "1e300"])
def test_approximate_refuses_a_radius_its_own_readers_would_refuse(tmp_path, capsys, radius):
    """--input-radius above runcheck.MAX_INPUT_RADIUS used to run to exit 0 and write a folder that
    certify, compare and the API then refuse ('recreate the run'): refused before any work."""
    torch.save(_mlp_sd(), tmp_path / "t.pt")
    out = tmp_path / "out"
    rc = main(["approximate", "--target", str(tmp_path / "t.pt"), "--out", str(out), *QUICK,
               "--input-radius", radius])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.splitlines()[-1] == (f"error: --input-radius must be a positive number <= 1e+12, got {float(radius):g}; "
                                    "rescale the inputs or choose a smaller radius")
    assert not out.exists()


@pytest.mark.parametrize("where", ["file", "folder", "device"])
def test_a_fifo_or_device_target_is_refused_before_it_is_opened(tmp_path, where):
    """--target naming a FIFO (or a train-target folder whose target.safetensors is one) blocked
    the reader for ever, and SIGTERM could not stop it (the safetensors reader is native code)."""
    import os
    import subprocess
    import sys
    if where == "device":
        path = shown = "/dev/zero"
        target = Path("/dev/zero")
    else:
        folder = tmp_path / "tf"
        folder.mkdir()
        fifo = folder / "target.safetensors"
        os.mkfifo(fifo)
        target = folder if where == "folder" else fifo
        shown = str(fifo)
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    p = subprocess.run([sys.executable, "-m", "subsetsum_lth", "approximate", "--target", str(target), "--out",
                        str(out), *QUICK], capture_output=True, text=True, timeout=60, env=env)
    kind = "a device" if where == "device" else "a FIFO"
    assert p.returncode == 2, p.stderr
    assert p.stderr.strip().splitlines()[-1] == (
        f"error: target file {shown} is {kind}, not a regular file; pass a checkpoint file (.safetensors, "
        ".pt/.pth/.ckpt/.bin) or a train-target folder")
    assert not out.exists()


def test_a_cached_default_target_that_is_a_fifo_is_refused(tmp_path):
    """The default target's cache is checked, not believed: a FIFO there (listed in a manifest or
    not) is refused instead of blocking the hash or the reader."""
    import os
    import signal
    from subsetsum_lth.default_target import default_target
    from subsetsum_lth.errors import RunFolderError, TargetError
    from tests.helpers import shared_mnist_dir
    data = shared_mnist_dir()
    if data is None:
        pytest.skip("no MNIST files")
    f = tmp_path / "mnist-784-500-10-seed0"
    f.mkdir()
    os.mkfifo(f / "target.safetensors")
    old = signal.signal(signal.SIGALRM, signal.SIG_DFL)     # a regression kills the run, never hangs it
    signal.alarm(30)
    try:
        with pytest.raises(TargetError, match="is a FIFO, not a regular file"):
            default_target(0, data_dir=str(data), cache_dir=tmp_path)
        (f / "manifest.json").write_text(
            '{"format": "subsetsum-lth-manifest", "version": 1, "kind": "target", "files": '
            '{"target.safetensors": {"sha256": "' + "0" * 64 + '", "size": 5}}, "stores": []}')
        with pytest.raises(RunFolderError, match="target.safetensors is not a regular file, so subsetsum-lth "
                                                 "did not write it"):
            default_target(0, data_dir=str(data), cache_dir=tmp_path)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
