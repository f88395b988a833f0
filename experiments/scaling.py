#!/usr/bin/env python
"""Scaling: end-to-end solve time per weight against the number of target weights (784-H-10
targets, `approximate` with a per-weight τ), and solver throughput against the number of live
coefficients n (the exact backends cost ~2^{n/2}) and against the tolerance τ.

    python experiments/scaling.py                       # ~5-6 min: H in {128, 500, 2000}, mitm
    python experiments/scaling.py --solvers mitm,auto      # also time the default portfolio end to end (~+5 min)
    python experiments/scaling.py --full                # H up to 4000, n up to 34, more instances

Writes into --out (default results/scaling/): sizes.csv (panel a, one row per target and
solver), rate_vs_n.csv (panel b), rate_vs_tau.csv (panel c), scaling.json (settings) and
scaling.png.

(a) Each target is solved by `subsetsum_lth.approximate.approximate` (τ = --weight-eps per
    weight, --workers 1, no plots, a small empirical bound) in a fresh process, so that peak
    memory (ru_maxrss) is per run. The synthetic targets are `random_target((784, H, 10))`:
    weights N(0, 1/fan_in) (std 0.036 in the first layer, like a trained MNIST layer: 0.020
    for runs/target), biases U[-0.1, 0.1]. With --target the trained 784-500-10 MNIST target is
    added as an extra point. Solve time is the `solve` stage (wall) and its CPU time.
(b), (c) `subsetsum_lth.bench.bench_solvers` on construction-shaped instances (coefficients v·u,
    targets N(0, 0.05)), one core, CPU clock, every solver on the same instances.

Times are CPU seconds of the process (time.process_time) next to wall seconds: the machine may
be shared, and CPU time is the robust figure.
"""
from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from subsetsum_lth.runfolder import atomic_write_csv, atomic_write_json

DEFAULT_HIDDEN = (128, 500, 2000)
FULL_HIDDEN = (64, 128, 250, 500, 1000, 2000, 4000)
DEFAULT_TARGET = Path("runs/target/target.safetensors")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden", type=int, nargs="+", default=None,
                   help=f"hidden widths H of the synthetic 784-H-10 targets (default {DEFAULT_HIDDEN}; "
                        f"--full: {FULL_HIDDEN})")
    p.add_argument("--arch", nargs="+", default=[],
                   help="further synthetic targets of panel (a) as layer sizes, e.g. 784-1000-1000-10 "
                        "784-2000-2000-10 (deeper than 784-H-10)")
    p.add_argument("--width", choices=("formula", "auto", "adaptive"), default="adaptive",
                   help="--width of panel (a)'s approximate runs (adaptive: the block width follows τ, "
                        "not p·q, so the time per weight should not grow with the network)")
    p.add_argument("--blas-threads", type=int, default=1,
                   help="BLAS/OpenMP threads of panel (a)'s runs (1: CPU time is the work done, "
                        "unaffected by threads spinning on a shared machine)")
    p.add_argument("--target", type=Path, default=DEFAULT_TARGET,
                   help="trained target added as an extra point of panel (a) (skipped if missing; "
                        "'none' to skip)")
    p.add_argument("--solvers", default="mitm",
                   help="comma-separated backends for panel (a) (end-to-end approximate runs)")
    p.add_argument("--bench-solvers", default="mitm,auto",
                   help="comma-separated backends for panels (b) and (c)")
    p.add_argument("--weight-eps", type=float, default=0.01, help="per-weight tolerance τ of panel (a)")
    p.add_argument("--workers", type=int, default=1, help="solver processes in panel (a)")
    p.add_argument("--n", type=int, nargs="+", default=None,
                   help="live coefficients of panel (b) (default 10, 12, ..., 32; --full: 8 ... 34)")
    p.add_argument("--bench-eps", type=float, default=0.01, help="τ of panel (b)")
    p.add_argument("--taus", type=float, nargs="+", default=None,
                   help="tolerances of panel (c) (default 1e-1 ... 1e-4, half-decade steps)")
    p.add_argument("--tau-n", type=int, default=21, help="live coefficients of panel (c)")
    p.add_argument("--tau-objectives", default="error,cardinality",
                   help="objectives timed in panel (c) (comma-separated)")
    p.add_argument("--knapsack-max-n", type=int, default=22,
                   help="panel (b) also times OR-Tools' knapsack B&B alone (no mitm fallback) up to this n")
    p.add_argument("--count", type=int, default=None,
                   help="instances drawn per point of (b) and (c) (default 3000; --full 20000)")
    p.add_argument("--time-budget", type=float, default=None,
                   help="CPU seconds per solver and point of (b) and (c) at most (default 3; --full 10)")
    p.add_argument("--skip", default="",
                   help="comma-separated panels to skip (a, b, c); their CSV is kept if present")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--full", action="store_true", help="more sizes, wider n range, more instances")
    p.add_argument("--out", type=Path, default=Path("results/scaling"))
    args = p.parse_args(argv)
    args.hidden = args.hidden or list(FULL_HIDDEN if args.full else DEFAULT_HIDDEN)
    args.n = args.n or list(range(8, 35, 2) if args.full else range(10, 33, 2))
    args.taus = args.taus or [float(t) for t in np.logspace(-1, -4, 7)]
    args.count = args.count or (20000 if args.full else 3000)
    args.time_budget = args.time_budget or (10.0 if args.full else 3.0)
    args.solvers = [s.strip() for s in args.solvers.split(",") if s.strip()]
    args.bench_solvers = [s.strip() for s in args.bench_solvers.split(",") if s.strip()]
    args.tau_objectives = [s.strip() for s in args.tau_objectives.split(",") if s.strip()]
    if str(args.target).lower() in ("none", ""):
        args.target = None
    args.skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    return args


