"""The box-domain differential certificate (subsetsum_lth.certify_box) against exact maxima.

On small random pairs (f, ĝ) — 1 to 3 layers, a few inputs, ĝ given by LayerMaps with errors far
larger than a real ticket's, so the relaxations matter — the exact per-output extremes of f − ĝ
over the box are computed by a MILP (OR-Tools SCIP, big-M from interval bounds computed here,
the optimum re-evaluated on the networks, never taken from the solver's objective alone). The
certificate's per-output intervals must contain them, its ℓ2 bound must exceed the norm at every
MILP optimum and every attack point. Mutants (a term dropped, a slope wrong, the bound cut) are
patched into the module and must be caught by the same check.
"""
from __future__ import annotations

import functools
import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from subsetsum_lth import box_crown as crown
from subsetsum_lth import box_relax as relax
from subsetsum_lth import box_zonotope as zono
from subsetsum_lth import certify_box as cb
from subsetsum_lth.certify import CollapsedNet, LayerMap
from subsetsum_lth.errors import UserError
from subsetsum_lth.target import Layer, Target

pywraplp = pytest.importorskip("ortools.linear_solver.pywraplp")


# ----------------------------------------------------------------------------- cases

def make_case(seed: int, sizes, tau: float, lo: float, hi: float, exact_last: bool = False):
    rng = np.random.default_rng(seed)
    layers, maps = [], []
    for i, (p, q) in enumerate(zip(sizes[:-1], sizes[1:])):
        W = rng.standard_normal((q, p)) / np.sqrt(p)
        b = 0.5 * rng.standard_normal(q)
        layers.append(Layer(W, b))
        e = (lambda *s: 0 * rng.random(s)) if (exact_last and i == len(sizes) - 2) else (
            lambda *s: tau * (2 * rng.random(s) - 1))
        maps.append(LayerMap(W - e(q, p), W - e(q, p), b - e(q)))
    return Target(layers), maps, lo, hi


def hand_case(W1, b1, G1, c1, W2, G2, b2):
    """f = (W1, b1, W2, b2), ĝ = (G1, c1, G2, b2) on the box [0, 1]^p (cases where one relaxation
    of the zonotope is attained, so that cutting it is caught)."""
    A = lambda v: np.atleast_2d(np.asarray(v, dtype=np.float64))
    b = lambda v: np.asarray(v, dtype=np.float64)
    target = Target([Layer(A(W1), b(b1)), Layer(A(W2), b(b2))])
    maps = [LayerMap(A(G1), A(G1), b(c1)), LayerMap(A(G2), A(G2), b(b2))]
    return target, maps, 0.0, 1.0


CASES = {
    # f − ĝ = 0.3 σ(x − ½): the relu tube of σ on [−½, ½] is attained at x = 1
    "hand: relu tube attained": hand_case([[1.0]], [-0.5], [[1.0]], [-0.5], [[1.0]], [[0.7]], [0.0]),
    # f − ĝ = σ(x − ½) − σ(0.8x − ½): the clip tube is attained at x = 1
    "hand: clip tube attained": hand_case([[1.0]], [-0.5], [[0.8]], [-0.5], [[1.0]], [[1.0]], [0.0]),
    # D₁ − D₂ with d_j = 0.1(x_j + 1): 0.2 at x = (1, 0), where d₁ − d₂ is only 0.1
    "hand: cancelling units": hand_case(np.eye(2), [-0.5, -0.5], 0.9 * np.eye(2), [-0.6, -0.6],
                                        [[1.0, -1.0]], [[1.0, -1.0]], [0.0]),
    "2 layers, [0,1]": make_case(0, [3, 4, 2], 0.2, 0.0, 1.0),
    "2 layers, [-1,1]": make_case(1, [3, 5, 2], 0.2, -1.0, 1.0),
    "3 layers, [0,1]": make_case(2, [3, 4, 4, 2], 0.15, 0.0, 1.0),
    "3 layers, [-0.5,2]": make_case(3, [2, 4, 3, 3], 0.15, -0.5, 2.0),
    "2 layers, [-2,-0.5]": make_case(4, [3, 4, 2], 0.2, -2.0, -0.5),
    "2 layers, exact last layer": make_case(5, [4, 6, 3], 0.3, 0.0, 1.0, exact_last=True),
    "2 layers, wide": make_case(6, [4, 8, 1], 0.1, 0.0, 1.0),
    "1 layer, one output (tight)": make_case(7, [4, 1], 0.3, -1.0, 1.0),
    "1 layer, [0,1]": make_case(8, [3, 2], 0.3, 0.0, 1.0),
    "1 layer, one output, [0,1]": make_case(12, [4, 1], 0.3, 0.0, 1.0),
    "3 layers, small errors": make_case(9, [3, 5, 5, 2], 0.02, 0.0, 1.0),
    # three hidden layers: α-CROWN on the hidden bounds of layers 1 and 2 (BoxConfig.hidden_iters)
    "4 layers, [-1,1]": make_case(10, [3, 4, 4, 3, 2], 0.1, -1.0, 1.0),
}


# ----------------------------------------------------------------------------- the MILP

def _ibp(Ws, bs, lo, hi):
    """Interval bounds of every pre-activation (written here, independent of the package)."""
    out = []
    l, u = lo, hi
    for i, (W, b) in enumerate(zip(Ws, bs)):
        Wp, Wn = np.clip(W, 0, None), np.clip(W, None, 0)
        zl, zu = Wp @ l + Wn @ u + b, Wp @ u + Wn @ l + b
        out.append((zl, zu))
        l, u = np.maximum(zl, 0), np.maximum(zu, 0)
    return out


def _relu_var(s, z, l, u, name):
    if u <= 0:
        return 0
    if l >= 0:
        return z
    a = s.NumVar(0, float(u), name)
    dlt = s.BoolVar(name + "_on")
    s.Add(a >= z)
    s.Add(a <= z - float(l) * (1 - dlt))
    s.Add(a <= float(u) * dlt)
    return a


