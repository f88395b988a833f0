"""Ownership of output folders: a manifest of what the tool wrote, and a lock while it writes.

Every folder the tool writes (a ``train-target`` target folder, an ``approximate`` or
``edge-popup`` run folder, a ``compare`` folder) carries ``manifest.json``::

    {"format": "subsetsum-lth-manifest", "version": 1, "kind": "approximate",
     "tool_version": "0.1.0", "complete": true,
     "files": {"report.json": {"sha256": "…", "size": 1234}, …},
     "stores": ["partial"]}

``files`` lists exactly the files the tool wrote at the top of the folder: a name is added
(with ``sha256: null``, "being written") before its file is written and completed with its
hash and size right after, each time by rewriting the manifest atomically. ``stores`` lists
the tool's own sub-folders (the resume store ``partial/``, which also holds a marker file).

:func:`open_folder` decides whether a command may write into ``--out``: the folder must be
new, empty, or a folder of the same kind with a valid manifest whose listed files are
unchanged (sha256). A folder holding anything else is refused (exit 2) before any work, and
nothing in it is touched. While the command runs it holds ``fcntl.flock`` on
``.subsetsum-lth.lock`` in the folder, so a second command on the same folder is refused.
``--overwrite`` of a folder holding a run writes the new run into the staging folder
``<out>.overwriting`` and swaps it in only once complete
(:func:`subsetsum_lth.overwrite.staged_overwrite`); it is
refused when the folder holds anything its manifest does not list. The tool's own
temporaries (``.<name>.XXXXXXXX.tmp`` for a name it writes) are removed when the folder is
opened and when the command ends, however it ends.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import stat
from pathlib import Path

from subsetsum_lth import __version__
from subsetsum_lth.atomic import check_writable, write_bytes_atomically
from subsetsum_lth.errors import RunFolderError

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
LOCK = ".subsetsum-lth.lock"
FORMAT = "subsetsum-lth-manifest"
VERSION = 1
STORE_MARKER = ".subsetsum-lth-store"
MAX_MANIFEST_BYTES = 4 << 20

#: the files each kind of folder may hold at its top level: the tool writes no others, and a
#: manifest listing any other name is refused (so a crafted manifest cannot make --overwrite
#: delete a user's file)
KIND_FILES = {
    "target": ("target.safetensors", "target.json"),
    "approximate": ("random_net.safetensors", "masks.safetensors", "target.safetensors", "report.json",
                    "metrics.csv", "run_config.json", "weight_error_hist.png", "kept_coefficients.png",
                    "accuracy.png", "witness.safetensors", "box_witness.safetensors",
                    "random_net.compact.safetensors", "masks.compact.safetensors"),
    "edge-popup": ("random_net.safetensors", "masks.safetensors", "target.safetensors", "report.json",
                   "metrics.csv", "training_curve.png"),
    "compare": ("comparison.json", "comparison.csv", "accuracy_vs_kept.png"),
}
#: the tool's own sub-folders per kind
KIND_STORES = {"approximate": ("partial",)}
KIND_NAMES = {"target": "a target folder (train-target)", "approximate": "an approximate run folder",
              "edge-popup": "an edge-popup run folder", "compare": "a compare folder"}

#: files of a resume store: one finished batch per ``<32 hex>.npz``
STORE_FILE = re.compile(r"^[0-9a-f]{32}\.npz$")
# temporaries of atomic.write_atomically / tempfile.mkstemp: ".<name>.<8 random chars>.tmp"
_TMP = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp$")
_PROBE = re.compile(r"^\.probe\.[a-z0-9_]{8}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")

_ACTIVE: dict[str, "FolderWriter"] = {}


def _key(folder: Path) -> str:
    return os.path.realpath(folder)


def sha256_file(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    # O_NONBLOCK: a FIFO put in place of a listed file must not block the hash for ever
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise RunFolderError(f"{path} is not a regular file, so subsetsum-lth did not write it; move it out of "
                             f"{Path(path).parent} or choose another folder")
    with os.fdopen(fd, "rb") as fh:
        while True:
            chunk = fh.read(16 << 20)
            if not chunk:
                break
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def _names(items, limit: int = 8) -> str:
    items = sorted(items)
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


# ----------------------------------------------------------------------------- reading


def read_manifest(folder: Path) -> dict | None:
    """The folder's manifest, validated; None if it has none. Raises RunFolderError if damaged."""
    path = Path(folder) / MANIFEST
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise RunFolderError(f"cannot read {path}: {exc.strerror or exc}; choose another --out") from None
    bad = f"{path} is not a valid subsetsum-lth manifest"
    fix = "; the folder was not written by subsetsum-lth or was changed: choose another --out"
    if not stat.S_ISREG(st.st_mode):
        raise RunFolderError(f"{bad} (not a regular file){fix}")
    if st.st_size > MAX_MANIFEST_BYTES:
        raise RunFolderError(f"{bad} ({st.st_size:,} bytes){fix}")
    try:
        with open(path, "rb") as fh:
            m = json.loads(fh.read(MAX_MANIFEST_BYTES + 1).decode("utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise RunFolderError(f"{bad} ({type(exc).__name__}){fix}") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT or m.get("version") != VERSION:
        raise RunFolderError(f"{bad} (format){fix}")
    if m.get("kind") not in KIND_FILES:
        raise RunFolderError(f"{bad} (kind {m.get('kind')!r}){fix}")
    files, stores = m.get("files"), m.get("stores", [])
    if not isinstance(files, dict) or not isinstance(stores, list):
        raise RunFolderError(f"{bad} (files){fix}")
    for name, e in files.items():
        if not _plain_name(name) or name not in KIND_FILES[m["kind"]] or not isinstance(e, dict):
            raise RunFolderError(f"{bad} (entry {name!r}){fix}")
        h, size = e.get("sha256"), e.get("size")
        if not (h is None or (isinstance(h, str) and _HEX64.match(h))) or \
                not (size is None or (type(size) is int and size >= 0)) or ((h is None) != (size is None)):
            raise RunFolderError(f"{bad} (entry {name!r}){fix}")
    if any(s not in KIND_STORES.get(m["kind"], ()) for s in stores):
        raise RunFolderError(f"{bad} (stores){fix}")
    return m


def _plain_name(name) -> bool:
    return (isinstance(name, str) and 0 < len(name) < 256 and name not in (".", "..")
            and "/" not in name and "\\" not in name and "\0" not in name)


def is_tool_temp(name: str, own_names) -> bool:
    """``name`` is a temporary the tool makes while writing one of ``own_names`` (or a probe)."""
    if _PROBE.match(name):
        return True
    m = _TMP.match(name)
    return bool(m) and m.group("name") in own_names


def _store_own(name: str) -> bool:
    if name == STORE_MARKER or STORE_FILE.match(name):
        return True
    m = _TMP.match(name)
    return bool(m) and bool(STORE_FILE.match(m.group("name")))


# ----------------------------------------------------------------------------- the lock


class _Lock:
    """``fcntl.flock`` on LOCK in the folder, held for the whole command. The file is removed on
    release while still locked; an acquirer checks it locked the file still at that path."""

    def __init__(self, folder: Path):
        self.path, self.fd = Path(folder) / LOCK, None
        try:
            import fcntl
        except ImportError:         # no flock on this platform: no lock (checked writable elsewhere)
            return
        for _ in range(20):
            try:
                # never through a symlink (it could point at a user's file, which the pid would replace)
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
                             | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0), 0o644)
            except OSError as exc:
                if exc.errno == errno.ELOOP or os.path.islink(self.path) or (
                        os.path.lexists(self.path) and not os.path.isfile(self.path)):
                    raise self._not_ours() from None
                raise RunFolderError(f"cannot write to the run folder {folder}: {exc.strerror or exc}; "
                                     "choose another --out") from None
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                os.close(fd)
                raise self._not_ours()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    os.close(fd)
                    raise RunFolderError(f"cannot lock the folder {folder}: {exc.strerror or exc}; "
                                         "choose another --out") from None
                try:
                    pid = os.read(fd, 64).decode("ascii", "replace").strip() or "unknown"
                finally:
                    os.close(fd)
                raise RunFolderError(f"{folder} is in use by another subsetsum-lth process (pid {pid}); "
                                     "wait for it to finish or choose another --out") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
                self.fd = fd
                return
            os.close(fd)        # removed by its releaser between our open and our flock: retry
        raise RunFolderError(f"cannot lock the folder {folder}; try again or choose another --out")

    def _not_ours(self) -> RunFolderError:
        return RunFolderError(f"{self.path} is not the lock file subsetsum-lth makes (a symlink or not a regular "
                              "file); nothing was changed. Remove it, or choose another --out")

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.unlink(self.path)
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None


