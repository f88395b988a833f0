"""The box certificate for CNNs (subsetsum_lth.box_ops / box_net) against values computed here.

Each case is a pair (f, ĝ) of small image networks (conv, ReLU, max/average pooling, flatten,
linear) with ĝ's weights perturbed far more than a ticket's, so the relaxations matter. The
certified per-output intervals of f − ĝ over the box must contain every value found by dense
enumeration (2-pixel inputs: a 201 × 201 grid), random points and corners, and sign-gradient
ascent written here (not the package's attack). Hand cases where a relaxation is attained, and
mutants (a ReLU slope, a pooling term, an add's second branch dropped) that these checks catch.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from subsetsum_lth import box_net
from subsetsum_lth import box_ops as bo
from subsetsum_lth import box_relax as rx
from subsetsum_lth import certify_box as cb
from subsetsum_lth.box_crown import DT, Bounds
from subsetsum_lth.certify import CollapsedNet, LayerMap
from subsetsum_lth.target import from_arch_state
from subsetsum_lth.layerkinds import kinds_from_arch
from tests.helpers import assert_no_ball_point_changes_the_class, pair_difference, sign_ascent

sys.path.insert(0, str(Path(__file__).parent))
from test_certificate_box import CASES as MLP_CASES  # noqa: E402


def conv(i, o, k, s=1, p=0):
    return {"op": "conv2d", "in_channels": i, "out_channels": o, "kernel": [k, k], "stride": [s, s],
            "padding": [p, p], "bias": True}


def pool(name, k, s):
    return {"op": name, "kernel": list(k), "stride": list(s)}


RELU, FLAT = {"op": "relu"}, {"op": "flatten"}


def fc(i, o):
    return {"op": "linear", "in_features": i, "out_features": o, "bias": True}


def make(arch, shape, seed, tau):
    """A random target of ``arch`` and ĝ's maps: every weight and bias moved by up to ``tau``."""
    rng = np.random.default_rng(seed)
    kinds, _ = kinds_from_arch(arch, shape)
    idx = [i for i, op in enumerate(arch) if op["op"] in ("conv2d", "linear")]
    state = {}
    for i, k in zip(idx, kinds):
        state[f"{i}.weight"] = torch.as_tensor(rng.standard_normal(k.weight_shape()) / np.sqrt(k.p))
        state[f"{i}.bias"] = torch.as_tensor(0.3 * rng.standard_normal(k.q))
    t = from_arch_state(state, arch, shape, "random cnn")
    e = lambda a: tau * (2 * rng.random(a.shape) - 1)
    maps = [LayerMap(L.weight - e(L.weight), L.weight - e(L.weight), L.bias - e(L.bias)) for L in t.layers]
    return t, maps


ARCH_A = [conv(1, 2, 3, 1, 1), RELU, pool("maxpool2d", (2, 2), (2, 2)), conv(2, 3, 2), RELU,
          pool("avgpool2d", (2, 2), (1, 1)), FLAT, fc(3, 4), RELU, fc(4, 2)]
ARCH_OVERLAP = [conv(1, 2, 2), RELU, pool("maxpool2d", (2, 2), (1, 1)), FLAT, fc(8, 3), RELU, fc(3, 2)]
ARCH_2PX = [conv(1, 3, 1), RELU, pool("maxpool2d", (1, 2), (1, 1)), FLAT, fc(3, 3), RELU, fc(3, 2)]

CASES = {
    "conv-maxpool-conv-avgpool-fc, [0,1]": (ARCH_A, (1, 6, 6), 0, 0.2, 0.0, 1.0),
    "conv-maxpool-conv-avgpool-fc, [-1,1]": (ARCH_A, (1, 6, 6), 1, 0.2, -1.0, 1.0),
    "overlapping max pool, [0,1]": (ARCH_OVERLAP, (1, 4, 4), 2, 0.2, 0.0, 1.0),
    "overlapping max pool, [-0.5,1]": (ARCH_OVERLAP, (1, 4, 4), 3, 0.15, -0.5, 1.0),
    "small errors, [0,1]": (ARCH_A, (1, 6, 6), 4, 0.01, 0.0, 1.0),
}


