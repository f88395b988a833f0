"""Width law: smallest feasible widths, feasibility probabilities, reference curves, fits."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from subsetsum_lth.construction import LayerPlan, draw_layer_pair
from subsetsum_lth.solve import SolveConfig
from subsetsum_lth.target import random_target
from subsetsum_lth.construction import formula_width
from subsetsum_lth.width_law import (binomial_below, block_coefficients, block_needed_widths, check_formula,
                                     counting_served_fraction, counting_width, fit_log_law, fit_power_law,
                                     formula_cover_probability, min_live_below, min_live_quantile,
                                     run_width_law, sample_layer_weights, smallest_covering_units,
                                     smallest_feasible_widths, synthetic_weights, theorem1_C,
                                     theorem1_live_width)

SOLVE = SolveConfig(solver="mitm", workers=1)


def brute_width(t: float, coef: np.ndarray, eps: float) -> int:
    """Smallest m such that some subset of coef[:m] sums to within eps of t (-1 if none)."""
    if abs(t) <= eps:
        return 0
    for m in range(1, len(coef) + 1):
        for r in range(1, m + 1):
            for s in itertools.combinations(range(m), r):
                if abs(t - coef[list(s)].sum()) <= eps:
                    return m
    return -1


def test_smallest_widths_match_brute_force():
    rng = np.random.default_rng(1)
    t = rng.uniform(-1, 1, 40)
    coef = rng.uniform(-1, 1, (40, 10)) * rng.uniform(0, 1, (40, 10))
    res = smallest_feasible_widths(t, coef, 0.01, SOLVE)
    expected = [brute_width(t[i], coef[i], 0.01) for i in range(40)]
    assert res.widths.tolist() == expected


def test_probability_increases_with_width_and_reaches_one():
    sample = synthetic_weights(400, 50, seed=3)
    law = run_width_law(sample, [1e-2, 1e-3], n_max=28, seed=0, solve=SOLVE)
    ms = np.arange(0, 29)
    for r in law.results:
        p = r.probability(ms)
        assert np.all(np.diff(p) >= 0)                       # monotone in m (nested instances)
        assert p[0] < 1 and p[-1] == 1.0                      # not trivial, all feasible by n_max
        m_all = r.all_feasible_width
        assert m_all is not None and r.probability(m_all)[0] == 1.0 and r.probability(m_all - 1)[0] < 1
    # smaller ε needs at least as much width, instance by instance (same blocks for every ε)
    big, small = law.results
    assert big.eps > small.eps
    assert np.all(small.widths >= big.widths)
    assert small.all_feasible_width >= big.all_feasible_width
    rows = law.summary_rows()
    assert rows[0]["instances"] == 400 and rows[1]["counting_width"] == pytest.approx(math.log2(1000))
    for r, row in zip(law.results, rows):
        assert row["below_counting_width"] == pytest.approx(
            np.mean((r.widths >= 0) & (r.widths < math.log2(1 / r.eps))))
        assert row["theorem1_cover_probability"] == ""          # a sample's blocks are not the layer's


def test_coefficients_are_the_constructions_positive_unit_products():
    target = random_target([6, 5, 3], bias=False, seed=0)
    sample = sample_layer_weights(target, 0, None, 100, seed=0)
    assert sample.whole_layer and sample.weights.shape == (5, 6)
    coef = block_coefficients(sample, 4, seed=9)
    # rebuild block 2, row 3 by hand from the construction's draws
    units = 2 * 4 + 8
    while True:
        plan = LayerPlan(0, 6, 5, units, units, False, False)
        pair = draw_layer_pair(plan, 9)
        u = [pair.w1[plan.block_slice(j), j] for j in range(6)]
        if min((x > 0).sum() for x in u) >= 4:
            break
        units += max(8, units // 4)
    j, r = 2, 3
    live = np.flatnonzero(u[j] > 0)[:4]
    expect = pair.w2[r, plan.block_slice(j)][live].astype(np.float64) * u[j][live].astype(np.float64)
    np.testing.assert_allclose(coef[j * 5 + r], expect)
    assert sample.flat[j * 5 + r] == target.layers[0].weight[r, j]


def test_sampled_weights_come_from_the_layer():
    target = random_target([30, 20, 4], bias=True, seed=1)
    s = sample_layer_weights(target, 0, 150, 40, seed=2)
    assert s.weights.shape == (40, 4) and not s.whole_layer
    W = target.layers[0].weight.ravel()
    assert np.isin(s.flat, W).all() and len(np.unique(s.flat)) == s.flat.size


def test_reference_curves_and_fits():
    assert counting_width(1e-3) == pytest.approx(9.9658, abs=1e-3)
    # Theorem 1: ceil(1.5 * log2(784*500*2/0.01)) = 40 units, half live on average
    assert theorem1_live_width(784, 500, 2, 0.01, 1.5) == 20.0
    assert theorem1_C(20.0, 784, 500, 2, 0.01) == pytest.approx(40 / math.log2(784 * 500 * 2 / 0.01))
    eps = np.array([1e-1, 1e-2, 1e-3, 1e-4])
    fit = fit_log_law(eps, 1.3 * np.log2(1 / eps) + 4)
    assert fit.slope == pytest.approx(1.3) and fit.intercept == pytest.approx(4)
    pw = fit_power_law(eps, 7 / eps)
    assert pw.exponent == pytest.approx(1.0) and pw.A == pytest.approx(7)


def _covered_fraction(coef: np.ndarray, eps: float, grid: np.ndarray) -> float:
    sums = np.array([coef[list(s)].sum() for r in range(len(coef) + 1)
                     for s in itertools.combinations(range(len(coef)), r)])
    return float((np.abs(grid[:, None] - sums[None, :]) <= eps).any(axis=1).mean())


def test_counting_bound_is_a_bound_on_what_a_block_serves():
    """2^n subset sums cover at most 2^n * 2ε of [-1, 1]: the binary coefficients 2ε·2^k reach
    the bound, random ones stay below it; one instance may still need fewer than log2(1/ε)."""
    eps, n = 1 / 256, 5
    grid = np.linspace(-1, 1, 20001)
    binary = 2 * eps * 2.0 ** np.arange(n)
    assert _covered_fraction(binary, eps, grid) == pytest.approx(counting_served_fraction(n, eps), abs=2e-3)
    rng = np.random.default_rng(0)
    for _ in range(5):
        c = rng.uniform(-1, 1, n) * rng.uniform(0, 1, n)
        assert _covered_fraction(c, eps, grid) <= counting_served_fraction(n, eps) + 1e-3
    assert counting_served_fraction(8, eps) == 1.0 and counting_width(eps) == 8
    # a target close to one coefficient needs one, far below log2(1/ε) = 8
    assert smallest_feasible_widths(np.array([0.3]), np.array([[0.3001, 0.7, -0.2]]), eps, SOLVE).widths[0] == 1


def test_binomial_tails_match_enumeration_and_simulation():
    m = 10
    counts = np.array([bin(x).count("1") for x in range(2 ** m)])
    for k in range(m + 2):
        assert binomial_below(m, k) == pytest.approx(np.mean(counts < k))
    rng = np.random.default_rng(1)
    live = rng.binomial(40, 0.5, size=(20000, 50))      # 20000 layers of 50 blocks of 40 units
    for k in (12, 14, 16):
        assert min_live_below(40, k, 50) == pytest.approx(np.mean(live.min(axis=1) < k), abs=0.015)
    q = min_live_quantile(40, 50, 0.5)
    assert np.mean(live.min(axis=1) <= q) >= 0.5 - 0.015 and np.mean(live.min(axis=1) <= q - 1) < 0.5
    needed = np.array([10, 12, 15, 18, 0])
    sim = np.mean((live[:, :5] >= needed).all(axis=1))
    assert formula_cover_probability(40, needed) == pytest.approx(sim, abs=0.015)
    m_half = smallest_covering_units(needed, 0.5)
    assert formula_cover_probability(m_half, needed) >= 0.5 > formula_cover_probability(m_half - 1, needed)
    assert block_needed_widths(np.array([3, 5, -1, 2, 0, 1]), 3, 8).tolist() == [9, 2]


def test_check_formula_counts_live_units_and_infeasible_instances_of_the_construction():
    target = random_target([6, 5, 3], bias=False, seed=4)
    W = np.asarray(target.layers[0].weight, dtype=np.float64)
    eps, C = 0.02, 0.7
    fc = check_formula(W, 0, 2, eps, C, seed=3, solve=SOLVE)
    m = formula_width(6, 5, 2, eps, None, C)
    assert fc.units == m and fc.instances == 30
    plan = LayerPlan(0, 6, 5, m, m, False, False)
    pair = draw_layer_pair(plan, 3)
    miss_blocks = set()
    miss = 0
    for j in range(6):
        u = pair.w1[plan.block_slice(j), j].astype(np.float64)
        live = np.flatnonzero(u > 0)
        assert fc.live[j] == live.size
        for r in range(5):
            coef = pair.w2[r, plan.block_slice(j)][live].astype(np.float64) * u[live]
            if brute_width(W[r, j], coef, eps) < 0:
                miss += 1
                miss_blocks.add(j)
    assert fc.infeasible == miss and sorted(fc.short_blocks.tolist()) == sorted(miss_blocks)
    assert miss > 0                     # C = 0.7 is too narrow for some instance of this layer
    row = fc.row()
    assert row["min_live_drawn"] == fc.live.min() and row["infeasible_at_formula"] == miss


def test_whole_layer_summary_has_the_cover_probability_of_its_blocks():
    target = random_target([8, 6, 3], bias=False, seed=2)
    sample = sample_layer_weights(target, 0, None, 100, seed=0)
    law = run_width_law(sample, [1e-2], n_max=16, seed=0, solve=SOLVE)
    row = law.summary_rows(1.5)[0]
    needed = block_needed_widths(law.results[0].widths, 6, 16)
    assert needed.shape == (8,)
    units = formula_width(8, 6, 2, 1e-2, None, 1.5)
    assert row["theorem1_units"] == units
    assert row["theorem1_cover_probability"] == pytest.approx(formula_cover_probability(units, needed))
