"""The certificate against hand-computed values and against targets where it is attained.

Any bound cut by more than 10% (a dropped ‖W‖ factor, η(R) for η(R + δ), a dropped ‖b‖ or ‖e_b‖,
E⁻ left out of [E⁺ E⁻], a bound × 0.9) fails here: the attained family is checked with this
suite's own attack (tests.tight_cases.check_case), which reaches ≥ 90% of the certified bound.
tests/test_certificate_mutants.py proves it by applying each of those mutants.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from subsetsum_lth.approximate import ApproximateConfig, approximate
from subsetsum_lth.certify import LayerMap, certified_bound, compose, layer_maps
from subsetsum_lth.construction import ConstructionConfig
from subsetsum_lth.solve import SolveConfig
from subsetsum_lth.target import Layer, Target
from tests.helpers import ascend, probe_points, rebuild_g
from tests.tight_cases import chain_case, check_case, f_numpy, fixed_cases, realise, sequential

SLACK = 1e-9   # certify.NUMERIC_SLACK: the bound is δ·(1 + 1e-9)


# --- the recursion, by hand ------------------------------------------------------------------

def _diag_case():
    """Depth 2, two inputs. Every norm is readable by eye (diagonal / permuted-diagonal).

    Layer 1: W₁ = diag(3, 1) → ‖W₁‖ = 3; b₁ = (0, 4) → ‖b₁‖ = 4;
             Ŵ₁⁺ = diag(3, 1.5) → E⁺ = diag(0, −0.5);  Ŵ₁⁻ = diag(1.8, 1) → E⁻ = diag(1.2, 0);
             b̂₁ = (−0.3, 3.6) → e_b = (0.3, 0.4), ‖e_b‖ = 0.5.
             [E⁺ E⁻] = [[0, 0, 1.2, 0], [0, −0.5, 0, 0]]: orthogonal rows → ‖·‖ = 1.2; ‖E⁺‖ = 0.5.
    Layer 2: W₂ = diag(2, 0.5) → ‖W₂‖ = 2; no bias;
             E₂ = [[0, 0.15], [0.2, 0]] → ‖E₂‖ = 0.2 (singular values 0.2, 0.15); b̂₂ = 0.
    """
    W1, b1 = np.diag([3.0, 1.0]), np.array([0.0, 4.0])
    W2 = np.diag([2.0, 0.5])
    E2 = np.array([[0.0, 0.15], [0.2, 0.0]])
    t = Target([Layer(W1, b1), Layer(W2, None)])
    maps = [LayerMap(np.diag([3.0, 1.5]), np.diag([1.8, 1.0]), np.array([-0.3, 3.6])),
            LayerMap(W2 - E2, np.zeros((2, 2)), np.zeros(2))]
    return t, maps


def test_recursion_hand_values_signed():
    t, maps = _diag_case()
    c = certified_bound(t, maps, 2.0, "signed")
    # R₁ = 2, δ₁ = 0; η₁ = (2 + 0)·1.2 + 0.5 = 2.9; δ₂ = 3·0 + 2.9 = 2.9; R₂ = 3·2 + 4 = 10
    # η₂ = (10 + 2.9)·0.2 + 0 = 2.58;  δ₃ = 2·2.9 + 2.58 = 8.38
    assert c.bound == pytest.approx(8.38 * (1 + SLACK), rel=1e-12)
    L0, L1 = c.layers
    assert (L0["weight_spectral_norm"], L0["error_spectral_norm"], L0["bias_error_norm"]) == \
        pytest.approx((3.0, 1.2, 0.5), rel=1e-12)
    assert (L0["radius_in"], L0["bound_in"], L0["bound_out"]) == pytest.approx((2.0, 0.0, 2.9), rel=1e-12)
    assert (L1["weight_spectral_norm"], L1["error_spectral_norm"], L1["bias_error_norm"]) == \
        pytest.approx((2.0, 0.2, 0.0), rel=1e-12, abs=1e-15)
    assert (L1["radius_in"], L1["bound_in"], L1["bound_out"]) == pytest.approx((10.0, 2.9, 8.38), rel=1e-12)
    assert L0["max_weight_error"] == pytest.approx(1.2) and L0["max_bias_error"] == pytest.approx(0.4)


def test_recursion_hand_values_nonnegative():
    t, maps = _diag_case()
    c = certified_bound(t, maps, 2.0, "nonnegative")
    # E⁻ is not used for non-negative inputs: ‖E⁺‖ = 0.5
    # η₁ = 2·0.5 + 0.5 = 1.5; δ₂ = 1.5; R₂ = 10; η₂ = (10 + 1.5)·0.2 = 2.3; δ₃ = 2·1.5 + 2.3 = 5.3
    assert c.bound == pytest.approx(5.3 * (1 + SLACK), rel=1e-12)
    assert [L["bound_out"] for L in c.layers] == pytest.approx([1.5, 5.3], rel=1e-12)


def test_error_matrix_is_the_joint_norm_of_both_halves():
    """E⁺ = [[0.3]], E⁻ = [[0.4]] on the same input: ‖[E⁺ E⁻]‖ = √(0.09 + 0.16) = 0.5 (not the
    max 0.4, not the sum 0.7). With r = 3 and no bias the bound is 3·0.5 = 1.5."""
    t = Target([Layer(np.array([[1.0]]), None)])
    m = LayerMap(np.array([[0.7]]), np.array([[0.6]]), np.zeros(1))
    assert certified_bound(t, [m], 3.0, "signed").bound == pytest.approx(1.5 * (1 + SLACK), rel=1e-12)
    assert certified_bound(t, [m], 3.0, "nonnegative").bound == pytest.approx(0.9 * (1 + SLACK), rel=1e-12)


def test_compose_hand_values():
    # three layers, r = 1:
    # i=1: nW=2, nE=0.1, neb=0.2, nb=1: η = (1+0)·0.1 + 0.2 = 0.3; δ₂ = 0.3; R₂ = 2·1 + 1 = 3
    # i=2: nW=3, nE=0.5, neb=0,   nb=0: η = (3+0.3)·0.5 = 1.65; δ₃ = 3·0.3 + 1.65 = 2.55; R₃ = 9
    # i=3: nW=0.5, nE=0, neb=1,   nb=2: η = 1; δ₄ = 0.5·2.55 + 1 = 2.275; R₄ = 4.5 + 2 = 6.5
    radii, ins, outs = compose([2, 3, 0.5], [0.1, 0.5, 0], [0.2, 0, 1], [1, 0, 2], 1.0)
    assert radii == pytest.approx([1, 3, 9], rel=1e-12)
    assert ins == pytest.approx([0, 0.3, 2.55], rel=1e-12)
    assert outs == pytest.approx([0.3, 2.55, 2.275], rel=1e-12)


def test_realised_network_has_the_chosen_layer_maps():
    """The realisation used below is what it claims: layer_maps of it gives back (Ŵ⁺, Ŵ⁻, b̂),
    and the Sequential built from it equals Ŵ⁺x⁺ + Ŵ⁻x⁻ + b̂ on random signed inputs."""
    for case, _ in fixed_cases():
        state, masks = realise(case)
        maps = layer_maps(state, masks, case.target.depth)
        for i, M in enumerate(maps):
            assert np.array_equal(M.w_plus, case.w_plus[i]) and np.array_equal(M.bias, case.b_hat[i])
            if i == 0 and case.domain == "signed":
                assert np.array_equal(M.w_minus, case.w_minus[i])
        if case.target.depth == 1:
            x = np.random.default_rng(0).normal(size=(16, case.target.sizes[0]))
            with torch.no_grad():
                got = sequential(state, masks)(torch.from_numpy(x)).numpy()
            want = np.maximum(x, 0) @ case.w_plus[0].T + (np.minimum(x, 0) @ case.w_minus[0].T
                                                          if case.domain == "signed" else 0) + case.b_hat[0]
            assert np.allclose(got, want, rtol=1e-13, atol=1e-13)


# --- the attained family -----------------------------------------------------------------------

@pytest.mark.parametrize("case,value", fixed_cases(), ids=lambda c: getattr(c, "name", ""))
def test_bound_attained_on_fixed_cases(case, value):
    """Certified = the hand-computed value = the error at the witness; the attack gets ≥ 90%."""
    res = check_case(case)
    assert res["certified"] == pytest.approx(value * (1 + SLACK), rel=1e-12)
    state, masks = realise(case)
    with torch.no_grad():
        gx = sequential(state, masks)(torch.from_numpy(case.witness[None])).numpy()
    at_witness = float(np.linalg.norm(gx - f_numpy(case.target, case.witness[None])))
    assert at_witness == pytest.approx(value, rel=1e-12)
    assert res["attack"] >= 0.999 * value     # the attack finds the witness on its own


@st.composite
def chains(draw):
    depth = draw(st.integers(1, 3))
    widths = [draw(st.integers(1, 4)) for _ in range(depth + 1)]
    seed = draw(st.integers(0, 2 ** 16))
    rng = np.random.default_rng(seed)
    us = [np.abs(rng.normal(size=n)) + 0.05 for n in widths]
    us = [u / np.linalg.norm(u) for u in us]
    w = [draw(st.floats(0.2, 4.0)) for _ in range(depth)]
    beta = [draw(st.floats(0.0, 3.0)) for _ in range(depth)]
    e = [draw(st.floats(0.0, 2.0)) for _ in range(depth)]
    eb = [draw(st.floats(0.0, 1.0)) for _ in range(depth)]
    r = draw(st.floats(0.5, 3.0))
    domain = draw(st.sampled_from(["signed", "nonnegative"]))
    flip = domain == "signed" and draw(st.booleans())
    return chain_case("chain", us, w, beta, e, eb, r, domain, flip)


@settings(max_examples=40, derandomize=True, deadline=None)
@given(cd=chains())
def test_bound_attained_on_rank_one_chains(cd):
    """|w| up to 4 (norms up to 4), |b| up to 3, widths 1–4, both domains: the certificate equals
    the scalar recursion, is attained at the witness, and the attack reaches ≥ 90% of it."""
    case, value = cd
    res = check_case(case)
    assert res["certified"] == pytest.approx(value * (1 + SLACK), rel=1e-9, abs=1e-12)
    state, masks = realise(case)
    with torch.no_grad():
        gx = sequential(state, masks)(torch.from_numpy(case.witness[None])).numpy()
    assert np.linalg.norm(gx - f_numpy(case.target, case.witness[None])) == pytest.approx(value, rel=1e-9, abs=1e-12)


# --- the real pipeline: tiny widths, large weights, closest subsets accepted -------------------

def _run(out, target, domain, seed, m, radius, objective="error", weight_eps=1e-3):
    cfg = ApproximateConfig(
        construction=ConstructionConfig(input_domain=domain, seed=seed, block_width=m, width="formula"),
        solve=SolveConfig(solver="mitm", objective=objective, workers=1),
        weight_eps=weight_eps, input_radius=radius, allow_infeasible=True, overwrite=True, plots=False,
        empirical_samples=64, ascent_steps=20)
    return approximate(target, cfg, out)


def _attack_on_files(target, out, radius, nonneg, seed):
    g = rebuild_g(out)
    rng = np.random.default_rng(seed)
    X = np.vstack([np.zeros((1, target.sizes[0])), probe_points(target.sizes[0], radius, nonneg, rng, n=128)])
    with torch.no_grad():
        e = np.linalg.norm(f_numpy(target, X) - g(torch.from_numpy(X)).numpy(), axis=1)
    Xa = ascend(target.forward, g, X[np.argsort(e)[-8:]], radius, nonneg, steps=40)
    with torch.no_grad():
        ea = np.linalg.norm(f_numpy(target, Xa) - g(torch.from_numpy(Xa)).numpy(), axis=1)
    return float(max(e.max(), ea.max()))


@settings(max_examples=8, derandomize=True, deadline=None)
@given(q=st.integers(1, 3), w=st.floats(0.3, 3.0), neg=st.booleans(), seed=st.integers(0, 1000),
       m=st.integers(2, 4), r=st.sampled_from([0.5, 1.0, 3.0]))
def test_pipeline_depth1_one_input_attained(tmp_path_factory, q, w, neg, seed, m, r):
    """Depth 1, one input, no bias, non-negative domain, through `approximate` with m ≤ 4 and the
    closest subsets accepted: the error is e·x on [0, r], so sup = r‖e‖ = the certified bound,
    attained at x = r (f and ĝ rebuilt from the files, here)."""
    W = np.round((-w if neg else w) * np.linspace(1.0, 0.5, q)[:, None], 6)
    t = Target([Layer(W, None)])
    out = tmp_path_factory.mktemp("d1")
    rep = _run(out, t, "nonnegative", seed, m, r)
    cert = rep["certified_bound"]
    g = rebuild_g(out)
    with torch.no_grad():
        at_r = float(np.linalg.norm(g(torch.tensor([[r]], dtype=torch.float64)).numpy() - W.T * r))
    assert at_r <= cert * (1 + 1e-9) + 1e-12
    assert at_r >= cert * (1 - 1e-8) - 1e-12, (at_r, cert)
    assert rep["empirical_bound"] <= cert and rep["empirical_bound"] >= 0.99 * cert


@st.composite
def wild_targets(draw):
    """|w| > 1 allowed (up to 3), |b| up to 3, spectral norms up to 4, widths 1–4."""
    depth = draw(st.integers(1, 3))
    sizes = [draw(st.integers(1, 4)) for _ in range(depth + 1)]
    bias = draw(st.booleans())
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 16)))
    layers = []
    for p, q in zip(sizes[:-1], sizes[1:]):
        W = rng.uniform(-3, 3, size=(q, p))
        W *= draw(st.floats(0.5, 4.0)) / max(np.linalg.norm(W, 2), 1e-12)
        W = np.clip(W, -3, 3)
        b = rng.uniform(-3, 3, size=q) if bias else None
        layers.append(Layer(W, b))
    return Target(layers)


@settings(max_examples=25, derandomize=True, deadline=None)
@given(t=wild_targets(), domain=st.sampled_from(["signed", "nonnegative"]), seed=st.integers(0, 1000),
       m=st.integers(1, 6), radius=st.sampled_from([0.5, 1.0, 3.0]),
       objective=st.sampled_from(["error", "cardinality"]))
def test_pipeline_wild_targets_sound(tmp_path_factory, t, domain, seed, m, radius, objective):
    """Large weights and biases, tiny blocks (errors of order 1): the attack of this suite on ĝ
    rebuilt from the files never exceeds the certified bound, nor does the run's own."""
    out = tmp_path_factory.mktemp("wild")
    rep = _run(out, t, domain, seed, m, radius, objective=objective, weight_eps=0.05)
    cert = rep["certified_bound"]
    assert json.loads((out / "report.json").read_text())["certified_bound"] == cert
    attack = _attack_on_files(t, out, radius, domain == "nonnegative", seed)
    assert attack <= cert * (1 + 1e-9) + 1e-12, (attack, cert)
    assert rep["empirical_bound"] <= cert * (1 + 1e-6) + 1e-9