def _net_exprs(s, target_layers, maps, xs, lo, hi, tag):
    """Linear expressions of f's and ĝ's outputs on the MILP's input variables."""
    p = len(xs)
    # x = x⁺ + x⁻ exactly (x⁺ = relu(x)) for ĝ's first layer
    xp = [_relu_var(s, xs[j], lo[j], hi[j], f"{tag}xp{j}") for j in range(p)]
    xm = [xs[j] - xp[j] for j in range(p)]
    outs = []
    for which in ("f", "g"):
        h = None
        Ws = [L.weight for L in target_layers] if which == "f" else [M.w_plus for M in maps]
        bs = [L.bias for L in target_layers] if which == "f" else [M.bias for M in maps]
        if which == "f":
            bnd = _ibp(Ws, bs, lo, hi)
        else:   # ĝ's first layer on (x⁺, x⁻): bounds of its pre-activation from the pair
            W0 = np.hstack([maps[0].w_plus, maps[0].w_minus])
            l2 = np.concatenate([np.maximum(lo, 0), np.minimum(lo, 0)])
            h2 = np.concatenate([np.maximum(hi, 0), np.minimum(hi, 0)])
            bnd = _ibp([W0] + Ws[1:], bs, l2, h2)
        for i, (W, b) in enumerate(zip(Ws, bs)):
            q = W.shape[0]
            z = []
            for r in range(q):
                if i == 0 and which == "g":
                    e = sum(float(maps[0].w_plus[r, j]) * xp[j] + float(maps[0].w_minus[r, j]) * xm[j]
                            for j in range(p)) + float(b[r])
                elif i == 0:
                    e = sum(float(W[r, j]) * xs[j] for j in range(p)) + float(b[r])
                else:
                    e = sum(float(W[r, j]) * h[j] for j in range(W.shape[1])) + float(b[r])
                z.append(e)
            if i < len(Ws) - 1:
                zl, zu = bnd[i]
                h = [_relu_var(s, z[r], zl[r], zu[r], f"{tag}{which}{i}_{r}") for r in range(q)]
            else:
                outs.append(z)
    return outs


def _forward_pair(target, maps, x):
    xt = torch.as_tensor(np.atleast_2d(x), dtype=torch.float64)
    with torch.no_grad():
        return target.forward(xt).numpy(), CollapsedNet(maps)(xt).numpy()


def milp_extreme(target, maps, lo, hi, coef_f, coef_g):
    """max over the box of coef_f·f(x) + coef_g·ĝ(x): (value re-evaluated at the optimum, x*)."""
    s = pywraplp.Solver.CreateSolver("SCIP")
    p = target.sizes[0]
    lo = np.broadcast_to(np.asarray(lo, dtype=np.float64), (p,))
    hi = np.broadcast_to(np.asarray(hi, dtype=np.float64), (p,))
    xs = [s.NumVar(float(lo[j]), float(hi[j]), f"x{j}") for j in range(p)]
    fo, go = _net_exprs(s, target.layers, maps, xs, lo, hi, "n")
    s.Maximize(sum(float(c) * e for c, e in zip(coef_f, fo)) + sum(float(c) * e for c, e in zip(coef_g, go)))
    assert s.Solve() == pywraplp.Solver.OPTIMAL
    x = np.array([v.solution_value() for v in xs])
    f, g = _forward_pair(target, maps, x)
    val = float(np.dot(coef_f, f[0]) + np.dot(coef_g, g[0]))
    # the solver's claim, recomputed: the optimum it reports is the value at its point
    assert abs(val - s.Objective().Value()) <= 1e-6 * (1 + abs(val)), (val, s.Objective().Value())
    return val, x


@functools.lru_cache(maxsize=None)
def exact_extremes(name):
    """Per output k: exact max and min of (f − ĝ)_k over the box, and the optimal points."""
    target, maps, lo, hi = CASES[name]
    q = target.sizes[-1]
    mx, mn, pts = [], [], []
    for k in range(q):
        e = np.eye(q)[k]
        v, x = milp_extreme(target, maps, lo, hi, e, -e)
        mx.append(v)
        pts.append(x)
        v, x = milp_extreme(target, maps, lo, hi, -e, e)
        mn.append(-v)
        pts.append(x)
    return np.array(mx), np.array(mn), np.array(pts)


def norm_at(target, maps, x):
    f, g = _forward_pair(target, maps, x)
    return np.linalg.norm(f - g, axis=1)


@functools.lru_cache(maxsize=None)
def exact_norm_lower(name, directions: int = 10):
    """A lower bound on max over the box of ‖f − ĝ‖₂ that is close to it: the norm at the exact
    maximisers of c·(f − ĝ) (MILP) for the 2q axis directions and ``directions`` more unit vectors
    c (evenly spread on the circle for q = 2, seeded random for q > 2; q = 1: the axes are all)."""
    target, maps, lo, hi = CASES[name]
    q = target.sizes[-1]
    pts = [exact_extremes(name)[2]]
    if q > 1:
        if q == 2:
            ang = np.pi * (np.arange(directions) + 0.5) / directions
            C = np.stack([np.cos(ang), np.sin(ang)], 1)
            C = np.vstack([C, -C])
        else:
            C = np.random.default_rng(0).standard_normal((directions, q))
            C /= np.linalg.norm(C, axis=1, keepdims=True)
        pts.append(np.array([milp_extreme(target, maps, lo, hi, c, -c)[1] for c in C]))
    return float(norm_at(target, maps, np.vstack(pts)).max())


def check_case(name, iters=20):
    """Raises AssertionError('... > certified ...') when the certificate misses an exact value."""
    target, maps, lo, hi = CASES[name]
    mx, mn, pts = exact_extremes(name)
    cert = cb.box_certificate(target, maps, lo, hi, iters=iters)
    upper, lower = np.array(cert["upper"]), np.array(cert["lower"])
    tol = 1e-9
    assert np.all(upper >= mx - tol), f"{name}: exact max {mx} > certified upper {upper}"
    assert np.all(lower <= mn + tol), f"{name}: exact min {mn} < certified lower {lower}"
    exact_norm = exact_norm_lower(name)
    assert exact_norm <= cert["bound"] + tol, f"{name}: norm {exact_norm} > certified {cert['bound']}"
    assert exact_norm <= cert["bound_zonotope"] + tol, (
        f"{name}: norm {exact_norm} > certified (zonotope) {cert['bound_zonotope']}")
    return cert, mx, mn


