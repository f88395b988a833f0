"""Peer checkpoints (saved exactly as their source code saves them) load and reproduce the model,
or are refused with the exact fix; input preprocessing is folded exactly into the first layer."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from subsetsum_lth.cli import main
from subsetsum_lth.errors import TargetError, UserError
from subsetsum_lth.preprocess import Preprocessing, fold
from subsetsum_lth.target import load_target, save_target
from tests import peer_models as pm


def _same_function(target, model, p=8, n=64):
    x = torch.randn(n, p, dtype=torch.float64)
    ref = model.double()(x)
    got = target.forward(x)
    assert torch.allclose(got, ref, rtol=1e-12, atol=1e-12), float((got - ref).abs().max())


def _files(d):
    return sorted(str(p.relative_to(d)) for p in d.rglob("*"))


@pytest.mark.parametrize("case", sorted(pm.LOADS))
def test_peer_checkpoint_loads_and_reproduces(tmp_path, case):
    path, model = pm.LOADS[case](tmp_path)
    target = load_target(path)
    assert target.sizes[0] == 8 and target.sizes[-1] == 3
    _same_function(target, model)


def test_checkpoint_metadata_and_prefixes(tmp_path):
    t = load_target(pm.checkpoint_dict(tmp_path)[0])
    assert t.metadata["epoch"] == 3 and t.metadata["best_acc1"] == 97.5
    info = {}
    load_target(pm.data_parallel(tmp_path)[0], info=info)
    assert info["prefix_stripped"] == "module." and info["order"] == ["fc1", "fc2", "fc3"]
    info = {}
    load_target(pm.lightning_ckpt(tmp_path)[0], info=info)
    assert info["prefix_stripped"] == "model." and info["weights_key"] == "state_dict"
    assert info["order"] == ["0", "2", "4"] and info["order_from"] == "nn.Sequential indices"
    info = {}
    load_target(pm.flatten_dropout_sequential(tmp_path)[0], info=info)
    assert info["order"] == ["1", "4"]


def test_pth_tar_tensor_accuracy_is_metadata(tmp_path):
    """pytorch/examples' checkpoint.pth.tar stores best_acc1 as a tensor: it is the stored figure."""
    path, _ = pm.imagenet_example(tmp_path)
    target = load_target(path)
    assert target.metadata["best_acc1"] == pytest.approx(91.5) and target.metadata["epoch"] == 1


def test_numeric_indices_sort_numerically(tmp_path):
    torch.manual_seed(0)
    mods = []
    for i in range(6):                                # Linear at indices 0, 2, ..., 10
        mods += [nn.Linear(8 if i == 0 else 5, 5 if i < 5 else 3), nn.ReLU()]
    m = nn.Sequential(*mods[:-1])
    save_file(m.state_dict(), str(tmp_path / "deep.safetensors"))    # keys come back sorted: 10 < 2
    info = {}
    t = load_target(tmp_path / "deep.safetensors", info=info)
    assert info["order"] == ["0", "2", "4", "6", "8", "10"]
    _same_function(t, m.eval())


AMBIGUOUS = ("cannot tell the forward order of the layers in {p} from their shapes: several orders fit "
             "(inp,hid_a,hid_b,out and inp,hid_b,hid_a,out); pass the forward order explicitly, e.g. "
             "--layers inp,hid_a,hid_b,out")


def test_ambiguous_order_needs_layers(tmp_path):
    path, model = pm.ambiguous_square(tmp_path)
    with pytest.raises(TargetError) as ei:
        load_target(path)
    assert str(ei.value) == AMBIGUOUS.format(p=path)
    _same_function(load_target(path, layers="inp,hid_a,hid_b,out"), model)
    swapped = load_target(path, layers=["inp", "hid_b.weight", "hid_a", "out"])   # the user's claim
    assert np.array_equal(swapped.layers[1].weight, model.hid_b.weight.double().detach().numpy())


@pytest.mark.parametrize("layers, words", [
    ("inp,hid_a,nope,out", ["--layers names 'nope'", "its layers are: inp,hid_a,hid_b,out"]),
    ("inp,hid_a,out", ["--layers lists 3 of the 4 Linear layers", "also place hid_b"]),
    ("inp,hid_a,hid_a,out", ["--layers names 'hid_a' twice"]),
    ("hid_a,inp,hid_b,out", ["inconsistent shapes", "in the --layers order", "layer hid_a outputs 6",
                             "layer inp expects 8"]),
])
def test_layers_flag_refusals(tmp_path, layers, words):
    path, _ = pm.ambiguous_square(tmp_path)
    with pytest.raises(TargetError) as ei:
        load_target(path, layers=layers)
    for w in words:
        assert w in str(ei.value)


