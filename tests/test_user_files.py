"""No file the tool did not write is ever touched (issue 11, item 5; temporaries of item 8).

Every case snapshots the folder (names, bytes, modes) before and after the command and checks
the exact exit code and message. Targets are tiny (6-5-3) so each run takes about a second.
"""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from subsetsum_lth import manifest
from subsetsum_lth.cli import main
from subsetsum_lth.target import random_target, save_target
from tests.helpers import FAULT_ENV, fault_env

QUICK = ["--solver", "mitm", "--block-width", "12", "--no-progress", "--samples", "16", "--steps", "5",
         "--workers", "1", "--input-domain", "signed", "--weight-eps", "0.05", "--allow-infeasible"]
ROOT = Path(__file__).resolve().parents[1]


def snapshot(folder: Path) -> dict:
    """Every entry under ``folder``: (kind, mode, bytes)."""
    out = {}
    for p in sorted(Path(folder).rglob("*")):
        st = p.lstat()
        data = p.read_bytes() if stat.S_ISREG(st.st_mode) else None
        out[str(p.relative_to(folder))] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), data)
    return out


def user_files(folder: Path, names, mode=0o640) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        p = folder / n
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"the user's own " + n.encode() + b"\n")
        os.chmod(p, mode)


@pytest.fixture
def tgt(tmp_path) -> Path:
    path = tmp_path / "t.safetensors"
    save_target(random_target([6, 5, 3], bias=True, seed=1), path)
    return path


def approx(tgt, out, *extra) -> int:
    return main(["approximate", "--target", str(tgt), "--out", str(out), *QUICK, *extra])


@pytest.fixture
def run(tgt, tmp_path) -> Path:
    out = tmp_path / "run"
    assert approx(tgt, out) == 0
    return out


def err_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    return err.splitlines()[-1]


def umask_mode() -> int:
    m = os.umask(0o022)
    os.umask(m)
    return 0o666 & ~m


# ----------------------------------------------------------------------------- foreign folders


@pytest.mark.parametrize("names", [["metrics.csv"], ["target.safetensors"], ["weight_error_hist.png"],
                                   ["run_config.json"], ["notes.txt"],
                                   ["metrics.csv", "target.safetensors", "plot.png", "run_config.json"]])
def test_approximate_refuses_a_folder_of_user_files(tgt, tmp_path, capsys, names):
    d = tmp_path / "mine"
    user_files(d, names)
    before = snapshot(d)
    assert approx(tgt, d) == 2
    line = err_line(capsys)
    assert line.startswith(f"error: {d} is not empty and has no manifest.json")
    assert all(n in line for n in names)
    assert "Choose a new or empty folder for --out" in line
    assert snapshot(d) == before


@pytest.mark.parametrize("flag", [[], ["--resume"], ["--overwrite"]])
def test_user_partial_folder_is_refused_with_every_flag(tgt, tmp_path, capsys, flag):
    d = tmp_path / "mine"
    user_files(d, ["partial/mine.npz", "partial/notes.txt", "notes.txt"])
    before = snapshot(d)
    assert approx(tgt, d, *flag) == 2
    line = err_line(capsys)
    assert "has no manifest.json" in line and "partial" in line and "notes.txt" in line
    assert "--resume" not in line                # no hint that would delete the user's partial/
    assert snapshot(d) == before


def test_unlisted_partial_in_a_tool_run_is_refused(run, tgt, capsys):
    user_files(run, ["partial/mine.txt"])
    before = snapshot(run)
    for flag in ([], ["--resume"], ["--overwrite"]):
        assert approx(tgt, run, *flag) == 2
        assert err_line(capsys) == (f"error: {run} holds partial/, which subsetsum-lth did not write (not in "
                                    "manifest.json); nothing was changed. Move it out of the folder, or "
                                    "choose another --out")
        assert snapshot(run) == before


def _edge_popup_run(out: Path) -> Path:
    from subsetsum_lth.edge_popup import EdgePopupConfig, run_edge_popup
    rng = np.random.default_rng(0)
    x = rng.random((64, 6)).astype(np.float32)
    y = rng.integers(0, 3, 64)
    run_edge_popup(EdgePopupConfig(wide="6,8,3", epochs=1, batch_size=32, device="cpu", plots=False),
                   out, data={"x_train": x, "y_train": y, "x_test": x, "y_test": y})
    return out


