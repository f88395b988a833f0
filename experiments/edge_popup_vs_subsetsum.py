#!/usr/bin/env python
"""Edge-popup on the construction's structure vs a wide random network, with the subset-sum
construction's points on the same axes (in the spirit of Pensia et al. 2020, Experiment 2, MNIST).

For each target architecture (two-layer FC 784-H-10 and four-layer FC 784-H-H-H-10, H = 500):

* ``structured-relu``: edge-popup (Ramanujan et al. 2020) on the random network g of the
  construction (block width m) with only the edges of its block-diagonal pre-pruning allowed
  (``edge-popup --structure structured``), ReLU after every hidden layer;
* ``structured-linear``: the same g and structure with the layers 2i-1 used linearly (no ReLU
  after them; Pensia's Figure 1c variant, ``--no-inner-relu``), so units of both signs are live;
* ``wide``: edge-popup on a plain random MLP of the target's depth whose hidden width H' is the
  largest with at most as many parameters as the structure (the block-diagonal structure's
  prunable parameters, counted as in ``structured-linear``);
* ``subset-sum``: ``approximate`` on a target trained for that architecture (Theorem 1's width,
  per-weight tolerance ``--weight-eps``); one point per architecture.

Every method's test accuracy (10,000 MNIST test images) is plotted against the number of kept
parameters, for each kept fraction k. All weights are U[-1, 1]; the masks are the only thing
learnt. Results: ``results.csv``, ``results.json`` and ``accuracy_vs_kept.png`` in ``--out``
(run folders under it; an interrupted sweep resumes, finished runs are reused).

``--lenet TARGET`` adds the LeNet-5 panel (Pensia et al. 2020 / Ramanujan et al. 2020, Figure 2c
style) for a LeNet-shaped CNN target (``train-target --arch lenet5``): the network keeps LeNet's
two convolutions, frozen random U[-1, 1] and never scored (``EdgePopupNet(fixed=...)``), and only
the fully connected part is searched —

* ``lenet-structured``: the construction's random network for the target's fully connected
  layers (block width m) behind the frozen convolutions, edge-popup restricted to its
  block-diagonal pre-pruning (ReLU after every layer);
* ``lenet-structured-linear``: the same, the FC pairs' first layers used linearly (Pensia et
  al.'s Figure 1c variant, as ``structured-linear`` above);
* ``lenet-wide``: the same frozen convolutions followed by a random MLP 400-H-H-10 whose width
  H gives at most as many parameters as the structure's prunable ones;
* ``cnn-structured``: edge-popup ``--from-run`` on the fully constructed CNN ticket's random
  network (the convolutions replaced by the construction's Conv2d pairs too), structured;
* ``subset-sum``: ``approximate`` on the LeNet target (block width m, ``--width auto``), our
  fully constructed CNN ticket.

The LeNet panel trains with ``--lenet-lr`` (default 0.02, the library's default): measured on
8,000 images, 2 epochs, k = 0.2, lr 0.1 gave 35% / 22% / 88% (structured / structured-linear /
wide) against 41% / 74% / 85% at 0.02. Its kept parameters count every weight the network uses, the frozen convolutions included (2,572
for LeNet-5; column ``fixed_parameters``). Rows have ``arch`` = ``lenet5``; the run folders and
result files are under ``OUT/lenet5``. ``--arch ''`` skips the two MLP panels.

The default is sized for a small CPU machine (one epoch on 8,000 training images, block width 4,
k in {0.05, 0.2, 0.5}, target trained for 1 epoch); ``--full`` runs the paper-sized sweep
(60,000 images, 10 epochs, 8 values of k, block width 10, targets trained for 10 epochs), meant
for a GPU.

    python experiments/edge_popup_vs_subsetsum.py                 # CPU default
    python experiments/edge_popup_vs_subsetsum.py --full --device cuda --out runs/ep_full
    python experiments/edge_popup_vs_subsetsum.py --arch '' --lenet lenet5/target.safetensors
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

ARCHS = {"two-layer": 1, "four-layer": 3}      # number of hidden layers of the target
VARIANTS = ("structured-relu", "structured-linear", "wide")
DEFAULTS = {
    "quick": dict(keep="0.05,0.2,0.5", epochs=1, train_subset=8000, block_width=4, batch_size=64,
                  target_epochs=1),
    "full": dict(keep="0.01,0.02,0.05,0.1,0.2,0.3,0.5,0.7", epochs=10, train_subset=None, block_width=10,
                 batch_size=128, target_epochs=10),
}
LENET_VARIANTS = ("lenet-structured", "lenet-structured-linear", "lenet-wide", "cnn-structured")
COLOURS = {"structured-relu": "#4477aa", "structured-linear": "#66ccee", "wide": "#ee6677",
           "subset-sum": "#228833", "lenet-structured": "#4477aa", "lenet-structured-linear": "#66ccee",
           "lenet-wide": "#ee6677",
           "cnn-structured": "#aa3377"}
LABELS = {"structured-relu": "edge-popup, construction's structure (ReLU)",
          "structured-linear": "edge-popup, construction's structure, no ReLU after layers 2i-1",
          "wide": "edge-popup, wide random MLP (same parameter count)",
          "subset-sum": "subset-sum construction (approximate)",
          "lenet-structured": "edge-popup, frozen random convs + construction's FC structure",
          "lenet-structured-linear": "edge-popup, frozen random convs + FC structure, no ReLU after layers 2i-1",
          "lenet-wide": "edge-popup, frozen random convs + wide random FC (same parameter count)",
          "cnn-structured": "edge-popup on the constructed CNN's g (structured, convs scored too)"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "edge_popup_vs_subsetsum",
                   help="folder for the run folders and the results")
    p.add_argument("--full", action="store_true", help="paper-sized sweep (for a GPU)")
    p.add_argument("--arch", default="two-layer,four-layer", help=f"comma-separated, of {sorted(ARCHS)}")
    p.add_argument("--hidden", type=int, default=500, help="hidden width H of the targets")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"edge-popup variants, of {VARIANTS}")
    p.add_argument("--keep", default=None, help="kept fractions k, comma-separated (quick: 0.05,0.2,0.5)")
    p.add_argument("--epochs", type=int, default=None, help="edge-popup epochs (quick: 1, full: 10)")
    p.add_argument("--train-subset", type=int, default=None,
                   help="edge-popup training images (quick: 8000, full: all 60000; 0 = all)")
    p.add_argument("--block-width", type=int, default=None, help="block width m of the structure (quick: 4, full: 10)")
    p.add_argument("--batch-size", type=int, default=None, help="edge-popup batch size (quick: 64, full: 128)")
    p.add_argument("--lr", type=float, default=0.1, help="edge-popup learning rate (cosine to 0)")
    p.add_argument("--target-epochs", type=int, default=None, help="epochs to train each target (quick: 1, full: 10)")
    p.add_argument("--weight-eps", type=float, default=0.01, help="subset-sum per-weight tolerance")
    p.add_argument("--no-subset-sum", dest="subset_sum", action="store_false",
                   help="skip the subset-sum points (the targets are still trained: structure + target line)")
    p.add_argument("--workers", type=int, default=1, help="solver processes for approximate")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0, help="seed of the random networks, scores and targets")
    p.add_argument("--data-dir", default=None, help="folder with the MNIST IDX files")
    p.add_argument("--plot-only", action="store_true", help="only redraw the plot from results.json")
    p.add_argument("--lenet", type=Path, default=None, metavar="TARGET",
                   help="add the LeNet-5 panel for this LeNet-shaped CNN target (target.safetensors of "
                        "'train-target --arch lenet5'); off by default")
    p.add_argument("--lenet-variants", default=",".join(LENET_VARIANTS),
                   help=f"edge-popup variants of the LeNet panel, of {LENET_VARIANTS}")
    p.add_argument("--lenet-lr", type=float, default=0.02,
                   help="edge-popup learning rate of the LeNet panel (cosine to 0)")
    p.add_argument("--lenet-weight-eps", type=float, default=None,
                   help="subset-sum per-weight tolerance of the LeNet ticket (default: --weight-eps)")
    args = p.parse_args(argv)
    preset = DEFAULTS["full" if args.full else "quick"]
    for key, value in preset.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.train_subset == 0:
        args.train_subset = None
    args.keep = [float(k) for k in str(args.keep).split(",") if k.strip()]
    args.arch = [a.strip() for a in args.arch.split(",") if a.strip()]
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    for a in args.arch:
        if a not in ARCHS:
            p.error(f"unknown --arch {a!r}; choose from {sorted(ARCHS)}")
    for v in args.variants:
        if v not in VARIANTS:
            p.error(f"unknown variant {v!r}; choose from {VARIANTS}")
    args.lenet_variants = [v.strip() for v in args.lenet_variants.split(",") if v.strip()]
    for v in args.lenet_variants:
        if v not in LENET_VARIANTS:
            p.error(f"unknown LeNet variant {v!r}; choose from {LENET_VARIANTS}")
    if args.lenet is not None and not args.lenet.exists():
        p.error(f"--lenet {args.lenet}: no such file")
    if args.lenet_weight_eps is None:
        args.lenet_weight_eps = args.weight_eps
    if not all(0 < k <= 1 for k in args.keep):
        p.error("--keep values are kept fractions in (0, 1]")
    return args


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def cli(*argv: str) -> None:
    """Run a subsetsum-lth subcommand in a child process (the documented CLI contract)."""
    cmd = [sys.executable, "-m", "subsetsum_lth", *argv]
    log("$ subsetsum-lth " + " ".join(argv))
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if res.returncode != 0:
        sys.stdout.write(res.stdout[-4000:])
        raise SystemExit(f"subsetsum-lth {argv[0]} failed with exit status {res.returncode}")


def sizes_of(arch: str, hidden: int) -> list[int]:
    return [784] + [hidden] * ARCHS[arch] + [10]


def ensure_target(args, arch: str) -> Path:
    folder = args.out / arch / "target"
    if not (folder / "target.safetensors").exists():
        hidden = ",".join(str(h) for h in sizes_of(arch, args.hidden)[1:-1])
        extra = ["--data-dir", args.data_dir] if args.data_dir else []
        extra += ["--threads", str(args.threads)] if args.threads else []
        cli("train-target", "--hidden", hidden, "--epochs", str(args.target_epochs), "--seed", str(args.seed),
            "--out", str(folder), "--no-progress", *extra)
    return folder


def ensure_ticket(args, arch: str, target: Path) -> dict | None:
    folder = args.out / arch / "subset-sum"
    if not (folder / "report.json").exists():
        extra = ["--data-dir", args.data_dir] if args.data_dir else []
        cli("approximate", "--target", str(target), "--data", "mnist", "--weight-eps", str(args.weight_eps),
            "--seed", str(args.seed), "--workers", str(args.workers), "--samples", "64", "--steps", "10",
            "--width", "auto", "--out", str(folder), "--no-progress", "--overwrite", *extra)
    rep = json.loads((folder / "report.json").read_text())
    return {"arch": arch, "method": "subset-sum", "variant": "subset-sum", "keep": "",
            "kept_parameters": rep["kept_parameters"], "eligible_parameters": "",
            "total_parameters": rep["total_parameters"],
            "test_accuracy": rep.get("pruned_accuracy", ""), "train_accuracy": "",
            "prediction_agreement": rep.get("prediction_agreement", ""),
            "target_accuracy": rep.get("target_accuracy", ""),
            "block_width": "/".join(str(L.get("block_width")) for L in rep.get("layers", [])),
            "epochs": "", "train_examples": "", "sizes": "-".join(map(str, rep.get("random_network_sizes", []))),
            "wall_seconds": rep.get("wall_seconds", ""), "seconds_per_epoch": "",
            "device": "cpu", "run": str(folder)}


def structure_counts(args, target: Path) -> dict:
    """Prunable parameters of the construction's structure with and without the ReLU."""
    from subsetsum_lth.edge_popup import EdgePopupConfig, eligibility, load_random_net

    net = load_random_net(EdgePopupConfig(from_target=str(target), block_width=args.block_width,
                                          net_seed=args.seed))
    counts = {"total": int(sum(v.numel() for v in net.state.values()))}
    for name, relu in (("relu", True), ("linear", False)):
        counts[name] = int(sum(int(m.sum()) for m in eligibility(net, "structured", relu).values()))
    return counts


