"""Atomic reading and writing of a run folder (DESIGN §5).

Layout::

    random_net.safetensors   state_dict of Sequential(Linear, ReLU, ..., Linear), 2l Linear layers
    masks.safetensors        same keys, uint8 0/1
    target.safetensors       the target, so that `certify` needs nothing else
    report.json              everything measured
    metrics.csv              tidy rows (run, layer, metric, value)
    *.png                    plots
    partial/                 finished solver batches (resume store), removed on success
    manifest.json            what the tool wrote here, with sha256 (subsetsum_lth.manifest)

Every file is written to a temporary name in the same folder and renamed into place, so a
crash never leaves a half-written file under a final name.
"""
from __future__ import annotations

import csv
import errno
import io
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from subsetsum_lth.errors import RunFolderError

RANDOM_NET = "random_net.safetensors"
MASKS = "masks.safetensors"
TARGET = "target.safetensors"
REPORT = "report.json"
METRICS = "metrics.csv"


def _file_mode() -> int:
    """The mode a plainly created file gets (0666 less the umask), not mkstemp's 0600."""
    global _MODE
    if _MODE is None:
        mask = os.umask(0o022)
        os.umask(mask)
        _MODE = 0o666 & ~mask
    return _MODE


_MODE: int | None = None


def _atomic_write(path: Path, write, size: int | None = None) -> None:
    """Write ``path`` through ``write(binary file)`` into a temporary file beside it, fsync, and
    rename it into place: readers see the old file or the whole new one, never a partial one.
    In a folder opened by :func:`subsetsum_lth.manifest.open_folder` the file is listed in the
    folder's manifest (and a file the tool did not write is never replaced). A full disk (or a
    file-size limit or quota) raises :class:`subsetsum_lth.errors.DiskFull` naming the file and
    ``size``, the bytes it needs (when known)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    from subsetsum_lth import manifest
    manifest.before_write(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        _raise_if_full(exc, path, size or 0)
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
            _raise_if_full(exc, path, size or written)
        raise
    manifest.after_write(path)


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


def _raise_if_full(exc: OSError, path: Path, needed: int) -> None:
    if exc.errno in DISK_FULL_ERRNOS:
        from subsetsum_lth.errors import DiskFull
        raise DiskFull(disk_full_message(path, needed, exc)) from None


def atomic_savefig(fig, path, **kwargs) -> None:
    """``fig.savefig`` as PNG, atomically (and listed in the folder's manifest)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", **kwargs)
    _atomic_write_bytes(Path(path), buf.getvalue())


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    _atomic_write(path, lambda fh: fh.write(data), len(data))


def atomic_copy(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst`` atomically (byte for byte)."""
    with open(src, "rb") as inp:
        _atomic_write(dst, lambda fh: shutil.copyfileobj(inp, fh, length=16 << 20), os.fstat(inp.fileno()).st_size)


def atomic_save_safetensors(tensors: dict, path, metadata: dict | None = None) -> None:
    from safetensors.torch import save
    clean = {}
    for k, v in tensors.items():
        t = v if isinstance(v, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(v))
        clean[k] = t.contiguous()
    data = save(clean, metadata={k: str(v) for k, v in (metadata or {}).items()} or None)
    _atomic_write_bytes(Path(path), _sorted_metadata(data))


def _sorted_metadata(data: bytes) -> bytes:
    """``data`` (a safetensors file) with its ``__metadata__`` keys in sorted order: safetensors
    writes them in hash-map order, which differs between processes, so two identical runs would
    write different bytes. The tensors' entries and data are left as they are; a file whose
    metadata is already sorted (or has one key) is returned unchanged."""
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    meta = header.get("__metadata__")
    if not isinstance(meta, dict) or list(meta) == sorted(meta):
        return data
    header["__metadata__"] = dict(sorted(meta.items()))
    buf = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    buf += b" " * (-len(buf) % 8)          # safetensors pads the header to 8 bytes
    return len(buf).to_bytes(8, "little") + buf + data[8 + n:]


def load_safetensors(path, as_numpy: bool = True) -> tuple[dict, dict]:
    """(tensors, metadata); raises RunFolderError naming the file on any problem."""
    from safetensors import safe_open
    path = Path(path)
    if not path.exists():
        raise RunFolderError(f"{path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = dict(fh.metadata() or {})
            out = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as exc:
        raise RunFolderError(f"cannot read {path}: {exc} (truncated or not a safetensors file?)") from None
    bad = [k for k, v in out.items() if v.is_floating_point() and not bool(v.isfinite().all())]
    if bad:
        raise RunFolderError(f"{path} holds NaN or infinite values in {', '.join(sorted(bad)[:5])}; "
                             "the file is damaged: recreate the run")
    if as_numpy:
        out = {k: v.numpy() for k, v in out.items()}
    return out, meta


def atomic_write_json(path, obj) -> None:
    _atomic_write_bytes(Path(path), (json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n").encode())


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def atomic_write_csv(path, rows: list[dict]) -> None:
    if not rows:
        _atomic_write_bytes(Path(path), b"")
        return
    fields = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields)
    w.writeheader()
    w.writerows(rows)
    _atomic_write_bytes(Path(path), buf.getvalue().encode())


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


def read_report(run: Path) -> dict:
    path = Path(run) / REPORT
    if not path.exists():
        raise RunFolderError(f"{run} has no {REPORT}; is it a run folder written by subsetsum-lth?")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise RunFolderError(f"{path} is not valid JSON: {exc}") from None


def depth_of(state: dict) -> int:
    n_linear = len([k for k in state if k.endswith(".weight")])
    if n_linear % 2:
        raise RunFolderError(f"random network has {n_linear} Linear layers; expected an even number (2l)")
    return n_linear // 2