#: tiny convolutions: one torch thread (several contend on a loaded 2-core machine)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _empirical_extremes(t, maps, lo, hi, n=3000, seed=0):
    """Largest / smallest (f − ĝ)_k found by random points, random corners and ascent."""
    diff = pair_difference(t, maps)
    p = t.input_dim
    gen = torch.Generator().manual_seed(seed)
    x = lo + (hi - lo) * torch.rand(n, p, generator=gen, dtype=DT)
    corner = torch.where(torch.rand(n, p, generator=gen, dtype=DT) < 0.5, lo, hi)
    X = torch.cat([x, corner.to(DT)])
    with torch.no_grad():
        d = diff(X)
    mx, mn = d.max(0).values, d.min(0).values
    q = d.shape[1]
    for k in range(q):
        for sgn in (1.0, -1.0):
            top = X[torch.topk(sgn * d[:, k], 8).indices]
            v, _ = sign_ascent(lambda z: sgn * diff(z)[:, k], top, lo, hi)
            if sgn > 0:
                mx[k] = max(mx[k], v.max())
            else:
                mn[k] = min(mn[k], -v.max())
    return mx.numpy(), mn.numpy()


@pytest.mark.parametrize("name", sorted(CASES))
def test_cnn_intervals_contain_every_value_found(name):
    arch, shape, seed, tau, lo, hi = CASES[name]
    t, maps = make(arch, shape, seed, tau)
    low, up, corners, _ = box_net.chain_intervals(t, maps, lo, hi, iters=8)
    mx, mn = _empirical_extremes(t, maps, lo, hi)
    assert np.all(up >= mx - 1e-9), f"{name}: found {mx} above the certified upper {up}"
    assert np.all(low <= mn + 1e-9), f"{name}: found {mn} below the certified lower {low}"
    assert corners.shape == (2 * len(up), t.input_dim)
    assert np.all(corners >= lo) and np.all(corners <= hi)


def _grid_extremes(t, maps, lo, hi, n=201):
    diff = pair_difference(t, maps)
    a = torch.linspace(lo, hi, n, dtype=DT)
    X = torch.cartesian_prod(a, a)
    with torch.no_grad():
        d = diff(X)
    return d.max(0).values.numpy(), d.min(0).values.numpy()


@pytest.mark.parametrize("seed", range(4))
def test_two_pixel_cnn_against_enumeration(seed):
    """Inputs of 2 pixels (1×1×2): the values on a dense grid (attained values, so lower bounds of
    the maxima) must lie in the certified intervals; they are not far inside them either."""
    lo, hi = (0.0, 1.0) if seed % 2 == 0 else (-1.0, 1.0)
    t, maps = make(ARCH_2PX, (1, 1, 2), seed, 0.2)
    low, up, _, _ = box_net.chain_intervals(t, maps, lo, hi, iters=8)
    mx, mn = _grid_extremes(t, maps, lo, hi)
    assert np.all(up >= mx - 1e-9) and np.all(low <= mn + 1e-9)
    assert np.all(up - low < 20 * (mx - mn) + 1.0)        # not vacuous


def test_chain_matches_the_mlp_certificate_on_mlps():
    """On the MLP cases the op chain gives the MLP code's intervals (default slopes), up to rounding."""
    for name, (target, maps, lo, hi) in MLP_CASES.items():
        a = cb.output_intervals(target, maps, lo, hi, iters=0)
        b = box_net.chain_intervals(target, maps, lo, hi, iters=0)
        np.testing.assert_allclose(b[0], a[0], rtol=1e-12, atol=1e-12, err_msg=name)
        np.testing.assert_allclose(b[1], a[1], rtol=1e-12, atol=1e-12, err_msg=name)


# ----------------------------------------------------------------------------- hand cases (attained)