def test_approximate_resume_onto_an_edge_popup_run_is_refused(tgt, tmp_path, capsys):
    ep = _edge_popup_run(tmp_path / "ep")
    assert manifest.read_manifest(ep)["kind"] == "edge-popup"
    before = snapshot(ep)
    for flag in (["--resume"], ["--overwrite"], []):
        assert approx(tgt, ep, *flag) == 2
        assert err_line(capsys) == (f"error: {ep} is an edge-popup run folder, not an approximate run folder; "
                                    "nothing was changed. Choose another --out")
        assert snapshot(ep) == before


def test_train_target_onto_a_run_folder_is_refused(run, capsys, monkeypatch):
    from subsetsum_lth import train
    monkeypatch.setattr(train, "_fit", lambda *a, **k: pytest.fail("trained before refusing --out"))
    before = snapshot(run)
    assert main(["train-target", "--out", str(run), "--hidden", "4", "--epochs", "1"]) == 2
    assert err_line(capsys) == (f"error: {run} is an approximate run folder, not a target folder "
                                "(train-target); nothing was changed. Choose another --out")
    assert snapshot(run) == before


def test_edge_popup_and_compare_refuse_user_files(run, tmp_path, capsys):
    d = tmp_path / "mine"
    user_files(d, ["metrics.csv"])
    before = snapshot(d)
    assert main(["edge-popup", "--wide", "784,8,10", "--out", str(d), "--no-progress"]) == 2
    line = err_line(capsys)
    assert line.startswith(f"error: {d} is not empty and has no manifest.json") and "metrics.csv" in line
    assert snapshot(d) == before

    d2 = tmp_path / "mine2"
    user_files(d2, ["comparison.csv"])
    before = snapshot(d2)
    assert main(["compare", str(run), "--out", str(d2)]) == 2
    line = err_line(capsys)
    assert line.startswith(f"error: {d2} is not empty and has no manifest.json") and "comparison.csv" in line
    assert snapshot(d2) == before


def test_edge_popup_and_compare_refuse_another_kind(run, tmp_path, capsys):
    before = snapshot(run)
    assert main(["edge-popup", "--wide", "784,8,10", "--out", str(run), "--overwrite", "--no-progress"]) == 2
    assert "is an approximate run folder, not an edge-popup run folder" in err_line(capsys)
    assert main(["compare", str(run), "--out", str(run)]) == 2
    assert "is an approximate run folder, not a compare folder" in err_line(capsys)
    assert snapshot(run) == before


def test_damaged_manifest_is_refused(run, tgt, capsys):
    for text in ("[]", "{", '{"format": "subsetsum-lth-manifest", "version": 1, "kind": "banana", "files": {}}',
                 '{"format": "subsetsum-lth-manifest", "version": 1, "kind": "approximate", '
                 '"files": {"../x": {"sha256": null, "size": null}}}'):
        (run / "manifest.json").write_text(text)
        before = snapshot(run)
        assert approx(tgt, run, "--overwrite") == 2
        assert "manifest.json is not a valid subsetsum-lth manifest" in err_line(capsys)
        assert snapshot(run) == before


# ----------------------------------------------------------------------------- own folders


def test_run_folder_manifest_lists_exactly_what_was_written(run):
    m = manifest.read_manifest(run)
    assert m["kind"] == "approximate" and m["complete"] is True and m["stores"] == []
    on_disk = {p.name for p in run.iterdir()} - {"manifest.json"}
    assert set(m["files"]) == on_disk                     # no lock, no temporaries, no partial/
    for name, e in m["files"].items():
        assert (e["sha256"], e["size"]) == manifest.sha256_file(run / name)
        assert stat.S_IMODE((run / name).stat().st_mode) == umask_mode(), name   # not mkstemp's 0600
    assert stat.S_IMODE((run / "manifest.json").stat().st_mode) == umask_mode()


