#!/usr/bin/env python
"""How tight can a box certificate of f − ĝ be? The same bound method on f alone, side by side.

Over a whole input box (e.g. [0, 1]^784) every hidden unit of a trained net is unstable, and
single-neuron linear relaxations (CROWN, α-CROWN) bound even the plain network's outputs loosely.
The error f − ĝ scales with f's activations, so the differential certificate built on the same
relaxations cannot be expected to be tighter, relative to the best attack, than the bounds of f's
own outputs. This script measures both on a run folder:

* f alone: α-CROWN (``--iters`` iterations) on ±f_k through the op chain or graph of the target
  paired with itself (:func:`subsetsum_lth.box_net.twin_graph`), against an attack on each f_k
  (Adam on x = lo + (hi − lo)·sigmoid(u), ``--starts`` starts per output and sign, ``--steps`` steps);
* f − ĝ: the run's box certificate and box attack (report.json's ``box_certificate`` when the run
  has one for the same box, else recomputed with :func:`subsetsum_lth.certify_box.box_report`).

    python experiments/box_plain_looseness.py RUN --box=-1,1 [--iters 20 --starts 16 --steps 200]
    python experiments/box_plain_looseness.py RUN --local-radius 0.05 --images 40   # MNIST test images

Prints one JSON object: the mean over outputs of (certified width / attack width) for f, and the
ratio bound / attack for f − ĝ. With ``--local-radius ρ``: instead, the fraction of the first
``--images`` MNIST test images whose class f (and, separately, ĝ) provably keeps on the ℓ∞ ball of
radius ρ within [0, 1] (the refined bounds of :func:`subsetsum_lth.box_local.robust_lower` on each
network paired with itself): the ceiling of the certified agreement of the pair at that radius.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np
import torch

from subsetsum_lth.box_local import robust_lower
from subsetsum_lth.box_net import hidden_bounds, input_box, optimise, twin_graph
from subsetsum_lth.box_relax import DT
from subsetsum_lth.certify_box import BoxConfig, box_report, parse_box
from subsetsum_lth.certify_run import read_run
from subsetsum_lth.data.mnist import load_mnist
from subsetsum_lth.gstore import run_layer_maps


def plain_bounds(target, lo: float, hi: float, iters: int):
    """α-CROWN lower and upper bounds of f's outputs over [lo, hi]^p."""
    p = target.input_dim
    split = "plus" if lo >= 0 else ("minus" if hi <= 0 else "both")
    ops, inputs = twin_graph(target, [L.weight for L in target.layers], [L.bias for L in target.layers], split)
    Xlo, Xhi = input_box(split, torch.full((1, p), lo, dtype=DT), torch.full((1, p), hi, dtype=DT))
    with torch.no_grad():
        bounds = hidden_bounds(ops, Xlo, Xhi, split, twin=True, inputs=inputs)
    q = ops[-1].n_out
    eye = torch.eye(q, dtype=DT)[None]
    lam = torch.cat([eye, -eye], 1)
    val, _, _ = optimise(ops, bounds, lam, torch.zeros_like(lam), Xlo, Xhi, split, iters, 0.1, None, inputs=inputs)
    return val[0, :q].detach().numpy(), -val[0, q:].detach().numpy()