def _hand_pool(wf, wg):
    """f = max pool(σ(w x)) over 2 pixels, 1 channel, 1×1 conv weights wf (f) / wg (ĝ), then a
    linear 1 -> 1 identity: f − ĝ = max_j σ(wf x_j) − max_j σ(wg x_j)."""
    arch = [conv(1, 1, 1), RELU, pool("maxpool2d", (1, 2), (1, 2)), FLAT, fc(1, 1)]
    state = {"0.weight": torch.full((1, 1, 1, 1), float(wf), dtype=DT), "0.bias": torch.zeros(1, dtype=DT),
             "4.weight": torch.ones(1, 1, dtype=DT), "4.bias": torch.zeros(1, dtype=DT)}
    t = from_arch_state(state, arch, (1, 1, 2))
    maps = [LayerMap(np.full((1, 1), float(wg)), np.full((1, 1), float(wg)), np.zeros(1)),
            LayerMap(np.ones((1, 1)), np.ones((1, 1)), np.zeros(1))]
    return t, maps


def test_max_pool_difference_is_attained():
    """f − ĝ = 0.2·max(x₁, x₂) over [0, 1]²: the interval is exactly [0, 0.2] (both ends attained)."""
    t, maps = _hand_pool(1.0, 0.8)
    low, up, _, _ = box_net.chain_intervals(t, maps, 0.0, 1.0, iters=0)
    assert up[0] == pytest.approx(0.2, abs=1e-12)
    assert low[0] == pytest.approx(0.0, abs=1e-12)


def test_dominated_window_is_exact():
    """A window whose first pixel dominates in f and ĝ (x₁ ∈ [2, 3], x₂ ∈ [0, 1]): y = x₁ exactly."""
    t, maps = _hand_pool(1.0, 0.9)
    low, up, _, _ = box_net.chain_intervals(t, maps, np.array([2.0, 0.0]), np.array([3.0, 1.0]), iters=0)
    assert up[0] == pytest.approx(0.3, abs=1e-12) and low[0] == pytest.approx(0.2, abs=1e-12)


# ----------------------------------------------------------------------------- mutants

def _relu_slope(orig):
    def mutant(l, u, alpha):
        ls, s, sb = orig(l, u, alpha)
        return ls, s * 0.9, sb * 0.9
    return mutant


def _pool_no_clip_constant(orig):
    def planes(self, b, th_u=None, th_l=None):
        g_lo, g_up, Y_lo, Y_up = orig(self, b, th_u, th_l)
        return g_lo, g_up, Y_lo, (Y_up[0], Y_up[1], torch.zeros_like(Y_up[2]))
    return planes


def _pool_no_d_term(orig):
    def planes(self, b, th_u=None, th_l=None):
        g_lo, g_up, Y_lo, Y_up = orig(self, b, th_u, th_l)
        return g_lo, g_up, (Y_lo[0], 0 * Y_lo[1], Y_lo[2]), (Y_up[0], 0 * Y_up[1], Y_up[2])
    return planes


MUTANTS = {
    "relu chord slope cut": lambda mp: mp.setattr(rx, "relu_planes", _relu_slope(rx.relu_planes)),
    "max pool: clip constant dropped": lambda mp: mp.setattr(bo.MaxPool2dOp, "planes",
                                                             _pool_no_clip_constant(bo.MaxPool2dOp.planes)),
    "max pool: D coefficients dropped": lambda mp: mp.setattr(bo.MaxPool2dOp, "planes",
                                                              _pool_no_d_term(bo.MaxPool2dOp.planes)),
}


