"""Targets on which the certified bound of DESIGN §2 is attained, and the check that the real
suite and the mutant suite share.

A pruned network of the construction's form is *realised* directly from chosen layer maps
(Ŵ⁺, Ŵ⁻, b̂): hidden unit (j,+) keeps the edge u = +1 from input j, unit (j,−) the edge u = −1,
and one bias unit the bias β = 1; the second layer carries Ŵ⁺[:, j], −Ŵ⁻[:, j] and b̂. So the
error matrices E = W − Ŵ are chosen exactly, and ĝ is evaluated as a plain torch Sequential
built here from the two state dicts (no subsetsum_lth code on the ĝ side).

The *positive rank-one chain*: W_i = w_i u_i u_{i−1}ᵀ, b_i = β_i u_i, Ŵ_i = W_i + e_i u_i u_{i−1}ᵀ,
b̂_i = b_i + ε_i u_i with non-negative unit vectors u_i and w_i, β_i, e_i, ε_i ≥ 0. Every hidden
vector of f and ĝ at x* = r u_0 is a non-negative multiple of u_i, no ReLU clips, and
ĝ(x*) − f(x*) = δ_{l+1} u_l exactly: ‖W_i‖ = w_i, ‖E_i‖ = e_i, ‖e_{b,i}‖ = ε_i, ‖b_i‖ = β_i, so
each term of the recursion (the ‖W_i‖ factor, η at R_i + δ_i, the ‖b_i‖ in R, ‖e_b‖) is
reached. With a signed input domain and ``flip``, the first layer is W_1 = −w_1 u_1 u_0ᵀ with
its error in E⁻ only, attained at x* = −r u_0, so the E⁻ half of [E⁺ E⁻] is reached too.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from subsetsum_lth.certify import certified_bound, layer_maps
from subsetsum_lth.target import Layer, Target
from tests.helpers import ascend, masked_sequential, probe_points


@dataclass
class Case:
    """A target plus the exact layer maps of its pruned network."""

    name: str
    target: Target
    w_plus: list          # per layer (q, p)
    w_minus: list         # per layer (q, p); ignored where inputs are non-negative
    b_hat: list           # per layer (q,)
    radius: float
    domain: str           # "signed" or "nonnegative"
    witness: np.ndarray | None = None   # a point where the bound is attained, if known


def realise(case: Case) -> tuple[dict, dict]:
    """(random_state, masks) of a network of the construction's form whose layer maps are
    exactly the case's (Ŵ⁺, Ŵ⁻, b̂); float64 throughout."""
    state, masks = {}, {}
    for i, (Wp, Wm, bh) in enumerate(zip(case.w_plus, case.w_minus, case.b_hat)):
        Wp, Wm, bh = (np.asarray(a, dtype=np.float64) for a in (Wp, Wm, bh))
        q, p = Wp.shape
        signed = i == 0 and case.domain == "signed"
        units = [(j, +1) for j in range(p)] + ([(j, -1) for j in range(p)] if signed else [])
        H = len(units) + 1                       # + one bias unit
        w1 = np.zeros((H, p)); b1 = np.zeros(H); w2 = np.zeros((q, H)); b2 = np.zeros(q)
        for h, (j, s) in enumerate(units):
            w1[h, j] = s                         # relu(+x_j) = x_j⁺, relu(−x_j) = −x_j⁻
            w2[:, h] = Wp[:, j] if s > 0 else -Wm[:, j]
        b1[H - 1] = 1.0
        w2[:, H - 1] = bh
        state.update({f"{4 * i}.weight": w1, f"{4 * i}.bias": b1,
                      f"{4 * i + 2}.weight": w2, f"{4 * i + 2}.bias": b2})
        masks.update({f"{4 * i}.weight": (w1 != 0).astype(np.uint8), f"{4 * i}.bias": (b1 != 0).astype(np.uint8),
                      f"{4 * i + 2}.weight": np.ones((q, H), np.uint8), f"{4 * i + 2}.bias": np.zeros(q, np.uint8)})
    return state, masks


def sequential(state: dict, masks: dict) -> torch.nn.Sequential:
    """ĝ = Sequential(Linear, ReLU, …, Linear), every tensor times its mask (no package code)."""
    return masked_sequential(state, masks)


