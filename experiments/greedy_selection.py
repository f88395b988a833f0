#!/usr/bin/env python
"""Greedy forward selection (Ye et al., ICML 2020) on the trained target, on the same
accuracy-vs-parameters axes as constructed tickets and edge-popup runs.

Hidden neurons of the target are selected one at a time (repeats allowed), each minimising the
training loss of the average of the selected neurons, layer by layer, until the loss gap to the
full network is <= --gap. Optionally also from early checkpoints (--checkpoints, "early bird").
Run folders given with --runs (subset-sum or edge-popup; report.json keys pruned_accuracy or
test_accuracy, and kept_parameters) are drawn as points.

    python experiments/greedy_selection.py --target runs/target/target.safetensors \
        [--runs runs/<subset-sum run> runs/<edge-popup run> ...] [--checkpoints early/target.safetensors]
    python experiments/greedy_selection.py --target runs/target/target.safetensors --full

Writes into --out (default results/greedy_selection/): greedy_curve.csv, points.csv,
summary.json, greedy_selection.png.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from subsetsum_lth.baselines.greedy_selection import GreedyConfig, greedy_prune_mlp
from subsetsum_lth.runfolder import atomic_write_csv, atomic_write_json


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", type=Path, default=Path("runs/target/target.safetensors"))
    p.add_argument("--checkpoints", type=Path, nargs="*", default=[],
                   help="more targets (e.g. early checkpoints) to select from, one curve each")
    p.add_argument("--runs", type=Path, nargs="*", default=[],
                   help="run folders (subset-sum or edge-popup) drawn as points")
    p.add_argument("--train-size", type=int, default=4000, help="training images for the greedy loss")
    p.add_argument("--test-size", type=int, default=10000, help="test images for the accuracy")
    p.add_argument("--gap", type=float, default=0.02, help="stop a layer when its loss gap <= this")
    p.add_argument("--k-max", type=int, default=None, help="steps per layer at most (default: layer width)")
    p.add_argument("--seed", type=int, default=0, help="which training images (seeded subset)")
    p.add_argument("--data-dir", type=Path, default=None)
    p.add_argument("--full", action="store_true", help="all 60,000 training images, gap 0.005")
    p.add_argument("--out", type=Path, default=Path("results/greedy_selection"))
    return p.parse_args(argv)


def read_run(folder: Path) -> dict:
    rep = json.loads((Path(folder) / "report.json").read_text())
    acc = rep.get("pruned_accuracy", rep.get("test_accuracy"))
    method = rep.get("method") or ("subset-sum" if "solver" in rep else "run")
    return {"run": str(folder), "method": method, "test_accuracy": acc,
            "kept_parameters": rep.get("kept_parameters"), "target_accuracy": rep.get("target_accuracy")}


def main(argv=None) -> int:
    import torch

    from subsetsum_lth.data.mnist import load_mnist
    from subsetsum_lth.target import load_target

    args = parse_args(argv)
    t0 = time.perf_counter()
    torch.set_num_threads(1)
    x_tr, y_tr = load_mnist("train", args.data_dir)
    x_te, y_te = load_mnist("test", args.data_dir)
    n_train = len(x_tr) if args.full else min(args.train_size, len(x_tr))
    gap = 0.005 if args.full and args.gap == 0.02 else args.gap
    pick = np.sort(np.random.default_rng(args.seed).choice(len(x_tr), size=n_train, replace=False))
    x_tr, y_tr = x_tr[pick], y_tr[pick]
    x_te, y_te = x_te[:args.test_size], y_te[:args.test_size]
    args.out.mkdir(parents=True, exist_ok=True)
    curve_rows, summary = [], {"command": " ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:])),
                               "train_images": n_train, "test_images": len(x_te), "gap": gap, "targets": []}
    curves = []
    for path in [args.target, *args.checkpoints]:
        target = load_target(path)
        res = greedy_prune_mlp(target, x_tr, y_tr, x_te, y_te, GreedyConfig(gap=gap, k_max=args.k_max))
        label = str(path)
        for r in res.curve:
            curve_rows.append({"target": label, **r})
        final = res.curve[-1]
        info = {"target": label, "sizes": target.sizes, "full_parameters": res.full_parameters,
                "full_test_accuracy": res.full_test_accuracy, "full_train_loss": res.full_train_loss,
                "kept_parameters": res.kept_parameters, "final_test_accuracy": final["test_accuracy"],
                "final_loss_gap": final["loss_gap"], "steps": [len(p.chosen) for p in res.paths],
                "distinct": [int((p.counts(target.sizes[i + 1]) > 0).sum()) for i, p in enumerate(res.paths)],
                "stopped": [p.stopped for p in res.paths], "seconds": round(res.seconds, 2)}
        summary["targets"].append(info)
        curves.append((label, res))
        print(f"{label} ({'-'.join(map(str, target.sizes))}): full network {100 * res.full_test_accuracy:.2f}% "
              f"with {res.full_parameters:,} parameters")
        print(f"   greedy: {info['steps']} steps, {info['distinct']} distinct neurons, "
              f"{100 * final['test_accuracy']:.2f}% with {res.kept_parameters:,} parameters "
              f"({100 * res.kept_parameters / res.full_parameters:.1f}%), loss gap {final['loss_gap']:.4f} "
              f"[{'; '.join(info['stopped'])}] ({res.seconds:.1f}s)")
    points = [read_run(r) for r in args.runs]
    for pnt in points:
        print(f"   run {pnt['run']}: {pnt['method']} {pnt['test_accuracy']} with {pnt['kept_parameters']} parameters")
    summary["runs"] = points
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    atomic_write_csv(args.out / "greedy_curve.csv", curve_rows)
    atomic_write_csv(args.out / "points.csv", points or [{"run": "", "method": "", "test_accuracy": "",
                                                          "kept_parameters": "", "target_accuracy": ""}])
    atomic_write_json(args.out / "summary.json", summary)
    png = plot(curves, points, args.out, gap)
    print(f"wrote {args.out}/greedy_curve.csv, points.csv, summary.json, {png.name} "
          f"({time.perf_counter() - t0:.1f}s)")
    return 0


def plot(curves, points, out: Path, gap: float) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11.5, 4.5))
    for i, (label, res) in enumerate(curves):
        c = f"C{i}"
        kp = [r["kept_parameters"] for r in res.curve]
        acc = [100 * r["test_accuracy"] for r in res.curve]
        name = Path(label).parent.name or Path(label).name
        ax.plot(kp, acc, color=c, lw=1.3, label=f"greedy selection ({name})")
        ax.plot(kp[-1:], acc[-1:], "o", color=c)
        ax.plot([res.full_parameters], [100 * res.full_test_accuracy], "*", color=c, ms=12,
                label=f"target ({name}), dense")
        ks = np.arange(1, len(res.curve) + 1)
        ax2.plot(ks, [max(r["loss_gap"], 1e-5) for r in res.curve], color=c, lw=1.2, label=f"loss gap ({name})")
    marks = {"subset-sum": ("s", "C3"), "edge-popup": ("^", "C2")}
    seen = set()
    for pnt in points:
        if pnt["test_accuracy"] is None or pnt["kept_parameters"] is None:
            continue
        mk, c = marks.get(pnt["method"], ("D", "C4"))
        ax.plot([pnt["kept_parameters"]], [100 * pnt["test_accuracy"]], mk, color=c, ms=8,
                label=None if pnt["method"] in seen else pnt["method"])
        seen.add(pnt["method"])
    ax.set_xscale("log")
    ax.set_xlabel("kept parameters")
    ax.set_ylabel("test accuracy (%)")
    lo = min([100 * r["test_accuracy"] for _, res in curves for r in res.curve[len(res.curve) // 4:]] + [90])
    ax.set_ylim(max(0, lo - 2), 100)
    ax.set_title("accuracy vs parameters", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="lower right")
    ax2.axhline(gap, color="k", ls="--", lw=0.8, label=f"stopping gap {gap:g}")
    ax2.set_xscale("log")
    ax2.set_yscale("log")
    ax2.set_xlabel("greedy steps k (selected neurons, with repeats)")
    ax2.set_ylabel("train loss − full train loss")
    ax2.set_title("greedy selection: loss gap per step", fontsize=10)
    ax2.grid(alpha=0.3, which="both")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    png = out / "greedy_selection.png"
    fig.savefig(png, dpi=120)
    plt.close(fig)
    return png


if __name__ == "__main__":
    raise SystemExit(main())
