"""Edge-popup (Ramanujan et al. 2020, "What's hidden in a randomly weighted neural network?")
on the random network g: learn one score per weight, keep the top-k fraction, never touch a
weight.

* **Scores.** Every prunable entry of g gets a score; the mask is the top-k of |score|
  (``GetSubnet``: forward = 0/1 top-k mask, backward = identity, the straight-through
  estimator of allenai/hidden-networks). Scores start kaiming-uniform as in hidden-networks
  (``kaiming_uniform_(a=sqrt(5))`` = U[-1/sqrt(fan_in), 1/sqrt(fan_in)], the same bound for
  bias scores) from a CPU generator seeded by ``seed``, so runs are reproducible on any device.
* **What is prunable (eligible).** ``structure='free'``: every entry of every weight tensor,
  and of every bias tensor that is not all zeros (all-zero biases are left out and masked 0).
  ``structure='structured'``: only the entries that the construction's block-diagonal
  pre-pruning allows (``construction.prepruning_masks``; Pensia et al.'s Figure 1c), which
  needs the construction's block plan (rebuilt from the run's report.json or from shapes).
* **Kept fraction.** ``keep`` = k is the fraction KEPT. With ``scope='layer'`` every scored
  tensor (a Linear layer's weight and its bias are ranked separately) keeps exactly
  ``ceil(k * n_eligible)`` entries, k read as the decimal number given (so k=0.1 of 10 keeps
  1); with ``scope='global'`` one top-k over all eligible entries keeps exactly
  ``ceil(k * total_eligible)``. Ties in |score| (rare with float scores) are broken towards
  the lower flat index on CPU; on CUDA ``torch.topk`` picks among tied entries.
* **Training.** SGD on the scores only (momentum 0.9, weight decay 5e-4 on the scores, lr
  0.02, batch 128), a per-step cosine schedule, cross-entropy on MNIST pixels / 255. The
  default budget is one epoch of ``CPU_TRAIN_SUBSET`` images on CPU (all of them on CUDA).
  hidden-networks' lr 0.1 is too large here: g's hidden widths are in the tens of thousands,
  so the kaiming-uniform scores of its wide layers start tiny (1/sqrt(fan_in)) while their
  gradients do not shrink with the width; one step at 0.1 with momentum moves them by about
  their own size, the top-k reshuffles and the network ends switched off (loss ln 10).
* **No rescaling of the weights.** hidden-networks draws its weights with std
  sqrt(2/fan_in) (÷ sqrt(k) with ``scale_fan``); here the masks must be masks of g's stored
  weights, used as they are (``weight_scaling`` in the report). A ReLU network is positively
  homogeneous: per-layer scales c_j (biases scaled along) multiply the logits by prod c_j,
  which the temperature below absorbs. The
  weights are plain tensors outside the optimiser (``requires_grad=False``) and stay
  bit-for-bit what was loaded. The loss is taken on logits / T with T (``temperature='auto'``)
  the standard deviation of the initial masked network's logits: g's U[-1, 1] weights give
  logits in the hundreds, where the saturated loss drives the scores to switch the network
  off; dividing by T > 0 changes no prediction (T = 1 is plain edge-popup).
* **Without the inner ReLU** (``inner_relu=False``, ``--no-inner-relu``): the construction's
  layers 2i-1 (Linear layers 0, 2, 4, ... of the Sequential) are used linearly, as in the
  variant of Pensia et al.'s Figure 1c without ReLU; with ``structure='structured'`` the sign
  pruning (which only removes units a ReLU would switch off) is then dropped. The report records
  ``inner_relu``, ``relu_after`` and ``modules`` (``Identity`` where no ReLU is applied), and
  ``compare`` rebuilds ĝ accordingly; such a run folder is *not* the plain
  Sequential(Linear, ReLU, ..., Linear) of DESIGN §5.
* **Temperature.** ``temperature='batch'`` divides each batch's logits by their own (detached)
  standard deviation instead of a constant fixed at the start.
* **Devices.** ``device='auto'`` takes CUDA when present. The CUDA path never leaves the
  device inside the training loop (top-k by ``torch.topk``; loss and accuracy accumulate on
  the device and are read once every ``sync_every`` steps). On CPU the exact top-k threshold
  comes from numpy's introselect (``np.partition``), much faster there than ``torch.topk``,
  and layers whose eligible entries are sparse (the structured block-diagonal layers) are
  computed by a gather/scatter instead of a dense product, layers whose eligible entries are
  whole columns (the structured second layers) by a dense product over those columns.

The run folder has the same format as ``approximate``'s (DESIGN §5): ``random_net.safetensors``
(the same random weights; a byte-identical copy for ``from_run``), ``masks.safetensors``,
``report.json``, ``metrics.csv``, ``training_curve.png`` and, when the target is known,
``target.safetensors``.
"""
from __future__ import annotations

import logging
import math
import resource
import time
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from subsetsum_lth import runfolder as rf
from subsetsum_lth.errors import RunFolderError, UserError
from subsetsum_lth.netdigest import weights_digest

log = logging.getLogger(__name__)

SCOPES = ("layer", "global")
STRUCTURES = ("free", "structured")
DEVICES = ("auto", "cpu", "cuda")
WIDE_INITS = ("uniform", "normal", "kaiming-uniform")
SELECTIONS = ("auto", "partition", "topk")
TEMPERATURES = ("batch", "auto")

#: training images of the default budget on CPU (``train_subset='auto'``): 60 steps of 128, a few
#: minutes for the 48M-entry random network of the 784-500-10 ticket on 2 cores
CPU_TRAIN_SUBSET = 7680

#: a weight tensor whose eligible entries are at most this fraction of it is computed by a
#: gather/scatter over the eligible entries instead of a dense matrix product
SPARSE_DENSITY = 0.05

CURVE_PNG = "training_curve.png"
METHOD = "edge-popup"


# ----------------------------------------------------------------------------- configuration

