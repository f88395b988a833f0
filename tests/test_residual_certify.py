"""The ball certificate through residual adds (certify.compose_graph, add_step, layer_step).

Hand cases where the bound is attained (1-d linear branches whose errors point the same way),
mutants of the add rule and of a branch's Lipschitz factor that these cases must reject, and a
hypothesis property: random small residual CNNs, random pruned-layer errors (signed layers
included), an attack (gradient ascent on the pruned network) that must stay under the bound.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from subsetsum_lth import certify
from subsetsum_lth.certify import CollapsedNet, LayerMap, certified_bound, check_soundness, empirical_bound
from subsetsum_lth.errors import CertificateViolation
from subsetsum_lth.target import from_arch_state


#: tiny convolutions: one torch thread (several contend on a loaded 2-core machine)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def lin(i, o, bias=False):
    return {"op": "linear", "in_features": i, "out_features": o, "bias": bias}


def target_and_maps(arch, input_shape, weights, errors, signed_errors=None, biases=None):
    """A residual target with the given weights (one per conv2d/linear, forward order) and maps
    Ŵ⁺ = W − E⁺ (Ŵ⁻ = W − E⁻ where given), b̂ = b."""
    from subsetsum_lth.ops import canonical_arch, param_paths
    paths = [p for p, _ in param_paths(canonical_arch(arch))]
    state = {}
    for k, (p, w) in enumerate(zip(paths, weights)):
        state[f"{p}.weight"] = torch.as_tensor(np.asarray(w, dtype=np.float64))
        if biases is not None and biases[k] is not None:
            state[f"{p}.bias"] = torch.as_tensor(np.asarray(biases[k], dtype=np.float64))
    t = from_arch_state(state, arch, input_shape)
    maps = []
    for k, L in enumerate(t.layers):
        E = np.asarray(errors[k], dtype=np.float64).reshape(L.weight.shape)
        # Ŵ⁻ (used only where a layer's input can be negative): W − E⁻, by default W − E⁺
        Em = E if signed_errors is None or signed_errors[k] is None else \
            np.asarray(signed_errors[k], dtype=np.float64).reshape(L.weight.shape)
        b = np.zeros(L.weight.shape[0]) if L.bias is None else L.bias
        maps.append(LayerMap(L.weight - E, L.weight - Em, b.copy()))
    return t, maps


def actual_error(t, maps, x):
    x = torch.as_tensor(np.asarray(x, dtype=np.float64)).reshape(1, -1)
    with torch.no_grad():
        return float((t.forward(x) - CollapsedNet(maps, target=t)(x)).norm())


# --- hand cases: (arch, weights, errors, the point where the bound is attained, the bound)
E = 0.01
CASES = {
    # both branches err the same way: f = 2x, ĝ = 2(1 − e)x; the errors add
    "projection": ([lin(1, 1), {"op": "relu"},
                    {"op": "residual", "body": [lin(1, 1)], "shortcut": [lin(1, 1)]},
                    lin(1, 1)],
                   [[[1.0]], [[1.0]], [[1.0]], [[1.0]]], [[[0]], [[E]], [[E]], [[0]]], 2 * E),
    # the body's error is amplified by its second layer (×3): its Lipschitz factor
    "deep body": ([lin(1, 1), {"op": "relu"},
                   {"op": "residual", "body": [lin(1, 1), {"op": "relu"}, lin(1, 1)], "shortcut": []},
                   lin(1, 1)],
                  [[[1.0]], [[1.0]], [[3.0]], [[1.0]]], [[[0]], [[E]], [[0]], [[0]]], 3 * E),
    # the head errs; its input x + x has radius 2r: the radius of a sum is the sum of the radii
    "radius of the sum": ([lin(1, 1), {"op": "relu"},
                           {"op": "residual", "body": [lin(1, 1)], "shortcut": []}, {"op": "relu"},
                           lin(1, 1)],
                          [[[1.0]], [[1.0]], [[1.0]]], [[[0]], [[0]], [[E]]], 2 * E),
    # identity shortcut exact, body errs: the add passes the body's error through once
    "identity": ([lin(1, 1), {"op": "relu"},
                  {"op": "residual", "body": [lin(1, 1)], "shortcut": []}, {"op": "relu"},
                  lin(1, 1)],
                 [[[1.0]], [[2.0]], [[1.0]]], [[[0]], [[E]], [[0]]], E),
}


def _check(name):
    arch, ws, es, want = CASES[name]
    t, maps = target_and_maps(arch, [1], ws, es)
    cert = certified_bound(t, maps, 1.0, "nonnegative").bound
    got = actual_error(t, maps, [1.0])
    check_soundness(got, cert)
    return cert, got, want


@pytest.mark.parametrize("name", sorted(CASES))
def test_bound_attained_on_hand_cases(name):
    cert, got, want = _check(name)
    assert got == pytest.approx(want, rel=1e-9)
    assert cert == pytest.approx(want, rel=1e-6)       # attained: the bound is the error


def _add_once(body, shortcut):          # an add's error counted once (the larger branch)
    return body[0] + shortcut[0], max(body[1], shortcut[1])


def _add_body_only(body, shortcut):     # the shortcut's error dropped
    return body[0] + shortcut[0], body[1]


def _radius_max(body, shortcut):        # the radius of a sum taken as the larger radius
    return max(body[0], shortcut[0]), body[1] + shortcut[1]


def _no_lipschitz(R, delta, nW, nE, neb, nb):   # a branch's Lipschitz factor ‖W‖ dropped from δ
    return nW * R + nb, delta + (R + delta) * nE + neb


@pytest.mark.parametrize("where,mutant,case", [
    ("add_step", _add_once, "projection"),
    ("add_step", _add_body_only, "projection"),
    ("add_step", _radius_max, "radius of the sum"),
    ("layer_step", _no_lipschitz, "deep body"),
])
def test_mutants_are_rejected(monkeypatch, where, mutant, case):
    _check(case)                                   # the real rule passes
    monkeypatch.setattr(certify, where, mutant)
    with pytest.raises(CertificateViolation):
        _check(case)


# --- the property: random residual CNNs, an attack under the bound

def _conv(i, o, k=3, s=1, p=1):
    return {"op": "conv2d", "in_channels": i, "out_channels": o, "kernel": [k, k], "stride": [s, s],
            "padding": [p, p], "bias": True}


@st.composite
def residual_nets(draw):
    c0 = draw(st.integers(1, 2))
    c1 = draw(st.integers(1, 3))
    c2 = draw(st.integers(1, 3))
    proj = draw(st.booleans()) or c2 != c1
    relu_after_add = draw(st.booleans())   # False: the next conv sees signed inputs
    pool = draw(st.sampled_from(["maxpool2d", "avgpool2d"]))
    arch = [_conv(c0, c1), {"op": "relu"},
            {"op": "residual", "body": [_conv(c1, c2, s=2), {"op": "relu"}, _conv(c2, c2)],
             "shortcut": [_conv(c1, c2, k=1, s=2, p=0)] if proj else []}]
    side = 4
    if not proj:
        arch[2]["body"][0] = _conv(c1, c2)          # identity skip: keep the shape
        side = 8
    if relu_after_add:
        arch.append({"op": "relu"})
    arch += [_conv(c2, c2), {"op": "relu"}, {"op": pool, "kernel": [2, 2], "stride": [2, 2]},
             {"op": "flatten"}]
    shape = [c0, 8, 8]
    arch.append(lin(c2 * (side // 2) ** 2, 3, bias=True))
    seed = draw(st.integers(0, 2 ** 16))
    domain = draw(st.sampled_from(["nonnegative", "signed"]))
    return arch, shape, seed, domain


@settings(max_examples=12, deadline=None)
@given(residual_nets())
def test_attack_stays_under_the_certified_bound(net):
    arch, shape, seed, domain = net
    rng = np.random.default_rng(seed)
    from subsetsum_lth.layerkinds import kinds_from_arch
    kinds, _ = kinds_from_arch(arch, shape)
    ws = [rng.normal(0, 1 / np.sqrt(k.p), size=k.weight_shape()) for k in kinds]
    bs = [rng.uniform(-0.1, 0.1, size=k.q) for k in kinds]
    es = [rng.uniform(-0.05, 0.05, size=(k.q, k.p)) for k in kinds]
    from subsetsum_lth.ops import canonical_arch, signed_inputs
    signed = signed_inputs(canonical_arch(arch), domain == "signed")
    ems = [rng.uniform(-0.05, 0.05, size=(k.q, k.p)) if s else None for k, s in zip(kinds, signed)]
    t, maps = target_and_maps(arch, shape, ws, es, ems, bs)
    cert = certified_bound(t, maps, 1.0, domain)
    emp = empirical_bound(t, CollapsedNet(maps, target=t), 1.0, domain, samples=64, steps=30, starts=4,
                          seed=seed)
    check_soundness(emp["empirical_bound"], cert.bound)
    assert 0 < emp["empirical_bound"] <= cert.bound
