"""The ℓ2 bound of f − ĝ over the box from a zonotope: f − ĝ = c + G s over s ∈ [−1, 1]^N.

:func:`_zonotope` builds it on the hidden bounds of :mod:`subsetsum_lth.box_crown` (parallel-plane
and "|·|" forms of the hidden units), :func:`psd_l2_bound` bounds max ‖G s‖₂ by the dual of the
semidefinite relaxation, :func:`refined_l2_bound` uses the refined groups, :func:`zonotope_l2`
returns the smaller bound. The method is described in :mod:`subsetsum_lth.certify_box`.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from subsetsum_lth.box_crown import DT, Bounds, DiffNet


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