def test_overwrite_refused_while_the_folder_holds_user_files(run, tgt, capsys):
    """--overwrite writes the new run beside the old one and swaps the folders when it is complete
    (issue 21), so a file the tool did not write would have to move: refused, nothing changed."""
    user_files(run, ["notes.txt", ".hidden-notes.abcdefgh.tmp"])
    before = snapshot(run)
    assert approx(tgt, run, "--overwrite", "--seed", "3") == 2
    assert err_line(capsys) == (f"error: {run} holds .hidden-notes.abcdefgh.tmp, notes.txt, which subsetsum-lth "
                                "did not write (not in manifest.json); --overwrite replaces the whole folder, so "
                                "move them out first (nothing was changed), or choose another --out")
    assert snapshot(run) == before
    assert not run.with_name(run.name + ".overwriting").exists()
    listed = set(manifest.read_manifest(run)["files"])
    for name in ("notes.txt", ".hidden-notes.abcdefgh.tmp"):
        (run / name).unlink()
    assert approx(tgt, run, "--overwrite", "--seed", "3") == 0
    after = snapshot(run)
    assert after["masks.safetensors"] != before["masks.safetensors"]       # a new run (seed 3)
    assert set(manifest.read_manifest(run)["files"]) == listed


def test_overwrite_refuses_an_edited_listed_file(run, tgt, capsys):
    rep = json.loads((run / "report.json").read_text())
    rep["certified_bound"] = 0.0
    (run / "report.json").write_text(json.dumps(rep))
    before = snapshot(run)
    for flag in (["--overwrite"], ["--resume"]):
        assert approx(tgt, run, *flag) == 2
        assert err_line(capsys) == (f"error: report.json in {run} changed after subsetsum-lth wrote it (the "
                                    "sha256 no longer matches manifest.json); nothing was changed. Move the "
                                    "edited files out of the folder, or choose another --out")
        assert snapshot(run) == before


def test_user_file_with_a_tool_name_in_a_tool_run_is_refused(run, tgt, capsys):
    # accuracy.png is written only with --data: here the user's own file
    user_files(run, ["accuracy.png"])
    before = snapshot(run)
    assert approx(tgt, run, "--overwrite") == 2
    assert err_line(capsys) == (f"error: {run} holds accuracy.png, which subsetsum-lth did not write (not in "
                                "manifest.json); nothing was changed. Move it out of the folder, or choose "
                                "another --out")
    assert snapshot(run) == before


def test_a_late_write_never_replaces_an_unlisted_file(run):
    """The write hook itself refuses, whatever the caller: the last line of defence."""
    from subsetsum_lth import runfolder as rf
    user_files(run, ["later.json"])
    before = snapshot(run)
    w = manifest.open_folder(run, "approximate")
    try:
        with pytest.raises(manifest.RunFolderError, match="later.json exists and was not written by"):
            rf.atomic_write_json(run / "later.json", {"a": 1})
    finally:
        w.close()
    after = snapshot(run)
    assert after["later.json"] == before["later.json"]


def test_a_listed_file_edited_during_the_run_is_not_replaced(run):
    from subsetsum_lth import runfolder as rf
    w = manifest.open_folder(run, "approximate")
    try:
        (run / "metrics.csv").write_text("the user's edit\n")
        with pytest.raises(manifest.RunFolderError, match="metrics.csv changed after subsetsum-lth wrote it"):
            rf.atomic_write_csv(run / "metrics.csv", [{"a": 1}])
        assert (run / "metrics.csv").read_text() == "the user's edit\n"
        rf.atomic_write_json(run / "report.json", {"b": 2})     # an unchanged listed file is replaced
    finally:
        w.close()
    assert manifest.read_manifest(run)["files"]["report.json"]["sha256"] == \
        manifest.sha256_file(run / "report.json")[0]


# ----------------------------------------------------------------------------- lock


