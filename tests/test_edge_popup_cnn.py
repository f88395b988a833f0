"""Edge-popup on the random network of a CNN target (issue 13): ``--from-run`` of a subset-sum run
of a small CNN (8×8 images, synthetic data, a few steps) in the free and structured modes, with
and without the inner ReLU, ``--from-target``; the masked network the run folder describes (ĝ
rebuilt from the two safetensors files by plain torch code) is the one edge-popup trained; masks
are byte-identical for a seed; ``read_run`` accepts the folder and refuses hostile edits of its
report; ``compare`` works across the subset-sum run and its edge-popup runs."""
from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from subsetsum_lth.compare import NA, compare_runs
from subsetsum_lth.mask_rules import prepruning_masks
from subsetsum_lth.edge_popup import EdgePopupConfig, EdgePopupNet, eligibility, load_random_net, run_edge_popup
from subsetsum_lth.edge_popup.scores import kept_count
from subsetsum_lth.errors import RunFolderError
from subsetsum_lth.runcheck import read_run
from tests.test_cnn import LENETISH, _approx, random_target, rebuild_image_g

COMMON = dict(epochs=2, batch_size=16, train_subset=None, sync_every=2, device="cpu", threads=1, plots=False,
              lr=0.05)


def synthetic_images(n: int = 120, classes: int = 3, seed: int = 2013) -> dict:
    """8×8 "images" in [0, 1] labelled by a random linear teacher (flat N×64, as MNIST is loaded)."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, (n, 64)).astype(np.float32)
    w = rng.standard_normal((64, classes))
    y = np.argmax((x - 0.5) @ w, axis=1).astype(np.int64)
    k = (3 * n) // 4
    return {"x_train": x[:k], "y_train": y[:k], "x_test": x[k:], "y_test": y[k:]}


def blob_images(n: int = 600, seed: int = 5) -> dict:
    """8×8 noise images with one bright 2×2 blob whose column third is the class (3 classes):
    a task a conv-pool network can learn, unlike the linear teacher above."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 0.3, (n, 8, 8)).astype(np.float32)
    y = rng.integers(0, 3, n)
    for i in range(n):
        r, c = rng.integers(0, 7), min(6, int(rng.integers(0, 2)) + 3 * int(y[i]))
        x[i, r:r + 2, c:c + 2] = 1.0
    x = x.reshape(n, 64)
    k = (3 * n) // 4
    return {"x_train": x[:k], "y_train": y[:k], "x_test": x[k:], "y_test": y[k:]}


@pytest.fixture(scope="module")
def cnn_run(tmp_path_factory):
    """A subset-sum run of a LeNet-like CNN (conv, pool, conv, flatten, fc, fc) on 8×8 images."""
    root = tmp_path_factory.mktemp("epcnn")
    target = random_target(LENETISH, (1, 8, 8), np.random.default_rng(11))
    _approx(root / "ss", target, "nonnegative", 5, m=4)
    return root


def _ep(cnn_run, name: str, **kw) -> tuple:
    out = cnn_run / name
    if (out / "report.json").exists():
        return out, json.loads((out / "report.json").read_text())
    spec = dict(COMMON, from_run=str(cnn_run / "ss"), seed=3)
    spec.update(kw)
    return out, run_edge_popup(EdgePopupConfig(**spec), out, data=synthetic_images())


def _rebuilt_accuracy(out, data) -> float:
    g, shape = rebuild_image_g(out)           # plain torch code from the two files, float64
    x = torch.from_numpy(data["x_test"]).double()
    with torch.no_grad():
        pred = g(x).argmax(1).numpy()
    return float(np.mean(pred == data["y_test"]))