# ----------------------------------------------------------------------------- (a) end to end

def _solve_one(spec: dict) -> dict:
    """One `approximate` run (in a fresh process: ru_maxrss is this run's peak memory)."""
    import resource

    from subsetsum_lth.approximate import ApproximateConfig, approximate
    from subsetsum_lth.construction import ConstructionConfig
    from subsetsum_lth.solve import SolveConfig
    from subsetsum_lth.target import load_target, random_target

    if spec["target"] is None:
        sizes = tuple(spec["sizes"])
        target = random_target(sizes, bias=True, seed=spec["seed"])
        source = f"synthetic random_target({'-'.join(map(str, sizes))}), N(0, 1/fan_in)"
    else:
        target = load_target(spec["target"])
        source = f"trained {spec['target']}"
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    # CPU/wall clock of the solve stage: from the first solve progress bar to its last tick
    marks: dict = {}

    def progress(total, desc):
        if "cpu0" not in marks:
            marks["cpu0"], marks["wall0"] = time.process_time(), time.perf_counter()

        def tick(k):
            marks["cpu1"], marks["wall1"] = time.process_time(), time.perf_counter()
        return tick

    cfg = ApproximateConfig(
        construction=ConstructionConfig(input_domain="nonnegative", seed=spec["seed"],
                                        eps=spec["weight_eps"], width=spec["width"]),
        solve=SolveConfig(solver=spec["solver"], workers=spec["workers"]),
        weight_eps=spec["weight_eps"], allow_infeasible=True, overwrite=True, plots=False,
        empirical_samples=64, ascent_steps=10)
    with tempfile.TemporaryDirectory(prefix="scaling-") as tmp:
        c0, w0 = time.process_time(), time.perf_counter()
        report = approximate(target, cfg, Path(tmp), progress=progress)
        cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    layers = report["layers"]
    inst = sum(L["instances"] for L in layers)
    weights = sum(L["weight_instances"] for L in layers)
    live = sum(L["live_coefficients_mean"] * L["instances"] for L in layers) / inst
    solve = float(report["timings"]["solve"])
    solve_cpu = marks.get("cpu1", 0.0) - marks.get("cpu0", 0.0)
    return {
        "target": "trained" if spec["target"] is not None else "synthetic",
        "sizes": "-".join(map(str, target.sizes)), "source": source, "solver": spec["solver"],
        "weight_eps": spec["weight_eps"], "workers": spec["workers"],
        "instances": inst, "weights": weights, "biases": inst - weights,
        "weight_std_layer0": float(target.layers[0].weight.std()),
        "live_mean": live,
        "block_widths": "/".join(str(L["block_width"]) for L in layers),
        "grown_blocks": sum(L["grown_blocks"] for L in layers),
        "infeasible": int(report.get("infeasible_count") or 0),
        "solve_wall_s": solve, "solve_cpu_s": solve_cpu,
        "solve_wall_us_per_instance": 1e6 * solve / inst,
        "solve_cpu_us_per_instance": 1e6 * solve_cpu / inst,
        "instances_per_s_cpu": inst / solve_cpu if solve_cpu > 0 else float("nan"),
        "build_s": float(report["timings"].get("build", 0.0)),
        "certify_s": float(report["timings"].get("certify", 0.0)),
        "total_wall_s": wall, "total_cpu_s": cpu,
        "total_wall_us_per_instance": 1e6 * wall / inst, "total_cpu_us_per_instance": 1e6 * cpu / inst,
        "width": spec.get("width", "auto"),
        "block_widths_final_mean": "/".join(f"{L['block_width_final_mean']:.1f}" for L in layers),
        "write_s": float(report["timings"].get("write", 0.0)),
        "peak_memory_mb": float(report["peak_memory_mb"]), "rss_before_mb": rss_before,
        "max_weight_error": max(L["max_weight_error"] for L in layers),
        "g_parameters": sum(L["total_parameters"] for L in layers),
    }