def test_concurrent_overwrite_is_refused_while_the_folder_is_locked(run, tgt, capsys):
    code = ("import sys; from pathlib import Path; from subsetsum_lth.manifest import _Lock; "
            f"l = _Lock(Path({str(run)!r})); print('locked', flush=True); sys.stdin.read()")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    holder = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              env=env, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = snapshot(run)
        for flag in (["--overwrite"], ["--resume"]):
            assert approx(tgt, run, *flag) == 2
            assert err_line(capsys) == (f"error: {run} is in use by another subsetsum-lth process "
                                        f"(pid {holder.pid}); wait for it to finish or choose another --out")
            assert snapshot(run) == before
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert approx(tgt, run, "--overwrite") == 0            # released with its process
    assert not (run / manifest.LOCK).exists()


# ----------------------------------------------------------------------------- writability


def _unwritable_empty_dir(tmp_path: Path) -> Path:
    if os.geteuid() != 0:
        d = tmp_path / "ro"
        d.mkdir()
        d.chmod(0o555)
        return d
    # root ignores permission bits: an empty folder of a read-only pseudo file system
    for cand in ("/sys/kernel/software_nodes", "/sys/kernel/iommu_groups", "/sys/fs/pstore"):
        d = Path(cand)
        try:
            if not d.is_dir() or any(d.iterdir()):
                continue
            fd, p = tempfile.mkstemp(dir=d)
        except OSError:
            return d
        os.close(fd)
        os.unlink(p)
    pytest.skip("no empty folder that root cannot write to")


def test_train_target_unwritable_out_fails_before_training(tmp_path, capsys, monkeypatch):
    from subsetsum_lth import train
    monkeypatch.setattr(train, "_fit", lambda *a, **k: pytest.fail("trained before checking --out"))
    monkeypatch.setattr(train, "_train_target", lambda *a, **k: pytest.fail("started before checking --out"))
    d = _unwritable_empty_dir(tmp_path)
    assert main(["train-target", "--out", str(d), "--hidden", "4", "--epochs", "1"]) == 2
    line = err_line(capsys)
    assert line.startswith(f"error: cannot write to the run folder {d}: ") and line.endswith("choose another --out")
    f = tmp_path / "a_file"
    f.write_text("x")
    assert main(["train-target", "--out", str(f), "--hidden", "4"]) == 2
    assert err_line(capsys) == f"error: --out {f} exists and is not a folder; choose another --out"


@pytest.mark.parametrize("argv", [["edge-popup", "--wide", "784,8,10", "--no-progress"], ["compare"]])
def test_edge_popup_and_compare_unwritable_out(run, tmp_path, capsys, argv):
    d = _unwritable_empty_dir(tmp_path)
    args = argv + ([str(run)] if argv == ["compare"] else []) + ["--out", str(d)]
    assert main(args) == 2
    assert err_line(capsys).startswith(f"error: cannot write to the run folder {d}: ")


# ----------------------------------------------------------------------------- temporaries


def test_resume_after_sigkill_removes_the_tools_temporaries_only(tmp_path, capsys):
    big = tmp_path / "big.safetensors"
    save_target(random_target([12, 16, 4], bias=True, seed=2), big)
    out = tmp_path / "run"
    args = ["approximate", "--target", str(big), "--out", str(out), *QUICK, "--batch-size", "20", "--no-plots"]
    env = fault_env(dict(os.environ, PYTHONPATH=str(ROOT)), **{FAULT_ENV: "2"})
    p = subprocess.run([sys.executable, "-m", "subsetsum_lth", *args], env=env, capture_output=True)
    assert p.returncode == 137, p.stderr[-500:]               # died as under kill -9
    assert (out / "partial" / ".subsetsum-lth-store").exists() and (out / manifest.LOCK).exists()
    # what a kill in the middle of writes leaves behind, and the user's look-alikes
    tool_tmp = [".masks.safetensors.k1ll3d_x.tmp", ".manifest.json.abcd_123.tmp", ".probe.zz9_ab12",
                "partial/." + "0" * 32 + ".npz.q1w2e3r4.tmp"]
    users = [".notes.txt.abcd1234.tmp", "partial/mine.txt"]
    user_files(out, tool_tmp)
    user_files(out, users)
    before = snapshot(out)
    assert main(args + ["--resume"]) == 0
    after = snapshot(out)
    for t in tool_tmp:
        assert t not in after, t
    for u in users:
        assert after[u] == before[u], u
    # the store's own files are gone; the user's file in it and so the folder stay
    assert sorted(p.name for p in (out / "partial").iterdir()) == [".subsetsum-lth-store", "mine.txt"]
    assert manifest.LOCK not in after
    assert {n for n in after if "/" not in n} == set(manifest.read_manifest(out)["files"]) | {
        "manifest.json", "partial", users[0]}
    (out / "partial" / "mine.txt").unlink()
    assert main(args + ["--resume"]) == 0                   # complete: nothing solved, store removed
    assert not (out / "partial").exists()