def edge_popup_run(args, arch: str, variant: str, keep: float, target: Path, budget: int) -> dict:
    from subsetsum_lth.edge_popup import EdgePopupConfig, run_edge_popup

    folder = args.out / arch / f"{variant}_k{keep:g}"
    common = dict(keep=keep, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, seed=args.seed,
                  device=args.device, threads=args.threads, data_dir=args.data_dir,
                  train_subset=args.train_subset, net_seed=args.seed, overwrite=True, plots=True,
                  eval_every_epoch=False)
    if (folder / "report.json").exists():
        rep = json.loads((folder / "report.json").read_text())
        log(f"{arch} {variant} k={keep:g}: reusing {folder}")
    else:
        if variant == "wide":
            wide = ",".join(["784"] + ["H"] * ARCHS[arch] + ["10"])
            config = EdgePopupConfig(wide=wide, param_budget=budget, **common)
        else:
            config = EdgePopupConfig(from_target=str(target), block_width=args.block_width,
                                     structure="structured", inner_relu=(variant == "structured-relu"),
                                     **common)
        data = _mnist(args)
        rep = run_edge_popup(config, folder, data=data)
    log(f"{arch} {variant} k={keep:g}: test accuracy {100 * rep['test_accuracy']:.2f}%, kept "
        f"{rep['kept_parameters']:,} of {rep['eligible_parameters']:,} prunable "
        f"({rep['total_parameters']:,} in g), {rep['wall_seconds']:.1f}s")
    return {"arch": arch, "method": "edge-popup", "variant": variant, "keep": keep,
            "kept_parameters": rep["kept_parameters"], "eligible_parameters": rep["eligible_parameters"],
            "total_parameters": rep["total_parameters"], "test_accuracy": rep["test_accuracy"],
            "train_accuracy": rep["train_accuracy"],
            "prediction_agreement": rep.get("prediction_agreement", ""),
            "target_accuracy": rep.get("target_accuracy", ""),
            "block_width": args.block_width if variant != "wide" else "",
            "epochs": rep["epochs"], "train_examples": rep["train_examples"],
            "sizes": "-".join(map(str, rep["sizes"])), "wall_seconds": rep["wall_seconds"],
            "seconds_per_epoch": rep["seconds_per_epoch"], "device": rep["device_name"], "run": str(folder)}