# ----------------------------------------------------------------------------- soundness

@pytest.mark.parametrize("name", list(CASES))
def test_certificate_contains_exact_per_output_extremes(name):
    cert, mx, mn = check_case(name)
    assert np.isfinite(cert["bound"])
    # the interval ℓ2 bound is the ℓ2 of the per-output maxima; the bound is the smaller of it and
    # the zonotope's
    m = np.maximum(np.abs(cert["lower"]), np.abs(cert["upper"]))
    assert cert["bound_intervals"] >= np.sqrt((m ** 2).sum())
    assert cert["bound"] == min(cert["bound_intervals"], cert["bound_zonotope"])


def test_one_layer_one_output_is_exact():
    """f − ĝ = E x + e is linear: the per-output interval is exact, so the bound is attained."""
    name = "1 layer, one output (tight)"
    cert, mx, mn = check_case(name)
    assert cert["upper"][0] == pytest.approx(mx[0], rel=1e-9, abs=1e-12)
    assert cert["lower"][0] == pytest.approx(mn[0], rel=1e-9, abs=1e-12)
    assert cert["bound"] == pytest.approx(max(abs(mx[0]), abs(mn[0])), rel=1e-8)


def test_relaxation_is_much_tighter_than_intervals_on_small_errors():
    """Non-vacuous: with small errors the differential bound is far below the difference of
    separate interval bounds of f and ĝ (what bounding each network alone gives)."""
    name = "3 layers, small errors"
    target, maps, lo, hi = CASES[name]
    cert, mx, mn = check_case(name)
    Ws = [L.weight for L in target.layers]
    bs = [L.bias for L in target.layers]
    fl, fu = _ibp(Ws, bs, np.zeros(3), np.ones(3))[-1]
    gl, gu = _ibp([M.w_plus for M in maps], [M.bias for M in maps], np.zeros(3), np.ones(3))[-1]
    naive = np.sqrt((np.maximum(np.abs(fu - gl), np.abs(fl - gu)) ** 2).sum())
    assert cert["bound"] < 0.2 * naive
    exact = np.sqrt((np.maximum(np.abs(mx), np.abs(mn)) ** 2).sum())
    assert cert["bound"] < 3 * exact


def test_alpha_optimisation_never_loosens():
    for name in ("2 layers, [0,1]", "3 layers, [-0.5,2]"):
        target, maps, lo, hi = CASES[name]
        b0 = cb.box_certificate(target, maps, lo, hi, iters=0)
        b1 = cb.box_certificate(target, maps, lo, hi, iters=40)
        assert np.all(np.array(b1["upper"]) <= np.array(b0["upper"]) + 1e-12)
        assert np.all(np.array(b1["lower"]) >= np.array(b0["lower"]) - 1e-12)


@pytest.mark.parametrize("name", list(CASES))
def test_attack_stays_under_certificate_and_finds_the_exact_extremes(name):
    target, maps, lo, hi = CASES[name]
    cert = cb.box_certificate(target, maps, lo, hi, iters=20)
    att = cb.box_attack(target, maps, lo, hi, starts=cert["corners"], random_points=64, steps=60)
    assert att["empirical_bound"] <= cert["bound"]
    x = att["witness"]["x"]
    assert np.all(x >= lo) and np.all(x <= hi)
    assert norm_at(target, maps, x)[0] == pytest.approx(att["witness"]["error"], rel=1e-12)
    # the attack is strong on these tiny cases: it reaches the best MILP point's norm closely
    mx, mn, pts = exact_extremes(name)
    assert att["empirical_bound"] >= 0.9 * float(norm_at(target, maps, pts).max())


@settings(max_examples=25)
@given(st.integers(0, 10 ** 6), st.integers(1, 3), st.sampled_from([(0.0, 1.0), (-1.0, 1.0), (-0.3, 0.7)]))
def test_sampled_points_stay_under_certificate(seed, depth, box):
    sizes = [3] + [4] * (depth - 1) + [2]
    target, maps, lo, hi = make_case(seed, sizes, 0.2, *box)
    cert = cb.box_certificate(target, maps, lo, hi, iters=10)
    rng = np.random.default_rng(seed)
    X = np.vstack([lo + (hi - lo) * rng.random((512, 3)),
                   np.where(rng.random((512, 3)) < 0.5, lo, hi)])
    f, g = _forward_pair(target, maps, X)
    d = f - g
    assert np.all(d <= np.array(cert["upper"]) + 1e-9)
    assert np.all(d >= np.array(cert["lower"]) - 1e-9)
    assert np.linalg.norm(d, axis=1).max() <= cert["bound"]


# ----------------------------------------------------------------------------- local agreement

def _margin_min(net_layers, x0, rho, lo, hi, c, k):
    """min over the ℓ∞ ball ∩ box of out_c − out_k for one network (MILP)."""
    from subsetsum_lth.certify import LayerMap as LM
    t = Target([Layer(W, b) for W, b in net_layers])
    maps = [LM(W, W, b) for W, b in net_layers]
    q = t.sizes[-1]
    e = np.eye(q)
    blo, bhi = np.maximum(x0 - rho, lo), np.minimum(x0 + rho, hi)
    v, _ = milp_extreme(t, maps, blo, bhi, -(e[c] - e[k]), np.zeros(q))
    return -v


def test_local_agreement_is_sound_and_not_vacuous():
    target, maps, lo, hi = make_case(11, [4, 6, 3], 0.1, 0.0, 1.0)
    rng = np.random.default_rng(0)
    x = rng.random((30, 4))
    fl = [(L.weight, L.bias) for L in target.layers]
    gl = [(M.w_plus, M.bias) for M in maps]
    for rho in (0.02, 0.1):
        frac, mask = cb.local_agreement(target, maps, x, rho, lo, hi, return_mask=True)
        assert frac == pytest.approx(mask.mean())
        f, _ = _forward_pair(target, maps, x)
        for i in np.flatnonzero(mask):
            c = int(f[i].argmax())
            for k in range(3):
                if k != c:
                    assert _margin_min(fl, x[i], rho, lo, hi, c, k) > 0
                    assert _margin_min(gl, x[i], rho, lo, hi, c, k) > 0
    tiny = cb.local_agreement(target, maps, x, 1e-7, lo, hi)
    f, g = _forward_pair(target, maps, x)
    top2 = np.sort(f, 1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0] > 1e-3) & (f.argmax(1) == g.argmax(1))
    assert tiny >= clear.mean() - 1e-12 and clear.mean() > 0.3


