"""The construction's structure (Lemma 1): block-diagonal pre-pruning, sign halves, bias block,
shared u, and that exact subset sums give back the target layer map exactly."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from subsetsum_lth.certify import layer_maps
from subsetsum_lth.construction import ConstructionConfig, build_construction, formula_width
from subsetsum_lth.layer_instances import layer_instances, masks_from_selections
from subsetsum_lth.mask_rules import masks_state_dict, prepruning_masks
from subsetsum_lth.errors import UserError
from subsetsum_lth.target import random_target


def test_formula_width():
    """Theorem 1's block width m = ceil(C·log2(p·q·l / min(ε, δ))), on numbers worked out by hand."""
    # 784·500·2 / 0.01 = 78 400 000, and 2^26 = 67 108 864 < 78.4e6 < 2^27 → log2 ∈ (26, 27) → 27
    assert formula_width(784, 500, 2, 0.01, None, 1.0) == 27
    # min(ε, δ) = 0.001: 10·10·1 / 0.001 = 1e5; 2^16.5 ≈ 92 682 < 1e5 < 2^17 → 2·log2 ∈ (33, 34) → 34
    assert formula_width(10, 10, 1, 0.1, 0.001, 2.0) == 34
    assert formula_width(10, 10, 1, 0.001, 0.1, 2.0) == 34          # the min, whichever is smaller
    # exact powers of two: 4·4·2 / 0.5 = 64 = 2^6 → 6; 1/0.25 = 4 = 2^2, C = 1.5 → 3
    assert formula_width(4, 4, 2, 0.5, None, 1.0) == 6
    assert formula_width(1, 1, 1, 0.25, None, 1.5) == 3
    # halving ε adds exactly C to C·log2(…): 64 → 128 = 2^7 gives 7 for C = 1;
    # 2·3·1 / 0.75 = 8 = 2^3 → C = 2: 6;  ε = 0.375 → 16 = 2^4 → 8
    assert formula_width(4, 4, 2, 0.25, None, 1.0) == 7
    assert formula_width(2, 3, 1, 0.75, None, 2.0) == 6
    assert formula_width(2, 3, 1, 0.375, None, 2.0) == 8
    # never below 1 (a vanishing log gives one unit per block, not zero)
    assert formula_width(1, 1, 1, 0.9, None, 1.0) >= 1


@given(p=st.integers(1, 2000), q=st.integers(1, 2000), l=st.integers(1, 10),
       eps=st.floats(1e-6, 1.0), delta=st.one_of(st.none(), st.floats(1e-6, 0.99)),
       C=st.floats(0.1, 8.0))
@settings(max_examples=200, derandomize=True, deadline=None)
def test_formula_width_is_the_smallest_integer_meeting_theorem_1(p, q, l, eps, delta, C):
    """What the width must satisfy: m ≥ C·log2(pql / min(ε, δ)) (Theorem 1's requirement), and
    m − 1 falls short of it (the smallest such width), and m ≥ 1; m grows when ε shrinks."""
    d = eps if delta is None else min(eps, delta)
    need = C * np.log2(p * q * l / d)
    m = formula_width(p, q, l, eps, delta, C)
    assert isinstance(m, int) and m >= 1
    assert m >= need * (1 - 1e-12)
    assert m - 1 < max(need, C) * (1 + 1e-12) or m == 1
    assert formula_width(p, q, l, eps / 2, delta if delta is None else delta / 2, C) >= m


def _pair_function(state, masks, i):
    """x ↦ (W₂∘S) relu((W₁∘S) x + b₁∘S) + b₂∘S for pair i, by hand from the two state dicts."""
    A, a, B, c = (np.asarray(state[f"{4 * i + d}.{k}"], np.float64) * masks[f"{4 * i + d}.{k}"]
                  for d, k in ((0, "weight"), (0, "bias"), (2, "weight"), (2, "bias")))
    return lambda X: np.maximum(X @ A.T + a, 0.0) @ B.T + c


