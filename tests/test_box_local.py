"""Local (ℓ∞-ball) differential certificates (subsetsum_lth.box_local) against values found here.

For pairs (f, f′) of the same architecture — f and maps perturbed far more than a ticket's, and f
and its float16 copy — on MLPs and CNNs, the certified per-output intervals of f − f′ on each ball
must contain every value of f − f′ at random points, corners and the end points of a sign-gradient
ascent on ±(f − f′)_k written here (projected onto the ball ∩ [0, 1]), not the package's attack.
The certified-agreement margins of a twin chain are checked the same way. Mutants (an intermediate
CROWN bound shrunk, a ReLU relaxation's upper slope lowered) must be caught by the same checks.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from subsetsum_lth import box_local as bl
from subsetsum_lth import box_ops
from subsetsum_lth.box_crown import DT
from subsetsum_lth.box_net import twin_chain
from subsetsum_lth.certify import CollapsedNet, LayerMap
from subsetsum_lth.errors import UserError
from subsetsum_lth.target import random_target
from tests.helpers import pair_difference

sys.path.insert(0, str(Path(__file__).parent))
from test_box_cnn import ARCH_A, make  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def mlp_pair(seed=0, tau=0.05, sizes=(12, 16, 16, 16, 4)):
    t = random_target(list(sizes), seed=seed)
    rng = np.random.default_rng(seed + 100)
    e = lambda a: tau * (2 * rng.random(a.shape) - 1)
    maps = [LayerMap(L.weight - e(L.weight), L.weight - e(L.weight), L.bias - e(L.bias)) for L in t.layers]
    return t, maps


def attack_values(fn, x0, r, rng, n_random=300, steps=30):
    """Values of fn (N, q) found on the ball ∩ [0, 1] around x0: random points, random corners,
    and sign-gradient ascent/descent on each output from the centre and from random starts."""
    lo, hi = np.clip(x0 - r, 0, 1), np.clip(x0 + r, 0, 1)
    p = len(x0)
    pts = [lo + (hi - lo) * rng.random((n_random, p)), np.where(rng.random((n_random, p)) < 0.5, lo, hi), x0[None]]
    lo_t, hi_t = torch.as_tensor(lo, dtype=DT), torch.as_tensor(hi, dtype=DT)
    with torch.no_grad():
        q = fn(torch.as_tensor(x0[None], dtype=DT)).shape[1]
    step = max(r, 1e-12) / 8
    starts = 3
    rows = torch.arange(2 * q * starts)
    kk = (rows // (2 * starts)) % q                         # the output each row ascends
    sg = torch.where((rows // starts) % 2 == 0, 1.0, -1.0).to(DT)
    X0 = np.vstack([x0[None], lo + (hi - lo) * rng.random((starts - 1, p))])
    X = torch.as_tensor(np.tile(X0, (2 * q, 1)), dtype=DT)
    for _ in range(steps):                                   # every (output, sign, start) at once
        X.requires_grad_(True)
        obj = sg * fn(X)[rows, kk]
        (grad,) = torch.autograd.grad(obj.sum(), X)
        with torch.no_grad():
            X = torch.minimum(torch.maximum(X + step * grad.sign(), lo_t), hi_t)
    pts.append(X.detach().numpy())
    with torch.no_grad():
        return fn(torch.as_tensor(np.vstack(pts), dtype=DT)).numpy()


def worst_violation(fn, x, r, lower, upper, seed=0):
    """The largest amount by which a value found in a ball leaves its certified interval (0: none)."""
    rng = np.random.default_rng(seed)
    worst = 0.0
    for i in range(len(x)):
        v = attack_values(fn, x[i], r, rng)
        worst = max(worst, float((v - upper[i]).max()), float((lower[i] - v).max()))
    return worst


def _images(t, n, seed):
    return np.random.default_rng(seed).random((n, t.input_dim))


def _cases():
    t1, m1 = mlp_pair(0, 0.05)
    t2, m2 = make(ARCH_A, (1, 6, 6), 0, 0.05)
    t3 = random_target([12, 16, 16, 4], seed=3)
    return {"mlp, perturbed": (t1, m1), "cnn, perturbed": (t2, m2), "mlp, float16 copy": (t3, bl.copy_maps(t3)),
            "cnn, float16 copy": (t2, bl.copy_maps(t2))}


CASES = _cases()


@pytest.mark.parametrize("method", ["refined", "interval", "crown"])
@pytest.mark.parametrize("name", list(CASES))
def test_local_intervals_contain_attacked_points(name, method):
    t, maps = CASES[name]
    x = _images(t, 5, 1)
    for r in (0.03, 0.15):
        res = bl.local_diff_intervals(t, maps, x, r, iters=8, batch=3, method=method)
        assert res["lower"].shape == (5, t.sizes[-1]) and np.all(res["lower"] <= res["upper"])
        assert worst_violation(pair_difference(t, maps), x, r, res["lower"], res["upper"]) <= 1e-12


def test_refined_is_tighter_than_intervals_and_not_vacuous():
    for name in ("mlp, perturbed", "cnn, perturbed"):
        t, maps = CASES[name]
        x = _images(t, 6, 2)
        a = bl.local_diff_intervals(t, maps, x, 0.05, iters=8, method="interval")
        b = bl.local_diff_intervals(t, maps, x, 0.05, iters=8, method="refined")
        assert np.all(b["upper"] - b["lower"] <= a["upper"] - a["lower"] + 1e-12), name
        assert (b["upper"] - b["lower"]).sum() < 0.95 * (a["upper"] - a["lower"]).sum(), name


def test_zero_radius_gives_the_difference_at_the_point():
    t, maps = CASES["mlp, perturbed"]
    x = _images(t, 3, 4)
    res = bl.local_diff_intervals(t, maps, x, 0.0, iters=0)
    with torch.no_grad():
        v = pair_difference(t, maps)(torch.as_tensor(x, dtype=DT)).numpy()
    np.testing.assert_allclose(res["lower"], v, atol=1e-9)
    np.testing.assert_allclose(res["upper"], v, atol=1e-9)


def test_float16_copy_is_the_rounded_network():
    t = random_target([12, 16, 4], seed=5)
    maps = bl.copy_maps(t)
    for L, M in zip(t.layers, maps):
        want = torch.as_tensor(L.weight).half().double().numpy()
        np.testing.assert_array_equal(M.w_plus, want)
        np.testing.assert_array_equal(M.w_minus, want)
        assert np.any(M.w_plus != L.weight)       # something was rounded
        np.testing.assert_array_equal(M.bias, torch.as_tensor(L.bias).half().double().numpy())


def test_bad_radius_and_box_are_refused():
    t, maps = CASES["mlp, perturbed"]
    x = _images(t, 1, 0)
    with pytest.raises(UserError, match="radius"):
        bl.local_diff_intervals(t, maps, x, float("nan"))
    with pytest.raises(UserError, match="non-negative box"):
        bl.local_diff_intervals(t, maps, x, 0.1, lo=-1.0, hi=1.0)
    with pytest.raises(UserError, match="unknown local bound method"):
        bl.local_diff_intervals(t, maps, x, 0.1, method="magic")
    with pytest.raises(UserError, match="values each"):
        bl.local_diff_intervals(t, maps, np.zeros((1, 5)), 0.1)


@pytest.mark.parametrize("name", ["mlp, perturbed", "cnn, perturbed"])
def test_agreement_margins_are_below_attacked_margins(name):
    """robust_lower (certified agreement's margins on a twin chain) against the margins found here."""
    t, maps = CASES[name]
    ops = twin_chain(t, [M.w_plus for M in maps], [M.bias for M in maps])
    net = CollapsedNet(maps, target=t)
    x = _images(t, 4, 7)
    for r in (0.02, 0.1):
        X0 = torch.as_tensor(x, dtype=DT)
        with torch.no_grad():
            cls = net(X0).argmax(1)
        low = bl.robust_lower(ops, torch.clamp(X0 - r, 0, 1), torch.clamp(X0 + r, 0, 1), cls).numpy()
        q = t.sizes[-1]
        for i in range(len(x)):
            c = int(cls[i])
            others = [k for k in range(q) if k != c]
            margins = lambda X, c=c, others=others: net(X)[:, [c]] - net(X)[:, others]
            v = attack_values(margins, x[i], r, np.random.default_rng(i))
            assert np.all(low[i] <= v.min(0) + 1e-12)


# ----------------------------------------------------------------------------- mutants

def _shrunk_units(orig):
    def mutant(*args, **kw):
        out = orig(*args, **kw)
        res = {}
        for kd, (lo, up) in out.items():
            fin = torch.isfinite(lo) & torch.isfinite(up)
            mid, half = (lo + up) / 2, (up - lo) / 2
            res[kd] = (torch.where(fin, mid - 0.05 * half, lo), torch.where(fin, mid + 0.05 * half, up))
        return res
    return mutant


def test_mutant_shrunk_intermediate_bound_is_caught(monkeypatch):
    """CROWN bounds of the unstable units shrunk to 5% of their width: the checks above see it."""
    t, maps = CASES["mlp, perturbed"]
    x = _images(t, 5, 1)
    monkeypatch.setattr(bl, "_crown_units", _shrunk_units(bl._crown_units))
    res = bl.local_diff_intervals(t, maps, x, 0.15, iters=8)
    assert worst_violation(pair_difference(t, maps), x, 0.15, res["lower"], res["upper"]) > 1e-6


def test_mutant_shrunk_bound_is_caught_on_agreement_margins(monkeypatch):
    """The shrunk CROWN bounds make some certified margin exceed a margin found in its ball."""
    t, maps = CASES["mlp, perturbed"]
    ops = twin_chain(t, [M.w_plus for M in maps], [M.bias for M in maps])
    net = CollapsedNet(maps, target=t)
    x = _images(t, 4, 7)
    monkeypatch.setattr(bl, "_crown_units", _shrunk_units(bl._crown_units))
    X0 = torch.as_tensor(x, dtype=DT)
    with torch.no_grad():
        cls = net(X0).argmax(1)
    low = bl.robust_lower(ops, torch.clamp(X0 - 0.1, 0, 1), torch.clamp(X0 + 0.1, 0, 1), cls).numpy()
    worst = 0.0
    for i in range(len(x)):
        c = int(cls[i])
        others = [k for k in range(t.sizes[-1]) if k != c]
        v = attack_values(lambda X: net(X)[:, [c]] - net(X)[:, others], x[i], 0.1, np.random.default_rng(i))
        worst = max(worst, float((low[i] - v.min(0)).max()))
    assert worst > 1e-6


def test_mutant_relu_upper_slope_is_caught(monkeypatch):
    """The ReLU's upper chord of an unstable unit at a fifth of its slope (no longer above σ; in
    the a′ term and in D's planes): caught."""
    from subsetsum_lth import box_relax
    t, maps = CASES["mlp, perturbed"]
    x = _images(t, 5, 1)
    relu = box_relax.relu_planes

    def mutant(l, u, alpha):
        ls, s, sb = relu(l, u, alpha)
        uns = (l < 0) & (u > 0)
        return ls, torch.where(uns, 0.2 * s, s), sb
    monkeypatch.setattr(box_relax, "relu_planes", mutant)
    res = bl.local_diff_intervals(t, maps, x, 0.15, iters=0)
    assert worst_violation(pair_difference(t, maps), x, 0.15, res["lower"], res["upper"]) > 1e-6


def test_a_residual_target_is_refused_not_read_as_a_chain():
    """An outside audit found local_diff_intervals reading a residual target as the chain of its
    layers (the skip connections' adds dropped): intervals that missed f − f′ at the ball's own
    centre. Residual targets are refused in one line until the local bounds walk the graph."""
    from subsetsum_lth.box_net import op_chain
    from subsetsum_lth.ops import canonical_arch, param_paths
    from subsetsum_lth.target import from_arch_state
    conv = {"op": "conv2d", "in_channels": 2, "out_channels": 2, "kernel": [3, 3], "stride": [1, 1],
            "padding": [1, 1], "bias": True}
    arch = [{**conv, "in_channels": 1}, {"op": "relu"},
            {"op": "residual", "body": [conv, {"op": "relu"}, conv], "shortcut": []}, {"op": "relu"},
            {"op": "flatten"}, {"op": "linear", "in_features": 32, "out_features": 2, "bias": True}]
    rng = np.random.default_rng(0)
    state = {}
    for path, op in param_paths(canonical_arch(arch)):
        shp = ((op["out_channels"], op["in_channels"], *op["kernel"]) if op["op"] == "conv2d"
               else (op["out_features"], op["in_features"]))
        state[f"{path}.weight"] = torch.as_tensor(rng.standard_normal(shp))
        state[f"{path}.bias"] = torch.as_tensor(rng.standard_normal(shp[0]))
    t = from_arch_state(state, arch, (1, 4, 4), "residual")
    maps = bl.copy_maps(t)
    with pytest.raises(UserError, match="not for residual targets") as exc:
        bl.local_diff_intervals(t, maps, rng.random((2, 16)), 0.0)
    assert "\n" not in str(exc.value)
    with pytest.raises(ValueError, match="op_graph"):
        op_chain(t, maps)