@pytest.mark.parametrize("structure", ["free", "structured"])
def test_from_cnn_run(cnn_run, structure):
    out, rep = _ep(cnn_run, f"ep_{structure}", structure=structure, keep=0.4)
    ss = read_run(cnn_run / "ss")
    run = read_run(out)
    assert run.kind == "edge-popup" and run.layout_ is not None
    assert run.layout.ops() == ss.layout.ops() and run.layout.ops()[0]["op"] == "conv2d"
    for key in ("target_arch", "input_shape", "g_arch"):
        assert rep[key] == ss.report[key]
    # the same random weights, byte for byte (target too)
    for f in ("random_net.safetensors", "target.safetensors"):
        assert (out / f).read_bytes() == (cnn_run / "ss" / f).read_bytes()
    masks = load_file(str(out / "masks.safetensors"))
    assert set(masks) == set(ss.layout.shapes())
    allowed = prepruning_masks(ss.plans, ss.random_state, ss.layout)
    outside = sum(int(np.count_nonzero(masks[k] & (1 - allowed[k]))) for k in masks)
    if structure == "structured":
        assert outside == 0
        eligible = {k: int(a.sum()) for k, a in allowed.items()}
    else:
        assert outside > 0            # the free search keeps entries the construction pre-prunes
        eligible = {k: v.size if not (k.endswith(".bias") and not np.any(ss.random_state[k])) else 0
                    for k, v in ss.random_state.items()}
    # per-layer scope: every scored tensor keeps exactly ceil(k * eligible) entries (conv kernels too)
    for k, m in masks.items():
        assert int(m.sum()) == kept_count(0.4, eligible[k]), k
    assert rep["kept_parameters"] == sum(int(m.sum()) for m in masks.values())
    conv_layers = [L for L in rep["layers"] if L.get("op") == "conv2d"]
    assert conv_layers and all(len(L["weight_shape"]) == 4 for L in conv_layers)
    # the reported accuracy is that of ĝ rebuilt from the files by plain torch code
    assert math.isclose(rep["test_accuracy"], _rebuilt_accuracy(out, synthetic_images()), abs_tol=1e-9)


def test_structured_search_on_a_cnn_learns(cnn_run, tmp_path):
    """Scores on conv kernels train: on the blob task the structured search on the construction's
    CNN goes from chance to far above the majority class (measured: 62% after 1 epoch, 98% after
    5; majority 37%)."""
    data = blob_images()
    majority = np.bincount(data["y_test"]).max() / len(data["y_test"])
    rep = run_edge_popup(EdgePopupConfig(**dict(COMMON, epochs=5, batch_size=30), from_run=str(cnn_run / "ss"),
                                         structure="structured", keep=0.5, seed=0), tmp_path / "ep", data=data)
    assert majority < 0.45 and rep["test_accuracy"] >= 0.8 and rep["train_accuracy"] >= 0.7


def test_network_matches_the_plain_rebuild(cnn_run):
    """EdgePopupNet's conv/pool/flatten forward equals nn.Conv2d/MaxPool2d/Flatten on the masked
    weights (the plain rebuild of tests/test_cnn.py), images given flat or as N×1×8×8."""
    out, _ = _ep(cnn_run, "ep_free", structure="free", keep=0.4)
    run = read_run(out)
    net = EdgePopupNet({k: torch.from_numpy(v) for k, v in run.random_state.items()}, None, 0.4, "layer",
                       seed=3, ops=run.layout.ops(), input_shape=run.layout.input_shape)
    g, _ = rebuild_image_g(out)
    x = torch.from_numpy(np.random.default_rng(0).uniform(0, 1, (6, 64)))
    with torch.no_grad():
        ref = g(x)
        mine = net(x.float()).double()
        mine_img = net(x.float().reshape(6, 1, 8, 8)).double()
    # the run's masks as the structure with keep 1: the network then uses exactly them
    masks = load_file(str(out / "masks.safetensors"))
    assert set(net.final_masks()) == set(masks)
    net2 = EdgePopupNet({k: torch.from_numpy(v) for k, v in run.random_state.items()},
                        {k: m for k, m in masks.items()}, 1.0, "layer", ops=run.layout.ops(),
                        input_shape=run.layout.input_shape)
    with torch.no_grad():
        kept = net2(x.float()).double()
    scale = float(ref.abs().max())
    assert torch.allclose(kept, ref, atol=1e-4 * scale, rtol=1e-4)
    assert torch.equal(mine, mine_img)
    assert mine.shape == ref.shape


