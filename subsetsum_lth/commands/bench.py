"""`subsetsum-lth bench`: solver throughput (`bench solvers`) and a timed run (`bench approximate`)."""
from __future__ import annotations

from subsetsum_lth.bench import STAGES, bench_approximate, bench_solver_sizes
from subsetsum_lth.commands._common import print_json
from subsetsum_lth.commands._progress import progress_factory
from subsetsum_lth.request import BenchRequest

NAME = "bench"
HELP = "benchmark the solver backends, or time a whole approximate run"
DESCRIPTION = (
    "bench solvers: draw construction-shaped subset-sum instances (coefficients v*u over "
    "positive-u units, u, v ~ U[-1, 1]) and time every available backend on one core, with the "
    "naive baseline (one CP-SAT model per instance) for the speed-up and a check that exact "
    "backends agree on the optimum. bench approximate: run 'approximate' once and report wall "
    "time, core-seconds, peak memory and the time of each stage.")


#: the request `run` takes (subsetsum_lth.request)
REQUEST = BenchRequest


def add_arguments(p) -> None:
    # every default is SolverBenchConfig's / ApproximateBenchConfig's (the options are generated
    # from their fields; tests/test_cli_config.py)
    BenchRequest.add_arguments(p)


def run(req: BenchRequest) -> int:
    return _run_solvers(req) if req.what == "solvers" else _run_approximate(req)


def _fmt(x, spec: str, none: str = "-") -> str:
    return none if x is None else format(x, spec)


def _run_solvers(req: BenchRequest) -> int:

    cfg = req.config
    rows = bench_solver_sizes(cfg, req.sizes)
    if req.json:
        print_json([r.to_dict() for r in rows])
        return 0
    sizes = ",".join(str(n) for n in req.sizes)
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


def _run_approximate(req: BenchRequest) -> int:

    cfg = req.config
    progress = progress_factory(not req.no_progress and not req.json, unit="inst")
    rep = bench_approximate(cfg, progress=progress)
    if req.json:
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
