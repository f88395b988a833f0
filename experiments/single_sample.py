#!/usr/bin/env python
"""Single-sample baseline vs subset sum: the width each needs at the same ε, same target.

Malach et al.-style: every weight is approximated by the closest *single* random coefficient
(the construction's product v·u, or one random weight); the subset-sum construction uses a
subset of the block's live coefficients. Single-sample widths grow like 1/ε, subset-sum widths
like log(1/ε): the exponential gap, measured.

    python experiments/single_sample.py --target runs/target/target.safetensors
    python experiments/single_sample.py --target runs/target/target.safetensors --full

Writes into --out (default results/single_sample/): single_sample.csv (one row per layer,
ε and method), fits.json, single_sample.png.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from subsetsum_lth.baselines.single_sample import single_sample_widths
from subsetsum_lth.runfolder import atomic_write_csv, atomic_write_json
from subsetsum_lth.solve import SolveConfig
from subsetsum_lth.width_law import DEFAULT_EPS, fit_log_law, fit_power_law, run_width_law, weight_samples

METHODS = ("subset-sum", "single-product", "single-weight")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", type=Path, default=None,
                   help="trained target; default: a seeded SYNTHETIC weight sample (the output says so)")
    p.add_argument("--layers", type=int, nargs="+", default=None, help="layers (default: all)")
    p.add_argument("--weights", type=int, default=20000, help="weights sampled per layer")
    p.add_argument("--rows-per-block", type=int, default=100)
    p.add_argument("--eps", type=float, nargs="+", default=list(DEFAULT_EPS))
    p.add_argument("--n-max", type=int, default=32, help="largest subset-sum width tried")
    p.add_argument("--max-width", type=int, default=1 << 22, help="largest single-sample width tried")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--distribution", default="uniform")
    p.add_argument("--solver", default="mitm")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--full", action="store_true", help="every weight of every layer")
    p.add_argument("--out", type=Path, default=Path("results/single_sample"))
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    samples, synthetic = weight_samples(args.target, args.layers, None if args.full else args.weights,
                                        args.rows_per_block, args.seed)
    if synthetic:
        print("no --target given: using a seeded SYNTHETIC weight sample (N(0, 1/784)), not a trained "
              "layer; pass --target runs/target/target.safetensors for the MNIST layers", file=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)
    rows, fits, curves = [], {}, {}
    for s in samples:
        name = f"layer{s.layer}" if s.layer is not None else "synthetic"
        law = run_width_law(s, args.eps, n_max=args.n_max, seed=args.seed, distribution=args.distribution,
                            solve=SolveConfig(solver=args.solver, workers=args.workers))
        per = {"subset-sum": law.results}
        for method, mode in (("single-product", "product"), ("single-weight", "single")):
            per[method] = [single_sample_widths(s.weights, r.eps, seed=args.seed, mode=mode,
                                                distribution=args.distribution, max_width=args.max_width)
                           for r in law.results]
        curves[name] = (s, per)
        fits[name] = {"source": s.source, "instances": s.n}
        for method, results in per.items():
            eps = np.array([r.eps for r in results])
            allw = np.array([np.nan if r.all_feasible_width is None else r.all_feasible_width for r in results],
                            dtype=float)
            med = np.array([r.quantile(0.5) for r in results])
            q99 = np.array([r.quantile(0.99) for r in results])
            fits[name][method] = {
                "power_exponent_all": fit_power_law(eps, allw).exponent,
                "power_exponent_q99": fit_power_law(eps, q99).exponent,
                "power_exponent_median": fit_power_law(eps, med).exponent,
                "log_slope_all": fit_log_law(eps, allw).slope,
            }
            for r, a, m, q in zip(results, allw, med, q99):
                rows.append({"sample": name, "method": method, "eps": r.eps, "instances": int(r.widths.size),
                             "all_feasible_width": "" if np.isnan(a) else int(a), "median_width": m,
                             "q99_width": q, "unreached": int((r.widths < 0).sum()),
                             "seconds": round(r.seconds, 3)})
        print(f"{name}: {s.source}")
        print("   ε         subset-sum all/99%/median   single v·u all/99%/median      single w all/99%/median   gap (all)")
        for i, r in enumerate(law.results):
            def fmt(res):
                a = res.all_feasible_width
                return f"{'>' + str(res.max_width) if a is None else a:>8} {res.quantile(.99):>7.0f} {res.quantile(.5):>6.0f}"
            ss, sp = per["subset-sum"][i], per["single-product"][i]
            gap = (sp.all_feasible_width or np.nan) / max(1, ss.all_feasible_width or np.nan)
            print(f"   {r.eps:<8.2g} {fmt(ss)}      {fmt(sp)}      {fmt(per['single-weight'][i])}   {gap:8.0f}x")
        for method in METHODS:
            f = fits[name][method]
            print(f"   {method:<15} width ∝ (1/ε)^{f['power_exponent_q99']:.2f} (99% quantile), "
                  f"^{f['power_exponent_all']:.2f} (all feasible)")
    atomic_write_csv(args.out / "single_sample.csv", rows)
    atomic_write_json(args.out / "fits.json", {
        "command": " ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:])),
        "synthetic": synthetic, "fits": fits, "seconds": round(time.perf_counter() - t0, 2)})
    png = plot(curves, args, synthetic)
    print(f"wrote {args.out}/single_sample.csv, fits.json, {png.name} ({time.perf_counter() - t0:.1f}s)")
    return 0


def plot(curves, args, synthetic: bool) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(5.6 * len(curves), 4.6), squeeze=False)
    style = {"subset-sum": ("C0", "o"), "single-product": ("C3", "s"), "single-weight": ("C2", "^")}
    for ax, (name, (s, per)) in zip(axes[0], curves.items()):
        for method, results in per.items():
            c, mk = style[method]
            inv = np.array([1 / r.eps for r in results])
            allw = [np.nan if not r.all_feasible_width else r.all_feasible_width for r in results]  # 0/None: off a log axis
            ax.plot(inv, allw, color=c, marker=mk, lw=1.6, label=f"{method}: all {s.n:,} feasible")
            ax.plot(inv, [r.quantile(0.5) if r.quantile(0.5) > 0 else np.nan for r in results], color=c, marker=mk, mfc="none", lw=1,
                    ls=":", label=f"{method}: median")
        inv = np.logspace(1, 4, 20)
        ax.plot(inv, inv, "k--", lw=0.8, label="1/ε")
        ax.plot(inv, np.log2(inv), "k-.", lw=0.8, label="log2(1/ε)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("1/ε")
        ax.set_ylabel("live coefficients per block (width)")
        title = f"{name}: {s.n:,} weights" + (" (SYNTHETIC)" if synthetic else "")
        ax.set_title(title + "\nsingle sample vs subset sum", fontsize=9)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=6.5, loc="upper left")
    fig.tight_layout()
    out = args.out / "single_sample.png"
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


if __name__ == "__main__":
    raise SystemExit(main())