class OutFirst(nn.Module):
    """Registers the output layer before the hidden one: registration order is not forward order."""

    def __init__(self):
        super().__init__()
        self.out = nn.Linear(6, 3)
        self.hidden = nn.Linear(8, 6)

    def forward(self, x):
        return self.out(torch.relu(self.hidden(x)))


def test_registration_order_contradicting_shapes_is_refused_with_the_fix(tmp_path):
    torch.manual_seed(0)
    m = OutFirst().eval()
    torch.save(m.state_dict(), tmp_path / "o.pt")
    with pytest.raises(TargetError) as ei:
        load_target(tmp_path / "o.pt")
    assert str(ei.value) == (
        f"the layers in {tmp_path / 'o.pt'} are registered in the order out,hidden, but their shapes only "
        "chain as hidden,out (layer out outputs 3 features, layer hidden expects 8); if hidden,out is the "
        "forward order, pass --layers hidden,out")
    _same_function(load_target(tmp_path / "o.pt", layers="hidden,out"), m)


def test_pickled_user_module_is_refused_without_suggesting_weights_only_false(tmp_path):
    """A whole model of a user class: unpickling would import and run that class's code, so the
    refusal names it and says where to save the state_dict, never 'weights_only=False'."""
    path, _ = pm.pickled_module(tmp_path)
    with pytest.raises(TargetError) as ei:
        load_target(path)
    msg = str(ei.value)
    assert len(msg.splitlines()) == 1 and "\x1b" not in msg and "weights_only=False" not in msg
    assert msg.startswith(f"{path} holds a pickled tests.peer_models.LeNet (a whole model object, not a state_dict)")
    assert "in the code that defines tests.peer_models.LeNet: torch.save(model.state_dict(), path)" in msg


