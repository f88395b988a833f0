"""Certified local agreement: f and ĝ provably keep f's class on an ℓ∞ ball around each point."""
from __future__ import annotations

import math

import numpy as np
import torch

from subsetsum_lth.box_crown import DT, DiffNet, _backward, _hidden_bounds, box_arrays, twin_net
from subsetsum_lth.box_local import robust_lower as refined_robust_lower
from subsetsum_lth.box_net import chain_robust_lower, margin_objectives, twin_graph
from subsetsum_lth.certify import LayerMap
from subsetsum_lth.errors import UserError
from subsetsum_lth.progress import advance
from subsetsum_lth.target import Target


# ----------------------------------------------------------------------------- local agreement

#: bytes the MLP agreement's CROWN objectives may take per pass (a chunk of images is cut into
#: passes of at most this: B images × 2n × n per hidden layer of width n, and a few temporaries)
AGREEMENT_PASS_BYTES = 256 * 2 ** 20


def _robust_lower(net: DiffNet, Xlo: torch.Tensor, Xhi: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
    """Lower bounds (N, q−1) of out_c − out_k over the boxes [Xlo, Xhi] (N, p) of the layers'
    inputs (plain CROWN: ``net`` is a twin), in passes of images whose objectives fit
    :data:`AGREEMENT_PASS_BYTES` (a 4 × 1024 MLP took ~8.6 GB for 500 images at once)."""
    widest = max([int(w.shape[0]) for w in net.wf[1:-1]], default=0)
    per_image = 4 * 2 * widest * max(widest, int(net.wf[0].shape[1])) * 8
    step = max(1, AGREEMENT_PASS_BYTES // per_image) if per_image else len(Xlo)
    if len(Xlo) > step:
        return torch.cat([_robust_lower(net, Xlo[i:i + step], Xhi[i:i + step], cls[i:i + step])
                          for i in range(0, len(Xlo), step)])
    bounds = _hidden_bounds(net, Xlo, Xhi, twin=True)
    lam = margin_objectives(cls, net.wf[-1].shape[0])
    val, _ = _backward(net, bounds, net.depth - 1, lam, torch.zeros_like(lam), Xlo, Xhi)
    return val


def local_agreement(target: Target, maps: list[LayerMap], x: np.ndarray, rho: float, lo=0.0, hi=1.0,
                    chunk: int = 500, return_mask: bool = False, bar=None, refine: bool = True):
    """Fraction of the points ``x`` (N, p) around which f and ĝ provably predict the same class
    everywhere in the ℓ∞ ball of radius ρ (intersected with the box): f's class c at the point,
    and lower bounds of f_c − f_k and ĝ_c − ĝ_k (CROWN on each network) positive for every k ≠ c.
    CNNs: interval bounds of the hidden ops, CROWN on each image's units they leave unstable
    (:func:`subsetsum_lth.box_local.refined_bounds`), CROWN on the margins; ``refine`` False: the
    intervals alone and CROWN on the margins back to the last conv/pooling op (the cheaper, far
    looser bounds used before)."""
    if not (math.isfinite(rho) and rho >= 0):
        raise UserError(f"--local-radius must be a non-negative number, got {rho}")
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    p = target.input_dim
    lo_a, hi_a = box_arrays(lo, hi, p)
    if np.any(lo_a < 0):
        raise UserError("local agreement needs a non-negative box (LO >= 0), e.g. --input-box 0,1")
    if not target.is_mlp or target.graph is not None:   # conv/pooling/residual: the op chains (graphs) of f, ĝ
        fops = twin_graph(target, [L.weight for L in target.layers], [L.bias for L in target.layers])
        gops = twin_graph(target, [M.w_plus for M in maps], [M.bias for M in maps])
        if refine and fops[1] is None:      # a chain: CROWN on each ball's unstable units (box_local)
            robust = lambda ops, zlo, zhi, cls: refined_robust_lower(ops[0], zlo, zhi, cls)
        else:                               # a residual graph (or refine=False): interval bounds
            robust = lambda ops, zlo, zhi, cls: chain_robust_lower(ops[0], zlo, zhi, cls, inputs=ops[1])
        fnet, gnet = fops, gops
    else:
        fnet = twin_net([L.weight for L in target.layers], [L.bias for L in target.layers])
        gnet = twin_net([M.w_plus for M in maps], [M.bias for M in maps])
        robust = _robust_lower
    lo_t, hi_t = torch.as_tensor(lo_a, dtype=DT), torch.as_tensor(hi_a, dtype=DT)
    # the layers read the input op's a ⊙ x + c (a > 0: stds are positive), so the ball's box of x
    # maps onto a box of their inputs coordinate by coordinate
    a_in, c_in = ((torch.ones(p, dtype=DT), torch.zeros(p, dtype=DT)) if target.preprocessing is None else
                  tuple(torch.as_tensor(v, dtype=DT) for v in target.preprocessing.affine(p)))
    single = target.sizes[-1] == 1          # one output: its argmax is always the same class
    ok = []
    with torch.no_grad():
        for i in range(0, len(x), chunk):
            x0 = torch.minimum(torch.maximum(torch.as_tensor(x[i:i + chunk], dtype=DT), lo_t), hi_t)
            if single:
                ok.append(torch.ones(len(x0), dtype=torch.bool))
                advance(bar)
                continue
            cls = target.forward(x0).argmax(1)
            zlo = a_in * torch.maximum(x0 - rho, lo_t) + c_in
            zhi = a_in * torch.minimum(x0 + rho, hi_t) + c_in
            a = robust(fnet, zlo, zhi, cls)
            b = robust(gnet, zlo, zhi, cls)
            ok.append(((a > 0).all(1) & (b > 0).all(1)))
            advance(bar)
    mask = torch.cat(ok).numpy() if ok else np.zeros(0, dtype=bool)
    frac = float(mask.mean()) if len(mask) else float("nan")
    return (frac, mask) if return_mask else frac
