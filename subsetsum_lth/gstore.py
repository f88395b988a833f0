"""How a run folder stores g: dense (``random_net.safetensors`` + ``masks.safetensors``, the file
contract of DESIGN §5) or compact (the block support and the generator that regenerates the rest).

g's first layer of a pair is dense (H × p), but the construction keeps at most one input edge
per hidden unit — unit h of block j may keep only ``w1[h, j]`` — so everything else is masked
out. A *compact* run folder holds, per layer pair i (keys ``pair{i}.*``):

* ``random_net.compact.safetensors``: the support values ``u`` (H,) = ``w1[h, block(h)]`` (0 in
  the bias block), ``b1`` (H,), ``w2`` (q, H), ``b2`` (q,), float32 — and, in its metadata, the
  generator specification (seed, distribution, block widths and growth steps per layer);
* ``masks.compact.safetensors``: uint8 0/1 masks of the same four tensors (``u``: unit h keeps
  its own input edge).

The dense tensors are regenerated from the specification on request (:class:`DenseState`,
:func:`export_dense`), bit-identical to what a dense run of the same seed writes. Readers never
trust the compact file: :func:`read_compact` regenerates the support from the specification and
refuses any difference.

Everything the pipeline computes after solving (layer maps, the certificate, the empirical
recheck on ĝ, the spot check) works from the support (:func:`support_layer_maps`,
:class:`SupportNet`), so no dense g of a pair is ever held in float64.
"""
from __future__ import annotations

import json
import logging
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from subsetsum_lth import runfolder as rf
from subsetsum_lth.certify import LayerMap, flat_input, layer_maps, pruned_module
from subsetsum_lth.construction import DISTRIBUTIONS, draw_layer_pair, unit_columns
from subsetsum_lth.errors import RunFolderError, UserError
from subsetsum_lth.ops import module_from_ops
from subsetsum_lth.preprocess import input_module

log = logging.getLogger(__name__)

STORES = ("auto", "dense", "compact")
#: ``--store auto`` writes the dense files up to this many dense float32 entries of g (0.8 GB)
DENSE_MAX_ENTRIES = 200_000_000
RANDOM_NET_COMPACT = "random_net.compact.safetensors"
MASKS_COMPACT = "masks.compact.safetensors"
#: names the generator of :func:`subsetsum_lth.construction.draw_layer_pair` (change it if the
#: draw ever changes: old compact folders are then refused instead of misread)
GENERATOR = "subsetsum-lth/block-seeds/v1"
#: the generator of a g with support-drawn pairs (``--support-draw-above``; their layer entries
#: say ``"first_layer": "support"``): readers that do not know it refuse the folder
GENERATOR_SUPPORT = "subsetsum-lth/block-seeds/v1+support-draw"
ROLES = ("u", "b1", "w2", "b2")
RECREATE = rf.RECREATE


def dense_entries(plans) -> int:
    """float32 entries of the dense g these plans describe."""
    return sum(pl.hidden * (pl.p + 1) + pl.q * (pl.hidden + 1) for pl in plans)


def choose_store(store: str, plans, image: bool = False) -> str:
    """'dense' or 'compact' for ``--store`` (auto: dense up to :data:`DENSE_MAX_ENTRIES`). A g
    with a support-drawn pair (``plan.lean``, MLP or image) is stored compact: its dense first
    layer was never drawn."""
    if store not in STORES:
        raise UserError(f"--store must be one of {STORES}, got {store!r}")
    lean = [pl for pl in plans if getattr(pl, "lean", False)]
    if lean:
        if store == "dense":
            pl = lean[0]
            raise UserError(f"--store dense cannot hold this g: target layer {pl.index + 1}'s first random layer "
                            f"would hold {pl.hidden * pl.p:,} entries (above --support-draw-above), so it is drawn "
                            "as its block support only; use --store auto or compact")
        return "compact"
    if image:
        if store == "compact":
            raise UserError("--store compact is for MLP targets; a target with conv/pooling layers is "
                            "stored dense unless a layer pair is too large to draw dense (--support-draw-above) "
                            "(use --store dense or auto)")
        return "dense"
    if store == "auto":
        return "dense" if dense_entries(plans) <= DENSE_MAX_ENTRIES else "compact"
    return store