_DATA: dict = {}


def _mnist(args) -> dict:
    """MNIST once per process (pixels / 255)."""
    if not _DATA:
        from subsetsum_lth.data.mnist import load_mnist
        x_tr, y_tr = load_mnist("train", args.data_dir)
        x_te, y_te = load_mnist("test", args.data_dir)
        _DATA.update(x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te)
    return _DATA


# ----------------------------------------------------------------------------- the LeNet-5 panel

LENET_OFFSET = 7     #: conv, relu, maxpool, conv, relu, maxpool, flatten: the FC part starts at index 7


def lenet_parts(target_path: Path):
    """(the target, its convolutional ops (up to flatten), its fully connected part as an MLP target)."""
    from subsetsum_lth.target import Layer, Target, load_target
    target = load_target(target_path)
    arch = target.arch()
    if target.is_mlp or [op["op"] for op in arch[:LENET_OFFSET]] != [
            "conv2d", "relu", "maxpool2d", "conv2d", "relu", "maxpool2d", "flatten"] or \
            any(op["op"] not in ("linear", "relu") for op in arch[LENET_OFFSET:]):
        raise SystemExit(f"--lenet {target_path}: not LeNet-shaped (conv, pool, conv, pool, flatten, then fully "
                         f"connected layers); got {[op['op'] for op in arch]}")
    fc = Target([Layer(np.asarray(L.weight), None if L.bias is None else np.asarray(L.bias))
                 for L in target.layers if L.kind.name == "linear"],
                {"input_domain": "nonnegative"}, f"{target_path} (fully connected part)")
    return target, arch[:LENET_OFFSET], fc


