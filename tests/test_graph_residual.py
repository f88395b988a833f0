"""Issue 24, from the outside: a residual network handed over as its graph (a live module, a
``torch.export.save`` archive) is read into the nested ``residual`` op -- the torchvision-style
BasicBlock ResNet as tutorials write it (conv-bn-relu-conv-bn, ``out += identity`` or a 1x1-conv-bn
``downsample``, relu after the add) and the ``x + F(x)`` block -- computes exactly what the module
computes, and runs through ``approximate`` to a pruned network within its certificate. Joins that
are not a two-branch skip add (an add of a constant, a concatenation, a third branch, a nested
fork) are refused in one line naming the node."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from subsetsum_lth import api
from subsetsum_lth.cli import main
from subsetsum_lth.errors import TargetError
from subsetsum_lth.target import load_target, module_target

SHAPE = (1, 8, 8)


#: tiny convolutions: one torch thread (several contend on a loaded 2-core machine)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


class BasicBlock(nn.Module):
    """torchvision's BasicBlock, as the tutorials copy it."""
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        identity = x
        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)
        out = self.conv2(out)
        out = self.bn2(out)
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        out = self.relu(out)
        return out


class TinyResNet(nn.Module):
    """Stem conv-bn-relu, an identity block, a strided projection block, pool, flatten, linear."""

    def __init__(self, width=2, num_classes=3, adaptive=True):
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = BasicBlock(width, width)
        down = nn.Sequential(nn.Conv2d(width, 2 * width, kernel_size=1, stride=2, bias=False), nn.BatchNorm2d(2 * width))
        self.layer2 = BasicBlock(width, 2 * width, stride=2, downsample=down)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1)) if adaptive else nn.AvgPool2d(4)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer2(self.layer1(x))
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.fc(x)


def _trained_looking(model: nn.Module, seed: int = 0) -> nn.Module:
    """``model`` in eval mode with non-trivial BatchNorm statistics and affine parameters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
                m.running_var.copy_(0.5 + 1.5 * torch.rand(n, generator=g))
                m.weight.copy_(0.5 + torch.rand(n, generator=g))
                m.bias.copy_(0.4 * torch.rand(n, generator=g) - 0.2)
    return model.eval()


def _resnet(adaptive=True, width=2) -> nn.Module:
    torch.manual_seed(0)
    return _trained_looking(TinyResNet(width=width, adaptive=adaptive))


def _residual_ops(arch):
    return [op for op in arch if op["op"] == "residual"]


@pytest.mark.parametrize("adaptive", [True, False])
def test_a_basicblock_resnet_read_live_computes_what_the_module_computes(adaptive):
    model = _resnet(adaptive)
    x = torch.rand(5, *SHAPE)
    info = {}
    target = module_target(model, x[:1], info)
    blocks = _residual_ops(info["graph_arch"])
    assert len(blocks) == 2 and blocks[0]["shortcut"] == []
    assert [o["op"] for o in blocks[0]["body"]] == ["conv2d", "relu", "conv2d"]
    (proj,) = blocks[1]["shortcut"]
    assert proj["op"] == "conv2d" and list(proj["kernel"]) == [1, 1] and list(proj["stride"]) == [2, 2]
    assert list(blocks[1]["body"][0]["stride"]) == [2, 2]
    with torch.no_grad():
        want = model(x).double()
        got = target.forward(x.double().reshape(5, -1))
    # BatchNorm folded in float64 vs the module's float32: float32 rounding only
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-4), (got - want).abs().max()


class PlainResidual(nn.Module):
    """``x + F(x)`` blocks without BatchNorm (the identity operand first), a linear head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 3, 3, padding=1)
        self.c1, self.c2 = nn.Conv2d(3, 3, 3, padding=1), nn.Conv2d(3, 3, 3, padding=1)
        self.c3 = nn.Conv2d(3, 3, 3, padding=1)
        self.head = nn.Linear(3 * 4 * 4, 4)

    def forward(self, x):
        x = F.relu(self.stem(x))
        x = F.relu(x + self.c2(F.relu(self.c1(x))))
        x = x + self.c3(x)                  # a block right after a block, no relu between
        x = F.max_pool2d(F.relu(x), 2)
        return self.head(x.view(x.size(0), -1))


def test_x_plus_f_of_x_blocks_are_read_identity_first_operand():
    torch.manual_seed(1)
    model = PlainResidual().eval()
    x = torch.rand(4, *SHAPE)
    info = {}
    target = module_target(model, x[:1], info)
    blocks = _residual_ops(info["graph_arch"])
    assert [b["shortcut"] for b in blocks] == [[], []]
    assert [o["op"] for o in blocks[1]["body"]] == ["conv2d"]
    with torch.no_grad():
        assert torch.allclose(target.forward(x.double().reshape(4, -1)), model(x).double(), atol=1e-5)