@dataclass
class EdgePopupConfig:
    """Everything ``run_edge_popup`` needs.

    Exactly one source of the random network: ``from_run`` (a run folder; its
    ``random_net.safetensors`` is used as is), ``from_target`` (a target file/folder; g is
    allocated as in ``approximate`` with ``block_width``/``C``/``eps``/``net_seed``) or
    ``wide`` (layer sizes of a plain MLP such as ``"784,H,10"``; each ``H`` is the largest
    width with at most ``param_budget`` parameters).
    """

    from_run: str | None = None
    from_target: str | None = None
    wide: str | Sequence | None = None
    param_budget: int | None = None
    wide_init: str = "uniform"
    wide_bias: bool = True
    block_width: int | None = None
    C: float = 1.5
    eps: float = 0.01
    input_domain: str | None = None
    net_seed: int | None = None        #: seed of a freshly allocated g (default: ``seed``)

    keep: float = 0.5
    scope: str = "layer"
    structure: str = "free"
    epochs: int = 1
    lr: float = 0.02
    batch_size: int = 128
    momentum: float = 0.9
    weight_decay: float = 5e-4
    seed: int = 0
    device: str = "auto"
    threads: int | None = None
    data_dir: str | None = None
    train_subset: int | str | None = "auto"   #: first N training images; "auto": CPU_TRAIN_SUBSET on CPU, all on CUDA
    test_subset: int | None = None
    sync_every: int | None = None      #: steps between reads of loss/accuracy (None: 50 on CUDA, 10 on CPU)
    eval_every_epoch: bool = True
    selection: str = "auto"            #: top-k method: auto (partition on CPU, topk elsewhere)
    temperature: float | str = "auto"  #: loss on logits / T; "auto": T = std of the initial logits
    inner_relu: bool = True            #: False: Linear layers 1, 3, 5, ... (g's layers 2i-1) used linearly
    plots: bool = True
    overwrite: bool = False

    def validate(self) -> None:
        sources = [s for s in ("from_run", "from_target", "wide") if getattr(self, s) is not None]
        if len(sources) != 1:
            raise UserError("give exactly one random network: --from-run RUN, --from-target TARGET "
                            f"or --wide SIZES (got {', '.join(sources) or 'none'})")
        if not (isinstance(self.keep, (int, float)) and 0 < float(self.keep) <= 1):
            raise UserError(f"--keep is the fraction of weights KEPT and must lie in (0, 1], got {self.keep}")
        if self.scope not in SCOPES:
            raise UserError(f"--scope must be one of {SCOPES}, got {self.scope!r}")
        if self.structure not in STRUCTURES:
            raise UserError(f"--structure must be one of {STRUCTURES}, got {self.structure!r}")
        if self.structure == "structured" and self.wide is not None:
            raise UserError("--structure structured imposes the construction's block-diagonal "
                            "pre-pruning and needs a construction-shaped network: use --from-run "
                            "(a subset-sum run) or --from-target, not --wide")
        if self.device not in DEVICES:
            raise UserError(f"--device must be one of {DEVICES}, got {self.device!r}")
        if self.temperature not in TEMPERATURES and not (
                isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature)
                and self.temperature > 0):
            raise UserError(f"the temperature must be one of {TEMPERATURES} or a positive number, "
                            f"got {self.temperature!r}")
        if self.selection not in SELECTIONS:
            raise UserError(f"selection must be one of {SELECTIONS}, got {self.selection!r}")
        if self.wide_init not in WIDE_INITS:
            raise UserError(f"--wide-init must be one of {WIDE_INITS}, got {self.wide_init!r}")
        if self.input_domain not in (None, "nonnegative", "signed"):
            raise UserError(f"--input-domain must be nonnegative or signed, got {self.input_domain!r}")
        for name in ("epochs", "batch_size", "sync_every"):
            if getattr(self, name) is not None and int(getattr(self, name)) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise UserError(f"--lr must be a positive number, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise UserError(f"--momentum must lie in [0, 1), got {self.momentum}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise UserError(f"--weight-decay must be >= 0, got {self.weight_decay}")
        if int(self.seed) < 0 or (self.net_seed is not None and int(self.net_seed) < 0):
            raise UserError("seeds must be non-negative integers")
        if self.threads is not None and int(self.threads) < 1:
            raise UserError(f"--threads must be >= 1, got {self.threads}")
        for name in ("train_subset", "test_subset"):
            v = getattr(self, name)
            if name == "train_subset" and v == "auto":
                continue
            if v is not None and (isinstance(v, str) or int(v) < 1):
                raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {v}")
        if not self.inner_relu and self.wide is not None:
            raise UserError("--no-inner-relu drops the ReLU after the construction's layers 2i-1 and needs "
                            "a construction-shaped network (--from-run or --from-target), not --wide")
        if self.param_budget is not None and self.wide is None:
            raise UserError("--param-budget sizes a --wide network; it needs --wide SIZES with an H")


def kept_count(keep: float, n: int) -> int:
    """``ceil(keep * n)`` with ``keep`` read as the decimal it was written as (0.1 * 10 = 1),
    clipped to [0, n]."""
    if n <= 0:
        return 0
    k = math.ceil(Fraction(repr(float(keep))) * n)
    return max(0, min(int(n), int(k)))


# ----------------------------------------------------------------------------- devices

def resolve_device(name: str) -> torch.device:
    """'auto' → CUDA when available, else CPU; 'cuda' without a GPU is a UserError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but torch sees no CUDA device "
                        f"(torch {torch.__version__}); use --device cpu or auto")
    if name not in ("cpu", "cuda"):
        raise UserError(f"unknown device {name!r}; use auto, cpu or cuda")
    return torch.device(name)


def resolve_train_subset(spec: int | str | None, device: torch.device) -> int | None:
    """``'auto'`` → ``CPU_TRAIN_SUBSET`` images on CPU, all (None) on CUDA; else as given."""
    if spec == "auto":
        return CPU_TRAIN_SUBSET if device.type == "cpu" else None
    return None if spec is None else int(spec)


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"


# ----------------------------------------------------------------------------- top-k + ST

def topk_mask(values: torch.Tensor, k: int, method: str = "topk") -> torch.Tensor:
    """Boolean mask of exactly ``k`` largest entries of a 1-D tensor (ties: lower index first
    for 'partition'; 'topk' keeps whichever k ``torch.topk`` returns).

    'partition' (CPU): threshold from numpy's introselect, then at most a few passes; it
    synchronises with the host. 'topk': ``torch.topk`` + scatter, no host synchronisation."""
    n = values.numel()
    if k >= n:
        return torch.ones(n, dtype=torch.bool, device=values.device)
    if k <= 0:
        return torch.zeros(n, dtype=torch.bool, device=values.device)
    if method == "partition":
        arr = values.detach().cpu().numpy()
        thr = float(np.partition(arr, n - k)[n - k])
        ge = values >= thr
        n_ge = int(torch.count_nonzero(ge))
        if n_ge == k:
            return ge
        above = values > thr
        need = k - int(torch.count_nonzero(above))
        tied = torch.nonzero(values == thr).flatten()[:need]
        above[tied] = True
        return above
    idx = torch.topk(values, k, sorted=False).indices
    return torch.zeros(n, dtype=torch.bool, device=values.device).scatter_(0, idx, True)


class GetSubnet(torch.autograd.Function):
    """Straight-through top-k: forward = 0/1 mask of the k largest ``scores``, backward =
    identity (hidden-networks' ``GetSubnet``; callers pass ``|score|``)."""

    @staticmethod
    def forward(ctx, scores: torch.Tensor, k: int, method: str = "topk"):  # noqa: D401
        return topk_mask(scores.reshape(-1), int(k), method).reshape(scores.shape).to(scores.dtype)

    @staticmethod
    def backward(ctx, grad):
        return grad, None, None


class MaskedValues(torch.autograd.Function):
    """``values * GetSubnet(|scores|, k)`` in one step (the per-layer hot path): forward keeps
    the k entries of largest |score|; backward gives the scores exactly what
    ``abs → GetSubnet → mul`` gives, ``grad * values * sgn(scores)``, with fewer passes over
    memory. ``values`` are frozen and get no gradient."""

    @staticmethod
    def forward(ctx, scores: torch.Tensor, values: torch.Tensor, k: int, method: str = "topk"):  # noqa: D401
        keep = topk_mask(scores.detach().abs(), int(k), method)
        ctx.save_for_backward(scores, values)
        return values * keep

    @staticmethod
    def backward(ctx, grad):
        scores, values = ctx.saved_tensors
        g = grad * values
        g.mul_(torch.sgn(scores))
        return g, None, None, None


# ----------------------------------------------------------------------------- the network

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


# ----------------------------------------------------------------------------- the network's source

@dataclass
class RandomNet:
    """The random network g to search masks on, with what is known about it."""

    state: dict                         #: key -> float32 CPU tensor
    source: dict                        #: for the report
    plans: list | None = None           #: construction LayerPlans when construction-shaped
    input_domain: str = "nonnegative"
    copy_from: Path | None = None       #: random_net.safetensors to copy byte for byte
    target: object | None = None        #: subsetsum_lth.target.Target when known
    target_file: Path | None = None     #: target.safetensors to copy byte for byte


def parse_sizes(spec: str | Sequence) -> list:
    """'784,H,10' → [784, 'H', 10]."""
    tokens = spec.split(",") if isinstance(spec, str) else list(spec)
    out = []
    for tok in tokens:
        tok = str(tok).strip()
        if tok.upper() == "H":
            out.append("H")
            continue
        try:
            v = int(tok)
        except ValueError:
            raise UserError(f"--wide: expected comma-separated layer sizes (integers or H), got {spec!r}") from None
        if v < 1:
            raise UserError(f"--wide: layer sizes must be positive, got {spec!r}")
        out.append(v)
    if len(out) < 2:
        raise UserError(f"--wide needs at least an input and an output size, got {spec!r}")
    if out[0] == "H" or out[-1] == "H":
        raise UserError(f"--wide: only hidden sizes may be H, got {spec!r}")
    return out


def mlp_parameters(sizes: Sequence[int], bias: bool = True) -> int:
    return int(sum(a * b + (b if bias else 0) for a, b in zip(sizes[:-1], sizes[1:])))


def wide_sizes(spec: str | Sequence, param_budget: int | None, bias: bool = True) -> list[int]:
    """Layer sizes of the wide MLP; every H is the largest width within ``param_budget``
    parameters (biases counted when ``bias``)."""
    sizes = parse_sizes(spec)
    if "H" not in sizes:
        if param_budget is not None:
            raise UserError("--param-budget picks the width H: write it into --wide, e.g. 784,H,10")
        return [int(s) for s in sizes]
    if param_budget is None:
        raise UserError("--wide with H needs --param-budget N (the largest H within N parameters is used)")

    def count(h: int) -> int:
        return mlp_parameters([h if s == "H" else s for s in sizes], bias)

    if count(1) > param_budget:
        raise UserError(f"--param-budget {param_budget:,} is smaller than the network with H=1 "
                        f"({count(1):,} parameters)")
    lo, hi = 1, 2
    while count(hi) <= param_budget:
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if count(mid) <= param_budget else (lo, mid)
    return [lo if s == "H" else int(s) for s in sizes]


def wide_network(sizes: Sequence[int], seed: int, init: str = "uniform", bias: bool = True) -> dict:
    """A plain random MLP state_dict: per layer j a generator from SeedSequence(seed, (j,)).
    'uniform': U[-1, 1] (the construction's distribution); 'normal': N(0, 1);
    'kaiming-uniform': U[-sqrt(6/fan_in), sqrt(6/fan_in)]. Biases drawn the same way (zeros
    without ``bias``). Refuses, before allocating, a network larger than the construction's
    limit (weights, scores, their gradients and momenta: ~16 bytes per entry)."""
    from subsetsum_lth.construction import MAX_RANDOM_ENTRIES
    entries = mlp_parameters(sizes, bias=True)
    if entries > MAX_RANDOM_ENTRIES:
        raise UserError(f"--wide {','.join(map(str, sizes))} has {entries:,} weights: about "
                        f"{16 * entries / 1e9:,.0f} GB for weights, scores, gradients and momenta, above "
                        f"this tool's limit of {MAX_RANDOM_ENTRIES:,} entries; use smaller hidden widths "
                        "or --param-budget")
    state = {}
    for j, (p, q) in enumerate(zip(sizes[:-1], sizes[1:])):
        rng = np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(j,)))
        if init == "normal":
            w = rng.standard_normal((q, p))
            b = rng.standard_normal(q)
        else:
            a = 1.0 if init == "uniform" else math.sqrt(6.0 / p)
            w = rng.uniform(-a, a, size=(q, p))
            b = rng.uniform(-a, a, size=q)
        state[f"{2 * j}.weight"] = torch.from_numpy(w.astype(np.float32))
        state[f"{2 * j}.bias"] = torch.from_numpy(b.astype(np.float32) if bias else np.zeros(q, np.float32))
    return state


