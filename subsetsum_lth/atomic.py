"""Atomic file writing, the bottom of every writer: a temporary file beside the target, fsync,
rename. Readers see the old file or the whole new one, never a partial one; a full disk (or a
file-size limit, or a quota) is one :class:`~subsetsum_lth.errors.DiskFull` line naming the file.

Pure: it knows nothing of manifests or run folders, so both :mod:`subsetsum_lth.manifest` (which
writes its own ``manifest.json`` with it) and :mod:`subsetsum_lth.runfolder` (which lists every
file it writes in the folder's manifest) import it.
"""
from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path

from subsetsum_lth.errors import DiskFull, RunFolderError


def _file_mode() -> int:
    """The mode a plainly created file gets (0666 less the umask), not mkstemp's 0600."""
    global _MODE
    if _MODE is None:
        mask = os.umask(0o022)
        os.umask(mask)
        _MODE = 0o666 & ~mask
    return _MODE


_MODE: int | None = None


def write_atomically(path: Path, write, size: int | None = None) -> None:
    """Write ``path`` through ``write(binary file)`` into a temporary file beside it, fsync, and
    rename it into place: readers see the old file or the whole new one, never a partial one.
    Nothing else: no manifest bookkeeping (that is :func:`subsetsum_lth.runfolder._atomic_write`,
    which wraps this). A full disk (or a file-size limit or quota) raises
    :class:`subsetsum_lth.errors.DiskFull` naming the file and ``size``, the bytes it needs (when
    known)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise_if_full(exc, path, size or 0)
        raise
    written = 0
    try:
        os.fchmod(fd, _file_mode())
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            written = fh.tell()
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            written = max(written, os.stat(tmp).st_size)
        except OSError:
            pass
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise_if_full(exc, path, size or written)
        raise


#: errnos of a full disk, a file-size limit (RLIMIT_FSIZE) and a full quota
DISK_FULL_ERRNOS = tuple(e for e in (errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", None)) if e is not None)


def disk_full_message(path, needed: int, exc: OSError) -> str:
    """'disk full while writing FILE: needed ~N MB, M MB free at FOLDER' (with the system's reason
    when it is a file-size limit or a quota rather than the disk)."""
    path = Path(path)
    try:
        free = shutil.disk_usage(path.parent if path.parent.exists() else ".").free
        free_s = f"{_size(free)} free"
    except OSError:
        free_s = "free space unknown"
    why = "" if exc.errno == errno.ENOSPC else f" ({exc.strerror or os.strerror(exc.errno)})"
    need_s = f"needed ~{_size(needed)}" if needed else "needed more space"
    return f"disk full while writing {path.name}{why}: {need_s}, {free_s} at {path.parent}"


def _size(n: int) -> str:
    return f"{n / 1e6:,.1f} MB" if n >= 1e6 else f"{n / 1e3:,.1f} kB" if n >= 1e3 else f"{n} bytes"


def raise_if_full(exc: OSError, path: Path, needed: int) -> None:
    if exc.errno in DISK_FULL_ERRNOS:
        raise DiskFull(disk_full_message(path, needed, exc)) from None



def check_writable(out: Path, need_bytes: int = 0) -> None:
    """Fail before any work if the run folder cannot be written (or the disk is too full)."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".probe.", dir=out)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise RunFolderError(f"cannot write to the run folder {out}: {exc.strerror or exc}; "
                             "choose another --out") from None
    if need_bytes:
        free = shutil.disk_usage(out).free
        if free < need_bytes:
            raise RunFolderError(f"not enough disk space in {out}: need about {need_bytes / 1e6:.0f} MB, "
                                 f"{free / 1e6:.0f} MB free")


def write_bytes_atomically(path: Path, data: bytes) -> None:
    """``data`` into ``path``, atomically (no manifest bookkeeping)."""
    write_atomically(Path(path), lambda fh: fh.write(data), len(data))