def test_a_saved_resnet_archive_runs_approximate_within_its_certificate(tmp_path, capsys):
    model = _resnet()
    f = tmp_path / "resnet.pt2"
    torch.export.save(torch.export.export(model, (torch.rand(1, *SHAPE),)), f)
    out = tmp_path / "run"
    assert main(["approximate", "--target", str(f), "--weight-eps", "0.05", "--out", str(out),
                 "--workers", "1", "--no-plots", "--no-progress"]) == 0, capsys.readouterr().err
    rep = json.loads((out / "report.json").read_text())
    assert len(_residual_ops(rep["target_arch"])) == 2
    target = load_target(f)
    pruned = api.export_pruned(api.load_run(out), torch.float64)
    rng = np.random.default_rng(0)        # random points of the ball the bound is certified on
    x = np.abs(rng.normal(size=(64, int(np.prod(SHAPE)))))
    x *= rep["input_radius"] * rng.uniform(0, 1, (64, 1)) / np.linalg.norm(x, axis=1, keepdims=True)
    xt = torch.from_numpy(x)
    with torch.no_grad():
        err = (target.forward(xt) - pruned(xt.reshape(-1, *SHAPE))).norm(dim=1)
        assert torch.allclose(target.forward(xt), model(xt.float().reshape(-1, *SHAPE)).double(), atol=1e-5)
    assert 0 < float(err.max()) <= rep["certified_bound"]
    # inspect lists the block
    capsys.readouterr()
    assert main(["inspect", str(f)]) == 0
    shown = capsys.readouterr().out
    assert re.search(r"add_? +aten\.add_?\.Tensor .*-> residual \(from relu\w*: body 3 ops, shortcut identity\)", shown)
    assert "shortcut 1x1 conv2d" in shown and "[4.shortcut.0] conv2d" in shown


class ConvHead(nn.Module):
    """Stem conv-bn-relu, one identity BasicBlock, a full-size conv giving the logits."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 2, 3, padding=1, bias=False), nn.BatchNorm2d(2)
        self.layer1 = BasicBlock(2, 2)
        self.head = nn.Conv2d(2, 3, 8)

    def forward(self, x):
        return torch.flatten(self.head(self.layer1(torch.relu(self.bn1(self.conv1(x))))), 1)


def test_a_core_aten_archive_with_batchnorm_statistics_outputs_in_a_branch_is_read(tmp_path):
    # run_decompositions() gives _native_batch_norm_legit_no_training with three outputs; the saved
    # archive keeps the two unused ones (getitem nodes) next to the branch they belong to
    torch.manual_seed(2)
    model, x = _trained_looking(ConvHead()), torch.rand(3, *SHAPE)
    f = tmp_path / "core.pt2"
    torch.export.save(torch.export.export(model, (x[:1],)).run_decompositions(), f)
    target = load_target(f)
    assert [o["op"] for o in _residual_ops(target.arch())[0]["body"]] == ["conv2d", "relu", "conv2d"]
    with torch.no_grad():
        assert torch.allclose(target.forward(x.double().reshape(3, -1)), model(x).double(), atol=1e-5)


class Joins(nn.Module):
    def __init__(self, forward):
        super().__init__()
        self.stem, self.a, self.b = nn.Conv2d(1, 2, 3, padding=1), nn.Conv2d(2, 2, 3, padding=1), nn.Conv2d(2, 2, 1)
        self.fc = nn.Linear(2 * 8 * 8, 3)
        self.fc4 = nn.Linear(4 * 8 * 8, 3)
        self._forward = forward

    def forward(self, x):
        return self._forward(self, F.relu(self.stem(x)))


def _head(self, h):
    return self.fc(h.flatten(1)) if h.shape[1] == 2 else self.fc4(h.flatten(1))


@pytest.mark.parametrize("forward,pattern", [
    (lambda s, h: _head(s, F.relu(s.a(h) + 1)), r"^op add \(aten\.add\.Tensor\) at node add .*an add of a constant$"),
    (lambda s, h: _head(s, torch.cat([s.a(h), s.b(h)], 1)),
     r"^concatenation \(aten\.cat\.default\) at node cat .*only a skip add of two branches"),
    (lambda s, h: _head(s, F.relu(s.a(h) + s.b(h) + h)),
     r"^skip connection \(add\) at node add \(module \(root\): Joins\): its fork relu also feeds add_1 \(more than two branches\)"),
    (lambda s, h: _head(s, F.relu(s.a(h) * h)), r"^a join of 2 computed tensors \(aten\.mul\.Tensor\) at node mul"),
    (lambda s, h: _head(s, F.relu(h + s.b(F.relu(s.a(h) + h)))),
     r"^skip connection \(add\) at node add \(module \(root\): Joins\): its fork relu also feeds"),
    (lambda s, h: _head(s, F.relu(h + s.b(F.relu((lambda z: z + s.a(z))(s.a(h)))))),
     r"^skip connection \(add\) at node add_1 \(module \(root\): Joins\): a fork inside a branch \(node add; "
     r"nested blocks are not read\)"),
])
def test_a_join_that_is_not_a_two_branch_skip_add_is_refused_in_one_named_line(forward, pattern, tmp_path, capsys):
    model = Joins(forward).eval()
    x = torch.rand(1, *SHAPE)
    with pytest.raises(TargetError, match=pattern) as err:
        module_target(model, x)
    assert "\n" not in str(err.value)
    f = tmp_path / "join.pt2"
    torch.export.save(torch.export.export(model, (x,)), f)
    assert main(["approximate", "--target", str(f), "--weight-eps", "0.05", "--out", str(tmp_path / "run"),
                 "--workers", "1", "--no-plots", "--no-progress"]) == 2
    err_line = capsys.readouterr().err.strip()
    assert "Traceback" not in err_line and "\n" not in err_line and "at node " in err_line
    assert not (tmp_path / "run").exists()