def _caught() -> bool:
    for name in ("overlapping max pool, [0,1]", "conv-maxpool-conv-avgpool-fc, [0,1]"):
        arch, shape, seed, tau, lo, hi = CASES[name]
        t, maps = make(arch, shape, seed, tau)
        low, up, _, _ = box_net.chain_intervals(t, maps, lo, hi, iters=0)
        mx, mn = _empirical_extremes(t, maps, lo, hi, n=1000)
        if np.any(up < mx - 1e-9) or np.any(low > mn + 1e-9):
            return True
    for name in ("hand: relu tube attained", "hand: cancelling units"):     # MLPs through the chain
        t, maps, lo, hi = MLP_CASES[name]
        low, up, _, _ = box_net.chain_intervals(t, maps, lo, hi, iters=0)
        a = torch.linspace(lo, hi, 101, dtype=DT)
        X = a[:, None] if t.input_dim == 1 else torch.cartesian_prod(a, a)
        with torch.no_grad():
            d = (t.forward(X) - CollapsedNet(maps)(X)).numpy()
        if np.any(up < d.max(0) - 1e-9) or np.any(low > d.min(0) + 1e-9):
            return True
    for wf, wg, lo, hi in ((1.0, 0.8, 0.0, 1.0), (0.8, 1.0, 0.0, 1.0), (1.0, 0.9, [2.0, 0.0], [3.0, 1.0])):
        t, maps = _hand_pool(wf, wg)
        lo, hi = np.asarray(lo, dtype=float), np.asarray(hi, dtype=float)
        low, up, _, _ = box_net.chain_intervals(t, maps, lo, hi, iters=0)
        ext = [(wf - wg) * float(np.max(lo)), (wf - wg) * float(np.max(hi))]   # max(x) spans [max lo, max hi]
        if up[0] < max(ext) - 1e-9 or low[0] > min(ext) + 1e-9:
            return True
    return False


@pytest.mark.parametrize("mutant", sorted(MUTANTS))
def test_mutant_is_caught(monkeypatch, mutant):
    MUTANTS[mutant](monkeypatch)
    assert _caught(), f"mutant {mutant!r} was not caught"


def test_unmutated_is_not_caught():
    assert not _caught()


# ----------------------------------------------------------------------------- add (skip connections)

def _add_bounds(branch1, branch2, add, lo, hi, drop_second=False):
    """Lower bounds of ±(y_f − y_g)_k for y = branch1(x) + branch2(x) (two linear ops on x): what a
    residual walker does with :class:`AddOp` (the same coefficients into both branches, summed)."""
    q = add.n_out
    I = torch.eye(q, dtype=DT)[None]
    lam_d = torch.cat([I, -I], 1)
    (z1, d1), (z2, d2), c = add.backward(torch.zeros_like(lam_d), lam_d)
    Xlo, Xhi = torch.as_tensor(lo, dtype=DT)[None], torch.as_tensor(hi, dtype=DT)[None]
    out, cX = c, 0
    for (z, d), br in (((z1, d1), branch1), ((z2, d2), branch2))[: 1 if drop_second else 2]:
        cz, _, cc = br.backward(z, d)           # both branches read the same x: sum, then minimise
        out, cX = out + cc, cX + cz
    out = out + box_net._concretize(cX, Xlo, Xhi, "plus")
    return out[0, :q], -out[0, q:]


def test_add_op_sums_both_branches_and_is_exact_on_affine_branches():
    rng = np.random.default_rng(0)
    t = lambda a: torch.as_tensor(a, dtype=DT)
    W1, W2 = rng.standard_normal((2, 3)), rng.standard_normal((2, 3))
    E1, E2 = 0.1 * rng.standard_normal((2, 3)), 0.1 * rng.standard_normal((2, 3))
    b1 = bo.LinearOp(t(W1), t(np.zeros(2)), t(W1 - E1), t(np.zeros(2)))
    b2 = bo.LinearOp(t(W2), t(np.zeros(2)), t(W2 - E2), t(np.zeros(2)))
    add = bo.OPS["add"]((2,))
    lo, hi = np.zeros(3), np.ones(3)
    low, up = _add_bounds(b1, b2, add, lo, hi)
    E = E1 + E2                       # f − ĝ = (E1 + E2) x: exact extremes at corners
    np.testing.assert_allclose(up, np.clip(E, 0, None).sum(1), atol=1e-12)
    np.testing.assert_allclose(low, np.clip(E, None, 0).sum(1), atol=1e-12)
    # the second branch dropped: the extremes of E x are missed
    low2, up2 = _add_bounds(b1, b2, add, lo, hi, drop_second=True)
    assert not (np.allclose(up2, up) and np.allclose(low2, low))
    # interval2: the sum of the branches' bounds
    one = Bounds(*(torch.ones(1, 2, dtype=DT) * v for v in (-1, 1, -0.1, 0.1, -1.1, 1.1)))
    s = add.interval2(one, one)
    assert float(s.u[0, 0]) == 2 and float(s.dl[0, 0]) == pytest.approx(-0.2)


