"""Issue 23 items 1, 3, 4, from the outside: a network is what it computes.

Each model is written the way tutorials write it (a ``class Net(nn.Module)`` with ``F.relu`` in
its forward, an ``nn.Sequential``, functional conv/pool and ``x.view(x.size(0), -1)``) and saved
the way users save it (``torch.save(state_dict)``, a checkpoint dict, ``torch.jit.script/trace
(...).save``, ``torch.export.save``) or passed live; the CLI runs on the file and the network it
read is compared with the module's own outputs. Graphs with Tanh/LeakyReLU are
refused in one line naming the op and where it is; a state_dict run says what it assumed."""
from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import pytest
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from subsetsum_lth.cli import main
from subsetsum_lth.errors import TargetError
from subsetsum_lth.target import module_target
from subsetsum_lth.target import load_target

README = Path(__file__).resolve().parents[1] / "README.md"


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err, err
    return err


class TutorialMLP(nn.Module):
    """The PyTorch-tutorial MLP: named layers, F.relu in forward, flattening with view."""

    def __init__(self, n_in=16, hidden=8, n_out=3):
        super().__init__()
        self.fc1 = nn.Linear(n_in, hidden)
        self.fc2 = nn.Linear(hidden, n_out)
        self.dropout = nn.Dropout(0.25)

    def forward(self, x):
        x = x.view(x.size(0), -1)
        x = self.dropout(F.relu(self.fc1(x)))
        return self.fc2(x)