def frozen_convs(conv_ops: list[dict], seed: int) -> dict:
    """LeNet's two convolutions as frozen random U[-1, 1] tensors (weights and biases), keyed by
    their index in the network."""
    state = {}
    for idx, op in enumerate(conv_ops):
        if op["op"] != "conv2d":
            continue
        rng = np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(1000 + idx,)))
        shape = (op["out_channels"], op["in_channels"], *op["kernel"])
        state[f"{idx}.weight"] = torch_tensor(rng.uniform(-1, 1, shape))
        state[f"{idx}.bias"] = torch_tensor(rng.uniform(-1, 1, op["out_channels"]))
    return state


def torch_tensor(a):
    import torch
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


def _offset(tensors: dict) -> dict:
    out = {}
    for k, v in tensors.items():
        i, t = k.split(".")
        out[f"{int(i) + LENET_OFFSET}.{t}"] = v
    return out


def _mlp_ops(state: dict, n: int) -> list[dict]:
    ops = []
    for j in range(n):
        w = state[f"{2 * j}.weight"]
        ops.append({"op": "linear", "in_features": int(w.shape[1]), "out_features": int(w.shape[0])})
        if j < n - 1:
            ops.append({"op": "relu"})
    return ops


def lenet_networks(args, target_path: Path) -> dict:
    """The two networks with frozen random convolutions: ops, state, eligible entries, fixed keys."""
    from subsetsum_lth.construction import ConstructionConfig, build_construction
    from subsetsum_lth.edge_popup import RandomNet, eligibility, relu_layout, wide_network, wide_sizes
    target, conv_ops, fc = lenet_parts(target_path)
    convs = frozen_convs(conv_ops, args.seed)
    cons = build_construction(fc, ConstructionConfig(input_domain="nonnegative", seed=args.seed,
                                                     block_width=args.block_width))
    fc_state = {k: torch_tensor(v) for k, v in cons.state_dict().items()}
    net = RandomNet(fc_state, {}, cons.plans, "nonnegative")
    allowed = {name: eligibility(net, "structured", relu) for name, relu in (("relu", True), ("linear", False))}
    counts = {name: int(sum(int(a.sum()) for a in al.values())) for name, al in allowed.items()}
    n_fc = len(cons.plans) * 2
    conv_relus = [True] * sum(op["op"] == "relu" for op in conv_ops)
    structured = {"ops": conv_ops + _mlp_ops(fc_state, n_fc), "state": {**convs, **_offset(fc_state)},
                  "eligible": _offset(allowed["relu"]), "relu_after": None,
                  # Pensia et al.'s Figure 1c variant: no ReLU after the FC pairs' first layers
                  "eligible_linear": _offset(allowed["linear"]),
                  "relu_linear": conv_relus + relu_layout(n_fc, inner_relu=False)}
    budget = counts["linear"]
    n_feat = int(fc.sizes[0])
    spec = ",".join([str(n_feat)] + ["H"] * (fc.depth - 1) + [str(fc.sizes[-1])])
    sizes = wide_sizes(spec, budget, True)
    wide_state = wide_network(sizes, args.seed, "uniform", True)
    wide = {"ops": conv_ops + _mlp_ops(wide_state, len(sizes) - 1), "state": {**convs, **_offset(wide_state)},
            "eligible": None, "sizes": sizes}
    fixed = sorted(convs)
    return {"target": target, "structured": structured, "wide": wide, "fixed": fixed, "counts": counts,
            "budget": budget, "fixed_parameters": int(sum(v.numel() for v in convs.values())),
            "fc_sizes": fc.sizes, "wide_sizes": sizes,
            "fc_total": int(sum(v.numel() for v in fc_state.values()))}


