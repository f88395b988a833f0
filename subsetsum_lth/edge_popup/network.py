"""The network edge-popup trains: ``EdgePopupNet``, g = Sequential(Linear, ReLU, ..., Linear) with
frozen random weights and one score per eligible entry, plus the ReLU layout helpers."""
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

#: a weight tensor whose eligible entries are at most this fraction of it is computed by a
#: gather/scatter over the eligible entries instead of a dense matrix product
SPARSE_DENSITY = 0.05


@dataclass
class _Tensor:
    key: str                        #: '2.weight', '2.bias', ...
    layer: int                      #: index of the Linear layer (0, 1, 2, ...)
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

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape))


class EdgePopupNet(nn.Module):
    """g = Sequential(Linear, ReLU, ..., Linear) with frozen random weights and one score per
    eligible entry; ``forward`` uses the straight-through top-k masks."""

    def __init__(self, state: dict, eligible: dict | None, keep: float, scope: str = "layer",
                 seed: int = 0, device: torch.device | str = "cpu", selection: str = "auto",
                 relu_after: Sequence[bool] | None = None):
        super().__init__()
        device = torch.device(device)
        self.keep, self.scope = float(keep), scope
        self.selection = ("partition" if device.type == "cpu" else "topk") if selection == "auto" else selection
        n_linear = len([k for k in state if k.endswith(".weight")])
        expected = {f"{2 * j}.{t}" for j in range(n_linear) for t in ("weight", "bias")}
        if set(state) != expected:
            raise RunFolderError("the random network is not the state_dict of Sequential(Linear, ReLU, ..., "
                                 f"Linear) with a bias per layer: keys {sorted(state)}")
        #: per hidden Linear layer j (0 .. n_linear-2): is a ReLU applied after it
        self.relu_after = [True] * (n_linear - 1) if relu_after is None else [bool(r) for r in relu_after]
        if len(self.relu_after) != n_linear - 1:
            raise UserError(f"relu_after needs {n_linear - 1} entries (one per hidden Linear layer), "
                            f"got {len(self.relu_after)}")
        gen = torch.Generator().manual_seed(int(seed))
        self.tensors: list[_Tensor] = []
        self.scores = nn.ParameterList()
        self.shapes: list[tuple[int, int]] = []
        for j in range(n_linear):
            w = _to_tensor(state[f"{2 * j}.weight"])
            b = _to_tensor(state[f"{2 * j}.bias"])
            if w.dim() != 2 or b.shape != (w.shape[0],):
                raise RunFolderError(f"layer {2 * j}: weight {tuple(w.shape)} and bias {tuple(b.shape)} "
                                     "are not those of a Linear layer")
            if j and w.shape[1] != self.shapes[-1][0]:
                raise RunFolderError(f"layer {2 * j} takes {w.shape[1]} inputs but the previous layer "
                                     f"gives {self.shapes[-1][0]}")
            self.shapes.append((int(w.shape[0]), int(w.shape[1])))
            fan_in = int(w.shape[1])
            bound = 1.0 / math.sqrt(fan_in)
            for kind, t in (("weight", w), ("bias", b)):
                key = f"{2 * j}.{kind}"
                # scores for the full tensor first, so that free and structured runs with the
                # same seed start from the same scores on the entries they share
                init = torch.empty(tuple(t.shape)).uniform_(-bound, bound, generator=gen).reshape(-1)
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
                if kind == "weight" and index is not None and 0 < n_el <= SPARSE_DENSITY * t.numel():
                    ts.sparse = True
                    ts.rows = torch.div(index, t.shape[1], rounding_mode="floor")
                    ts.cols = index - ts.rows * t.shape[1]
                elif kind == "weight" and index is not None and n_el > 0:
                    # eligible entries = the same columns in every row (the construction's second
                    # layers: the live hidden units): a dense product over those columns only;
                    # the row-major eligible values then form the (rows x columns) sub-matrix
                    grid = allowed.reshape(t.shape)
                    cols = grid.any(dim=0)
                    if int(cols.sum()) * t.shape[0] == n_el and bool(grid[:, cols].all()):
                        ts.col_subset = torch.nonzero(cols).flatten().to(device)
                self.tensors.append(ts)
        self.n_eligible = sum(t.n_eligible for t in self.tensors)
        self.n_keep_global = kept_count(self.keep, self.n_eligible)
        if self.n_eligible == 0:
            raise UserError("no weight of the random network may be kept (no eligible entries)")

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
            return [None if t.score < 0 else
                    MaskedValues.apply(self.scores[t.score], t.values, t.n_keep, self.selection)
                    for t in self.tensors]
        return [None if m is None else t.values * m for t, m in zip(self.tensors, self.eligible_masks())]

    @torch.no_grad()
    def final_masks(self) -> dict[str, np.ndarray]:
        """uint8 masks of the full tensors (keys as in the random network)."""
        masks = {}
        for t, m in zip(self.tensors, self.eligible_masks()):
            full = torch.zeros(t.numel, dtype=torch.uint8, device=t.full.device)
            if m is not None:
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

    def apply_values(self, x: torch.Tensor, values: list) -> torch.Tensor:
        """g(x) with the given effective eligible values (see ``effective_values``)."""
        h = x
        n_linear = len(self.shapes)
        for j in range(n_linear):
            tw, tb = self.tensors[2 * j], self.tensors[2 * j + 1]
            h = self._weight_product(tw, values[2 * j], h)
            b = self._bias(tb, values[2 * j + 1])
            if b is not None:
                h = h + b
            if j < n_linear - 1 and self.relu_after[j]:
                h = torch.relu(h)
        return h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.apply_values(x, self.effective_values())


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


def module_names(relu_after: Sequence[bool]) -> list[str]:
    """The Sequential's modules, e.g. ['Linear', 'Identity', 'Linear', 'ReLU', 'Linear', ...]."""
    out = []
    for r in relu_after:
        out += ["Linear", "ReLU" if r else "Identity"]
    return out + ["Linear"]


def _to_tensor(a) -> torch.Tensor:
    t = a if isinstance(a, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(a))
    if not t.is_floating_point():
        raise RunFolderError(f"random network tensors must be floating point, got {t.dtype}")
    return t.detach().to(torch.float32).contiguous()
