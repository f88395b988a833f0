"""The construction's structure (Lemma 1): block-diagonal pre-pruning, sign halves, bias block,
shared u, and that exact subset sums give back the target layer map exactly."""
from __future__ import annotations

import numpy as np
import pytest

from subsetsum_lth.certify import layer_maps
from subsetsum_lth.construction import (ConstructionConfig, build_construction, formula_width,
                                        layer_instances, masks_from_selections, masks_state_dict,
                                        prepruning_masks)
from subsetsum_lth.errors import UserError
from subsetsum_lth.target import random_target


def test_formula_width():
    # m = ceil(C log2(p q l / min(eps, delta)))
    assert formula_width(784, 500, 2, 0.01, None, 1.0) == int(np.ceil(np.log2(784 * 500 * 2 / 0.01)))
    assert formula_width(10, 10, 1, 0.1, 0.001, 2.0) == int(np.ceil(2 * np.log2(100 / 0.001)))


@pytest.mark.parametrize("domain", ["signed", "nonnegative"])
@pytest.mark.parametrize("bias", [True, False])
def test_instances_and_masks_reproduce_layer_map(domain, bias):
    t = random_target((4, 3, 2), bias=bias, seed=2)
    c = build_construction(t, ConstructionConfig(input_domain=domain, seed=5, block_width=12))
    offset = 0
    all_masks = []
    rng = np.random.default_rng(0)
    expected = []
    for li, (L, pair) in enumerate(zip(t.layers, c.pairs)):
        inst = layer_instances(pair, L.weight, L.bias, offset)
        offset += len(inst)
        halves = 2 if (li == 0 and domain == "signed") else 1
        assert len(inst) == L.weight.size * halves + (L.weight.shape[0] if bias else 0)
        # u shared: coefficient / v equals the same u for every output row of a group
        # random selections: the layer map recovered from the masks equals Σ s·c exactly
        sel = rng.random(inst.coefficients.shape) < 0.5
        sel &= np.arange(inst.coefficients.shape[1])[None, :] < inst.counts[:, None]
        sums = (inst.coefficients * sel).sum(1)
        all_masks.append(masks_from_selections(inst, sel))
        expected.append((inst, sums))
    masks = masks_state_dict(all_masks)
    maps = layer_maps(c.state_dict(), masks, t.depth)
    for (inst, sums), M in zip(expected, maps):
        g = inst.group_of_instance()
        rows = inst.rows()
        for idx in range(len(inst)):
            j, h = inst.group_block[g[idx]], inst.group_half[g[idx]]
            got = M.bias[rows[idx]] if h == 0 else (M.w_plus if h > 0 else M.w_minus)[rows[idx], j]
            assert got == pytest.approx(sums[idx], abs=1e-12)


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
