"""The box certificate of residual networks (box_net.op_graph and the graph walker of
box_net.backward / hidden_bounds): the coefficients of an objective go into both branches of a
residual block at its add and are summed at its fork.

Soundness: on small random residual CNNs (identity and 1x1 projection shortcuts, boxes [0, 1]
and [-0.5, 1]) every value found by sampling and by an attack written here stays within the
certified output intervals, and every op's value within its hidden bounds (CROWN and interval
modes); a 1-d hand case where the bound is attained; mutants of the add (its second branch
dropped in the backward pass, the fork keeping one branch's coefficients, an add's interval
counting one branch) that these tests reject; the box bound below the ball's on a residual net
without unstable ReLUs; the CLI (approximate/certify --input-domain box) on a residual target.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from subsetsum_lth import box_net
from subsetsum_lth import box_ops as bo
from subsetsum_lth import certify_box as cb
from subsetsum_lth.box_crown import DT
from subsetsum_lth.certify import CollapsedNet, LayerMap, certified_bound
from subsetsum_lth.ops import canonical_arch, param_paths
from subsetsum_lth.target import from_arch_state
from tests.helpers import assert_no_ball_point_changes_the_class, pair_difference, sign_ascent

#: tiny convolutions: one torch thread (several contend on a loaded 2-core machine)
pytestmark = pytest.mark.usefixtures("one_torch_thread")

RELU = {"op": "relu"}


def conv(i, o, k, s=1, p=0):
    return {"op": "conv2d", "in_channels": i, "out_channels": o, "kernel": [k, k], "stride": [s, s],
            "padding": [p, p], "bias": True}


def lin(i, o, bias=True):
    return {"op": "linear", "in_features": i, "out_features": o, "bias": bias}


def res(body, shortcut=()):
    return {"op": "residual", "body": list(body), "shortcut": list(shortcut)}


#: stem, identity block, projection block (stride 2), pooling, head
ARCH_ID_PROJ = [conv(1, 2, 3, 1, 1), RELU,
                res([conv(2, 2, 3, 1, 1), RELU, conv(2, 2, 3, 1, 1)]), RELU,
                res([conv(2, 3, 3, 2, 1), RELU, conv(3, 3, 3, 1, 1)], [conv(2, 3, 1, 2, 0)]), RELU,
                {"op": "avgpool2d", "kernel": [2, 2], "stride": [2, 2]}, {"op": "flatten"}, lin(3, 2)]
#: a max pool inside the body, a linear block after the flatten
ARCH_POOL = [conv(1, 2, 2), RELU,
             res([conv(2, 2, 3, 1, 1), RELU, {"op": "maxpool2d", "kernel": [2, 2], "stride": [1, 1]},
                  {"op": "flatten"}, lin(8, 8)], [{"op": "maxpool2d", "kernel": [2, 2], "stride": [1, 1]},
                                                 {"op": "flatten"}]), RELU,
             res([lin(8, 4), RELU, lin(4, 8)]), RELU, lin(8, 3)]

CASES = {
    "identity+projection, [0,1]": (ARCH_ID_PROJ, (1, 6, 6), 0, 0.2, 0.0, 1.0),
    "identity+projection, [-0.5,1]": (ARCH_ID_PROJ, (1, 6, 6), 1, 0.2, -0.5, 1.0),
    "identity+projection, small errors": (ARCH_ID_PROJ, (1, 6, 6), 2, 0.01, 0.0, 1.0),
    "max pool in the body, fc block, [0,1]": (ARCH_POOL, (1, 4, 4), 3, 0.15, 0.0, 1.0),
}


def make(arch, shape, seed, tau, positive=False):
    """A random residual target of ``arch`` and ĝ's maps: every weight and bias moved by up to ``tau``."""
    rng = np.random.default_rng(seed)
    state = {}
    for path, op in param_paths(canonical_arch(arch)):
        shp = ((op["out_channels"], op["in_channels"], *op["kernel"]) if op["op"] == "conv2d"
               else (op["out_features"], op["in_features"]))
        w = rng.standard_normal(shp) / np.sqrt(np.prod(shp[1:]))
        b = 0.3 * rng.standard_normal(shp[0])
        if positive:
            w, b = np.abs(w), np.abs(b)
        state[f"{path}.weight"] = torch.as_tensor(w)
        state[f"{path}.bias"] = torch.as_tensor(b)
    t = from_arch_state(state, arch, shape, "random residual cnn")
    assert t.graph is not None
    e = lambda a: tau * (2 * rng.random(a.shape) - 1)
    maps = [LayerMap(L.weight - e(L.weight), L.weight - e(L.weight), L.bias - e(L.bias)) for L in t.layers]
    return t, maps