def lenet_ticket(args, target_path: Path) -> tuple[dict, Path]:
    """``approximate`` on the LeNet target: the fully constructed CNN ticket."""
    folder = args.out / "lenet5" / "subset-sum"
    if not (folder / "report.json").exists():
        extra = ["--data-dir", args.data_dir] if args.data_dir else []
        cli("approximate", "--target", str(target_path), "--data", "mnist", "--weight-eps",
            str(args.lenet_weight_eps), "--block-width", str(args.block_width), "--width", "auto",
            "--solver", "mitm",
            "--seed", str(args.seed), "--workers", str(args.workers), "--samples", "64", "--steps", "10",
            "--out", str(folder), "--no-progress", "--overwrite", "--allow-infeasible", *extra)
    rep = json.loads((folder / "report.json").read_text())
    return {"arch": "lenet5", "method": "subset-sum", "variant": "subset-sum", "keep": "",
            "kept_parameters": rep["kept_parameters"], "eligible_parameters": "",
            "total_parameters": rep["total_parameters"], "fixed_parameters": 0,
            "test_accuracy": rep.get("pruned_accuracy", ""), "train_accuracy": "",
            "prediction_agreement": rep.get("prediction_agreement", ""),
            "target_accuracy": rep.get("target_accuracy", ""),
            "block_width": "/".join(str(L.get("block_width")) for L in rep.get("layers", [])),
            "epochs": "", "train_examples": "", "sizes": "-".join(map(str, rep.get("random_network_sizes", []))),
            "wall_seconds": rep.get("wall_seconds", ""), "seconds_per_epoch": "",
            "device": "cpu", "run": str(folder)}, folder


