"""Local differential certificates: per image, sound per-output intervals of f − f′ over the ℓ∞
ball of radius r around the image (intersected with the input box), for f and any network f′ of
the same architecture — the pruned network ĝ of a run (its exact layer maps), or f's own weights
rounded through float16 (:func:`copy_maps`) as in NeuroDiff's 16-bit experiments.

The pair is the op chain of :mod:`subsetsum_lth.box_net` (MLPs and CNNs alike). On a small ball
most ReLUs are stable, so the intermediate bounds are computed as (:func:`refined_bounds`):

1. interval bounds of every op's output from its input's (:meth:`BoxOp.interval`; exact on the
   first affine op, where f and f′ share the input);
2. for every affine op whose output enters a ReLU, differential CROWN (default slopes) on the units
   that the intervals leave unstable in f or in f′ — per image, its own units (a padded one-hot
   objective batch), chunked so no tensor holds more than :data:`ROW_ELEMENTS` coefficients —
   intersected with the intervals (both are sound, so is their intersection).

A stable unit's relaxations are exact whatever its bounds, so refining the unstable units only
loses nothing of CROWN's tightness at the outputs but its cost. The output intervals are α-CROWN
on ±(f − f′)_k (:func:`subsetsum_lth.box_net.optimise`), batched over images, widened by the
numeric slack.
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch

from subsetsum_lth.box_crown import DT, Bounds, box_arrays
from subsetsum_lth.box_net import backward, hidden_bounds, margin_objectives, op_chain, optimise
from subsetsum_lth.box_ops import BoxOp, ReluOp
from subsetsum_lth.certify import NUMERIC_SLACK, LayerMap
from subsetsum_lth.errors import UserError
from subsetsum_lth.progress import advance
from subsetsum_lth.target import Target

__all__ = ["METHODS", "ROW_ELEMENTS", "copy_maps", "network_maps", "ball_box", "refined_bounds", "robust_lower",
           "local_diff_intervals", "summarise"]

#: at most this many coefficients in one (B, rows, n) objective tensor of a refinement pass
ROW_ELEMENTS = 8_000_000
#: the intermediate bounds :func:`local_diff_intervals` can use
METHODS = ("refined", "interval", "crown")
#: absolute widening of every reported interval end (as the box certificate's)
ABS_SLACK = 1e-12


def network_maps(weights: list, biases: list) -> list[LayerMap]:
    """A network given by its layers' weights (each layer's matrix view, as ``Target.layers``) as
    the second network of a pair: w_plus = w_minus = W′ (it is one network, the same on x⁺ and x⁻)."""
    out = []
    for W, b in zip(weights, biases):
        W = np.asarray(W, dtype=np.float64)
        b = np.zeros(W.shape[0]) if b is None else np.asarray(b, dtype=np.float64)
        out.append(LayerMap(W, W, b))
    return out


def copy_maps(target: Target, dtype: torch.dtype = torch.float16) -> list[LayerMap]:
    """The target's weights and biases rounded through ``dtype`` (default float16, the 16-bit copy)
    and read back as float64: the second network of a (target, low-precision copy) pair."""
    def rnd(a):
        if a is None:
            return None
        return torch.as_tensor(np.asarray(a, dtype=np.float64)).to(dtype).to(torch.float64).numpy()
    if not all(np.all(np.isfinite(rnd(L.weight))) for L in target.layers):
        raise UserError(f"the target's weights overflow {dtype}: no copy of that precision exists")
    return network_maps([rnd(L.weight) for L in target.layers], [rnd(L.bias) for L in target.layers])


def ball_box(x: torch.Tensor, radius: float, lo: torch.Tensor, hi: torch.Tensor):
    """The ℓ∞ ball of radius r around each row of x (N, p), intersected with the box [lo, hi]."""
    return torch.maximum(x - radius, lo), torch.minimum(x + radius, hi)


def _unstable(b: Bounds, twin: bool) -> torch.Tensor:
    uns = (b.l < 0) & (b.u > 0)
    return uns if twin else uns | ((b.lf < 0) & (b.uf > 0))


#: the objectives of a refinement pass: (name, Λz sign, Λd sign) per bound kind; the lower bound
#: of +kind and of −kind give the kind's interval
_KINDS = {"g": (1.0, 0.0), "d": (0.0, 1.0), "f": (1.0, 1.0)}


def _crown_units(ops: list[BoxOp], bounds: list, k: int, uns: torch.Tensor, kinds: tuple, Xlo, Xhi) -> dict:
    """CROWN lower and upper bounds of op k's output kinds ('g': z′, 'd': d, 'f': z = z′ + d) on
    each image's units ``uns`` (B, n) — a padded one-hot objective batch per image, chunked so no
    tensor holds more than :data:`ROW_ELEMENTS` coefficients. Returns kind -> (lower, upper),
    each (B, n), ±inf off ``uns``."""
    B, n = uns.shape
    out = {kd: (torch.full((B, n), -math.inf, dtype=DT), torch.full((B, n), math.inf, dtype=DT)) for kd in kinds}
    counts = uns.sum(1)
    cmax = int(counts.max()) if B else 0
    if cmax == 0:
        return out
    order = torch.argsort((~uns).to(torch.int8), dim=1, stable=True)[:, :cmax]   # each image's units first
    valid = torch.arange(cmax)[None, :] < counts[:, None]
    rows = 2 * len(kinds)
    widest = max(max(op.n_in, op.n_out) for op in ops[:k + 1])
    step = max(1, min(cmax, ROW_ELEMENTS // (rows * B * widest)))
    inf = torch.tensor(math.inf, dtype=DT)
    for s in range(0, cmax, step):
        idx, ok = order[:, s:s + step], valid[:, s:s + step]
        c = idx.shape[1]
        I = torch.zeros(B, c, n, dtype=DT)
        I.scatter_(2, idx[..., None], ok[..., None].to(DT))
        lam_z = torch.cat([sg * _KINDS[kd][0] * I for kd in kinds for sg in (1.0, -1.0)], 1)
        lam_d = torch.cat([sg * _KINDS[kd][1] * I for kd in kinds for sg in (1.0, -1.0)], 1)
        v, _ = backward(ops, bounds, k, lam_z, lam_d, Xlo, Xhi, "plus")
        v = v.reshape(B, rows, c)
        for j, kd in enumerate(kinds):
            out[kd][0].scatter_(1, idx, torch.where(ok, v[:, 2 * j], -inf))
            out[kd][1].scatter_(1, idx, torch.where(ok, -v[:, 2 * j + 1], inf))
    return out


def _tighten(b: Bounds, new: dict) -> Bounds:
    """``b`` intersected with the bounds of ``new`` (kind -> (lower, upper)), z = z′ + d re-imposed."""
    l, u = b.l, b.u
    dl, du, lf, uf = b.dl, b.du, b.lf, b.uf
    if "g" in new:
        l, u = torch.maximum(l, new["g"][0]), torch.minimum(u, new["g"][1])
    if "d" in new:
        dl, du = torch.maximum(dl, new["d"][0]), torch.minimum(du, new["d"][1])
    if "f" in new:
        lf, uf = torch.maximum(lf, new["f"][0]), torch.minimum(uf, new["f"][1])
    lf, uf = torch.maximum(lf, l + dl), torch.minimum(uf, u + du)
    return Bounds(l, u, torch.maximum(dl, lf - u), torch.minimum(du, uf - l), lf, uf)


def _refine(ops: list[BoxOp], bounds: list, k: int, b: Bounds, Xlo, Xhi, twin: bool) -> Bounds:
    """Op k's interval bounds ``b`` intersected with CROWN bounds, in two passes: z′ on the units
    the intervals leave unstable in f or f′; then d and z on those still unstable (a unit stable
    in both networks has exact relaxations, whatever its d bounds)."""
    uns = _unstable(b, twin)
    if twin:
        nb = _tighten(b, _crown_units(ops, bounds, k, uns, ("g",), Xlo, Xhi))
        return Bounds(nb.l, nb.u, b.dl, b.du, nb.l, nb.u)
    b = _tighten(b, _crown_units(ops, bounds, k, uns, ("g",), Xlo, Xhi))
    return _tighten(b, _crown_units(ops, bounds, k, _unstable(b, False), ("d", "f"), Xlo, Xhi))


def refined_bounds(ops: list[BoxOp], Xlo, Xhi, twin: bool = False, refine: bool = True) -> list:
    """Bounds of every op's output but the last (see the module docstring) on the boxes
    [Xlo, Xhi] (B, p) of x >= 0. ``refine`` False: the interval bounds alone. ``twin``: f and f′
    are the same network (d ≡ 0)."""
    zero = torch.zeros_like(Xlo)
    X = Bounds(Xlo, Xhi, zero, zero, Xlo, Xhi)
    bounds: list = [None] * len(ops)
    for k, op in enumerate(ops[:-1]):
        b = op.interval(bounds[k - 1] if k else X)
        if refine and k > 0 and op.affine and isinstance(ops[k + 1], ReluOp):
            b = _refine(ops, bounds, k, b, Xlo, Xhi, twin)
        bounds[k] = b
    return bounds


def robust_lower(ops: list[BoxOp], Xlo, Xhi, cls: torch.Tensor) -> torch.Tensor:
    """Lower bounds (N, q−1) of out_c − out_k (c = ``cls``, k ≠ c) over the boxes [Xlo, Xhi] (N, p)
    of a twin chain (:func:`subsetsum_lth.box_net.twin_chain`): :func:`refined_bounds` for the
    hidden ops, CROWN from the margins back to the input."""
    bounds = refined_bounds(ops, Xlo, Xhi, twin=True)
    lam = margin_objectives(cls, ops[-1].n_out)
    val, _ = backward(ops, bounds, len(ops) - 1, lam, torch.zeros_like(lam), Xlo, Xhi, "plus")
    return val


def local_diff_intervals(target: Target, maps: list[LayerMap], x: np.ndarray, radius: float, lo=0.0, hi=1.0,
                         iters: int = 20, lr: float = 0.1, batch: int = 8, method: str = "refined",
                         bar=None) -> dict:
    """Per image, sound intervals [lower_k, upper_k] (N, q) of (f − f′)_k over the ℓ∞ ball of
    radius ``radius`` around each row of ``x`` (N, p; pixels/255 for images) within the box
    [lo, hi] (lo >= 0). f is ``target``, f′ the network of ``maps`` (a run's pruned maps,
    :func:`copy_maps`, :func:`network_maps`). ``method``: the intermediate bounds — "refined"
    (:func:`refined_bounds`), "interval" (intervals alone) or "crown" (differential CROWN on every
    unit, :func:`subsetsum_lth.box_net.hidden_bounds`: the box certificate's, per ball). Returns
    ``lower``, ``upper``, ``seconds`` (wall, all images), ``cpu_seconds`` (this process) and
    ``alpha_iterations``."""
    if method not in METHODS:
        raise UserError(f"unknown local bound method {method!r}; use one of {', '.join(METHODS)}")
    if not (math.isfinite(radius) and radius >= 0):
        raise UserError(f"the l-inf radius must be a non-negative number, got {radius}")
    if target.preprocessing is not None:
        raise UserError("local certificates are implemented for targets on pixels/255 (no input op); "
                        "use a target without --input-normalize")
    if target.graph is not None:
        raise UserError("local certificates (box_local) are implemented for chains (MLPs, CNNs), not for "
                        "residual targets yet; for those use box_agreement.local_agreement or the box "
                        "certificate (certify_box.box_certificate), which walk the skip connections")
    p = target.input_dim
    lo_a, hi_a = box_arrays(lo, hi, p)
    if np.any(lo_a < 0):
        raise UserError("local certificates need a non-negative box (LO >= 0), e.g. 0,1")
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    if x.shape[1] != p:
        raise UserError(f"the images have {x.shape[1]} values each, the target takes {p}")
    ops = op_chain(target, maps, "plus")
    lo_t, hi_t = torch.as_tensor(lo_a, dtype=DT), torch.as_tensor(hi_a, dtype=DT)
    q = ops[-1].n_out
    t0, c0 = time.perf_counter(), time.process_time()
    lower, upper, done = [], [], 0
    for i in range(0, len(x), batch):
        x0 = torch.minimum(torch.maximum(torch.as_tensor(x[i:i + batch], dtype=DT), lo_t), hi_t)
        Xlo, Xhi = ball_box(x0, radius, lo_t, hi_t)
        with torch.no_grad():
            bounds = (hidden_bounds(ops, Xlo, Xhi, "plus") if method == "crown"
                      else refined_bounds(ops, Xlo, Xhi, refine=method == "refined"))
        I = torch.eye(q, dtype=DT).expand(len(x0), q, q)
        lam_d = torch.cat([I, -I], 1)
        val, _, done = optimise(ops, bounds, torch.zeros_like(lam_d), lam_d, Xlo, Xhi, "plus", iters, lr, None)
        lower.append(val[:, :q])
        upper.append(-val[:, q:])
        advance(bar)
    lower = torch.cat(lower).numpy() if lower else np.zeros((0, q))
    upper = torch.cat(upper).numpy() if upper else np.zeros((0, q))
    lower = lower - (np.abs(lower) * NUMERIC_SLACK + ABS_SLACK)
    upper = upper + (np.abs(upper) * NUMERIC_SLACK + ABS_SLACK)
    return {"lower": lower, "upper": upper, "seconds": time.perf_counter() - t0,
            "cpu_seconds": time.process_time() - c0, "alpha_iterations": done,
            "radius": float(radius), "images": int(len(x)), "method": method}


def summarise(lower: np.ndarray, upper: np.ndarray) -> dict:
    """Per-output figures over images: of max(|lower_k|, |upper_k|) (the ± bound on |f − f′|_k)
    and of the half-width (upper_k − lower_k) / 2, the mean over images of the max and of the mean
    over the q outputs, and the largest over all."""
    mag = np.maximum(np.abs(lower), np.abs(upper))
    half = (upper - lower) / 2
    return {"abs_bound_max": float(mag.max(1).mean()), "abs_bound_mean": float(mag.mean(1).mean()),
            "abs_bound_worst": float(mag.max()), "half_width_max": float(half.max(1).mean()),
            "half_width_mean": float(half.mean(1).mean())}