def test_pickled_torch_module_gets_the_trusted_conversion_and_it_works(tmp_path):
    """A whole nn.Sequential imports only torch classes: 'only if you trust the file' comes first,
    then the two lines that turn it into a state_dict (run here: our own, trusted file)."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3))
    path = tmp_path / "whole.pt"
    torch.save(m, path)
    with pytest.raises(TargetError) as ei:
        load_target(path)
    lines = str(ei.value).splitlines()
    assert len(lines) == 3 and "\x1b" not in str(ei.value)
    assert lines[0].startswith(f"{path} holds a pickled torch.nn.modules.container.Sequential (a whole model object")
    assert "Only if you trust the file" in lines[0] and "weights_only=False" not in lines[0]
    assert lines[1] == f"    model = torch.load({str(path)!r}, weights_only=False)  # only if you trust the file"
    state = tmp_path / "whole_state.pt"
    assert lines[2] == f"    torch.save(model.state_dict(), {str(state)!r})"
    exec("\n".join(line.strip() for line in lines[1:]), {"torch": torch})
    _same_function(load_target(state), m.eval())


def test_pickled_objects_inside_a_checkpoint_dict(tmp_path):
    import argparse
    m = pm.LeNet()
    torch.save({"args": argparse.Namespace(lr=0.1), "state_dict": m.state_dict()}, tmp_path / "c.pt")
    with pytest.raises(TargetError) as ei:
        load_target(tmp_path / "c.pt")
    msg = str(ei.value)
    assert len(msg.splitlines()) == 1 and "argparse.Namespace" in msg and "weights_only=False" not in msg
    assert "'state_dict' entry" in msg
    # a user module under 'model': named, no weights_only=False
    torch.save({"model": m, "epoch": 1}, tmp_path / "d.pt")
    with pytest.raises(TargetError) as ei:
        load_target(tmp_path / "d.pt")
    assert "tests.peer_models.LeNet" in str(ei.value) and "weights_only=False" not in str(ei.value)
    # a torch module under 'model' (torch.save({'model': model, ...})): the trusted lines give its state_dict
    torch.manual_seed(0)
    seq = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3))
    torch.save({"model": seq, "epoch": 1}, tmp_path / "e.pt")
    with pytest.raises(TargetError) as ei:
        load_target(tmp_path / "e.pt")
    lines = str(ei.value).splitlines()
    assert len(lines) == 4 and "Only if you trust the file" in lines[0]
    assert lines[2].strip().startswith("w = ckpt['model']  # ")
    exec("\n".join(line.strip() for line in lines[1:]), {"torch": torch})
    _same_function(load_target(tmp_path / "e_state.pt"), seq.eval())


def test_batchnorm_after_a_linear_layer_is_folded(tmp_path):
    """issue 20: the peer model with fc1 -> bn1 -> relu -> fc2 (a tutorial's MLP) loads as its eval mode."""
    path, _ = pm.REFUSED["batchnorm"](tmp_path)
    torch.manual_seed(0)
    m = pm.BNNet().double()      # float64 weights: the fold is exact up to float64 rounding
    m.bn1.running_mean.uniform_(-1, 1)
    m.bn1.running_var.uniform_(0.5, 2)
    torch.save(m.state_dict(), path)
    _same_function(load_target(path), m.eval())


@pytest.mark.parametrize("case, message", [
    ("optimizer-only", "{p} holds an optimizer state ('optimizer') but no model weights (entries: 'epoch', "
                       "'optimizer'); an optimizer state is not a network: pass the file that holds the "
                       "model's state_dict (torch.save(model.state_dict(), path))"),
])
def test_refusals_name_the_entry(tmp_path, case, message):
    path, _ = pm.REFUSED[case](tmp_path)
    with pytest.raises(TargetError) as ei:
        load_target(path)
    assert str(ei.value) == message.format(p=path)


def test_masks_file_as_target_names_the_file_to_pass(tmp_path):
    save_file({"0.weight": torch.ones(4, 8, dtype=torch.uint8), "2.weight": torch.ones(3, 4, dtype=torch.uint8)},
              str(tmp_path / "masks.safetensors"))
    with pytest.raises(TargetError) as ei:
        load_target(tmp_path / "masks.safetensors")
    assert str(ei.value).startswith(f"layer 0 in {tmp_path / 'masks.safetensors'} has a non-floating weight "
                                    "of dtype torch.uint8; pass the trained model's float weights (in a run "
                                    "folder: the folder itself or its target.safetensors, not masks.safetensors")


def test_normalisation_buffers_point_at_input_normalize(tmp_path):
    """A model that normalises inside forward() with registered mean/std buffers."""
    sd = pm.LeNet().state_dict()
    sd = {"mean": torch.tensor([0.1307]), "std": torch.tensor([0.3081]), **sd}
    torch.save(sd, tmp_path / "n.pt")
    with pytest.raises(TargetError) as ei:
        load_target(tmp_path / "n.pt")
    assert str(ei.value) == (
        f"unsupported entry 'mean' in {tmp_path / 'n.pt'}: only the weight and bias of Linear layers are "
        "read (a plain ReLU MLP; keys like '0.weight', 'fc1.bias', 'layers.2.weight'); if 'mean' (0.1307) "
        "is the input normalisation the model applies, remove it and its partner from the state_dict and "
        "declare them with --input-normalize MEAN,STD")


def test_a_single_linear_layer(tmp_path):
    torch.manual_seed(0)
    lin = nn.Linear(8, 3)
    torch.save(lin.state_dict(), tmp_path / "lin.pt")            # keys 'weight', 'bias'
    _same_function(load_target(tmp_path / "lin.pt"), lin.eval())


def test_other_unsupported_entries(tmp_path):
    sd = pm.LeNet().state_dict()
    sd["temperature"] = torch.tensor(1.0)
    torch.save(sd, tmp_path / "t.pt")
    with pytest.raises(TargetError, match="unsupported entry 'temperature'"):
        load_target(tmp_path / "t.pt")
    torch.save({"fc1.weight": torch.zeros(2, 2), "epoch": 1}, tmp_path / "mixed.pt")
    with pytest.raises(TargetError, match="entry 'epoch' .* is a int, not a tensor"):
        load_target(tmp_path / "mixed.pt")
    sd = nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3), nn.Linear(3, 2)).state_dict()
    torch.save(sd, tmp_path / "ln.pt")
    with pytest.raises(TargetError, match="layer '1' .* 1-D weight .* normalisation layer"):
        load_target(tmp_path / "ln.pt")


# ------------------------------------------------------------------ CLI: approximate and inspect