# ----------------------------------------------------------------------------- the specification

def generator_spec(seed: int, distribution: str, plans) -> dict:
    """What regenerates g: the generator, seed, distribution and every layer's block plan (a
    support-drawn layer says so: ``"first_layer": "support"``, under :data:`GENERATOR_SUPPORT`)."""
    lean = any(getattr(pl, "lean", False) for pl in plans)
    return {"generator": GENERATOR_SUPPORT if lean else GENERATOR, "seed": int(seed), "distribution": distribution,
            "layers": [{"target_shape": [pl.q, pl.p], "block_width": int(pl.m), "has_bias": bool(pl.has_bias),
                        "growth_units": int(pl.grow),
                        "block_extensions": [int(v) for v in np.asarray(pl.extensions)],
                        **({"first_layer": "support"} if getattr(pl, "lean", False) else {})} for pl in plans]}


def support_tensors(pairs) -> dict:
    out = {}
    for i, pair in enumerate(pairs):
        out.update({f"pair{i}.u": pair.u, f"pair{i}.b1": pair.b1, f"pair{i}.w2": pair.w2, f"pair{i}.b2": pair.b2})
    return out


def mask_tensors(cmasks) -> dict:
    out = {}
    for i, mk in enumerate(cmasks):
        out.update({f"pair{i}.{r}": np.ascontiguousarray(mk[r], dtype=np.uint8) for r in ROLES})
    return out


def support_shapes(plans) -> dict:
    out = {}
    for i, pl in enumerate(plans):
        out.update({f"pair{i}.u": (pl.hidden,), f"pair{i}.b1": (pl.hidden,), f"pair{i}.w2": (pl.q, pl.hidden),
                    f"pair{i}.b2": (pl.q,)})
    return out


# ----------------------------------------------------------------------------- ĝ from the support

def _pair_arrays(pair, mk):
    """(cols, u, b1, w2 (float32, unmasked), mask w2, b2) of one pair with masks applied (float64 vectors)."""
    u = pair.u.astype(np.float64) * (np.asarray(mk["u"]) != 0)
    a = pair.b1.astype(np.float64) * (np.asarray(mk["b1"]) != 0)
    c = pair.b2.astype(np.float64) * (np.asarray(mk["b2"]) != 0)
    return u, a, c


def support_layer_maps(pairs, cmasks) -> list:
    """The exact layer maps of ĝ (as :func:`subsetsum_lth.certify.layer_maps` computes them from
    the dense files, bit for bit) from the support and the support-form masks.

    Column j of Ŵ⁺ is the sum, in unit order, of ``B[:, h]·u_h`` over the kept units h of block j
    with u_h > 0 (Ŵ⁻ likewise with u_h < 0): it is accumulated rank by rank — the k-th such unit
    of every block at once — so each column sees the same additions in the same order as
    ``np.add.at`` over the dense matrices, and only q × p float64 values of w2 are converted at
    a time."""
    maps = []
    for pair, mk in zip(pairs, cmasks):
        pl = pair.drawn_plan
        q, p = pl.q, pl.p
        u, a, c = _pair_arrays(pair, mk)
        cols = pair.columns
        nz = u != 0
        both = nz & (a != 0)
        if np.any(both):
            raise RunFolderError(f"layer pair {pl.index}: {int(both.sum())} hidden units keep an input edge "
                                 "and a bias; not the construction's form, no certificate applies")
        mw2 = np.asarray(mk["w2"])
        Wp = np.zeros((q, p))
        Wm = np.zeros((q, p))
        for units, W in ((np.flatnonzero(nz & (u > 0)), Wp), (np.flatnonzero(nz & (u < 0)), Wm)):
            if not units.size:
                continue
            cu = cols[units]                       # non-decreasing: a block's units are contiguous
            starts = np.r_[0, np.flatnonzero(np.diff(cu)) + 1]
            rank = np.arange(units.size) - np.repeat(starts, np.diff(np.r_[starts, units.size]))
            for k in range(int(rank.max()) + 1):
                h = units[rank == k]               # at most one unit per column
                W[:, cols[h]] += (pair.w2[:, h].astype(np.float64) * (mw2[:, h] != 0)) * u[h]
        const = np.flatnonzero(~nz & (a > 0))            # relu(bias) = bias for positive kept biases
        B = pair.w2[:, const].astype(np.float64) * (mw2[:, const] != 0)
        maps.append(LayerMap(Wp, Wm, c + B @ a[const]))
    return maps