def plain_attack(target, lo: float, hi: float, starts: int, steps: int, seed: int = 0):
    """The largest and smallest value of each f_k found by Adam in the box."""
    torch.manual_seed(seed)
    q, p = target.sizes[-1], target.input_dim
    k = torch.arange(2 * q * starts) % q
    sign = torch.where((torch.arange(2 * q * starts) // q) % 2 == 0, 1.0, -1.0).to(DT)
    u = (2 * torch.randn(len(k), p, dtype=DT)).requires_grad_(True)
    opt = torch.optim.Adam([u], lr=0.05)
    rows = torch.arange(len(k))
    for _ in range(steps):
        y = target.forward(lo + (hi - lo) * torch.sigmoid(u))[rows, k] * sign
        (-y.sum()).backward()
        opt.step()
        opt.zero_grad()
    with torch.no_grad():
        y = target.forward(lo + (hi - lo) * torch.sigmoid(u))[rows, k]
    top = np.full(q, -np.inf)
    low = np.full(q, np.inf)
    for j in range(len(k)):
        kk = int(k[j])
        if sign[j] > 0:
            top[kk] = max(top[kk], float(y[j]))
        else:
            low[kk] = min(low[kk], float(y[j]))
    return low, top


def robust_fractions(target, maps, n: int, rho: float, batch: int = 4) -> dict:
    """Fractions of the first ``n`` MNIST test images whose class (f's at the image) f alone, ĝ
    alone and both provably keep on the ℓ∞ ball of radius ρ within [0, 1]."""
    x, _ = load_mnist("test", download=False)
    x = torch.as_tensor(np.asarray(x[:n], dtype=np.float64).reshape(n, -1))
    fops, _ = twin_graph(target, [L.weight for L in target.layers], [L.bias for L in target.layers])
    gops, _ = twin_graph(target, [M.w_plus for M in maps], [M.bias for M in maps])
    with torch.no_grad():
        cls = target.forward(x).argmax(1)
        ok_f, ok_g = [], []
        for i in range(0, n, batch):
            lo, hi = (x[i:i + batch] - rho).clamp_min(0), (x[i:i + batch] + rho).clamp_max(1)
            ok_f.append((robust_lower(fops, lo, hi, cls[i:i + batch]) > 0).all(1))
            ok_g.append((robust_lower(gops, lo, hi, cls[i:i + batch]) > 0).all(1))
    f, g = torch.cat(ok_f), torch.cat(ok_g)
    return {"f_alone": float(f.double().mean()), "g_alone": float(g.double().mean()),
            "both": float((f & g).double().mean()), "images": n, "radius": rho}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", help="a run folder of subsetsum-lth approximate")
    ap.add_argument("--box", default="0,1", help="LO,HI (default 0,1)")
    ap.add_argument("--iters", type=int, default=20, help="α-CROWN iterations on f's outputs")
    ap.add_argument("--starts", type=int, default=16, help="attack starts per output and sign")
    ap.add_argument("--steps", type=int, default=200, help="attack steps")
    ap.add_argument("--local-radius", type=float, default=None, metavar="RHO",
                    help="instead: certified robustness of f and ĝ alone on MNIST test images at this l-inf radius")
    ap.add_argument("--images", type=int, default=40, help="with --local-radius: the first N test images")
    a = ap.parse_args()
    lo, hi = parse_box(a.box)
    run = read_run(a.run, need_target=True)
    target, maps = run.target, run_layer_maps(run)
    if a.local_radius is not None:
        t0 = time.perf_counter()
        out = robust_fractions(target, maps, a.images, a.local_radius)
        out["seconds_per_image"] = (time.perf_counter() - t0) / a.images
        print(json.dumps(out, indent=1))
        return
    t0 = time.perf_counter()
    lower, upper = plain_bounds(target, lo, hi, a.iters)
    t_bound = time.perf_counter() - t0
    low, top = plain_attack(target, lo, hi, a.starts, a.steps)
    t_attack = time.perf_counter() - t0 - t_bound
    stored = run.report.get("box_certificate")
    if isinstance(stored, dict) and stored.get("box") == [lo, hi]:
        diff = {"bound": stored["bound"], "attack": stored["empirical_bound"], "from": "report.json"}
    else:
        rep, _ = box_report(target, maps, None, BoxConfig(lo, hi))
        diff = {"bound": rep["bound"], "attack": rep["empirical_bound"], "from": "recomputed"}
    diff["ratio"] = diff["bound"] / diff["attack"]
    print(json.dumps({
        "run": str(a.run), "box": [lo, hi],
        "f_alone": {"certified_lower": lower.round(3).tolist(), "certified_upper": upper.round(3).tolist(),
                    "attack_min": low.round(3).tolist(), "attack_max": top.round(3).tolist(),
                    "width_ratio_mean": float(np.mean((upper - lower) / (top - low))),
                    "bound_seconds": t_bound, "attack_seconds": t_attack},
        "f_minus_g": diff,
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "load": os.getloadavg()[0], "torch_threads": torch.get_num_threads()},
    }, indent=1))


if __name__ == "__main__":
    main()
