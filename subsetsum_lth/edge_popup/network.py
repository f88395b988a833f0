"""The network edge-popup trains: ``EdgePopupNet``, g with frozen random weights and one score per
eligible entry, plus the ReLU layout helpers.

g is Sequential(Linear, ReLU, ..., Linear) for an MLP, or any architecture list of
:mod:`subsetsum_lth.gnet` (``GLayout.ops()``: the construction's Conv2d pairs, 1×1 convolutions,
pooling and flatten of a CNN target), given as ``ops`` with the ``input_shape`` (C, H, W). A
Conv2d layer is computed by ``F.conv2d`` with its masked kernel; the scores, ``GetSubnet`` and
``MaskedValues`` are the same for every kind of layer (a conv kernel is one scored tensor).
``fixed`` keys are used whole and never scored (the frozen random convolutions of the LeNet
panel of ``experiments/edge_popup_vs_subsetsum.py``)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from subsetsum_lth.edge_popup.scores import GetSubnet, MaskedValues, kept_count
from subsetsum_lth.errors import RunFolderError, UserError
from subsetsum_lth.ops import count_relus, param_paths

#: a weight tensor whose eligible entries are at most this fraction of it is computed by a
#: gather/scatter over the eligible entries instead of a dense matrix product
SPARSE_DENSITY = 0.05


@dataclass
class _Tensor:
    key: str                        #: '2.weight', '2.bias', ...
    layer: int                      #: index of the parametric layer (0, 1, 2, ...)
    kind: str                       #: 'weight' | 'bias'
    shape: tuple
    full: torch.Tensor              #: frozen random values (device)
    index: torch.Tensor | None      #: flat indices of eligible entries (None: all)
    values: torch.Tensor            #: frozen values at the eligible entries (1-D)
    n_eligible: int
    n_keep: int                     #: under scope 'layer'
    score: int = -1                 #: position in the ParameterList, -1 = not scored
    sparse: bool = False            #: gather/scatter over the eligible entries
    rows: torch.Tensor | None = None
    cols: torch.Tensor | None = None
    col_subset: torch.Tensor | None = None   #: eligible = whole columns: dense product on them
    fixed: bool = False             #: used whole, never scored (mask 1 everywhere)

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape))


def _checked_ops(state: dict, ops: list[dict] | None) -> list[dict]:
    """The architecture of the random network ``state``: ``ops`` (copied) with its keys checked, or
    without it the Sequential(Linear, ReLU, ..., Linear) the state dict's keys describe."""
    if ops is None:
        n_linear = len([k for k in state if k.endswith(".weight")])
        expected = {f"{2 * j}.{t}" for j in range(n_linear) for t in ("weight", "bias")}
        if set(state) != expected:
            raise RunFolderError("the random network is not the state_dict of Sequential(Linear, ReLU, ..., "
                                 f"Linear) with a bias per layer: keys {sorted(state)}")
        ops = []
        for j in range(n_linear):
            w = state[f"{2 * j}.weight"]
            ops.append({"op": "linear", "in_features": int(w.shape[-1]) if len(w.shape) else 0,
                        "out_features": int(w.shape[0]) if len(w.shape) else 0})
            if j < n_linear - 1:
                ops.append({"op": "relu"})
    else:
        ops = [dict(op) for op in ops]
        param = [p for p, _ in param_paths(ops)]
        expected = {f"{i}.{t}" for i in param for t in ("weight", "bias")}
        if set(state) != expected:
            raise RunFolderError(f"the random network's keys {sorted(state)[:6]} are not those of its "
                                 f"architecture (a weight and a bias for each of layers {param})")
    return ops