def test_global_scope_and_same_seed_same_bytes(cnn_run, tmp_path):
    spec = dict(structure="structured", keep=0.3, scope="global", seed=8)
    a, rep = _ep(cnn_run, "ep_global_a", **spec)
    b, _ = _ep(cnn_run, "ep_global_b", **spec)
    assert (a / "masks.safetensors").read_bytes() == (b / "masks.safetensors").read_bytes()
    assert rep["kept_parameters"] == kept_count(0.3, rep["eligible_parameters"])
    c, _ = _ep(cnn_run, "ep_global_c", **dict(spec, seed=9))
    assert (a / "masks.safetensors").read_bytes() != (c / "masks.safetensors").read_bytes()


@pytest.mark.parametrize("structure", ["free", "structured"])
def test_no_inner_relu_on_a_cnn(cnn_run, structure):
    out, rep = _ep(cnn_run, f"ep_lin_{structure}", structure=structure, keep=0.5, inner_relu=False)
    run = read_run(out)
    n_relu = sum(op["op"] == "relu" for op in run.layout.ops())
    assert run.relu_after == [j % 2 == 1 for j in range(n_relu)]
    assert rep["modules"][:3] == ["Conv2d", "Identity", "Conv2d"]
    if structure == "structured":
        # without the ReLU both signs of every block edge stay eligible: more than with it
        net = load_random_net(EdgePopupConfig(from_run=str(cnn_run / "ss")))
        n_lin = sum(int(a.sum()) for a in eligibility(net, "structured", False).values())
        n_relu_el = sum(int(a.sum()) for a in eligibility(net, "structured", True).values())
        assert rep["eligible_parameters"] == n_lin > n_relu_el


def test_from_cnn_target(cnn_run, tmp_path):
    from subsetsum_lth.target import save_target
    ss = read_run(cnn_run / "ss")
    save_target(ss.target, tmp_path / "t.safetensors")
    out = tmp_path / "ep"
    rep = run_edge_popup(EdgePopupConfig(**COMMON, from_target=str(tmp_path / "t.safetensors"), block_width=3,
                                         structure="structured", keep=0.5, seed=1), out, data=synthetic_images())
    run = read_run(out)
    assert run.layout.ops()[0]["op"] == "conv2d" and [pl.m for pl in run.plans] == [3, 3, 3, 3]
    assert rep["g_arch"] == run.layout.ops()
    assert math.isclose(rep["test_accuracy"], _rebuilt_accuracy(out, synthetic_images()), abs_tol=1e-9)


def test_compare_cnn_runs(cnn_run, tmp_path):
    free, _ = _ep(cnn_run, "ep_free", structure="free", keep=0.4)
    structured, _ = _ep(cnn_run, "ep_structured", structure="structured", keep=0.4)
    lin, _ = _ep(cnn_run, "ep_lin_free", structure="free", keep=0.5, inner_relu=False)
    data = synthetic_images()
    cmp = compare_runs([cnn_run / "ss", free, structured, lin], tmp_path / "cmp",
                       data={"x": data["x_test"], "y": data["y_test"]}, device="cpu", plots=False)
    by = {e["label"]: e for e in cmp["runs"]}
    ss = json.loads((cnn_run / "ss" / "report.json").read_text())
    assert math.isclose(by["ss"]["certified_bound"], ss["certified_bound"], rel_tol=1e-9)
    assert by["ep_free"]["certified_bound"] == NA and by["ep_lin_free"]["certified_bound"] == NA
    for lab, path in (("ep_free", free), ("ep_structured", structured), ("ep_lin_free", lin)):
        rep = json.loads((path / "report.json").read_text())
        assert by[lab]["kept_parameters"] == rep["kept_parameters"]
        assert math.isclose(by[lab]["test_accuracy"], rep["test_accuracy"], abs_tol=1e-9)
    assert cmp["random_network_sizes"][0] == 64 and len(cmp["random_network_sizes"]) == 9
    for pair in cmp["pairs"]:
        t = pair["total"]
        assert t["intersection"] <= min(t["kept_a"], t["kept_b"]) and len(pair["layers"]) == 8