def plans_from_report(report: dict, state: dict, input_domain: str | None = None) -> list | None:
    """Rebuild the construction's LayerPlans of a run: from report.json ('layers' of an
    ``approximate`` run, or 'construction_plan' of an edge-popup run), else from the shapes
    (H = p*m (+ m with a bias block), a bias block iff the second layer's bias is non-zero).
    Returns None if the network is not construction-shaped."""
    from subsetsum_lth.construction import LayerPlan

    n_linear = len([k for k in state if k.endswith(".weight")])
    if n_linear % 2:
        return None
    depth = n_linear // 2
    domain = report.get("input_domain") or input_domain or "nonnegative"
    entries = report.get("construction_plan")
    if not entries:
        layers = report.get("layers") or []
        if layers and all(isinstance(e, dict) and "block_width" in e for e in layers):
            entries = layers
    plans = []
    for i in range(depth):
        w1 = state[f"{4 * i}.weight"]
        w2 = state[f"{4 * i + 2}.weight"]
        H, p = int(w1.shape[0]), int(w1.shape[1])
        q = int(w2.shape[0])
        if int(w2.shape[1]) != H:
            return None
        grow, ext = 0, None
        if entries and len(entries) == depth:
            e = entries[i]
            m, has_bias = int(e["block_width"]), bool(e.get("has_bias", False))
            fm = int(e.get("formula_block_width", m))
            tq, tp = e.get("target_shape", [q, p])
            # blocks grown by approximate's adaptive widths: m + grow * extensions[j] units
            if e.get("block_extensions") is not None:
                grow = int(e.get("growth_units") or e.get("grow") or 0)
                ext = np.asarray(e["block_extensions"], dtype=np.int64)
                if ext.shape != (p + (1 if has_bias else 0),):
                    return None
        else:
            b2 = np.asarray(state[f"{4 * i + 2}.bias"])
            has_bias = bool(np.any(b2 != 0))
            m = H // (p + 1) if has_bias else H // p
            fm, (tq, tp) = m, (q, p)
        plan = LayerPlan(i, p, q, m, fm, has_bias, signed_input=(i == 0 and domain == "signed"), grow=grow,
                         extensions=ext)
        if m < 1 or plan.hidden != H or (int(tq), int(tp)) != (q, p):
            return None
        plans.append(plan)
    return plans


