#!/usr/bin/env python
"""Local differential certificates side by side with NeuroDiff (Paulsen, Wang, Wang, Wang, ASE 2020).

NeuroDiff bounds, per MNIST test image, the output difference of a network and its 16-bit copy
over the ℓ∞ ball of radius 3/255 around the image. Here, for a target f (a train-target folder)
and the same ball (clipped to [0, 1]), the per-output intervals of f − f′ for

* f′ = the ticket ĝ of a run folder (``--run``: its exact pruned layer maps), and
* f′ = f's 16-bit copy (weights and biases rounded through torch.float16),

by :func:`subsetsum_lth.box_local.local_diff_intervals` (interval bounds, CROWN on each image's
unstable units, α-CROWN on the outputs). Figures per pair: the mean over images of the max and of
the mean over the 10 outputs of max(|lower_k|, |upper_k|), the worst output over all images, the
half-widths, and seconds per image (wall; torch threads as given).

    python experiments/neurodiff_table.py --target RUNS/mlp4x1024 --run RUNS/mlp4x1024-ticket \\
        --images 100 --out results/neurodiff_table

Writes --out/neurodiff_table.json and neurodiff_table.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from subsetsum_lth.api import load_run
from subsetsum_lth.box_attack import box_attack
from subsetsum_lth.box_local import METHODS, copy_maps, local_diff_intervals, summarise
from subsetsum_lth.certify import CollapsedNet
from subsetsum_lth.data.mnist import load_mnist
from subsetsum_lth.gstore import run_layer_maps
from subsetsum_lth.target import load_target

NEURODIFF = "NeuroDiff (ASE 2020), 4x1024 MNIST net vs its 16-bit copy, 3/255: ±0.31–0.64 per output, ~1.4 s/image"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", type=Path, required=True, help="the target (a train-target folder or checkpoint)")
    p.add_argument("--run", type=Path, default=None, help="a run folder of that target (its ticket)")
    p.add_argument("--radius", type=float, default=3 / 255, help="l-inf radius (default 3/255)")
    p.add_argument("--images", type=int, default=100, help="the first N MNIST test images")
    p.add_argument("--pairs", nargs="+", default=["ticket", "fp16"], choices=("ticket", "fp16"))
    p.add_argument("--method", default="refined", choices=METHODS)
    p.add_argument("--iters", type=int, default=20, help="alpha-CROWN iterations on the outputs")
    p.add_argument("--batch", type=int, default=4, help="images per batch")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--attack", type=int, default=0, metavar="N",
                   help="also attack the first N balls (subsetsum_lth.box_attack, 30 steps): the largest "
                        "|(f - f')_k| at its witness, a lower bound to set the certified figure against")
    p.add_argument("--data-dir", type=Path, default=None)
    p.add_argument("--out", type=Path, default=Path("results/neurodiff_table"))
    return p.parse_args(argv)


def main(argv=None) -> int:
    a = parse_args(argv)
    torch.set_num_threads(a.threads)
    if a.run is not None:
        run = load_run(a.run)
        target = run.target
    else:
        run, target = None, load_target(a.target)
    x, _ = load_mnist("test", a.data_dir)
    x = x[:a.images]
    rows = []
    for pair in a.pairs:
        if pair == "ticket":
            if run is None:
                raise SystemExit("--pairs ticket needs --run RUN (a run folder of the target)")
            maps = run_layer_maps(run)
        else:
            maps = copy_maps(target, torch.float16)
        res = local_diff_intervals(target, maps, x, a.radius, iters=a.iters, batch=a.batch, method=a.method)
        s = summarise(res["lower"], res["upper"])
        n = max(1, res["images"])
        rows.append({"pair": pair, "images": res["images"], "radius": a.radius, "method": a.method,
                     "seconds_per_image": res["seconds"] / n, "cpu_seconds_per_image": res["cpu_seconds"] / n, **s})
        if a.attack:
            found, cert = [], []
            for i in range(min(a.attack, len(x))):
                xi = x[i].astype(np.float64)
                lo, hi = np.clip(xi - a.radius, 0, 1), np.clip(xi + a.radius, 0, 1)
                w = box_attack(target, maps, lo, hi, random_points=64, top=16, steps=30, seed=i)["witness"]["x"]
                with torch.no_grad():
                    d = target.forward(torch.as_tensor(w[None], dtype=torch.float64)) - CollapsedNet(
                        maps, target=target)(torch.as_tensor(w[None], dtype=torch.float64))
                found.append(float(d.abs().max()))
                cert.append(float(np.maximum(np.abs(res["lower"][i]), np.abs(res["upper"][i])).max()))
            rows[-1].update({"attack_images": len(found), "attack_max_abs": float(np.mean(found)),
                             "certified_max_abs_same_images": float(np.mean(cert))})
        print(json.dumps(rows[-1]), flush=True)
    a.out.mkdir(parents=True, exist_ok=True)
    info = {"target": str(a.target), "run": None if a.run is None else str(a.run), "threads": a.threads,
            "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "load": os.getloadavg(), "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "neurodiff": NEURODIFF, "rows": rows}
    (a.out / "neurodiff_table.json").write_text(json.dumps(info, indent=2))
    md = ["| pair | images | ±bound: max over outputs (mean over images) | mean over outputs | worst | "
          "s/image (wall) | CPU s/image | attack: max_k abs found (certified, same images) |",
          "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        att = (f"{r['attack_max_abs']:.4g} ({r['certified_max_abs_same_images']:.4g}, {r['attack_images']} images)"
               if "attack_max_abs" in r else "")
        md.append(f"| target vs {r['pair']} ({r['method']}) | {r['images']} | {r['abs_bound_max']:.4g} | "
                  f"{r['abs_bound_mean']:.4g} | {r['abs_bound_worst']:.4g} | {r['seconds_per_image']:.2f} | "
                  f"{r['cpu_seconds_per_image']:.2f} | {att} |")
    md.append(f"| {NEURODIFF} | | | | | | | |")
    (a.out / "neurodiff_table.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
