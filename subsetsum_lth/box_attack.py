"""The box attack: a lower bound on sup over the box of ‖f − ĝ‖₂ (sign-gradient ascent)."""
from __future__ import annotations

import math

import numpy as np
import torch

from subsetsum_lth.box_crown import DT, box_arrays
from subsetsum_lth.certify import CollapsedNet, LayerMap
from subsetsum_lth.progress import advance
from subsetsum_lth.target import Target


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
    p = target.input_dim
    lo_a, hi_a = box_arrays(lo, hi, p)
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
    collapsed = CollapsedNet(maps, target=target)     # with the target's input op, as target.forward

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
    q = int(diff(X[:1]).shape[1])
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