QUICK = ["--weight-eps", "0.1", "--no-plots", "--no-progress", "--workers", "1", "--samples", "64",
         "--steps", "10"]


def test_cli_approximate_peer_checkpoint_end_to_end(tmp_path, capsys):
    """By default the declared Normalize is an input op in front of f and ĝ (issue 23): the run's
    target keeps the model's own weights and takes pixels/255, and so does ĝ as the API exports it."""
    path, model = pm.checkpoint_dict(tmp_path)
    out = tmp_path / "run"
    assert main(["approximate", "--target", str(path), "--out", str(out), "--input-radius", "1",
                 "--input-normalize", "0.1,0.5", *QUICK]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["target_sizes"] == [8, 6, 5, 3] and report["infeasible_count"] == 0
    assert report["certified_bound"] >= report["empirical_bound"]
    assert report["preprocessing"]["folded"] is False and report["preprocessing"]["mean"] == [0.1]
    assert report["preprocessing"]["applied"] == "input op" and report["input_domain"] == "signed"
    assert "applied in front of f and ĝ" in capsys.readouterr().out
    with safe_open(str(out / "target.safetensors"), framework="pt") as fh:
        meta = fh.metadata()
        w0 = fh.get_tensor("0.weight")
    assert meta["input_normalize"] == "0.1,0.5" and "preprocessing_folded" not in meta
    assert torch.equal(w0, model.state_dict()["fc1.weight"])          # the model's own first layer
    # the run's target takes x in [0, 1] where the model took (x - 0.1) / 0.5
    t = load_target(out)
    x = torch.rand(32, 8, dtype=torch.float64)
    assert torch.allclose(t.forward(x), model.double()((x - 0.1) / 0.5), rtol=1e-6, atol=1e-6)
    assert t.preprocessing == Preprocessing.parse("0.1,0.5")
    load_target(out, preprocessing=Preprocessing.parse("0.1,0.5"))     # the same declaration agrees
    with pytest.raises(TargetError, match="declares the input preprocessing"):
        load_target(out, preprocessing=Preprocessing.parse("0.2,0.5"))
    from subsetsum_lth.api import export_pruned, masked_model
    g = export_pruned(out, torch.float64)
    # the input op is no parameter: the keys are those of g's Sequential (DESIGN's file contract)
    assert list(g.state_dict()) == [k.replace("_orig", "") for k in masked_model(out).state_dict()
                                    if not k.endswith("_mask")] == [f"{i}.{n}" for i in range(0, 12, 2)
                                                                    for n in ("weight", "bias")]
    with torch.no_grad():
        gap = (t.forward(x) - g(x)).norm(dim=1).max().item()
    assert gap <= report["certified_bound"]


def test_cli_fold_preprocessing_folds_where_asked(tmp_path, capsys):
    """--fold-preprocessing keeps the old behaviour: folded into layer 1, the run's target takes
    pixels/255 with the fold in its weights, and it is not folded twice."""
    path, model = pm.checkpoint_dict(tmp_path)
    out = tmp_path / "run"
    assert main(["approximate", "--target", str(path), "--out", str(out), "--input-radius", "1",
                 "--input-normalize", "0.1,0.5", "--fold-preprocessing", *QUICK]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["preprocessing"]["folded"] is True and report["input_domain"] == "nonnegative"
    assert "folded into layer 1" in capsys.readouterr().out
    with safe_open(str(out / "target.safetensors"), framework="pt") as fh:
        meta = fh.metadata()
    assert meta["input_normalize"] == "0.1,0.5" and meta["preprocessing_folded"] == "true"
    t = load_target(out)
    assert t.preprocessing is None
    x = torch.rand(32, 8, dtype=torch.float64)
    assert torch.allclose(t.forward(x), model.double()((x - 0.1) / 0.5), rtol=1e-6, atol=1e-6)
    with pytest.raises(TargetError, match="already has its input preprocessing"):
        load_target(out, preprocessing=Preprocessing.parse("0.1,0.5"))


def test_cli_inspect(tmp_path, capsys):
    path, _ = pm.data_parallel(tmp_path)
    assert main(["inspect", str(path)]) == 0
    text = capsys.readouterr().out
    assert "prefix stripped: 'module.'" in text and "loads: yes" in text
    assert re.search(r"1\. fc1 +6×8 \+ bias  float32  ‖W‖₂=", text)
    assert main(["inspect", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["ok"] and info["order"] == ["fc1", "fc2", "fc3"] and info["n_parameters"] == 107
    assert [r["shape"] for r in info["layers"]] == [[6, 8], [5, 6], [3, 5]]


def test_cli_refusals_exit_2_and_touch_nothing(tmp_path, capsys):
    path, _ = pm.ambiguous_square(tmp_path)
    before = _files(tmp_path)
    assert main(["inspect", str(path)]) == 2
    cap = capsys.readouterr()
    assert "loads: no" in cap.out and cap.err.strip() == "error: " + AMBIGUOUS.format(p=path)
    assert main(["approximate", "--target", str(path), "--out", str(tmp_path / "run"), *QUICK]) == 2
    assert capsys.readouterr().err.strip() == "error: " + AMBIGUOUS.format(p=path)
    assert main(["inspect", str(path), "--layers", "inp,hid_a,hid_b,out"]) == 0
    assert main(["inspect", str(path), "--expected-accuracy", "0.9"]) == 2
    assert capsys.readouterr().err.strip() == ("error: --expected-accuracy is compared with the accuracy "
                                               "measured on --data; add --data mnist or drop it")
    assert _files(tmp_path) == before
    assert main(["approximate", "--layers", "a,b", "--out", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err.strip().endswith("--layers describe a --target file; pass --target or drop them")
    assert main(["compare", str(tmp_path / "run"), "--input-normalize", "0.1,0.5", "--out", str(tmp_path / "c")]) == 2
    assert capsys.readouterr().err.strip().endswith("--input-normalize describe a --target file; pass --target "
                                                    "or drop them")
    assert _files(tmp_path) == before


# ------------------------------------------------------------------ input preprocessing

@pytest.mark.parametrize("normalize, scale, channels", [
    ("0.1307,0.3081", None, 1),
    ("0.485,0.456,0.406,0.229,0.224,0.225", None, 3),
    ("127.5,64", "1", 1),                             # raw 0..255 pixels, then normalised
    (None, "1", 1),
])
def test_fold_equals_original_on_normalised_inputs(normalize, scale, channels):
    torch.manual_seed(0)
    p = 12
    model = nn.Sequential(nn.Linear(p, 5, bias=False), nn.ReLU(), nn.Linear(5, 3)).double().eval()
    from subsetsum_lth.target import from_module
    prep = Preprocessing.parse(normalize, scale)
    folded = fold(from_module(model), prep)
    x = torch.rand(50, p, dtype=torch.float64)                      # pixels/255 in [0, 1]
    k = 255.0 * (1 / 255 if scale is None else float(scale))
    mean = torch.tensor(prep.mean or (0.0,) * channels, dtype=torch.float64).repeat_interleave(p // channels)
    std = torch.tensor(prep.std or (1.0,) * channels, dtype=torch.float64).repeat_interleave(p // channels)
    expected = model((x * k - mean) / std)
    assert torch.allclose(folded.forward(x), expected, rtol=1e-5, atol=1e-5)   # float32-rounded fold
    assert folded.metadata["preprocessing_folded"] == "true"
    assert folded.metadata["input_domain"] == "nonnegative"
    assert (folded.layers[0].bias is not None) == bool(prep.mean)  # a bias is created when needed


@pytest.mark.parametrize("text, words", [
    ("0.1", "MEAN,STD per channel"), ("0.1,0.2;0.3", "as many means as stds"), ("a,b", "MEAN,STD per channel"), ("0.1,0", "positive stds"),
])
def test_normalize_flag_refusals(text, words):
    with pytest.raises(UserError, match=words):
        Preprocessing.parse(text)


def test_stored_preprocessing_folds_on_load_and_conflicts_are_refused(tmp_path):
    path, model = pm.lenet_state_dict(tmp_path)
    t = load_target(path, preprocessing=Preprocessing.parse("0.2,0.5"))
    save_target(t, tmp_path / "t.safetensors")                     # folded weights + metadata
    again = load_target(tmp_path / "t.safetensors")
    assert np.array_equal(again.layers[0].weight, t.layers[0].weight)   # stored exactly, not refolded
    unfolded = load_target(path)
    save_target(unfolded, tmp_path / "u.safetensors", {"input_normalize": "0.2,0.5"})  # as train-target does
    u = load_target(tmp_path / "u.safetensors")
    x = torch.rand(16, 8, dtype=torch.float64)
    assert torch.allclose(u.forward(x), model.double()((x - 0.2) / 0.5), rtol=1e-6, atol=1e-6)
    with pytest.raises(TargetError, match="declares the input preprocessing .* but the flags say"):
        load_target(tmp_path / "u.safetensors", preprocessing=Preprocessing.parse("0.1,0.5"))
    with pytest.raises(TargetError, match="3 channels but the target takes 8 inputs"):
        load_target(path, preprocessing=Preprocessing.parse("0,0,0,1,1,1"))


def test_accuracy_warning_before_the_run(capsys):
    from subsetsum_lth.commands.approximate import _check_accuracy
    from subsetsum_lth.target import random_target
    t = random_target((4, 3, 2), seed=0)
    x = np.random.default_rng(0).random((200, 4)).astype(np.float32)
    y = t.forward(torch.as_tensor(x, dtype=torch.float64)).argmax(1).numpy()
    _check_accuracy(t, {"x": x, "y": y}, 99)                      # 100% measured: no warning
    assert capsys.readouterr().err == ""
    _check_accuracy(t, {"x": x, "y": (y + 1) % 2}, 0.9)           # 0% measured
    err = capsys.readouterr().err
    assert err.startswith("warning: the target scores 0.00% on the test images as pixels/255 in [0, 1], "
                          "below the 90.00% of --expected-accuracy") and "--input-normalize" in err
    wrong = y.copy()
    wrong[:5] = (wrong[:5] + 1) % 2                                # 97.50% measured
    _check_accuracy(t, {"x": x, "y": wrong}, 99.75)               # the 2.25-point drop warns
    assert capsys.readouterr().err.startswith("warning: the target scores 97.50% on the test images")
    _check_accuracy(t, {"x": x, "y": wrong}, 98.0)                # within a point: no warning
    assert capsys.readouterr().err == ""
    t.metadata["test_accuracy"] = "0.95"
    _check_accuracy(t, {"x": x, "y": (y + 1) % 2}, None)
    assert "95.00% of its checkpoint's 'test_accuracy'" in capsys.readouterr().err


def test_cli_normalisation_on_mnist(tmp_path, capsys, mnist_dir):
    """A target trained on Normalize(0.1307, 0.3081): with its stored preprocessing it scores its own
    test accuracy on pixels/255; the same weights without it score less and draw a warning."""
    assert main(["train-target", "--out", str(tmp_path / "t"), "--hidden", "16", "--epochs", "1",
                 "--train-subset", "2000", "--data-dir", str(mnist_dir), "--threads", "1",
                 "--input-normalize", "0.1307,0.3081", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["input_normalize"] == "0.1307,0.3081"
    assert main(["inspect", str(tmp_path / "t"), "--data", "mnist", "--data-dir", str(mnist_dir), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["preprocessing"]["applied"] == "input op" and "warning" not in info
    assert abs(info["accuracy"]["value"] - summary["test_accuracy"]) <= 2e-4   # float32 vs float64 ties
    with safe_open(str(tmp_path / "t" / "target.safetensors"), framework="pt") as fh:
        raw = {k: fh.get_tensor(k) for k in fh.keys()}
    save_file(raw, str(tmp_path / "bare.safetensors"))             # the weights, preprocessing forgotten
    assert main(["inspect", str(tmp_path / "bare.safetensors"), "--data", "mnist", "--data-dir",
                 str(mnist_dir), "--json", "--expected-accuracy", str(summary["test_accuracy"])]) == 0
    cap = capsys.readouterr()
    bare = json.loads(cap.out)
    assert bare["accuracy"]["value"] < summary["test_accuracy"] - 0.05
    assert cap.err.startswith("warning: the target scores") and "--input-normalize" in cap.err
    assert main(["inspect", str(tmp_path / "bare.safetensors"), "--data", "mnist", "--data-dir",
                 str(mnist_dir), "--json", "--input-normalize", "0.1307,0.3081"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["accuracy"]["value"] == info["accuracy"]["value"]


def test_pickled_from_a_script_names_the_script():
    from subsetsum_lth.pickle_scan import _where_class
    assert _where_class("__main__.LeNet300") == "in the script that defines LeNet300 (it was saved from __main__)"
    assert _where_class("mypkg.models.Net") == "in the code that defines mypkg.models.Net"
