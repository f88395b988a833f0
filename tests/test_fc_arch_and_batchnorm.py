"""Issue 20 items 4 and 7, from the outside.

4: every SPEC that ``train-target --help`` shows works wherever --arch is accepted; fully
connected SPECs (fc256,fc128,fc10: a flatten first) were an IndexError. 7: an eval-mode
BatchNorm saved the way tutorials save it is folded exactly in plain MLP state dicts, or refused
in one line naming it and why; a TorchScript archive is read from its graph (issue 23)."""
from __future__ import annotations

import json
import re

import pytest
import torch
from torch import nn

from subsetsum_lth.arch import SPEC_HELP, module_from_arch, parse_arch
from subsetsum_lth.cli import main
from subsetsum_lth.target import load_target

IMG = [1, 28, 28]
HELP_SPECS = re.findall(r"(?:[a-z0-9]+,)+[a-z0-9]+", SPEC_HELP.split("Examples:")[1])


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err, err
    return err


def test_the_help_shows_the_specs_tested_here():
    assert "fc300,fc100,fc10" in HELP_SPECS and "c8k3s2,c16k3s2,fc10" in HELP_SPECS and len(HELP_SPECS) == 3


@pytest.mark.parametrize("spec", HELP_SPECS + ["fc256,fc128,fc10", "fc10", "flatten,fc16,fc10nb"])
def test_every_help_spec_loads_a_plain_state_dict_with_arch(tmp_path, capsys, spec):
    torch.manual_seed(0)
    model = module_from_arch(parse_arch(spec, IMG)).eval()
    torch.save(model.state_dict(), tmp_path / "m.pt")
    assert main(["inspect", str(tmp_path / "m.pt"), "--arch", spec, "--json"]) == 0, _error(capsys)
    info = json.loads(capsys.readouterr().out)
    assert info["ok"]
    t = load_target(tmp_path / "m.pt", arch=spec)
    x = torch.rand(16, 784, dtype=torch.float64)
    with torch.no_grad():
        want = model.double()(x.reshape(16, 1, 28, 28))
    assert (t.forward(x if t.is_mlp else x.reshape(16, 1, 28, 28)) - want).abs().max() < 1e-10
    if all(tok.startswith(("fc", "flatten")) for tok in spec.split(",")):
        assert t.is_mlp         # a fully connected architecture is the plain MLP it is


def test_a_fully_connected_spec_trains_and_approximates_end_to_end(tmp_path, capsys, mnist_dir):
    spec = "fc16,fc10"
    assert main(["train-target", "--arch", spec, "--epochs", "1", "--train-subset", "256", "--threads", "1",
                 "--out", str(tmp_path / "t"), "--no-progress"]) == 0, _error(capsys)
    for i, argv in enumerate((["approximate", "--target", str(tmp_path / "t"), "--weight-eps", "0.1", "--data", "mnist"],
                 ["approximate", "--target", str(tmp_path / "t" / "target.safetensors"), "--arch", spec,
                  "--weight-eps", "0.1"])):
        out = tmp_path / f"run{i}"
        assert main([*argv, "--out", str(out), "--workers", "1", "--no-plots", "--no-progress"]) == 0, _error(capsys)
        rep = json.loads((out / "report.json").read_text())
        assert rep["target_sizes"] == [784, 16, 10] and rep["infeasible_count"] == 0
    assert main(["certify", str(out), "--samples", "8", "--steps", "2"]) == 0, _error(capsys)
    assert main(["inspect", str(tmp_path / "t")]) == 0
    assert "784-16-10" in capsys.readouterr().out
    cmp = tmp_path / "cmp"
    assert main(["compare", str(out), "--target", str(tmp_path / "t" / "target.safetensors"), "--arch", spec,
                 "--out", str(cmp), "--no-plots", "--test-subset", "100", "--data", "mnist"]) == 0, _error(capsys)


def test_a_bad_spec_is_refused_in_one_line_with_exit_2(tmp_path, capsys):
    torch.save(nn.Sequential(nn.Linear(784, 10)).state_dict(), tmp_path / "m.pt")
    for argv in (["inspect", str(tmp_path / "m.pt")], ["approximate", "--target", str(tmp_path / "m.pt"),
                                                       "--out", str(tmp_path / "o")]):
        assert main([*argv, "--arch", "fc10,relu"]) == 2
        err = _error(capsys)
        assert len(err.splitlines()) == 1 and "token 2 'relu'" in err, err


# ------------------------------------------------------------------------------- BatchNorm

def _randomise(model: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(5)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) * 2 - 1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            if m.affine:
                with torch.no_grad():
                    m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                    m.bias.copy_(torch.rand(n, generator=g) - 0.5)
    return model.eval()


