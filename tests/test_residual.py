"""Residual targets (issue 24): the nested residual op, SPECs and presets, a user's own ResNet
state_dict with BatchNorm inside its blocks, the approximate → certify → resume → export path on a
tiny residual CNN (ĝ rebuilt from the two safetensors files by plain torch code written here),
determinism across workers, and refusals of bad architectures and tampered run folders."""
from __future__ import annotations

import hashlib
import json
import os
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.numpy import load_file
from torch import nn

from subsetsum_lth import api, cli
from subsetsum_lth.arch import module_from_arch, parse_arch
from subsetsum_lth.errors import RunFolderError, TargetError, UserError
from subsetsum_lth.gnet import GLayout
from subsetsum_lth.layerkinds import Linear
from subsetsum_lth.ops import check_arch, module_from_ops
from subsetsum_lth.target import load_target
from subsetsum_lth.train import save_arch_target

SPEC = "c3k3p1,rb3,rb4s2,ap4,fc3"       # stem, identity block, projection block, pool, head
SHAPE = [1, 8, 8]


#: tiny convolutions: one torch thread (several contend on a loaded 2-core machine)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ----------------------------------------------------------------------------- plain torch (no package code)

class PlainBlock(nn.Module):
    def __init__(self, body, shortcut):
        super().__init__()
        self.body, self.shortcut = body, shortcut

    def forward(self, x):
        return self.body(x) + (self.shortcut(x) if len(self.shortcut) else x)


def plain_g(ops, state, masks, prefix=""):
    """ĝ from g's architecture list (report.json 'g_arch') and the two files, written here."""
    mods = []
    for i, op in enumerate(ops):
        key = f"{prefix}{i}"
        if op["op"] in ("linear", "conv2d"):
            w = torch.from_numpy(np.asarray(state[f"{key}.weight"], np.float64) * masks[f"{key}.weight"])
            b = torch.from_numpy(np.asarray(state[f"{key}.bias"], np.float64) * masks[f"{key}.bias"])
            m = (nn.Linear(w.shape[1], w.shape[0]) if op["op"] == "linear" else
                 nn.Conv2d(w.shape[1], w.shape[0], tuple(op["kernel"]), tuple(op["stride"]), tuple(op["padding"])))
            m = m.double()
            with torch.no_grad():
                m.weight.copy_(w)
                m.bias.copy_(b)
            mods.append(m)
        elif op["op"] == "relu":
            mods.append(nn.ReLU())
        elif op["op"] == "avgpool2d":
            mods.append(nn.AvgPool2d(tuple(op["kernel"]), tuple(op["stride"])))
        elif op["op"] == "maxpool2d":
            mods.append(nn.MaxPool2d(tuple(op["kernel"]), tuple(op["stride"])))
        elif op["op"] == "flatten":
            mods.append(nn.Flatten())
        elif op["op"] == "residual":
            mods.append(PlainBlock(plain_g(op["body"], state, masks, f"{key}.body."),
                                   plain_g(op["shortcut"], state, masks, f"{key}.shortcut.")))
        else:
            raise AssertionError(op)
    return nn.Sequential(*mods)