def test_registry_names_every_op():
    assert set(bo.OPS) == {"linear", "conv2d", "relu", "maxpool2d", "avgpool2d", "flatten", "add"}
    from subsetsum_lth.errors import UserError
    with pytest.raises(UserError, match="no bounds for op 'batchnorm'"):
        bo.op_class("batchnorm")


def test_intermediate_bounds_are_chunked_without_changing_them(monkeypatch):
    arch, shape, seed, tau, lo, hi = CASES["conv-maxpool-conv-avgpool-fc, [0,1]"]
    t, maps = make(arch, shape, seed, tau)
    a = box_net.chain_intervals(t, maps, lo, hi, iters=0)
    monkeypatch.setattr(box_net, "CHUNK_ELEMENTS", 1)       # one unit per pass
    b = box_net.chain_intervals(t, maps, lo, hi, iters=0)
    np.testing.assert_allclose(b[0], a[0], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(b[1], a[1], rtol=1e-12, atol=1e-14)


# ----------------------------------------------------------------------------- local agreement on CNNs

def test_cnn_local_agreement_is_sound():
    """Where f and ĝ are certified to keep f's class on the ball, no random point of the ball
    changes it (f's nor ĝ's prediction)."""
    from subsetsum_lth.box_agreement import local_agreement
    arch, shape, seed, tau, lo, hi = CASES["small errors, [0,1]"]
    t, maps = make(arch, shape, seed, tau)
    rng = np.random.default_rng(1)
    x = rng.random((40, t.input_dim))
    rho = 0.02
    frac, mask = local_agreement(t, maps, x, rho, 0.0, 1.0, return_mask=True)
    assert 0 < frac <= 1
    assert_no_ball_point_changes_the_class(t, maps, x, rho, mask, rng)


def test_cnn_local_agreement_through_an_input_op_is_sound_and_a_single_output_is_one_class():
    """A CNN with an input op (the layers see (x − 0.5)/0.1): the balls are mapped through it, and
    no point found in a certified ball (random, corners, descent on the margins) changes the class
    (an outside audit broke 12 of 54 certified images before). A net with one output has one
    class: every ball agrees (it crashed on the empty margin list)."""
    from subsetsum_lth import preprocess
    from subsetsum_lth.box_agreement import local_agreement
    arch, shape, seed, tau, lo, hi = CASES["small errors, [0,1]"]
    t, maps = make(arch, shape, seed, tau)
    t = preprocess.attach(t, preprocess.Preprocessing.parse("0.5,0.1"))
    rng = np.random.default_rng(3)
    x = rng.random((40, t.input_dim))
    frac, mask = local_agreement(t, maps, x, 0.01, 0.0, 1.0, return_mask=True)
    assert 0 < frac < 1
    assert_no_ball_point_changes_the_class(t, maps, x, 0.01, mask, rng, ascent=20)
    one = ARCH_A[:-1] + [fc(4, 1)]
    t1, maps1 = make(one, (1, 6, 6), 0, 0.05)
    assert local_agreement(t1, maps1, x[:5], 0.05, 0.0, 1.0) == 1.0


# ----------------------------------------------------------------------------- the CLI

def test_cli_cnn_box_run_and_certify(tmp_path, capsys):
    from subsetsum_lth.cli import main
    from subsetsum_lth.target import save_target
    t, _ = make(ARCH_A, (1, 6, 6), 0, 0.0)
    path = tmp_path / "cnn.safetensors"
    save_target(t, path)
    out = tmp_path / "run"
    rc = main(["approximate", "--target", str(path), "--out", str(out), "--solver", "mitm", "--block-width", "30",
               "--no-progress", "--no-plots", "--samples", "16", "--steps", "2", "--workers", "1",
               "--weight-eps", "0.02", "--input-domain", "box", "--input-box", "0,1"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "box [0, 1]: certified sup over the box [0, 1]^36" in text
    bc = json.loads((out / "report.json").read_text())["box_certificate"]
    assert bc["empirical_bound"] <= bc["bound"] and bc["bound_zonotope"] is None
    assert "op chain" in bc["method"]
    assert main(["certify", str(out), "--input-domain", "box"]) == 0
    text = capsys.readouterr().out
    assert "stored box witness" in text and "<= certified" in text


def test_cli_local_images_refines_the_cnn_agreement_on_the_first_n_images(tmp_path, capsys, mnist_dir):
    """--local-images N: certified agreement on the first N test images with the refined bounds
    (recorded and printed as such); without it every test image, interval bounds; outside the box
    domain, or without test images, refused in one line."""
    from subsetsum_lth.cli import main
    from subsetsum_lth.target import save_target
    t, _ = make([conv(1, 2, 7, 7), RELU, FLAT, fc(32, 10)], (1, 28, 28), 0, 0.0)
    path = tmp_path / "cnn.safetensors"
    save_target(t, path)
    base = ["approximate", "--target", str(path), "--solver", "mitm", "--block-width", "24", "--no-progress",
            "--no-plots", "--samples", "8", "--steps", "0", "--workers", "1", "--weight-eps", "0.02",
            "--data", "mnist", "--data-dir", str(mnist_dir)]
    out = tmp_path / "run"
    assert main([*base, "--out", str(out), "--input-domain", "box", "--local-radius", "0.002",
                 "--local-images", "12"]) == 0
    text = capsys.readouterr().out
    assert "of 12 test images (CROWN on each ball's unstable units (refined))" in text
    bc = json.loads((out / "report.json").read_text())["box_certificate"]
    assert bc["local_agreement_examples"] == 12 and set(bc["local_agreement"]) == {"0.002"}
    assert 0.0 <= bc["local_agreement"]["0.002"] <= 1.0
    for extra, words in ((["--local-images", "5"], "need --input-domain box"),
                         (["--input-domain", "box", "--input-box", "0,1", "--local-images", "0"], "--local-images")):
        args = [a for a in base if a not in ("--data", "mnist")] if "--input-box" in extra else base
        assert main([*args, "--out", str(tmp_path / "no"), *extra]) == 2
        err = capsys.readouterr().err
        assert words in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("name", ["conv-maxpool-conv-avgpool-fc, [-1,1]", "overlapping max pool, [0,1]"])
def test_plain_bounds_of_f_alone_contain_its_values_and_the_attack(name):
    """experiments/box_plain_looseness.py: α-CROWN on f paired with itself (box_net.twin_graph, a
    signed box through the 'both' split) contains every value of f found by random points, corners
    and the script's own attack, which lies inside the certified range."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "box_plain_looseness", Path(__file__).parents[1] / "experiments" / "box_plain_looseness.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    arch, shape, seed, tau, lo, hi = CASES[name]
    t, _ = make(arch, shape, seed, tau)
    lower, upper = mod.plain_bounds(t, lo, hi, iters=10)
    low, top = mod.plain_attack(t, lo, hi, starts=4, steps=40)
    gen = torch.Generator().manual_seed(1)
    x = lo + (hi - lo) * torch.rand(3000, t.input_dim, generator=gen, dtype=DT)
    x = torch.cat([x, torch.where(torch.rand(3000, t.input_dim, generator=gen, dtype=DT) < 0.5, lo, hi).to(DT)])
    with torch.no_grad():
        y = t.forward(x).numpy()
    assert np.all(y.max(0) <= upper + 1e-9) and np.all(y.min(0) >= lower - 1e-9)
    assert np.all(top <= upper + 1e-9) and np.all(low >= lower - 1e-9)
    assert np.all(top >= y.max(0) - 0.5 * (y.max(0) - y.min(0)))      # the attack does climb