class TutorialNet(nn.Module):
    """An MLP as tutorials write it: named layers, BatchNorm between Linear and ReLU."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(784, 32)
        self.bn1 = nn.BatchNorm1d(32)
        self.fc2 = nn.Linear(32, 16, bias=False)
        self.bn2 = nn.BatchNorm1d(16, affine=False)
        self.fc3 = nn.Linear(16, 10)

    def forward(self, x):
        x = torch.relu(self.bn1(self.fc1(x.flatten(1))))
        return self.fc3(torch.relu(self.bn2(self.fc2(x))))


def _sequential():
    torch.manual_seed(3)
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.2),
                         nn.Linear(32, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 10))


@pytest.mark.parametrize("save", ["sequential", "checkpoint_dict", "named", "named_dataparallel"])
def test_batchnorm_after_linear_is_folded_exactly(tmp_path, capsys, save):
    torch.manual_seed(4)
    model = _randomise(TutorialNet() if save.startswith("named") else _sequential())
    sd = model.state_dict()
    if save == "checkpoint_dict":
        obj = {"epoch": 9, "model_state_dict": sd, "optimizer_state_dict": {"state": {}, "param_groups": []}}
    elif save == "named_dataparallel":
        obj = {f"module.{k}": v for k, v in sd.items()}
    else:
        obj = sd
    torch.save(obj, tmp_path / "m.pt")
    target = load_target(tmp_path / "m.pt")
    assert target.depth == 3 and not any("running" in k for k in target.state_dict())
    x = torch.rand(256, 784)
    with torch.no_grad():
        want = model(x)
        got = target.forward(x.double()).float()
    assert want.abs().max() > 0.1
    # float32 weights folded in float64 and rounded: within a few float32 ulps of eval mode
    assert (got - want).abs().max() < 1e-4 * max(1.0, float(want.abs().max()))
    assert main(["inspect", str(tmp_path / "m.pt")]) == 0, _error(capsys)
    assert "loads: yes" in capsys.readouterr().out


def test_folded_batchnorm_target_approximates(tmp_path, capsys):
    torch.manual_seed(6)
    model = _randomise(nn.Sequential(nn.Linear(784, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 10)))
    torch.save(model.state_dict(), tmp_path / "m.pt")
    out = tmp_path / "run"
    assert main(["approximate", "--target", str(tmp_path / "m.pt"), "--weight-eps", "0.2", "--out", str(out),
                 "--workers", "1", "--no-plots", "--no-progress", "--input-domain", "nonnegative"]) == 0, \
        _error(capsys)
    assert main(["certify", str(out), "--samples", "8", "--steps", "2"]) == 0, _error(capsys)


@pytest.mark.parametrize("build,suffix,needle", [
    (lambda: nn.Sequential(nn.Linear(784, 8), nn.ReLU(), nn.BatchNorm1d(8), nn.Linear(8, 10)), ".pt",
     "BatchNorm '2' in {f} is not right after Linear '0' (nn.Sequential indices 0 and 2)"),
    (lambda: nn.Sequential(nn.BatchNorm1d(784), nn.Linear(784, 8), nn.ReLU(), nn.Linear(8, 10)), ".pt",
     "BatchNorm '0' in {f} comes first"),
    (lambda: nn.Sequential(nn.Linear(784, 8), nn.BatchNorm1d(8), nn.BatchNorm1d(8), nn.ReLU(),
                           nn.Linear(8, 10)), ".pt", "BatchNorm '2' in {f} follows BatchNorm '1'"),
    (TutorialNet, ".safetensors", "BatchNorm 'bn1' in {f} cannot be folded: the file keeps no module order"),
    (lambda: nn.Sequential(nn.Linear(784, 8), nn.LayerNorm(8), nn.ReLU(), nn.Linear(8, 10)), ".pt",
     "no running statistics"),
])
def test_a_batchnorm_that_cannot_be_folded_is_refused_in_one_line(tmp_path, capsys, build, suffix, needle):
    torch.manual_seed(7)
    model = _randomise(build())
    f = tmp_path / f"m{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(f))
    else:
        torch.save(model.state_dict(), f)
    assert main(["approximate", "--target", str(f), "--out", str(tmp_path / "o")]) == 2
    err = _error(capsys)
    assert len(err.splitlines()) == 1 and needle.format(f=f) in err, err
    assert not (tmp_path / "o" / "report.json").exists()


@pytest.mark.parametrize("how", ["script", "trace"])
def test_a_torchscript_archive_is_read_from_its_graph(tmp_path, capsys, how):
    """Issue 23 replaced the refusal (and its two lines of Python) by reading the graph itself."""
    torch.manual_seed(8)
    model = nn.Sequential(nn.Linear(784, 8), nn.ReLU(), nn.Linear(8, 10))
    ts = torch.jit.script(model) if how == "script" else torch.jit.trace(model, torch.zeros(1, 784))
    ts.save(str(tmp_path / "ts.pt"))
    assert main(["inspect", str(tmp_path / "ts.pt")]) == 0, _error(capsys)
    shown = capsys.readouterr().out
    assert "(TorchScript)" in shown and "784-8-10" in shown and "read from the graph" in shown