def lenet_edge_popup(args, variant: str, keep: float, nets: dict | None, ticket: Path | None) -> dict:
    """One edge-popup run of the LeNet panel. ``cnn-structured`` is a run folder (``edge-popup
    --from-run`` on the ticket); the frozen-conv variants are trained in-process
    (``EdgePopupNet`` with ``fixed`` convolutions) and leave ``masks.safetensors`` and
    ``result.json`` in their folder."""
    import torch

    from subsetsum_lth.edge_popup import EdgePopupConfig, EdgePopupNet, run_edge_popup
    from subsetsum_lth.edge_popup.train import device_description, resolve_device, train_scores
    folder = args.out / "lenet5" / f"{variant}_k{keep:g}"
    common = dict(keep=keep, epochs=args.epochs, lr=args.lenet_lr, batch_size=args.batch_size, seed=args.seed,
                  device=args.device, threads=args.threads, data_dir=args.data_dir,
                  train_subset=args.train_subset, overwrite=True, plots=True, eval_every_epoch=False)
    done = folder / ("report.json" if variant == "cnn-structured" else "result.json")
    if done.exists():
        rep = json.loads(done.read_text())
        log(f"lenet5 {variant} k={keep:g}: reusing {folder}")
    elif variant == "cnn-structured":
        rep = run_edge_popup(EdgePopupConfig(from_run=str(ticket), structure="structured", **common), folder,
                             data=_mnist(args))
        rep["fixed_parameters"] = 0
    else:
        spec = nets["wide" if variant == "lenet-wide" else "structured"]
        linear = variant == "lenet-structured-linear"
        config = EdgePopupConfig(wide="1,1", **common)     # the training knobs only (validated)
        config.validate()
        device = resolve_device(args.device)
        t0 = time.perf_counter()
        model = EdgePopupNet(spec["state"], spec["eligible_linear" if linear else "eligible"], keep, "layer",
                             args.seed, device, relu_after=spec["relu_linear"] if linear else None,
                             ops=spec["ops"], input_shape=(1, 28, 28), fixed=nets["fixed"])
        data = _mnist(args)
        n = args.train_subset or len(data["x_train"])
        xs = [torch.as_tensor(data[k][:n] if k == "x_train" else data[k]).reshape(-1, 1, 28, 28).to(device)
              for k in ("x_train", "x_test")]
        ys = [torch.as_tensor(data[k][:n] if k == "y_train" else data[k]).to(device) for k in ("y_train", "y_test")]
        trained = train_scores(model, xs[0], ys[0], config, xs[1], ys[1])
        masks = model.final_masks()
        kept = int(sum(int(m.sum()) for m in masks.values()))
        folder.mkdir(parents=True, exist_ok=True)
        from safetensors.numpy import save_file
        save_file(masks, str(folder / "masks.safetensors"))
        rep = {"test_accuracy": trained["final"]["test_accuracy"],
               "train_accuracy": trained["final"]["epoch_train_accuracy"], "kept_parameters": kept,
               "eligible_parameters": model.n_eligible, "fixed_parameters": model.fixed_count,
               "total_parameters": int(sum(v.numel() for v in spec["state"].values())), "epochs": args.epochs,
               "train_examples": int(xs[0].shape[0]), "sizes": [784] + [s[0] for s in model.shapes],
               "wall_seconds": time.perf_counter() - t0, "seconds_per_epoch": float(np.mean(trained["epoch_seconds"])),
               "device_name": device_description(device), "ops": spec["ops"], "keep": keep, "lr": args.lenet_lr,
               "relu_after": model.relu_after,
               "note": "convolutions frozen random U[-1, 1] and never scored; kept_parameters counts them"}
        done.write_text(json.dumps(rep, indent=1))
    log(f"lenet5 {variant} k={keep:g}: test accuracy {100 * rep['test_accuracy']:.2f}%, kept "
        f"{rep['kept_parameters']:,} of {rep['eligible_parameters']:,} prunable "
        f"({rep['total_parameters']:,} in the network), {rep['seconds_per_epoch']:.1f}s per epoch")
    return {"arch": "lenet5", "method": "edge-popup", "variant": variant, "keep": keep,
            "kept_parameters": rep["kept_parameters"], "eligible_parameters": rep["eligible_parameters"],
            "total_parameters": rep["total_parameters"], "fixed_parameters": rep.get("fixed_parameters", 0),
            "test_accuracy": rep["test_accuracy"], "train_accuracy": rep["train_accuracy"],
            "prediction_agreement": rep.get("prediction_agreement", ""),
            "target_accuracy": rep.get("target_accuracy", ""),
            "block_width": "" if variant == "lenet-wide" else args.block_width, "lr": args.lenet_lr,
            "epochs": rep["epochs"], "train_examples": rep["train_examples"],
            "sizes": "-".join(map(str, rep["sizes"])), "wall_seconds": rep["wall_seconds"],
            "seconds_per_epoch": rep["seconds_per_epoch"], "device": rep["device_name"], "run": str(folder)}


def lenet_panel(args, rows: list[dict], meta: dict) -> None:
    """The LeNet-5 panel's rows (appended to ``rows``; results written after every run)."""
    target_path = args.lenet
    tinfo_path = target_path.parent / "target.json"
    tinfo = json.loads(tinfo_path.read_text()) if tinfo_path.exists() else {}
    nets = None
    if any(v != "cnn-structured" for v in args.lenet_variants):
        nets = lenet_networks(args, target_path)
    meta["lenet"] = {"target": str(target_path), "target_accuracy": tinfo.get("test_accuracy"),
                     "arch_spec": tinfo.get("arch_spec"), "block_width": args.block_width, "lr": args.lenet_lr}
    if nets is not None:
        meta["lenet"].update({"structure_parameters": nets["counts"], "wide_budget": nets["budget"],
                              "fixed_parameters": nets["fixed_parameters"], "fc_sizes": nets["fc_sizes"],
                              "wide_sizes": nets["wide_sizes"], "fc_construction_parameters": nets["fc_total"]})
        log(f"lenet5: FC part {'-'.join(map(str, nets['fc_sizes']))}, structure m={args.block_width}: "
            f"{nets['fc_total']:,} parameters, {nets['counts']['linear']:,} prunable, {nets['counts']['relu']:,} live "
            f"with ReLU; wide FC {'-'.join(map(str, nets['wide_sizes']))}; frozen convs "
            f"{nets['fixed_parameters']:,} parameters")
    ticket = None
    if args.subset_sum or "cnn-structured" in args.lenet_variants:
        row, ticket = lenet_ticket(args, target_path)
        rows.append(row)
        log(f"lenet5 subset-sum: test accuracy {100 * row['test_accuracy']:.2f}%, kept {row['kept_parameters']:,} "
            f"of {row['total_parameters']:,}, {row['wall_seconds']:.1f}s")
        _write(args.out, rows, meta)
    for keep in args.keep:
        for variant in args.lenet_variants:
            rows.append(lenet_edge_popup(args, variant, keep, nets, ticket))
            _write(args.out, rows, meta)