def test_local_agreement_of_a_deep_mlp_in_passes_is_the_same(monkeypatch):
    """A chunk of images is cut into passes whose CROWN objectives fit a memory budget (a 4 × 1024
    MLP took ~8.6 GB for 500 images in one pass): one image per pass gives the same answer."""
    from subsetsum_lth import box_agreement
    target, maps, lo, hi = make_case(13, [5, 8, 8, 8, 3], 0.05, 0.0, 1.0)
    x = np.random.default_rng(1).random((40, 5))
    whole, m1 = cb.local_agreement(target, maps, x, 0.05, lo, hi, return_mask=True)
    calls = []
    real = box_agreement._hidden_bounds
    monkeypatch.setattr(box_agreement, "_hidden_bounds", lambda net, a, b, **kw: calls.append(len(a)) or real(net, a, b, **kw))
    monkeypatch.setattr(box_agreement, "AGREEMENT_PASS_BYTES", 1)
    passes, m2 = cb.local_agreement(target, maps, x, 0.05, lo, hi, return_mask=True)
    assert set(calls) == {1} and len(calls) == 2 * len(x)          # f and ĝ, one image at a time
    assert np.array_equal(m1, m2) and 0 < whole == passes < 1


def test_local_agreement_reads_the_balls_through_the_targets_input_op():
    """An outside audit: a target with an input op (Normalize(0.5, 0.05): the layers see 20x − 10)
    had its balls bounded on the raw pixels, and image 30 of this very setting was counted as
    certified at ρ = 0.02 while a point of its ball changes f's class (found by a MILP). The balls
    are now mapped through a ⊙ x + c: that point's image is not certified, and no certified image
    has a point found by random sampling or by descent on the margins that changes the class."""
    from subsetsum_lth import preprocess
    from subsetsum_lth.target import Layer
    from tests.helpers import assert_no_ball_point_changes_the_class
    rng = np.random.default_rng(0)
    base = Target([Layer(rng.standard_normal((6, 4)), rng.standard_normal(6) * 0.3),
                   Layer(rng.standard_normal((3, 6)), rng.standard_normal(3) * 0.3)])
    t = preprocess.attach(base, preprocess.Preprocessing.parse("0.5,0.05"))
    maps = [LayerMap(L.weight.copy(), L.weight.copy(), L.bias.copy()) for L in t.layers]     # ĝ = f
    x = rng.random((200, 4))
    frac, mask = cb.local_agreement(t, maps, x, 0.02, 0.0, 1.0, return_mask=True)
    witness = torch.tensor([[0.99995, 0.29614, 0.16291, 0.86030]], dtype=torch.float64)
    assert np.abs(witness.numpy() - x[30]).max() <= 0.02
    assert int(t.forward(witness).argmax()) != int(t.forward(torch.as_tensor(x[30:31])).argmax())
    assert not mask[30] and 0.2 < frac < 1
    assert_no_ball_point_changes_the_class(t, maps, x, 0.02, mask, np.random.default_rng(2), ascent=20)


def test_local_agreement_refuses_bad_radius():
    target, maps, lo, hi = CASES["2 layers, [0,1]"]
    with pytest.raises(UserError, match="--local-radius"):
        cb.local_agreement(target, maps, np.zeros((1, 3)), float("nan"))


# ----------------------------------------------------------------------------- the ℓ2 bound of a zonotope

def _brute_max_norm(G):
    n = G.shape[1]
    S = np.array(np.meshgrid(*[[-1.0, 1.0]] * n)).reshape(n, -1)
    return float(np.linalg.norm(G @ S, axis=0).max())


@settings(max_examples=40)
@given(st.integers(0, 10 ** 6), st.integers(1, 4), st.integers(1, 12))
def test_psd_l2_bound_is_sound_and_within_nesterov_factor(seed, q, n):
    """max over s ∈ {−1, 1}^n of ‖Gs‖ (brute force) <= the bound <= √(π/2) × it (Nesterov's π/2
    theorem bounds the semidefinite relaxation of a PSD form; 2% for the iterative dual)."""
    rng = np.random.default_rng(seed)
    G = rng.standard_normal((q, n)) * rng.random(n) ** 3
    exact = _brute_max_norm(G)
    bound, d, _ = cb.psd_l2_bound(torch.as_tensor(G), 300)
    assert bound >= exact * (1 - 1e-12)
    assert bound <= np.sqrt(np.pi / 2) * exact * 1.02 + 1e-12


def test_psd_l2_bound_beats_the_per_coordinate_bound_on_spread_generators():
    """Generators in many directions: ‖Gs‖ never has every coordinate at its maximum, and the
    bound knows it (the ℓ2 of per-coordinate maxima is √q too large for a round zonotope)."""
    rng = np.random.default_rng(0)
    G = rng.standard_normal((10, 400))
    per_coordinate = float(np.linalg.norm(np.abs(G).sum(1)))
    bound, _, _ = cb.psd_l2_bound(torch.as_tensor(G))
    assert bound < 0.5 * per_coordinate


def test_zonotope_is_exact_for_one_linear_layer():
    """f − ĝ = E x + e on a non-negative box is a zonotope; one output: its max |·| is the bound.
    (On a box with both signs ĝ's first layer acts on (x⁺, x⁻), which the zonotope takes from
    their product box: sound, not exact.)"""
    name = "1 layer, one output, [0,1]"
    cert, mx, mn = check_case(name)
    assert cert["bound_zonotope"] == pytest.approx(max(abs(mx[0]), abs(mn[0])), rel=1e-8)