class SupportNet(nn.Module):
    """ĝ itself, evaluated from the support: layer 2i-1 as a gather (unit h computes
    ``relu(u_h·m_h·x[block(h)] + b1_h·m'_h)``, exactly what the masked dense Linear computes, as
    it has one kept input edge), layer 2i as the masked w2 applied ``chunk`` units at a time in
    ``dtype``. Takes flat inputs (N, p) of an MLP g; memory is one chunk of w2, never H·p."""

    def __init__(self, pairs, cmasks, dtype=torch.float64, chunk: int = 8192, rows: int = 256):
        super().__init__()
        self.pairs, self.cmasks, self.dtype, self.chunk, self.rows = pairs, cmasks, dtype, chunk, rows
        self.first = []
        for pair, mk in zip(pairs, cmasks):
            u, a, c = _pair_arrays(pair, mk)
            cols = np.where(pair.columns >= 0, pair.columns, 0)
            self.first.append((torch.as_tensor(cols), torch.as_tensor(u, dtype=dtype), torch.as_tensor(a, dtype=dtype),
                               torch.as_tensor(c, dtype=dtype)))

    def to(self, *args, **kwargs):  # noqa: D102  (the dtype is fixed at construction)
        return self

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.reshape(x.shape[0], -1).to(self.dtype)
        n = len(self.pairs)
        for i, (pair, mk, (cols, u, a, c)) in enumerate(zip(self.pairs, self.cmasks, self.first)):
            z = torch.relu(h[:, cols] * u + a)
            out = torch.zeros(h.shape[0], pair.plan.q, dtype=self.dtype)
            H = pair.drawn_plan.hidden
            mw2 = np.asarray(mk["w2"])
            for s in range(0, H, self.chunk):
                sl = slice(s, min(H, s + self.chunk))
                B = torch.as_tensor(pair.w2[:, sl], dtype=self.dtype) * torch.as_tensor(mw2[:, sl] != 0)
                out += z[:, sl] @ B.T
            out = out + c
            h = torch.relu(out) if i < n - 1 else out
        return h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] <= self.rows:
            return self._forward(x)
        return torch.cat([self._forward(x[s:s + self.rows]) for s in range(0, x.shape[0], self.rows)])