def plot(out: Path, rows: list[dict], meta: dict) -> Path:
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    archs = [a for a in meta["archs"] if any(r["arch"] == a for r in rows)]
    lenet = any(r["arch"] == "lenet5" for r in rows)
    n_ax = len(archs) + lenet
    fig, axes = plt.subplots(1, max(1, n_ax), figsize=(6.2 * max(1, n_ax), 6.4 if lenet else 4.6), squeeze=False)
    if lenet:
        _plot_lenet(axes[0][len(archs)], [r for r in rows if r["arch"] == "lenet5"], meta.get("lenet", {}))
    for ax, arch in zip(axes[0], archs):
        rs = [r for r in rows if r["arch"] == arch]
        for variant in VARIANTS:
            vs = sorted((r for r in rs if r["variant"] == variant), key=lambda r: r["kept_parameters"])
            if not vs:
                continue
            x = [r["kept_parameters"] for r in vs]
            y = [100 * r["test_accuracy"] for r in vs]
            ax.plot(x, y, "o-", color=COLOURS[variant], label=LABELS[variant], zorder=3)
            offset = {"structured-relu": (5, -11), "structured-linear": (-14, -15), "wide": (-10, 7)}[variant]
            for r, xi, yi in zip(vs, x, y):
                ax.annotate(f"k={r['keep']:g}", (xi, yi), fontsize=7, xytext=offset, textcoords="offset points",
                            color=COLOURS[variant])
        for r in (r for r in rs if r["variant"] == "subset-sum" and r["test_accuracy"] != ""):
            ax.scatter([r["kept_parameters"]], [100 * r["test_accuracy"]], marker="*", s=160,
                       color=COLOURS["subset-sum"], label=f"{LABELS['subset-sum']}, m={r['block_width']}",
                       zorder=4)
        tacc = meta["target_accuracy"].get(arch)
        if tacc is not None:
            ax.axhline(100 * tacc, color="#555555", ls="--", lw=1, label=f"trained target ({100 * tacc:.1f}%)")
        ax.axhline(10, color="#999999", ls=":", lw=1, label="chance")
        ax.set_xscale("log")
        ax.set_ylim(0, 100)
        ax.set_xlabel("kept parameters")
        ax.set_ylabel("MNIST test accuracy (%)")
        sizes = "-".join(map(str, meta["target_sizes"][arch]))
        ax.set_title(f"{arch} target {sizes}; structure m={meta['block_width']}, "
                     f"{meta['structure_parameters'][arch]['linear']:,} prunable", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(f"edge-popup ({meta['epochs']} epoch(s) on {meta['train_examples']} images) vs subset-sum;"
                 + ("\n" if n_ax < 2 else " ") + "all weights random U[-1, 1], masks only", fontsize=10)
    fig.tight_layout()
    path = out / "accuracy_vs_kept.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _plot_lenet(ax, rs: list[dict], lm: dict) -> None:
    for variant in LENET_VARIANTS:
        vs = sorted((r for r in rs if r["variant"] == variant), key=lambda r: r["kept_parameters"])
        if not vs:
            continue
        x = [r["kept_parameters"] for r in vs]
        y = [100 * r["test_accuracy"] for r in vs]
        ax.plot(x, y, "o-", color=COLOURS[variant], label=LABELS[variant], zorder=3)
        for r, xi, yi in zip(vs, x, y):
            ax.annotate(f"k={r['keep']:g}", (xi, yi), fontsize=7, xytext=(4, -11), textcoords="offset points",
                        color=COLOURS[variant])
    for r in (r for r in rs if r["variant"] == "subset-sum" and r["test_accuracy"] != ""):
        ax.scatter([r["kept_parameters"]], [100 * r["test_accuracy"]], marker="*", s=160,
                   color=COLOURS["subset-sum"], label=f"subset-sum CNN ticket (all layers constructed), "
                   f"m={lm.get('block_width')}", zorder=4)
    if lm.get("target_accuracy") is not None:
        ax.axhline(100 * lm["target_accuracy"], color="#555555", ls="--", lw=1,
                   label=f"trained LeNet-5 target ({100 * lm['target_accuracy']:.1f}%)")
    ax.axhline(10, color="#999999", ls=":", lw=1, label="chance")
    ax.set_xscale("log")
    ax.set_ylim(0, 100)
    ax.set_xlabel("kept parameters (frozen convolutions counted)")
    ax.set_ylabel("MNIST test accuracy (%)")
    fixed = lm.get("fixed_parameters")
    ax.set_title(f"LeNet-5: frozen random convs{f' ({fixed:,} parameters)' if fixed else ''}, FC searched; "
                 f"m={lm.get('block_width')}, lr {lm.get('lr')}", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=6.5, loc="upper center", bbox_to_anchor=(0.5, -0.13))


FIELDS = ["arch", "method", "variant", "keep", "kept_parameters", "eligible_parameters", "total_parameters",
          "test_accuracy", "train_accuracy", "prediction_agreement", "target_accuracy", "block_width", "epochs",
          "train_examples", "sizes", "wall_seconds", "seconds_per_epoch", "device", "run", "fixed_parameters", "lr"]


def main(argv=None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.data_dir:
        os.environ.setdefault("SUBSETSUM_LTH_DATA", args.data_dir)
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    if args.plot_only:
        saved = json.loads((args.out / "results.json").read_text())
        log(f"wrote {plot(args.out, saved['rows'], saved['meta'])}")
        return 0
    t0 = time.perf_counter()
    rows: list[dict] = []
    meta = {"archs": args.arch, "hidden": args.hidden, "block_width": args.block_width, "epochs": args.epochs,
            "train_examples": args.train_subset or 60000, "keep": args.keep, "lr": args.lr,
            "batch_size": args.batch_size, "weight_eps": args.weight_eps, "seed": args.seed,
            "full": args.full, "target_sizes": {}, "target_accuracy": {}, "structure_parameters": {},
            "wide_budget": {}}
    for arch in args.arch:
        target = ensure_target(args, arch)
        tinfo = json.loads((target / "target.json").read_text())
        meta["target_sizes"][arch] = tinfo["sizes"]
        meta["target_accuracy"][arch] = tinfo.get("test_accuracy")
        counts = structure_counts(args, target / "target.safetensors")
        meta["structure_parameters"][arch] = counts
        budget = counts["linear"]
        meta["wide_budget"][arch] = budget
        log(f"{arch}: target {'-'.join(map(str, tinfo['sizes']))} ({100 * tinfo['test_accuracy']:.2f}%), "
            f"structure m={args.block_width}: {counts['total']:,} parameters in g, "
            f"{counts['linear']:,} prunable in the block-diagonal structure, {counts['relu']:,} live with ReLU; "
            f"wide MLP budget {budget:,}")
        if args.subset_sum:
            rows.append(ensure_ticket(args, arch, target / "target.safetensors"))
            r = rows[-1]
            log(f"{arch} subset-sum: test accuracy {100 * r['test_accuracy']:.2f}%, kept {r['kept_parameters']:,} "
                f"of {r['total_parameters']:,}, {r['wall_seconds']:.1f}s")
        for keep in args.keep:
            for variant in args.variants:
                rows.append(edge_popup_run(args, arch, variant, keep, target / "target.safetensors", budget))
                _write(args.out, rows, meta)
    if args.lenet is not None:
        lenet_panel(args, rows, meta)
    meta["wall_seconds"] = time.perf_counter() - t0
    _write(args.out, rows, meta)
    png = plot(args.out, rows, meta)
    log(f"wrote {args.out / 'results.csv'}, {args.out / 'results.json'} and {png} "
        f"in {meta['wall_seconds'] / 60:.1f} min")
    _table(rows)
    return 0


def _write(out: Path, rows: list[dict], meta: dict) -> None:
    with open(out / "results.csv.tmp", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=FIELDS)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in FIELDS})
    os.replace(out / "results.csv.tmp", out / "results.csv")
    (out / "results.json.tmp").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    os.replace(out / "results.json.tmp", out / "results.json")


def _table(rows: list[dict]) -> None:
    print("\n| arch | method | k | kept parameters | test accuracy | wall (s) |")
    print("|---|---|---:|---:|---:|---:|")
    for r in rows:
        k = "" if r["keep"] == "" else f"{r['keep']:g}"
        acc = "" if r["test_accuracy"] == "" else f"{100 * r['test_accuracy']:.2f}%"
        print(f"| {r['arch']} | {r['variant']} | {k} | {r['kept_parameters']:,} | {acc} | {r['wall_seconds']:.0f} |")


if __name__ == "__main__":
    raise SystemExit(main())