def test_refined_zonotope_is_exact_where_the_abs_form_is_attained():
    """f − ĝ = 0.3 σ(x − ½) on [0, 1]: σ(z') = z'/2 + |z'|/2 with |z'| <= ½|ξ| is exact, so the
    refined bound is the true maximum 0.15 (the plain zonotope's is larger)."""
    target, maps, lo, hi = CASES["hand: relu tube attained"]
    cert = cb.box_certificate(target, maps, lo, hi, iters=10)
    assert cert["bound_zonotope"] == pytest.approx(0.15, rel=1e-3)
    assert cert["bound_zonotope"] >= 0.15


def test_zonotope_bound_wins_on_many_outputs():
    """Ten outputs with independent errors: the zonotope keeps their correlation, the ℓ2 of the
    per-output intervals cannot."""
    target, maps, lo, hi = make_case(11, [6, 12, 10], 0.05, 0.0, 1.0)
    cert = cb.box_certificate(target, maps, lo, hi, iters=10)
    assert cert["l2_from"] == "zonotope"
    assert cert["bound_zonotope"] < 0.8 * cert["bound_intervals"]


# ----------------------------------------------------------------------------- mutants

def _mut_l2(lower, upper):
    return 0.9 * cb_l2(lower, upper)


def _mut_clip(dl, du):
    ls, lb, us, ub = cb_clip(dl, du)
    return ls, lb, us * 0.5, ub          # upper chord of max(d, 0) with the wrong slope


def _mut_clip_lower_bias(dl, du):
    ls, lb, us, ub = cb_clip(dl, du)
    return ls, torch.zeros_like(lb), us, ub


def _mut_relu_chord(l, u, alpha):
    ls, s, sb = cb_relu(l, u, alpha)
    return ls, s, torch.zeros_like(sb)   # chord bias −s·l dropped


def _mut_relu_alpha(l, u, alpha):
    ls, s, sb = cb_relu(l, u, alpha)
    uns = (l < 0) & (u > 0)
    return torch.where(uns, 1.5 * torch.ones_like(ls), ls), s, sb   # lower slope outside [0, 1]


def _mut_no_d(b, af, ag, th_u, th_l):
    z = torch.zeros_like(b.l)
    return (z, z, z), (z, z, z)          # the W·D term dropped


def _mut_first_layer(net, Xlo, Xhi):
    b = cb_first(net, Xlo, Xhi)
    ends = [(b.l, b.u), (b.dl, b.du), (b.lf, b.uf)]
    half = [((3 * lo + hi) / 4, (lo + 3 * hi) / 4) for lo, hi in ends]   # every interval's radius halved
    return cb.Bounds(*half[0], *half[1], *half[2])


def _mut_diff_net(target, maps, split="plus"):
    net = cb_diff(target, maps, split)
    net.wg[-1], net.bg[-1] = net.wf[-1], net.bf[-1]                  # last layer's E, e dropped
    return net


def _mut_sep_planes(b, af, ag, th_u, th_l):
    lo, up = cb_dplanes(b, af, ag, th_u, th_l)
    return lo, (up[0], up[1], up[2] - 0.5 * th_u * cb_relu(b.lf, b.uf, af)[2])   # part of U_f's bias dropped


cb_l2, cb_clip, cb_relu, cb_first, cb_diff, cb_dplanes = (cb.l2_of_intervals, relax.clip_planes, relax.relu_planes,
                                                          crown._first_layer_bounds, cb.diff_net, relax.d_planes)
cb_psd, cb_rtube, cb_dtube, cb_zono, cb_lmax = (cb.psd_l2_bound, zono._relu_tube, zono._d_tube, zono._zonotope,
                                                 zono._lmax)


def _mut_psd(G, iters=200, Y=None):
    bound, d, Y = cb_psd(G, iters, Y)
    return 0.9 * bound, d, Y


def _mut_psd_sum(G, iters=200, Y=None):
    G = G[:, G.abs().sum(0) > 0]       # "triangle inequality" written wrongly: ℓ2 of the column sums
    return float(G.sum(1).norm()), None, torch.eye(G.shape[0], dtype=G.dtype) / G.shape[0]


def _mut_rtube(l, u, slope):
    lam, c, r = cb_rtube(l, u, slope)
    return lam, c, 0.5 * r


def _mut_rtube_centre(l, u, slope):
    lam, c, r = cb_rtube(l, u, slope)
    return lam, torch.zeros_like(c), r


def _mut_dtube(b, slope):
    kap, c, r = cb_dtube(b, slope)
    return kap, c, 0.5 * r


def _mut_dtube_stable(b, slope):
    kap, c, r = cb_dtube(b, slope)      # every unit treated as active in both networks: D = d
    return torch.ones_like(kap), torch.zeros_like(c), torch.zeros_like(r)


def _mut_zono_centre(net, bounds, Xlo, Xhi, refine=True):
    z = cb_zono(net, bounds, Xlo, Xhi, refine)
    return cb.Zonotope(torch.zeros_like(z.c), z.G, z.groups)


def _mut_zono_group_z(net, bounds, Xlo, Xhi, refine=True):
    z = cb_zono(net, bounds, Xlo, Xhi, refine)          # |s| <= ½|Z·(1, s')| claimed
    return cb.Zonotope(z.c, z.G, [(cols, 0.5 * Z) for cols, Z in z.groups])


def _mut_zono_group_cols(net, bounds, Xlo, Xhi, refine=True):
    z = cb_zono(net, bounds, Xlo, Xhi, refine)          # the |·| residuals' columns halved
    G = z.G.clone()
    for cols, _ in z.groups:
        G[:, cols] *= 0.5
    return cb.Zonotope(z.c, G, z.groups)


def _mut_lmax(M):
    return 0.8 * cb_lmax(M)


def _mut_hidden_alpha(net, bounds, k, lam_z, lam_d, Xlo, Xhi, iters, lr, deadline, splits=()):
    v, cX, done = cb_optimise(net, bounds, k, lam_z, lam_d, Xlo, Xhi, iters, lr, deadline, splits)
    return v + 0.25 * v.abs(), cX, done     # the hidden layers' optimised bounds cut by a quarter


cb_optimise = crown._optimise