# ----------------------------------------------------------------------------- writing


class FolderWriter:
    """An output folder opened by :func:`open_folder`: records every file written into it."""

    def __init__(self, folder: Path, kind: str, manifest: dict, lock: _Lock):
        self.folder, self.kind, self.lock = folder, kind, lock
        self.files: dict[str, dict] = dict(manifest.get("files", {}))
        self.stores: list[str] = list(manifest.get("stores", []))
        self.complete = False

    # the names this folder's temporaries may carry
    def own_names(self) -> set[str]:
        return set(KIND_FILES[self.kind]) | set(self.files) | {MANIFEST}

    def write_manifest(self) -> None:
        m = {"format": FORMAT, "version": VERSION, "kind": self.kind, "tool_version": __version__,
             "complete": self.complete, "files": dict(sorted(self.files.items())),
             "stores": sorted(self.stores)}
        write_bytes_atomically(self.folder / MANIFEST, (json.dumps(m, indent=2) + "\n").encode())

    def before_write(self, path: Path) -> None:
        """Called before ``path`` (a file directly in the folder) is written: refuse to replace a
        file the tool did not write, and list the name (hash pending) before it exists."""
        name = path.name
        if name == MANIFEST:
            return
        e = self.files.get(name)
        if e is not None and e["sha256"] is not None and os.path.lexists(path) and \
                sha256_file(path) != (e["sha256"], e["size"]):
            raise RunFolderError(f"{path} changed after subsetsum-lth wrote it (the sha256 no longer matches "
                                 f"{MANIFEST}); it is left as it is: move it out of {self.folder} and run "
                                 "again (finished solver work is kept for --resume)")
        if name not in self.files:
            if os.path.lexists(path):
                raise RunFolderError(f"{path} exists and was not written by subsetsum-lth (it is not in "
                                     f"{MANIFEST}); it is left as it is: move it out of {self.folder} and "
                                     "run again (finished solver work is kept for --resume)")
            if name not in KIND_FILES[self.kind]:
                raise ValueError(f"{name} is not a file of {KIND_NAMES[self.kind]} (add it to manifest.KIND_FILES)")
            self.files[name] = {"sha256": None, "size": None}
            self.write_manifest()

    def after_write(self, path: Path) -> None:
        name = path.name
        if name == MANIFEST:
            return
        digest, size = sha256_file(path)
        self.files[name] = {"sha256": digest, "size": size}
        self.write_manifest()

    def make_store(self, name: str) -> Path:
        """The tool's sub-folder ``name`` (listed in the manifest, with a marker file)."""
        if name not in KIND_STORES.get(self.kind, ()):
            raise ValueError(f"{name} is not a store of a {self.kind} folder")
        d = self.folder / name
        if name not in self.stores:
            if os.path.lexists(d):
                raise RunFolderError(f"{d} exists and was not made by subsetsum-lth; move it out of "
                                     f"{self.folder} or choose another --out")
            self.stores.append(name)
            self.write_manifest()
        d.mkdir(exist_ok=True)
        marker = d / STORE_MARKER
        if not marker.exists():
            write_bytes_atomically(marker, b"resume store of subsetsum-lth; its *.npz files are removed "
                                        b"when the run completes\n")
        return d

    def remove_store(self, name: str) -> None:
        """Remove the tool's own files of store ``name`` and the folder when nothing else is in it."""
        if name not in self.stores:
            return
        d = self.folder / name
        if d.is_dir() and not d.is_symlink():
            for p in d.iterdir():
                if p.name != STORE_MARKER and _store_own(p.name) and p.is_file() and not p.is_symlink():
                    p.unlink()
            others = [p.name for p in d.iterdir() if p.name != STORE_MARKER]
            if others:
                log.warning("%s holds files subsetsum-lth did not write (%s); they are left there",
                            d, _names(others))
                return
            _unlink_quiet(d / STORE_MARKER)
            d.rmdir()
        self.stores.remove(name)
        self.write_manifest()

    def remove_listed(self) -> None:
        """--overwrite: remove every listed file (already verified unchanged) and the stores."""
        for name in list(self.files):
            p = self.folder / name
            if os.path.lexists(p):
                p.unlink()
            del self.files[name]
        for s in list(self.stores):
            self.remove_store(s)
        self.write_manifest()

    def clean_temps(self) -> None:
        own = self.own_names()
        try:
            entries = list(os.scandir(self.folder))
        except OSError:
            return
        for e in entries:
            if is_tool_temp(e.name, own) and e.is_file(follow_symlinks=False):
                _unlink_quiet(Path(e.path))
        for s in self.stores:
            d = self.folder / s
            if d.is_dir() and not d.is_symlink():
                for p in d.iterdir():
                    m = _TMP.match(p.name)
                    if m and STORE_FILE.match(m.group("name")) and p.is_file() and not p.is_symlink():
                        _unlink_quiet(p)

    def finish(self) -> None:
        """The command wrote everything: mark the manifest complete."""
        self.complete = True
        self.write_manifest()

    def close(self) -> None:
        """Remove the tool's temporaries and release the lock (every exit path)."""
        _ACTIVE.pop(_key(self.folder), None)
        try:
            self.clean_temps()
        finally:
            self.lock.release()


