"""The per-weight tolerance τ for a network-level ε (``--eps``): the a-priori bound of DESIGN §2
with every weight and bias error at τ, and the largest τ whose bound fits ε."""
from __future__ import annotations

import math

import numpy as np

from subsetsum_lth.certify import compose_graph
from subsetsum_lth.target import Target


def apriori_bound(target: Target, tau: float, radius: float, domain: str, typical: bool) -> float:
    """The certified bound if every weight/bias error were τ: with ‖E‖₂ ≤ τ√(q·p·h) (sound,
    ``typical=False``) or the random-matrix estimate τ(√q + √(p·h)) (``typical=True``), times
    the patch-covering factor of a conv layer; a conv bias counts once per output pixel, and
    the Lipschitz constants of pooling layers multiply as in the certificate."""
    R, delta = radius, 0.0
    norms = weight_norms(target)
    signed = target.signed_inputs(domain)
    per_layer = []
    for i, L in enumerate(target.layers):
        q, p = L.weight.shape
        kind = L.kind
        h = 2 if signed[i] else 1
        cover = math.sqrt(kind.covering()) if kind.name == "conv2d" else 1.0
        rep = math.sqrt(kind.bias_repeat)
        nE = cover * tau * ((math.sqrt(q) + math.sqrt(p * h)) if typical else math.sqrt(q * p * h))
        neb = rep * tau * math.sqrt(q) if L.bias is not None else 0.0
        lip = 1.0
        for op in target.ops_after(i):
            lip *= op.lipschitz()
        nW = norms[i]
        nb = 0.0 if L.bias is None else rep * float(np.linalg.norm(L.bias))
        per_layer.append((nW, nE, neb, nb))
        delta = lip * (nW * delta + (R + delta) * nE + neb)
        R = lip * (nW * R + nb)
    if target.graph is not None:    # the same terms through the residual adds (certify.compose_graph)
        return compose_graph(target.graph, [L.kind for L in target.layers], per_layer, radius,
                             target.input_shape)[4]
    return delta


def weight_norms(target: Target) -> list[float]:
    """The proven operator-norm bounds of the target's layers (cached on the target)."""
    cached = getattr(target, "_spectral_norms", None)
    if cached is None:
        cached = [L.kind.op_norm(L.weight)[0] for L in target.layers]
        target._spectral_norms = cached
    return cached


def choose_tolerance(target: Target, eps: float, radius: float, domain: str, typical=True) -> float:
    """Largest τ (bisection, log scale) whose a-priori bound is ≤ 0.9 ε; never above ε."""
    lo, hi = 1e-12, eps
    if apriori_bound(target, hi, radius, domain, typical) <= 0.9 * eps:
        return hi
    for _ in range(100):
        mid = math.sqrt(lo * hi)
        if apriori_bound(target, mid, radius, domain, typical) <= 0.9 * eps:
            lo = mid
        else:
            hi = mid
    return lo