MUTANTS = {
    "bound x 0.9": (cb, "l2_of_intervals", _mut_l2),
    "clip upper chord slope halved": (relax, "clip_planes", _mut_clip),
    "clip lower bias dropped": (relax, "clip_planes", _mut_clip_lower_bias),
    "relu upper chord bias dropped": (relax, "relu_planes", _mut_relu_chord),
    "relu lower slope 1.5": (relax, "relu_planes", _mut_relu_alpha),
    "D term dropped": (relax, "d_planes", _mut_no_d),
    "first-layer interval radius halved": (crown, "_first_layer_bounds", _mut_first_layer),
    "last layer's error dropped": (cb, "diff_net", _mut_diff_net),
    "separate plane bias cut": (relax, "d_planes", _mut_sep_planes),
    "zonotope: psd bound x 0.9": (zono, "psd_l2_bound", _mut_psd),
    "zonotope: norm of the generators' sum": (zono, "psd_l2_bound", _mut_psd_sum),
    "zonotope: relu tube radius halved": (zono, "_relu_tube", _mut_rtube),
    "zonotope: relu tube centre dropped": (zono, "_relu_tube", _mut_rtube_centre),
    "zonotope: D tube radius halved": (zono, "_d_tube", _mut_dtube),
    "zonotope: D = d everywhere": (zono, "_d_tube", _mut_dtube_stable),
    "zonotope: centre dropped": (zono, "_zonotope", _mut_zono_centre),
    "refined: |.| residual bound halved": (zono, "_zonotope", _mut_zono_group_z),
    "refined: |.| residual columns halved": (zono, "_zonotope", _mut_zono_group_cols),
    "refined: lambda_max underestimated": (zono, "_lmax", _mut_lmax),
    # box_crown._optimise as the hidden layers' bounds call it (certify_box keeps its own name)
    "hidden alpha: bounds cut by a quarter": (crown, "_optimise", _mut_hidden_alpha),
}


@pytest.mark.parametrize("mutant", list(MUTANTS))
def test_mutant_is_killed(monkeypatch, mutant):
    for name in CASES:          # the exact values are computed before any patching
        exact_extremes(name)
        exact_norm_lower(name)
    module, attr, fn = MUTANTS[mutant]      # patched where its callers look it up
    monkeypatch.setattr(module, attr, fn)
    killed = []
    for name in CASES:
        for iters in (0, 20):
            try:
                check_case(name, iters=iters)
            except AssertionError as exc:
                assert "certified" in str(exc), exc
                killed.append(name)
    assert killed, f"mutant {mutant!r} survived every exact check"


def test_identity_patch_kills_nothing(monkeypatch):
    monkeypatch.setattr(relax, "clip_planes", lambda dl, du: cb_clip(dl, du))
    monkeypatch.setattr(relax, "relu_planes", lambda l, u, a: cb_relu(l, u, a))
    monkeypatch.setattr(zono, "_relu_tube", lambda l, u, s: cb_rtube(l, u, s))
    monkeypatch.setattr(zono, "_d_tube", lambda b, s: cb_dtube(b, s))
    for name in CASES:
        check_case(name, iters=0)
        check_case(name, iters=20)


# ----------------------------------------------------------------------------- inputs and the CLI

@pytest.mark.parametrize("text", ["1,0", "0", "a,b", "0,inf", "nan,1", "0,1,2"])
def test_parse_box_refuses(text):
    with pytest.raises(UserError, match="--input-box"):
        cb.parse_box(text)


def test_parse_box_accepts():
    assert cb.parse_box("-0.5,2") == (-0.5, 2.0)


def test_box_config_refuses_local_radius_on_signed_box():
    with pytest.raises(UserError, match="--local-radius"):
        cb.BoxConfig(-1.0, 1.0, local_radii=(0.01,))


@pytest.fixture
def small_target(tmp_path):
    from torch import nn
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    path = tmp_path / "target.pt"
    torch.save(m.state_dict(), path)
    return path


def _approx(target, out, *extra):
    from subsetsum_lth.cli import main
    return main(["approximate", "--target", str(target), "--out", str(out), "--solver", "mitm",
                 "--block-width", "30", "--no-progress", "--no-plots", "--samples", "64", "--steps", "20",
                 "--workers", "1", *extra])


def test_cli_box_run_and_certify_recompute(small_target, tmp_path, capsys):
    from subsetsum_lth.cli import main
    out = tmp_path / "run"
    assert _approx(small_target, out, "--weight-eps", "0.02", "--input-domain", "box",
                   "--input-box=-0.5,1") == 0
    assert "box [-0.5, 1]: certified" in capsys.readouterr().out
    rep = json.loads((out / "report.json").read_text())
    bc = rep["box_certificate"]
    assert bc["box"] == [-0.5, 1.0] and bc["empirical_bound"] <= bc["bound"]
    assert bc["ratio"] == pytest.approx(bc["bound"] / bc["empirical_bound"])
    assert rep["input_domain"] == "signed" and "certified_bound" in rep   # the ball keys stay
    assert (out / cb.BOX_WITNESS).exists()
    assert cb.BOX_WITNESS in json.loads((out / "manifest.json").read_text())["files"]
    assert main(["certify", str(out), "--json", "--samples", "32", "--steps", "5"]) == 0
    res = json.loads(capsys.readouterr().out)
    rb = res["box_certificate"]
    assert rb["matches_report"] is True
    assert rb["witness"]["matches_report"] is True and rb["witness"]["error"] <= rb["bound"]
    # another box on request; the stored witness is not for it
    assert main(["certify", str(out), "--json", "--input-domain", "box", "--input-box", "0,1",
                 "--bab-seconds", "1"]) == 0
    rb2 = json.loads(capsys.readouterr().out)["box_certificate"]
    assert rb2["box"] == [0.0, 1.0] and "witness" not in rb2 and rb2["bound"] <= rb["bound"] + 1e-12
    assert "branch and bound 1 s" in rb2["method"]


class _SlowClock:
    """A machine so loaded that every look at the clock finds 1,000 s gone: any time budget is
    spent before the optimisers' first iteration."""

    def __init__(self):
        import time
        self.t, self.real = 0.0, time

    def perf_counter(self):
        self.t += 1000.0
        return self.t

    def __getattr__(self, name):
        return getattr(self.real, name)