def _unlink_quiet(p: Path) -> None:
    try:
        p.unlink()
    except OSError:
        pass


def _foreign_in_fresh(folder: Path) -> list[str]:
    """Entries of a folder without manifest that are not the tool's lock/probe/first manifest temp."""
    return [e.name for e in os.scandir(folder)
            if not (e.name == LOCK or _PROBE.match(e.name) or is_tool_temp(e.name, {MANIFEST}))]


def _verify(folder: Path, kind: str, m: dict | None, hashes: bool = True) -> None:
    """Refuse (RunFolderError) unless ``folder`` is empty (bar the tool's lock/temps) or holds a
    valid manifest of ``kind`` whose listed files are unchanged and no unlisted file the tool
    would write."""
    if m is None:
        foreign = _foreign_in_fresh(folder)
        if foreign:
            raise RunFolderError(
                f"{folder} is not empty and has no {MANIFEST}, so subsetsum-lth did not write it (or an "
                f"older version did): it holds {_names(foreign)}; nothing was changed. Choose a new or "
                "empty folder for --out")
        return
    if m["kind"] != kind:
        raise RunFolderError(
            f"{folder} is {KIND_NAMES[m['kind']]}, not {KIND_NAMES[kind]}; nothing was changed. "
            "Choose another --out")
    changed, odd = [], []
    for name, e in m["files"].items():
        p = folder / name
        try:
            st = os.lstat(p)
        except FileNotFoundError:
            continue
        if not stat.S_ISREG(st.st_mode):
            odd.append(name)
        elif e["sha256"] is not None and (st.st_size != e["size"]
                                          or (hashes and sha256_file(p)[0] != e["sha256"])):
            changed.append(name)
    if changed or odd:
        raise RunFolderError(
            f"{_names(changed + odd)} in {folder} changed after subsetsum-lth wrote "
            f"{'it' if len(changed + odd) == 1 else 'them'} (the sha256 no longer matches {MANIFEST}); "
            "nothing was changed. Move the edited files out of the folder, or choose another --out")
    listed = set(m["files"])
    foreign = [n for n in KIND_FILES[kind] if n not in listed and os.path.lexists(folder / n)]
    for s in KIND_STORES.get(kind, ()):
        d = folder / s
        if not os.path.lexists(d):
            continue
        ours = s in m["stores"] and d.is_dir() and not d.is_symlink() and (
            (d / STORE_MARKER).is_file() or all(_store_own(p.name) for p in d.iterdir()))
        if not ours:
            foreign.append(s + "/")
        else:
            # an entry with the name of a stored batch that is not a plain file (a folder, FIFO or
            # symlink) was not written by the tool: replacing it would fail or remove it
            foreign += [f"{s}/{e.name}" for e in os.scandir(d)
                        if _store_own(e.name) and not e.is_file(follow_symlinks=False)]
    if foreign:
        raise RunFolderError(
            f"{folder} holds {_names(foreign)}, which subsetsum-lth did not write (not in {MANIFEST}); "
            f"nothing was changed. Move {'it' if len(foreign) == 1 else 'them'} out of the folder, or "
            "choose another --out")


