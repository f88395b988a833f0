"""`subsetsum-lth bench`: solver throughput (`bench solvers`) and a timed run (`bench approximate`)."""
from __future__ import annotations

from pathlib import Path

from subsetsum_lth.commands._common import integer, print_json
from subsetsum_lth.commands._progress import progress_factory

NAME = "bench"
HELP = "benchmark the solver backends, or time a whole approximate run"
DESCRIPTION = (
    "bench solvers: draw construction-shaped subset-sum instances (coefficients v*u over "
    "positive-u units, u, v ~ U[-1, 1]) and time every available backend on one core, with the "
    "naive baseline (one CP-SAT model per instance) for the speed-up and a check that exact "
    "backends agree on the optimum. bench approximate: run 'approximate' once and report wall "
    "time, core-seconds, peak memory and the time of each stage.")


def add_arguments(p) -> None:
    from subsetsum_lth.bench import ApproximateBenchConfig as A
    from subsetsum_lth.bench import SolverBenchConfig as B
    from subsetsum_lth.commands._help import HelpFormatter
    sub = p.add_subparsers(dest="bench_command", metavar="WHAT")
    sub.required = True

    s = sub.add_parser("solvers", help="throughput of every solver backend on one core",
                       formatter_class=HelpFormatter)
    s.add_argument("--n", type=_sizes, default=(B.n,), metavar="N[,N...]",
                   help="live coefficients per instance; several sizes, e.g. 48,64,96, make one "
                        "table (beyond 40: exact search's reach, the ortools backend uses fix-and-search)")
    s.add_argument("--eps", type=float, default=B.eps, help="tolerance τ of every instance")
    s.add_argument("--count", type=integer, default=B.count, help="instances to draw")
    s.add_argument("--objective", choices=("error", "cardinality", "feasible"), default=B.objective,
                   help="what every backend is asked for (as approximate's --objective)")
    s.add_argument("--targets", type=Path, default=B.targets,
                   help="target file: sample targets from its first Linear weight "
                        "(default: N(0, 0.05) clipped to [-1, 1])")
    s.add_argument("--solvers", default=None,
                   help="comma-separated backends to time (default: every available one); a backend "
                        "may carry options, NAME[key=value;...], e.g. 'ortools[fixsearch=false;"
                        "time_limit=1]' (OR-Tools' knapsack B&B instead of fix-and-search beyond n = 40)")
    s.add_argument("--baseline-count", type=integer, default=B.baseline_count,
                   help="instances at most for the naive baseline (cpsat), scaled by its rate")
    s.add_argument("--time-budget", type=float, default=B.time_budget,
                   help="seconds at most per backend; slow backends are timed on the prefix they finish")
    s.add_argument("--batch-size", type=integer, default=B.batch_size,
                   help="instances per solve_batch call (default: the backend's own)")
    s.add_argument("--seed", type=integer, default=B.seed, help="seed of the instance draw")
    s.add_argument("--clock", choices=("wall", "cpu"), default=B.clock,
                   help="time by elapsed wall clock, or by this process's CPU time (robust on a "
                        "busy machine)")
    s.add_argument("--time-limit", type=float, default=None,
                   help="per-instance time limit (s) of the backends that take one, as approximate's "
                        "(default: 10); beyond n = 40 the knapsack B&B and CP-SAT run into it")
    s.add_argument("--json", action="store_true", help="print a JSON list, one object per backend")
    s.set_defaults(_bench=_run_solvers)

    a = sub.add_parser("approximate", help="time one approximate run, stage by stage",
                       formatter_class=HelpFormatter)
    a.add_argument("--target", type=Path, default=A.target,
                   help="target file or train-target folder (default: seeded synthetic 784-300-10)")
    a.add_argument("--solver", default=A.solver, help="solver backend")
    a.add_argument("--objective", choices=("error", "feasible", "cardinality"), default=A.objective,
                   help="subset-sum objective (as approximate's --objective)")
    a.add_argument("--weight-eps", type=float, default=A.weight_eps, help="per-weight tolerance τ")
    a.add_argument("--width", choices=("formula", "auto", "adaptive"), default=A.width,
                   help="block width mode, as approximate's --width (default: approximate's, adaptive)")
    a.add_argument("--data", choices=("mnist",), default=A.data, help="evaluate on this data set")
    a.add_argument("--data-dir", type=Path, default=A.data_dir, help="folder with the data set files")
    a.add_argument("--workers", type=integer, default=A.workers, help="solver processes (default: all cores)")
    a.add_argument("--seed", type=integer, default=A.seed, help="seed of the random network")
    a.add_argument("--out", type=Path, default=A.out,
                   help="run folder to write (overwritten; default: a temporary folder, removed)")
    a.add_argument("--no-plots", action="store_true", help="do not write PNG plots")
    a.add_argument("--no-progress", action="store_true", help="no progress output (bars or lines)")
    a.add_argument("--json", action="store_true", help="print one JSON object")
    a.set_defaults(_bench=_run_approximate)


def run(args) -> int:
    return int(args._bench(args) or 0)


def _fmt(x, spec: str, none: str = "-") -> str:
    return none if x is None else format(x, spec)


