"""Convolutional targets (issue 13): the proven norm bounds against dense exact norms, the
guarantee on small random CNNs with ĝ rebuilt from the two safetensors files alone (plain torch
code here, no package code on the ĝ side), tight cases for the conv and pooling terms of the
recursion with mutants that the suite must reject, determinism, and refusals."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.numpy import load_file

from subsetsum_lth import layerkinds
from subsetsum_lth.approximate import ApproximateConfig, approximate
from subsetsum_lth.certify import LayerMap, certified_bound
from subsetsum_lth.construction import ConstructionConfig
from subsetsum_lth.errors import IncompleteRun, RunFolderError, TargetError
from subsetsum_lth.layerkinds import Conv2d, Op, kinds_from_arch
from subsetsum_lth.solve import SolveConfig
from subsetsum_lth.target import Layer, Target, from_arch_state


# ----------------------------------------------------------------------------- helpers (no package code)

def plain_module(ops: list[dict], state: dict, masks: dict) -> torch.nn.Sequential:
    """An nn.Sequential from an architecture list and masked state dicts, written here."""
    mods = []
    for idx, op in enumerate(ops):
        if op["op"] in ("linear", "conv2d"):
            w = torch.from_numpy(np.asarray(state[f"{idx}.weight"], np.float64) * masks[f"{idx}.weight"])
            b = torch.from_numpy(np.asarray(state[f"{idx}.bias"], np.float64) * masks[f"{idx}.bias"])
            if op["op"] == "linear":
                m = torch.nn.Linear(w.shape[1], w.shape[0]).double()
            else:
                m = torch.nn.Conv2d(w.shape[1], w.shape[0], tuple(op["kernel"]), tuple(op["stride"]),
                                    tuple(op["padding"])).double()
            with torch.no_grad():
                m.weight.copy_(w)
                m.bias.copy_(b)
            mods.append(m)
        elif op["op"] == "relu":
            mods.append(torch.nn.ReLU())
        elif op["op"] == "maxpool2d":
            mods.append(torch.nn.MaxPool2d(tuple(op["kernel"]), tuple(op["stride"])))
        elif op["op"] == "avgpool2d":
            mods.append(torch.nn.AvgPool2d(tuple(op["kernel"]), tuple(op["stride"])))
        elif op["op"] == "flatten":
            mods.append(torch.nn.Flatten())
        else:
            raise AssertionError(op)
    return torch.nn.Sequential(*mods)


def rebuild_image_g(run) -> tuple[torch.nn.Module, tuple]:
    """ĝ from random_net.safetensors + masks.safetensors alone: the architecture is in the
    files' metadata."""
    with safe_open(str(run / "random_net.safetensors"), "np") as fh:
        meta = json.loads(fh.metadata()["subsetsum_lth"])
    state = load_file(str(run / "random_net.safetensors"))
    masks = load_file(str(run / "masks.safetensors"))
    g = plain_module(meta["g_arch"], state, masks)
    shape = tuple(meta["input_shape"])
    return (lambda x: g(x.reshape(len(x), *shape)).reshape(len(x), -1)), shape


def dense_norm(apply, n_in: int) -> float:
    X = torch.eye(n_in, dtype=torch.float64)
    Y = apply(X).reshape(n_in, -1)
    return float(np.linalg.norm(Y.numpy(), 2))


def attack(f, g, n_in: int, radius: float, nonneg: bool, seed: int = 0, extra=None, steps: int = 80,
           starts: int = 16) -> float:
    """Random sphere points, single-pixel and all-ones points, then projected gradient ascent."""
    rng = np.random.default_rng(seed)
    G = rng.standard_normal((128, n_in))
    if nonneg:
        G = np.abs(G)
    pts = [G, np.eye(n_in)[: min(n_in, 64)], np.ones((1, n_in)), -np.eye(n_in)[: min(n_in, 64)] * (not nonneg)]
    if extra is not None:
        pts.append(extra)
    X = np.vstack([p for p in pts if np.any(p)])
    X = radius * X / np.linalg.norm(X, axis=1, keepdims=True)
    x = torch.tensor(X, dtype=torch.float64)
    with torch.no_grad():
        e0 = (f(x) - g(x)).norm(dim=1)
    x = x[torch.topk(e0, min(starts, len(x))).indices].clone().requires_grad_(True)
    best = float(e0.max())
    for t in range(steps):
        loss = (f(x) - g(x)).norm(dim=1).sum()
        (gr,) = torch.autograd.grad(loss, x)
        with torch.no_grad():
            x += 0.2 * radius * (0.96 ** t) * gr / gr.norm(dim=1, keepdim=True).clamp_min(1e-30)
            if nonneg:
                x.clamp_(min=0)
            x *= torch.clamp(radius / x.norm(dim=1, keepdim=True).clamp_min(1e-30), max=1.0)
            best = max(best, float((f(x) - g(x)).norm(dim=1).max()))
    return best


