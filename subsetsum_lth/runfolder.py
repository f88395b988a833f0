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
import io
import json
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import torch

from subsetsum_lth import manifest
from subsetsum_lth.atomic import write_atomically
from subsetsum_lth.errors import RunFolderError

RANDOM_NET = "random_net.safetensors"
MASKS = "masks.safetensors"
TARGET = "target.safetensors"
REPORT = "report.json"
METRICS = "metrics.csv"


def tensor_metadata(meta: dict) -> dict:
    """safetensors metadata as ONE key holding sorted JSON: safetensors writes several keys in
    hash-map order, which would make two runs of the same seed differ in their bytes."""
    return {"subsetsum_lth": json.dumps(meta, sort_keys=True)}


def _atomic_write(path: Path, write, size: int | None = None) -> None:
    """Write ``path`` through ``write(binary file)`` atomically (:func:`subsetsum_lth.atomic.write_atomically`).
    In a folder opened by :func:`subsetsum_lth.manifest.open_folder` the file is listed in the
    folder's manifest (and a file the tool did not write is never replaced). A full disk (or a
    file-size limit or quota) raises :class:`subsetsum_lth.errors.DiskFull` naming the file and
    ``size``, the bytes it needs (when known)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    manifest.before_write(path)
    write_atomically(path, write, size)
    manifest.after_write(path)


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


# ----------------------------------------------------------------------------- reading one file, checked

#: the largest JSON file read (report.json with a long training curve is a few MB)
MAX_JSON_BYTES = 64 << 20
RECREATE = "recreate the run (or restore the file the tool wrote)"


def check_regular(path: Path, fix: str = RECREATE) -> None:
    """Refuse, before opening it, a path that is missing or not a regular file (a FIFO would
    block a reader for ever; a device could be read for ever). Symlinks are followed."""
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise RunFolderError(f"{path} does not exist; {fix}") from None
    except OSError as exc:
        raise RunFolderError(f"cannot access {path}: {exc.strerror or exc}; {fix}") from None
    if not stat.S_ISREG(st.st_mode):
        kind = ("a directory" if stat.S_ISDIR(st.st_mode) else "a FIFO" if stat.S_ISFIFO(st.st_mode)
                else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
                else "a socket" if stat.S_ISSOCK(st.st_mode) else "not a regular file")
        raise RunFolderError(f"{path} is {kind}, not a regular file; {fix}")


def read_json(path: Path, fix: str = RECREATE) -> dict:
    """A JSON object from a regular file, or one clear RunFolderError (never a traceback)."""
    path = Path(path)
    check_regular(path, fix)
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_JSON_BYTES + 1)
    except OSError as exc:
        raise RunFolderError(f"cannot read {path}: {exc.strerror or exc}; {fix}") from None
    if len(data) > MAX_JSON_BYTES:
        raise RunFolderError(f"{path} is larger than {MAX_JSON_BYTES >> 20} MB; not a file this tool wrote: {fix}")
    try:
        obj = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise RunFolderError(f"{path} is not UTF-8 text (binary data?); {fix}") from None
    except RecursionError:
        raise RunFolderError(f"{path} is nested too deeply to be a file this tool wrote; {fix}") from None
    except ValueError as exc:
        raise RunFolderError(f"{path} is not valid JSON ({exc}); {fix}") from None
    if not isinstance(obj, dict):
        kind = {list: "an array", type(None): "null", bool: "a boolean", int: "a number", float: "a number",
                str: "a string"}.get(type(obj), type(obj).__name__)
        raise RunFolderError(f"{path} holds {kind}, not a JSON object; {fix}")
    return obj


def _physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def load_tensors(path: Path) -> dict:
    """The tensors of a safetensors file the tool wrote, checked (a regular file, not larger than
    this machine's memory, finite values), or one clear RunFolderError."""
    check_regular(path)
    # a file (e.g. a sparse one whose header announces huge tensors) larger than this machine's
    # memory would be read whole before any shape is checked: refuse it by its size first
    size, mem = os.stat(path).st_size, _physical_memory()
    if mem is not None and size > mem:
        raise RunFolderError(f"{path} is {size / 1e9:,.1f} GB, more than this machine's memory "
                             f"({mem / 1e9:,.1f} GB) can load; {RECREATE}")
    state, _ = load_safetensors(path)
    return state
