"""The random network g and its masks: one layout that owns key naming, and one builder.

g replaces target layer i by two layers (DESIGN §1): for a Linear layer ``Linear(p, H_i)``,
ReLU, ``Linear(H_i, q)``; for a Conv2d layer ``Conv2d(c_in, H_i, k, stride, padding)``, ReLU,
``Conv2d(H_i, q, 1)``; then the ReLU of the target layer (not after the last) and the
target's parameter-free layers (pooling, flatten) unchanged. :class:`GLayout` says which
``nn.Sequential`` index holds which tensor — an MLP's g has the keys ``4i`` and ``4i+2`` of
DESIGN §5 — and :meth:`GLayout.module` builds it with :func:`subsetsum_lth.ops.module_from_ops`,
the one place an ``nn.Sequential`` is built from an architecture list and state dicts.
:class:`Masks` is a validated mask set (0/1 values, keys and shapes those of the layout).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from subsetsum_lth.errors import RunFolderError
from subsetsum_lth.layerkinds import Linear
from subsetsum_lth.ops import module_from_ops, param_paths, substitute_params

PARAM_OPS = ("linear", "conv2d")


def _first_op(kind, hidden: int) -> dict:
    if kind.name == "linear":
        return {"op": "linear", "in_features": kind.p, "out_features": int(hidden), "bias": True}
    return {"op": "conv2d", "in_channels": kind.in_channels, "out_channels": int(hidden),
            "kernel": list(kind.kernel), "stride": list(kind.stride), "padding": list(kind.padding),
            "bias": True}


def _second_op(kind, hidden: int) -> dict:
    if kind.name == "linear":
        return {"op": "linear", "in_features": int(hidden), "out_features": kind.q, "bias": True}
    return {"op": "conv2d", "in_channels": int(hidden), "out_channels": kind.q, "kernel": [1, 1],
            "stride": [1, 1], "padding": [0, 0], "bias": True}


@dataclass(frozen=True)
class GLayout:
    """Where the tensors of g live: one entry per target layer (its kind, the hidden width of
    its pair, the parameter-free ops after it)."""

    kinds: tuple
    hidden: tuple
    after: tuple = ()
    input_shape: tuple | None = None
    #: a residual target's architecture (``Target.graph``): g is that list with every
    #: conv2d/linear replaced by its pair and the ReLU between them, every other op (ReLU, pool,
    #: flatten, residual add) kept where it is; None for a chain
    graph: list | None = field(default=None, compare=True, hash=False)

    @classmethod
    def for_target(cls, target, hidden) -> "GLayout":
        return cls(tuple(L.kind for L in target.layers), tuple(int(h) for h in hidden),
                   tuple(tuple(target.ops_after(i)) for i in range(target.depth)),
                   None if target.input_shape is None else tuple(target.input_shape),
                   getattr(target, "graph", None))

    @property
    def depth(self) -> int:
        return len(self.kinds)

    def ops_after(self, i: int) -> tuple:
        return tuple(self.after[i]) if self.after else ()

    def ops(self) -> list[dict]:
        """g as an architecture list (the order of its nn.Sequential)."""
        if self.graph is not None:
            return self._graph_ops()[0]
        out = []
        for i, (kind, h) in enumerate(zip(self.kinds, self.hidden)):
            out += [_first_op(kind, h), {"op": "relu"}, _second_op(kind, h)]
            if i < self.depth - 1:
                out.append({"op": "relu"})
            out += [o.arch() for o in self.ops_after(i)]
        return out

    def _graph_ops(self) -> tuple[list[dict], list[bool]]:
        def pair(k, op):
            kind, h = self.kinds[k], self.hidden[k]
            return [_first_op(kind, h), {"op": "relu"}, _second_op(kind, h)]
        return substitute_params(self.graph, pair)

    def inner_relus(self) -> list[bool]:
        """One flag per ReLU of g (forward order): True for the ReLU inside a pair (the one
        edge-popup's ``--no-inner-relu`` drops), False for the target's own ReLUs."""
        if self.graph is not None:
            return self._graph_ops()[1]
        n = sum(op["op"] == "relu" for op in self.ops())
        return [k % 2 == 0 for k in range(n)]

    def param_indices(self) -> list:
        """The module path of every conv2d/linear of g in forward order: its index in the
        Sequential for a chain (ints), ``3.body.0``-style paths for a residual g (str)."""
        if self.graph is not None:
            return [p for p, _ in param_paths(self.ops())]
        return [i for i, op in enumerate(self.ops()) if op["op"] in PARAM_OPS]

    def pair_keys(self, i: int) -> tuple[str, str, str, str]:
        """Keys (w1, b1, w2, b2) of target layer i's two random layers."""
        idx = self.param_indices()
        a, b = idx[2 * i], idx[2 * i + 1]
        return f"{a}.weight", f"{a}.bias", f"{b}.weight", f"{b}.bias"

    def shapes(self) -> dict[str, tuple]:
        out = {}
        for i, (kind, h) in enumerate(zip(self.kinds, self.hidden)):
            s1, s2 = kind.g_shapes(h)
            k1, kb1, k2, kb2 = self.pair_keys(i)
            out.update({k1: tuple(s1), kb1: (h,), k2: tuple(s2), kb2: (kind.q,)})
        return out

    def matrices(self, state: dict, i: int, masks: dict | None = None):
        """(w1 (H, p), b1, w2 (q, H), b2) of pair i as float64 matrices, masked if ``masks``."""
        kind, h = self.kinds[i], self.hidden[i]
        out = []
        for key, shape in zip(self.pair_keys(i), ((h, kind.p), (h,), (kind.q, h), (kind.q,))):
            a = np.asarray(state[key], dtype=np.float64)
            if masks is not None:
                mk = np.asarray(masks[key])
                if mk.shape != a.shape:
                    raise RunFolderError(f"mask {key} has shape {mk.shape}, random weight {a.shape}")
                a = a * (mk != 0)
            out.append(a.reshape(shape))
        return tuple(out)

    def to_stored(self, i: int, w1: np.ndarray, b1: np.ndarray, w2: np.ndarray, b2: np.ndarray) -> dict:
        """Pair i's matrices under their keys, in their stored (module) shapes."""
        kind, h = self.kinds[i], self.hidden[i]
        s1, s2 = kind.g_shapes(h)
        k1, kb1, k2, kb2 = self.pair_keys(i)
        return {k1: w1.reshape(s1), kb1: b1, k2: w2.reshape(s2), kb2: b2}

    def module(self, state: dict, masks: dict | None = None, dtype=torch.float64,
               relu_after=None) -> nn.Sequential:
        return module_from_ops(self.ops(), state, masks, dtype, relu_after)

    def describe(self) -> dict:
        return {"g_arch": self.ops(), "input_shape": None if self.input_shape is None else list(self.input_shape)}

    @property
    def is_residual(self) -> bool:
        return self.graph is not None


def mlp_layout(state: dict) -> GLayout:
    """The layout of an MLP g read off its state dict (keys 0, 2, 4, ... of Linear layers)."""
    n = len([k for k in state if k.endswith(".weight")])
    if n % 2:
        raise RunFolderError(f"the random network has {n} Linear layers; a construction has an even number")
    kinds, hidden = [], []
    for i in range(n // 2):
        w1 = np.asarray(state[f"{4 * i}.weight"])
        w2 = np.asarray(state[f"{4 * i + 2}.weight"])
        kinds.append(Linear(int(w1.shape[1]), int(w2.shape[0])))
        hidden.append(int(w1.shape[0]))
    return GLayout(tuple(kinds), tuple(hidden), tuple(() for _ in kinds))


@dataclass
class Masks:
    """A validated mask set for a layout: uint8 0/1 tensors under the layout's keys, in the
    stored shapes (``masks.safetensors``)."""

    layout: GLayout
    tensors: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        shapes = self.layout.shapes()
        missing = sorted(set(shapes) - set(self.tensors))
        extra = sorted(set(self.tensors) - set(shapes))
        if missing or extra:
            raise RunFolderError(f"masks do not match the network: missing {missing[:4]}, unexpected {extra[:4]}")
        for k, shape in shapes.items():
            a = np.asarray(self.tensors[k])
            if tuple(a.shape) != tuple(shape):
                raise RunFolderError(f"mask {k} has shape {list(a.shape)}; the network needs {list(shape)}")
            if a.size and not np.isin(a, (0, 1)).all():
                raise RunFolderError(f"mask {k} holds values other than 0 and 1")

    @classmethod
    def from_pairs(cls, layout: GLayout, pairs: list[dict]) -> "Masks":
        """From per-layer {w1, b1, w2, b2} matrices (the construction's output)."""
        out = {}
        for i, mk in enumerate(pairs):
            out.update(layout.to_stored(i, mk["w1"], mk["b1"], mk["w2"], mk["b2"]))
        return cls(layout, {k: np.ascontiguousarray(v, dtype=np.uint8) for k, v in out.items()})

    def state_dict(self) -> dict:
        return dict(self.tensors)

    def kept(self) -> int:
        return int(sum(int(np.asarray(a).sum()) for a in self.tensors.values()))