def test_error_exit_removes_temporaries_and_releases_the_lock(tgt, tmp_path, monkeypatch):
    from subsetsum_lth import runfolder as rf
    from subsetsum_lth.approximate import ApproximateConfig, approximate
    from subsetsum_lth.construction import ConstructionConfig
    from subsetsum_lth.solve import SolveConfig
    from subsetsum_lth.target import load_target
    out = tmp_path / "run"
    real = rf._atomic_write

    def failing(path, write, size=None):
        if Path(path).name == "report.json":
            def half(fh):
                fh.write(b'{"half": ')
                raise OSError(28, "No space left on device")
            return real(path, half, size)
        return real(path, write, size)
    monkeypatch.setattr(rf, "_atomic_write", failing)
    cfg = ApproximateConfig(construction=ConstructionConfig(input_domain="signed", block_width=12),
                            solve=SolveConfig(solver="mitm", workers=1), weight_eps=0.05,
                            allow_infeasible=True, plots=False, empirical_samples=8, ascent_steps=2)
    from subsetsum_lth.errors import DiskFull
    with pytest.raises(DiskFull, match="disk full while writing report.json"):
        approximate(load_target(tgt), cfg, out)
    names = {p.name for p in out.iterdir()}
    assert not any(n.endswith(".tmp") for n in names) and manifest.LOCK not in names
    assert "report.json" not in names
    assert manifest.read_manifest(out)["files"]["report.json"] == {"sha256": None, "size": None}
    monkeypatch.setattr(rf, "_atomic_write", real)
    w = manifest.open_folder(out, "approximate", overwrite=True)    # the folder is free and still ours
    w.close()


def test_compare_rewrites_its_own_folder_and_keeps_user_files(tmp_path, capsys):
    from subsetsum_lth.compare import compare_runs
    ep = _edge_popup_run(tmp_path / "ep")
    rng = np.random.default_rng(1)
    data = {"x": rng.random((32, 6)).astype(np.float32), "y": rng.integers(0, 3, 32)}
    out = tmp_path / "cmp"
    compare_runs([ep], out, data=data, device="cpu", plots=False)
    m = manifest.read_manifest(out)
    assert m["kind"] == "compare" and set(m["files"]) == {"comparison.csv", "comparison.json"}
    user_files(out, ["notes.txt"])
    before = snapshot(out)
    compare_runs([ep], out, data=data, device="cpu", plots=False)
    assert snapshot(out)["notes.txt"] == before["notes.txt"]
    (out / "comparison.csv").write_text("edited\n")
    before = snapshot(out)
    with pytest.raises(manifest.RunFolderError, match="comparison.csv in .* changed after subsetsum-lth"):
        compare_runs([ep], out, data=data, device="cpu", plots=False)
    assert snapshot(out) == before


def test_train_target_writes_a_manifest_and_refuses_an_edited_target(tmp_path, capsys, mnist_dir):
    out = tmp_path / "target"
    args = ["train-target", "--out", str(out), "--hidden", "4", "--epochs", "1", "--train-subset", "256",
            "--data-dir", str(mnist_dir)]
    assert main(args) == 0
    m = manifest.read_manifest(out)
    assert m["kind"] == "target" and set(m["files"]) == {"target.safetensors", "target.json"}
    assert stat.S_IMODE((out / "target.safetensors").stat().st_mode) == umask_mode()
    assert main(args) == 0                                    # its own folder: written again
    capsys.readouterr()
    with open(out / "target.safetensors", "ab") as fh:
        fh.write(b"\0")
    before = snapshot(out)
    assert main(args) == 2
    assert "target.safetensors in" in err_line(capsys)
    assert snapshot(out) == before