class TutorialCNN(nn.Module):
    """A LeNet-like tutorial CNN on 1×side×side images: functional relu/pool, BatchNorm, view."""

    def __init__(self, side=12):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 3, 3, padding=1)
        self.conv2 = nn.Conv2d(3, 4, 3)
        self.bn2 = nn.BatchNorm2d(4)
        out = (side // 2 - 2) // 2
        self.fc1 = nn.Linear(4 * out * out, 6)
        self.fc2 = nn.Linear(6, 3)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.avg_pool2d(torch.relu(self.bn2(self.conv2(x))), 2)
        x = x.view(x.size(0), -1)
        x = F.dropout(F.relu(self.fc1(x)), 0.5, training=self.training)
        return self.fc2(x)


def _trained_like(model: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm statistics, eval mode (a trained model)."""
    torch.manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model.eval()


def _save(model: nn.Module, x: torch.Tensor, how: str, folder: Path) -> Path:
    """``model`` saved as a user would: the file the CLI gets."""
    if how == "state_dict":
        torch.save(model.state_dict(), folder / "model.pt")
        return folder / "model.pt"
    if how == "checkpoint_dict":
        torch.save({"epoch": 3, "model_state_dict": model.state_dict(),
                    "optimizer_state_dict": {"state": {}, "param_groups": []}}, folder / "checkpoint.pth")
        return folder / "checkpoint.pth"
    if how == "torchscript_script":
        torch.jit.script(model).save(str(folder / "model_scripted.pt"))
        return folder / "model_scripted.pt"
    if how == "torchscript_trace":
        torch.jit.trace(model, x).save(str(folder / "model.ts"))
        return folder / "model.ts"
    if how == "pt2":
        torch.export.save(torch.export.export(model, (x,)), str(folder / "model.pt2"))
        return folder / "model.pt2"
    raise AssertionError(how)


def _same_outputs(target, model, x) -> None:
    with torch.no_grad():
        want = model(x).double()
    got = target.forward(x.double() if target.input_shape is not None else x.double().reshape(len(x), -1))
    assert want.abs().max() > 0.05
    assert (got - want).abs().max() < 1e-5 * max(1.0, float(want.abs().max()))


# ------------------------------------------------------------------ every way a user hands a model over

@pytest.mark.parametrize("how", ["state_dict", "checkpoint_dict", "torchscript_script", "torchscript_trace", "pt2"])
def test_a_tutorial_mlp_saved_as_users_do_runs_end_to_end_as_itself(tmp_path, capsys, how):
    torch.manual_seed(0)
    model = TutorialMLP().eval()
    x = torch.rand(32, 16)
    f = _save(model, x, how, tmp_path)
    out = tmp_path / "run"
    assert main(["approximate", "--target", str(f), "--weight-eps", "0.1", "--out", str(out), "--workers", "1",
                 "--no-plots", "--no-progress", "--samples", "16", "--steps", "2"]) == 0, _error(capsys)
    err = capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    graph = how in ("torchscript_script", "torchscript_trace", "pt2")
    assert report["target_read_from"] == ("graph" if graph else "state_dict")
    if graph:
        assert report["target_assumptions"] == [] and "assuming" not in err
    else:   # the header and report.json say what the state_dict run assumed, the activation first
        assert report["target_assumptions"][0].startswith("activation: ReLU between consecutive layers")
        assert any(a.startswith("layer order: fc1, fc2") for a in report["target_assumptions"])
        assert "target read from a state_dict, assuming: activation: ReLU" in err
    _same_outputs(load_target(out), model, x)           # the run's target.safetensors is the model


@pytest.mark.parametrize("how,side", [("torchscript_script", 28), ("torchscript_trace", 32), ("pt2", 12),
                                      ("live", 12)])
def test_a_tutorial_cnn_with_batchnorm_is_read_exactly_from_its_graph(tmp_path, capsys, how, side):
    torch.manual_seed(2)
    model = _trained_like(TutorialCNN(side))
    x = torch.rand(8, 1, side, side)
    if how == "live":
        info: dict = {}
        target = module_target(model, x, info)
    else:
        f = _save(model, x, how, tmp_path)
        assert main(["inspect", str(f), "--json"]) == 0, _error(capsys)
        info = json.loads(capsys.readouterr().out)
        assert info["ok"] and info["read_from"] == "graph" and info["assumptions"] == []
        target = load_target(f)
    read = [r["read_as"] for r in info["graph"]]
    assert read.count("conv2d") == 2 and read.count("linear") == 2 and "flatten" in read
    assert any(r.startswith("BatchNorm folded into") for r in read)
    assert any(r.startswith("skipped (dropout") for r in read)
    assert target.input_shape == (1, side, side)
    assert [op["op"] for op in target.arch()] == ["conv2d", "relu", "maxpool2d", "conv2d", "relu", "avgpool2d",
                                                  "flatten", "linear", "relu", "linear"]
    _same_outputs(target, model, x)


@pytest.mark.parametrize("how", ["torchscript_script", "torchscript_trace"])
def test_a_torchscript_cnn_of_unknown_input_shape_is_refused_with_the_fix(tmp_path, capsys, how):
    model = _trained_like(TutorialCNN(12))        # TorchScript records no input shape; not 28×28 or 32×32
    x = torch.rand(2, 1, 12, 12)
    f = _save(model, x, how, tmp_path)
    assert main(["inspect", str(f)]) == 2
    err = _error(capsys)
    assert len(err.splitlines()) == 1
    assert "TorchScript records no input shape" in err and "1×28×28" in err and "1×32×32" in err
    fix = re.search(r"save the model with (torch\.export\.save\(.*\)), which records it", err).group(1)
    exec(fix.replace("'model.pt2'", repr(str(tmp_path / "model.pt2"))), {"torch": torch, "model": model, "x": x})
    assert main(["inspect", str(tmp_path / "model.pt2")]) == 0, _error(capsys)      # the fix, as printed, works


def test_the_cnn_pt2_approximates_and_certifies(tmp_path, capsys):
    torch.manual_seed(3)
    model = _trained_like(TutorialCNN())
    f = _save(model, torch.rand(2, 1, 12, 12), "pt2", tmp_path)
    out = tmp_path / "run"
    assert main(["approximate", "--target", str(f), "--weight-eps", "0.1", "--out", str(out), "--workers", "1",
                 "--no-plots", "--no-progress", "--samples", "16", "--steps", "2",
                 "--input-domain", "nonnegative"]) == 0, _error(capsys)
    assert main(["certify", str(out), "--samples", "8", "--steps", "2"]) == 0, _error(capsys)
    _same_outputs(load_target(out), model, torch.rand(16, 1, 12, 12))


@pytest.mark.parametrize("spelling", ["module", "inplace", "functional", "torch_relu", "tensor_method"])
def test_relu_in_every_spelling_is_read(spelling):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(10, 7), nn.Linear(7, 4)
            self.act = nn.ReLU(inplace=spelling == "inplace")

        def forward(self, x):
            h = self.fc1(x)
            h = {"module": self.act, "inplace": self.act, "functional": F.relu, "torch_relu": torch.relu,
                 "tensor_method": lambda t: t.relu_()}[spelling](h)
            return self.fc2(h)
    torch.manual_seed(4)
    model, x = Net().eval(), torch.randn(16, 10)
    _same_outputs(module_target(model, x), model, x)


def test_from_module_with_an_example_input_reads_any_module_from_its_graph():
    from subsetsum_lth.target import from_module
    torch.manual_seed(9)
    model, x = _trained_like(TutorialCNN(12)), torch.rand(4, 1, 12, 12)
    _same_outputs(from_module(model, x), model, x)
    with pytest.raises(TargetError, match="expected an nn.Sequential"):
        from_module(model)            # without an example input: the old Sequential-only reader


def test_when_torch_export_fails_symbolic_trace_is_tried_and_logged(monkeypatch, caplog):
    """torch.export refusing the module itself (here: made to fail on it) falls back to exporting
    its torch.fx.symbolic_trace; the reason is logged."""
    real = torch.export.export

    def export(mod, args, *a, **k):
        if not isinstance(mod, torch.fx.GraphModule):
            raise RuntimeError("unsupported Python construct in forward")
        return real(mod, args, *a, **k)
    monkeypatch.setattr(torch.export, "export", export)
    torch.manual_seed(10)
    model, x = TutorialMLP().eval(), torch.rand(4, 16)
    with caplog.at_level("INFO", logger="subsetsum_lth.graph_files"):
        _same_outputs(module_target(model, x), model, x)
    assert "unsupported Python construct in forward" in caplog.text and "symbolic_trace" in caplog.text

    class Branchy(TutorialMLP):       # data-dependent control flow: both traces refuse it, in one line
        def forward(self, x):
            return super().forward(x) if x.sum() > 0 else -super().forward(x)
    with pytest.raises(TargetError, match=r"torch.export cannot trace Branchy .*symbolic_trace"):
        module_target(Branchy().eval(), x)


def test_adaptive_average_pooling_that_divides_its_input_is_an_exact_avgpool():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.pool, self.fc = nn.Conv2d(1, 3, 3, padding=1), nn.AdaptiveAvgPool2d(2), nn.Linear(12, 3)

        def forward(self, x):
            return self.fc(torch.flatten(self.pool(F.relu(self.conv(x))), 1))
    torch.manual_seed(11)
    model, x = Net().eval(), torch.rand(4, 1, 8, 8)
    target = module_target(model, x)
    assert [op["op"] for op in target.arch()][:3] == ["conv2d", "relu", "avgpool2d"]
    _same_outputs(target, model, x)
    with pytest.raises(TargetError, match="not an exact average pool"):
        module_target(model, torch.rand(4, 1, 9, 9))


def test_a_normalize_inside_the_model_becomes_its_input_preprocessing(tmp_path, capsys):
    class Normalize(nn.Module):       # torchvision.transforms.Normalize, kept inside the model
        def __init__(self, mean, std):
            super().__init__()
            self.register_buffer("mean", torch.tensor(mean).view(-1, 1, 1))
            self.register_buffer("std", torch.tensor(std).view(-1, 1, 1))

        def forward(self, x):
            return (x - self.mean) / self.std
    torch.manual_seed(5)
    model = nn.Sequential(Normalize([0.1307], [0.3081]), nn.Flatten(), nn.Linear(36, 8), nn.ReLU(),
                          nn.Linear(8, 3)).eval()
    x = torch.rand(16, 1, 6, 6)
    f = _save(model, x, "pt2", tmp_path)
    target = load_target(f)
    assert target.metadata["input_normalize"] == "0.1307,0.3081"
    # an input op in front of the layers (not folded): the layers are the model's own Linear weights
    assert target.preprocessing is not None and "preprocessing_folded" not in target.metadata
    assert np.allclose(target.layers[0].weight, model[2].weight.detach().double().numpy(), atol=1e-7)
    _same_outputs(target, model, x)
    assert main(["inspect", str(f)]) == 0, _error(capsys)
    assert "input preprocessing in the graph: (pixels/255 − mean [0.1307]) / std [0.3081]" in capsys.readouterr().out


# ------------------------------------------------------------------ what a graph says that a state_dict cannot

def _mlp_with(act: nn.Module) -> nn.Module:
    torch.manual_seed(6)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 8), act, nn.Linear(8, 3)).eval()


@pytest.mark.parametrize("how", ["pt2", "torchscript_script", "torchscript_trace"])
@pytest.mark.parametrize("act,op", [(nn.Tanh(), "tanh"), (nn.LeakyReLU(0.1), "leaky_relu")])
def test_tanh_and_leaky_relu_graphs_are_refused_naming_the_op(tmp_path, capsys, how, act, op):
    f = _save(_mlp_with(act), torch.rand(2, 16), how, tmp_path)
    out = tmp_path / "run"
    assert main(["approximate", "--target", str(f), "--out", str(out), "--no-progress"]) == 2
    err = _error(capsys)
    assert len(err.splitlines()) == 1, err
    assert f"activation {op} (aten.{op}.default) at node" in err and "is not supported" in err
    if how == "pt2":       # torch.export keeps the module path
        assert f"(module 2: {type(act).__name__})" in err
    assert not out.exists() or not (out / "report.json").exists()
    assert main(["inspect", str(f)]) == 2
    shown = capsys.readouterr().out
    assert f"aten.{op}.default" in shown and "refused" in shown and "loads: no" in shown


def test_a_state_dict_of_a_tanh_model_says_what_it_assumed_activation_first(tmp_path, capsys, mnist_dir):
    torch.manual_seed(7)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 8), nn.Tanh(), nn.Linear(8, 10)).eval()
    torch.save(model.state_dict(), tmp_path / "tanh.pt")
    assert main(["inspect", str(tmp_path / "tanh.pt"), "--data", "mnist", "--data-dir", str(mnist_dir),
                 "--expected-accuracy", "91.19"]) == 0, _error(capsys)
    captured = capsys.readouterr()
    assert "assumed (a state_dict records weights, not the computation): activation: ReLU" in captured.out
    warning = captured.err.strip()
    assert warning.startswith("warning: the target scores") and "below the 91.19%" in warning
    listed = warning.split("could explain it:")[1]
    assert listed.index("(1) activation: ReLU") < listed.index("(2) layer order") < listed.index(
        "(3) input preprocessing")
    assert "torch.export.save" in listed     # the fix: hand over the graph


def test_a_skip_connection_is_read_as_a_residual_op_and_one_without_a_stem_is_refused():
    class Res(nn.Module):
        def __init__(self, stem):
            super().__init__()
            self.fc0 = nn.Linear(8, 8) if stem else None
            self.fc1, self.fc2 = nn.Linear(8, 8), nn.Linear(8, 3)

        def forward(self, x):
            if self.fc0 is not None:
                x = F.relu(self.fc0(x))
            return self.fc2(F.relu(self.fc1(x)) + x)
    torch.manual_seed(0)
    model, x = Res(stem=True).eval(), torch.rand(4, 8)
    info = {}
    target = module_target(model, x, info)
    assert info["graph_arch"][2] == {"op": "residual", "shortcut": [], "body": [
        {"op": "linear", "in_features": 8, "out_features": 8, "bias": True}, {"op": "relu"}]}
    with torch.no_grad():
        assert torch.allclose(target.forward(x.double()), model(x).double(), atol=1e-5)
    # the add right after the input: a residual network starts with its stem layer
    with pytest.raises(TargetError, match=r"^the graph read is not a network of the supported class: layer 0 "
                                          r"\(residual, node add\): a residual network must start with a "
                                          r"conv2d/linear \(the stem\)[^\n]*$"):
        module_target(Res(stem=False).eval(), torch.rand(2, 8))


@pytest.mark.parametrize("forward,needle", [
    (lambda self, x: self.fc2(F.dropout(F.relu(self.fc1(x)), 0.5)), "dropout is active"),
    (lambda self, x: self.fc2(F.gelu(self.fc1(x))), "activation gelu"),
    (lambda self, x: F.softmax(self.fc2(F.relu(self.fc1(x))), dim=1), "softmax"),
    (lambda self, x: self.fc2(torch.sigmoid(self.fc1(x))), "activation sigmoid"),
    (lambda self, x: self.fc2(self.fc1(x)), "followed by linear"),
    (lambda self, x: F.log_softmax(self.fc2(F.relu(self.fc1(x))), dim=1), "return them from forward"),
])
def test_what_the_construction_cannot_handle_is_refused_naming_it(forward, needle):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(8, 6), nn.Linear(6, 3)
    Net.forward = forward
    with pytest.raises(TargetError) as exc:
        module_target(Net().eval(), torch.rand(2, 8))
    assert needle in str(exc.value) and "\n" not in str(exc.value)


def test_graph_files_refuse_arch_and_layers(tmp_path, capsys):
    f = _save(_mlp_with(nn.ReLU()), torch.rand(2, 16), "pt2", tmp_path)
    assert main(["approximate", "--target", str(f), "--arch", "fc8,fc3", "--out", str(tmp_path / "o")]) == 2
    assert "--arch describe a state_dict" in _error(capsys)


# ------------------------------------------------------------------ hostile and broken graph files

def test_a_pt2_that_is_not_an_export_archive_is_refused_in_one_line(tmp_path, capsys):
    (tmp_path / "junk.pt2").write_bytes(b"not a zip at all")
    assert main(["inspect", str(tmp_path / "junk.pt2")]) == 2
    err = _error(capsys)
    assert "is not a torch.export archive" in err and len(err.splitlines()) == 1
    with zipfile.ZipFile(tmp_path / "other.pt2", "w") as z:
        z.writestr("a/data.pkl", b"x")
    assert main(["approximate", "--target", str(tmp_path / "other.pt2"), "--out", str(tmp_path / "o")]) == 2
    assert "is not a torch.export archive" in _error(capsys)


class _Boom:
    def __reduce__(self):
        import os
        return (os.system, ("touch PWNED_BY_PT2",))


def test_a_pt2_whose_weight_is_a_malicious_pickle_is_never_unpickled(tmp_path, capsys, monkeypatch):
    """torch.export.load unpickles pickled payloads with weights_only=False; the tool does not."""
    import pickle
    monkeypatch.chdir(tmp_path)
    good = _save(_mlp_with(nn.ReLU()), torch.rand(2, 16), "pt2", tmp_path)
    bad = tmp_path / "evil.pt2"
    with zipfile.ZipFile(good) as zin:
        cfg_name = next(n for n in zin.namelist() if n.endswith("model_weights_config.json"))
        cfg = json.loads(zin.read(cfg_name))
        first = next(iter(cfg["config"]))
        cfg["config"][first]["use_pickle"] = True          # the config now calls this payload a pickle
        victim = f"{cfg_name.rsplit('/', 1)[0]}/{cfg['config'][first]['path_name']}"
        with zipfile.ZipFile(bad, "w") as zout:
            for item in zin.infolist():
                data = zin.read(item.filename)
                if item.filename == cfg_name:
                    data = json.dumps(cfg).encode()
                elif item.filename == victim:
                    data = pickle.dumps(_Boom())
                zout.writestr(item, data)
    assert main(["inspect", str(bad)]) == 2
    err = _error(capsys)
    assert len(err.splitlines()) == 1 and "evil.pt2" in err and "weights_only" in err, err
    assert not (tmp_path / "PWNED_BY_PT2").exists()


# ------------------------------------------------------------------ the notebook API and its README example

def test_ticket_from_a_live_module(tmp_path):
    from subsetsum_lth.notebook import ticket as make_ticket
    torch.manual_seed(8)
    model = TutorialMLP().eval()
    x = torch.rand(32, 16)
    ticket = make_ticket(model, x, eps=0.5, out=tmp_path / "run")
    assert ticket.certificate["bound"] <= 0.5 and ticket.out == tmp_path / "run"
    assert (tmp_path / "run" / "report.json").is_file()
    assert main(["certify", str(tmp_path / "run"), "--samples", "8", "--steps", "2"]) == 0
    inside = x / x.norm(dim=1, keepdim=True).clamp(min=1.0)      # the certified set: ‖x‖₂ ≤ 1
    with torch.no_grad():
        gap = (ticket.module(inside).double() - model(inside).double()).norm(dim=1).max()
    assert gap <= ticket.certificate["bound"] + 1e-4
    assert set(ticket.masks) == {k for k in ticket.masks if k.endswith((".weight", ".bias"))}
    assert all(m.dtype == torch.bool for m in ticket.masks.values())


def test_ticket_refuses_a_tanh_module_naming_the_op():
    from subsetsum_lth.notebook import ticket as make_ticket
    with pytest.raises(TargetError, match=r"activation tanh .* \(module 2: Tanh\)"):
        make_ticket(_mlp_with(nn.Tanh()), torch.rand(2, 16), eps=0.5)


def test_the_readme_ticket_example_runs(tmp_path, monkeypatch):
    text = README.read_text(encoding="utf-8")
    m = re.search(r"<!-- ticket-example -->\s*```python\n(.*?)```", text, re.S)
    assert m, "README lost its ticket example"
    code = m.group(1)
    assert len(code.strip().splitlines()) <= 14
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    ticket = scope["t"]
    assert ticket.certificate["bound"] <= 0.5
    x = torch.rand(4, 1, 28, 28)
    assert scope["pruned"](x).shape == (4, 10)
