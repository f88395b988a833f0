#!/usr/bin/env python
"""Width law: smallest block width (live coefficients) at which all instances of a trained
layer are feasible, and the probability that a random instance is, as functions of m, for
ε = 1e-1 ... 1e-4; against the counting (covering) width log2(1/ε), a fitted Lueker
O(log 1/ε), and Theorem 1's formula checked on the whole layer with the construction's own
draw (the fewest live units over the layer's blocks, not the mean).

    python experiments/width_law.py --target runs/target/target.safetensors          # whole layers
    python experiments/width_law.py --target runs/target/target.safetensors --weights 20000  # a sample

Writes into --out (default results/width_law/): width_law.csv (one row per layer and ε),
probability.csv (P(feasible) per layer, ε, m), formula_check.csv (Theorem 1's formula on the
whole layer: live units per block, infeasible instances), fits.json, width_law.png.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from subsetsum_lth.runfolder import atomic_write_csv, atomic_write_json
from subsetsum_lth.solve import SolveConfig
from subsetsum_lth.construction import formula_width
from subsetsum_lth.target import load_target
from subsetsum_lth.width_law import (DEFAULT_EPS, check_formula, counting_width, fit_log_law,
                                     min_live_quantile, run_width_law, theorem1_C, theorem1_live_width,
                                     weight_samples)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", type=Path, default=None,
                   help="trained target (.safetensors/.pt or train-target folder); default: a seeded "
                        "synthetic weight sample (NOT a trained layer; the output says so)")
    p.add_argument("--layers", type=int, nargs="+", default=None,
                   help="target layers to sample (0-based; default: all layers)")
    p.add_argument("--weights", type=int, default=None,
                   help="sample this many weights per layer (default: every weight of the layer; a "
                        "sample groups its weights in blocks of --rows-per-block, so its per-block "
                        "figures are not the layer's)")
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
                   help="every weight of every layer (the default unless --weights is given)")
    p.add_argument("--check-eps", type=float, nargs="*", default=None,
                   help="ε values at which Theorem 1's formula is checked on the whole layer with the "
                        "construction's draw (default: the --eps values >= 1e-3; smaller ones take "
                        "minutes for the 784x500 layer); none: skip the check")
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
    check_eps = ([e for e in args.eps if e >= 1e-3] if args.check_eps is None else args.check_eps)
    target = None if synthetic or not check_eps else load_target(args.target)
    args.out.mkdir(parents=True, exist_ok=True)
    rows, prob_rows, check_rows, fits, laws, checks = [], [], [], {}, [], {}
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
        checks[name] = []
        if target is not None:   # Theorem 1's formula on the whole layer, the construction's own draw
            W = np.asarray(target.layers[s.layer].weight, dtype=np.float64)
            for e in check_eps:
                fc = check_formula(W, s.layer, target.depth, e, args.C, args.seed, args.distribution, solve)
                checks[name].append(fc)
                check_rows.append({"sample": name, **fc.row()})
        eps = np.array([r.eps for r in law.results])
        all_w = np.array([np.nan if r.all_feasible_width is None else r.all_feasible_width for r in law.results],
                         dtype=float)
        med = np.array([r.quantile(0.5) for r in law.results])
        q99 = np.array([r.quantile(0.99) for r in law.results])
        fa, fm, f99 = fit_log_law(eps, all_w), fit_log_law(eps, med), fit_log_law(eps, q99)
        q, pdim = s.layer_shape
        c_half = [r["theorem1_C_cover_half"] for r in summary if r["theorem1_C_cover_half"] != ""]
        fits[name] = {
            "source": s.source, "instances": s.n, "whole_layer": s.whole_layer,
            # slopes are live coefficients per bit of 1/ε (per doubling of 1/ε), not Theorem 1's C
            "all_feasible": {"live_per_bit": fa.slope, "intercept": fa.intercept,
                             "live_per_bit_through_origin": fa.C},
            "median": {"live_per_bit": fm.slope, "intercept": fm.intercept, "live_per_bit_through_origin": fm.C},
            "q99": {"live_per_bit": f99.slope, "intercept": f99.intercept, "live_per_bit_through_origin": f99.C},
            # Theorem 1's C (units, live or not, per log2(p q l / ε)) if every block had exactly the
            # mean live count m/2 and that count had to reach the all-feasible width
            "theorem1_C_mean_live": float(np.nanmax([theorem1_C(w, pdim, q, s.depth, e)
                                                     for w, e in zip(all_w, eps)])),
            # the smallest C at which every block of the whole layer has enough live units with
            # probability >= 1/2 (Binomial(m, 1/2) live units per block; whole layers only)
            "theorem1_C_cover_half": float(max(c_half)) if c_half else None,
        }
        print(f"{name}: {s.source}")
        print(f"   ε        log2(1/ε)  all-feasible m  median m  99% m  <log2(1/ε)   Thm1 C={args.C:g}: "
              f"units  mean live  min live (median over draws)  P(formula covers layer)")
        for r in summary:
            cover = (f"{r['theorem1_cover_probability']:.3g}" if r["theorem1_cover_probability"] != ""
                     else "- (sample)")
            print(f"   {r['eps']:<8.2g} {r['log2_inv_eps']:8.2f}  {str(r['all_feasible_width']):>14}  "
                  f"{r['median_width']:8.0f}  {r['q99_width']:5.0f}  {100 * r['below_counting_width']:9.1f}%   "
                  f"{r['theorem1_units']:12d}  {r['theorem1_mean_live']:9.1f}  {r['theorem1_min_live_median']:10d}"
                  f"{'':19}  {cover}")
        print(f"   fit all-feasible: m ≈ {fa.slope:.2f}·log2(1/ε) + {fa.intercept:.2f} live coefficients   "
              f"(through origin: {fa.C:.2f} live coefficients per bit of 1/ε; Theorem 1's C for a mean "
              f"live count that large: {fits[name]['theorem1_C_mean_live']:.2f})")
        print(f"   fit 99% quantile: m ≈ {f99.slope:.2f}·log2(1/ε) + {f99.intercept:.2f}")
        print(f"   fit median:       m ≈ {fm.slope:.2f}·log2(1/ε) + {fm.intercept:.2f}")
        for fc in checks[name]:
            r = fc.row()
            print(f"   formula check ε={fc.eps:g}, whole layer, seed {args.seed}: {fc.units} units per block "
                  f"(mean live {fc.units / 2:g}), fewest live {fc.min_live}; {fc.infeasible} of {fc.instances:,} "
                  f"instances infeasible in {r['short_blocks']} blocks (their live units: "
                  f"{r['short_block_live'] or '-'})")
    atomic_write_csv(args.out / "width_law.csv", rows)
    atomic_write_csv(args.out / "probability.csv", prob_rows)
    if check_rows:
        atomic_write_csv(args.out / "formula_check.csv", check_rows)
    meta = {"command": " ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:])),
            "synthetic": synthetic, "seed": args.seed, "solver": args.solver, "n_max": args.n_max,
            "C_formula": args.C, "fits": fits, "seconds": round(time.perf_counter() - t0, 2)}
    atomic_write_json(args.out / "fits.json", meta)
    png = plot(laws, fits, checks, args, synthetic)
    print(f"wrote {args.out}/width_law.csv, probability.csv, {'formula_check.csv, ' if check_rows else ''}"
          f"fits.json, {png.name} "
          f"({time.perf_counter() - t0:.1f}s)")
    return 0


def plot(laws, fits, checks, args, synthetic: bool) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 1 + len(laws), figsize=(5.6 * (1 + len(laws)), 4.8))
    ax = axes[0]
    eps_grid = np.logspace(0, -4.2, 60)
    x = np.log2(1 / eps_grid)
    ax.plot(x, [counting_width(e) for e in eps_grid], "k--", lw=1,
            label="counting width log2(1/ε): needed to serve every target in [-1, 1]")
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
        ax.plot(lx, med, marker=markers[i % 4], color=c, lw=1, ls=":", mfc="none", label=f"{name}: median")
        f = fits[name]["all_feasible"]
        ax.plot(x, f["live_per_bit"] * x + f["intercept"], color=c, lw=0.8, alpha=0.6,
                label=f"{name} Lueker fit: {f['live_per_bit']:.2f}·log2(1/ε){f['intercept']:+.1f}")
        ax.plot(x, [theorem1_live_width(p, q, s.depth, e, args.C) for e in eps_grid], color=c, lw=0.8,
                ls="-.", alpha=0.7, label=f"Thm 1 C={args.C:g} ({q}x{p}): mean live m/2")
        ax.plot(x, [min_live_quantile(formula_width(p, q, s.depth, e, None, args.C), p, 0.5)
                    for e in eps_grid], color=c, lw=1.2, ls=(0, (5, 1)),
                label=f"Thm 1 C={args.C:g}: fewest live over {p} blocks (median)")
        fcs = checks.get(name) or []
        if fcs:
            ax.scatter([np.log2(1 / fc.eps) for fc in fcs], [fc.min_live for fc in fcs], color=c, marker="x",
                       s=30, zorder=5, label=f"{name}: fewest live drawn (seed {args.seed}); "
                       f"infeasible: {', '.join(str(fc.infeasible) for fc in fcs)}")
    ax.set_xlabel("log2(1/ε)")
    ax.set_ylabel("live coefficients per instance m")
    ax.set_title("width law" + (" (SYNTHETIC weights)" if synthetic else " (whole layers)" if
                                all(law.sample.whole_layer for law in laws) else " (sampled weights)"))
    ax.grid(alpha=0.3)
    top = max([r.all_feasible_width or args.n_max for law in laws for r in law.results] + [1])
    ax.set_ylim(0, 2.2 * top)
    ax.legend(fontsize=5.5, loc="upper left")
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