def _extremes(t, maps, lo, hi, n=1500, seed=0):
    """Largest / smallest (f − ĝ)_k found by random points, random corners and the attack on ±(f − ĝ)_k."""
    diff = pair_difference(t, maps)
    gen = torch.Generator().manual_seed(seed)
    x = lo + (hi - lo) * torch.rand(n, t.input_dim, generator=gen, dtype=DT)
    corner = torch.where(torch.rand(n, t.input_dim, generator=gen, dtype=DT) < 0.5, lo, hi).to(DT)
    X = torch.cat([x, corner])
    with torch.no_grad():
        d = diff(X)
    mx, mn = d.max(0).values, d.min(0).values
    for k in range(d.shape[1]):
        for sgn in (1.0, -1.0):
            v, _ = sign_ascent(lambda z: sgn * diff(z)[:, k], X[torch.topk(sgn * d[:, k], 8).indices], lo, hi)
            if sgn > 0:
                mx[k] = max(mx[k], v.max())
            else:
                mn[k] = min(mn[k], -v.max())
    return mx.numpy(), mn.numpy(), X


def _node_values(ops, inputs, x, split):
    """Every op's output (ĝ's x', f's x) at the points x (N, p), computed op by op (written here)."""
    Xg = x if split != "both" else torch.cat([x.clamp_min(0), x.clamp_max(0)], 1)
    vals = []
    for op, src in zip(ops, inputs):
        if isinstance(op, bo.AddOp):
            (a, af), (b, bf) = vals[src[0]], vals[src[1]]
            vals.append((a + b, af + bf))
            continue
        g, f = (Xg, Xg) if src[0] < 0 else vals[src[0]]
        if op.affine:
            vals.append(op.forward(g, f))
        elif op.name == "relu":
            vals.append((g.clamp_min(0), f.clamp_min(0)))
        elif op.name == "flatten":
            vals.append((g, f))
        else:
            pool = F.max_pool2d if op.name == "maxpool2d" else F.avg_pool2d
            ap = lambda v: pool(v.reshape(-1, *op.in_shape), op.kernel, op.stride).reshape(len(v), -1)
            vals.append((ap(g), ap(f)))
    return vals