class UserBlock(nn.Module):
    """A basic block as users write it: bias-free convs, BatchNorm, a projection when the shape changes."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class UserNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(3)
        self.layer1 = UserBlock(3, 3, 1)
        self.layer2 = UserBlock(3, 4, 2)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        x = F.relu(self.bn(self.conv(x)))
        x = self.layer2(self.layer1(x))
        return self.fc(F.avg_pool2d(x, 4).flatten(1))


def _user_model(seed=0):
    torch.manual_seed(seed)
    m = UserNet()
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):   # trained-looking statistics
            mod.running_mean.uniform_(-0.2, 0.2)
            mod.running_var.uniform_(0.5, 2.0)
            with torch.no_grad():
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.1, 0.1)
    return m.eval()


# ----------------------------------------------------------------------------- the op and the SPECs

def test_spec_gives_identity_and_projection_skips():
    arch = parse_arch(SPEC, SHAPE)
    res = [op for op in arch if op["op"] == "residual"]
    assert len(res) == 2 and res[0]["shortcut"] == []
    assert res[1]["shortcut"][0]["kernel"] == [1, 1] and res[1]["shortcut"][0]["stride"] == [2, 2]
    assert [op["op"] for op in arch].count("relu") == 3          # after the stem and after each add
    assert res[0]["body"][1] == {"op": "relu"} and len(res[0]["body"]) == 3   # no ReLU before the add
    m = module_from_arch(arch)
    assert "2.body.0.weight" in m.state_dict() and "4.shortcut.0.weight" in m.state_dict()
    assert m(torch.rand(2, *SHAPE)).shape == (2, 3)
    # presets and the JSON form of the same architecture
    assert sum(p.numel() for p in module_from_arch(parse_arch("resnet8", [1, 28, 28])).parameters()) == 77418
    assert parse_arch(json.dumps(arch), SHAPE) == arch


@pytest.mark.parametrize("arch,msg", [
    ([{"op": "conv2d", "in_channels": 1, "out_channels": 2, "kernel": 3, "padding": 1},
      {"op": "residual", "body": [{"op": "conv2d", "in_channels": 2, "out_channels": 4, "kernel": 3, "padding": 1}]},
      {"op": "flatten"}, {"op": "linear", "in_features": 256, "out_features": 2}], "same shape"),
    ([{"op": "residual", "body": [{"op": "conv2d", "in_channels": 1, "out_channels": 1, "kernel": 1}]},
      {"op": "flatten"}, {"op": "linear", "in_features": 64, "out_features": 2}], "stem"),
    ([{"op": "conv2d", "in_channels": 1, "out_channels": 1, "kernel": 1}, {"op": "add"}], "residual"),
    ([{"op": "conv2d", "in_channels": 1, "out_channels": 1, "kernel": 1}, {"op": "residual", "body": []}],
     "non-empty"),
])
def test_bad_residual_architectures_are_refused(arch, msg):
    with pytest.raises(TargetError, match=msg):
        check_arch(arch, SHAPE)


def test_cli_refuses_a_mismatched_skip_in_one_line(tmp_path, capsys):
    bad = [{"op": "conv2d", "in_channels": 1, "out_channels": 2, "kernel": 3, "padding": 1}, {"op": "relu"},
           {"op": "residual", "body": [{"op": "conv2d", "in_channels": 2, "out_channels": 2, "kernel": 3}]},
           {"op": "flatten"}, {"op": "linear", "in_features": 72, "out_features": 2}]
    code = cli.main(["train-target", "--arch", json.dumps(bad), "--data", "fashion-mnist",
                     "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "same shape" in err[0] and "Traceback" not in err[0]
    assert not (tmp_path / "out").exists()


def test_a_users_resnet_state_dict_with_batchnorm_is_read_exactly(tmp_path):
    model = _user_model()
    torch.save(model.state_dict(), tmp_path / "user.pt")
    target = load_target(tmp_path / "user.pt", arch=SPEC, input_shape=SHAPE)
    assert target.graph is not None and target.depth == 7
    x = torch.rand(16, *SHAPE)
    with torch.no_grad():
        want = model(x).double()
    assert torch.allclose(target.forward(x.double()), want, atol=1e-5)
    assert [target.relu_after(i) for i in range(target.depth)] == [True, True, False, True, False, False, False]


def test_chain_layouts_keep_their_keys():
    lay = GLayout((Linear(4, 3), Linear(3, 2)), (8, 6))
    assert lay.param_indices() == [0, 2, 4, 6] and lay.inner_relus() == [True, False, True]


# ----------------------------------------------------------------------------- a run, end to end

def _target(tmp_path, seed=0):
    torch.manual_seed(seed)
    arch = parse_arch(SPEC, SHAPE)
    path = tmp_path / f"target{seed}.safetensors"
    save_arch_target(module_from_arch(arch), path, arch, SHAPE)
    return path


def _approximate(tpath, out, *extra):
    return cli.main(["approximate", "--target", str(tpath), "--weight-eps", "0.02", "--samples", "64",
                     "--steps", "10", "--no-plots", "--no-progress", "--out", str(out), *extra])


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_residual_run_certify_resume_export(tmp_path, capsys):
    tpath = _target(tmp_path)
    out = tmp_path / "run"
    assert _approximate(tpath, out, "--workers", "1") == 0
    rep = json.loads((out / "report.json").read_text())
    assert any(op["op"] == "residual" for op in rep["target_arch"])
    state, masks = load_file(out / "random_net.safetensors"), load_file(out / "masks.safetensors")
    assert "4.body.0.weight" in masks and "6.shortcut.2.weight" in masks   # g: each layer a pair
    # ĝ from the files alone, by the plain builder above: within the certificate of f
    target = load_target(tpath)
    g = plain_g(rep["g_arch"], state, masks)
    rng = np.random.default_rng(0)
    x = np.abs(rng.normal(size=(64, int(np.prod(SHAPE)))))
    x *= rep["input_radius"] * rng.uniform(0, 1, (64, 1)) / np.linalg.norm(x, axis=1, keepdims=True)
    xt = torch.from_numpy(x)
    with torch.no_grad():
        err = (target.forward(xt) - g(xt.reshape(-1, *SHAPE))).norm(dim=1)
    assert float(err.max()) <= rep["certified_bound"]
    # the public API rebuilds the same network: masked (prune hooks) and exported
    run = api.load_run(out)
    masked, exported = api.masked_model(run, torch.float64), api.export_pruned(run, torch.float64)
    assert not any(hasattr(m, "weight_orig") for m in exported.modules())
    with torch.no_grad():
        a, b = masked(xt.reshape(-1, *SHAPE)), exported(xt.reshape(-1, *SHAPE))
        c = g(xt.reshape(-1, *SHAPE))
    assert torch.allclose(a, b, atol=1e-12) and torch.allclose(b, c, atol=1e-9)
    # certify recomputes the bound from the files; --resume finds the run complete
    capsys.readouterr()
    assert cli.main(["certify", str(out)]) == 0
    before = _sha(out / "masks.safetensors")
    assert _approximate(tpath, out, "--workers", "1", "--resume") == 0
    assert _sha(out / "masks.safetensors") == before
    # two workers: byte-identical masks and random network
    out2 = tmp_path / "run2"
    assert _approximate(tpath, out2, "--workers", "2") == 0
    for f in ("masks.safetensors", "random_net.safetensors"):
        assert _sha(out / f) == _sha(out2 / f)


def test_tampered_residual_run_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    assert _approximate(_target(tmp_path, 1), out, "--workers", "1") == 0
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    rep = json.loads((bad / "report.json").read_text())
    for op in rep["target_arch"]:
        if op["op"] == "residual" and op["shortcut"]:
            op["shortcut"] = []          # an identity where the run projected: the shapes no longer add
    (bad / "report.json").write_text(json.dumps(rep))
    with pytest.raises(RunFolderError):
        api.load_run(bad)
    capsys.readouterr()
    assert cli.main(["certify", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "target_arch" in err[0]
    # a mask of a layer inside a block removed
    bad2 = tmp_path / "bad2"
    shutil.copytree(out, bad2)
    from safetensors.numpy import save_file
    m = load_file(bad2 / "masks.safetensors")
    del m["4.body.4.weight"]
    os.remove(bad2 / "masks.safetensors")
    save_file(m, str(bad2 / "masks.safetensors"))
    with pytest.raises(RunFolderError, match="4.body.4.weight"):
        api.load_run(bad2)


def test_box_domain_on_a_residual_target_run_and_certify(tmp_path, capsys, monkeypatch):
    """approximate/certify --input-domain box on a residual target (identity and projection
    blocks): the box certificate over the op graph, its attack under it, the witness re-checked.
    The run's α-CROWN is cut at 3 iterations (as its time budget cuts it on a slow machine):
    certify repeats that many, so it gives the stored bound again (exit 0, not 5)."""
    from subsetsum_lth import box_net
    orig = box_net.optimise
    with monkeypatch.context() as m:
        m.setattr(box_net, "optimise", lambda *a, **k: orig(*a[:7], min(a[7], 3), *a[8:], **k))
        out = tmp_path / "run"
        code = _approximate(_target(tmp_path, 2), out, "--input-domain", "box", "--input-box", "0,1",
                            "--workers", "1")
    assert code == 0, capsys.readouterr().err
    text = capsys.readouterr().out
    assert "box [0, 1]: certified sup over the box [0, 1]^64" in text
    bc = json.loads((out / "report.json").read_text())["box_certificate"]
    assert 0 < bc["empirical_bound"] <= bc["bound"] and "op graph" in bc["method"]
    assert bc["alpha_iterations"] == 3
    assert cli.main(["certify", str(out), "--input-domain", "box"]) == 0
    text = capsys.readouterr().out
    assert "stored box witness" in text and "<= certified" in text


def test_box_domain_refuses_a_residual_target_with_a_signed_hidden_input_in_one_line(tmp_path, capsys):
    """A block whose add feeds the next layer without a ReLU: refused before g is built."""
    torch.manual_seed(0)
    arch = parse_arch("c3k3p1,rb3,ap8,fc3", SHAPE)
    arch = [op for i, op in enumerate(arch) if not (op["op"] == "relu" and i > 0 and arch[i - 1]["op"] == "residual")]
    path = tmp_path / "t.safetensors"
    save_arch_target(module_from_arch(arch), path, arch, SHAPE)
    out = tmp_path / "run"
    code = _approximate(path, out, "--input-domain", "box", "--input-box", "0,1")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "can be negative" in err[0] and "--input-domain nonnegative" in err[0]
    assert not (out / "masks.safetensors").exists()


@pytest.mark.slow
def test_edge_popup_from_a_residual_run_and_compare(tmp_path, capsys, mnist_dir):
    """edge-popup --from-run on a residual run (with and without the inner ReLUs), read back by
    the public API, and compare of the two runs."""
    torch.manual_seed(0)
    shape = [1, 28, 28]
    arch = parse_arch("c2k3s2p1,rb2,rb4s2,ap7,fc10", shape)
    tpath = tmp_path / "t.safetensors"
    save_arch_target(module_from_arch(arch), tpath, arch, shape, {"dataset": "mnist"})
    run = tmp_path / "run"
    assert cli.main(["approximate", "--target", str(tpath), "--weight-eps", "0.05", "--samples", "32",
                     "--steps", "5", "--no-plots", "--workers", "1", "--data", "mnist",
                     "--data-dir", str(mnist_dir), "--out", str(run)]) == 0
    for inner in ([], ["--no-inner-relu"]):
        ep = tmp_path / f"ep{len(inner)}"
        assert cli.main(["edge-popup", "--from-run", str(run), "--epochs", "1", "--train-subset", "256",
                         "--test-subset", "256", "--data-dir", str(mnist_dir), "--out", str(ep), *inner]) == 0
        r = api.load_run(ep)
        inner_flags = r.layout.inner_relus()
        assert all(a or (inner and i) for a, i in zip(r.relu_after, inner_flags))
        with torch.no_grad():
            assert api.export_pruned(r)(torch.rand(2, *shape)).shape == (2, 10)
    capsys.readouterr()
    assert cli.main(["compare", str(run), str(tmp_path / "ep0"), "--out", str(tmp_path / "cmp"),
                     "--data-dir", str(mnist_dir)]) == 0


def test_the_default_tolerance_is_split_over_the_skip_connections(tmp_path, capsys):
    """Neither --eps nor --weight-eps: τ = 0.01 / (1 + skip adds) for a residual target (two
    here), recorded in report.json and used by the solver (every instance within it), and a
    --resume with the same (default) flags finds the run complete; a given τ is kept as given,
    and a chain target keeps 0.01."""
    tpath = _target(tmp_path)
    out = tmp_path / "run"
    args = ["approximate", "--target", str(tpath), "--samples", "16", "--steps", "0", "--no-plots",
            "--no-progress", "--workers", "1", "--out", str(out)]
    assert cli.main(args) == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["weight_eps"] == pytest.approx(0.01 / 3, rel=1e-12)
    assert rep["outside_tolerance_count"] == 0
    assert max(L["max_weight_error"] for L in rep["layers"]) <= rep["weight_eps"] < 0.004
    capsys.readouterr()
    assert cli.main([*args, "--resume"]) == 0
    assert "already complete" in capsys.readouterr().err
    out2 = tmp_path / "given"
    assert _approximate(tpath, out2, "--workers", "1") == 0
    assert json.loads((out2 / "report.json").read_text())["weight_eps"] == 0.02
    chain = tmp_path / "chain.safetensors"
    torch.manual_seed(0)
    arch = parse_arch("c3k3p1,ap8,fc3", SHAPE)
    save_arch_target(module_from_arch(arch), chain, arch, SHAPE)
    out3 = tmp_path / "chain"
    assert cli.main(["approximate", "--target", str(chain), "--samples", "16", "--steps", "0", "--no-plots",
                     "--no-progress", "--workers", "1", "--out", str(out3)]) == 0
    assert json.loads((out3 / "report.json").read_text())["weight_eps"] == 0.01