def test_a_second_writer_in_the_same_process_does_not_release_the_first(run, tgt, capsys):
    w = manifest.open_folder(run, "approximate")
    try:
        assert approx(tgt, run, "--overwrite") == 2
        assert err_line(capsys) == (f"error: {run} is already open for writing in this process; "
                                    "choose another --out")
        assert manifest.writer_for(run) is w and (run / manifest.LOCK).exists()
    finally:
        w.close()
    assert not (run / manifest.LOCK).exists()


# ----------------------------------------------------------------------------- hostile manifests and locks


@pytest.mark.parametrize("digest", ["null", "match"])
def test_a_manifest_listing_a_user_file_does_not_make_overwrite_delete_it(tgt, tmp_path, capsys, digest):
    """The manifest is an input too: a name the tool never writes (thesis.tex) is refused, with a
    null or a matching sha256, and nothing in the folder changes."""
    out = tmp_path / "crafted"
    user_files(out, ["thesis.tex"])
    h, size = manifest.sha256_file(out / "thesis.tex")
    entry = {"sha256": None, "size": None} if digest == "null" else {"sha256": h, "size": size}
    (out / "manifest.json").write_text(json.dumps({"format": "subsetsum-lth-manifest", "version": 1,
                                                   "kind": "approximate", "files": {"thesis.tex": entry},
                                                   "stores": []}))
    before = snapshot(out)
    assert approx(tgt, out, "--overwrite") == 2
    assert err_line(capsys) == (f"error: {out}/manifest.json is not a valid subsetsum-lth manifest (entry "
                                "'thesis.tex'); the folder was not written by subsetsum-lth or was changed: "
                                "choose another --out")
    assert snapshot(out) == before


@pytest.mark.parametrize("kind", ["symlink", "fifo"])
@pytest.mark.parametrize("fresh", [True, False])
def test_a_lock_file_that_is_a_symlink_or_fifo_is_refused_not_written_through(tgt, tmp_path, capsys, kind,
                                                                               fresh, request):
    """.subsetsum-lth.lock pointing at a user's file: the pid must not replace the file's contents."""
    home = tmp_path / "home"
    user_files(home, ["thesis.tex"])
    if fresh:
        out = tmp_path / "fresh"
        out.mkdir()
    else:
        out = request.getfixturevalue("run")
    lock = out / ".subsetsum-lth.lock"
    if kind == "symlink":
        lock.symlink_to(home / "thesis.tex")
    else:
        os.mkfifo(lock)
    before, before_home = snapshot(out), snapshot(home)
    assert approx(tgt, out, "--overwrite") == 2
    assert err_line(capsys) == (f"error: {lock} is not the lock file subsetsum-lth makes (a symlink or not a "
                                "regular file); nothing was changed. Remove it, or choose another --out")
    assert snapshot(out) == before and snapshot(home) == before_home


@pytest.mark.parametrize("kind", ["folder", "fifo", "symlink"])
@pytest.mark.parametrize("flag", ["--resume", "--overwrite"])
def test_a_store_entry_with_a_batch_name_that_is_not_a_file_is_refused(tgt, run, tmp_path, capsys, kind, flag):
    """partial/<32 hex>.npz as the user's folder (or a FIFO, or a symlink): --resume crashed with
    IsADirectoryError (exit 1, traceback) when it stored that batch; now refused before any work."""
    w = manifest.open_folder(run, "approximate")
    try:
        w.make_store("partial")
    finally:
        w.close()
    entry = run / "partial" / ("0123456789abcdef" * 2 + ".npz")
    if kind == "folder":
        user_files(entry, ["notes.txt"])
    elif kind == "fifo":
        os.mkfifo(entry)
    else:
        user_files(tmp_path / "home", ["thesis.tex"])
        entry.symlink_to(tmp_path / "home" / "thesis.tex")
    before = snapshot(run)
    assert approx(tgt, run, flag) == 2
    assert err_line(capsys) == (f"error: {run} holds partial/{entry.name}, which subsetsum-lth did not write (not "
                                "in manifest.json); nothing was changed. Move it out of the folder, or choose "
                                "another --out")
    assert snapshot(run) == before