class SupportFirst(nn.Module):
    """The first random layer of a support-drawn pair (``plan.lean``) in the place of its dense
    ``Linear(p, H)`` / ``Conv2d(c_in, H, k)``: hidden unit h computes ``weight[h]·x[col(h)] +
    bias[h]`` — for a conv, ``x[col(h)]`` is patch coordinate col(h) (channel, row, column of
    the kernel, ``F.unfold``'s order, the matrix view's column) at every position. This is what
    the dense layer computes when every entry off the support is zero (the construction's
    pre-pruning); bias-block units (no input edge) have weight 0. ``weight`` (H,) and ``bias``
    (H,) are parameters, so ``torch.nn.utils.prune`` masks them like any layer's;
    ``columns`` (H,) is a buffer. Holds H values, never H·p."""

    def __init__(self, op: dict, columns: np.ndarray, weight: np.ndarray, bias: np.ndarray,
                 dtype=torch.float32, pair_index: int = 0):
        super().__init__()
        self.op = dict(op)
        self.pair_index = int(pair_index)
        self.register_buffer("columns", torch.as_tensor(np.where(columns >= 0, columns, 0).astype(np.int64)))
        self.weight = nn.Parameter(torch.as_tensor(np.asarray(weight), dtype=dtype).clone())
        self.bias = nn.Parameter(torch.as_tensor(np.asarray(bias), dtype=dtype).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.op["op"] == "linear":
            return x[:, self.columns] * self.weight + self.bias
        k, s, p = (tuple(self.op.get(n, d)) for n, d in (("kernel", (1, 1)), ("stride", (1, 1)),
                                                          ("padding", (0, 0))))
        n, _, h, w = x.shape
        ho, wo = (h + 2 * p[0] - k[0]) // s[0] + 1, (w + 2 * p[1] - k[1]) // s[1] + 1
        patches = torch.nn.functional.unfold(x, k, padding=p, stride=s)          # (N, C·kh·kw, L)
        z = patches[:, self.columns, :] * self.weight[None, :, None] + self.bias[None, :, None]
        return z.reshape(n, -1, ho, wo)

    def baked(self) -> "SupportFirst":
        """A copy whose parameters are the current (masked) weight and bias, without hooks."""
        new = SupportFirst(self.op, np.zeros(0, np.int64), np.zeros(0), np.zeros(0), self.weight.dtype, self.pair_index)
        new.columns = self.columns.clone()
        new.weight = nn.Parameter(self.weight.detach().clone())
        new.bias = nn.Parameter(self.bias.detach().clone())
        return new


class RowChunks(nn.Module):
    """``module`` applied ``rows`` inputs at a time (the hidden activations of a wide conv pair
    are N·H·L values)."""

    def __init__(self, module: nn.Module, rows: int):
        super().__init__()
        self.module, self.rows = module, max(1, int(rows))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] <= self.rows:
            return self.module(x)
        return torch.cat([self.module(x[s:s + self.rows]) for s in range(0, x.shape[0], self.rows)])


def has_support_pairs(plans) -> bool:
    return any(getattr(pl, "lean", False) for pl in plans)


def support_module(pairs, plans, layout, cmasks=None, dtype=torch.float64, relu_after=None) -> nn.Sequential:
    """g (``cmasks`` None) or ĝ (masks baked in) as an nn.Sequential whose support-drawn pairs'
    first layers are :class:`SupportFirst` modules; every other layer is built dense as
    :meth:`GLayout.module` builds it (its w1 regenerated from the seed). Takes what the
    layout's dense module takes (N×C×H×W for an image g)."""
    first = {str(layout.param_indices()[2 * i]): i for i, pl in enumerate(plans) if getattr(pl, "lean", False)}

    def replace(path, op):
        i = first.get(path)
        if i is None:
            return None
        pair = pairs[i]
        u, b1 = pair.u, pair.b1
        if cmasks is not None:
            u = u * (np.asarray(cmasks[i]["u"]) != 0)
            b1 = b1 * (np.asarray(cmasks[i]["b1"]) != 0)
        return SupportFirst(op, pair.columns, u, b1, dtype, i)

    masks = None if cmasks is None else DenseMasks(plans, cmasks, layout)
    return module_from_ops(layout.ops(), DenseState(pairs, layout), masks, dtype, relu_after, replace)


