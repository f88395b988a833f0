"""``--overwrite`` without losing the old run: the new run is written into the staging folder
``<out>.overwriting`` beside ``out`` and swapped in only once complete (:func:`staged_overwrite`).
The ownership rules it keeps (what the tool wrote, the lock) are :mod:`subsetsum_lth.manifest`'s.
"""
from __future__ import annotations

import contextlib
import errno
import logging
import os
from pathlib import Path

from subsetsum_lth.errors import RunFolderError
from subsetsum_lth.manifest import (KIND_FILES, LOCK, MANIFEST, STORE_FILE, STORE_MARKER, _names, _store_own,
                                    _unlink_quiet, check_folder, is_tool_temp, open_folder, read_manifest)

log = logging.getLogger("subsetsum_lth.manifest")     # the logger of the module it came from (manifest)


#: the tool's staging folder for ``--overwrite`` of ``<out>``: ``<out>.overwriting`` beside it
STAGE_SUFFIX = ".overwriting"


def stage_path(out) -> Path:
    out = Path(out)
    return out.parent / (out.name + STAGE_SUFFIX)


def _holds_run(folder: Path) -> dict | None:
    """The manifest of ``folder`` if it lists files or stores (a run to replace), else None."""
    if not folder.is_dir():
        return None
    m = read_manifest(folder)
    return m if m is not None and (m["files"] or m["stores"]) else None


def _unlisted(folder: Path, m: dict) -> list[str]:
    """Entries of ``folder`` that its manifest ``m`` does not account for."""
    own = set(KIND_FILES[m["kind"]]) | set(m["files"]) | {MANIFEST}
    return [e.name for e in os.scandir(folder)
            if not (e.name in m["files"] or e.name in m["stores"] or e.name in (MANIFEST, LOCK)
                    or is_tool_temp(e.name, own))]


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap the paths ``a`` and ``b`` (Linux renameat2 RENAME_EXCHANGE); False where
    the system cannot."""
    import ctypes
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(str(a)), at_fdcwd, os.fsencode(str(b)), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, getattr(errno, "ENOTSUP", errno.EINVAL), errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(a))


def _remove_tool_folder(folder: Path, m: dict | None, what: str) -> None:
    """Remove what the tool wrote in ``folder`` (its manifest ``m``: the listed files, the stores'
    own files, the manifest, the lock, the tool's temporaries), then the folder if that empties it.
    Anything else is left where it is, with a warning."""
    if m is not None:
        for name in m["files"]:
            _unlink_quiet(folder / name)
        own = set(KIND_FILES[m["kind"]]) | set(m["files"]) | {MANIFEST}
        for e in list(os.scandir(folder)):
            if is_tool_temp(e.name, own) and e.is_file(follow_symlinks=False):
                _unlink_quiet(Path(e.path))
        for s in m["stores"]:
            d = folder / s
            if d.is_dir() and not d.is_symlink():
                for p in d.iterdir():
                    if (p.name == STORE_MARKER or _store_own(p.name)) and p.is_file() and not p.is_symlink():
                        _unlink_quiet(p)
                with contextlib.suppress(OSError):
                    d.rmdir()
        _unlink_quiet(folder / MANIFEST)
    _unlink_quiet(folder / LOCK)
    try:
        folder.rmdir()
    except OSError:
        left = [e.name for e in os.scandir(folder)] if folder.is_dir() else []
        log.warning("%s (%s) still holds %s, which subsetsum-lth did not write; it is left there",
                    folder, what, _names(left))


@contextlib.contextmanager
def staged_overwrite(out, kind: str, enabled: bool = True):
    """``--overwrite`` without losing the old run before the new one is complete.

    Yields the folder the command writes into: ``out`` itself unless ``enabled`` and ``out``
    holds a run of ``kind`` (a manifest listing files or stores). Then ``out`` is checked (as
    :func:`open_folder` does: every listed file unchanged) and locked for the whole command,
    and refused (nothing changed) if it holds anything its manifest does not list (a user's
    file would otherwise have to be moved); the new run is written into the staging folder
    ``<out>.overwriting`` beside it (the tool's own: a run folder with its manifest). When the
    body returns, or raises an exception whose ``run_written`` attribute is true (an
    IncompleteRun: everything was written), the two folders are swapped (atomically where the
    system has renameat2, else by two renames) and the old run's listed files are removed.
    On any other exception ``out`` is left unchanged; the staging folder is kept when it holds
    finished solver batches (running the same command again continues them), else removed."""
    out = Path(out)
    m = _holds_run(out) if enabled else None
    if m is None:
        yield out
        return
    stage = stage_path(out)
    old = open_folder(out, kind)                  # checks every listed file, locks out, writes nothing
    try:
        foreign = _unlisted(out, m)
        if foreign:
            raise RunFolderError(
                f"{out} holds {_names(foreign)}, which subsetsum-lth did not write (not in {MANIFEST}); "
                f"--overwrite replaces the whole folder, so move {'it' if len(foreign) == 1 else 'them'} "
                "out first (nothing was changed), or choose another --out")
        if os.path.lexists(stage):
            check_folder(stage, kind)            # the tool's staging folder of an earlier attempt, or refused
        ok = False
        try:
            yield stage
            ok = True
        except BaseException as exc:
            if getattr(exc, "run_written", False):
                _swap_in(out, stage, kind)
            else:
                _drop_stage(stage)
                try:                   # for the CLI's line: the old run is unchanged; where the work is
                    exc.overwrite_stage = stage if stage.is_dir() else None
                except AttributeError:
                    pass
            raise
        if ok:
            _swap_in(out, stage, kind)
    finally:
        old.close()


def _drop_stage(stage: Path) -> None:
    """After a failed --overwrite: keep the staging folder if it holds finished solver batches
    (the same command continues them), else remove what the tool wrote there."""
    try:
        m = read_manifest(stage)
    except RunFolderError:
        return
    if m is None:
        return
    work = any(STORE_FILE.match(p.name) for s in m["stores"] if (stage / s).is_dir()
               for p in (stage / s).iterdir())
    if not work:
        _remove_tool_folder(stage, m, "the unfinished new run")


def _swap_in(out: Path, stage: Path, kind: str) -> None:
    """Put the complete new run in ``stage`` at ``out`` and remove the old run."""
    m_old = read_manifest(out)
    if _exchange(stage, out):
        where = stage
    else:
        where = out.parent / f".{out.name}.old-{os.getpid()}"
        os.rename(out, where)
        os.rename(stage, out)
    log.info("--overwrite: the new run is in %s; removing the old one", out)
    _remove_tool_folder(where, m_old, "the replaced run")
