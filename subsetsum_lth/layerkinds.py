"""Layer kinds: what differs between a Linear and a Conv2d target layer, in one object each.

Every parametric target layer is seen by the construction, the solvers and the certificate as
a matrix ``W`` of shape ``(q, p)``: for a Linear layer the weight itself, for a Conv2d layer
the kernel ``K`` of shape ``(c_out, c_in, k_h, k_w)`` reshaped to ``(c_out, c_in·k_h·k_w)`` —
the patch coordinate ``(c, a, b)`` plays the part of an input coordinate (da Cunha et al.
2022; Burkholz 2022). A kind object knows the rest: how the layer acts on a tensor, the
shapes of the two random layers of g that replace it (a Linear pair, or a k×k Conv2d with one
kept entry per hidden channel followed by a 1×1 Conv2d), the proven operator-norm bound the
certificate uses, and how many times a bias vector is repeated (once per output pixel).

Parameter-free layers (max/average pooling, flatten) are :class:`Op` objects with a proven
ℓ2 Lipschitz constant; ReLU is implied after every parametric layer but the last.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from subsetsum_lth.errors import TargetError
from subsetsum_lth.ops import canonical_arch, check_arch, is_residual, parameter_free_module

#: kinds of parametric layers and of parameter-free ops, by their name in an architecture list
PARAMETRIC = ("linear", "conv2d")
PARAMETER_FREE = ("maxpool2d", "avgpool2d", "flatten")


def spectral_norm(M: np.ndarray) -> float:
    """‖M‖₂ as sqrt(λ_max) of the smaller Gram matrix (float64; relative error ~1e-13)."""
    M = np.asarray(M, dtype=np.float64)
    if M.size == 0:
        return 0.0
    G = M @ M.T if M.shape[0] <= M.shape[1] else M.T @ M
    lam = float(np.linalg.eigvalsh(G)[-1])
    return float(np.sqrt(max(lam, 0.0)))


def _pair(v) -> tuple[int, int]:
    if isinstance(v, (list, tuple)):
        if len(v) != 2:
            raise TargetError(f"expected two integers, got {v!r}")
        return int(v[0]), int(v[1])
    return int(v), int(v)


@dataclass(frozen=True)
class Linear:
    """x ↦ W x + b on flat vectors."""

    in_features: int
    out_features: int
    bias: bool = True
    name = "linear"

    @property
    def p(self) -> int:
        return self.in_features

    @property
    def q(self) -> int:
        return self.out_features

    @property
    def in_shape(self) -> tuple:
        return (self.in_features,)

    @property
    def out_shape(self) -> tuple:
        return (self.out_features,)

    bias_repeat = 1

    def weight_shape(self) -> tuple:
        return (self.q, self.p)

    def apply(self, x: torch.Tensor, W: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        out = x.reshape(x.shape[0], -1) @ W.T
        return out if b is None else out + b

    def g_shapes(self, hidden: int) -> tuple[tuple, tuple]:
        """Stored shapes of the two random weights of g for this layer."""
        return (hidden, self.p), (self.q, hidden)

    def op_norm(self, M: np.ndarray) -> tuple[float, str]:
        """A proven upper bound on the operator norm of x ↦ M x (here exact)."""
        return spectral_norm(M), "spectral"

    def arch(self) -> dict:
        return {"op": "linear", "in_features": self.in_features, "out_features": self.out_features,
                "bias": bool(self.bias)}


@dataclass(frozen=True)
class Conv2d:
    """x ↦ conv(x, K) + b on (C, H, W) tensors, zero padding, no dilation or groups."""

    in_channels: int
    out_channels: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    in_hw: tuple[int, int]
    bias: bool = True
    name = "conv2d"

    @property
    def p(self) -> int:
        return self.in_channels * self.kernel[0] * self.kernel[1]

    @property
    def q(self) -> int:
        return self.out_channels

    @property
    def out_hw(self) -> tuple[int, int]:
        return tuple((n + 2 * pd - k) // s + 1
                     for n, k, s, pd in zip(self.in_hw, self.kernel, self.stride, self.padding))

    @property
    def in_shape(self) -> tuple:
        return (self.in_channels, *self.in_hw)

    @property
    def out_shape(self) -> tuple:
        return (self.out_channels, *self.out_hw)

    @property
    def bias_repeat(self) -> int:
        """A bias vector is added at every output pixel: ‖b broadcast‖ = ‖b‖·sqrt(this)."""
        return self.out_hw[0] * self.out_hw[1]

    def weight_shape(self) -> tuple:
        return (self.q, self.in_channels, *self.kernel)

    def kernel_of(self, W: torch.Tensor, channels: int | None = None) -> torch.Tensor:
        return W.reshape(W.shape[0], channels or self.in_channels, *self.kernel)

    def apply(self, x: torch.Tensor, W: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        x = x.reshape(x.shape[0], *self.in_shape)
        return F.conv2d(x, self.kernel_of(W), b, stride=self.stride, padding=self.padding)

    def g_shapes(self, hidden: int) -> tuple[tuple, tuple]:
        return (hidden, self.in_channels, *self.kernel), (self.q, hidden, 1, 1)

    def covering(self) -> int:
        """The largest number of patches (output positions) that share one input pixel."""
        return math.ceil(self.kernel[0] / self.stride[0]) * math.ceil(self.kernel[1] / self.stride[1])

    def op_norm(self, M: np.ndarray) -> tuple[float, str]:
        """A proven upper bound on ‖conv_M‖₂ for M of shape (c_out, c·k_h·k_w) (c may be 2·c_in:
        the signed-input split [E⁺ E⁻] acts on (x⁺, x⁻), and ‖(x⁺, x⁻)‖ = ‖x‖).

        The smaller of two bounds, both sound: (a) the patch bound sqrt(⌈k_h/s_h⌉⌈k_w/s_w⌉)·‖M‖₂
        (each pixel lies in at most that many patches); (b) the exact norm of the circular
        convolution on a torus large enough that no patch wraps (T ≥ H + 2p + k), which is
        max over the torus frequencies of σ_max(K̂(ω)); zero padding is the torus operator
        restricted to an embedded input and cropped, and a stride only subsamples its output,
        neither of which increases a norm."""
        M = np.asarray(M, dtype=np.float64)
        patch = math.sqrt(self.covering()) * spectral_norm(M)
        c = M.shape[1] // (self.kernel[0] * self.kernel[1])
        K = M.reshape(M.shape[0], c, *self.kernel)
        T = [n + 2 * pd + k for n, pd, k in zip(self.in_hw, self.padding, self.kernel)]
        if K.size == 0 or not np.any(K):
            return 0.0, "fft"
        if (T[0] * T[1]) * K.shape[0] * K.shape[1] > 50_000_000:
            return patch, "patch"
        Kh = np.fft.fft2(K, s=T)                          # (c_out, c, T0, T1)
        Kh = np.moveaxis(Kh, (0, 1), (-2, -1)).reshape(-1, K.shape[0], K.shape[1])
        G = np.conj(np.swapaxes(Kh, 1, 2)) @ Kh if K.shape[0] >= K.shape[1] else Kh @ np.conj(np.swapaxes(Kh, 1, 2))
        fft = float(np.sqrt(max(float(np.linalg.eigvalsh(G)[:, -1].max()), 0.0)))
        return (fft, "fft") if fft <= patch else (patch, "patch")

    def arch(self) -> dict:
        return {"op": "conv2d", "in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel": list(self.kernel), "stride": list(self.stride), "padding": list(self.padding),
                "bias": bool(self.bias)}


@dataclass(frozen=True)
class Op:
    """A parameter-free layer: ``maxpool2d``/``avgpool2d`` (kernel, stride) or ``flatten``."""

    name: str
    in_shape: tuple
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)

    @property
    def out_shape(self) -> tuple:
        if self.name == "flatten":
            return (int(np.prod(self.in_shape)),)
        c, h, w = self.in_shape
        return (c, (h - self.kernel[0]) // self.stride[0] + 1, (w - self.kernel[1]) // self.stride[1] + 1)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        if self.name == "flatten":
            return x.reshape(x.shape[0], -1)
        x = x.reshape(x.shape[0], *self.in_shape)
        if self.name == "maxpool2d":
            return F.max_pool2d(x, self.kernel, self.stride)
        return F.avg_pool2d(x, self.kernel, self.stride)

    def module(self) -> nn.Module:
        return parameter_free_module(self.name, self.kernel, self.stride)

    def lipschitz(self) -> float:
        """A proven ℓ2 Lipschitz constant (also bounds ‖op(x)‖/‖x‖, since op(0) = 0).
        Max pooling: |max a − max b| ≤ ‖a − b‖ per window and a pixel lies in at most
        N = ⌈k_h/s_h⌉⌈k_w/s_w⌉ windows, so sqrt(N) (1 for non-overlapping windows). Average
        pooling over n = k_h·k_w pixels: (Σa/n)² ≤ Σa²/n per window, so sqrt(N/n) (1/k for
        non-overlapping k×k windows). Flatten: an isometry."""
        if self.name == "flatten":
            return 1.0
        n_cover = math.ceil(self.kernel[0] / self.stride[0]) * math.ceil(self.kernel[1] / self.stride[1])
        if self.name == "maxpool2d":
            return math.sqrt(n_cover)
        return math.sqrt(n_cover / (self.kernel[0] * self.kernel[1]))

    def arch(self) -> dict:
        if self.name == "flatten":
            return {"op": "flatten"}
        return {"op": self.name, "kernel": list(self.kernel), "stride": list(self.stride)}


def kinds_from_arch(arch: list[dict], input_shape) -> tuple[list, list[list[Op]]]:
    """Parse an architecture list (:mod:`subsetsum_lth.arch`, which validates it: shapes,
    supported layers, the class of Theorem 1) into parametric kinds and, per parametric layer,
    the parameter-free ops that follow its ReLU."""
    check_arch(arch, input_shape)
    shape = tuple(int(s) for s in input_shape)
    if is_residual(arch):
        # a residual network keeps its ops in its graph (Target.graph / GLayout.graph): the
        # kinds of its conv2d/linear layers in forward order (a body before its shortcut), and
        # nothing "after" any of them
        kinds = graph_kinds(canonical_arch(arch), shape)
        return kinds, [[] for _ in kinds]
    kinds: list = []
    after: list[list[Op]] = []
    for op in canonical_arch(arch):
        name = op["op"]
        if name == "relu":
            continue
        if name == "linear":
            kind = Linear(int(np.prod(shape)), int(op["out_features"]), bool(op["bias"]))
        elif name == "conv2d":
            kind = Conv2d(shape[0], int(op["out_channels"]), _pair(op["kernel"]), _pair(op["stride"]),
                          _pair(op["padding"]), (shape[1], shape[2]), bool(op["bias"]))
        else:
            if name == "flatten" and (not kinds or len(shape) == 1):
                # a flatten before the first layer (fc SPECs on images start with one) or of a
                # vector changes nothing: a Linear layer reads its input flattened
                shape = (int(np.prod(shape)),)
                continue
            o = Op("flatten", shape) if name == "flatten" else Op(name, shape, _pair(op["kernel"]),
                                                                 _pair(op["stride"]))
            after[-1].append(o)
            shape = o.out_shape
            continue
        kinds.append(kind)
        after.append([])
        shape = kind.out_shape
    return kinds, after


def _kind_of(op: dict, shape: tuple):
    if op["op"] == "linear":
        return Linear(int(np.prod(shape)), int(op["out_features"]), bool(op["bias"]))
    return Conv2d(shape[0], int(op["out_channels"]), _pair(op["kernel"]), _pair(op["stride"]),
                  _pair(op["padding"]), (shape[1], shape[2]), bool(op["bias"]))


def graph_kinds(ops: list[dict], input_shape) -> list:
    """The kinds of the conv2d/linear layers of a (checked, canonical) architecture that may hold
    residual ops, in forward order, a residual's body before its shortcut."""
    kinds: list = []

    def walk(seq, shape):
        for op in seq:
            name = op["op"]
            if name in PARAMETRIC:
                k = _kind_of(op, shape)
                kinds.append(k)
                shape = k.out_shape
            elif name == "residual":
                out = walk(op["body"], shape)
                walk(op["shortcut"], shape)
                shape = out
            elif name == "flatten":
                shape = (int(np.prod(shape)),)
            elif name in ("maxpool2d", "avgpool2d"):
                shape = Op(name, shape, _pair(op["kernel"]), _pair(op["stride"])).out_shape
        return shape

    walk(ops, tuple(int(s) for s in input_shape))
    return kinds