def panel_sizes(args) -> list[dict]:
    specs = [{"target": None, "sizes": (784, h, 10)} for h in sorted(args.hidden)]
    specs += [{"target": None, "sizes": tuple(int(v) for v in a.split("-"))} for a in args.arch]
    if args.target is not None:
        if args.target.exists():
            specs.append({"target": str(args.target), "sizes": None})
        else:
            print(f"(a) {args.target} not found: no trained point (train it with "
                  "'subsetsum-lth train-target --out runs/target')", file=sys.stderr)
    rows = []
    ctx = mp.get_context("spawn")
    print("(a) end-to-end approximate, τ=%g per weight, --width %s, workers %d, BLAS threads %d"
          % (args.weight_eps, args.width, args.workers, args.blas_threads))
    import os
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.blas_threads)        # the spawned runs import numpy/torch afresh
    print(f"    {'target':22} {'solver':7} {'instances':>10} {'live n':>6} {'solve s':>8} {'cpu s':>8} "
          f"{'µs/weight':>9} {'cpu µs/w':>8} {'inst/s':>8} {'peak MB':>8} {'total s':>8} "
          f"{'tot cpu µs/w':>12} {'×first':>6}  m start → final mean")
    for solver in args.solvers:
        for spec in specs:
            spec = {**spec, "solver": solver, "seed": args.seed, "weight_eps": args.weight_eps,
                    "workers": args.workers, "width": args.width}
            with ctx.Pool(1) as pool:
                r = pool.apply(_solve_one, (spec,))
            rows.append(r)
            name = f"{r['sizes']} ({r['target']})"
            print(f"    {name:22} {solver:7} {r['instances']:10,d} {r['live_mean']:6.1f} "
                  f"{r['solve_wall_s']:8.1f} {r['solve_cpu_s']:8.1f} {r['solve_wall_us_per_instance']:9.1f} "
                  f"{r['solve_cpu_us_per_instance']:8.1f} {r['instances_per_s_cpu']:8,.0f} "
                  f"{r['peak_memory_mb']:8.0f} {r['total_wall_s']:8.1f} {r['total_cpu_us_per_instance']:12.2f} "
                  f"{r['total_cpu_us_per_instance'] / rows[0]['total_cpu_us_per_instance']:6.2f}  "
                  f"{r['block_widths']} → {r['block_widths_final_mean']}", flush=True)
    return rows