@pytest.mark.parametrize("domain", ["signed", "nonnegative"])
@pytest.mark.parametrize("bias", [True, False])
def test_instances_and_masks_reproduce_layer_map(domain, bias):
    """Ground truth from the files' tensors alone: each pair of masked random layers, evaluated
    by hand, is x ↦ Ŵ⁺x⁺ + Ŵ⁻x⁻ + b̂ with b̂ = F(0), Ŵ⁺[:, j] = F(e_j) − F(0),
    Ŵ⁻[:, j] = F(0) − F(−e_j). The instance coefficients are v·u read by hand from the block
    layout of DESIGN §1 (block j = rows j·m … j·m+m−1, bias block after them); random subset
    selections of them must give exactly those Ŵ entries, and certify.layer_maps must too."""
    m = 12
    t = random_target((4, 3, 2), bias=bias, seed=2)
    c = build_construction(t, ConstructionConfig(input_domain=domain, seed=5, block_width=m, width="formula"))
    state = c.state_dict()
    offset = 0
    rng = np.random.default_rng(0)
    all_masks, hand_sums = [], []
    for li, (L, pair) in enumerate(zip(t.layers, c.pairs)):
        q, p = L.weight.shape
        w1 = state[f"{4 * li}.weight"].astype(np.float64)
        b1 = state[f"{4 * li}.bias"].astype(np.float64)
        w2 = state[f"{4 * li + 2}.weight"].astype(np.float64)
        signed = li == 0 and domain == "signed"
        inst = layer_instances(pair, L.weight, L.bias, offset)
        offset += len(inst)
        # canonical order: for each input j its + half (and − half if signed), then the bias block;
        # q instances (rows) per group
        groups = [(j, h) for j in range(p) for h in ((1, -1) if signed else (1,))]
        groups += [(-1, 0)] if bias else []
        assert len(inst) == q * len(groups)
        sel = rng.random(inst.coefficients.shape) < 0.5
        sel &= np.arange(inst.coefficients.shape[1])[None, :] < inst.counts[:, None]
        sums = {}
        for gi, (j, h) in enumerate(groups):
            if j >= 0:
                rows = j * m + np.arange(m)
                u = w1[rows, j]
                units = rows[(u > 0) if h > 0 else (u < 0)]
                scale = w1[units, j]
            else:
                rows = p * m + np.arange(m)
                units = rows[b1[rows] > 0]
                scale = b1[units]
            for r in range(q):
                idx = gi * q + r
                coef = w2[r, units] * scale
                assert inst.counts[idx] == len(units)
                assert np.array_equal(inst.coefficients[idx, :len(units)], coef)
                assert inst.targets[idx] == (L.weight[r, j] if j >= 0 else L.bias[r])
                sums[(r, j, h)] = float(coef[sel[idx, :len(units)]].sum())
        all_masks.append(masks_from_selections(inst, sel))
        hand_sums.append(sums)
    masks = masks_state_dict(all_masks)
    maps = layer_maps(state, masks, t.depth)
    for li, (L, M) in enumerate(zip(t.layers, maps)):
        q, p = L.weight.shape
        F = _pair_function(state, masks, li)
        I = np.eye(p)
        F0 = F(np.zeros((1, p)))[0]
        Wp = (F(I) - F0).T
        Wm = (F0 - F(-I)).T
        assert np.allclose(M.bias, F0, rtol=0, atol=1e-12)
        assert np.allclose(M.w_plus, Wp, rtol=0, atol=1e-12)
        signed = li == 0 and domain == "signed"
        assert np.allclose(M.w_minus, Wm if signed else 0.0, rtol=0, atol=1e-12)
        X = np.random.default_rng(li).normal(size=(32, p)) * 3
        assert np.allclose(F(X), np.maximum(X, 0) @ Wp.T + np.minimum(X, 0) @ Wm.T + F0, rtol=0, atol=1e-11)
        for (r, j, h), s in hand_sums[li].items():
            got = F0[r] if h == 0 else (Wp if h > 0 else Wm)[r, j]
            assert got == pytest.approx(s, abs=1e-12)


