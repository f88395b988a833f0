"""Content hashes of a random network's tensors.

Two run folders hold masks *for the same random network* exactly when their
``random_net.safetensors`` files hold the same tensors. Comparing the files byte for byte
would also compare their metadata headers; :func:`weights_digest` hashes the tensors only:
for every key in sorted order, the key, the dtype, the shape and the raw little-endian bytes.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Mapping

import numpy as np
from subsetsum_lth.runfolder import load_safetensors

#: length of the short form shown in messages
SHORT = 12


def _as_array(value) -> np.ndarray:
    try:
        import torch
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().contiguous().numpy()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    arr = np.ascontiguousarray(np.asarray(value))
    if arr.dtype.byteorder == ">" or (arr.dtype.byteorder == "=" and np.little_endian is False):
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    return arr


def weights_digest(state: Mapping[str, object]) -> str:
    """SHA-256 (hex) of a state dict's tensors (numpy arrays or torch tensors).

    Independent of the order of the keys and of any file metadata; sensitive to every key,
    dtype, shape and bit of every value."""
    h = hashlib.sha256()
    h.update(b"subsetsum-lth-weights-v1\0")
    for key in sorted(state):
        arr = _as_array(state[key])
        h.update(str(key).encode() + b"\0")
        h.update(arr.dtype.str.encode() + b"\0")
        h.update(repr(tuple(int(s) for s in arr.shape)).encode() + b"\0")
        h.update(arr.reshape(-1).view(np.uint8) if arr.size else b"")
    return h.hexdigest()


def file_weights_digest(path: str | Path) -> str:
    """:func:`weights_digest` of a safetensors file (e.g. a run's ``random_net.safetensors``)."""
    state, _ = load_safetensors(path, as_numpy=True)
    return weights_digest(state)


def short(digest: str) -> str:
    return digest[:SHORT]


__all__ = ["weights_digest", "file_weights_digest", "short"]