def support_pruned_module(pairs, plans, layout, cmasks, dtype=torch.float64) -> nn.Module:
    """ĝ of a compact run with support-drawn pairs, on flat inputs (as :func:`pruned_module`),
    evaluated a few rows at a time (at most ~2e7 hidden activations of a pair per chunk)."""
    g = support_module(pairs, plans, layout, cmasks, dtype)
    widest = 1
    if layout.input_shape is not None:
        hw = int(np.prod(layout.input_shape[1:]))
        widest = max(pl.hidden * (hw if pl.kind is not None and pl.kind.name == "conv2d" else 1) for pl in plans)
    else:
        widest = max(pl.hidden for pl in plans)
    g = g if layout.input_shape is None else flat_input(g, layout.input_shape)
    return RowChunks(g, max(1, 20_000_000 // max(1, widest)))


def run_layer_maps(run) -> list:
    """The layer maps of a validated run (:class:`subsetsum_lth.runcheck.Run`): from the support
    for a compact run (never the dense g), from the dense files otherwise."""
    if getattr(run, "compact", None) is not None:
        return support_layer_maps(run.compact.pairs, run.compact.cmasks)
    return layer_maps(run.random_state, run.masks, run.layout)


def run_pruned_module(run, dtype=torch.float64) -> nn.Module:
    """ĝ of a validated run as a module on flat inputs: :class:`subsetsum_lth.gstore.SupportNet`
    for a compact run, the dense masked nn.Sequential otherwise; preceded by the run's input op
    (recorded preprocessing) when it has one, so it takes the inputs ``run.target.forward`` takes."""
    if getattr(run, "compact", None) is not None and run.layout.input_shape is not None:
        g = support_pruned_module(run.compact.pairs, run.plans, run.layout, run.compact.cmasks, dtype)
    elif getattr(run, "compact", None) is not None:
        g = SupportNet(run.compact.pairs, run.compact.cmasks, dtype)
    else:
        g = pruned_module(run.random_state, run.masks, run.layout, dtype)
    prep = getattr(run, "preprocessing", None)
    return g if prep is None else nn.Sequential(input_module(prep, run.input_dim), g)


# ----------------------------------------------------------------------------- dense views

class _LayoutView(Mapping):
    """A read-only mapping over a layout's keys ({w1, b1, w2, b2} of every pair, in stored
    shapes) whose tensors subclasses build when asked for."""

    def __init__(self, layout):
        self.layout = layout
        self._where = {key: (i, role) for i in range(layout.depth)
                       for role, key in zip(("w1", "b1", "w2", "b2"), layout.pair_keys(i))}
        self._shapes = layout.shapes()

    def __iter__(self):
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)

    def shape(self, key: str) -> tuple:
        return tuple(self._shapes[key])


class DenseState(_LayoutView):
    """The dense g (float32, stored shapes, the keys of the layout) as a read-only mapping whose
    tensors are generated when asked for: w1 of a pair is regenerated from the seed (one pair
    cached), everything else is the support itself."""

    def __init__(self, pairs, layout):
        super().__init__(layout)
        self.pairs = pairs
        self._cache = (None, None)

    def dtype(self, key: str):
        return np.dtype(np.float32)

    def __getitem__(self, key: str) -> np.ndarray:
        i, role = self._where[key]
        pair = self.pairs[i]
        if role == "w1":
            if self._cache[0] != i:
                self._cache = (None, None)      # free the cached pair before building the next
                self._cache = (i, pair.w1)
            arr = self._cache[1]
        else:
            arr = getattr(pair, role)
        return arr.reshape(self._shapes[key])


class DenseMasks(_LayoutView):
    """The dense uint8 masks (stored shapes, the layout's keys) of support-form masks, built per
    tensor when asked for."""

    def __init__(self, plans, cmasks, layout):
        super().__init__(layout)
        self.plans, self.cmasks = plans, cmasks

    def dtype(self, key: str):
        return np.dtype(np.uint8)

    def __getitem__(self, key: str) -> np.ndarray:
        i, role = self._where[key]
        mk = self.cmasks[i]
        if role == "w1":
            pl = self.plans[i]
            arr = np.zeros((pl.hidden, pl.p), dtype=np.uint8)
            cols = unit_columns(pl)
            rows = np.flatnonzero(cols >= 0)
            arr[rows, cols[rows]] = np.asarray(mk["u"])[rows]
        else:
            arr = np.ascontiguousarray(mk[role], dtype=np.uint8)
        return arr.reshape(self._shapes[key])


# ----------------------------------------------------------------------------- streaming safetensors

#: safetensors' dtype names and its sort rank (the Rust enum's order: larger first in the file)
_DTYPES = {np.dtype(np.float64): ("F64", 16), np.dtype(np.float32): ("F32", 15), np.dtype(np.int64): ("I64", 17),
           np.dtype(np.uint8): ("U8", 1)}


def save_safetensors_stream(path, tensors: Mapping, metadata: dict | None = None) -> None:
    """Write ``tensors`` as a safetensors file one tensor at a time (atomically, listed in the
    folder's manifest), byte-identical to :func:`subsetsum_lth.runfolder.atomic_save_safetensors`
    — the same header (tensors sorted by dtype then name, metadata first, padded to 8 bytes) —
    without ever holding the whole file in memory. ``tensors`` may be a lazy mapping with
    ``shape(key)``/``dtype(key)`` (e.g. :class:`DenseState`), else each value is read once for
    its shape."""
    def info(k):
        if hasattr(tensors, "shape") and hasattr(tensors, "dtype"):
            return tensors.dtype(k), tensors.shape(k)
        a = np.asarray(tensors[k])
        return a.dtype, a.shape
    infos = {k: info(k) for k in tensors}
    for k, (dt, _) in infos.items():
        if np.dtype(dt) not in _DTYPES:
            raise ValueError(f"{k}: dtype {dt} is not written by this writer")
    order = sorted(infos, key=lambda k: (-_DTYPES[np.dtype(infos[k][0])][1], k))
    header: dict = {}
    if metadata:
        header["__metadata__"] = {k: str(v) for k, v in sorted(metadata.items())}
    offset = 0
    for k in order:
        dt, shape = infos[k]
        n = int(np.prod(shape)) * np.dtype(dt).itemsize
        header[k] = {"dtype": _DTYPES[np.dtype(dt)][0], "shape": [int(s) for s in shape],
                     "data_offsets": [offset, offset + n]}
        offset += n
    hb = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    hb += b" " * ((8 - len(hb) % 8) % 8)

    def write(fh):
        fh.write(struct.pack("<Q", len(hb)))
        fh.write(hb)
        for k in order:
            dt, shape = infos[k]
            a = np.ascontiguousarray(np.asarray(tensors[k]), dtype=dt)
            if tuple(a.shape) != tuple(shape):
                raise ValueError(f"{k}: shape {a.shape} != {shape}")
            fh.write(memoryview(a.reshape(-1)).cast("B"))
            del a
    rf._atomic_write(Path(path), write, 8 + len(hb) + offset)


# ----------------------------------------------------------------------------- the compact files

def write_compact(out: Path, pairs, cmasks, meta: dict, spec: dict) -> None:
    tmeta = rf.tensor_metadata({**meta, "format": "run-compact", "generator": spec})
    save_safetensors_stream(Path(out) / RANDOM_NET_COMPACT, support_tensors(pairs), tmeta)
    save_safetensors_stream(Path(out) / MASKS_COMPACT, mask_tensors(cmasks), tmeta)


def write_dense(out: Path, pairs, plans, cmasks, layout, meta: dict) -> None:
    """random_net.safetensors and masks.safetensors, streamed one tensor at a time."""
    tmeta = rf.tensor_metadata(meta)
    save_safetensors_stream(Path(out) / rf.RANDOM_NET, DenseState(pairs, layout), tmeta)
    save_safetensors_stream(Path(out) / rf.MASKS, DenseMasks(plans, cmasks, layout), tmeta)


@dataclass
class CompactG:
    """A compact run's g: its validated support (RandomLayerPairs) and support-form masks."""

    pairs: list
    cmasks: list
    spec: dict


def _bits_equal(a: np.ndarray, b: np.ndarray) -> bool:
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and bool(np.array_equal(a.view(np.uint8), b.view(np.uint8)))


def read_compact(path: Path, plans, seed: int, distribution, domain: str, signed=None) -> CompactG:
    """Read and validate a compact run's two files against the plans recorded in report.json:
    keys, shapes and dtypes exactly those of the construction, the file's generator
    specification equal to the one report.json implies, every stored support value equal (bit
    for bit) to what the generator regenerates, masks uint8 0/1 keeping nothing the
    construction's pre-pruning removes."""
    path = Path(path)
    if distribution not in DISTRIBUTIONS:
        raise RunFolderError(f"{path / rf.REPORT}: 'distribution' must be one of {sorted(DISTRIBUTIONS)}, got "
                             f"{distribution!r}; {RECREATE}")
    spec = generator_spec(seed, distribution, plans)
    want = support_shapes(plans)
    loaded = {}
    for fname, dtype in ((RANDOM_NET_COMPACT, np.float32), (MASKS_COMPACT, np.uint8)):
        fpath = path / fname
        tensors = rf.load_tensors(fpath)
        fmeta = _file_metadata(fpath)
        if set(tensors) != set(want):
            extra, missing = sorted(set(tensors) - set(want))[:4], sorted(set(want) - set(tensors))[:4]
            raise RunFolderError(f"{fpath}: keys are not those of the construction recorded in report.json "
                                 f"(unexpected {extra}, missing {missing}); {RECREATE}")
        for k, shp in want.items():
            a = tensors[k]
            if tuple(a.shape) != tuple(shp) or a.dtype != dtype:
                raise RunFolderError(f"{fpath}: {k} is {a.dtype} {tuple(a.shape)}, the construction recorded in "
                                     f"report.json needs {np.dtype(dtype)} {tuple(shp)}; {RECREATE}")
        try:
            got = json.loads(fmeta.get("subsetsum_lth", "null"))
        except ValueError:
            got = None
        if not isinstance(got, dict) or got.get("generator") != spec or got.get("seed") != seed:
            raise RunFolderError(f"{fpath}: its generator specification (seed, distribution, block plan) is not "
                                 f"the one report.json records; {RECREATE}")
        loaded[fname] = tensors
    values, masks = loaded[RANDOM_NET_COMPACT], loaded[MASKS_COMPACT]
    pairs, cmasks = [], []
    for i, pl in enumerate(plans):
        pair = draw_layer_pair(pl, seed, distribution)
        for role in ROLES:
            if not _bits_equal(values[f"pair{i}.{role}"], getattr(pair, role)):
                raise RunFolderError(f"{path / RANDOM_NET_COMPACT}: pair{i}.{role} is not what the generator "
                                     f"specification regenerates (seed {seed}, {distribution}); the file was "
                                     f"changed: {RECREATE}")
        mk = {r: masks[f"pair{i}.{r}"] for r in ROLES}
        for r, a in mk.items():
            if a.size and int(a.max()) > 1:
                raise RunFolderError(f"{path / MASKS_COMPACT}: pair{i}.{r} holds values other than 0 and 1; {RECREATE}")
        _check_prepruning(pair, mk, (domain == "signed" and i == 0) if signed is None else bool(signed[i]),
                          path / MASKS_COMPACT, i)
        pairs.append(pair)
        cmasks.append(mk)
    return CompactG(pairs, cmasks, spec)


def _file_metadata(fpath: Path) -> dict:
    from safetensors import safe_open
    try:
        with safe_open(str(fpath), framework="np") as fh:
            return dict(fh.metadata() or {})
    except Exception as exc:
        raise RunFolderError(f"cannot read {fpath}: {exc}; {RECREATE}") from None


def _check_prepruning(pair, mk, signed: bool, where: Path, i: int) -> None:
    """The masks keep only what §1's pre-pruning leaves: own edges of live units (u > 0, or
    u ≠ 0 for signed inputs), positive biases of the bias block, w2 columns of live units, no b2."""
    pl = pair.drawn_plan
    cols = pair.columns
    live_edge = (cols >= 0) & ((pair.u != 0) if signed else (pair.u > 0))
    live_bias = (cols < 0) & (pair.b1 > 0)
    live = live_edge | live_bias
    bad = {"u": int(np.count_nonzero(mk["u"][~live_edge])), "b1": int(np.count_nonzero(mk["b1"][~live_bias])),
           "w2": int(np.count_nonzero(mk["w2"][:, ~live])), "b2": int(np.count_nonzero(mk["b2"]))}
    for r, n in bad.items():
        if n:
            raise RunFolderError(f"{where}: pair{i}.{r} keeps {n} entries outside the blocks the construction "
                                 f"allows (pre-pruned entries); {RECREATE}")
