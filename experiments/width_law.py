#!/usr/bin/env python
"""Width law: smallest block width (live coefficients) at which all instances of a trained
layer are feasible, and the probability that a random instance is, as functions of m, for
ε = 1e-1 ... 1e-4; against log2(1/ε), Theorem 1's formula and a fitted Lueker O(log 1/ε).

    python experiments/width_law.py --target runs/target/target.safetensors
    python experiments/width_law.py --target runs/target/target.safetensors --full

Writes into --out (default results/width_law/): width_law.csv (one row per layer and ε),
probability.csv (P(feasible) per layer, ε, m), fits.json, width_law.png.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from subsetsum_lth.runfolder import atomic_write_csv, atomic_write_json
from subsetsum_lth.solve import SolveConfig
from subsetsum_lth.width_law import (DEFAULT_EPS, counting_lower_bound, fit_log_law, run_width_law,
                                     theorem1_live_width, weight_samples)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", type=Path, default=None,
                   help="trained target (.safetensors/.pt or train-target folder); default: a seeded "
                        "synthetic weight sample (NOT a trained layer; the output says so)")
    p.add_argument("--layers", type=int, nargs="+", default=None,
                   help="target layers to sample (0-based; default: all layers)")
    p.add_argument("--weights", type=int, default=20000,
                   help="weights sampled per layer (a layer with fewer is taken whole)")
    p.add_argument("--rows-per-block", type=int, default=100,
                   help="instances sharing one block's u when sampling (whole layers use their q rows)")
    p.add_argument("--eps", type=float, nargs="+", default=list(DEFAULT_EPS))
    p.add_argument("--n-max", type=int, default=32, help="largest live width tried (mitm: <= 34)")
    p.add_argument("--C", type=float, default=1.5, help="constant of the Theorem 1 formula drawn")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--distribution", default="uniform")
    p.add_argument("--solver", default="mitm")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--full", action="store_true",
                   help="paper size: every weight of every layer (784x500 + 500x10 for the MNIST target)")
    p.add_argument("--out", type=Path, default=Path("results/width_law"))
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    n = None if args.full else args.weights
    samples, synthetic = weight_samples(args.target, args.layers, n, args.rows_per_block, args.seed)
    if synthetic:
        print("no --target given: using a seeded SYNTHETIC weight sample (N(0, 1/784)), not a trained "
              "layer; pass --target runs/target/target.safetensors for the MNIST layer", file=sys.stderr)
    solve = SolveConfig(solver=args.solver, workers=args.workers)
    args.out.mkdir(parents=True, exist_ok=True)
    rows, prob_rows, fits, laws = [], [], {}, []
    for s in samples:
        law = run_width_law(s, args.eps, n_max=args.n_max, seed=args.seed,
                            distribution=args.distribution, solve=solve)
        laws.append(law)
        name = f"layer{s.layer}" if s.layer is not None else "synthetic"
        summary = law.summary_rows(args.C)
        for r in summary:
            rows.append({"sample": name, "source": s.source, **r})
        for r in law.results:
            ms = np.arange(0, args.n_max + 1)
            for m, pr in zip(ms, r.probability(ms)):
                prob_rows.append({"sample": name, "eps": r.eps, "m": int(m), "p_feasible": float(pr)})
        eps = np.array([r.eps for r in law.results])
        all_w = np.array([np.nan if r.all_feasible_width is None else r.all_feasible_width for r in law.results],
                         dtype=float)
        med = np.array([r.quantile(0.5) for r in law.results])
        q99 = np.array([r.quantile(0.99) for r in law.results])
        fa, fm, f99 = fit_log_law(eps, all_w), fit_log_law(eps, med), fit_log_law(eps, q99)
        q, pdim = s.layer_shape
        fits[name] = {
            "source": s.source, "instances": s.n, "whole_layer": s.whole_layer,
            "all_feasible": {"slope": fa.slope, "intercept": fa.intercept, "C_through_origin": fa.C},
            "median": {"slope": fm.slope, "intercept": fm.intercept, "C_through_origin": fm.C},
            "q99": {"slope": f99.slope, "intercept": f99.intercept, "C_through_origin": f99.C},
            # the C of Theorem 1's formula (units per block, half live) that these data make tight
            "theorem1_C_tight": float(np.nanmax(2 * all_w / np.log2(pdim * q * s.depth / eps))),
        }
        print(f"{name}: {s.source}")
        print(f"   ε        log2(1/ε)  all-feasible m  median m  99%% m   Thm1 (live, C={args.C:g})".replace("%%", "%"))
        for r in summary:
            print(f"   {r['eps']:<8.2g} {r['log2_inv_eps']:8.2f}  {str(r['all_feasible_width']):>14}  "
                  f"{r['median_width']:8.0f}  {r['q99_width']:5.0f}   {r['theorem1_live_width']:.1f}")
        print(f"   fit all-feasible: m ≈ {fa.slope:.2f}·log2(1/ε) + {fa.intercept:.2f}   "
              f"(through origin: m ≈ {fa.C:.2f}·log2(1/ε))")
        print(f"   fit 99% quantile: m ≈ {f99.slope:.2f}·log2(1/ε) + {f99.intercept:.2f}")
        print(f"   fit median:       m ≈ {fm.slope:.2f}·log2(1/ε) + {fm.intercept:.2f}")
    atomic_write_csv(args.out / "width_law.csv", rows)
    atomic_write_csv(args.out / "probability.csv", prob_rows)
    meta = {"command": " ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:])),
            "synthetic": synthetic, "seed": args.seed, "solver": args.solver, "n_max": args.n_max,
            "C_formula": args.C, "fits": fits, "seconds": round(time.perf_counter() - t0, 2)}
    atomic_write_json(args.out / "fits.json", meta)
    png = plot(laws, fits, args, synthetic)
    print(f"wrote {args.out}/width_law.csv, probability.csv, fits.json, {png.name} "
          f"({time.perf_counter() - t0:.1f}s)")
    return 0


def plot(laws, fits, args, synthetic: bool) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 1 + len(laws), figsize=(5.2 * (1 + len(laws)), 4.4))
    ax = axes[0]
    eps_grid = np.logspace(0, -4.2, 60)
    x = np.log2(1 / eps_grid)
    ax.plot(x, [counting_lower_bound(e) for e in eps_grid], "k--", lw=1,
            label="counting bound n = log2(1/ε)")
    markers = "os^v"
    for i, law in enumerate(laws):
        s = law.sample
        name = f"layer{s.layer}" if s.layer is not None else "synthetic"
        q, p = s.layer_shape
        eps = np.array([r.eps for r in law.results])
        all_w = [np.nan if r.all_feasible_width is None else r.all_feasible_width for r in law.results]
        med = [r.quantile(0.5) for r in law.results]
        lx = np.log2(1 / eps)
        c = f"C{i}"
        ax.plot(lx, all_w, marker=markers[i % 4], color=c, lw=1.5,
                label=f"{name}: all {s.n:,} feasible")
        ax.plot(lx, [r.quantile(0.99) for r in law.results], marker=markers[i % 4], color=c, lw=1, ls="--",
                mfc="none", label=f"{name}: 99% feasible")
        ax.plot(lx, med, marker=markers[i % 4], color=c, lw=1, ls=":", mfc="none", label=f"{name}: median")
        f = fits[name]["all_feasible"]
        ax.plot(x, f["slope"] * x + f["intercept"], color=c, lw=0.8, alpha=0.6,
                label=f"{name} Lueker O(log 1/ε) fit: {f['slope']:.2f}·log2(1/ε){f['intercept']:+.1f}")
        ax.plot(x, [theorem1_live_width(p, q, s.depth, e, args.C) for e in eps_grid], color=c, lw=1,
                ls="-.", label=f"Thm 1 (C={args.C:g}, {q}x{p}), live half")
    ax.set_xlabel("log2(1/ε)")
    ax.set_ylabel("live coefficients per instance m")
    ax.set_title("width law" + (" (SYNTHETIC weights)" if synthetic else ""))
    ax.grid(alpha=0.3)
    top = max([r.all_feasible_width or args.n_max for law in laws for r in law.results] + [1])
    ax.set_ylim(0, 2.4 * top)
    ax.legend(fontsize=6, loc="upper left")
    for ax, law in zip(axes[1:], laws):
        s = law.sample
        ms = np.arange(0, args.n_max + 1)
        for r in law.results:
            ax.step(ms, r.probability(ms), where="post", label=f"ε={r.eps:.2g}")
        ax.set_xlabel("live coefficients m")
        ax.set_ylabel("P(random instance feasible)")
        name = f"layer {s.layer}" if s.layer is not None else "synthetic"
        ax.set_title(f"{name}: {s.n:,} instances", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    out = args.out / "width_law.png"
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


if __name__ == "__main__":
    raise SystemExit(main())
