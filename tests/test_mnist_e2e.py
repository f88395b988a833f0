"""Issue 3 end to end on MNIST through the CLI: train a small target, approximate it with the
data, check accuracy, agreement and the report; resume after a forced kill gives identical masks."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from subsetsum_lth.cli import main
from tests.helpers import FAULT_ENV, fault_env


@pytest.fixture(scope="module")
def small_mnist_target(tmp_path_factory, mnist_dir):
    out = tmp_path_factory.mktemp("target")
    rc = main(["train-target", "--out", str(out), "--hidden", "32", "--epochs", "1",
               "--train-subset", "6000", "--batch-size", "32", "--data-dir", str(mnist_dir), "--seed", "0"])
    assert rc == 0
    return out


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "subsetsum_lth", *args], capture_output=True, text=True,
                          timeout=600, env={**os.environ, **(env or {})})


COMMON = ("--data", "mnist", "--weight-eps", "0.01", "--solver", "mitm", "--block-width", "40",
          "--no-progress", "--samples", "64", "--steps", "20")


def test_approximate_mnist_end_to_end(small_mnist_target, mnist_dir, tmp_path, capsys):
    out = tmp_path / "ticket"
    rc = main(["approximate", "--target", str(small_mnist_target), "--data-dir", str(mnist_dir),
               "--out", str(out), *COMMON])
    text = capsys.readouterr().out
    assert rc == 0, text
    r = json.loads((out / "report.json").read_text())
    assert r["target_accuracy"] > 0.8
    assert abs(r["pruned_accuracy"] - r["target_accuracy"]) <= 0.001
    assert r["prediction_agreement"] >= 0.995
    assert r["input_domain"] == "nonnegative"
    assert 9.0 < r["input_radius"] < 30.0          # max ‖x‖ over MNIST in [0,1] scaling
    assert r["empirical_bound"] <= r["certified_bound"]
    assert r["infeasible_count"] == 0
    assert r["spot_check_agreement"] == 1.0 and r["spot_check_max_diff"] < 1e-3
    for png in ("weight_error_hist.png", "kept_coefficients.png", "accuracy.png"):
        assert (out / png).exists()
    assert "test accuracy: target" in text


def test_resume_after_kill_gives_identical_masks(small_mnist_target, mnist_dir, tmp_path):
    args = ["approximate", "--target", str(small_mnist_target), "--data-dir", str(mnist_dir),
            *COMMON, "--batch-size", "2000", "--workers", "2"]
    full = tmp_path / "full"
    assert _cli(*args, "--out", str(full)).returncode == 0
    cut = tmp_path / "cut"
    killed = _cli(*args, "--out", str(cut), env=fault_env(None, **{FAULT_ENV: "4"}))
    assert killed.returncode == 137, killed.stderr
    partial = list((cut / "partial").glob("*.npz"))
    assert len(partial) == 4 and not (cut / "masks.safetensors").exists()
    again = _cli(*args, "--out", str(cut))
    assert again.returncode == 2 and "--resume" in again.stderr      # refuses to clobber
    resumed = _cli(*args, "--out", str(cut), "--resume", "-v")
    assert resumed.returncode == 0, resumed.stderr
    assert "4 of" in resumed.stderr                                    # reused the stored batches
    assert (full / "masks.safetensors").read_bytes() == (cut / "masks.safetensors").read_bytes()
    # resuming a finished run solves nothing and rewrites nothing
    stamp = (cut / "masks.safetensors").stat().st_mtime_ns
    done = _cli(*args, "--out", str(cut), "--resume", "-v")
    assert done.returncode == 0 and "already complete" in done.stderr, done.stderr
    assert (cut / "masks.safetensors").stat().st_mtime_ns == stamp