def _sizes(text: str) -> tuple[int, ...]:
    import argparse
    try:
        sizes = tuple(integer(x) for x in text.split(",") if x.strip())     # '1e6' too, as every integer flag
    except argparse.ArgumentTypeError:
        sizes = ()
    if not sizes or min(sizes) < 0:
        raise argparse.ArgumentTypeError(f"expected N or N,N,... (non-negative integers), got {text!r}")
    return sizes


def _solver_specs(text: str) -> tuple[str, ...]:
    """Split --solvers at commas outside brackets; options inside brackets may be separated by
    ';' or ','."""
    out, depth, cur = [], 0, ""
    for ch in text:
        depth += (ch == "[") - (ch == "]")
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ";" if (ch == "," and depth > 0) else ch
    out.append(cur)
    return tuple(s.strip().replace(";", ",") for s in out if s.strip())


def _run_solvers(args) -> int:
    from subsetsum_lth.bench import SolverBenchConfig, bench_solver_sizes

    solvers = _solver_specs(args.solvers) if args.solvers else None
    cfg = SolverBenchConfig(n=args.n[0], eps=args.eps, count=args.count, objective=args.objective,
                            targets=args.targets, solvers=solvers,
                            baseline_count=args.baseline_count, time_budget=args.time_budget,
                            batch_size=args.batch_size, seed=args.seed,
                            clock=args.clock, time_limit=args.time_limit)
    rows = bench_solver_sizes(cfg, args.n)
    if args.json:
        print_json([r.to_dict() for r in rows])
        return 0
    sizes = ",".join(str(n) for n in args.n)
    print(f"n={sizes}, τ={cfg.eps:g}, objective {cfg.objective}, {cfg.count:,} instances drawn, one core; "
          f"{cfg.clock} clock; baseline: {cfg.baseline} (one CP-SAT model per instance)")
    width = max([10] + [len(r.backend) + 1 for r in rows])
    head = (f"{'backend':{width}} {'n':>3} {'objective':11} {'instances':>9} {'within τ':>8} {'seconds':>9} "
            f"{'inst/s':>10} {'cores':>5} {'exact':>5} {'max_err_diff':>12} {'speedup':>9}")
    print(head)
    print("-" * len(head))
    for r in rows:
        mark = "*" if r.baseline else ""
        print(f"{r.backend + mark:{width}} {r.n:3d} {r.objective:11} {r.instances:9,d} {r.optimal:8,d} "
              f"{r.seconds:9.3f} {r.instances_per_second:10,.1f} {r.cores:5d} {'yes' if r.exact else 'no':>5} "
              f"{_fmt(r.max_error_diff, '.2e'):>12} {_fmt(r.speedup_vs_baseline, ',.0f'):>8}x"
              + (f"   ({r.note})" if r.note else ""))
    print("* naive baseline; within τ: instances answered with a subset within τ; max_err_diff: "
          "largest |error - best exact error| over the instances the backend solved (beyond n = 40 "
          "no backend proves the optimum: any subset within τ is an answer)")
    return 0


def _run_approximate(args) -> int:
    from subsetsum_lth.bench import STAGES, ApproximateBenchConfig, bench_approximate

    cfg = ApproximateBenchConfig(target=args.target, solver=args.solver, objective=args.objective,
                                 weight_eps=args.weight_eps, width=args.width, data=args.data,
                                 data_dir=args.data_dir,
                                 workers=args.workers, out=args.out, seed=args.seed,
                                 plots=not args.no_plots)
    progress = progress_factory(not args.no_progress and not args.json, unit="inst")
    rep = bench_approximate(cfg, progress=progress)
    if args.json:
        print_json(rep)
        return 0
    print(f"target {rep['target']} ({'-'.join(map(str, rep['target_sizes'] or []))}), solver {rep['solver']} / "
          f"{rep['objective']}, τ={rep['weight_eps']:g}, --width {rep['width']}, workers {rep['workers']}")
    print(f"instances: {rep['instances']:,}   infeasible: {rep['infeasible_count']}")
    print(f"wall time: {rep['wall_seconds']:.2f}s   core-seconds: {rep['core_seconds']:.2f} "
          f"(process {rep['process_cpu_seconds']:.2f} + workers {rep['children_cpu_seconds']:.2f})")
    print(f"peak memory: {rep['peak_memory_mb']:.0f} MB (process), {rep['peak_child_memory_mb']:.0f} MB (largest worker)")
    print("stage timings:")
    for s in STAGES:
        print(f"  {s:9} {rep['timings'].get(s, 0.0):8.2f}s")
    if rep.get("instances_per_second_solve"):
        print(f"solve throughput: {rep['instances_per_second_solve']:,.0f} instances/s")
    print(f"certified bound {rep['certified_bound']:.4g}, empirical bound {rep['empirical_bound']:.4g}")
    if "pruned_accuracy" in rep:
        print(f"test accuracy: target {100 * rep['target_accuracy']:.2f}%, pruned {100 * rep['pruned_accuracy']:.2f}%")
    if rep.get("out"):
        print(f"run folder: {rep['out']}")
    return 0
