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


# ----------------------------------------------------------------------------- item 4: certify audits report.json

def _certify(d: Path, capsys, *extra) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = cli.main(["certify", str(d), "--samples", "16", "--steps", "2", *extra])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def _edit(d: Path, fn) -> None:
    r = json.loads((d / "report.json").read_text())
    fn(r)
    (d / "report.json").write_text(json.dumps(r))


def _given(err: str, field: str, stored) -> str:
    """What the mismatch line of ``field`` says the files give (the line must quote ``stored``)."""
    from subsetsum_lth.report_check import fmt
    head = f"  {field}: stored {fmt(stored)}, the files give "
    lines = [ln for ln in err.splitlines() if ln.startswith(head)]
    assert lines, (field, err)
    return lines[0][len(head):].split(" (")[0]


@pytest.fixture(scope="module")
def run342(target, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("audit") / "run"
    assert cli.main(_approx(target, out)) == 0
    return out


def _copy(src: Path, tmp_path: Path) -> Path:
    import shutil
    d = tmp_path / "run"
    shutil.copytree(src, d)
    return d


def test_unedited_run_certifies_with_exit_0_and_records_target_hash(run342, capsys):
    from subsetsum_lth.report_check import target_sha256
    rep = json.loads((run342 / "report.json").read_text())
    assert rep["target_sha256"] == target_sha256(run342 / "target.safetensors")
    assert rep["input_radius_source"] == "default"
    rc, out, err = _certify(run342, capsys)
    # stderr holds the phase announcements only: no mismatch, no note
    assert rc == 0 and "stored" not in err and "differ" not in err and "error" not in err.lower(), err
    rc, out, err = _certify(run342, capsys, "--json")
    check = json.loads(out)["report_check"]
    assert rc == 0 and check["mismatches"] == []
    for f in ("certified_bound", "target_sha256", "kept_parameters", "layers[0].max_weight_error", "eps",
              "weight_eps", "input_radius", "layers[1].kept_units"):
        assert f in check["checked"], f


# field -> (how to forge it, what the files give: a value or a function of the honest report)
FORGED = {
    "weight_eps": (0.001, lambda r: 0.01),
    "eps": (0.5, lambda r: 0.01),
    "layers[0].max_weight_error": (1e-6, lambda r: r["layers"][0]["max_weight_error"]),
    "certified_bound": (0.001, lambda r: r["certified_bound"]),
    "input_radius": (0.5, lambda r: 1.0),
    "kept_parameters": (7, lambda r: r["kept_parameters"]),
    "layers[1].kept_units": (1, lambda r: r["layers"][1]["kept_units"]),
    "target_sha256": ("ab" * 32, lambda r: r["target_sha256"]),
}


def _set(r: dict, field: str, v) -> None:
    if field.startswith("layers["):
        i, key = int(field[7]), field.split(".", 1)[1]
        r["layers"][i][key] = v
    else:
        r[field] = v


@pytest.mark.parametrize("field", sorted(FORGED))
def test_forged_field_is_named_with_both_values_exit_5(run342, tmp_path, capsys, field):
    d = _copy(run342, tmp_path)
    honest = json.loads((d / "report.json").read_text())
    forged, want = FORGED[field]
    _edit(d, lambda r: _set(r, field, forged))
    rc, out, err = _certify(d, capsys)
    assert rc == 5, err
    assert "report.json states" in err and "Traceback" not in err, err
    got = _given(err, field, forged)
    w = want(honest)
    if isinstance(w, str):
        assert got == repr(w), err
    else:
        assert abs(float(got) - w) <= 1e-6 * max(1.0, abs(w)), (got, w, err)


def test_run_without_target_hash_still_certifies_with_a_note(run342, tmp_path, capsys):
    d = _copy(run342, tmp_path)
    _edit(d, lambda r: r.pop("target_sha256"))
    rc, out, err = _certify(d, capsys)
    assert rc == 0, err
    assert "note: report.json records no target_sha256" in out


def test_forged_target_in_run_folder_is_caught_by_its_hash(run342, tmp_path, capsys):
    """target.safetensors replaced by another network of the same shape and its certificate
    and errors rewritten would need the hash rewritten too; the hash alone names it."""
    d = _copy(run342, tmp_path)
    save_target(random_target([3, 4, 2], seed=2), d / "target.safetensors")
    rc, out, err = _certify(d, capsys)
    assert rc == 5
    assert "target_sha256: stored" in err and "run_config.json target_digest" in err, err


# ----------------------------------------------------------------------------- data runs: accuracies, radius, compare

@pytest.fixture(scope="module")
def mnist_run(mnist_dir, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("mnist")
    t = d / "t.safetensors"
    save_target(random_target([784, 3, 10], seed=1), t)
    out = d / "run"
    assert cli.main(["approximate", "--target", str(t), "--out", str(out), *FAST, "--data", "mnist",
                     "--data-dir", str(mnist_dir), "--weight-eps", "0.05", "--store", "compact",
                     "--samples", "16", "--steps", "2"]) == 0
    return out


@pytest.mark.parametrize("field", ["target_accuracy", "pruned_accuracy", "prediction_agreement"])
def test_forged_accuracy_exit_5(mnist_run, mnist_dir, tmp_path, capsys, field):
    d = _copy(mnist_run, tmp_path)
    honest = json.loads((d / "report.json").read_text())
    forged = 0.987
    _edit(d, lambda r: r.__setitem__(field, forged))
    rc, out, err = _certify(d, capsys, "--data-dir", str(mnist_dir))
    assert rc == 5, err
    assert abs(float(_given(err, field, forged)) - honest[field]) <= 1e-9, err


def test_data_run_certifies_and_radius_forged_everywhere_is_caught_by_the_data(mnist_run, mnist_dir, tmp_path,
                                                                            capsys):
    rc, out, err = _certify(mnist_run, capsys, "--data-dir", str(mnist_dir))
    assert rc == 0, err
    rep = json.loads((mnist_run / "report.json").read_text())
    assert rep["input_radius_source"] == "data"
    d = _copy(mnist_run, tmp_path)
    # report.json, run_config.json and the certified bound all say 0.001: only the data disagrees
    from subsetsum_lth.certify_run import certify_run
    _edit(d, lambda r: r.__setitem__("input_radius", 0.001))
    cfg = json.loads((d / "run_config.json").read_text())
    cfg["input_radius"] = 0.001
    (d / "run_config.json").write_text(json.dumps(cfg))
    bound = certify_run(d, samples=4, steps=0, data_dir=mnist_dir)["certified_bound"]
    _edit(d, lambda r: r.__setitem__("certified_bound", bound))
    rc, out, err = _certify(d, capsys, "--data-dir", str(mnist_dir))
    assert rc == 5, err
    assert abs(float(_given(err, "input_radius", 0.001)) - rep["input_radius"]) <= 1e-8 * rep["input_radius"], err
    assert "largest ‖x‖₂ of the mnist images" in err


def test_compare_refuses_a_run_whose_radius_was_edited(mnist_run, mnist_dir, tmp_path, capsys):
    d = _copy(mnist_run, tmp_path)
    capsys.readouterr()
    assert cli.main(["compare", str(d), "--out", str(tmp_path / "ok"), "--no-plots", "--test-subset", "200",
                     "--data-dir", str(mnist_dir)]) == 0
    _edit(d, lambda r: r.__setitem__("input_radius", 0.001))
    capsys.readouterr()
    rc = cli.main(["compare", str(d), "--out", str(tmp_path / "c1"), "--no-plots", "--test-subset", "200",
                   "--data-dir", str(mnist_dir)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err, err
    assert "input_radius 0.001" in err and "run_config.json" in err, err
    (d / "run_config.json").unlink()          # the data still give the radius
    rc = cli.main(["compare", str(d), "--out", str(tmp_path / "c2"), "--no-plots", "--test-subset", "200",
                   "--data-dir", str(mnist_dir)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "the mnist images it was made on give" in err, err
    assert not (tmp_path / "c2" / "comparison.json").exists()


def test_compare_marks_a_ball_that_misses_the_images(run342, tmp_path, capsys):
    """A run certified on ‖x‖ ≤ 1 compared on images of norm up to ~3: the bound stays over its own
    set (named), with why that set misses images, in the entry and the warnings."""
    import numpy as np
    from subsetsum_lth.compare import compare_runs
    x = np.random.default_rng(0).normal(size=(64, 3)).astype(np.float32)
    res = compare_runs([run342], tmp_path / "cmp", plots=False, data={"x": x, "y": np.zeros(64, np.int64)})
    e = res["runs"][0]
    assert isinstance(e["certified_bound"], float) and e["certified_set"].startswith("‖x‖₂ ≤ 1"), e
    assert "‖x‖₂ ≤ 1" in e["certified_set_note"] and e["test_images_in_certified_set"] < 64, e
    assert any("does not hold the images" in w for w in res["warnings"])