def test_certify_replays_the_recorded_iterations_on_a_loaded_machine(small_target, tmp_path, capsys, monkeypatch):
    """approximate's box certificate optimises within a time budget; certify must reproduce its
    bound on a machine where that budget buys no iteration at all (CI on 2 busy cores): it replays
    the recorded iteration counts with no budget. Counts that are not whole numbers in range are
    refused in one line; counts made smaller give another bound, which certify reports."""
    from subsetsum_lth import box_net
    from subsetsum_lth.cli import main
    out = tmp_path / "run"
    assert _approx(small_target, out, "--weight-eps", "0.02", "--input-domain", "box", "--input-box", "0,1") == 0
    bc = json.loads((out / "report.json").read_text())["box_certificate"]
    assert bc["alpha_iterations"] == 60 and bc["zonotope_iterations"] >= 1
    clock = _SlowClock()
    for mod in (cb, crown, zono, box_net):
        monkeypatch.setattr(mod, "time", clock)
    capsys.readouterr()
    assert main(["certify", str(out), "--json", "--samples", "8", "--steps", "2"]) == 0
    rb = json.loads(capsys.readouterr().out)["box_certificate"]
    assert rb["matches_report"] is True and rb["bound"] == pytest.approx(bc["bound"], rel=1e-9)
    assert (rb["alpha_iterations"], rb["zonotope_iterations"]) == (bc["alpha_iterations"], bc["zonotope_iterations"])
    monkeypatch.undo()
    rep = json.loads((out / "report.json").read_text())
    for bad in (10 ** 9, -1, 2.5, "60", True):
        edited = json.loads(json.dumps(rep))
        edited["box_certificate"]["alpha_iterations"] = bad
        (out / "report.json").write_text(json.dumps(edited))
        assert main(["certify", str(out)]) == 2
        err = capsys.readouterr().err
        assert "box_certificate.alpha_iterations must be a whole number" in err and len(err.strip().splitlines()) == 1
    edited = json.loads(json.dumps(rep))
    edited["box_certificate"].update(alpha_iterations=0, zonotope_iterations=0)
    (out / "report.json").write_text(json.dumps(edited))
    rc = main(["certify", str(out), "--json"])
    rb0 = json.loads(capsys.readouterr().out)["box_certificate"]
    if rb0["bound"] != pytest.approx(bc["bound"], rel=1e-6):      # the optimisers had improved it
        assert rc != 0 and rb0["matches_report"] is False


def test_hidden_alpha_tightens_a_deep_mlp_and_its_cost_rule_reads_shapes_only():
    """α-CROWN on the hidden layers' bounds (soundness: the exact cases above, '4 layers' among
    them, and the mutant that cuts them): on a deep MLP over [−1, 1] it tightens the certificate;
    it runs only where the shapes say it is affordable, the same decision on every machine."""
    target, maps, lo, hi = make_case(11, [8, 12, 12, 12, 3], 0.05, -1.0, 1.0)
    plain = cb.box_certificate(target, maps, lo, hi, iters=20, time_budget=None, hidden_iters=0)
    tight = cb.box_certificate(target, maps, lo, hi, iters=20, time_budget=None, hidden_iters=20)
    assert (plain["hidden_alpha_iterations"], tight["hidden_alpha_iterations"]) == (0, 20)
    assert tight["bound_intervals"] < 0.99 * plain["bound_intervals"], (tight["bound_intervals"],
                                                                       plain["bound_intervals"])
    assert tight["bound"] <= plain["bound"] * (1 + 1e-12)
    att = cb.box_attack(target, maps, lo, hi, steps=40)
    assert att["empirical_bound"] <= tight["bound"]

    def shapes(*sizes):
        w = [torch.empty(q, p) for p, q in zip(sizes[:-1], sizes[1:])]
        return crown.DiffNet(w, [], w, [], "both")
    assert crown.hidden_alpha_iterations(shapes(1568, 64, 64, 64, 64, 10), 20) == 20
    assert crown.hidden_alpha_iterations(shapes(1568, 1024, 1024, 1024, 1024, 10), 20) == 0
    assert crown.hidden_alpha_iterations(shapes(1568, 500, 10), 20) == 0      # no hidden layer to optimise


def test_certify_replays_the_hidden_alpha_count(tmp_path, capsys):
    """report.json records how many hidden-layer α iterations the run took; certify replays that
    count (a report from before it was recorded: none), refuses a count out of range, and says
    when a count edited to 0 gives another bound."""
    from torch import nn

    from subsetsum_lth.cli import main
    torch.manual_seed(1)
    m = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 6), nn.ReLU(),
                      nn.Linear(6, 2))
    torch.save(m.state_dict(), tmp_path / "deep.pt")
    out = tmp_path / "run"
    assert _approx(tmp_path / "deep.pt", out, "--weight-eps", "0.05", "--input-domain", "box",
                   "--input-box=-1,1") == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["box_certificate"]["hidden_alpha_iterations"] == 20
    capsys.readouterr()
    assert main(["certify", str(out), "--json", "--samples", "8", "--steps", "2"]) == 0
    assert json.loads(capsys.readouterr().out)["box_certificate"]["matches_report"] is True
    for bad in (-1, 10 ** 9, "20", None):
        edited = json.loads(json.dumps(rep))
        edited["box_certificate"]["hidden_alpha_iterations"] = bad
        (out / "report.json").write_text(json.dumps(edited))
        assert main(["certify", str(out)]) == 2
        err = capsys.readouterr().err
        assert "box_certificate.hidden_alpha_iterations must be a whole number" in err, err
    edited = json.loads(json.dumps(rep))
    edited["box_certificate"]["hidden_alpha_iterations"] = 0
    (out / "report.json").write_text(json.dumps(edited))
    rc = main(["certify", str(out), "--json"])
    rb0 = json.loads(capsys.readouterr().out)["box_certificate"]
    assert rb0["hidden_alpha_iterations"] == 0
    if rb0["bound"] != pytest.approx(rep["box_certificate"]["bound"], rel=1e-6):
        assert rc != 0 and rb0["matches_report"] is False
    del edited["box_certificate"]["hidden_alpha_iterations"]          # a report from before the count
    (out / "report.json").write_text(json.dumps(edited))
    main(["certify", str(out), "--json"])
    assert json.loads(capsys.readouterr().out)["box_certificate"]["hidden_alpha_iterations"] == 0