def f_numpy(target: Target, x: np.ndarray) -> np.ndarray:
    """f by hand in numpy (independent of Target.forward)."""
    h = np.asarray(x, np.float64)
    for i, L in enumerate(target.layers):
        h = h @ L.weight.T + (0.0 if L.bias is None else L.bias)
        if i < target.depth - 1:
            h = np.maximum(h, 0.0)
    return h


def strong_attack(target: Target, g, radius: float, nonneg: bool, seed: int = 0) -> tuple[float, np.ndarray]:
    """A lower bound on sup ‖f − ĝ‖ over the ball by this test suite's own search: 0, random
    sphere points, every orthant vertex (p ≤ 10), interior points, radial scalings of the best
    points, then projected gradient ascent (tests.helpers.ascend) from the best ones."""
    p = target.sizes[0]
    rng = np.random.default_rng(seed)

    def err(X):
        with torch.no_grad():
            Xt = torch.from_numpy(X)
            return np.linalg.norm(f_numpy(target, X) - g(Xt).numpy(), axis=1)

    X = np.vstack([np.zeros((1, p)), probe_points(p, radius, nonneg, rng, n=128)])
    e = err(X)
    top = X[np.argsort(e)[-8:]]
    X2 = np.vstack([top * s for s in (0.25, 0.5, 0.75)])
    X = np.vstack([X, X2])
    e = np.concatenate([e, err(X2)])
    starts = X[np.argsort(e)[-8:]]
    Xa = ascend(target.forward, g, starts, radius, nonneg, steps=60)
    ea = err(Xa)
    allx, alle = np.vstack([X, Xa]), np.concatenate([e, ea])
    k = int(np.argmax(alle))
    return float(alle[k]), allx[k]


def check_case(case: Case, tight: float = 0.9) -> dict:
    """The guarantee check on one case: certificate from the package (layer maps recovered from
    the state dicts, then the §2 recursion), attack from this suite. Asserts soundness
    (attack ≤ certified) and, when ``tight`` > 0, near-tightness (attack ≥ tight·certified)."""
    state, masks = realise(case)
    maps = layer_maps(state, masks, case.target.depth)
    cert = certified_bound(case.target, maps, case.radius, case.domain).bound
    g = sequential(state, masks)
    attack, x = strong_attack(case.target, g, case.radius, case.domain == "nonnegative")
    assert np.linalg.norm(x) <= case.radius * (1 + 1e-12)
    assert case.domain == "signed" or (x >= 0).all()
    assert attack <= cert * (1 + 1e-9) + 1e-12, f"{case.name}: attack {attack:.9g} > certified {cert:.9g}"
    if tight:
        assert attack >= tight * cert - 1e-12, f"{case.name}: attack {attack:.6g} < {tight}·certified {cert:.6g}"
    return {"certified": cert, "attack": attack, "x": x}


def unit(v) -> np.ndarray:
    v = np.abs(np.asarray(v, dtype=np.float64))
    return v / np.linalg.norm(v)


def chain_case(name, us, w, beta, e, eps_b, radius, domain="nonnegative", flip=False) -> tuple[Case, float]:
    """The positive rank-one chain of the module docstring, and its exact bound δ_{l+1}
    computed by the scalar recursion (every norm is a given scalar here)."""
    layers, Wp, Wm, bh = [], [], [], []
    for i in range(len(w)):
        uu = np.outer(us[i + 1], us[i])
        sign = -1.0 if (i == 0 and flip) else 1.0
        W = sign * w[i] * uu
        Wh = sign * (w[i] + e[i]) * uu
        b = beta[i] * us[i + 1]
        layers.append(Layer(W, b))
        if i == 0 and flip:
            Wp.append(W.copy()); Wm.append(Wh)          # error only in E⁻, reached at x = −r u_0
        else:
            Wp.append(Wh); Wm.append(W.copy())
        bh.append(b + eps_b[i] * us[i + 1])
    x_star = (-1.0 if flip else 1.0) * radius * us[0]
    # scalar recursion, written out: R_1 = r, δ_1 = 0, δ' = wδ + (R + δ)e + ε, R' = wR + β
    R, d = radius, 0.0
    for wi, bi, ei, ebi in zip(w, beta, e, eps_b):
        R, d = wi * R + bi, wi * d + (R + d) * ei + ebi
    case = Case(name, Target(layers), Wp, Wm, bh, radius, domain, witness=x_star)
    return case, d