def _edits(rep: dict) -> dict:
    plan = [dict(e) for e in rep["construction_plan"]]
    plan[1]["block_width"] += 1
    return {
        "g_arch": {"g_arch": rep["g_arch"][:-1]},
        "input_shape": {"input_shape": [1, 9, 9]},
        "target_arch": {"target_arch": rep["target_arch"][:3]},
        "block width": {"construction_plan": plan},
        "no plan": {"construction_plan": None},
        "relu_after length": {"relu_after": rep["relu_after"][:-1]},
        "outer relu dropped": {"relu_after": [True, False] + rep["relu_after"][2:]},
        "inner_relu": {"inner_relu": False},
        "free called structured": {"structure": "structured"},
        "method": {"method": "subset-sum"},
    }


def test_hostile_edits_of_an_edge_popup_cnn_report_are_refused(cnn_run, tmp_path):
    src, _ = _ep(cnn_run, "ep_free", structure="free", keep=0.4)
    run = tmp_path / "run"
    shutil.copytree(src, run)
    rep = json.loads((run / "report.json").read_text())
    read_run(run)
    for name, edit in _edits(rep).items():
        bad = dict(rep, **edit)
        if edit.get("construction_plan", 0) is None:
            del bad["construction_plan"]
        (run / "report.json").write_text(json.dumps(bad))
        with pytest.raises(RunFolderError):
            read_run(run)
            pytest.fail(f"edit {name!r} was accepted")
    # removing the image description is refused too (the keys are not those of an MLP)
    bad = {k: v for k, v in rep.items() if k not in ("target_arch", "input_shape", "g_arch")}
    (run / "report.json").write_text(json.dumps(bad))
    with pytest.raises(RunFolderError):
        read_run(run)
    (run / "report.json").write_text(json.dumps(rep))
    assert read_run(run).kind == "edge-popup"


def test_fixed_tensors_are_used_whole_and_never_scored():
    """``fixed`` keys (the LeNet panel's frozen random convolutions) get no score, mask 1."""
    rng = np.random.default_rng(0)
    ops = [{"op": "conv2d", "in_channels": 1, "out_channels": 2, "kernel": [3, 3], "stride": [1, 1],
            "padding": [0, 0]}, {"op": "relu"}, {"op": "maxpool2d", "kernel": [2, 2], "stride": [2, 2]},
           {"op": "flatten"}, {"op": "linear", "in_features": 18, "out_features": 3}]
    state = {"0.weight": rng.uniform(-1, 1, (2, 1, 3, 3)), "0.bias": rng.uniform(-1, 1, 2),
             "4.weight": rng.uniform(-1, 1, (3, 18)), "4.bias": rng.uniform(-1, 1, 3)}
    state = {k: torch.from_numpy(v.astype(np.float32)) for k, v in state.items()}
    net = EdgePopupNet(state, None, 0.5, "layer", ops=ops, input_shape=(1, 8, 8), fixed=("0.weight", "0.bias"))
    assert len(net.scores) == 2 and net.n_eligible == 57 and net.fixed_count == 20
    masks = net.final_masks()
    assert masks["0.weight"].all() and masks["0.bias"].all() and int(masks["4.weight"].sum()) == 27
    x = torch.rand(4, 1, 8, 8)
    conv = torch.nn.functional.conv2d(x, state["0.weight"], state["0.bias"]).relu()
    h = torch.nn.functional.max_pool2d(conv, 2).reshape(4, -1)
    ref = h @ (state["4.weight"] * torch.from_numpy(masks["4.weight"])).T + state["4.bias"] * torch.from_numpy(
        masks["4.bias"])
    with torch.no_grad():
        assert torch.allclose(net(x), ref, atol=1e-5)