# ----------------------------------------------------------------------------- (b), (c) throughput

def _bench_point(args, n: int, eps: float, objective: str = "error") -> list[dict]:
    from subsetsum_lth.bench import SolverBenchConfig, bench_solvers

    # the first solver doubles as the "baseline" so that no CP-SAT baseline is timed
    cfg = SolverBenchConfig(n=n, eps=eps, count=args.count, solvers=tuple(args.bench_solvers),
                            baseline=args.bench_solvers[0], baseline_count=args.count,
                            time_budget=args.time_budget, clock="cpu", seed=args.seed,
                            objective=objective)
    out = []
    for r in bench_solvers(cfg):
        out.append({"solver": r.backend, "objective": objective, "n": n, "eps": eps, "instances": r.instances,
                    "cpu_s": r.cpu_seconds, "wall_s": r.wall_seconds,
                    "instances_per_s_cpu": r.instances / r.cpu_seconds if r.cpu_seconds > 0 else float("nan"),
                    "instances_per_s_wall": r.instances / r.wall_seconds if r.wall_seconds > 0 else float("nan"),
                    "us_per_instance_cpu": 1e6 * r.cpu_seconds / r.instances,
                    "within_tau": r.optimal, "infeasible": r.infeasible, "failed": r.other,
                    "max_error_diff": r.max_error_diff})
    return out


def _knapsack_point(args, n: int, eps: float) -> dict:
    """OR-Tools' knapsack branch-and-bound on every instance (``knapsack_max_n=None``; the
    default backend sends every n <= 40 to mitm), timed like bench_solvers: one core, CPU clock,
    batches of 8 until the time budget; checked against mitm on the same instances."""
    from subsetsum_lth.bench import SolverBenchConfig, draw_instances, one_core
    from subsetsum_lth.solve import solve_batch

    batch = draw_instances(SolverBenchConfig(n=n, eps=eps, count=args.count, seed=args.seed))
    opts = {"knapsack_max_n": None, "knapsack_time_limit": 1e9}
    solve_batch("ortools", opts, batch.take(slice(0, 1)))       # warm-up
    done, cpu, wall, errs = 0, 0.0, 0.0, []
    with one_core():
        while done < len(batch) and cpu < args.time_budget:
            sub = batch.take(slice(done, min(len(batch), done + 8)))
            c0, w0 = time.process_time(), time.perf_counter()
            res = solve_batch("ortools", opts, sub)
            cpu += time.process_time() - c0
            wall += time.perf_counter() - w0
            errs.append(res.errors)
            done += len(sub)
    err = np.concatenate(errs)
    ref = solve_batch("mitm", {}, batch.take(slice(0, done))).errors
    return {"solver": "ortools-knapsack", "objective": "error", "n": n, "eps": eps, "instances": done,
            "cpu_s": cpu, "wall_s": wall, "instances_per_s_cpu": done / cpu,
            "instances_per_s_wall": done / wall, "us_per_instance_cpu": 1e6 * cpu / done,
            "within_tau": int((err <= eps).sum()), "infeasible": int((err > eps).sum()), "failed": 0,
            "max_error_diff": float(np.max(np.abs(err - ref)))}