# ----------------------------------------------------------------------------- norm bounds

@settings(max_examples=40, deadline=None)
@given(c=st.integers(1, 3), o=st.integers(1, 3), k=st.integers(1, 5), s=st.integers(1, 2),
       pad=st.integers(0, 2), h=st.integers(3, 8), split=st.booleans(), seed=st.integers(0, 10 ** 6))
def test_conv_norm_bound_is_at_least_the_exact_norm(c, o, k, s, pad, h, split, seed):
    if h + 2 * pad < k:
        return
    kind = Conv2d(c, o, (k, k), (s, s), (pad, pad), (h, h))
    rng = np.random.default_rng(seed)
    cc = 2 * c if split else c              # the signed split [E⁺ E⁻] acts on (x⁺, x⁻)
    M = rng.standard_normal((o, cc * k * k)) * rng.choice([1.0, 1e-3])
    if rng.random() < 0.3:
        M = np.abs(M)                        # same-sign kernels: the low frequencies dominate
    bound, how = kind.op_norm(M)

    def apply(X):
        Xs = X.reshape(len(X), cc, h, h)
        return F.conv2d(Xs, torch.from_numpy(M).reshape(o, cc, k, k), stride=s, padding=pad)
    exact = dense_norm(apply, cc * h * h)
    assert bound >= exact * (1 - 1e-9), (bound, exact, how)
    # and not absurdly loose: never above the patch bound
    assert bound <= math.sqrt(kind.covering()) * np.linalg.norm(M, 2) * (1 + 1e-9)


@settings(max_examples=30, deadline=None)
@given(name=st.sampled_from(["maxpool2d", "avgpool2d"]), k=st.integers(1, 3), s=st.integers(1, 3),
       h=st.integers(3, 7), seed=st.integers(0, 10 ** 6))
