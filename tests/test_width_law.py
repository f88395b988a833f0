"""Width law: smallest feasible widths, feasibility probabilities, reference curves, fits."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from subsetsum_lth.construction import LayerPlan, draw_layer_pair
from subsetsum_lth.solve import SolveConfig
from subsetsum_lth.target import random_target
from subsetsum_lth.width_law import (block_coefficients, counting_lower_bound, fit_log_law, fit_power_law,
                                     run_width_law, sample_layer_weights, smallest_feasible_widths,
                                     synthetic_weights, theorem1_live_width)

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
    assert rows[0]["instances"] == 400 and rows[1]["counting_lower_bound"] == pytest.approx(math.log2(1000))


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
    assert counting_lower_bound(1e-3) == pytest.approx(9.9658, abs=1e-3)
    # Theorem 1: ceil(1.5 * log2(784*500*2/0.01)) = 40 units, half live
    assert theorem1_live_width(784, 500, 2, 0.01, 1.5) == 20.0
    eps = np.array([1e-1, 1e-2, 1e-3, 1e-4])
    fit = fit_log_law(eps, 1.3 * np.log2(1 / eps) + 4)
    assert fit.slope == pytest.approx(1.3) and fit.intercept == pytest.approx(4)
    pw = fit_power_law(eps, 7 / eps)
    assert pw.exponent == pytest.approx(1.0) and pw.A == pytest.approx(7)
