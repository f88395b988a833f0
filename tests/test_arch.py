"""CNN architectures: the SPEC grammar, shape checks, nn.Sequential round trips, BatchNorm
folding, a user's state_dict mapped onto an architecture, and CNN training (tiny, fast)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from subsetsum_lth.arch import (
    LENET5, arch_from_metadata, arch_from_module, canonical_arch, check_arch, fold_batchnorm,
    load_arch_target, module_from_arch, parse_arch,
)
from subsetsum_lth.arch_state import state_for_arch
from subsetsum_lth.errors import TargetError, UserError

IMG = [1, 28, 28]

LENET5_LITERAL = [
    {"op": "conv2d", "in_channels": 1, "out_channels": 6, "kernel": [5, 5], "stride": [1, 1],
     "padding": [2, 2], "bias": True},
    {"op": "relu"}, {"op": "maxpool2d", "kernel": [2, 2], "stride": [2, 2]},
    {"op": "conv2d", "in_channels": 6, "out_channels": 16, "kernel": [5, 5], "stride": [1, 1],
     "padding": [0, 0], "bias": True},
    {"op": "relu"}, {"op": "maxpool2d", "kernel": [2, 2], "stride": [2, 2]}, {"op": "flatten"},
    {"op": "linear", "in_features": 400, "out_features": 120, "bias": True}, {"op": "relu"},
    {"op": "linear", "in_features": 120, "out_features": 84, "bias": True}, {"op": "relu"},
    {"op": "linear", "in_features": 84, "out_features": 10, "bias": True},
]


# ------------------------------------------------------------------------------- parse_arch

def test_lenet5_preset_is_the_fixed_format():
    arch = parse_arch("lenet5", IMG)
    assert arch == LENET5_LITERAL
    assert json.loads(json.dumps(arch)) == arch            # JSON-able
    assert parse_arch("LeNet5", IMG) == LENET5_LITERAL
    arch[0]["out_channels"] = 99                             # a copy: the preset is untouched
    assert LENET5 == LENET5_LITERAL


def test_spec_of_lenet5_equals_the_preset():
    assert parse_arch("c6k5p2,mp2,c16k5,mp2,fc120,fc84,fc10", IMG) == LENET5_LITERAL
    assert parse_arch(" c6k5p2, mp2 ,c16k5,mp2,flatten,fc120,fc84,fc10 ", IMG) == LENET5_LITERAL


def test_spec_options():
    arch = parse_arch("c8k3x5s2x1p1nb,ap2s1,c4k1,fc10nb", IMG)
    assert arch[0] == {"op": "conv2d", "in_channels": 1, "out_channels": 8, "kernel": [3, 5],
                       "stride": [2, 1], "padding": [1, 1], "bias": False}
    assert arch[1] == {"op": "relu"}
    assert arch[2] == {"op": "avgpool2d", "kernel": [2, 2], "stride": [1, 1]}
    assert [op["op"] for op in arch] == ["conv2d", "relu", "avgpool2d", "conv2d", "relu", "flatten", "linear"]
    assert arch[-1]["bias"] is False and arch[3]["in_channels"] == 8
    # conv 28x28 -> (28+2-3)//2+1=14 x (28+2-5)//1+1=26; avgpool 2 stride 1 -> 13x25; 1x1 conv -> 4x13x25
    assert check_arch(arch, IMG)[3] == (4, 13, 25)
    assert arch[-1]["in_features"] == 4 * 13 * 25


def test_mlp_spec():
    arch = parse_arch("fc300,fc100,fc10", IMG)
    assert [op["op"] for op in arch] == ["flatten", "linear", "relu", "linear", "relu", "linear"]
    assert arch[1]["in_features"] == 784
    assert parse_arch("fc10", [784]) == [{"op": "linear", "in_features": 784, "out_features": 10, "bias": True}]


def test_json_arch_accepted():
    assert parse_arch(json.dumps(LENET5_LITERAL), IMG) == LENET5_LITERAL


@pytest.mark.parametrize("spec,needle", [
    ("c6k5p2,mp2,xx,fc10", "token 3 'xx'"),
    ("c6,fc10", "token 1 'c6': a conv needs a kernel size"),
    ("c6k5,relu,fc10", "token 2 'relu'"),
    ("c6k5,tanh,fc10", "token 2 'tanh'"),
    ("fc100,c6k5,fc10", "token 2 'c6k5'"),
    ("c6k5p2,mp2,,fc10", "empty token at position 3"),
    ("c6k40,fc10", "token 1 'c6k40'"),
    ("c6k5,mp2,fc10,mp2", "mp2"),
    ("c6k5k3,fc10", "'k' given twice"),
    ("c6k5p5,fc10", "token 1 'c6k5p5'"),
    ("c0k5,fc10", "token 1 'c0k5'"),
    ("fc0", "token 1 'fc0'"),
    ("mp2,mp2", "no conv"),
    ("mp2,c6k5,fc10", "follows the input: a pool must come after the relu"),
    ("lenet5,fc10", "token 1 'lenet5'"),
    ("", "--arch needs"),
])
def test_bad_specs_refused_naming_the_token(spec, needle):
    with pytest.raises(UserError) as info:
        parse_arch(spec, IMG)
    assert needle in str(info.value), str(info.value)


def test_preset_that_does_not_fit_the_input():
    with pytest.raises(UserError, match="does not fit inputs of shape 3x8x8"):
        parse_arch("lenet5", [3, 8, 8])


# ------------------------------------------------------------------------------- check_arch

def test_check_arch_shapes_of_lenet5():
    assert check_arch(LENET5_LITERAL, IMG) == [
        (6, 28, 28), (6, 28, 28), (6, 14, 14), (16, 10, 10), (16, 10, 10), (16, 5, 5), (400,),
        (120,), (120,), (84,), (84,), (10,)]


def _with(i: int, **changes) -> list[dict]:
    arch = json.loads(json.dumps(LENET5_LITERAL))
    arch[i].update(changes)
    return arch


@pytest.mark.parametrize("arch,needle", [
    (_with(7, in_features=256), "layer 7 (linear) has in_features 256 but its input has 400 features"),
    (_with(3, in_channels=5), "layer 3 (conv2d) has in_channels 5 but its input has 6 channels"),
    (_with(0, dilation=[2, 2]), "layer 0 (conv2d): dilation=[2, 2]"),
    (_with(3, groups=2), "layer 3 (conv2d): groups=2"),
    (_with(0, padding_mode="reflect"), "layer 0 (conv2d): padding_mode='reflect'"),
    (_with(2, padding=[1, 1]), "layer 2 (maxpool2d): padding=[1, 1]"),
    (_with(5, ceil_mode=True), "layer 5 (maxpool2d): ceil_mode=True"),
    (_with(1, op="tanh"), "layer 1 (tanh): activation 'tanh' is not supported"),
    (_with(4, op="add"), "layer 4 (add): residual/skip connections"),
    (_with(4, op="softmax2d"), "layer 4 (softmax2d): unknown op"),
    (_with(0, weird=1), "layer 0 (conv2d): unknown key 'weird'"),
    (_with(0, padding="same"), "layer 0 (conv2d): padding 'same'"),
    (_with(0, kernel=[5, 5, 5]), "layer 0 (conv2d) kernel"),
    (_with(0, bias="yes"), "layer 0 (conv2d) bias"),
    (LENET5_LITERAL[:7] + [{"op": "relu"}] + LENET5_LITERAL[7:], "layer 7 (relu) follows layer 6 (flatten)"),
    ([op for i, op in enumerate(LENET5_LITERAL) if i != 1], "layer 0 (conv2d) is followed by maxpool2d"),
    (LENET5_LITERAL + [{"op": "relu"}], "layer 12 (relu) follows layer 11 (linear): the last"),
    (LENET5_LITERAL + [{"op": "maxpool2d", "kernel": 1}], "layer 12 (maxpool2d)"),
    ([op for i, op in enumerate(LENET5_LITERAL) if i != 6], "layer 6 (linear) gets a 16x5x5 input; put a flatten"),
    ([{"op": "flatten"}, {"op": "conv2d", "in_channels": 1, "out_channels": 2, "kernel": 3}],
     "layer 1 (conv2d) needs a CxHxW input"),
    ([{"op": "conv2d", "in_channels": 1, "out_channels": 2, "kernel": 29}], "larger than its padded input"),
    ([{"op": "relu"}, {"op": "flatten"}, {"op": "linear", "in_features": 784, "out_features": 10}],
     "layer 0 (relu) follows the input"),
    ([{"op": "flatten"}], "no conv2d or linear"),
    ([{"op": "maxpool2d", "kernel": 2}, {"op": "conv2d", "in_channels": 1, "out_channels": 2, "kernel": 3}],
     "layer 0 (maxpool2d) follows the input: a pool must come after the relu"),
    ([{"op": "conv2d", "in_channels": 1, "out_channels": 2, "kernel": 3}, {"op": "maxpool2d", "kernel": 2},
      {"op": "relu"}, {"op": "conv2d", "in_channels": 2, "out_channels": 3, "kernel": 3}],
     "layer 0 (conv2d) is followed by maxpool2d"),
    ([{"op": "conv2d", "in_channels": 1, "out_channels": 2, "kernel": 3}, {"op": "relu"},
      {"op": "conv2d", "in_channels": 2, "out_channels": 3, "kernel": 3}, {"op": "maxpool2d", "kernel": 2}],
     "layer 3 (maxpool2d) follows layer 2 (conv2d)"),
])
def test_check_arch_refusals_name_the_layer(arch, needle):
    with pytest.raises(TargetError) as info:
        check_arch(arch, IMG)
    assert needle in str(info.value), str(info.value)


def test_check_arch_accepts_neutral_options_and_ints():
    arch = _with(0, dilation=1, groups=1, padding_mode="zeros", kernel=5, stride=1, padding=2)
    arch[2].update(padding=0, dilation=[1, 1], ceil_mode=False)
    assert check_arch(arch, IMG) == check_arch(LENET5_LITERAL, IMG)
    assert canonical_arch(arch) == LENET5_LITERAL


@pytest.mark.parametrize("shape", [[28, 28], [0, 28, 28], "abc", [1.5, 28, 28]])
def test_bad_input_shape(shape):
    with pytest.raises(TargetError, match="input_shape"):
        check_arch(LENET5_LITERAL, shape)


# ------------------------------------------------------------------ module_from_arch and back

def test_module_from_lenet5_keys_and_types():
    m = module_from_arch(LENET5_LITERAL)
    assert [type(x).__name__ for x in m] == [
        "Conv2d", "ReLU", "MaxPool2d", "Conv2d", "ReLU", "MaxPool2d", "Flatten", "Linear", "ReLU",
        "Linear", "ReLU", "Linear"]
    assert list(m.state_dict()) == ["0.weight", "0.bias", "3.weight", "3.bias", "7.weight", "7.bias",
                                    "9.weight", "9.bias", "11.weight", "11.bias"]
    assert m.state_dict()["0.weight"].shape == (6, 1, 5, 5) and m[0].padding == (2, 2)
    assert all(v.dtype == torch.float32 for v in m.state_dict().values())
    assert arch_from_module(m, IMG) == LENET5_LITERAL


_token = st.one_of(
    st.builds(lambda n, k, s, p, nb: f"c{n}k{k}s{s}p{min(p, k - 1)}{'nb' if nb else ''}",
              st.integers(1, 4), st.integers(1, 4), st.integers(1, 3), st.integers(0, 2), st.booleans()),
    st.builds(lambda kind, k, s: f"{kind}{k}s{s}", st.sampled_from(["mp", "ap"]), st.integers(1, 3),
              st.integers(1, 3)),
)


@settings(max_examples=40, deadline=None)
@given(tokens=st.lists(_token, min_size=0, max_size=4), fcs=st.lists(st.integers(1, 6), max_size=2),
       hw=st.integers(6, 12), c=st.integers(1, 3))
def test_module_shapes_match_check_arch(tokens, fcs, hw, c):
    """For random small specs that parse, the nn.Sequential's op-by-op output shapes are
    exactly those check_arch predicts, and arch_from_module gives the arch back."""
    spec = ",".join([*tokens, *(f"fc{n}" for n in fcs), "fc3"])
    try:
        arch = parse_arch(spec, [c, hw, hw])
    except UserError:
        return
    shapes = check_arch(arch, [c, hw, hw])
    m = module_from_arch(arch)
    x = torch.rand(2, c, hw, hw)
    for mod, want in zip(m, shapes):
        x = mod(x)
        assert tuple(x.shape[1:]) == want, (spec, mod)
    assert arch_from_module(m, [c, hw, hw]) == arch


def test_arch_from_module_skips_dropout_and_identity_and_flattens_nesting():
    m = nn.Sequential(
        nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2),
                      nn.Conv2d(6, 16, 5), nn.ReLU(), nn.Dropout2d(0.1), nn.MaxPool2d(2, 2)),
        nn.Flatten(), nn.Identity(), nn.Linear(400, 120), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))
    assert arch_from_module(m, IMG) == LENET5_LITERAL


@pytest.mark.parametrize("module,needle", [
    (nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2704, 8), nn.Tanh(),
                   nn.Linear(8, 10)), "layer 4 (Tanh)"),
    (nn.Sequential(nn.Conv2d(1, 4, 3, dilation=2), nn.ReLU(), nn.Flatten(), nn.Linear(2304, 10)),
     "layer 0 (Conv2d): dilation (2, 2)"),
    (nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, padding_mode="circular"), nn.ReLU(), nn.Flatten(),
                   nn.Linear(3136, 10)), "padding_mode 'circular'"),
    (nn.Sequential(nn.Conv2d(2, 4, 3, groups=2), nn.ReLU(), nn.Flatten(), nn.Linear(2704, 10)),
     "layer 0 (Conv2d): groups=2"),
    (nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True), nn.Flatten(),
                   nn.Linear(676, 10)), "layer 2 (MaxPool2d): ceil_mode=True"),
    (nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AvgPool2d(2, padding=1), nn.Flatten(),
                   nn.Linear(784, 10)), "layer 2 (AvgPool2d): pool padding"),
    (nn.Sequential(nn.Flatten(), nn.Linear(784, 8), nn.ReLU(), nn.BatchNorm1d(8), nn.Linear(8, 10)),
     "layer 3 (BatchNorm1d) follows ReLU"),
    (nn.Sequential(nn.Flatten(), nn.Linear(784, 8), nn.LayerNorm(8), nn.ReLU(), nn.Linear(8, 10)),
     "layer 2 (LayerNorm)"),
    (nn.Sequential(nn.Flatten(), nn.Linear(784, 10), nn.Softmax(dim=1)), "layer 2 (Softmax)"),
])
def test_arch_from_module_refusals(module, needle):
    with pytest.raises(TargetError) as info:
        arch_from_module(module, [2, 28, 28] if "groups" in needle else IMG)
    assert needle in str(info.value), str(info.value)


def test_conv_padding_strings():
    m = nn.Sequential(nn.Conv2d(1, 2, 5, padding="same"), nn.ReLU(), nn.Conv2d(2, 3, 3, padding="valid"),
                      nn.ReLU(), nn.Flatten(), nn.Linear(3 * 26 * 26, 10))
    arch = arch_from_module(m, IMG)
    assert arch[0]["padding"] == [2, 2] and arch[2]["padding"] == [0, 0]
    even = nn.Sequential(nn.Conv2d(1, 2, 4, padding="same"), nn.Flatten(), nn.Linear(1568, 10))
    with pytest.raises(TargetError, match="even kernel"):
        arch_from_module(even, IMG)


# ------------------------------------------------------------------------------- BatchNorm

def _randomise_bn(model: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for mod in model.modules():
        if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
            n = mod.num_features
            with torch.no_grad():
                mod.running_mean.copy_(torch.randn(n, generator=g))
                mod.running_var.copy_(torch.rand(n, generator=g) * 3 + 0.05)
                if mod.affine:
                    mod.weight.copy_(torch.randn(n, generator=g))
                    mod.bias.copy_(torch.randn(n, generator=g))


def _bn_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2, bias=False), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.Dropout2d(0.2), nn.BatchNorm2d(16, eps=1e-3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(400, 120), nn.BatchNorm1d(120, affine=False), nn.ReLU(),
        nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))


def test_fold_batchnorm_matches_eval_mode_in_float64():
    net = _bn_net().double()
    _randomise_bn(net)
    net.eval()
    folded = fold_batchnorm(net).eval()
    assert not any(isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) for m in folded.modules())
    assert folded[0].bias is not None            # the bias-free conv got the BatchNorm's shift
    x = torch.rand(64, 1, 28, 28, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref, out = net(x), folded(x)
    assert ref.abs().max() > 0.1
    assert torch.allclose(out, ref, atol=1e-5, rtol=0)
    assert (out - ref).abs().max() < 1e-10       # float64 folding: only rounding differences
    # the original is untouched and still has its BatchNorms
    assert sum(isinstance(m, nn.BatchNorm2d) for m in net.modules()) == 2
    assert arch_from_module(net, IMG) == arch_from_module(folded, IMG) == LENET5_LITERAL


def test_fold_batchnorm_refuses_untracked_statistics():
    net = nn.Sequential(nn.Flatten(), nn.Linear(784, 8), nn.BatchNorm1d(8, track_running_stats=False),
                        nn.ReLU(), nn.Linear(8, 10))
    with pytest.raises(TargetError, match=r"layer 2 \(BatchNorm1d\) keeps no running statistics"):
        fold_batchnorm(net)


# ------------------------------------------------------------------------------- state_for_arch

class NamedLeNet(nn.Module):
    """A LeNet-5 as people write it: named modules, BatchNorm after the first conv, functional
    ReLU/pooling in forward."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5, padding=2, bias=False)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(400, 120)
        self.bn3 = nn.BatchNorm1d(120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        f = nn.functional
        x = f.max_pool2d(f.relu(self.bn1(self.conv1(x))), 2)
        x = f.max_pool2d(f.relu(self.conv2(x)), 2)
        x = f.relu(self.bn3(self.fc1(x.flatten(1))))
        return self.fc3(f.relu(self.fc2(x)))


def _loaded(state: dict, arch=LENET5_LITERAL) -> nn.Sequential:
    m = module_from_arch(arch).double()
    m.load_state_dict(state)
    return m.eval()


def test_state_for_arch_named_modules_with_batchnorm_in_a_checkpoint_dict():
    torch.manual_seed(0)
    net = NamedLeNet().double()
    _randomise_bn(net)
    net.eval()
    ckpt = {"epoch": 7, "model_state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}
    state = state_for_arch(ckpt, LENET5_LITERAL, "lenet.pt")
    assert list(state) == list(module_from_arch(LENET5_LITERAL).state_dict())
    x = torch.rand(32, 1, 28, 28, dtype=torch.float64)
    with torch.no_grad():
        assert (_loaded(state)(x) - net(x)).abs().max() < 1e-10


def test_state_for_arch_sequential_keys_and_pruned_weights():
    torch.manual_seed(1)
    seq = module_from_arch(LENET5_LITERAL).double()
    sd = dict(seq.state_dict())
    mask = (torch.rand_like(sd["7.weight"]) > 0.5).double()
    sd["7.weight_orig"] = sd.pop("7.weight") / 1.0
    sd["7.weight_mask"] = mask
    state = state_for_arch(sd, LENET5_LITERAL)
    assert torch.equal(state["7.weight"], seq.state_dict()["7.weight"] * mask)
    assert torch.equal(state["0.weight"], seq.state_dict()["0.weight"])


def test_state_for_arch_refuses_a_batchnorm_after_a_gap():
    """Sequential(Conv, ReLU, BatchNorm): the gap may hold a ReLU, after which folding the
    BatchNorm into the conv computes another network; refused, naming both indices."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.BatchNorm2d(6), nn.MaxPool2d(2),
                        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                        nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))
    with pytest.raises(TargetError, match=r"BatchNorm '2'.*indices 0 and 2.*after a ReLU"):
        state_for_arch(net.state_dict(), LENET5_LITERAL, "bn.pt")


def test_state_for_arch_sequential_with_batchnorm_offsets():
    net = _bn_net().double()
    _randomise_bn(net, seed=3)
    net.eval()
    # a state_dict does not carry eps: the second BatchNorm used 1e-3. Its Dropout2d sits between
    # conv 4 and BatchNorm 6: renumbered to 5, as the refusal of a gap says
    sd = {(k.replace("6.", "5.", 1) if k.startswith("6.") else k): v for k, v in net.state_dict().items()}
    state = state_for_arch(sd, LENET5_LITERAL, "bn.pt")
    x = torch.rand(16, 1, 28, 28, dtype=torch.float64)
    with torch.no_grad():
        err = (_loaded(state)(x) - net(x)).abs().max()
    assert err > 1e-8          # eps 1e-5 assumed for the layer that used 1e-3: visible
    net[6].eps = 1e-5
    with torch.no_grad():
        assert (_loaded(state)(x) - net(x)).abs().max() < 1e-10


def test_state_for_arch_unknown_order_uses_the_shapes():
    torch.manual_seed(2)
    seq = module_from_arch(LENET5_LITERAL)
    names = {0: "features.conv_a", 3: "features.conv_b", 7: "classifier.fc_a", 9: "classifier.fc_b",
             11: "classifier.fc_c"}
    sd = {f"{names[int(k.split('.')[0])]}.{k.split('.')[1]}": v for k, v in seq.state_dict().items()}
    sorted_sd = dict(sorted(sd.items()))        # as safetensors gives them back: classifier first
    with pytest.raises(TargetError, match="entry 'classifier.fc_a.weight'"):
        state_for_arch(sorted_sd, LENET5_LITERAL, "m.safetensors")
    state = state_for_arch(sorted_sd, LENET5_LITERAL, "m.safetensors", order_known=False)
    assert all(torch.equal(state[k], v) for k, v in seq.state_dict().items())


@pytest.mark.parametrize("edit,needle", [
    (lambda sd: sd.update({"conv2.weight": torch.zeros(16, 6, 3, 3)}),
     "entry 'conv2.weight' in m.pt has shape (16, 6, 3, 3) but layer 3 (conv2d) of the architecture "
     "expects a weight of shape (16, 6, 5, 5)"),
    (lambda sd: sd.pop("fc3.bias"), "no bias but layer 11 (linear) of the architecture expects one"),
    (lambda sd: sd.update({"fc4.weight": torch.zeros(10, 10)}), "has 6 conv/linear layer(s)"),
    (lambda sd: sd.update({"mean": torch.zeros(1)}), "unsupported entry 'mean'"),
    (lambda sd: sd.pop("bn1.running_var"), "BatchNorm 'bn1' in m.pt has no 'running_var'"),
    (lambda sd: sd.update({"conv1.weight": sd["conv1.weight"].to(torch.int64)}), "non-floating"),
])
def test_state_for_arch_errors(edit, needle):
    sd = dict(NamedLeNet().state_dict())
    edit(sd)
    with pytest.raises(TargetError) as info:
        state_for_arch(sd, LENET5_LITERAL, "m.pt")
    assert needle in str(info.value), str(info.value)


def test_state_for_arch_bias_free_arch():
    arch = parse_arch("c4k3nb,fc10nb", [1, 8, 8])
    sd = {"conv.weight": torch.randn(4, 1, 3, 3), "head.weight": torch.randn(10, 144)}
    assert set(state_for_arch(sd, arch)) == {"0.weight", "3.weight"}
    with pytest.raises(TargetError, match="drop the nb suffix"):
        state_for_arch({**sd, "head.bias": torch.zeros(10)}, arch)


def test_state_for_arch_refuses_batchnorm_when_order_unknown():
    sd = dict(sorted(NamedLeNet().state_dict().items()))
    with pytest.raises(TargetError, match="which layer each BatchNorm follows is unknown"):
        state_for_arch(sd, LENET5_LITERAL, "m.safetensors", order_known=False)


# ------------------------------------------------------------------------------- training

@pytest.fixture(scope="module")
def mnist_data():
    from tests.helpers import shared_mnist_dir
    d = shared_mnist_dir()
    if d is None:
        pytest.skip("MNIST IDX files not found")
    return d


TINY_CNN = dict(arch="c4k5s2,mp2,fc10", train_subset=2000, epochs=2, batch_size=32, lr=3e-3, threads=1)


@pytest.fixture(scope="module")
def tiny_cnn_runs(mnist_data, tmp_path_factory):
    from subsetsum_lth.train import TrainConfig, train_target
    out = []
    for i in range(2):
        d = tmp_path_factory.mktemp(f"cnn{i}")
        out.append((d, train_target(TrainConfig(data_dir=str(mnist_data), **TINY_CNN), d)))
    return out


def test_tiny_cnn_trains_and_saves_its_architecture(tiny_cnn_runs, mnist_data):
    from safetensors import safe_open

    from subsetsum_lth.data.mnist import load_mnist
    from subsetsum_lth.train import evaluate
    d, summary = tiny_cnn_runs[0]
    assert summary["test_accuracy"] > 0.65, summary["test_accuracy"]   # 0.77-0.81 over seeds 0-5
    arch = parse_arch(TINY_CNN["arch"], IMG)
    assert summary["arch"] == arch and summary["input_shape"] == IMG and summary["optimizer"] == "adam"
    assert summary["n_parameters"] == 4 * 25 + 4 + 144 * 10 + 10
    with safe_open(str(d / "target.safetensors"), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    assert sorted(tensors) == sorted(module_from_arch(arch).state_dict())
    assert all(t.dtype == torch.float32 for t in tensors.values())
    assert json.loads(meta["arch"]) == arch and json.loads(meta["input_shape"]) == IMG
    assert meta["arch_spec"] == TINY_CNN["arch"] and meta["dataset"] == "mnist"
    assert meta["format"] == "subsetsum-lth-target" and meta["activation"] == "relu"
    assert meta["input_domain"] == "nonnegative" and meta["input_scale"] == "1/255"
    assert meta["sizes"] == "784,576,10"        # input, conv output 4x12x12, logits
    assert arch_from_metadata(meta) == (arch, (1, 28, 28))
    # the file loads back into the same network: the same test accuracy
    module, arch2, shape, _ = load_arch_target(d / "target.safetensors")
    assert arch2 == arch and shape == (1, 28, 28)
    x, y = load_mnist("test", mnist_data, as_images=True)
    assert evaluate(module, x, y) == summary["test_accuracy"]


def test_tiny_cnn_is_deterministic(tiny_cnn_runs):
    (d0, s0), (d1, s1) = tiny_cnn_runs
    from safetensors.torch import load_file
    a, b = load_file(str(d0 / "target.safetensors")), load_file(str(d1 / "target.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert s0["test_accuracy"] == s1["test_accuracy"] and s0["final_loss"] == s1["final_loss"]


def test_load_arch_target_refuses_mismatched_tensors(tmp_path):
    from safetensors.torch import save_file
    arch = parse_arch("c2k3,fc10", [1, 6, 6])
    meta = {"arch": json.dumps(arch), "input_shape": "[1, 6, 6]"}
    save_file({"0.weight": torch.zeros(2, 1, 3, 3), "0.bias": torch.zeros(2),
               "3.weight": torch.zeros(10, 33), "3.bias": torch.zeros(10)}, str(tmp_path / "t.safetensors"), meta)
    with pytest.raises(TargetError, match=r"wrong shape \[\('3.weight', \(10, 33\), \(10, 32\)\)\]"):
        load_arch_target(tmp_path / "t.safetensors")
    save_file({"0.weight": torch.zeros(2)}, str(tmp_path / "u.safetensors"), {"format": "x"})
    with pytest.raises(TargetError, match="records no architecture"):
        load_arch_target(tmp_path / "u.safetensors")


def test_command_arch_refusals(tmp_path, capsys):
    from subsetsum_lth import cli
    out = str(tmp_path / "o")
    assert cli.main(["train-target", "--out", out, "--arch", "c6k5,xx,fc10"]) == 2
    assert "token 2 'xx'" in capsys.readouterr().err
    assert cli.main(["train-target", "--out", out, "--arch", "lenet5", "--hidden", "100"]) == 2
    assert "--hidden and --arch" in capsys.readouterr().err
    assert cli.main(["train-target", "--out", out, "--arch", "lenet5", "--no-bias"]) == 2
    assert "suffix nb" in capsys.readouterr().err
    assert cli.main(["train-target", "--out", out, "--arch", "c6k5,fc7"]) == 2
    assert "outputs 7 values" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    # a zero-padded first conv on Normalize is no longer refused (issue 23: an input op, not a fold)
    from subsetsum_lth.train import TrainConfig
    TrainConfig(arch="lenet5", input_normalize="0.1307,0.3081")


def test_command_arch_defaults_and_explicit_values(monkeypatch, tmp_path):
    """--arch takes the Adam recipe for what is not given; given values win."""
    import argparse

    from subsetsum_lth.commands import train_target as cmd
    seen = {}

    def fake_train(config, out, **kw):
        seen["config"] = config
        raise SystemExit(0)
    monkeypatch.setattr(cmd, "train_target", fake_train)   # the name the command calls
    p = argparse.ArgumentParser()
    cmd.add_arguments(p)
    for argv, want in [([], (10, 1e-3, 128, "adam", 0.0)), (["--lr", "0.01", "--epochs", "3"], (3, 0.01, 128, "adam", 0.0))]:
        with pytest.raises(SystemExit):
            cmd.run(cmd.REQUEST.from_args(p.parse_args(["--out", str(tmp_path), "--arch", "lenet5", "--data",
                                                         "fashion-mnist", *argv])))
        c = seen["config"]
        assert (c.epochs, c.lr, c.batch_size, c.optimizer, c.weight_decay) == want
        assert c.dataset == "fashion-mnist" and c.arch == "lenet5"
    with pytest.raises(SystemExit):
        cmd.run(cmd.REQUEST.from_args(p.parse_args(["--out", str(tmp_path)])))
    c = seen["config"]
    assert (c.epochs, c.lr, c.batch_size, c.optimizer, c.weight_decay, c.arch) == (10, 0.05, 64, "sgd", 5e-4, None)
