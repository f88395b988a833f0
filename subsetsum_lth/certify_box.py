"""A box-domain differential certificate: sup over lo <= x <= hi of ‖f(x) − ĝ(x)‖₂.

Because every pruned block collapses exactly (:func:`subsetsum_lth.certify.layer_maps`), ĝ has the
target's architecture with weights W̃ = W − E, so f − ĝ is bounded by *differential* verification
of two networks of the same shape (as in ReluDiff / NeuroDiff): per layer i the bounds track g's
pre-activation z'_i and the difference d_i = z_i − z'_i (z_i: f's pre-activation) jointly,

    z'_{i+1} = W̃_{i+1} a'_i + b̃_{i+1},          a'_i = σ(z'_i)
    d_{i+1}  = W_{i+1} D_i + E_{i+1} a'_i + e_{i+1},   D_i = σ(z'_i + d_i) − σ(z'_i)

so the small difference d is never the difference of two large bounds. The relaxations:

* a' = σ(z'): the usual triangle — upper chord s(z' − l), lower α z' (α ∈ [0, 1] optimised);
* D = σ(z) − σ(z'), a convex combination (weight θ ∈ [0, 1], optimised) of two valid planes:
  "separate" (upper U_f(z) − L_g(z'), lower L_f(z) − U_g(z'), exact when both units are stable)
  and "clip" (D lies between min(d, 0) and max(d, 0) since σ is monotone and 1-Lipschitz:
  upper the chord of max(d, 0), lower the chord of min(d, 0) over [d_l, d_u]).

Bounds are CROWN-style backward linear bounds (α-CROWN: slopes α and weights θ per objective,
optimised by projected Adam; every iterate is a sound bound, the best one per objective is kept).
Intermediate layers get CROWN bounds with the default slopes; the first layer's are exact
intervals. ĝ's first layer on signed inputs is linear in (x⁺, x⁻); every linear bound is minimised
over x exactly, coordinate by coordinate at x_j ∈ {lo_j, 0, hi_j} (:func:`_concretize`).

The ℓ2 bound is the smaller of two sound bounds: sqrt(Σ_k max(|lo_k|, |hi_k|)²) over the
per-output intervals (as if every output reached its extreme at the same x: up to √q too large),
and a zonotope bound (:func:`zonotope_l2`): f − ĝ = c + G s over s ∈ [−1, 1]^N, one generator per
input coordinate and two per hidden unit (parallel-plane relaxations of σ(z') and of D on the
bounds above), and max ‖c + G s‖₂ ≤ sqrt(λ_max(G D⁻¹ Gᵀ) · tr D) for any positive diagonal D
(:func:`psd_l2_bound`, the dual of the semidefinite relaxation), which keeps the correlation of the
outputs through the shared generators. With the "|·|" forms (σ(z') = z'/2 + |z'|/2 and
D = d/2 ± |d|/2, the residuals bounded by zonotopes of the earlier symbols rather than by their
largest values, :func:`refined_l2_bound`) the slack of the hidden units is no longer taken as free
of x. On the MNIST 784-500-10 ticket at τ = 0.01 (box attack 0.123): ℓ2 of the intervals 1.074,
plain zonotope 0.588, refined 0.361.

Everything is float64 on the CPU, batched; the bound is widened by :data:`NUMERIC_SLACK`.
MLPs only (``Target.layers`` are Linear layers with ReLU between them).
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from subsetsum_lth.certify import NUMERIC_SLACK, CollapsedNet, LayerMap
from subsetsum_lth import limits
from subsetsum_lth.errors import RunFolderError, UserError
from subsetsum_lth.progress import advance, note, phase
from subsetsum_lth.target import Target

log = logging.getLogger(__name__)

DT = torch.float64
#: absolute widening of every reported interval end (float64 rounding of sums of ~1e4 terms)
ABS_SLACK = 1e-12
METHOD = ("differential alpha-CROWN (joint bounds on z' and d = z - z'), per-output intervals; l2: the smaller of "
          "the l2 of their maxima and a zonotope of f - g (|.| forms of the hidden units' residuals) with "
          "semidefinite-dual norm bounds")


# ----------------------------------------------------------------------------- the pair of networks

@dataclass
class DiffNet:
    """f (weights ``wf``, ``bf``) and ĝ (``wg``, ``bg``) with the same shapes. Layer 0 acts on
    the network input X: x itself (``split`` 'plus': lo >= 0; 'minus': hi <= 0) or the pair
    (x⁺, x⁻) ('both'). Hidden inputs are post-ReLU (non-negative), so ĝ's later layers are W̃⁺."""

    wf: list[torch.Tensor]
    bf: list[torch.Tensor]
    wg: list[torch.Tensor]
    bg: list[torch.Tensor]
    split: str

    @property
    def depth(self) -> int:
        return len(self.wf)

    def input_box(self, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The box of X for a batch of boxes of x (B, p)."""
        if self.split == "plus":
            return lo, hi
        if self.split == "minus":
            return lo, hi
        return (torch.cat([lo.clamp_min(0), lo.clamp_max(0)], -1),
                torch.cat([hi.clamp_min(0), hi.clamp_max(0)], -1))


def _split_of(lo: np.ndarray, hi: np.ndarray) -> str:
    if np.all(lo >= 0):
        return "plus"
    if np.all(hi <= 0):
        return "minus"
    return "both"


def diff_net(target: Target, maps: list[LayerMap], split: str = "plus") -> DiffNet:
    """The pair (f, ĝ) of :class:`DiffNet` from the target's layers and ĝ's exact layer maps."""
    if len(maps) != target.depth:
        raise RunFolderError(f"the run has {len(maps)} layer pairs but the target has {target.depth} layers")
    wf, bf, wg, bg = [], [], [], []
    for i, (L, M) in enumerate(zip(target.layers, maps)):
        W = np.asarray(L.weight, dtype=np.float64)
        if M.w_plus.shape != W.shape:
            raise RunFolderError(f"layer {i}: pruned map has shape {M.w_plus.shape}, target {W.shape}")
        b = np.zeros(W.shape[0]) if L.bias is None else np.asarray(L.bias, dtype=np.float64)
        if i == 0 and split == "both":
            Wf, Wg = np.hstack([W, W]), np.hstack([M.w_plus, M.w_minus])
        elif i == 0 and split == "minus":
            Wf, Wg = W, M.w_minus
        else:
            Wf, Wg = W, M.w_plus
        wf.append(torch.as_tensor(Wf, dtype=DT))
        wg.append(torch.as_tensor(np.asarray(Wg, dtype=np.float64), dtype=DT))
        bf.append(torch.as_tensor(b, dtype=DT))
        bg.append(torch.as_tensor(np.asarray(M.bias, dtype=np.float64), dtype=DT))
    return DiffNet(wf, bf, wg, bg, split)


def twin_net(weights: list[np.ndarray], biases: list[np.ndarray | None]) -> DiffNet:
    """One network paired with itself (d ≡ 0): the joint bounds reduce to plain CROWN on it."""
    ws = [torch.as_tensor(np.asarray(w, dtype=np.float64), dtype=DT) for w in weights]
    bs = [torch.zeros(w.shape[0], dtype=DT) if b is None else torch.as_tensor(np.asarray(b, dtype=np.float64), dtype=DT)
          for w, b in zip(ws, biases)]
    return DiffNet(ws, bs, ws, bs, "plus")


# ----------------------------------------------------------------------------- relaxations

@dataclass
class Bounds:
    """Bounds of one hidden layer's pre-activations, each (B, n): g's z', the difference d, f's z."""

    l: torch.Tensor
    u: torch.Tensor
    dl: torch.Tensor
    du: torch.Tensor
    lf: torch.Tensor
    uf: torch.Tensor

    def map(self, fn) -> "Bounds":
        """The same six bounds with ``fn`` applied to each (a view, a copy, a batch index)."""
        return Bounds(*(fn(t) for t in (self.l, self.u, self.dl, self.du, self.lf, self.uf)))


def _relu(l, u, alpha):
    """σ on [l, u]: lower slope (α for unstable units), upper slope s and bias (chord)."""
    act, ina = l >= 0, u <= 0
    uns = ~act & ~ina
    width = (u - l).clamp_min(1e-300)
    s = torch.where(uns, u / width, act.to(DT))
    sb = torch.where(uns, -s * l, torch.zeros_like(l))
    ls = torch.where(uns, alpha, act.to(DT))
    return ls, s, sb


def _default_alpha(l, u):
    return (u >= -l).to(DT)


def _clip_planes(dl, du):
    """Planes of min(d, 0) (lower) and max(d, 0) (upper) over [dl, du], in d only:
    (lower slope, lower bias, upper slope, upper bias)."""
    pos, neg = dl >= 0, du <= 0
    uns = ~pos & ~neg
    width = (du - dl).clamp_min(1e-300)
    us = torch.where(uns, du / width, pos.to(DT))
    ub = torch.where(uns, -us * dl, torch.zeros_like(dl))
    ls = torch.where(uns, -dl / width, neg.to(DT))
    lb = torch.where(uns, dl - ls * dl, torch.zeros_like(dl))
    return ls, lb, us, ub


def _d_planes(b: Bounds, af, ag, th_u, th_l):
    """Lower and upper planes of D = σ(z' + d) − σ(z') in (z', d): each (slope z', slope d, bias)."""
    lfs, ufs, ufb = _relu(b.lf, b.uf, af)
    lgs, ugs, ugb = _relu(b.l, b.u, ag)
    cls_, clb, cus, cub = _clip_planes(b.dl, b.du)
    # separate: U_f(z) − L_g(z') and L_f(z) − U_g(z'), with z = z' + d
    up = (th_u * (ufs - lgs), th_u * ufs + (1 - th_u) * cus, th_u * ufb + (1 - th_u) * cub)
    lo = (th_l * (lfs - ugs), th_l * lfs + (1 - th_l) * cls_, -th_l * ugb + (1 - th_l) * clb)
    return lo, up


def _plane_range(p, b: Bounds):
    z, d, c = p
    return (c + torch.minimum(z * b.l, z * b.u) + torch.minimum(d * b.dl, d * b.du),
            c + torch.maximum(z * b.l, z * b.u) + torch.maximum(d * b.dl, d * b.du))


def _default_theta(b: Bounds):
    """θ = 1 (separate planes) where their range over the box is tighter than the clip planes'."""
    one, zero = torch.ones_like(b.l), torch.zeros_like(b.l)
    af, ag = _default_alpha(b.lf, b.uf), _default_alpha(b.l, b.u)
    lo_s, up_s = _d_planes(b, af, ag, one, one)
    lo_c, up_c = _d_planes(b, af, ag, zero, zero)
    th_u = (_plane_range(up_s, b)[1] <= _plane_range(up_c, b)[1]).to(DT)
    th_l = (_plane_range(lo_s, b)[0] >= _plane_range(lo_c, b)[0]).to(DT)
    return th_u, th_l


# ----------------------------------------------------------------------------- backward bounds

def _backward(net: DiffNet, bounds: list[Bounds], k: int, lam_z, lam_d, Xlo, Xhi, params=None, record=None,
              splits=(), beta=None):
    """Lower bound of Λz·z'_k + Λd·d_k over the box (layer k's pre-activations; Λ: (B, m, n_k)).
    ``params[i]``: None or a dict of per-objective α (``a``, ``f``, ``g``) and θ (``u``, ``l``),
    each (B, m, n_i), for hidden layer i. Returns (lower bound (B, m), coefficients on X)."""
    const = torch.zeros(lam_z.shape[:2], dtype=DT)
    for i in range(k, 0, -1):
        E = net.wf[i] - net.wg[i]
        e = net.bf[i] - net.bg[i]
        const = const + lam_z @ net.bg[i] + lam_d @ e
        Ca = lam_z @ net.wg[i] + lam_d @ E
        CD = lam_d @ net.wf[i]
        b = bounds[i - 1]
        bb = b.map(lambda t: t[:, None, :])
        p = (params or [None] * k)[i - 1]
        if p is None:
            ag = _default_alpha(bb.l, bb.u)
            af = _default_alpha(bb.lf, bb.uf)
            th_u, th_l = _default_theta(bb)
            aa = ag
        else:
            aa, af, ag, th_u, th_l = p["a"], p["f"], p["g"], p["u"], p["l"]
        ls, us, ub = _relu(bb.l, bb.u, aa)
        pos = Ca >= 0
        new_z = Ca * torch.where(pos, ls, us)
        const = const + (Ca * torch.where(pos, torch.zeros_like(ub), ub)).sum(-1)
        dlo, dup = _d_planes(bb, af, ag, th_u, th_l)
        posD = CD >= 0
        pz = torch.where(posD, dlo[0], dup[0])
        pd = torch.where(posD, dlo[1], dup[1])
        pc = torch.where(posD, dlo[2], dup[2])
        if record is not None:      # branching scores: |coefficient| × relaxation gap, per unit
            gap_a = torch.where((bb.l < 0) & (bb.u > 0), -bb.l * bb.u / (bb.u - bb.l).clamp_min(1e-300), 0 * bb.l)
            gap_d = (dup[2] - dlo[2]).abs() + (dup[0] - dlo[0]).abs() * (bb.u - bb.l) + (dup[1] - dlo[1]).abs() * (bb.du - bb.dl)
            record[i - 1] = (Ca.abs() * gap_a + CD.abs() * gap_d).detach()
        lam_z = new_z + CD * pz
        lam_d = CD * pd
        const = const + (CD * pc).sum(-1)
    E0 = net.wf[0] - net.wg[0]
    const = const + lam_z @ net.bg[0] + lam_d @ (net.bf[0] - net.bg[0])
    cX = lam_z @ net.wg[0] + lam_d @ E0
    if splits and beta is not None:
        cX, const = _beta_term(net, cX, const, splits, beta)
    return const + _concretize(cX, Xlo, Xhi, net.split), cX


def _beta_term(net: DiffNet, cX, const, splits, beta):
    """β-CROWN for first-layer splits s·pre_j >= 0 (pre_j = W[j]·X + b[j], linear in X): on the
    sub-domain obj >= obj − β s pre_j for β >= 0, so the box minimum of the latter bounds it."""
    for t, (j, sg, of_g) in enumerate(splits):
        W, b = (net.wg[0], net.bg[0]) if of_g else (net.wf[0], net.bf[0])
        bt = beta[..., t]
        cX = cX - (sg * bt)[..., None] * W[j]
        const = const - sg * bt * b[j]
    return cX, const


def _concretize(cX, Xlo, Xhi, split: str):
    """min over the input set of cX·X, (B, m). For split 'both' X = (x⁺, x⁻) of x in [lo, hi]:
    coordinate j contributes c⁺_j σ(x_j) + c⁻_j min(x_j, 0), piecewise linear in x_j with its
    kink at 0, so its minimum is at x_j ∈ {lo_j, 0, hi_j} — exact, not the product box."""
    if split != "both":
        return (cX.clamp_min(0) * Xlo[:, None, :]).sum(-1) + (cX.clamp_max(0) * Xhi[:, None, :]).sum(-1)
    p = cX.shape[-1] // 2
    cp, cm = cX[..., :p], cX[..., p:]
    lo = Xlo[:, None, :p] + Xlo[:, None, p:]          # x⁺ + x⁻ of the box's ends = lo, hi
    hi = Xhi[:, None, :p] + Xhi[:, None, p:]
    at_lo = cp * lo.clamp_min(0) + cm * lo.clamp_max(0)
    at_hi = cp * hi.clamp_min(0) + cm * hi.clamp_max(0)
    zero = torch.where((lo < 0) & (hi > 0), torch.zeros_like(at_lo), at_lo)
    return torch.minimum(torch.minimum(at_lo, at_hi), zero).sum(-1)


def _argmin_corner(cX, Xlo, Xhi, split: str, p: int):
    """The x (m, p) attaining :func:`_concretize`'s minimum for each row of cX (B = 1)."""
    if split != "both":
        return torch.where(cX[0] > 0, Xlo[0], Xhi[0])
    cp, cm = cX[0, :, :p], cX[0, :, p:]
    lo, hi = Xlo[0, :p] + Xlo[0, p:], Xhi[0, :p] + Xhi[0, p:]
    at_lo = cp * lo.clamp_min(0) + cm * lo.clamp_max(0)
    at_hi = cp * hi.clamp_min(0) + cm * hi.clamp_max(0)
    x = torch.where(at_lo <= at_hi, lo.expand_as(at_lo), hi.expand_as(at_hi))
    best = torch.minimum(at_lo, at_hi)
    inside = (lo < 0) & (hi > 0)
    return torch.where(inside & (best > 0), torch.zeros_like(x), x)


def _first_layer_bounds(net: DiffNet, Xlo, Xhi) -> Bounds:
    """Exact intervals of the first layer: z' = W̃₀X + b̃₀, d = E₀X + e₀, z = W₀X + b₀."""
    if net.split == "both":
        def iv(W, b):
            Wb = W[None].expand(Xlo.shape[0], -1, -1)
            return _concretize(Wb, Xlo, Xhi, "both") + b, -_concretize(-Wb, Xlo, Xhi, "both") + b
    else:
        mid, rad = (Xlo + Xhi) / 2, (Xhi - Xlo) / 2

        def iv(W, b):
            c = mid @ W.T + b
            r = rad @ W.abs().T
            return c - r, c + r
    l, u = iv(net.wg[0], net.bg[0])
    dl, du = iv(net.wf[0] - net.wg[0], net.bf[0] - net.bg[0])
    lf, uf = iv(net.wf[0], net.bf[0])
    return Bounds(l, u, dl, du, lf, uf)


def _hidden_bounds(net: DiffNet, Xlo, Xhi, twin: bool = False, given: list[Bounds] | None = None,
                   keep: int = 1) -> list[Bounds]:
    """Bounds of every hidden layer's pre-activations: exact for layer 0, CROWN (default slopes)
    for the later ones; z is also intersected with z' + d. With ``given`` (bounds valid on the
    domain, e.g. a branch's), its first ``keep`` layers are kept and the later ones recomputed
    and intersected with it."""
    bounds = [_first_layer_bounds(net, Xlo, Xhi)] if given is None else list(given[:1])
    B = Xlo.shape[0]
    for k in range(1, net.depth - 1):
        if given is not None and k < keep:
            bounds.append(given[k])
            continue
        n = net.wf[k].shape[0]
        I = torch.eye(n, dtype=DT).expand(B, n, n)
        Z = torch.zeros_like(I)
        if twin:
            lz, _ = _backward(net, bounds, k, torch.cat([I, -I], 1), torch.cat([Z, Z], 1), Xlo, Xhi)
            l, u = lz[:, :n], -lz[:, n:]
            zero = torch.zeros_like(l)
            bounds.append(Bounds(l, u, zero, zero, l, u))
            continue
        lam_z = torch.cat([I, -I, Z, Z, I, -I], 1)
        lam_d = torch.cat([Z, Z, I, -I, I, -I], 1)
        v, _ = _backward(net, bounds, k, lam_z, lam_d, Xlo, Xhi)
        l, u, dl, du, lf, uf = (v[:, j * n:(j + 1) * n] for j in range(6))
        u, du, uf = -u, -du, -uf
        lf = torch.maximum(lf, l + dl)
        uf = torch.minimum(uf, u + du)
        if given is not None:
            g = given[k]
            l, dl, lf = torch.maximum(l, g.l), torch.maximum(dl, g.dl), torch.maximum(lf, g.lf)
            u, du, uf = torch.minimum(u, g.u), torch.minimum(du, g.du), torch.minimum(uf, g.uf)
        bounds.append(Bounds(l, u, dl, du, lf, uf))
    return bounds


def _optimise(net, bounds, k, lam_z, lam_d, Xlo, Xhi, iters: int, lr: float, deadline: float | None,
              splits=()):
    """α-CROWN: Adam on the slopes/weights of every hidden layer, projected to [0, 1]; returns the
    best (largest) lower bound per objective over all iterates and its X coefficients."""
    with torch.no_grad():
        best, best_cX = _backward(net, bounds, k, lam_z, lam_d, Xlo, Xhi)
    if iters <= 0 or k == 0:      # nothing to optimise without a hidden layer
        return best, best_cX, 0
    m = lam_z.shape[1]
    params, leaves = [], []
    for b in bounds:
        bb = b.map(lambda t: t[:, None, :].expand(-1, m, -1))
        th_u, th_l = _default_theta(bb)
        p = {"a": _default_alpha(bb.l, bb.u), "f": _default_alpha(bb.lf, bb.uf),
             "g": _default_alpha(bb.l, bb.u), "u": th_u, "l": th_l}
        p = {key: v.clone().requires_grad_(True) for key, v in p.items()}
        params.append(p)
        leaves += list(p.values())
    beta = torch.zeros(lam_z.shape[:2] + (len(splits),), dtype=DT, requires_grad=True) if splits else None
    opt = torch.optim.Adam(leaves + ([beta] if splits else []), lr=lr)
    done = 0
    for it in range(iters):
        if deadline is not None and time.perf_counter() > deadline:
            break
        val, cX = _backward(net, bounds, k, lam_z, lam_d, Xlo, Xhi, params, splits=splits, beta=beta)
        with torch.no_grad():
            better = val > best
            best = torch.where(better, val, best)
            best_cX = torch.where(better[..., None], cX, best_cX)
        opt.zero_grad()
        (-val.sum()).backward()
        opt.step()
        with torch.no_grad():
            for v in leaves:
                v.clamp_(0.0, 1.0)
            if beta is not None:
                beta.clamp_(min=0.0)
        done = it + 1
    return best.detach(), best_cX.detach(), done


def _split(b: Bounds, j: int, active: bool, of_g: bool = True) -> Bounds:
    """The bounds of a sub-domain where g's unit j (``of_g``; else f's) is active (pre-activation
    >= 0) or inactive (<= 0); the other network's pre-activation (z = z' + d) is tightened with it."""
    nb = b.map(torch.clone)
    if of_g and active:
        nb.l[..., j] = 0.0
        nb.lf[..., j] = torch.maximum(nb.lf[..., j], nb.dl[..., j])
    elif of_g:
        nb.u[..., j] = 0.0
        nb.uf[..., j] = torch.minimum(nb.uf[..., j], nb.du[..., j])
    elif active:
        nb.lf[..., j] = 0.0
        nb.l[..., j] = torch.maximum(nb.l[..., j], -nb.du[..., j])
    else:
        nb.uf[..., j] = 0.0
        nb.u[..., j] = torch.minimum(nb.u[..., j], -nb.dl[..., j])
    return nb


def branch_and_bound(net: DiffNet, bounds: list[Bounds], k: int, lam_z, lam_d, Xlo, Xhi, start,
                     seconds: float, max_domains: int = 256, child_iters: int = 20):
    """Refine the lower bound of each objective row (B = 1) by splitting unstable units on the
    sign of their pre-activation (largest |coefficient| × gap first). Each sub-domain's bound is a bound over
    the whole box of a linear function valid on the sub-domain, so min over the leaves is a sound
    lower bound over the box; a row's result is max(start, that min). g's units are split first,
    then f's (sign of z); later layers' bounds are recomputed on the sub-domain and intersected
    with the parent's."""
    import heapq
    m = lam_z.shape[1]
    out = start.clone()
    deadline = time.perf_counter() + seconds
    for r in range(m):
        if time.perf_counter() > deadline:
            break
        lz, ld = lam_z[:, r:r + 1], lam_d[:, r:r + 1]
        rec = [None] * len(bounds)
        v, _ = _backward(net, bounds, k, lz, ld, Xlo, Xhi, record=rec)
        heap = [(float(v), 0, bounds, rec, ())]
        tie = 1
        row_deadline = time.perf_counter() + (deadline - time.perf_counter()) / (m - r)
        while heap and len(heap) < max_domains and time.perf_counter() < row_deadline:
            val, _, bds, rc, spl = heapq.heappop(heap)
            best = None
            for i, sc in enumerate(rc[:k]):
                if sc is None:
                    continue
                b = bds[i]
                g_uns = (b.l < 0) & (b.u > 0)
                sc = torch.where(g_uns | ((b.lf < 0) & (b.uf > 0)), sc[:, 0], torch.zeros_like(b.l))
                j = int(torch.argmax(sc))
                if float(sc[0, j]) > 0 and (best is None or float(sc[0, j]) > best[0]):
                    best = (float(sc[0, j]), i, j, bool(g_uns[0, j]))
            if best is None:             # nothing left to split: the domain's bound is final
                heapq.heappush(heap, (val, tie, bds, [None] * len(bds), spl))
                tie += 1
                break
            _, i, j, of_g = best
            for active in (True, False):
                nb = list(bds)
                nb[i] = _split(bds[i], j, active, of_g)
                if i + 1 < len(nb):          # later layers' bounds on the sub-domain, intersected
                    nb = _hidden_bounds(net, Xlo, Xhi, given=nb, keep=i + 1)
                spl2 = spl + ((j, 1.0 if active else -1.0, of_g),) if i == 0 else spl
                rc2 = [None] * len(bounds)
                v2, _ = _backward(net, nb, k, lz, ld, Xlo, Xhi, record=rc2)
                if child_iters:              # α/β-CROWN steps on the sub-domain too
                    with torch.enable_grad():
                        v3, _, _ = _optimise(net, nb, k, lz, ld, Xlo, Xhi, child_iters, 0.1, None, splits=spl2)
                    v2 = torch.maximum(v2, v3)
                heapq.heappush(heap, (max(float(v2), val), tie, nb, rc2, spl2))
                tie += 1
        if heap:
            out[:, r] = torch.maximum(out[:, r], torch.as_tensor(min(h[0] for h in heap), dtype=DT))
    return out


# ----------------------------------------------------------------------------- the ℓ2 bound of a zonotope

def psd_l2_bound(G: torch.Tensor, iters: int = 200, Y: torch.Tensor | None = None):
    """An upper bound on max over s ∈ [−1, 1]^N of ‖G s‖₂ (G: (q, N)), the weights d used (of the
    non-zero columns) and the last Y (a warm start for another call).

    For every d > 0:  ‖G s‖² = ‖G D^{-1/2} · D^{1/2} s‖² ≤ λ_max(G D⁻¹ Gᵀ) · Σ_j d_j s_j²
    ≤ λ_max(G D⁻¹ Gᵀ) · Σ_j d_j,  D = diag(d).  Minimising over d is the dual of the semidefinite
    relaxation of max sᵀGᵀGs (within √(π/2) of the true maximum, Nesterov 1998); d_j = √(g_jᵀ Y g_j)
    with Y ⪰ 0 on the unit-trace spectraplex is optimal for the optimal Y, found here by a
    matrix-exponentiated ascent on Σ_j √(g_jᵀ Y g_j). Every iterate's d gives a valid bound; the
    smallest is returned. Unlike the ℓ2 of per-coordinate maxima (up to √q too large when the q
    coordinates are not large at the same s), it keeps the correlation between coordinates."""
    G = G[:, G.abs().sum(0) > 0]
    q, n = G.shape
    if Y is None:
        Y = torch.eye(q, dtype=G.dtype) / q
    if n == 0:
        return 0.0, torch.zeros(0, dtype=G.dtype), Y
    best, best_d = math.inf, None
    for _ in range(max(1, iters)):
        d = _weights(G, Y)
        M = (G / d) @ G.T
        val = float(_lmax(M)) * float(d.sum())
        if val < best:
            best, best_d = val, d
        w, V = torch.linalg.eigh(Y)
        step = 0.5 * M / M.abs().max().clamp_min(1e-300)
        S = V @ torch.diag(torch.log(w.clamp_min(1e-30))) @ V.T + step
        w2, V2 = torch.linalg.eigh((S + S.T) / 2)
        w2 = torch.exp(w2 - w2.max())
        Y = V2 @ torch.diag(w2 / w2.sum()) @ V2.T
    return math.sqrt(max(best, 0.0)), best_d, Y


def _weights(G: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    """d_j = √(g_jᵀ Y g_j), floored at 10⁻¹² ‖g_j‖ (positive on every non-zero column)."""
    return torch.sqrt(torch.einsum("kj,kl,lj->j", G, Y, G).clamp_min(0)).clamp_min(1e-12 * G.norm(dim=0))


def _lmax(M: torch.Tensor) -> torch.Tensor:
    return torch.linalg.eigvalsh(M)[-1]


def _tube(points_lo, points_hi):
    """Centre and radius of [min of the lower values, max of the upper values]."""
    lo = torch.stack(points_lo).min(0).values
    hi = torch.stack(points_hi).max(0).values
    return (lo + hi) / 2, (hi - lo) / 2


def _relu_tube(l, u, slope):
    """σ(z) − λz over z ∈ [l, u] lies in centre ± radius (λ ∈ [0, 1] where the unit is unstable;
    1 / 0 for stably active / inactive units, radius 0): σ − λz is piecewise linear with its kink
    at 0, so its extremes are at l, u and (if inside) 0."""
    act, ina = l >= 0, u <= 0
    lam = torch.where(act, torch.ones_like(l), torch.where(ina, torch.zeros_like(l), slope))
    f = lambda z: z.clamp_min(0) - lam * z
    zero = torch.where((l < 0) & (u > 0), torch.zeros_like(l), l)
    c, r = _tube([f(l), f(u), f(zero)], [f(l), f(u), f(zero)])
    return lam, c, r


def _d_tube(b: Bounds, slope):
    """D = σ(z' + d) − σ(z') − κd lies in centre ± radius for d ∈ [dl, du]: D is between the lower
    function L(d) = max(min(d, 0), d if g's unit is stably active, 0 if stably inactive) and the
    upper U(d) = min(max(d, 0), d if f's unit is stably active, 0 if stably inactive) (σ is monotone
    and 1-Lipschitz); both are piecewise linear with their kink at 0, so the extremes of L − κd and
    U − κd are at dl, du and (if inside) 0."""
    g_act, g_ina, f_act, f_ina = b.l >= 0, b.u <= 0, b.lf >= 0, b.uf <= 0
    both_act, both_ina = g_act & f_act, g_ina & f_ina
    kap = torch.where(both_act, torch.ones_like(b.l), torch.where(both_ina, torch.zeros_like(b.l), slope))

    def lower(d):
        v = torch.minimum(d, torch.zeros_like(d))
        v = torch.where(g_act, torch.maximum(v, d), v)
        return torch.where(g_ina, torch.maximum(v, torch.zeros_like(d)), v) - kap * d

    def upper(d):
        v = torch.maximum(d, torch.zeros_like(d))
        v = torch.where(f_act, torch.minimum(v, d), v)
        return torch.where(f_ina, torch.minimum(v, torch.zeros_like(d)), v) - kap * d

    zero = torch.where((b.dl < 0) & (b.du > 0), torch.zeros_like(b.dl), b.dl)
    pts = (b.dl, b.du, zero)
    c, r = _tube([lower(d) for d in pts], [upper(d) for d in pts])
    return kap, c, r.clamp_min(0)


#: a hidden unit's σ(z') takes the "|z'|" form (a' = z'/2 + ω, |ω| <= |z'|/2) when its largest
#: |ω|, max(|l|, |u|)/2, is at most this many times the parallel-plane tube's radius (2 on a
#: symmetric range, large on a lopsided one). Any value is sound; on the MNIST ticket the bound is
#: 0.441 / 0.386 / 0.361 / 0.368 / 0.368 at 2.05 / 2.25 / 2.5 / 3 / 4.
ABS_FORM_RATIO = 2.5


@dataclass
class Zonotope:
    """f − ĝ's output ``c + G s`` over symbols s ∈ [−1, 1]^N, and the *refined* symbols: groups of
    symbols s_j (``cols``: their columns of G) that also satisfy |s_j| <= |Z_j · (1, s')|, Z (n, 1 + P)
    a zonotope over the P symbols made before them (s' their values)."""

    c: torch.Tensor
    G: torch.Tensor
    groups: list


def _zonotope(net: DiffNet, bounds: list[Bounds], Xlo, Xhi, refine: bool = True) -> Zonotope:
    """f − ĝ's output as a :class:`Zonotope`. The input box is X's centre ± radius (one symbol per
    coordinate of X); each hidden unit gets one symbol for σ(z') and one for D = σ(z) − σ(z') (none
    where exact), on its bounds from ``bounds``:

    * parallel planes (DeepZ): σ(z') = λz' + c + r·s with λ = u/(u − l), D = κd + c + r·s
      (:func:`_relu_tube`, :func:`_d_tube`);
    * with ``refine``, the "|·|" forms, exact identities with a residual bounded by a zonotope of
      earlier symbols: σ(z') = z'/2 + |z'|/2, so s = (|z'|/2)/r with r = max(|l|, |u|)/2 and
      |s| <= |z'|/(2r); D ∈ [min(d, 0), max(d, 0)], so D = d/2 + r·s with |s| <= |d|/(2r),
      r = max(|dl|, |du|)/2 — for units unstable in both networks (D) and units whose |·| residual
      is at most :data:`ABS_FORM_RATIO` × the tube's (σ(z'))."""
    mid, rad = (Xlo[0] + Xhi[0]) / 2, (Xhi[0] - Xlo[0]) / 2
    E0 = net.wf[0] - net.wg[0]
    cz, Gz = net.wg[0] @ mid + net.bg[0], net.wg[0] * rad
    cd, Gd = E0 @ mid + (net.bf[0] - net.bg[0]), E0 * rad
    tags = torch.arange(Gz.shape[1])            # a symbol id per column
    next_tag = Gz.shape[1]
    groups = []                                  # (symbol ids, Z)
    for i in range(1, net.depth):
        b = bounds[i - 1].map(lambda t: t[0])
        lam, ca, ra = _relu_tube(b.l, b.u, _default_slopes_of(b.l, b.u))
        kap, cD, rD = _d_tube(b, torch.full_like(b.l, 0.5))
        n = len(lam)
        zero = torch.zeros(n, dtype=DT)
        if refine:
            uns = (b.l < 0) & (b.u > 0)
            r_abs = torch.maximum(-b.l, b.u) / 2
            abs_a = uns & (r_abs <= ABS_FORM_RATIO * ra)
            lam = torch.where(abs_a, torch.full_like(lam, 0.5), lam)
            ca = torch.where(abs_a, zero, ca)
            ra = torch.where(abs_a, r_abs, ra)
            # D: the doubly unstable units' tube is already κ = ½, c = 0, r = max|d|/2
            abs_d = (kap == 0.5) & (cD == 0)    # κ = ½ only where a unit is not stable in both
            # σ(z')'s symbols get ids next_tag + [0, n), D's next_tag + [n, 2n) (columns below)
            for mask, cc, GG, rr, off in ((abs_a, cz, Gz, ra, 0), (abs_d, cd, Gd, rD, n)):
                idx = torch.nonzero(mask & (rr > 0)).flatten()
                if len(idx):
                    Z = torch.cat([cc[idx, None], GG[idx]], 1) / (2 * rr[idx, None])
                    groups.append((next_tag + off + idx, Z))
        Ga = torch.cat([lam[:, None] * Gz, torch.diag(ra), torch.zeros(n, n, dtype=DT)], 1)
        GD = torch.cat([kap[:, None] * Gd, torch.zeros(n, n, dtype=DT), torch.diag(rD)], 1)
        a_c, D_c = lam * cz + ca, kap * cd + cD
        tags = torch.cat([tags, next_tag + torch.arange(2 * n)])
        next_tag += 2 * n
        E = net.wf[i] - net.wg[i]
        e = net.bf[i] - net.bg[i]
        cz, Gz = net.wg[i] @ a_c + net.bg[i], net.wg[i] @ Ga
        cd, Gd = net.wf[i] @ D_c + E @ a_c + e, net.wf[i] @ GD + E @ Ga
        keep = (Gz.abs().sum(0) > 0) | (Gd.abs().sum(0) > 0)      # drop symbols that vanish
        Gz, Gd, tags = Gz[:, keep], Gd[:, keep], tags[keep]
    # map each group's symbol ids to output columns (a symbol that vanished adds nothing)
    pos = {int(t): k for k, t in enumerate(tags)}
    out_groups = []
    for ids, Z in groups:
        cols = [pos.get(int(t), -1) for t in ids]
        sel = torch.tensor([k for k, cl in enumerate(cols) if cl >= 0], dtype=torch.long)
        if len(sel):
            out_groups.append((torch.tensor([cols[k] for k in sel.tolist()], dtype=torch.long), Z[sel]))
    return Zonotope(cd, Gd, out_groups)


def _default_slopes_of(l, u):
    """λ = u/(u − l) (the chord's slope, DeepZ's choice)."""
    return (u / (u - l).clamp_min(1e-300)).clamp(0, 1)


def refined_l2_bound(zono: Zonotope, psd_iters: int = 200, iters: int = 150, lr: float = 0.05,
                     deadline: float | None = None, patience: int = 25) -> dict:
    """A bound on max ‖c + G s‖₂ over the symbols of a :class:`Zonotope`, using its refined groups.

    For weights w > 0 on the symbols (Cauchy–Schwarz, as in :func:`psd_l2_bound`):
    ‖G s‖² <= λ_max(G W⁻¹ Gᵀ) · Σ_j w_j s_j², and Σ_j w_j s_j² <= Σ_plain w_j + Σ_groups
    min(Σ_g w_j, max_{s'} ‖diag(√w_g) Z_g (1, s')‖²), the latter <= λ_max(diag(√w_g) Z_g E⁻¹ Z_gᵀ
    diag(√w_g)) · tr E for any positive diagonal E (:func:`psd_l2_bound` again). Every (w, E) gives
    a valid bound; they start from the plain bound's weights and are tuned by Adam on the log of
    the bound; the best iterate is recomputed at the end. ``bound_plain``: :func:`psd_l2_bound`."""
    G = torch.cat([zono.c[:, None], zono.G], 1)
    plain, _, Y = psd_l2_bound(G, psd_iters)
    out = {"bound": plain, "bound_plain": plain, "iterations": 0}
    if not zono.groups or plain == 0.0:
        return out
    live = G.abs().sum(0) > 0
    d0 = _weights(G, Y)
    grouped = torch.zeros(G.shape[1], dtype=torch.bool)
    groups = []
    for cols, Z in zono.groups:
        cols = cols + 1                           # column 0 is the centre
        on = live[cols]                           # a symbol with a zero column adds nothing
        if on.any():
            groups.append((cols[on], Z[on]))
            grouped[cols[on]] = True
    plain_cols = torch.nonzero(live & ~grouped).flatten()
    lw_plain = torch.log(d0[plain_cols]).clone()
    lws = [torch.log(d0[c]).clone() for c, _ in groups]
    les = []
    for (cols, Z), lw in zip(groups, lws):
        Zs = torch.exp(lw / 2)[:, None] * Z
        les.append(torch.log(Zs.norm(dim=0).clamp_min(1e-300)))
    Zkeep = [Z.abs().sum(0) > 0 for _, Z in groups]

    def value(lw_plain, lws, les):
        cols = [G[:, plain_cols] * torch.exp(-lw_plain / 2)]
        tot = torch.exp(lw_plain).sum()
        for (cols_g, Z), kz, lw, le in zip(groups, Zkeep, lws, les):
            w = torch.exp(lw)
            cols.append(G[:, cols_g] * torch.exp(-lw / 2))
            Zs = torch.exp(lw / 2)[:, None] * Z[:, kz] * torch.exp(-le[kz] / 2)[None, :]
            K = Zs @ Zs.T if Zs.shape[0] <= Zs.shape[1] else Zs.T @ Zs
            tot = tot + torch.minimum(w.sum(), _lmax(K) * torch.exp(le[kz]).sum())
        C = torch.cat(cols, 1)
        return _lmax(C @ C.T) * tot

    params = [lw_plain.requires_grad_(True)] + [t.requires_grad_(True) for t in lws + les]
    opt = torch.optim.Adam(params, lr=lr)
    best, best_params = math.inf, None
    done = stale = 0
    with torch.enable_grad():
        for it in range(iters):
            if deadline is not None and time.perf_counter() > deadline:
                break
            try:
                J = value(params[0], params[1:1 + len(lws)], params[1 + len(lws):])
            except RuntimeError:         # eigvalsh on a degenerate iterate: keep the best so far
                break
            j = float(J.detach())
            if not math.isfinite(j):
                break
            if j < best * (1 - 1e-4):
                stale = 0
            else:
                stale += 1
                if stale >= patience:    # no progress for a while: the weights have settled
                    break
            if j < best:
                best, best_params = j, [p.detach().clone() for p in params]
            opt.zero_grad()
            torch.log(J).backward()
            opt.step()
            done = it + 1
    if best_params is not None:
        with torch.no_grad():       # the reported value: the best weights, recomputed
            try:
                J = float(value(best_params[0], best_params[1:1 + len(lws)], best_params[1 + len(lws):]))
            except RuntimeError:
                J = math.inf
        if math.isfinite(J):
            out["bound"] = min(plain, math.sqrt(max(J, 0.0)))
    out["iterations"] = done
    return out


def zonotope_l2(net: DiffNet, bounds: list[Bounds], Xlo, Xhi, psd_iters: int = 200, iters: int = 150,
                deadline: float | None = None) -> dict:
    """A bound on sup over the box of ‖f − ĝ‖₂ from the zonotope of f − ĝ (:func:`_zonotope`) and
    :func:`refined_l2_bound` (the centre is one more symbol: s₀ ∈ [−1, 1] contains 1). The smaller
    of it and the plain zonotope's (DeepZ forms only, :func:`psd_l2_bound`) is returned."""
    zp = _zonotope(net, bounds, Xlo, Xhi, refine=False)
    plain, _, _ = psd_l2_bound(torch.cat([zp.c[:, None], zp.G], 1), psd_iters)
    zr = _zonotope(net, bounds, Xlo, Xhi, refine=True)
    ref = refined_l2_bound(zr, psd_iters, iters=iters, deadline=deadline)
    return {"bound": min(plain, ref["bound"]), "bound_plain": plain, "bound_refined": ref["bound"],
            "iterations": ref["iterations"], "generators": int(zr.G.shape[1]) + 1}


# ----------------------------------------------------------------------------- the certificate

def _box_arrays(lo, hi, p: int) -> tuple[np.ndarray, np.ndarray]:
    lo = np.broadcast_to(np.asarray(lo, dtype=np.float64), (p,)).copy()
    hi = np.broadcast_to(np.asarray(hi, dtype=np.float64), (p,)).copy()
    if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
        raise UserError("--input-box bounds must be finite numbers, e.g. --input-box 0,1")
    if np.any(lo > hi):
        raise UserError(f"--input-box needs LO <= HI, got LO={lo.min():g} > HI={hi.max():g}; e.g. --input-box 0,1")
    return lo, hi


def output_intervals(target: Target, maps: list[LayerMap], lo, hi, iters: int = 60, lr: float = 0.1,
                     time_budget: float | None = None, bab_seconds: float = 0.0, bab_domains: int = 256,
                     progress=None):
    """Sound per-output intervals [lo_k, hi_k] of (f − ĝ)_k over the box, the X-corner that
    minimises each objective's final linear bound (2q corners, good attack starts), and (in the
    info dict, ``zonotope``) the zonotope bound on the ℓ2 norm (:func:`zonotope_l2`)."""
    p = target.sizes[0]
    lo, hi = _box_arrays(lo, hi, p)
    net = diff_net(target, maps, _split_of(lo, hi))
    Xlo, Xhi = net.input_box(torch.as_tensor(lo, dtype=DT)[None], torch.as_tensor(hi, dtype=DT)[None])
    deadline = None if time_budget is None else time.perf_counter() + time_budget
    t0 = time.perf_counter()

    def stage(what: str) -> None:
        note(progress, f"box certificate: {what} ({time.perf_counter() - t0:.0f} s elapsed)")

    with torch.no_grad():
        bounds = _hidden_bounds(net, Xlo, Xhi)
    stage(f"hidden-unit bounds done; optimising the output bounds (alpha-CROWN, ≤ {iters} iterations"
          + (f", ≤ {time_budget:g} s with the zonotope)" if time_budget is not None else ")"))
    q = net.wf[-1].shape[0]
    I = torch.eye(q, dtype=DT)[None]
    lam_d = torch.cat([I, -I], 1)
    lam_z = torch.zeros_like(lam_d)
    val, cX, done = _optimise(net, bounds, net.depth - 1, lam_z, lam_d, Xlo, Xhi, iters, lr, deadline)
    if bab_seconds > 0 and net.depth > 1:
        stage(f"{done} alpha-CROWN iterations done; branch and bound for {bab_seconds:g} s")
        with torch.no_grad():
            val = branch_and_bound(net, bounds, net.depth - 1, lam_z, lam_d, Xlo, Xhi, val, bab_seconds,
                                   max_domains=bab_domains)
    lower, upper = val[0, :q], -val[0, q:]
    corners = _argmin_corner(cX, Xlo, Xhi, net.split, p)    # argmin of each objective's linear bound
    stage("output intervals done; zonotope bound of the ℓ2 norm")
    with torch.no_grad():
        zono = zonotope_l2(net, bounds, Xlo, Xhi, deadline=deadline)
    return lower.numpy(), upper.numpy(), corners.numpy(), {"iterations": done, "hidden_bounds": bounds,
                                                           "zonotope": zono}


def l2_of_intervals(lower: np.ndarray, upper: np.ndarray) -> float:
    """sup of ‖v‖₂ over the box ∏[lower_k, upper_k] (widened by the numeric slack)."""
    m = np.maximum(np.abs(lower), np.abs(upper))
    m = m * (1 + NUMERIC_SLACK) + ABS_SLACK
    return float(np.sqrt(np.sum(m ** 2)))


def widen(bound: float) -> float:
    """A float64 bound widened by the numeric slack (relative and absolute)."""
    return float(bound) * (1 + NUMERIC_SLACK) + ABS_SLACK


def box_certificate(target: Target, maps: list[LayerMap], lo, hi, iters: int = 60, lr: float = 0.1,
                    time_budget: float | None = 50.0, bab_seconds: float = 0.0, bab_domains: int = 256,
                    progress=None) -> dict:
    """sup over lo <= x <= hi of ‖f(x) − ĝ(x)‖₂ <= ``bound`` (see the module docstring): the smaller
    of the ℓ2 of the per-output intervals (``bound_intervals``) and the zonotope bound
    (``bound_zonotope``), both sound. ``lo``, ``hi``: scalars or (p,) arrays. Returns a dict with
    ``bound``, both ℓ2 bounds, per-output ``lower`` and ``upper``, ``seconds``, ``method`` and ``corners``."""
    t0, c0 = time.perf_counter(), time.process_time()
    lower, upper, corners, info = output_intervals(target, maps, lo, hi, iters=iters, lr=lr,
                                                   time_budget=time_budget, bab_seconds=bab_seconds,
                                                   bab_domains=bab_domains, progress=progress)
    by_intervals = l2_of_intervals(lower, upper)
    by_zonotope = widen(info["zonotope"]["bound"])
    bound = min(by_intervals, by_zonotope)
    if not math.isfinite(bound):
        raise UserError("the box certificate overflows: the box is too large for this target; use a smaller --input-box")
    return {"bound": bound, "bound_intervals": by_intervals, "bound_zonotope": by_zonotope,
            "l2_from": "zonotope" if by_zonotope < by_intervals else "intervals",
            "zonotope_generators": info["zonotope"]["generators"],
            "lower": lower.tolist(), "upper": upper.tolist(),
            "method": METHOD + (f", branch and bound {bab_seconds:g} s" if bab_seconds > 0 else ""),
            "alpha_iterations": info["iterations"],
            "seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0, "corners": corners}


# ----------------------------------------------------------------------------- the attack

def _ascent(err_fn, x, lo, hi, steps: int, step0: float):
    """Sign-gradient ascent in the box (PGD for ℓ∞), step decaying from step0·(hi − lo)."""
    span = (hi - lo)
    x = x.clone()
    best_x, best_e = x.clone(), torch.full((len(x),), -1.0, dtype=DT)
    for t in range(steps):
        x.requires_grad_(True)
        e = err_fn(x)
        (g,) = torch.autograd.grad(e.sum(), x)
        with torch.no_grad():
            better = e > best_e
            best_e = torch.where(better, e, best_e)
            best_x[better] = x[better]
            eta = step0 * 0.5 * (1 + math.cos(math.pi * t / max(steps, 1))) + 1e-3
            x = torch.minimum(torch.maximum(x + eta * span * torch.sign(g), lo), hi)
    with torch.no_grad():
        e = err_fn(x)
        better = e > best_e
        best_e = torch.where(better, e, best_e)
        best_x[better] = x[better]
    return best_x.detach(), best_e.detach()


def box_attack(target: Target, maps: list[LayerMap], lo, hi, data: np.ndarray | None = None,
               starts: np.ndarray | None = None, random_points: int = 256, top: int = 64, steps: int = 150,
               seed: int = 0, g: torch.nn.Module | None = None, bar=None) -> dict:
    """A lower bound on sup over the box of ‖f − ĝ‖₂: the centre, random points and random corners,
    ``data`` points clipped to the box and given ``starts`` (e.g. the certificate's corners) are
    evaluated; the ``top`` best and every given start are refined by sign-gradient ascent on
    ‖f − ĝ‖₂ and by per-output ±(f − ĝ)_k ascent. Computed on the collapsed ĝ; the best points are
    re-evaluated on ``g`` (the real pruned network, float64) when given, and that value is reported.
    ``witness``: the best x (float64, (p,)) and its error."""
    p = target.sizes[0]
    lo_a, hi_a = _box_arrays(lo, hi, p)
    rng = np.random.default_rng(seed)
    lo_t, hi_t = torch.as_tensor(lo_a, dtype=DT), torch.as_tensor(hi_a, dtype=DT)
    pts = [(lo_a + hi_a)[None] / 2]
    n = max(1, random_points // 2)
    pts.append(lo_a + rng.random((n, p)) * (hi_a - lo_a))
    dens = rng.random((n, 1))
    pts.append(np.where(rng.random((n, p)) < dens, hi_a, lo_a))
    if data is not None and len(data):
        d = np.asarray(data, dtype=np.float64).reshape(len(data), -1)
        pts.append(np.clip(d, lo_a, hi_a))
    n_given = 0
    if starts is not None and len(starts):
        s = np.clip(np.asarray(starts, dtype=np.float64).reshape(-1, p), lo_a, hi_a)
        n_given = len(s)
        pts.append(s)
    X = torch.as_tensor(np.vstack(pts), dtype=DT)
    collapsed = CollapsedNet(maps)

    def diff(x):
        return target.forward(x) - collapsed(x)

    def err(x):
        return diff(x).norm(dim=1)

    with torch.no_grad():
        e0 = torch.cat([err(X[i:i + 2048]) for i in range(0, len(X), 2048)])
    k = min(top, len(X))
    idx = torch.topk(e0, k).indices
    if n_given:
        idx = torch.unique(torch.cat([idx, torch.arange(len(X) - n_given, len(X))]))
    seeds = X[idx]
    cand_x, cand_e = [X], [e0]
    x1, e1 = _ascent(err, seeds, lo_t, hi_t, steps, 0.25)
    advance(bar)
    cand_x.append(x1)
    cand_e.append(e1)
    # per-output directions: maximise ±(f − ĝ)_k from the best seeds, then the norm again
    q = target.sizes[-1]
    best8 = x1[torch.topk(e1, min(8, len(e1))).indices]
    for kk in range(q):
        for sgn in (1.0, -1.0):
            xk, _ = _ascent(lambda x: sgn * diff(x)[:, kk], best8, lo_t, hi_t, max(steps // 3, 1), 0.25)
            xk, ek = _ascent(err, xk, lo_t, hi_t, max(steps // 3, 1), 0.05)
            cand_x.append(xk)
            cand_e.append(ek)
            advance(bar)
    allx, alle = torch.cat(cand_x), torch.cat(cand_e)
    order = torch.topk(alle, min(64, len(alle))).indices
    pts_top = allx[order]
    with torch.no_grad():
        real = (target.forward(pts_top) - (g.to(DT)(pts_top) if g is not None else collapsed(pts_top))).norm(dim=1)
    j = int(torch.argmax(real))
    src = "given starts" if (n_given and int(order[j]) >= len(X) - n_given and int(order[j]) < len(X)) else (
        "samples" if int(order[j]) < len(X) else "sign-gradient ascent")
    return {"empirical_bound": float(real[j]), "source": src, "points": int(len(X)), "ascent_steps": steps,
            "evaluated_on": "pruned network" if g is not None else "collapsed layer maps",
            "witness": {"x": pts_top[j].detach().clone().numpy(), "error": float(real[j])}}


# ----------------------------------------------------------------------------- local agreement

def _robust_lower(net: DiffNet, x0: torch.Tensor, cls: torch.Tensor, rho: float, lo, hi) -> torch.Tensor:
    """Lower bounds (N, q−1) of out_c − out_k over the ℓ∞ ball of radius ρ ∩ box around each x0
    (plain CROWN: ``net`` is a twin)."""
    Xlo = torch.maximum(x0 - rho, lo)
    Xhi = torch.minimum(x0 + rho, hi)
    bounds = _hidden_bounds(net, Xlo, Xhi, twin=True)
    q = net.wf[-1].shape[0]
    N = len(x0)
    eye = torch.eye(q, dtype=DT)
    lam = eye[cls][:, None, :] - eye[None, :, :]            # (N, q, q): row k = e_c − e_k
    keep = torch.ones(N, q, dtype=torch.bool)
    keep[torch.arange(N), cls] = False
    lam = lam[keep].reshape(N, q - 1, q)
    val, _ = _backward(net, bounds, net.depth - 1, lam, torch.zeros_like(lam), Xlo, Xhi)
    return val


def local_agreement(target: Target, maps: list[LayerMap], x: np.ndarray, rho: float, lo=0.0, hi=1.0,
                    chunk: int = 500, return_mask: bool = False, bar=None):
    """Fraction of the points ``x`` (N, p) around which f and ĝ provably predict the same class
    everywhere in the ℓ∞ ball of radius ρ (intersected with the box): f's class c at the point,
    and lower bounds of f_c − f_k and ĝ_c − ĝ_k (CROWN on each network) positive for every k ≠ c."""
    if not (math.isfinite(rho) and rho >= 0):
        raise UserError(f"--local-radius must be a non-negative number, got {rho}")
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    p = target.sizes[0]
    lo_a, hi_a = _box_arrays(lo, hi, p)
    if np.any(lo_a < 0):
        raise UserError("local agreement needs a non-negative box (LO >= 0), e.g. --input-box 0,1")
    fnet = twin_net([L.weight for L in target.layers], [L.bias for L in target.layers])
    gnet = twin_net([M.w_plus for M in maps], [M.bias for M in maps])
    lo_t, hi_t = torch.as_tensor(lo_a, dtype=DT), torch.as_tensor(hi_a, dtype=DT)
    ok = []
    with torch.no_grad():
        for i in range(0, len(x), chunk):
            x0 = torch.minimum(torch.maximum(torch.as_tensor(x[i:i + chunk], dtype=DT), lo_t), hi_t)
            cls = target.forward(x0).argmax(1)
            a = _robust_lower(fnet, x0, cls, rho, lo_t, hi_t)
            b = _robust_lower(gnet, x0, cls, rho, lo_t, hi_t)
            ok.append(((a > 0).all(1) & (b > 0).all(1)))
            advance(bar)
    mask = torch.cat(ok).numpy() if ok else np.zeros(0, dtype=bool)
    frac = float(mask.mean()) if len(mask) else float("nan")
    return (frac, mask) if return_mask else frac


# ----------------------------------------------------------------------------- run-level wiring

BOX_WITNESS = "box_witness.safetensors"
DEFAULT_LOCAL_RADII = (0.01, 0.05)


@dataclass
class BoxConfig:
    """The box domain of ``approximate``/``certify``: every input coordinate in [lo, hi]."""

    lo: float = 0.0
    hi: float = 1.0
    local_radii: tuple = ()          #: ℓ∞ radii ρ of the per-image certified agreement
    iters: int = 60                  #: α-CROWN iterations
    time_budget: float = 50.0        #: seconds for the α optimisation at most
    bab_seconds: float = 0.0         #: seconds of branch and bound on g's unstable units (0: none)
    attack_steps: int = 150

    def __post_init__(self) -> None:
        if not (math.isfinite(self.lo) and math.isfinite(self.hi) and self.lo < self.hi):
            raise UserError(f"--input-box needs finite LO < HI, got {self.lo:g},{self.hi:g}; e.g. --input-box 0,1")
        for r in self.local_radii:
            if not (math.isfinite(r) and r > 0):
                raise UserError(f"--local-radius must be a positive number, got {r}")
        limits.check_seconds("--bab-seconds", self.bab_seconds, zero_ok=True)
        if self.local_radii and self.lo < 0:
            raise UserError("--local-radius needs a non-negative box (LO >= 0), e.g. --input-box 0,1")

    @property
    def domain(self) -> str:
        """The construction's input domain for this box (sign halves only where x can be < 0)."""
        return "nonnegative" if self.lo >= 0 else "signed"


def parse_box(text: str) -> tuple[float, float]:
    """'LO,HI' -> (lo, hi); one clear error otherwise."""
    parts = str(text).split(",")
    try:
        lo, hi = (float(s) for s in parts)
    except ValueError:
        raise UserError(f"--input-box takes LO,HI (two numbers), got {text!r}; e.g. --input-box 0,1") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise UserError(f"--input-box needs finite LO < HI, got {text!r}; e.g. --input-box 0,1")
    return lo, hi


def box_bound(target: Target, maps: list[LayerMap], box: BoxConfig) -> float:
    """The box certificate's bound alone (what ``--eps`` is checked against in the box domain)."""
    return box_certificate(target, maps, box.lo, box.hi, iters=box.iters, time_budget=box.time_budget,
                           bab_seconds=box.bab_seconds)["bound"]


def box_report(target: Target, maps: list[LayerMap], g: torch.nn.Module | None, box: BoxConfig,
               data: np.ndarray | None = None, eval_x: np.ndarray | None = None, seed: int = 0,
               random_points: int = 256, progress=None) -> tuple[dict, np.ndarray]:
    """The ``box_certificate`` object of report.json and the attack's witness x*: the bound, the
    box attack (checked to stay under it), their ratio, and the certified agreement per ρ on
    ``eval_x`` when given. ``progress``: announces each stage (:func:`subsetsum_lth.progress.phase`)."""
    from subsetsum_lth.certify import check_soundness
    where = box_set(box.lo, box.hi, target.input_dim)
    bab = f", then branch and bound for {box.bab_seconds:g} s" if box.bab_seconds else ""
    with phase(progress, "box certificate", f"bounding sup over {where} of ‖f(x) − ĝ(x)‖₂ (intervals, "
                                            f"zonotopes, differential alpha-CROWN{bab})"):
        cert = box_certificate(target, maps, box.lo, box.hi, iters=box.iters, time_budget=box.time_budget,
                               bab_seconds=box.bab_seconds, progress=progress)
    t0 = time.perf_counter()
    q = target.sizes[-1]
    with phase(progress, "box attack", f"searching {where} for a large ‖f(x) − ĝ(x)‖₂ (sign-gradient "
                                       f"ascent on the norm, then on ±(f − ĝ)_k for each of the {q} outputs)",
               total=1 + 2 * q, unit="ascent") as bar:
        att = box_attack(target, maps, box.lo, box.hi, data=data, starts=cert["corners"], g=g, seed=seed,
                         random_points=random_points, steps=box.attack_steps, bar=bar)
    attack_seconds = time.perf_counter() - t0
    check_soundness(att["empirical_bound"], cert["bound"])
    witness = att.pop("witness")
    out = {"box": [box.lo, box.hi], "bound": cert["bound"], "empirical_bound": att["empirical_bound"],
           "bound_intervals": cert["bound_intervals"], "bound_zonotope": cert["bound_zonotope"],
           "l2_from": cert["l2_from"],
           "ratio": cert["bound"] / att["empirical_bound"] if att["empirical_bound"] > 0 else None,
           "method": cert["method"], "seconds": cert["seconds"], "cpu_seconds": cert["cpu_seconds"],
           "alpha_iterations": cert["alpha_iterations"],
           "output_lower": cert["lower"], "output_upper": cert["upper"],
           "attack": {**att, "seconds": attack_seconds},
           "witness": {"file": BOX_WITNESS, "error": float(witness["error"])}}
    if eval_x is not None and box.local_radii:
        t1 = time.perf_counter()
        chunk = 500
        with phase(progress, "certified agreement", f"{len(eval_x):,} test images × l-inf radii "
                   f"{', '.join(f'{r:g}' for r in box.local_radii)}",
                   total=len(box.local_radii) * -(-len(eval_x) // chunk), unit="chunk") as bar:
            out["local_agreement"] = {f"{r:g}": local_agreement(target, maps, eval_x, r, box.lo, box.hi,
                                                                chunk=chunk, bar=bar)
                                      for r in box.local_radii}
        out["local_agreement_examples"] = int(len(eval_x))
        out["local_agreement_seconds"] = time.perf_counter() - t1
        out["local_agreement_meaning"] = ("fraction of the points where f and the pruned network both provably "
                                          "keep f's class on the whole l-inf ball of radius rho (within the box)")
    return out, np.asarray(witness["x"], dtype=np.float64)


def box_set(lo: float, hi: float, dim: int) -> str:
    """The box in words: 'the box [0, 1]^784'."""
    return f"the box [{lo:g}, {hi:g}]^{dim}"


def box_from_report(report: dict, where: str) -> BoxConfig | None:
    """The box a run was certified on (report.json 'box_certificate'), validated, or None."""
    bc = report.get("box_certificate")
    if bc is None:
        return None
    box = bc.get("box") if isinstance(bc, dict) else None
    if not (isinstance(box, list) and len(box) == 2 and all(isinstance(v, (int, float)) for v in box)
            and math.isfinite(box[0]) and math.isfinite(box[1]) and box[0] < box[1]):
        raise RunFolderError(f"{where}: 'box_certificate.box' must be [LO, HI] with LO < HI, got {box!r}; "
                             "recreate the run with 'subsetsum-lth approximate'")
    return BoxConfig(float(box[0]), float(box[1]))