class EdgePopupNet(nn.Module):
    """g with frozen random weights and one score per eligible entry; ``forward`` uses the
    straight-through top-k masks. Without ``ops``: Sequential(Linear, ReLU, ..., Linear) read
    off the state dict; with ``ops`` (an architecture list, e.g. ``GLayout.ops()``) any network
    of Linear/Conv2d/ReLU/pooling/flatten layers, taking flat or (N, C, H, W) inputs when
    ``input_shape`` is given. ``relu_after``: one bool per ReLU of the network, in order.
    ``input_op``: the target's input op as (a, c) per flat input (x ↦ a·x + c, e.g. a declared
    normalisation), applied before g as approximate's ĝ applies it; None: inputs used as given."""

    def __init__(self, state: dict, eligible: dict | None, keep: float, scope: str = "layer",
                 seed: int = 0, device: torch.device | str = "cpu", selection: str = "auto",
                 relu_after: Sequence[bool] | None = None, ops: list[dict] | None = None,
                 input_shape: Sequence[int] | None = None, fixed: Sequence[str] = (),
                 input_op: tuple | None = None):
        super().__init__()
        device = torch.device(device)
        self.keep, self.scope = float(keep), scope
        self.selection = ("partition" if device.type == "cpu" else "topk") if selection == "auto" else selection
        ops = _checked_ops(state, ops)
        self.ops = ops
        self.input_shape = None if input_shape is None else tuple(int(v) for v in input_shape)
        # module paths of the conv2d/linear layers: Sequential indices, '3.body.0' inside a residual op
        paths = param_paths(ops)
        self.param_index = [int(p) if p.isdigit() else p for p, _ in paths]
        param_ops = [op for _, op in paths]
        n_relu = count_relus(ops)
        fixed = set(fixed)
        if fixed - set(state):
            raise UserError(f"fixed tensors {sorted(fixed - set(state))} are not in the random network")
        #: per ReLU of the network (for an MLP: per hidden Linear layer j): is it applied
        self.relu_after = [True] * n_relu if relu_after is None else [bool(r) for r in relu_after]
        if len(self.relu_after) != n_relu:
            raise UserError(f"relu_after needs {n_relu} entries (one per hidden Linear layer), "
                            f"got {len(self.relu_after)}")
        gen = torch.Generator().manual_seed(int(seed))
        self.tensors: list[_Tensor] = []
        self.scores = nn.ParameterList()
        self.shapes: list[tuple[int, int]] = []
        #: per parametric layer: its matrix view (q, p) (a conv kernel as (c_out, c_in*k*k))
        self.kinds: list[str] = []
        for j, idx in enumerate(self.param_index):
            op = param_ops[j]
            w = _to_tensor(state[f"{idx}.weight"])
            b = _to_tensor(state[f"{idx}.bias"])
            want_dim = 2 if op["op"] == "linear" else 4
            if w.dim() != want_dim or b.shape != (w.shape[0],):
                raise RunFolderError(f"layer {idx}: weight {tuple(w.shape)} and bias {tuple(b.shape)} "
                                     f"are not those of a {'Linear' if want_dim == 2 else 'Conv2d'} layer")
            if op["op"] == "linear" and j and self.kinds[-1] == "linear" and w.shape[1] != self.shapes[-1][0]:
                raise RunFolderError(f"layer {idx} takes {w.shape[1]} inputs but the previous layer "
                                     f"gives {self.shapes[-1][0]}")
            self.kinds.append(op["op"])
            self.shapes.append((int(w.shape[0]), int(np.prod(tuple(w.shape[1:])))))
            fan_in = int(np.prod(tuple(w.shape[1:])))
            bound = 1.0 / math.sqrt(fan_in)
            for kind, t in (("weight", w), ("bias", b)):
                key = f"{idx}.{kind}"
                # scores for the full tensor first, so that free and structured runs with the
                # same seed start from the same scores on the entries they share
                init = torch.empty(tuple(t.shape)).uniform_(-bound, bound, generator=gen).reshape(-1)
                self._add_tensor(key, j, kind, t, init, fixed, eligible, device)
        a = c = None
        if input_op is not None:
            a, c = (torch.as_tensor(np.asarray(v, dtype=np.float32), device=device).reshape(-1) for v in input_op)
        self.register_buffer("input_a", a, persistent=False)
        self.register_buffer("input_c", c, persistent=False)
        self._activation = _largest_activation(ops, self.input_shape)
        self.n_eligible = sum(t.n_eligible for t in self.tensors)
        self.n_keep_global = kept_count(self.keep, self.n_eligible)
        if self.n_eligible == 0:
            raise UserError("no weight of the random network may be kept (no eligible entries)")

    def _add_tensor(self, key: str, j: int, kind: str, t: torch.Tensor, init: torch.Tensor, fixed: set,
                    eligible: dict | None, device: torch.device) -> None:
        """Tensor ``key`` (the ``kind`` of parametric layer j) frozen, with its eligible entries,
        its scores (initialised from ``init``) and how its masked product is computed."""
        if key in fixed:
            full = t.to(device)
            full.requires_grad_(False)
            self.tensors.append(_Tensor(key, j, kind, tuple(t.shape), full, None, full.reshape(-1),
                                        0, 0, fixed=True))
            return
        if eligible is not None:
            allowed = torch.as_tensor(np.asarray(eligible[key]) != 0).reshape(-1)
            if allowed.numel() != t.numel():
                raise RunFolderError(f"structure mask {key} has {allowed.numel()} entries, "
                                     f"the weight {t.numel()}")
            index = None if bool(allowed.all()) else torch.nonzero(allowed).flatten()
        elif kind == "bias" and not bool((t != 0).any()):
            index = torch.zeros(0, dtype=torch.long)   # all-zero bias: nothing to keep
        else:
            index = None
        full = t.to(device)
        full.requires_grad_(False)
        flat = full.reshape(-1)
        if index is None:
            n_el, values = t.numel(), flat
        else:
            n_el = int(index.numel())
            index = index.to(device)
            values = flat[index]
            init = init[index.cpu()]
        ts = _Tensor(key, j, kind, tuple(t.shape), full, index, values, n_el,
                     kept_count(self.keep, n_el))
        if n_el > 0:
            ts.score = len(self.scores)
            self.scores.append(nn.Parameter(init.to(device)))
        row = int(np.prod(tuple(t.shape[1:]))) if t.dim() > 1 else 1
        if kind == "weight" and index is not None and 0 < n_el <= SPARSE_DENSITY * t.numel():
            # a Linear layer: gather/scatter over the eligible entries; a conv kernel
            # (the construction's block-diagonal k×k layers: one entry per hidden
            # channel): the same over the unfolded input patches
            ts.sparse = True
            ts.rows = torch.div(index, row, rounding_mode="floor")
            ts.cols = index - ts.rows * row
        elif kind == "weight" and t.dim() != 2:
            pass                    # conv kernels: dense F.conv2d on the scattered kernel
        elif kind == "weight" and index is not None and n_el > 0:
            # eligible entries = the same columns in every row (the construction's second
            # layers: the live hidden units): a dense product over those columns only;
            # the row-major eligible values then form the (rows x columns) sub-matrix
            grid = allowed.reshape(t.shape)
            cols = grid.any(dim=0)
            if int(cols.sum()) * t.shape[0] == n_el and bool(grid[:, cols].all()):
                ts.col_subset = torch.nonzero(cols).flatten().to(device)
        self.tensors.append(ts)

    # --- masks
    def eligible_masks(self) -> list[torch.Tensor | None]:
        """Per tensor: the straight-through 0/1 mask over its eligible entries (None if unscored)."""
        scored = [t for t in self.tensors if t.score >= 0]
        out: list[torch.Tensor | None] = [None] * len(self.tensors)
        pos = {id(t): i for i, t in enumerate(self.tensors)}
        if self.scope == "layer":
            for t in scored:
                out[pos[id(t)]] = GetSubnet.apply(self.scores[t.score].abs(), t.n_keep, self.selection)
        else:
            flat = torch.cat([self.scores[t.score].abs() for t in scored])
            m = GetSubnet.apply(flat, self.n_keep_global, self.selection)
            for t, part in zip(scored, torch.split(m, [t.n_eligible for t in scored])):
                out[pos[id(t)]] = part
        return out

    def effective_values(self) -> list[torch.Tensor | None]:
        """Per tensor: its eligible values times the straight-through mask (None if unscored)."""
        if self.scope == "layer":
            return [t.values if t.fixed else None if t.score < 0 else
                    MaskedValues.apply(self.scores[t.score], t.values, t.n_keep, self.selection)
                    for t in self.tensors]
        return [t.values if t.fixed else None if m is None else t.values * m
                for t, m in zip(self.tensors, self.eligible_masks())]

    @torch.no_grad()
    def final_masks(self) -> dict[str, np.ndarray]:
        """uint8 masks of the full tensors (keys as in the random network)."""
        masks = {}
        for t, m in zip(self.tensors, self.eligible_masks()):
            full = torch.zeros(t.numel, dtype=torch.uint8, device=t.full.device)
            if t.fixed:
                full = torch.ones(t.numel, dtype=torch.uint8, device=t.full.device)
            elif m is not None:
                mb = m.to(torch.uint8)
                if t.index is None:
                    full = mb
                else:
                    full[t.index] = mb
            masks[t.key] = full.reshape(t.shape).cpu().numpy()
        return masks

    def frozen_weights(self) -> dict[str, torch.Tensor]:
        """The random tensors used by the forward pass (for checks: never trained)."""
        return {t.key: t.full for t in self.tensors}

    # --- forward
    def _weight_product(self, t: _Tensor, vals: torch.Tensor | None, h: torch.Tensor) -> torch.Tensor:
        out_f = t.shape[0]
        if vals is None:
            return h.new_zeros(h.shape[0], out_f)
        if t.sparse:
            contrib = h.index_select(1, t.cols) * vals
            return h.new_zeros(h.shape[0], out_f).index_add(1, t.rows, contrib)
        if t.col_subset is not None:
            return F.linear(h.index_select(1, t.col_subset), vals.reshape(t.shape[0], -1))
        if t.index is None:
            W = vals.reshape(t.shape)
        else:
            W = t.full.new_zeros(t.numel).scatter(0, t.index, vals).reshape(t.shape)
        return F.linear(h, W)

    def _bias(self, t: _Tensor, vals: torch.Tensor | None) -> torch.Tensor | None:
        if vals is None:
            return None
        if t.index is None:
            return vals
        return t.full.new_zeros(t.numel).scatter(0, t.index, vals)

    def _kernel(self, t: _Tensor, vals: torch.Tensor | None) -> torch.Tensor:
        if vals is None:
            return t.full.new_zeros(t.shape)
        if t.index is None:
            return vals.reshape(t.shape)
        return t.full.new_zeros(t.numel).scatter(0, t.index, vals).reshape(t.shape)

    def eval_batch(self, budget: int = 1 << 22) -> int:
        """Images per evaluation batch: 4096 for an MLP; for an image network as many as keep
        the largest activation tensor within ``budget`` values (16 MB in float32, below the
        allocator's mmap threshold; a construction's conv layers have hundreds of channels at
        full resolution: 4096 images would need gigabytes per activation)."""
        if self.input_shape is None:
            return 4096
        return int(max(16, min(4096, budget // max(1, self._activation))))

    def _conv(self, t: _Tensor, vals: torch.Tensor | None, h: torch.Tensor, op: dict) -> torch.Tensor:
        stride, padding = tuple(op.get("stride", (1, 1))), tuple(op.get("padding", (0, 0)))
        if t.sparse and vals is not None:
            k = tuple(t.shape[2:])
            out_hw = [(n + 2 * p - kk) // s + 1 for n, p, kk, s in zip(h.shape[2:], padding, k, stride)]
            patches = F.unfold(h, k, padding=padding, stride=stride)          # (N, c*k*k, L)
            contrib = patches.index_select(1, t.cols) * vals[None, :, None]
            out = patches.new_zeros(h.shape[0], t.shape[0], patches.shape[2]).index_add(1, t.rows, contrib)
            return out.reshape(h.shape[0], t.shape[0], *out_hw)
        return F.conv2d(h, self._kernel(t, vals), None, stride, padding)

    @property
    def fixed_count(self) -> int:
        """Entries used whole without a score (``fixed``)."""
        return sum(t.numel for t in self.tensors if t.fixed)

    def apply_values(self, x: torch.Tensor, values: list) -> torch.Tensor:
        """g(x) with the given effective eligible values (see ``effective_values``), after the
        input op when there is one."""
        if self.input_a is not None:
            x = (x.reshape(x.shape[0], -1) * self.input_a.to(x.dtype) + self.input_c.to(x.dtype)).reshape(x.shape)
        h = x if self.input_shape is None or self.kinds[0] == "linear" else x.reshape(x.shape[0], *self.input_shape)
        count = {"j": 0, "r": 0}

        def walk(seq, h):
            for op in seq:
                name = op["op"]
                if name in ("linear", "conv2d"):
                    j = count["j"]
                    tw, tb = self.tensors[2 * j], self.tensors[2 * j + 1]
                    if name == "linear":
                        h = self._weight_product(tw, values[2 * j], h.reshape(h.shape[0], -1) if h.dim() != 2 else h)
                        b = self._bias(tb, values[2 * j + 1])
                        if b is not None:
                            h = h + b
                    else:
                        h = self._conv(tw, values[2 * j], h, op)
                        b = self._bias(tb, values[2 * j + 1])
                        if b is not None:
                            h = h + b.reshape(1, -1, 1, 1)
                    count["j"] += 1
                elif name == "relu":
                    if self.relu_after[count["r"]]:
                        h = torch.relu(h)
                    count["r"] += 1
                elif name == "maxpool2d":
                    h = F.max_pool2d(h, tuple(op["kernel"]), tuple(op.get("stride") or op["kernel"]))
                elif name == "avgpool2d":
                    h = F.avg_pool2d(h, tuple(op["kernel"]), tuple(op.get("stride") or op["kernel"]))
                elif name == "flatten":
                    h = h.reshape(h.shape[0], -1)
                elif name == "residual":     # body before shortcut: the order of param_paths
                    h = walk(op["body"], h) + walk(op["shortcut"], h)
                else:
                    raise RunFolderError(f"unsupported layer {name!r} in the random network")
            return h

        h = walk(self.ops, h)
        return h.reshape(h.shape[0], -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.apply_values(x, self.effective_values())


def _largest_activation(ops: list[dict], input_shape) -> int:
    """Values per image of the largest tensor the network computes (image networks)."""
    if input_shape is None:
        return 0
    shape = tuple(int(v) for v in input_shape)
    return _largest(ops, shape)[0]


def _largest(ops: list[dict], shape: tuple) -> tuple[int, tuple]:
    """(largest activation, output shape) of ``ops`` on inputs of ``shape``."""
    best = int(np.prod(shape))
    for op in ops:
        name = op["op"]
        if name == "residual":
            b_best, out = _largest(op["body"], shape)
            s_best, _ = _largest(op["shortcut"], shape)
            best, shape = max(best, b_best, s_best), out
            continue
        if name == "conv2d":
            k, s, p = (tuple(op.get(a, d)) for a, d in (("kernel", None), ("stride", (1, 1)), ("padding", (0, 0))))
            shape = (int(op["out_channels"]),
                     *((n + 2 * pp - kk) // ss + 1 for n, pp, kk, ss in zip(shape[1:], p, k, s)))
        elif name in ("maxpool2d", "avgpool2d"):
            k = tuple(op["kernel"])
            s = tuple(op.get("stride") or k)
            shape = (shape[0], *((n - kk) // ss + 1 for n, kk, ss in zip(shape[1:], k, s)))
        elif name == "flatten":
            shape = (int(np.prod(shape)),)
        elif name == "linear":
            shape = (int(op["out_features"]),)
        best = max(best, int(np.prod(shape)))
    return best, shape


def relu_layout(n_linear: int, inner_relu: bool = True) -> list[bool]:
    """Per hidden Linear layer j = 0 .. n_linear-2: whether a ReLU follows it. With
    ``inner_relu=False`` the construction's layers 2i-1 (j = 0, 2, 4, ...) are used linearly and
    only the layers 2i (j odd) keep their ReLU; that needs an even number of Linear layers."""
    if inner_relu:
        return [True] * (n_linear - 1)
    if n_linear % 2:
        raise UserError(f"--no-inner-relu needs the construction's 2l Linear layers; this random network "
                        f"has {n_linear}")
    return [j % 2 == 1 for j in range(n_linear - 1)]


def module_names(relu_after: Sequence[bool], ops: list[dict] | None = None) -> list[str]:
    """The Sequential's modules, e.g. ['Linear', 'Identity', 'Linear', 'ReLU', 'Linear', ...]
    (with ``ops``, those of that architecture list: 'Conv2d', 'MaxPool2d', 'Flatten', ...)."""
    if ops is not None:
        names = {"linear": "Linear", "conv2d": "Conv2d", "maxpool2d": "MaxPool2d", "avgpool2d": "AvgPool2d",
                 "flatten": "Flatten"}
        relus = iter(relu_after)
        out = []
        for op in ops:
            if op["op"] == "residual":      # its ReLUs are inside it
                for _ in range(count_relus([op])):
                    next(relus)
                out.append("Residual")
            else:
                out.append(("ReLU" if next(relus) else "Identity") if op["op"] == "relu" else names[op["op"]])
        return out
    out = []
    for r in relu_after:
        out += ["Linear", "ReLU" if r else "Identity"]
    return out + ["Linear"]


def _to_tensor(a) -> torch.Tensor:
    t = a if isinstance(a, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(a))
    if not t.is_floating_point():
        raise RunFolderError(f"random network tensors must be floating point, got {t.dtype}")
    return t.detach().to(torch.float32).contiguous()