# --- fixed cases: every number derived by hand in the comment -------------------------------

def fixed_cases() -> list[tuple[Case, float]]:
    out = []
    one = np.array([1.0])
    # (a) depth 1, one input, non-negative: W = 2, b = 1, Ŵ = 2.5 (|e| = 0.5), b̂ = 1.3 (|e_b| = 0.3),
    #     r = 2: bound = r|e| + |e_b| = 1 + 0.3 = 1.3, attained at x = 2 (f = 5, ĝ = 6.3).
    out.append((chain_case("depth1-nonneg", [one, one], [2.0], [1.0], [0.5], [0.3], 2.0)[0], 1.3))
    # (b) depth 1, one input, signed, error only in E⁻: W = −1, Ŵ⁺ = −1, Ŵ⁻ = −3 (E⁻ = 2), r = 1,
    #     b = 0.5, b̂ = 0.75: bound = 1·‖[0 2]‖ + 0.25 = 2.25, attained at x = −1 (f = 1.5, ĝ = 3.75).
    out.append((chain_case("depth1-signed-Eminus", [one, one], [1.0], [0.5], [2.0], [0.25], 1.0,
                           domain="signed", flip=True)[0], 2.25))
    # (c) 1-1-1 with ‖W₂‖ = 4: r = 1; layer 1: w = 1, b = 1, e = 0.5, ε = 0.25; layer 2: w = 4,
    #     b = 0, e = 2, ε = 0.25.  δ₂ = 1·0.5 + 0.25 = 0.75, R₂ = 1 + 1 = 2,
    #     δ₃ = 4·0.75 + (2 + 0.75)·2 + 0.25 = 3 + 5.5 + 0.25 = 8.75; attained at x = 1:
    #     f = 4·relu(2) = 8, ĝ = 6·relu(1.5 + 1.25) + 0.25 = 16.75.
    out.append((chain_case("1-1-1-amplifying", [one, one, one], [1.0, 4.0], [1.0, 0.0], [0.5, 2.0],
                           [0.25, 0.25], 1.0)[0], 8.75))
    # (d) 3-20-1 with ‖W₂‖ = 4 (the shape), rank one: u₀ = (1,2,2)/3, u₁ = 1/√20 (all
    #     ones), u₂ = 1; r = 1; layer 1: w = 1, β = 2, e = 0.2, ε = 0.1; layer 2: w = 4, β = 0,
    #     e = 0.5, ε = 0.  δ₂ = 0.2 + 0.1 = 0.3, R₂ = 1 + 2 = 3,
    #     δ₃ = 4·0.3 + (3 + 0.3)·0.5 = 1.2 + 1.65 = 2.85.
    out.append((chain_case("3-20-1-amplifying", [unit([1, 2, 2]), unit(np.ones(20)), one], [1.0, 4.0],
                           [2.0, 0.0], [0.2, 0.5], [0.1, 0.0], 1.0)[0], 2.85))
    # (e) signed 2-3-2, E⁻ error in layer 1 and a large bias: u₀ = (3,4)/5, u₁ = (1,2,2)/3,
    #     u₂ = (1,1)/√2, r = 2; layer 1: w = 1.5, β = 3, e = 0.5, ε = 0.5; layer 2: w = 2, β = 1,
    #     e = 0.5, ε = 0.5.  δ₂ = 2·0.5 + 0.5 = 1.5, R₂ = 1.5·2 + 3 = 6,
    #     δ₃ = 2·1.5 + (6 + 1.5)·0.5 + 0.5 = 3 + 3.75 + 0.5 = 7.25.
    out.append((chain_case("2-3-2-signed-bias", [unit([3, 4]), unit([1, 2, 2]), unit([1, 1])], [1.5, 2.0],
                           [3.0, 1.0], [0.5, 0.5], [0.5, 0.5], 2.0, domain="signed", flip=True)[0], 7.25))
    return out


def real_check_cases() -> list[Case]:
    """The cases the mutant suite runs through check_case (the same as the real suite's)."""
    return [c for c, _ in fixed_cases()]