def open_folder(out, kind: str, *, overwrite: bool = False, need_bytes: int = 0) -> FolderWriter:
    """Open ``out`` for a ``kind`` command: check it (see the module docstring), lock it, check it
    can be written and has ``need_bytes`` free, remove the tool's stale temporaries, and with
    ``overwrite`` remove the listed files. Raises RunFolderError (nothing touched) on refusal.
    Every write into the folder through :mod:`subsetsum_lth.runfolder` is recorded until
    :meth:`FolderWriter.close` (use :func:`close_folder` in a ``finally``)."""
    if kind not in KIND_FILES:
        raise ValueError(kind)
    folder = Path(out)
    if _key(folder) in _ACTIVE:
        raise RunFolderError(f"{folder} is already open for writing in this process; choose another --out")
    if os.path.lexists(folder) and not folder.is_dir():
        raise RunFolderError(f"--out {folder} exists and is not a folder; choose another --out")
    if folder.is_dir():
        _verify(folder, kind, read_manifest(folder), hashes=False)  # read-only: refuse before creating anything
    else:
        try:
            folder.mkdir(parents=True)
        except FileExistsError:
            pass
        except OSError as exc:
            raise RunFolderError(f"cannot write to the run folder {folder}: {exc.strerror or exc}; "
                                 "choose another --out") from None
    lock = _Lock(folder)
    try:
        m = read_manifest(folder)                          # again, now that no one else writes
        _verify(folder, kind, m)
        check_writable(folder, need_bytes)
        w = FolderWriter(folder, kind, m or {}, lock)
        w.clean_temps()
        _ACTIVE[_key(folder)] = w
        try:
            if overwrite:
                w.remove_listed()
            if overwrite or m is None:
                # an existing manifest is left as it is until the first write, so a run
                # refused after this point (e.g. --resume with other settings) changes nothing
                w.write_manifest()
        except BaseException:
            _ACTIVE.pop(_key(folder), None)
            raise
        return w
    except BaseException:
        lock.release()
        raise


