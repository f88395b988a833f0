"""Load and validate a target ReLU MLP into a list of layers (W, b).

Accepted: a ``.pt``/``.pth`` file holding the state_dict of an ``nn.Sequential`` of ``Linear``
and ``ReLU`` modules (keys ``0.weight``, ``0.bias``, ``2.weight``, ...; biases optional), the
same keys in a ``.safetensors`` file, a run/target folder written by ``train-target``
(``target.safetensors`` inside), or, from Python, an ``nn.Sequential`` itself.
Pickled modules are never unpickled: ``.pt`` files are read with ``weights_only=True``.
"""
from __future__ import annotations

import json
import logging
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from subsetsum_lth.errors import TargetError

log = logging.getLogger(__name__)

_KEY = re.compile(r"^(\d+)\.(weight|bias)$")
TARGET_FILENAME = "target.safetensors"


@dataclass
class Layer:
    """One target layer x -> W x + b (ReLU after it unless it is the last)."""

    weight: np.ndarray          #: float64 (q, p)
    bias: np.ndarray | None     #: float64 (q,) or None

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.weight.shape)  # (q, p)


@dataclass
class Target:
    layers: list[Layer]
    metadata: dict = field(default_factory=dict)
    source: str = ""

    @property
    def depth(self) -> int:
        return len(self.layers)

    @property
    def sizes(self) -> list[int]:
        return [self.layers[0].weight.shape[1]] + [L.weight.shape[0] for L in self.layers]

    @property
    def has_bias(self) -> bool:
        return any(L.bias is not None for L in self.layers)

    @property
    def n_parameters(self) -> int:
        return sum(L.weight.size + (0 if L.bias is None else L.bias.size) for L in self.layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """f(x) in the dtype of x (use float64 for certificates)."""
        h = x
        for i, L in enumerate(self.layers):
            W = torch.as_tensor(L.weight, dtype=x.dtype, device=x.device)
            h = h @ W.T
            if L.bias is not None:
                h = h + torch.as_tensor(L.bias, dtype=x.dtype, device=x.device)
            if i < len(self.layers) - 1:
                h = torch.relu(h)
        return h

    def to_module(self, dtype=torch.float32) -> nn.Sequential:
        mods: list[nn.Module] = []
        for i, L in enumerate(self.layers):
            q, p = L.weight.shape
            lin = nn.Linear(p, q, bias=L.bias is not None)
            with torch.no_grad():
                lin.weight.copy_(torch.as_tensor(L.weight))
                if L.bias is not None:
                    lin.bias.copy_(torch.as_tensor(L.bias))
            mods.append(lin)
            if i < len(self.layers) - 1:
                mods.append(nn.ReLU())
        return nn.Sequential(*mods).to(dtype)

    def state_dict(self) -> dict[str, torch.Tensor]:
        out = {}
        for i, L in enumerate(self.layers):
            out[f"{2 * i}.weight"] = torch.as_tensor(L.weight, dtype=torch.float32).contiguous()
            if L.bias is not None:
                out[f"{2 * i}.bias"] = torch.as_tensor(L.bias, dtype=torch.float32).contiguous()
        return out


def from_state_dict(state: dict, source: str = "", metadata: dict | None = None) -> Target:
    """Validate a Sequential(Linear, ReLU, ..., Linear) state_dict and return its layers."""
    where = f" in {source}" if source else ""
    if not isinstance(state, dict) or not state:
        raise TargetError(f"the target{where} is not a non-empty state_dict "
                          "(save it with torch.save(model.state_dict(), path))")
    metadata = dict(metadata or {})
    act = str(metadata.get("activation", "relu")).lower()
    if act != "relu":
        raise TargetError(f"the target{where} uses activation {act!r}; only ReLU MLPs are supported")
    entries: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        m = _KEY.match(str(key))
        if not m:
            hint = ""
            if str(key).endswith(("running_mean", "running_var", "num_batches_tracked")):
                hint = " (batch normalisation is not supported)"
            raise TargetError(
                f"unsupported entry {key!r}{where}{hint}: expected only the keys of an "
                "nn.Sequential of Linear and ReLU modules ('0.weight', '0.bias', '2.weight', ...)")
        if not isinstance(value, torch.Tensor):
            raise TargetError(f"entry {key!r}{where} is not a tensor")
        entries.setdefault(int(m.group(1)), {})[m.group(2)] = value
    indices = sorted(entries)
    layers: list[Layer] = []
    for n, idx in enumerate(indices):
        e = entries[idx]
        if "weight" not in e:
            raise TargetError(f"layer {idx}{where} has a bias but no weight")
        w = e["weight"]
        if w.dim() != 2:
            kind = "a convolutional layer" if w.dim() in (3, 4, 5) else f"a {w.dim()}-D weight"
            raise TargetError(f"layer {idx}{where} is {kind} (weight shape {tuple(w.shape)}); "
                              "only fully connected (Linear) layers are supported")
        if not (w.is_floating_point()):
            raise TargetError(f"layer {idx}{where} has a non-floating weight of dtype {w.dtype}")
        wn = w.detach().to(torch.float64).cpu().numpy()
        if not np.all(np.isfinite(wn)):
            bad = int((~np.isfinite(wn)).sum())
            raise TargetError(f"layer {idx}{where} has {bad} NaN/Inf weight(s); fix or retrain the target")
        bn = None
        if "bias" in e:
            b = e["bias"]
            if b.dim() != 1 or b.shape[0] != w.shape[0]:
                raise TargetError(f"layer {idx}{where}: bias shape {tuple(b.shape)} does not match "
                                  f"weight shape {tuple(w.shape)} (expected ({w.shape[0]},))")
            bn = b.detach().to(torch.float64).cpu().numpy()
            if not np.all(np.isfinite(bn)):
                raise TargetError(f"layer {idx}{where} has NaN/Inf bias entries")
        if n > 0:
            prev_idx = indices[n - 1]
            if idx != prev_idx + 2:
                raise TargetError(
                    f"layers {prev_idx} and {idx}{where} are not separated by exactly one ReLU "
                    "(expected Linear layers at indices 0, 2, 4, ...); unsupported layers between them?")
            q_prev = layers[-1].weight.shape[0]
            if wn.shape[1] != q_prev:
                raise TargetError(f"inconsistent shapes{where}: layer {prev_idx} outputs {q_prev} "
                                  f"features but layer {idx} expects {wn.shape[1]}")
        elif idx != 0:
            raise TargetError(f"the first Linear layer{where} has index {idx}; expected 0")
        if 0 in wn.shape:
            raise TargetError(f"layer {idx}{where} has an empty weight of shape {wn.shape}")
        layers.append(Layer(wn, bn))
    return Target(layers, metadata, source)


def from_module(module: nn.Module) -> Target:
    """Validate an ``nn.Sequential`` of Linear/ReLU modules (ReLU between Linear layers)."""
    if not isinstance(module, nn.Sequential):
        raise TargetError(f"expected an nn.Sequential of Linear and ReLU modules, got {type(module).__name__}")
    mods = list(module)
    for i, m in enumerate(mods):
        want = nn.Linear if i % 2 == 0 else nn.ReLU
        if not isinstance(m, want):
            raise TargetError(
                f"module {i} is {type(m).__name__}; expected {want.__name__} "
                "(only Sequential(Linear, ReLU, ..., Linear) MLPs are supported)")
    if not mods or not isinstance(mods[-1], nn.Linear):
        raise TargetError("the last module must be a Linear layer (no activation on the output)")
    return from_state_dict(module.state_dict(), source=type(module).__name__)


def load_target(path: str | Path) -> Target:
    """Load a target from a .pt/.pth/.safetensors file or a train-target folder."""
    path = Path(path)
    if path.is_dir():
        candidate = path / TARGET_FILENAME
        if not candidate.exists():
            raise TargetError(f"{path} is a folder without {TARGET_FILENAME}; "
                              "pass a target file or a folder written by 'subsetsum-lth train-target'")
        path = candidate
    if not path.exists():
        raise TargetError(f"target file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors import safe_open
        try:
            with safe_open(str(path), framework="pt") as fh:
                meta = dict(fh.metadata() or {})
                state = {k: fh.get_tensor(k) for k in fh.keys()}
        except Exception as exc:
            raise TargetError(f"cannot read {path} as safetensors: {exc}") from None
        return from_state_dict(state, str(path), meta)
    if suffix in (".pt", ".pth", ".bin", ".ckpt"):
        try:
            with warnings.catch_warnings():
                # torch warns on any pickle protocol but 2 (pickle.dump, torch.save with
                # pickle_protocol=4); the file is loaded or refused with a clear error anyway
                warnings.filterwarnings("ignore", message="Detected pickle protocol",
                                        category=UserWarning)
                obj = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise TargetError(
                f"cannot load {path} as a state_dict with weights_only=True ({first}). "
                "Only tensors are read, never pickled code: save the target with "
                "torch.save(model.state_dict(), path) or as .safetensors") from None
        meta = {}
        if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
            meta = {k: v for k, v in obj.items() if k != "state_dict" and isinstance(v, (str, int, float))}
            obj = obj["state_dict"]
        if not isinstance(obj, dict):
            raise TargetError(f"{path} holds a {type(obj).__name__}, not a state_dict; "
                              "save model.state_dict() instead of the model")
        return from_state_dict(obj, str(path), meta)
    raise TargetError(f"unsupported target file type {suffix!r} for {path}: "
                      "use .pt/.pth (a state_dict) or .safetensors")


def save_target(target: Target, path: str | Path, metadata: dict | None = None) -> None:
    from subsetsum_lth.runfolder import atomic_save_safetensors
    meta = {"format": "subsetsum-lth-target", "activation": "relu"}
    meta.update({k: str(v) for k, v in (target.metadata or {}).items()})
    meta.update({k: str(v) for k, v in (metadata or {}).items()})
    atomic_save_safetensors(target.state_dict(), path, meta)


def random_target(sizes, bias=True, seed=0, scale: float | None = None,
                  max_spectral_norm: float | None = None) -> Target:
    """A seeded random MLP (used as the synthetic default and in tests).

    Weights are N(0, 1/fan_in) unless ``scale`` is given (then U[-scale, scale]); with
    ``max_spectral_norm`` every W is rescaled so that ‖W‖₂ ≤ that value (Theorem 1's class
    uses 1)."""
    rng = np.random.default_rng(seed)
    layers = []
    for p, q in zip(sizes[:-1], sizes[1:]):
        if scale is None:
            W = rng.normal(0.0, 1.0 / np.sqrt(p), size=(q, p))
        else:
            W = rng.uniform(-scale, scale, size=(q, p))
        if max_spectral_norm is not None:
            nrm = float(np.linalg.norm(W, 2))
            if nrm > max_spectral_norm:
                W = W * (max_spectral_norm / nrm) * (1 - 1e-6)
        b = rng.uniform(-0.1, 0.1, size=q) if bias else None
        # float32-representable values, so that saved and in-memory targets agree exactly
        W = W.astype(np.float32).astype(np.float64)
        b = None if b is None else b.astype(np.float32).astype(np.float64)
        layers.append(Layer(W, b))
    return Target(layers, {"synthetic": json.dumps({"sizes": list(sizes), "seed": seed})}, "synthetic")