@pytest.mark.parametrize("w, b, w2, b2, lo, hi", [
    (48.42477981115863, -1.2964804219148105, 48.424739227755666, 11294.926325770362,
     278345874.94662845, 278345874.9477395),
    (-0.9032628262035356, -0.37595727770164, -0.9032635587016964, 99403161.16723481,
     135704315537784.11, 135704315537785.11)])
def test_the_bound_covers_float64_rounding_where_the_terms_dwarf_the_difference(w, b, w2, b2, lo, hi):
    """An outside audit's cases: one weight, inputs ~1e8 and ~1e14, f − ĝ = E x + e about 1e-12 of
    the terms summed; the exact supremum (rational arithmetic on the float64 numbers) exceeded the
    bound widened by 1e-9 relative. The per-output intervals and the bound now carry a rounding
    slack from the terms' magnitudes (box_net.rounding_slack)."""
    from fractions import Fraction as Fr

    from subsetsum_lth.target import Layer
    t = Target([Layer(np.array([[w]]), np.array([b]))])
    maps = [LayerMap(np.array([[w2]]), np.array([[w2]]), np.array([b2]))]
    cert = cb.box_certificate(t, maps, lo, hi, time_budget=None)
    exact = [(Fr(w) - Fr(w2)) * Fr(x) + Fr(b) - Fr(b2) for x in (lo, hi)]
    assert Fr(cert["upper"][0]) >= max(exact) and Fr(cert["lower"][0]) <= min(exact)
    assert Fr(cert["bound"]) >= max(abs(v) for v in exact)


def test_the_rounding_slack_is_negligible_on_a_pixel_box():
    target, maps, lo, hi = make_case(13, [784, 64, 64, 10], 0.01, 0.0, 1.0)
    from subsetsum_lth.box_net import rounding_slack
    s = rounding_slack(target, maps, lo, hi)
    assert s.shape == (10,) and np.all(s > 0) and np.all(s < 1e-9)


def test_cli_eps_mode_is_checked_on_the_box(small_target, tmp_path):
    out = tmp_path / "run"
    assert _approx(small_target, out, "--eps", "0.05", "--input-domain", "box", "--input-box", "0,1",
                   "--input-radius", "1000") == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["certified_ok"] is True
    assert rep["certified_bound"] > 0.05          # the ball's bound (radius 1000) is not what --eps checks
    assert rep["box_certificate"]["bound"] <= 0.05
    assert rep["rounds"][-1]["certified_bound"] == pytest.approx(rep["box_certificate"]["bound"], rel=1e-6)
    # --resume of the finished run: recognised as complete (its box bound recomputed), nothing redone
    assert _approx(small_target, out, "--eps", "0.05", "--input-domain", "box", "--input-box", "0,1",
                   "--input-radius", "1000", "--resume") == 0
    assert json.loads((out / "report.json").read_text())["wall_seconds"] == rep["wall_seconds"]


@pytest.mark.parametrize("args,match", [
    (["--input-box", "0,1"], "need --input-domain box"),
    (["--bab-seconds", "5"], "need --input-domain box"),
    (["--input-domain", "box"], "needs --input-box"),
    (["--input-domain", "box", "--input-box", "1,0"], "LO < HI"),
    (["--input-domain", "box", "--input-box", "0,1", "--local-radius", "0.1"], "needs test images"),
])
def test_cli_box_refusals(small_target, tmp_path, capsys, args, match):
    rc = _approx(small_target, tmp_path / "o", *args)
    assert rc != 0
    assert match in capsys.readouterr().err


# ----------------------------------------------------------------------------- branch and bound

BAB_CASES = ["2 layers, [-1,1]", "3 layers, [0,1]", "2 layers, exact last layer"]


def check_case_bab(name):
    """Branch and bound stopped by its domain count (6 per objective), not by the clock."""
    target, maps, lo, hi = CASES[name]
    mx, mn, _ = exact_extremes(name)
    cert = cb.box_certificate(target, maps, lo, hi, iters=10, bab_seconds=600, bab_domains=6)
    up, low = np.array(cert["upper"]), np.array(cert["lower"])
    assert np.all(up >= mx - 1e-9), f"{name}: exact max {mx} > certified upper {up} (branch and bound)"
    assert np.all(low <= mn + 1e-9), f"{name}: exact min {mn} < certified lower {low} (branch and bound)"
    return cert


def test_branch_and_bound_is_sound_never_looser_and_tightens():
    gains = []
    for name in BAB_CASES:
        target, maps, lo, hi = CASES[name]
        plain = cb.box_certificate(target, maps, lo, hi, iters=10)
        bab = check_case_bab(name)
        assert bab["bound"] <= plain["bound"] + 1e-12
        gains.append(plain["bound"] - bab["bound"])
    assert max(gains) > 0.01, gains      # not vacuous: it does cut the bound somewhere


def _mut_beta_sign(net, cX, const, splits, beta):
    return cb_beta(net, cX, const, [(j, -s, g) for j, s, g in splits], beta)


def _mut_split_side(b, j, active, of_g=True):
    return cb_split(b, j, not active, of_g)   # the child gets the other side's bounds


cb_beta, cb_split = crown._beta_term, crown._split
BAB_MUTANTS = {"beta sign flipped": (crown, "_beta_term", _mut_beta_sign),
               "split bounds on the wrong side": (crown, "_split", _mut_split_side)}


@pytest.mark.parametrize("mutant", list(BAB_MUTANTS))
def test_branch_and_bound_mutant_is_killed(monkeypatch, mutant):
    for name in BAB_CASES:
        exact_extremes(name)
    module, attr, fn = BAB_MUTANTS[mutant]
    monkeypatch.setattr(module, attr, fn)
    killed = []
    for name in BAB_CASES:
        try:
            check_case_bab(name)
        except AssertionError as exc:
            assert "certified" in str(exc), exc
            killed.append(name)
    assert killed, f"mutant {mutant!r} survived"