def _hidden_bounds_hold(t, maps, lo, hi, X, ibp):
    """Whether every op's value at the points X lies within its hidden bounds (CROWN or interval)."""
    lo_a, hi_a = np.full(t.input_dim, lo, dtype=float), np.full(t.input_dim, hi, dtype=float)
    split = box_net._split_of(lo_a, hi_a)
    ops, inputs = box_net.op_graph(t, maps, split)
    Xlo, Xhi = box_net.input_box(split, torch.as_tensor(lo_a)[None], torch.as_tensor(hi_a)[None])
    with torch.no_grad():
        bounds = box_net.hidden_bounds(ops, Xlo, Xhi, split, ibp=ibp, inputs=inputs)
        vals = _node_values(ops, inputs, X, split)
        out_g, out_f = vals[-1]
        # the evaluator agrees with the target and the collapsed ĝ
        np.testing.assert_allclose(out_f.numpy(), t.forward(X).numpy(), rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(out_g.numpy(), CollapsedNet(maps, target=t)(X).numpy(), rtol=1e-9, atol=1e-9)
    tol = 1e-9
    for b, (g, f) in zip(bounds[:-1], vals[:-1]):
        d = f - g
        for v, low, up in ((g, b.l, b.u), (d, b.dl, b.du), (f, b.lf, b.uf)):
            if not (bool((v >= low - tol).all()) and bool((v <= up + tol).all())):
                return False
    return True


def _sound(name, iters=5):
    arch, shape, seed, tau, lo, hi = CASES[name]
    t, maps = make(arch, shape, seed, tau)
    low, up, corners, _ = box_net.chain_intervals(t, maps, lo, hi, iters=iters)
    mx, mn, X = _extremes(t, maps, lo, hi)
    ok = bool(np.all(up >= mx - 1e-9) and np.all(low <= mn + 1e-9))
    ok = ok and _hidden_bounds_hold(t, maps, lo, hi, X[::7], ibp=False)
    ok = ok and _hidden_bounds_hold(t, maps, lo, hi, X[::7], ibp=True)
    return ok, (low, up, mn, mx, corners, t)


@pytest.mark.parametrize("name", sorted(CASES))
def test_residual_intervals_contain_every_value_found(name):
    ok, (low, up, mn, mx, corners, t) = _sound(name)
    assert ok, f"{name}: found [{mn}, {mx}] outside the certified [{low}, {up}] (or a hidden value outside its bounds)"
    assert corners.shape == (2 * len(up), t.input_dim)
    assert np.all(np.isfinite(low)) and np.all(np.isfinite(up))


def test_graph_walker_on_a_chain_is_the_chain_backward():
    """The graph walker with the inputs of a chain (each op reads the one before) computes what the
    chain's backward pass computes."""
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).parent))
    from test_box_cnn import CASES as CNN_CASES, make as make_cnn
    arch, shape, seed, tau, lo, hi = CNN_CASES["conv-maxpool-conv-avgpool-fc, [0,1]"]
    t, maps = make_cnn(arch, shape, seed, tau)
    ops = box_net.op_chain(t, maps, "plus")
    chain_inputs = [[j - 1] for j in range(len(ops))]
    Xlo, Xhi = torch.zeros(1, t.input_dim, dtype=DT), torch.ones(1, t.input_dim, dtype=DT)
    with torch.no_grad():
        bounds = box_net.hidden_bounds(ops, Xlo, Xhi, "plus")
        q = ops[-1].n_out
        I = torch.eye(q, dtype=DT)[None]
        lam_d = torch.cat([I, -I], 1)
        a, ca = box_net.backward(ops, bounds, len(ops) - 1, torch.zeros_like(lam_d), lam_d, Xlo, Xhi, "plus")
        b, cb_ = box_net.backward(ops, bounds, len(ops) - 1, torch.zeros_like(lam_d), lam_d, Xlo, Xhi, "plus",
                                  inputs=chain_inputs)
    np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(cb_.numpy(), ca.numpy(), rtol=1e-12, atol=1e-14)


# ----------------------------------------------------------------------------- hand cases: attained

E = 0.01
HAND = {
    # body and projection shortcut err the same way: f = 2x, ĝ = 2(1 − E)x; the errors add
    "projection": ([lin(1, 1, False), RELU, res([lin(1, 1, False)], [lin(1, 1, False)]), RELU, lin(1, 1, False)],
                   [1.0, 1.0, 1.0, 1.0], [0.0, E, E, 0.0], 2 * E),
    # identity shortcut exact, body (×2) errs: f = 3x, ĝ = (3 − E)x
    "identity": ([lin(1, 1, False), RELU, res([lin(1, 1, False)]), RELU, lin(1, 1, False)],
                 [1.0, 2.0, 1.0], [0.0, E, 0.0], E),
    # the head errs on the sum x + x: f − ĝ = 2E x
    "head after the add": ([lin(1, 1, False), RELU, res([lin(1, 1, False)]), RELU, lin(1, 1, False)],
                           [1.0, 1.0, 1.0], [0.0, 0.0, E], 2 * E),
}


