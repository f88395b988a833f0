"""Benchmarks: solver throughput on construction-shaped instances, and a whole `approximate` run.

Library code only (logging, no printing); the CLI in ``commands/bench.py`` prints.

* :func:`bench_solvers` draws ``count`` instances shaped like the construction's (coefficients
  ``v * u`` over the positive-``u`` units of a block, ``u, v ~ U[-1, 1]`` i.i.d. in float32 as
  :mod:`subsetsum_lth.construction` draws them; targets ~ N(0, ``target_std``) clipped to
  [-1, 1], or sampled from the first ``Linear`` weight of a target file), solves them in this
  process on **one core** (every thread of the process is pinned to one CPU and numpy's
  BLAS is held to one thread while a backend is timed) with every requested backend through
  :func:`subsetsum_lth.solve.solve_batch`, checks that exact backends agree on the optimum,
  and reports throughput and the speed-up over the naive baseline (one CP-SAT model per
  instance, the paper's formulation). Slow backends are timed on a prefix of the instances
  (at most ``baseline_count`` for the baseline, and never past ``time_budget`` seconds) and
  their rate is what is compared. A backend may be named with options, ``name[key=value,...]``
  (:func:`parse_solver_spec`), e.g. ``auto[fixsearch=false,time_limit=1]`` for OR-Tools'
  knapsack branch-and-bound beyond exact search instead of fix-and-search (``--n 48,64,96``:
  several sizes in one command, see docs/solvers.md).
* :func:`bench_approximate` runs :func:`subsetsum_lth.approximate.approximate` and reports wall
  time, core-seconds (process + children CPU time), peak memory and the stage timings.
"""
from __future__ import annotations

import logging
import math
import os
import resource
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from subsetsum_lth import limits
from subsetsum_lth.approximate import ApproximateConfig, approximate
from subsetsum_lth.construction import ConstructionConfig
from subsetsum_lth.default_target import synthetic_target
from subsetsum_lth.data.mnist import evaluation_inputs
from subsetsum_lth.errors import UserError
from subsetsum_lth.limits import DEFAULT_TIME_LIMIT, instance_time_limit
from subsetsum_lth.options import option
from subsetsum_lth.solve import SolveConfig, default_batch, solve_batch
from subsetsum_lth.solvers.instances import OBJECTIVES, InstanceBatch, Status
from subsetsum_lth.solvers.registry import DEFAULT_SOLVER, backend_info, get_backend_class, list_backends
from subsetsum_lth.solvers.mitm import single_thread_blas
from subsetsum_lth.target import load_target

log = logging.getLogger(__name__)

#: the naive baseline: one CP-SAT model per instance (Pensia et al.'s MIP formulation)
BASELINE = "cpsat"


