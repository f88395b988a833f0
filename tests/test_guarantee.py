"""Property tests of the ε guarantee: whenever a run reports success,
‖f(x) − ĝ(x)‖ ≤ certified ≤ ε on many points of the ball, with ĝ rebuilt from the files."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import event, given, settings
from hypothesis import strategies as st
from safetensors.numpy import load_file

from subsetsum_lth.approximate import ApproximateConfig, approximate
from subsetsum_lth.construction import ConstructionConfig
from subsetsum_lth.errors import IncompleteRun
from subsetsum_lth.solve import SolveConfig
from subsetsum_lth.target import Layer, Target
from tests.helpers import ascend, probe_points, rebuild_g


@st.composite
def targets(draw):
    depth = draw(st.integers(1, 3))
    sizes = [draw(st.integers(1, 8)) for _ in range(depth + 1)]
    bias = draw(st.booleans())
    big_norm = draw(st.booleans())
    seed = draw(st.integers(0, 2 ** 16))
    rng = np.random.default_rng(seed)
    layers = []
    for p, q in zip(sizes[:-1], sizes[1:]):
        W = rng.uniform(-1, 1, size=(q, p))
        nrm = np.linalg.norm(W, 2)
        W = W / nrm * (rng.uniform(1.1, 2.0) if big_norm else rng.uniform(0.3, 1.0))
        W = np.clip(W, -0.95, 0.95).astype(np.float32).astype(np.float64)
        b = rng.uniform(-0.5, 0.5, size=q).astype(np.float32).astype(np.float64) if bias else None
        layers.append(Layer(W, b))
    return Target(layers)


def _run(tmp_path, target, eps, domain, seed, objective, m, radius, width="auto"):
    cfg = ApproximateConfig(
        construction=ConstructionConfig(input_domain=domain, seed=seed, block_width=m, width=width),
        solve=SolveConfig(solver="mitm", objective=objective, workers=1),
        eps=eps, input_radius=radius, overwrite=True, plots=False,
        empirical_samples=128, ascent_steps=30)
    return approximate(target, cfg, tmp_path)


M = 40  # units per block: ~20 live coefficients per sign half, so most runs succeed


@settings(max_examples=60)
@given(target=targets(), eps=st.sampled_from([0.1, 0.3, 1.0]),
       domain=st.sampled_from(["signed", "nonnegative"]), seed=st.integers(0, 1000),
       objective=st.sampled_from(["error", "cardinality"]), radius=st.sampled_from([0.5, 1.0, 3.0]))
def test_certified_bound_holds(tmp_path_factory, target, eps, domain, seed, objective, radius):
    out = tmp_path_factory.mktemp("run")
    try:
        report = _run(out, target, eps, domain, seed, objective, m=M, radius=radius)
    except IncompleteRun:
        # a reported failure claims nothing, but it must be a real one
        import json
        rep = json.loads((out / "report.json").read_text())
        assert rep["certified_bound"] > eps or rep["infeasible_count"] > 0
        event("reported failure")
        return
    event("success")
    cert = report["certified_bound"]
    assert cert <= eps
    g = rebuild_g(out)
    nonneg = domain == "nonnegative"
    rng = np.random.default_rng(seed)
    X = probe_points(target.sizes[0], radius, nonneg, rng)
    f = target.forward
    with torch.no_grad():
        e = (f(torch.from_numpy(X)) - g(torch.from_numpy(X))).norm(dim=1).numpy()
    starts = X[np.argsort(e)[-8:]]
    Xa = ascend(f, g, starts, radius, nonneg)
    with torch.no_grad():
        ea = (f(torch.from_numpy(Xa)) - g(torch.from_numpy(Xa))).norm(dim=1).numpy()
    worst = max(e.max(), ea.max())
    assert worst <= cert * (1 + 1e-9) + 1e-12, (worst, cert)
    assert report["empirical_bound"] <= cert * (1 + 1e-6) + 1e-9

    # masks are 0/1 and the random weights are exactly the seeded draw
    masks = load_file(str(out / "masks.safetensors"))
    state = load_file(str(out / "random_net.safetensors"))
    for k, mk in masks.items():
        assert mk.dtype == np.uint8 and set(np.unique(mk)) <= {0, 1}
    from subsetsum_lth.construction import draw_layer_pair, plan_layers
    plans = plan_layers(target, ConstructionConfig(input_domain=domain, seed=seed, block_width=M))
    for i, (plan, L) in enumerate(zip(plans, report["layers"])):
        plan.extensions = np.array(L["block_extensions"])
        pair = draw_layer_pair(plan, seed)
        for key, v in ((f"{4 * i}.weight", pair.w1), (f"{4 * i}.bias", pair.b1),
                       (f"{4 * i + 2}.weight", pair.w2), (f"{4 * i + 2}.bias", pair.b2)):
            assert state[key].tobytes() == v.tobytes()


def test_certificate_is_not_vacuous(tmp_path):
    """On a fixed case the bound is small but strictly positive, and the empirical lower bound
    sits below it within a sensible factor (a bound of 0 or 1e9 would fail)."""
    rng = np.random.default_rng(0)
    W = rng.uniform(-0.5, 0.5, (4, 5))
    t = Target([Layer(W, rng.uniform(-0.2, 0.2, 4)), Layer(rng.uniform(-0.5, 0.5, (2, 4)), None)])
    rep = _run(tmp_path, t, 0.1, "signed", 3, "error", m=34, radius=1.0)
    assert 0 < rep["empirical_bound"] <= rep["certified_bound"] <= 0.1
    assert rep["certified_bound"] < 100 * rep["empirical_bound"]


def test_failure_is_reported_not_claimed(tmp_path):
    """A block width too small for ε must be reported (IncompleteRun), with files written."""
    rng = np.random.default_rng(1)
    t = Target([Layer(rng.uniform(-0.9, 0.9, (6, 6)), None)])
    with pytest.raises(IncompleteRun):
        _run(tmp_path, t, 1e-4, "signed", 0, "error", m=4, radius=1.0, width="formula")
    assert (tmp_path / "masks.safetensors").exists() and (tmp_path / "report.json").exists()


def test_growth_is_capped_over_all_rounds(tmp_path):
    """--width auto grows a block at most max_growth steps over the whole run (every round of
    the network-mode τ loop included), and a failure at that cap is reported."""
    rng = np.random.default_rng(1)
    t = Target([Layer(rng.uniform(-0.9, 0.9, (6, 6)), None)])
    cfg = ApproximateConfig(
        construction=ConstructionConfig(input_domain="signed", seed=0, block_width=4, grow=4, max_growth=2),
        solve=SolveConfig(solver="mitm", objective="error", workers=1),
        eps=1e-4, input_radius=1.0, overwrite=True, plots=False, empirical_samples=16, ascent_steps=5)
    with pytest.raises(IncompleteRun):
        approximate(t, cfg, tmp_path)
    import json
    rep = json.loads((tmp_path / "report.json").read_text())
    assert max(rep["layers"][0]["block_extensions"]) == 2
    assert rep["layers"][0]["block_width_final_max"] == 4 + 2 * 4
