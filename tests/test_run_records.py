"""Issue 21: a run folder survives a full disk and --overwrite, --resume of a finished run leaves
it finished, identical runs write identical bytes, and `certify` checks every figure report.json
states against the run's files (exit 5 listing each field that differs)."""
from __future__ import annotations

import errno
import hashlib
import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from subsetsum_lth import cli
from subsetsum_lth.target import random_target, save_target

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--workers", "1", "--no-plots", "--no-progress", "--solver", "mitm"]


def _snap(d: Path) -> dict:
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(d.rglob("*")) if p.is_file() and not p.is_symlink()}


@pytest.fixture(scope="module")
def target(tmp_path_factory) -> Path:
    t = tmp_path_factory.mktemp("rec") / "t342.safetensors"
    save_target(random_target([3, 4, 2], seed=1), t)
    return t


def _approx(target: Path, out: Path, *extra) -> list[str]:
    return ["approximate", "--target", str(target), "--out", str(out), *FAST, *extra]


def _limited(args: list[str], limit: int) -> subprocess.CompletedProcess:
    """The CLI in a subprocess whose files may not grow past ``limit`` bytes (RLIMIT_FSIZE):
    writing a larger file fails with EFBIG, as on a full disk."""
    def pre():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               MPLBACKEND="Agg", PYTHONDONTWRITEBYTECODE="1")
    return subprocess.run([sys.executable, "-m", "subsetsum_lth", *args], capture_output=True, text=True,
                          timeout=120, env=env, cwd=ROOT, preexec_fn=pre)


# ----------------------------------------------------------------------------- item 3: full disk

def test_file_size_limit_is_one_line_exit_2_and_resume_completes(target, tmp_path, capsys):
    out = tmp_path / "run"
    r = _limited(_approx(target, out), 4096)      # random_net.safetensors (~8 kB) cannot be written
    assert r.returncode == 2, r.stderr
    err = r.stderr.strip()
    assert "\n" not in err and "Traceback" not in err, err
    assert err.startswith("error: disk full while writing random_net.safetensors"), err
    assert "needed ~8." in err and "kB" in err and "free at" in err and "--resume" in err, err
    assert list((out / "partial").glob("*.npz")), "finished solver batches must be kept"
    assert not list(out.glob(".*.tmp"))
    capsys.readouterr()
    assert cli.main(_approx(target, out, "--resume")) == 0
    assert json.loads((out / "manifest.json").read_text())["complete"] is True
    assert not (out / "partial").exists()


def test_overwrite_on_full_disk_keeps_old_run_byte_for_byte(target, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(_approx(target, out, "--weight-eps", "0.02")) == 0
    before = _snap(out)
    r = _limited(_approx(target, out, "--overwrite"), 4096)
    assert r.returncode == 2, r.stderr
    err = r.stderr.strip()
    assert "\n" not in err and err.startswith("error: disk full while writing"), err
    assert f"{out} is unchanged" in err, err
    assert _snap(out) == before                        # the old complete run, untouched
    assert json.loads((out / "manifest.json").read_text())["complete"] is True
    stage = tmp_path / "run.overwriting"
    assert list((stage / "partial").glob("*.npz"))     # the new run's finished work is kept
    # space freed: the same command continues the staged run and swaps it in
    capsys.readouterr()
    assert cli.main(_approx(target, out, "--overwrite")) == 0
    assert not stage.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    rep = json.loads((out / "report.json").read_text())
    assert rep["weight_eps"] == 0.01
    assert json.loads((out / "manifest.json").read_text())["complete"] is True
    assert cli.main(["certify", str(out), "--samples", "16", "--steps", "2"]) == 0


def test_enospc_at_report_write_in_process(target, tmp_path, capsys, monkeypatch):
    """ENOSPC raised by fsync when report.json is written (as on NFS), in this process."""
    out = tmp_path / "run"
    assert cli.main(_approx(target, out)) == 0
    before = _snap(out)
    real = os.fsync

    def fsync(fd):
        if ".report.json." in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)
    monkeypatch.setattr(os, "fsync", fsync)
    capsys.readouterr()
    rc = cli.main(_approx(target, out, "--overwrite", "--weight-eps", "0.02"))
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert "\n" not in err and err.startswith("error: disk full while writing report.json: needed ~"), err
    assert _snap(out) == before
    monkeypatch.setattr(os, "fsync", real)
    assert cli.main(_approx(target, out, "--overwrite", "--weight-eps", "0.02")) == 0
    assert json.loads((out / "report.json").read_text())["weight_eps"] == 0.02
    assert not (tmp_path / "run.overwriting").exists()


def test_overwrite_refused_when_folder_holds_a_users_file(target, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(_approx(target, out)) == 0
    (out / "notes.txt").write_text("mine")
    before = _snap(out)
    capsys.readouterr()
    assert cli.main(_approx(target, out, "--overwrite")) == 2
    err = capsys.readouterr().err.strip()
    assert "notes.txt" in err and "did not write" in err and "\n" not in err, err
    assert _snap(out) == before and not (tmp_path / "run.overwriting").exists()


def test_overwrite_of_complete_run_swaps_and_leaves_no_stage(target, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(_approx(target, out, "--weight-eps", "0.02")) == 0
    assert cli.main(_approx(target, out, "--overwrite")) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert json.loads((out / "report.json").read_text())["weight_eps"] == 0.01
    m = json.loads((out / "manifest.json").read_text())
    assert m["complete"] is True and sorted(m["files"]) == sorted(
        p.name for p in out.iterdir() if p.name != "manifest.json")


# ----------------------------------------------------------------------------- item 7

def test_resume_of_complete_run_keeps_manifest_complete(target, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(_approx(target, out)) == 0
    before = _snap(out)
    capsys.readouterr()
    assert cli.main(_approx(target, out, "--resume")) == 0
    err = capsys.readouterr().err
    assert "already complete" in err and "nothing to do" in err, err
    assert json.loads((out / "manifest.json").read_text())["complete"] is True
    assert _snap(out) == before


def test_identical_runs_write_identical_bytes(target, tmp_path):
    # separate processes: safetensors' metadata order came from a per-process hash seed
    for name in ("a", "b"):
        r = _limited(_approx(target, tmp_path / name), resource.RLIM_INFINITY)
        assert r.returncode == 0, r.stderr
    for name in ("target.safetensors", "random_net.safetensors", "masks.safetensors", "witness.safetensors",
                 "run_config.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