@dataclass
class SolverBenchConfig:
    """What `bench solvers` measures.

    Attributes:
        n: live coefficients per instance (positive-u units of one block).
        eps: tolerance τ of every instance.
        count: instances drawn (fast backends solve all of them).
        objective: 'error', 'cardinality' or 'feasible'.
        targets: optional target file; targets are then sampled from its first Linear weight.
        solvers: backends to time (None: every available backend); each a name or
            ``name[key=value,...]`` with constructor options (:func:`parse_solver_spec`).
        baseline: the naive baseline backend (always timed when available).
        baseline_count: at most this many instances for the baseline.
        time_budget: seconds per backend at most (checked between batches; the first batch
            always runs); slow backends are timed on the prefix they finish.
        batch_size: instances per solve_batch call (None: the backend's default_batch).
        target_std: std of the normal target distribution (ignored with ``targets``).
        seed: seed of the instance draw.
        pin_cpu: pin the process to one CPU while timing (Linux).
        clock: 'wall' (elapsed time) or 'cpu' (this process's CPU time: robust when other
            processes compete for the core; the process is single-threaded while timed).
        time_limit: per-instance time limit (s) of the backends that take one, as approximate's
            --time-limit (None: its default, limits.DEFAULT_TIME_LIMIT); beyond n = 40 nothing
            proves the optimum in time, so this is what the knapsack B&B and CP-SAT spend there.
    """

    n: int = option(21, flag="--n", metavar="N[,N...]",
                    help="live coefficients per instance; several sizes, e.g. 48,64,96, make one "
                         "table (beyond 40: exact search's reach, the ortools backend uses fix-and-search)")
    eps: float = option(0.01, flag="--eps", help="tolerance τ of every instance")
    count: int = option(20000, flag="--count", help="instances to draw")
    objective: str = option("error", flag="--objective", choices=("error", "cardinality", "feasible"),
                            help="what every backend is asked for (as approximate's --objective)")
    targets: Path | None = option(None, flag="--targets",
                                  help="target file: sample targets from its first Linear weight "
                                       "(default: N(0, 0.05) clipped to [-1, 1])")
    solvers: tuple[str, ...] | None = option(
        None, flag="--solvers",
        help="comma-separated backends to time (default: every available one); a backend "
             "may carry options, NAME[key=value;...], e.g. 'ortools[fixsearch=false;"
             "time_limit=1]' (OR-Tools' knapsack B&B instead of fix-and-search beyond n = 40)")
    baseline: str = BASELINE
    baseline_count: int = option(300, flag="--baseline-count",
                                 help="instances at most for the naive baseline (cpsat), scaled by its rate")
    time_budget: float = option(30.0, flag="--time-budget",
                                help="seconds at most per backend; slow backends are timed on the prefix they "
                                     "finish")
    batch_size: int | None = option(None, flag="--batch-size",
                                    help="instances per solve_batch call (default: the backend's own)")
    target_std: float = 0.05
    seed: int = option(0, flag="--seed", help="seed of the instance draw")
    pin_cpu: bool = True
    clock: str = option("wall", flag="--clock", choices=("wall", "cpu"),
                        help="time by elapsed wall clock, or by this process's CPU time (robust on a "
                             "busy machine)")
    time_limit: float | None = option(
        None, flag="--time-limit",
        help="per-instance time limit (s) of the backends that take one, as approximate's "
             f"(default: {limits.DEFAULT_TIME_LIMIT:g}); beyond n = 40 the knapsack B&B and CP-SAT run into it")

    def __post_init__(self) -> None:
        if self.time_limit is not None:
            limits.check_seconds("--time-limit", self.time_limit)
        if self.clock not in ("wall", "cpu"):
            raise UserError(f"--clock must be 'wall' or 'cpu', got {self.clock!r}")
        limits.check_int("--n", self.n, 0, limits.MAX_COUNT)
        if not (math.isfinite(self.eps) and self.eps >= 0):
            raise UserError(f"--eps must be a non-negative number, got {self.eps}")
        limits.check_int("--count", self.count, 1, limits.MAX_COUNT)
        # the drawn instances: float64 coefficients and their copies in a batch, per instance and coefficient
        limits.check_memory(float(self.count) * max(self.n, 1) * 8 * 4,
                            f"--count {self.count:,} instances of --n {self.n:,} coefficients",
                            "draw fewer instances (--count) or fewer coefficients (--n)")
        if self.objective not in OBJECTIVES:
            raise UserError(f"--objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        limits.check_int("--baseline-count", self.baseline_count, 1, limits.MAX_COUNT)
        limits.check_seconds("--time-budget", self.time_budget)
        if self.batch_size is not None:
            limits.check_int("--batch-size", self.batch_size, 1, limits.MAX_COUNT)
        limits.check_int("--seed", self.seed, 0, limits.MAX_SEED)
        for spec in self.solvers or ():
            parse_solver_spec(spec)


def _option_value(text: str):
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low == "none":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text.strip()


def parse_solver_spec(spec: str) -> tuple[str, dict]:
    """``name`` or ``name[key=value,...]`` -> (name, options). Values: integers, floats,
    true/false, none, else strings. Option names are checked against the backend's constructor
    where it can be loaded (an unknown solver fails later, with the known ones)."""
    import inspect

    spec = spec.strip()
    if "[" not in spec:
        return spec, {}
    name, _, rest = spec.partition("[")
    if not rest.endswith("]") or not name:
        raise UserError(f"--solvers: cannot read {spec!r}; write NAME or NAME[key=value,...], "
                        "e.g. auto[fixsearch=false,time_limit=1]")
    options = {}
    for item in filter(None, (x.strip() for x in rest[:-1].split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise UserError(f"--solvers: option {item!r} of {spec!r} is not key=value")
        options[key.strip()] = _option_value(value)
    try:
        cls = get_backend_class(name)
    except Exception:
        return name, options
    known = [p for p, v in inspect.signature(cls.__init__).parameters.items()
             if p != "self" and v.kind not in (v.VAR_KEYWORD, v.VAR_POSITIONAL)]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise UserError(f"--solvers: {name} has no option {', '.join(unknown)}; its options: "
                        f"{', '.join(known) or 'none'}")
    return name, options


@dataclass
class SolverBenchRow:
    """One backend's measurement (also the JSON object printed by `bench solvers --json`)."""

    backend: str
    objective: str
    instances: int
    seconds: float                   #: by ``clock`` (wall or cpu); instances_per_second uses it
    instances_per_second: float
    cores: int
    exact: bool
    max_error_diff: float | None
    speedup_vs_baseline: float | None
    baseline: bool = False
    n: int = 0
    eps: float = 0.0
    wall_seconds: float = 0.0
    cpu_seconds: float = 0.0
    optimal: int = 0
    infeasible: int = 0
    other: int = 0
    max_cardinality_diff: int | None = None
    clock: str = "wall"
    note: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------------- instances

def draw_targets(config: SolverBenchConfig, rng: np.random.Generator) -> np.ndarray:
    if config.targets is None:
        return np.clip(rng.normal(0.0, config.target_std, config.count), -1.0, 1.0)
    weights = load_target(config.targets).layers[0].weight.ravel()
    if weights.size == 0:
        raise UserError(f"the first layer of {config.targets} has no weights")
    return rng.choice(weights, size=config.count, replace=True).astype(np.float64)


def draw_instances(config: SolverBenchConfig) -> InstanceBatch:
    """``count`` construction-shaped instances of exactly ``n`` live coefficients.

    As in :func:`subsetsum_lth.layer_instances.layer_instances`, a coefficient is
    ``float64(v) * float64(u)`` with ``u, v ~ U[-1, 1]`` drawn in float32 and only units with
    ``u > 0`` live; ``u`` conditioned on ``u > 0`` is drawn directly as ``|U[-1, 1]|``.
    """
    rng = np.random.default_rng(np.random.SeedSequence(config.seed))
    k, n = config.count, config.n
    u = np.abs(rng.uniform(-1.0, 1.0, size=(k, n)).astype(np.float32)).astype(np.float64)
    v = rng.uniform(-1.0, 1.0, size=(k, n)).astype(np.float32).astype(np.float64)
    targets = draw_targets(config, rng)
    return InstanceBatch(np.arange(k), targets, v * u, np.full(k, n), config.eps, config.objective)


# ----------------------------------------------------------------------------- timing

def _threads() -> list[int]:
    try:
        return [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:  # pragma: no cover - not Linux
        return [0]


@contextmanager
def one_core(enabled: bool = True):
    """Run on one core: every thread of this process pinned to one CPU (Linux), and numpy's
    BLAS held to one thread; both restored afterwards."""

    if not (enabled and hasattr(os, "sched_getaffinity")):
        with single_thread_blas():
            yield
        return
    before = os.sched_getaffinity(0)
    cpu = {min(before)}
    pinned = []
    for tid in _threads():
        try:
            old = os.sched_getaffinity(tid)
            os.sched_setaffinity(tid, cpu)
            pinned.append((tid, old))
        except OSError:  # a thread that ended meanwhile, or not permitted
            pass
    try:
        with single_thread_blas():
            yield
    finally:
        for tid, old in pinned:
            try:
                os.sched_setaffinity(tid, old)
            except OSError:
                pass


def _time_backend(spec: str, batch: InstanceBatch, limit: int, config: SolverBenchConfig):
    """Solve a prefix (<= limit instances, within the time budget) with solve_batch on one core.
    Returns (rows solved, selections, errors, status, wall seconds, cpu seconds)."""


    name, options = parse_solver_spec(spec)
    # as approximate's solve driver: every backend gets the per-instance time limit
    # (capped as approximate caps it: a backend that cannot be stopped must not run unbounded)
    options = {"time_limit": instance_time_limit(config.time_limit or DEFAULT_TIME_LIMIT), **options}
    k = min(limit, len(batch))
    size = int(config.batch_size or default_batch(name))
    size = min(size, max(1, k))
    solve_batch(name, options, batch.take(slice(0, min(2, k))))      # warm-up: imports, environments
    # batches grow from 8 instances (slow backends respect the budget) to the full size
    sel = np.zeros((k, batch.width), dtype=bool)
    err = np.full(k, np.nan)
    status = np.full(k, int(Status.ERROR), dtype=np.int8)
    done = 0
    wall = cpu = 0.0
    with one_core(config.pin_cpu):
        step = min(size, 8)
        while done < k:
            stop = min(k, done + step)
            sub = batch.take(slice(done, stop))
            c0, w0 = time.process_time(), time.perf_counter()
            res = solve_batch(name, options, sub)
            wall += time.perf_counter() - w0
            cpu += time.process_time() - c0
            sel[done:stop] = res.selections
            err[done:stop] = res.errors
            status[done:stop] = res.status
            done = stop
            spent = cpu if config.clock == "cpu" else wall
            if spent >= config.time_budget:
                break
            # next batch: twice as big, but predicted to end within the budget
            per_instance = spent / done
            step = max(1, min(size, step * 2, int((config.time_budget - spent) / per_instance) + 1))
    return done, sel[:done], err[:done], status[:done], wall, cpu


def bench_solvers(config: SolverBenchConfig) -> list[SolverBenchRow]:
    """Time every requested backend on the same instances; see the module docstring."""

    known = list_backends()
    if config.solvers:
        unknown = [s for s in config.solvers if parse_solver_spec(s)[0] not in known]
        if unknown:
            raise UserError(f"unknown solver(s) {', '.join(unknown)}; known: {', '.join(known)}")
        names = list(dict.fromkeys(config.solvers))
    else:
        names = [n for n in known if backend_info(n)["available"]]
    skipped = {}
    usable = []
    for name in dict.fromkeys(names + [config.baseline]):
        info = backend_info(parse_solver_spec(name)[0])
        if not info["available"]:
            skipped[name] = info.get("reason") or "not available"
        elif config.objective not in info["objectives"]:
            skipped[name] = f"does not support objective {config.objective!r}"
        else:
            usable.append(name)
    for name, why in skipped.items():
        log.warning("bench: skipping %s: %s", name, why)
    if not usable:
        raise UserError("no requested solver is available for this objective")

    batch = draw_instances(config)
    log.info("bench: %d instances, n=%d, τ=%g, objective %s", len(batch), config.n, config.eps,
             config.objective)
    runs = {}
    for name in usable:
        limit = config.baseline_count if name == config.baseline else config.count
        log.info("bench: timing %s on up to %d instances", name, limit)
        runs[name] = _time_backend(name, batch, limit, config)
        log.info("bench: %s: %d instances in %.3fs", name, runs[name][0], runs[name][4])

    # best exact answer per instance: min error (lexicographic (cardinality, error) for
    # 'cardinality'), over the exact backends that solved it without error
    k = len(batch)
    best_err = np.full(k, np.inf)
    best_card = np.full(k, np.iinfo(np.int64).max, dtype=np.int64)
    exact_names = [n for n in usable if get_backend_class(parse_solver_spec(n)[0]).capabilities.exact]
    for name in exact_names:
        done, sel, err, status, *_ = runs[name]
        ok = status != Status.ERROR
        if config.objective == "cardinality":
            feas = status == Status.OPTIMAL
            card = np.where(feas, sel.sum(axis=1), np.iinfo(np.int64).max)
            better = ok & ((card < best_card[:done]) |
                           ((card == best_card[:done]) & (err < best_err[:done])))
            best_card[:done] = np.where(better, card, best_card[:done])
            best_err[:done] = np.where(better, err, best_err[:done])
        else:
            best_err[:done] = np.where(ok, np.minimum(best_err[:done], err), best_err[:done])

    def timed(run) -> float:
        return run[5] if config.clock == "cpu" else run[4]

    base = runs.get(config.baseline)
    base_rate = base[0] / timed(base) if base and timed(base) > 0 else None
    rows = []
    for name in usable:
        done, sel, err, status, wall, cpu = runs[name]
        rate = done / timed(runs[name]) if timed(runs[name]) > 0 else float("inf")
        comparable = np.isfinite(best_err[:done]) & (status != Status.ERROR)
        diff = float(np.max(np.abs(err[comparable] - best_err[:done][comparable]))) \
            if comparable.any() and exact_names else None
        card_diff = None
        if config.objective == "cardinality" and exact_names:
            both = comparable & (status == Status.OPTIMAL) & \
                (best_card[:done] != np.iinfo(np.int64).max)
            card_diff = int(np.max(np.abs(sel[both].sum(axis=1) - best_card[:done][both]))) \
                if both.any() else 0
        counts = np.bincount(status.astype(np.int64), minlength=len(Status))
        note = ""
        if done < min(config.count, config.baseline_count if name == config.baseline else config.count):
            note = f"timed on the first {done} instances (time budget {config.time_budget:g}s)"
        elif done < config.count:
            note = f"timed on the first {done} instances (baseline sample)"
        rows.append(SolverBenchRow(
            backend=name, objective=config.objective, instances=int(done),
            seconds=timed(runs[name]), wall_seconds=wall,
            instances_per_second=rate, cores=1,
            exact=bool(get_backend_class(parse_solver_spec(name)[0]).capabilities.exact),
            max_error_diff=diff,
            speedup_vs_baseline=(rate / base_rate) if base_rate else None,
            baseline=name == config.baseline, n=config.n, eps=config.eps, cpu_seconds=cpu,
            optimal=int(counts[Status.OPTIMAL] + counts[Status.FEASIBLE]),
            infeasible=int(counts[Status.INFEASIBLE]),
            other=int(counts[Status.TIMEOUT] + counts[Status.ERROR]),
            max_cardinality_diff=card_diff, clock=config.clock, note=note,
        ))
    return rows


def bench_solver_sizes(config: SolverBenchConfig, sizes) -> list[SolverBenchRow]:
    """:func:`bench_solvers` at each n of ``sizes`` (same instances seed, one table)."""
    from dataclasses import replace
    rows = []
    for n in sizes:
        rows.extend(bench_solvers(replace(config, n=int(n))))
    return rows


# ----------------------------------------------------------------------------- approximate

@dataclass
class ApproximateBenchConfig:
    """What `bench approximate` runs (a subset of `approximate`'s options)."""

    #: None: the seeded synthetic 784-300-10 target
    target: Path | None = option(None, flag="--target",
                                 help="target file or train-target folder (default: seeded synthetic 784-300-10)")
    solver: str = option(DEFAULT_SOLVER, flag="--solver", help="solver backend")
    objective: str = option("error", flag="--objective", choices=("error", "feasible", "cardinality"),
                            help="subset-sum objective (as approximate's --objective)")
    weight_eps: float = option(0.01, flag="--weight-eps", help="per-weight tolerance τ")
    #: 'mnist' or None
    data: str | None = option(None, flag="--data", choices=("mnist",), help="evaluate on this data set")
    data_dir: Path | None = option(None, flag="--data-dir", help="folder with the data set files")
    workers: int | None = option(None, flag="--workers", help="solver processes (default: all cores)")
    #: None: a temporary folder, removed afterwards
    out: Path | None = option(None, flag="--out",
                              help="run folder to write (overwritten; default: a temporary folder, removed)")
    seed: int = option(0, flag="--seed", help="seed of the random network")
    input_domain: str | None = None
    plots: bool = option(True, flag="--no-plots", help="do not write PNG plots")
    #: block width mode as approximate's --width; None: approximate's default (adaptive)
    width: str | None = option(None, flag="--width", choices=("formula", "auto", "adaptive"),
                               help="block width mode, as approximate's --width (default: approximate's, adaptive)")
    extra: dict = field(default_factory=dict)   #: more ApproximateConfig fields

    def __post_init__(self) -> None:
        if not (math.isfinite(self.weight_eps) and self.weight_eps > 0):
            raise UserError(f"--weight-eps must be a positive number, got {self.weight_eps}")
        if self.workers is not None:
            limits.check_int("--workers", self.workers, 1, limits.MAX_COUNT)
        limits.check_int("--seed", self.seed, 0, limits.MAX_SEED)


STAGES = ("build", "solve", "certify", "evaluate", "write")


def _cpu_seconds() -> tuple[float, float]:
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime


def bench_approximate(config: ApproximateBenchConfig, progress=None) -> dict:
    """Run `approximate` once; wall time, core-seconds, peak memory and stage timings."""

    if config.target is None:
        target = synthetic_target(config.seed).target
    else:
        target = load_target(config.target)
    eval_data = emp_data = None
    radius = None
    domain = config.input_domain or target.metadata.get("input_domain")
    if config.data == "mnist":
        eval_data, emp_data, radius = evaluation_inputs(target.sizes[0], config.data_dir, config.seed)
        domain = domain or "nonnegative"
    elif config.data is not None:
        raise UserError(f"unknown data set {config.data!r}; choose 'mnist'")
    domain = domain or "signed"
    acfg = ApproximateConfig(
        construction=ConstructionConfig(input_domain=domain, seed=config.seed, eps=config.weight_eps,
                                        **({} if config.width is None else {"width": config.width})),
        solve=SolveConfig(solver=config.solver, objective=config.objective, workers=config.workers),
        weight_eps=config.weight_eps, input_radius=radius or 1.0, allow_infeasible=True,
        overwrite=True, plots=config.plots, **config.extra,
    )
    tmp = None
    out = config.out
    if out is None:
        tmp = out = Path(tempfile.mkdtemp(prefix="subsetsum-lth-bench-"))
    try:
        cpu0, kids0 = _cpu_seconds()
        t0 = time.perf_counter()
        report = approximate(target, acfg, out, progress=progress, eval_data=eval_data,
                             empirical_data=emp_data)
        wall = time.perf_counter() - t0
        cpu1, kids1 = _cpu_seconds()
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    me = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    timings = {s: float(report.get("timings", {}).get(s, 0.0)) for s in STAGES}
    for s, v in report.get("timings", {}).items():
        timings.setdefault(s, float(v))
    instances = int(sum(L.get("instances", 0) for L in report.get("layers", [])))
    out_rep = {
        "target": str(config.target) if config.target else "synthetic 784-300-10",
        "target_sizes": report.get("target_sizes"),
        "solver": config.solver, "objective": config.objective, "weight_eps": config.weight_eps,
        "width": acfg.construction.width,
        "workers": config.workers if config.workers is not None else (os.cpu_count() or 1),
        "data": config.data,
        "instances": instances,
        "wall_seconds": wall,
        "core_seconds": (cpu1 - cpu0) + (kids1 - kids0),
        "process_cpu_seconds": cpu1 - cpu0,
        "children_cpu_seconds": kids1 - kids0,
        "peak_memory_mb": me,
        "peak_child_memory_mb": kids,
        "timings": timings,
        "instances_per_second_solve": instances / timings["solve"] if timings["solve"] > 0 else None,
        "certified_bound": report.get("certified_bound"),
        "empirical_bound": report.get("empirical_bound"),
        "infeasible_count": report.get("infeasible_count"),
        "out": None if tmp is not None else str(out),
    }
    for key in ("target_accuracy", "pruned_accuracy", "prediction_agreement"):
        if key in report:
            out_rep[key] = report[key]
    return out_rep