def writer_for(folder) -> FolderWriter | None:
    return _ACTIVE.get(_key(Path(folder)))


def close_folder(out) -> None:
    """Release ``out`` if this process opened it (safe to call when it did not)."""
    w = _ACTIVE.get(_key(Path(out)))
    if w is not None:
        w.close()


@contextlib.contextmanager
def session(out):
    """``with session(out): ...``: whatever folder writer the body opens for ``out`` is closed
    on exit (temporaries removed, lock released), however the body ends; a writer opened
    before (by another caller) is left alone."""
    before = writer_for(out)
    try:
        yield
    finally:
        w = writer_for(out)
        if w is not None and w is not before:
            w.close()


# ----------------------------------------------------------------------------- hooks for runfolder


def before_write(path: Path) -> None:
    w = _ACTIVE.get(_key(path.parent)) if _ACTIVE else None
    if w is not None:
        w.before_write(path)


def after_write(path: Path) -> None:
    w = _ACTIVE.get(_key(path.parent)) if _ACTIVE else None
    if w is not None:
        w.after_write(path)


def verify_file(folder, name: str) -> None:
    """Raise RunFolderError if ``folder`` has a manifest and ``name`` differs from what it lists."""
    folder = Path(folder)
    m = read_manifest(folder)
    if m is None:
        return
    e = m["files"].get(name)
    if e is None or e["sha256"] is None:
        raise RunFolderError(f"{folder / name} is not listed complete in {folder / MANIFEST}; "
                             f"remove {folder} to have it written again")
    if sha256_file(folder / name)[0] != e["sha256"]:
        raise RunFolderError(f"{folder / name} changed after subsetsum-lth wrote it; remove {folder} "
                             "to have it written again")


def check_folder(out, kind: str) -> None:
    """Read-only: refuse ``out`` (RunFolderError) as :func:`open_folder` would, creating and
    locking nothing; for a command that does long work (training a target) before it opens
    the folder, so that a bad --out is refused before that work, not after."""
    folder = Path(out)
    if os.path.lexists(folder) and not folder.is_dir():
        raise RunFolderError(f"--out {folder} exists and is not a folder; choose another --out")
    if folder.is_dir():
        _verify(folder, kind, read_manifest(folder), hashes=False)


__all__ = ["MANIFEST", "LOCK", "KIND_FILES", "open_folder", "check_folder", "close_folder", "session", "read_manifest",
           "writer_for", "verify_file", "sha256_file", "FolderWriter"]