def forward_graph(ops: list[dict], x: torch.Tensor, layer) -> torch.Tensor:
    """Run an architecture list that may hold residual ops on ``x`` (N×C×H×W or N×D):
    ``layer(k, h)`` computes its k-th conv2d/linear (forward order, as
    :func:`subsetsum_lth.ops.param_paths`); ReLU, pools and flatten act as in torch; a residual op
    adds its body's and its shortcut's outputs. The one interpreter of residual graphs (the
    target f, the collapsed ĝ)."""
    counter = [0]

    def walk(seq, h):
        for op in seq:
            name = op["op"]
            if name in PARAMETRIC:
                h = layer(counter[0], h)
                counter[0] += 1
            elif name == "relu":
                h = torch.relu(h)
            elif name == "maxpool2d":
                h = F.max_pool2d(h, tuple(op["kernel"]), tuple(op["stride"]))
            elif name == "avgpool2d":
                h = F.avg_pool2d(h, tuple(op["kernel"]), tuple(op["stride"]))
            elif name == "flatten":
                h = h.reshape(h.shape[0], -1)
            elif name == "residual":
                h = walk(op["body"], h) + walk(op["shortcut"], h)
        return h

    return walk(ops, x)


def op_lipschitz(op: dict, shape: tuple) -> float:
    """The proven ℓ2 Lipschitz constant of a parameter-free op of a canonical architecture (see
    :meth:`Op.lipschitz`); ReLU and flatten: 1."""
    if op["op"] in ("maxpool2d", "avgpool2d"):
        return Op(op["op"], tuple(shape), _pair(op["kernel"]), _pair(op["stride"])).lipschitz()
    return 1.0