@pytest.mark.parametrize("stride, padding", [(1, 0), (2, 1)])
def test_sparse_conv_path_matches_the_dense_one(monkeypatch, stride, padding):
    """A conv kernel with few eligible entries (the construction's k×k layers keep one entry per
    hidden channel) is computed over the unfolded patches: same outputs and score gradients as
    the dense F.conv2d on the scattered kernel."""
    from subsetsum_lth.edge_popup import network
    rng = np.random.default_rng(stride)
    ops = [{"op": "conv2d", "in_channels": 3, "out_channels": 60, "kernel": [3, 3], "stride": [stride, stride],
            "padding": [padding, padding]}, {"op": "relu"}, {"op": "avgpool2d", "kernel": [2, 2], "stride": [2, 2]},
           {"op": "conv2d", "in_channels": 60, "out_channels": 4, "kernel": [1, 1], "stride": [1, 1],
            "padding": [0, 0]}]
    state = {"0.weight": rng.uniform(-1, 1, (60, 3, 3, 3)), "0.bias": rng.uniform(-1, 1, 60),
             "3.weight": rng.uniform(-1, 1, (4, 60, 1, 1)), "3.bias": np.zeros(4)}
    state = {k: torch.from_numpy(v.astype(np.float32)) for k, v in state.items()}
    allowed = {k: np.ones(tuple(v.shape), np.uint8) for k, v in state.items()}
    allowed["0.weight"] = np.zeros((60, 27), np.uint8)
    allowed["0.weight"][np.arange(60), rng.integers(0, 27, 60)] = 1      # one entry per channel: 3.7%
    allowed["0.weight"] = allowed["0.weight"].reshape(60, 3, 3, 3)
    x = torch.from_numpy(rng.uniform(0, 1, (5, 3, 9, 9)).astype(np.float32))

    def run():
        net = EdgePopupNet(state, allowed, 0.5, "layer", seed=4, ops=ops, input_shape=(3, 9, 9))
        out = net(x)
        out.square().sum().backward()
        return net, out.detach(), [p.grad.clone() for p in net.scores]

    sparse_net, sparse_out, sparse_grad = run()
    assert sparse_net.tensors[0].sparse
    monkeypatch.setattr(network, "SPARSE_DENSITY", 0.0)
    dense_net, dense_out, dense_grad = run()
    assert not dense_net.tensors[0].sparse
    assert torch.allclose(sparse_out, dense_out, rtol=1e-5, atol=1e-5)
    for a, b in zip(sparse_grad, dense_grad):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)
    # and both are the masked network written with plain torch
    m = sparse_net.final_masks()
    w0 = state["0.weight"] * torch.from_numpy(m["0.weight"])
    h = torch.nn.functional.conv2d(x, w0, state["0.bias"] * torch.from_numpy(m["0.bias"]), stride, padding).relu()
    h = torch.nn.functional.avg_pool2d(h, 2)
    ref = torch.nn.functional.conv2d(h, state["3.weight"] * torch.from_numpy(m["3.weight"])).reshape(5, -1)
    assert torch.allclose(sparse_out, ref, rtol=1e-5, atol=1e-5)


def test_cli_on_a_cnn_run_names_the_image_shape(cnn_run, mnist_dir, tmp_path, capsys):
    """`edge-popup --from-run` through the CLI: MNIST's 28×28 images on an 8×8 CNN are refused
    with one line naming both shapes (exit 2)."""
    from subsetsum_lth import cli
    rc = cli.main(["edge-popup", "--from-run", str(cnn_run / "ss"), "--out", str(tmp_path / "ep"),
                   "--data-dir", str(mnist_dir), "--device", "cpu", "--train-subset", "32", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "1x8x8 images (64 values)" in err and "784 values" in err
