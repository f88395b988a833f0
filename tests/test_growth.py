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


def _cfg(tau=1e-3, max_growth=None, max_hours=24.0, batch_size=None, seed=0):
    return ApproximateConfig(
        construction=ConstructionConfig(input_domain="nonnegative", seed=seed, block_width=2, grow=1,
                                        width="auto", max_growth=max_growth),
        solve=SolveConfig(solver="mitm", workers=1, batch_size=batch_size), weight_eps=tau,
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
    # same seed, batches of one instance: the same growth and byte-identical masks
    rep1 = approximate(TARGET, _cfg(batch_size=1), tmp_path / "b")
    assert rep1["layers"][0]["block_extensions"] == L["block_extensions"]
    assert _masks(tmp_path / "a") == _masks(tmp_path / "b")


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