def test_block_diagonal_and_unused_biases_masked():
    t = random_target((3, 2), bias=True, seed=0)
    c = build_construction(t, ConstructionConfig(input_domain="nonnegative", block_width=8))
    pre = prepruning_masks(c.plans, c.state_dict())
    w1 = pre["0.weight"]
    m = 8
    for h in range(3 * m):
        nz = np.flatnonzero(w1[h])
        assert len(nz) <= 1 and (len(nz) == 0 or nz[0] == h // m)
    assert not w1[3 * m:].any()              # bias block keeps no input edges
    assert not pre["2.bias"].any()           # layer 2i bias always masked
    b1 = c.state_dict()["0.bias"]
    assert np.all(b1[3 * m:][pre["0.bias"][3 * m:] == 1] > 0)


def test_seeded_by_block_not_order():
    t = random_target((5, 4, 3), seed=0)
    a = build_construction(t, ConstructionConfig(seed=7, block_width=6)).state_dict()
    b = build_construction(t, ConstructionConfig(seed=7, block_width=6)).state_dict()
    c = build_construction(t, ConstructionConfig(seed=8, block_width=6)).state_dict()
    assert all(a[k].tobytes() == b[k].tobytes() for k in a)
    assert any(a[k].tobytes() != c[k].tobytes() for k in a)


@pytest.mark.parametrize("kwargs,word", [
    ({"eps": 0.0}, "ε"), ({"eps": -1.0}, "ε"), ({"input_domain": "positive"}, "input domain"),
    ({"block_width": 0}, "block-width"), ({"C": 0}, "--c"), ({"delta": 2.0}, "delta"),
    ({"distribution": "cauchy"}, "distribution"),
])
def test_config_refusals(kwargs, word):
    with pytest.raises(UserError) as ei:
        ConstructionConfig(**kwargs)
    assert word.lower() in str(ei.value).lower()


def test_absurd_width_refused_with_estimate():
    t = random_target((784, 500, 10), seed=0)
    from subsetsum_lth.construction import plan_layers
    with pytest.raises(UserError, match="GB"):
        plan_layers(t, ConstructionConfig(block_width=100000))


def test_growth_keeps_prefix_and_is_seeded():
    """Growing block j appends units drawn from its own seed; nothing else changes."""
    from subsetsum_lth.construction import draw_layer_pair, plan_layers
    t = random_target((3, 2), bias=True, seed=0)
    cfg = ConstructionConfig(seed=4, block_width=6, width="auto", grow=3)
    plan = plan_layers(t, cfg)[0]
    base = draw_layer_pair(plan, 4)
    plan.extensions = np.array([0, 2, 0, 1])
    grown = draw_layer_pair(plan, 4)
    assert grown.w1.shape == (6 * 4 + 3 * 3, 3)
    o = plan.offsets
    for j in range(4):
        assert np.array_equal(grown.w1[o[j]:o[j] + 6], base.w1[6 * j:6 * j + 6])
        assert np.array_equal(grown.w2[:, o[j]:o[j] + 6], base.w2[:, 6 * j:6 * j + 6])
    again = draw_layer_pair(plan, 4)
    assert again.w1.tobytes() == grown.w1.tobytes()


def test_auto_width_repairs_infeasible_blocks(tmp_path):
    from subsetsum_lth.approximate import ApproximateConfig, approximate
    from subsetsum_lth.errors import IncompleteRun
    from subsetsum_lth.solve import SolveConfig
    t = random_target((8, 6), bias=True, seed=3, scale=0.9)

    def run(width, out):
        return approximate(t, ApproximateConfig(
            construction=ConstructionConfig(input_domain="signed", block_width=10, width=width, seed=1),
            solve=SolveConfig(solver="mitm", workers=1), weight_eps=0.01, plots=False,
            empirical_samples=32, ascent_steps=5), out)
    with pytest.raises(IncompleteRun):
        run("formula", tmp_path / "f")
    rep = run("auto", tmp_path / "a")
    L = rep["layers"][0]
    assert rep["infeasible_count"] == 0 and L["grown_blocks"] > 0 and L["block_width_final_max"] > 10
    assert L["max_weight_error"] <= 0.01
    assert rep["empirical_bound"] <= rep["certified_bound"]


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(0, 3), min_size=5, max_size=5), st.lists(st.integers(0, 2), min_size=5, max_size=5),
       st.sampled_from(["nonnegative", "signed"]), st.booleans())
