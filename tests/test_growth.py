"""Adaptive growth without a step cap: blocks grow past the old 8-step cap while an instance is
outside τ, stop with a reason at exact search's reach, the cost budget or --max-growth, and the
result does not depend on batching."""
from __future__ import annotations

import json

import numpy as np
import pytest

from subsetsum_lth.approximate import ApproximateConfig, approximate
from subsetsum_lth.construction import ConstructionConfig
from subsetsum_lth.errors import IncompleteRun
from subsetsum_lth.solve import SolveConfig
from subsetsum_lth.target import Layer, Target

#: one row, three weights; blocks start at 2 units and grow 1 unit a step, so reaching τ = 1e-3
#: (~10 live coefficients) takes far more than the old cap of 8 steps
TARGET = Target([Layer(np.array([[0.6, -0.45, 0.3]]), None)])


def _cfg(tau=1e-3, max_growth=None, max_hours=24.0, batch_size=None, seed=0, workers=1):
    return ApproximateConfig(
        construction=ConstructionConfig(input_domain="nonnegative", seed=seed, block_width=2, grow=1,
                                        width="auto", max_growth=max_growth),
        solve=SolveConfig(solver="mitm", workers=workers, batch_size=batch_size), weight_eps=tau,
        overwrite=True, plots=False, empirical_samples=8, ascent_steps=2, max_hours=max_hours)


def _masks(folder):
    from safetensors.numpy import load_file
    return {k: v.tobytes() for k, v in sorted(load_file(str(folder / "masks.safetensors")).items())}


def test_growth_goes_past_the_old_cap(tmp_path):
    rep = approximate(TARGET, _cfg(), tmp_path / "a")
    L = rep["layers"][0]
    assert rep["infeasible_count"] == 0 and L["max_weight_error"] <= 1e-3
    assert max(L["block_extensions"]) > 8                      # the old cap would have stopped here
    assert L["block_width_final_max"] == 2 + max(L["block_extensions"])
    # same seed, batches of one instance, in-process or on two worker processes: the same
    # growth and byte-identical masks
    for name, kw in (("b", {"batch_size": 1}), ("c", {"batch_size": 1, "workers": 2})):
        rep1 = approximate(TARGET, _cfg(**kw), tmp_path / name)
        assert rep1["layers"][0]["block_extensions"] == L["block_extensions"]
        assert _masks(tmp_path / "a") == _masks(tmp_path / name)


def test_explicit_max_growth_still_caps_and_says_so(tmp_path):
    with pytest.raises(IncompleteRun, match=r"growth stopped at --max-growth 3 steps"):
        approximate(TARGET, _cfg(max_growth=3), tmp_path)
    rep = json.loads((tmp_path / "report.json").read_text())
    assert max(rep["layers"][0]["block_extensions"]) == 3


def test_growth_stops_at_exact_search_reach(tmp_path):
    """τ far below what 40 live coefficients reach: the block grows up to exact search's reach
    and the run ends (exit 3) naming it, instead of timing out."""
    with pytest.raises(IncompleteRun, match=r"beyond exact search \(at most n = 40\)"):
        approximate(TARGET, _cfg(tau=1e-15), tmp_path)
    rep = json.loads((tmp_path / "report.json").read_text())
    L = rep["layers"][0]
    assert L["outside_tolerance"] >= 1 and L["live_coefficients_min"] <= 40
    assert max(L["block_extensions"]) > 8


def test_growth_stops_at_the_time_budget(tmp_path):
    """A --max-hours budget that pays for the first solve but not for growing refuses the growth
    with the reason."""
    with pytest.raises(IncompleteRun, match=r"--max-hours budget"):
        approximate(TARGET, _cfg(max_hours=2e-9), tmp_path)


def _issue_block(extensions: int):
    """Layer 0, column 556 of the issue's case: a random 784-500-10 target, |w| <= 0.15, τ = 0.01,
    non-negative inputs, seed 1; adaptive blocks of 20 units growing by 5."""
    from dataclasses import replace

    from subsetsum_lth.construction import draw_layer_pair, plan_layers
    from subsetsum_lth.layer_instances import layer_instances
    from subsetsum_lth.target import random_target
    t = random_target((784, 500, 10), bias=True, seed=1, scale=0.15)
    plan = plan_layers(t, ConstructionConfig(input_domain="nonnegative", seed=1, width="adaptive", eps=0.01))[0]
    assert (plan.m, plan.grow) == (20, 5)
    ext = np.zeros(plan.n_blocks, dtype=np.int64)
    ext[556] = extensions
    plan = replace(plan, extensions=ext)
    pair = draw_layer_pair(plan, 1)
    inst = layer_instances(pair, t.layers[0].weight, t.layers[0].bias)
    row = 556 * plan.q + 35                       # group 556 (non-negative inputs: one half), row 35
    return inst.batch(0.01, "error").take(np.array([row]))


def test_the_issue_block_needs_more_than_the_old_cap():
    """At the old cap (8 steps, 60 units) the block has 14 live units, 13 of them positive, and
    its target is −0.138: out of reach. A few more steps (within exact search) reach τ."""
    from subsetsum_lth.solve import solve_batch
    b = _issue_block(8)
    assert b.counts[0] == 14 and (b.coefficients[0, :14] < 0).sum() == 1 and b.targets[0] < -0.13
    assert solve_batch("mitm", {}, b).errors[0] > 0.1
    steps = next(e for e in range(9, 20) if solve_batch("mitm", {}, _issue_block(e)).errors[0] <= 0.01)
    assert _issue_block(steps).counts[0] <= 40


@pytest.mark.slow
def test_the_issue_case_completes(tmp_path):
    """The issue's run (784-500-10, |w| <= 0.15, τ = 0.01, adaptive, seed 1) used to exit 3 with
    one instance at the 60-unit cap; now every instance is within τ."""
    from subsetsum_lth.target import random_target
    t = random_target((784, 500, 10), bias=True, seed=1, scale=0.15)
    rep = approximate(t, ApproximateConfig(
        construction=ConstructionConfig(input_domain="nonnegative", seed=1, width="adaptive"),
        solve=SolveConfig(solver="mitm"), weight_eps=0.01, plots=False, empirical_samples=16,
        ascent_steps=2), tmp_path)
    assert rep["infeasible_count"] == 0
    assert rep["layers"][0]["block_extensions"][556] > 8 and rep["layers"][0]["max_weight_error"] <= 0.01
