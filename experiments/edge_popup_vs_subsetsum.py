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

The default is sized for a small CPU machine (one epoch on 8,000 training images, block width 4,
k in {0.05, 0.2, 0.5}, target trained for 1 epoch); ``--full`` runs the paper-sized sweep
(60,000 images, 10 epochs, 8 values of k, block width 10, targets trained for 10 epochs), meant
for a GPU.

    python experiments/edge_popup_vs_subsetsum.py                 # CPU default
    python experiments/edge_popup_vs_subsetsum.py --full --device cuda --out runs/ep_full
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
COLOURS = {"structured-relu": "#4477aa", "structured-linear": "#66ccee", "wide": "#ee6677",
           "subset-sum": "#228833"}
LABELS = {"structured-relu": "edge-popup, construction's structure (ReLU)",
          "structured-linear": "edge-popup, construction's structure, no ReLU after layers 2i-1",
          "wide": "edge-popup, wide random MLP (same parameter count)",
          "subset-sum": "subset-sum construction (approximate)"}


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
            "--out", str(folder), "--no-progress", "--overwrite", *extra)
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


def plot(out: Path, rows: list[dict], meta: dict) -> Path:
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    archs = [a for a in meta["archs"] if any(r["arch"] == a for r in rows)]
    fig, axes = plt.subplots(1, len(archs), figsize=(6.2 * len(archs), 4.6), squeeze=False)
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
    fig.suptitle(f"edge-popup ({meta['epochs']} epoch(s) on {meta['train_examples']} images) vs subset-sum; "
                 "all weights random U[-1, 1], masks only", fontsize=10)
    fig.tight_layout()
    path = out / "accuracy_vs_kept.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


FIELDS = ["arch", "method", "variant", "keep", "kept_parameters", "eligible_parameters", "total_parameters",
          "test_accuracy", "train_accuracy", "prediction_agreement", "target_accuracy", "block_width", "epochs",
          "train_examples", "sizes", "wall_seconds", "seconds_per_epoch", "device", "run"]


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