def _hand(name):
    arch, ws, es, _ = HAND[name]
    state = {f"{p}.weight": torch.tensor([[w]], dtype=DT) for (p, _), w in zip(param_paths(canonical_arch(arch)), ws)}
    t = from_arch_state(state, arch, (1,), "hand")
    maps = [LayerMap(L.weight - e, L.weight - e, np.zeros(1)) for L, e in zip(t.layers, es)]
    return t, maps


def _hand_caught() -> bool:
    """Whether a hand case's certified upper end misses the attained difference (at x = 1)."""
    for name, (_, _, _, attained) in HAND.items():
        t, maps = _hand(name)
        low, up, _, _ = box_net.chain_intervals(t, maps, 0.0, 1.0, iters=0)
        x1 = torch.ones(1, 1, dtype=DT)
        with torch.no_grad():
            actual = float(pair_difference(t, maps)(x1)[0, 0])
        assert math.isclose(actual, attained, rel_tol=1e-12)
        if up[0] < actual - 1e-12 or low[0] > 1e-12:
            return True
    return False


@pytest.mark.parametrize("name", sorted(HAND))
def test_residual_box_bound_is_attained_by_hand(name):
    t, maps = _hand(name)
    attained = HAND[name][3]
    low, up, corners, _ = box_net.chain_intervals(t, maps, 0.0, 1.0, iters=0)
    assert up[0] == pytest.approx(attained, rel=1e-12, abs=1e-15)        # attained at x = 1
    assert low[0] == pytest.approx(0.0, abs=1e-15)                        # and 0 at x = 0
    cert = cb.box_certificate(t, maps, 0.0, 1.0, iters=0)
    assert cert["bound"] == pytest.approx(attained, rel=1e-8) and cert["bound"] >= attained
    assert "op graph" in cert["method"]
    assert corners[1, 0] == 1.0 and corners[0, 0] == 0.0     # the corners minimising −(f − ĝ) and f − ĝ


# ----------------------------------------------------------------------------- mutants

def _drop_second_branch(mp):
    orig = bo.AddOp.backward

    def backward(self, lam_z, lam_d, b=None, params=None):
        first, (z, d), c = orig(self, lam_z, lam_d, b, params)
        return first, (torch.zeros_like(z), torch.zeros_like(d)), c       # the second branch gets nothing
    mp.setattr(bo.AddOp, "backward", backward)


def _fork_keeps_one(mp):
    def acc(pending, j, lam_z, lam_d):
        pending[j] = (lam_z, lam_d)          # overwrites instead of summing at a fork
    mp.setattr(box_net, "_accumulate", acc)


def _add_interval_once(mp):
    mp.setattr(bo.AddOp, "interval2", lambda self, b1, b2: b1)


MUTANTS = {"add's second branch dropped in the backward pass": _drop_second_branch,
           "fork keeps one branch's coefficients": _fork_keeps_one,
           "add's interval counts one branch": _add_interval_once}


def _caught() -> bool:
    if _hand_caught():
        return True
    for name in ("identity+projection, [0,1]", "max pool in the body, fc block, [0,1]"):
        ok, _ = _sound(name, iters=0)
        if not ok:
            return True
    return False


@pytest.mark.parametrize("mutant", sorted(MUTANTS))
def test_add_mutant_is_caught(monkeypatch, mutant):
    MUTANTS[mutant](monkeypatch)
    assert _caught(), f"mutant {mutant!r} was not caught"


def test_unmutated_is_not_caught():
    assert not _caught()


# ----------------------------------------------------------------------------- box vs ball

