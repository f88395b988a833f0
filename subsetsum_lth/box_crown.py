"""Differential α-CROWN: joint backward linear bounds on g's pre-activations z' and d = z − z'.

The pair of networks (:class:`DiffNet`: f and ĝ of the same shape), the relaxations of σ(z') and
of D = σ(z) − σ(z') (:mod:`subsetsum_lth.box_relax`), the backward bounds (:func:`_backward`,
the chain of :mod:`subsetsum_lth.box_ops`' linear and ReLU ops),
their α/θ optimisation (:func:`_optimise`) and branch and bound on unstable units
(:func:`branch_and_bound`). The method is described in :mod:`subsetsum_lth.certify_box`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from subsetsum_lth.box_ops import LinearOp, ReluOp
from subsetsum_lth.box_relax import DT, Bounds
from subsetsum_lth.certify import LayerMap
from subsetsum_lth.errors import RunFolderError, UserError
from subsetsum_lth.target import Target



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


def box_arrays(lo, hi, p: int) -> tuple[np.ndarray, np.ndarray]:
    """The box's ends as (p,) float64 arrays (scalars broadcast); one clear error if not finite or LO > HI."""
    lo = np.broadcast_to(np.asarray(lo, dtype=np.float64), (p,)).copy()
    hi = np.broadcast_to(np.asarray(hi, dtype=np.float64), (p,)).copy()
    if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
        raise UserError("--input-box bounds must be finite numbers, e.g. --input-box 0,1")
    if np.any(lo > hi):
        raise UserError(f"--input-box needs LO <= HI, got LO={lo.min():g} > HI={hi.max():g}; e.g. --input-box 0,1")
    return lo, hi


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


# ----------------------------------------------------------------------------- backward bounds

def _backward(net: DiffNet, bounds: list[Bounds], k: int, lam_z, lam_d, Xlo, Xhi, params=None, record=None,
              splits=(), beta=None):
    """Lower bound of Λz·z'_k + Λd·d_k over the box (layer k's pre-activations; Λ: (B, m, n_k)):
    the chain of :class:`~subsetsum_lth.box_ops.LinearOp` and :class:`~subsetsum_lth.box_ops.ReluOp`
    walked backwards. ``params[i]``: None or the ReLU's dict of per-objective α (``a``, ``f``, ``g``)
    and θ (``u``, ``l``), each (B, m, n_i), for hidden layer i; ``record[i]`` receives its branching
    scores. Returns (lower bound (B, m), coefficients on X)."""
    const = torch.zeros(lam_z.shape[:2], dtype=DT)
    for i in range(k, 0, -1):
        Ca, CD, const = LinearOp(net.wf[i], net.bf[i], net.wg[i], net.bg[i]).backward(lam_z, lam_d, acc=const)
        scores = None if record is None else (lambda s, i=i: record.__setitem__(i - 1, s))
        lam_z, lam_d, const = ReluOp(bounds[i - 1].l.shape[1:]).backward(
            Ca, CD, bounds[i - 1], (params or [None] * k)[i - 1], acc=const, scores=scores)
    cX, _, const = LinearOp(net.wf[0], net.bf[0], net.wg[0], net.bg[0]).backward(lam_z, lam_d, acc=const,
                                                                               d_in=False)
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


#: the most floating-point operations the α-optimised hidden-layer bounds may cost (an estimate
#: from the shapes alone, so the decision is the same on every machine): a narrow deep MLP (5 × 64
#: over 784 inputs, ~10¹¹) takes them, a 4 × 1024 one (~10¹³) keeps the default slopes
HIDDEN_ALPHA_FLOPS = 1e12
#: hidden units whose six bounds are optimised together (the objectives of one α-CROWN call)
HIDDEN_ALPHA_CHUNK = 64