def _plan_entries(plans) -> list[dict]:
    return [{"layer": pl.index, "target_shape": [pl.q, pl.p], "block_width": pl.m,
             "formula_block_width": pl.formula_m, "has_bias": pl.has_bias,
             "signed_input": pl.signed_input, "growth_units": int(pl.grow),
             "block_extensions": [int(v) for v in np.asarray(pl.extensions)]} for pl in plans]


def load_random_net(config: EdgePopupConfig) -> RandomNet:
    """The random network named by the config (run folder, target, or wide MLP)."""
    from subsetsum_lth.construction import ConstructionConfig, build_construction
    from subsetsum_lth.target import load_target

    if config.from_run is not None:
        from subsetsum_lth.runcheck import read_run
        run = Path(config.from_run)
        checked = read_run(run)     # the one validated reader (layout, fields) that certify uses
        path = run / rf.RANDOM_NET
        state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in checked.random_state.items()}
        report = checked.report
        domain = checked.input_domain or config.input_domain or "nonnegative"
        plans = checked.plans if checked.plans is not None else plans_from_report(report, state, domain)
        target = checked.target
        target_file = run / rf.TARGET if target is not None else None
        src = {"kind": "run", "path": str(run.resolve()),
               "run_method": report.get("method", "subset-sum" if "solver" in report else None)}
        return RandomNet(state, src, plans, domain, path, target, target_file)
    if config.from_target is not None:
        target = load_target(config.from_target)
        domain = config.input_domain or target.metadata.get("input_domain") or "nonnegative"
        net_seed = config.seed if config.net_seed is None else config.net_seed
        cc = ConstructionConfig(input_domain=domain, seed=int(net_seed), eps=config.eps, C=config.C,
                                block_width=config.block_width)
        construction = build_construction(target, cc)
        state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in construction.state_dict().items()}
        src = {"kind": "target", "path": str(Path(config.from_target).resolve()), "net_seed": int(net_seed),
               "construction": asdict(cc), "target_sizes": target.sizes}
        return RandomNet(state, src, construction.plans, domain, None, target, None)
    sizes = wide_sizes(config.wide, config.param_budget, config.wide_bias)
    net_seed = config.seed if config.net_seed is None else config.net_seed
    state = wide_network(sizes, int(net_seed), config.wide_init, config.wide_bias)
    src = {"kind": "wide", "sizes": sizes, "param_budget": config.param_budget, "init": config.wide_init,
           "bias": config.wide_bias, "net_seed": int(net_seed), "parameters": mlp_parameters(sizes, True)}
    return RandomNet(state, src, None, config.input_domain or "nonnegative", None, None, None)


def eligibility(net: RandomNet, structure: str, inner_relu: bool = True) -> dict | None:
    """None (free) or the construction's pre-pruning masks (structured).

    With ``inner_relu=False`` (layers 2i-1 used linearly) the sign pruning of §1 is dropped,
    since it only removes units that the ReLU switches off: every block-diagonal edge u_{jk} != 0
    of every layer 2i-1 and every non-zero bias of its bias block stay eligible (Pensia et al.'s
    Figure 1c structure), and layer 2i may use every one of those units."""
    if structure == "free":
        return None
    if net.plans is None:
        raise UserError("--structure structured needs the construction's block plan, but this random "
                        "network is not construction-shaped (no block plan in report.json and the shapes "
                        "do not fit H = p*m (+ m)); use --structure free")
    from dataclasses import replace

    from subsetsum_lth.construction import prepruning_masks
    numpy_state = {k: v.numpy() for k, v in net.state.items()}
    plans = net.plans if inner_relu else [replace(pl, signed_input=True) for pl in net.plans]
    allowed = prepruning_masks(plans, numpy_state)
    if not inner_relu:
        for i, pl in enumerate(plans):
            b1 = numpy_state[f"{4 * i}.bias"]
            if pl.has_bias:
                sl = pl.block_slice(pl.p)
                allowed[f"{4 * i}.bias"][sl] = (b1[sl] != 0).astype(np.uint8)
            live = allowed[f"{4 * i}.weight"].any(axis=1) | allowed[f"{4 * i}.bias"].astype(bool)
            allowed[f"{4 * i + 2}.weight"] = np.repeat(live[None, :].astype(np.uint8), pl.q, axis=0)
    if set(allowed) != set(net.state):
        raise UserError("the construction's block plan does not cover every tensor of the random network")
    return allowed