def test_extending_a_pair_equals_drawing_it(before, more, domain, bias):
    """Growth draws only the new chunks: the extended pair and its instances are byte-identical
    to drawing the grown plan from scratch (every chunk has its own seed)."""
    from dataclasses import replace

    from subsetsum_lth.construction import draw_layer_pair, extend_layer_pair, plan_layers
    from subsetsum_lth.layer_instances import extend_instances, layer_instances
    t = random_target((4, 3), bias=bias, seed=2)
    plan = plan_layers(t, ConstructionConfig(seed=7, block_width=5, width="auto", grow=3, input_domain=domain))[0]
    n = plan.n_blocks
    plan = replace(plan, extensions=np.array(before[:n], dtype=np.int64))
    grown = replace(plan, extensions=plan.extensions + np.array(more[:n], dtype=np.int64))
    pair = draw_layer_pair(plan, 7)
    L = t.layers[0]
    ext = extend_layer_pair(pair, grown, 7)
    ref = draw_layer_pair(grown, 7)
    for a, b in ((ext.w1, ref.w1), (ext.b1, ref.b1), (ext.w2, ref.w2), (ext.b2, ref.b2)):
        assert a.tobytes() == b.tobytes()
    inst = extend_instances(layer_instances(pair, L.weight, L.bias, 5), ext, L.weight, L.bias)
    want = layer_instances(ref, L.weight, L.bias, 5)
    assert [u.tolist() for u in inst.group_units] == [u.tolist() for u in want.group_units]
    assert inst.coefficients.tobytes() == want.coefficients.tobytes()
    assert np.array_equal(inst.counts, want.counts) and np.array_equal(inst.ids, want.ids)
    if any(more[:n]):
        with pytest.raises(ValueError):
            extend_layer_pair(ext, plan, 7)      # a plan with fewer steps is not an extension


def test_adaptive_width_follows_tau_and_weights_not_layer_size():
    """--width adaptive starts every layer at ceil(2 log2(max(1, max|w|)/τ) + 6)
    units, whatever p·q: the formula's width grows with log2(p·q·l), the adaptive one does not."""
    from subsetsum_lth.construction import adaptive_width, plan_layers
    from subsetsum_lth.target import Layer, Target
    small = Target([Layer(np.full((10, 20), 0.5), None)])
    wide = Target([Layer(np.full((2000, 2000), 0.5), None), Layer(np.full((10, 2000), 0.5), None)])
    cfg = ConstructionConfig(eps=0.01, width="adaptive")
    ms = {pl.m for t in (small, wide) for pl in plan_layers(t, cfg)}
    assert ms == {adaptive_width(0.5, 0.01)} == {20}               # ceil(2·log2(100) + 6)
    formula = [pl.formula_m for t in (small, wide) for pl in plan_layers(t, cfg)]
    assert formula[0] < min(formula[1:])
    assert adaptive_width(0.5, 1e-4) == 33 and adaptive_width(4.0, 0.01) == 24 and adaptive_width(0.1, 10.0) == 4


def test_adaptive_width_in_eps_mode_starts_from_the_initial_tau(tmp_path):
    """--eps ε (network mode): adaptive blocks start from the per-weight τ the run starts with
    (rounds[0]), not from ε, which is far looser (13 units here instead of 19)."""
    from subsetsum_lth.approximate import ApproximateConfig, approximate
    from subsetsum_lth.construction import adaptive_width
    from subsetsum_lth.solve import SolveConfig
    t = random_target((12, 10, 4), bias=True, seed=3)
    cc = ConstructionConfig(input_domain="signed", seed=1)
    assert cc.width == "adaptive" and cc.tau is None
    rep = approximate(t, ApproximateConfig(construction=cc, solve=SolveConfig(solver="mitm", workers=1),
                                           eps=0.1, plots=False, empirical_samples=16, ascent_steps=2),
                      tmp_path / "run")
    tau0 = rep["rounds"][0]["weight_eps"]
    want = [adaptive_width(float(np.abs(L.weight).max()), tau0) for L in t.layers]
    assert [L["block_width"] for L in rep["layers"]] == want
    assert want != [adaptive_width(float(np.abs(L.weight).max()), 0.1) for L in t.layers]
    assert cc.tau is None                              # the caller's config is not changed
    assert rep["infeasible_count"] == 0 and rep["certified_bound"] <= 0.1
    with pytest.raises(UserError):
        ConstructionConfig(tau=0.0)