def _print_rates(rows, key):
    for r in rows:
        print(f"    {key}={r[key]:<8.3g} {r['solver'] + ' ' + r['objective']:28} {r['instances']:6,d} inst  "
              f"{r['instances_per_s_cpu']:10,.0f}/s cpu  {r['instances_per_s_wall']:10,.0f}/s wall  "
              f"{r['us_per_instance_cpu']:9.1f} µs  within τ {r['within_tau'] / r['instances']:5.1%}  "
              f"max err diff {r['max_error_diff'] if r['max_error_diff'] is not None else '-'}", flush=True)


def panel_n(args) -> list[dict]:
    print(f"(b) throughput vs n, τ={args.bench_eps:g}, {args.count} instances, ≤{args.time_budget:g}s CPU per point")
    rows = []
    for n in args.n:
        pts = _bench_point(args, n, args.bench_eps)
        if n <= args.knapsack_max_n:
            pts.append(_knapsack_point(args, n, args.bench_eps))
        _print_rates(pts, "n")
        rows += pts
    return rows


def panel_tau(args) -> list[dict]:
    print(f"(c) throughput vs τ, n={args.tau_n}")
    rows = []
    for objective in args.tau_objectives:
        for eps in args.taus:
            pts = _bench_point(args, args.tau_n, eps, objective)
            _print_rates(pts, "eps")
            rows += pts
    return rows


# ----------------------------------------------------------------------------- plot

def _read_csv(path: Path) -> list[dict]:
    import csv
    if not path.exists() or path.stat().st_size == 0:
        return []
    with path.open() as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for k, v in r.items():
            try:
                r[k] = float(v)
            except (TypeError, ValueError):
                pass
    return rows


def _rate_at(n: float, bench_rows: list[dict]) -> float:
    """Instances/s (CPU) at n, log-interpolated between panel (b)'s points; beyond the last
    point extrapolated by 2^{-n/2}, below the first clamped."""
    pts = sorted((r["n"], math.log(r["instances_per_s_cpu"])) for r in bench_rows)
    ns, lr = [a for a, _ in pts], [b for _, b in pts]
    if n > ns[-1]:
        return math.exp(lr[-1] - (n - ns[-1]) * math.log(2) / 2)
    return math.exp(float(np.interp(n, ns, lr)))


def predicted_seconds(row: dict, bench_rows: list[dict]) -> float:
    """Pure solver seconds per instance predicted for one panel-(a) run: its layers' instances
    (q·p weights + q biases), live counts n ~ Binomial(m, 1/2) for block width m (every layer
    sees non-negative inputs), each costing 1 / rate(n) from panel (b). The cost is convex in n,
    so this is above the cost at the mean n̄."""
    sizes = [int(v) for v in str(row["sizes"]).split("-")]
    widths = [int(float(v)) for v in str(row["block_widths"]).split("/")]
    total = count = 0.0
    for (p, q), m in zip(zip(sizes[:-1], sizes[1:]), widths):
        cost = sum(math.comb(m, n) / 2.0 ** m / _rate_at(float(n), bench_rows) for n in range(m + 1))
        total += (q * p + q) * cost
        count += q * p + q
    return total / count