def test_pooling_lipschitz_bounds_hold(name, k, s, h, seed):
    op = Op(name, (2, h, h), (k, k), (s, s))
    rng = np.random.default_rng(seed)
    L = op.lipschitz()
    X = torch.from_numpy(rng.standard_normal((64, 2 * h * h)))
    Y = X + torch.from_numpy(rng.standard_normal((64, 2 * h * h))) * rng.choice([1.0, 1e-3])
    d_in = (X - Y).norm(dim=1)
    d_out = (op.apply(X).reshape(64, -1) - op.apply(Y).reshape(64, -1)).norm(dim=1)
    assert bool((d_out <= L * d_in * (1 + 1e-9)).all())
    if name == "avgpool2d":   # linear: the dense norm is the exact Lipschitz constant
        assert dense_norm(lambda Z: op.apply(Z), 2 * h * h) <= L * (1 + 1e-9)
    else:                     # a single pixel in every window that covers it reaches sqrt(N)
        if s <= k and h >= 2 * k:
            x = torch.zeros(1, 2 * h * h, dtype=torch.float64)
            x[0, (h // 2) * h + h // 2] = 1.0
            assert float(op.apply(x).norm()) <= L + 1e-12


# ----------------------------------------------------------------------------- tight cases + mutants

def _single(kind, W, b, after=(), shape=None) -> Target:
    return Target([Layer(W, b, kind)], after=[list(after)], input_shape=shape or kind.in_shape)


def _tight_cases():
    """(name, target, maps, radius, domain, witness) where the certified bound is attained."""
    cases = []
    # conv error with a same-sign kernel: f − ĝ = conv_E x (linear), sup = r‖conv_E‖ ≈ 9c, while
    # ‖E as a matrix‖ = 3c: the patch/FFT factor is needed
    kind = Conv2d(1, 1, (3, 3), (1, 1), (1, 1), (12, 12))
    W = np.full((1, 9), 0.5)
    E = np.full((1, 9), 0.01)
    m = LayerMap(W - E, W - E, np.zeros(1))
    cases.append(("conv same-sign error", _single(kind, W, None), [m], 2.0, "nonnegative", None))
    # conv bias error added at every output pixel: ‖e_b broadcast‖ = |e_b|·sqrt(H·W)
    kind = Conv2d(1, 1, (1, 1), (1, 1), (0, 0), (6, 6))
    m = LayerMap(np.ones((1, 1)), np.ones((1, 1)), np.array([0.05]))
    cases.append(("conv bias error", _single(kind, np.ones((1, 1)), np.zeros(1)), [m], 1.0, "nonnegative", None))
    # overlapping max pooling after an error e·x: a single pixel reaches 3 windows per axis
    k1 = Conv2d(1, 1, (1, 1), (1, 1), (0, 0), (7, 7))
    pool = Op("maxpool2d", (1, 7, 7), (3, 3), (1, 1))
    n = 25
    lin = layerkinds.Linear(n, n)
    t = Target([Layer(np.ones((1, 1)), None, k1), Layer(np.eye(n), None, lin)],
               after=[[pool, Op("flatten", (1, 5, 5))], []], input_shape=(1, 7, 7))
    maps = [LayerMap(np.full((1, 1), 1.1), np.full((1, 1), 1.1), np.zeros(1)),
            LayerMap(np.eye(n), np.eye(n), np.zeros(n))]
    x = np.zeros(49); x[3 * 7 + 3] = 1.0
    cases.append(("overlapping max pool", t, maps, 1.0, "nonnegative", x))
    # average pooling 2×2: a constant window reaches 1/2
    pool = Op("avgpool2d", (1, 6, 6), (2, 2), (2, 2))
    n = 9
    t = Target([Layer(np.ones((1, 1)), None, Conv2d(1, 1, (1, 1), (1, 1), (0, 0), (6, 6))),
                Layer(np.eye(n), None, layerkinds.Linear(n, n))],
               after=[[pool, Op("flatten", (1, 3, 3))], []], input_shape=(1, 6, 6))
    x = np.zeros((6, 6)); x[:2, :2] = 0.5
    cases.append(("average pool", t, maps[:1] + [LayerMap(np.eye(n), np.eye(n), np.zeros(n))], 1.0,
                  "nonnegative", x.ravel()))
    return cases


def _collapsed(target: Target, maps):
    """ĝ from its layer maps, by hand: conv/matrix of Ŵ⁺ on x⁺ and Ŵ⁻ on x⁻, ReLU, ops."""
    def g(x):
        h = x
        for i, (L, M) in enumerate(zip(target.layers, maps)):
            kind = L.kind
            wp, wm, b = (torch.from_numpy(np.asarray(a, np.float64)) for a in (M.w_plus, M.w_minus, M.bias))
            if kind.name == "linear":
                h = h.reshape(len(h), -1)
                out = h.clamp_min(0) @ wp.T + h.clamp_max(0) @ wm.T + b
            else:
                hh = h.reshape(len(h), *kind.in_shape)
                K = lambda w: w.reshape(kind.q, kind.in_channels, *kind.kernel)  # noqa: E731
                out = (F.conv2d(hh.clamp_min(0), K(wp), b, kind.stride, kind.padding)
                       + F.conv2d(hh.clamp_max(0), K(wm), None, kind.stride, kind.padding))
            h = torch.relu(out) if i < target.depth - 1 else out
            for op in target.ops_after(i):
                hh = h.reshape(len(h), *op.in_shape)
                if op.name == "maxpool2d":
                    h = F.max_pool2d(hh, op.kernel, op.stride)
                elif op.name == "avgpool2d":
                    h = F.avg_pool2d(hh, op.kernel, op.stride)
                else:
                    h = hh.reshape(len(h), -1)
        return h.reshape(len(h), -1)
    return g


def _check_tight(name, target, maps, radius, domain, witness, tight=0.9):
    cert = certified_bound(target, maps, radius, domain).bound
    g = _collapsed(target, maps)
    extra = None if witness is None else radius * witness[None, :] / np.linalg.norm(witness)
    a = attack(target.forward, g, target.input_dim, radius, domain == "nonnegative", extra=extra)
    assert a <= cert * (1 + 1e-9) + 1e-12, f"{name}: attack {a:.9g} > certified {cert:.9g}"
    if tight:
        assert a >= tight * cert, f"{name}: attack {a:.6g} < {tight}·certified {cert:.6g}"


@pytest.mark.parametrize("case", _tight_cases(), ids=lambda c: c[0])
def test_conv_and_pool_terms_are_sound_and_tight(case):
    _check_tight(*case)


def _patch_dropped(self, M):
    return layerkinds.spectral_norm(M), "mutant"


def _no_repeat(self):
    return 1


MUTANTS = {
    "conv norm = ‖E as a matrix‖ (patch/FFT factor dropped)": (Conv2d, "op_norm", _patch_dropped),
    "conv bias not repeated over pixels": (Conv2d, "bias_repeat", property(_no_repeat)),
    "overlapping max pool taken as 1-Lipschitz": (Op, "lipschitz", lambda self: 1.0),
    "average pool 1/k² for sqrt(N/k²)": (Op, "lipschitz",
                                         lambda self: 1.0 if self.name != "avgpool2d" else
                                         1.0 / (self.kernel[0] * self.kernel[1])),
}


@pytest.mark.parametrize("name", list(MUTANTS))
def test_conv_mutant_is_killed(monkeypatch, name):
    cls, attr, fn = MUTANTS[name]
    monkeypatch.setattr(cls, attr, fn)
    killed = []
    for case in _tight_cases():
        try:
            _check_tight(*case, tight=0)
        except AssertionError as exc:
            assert "> certified" in str(exc)
            killed.append(case[0])
    assert killed, f"mutant {name!r} survived every conv check"


# ----------------------------------------------------------------------------- the pipeline on small CNNs

@st.composite
def cnns(draw):
    """1–3 conv layers (kernel 1–5, stride 1–2, padding 0–2), optional max/avg pooling, then
    0–1 hidden linear layers and a linear output; with or without biases."""
    seed = draw(st.integers(0, 2 ** 16))
    rng = np.random.default_rng(seed)
    c, h = draw(st.integers(1, 2)), draw(st.integers(5, 9))
    bias = draw(st.booleans())
    arch = []
    shape = (c, h, h)
    for _ in range(draw(st.integers(1, 3))):
        k = draw(st.integers(1, 5))
        s = draw(st.integers(1, 2))
        p = min(draw(st.integers(0, 2)), k - 1)      # padding ≥ kernel: outputs of padding only
        if shape[1] + 2 * p < k:
            k, p = 1, 0
        o = draw(st.integers(1, 3))
        arch += [{"op": "conv2d", "in_channels": shape[0], "out_channels": o, "kernel": [k, k], "stride": [s, s],
                  "padding": [p, p], "bias": bias}, {"op": "relu"}]
        shape = (o, (shape[1] + 2 * p - k) // s + 1, (shape[2] + 2 * p - k) // s + 1)
        pool = draw(st.sampled_from([None, "maxpool2d", "avgpool2d"]))
        if pool and shape[1] >= 2:
            arch.append({"op": pool, "kernel": [2, 2], "stride": [2, 2]})
            shape = (shape[0], shape[1] // 2, shape[2] // 2)
    arch.append({"op": "flatten"})
    n = int(np.prod(shape))
    for _ in range(draw(st.integers(0, 1))):
        arch += [{"op": "linear", "in_features": n, "out_features": 4, "bias": bias}, {"op": "relu"}]
        n = 4
    arch.append({"op": "linear", "in_features": n, "out_features": draw(st.integers(1, 3)), "bias": bias})
    return random_target(arch, (c, h, h), rng, bias)


def random_target(arch, shape, rng, bias=True) -> Target:
    kinds, _ = kinds_from_arch(arch, shape)
    idx = [i for i, op in enumerate(arch) if op["op"] in ("conv2d", "linear")]
    state = {}
    for i, k in zip(idx, kinds):
        W = rng.uniform(-1, 1, k.weight_shape()) / math.sqrt(k.p)
        state[f"{i}.weight"] = torch.from_numpy(np.clip(W, -0.9, 0.9).astype(np.float32))
        if bias:
            state[f"{i}.bias"] = torch.from_numpy(rng.uniform(-0.3, 0.3, k.q).astype(np.float32))
    return from_arch_state(state, arch, shape, "random cnn")


def _approx(out, target, domain, seed, eps=0.05, workers=1, radius=2.0, m=24):
    cfg = ApproximateConfig(
        construction=ConstructionConfig(input_domain=domain, seed=seed, block_width=m, width="auto"),
        solve=SolveConfig(solver="mitm", objective="error", workers=workers),
        weight_eps=eps, input_radius=radius, overwrite=True, plots=False, empirical_samples=64,
        ascent_steps=20, allow_infeasible=True)
    return approximate(target, cfg, out)


@settings(max_examples=10, deadline=None)
@given(target=cnns(), domain=st.sampled_from(["signed", "nonnegative"]), seed=st.integers(0, 1000))
def test_cnn_guarantee_from_the_files(tmp_path_factory, target, domain, seed):
    out = tmp_path_factory.mktemp("cnn")
    report = _approx(out, target, domain, seed)
    cert = report["certified_bound"]
    g, shape = rebuild_image_g(out)
    assert shape == target.input_shape
    # the pruned network from the files is the collapsed one the certificate reasons about
    x = torch.from_numpy(np.random.default_rng(seed).uniform(-1, 1, (8, target.input_dim)))
    if domain == "nonnegative":
        x = x.abs()
    a = attack(target.forward, g, target.input_dim, 2.0, domain == "nonnegative", seed, steps=30, starts=6)
    assert a <= cert * (1 + 1e-9) + 1e-12, (a, cert)
    assert report["empirical_bound"] <= cert * (1 + 1e-6)
    masks = load_file(str(out / "masks.safetensors"))
    assert all(m.dtype == np.uint8 and set(np.unique(m)) <= {0, 1} for m in masks.values())
    from subsetsum_lth.certify_run import certify_run
    again = certify_run(out, samples=64, steps=10)
    assert math.isclose(again["certified_bound"], cert, rel_tol=1e-9)


LENETISH = [{"op": "conv2d", "in_channels": 1, "out_channels": 2, "kernel": [3, 3], "stride": [1, 1],
             "padding": [1, 1]}, {"op": "relu"}, {"op": "maxpool2d", "kernel": [2, 2], "stride": [2, 2]},
            {"op": "conv2d", "in_channels": 2, "out_channels": 3, "kernel": [3, 3], "stride": [1, 1],
             "padding": [0, 0]}, {"op": "relu"}, {"op": "flatten"},
            {"op": "linear", "in_features": 12, "out_features": 4}, {"op": "relu"},
            {"op": "linear", "in_features": 4, "out_features": 3}]


def test_cnn_masks_do_not_depend_on_workers(tmp_path):
    t = random_target(LENETISH, (1, 8, 8), np.random.default_rng(3))
    _approx(tmp_path / "w1", t, "nonnegative", 7, workers=1)
    _approx(tmp_path / "w2", t, "nonnegative", 7, workers=2)
    for f in ("masks.safetensors", "random_net.safetensors"):
        assert (tmp_path / "w1" / f).read_bytes() == (tmp_path / "w2" / f).read_bytes()


def test_cnn_run_through_the_api_and_export(tmp_path):
    from subsetsum_lth import api
    t = random_target(LENETISH, (1, 8, 8), np.random.default_rng(4))
    _approx(tmp_path / "r", t, "nonnegative", 1)
    model = api.masked_model(tmp_path / "r", torch.float64)
    plain = api.export_pruned(tmp_path / "r", torch.float64)
    assert isinstance(model[0], torch.nn.Conv2d) and isinstance(plain[0], torch.nn.Conv2d)
    x = torch.rand(5, 1, 8, 8, dtype=torch.float64)
    g, _ = rebuild_image_g(tmp_path / "r")
    ref = g(x.reshape(5, -1))
    assert torch.allclose(model(x), ref, atol=1e-12) and torch.allclose(plain(x), ref, atol=1e-12)
    run = api.load_run(tmp_path / "r")
    assert run.layout.ops()[0]["op"] == "conv2d"


# ----------------------------------------------------------------------------- refusals

@pytest.mark.parametrize("bad, message", [
    ({"op": "conv2d", "in_channels": 1, "out_channels": 2, "kernel": [3, 3], "dilation": [2, 2]}, "dilation"),
    ({"op": "conv2d", "in_channels": 1, "out_channels": 2, "kernel": [3, 3], "groups": 2}, "groups"),
    ({"op": "conv2d", "in_channels": 1, "out_channels": 2, "kernel": [3, 3], "padding_mode": "reflect"},
     "padding_mode"),
    ({"op": "tanh"}, "not supported"),
    ({"op": "conv2d", "in_channels": 3, "out_channels": 2, "kernel": [3, 3]}, "in_channels 3"),
    ({"op": "conv2d", "in_channels": 1, "out_channels": 2, "kernel": [30, 30]}, "larger than"),
])
def test_unsupported_layers_are_refused_by_name(bad, message):
    arch = [bad, {"op": "relu"}, {"op": "flatten"}, {"op": "linear", "in_features": 1, "out_features": 2}]
    with pytest.raises(TargetError, match=message):
        kinds_from_arch(arch, (1, 8, 8))


def test_relu_placement_is_checked():
    conv = {"op": "conv2d", "in_channels": 1, "out_channels": 1, "kernel": [1, 1]}
    lin = {"op": "linear", "in_features": 64, "out_features": 2}
    with pytest.raises(TargetError, match="followed directly by a relu"):
        kinds_from_arch([conv, {"op": "flatten"}, lin], (1, 8, 8))
    with pytest.raises(TargetError, match="last conv2d/linear"):
        kinds_from_arch([conv, {"op": "relu"}, {"op": "flatten"}, lin, {"op": "relu"}], (1, 8, 8))
    with pytest.raises(TargetError, match="in_features 64"):
        kinds_from_arch([conv, {"op": "relu"}, {"op": "maxpool2d", "kernel": [2, 2]}, {"op": "flatten"}, lin],
                        (1, 8, 8))


def test_wrong_kernel_shape_is_named(tmp_path):
    arch = LENETISH
    state = {"0.weight": torch.zeros(2, 1, 5, 5), "0.bias": torch.zeros(2)}
    with pytest.raises(TargetError, match=r"0.weight.*\[2, 1, 3, 3\]"):
        from_arch_state(state, arch, (1, 8, 8), "f.pt")


def test_edited_image_run_is_refused(tmp_path):
    t = random_target(LENETISH, (1, 8, 8), np.random.default_rng(5))
    _approx(tmp_path / "r", t, "nonnegative", 2)
    rep = json.loads((tmp_path / "r" / "report.json").read_text())
    from subsetsum_lth.runcheck import read_run
    for edit in ({"g_arch": rep["g_arch"][:-1]}, {"input_shape": [1, 9, 9]},
                 {"target_arch": rep["target_arch"][:3]}):
        bad = dict(rep, **edit)
        (tmp_path / "r" / "report.json").write_text(json.dumps(bad))
        with pytest.raises(RunFolderError):
            read_run(tmp_path / "r", need_target=True)
    (tmp_path / "r" / "report.json").write_text(json.dumps(rep))
    read_run(tmp_path / "r", need_target=True)


def test_normalisation_with_padding_is_refused():
    from subsetsum_lth.preprocess import Preprocessing, fold
    t = random_target(LENETISH, (1, 8, 8), np.random.default_rng(6))
    with pytest.raises(TargetError, match="padding"):
        fold(t, Preprocessing.parse("0.1307,0.3081", None))


def test_cnn_network_mode_meets_eps(tmp_path):
    """--eps on a CNN: τ is chosen from the conv-aware a-priori bound and tightened until the
    certificate meets ε; the attack on ĝ rebuilt from the files stays under it."""
    t = random_target(LENETISH, (1, 8, 8), np.random.default_rng(0))
    cfg = ApproximateConfig(construction=ConstructionConfig(seed=1), solve=SolveConfig(solver="mitm", workers=1),
                            eps=0.05, input_radius=1.0, plots=False, empirical_samples=64, ascent_steps=20)
    report = approximate(t, cfg, tmp_path / "r")
    assert report["mode"] == "network" and report["certified_bound"] <= 0.05
    assert report["weight_eps"] < 0.05
    g, _ = rebuild_image_g(tmp_path / "r")
    assert attack(t.forward, g, t.input_dim, 1.0, True) <= report["certified_bound"]