def arch_of(kinds: list, after: list[list[Op]]) -> list[dict]:
    """The architecture list of a target (inverse of :func:`kinds_from_arch`)."""
    out = []
    for i, (k, ops) in enumerate(zip(kinds, after)):
        out.append(k.arch())
        if i < len(kinds) - 1:
            out.append({"op": "relu"})
        out.extend(o.arch() for o in ops)
    return out


def describe_arch(arch: list[dict]) -> str:
    """A short text of an architecture list, e.g. ``conv6k5p2-relu-maxpool2-...-linear10``."""
    parts = []
    for op in arch:
        name = op.get("op")
        if name == "conv2d":
            k = op["kernel"][0] if isinstance(op["kernel"], list) else op["kernel"]
            pad = op.get("padding", [0, 0])
            pad = pad[0] if isinstance(pad, list) else pad
            st = op.get("stride", [1, 1])
            st = st[0] if isinstance(st, list) else st
            parts.append(f"conv{op['out_channels']}k{k}" + (f"s{st}" if st != 1 else "") + (f"p{pad}" if pad else ""))
        elif name == "linear":
            parts.append(f"fc{op['out_features']}")
        elif name in ("maxpool2d", "avgpool2d"):
            k = op["kernel"][0] if isinstance(op["kernel"], list) else op["kernel"]
            parts.append(("maxpool" if name == "maxpool2d" else "avgpool") + str(k))
        elif name == "flatten":
            parts.append("flatten")
        elif name == "residual":
            body = describe_arch(op["body"])
            parts.append(f"res({body}" + (f" | {describe_arch(op['shortcut'])})" if op.get("shortcut") else ")"))
    return "-".join(parts)