# ----------------------------------------------------------------------------- training

Progress = Callable[[int, str], Callable[[int], None]]


@torch.no_grad()
def evaluate_on_device(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 4096) -> float:
    """Accuracy of ``argmax model(x)``; one host synchronisation at the end."""
    was = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.int64, device=x.device)
    masks_model = isinstance(model, EdgePopupNet)
    if masks_model:
        # the masks do not change during evaluation: compute them once
        frozen = _frozen_forward(model)
        for i in range(0, len(x), batch):
            correct += (frozen(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum()
    else:
        for i in range(0, len(x), batch):
            correct += (model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum()
    model.train(was)
    return int(correct) / max(1, len(x))


def _frozen_forward(model: EdgePopupNet) -> Callable[[torch.Tensor], torch.Tensor]:
    """x -> g(x) with the current masks computed once."""
    values = model.effective_values()
    return lambda x: model.apply_values(x, values)


def train_step(model: EdgePopupNet, opt: torch.optim.Optimizer, xb: torch.Tensor, yb: torch.Tensor,
               temperature: float | None = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """One SGD step on the scores. Returns (summed loss as a float64 0-d tensor, number of
    correct predictions as a 0-d tensor), both left on the device: no host synchronisation.
    ``temperature=None``: the batch's own logit standard deviation (detached, on the device)."""
    out = model(xb)
    if temperature is None:
        t = out.detach().std().clamp_min(1e-12) if out.numel() > 1 else out.new_ones(())
        loss = F.cross_entropy(out / t, yb)
    else:
        loss = F.cross_entropy(out / temperature, yb)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    with torch.no_grad():
        return loss.detach().double() * yb.shape[0], (out.argmax(1) == yb).sum()


def train_scores(model: EdgePopupNet, x_train: torch.Tensor, y_train: torch.Tensor,
                 config: EdgePopupConfig, x_test: torch.Tensor | None = None,
                 y_test: torch.Tensor | None = None, progress: Progress | None = None,
                 on_epoch: Callable[[dict], None] | None = None) -> dict:
    """SGD on the scores; returns {'curve': [...], 'epoch_seconds': [...], ...}.

    Inside an epoch nothing is read back to the host except every ``sync_every`` steps
    (running loss and accuracy for the progress bar and the curve)."""
    device = x_train.device
    n = int(x_train.shape[0])
    bs = int(config.batch_size)
    steps_per_epoch = math.ceil(n / bs)
    total = steps_per_epoch * int(config.epochs)
    opt = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                          weight_decay=config.weight_decay)
    temperature = logit_temperature(model, x_train, config.temperature)
    sync_every = int(config.sync_every) if config.sync_every is not None else (50 if device.type == "cuda" else 10)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    gen = torch.Generator().manual_seed(int(config.seed))
    curve: list[dict] = []
    epoch_seconds: list[float] = []
    model.train()
    global_step = 0
    last = {}
    for epoch in range(int(config.epochs)):
        t0 = time.perf_counter()
        perm = torch.randperm(n, generator=gen).to(device)
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        correct = torch.zeros((), dtype=torch.int64, device=device)
        seen = 0
        win_loss = torch.zeros((), dtype=torch.float64, device=device)
        win_correct = torch.zeros((), dtype=torch.int64, device=device)
        win_seen = 0
        tick = progress(steps_per_epoch, f"epoch {epoch + 1}/{config.epochs}") if progress else None
        since = 0
        for step in range(steps_per_epoch):
            idx = perm[step * bs:(step + 1) * bs]
            xb, yb = x_train[idx], y_train[idx]
            l_b, c_b = train_step(model, opt, xb, yb, temperature)
            sched.step()
            global_step += 1
            with torch.no_grad():
                b = int(yb.shape[0])
                loss_sum += l_b
                correct += c_b
                win_loss += l_b
                win_correct += c_b
                seen += b
                win_seen += b
            since += 1
            if tick is not None:
                tick(1)          # the bar's step count needs nothing from the device
            if since == sync_every or step == steps_per_epoch - 1:
                # the only host synchronisation inside an epoch
                wl, wc = float(win_loss), int(win_correct)
                point = {"epoch": epoch + 1, "step": global_step, "lr": float(sched.get_last_lr()[0]),
                         "train_loss": wl / win_seen, "train_accuracy": wc / win_seen}
                curve.append(point)
                if tick is not None:
                    if hasattr(tick, "set_postfix"):
                        # window means, read back every sync_every steps: say which steps
                        tick.set_postfix(**{"loss": f"{point['train_loss']:.4f}",
                                            "train acc": f"{point['train_accuracy']:.4f}",
                                            "over steps": (f"{step + 2 - since}-{step + 1}" if since > 1
                                                           else f"{step + 1}")})
                win_loss.zero_()
                win_correct.zero_()
                win_seen = 0
                since = 0
        if tick is not None and hasattr(tick, "close"):
            tick.close()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        epoch_seconds.append(time.perf_counter() - t0)
        epoch_loss = float(loss_sum) / max(seen, 1)
        if not math.isfinite(epoch_loss):
            raise UserError(f"edge-popup diverged (loss {epoch_loss}) in epoch {epoch + 1}; "
                            f"try a smaller --lr than {config.lr}")
        last = {"epoch": epoch + 1, "step": global_step, "epoch_train_loss": epoch_loss,
                "epoch_train_accuracy": int(correct) / max(seen, 1), "epoch_seconds": epoch_seconds[-1]}
        if x_test is not None and (config.eval_every_epoch or epoch == int(config.epochs) - 1):
            last["test_accuracy"] = evaluate_on_device(model, x_test, y_test)
        curve.append(last)
        if on_epoch is not None:
            on_epoch({**last, "epochs": int(config.epochs)})
        log.info("epoch %d/%d: loss %.4f, train acc %.4f%s, %.1f s", epoch + 1, config.epochs, epoch_loss,
                 last["epoch_train_accuracy"],
                 f", test acc {last['test_accuracy']:.4f}" if "test_accuracy" in last else "",
                 epoch_seconds[-1])
    return {"curve": curve, "epoch_seconds": epoch_seconds, "steps_per_epoch": steps_per_epoch,
            "final": last, "temperature": temperature}


@torch.no_grad()
def logit_temperature(model: EdgePopupNet, x: torch.Tensor, spec: float | str = "auto",
                      sample: int = 1024) -> float | None:
    """T of the training loss CE(logits / T): a number, or 'auto' = the standard deviation of
    the initial masked network's logits on the first ``sample`` training images (1 if that is
    0 or not finite). Dividing by T > 0 changes no prediction (argmax) and no mask semantics;
    it only keeps the loss of an unnormalised random network (U[-1, 1] weights, logits in the
    hundreds) from saturating, where the scores otherwise learn to switch the network off."""
    if spec == "batch":
        return None
    if spec != "auto":
        return float(spec)
    out = _frozen_forward(model)(x[:sample])
    t = float(out.double().std()) if out.numel() > 1 else 1.0
    return t if math.isfinite(t) and t > 0 else 1.0


# ----------------------------------------------------------------------------- run folder

def _prepare_out(out: Path, overwrite: bool, sources: list[Path], need_state: dict | None = None) -> None:
    out = Path(out)
    for s in sources:
        if s is not None and out.resolve() == Path(s).resolve().parent:
            raise RunFolderError(f"--out {out} is the folder the random network comes from; "
                                 "write the edge-popup run to another folder")
    # --out must be new, empty, or an edge-popup run folder written by the tool (manifest.json);
    # it is locked until run_edge_popup() returns; --overwrite removes only the listed files
    from subsetsum_lth import manifest
    need = 2 * sum(int(t.nbytes) for t in (need_state or {}).values()) + (1 << 20)
    writer = manifest.open_folder(out, "edge-popup", overwrite=overwrite, need_bytes=need)
    existing = [p for p in (out / rf.REPORT, out / rf.MASKS) if p.exists()]
    if existing and not overwrite:
        writer.close()
        raise RunFolderError(f"{out} already holds a run ({', '.join(p.name for p in existing)}); "
                             "use --overwrite to replace it, or another --out")


def _versions() -> dict:
    import platform

    from subsetsum_lth import __version__
    return {"subsetsum_lth": __version__, "python": platform.python_version(), "numpy": np.__version__,
            "torch": torch.__version__}


def plot_curve(out: Path, curve: list[dict], title: str) -> str:
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    steps = [c for c in curve if "train_loss" in c]
    epochs = [c for c in curve if "test_accuracy" in c]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.4))
    a1.plot([c["step"] for c in steps], [c["train_loss"] for c in steps], color="#4477aa")
    a1.set_xlabel("step")
    a1.set_ylabel("CE(logits / T), window mean")
    a1.set_yscale("log")
    a2.plot([c["step"] for c in steps], [100 * c["train_accuracy"] for c in steps], color="#4477aa",
            label="train (window)")
    if epochs:
        a2.plot([c["step"] for c in epochs], [100 * c["test_accuracy"] for c in epochs], "o-",
                color="#ee6677", label="test (end of epoch)")
    a2.axhline(10, color="#999999", ls=":", lw=1, label="chance (10 classes)")
    a2.set_xlabel("step")
    a2.set_ylabel("accuracy (%)")
    a2.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(out) / CURVE_PNG
    rf.atomic_savefig(fig, path, dpi=110)
    plt.close(fig)
    return path.name


def run_edge_popup(config: EdgePopupConfig, out: str | Path, progress: Progress | None = None,
                   data: dict | None = None, on_start: Callable[[dict], None] | None = None,
                   on_epoch: Callable[[dict], None] | None = None) -> dict:
    """Search masks on the random network by edge-popup and write a run folder (locked and listed
    in its manifest while this runs; see :mod:`subsetsum_lth.manifest`). See :func:`_run_edge_popup`."""
    from subsetsum_lth import manifest
    with manifest.session(out):
        return _run_edge_popup(config, out, progress, data, on_start, on_epoch)


def _run_edge_popup(config: EdgePopupConfig, out: str | Path, progress: Progress | None = None,
                    data: dict | None = None, on_start: Callable[[dict], None] | None = None,
                    on_epoch: Callable[[dict], None] | None = None) -> dict:
    """Search masks on the random network by edge-popup and write a run folder. Returns the report.

    Args:
        progress: factory ``progress(total_steps, desc) -> tick`` with ``tick(n)``, optionally
            ``tick.set_postfix(**kw)`` and ``tick.close()``.
        on_start: called once before the first training step with the run's header (network,
            parameters, keep fraction, per-layer kept counts, steps, device, weight scales).
        on_epoch: called after every epoch with that epoch's curve point (loss, accuracies, seconds).
        data: optional ``{"x_train", "y_train", "x_test", "y_test"}`` arrays (default: MNIST
            from ``config.data_dir``, pixels / 255).
    """
    t_start = time.perf_counter()
    config.validate()
    out = Path(out)
    timings: dict[str, float] = {}
    device = resolve_device(config.device)
    old_threads = torch.get_num_threads()
    if config.threads is not None:
        torch.set_num_threads(int(config.threads))
    threads, device_name = torch.get_num_threads(), device_description(device)
    try:
        t = time.perf_counter()
        net = load_random_net(config)
        _prepare_out(out, config.overwrite, [net.copy_from], net.state)
        allowed = eligibility(net, config.structure, config.inner_relu)
        digest = weights_digest(net.state)
        timings["load"] = time.perf_counter() - t

        t = time.perf_counter()
        if data is None:
            from subsetsum_lth.data.mnist import load_mnist
            x_tr, y_tr = load_mnist("train", config.data_dir)
            x_te, y_te = load_mnist("test", config.data_dir)
        else:
            x_tr, y_tr, x_te, y_te = (data[k] for k in ("x_train", "y_train", "x_test", "y_test"))
        train_subset = resolve_train_subset(config.train_subset, device)
        if train_subset is not None:
            x_tr, y_tr = x_tr[:train_subset], y_tr[:train_subset]
        if config.test_subset is not None:
            x_te, y_te = x_te[:config.test_subset], y_te[:config.test_subset]
        in_f = int(net.state["0.weight"].shape[1])
        n_linear = len([k for k in net.state if k.endswith(".weight")])
        out_f = int(net.state[f"{2 * (n_linear - 1)}.weight"].shape[0])
        if x_tr.shape[1] != in_f:
            raise UserError(f"the random network takes {in_f} inputs but the images have {x_tr.shape[1]}")
        n_classes = int(max(np.max(y_tr), np.max(y_te))) + 1
        if out_f < n_classes:
            raise UserError(f"the random network has {out_f} outputs but the data has {n_classes} classes")
        xs = [torch.as_tensor(np.asarray(a), dtype=torch.float32).to(device) for a in (x_tr, x_te)]
        ys = [torch.as_tensor(np.asarray(a), dtype=torch.int64).to(device) for a in (y_tr, y_te)]
        timings["data"] = time.perf_counter() - t

        relu_after = relu_layout(n_linear, config.inner_relu)
        t = time.perf_counter()
        model = EdgePopupNet(net.state, allowed, config.keep, config.scope, config.seed, device,
                             config.selection, relu_after)
        timings["setup"] = time.perf_counter() - t
        log.info("edge-popup on %s: %s scored entries, keep %.4g (%s, %s), device %s",
                 "-".join(map(str, [model.shapes[0][1]] + [s[0] for s in model.shapes])),
                 f"{model.n_eligible:,}", config.keep, config.scope, config.structure, device)

        if on_start is not None:
            on_start(_header(model, net, config, device_name, int(xs[0].shape[0]), int(xs[1].shape[0])))
        t = time.perf_counter()
        with_target = net.target is not None and net.target.sizes[0] == in_f
        # with a target and no per-epoch evaluation, the final test accuracy comes from the same
        # pass as the agreement with the target (one forward pass over the test set, not two)
        eval_in_training = config.eval_every_epoch or not with_target
        trained = train_scores(model, xs[0], ys[0], config, xs[1] if eval_in_training else None,
                               ys[1] if eval_in_training else None, progress, on_epoch)
        timings["train"] = time.perf_counter() - t

        t = time.perf_counter()
        masks = model.final_masks()
        final = trained["final"]
        evaluation = {}
        if with_target:
            evaluation = _agreement(net.target, model, xs[1], ys[1])
        test_acc = final.get("test_accuracy")
        if test_acc is None:
            test_acc = evaluation.pop("test_accuracy", None)
            if test_acc is None:
                test_acc = evaluate_on_device(model, xs[1], ys[1])
            final["test_accuracy"] = test_acc          # the curve's last point
        evaluation.pop("test_accuracy", None)
        timings["evaluate"] = time.perf_counter() - t
        # the weights were never touched
        for key, w in model.frozen_weights().items():
            if w.requires_grad:
                raise AssertionError(f"weight {key} requires grad")
    finally:
        torch.set_num_threads(old_threads)

    layers, metrics = [], []
    kept_total = 0
    total = 0
    for j, (o, i) in enumerate(model.shapes):
        tw, tb = model.tensors[2 * j], model.tensors[2 * j + 1]
        kw, kb = int(masks[tw.key].sum()), int(masks[tb.key].sum())
        entry = {
            "layer": j, "module_index": 2 * j, "shape": [o, i],
            "weight_parameters": tw.numel, "weight_eligible": tw.n_eligible, "weight_kept": kw,
            "bias_parameters": tb.numel, "bias_eligible": tb.n_eligible, "bias_kept": kb,
            "kept_parameters": kw + kb, "total_parameters": tw.numel + tb.numel,
            "eligible_parameters": tw.n_eligible + tb.n_eligible,
            "kept_fraction": (kw + kb) / (tw.numel + tb.numel),
            "kept_fraction_of_eligible": (kw + kb) / max(1, tw.n_eligible + tb.n_eligible),
            "compute": ("gather" if tw.sparse else "columns" if tw.col_subset is not None else "dense"),
        }
        layers.append(entry)
        kept_total += kw + kb
        total += tw.numel + tb.numel
        for key in ("weight_kept", "bias_kept", "kept_parameters", "total_parameters", "eligible_parameters"):
            metrics.append({"layer": j, "metric": key, "value": entry[key]})
    for c in trained["curve"]:
        for key in ("train_loss", "train_accuracy", "lr", "epoch_train_loss", "epoch_train_accuracy",
                    "test_accuracy", "epoch_seconds"):
            if key in c:
                metrics.append({"layer": "all", "epoch": c["epoch"], "step": c["step"], "metric": key,
                                "value": c[key]})
    epoch_seconds = trained["epoch_seconds"]
    report = {
        "method": METHOD,
        "keep": float(config.keep),
        "keep_rule": ("exactly ceil(keep * eligible) entries kept per scored tensor (weight and bias "
                      "ranked separately)" if config.scope == "layer" else
                      "exactly ceil(keep * eligible) entries kept over all scored tensors together"),
        "scope": config.scope,
        "structure": config.structure,
        "epochs": int(config.epochs),
        "lr": float(config.lr),
        "batch_size": int(config.batch_size),
        "momentum": float(config.momentum),
        "weight_decay": float(config.weight_decay),
        "schedule": "cosine (per step, to 0)",
        "weight_scaling": "none: the stored weights of g are used as they are (the temperature absorbs their scale)",
        "score_init": "kaiming-uniform (a=sqrt(5)): U[-1/sqrt(fan_in), 1/sqrt(fan_in)]",
        "seed": int(config.seed),
        "device": device.type,
        "device_name": device_name,
        "threads": threads,
        "topk_method": model.selection,
        "logit_temperature": trained["temperature"],
        "training_note": ("the training loss (curve) is CE(logits / logit_temperature); dividing by a "
                          "positive constant changes no prediction"),
        "source": net.source,
        "inner_relu": bool(config.inner_relu),
        "relu_after": relu_after,
        "modules": module_names(relu_after),
        **({} if config.inner_relu else {"architecture_note": (
            "no ReLU after the construction's layers 2i-1 (Linear layers 0, 2, 4, ... of the "
            "Sequential): rebuild g-hat as the Sequential in 'modules' (Identity where a ReLU would be), "
            "not as Sequential(Linear, ReLU, ..., Linear)")}),
        "weights_sha256": digest,
        "sizes": [model.shapes[0][1]] + [s[0] for s in model.shapes],
        "input_domain": net.input_domain,
        "test_accuracy": float(test_acc),
        "train_accuracy": float(final["epoch_train_accuracy"]),
        "final_train_loss": float(final["epoch_train_loss"]),
        **evaluation,
        "kept_parameters": kept_total,
        "total_parameters": total,
        "eligible_parameters": model.n_eligible,
        "kept_fraction": kept_total / max(1, total),
        "layers": layers,
        "train_examples": int(xs[0].shape[0]),
        "test_examples": int(xs[1].shape[0]),
        "steps_per_epoch": trained["steps_per_epoch"],
        "epoch_seconds": epoch_seconds,
        "seconds_per_epoch": float(np.mean(epoch_seconds)),
        "train_seconds": timings["train"],
        "curve": trained["curve"],
        "timings": timings,
        "versions": _versions(),
    }
    if net.plans is not None:
        report["construction_plan"] = _plan_entries(net.plans)
    for key in ("test_accuracy", "kept_parameters", "total_parameters", "seconds_per_epoch"):
        metrics.append({"layer": "all", "metric": key, "value": report[key]})
    for key in ("target_accuracy", "prediction_agreement"):
        if key in report:
            metrics.append({"layer": "all", "metric": key, "value": report[key]})

    t = time.perf_counter()
    meta = {"format": "subsetsum-lth-run", "method": METHOD, "seed": int(config.seed),
            "weights_sha256": digest}
    if net.copy_from is not None:
        rf.atomic_copy(net.copy_from, out / rf.RANDOM_NET)
    else:
        rf.atomic_save_safetensors(net.state, out / rf.RANDOM_NET,
                                   {"format": "subsetsum-lth-run", "method": METHOD, "depth": n_linear // 2})
    rf.atomic_save_safetensors(masks, out / rf.MASKS, meta)
    if net.target_file is not None:
        rf.atomic_copy(net.target_file, out / rf.TARGET)
    elif net.target is not None:
        from subsetsum_lth.target import save_target
        save_target(net.target, out / rf.TARGET)
    if config.plots:
        try:
            title = (f"edge-popup: keep {config.keep:g} ({config.scope}, {config.structure}"
                     f"{'' if config.inner_relu else ', no inner ReLU'}), "
                     f"test acc {100 * report['test_accuracy']:.2f}%")
            report["plots"] = [plot_curve(out, trained["curve"], title)]
        except Exception as exc:  # a plot must never cost the run
            log.warning("training-curve plot failed: %s", exc)
    timings["write"] = time.perf_counter() - t
    report["wall_seconds"] = time.perf_counter() - t_start
    report["peak_memory_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    metrics.append({"layer": "all", "metric": "wall_seconds", "value": report["wall_seconds"]})
    rf.atomic_write_csv(out / rf.METRICS, metrics)
    rf.atomic_write_json(out / rf.REPORT, report)
    from subsetsum_lth import manifest
    manifest.writer_for(out).finish()
    return report


def _header(model: EdgePopupNet, net: RandomNet, config: EdgePopupConfig, device_name: str,
            n_train: int, n_test: int) -> dict:
    """What a run is about to do, for ``on_start``."""
    layers = []
    for j, (o, i) in enumerate(model.shapes):
        tw, tb = model.tensors[2 * j], model.tensors[2 * j + 1]
        layers.append({"layer": j, "shape": [o, i], "total_parameters": tw.numel + tb.numel,
                       "eligible_parameters": tw.n_eligible + tb.n_eligible,
                       "kept_parameters": (tw.n_keep if tw.score >= 0 else 0) + (tb.n_keep if tb.score >= 0 else 0)})
    return {"sizes": [model.shapes[0][1]] + [s[0] for s in model.shapes], "source": net.source,
            "total_parameters": sum(L["total_parameters"] for L in layers),
            "eligible_parameters": model.n_eligible, "keep": float(config.keep), "scope": config.scope,
            "structure": config.structure, "inner_relu": bool(config.inner_relu), "layers": layers,
            "kept_parameters": (sum(L["kept_parameters"] for L in layers) if config.scope == "layer"
                                else model.n_keep_global),
            "epochs": int(config.epochs), "steps_per_epoch": math.ceil(n_train / int(config.batch_size)),
            "train_examples": n_train, "test_examples": n_test, "lr": float(config.lr),
            "batch_size": int(config.batch_size), "seed": int(config.seed), "device_name": device_name}


@torch.no_grad()
def _agreement(target, model: EdgePopupNet, x: torch.Tensor, y: torch.Tensor, batch: int = 4096) -> dict:
    """Target accuracy and prediction agreement with the target (on the test data)."""
    f = _frozen_forward(model)
    agree = torch.zeros((), dtype=torch.int64, device=x.device)
    t_ok = torch.zeros((), dtype=torch.int64, device=x.device)
    g_ok = torch.zeros((), dtype=torch.int64, device=x.device)
    was = model.training
    model.eval()
    for i in range(0, len(x), batch):
        xb, yb = x[i:i + batch], y[i:i + batch]
        fp = target.forward(xb.double()).argmax(1)
        gp = f(xb).argmax(1)
        agree += (fp == gp).sum()
        t_ok += (fp == yb).sum()
        g_ok += (gp == yb).sum()
    model.train(was)
    n = max(1, len(x))
    return {"target_accuracy": int(t_ok) / n, "prediction_agreement": int(agree) / n,
            "test_accuracy": int(g_ok) / n}


__all__ = ["EdgePopupConfig", "EdgePopupNet", "GetSubnet", "MaskedValues", "topk_mask", "kept_count", "run_edge_popup",
           "load_random_net", "plans_from_report", "eligibility", "wide_sizes", "wide_network",
           "train_scores", "train_step", "resolve_device", "RandomNet", "SCOPES", "STRUCTURES",
           "relu_layout", "module_names"]