def test_box_bound_is_below_the_ball_bound_without_unstable_relus():
    """Positive weights and biases on [0, 1]: every ReLU is stable, CROWN is exact per output; the
    box [0, 1]^p lies in the ball ‖x‖₂ ≤ √p, x ≥ 0, so the box bound is at most the ball's."""
    t, maps = make(ARCH_ID_PROJ, (1, 6, 6), 5, 0.05, positive=True)
    maps = [LayerMap(np.abs(M.w_plus), np.abs(M.w_minus), np.abs(M.bias)) for M in maps]
    box = cb.box_certificate(t, maps, 0.0, 1.0, iters=0)["bound"]
    ball = certified_bound(t, maps, math.sqrt(t.input_dim), "nonnegative").bound
    mx, mn, _ = _extremes(t, maps, 0.0, 1.0, n=300)
    found = float(np.sqrt(np.sum(np.maximum(np.abs(mx), np.abs(mn)) ** 2)))
    assert found <= box <= ball
    assert box <= found * math.sqrt(len(mx)) * (1 + 1e-9)     # exact per output: within √q of the sup


# ----------------------------------------------------------------------------- memory, refusals

def test_residual_bounds_are_chunked_without_changing_them(monkeypatch):
    arch, shape, seed, tau, lo, hi = CASES["identity+projection, [0,1]"]
    t, maps = make(arch, shape, seed, tau)
    a = box_net.chain_intervals(t, maps, lo, hi, iters=0)
    monkeypatch.setattr(box_net, "CHUNK_ELEMENTS", 1)       # one unit per pass
    b = box_net.chain_intervals(t, maps, lo, hi, iters=0)
    np.testing.assert_allclose(b[0], a[0], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(b[1], a[1], rtol=1e-12, atol=1e-14)


def test_signed_hidden_input_is_refused_in_one_line():
    """A layer reading an add without a ReLU after it (ĝ splits its input's signs there): refused."""
    from subsetsum_lth.errors import UserError
    arch = [lin(1, 1), RELU, res([lin(1, 1)]), lin(1, 1)]
    t, maps = make(arch, (1,), 0, 0.1)
    with pytest.raises(UserError, match="can be negative") as exc:
        box_net.chain_intervals(t, maps, 0.0, 1.0, iters=0)
    assert "\n" not in str(exc.value) and "--input-domain nonnegative" in str(exc.value)


# ----------------------------------------------------------------------------- local agreement

def test_residual_local_agreement_is_sound():
    """Where f and ĝ are certified to keep f's class on the ball, no random point of the ball changes it."""
    from subsetsum_lth.box_agreement import local_agreement
    arch, shape, seed, tau, lo, hi = CASES["identity+projection, small errors"]
    t, maps = make(arch, shape, seed, tau)
    rng = np.random.default_rng(1)
    x = rng.random((40, t.input_dim))
    rho = 0.02
    frac, mask = local_agreement(t, maps, x, rho, 0.0, 1.0, return_mask=True)
    assert 0 < frac <= 1
    assert_no_ball_point_changes_the_class(t, maps, x, rho, mask, rng)


# ----------------------------------------------------------------------------- a property

@settings(max_examples=12)
@given(seed=st.integers(0, 10_000), tau=st.sampled_from([0.02, 0.2]), signed=st.booleans(),
       proj=st.booleans())
def test_random_residual_nets_stay_within_the_intervals(seed, tau, signed, proj):
    """Random 1-block residual nets (identity or projection shortcut): sampled points and the
    attack's stay within the certified intervals."""
    shortcut = [conv(2, 2, 1)] if proj else []
    arch = [conv(1, 2, 3, 1, 1), RELU, res([conv(2, 2, 3, 1, 1), RELU, conv(2, 2, 3, 1, 1)], shortcut), RELU,
            {"op": "flatten"}, lin(2 * 16, 2)]
    t, maps = make(arch, (1, 4, 4), seed, tau)
    lo, hi = (-0.5, 1.0) if signed else (0.0, 1.0)
    low, up, _, _ = box_net.chain_intervals(t, maps, lo, hi, iters=3)
    mx, mn, _ = _extremes(t, maps, lo, hi, n=300)
    assert np.all(up >= mx - 1e-9) and np.all(low <= mn + 1e-9)