def plot(sizes, by_n, by_tau, args) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    only_a = not by_n and not by_tau           # --skip b,c without their CSVs: panel (a) alone
    fig, axes = plt.subplots(1, 1 if only_a else 3, figsize=(8, 5.2) if only_a else (17, 5.0))
    axes = [axes] if only_a else axes
    colors = {"mitm": "C0", "auto": "C1", "ortools": "C4", "cpsat": "C2", "gurobi": "C3"}

    # (a) seconds per weight vs number of weights
    ax = axes[0]
    for solver in dict.fromkeys(r["solver"] for r in sizes):
        c = colors.get(solver, "C4")
        syn = sorted((r for r in sizes if r["solver"] == solver and r["target"] == "synthetic"),
                     key=lambda r: r["instances"])
        if syn:
            x = [r["instances"] for r in syn]
            ax.plot(x, [r["solve_cpu_us_per_instance"] * 1e-6 for r in syn], "o-", color=c,
                    label=f"{solver}: solve CPU s / weight")
            ax.plot(x, [r["solve_wall_us_per_instance"] * 1e-6 for r in syn], "o--", color=c, mfc="none",
                    alpha=0.6, label=f"{solver}: solve wall s / weight")
            if all("total_cpu_us_per_instance" in r for r in syn):
                ax.plot(x, [r["total_cpu_us_per_instance"] * 1e-6 for r in syn], "s-.", color=c, ms=4,
                        label=f"{solver}: whole run CPU s / weight (build, solve, certify, write)")
            info = "\n".join(f"{r['sizes']}: m={r['block_widths']}, n̄={r['live_mean']:.1f}, "
                             f"{r['instances_per_s_cpu']:,.0f} inst/s, peak {r['peak_memory_mb']:,.0f} MB"
                             for r in syn)
            ax.text(0.98, 0.03, f"{solver}:\n{info}", transform=ax.transAxes, ha="right", va="bottom",
                    fontsize=6.5, bbox={"fc": "white", "ec": "0.8", "alpha": 0.9})
            # what panel (b)'s throughput predicts for the runs' instances (pure solver time)
            bn = [r for r in by_n if r["solver"] == solver]
            if len(bn) > 1:
                ax.plot(x, [predicted_seconds(r, bn) for r in syn], ":", color=c, lw=1.2,
                        label=f"{solver}: pure solver time, n ~ Bin(m, 1/2) per block (from panel b)")
                ax.plot(x, [1.0 / _rate_at(r["live_mean"], bn) for r in syn], ":", color=c, lw=0.8,
                        alpha=0.5, label=f"{solver}: pure solver time at the mean n̄ (from panel b)")
        for r in sizes:
            if r["solver"] == solver and r["target"] == "trained":
                ax.plot(r["instances"], r["solve_cpu_us_per_instance"] * 1e-6, "*", ms=13, color=c,
                        mec="k", label=f"{solver}: trained MNIST {r['sizes']} (CPU)")
    if sizes:
        ax.set_xscale("log")
        ax.set_yscale("log")
        lo, hi = ax.get_ylim()
        ax.set_ylim(lo / 2.5, hi * 4)
        lo, hi = ax.get_xlim()
        ax.set_xlim(lo / 1.6, hi * 1.6)
    ax.set_xlabel("target parameters = instances (weights + biases)")
    ax.set_ylabel("solve seconds per weight (1 core)")
    ax.set_title(f"(a) end-to-end approximate, τ={args.weight_eps:g}, --width "
                 f"{getattr(args, 'width', 'auto')}, workers={args.workers}", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="upper left")
    if only_a:
        fig.tight_layout()
        out = args.out / "scaling.png"
        fig.savefig(out, dpi=120)
        plt.close(fig)
        return out

    # (b) rate vs n
    labels = {"mitm": "mitm (meet in the middle)",
              "auto": "auto (the default portfolio: mitm up to n = 40)",
              "ortools": "ortools (OR-Tools only: knapsack B&B)",
              "ortools-knapsack": "ortools knapsack B&B only"}
    colors["ortools-knapsack"] = "C3"
    ax = axes[1]
    last = {}
    for solver in dict.fromkeys(r["solver"] for r in by_n):
        bn = sorted((r for r in by_n if r["solver"] == solver), key=lambda r: r["n"])
        c = colors.get(solver, "C4")
        ls = "s-" if solver == "ortools-knapsack" else "o-"
        ax.plot([r["n"] for r in bn], [r["instances_per_s_cpu"] for r in bn], ls, color=c, ms=4,
                label=labels.get(solver, solver) + " (CPU)")
        ax.plot([r["n"] for r in bn], [r["instances_per_s_wall"] for r in bn], "--", color=c, alpha=0.45,
                lw=1)
        last[solver] = bn[-1]
    ax.plot([], [], "--", color="gray", alpha=0.6, lw=1, label="thin dashed: same, wall clock")
    ns = np.array(sorted({r["n"] for r in by_n}), dtype=float)
    if "mitm" in last:
        ref = last["mitm"]
        ax.plot(ns, ref["instances_per_s_cpu"] * 2.0 ** ((ref["n"] - ns) / 2), "k:", lw=1.3,
                label=r"$\propto 2^{-n/2}$ (through mitm's last point)")
    if "ortools-knapsack" in last:
        ref = last["ortools-knapsack"]
        nk = ns[ns <= ref["n"] + 2]
        ax.plot(nk, ref["instances_per_s_cpu"] * 2.0 ** (ref["n"] - nk), color="gray", ls="-.", lw=1,
                label=r"$\propto 2^{-n}$ (through B&B's last point)")
    ax.axvline(21, color="gray", lw=0.6, alpha=0.6)
    if by_n:
        ax.set_yscale("log")
    ax.set_xlabel("live coefficients n")
    ax.set_ylabel("instances / second (1 core)")
    ax.set_title(f"(b) throughput vs n, τ={args.bench_eps:g}, error objective", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=6.5, loc="upper right")

    # (c) rate vs τ
    ax = axes[2]
    styles = {"error": "-", "cardinality": "--", "feasible": ":"}
    for (solver, objective) in dict.fromkeys((r["solver"], r["objective"]) for r in by_tau):
        bt = sorted((r for r in by_tau if r["solver"] == solver and r["objective"] == objective),
                    key=lambda r: -r["eps"])
        c = colors.get(solver, "C4")
        ax.plot([r["eps"] for r in bt], [r["instances_per_s_cpu"] for r in bt], "o", ls=styles.get(objective, "-"),
                color=c, ms=4, label=f"{solver}, {objective} objective (CPU)")
    if by_tau:
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.invert_xaxis()
        lo, hi = ax.get_ylim()
        ax.set_ylim(min(lo, hi / 30), hi * 2)
    within = min((r["within_tau"] / r["instances"] for r in by_tau), default=float("nan"))
    ax.set_xlabel(f"tolerance τ (instances within τ: ≥ {within:.1%} at every τ)")
    ax.set_ylabel("instances / second (1 core)")
    ax.set_title(f"(c) throughput vs τ, n={args.tau_n} (solid: error, dashed: min-cardinality)", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="lower left")

    fig.tight_layout()
    out = args.out / "scaling.png"
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    paths = {"a": args.out / "sizes.csv", "b": args.out / "rate_vs_n.csv", "c": args.out / "rate_vs_tau.csv"}
    data = {}
    for key, fn in (("b", panel_n), ("c", panel_tau), ("a", panel_sizes)):
        if key in args.skip:
            data[key] = _read_csv(paths[key])
            continue
        data[key] = fn(args)
        atomic_write_csv(paths[key], data[key])
    if {"a", "b", "c"} <= args.skip:       # plot only
        png = plot(data["a"], data["b"], data["c"], args)
        print(f"wrote {png}")
        return 0
    meta = {"command": " ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:])),
            "hidden": args.hidden, "target": None if args.target is None else str(args.target),
            "solvers": args.solvers, "bench_solvers": args.bench_solvers, "weight_eps": args.weight_eps,
            "workers": args.workers, "n": args.n, "bench_eps": args.bench_eps, "taus": args.taus,
            "tau_n": args.tau_n, "count": args.count, "time_budget": args.time_budget, "seed": args.seed,
            "seconds": round(time.perf_counter() - t0, 1)}
    atomic_write_json(args.out / "scaling.json", meta)
    png = plot(data["a"], data["b"], data["c"], args)
    print(f"wrote {args.out}/sizes.csv, rate_vs_n.csv, rate_vs_tau.csv, scaling.json, {png.name} "
          f"({time.perf_counter() - t0:.1f}s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