def hidden_alpha_iterations(net: DiffNet, iters: int) -> int:
    """``iters`` where α-CROWN on every hidden layer's bounds costs at most
    :data:`HIDDEN_ALPHA_FLOPS` (estimated from the shapes: six objectives per unit, three products
    per layer walked back, three passes per iteration), else 0 (default slopes)."""
    if iters <= 0 or net.depth < 3:
        return 0
    n = [int(net.wf[0].shape[1])] + [int(w.shape[0]) for w in net.wf]
    flops = sum(6 * n[k + 1] * sum(3 * 2 * n[i + 1] * n[i] for i in range(k + 1)) for k in range(1, net.depth - 1))
    return int(iters) if 3 * iters * flops <= HIDDEN_ALPHA_FLOPS else 0


def _hidden_bounds(net: DiffNet, Xlo, Xhi, twin: bool = False, given: list[Bounds] | None = None,
                   keep: int = 1, iters: int = 0, lr: float = 0.1) -> list[Bounds]:
    """Bounds of every hidden layer's pre-activations: exact for layer 0, CROWN for the later ones
    (default slopes; with ``iters`` > 0, α-CROWN: the slopes of the layers below optimised for each
    bound, :data:`HIDDEN_ALPHA_CHUNK` units at a time, never worse than the default); z is also
    intersected with z' + d. With ``given`` (bounds valid on the domain, e.g. a branch's), its first
    ``keep`` layers are kept and the later ones recomputed and intersected with it."""
    with torch.no_grad():
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
            with torch.no_grad():
                lz, _ = _backward(net, bounds, k, torch.cat([I, -I], 1), torch.cat([Z, Z], 1), Xlo, Xhi)
            l, u = lz[:, :n], -lz[:, n:]
            zero = torch.zeros_like(l)
            bounds.append(Bounds(l, u, zero, zero, l, u))
            continue
        if iters > 0:
            parts = []
            for a in range(0, n, HIDDEN_ALPHA_CHUNK):
                J = I[:, a:a + HIDDEN_ALPHA_CHUNK]
                O = torch.zeros_like(J)
                with torch.enable_grad():
                    v, _, _ = _optimise(net, bounds, k, torch.cat([J, -J, O, O, J, -J], 1),
                                        torch.cat([O, O, J, -J, J, -J], 1), Xlo, Xhi, iters, lr, None)
                parts.append(v.detach().reshape(B, 6, -1))
            v = torch.cat(parts, -1).reshape(B, 6 * n)
        else:
            with torch.no_grad():
                v, _ = _backward(net, bounds, k, torch.cat([I, -I, Z, Z, I, -I], 1),
                                 torch.cat([Z, Z, I, -I, I, -I], 1), Xlo, Xhi)
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
        p = ReluOp(b.l.shape[1:]).default_params(bb)
        p = {key: v.clone().requires_grad_(True) for key, v in p.items()}
        params.append(p)
        leaves += list(p.values())
    beta = torch.zeros(lam_z.shape[:2] + (len(splits),), dtype=DT, requires_grad=True) if splits else None
    return adam_ascent(lambda: _backward(net, bounds, k, lam_z, lam_d, Xlo, Xhi, params, splits=splits, beta=beta),
                       leaves, best, best_cX, iters, lr, deadline, nonneg=[beta] if splits else [])


def adam_ascent(evaluate, leaves: list, best, best_cX, iters: int, lr: float, deadline: float | None,
                nonneg: list = ()):
    """α-CROWN's loop: Adam on ``leaves`` (slopes, projected to [0, 1]) and ``nonneg`` (β, projected
    to ≥ 0) raising the lower bounds ``evaluate() -> (val, cX)``; keeps the best bound per objective
    over all iterates (each is sound) and its X coefficients. Returns (best, best_cX, iterations)."""
    nonneg = list(nonneg)
    opt = torch.optim.Adam(leaves + nonneg, lr=lr)
    done = 0
    for it in range(iters):
        if deadline is not None and time.perf_counter() > deadline:
            break
        val, cX = evaluate()
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
            for v in nonneg:
                v.clamp_(min=0.0)
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
