"""Refuse what cannot finish: a cost and memory estimate of a run before anything is allocated.

Exact subset-sum search costs about ``2^{n/2}`` per instance (meet in the middle: the subset
sums of both halves of the n live coefficients), so the solve time of a layer follows from the
block width m alone: an instance's live count n is Binomial(m, 1/2) (a unit is live when its
input weight, or its bias in the bias block, is positive in the instance's sign half).

The rate is calibrated on the mitm backend (~30k instances/s per core at n = 21, i.e. ~9e7
enumerated half-sums per second) and rounded *up* to :data:`SUMS_PER_SECOND`, so the estimate
is on the fast side: a refusal means the run truly cannot finish in the budget. Instances
beyond the exact backends' enumeration limit (:data:`EXACT_MAX_N`) are charged at least the
per-instance time limit, which is what the time-limited fallback then spends on them.

Memory: g's dense float32 parameters, its uint8 masks and the float64 copy used by the
certificate, plus each layer's float64 coefficient table (instances x live coefficients).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from subsetsum_lth.construction import MAX_RANDOM_ENTRIES
from subsetsum_lth.errors import UserError
from subsetsum_lth.resources import (  # noqa: F401  (re-exported: the solve layer's callers use them here)
    MAX_COUNT, MAX_EPOCHS, MAX_HOURS, MAX_RETRIES, MAX_SAMPLES, MAX_SECONDS, MAX_SEED, MAX_STEPS, available_cores, cap_threads, cap_workers, check_float, check_int, check_memory, check_seconds, human_bytes, memory_limit, physical_memory)
from subsetsum_lth.solvers.interrupt import MAX_TIME_LIMIT
from subsetsum_lth.solvers.fixsearch import DEFAULT_ROUNDS, MIN_FREE
from subsetsum_lth.solvers.mitm import MAX_N as MITM_MAX_N
from subsetsum_lth.solvers.registry import get_backend_class

log = logging.getLogger(__name__)

#: enumerated half-sums per second and core (measured ~9e7 for mitm at n = 21; rounded up)
SUMS_PER_SECOND = 1e8
#: largest live count any exact backend here enumerates: mitm's reach (auto's exact path, torch-mitm)
EXACT_MAX_N = MITM_MAX_N
#: largest live count adaptive growth gives an instance with the backends that answer beyond
#: EXACT_MAX_N by fix-and-search (auto, and mitm through its fallback to auto): a bias b far
#: outside [-1, 1] needs ~8|b| live coefficients (E|v beta| = 1/4 per unit, half of them of
#: b's sign), so 256 reaches |b| ~ 28; the --max-hours budget still applies
GROWTH_MAX_N = 256
#: default per-instance time limit (seconds) of the solvers that take one, and of the fallback
DEFAULT_TIME_LIMIT = 10.0
#: the per-instance time limit is at most this (seconds; the solver layer's own cap, one hour):
#: a longer native solve is not a per-instance limit any more, and it is what a stop waits for
#: where the solver cannot be stopped from outside
MAX_INSTANCE_SECONDS = MAX_TIME_LIMIT
#: a fresh process pool whose workers are not all up (spawned, package imported) after this many
#: seconds counts as broken (only with --batch-timeout, whose clocks wait for the workers)
WORKER_START_SECONDS = 300.0
#: default budget of the estimated solve time (hours), ``--max-hours``
DEFAULT_MAX_HOURS = 24.0
#: bytes per parameter of g held at the peak: float32 weights, uint8 masks, float64 certificate copy
_BYTES_PER_PARAM = 4 + 1 + 8
#: bytes per coefficient-table entry: float64 table, a float64 batch copy, a bool selection
_BYTES_PER_COEF = 8 + 8 + 1


def _log2_binom_pmf(m: int, n: int) -> float:
    return (math.lgamma(m + 1) - math.lgamma(n + 1) - math.lgamma(m - n + 1)) / math.log(2) - m


def _log2_add(a: float, b: float) -> float:
    if a == -math.inf:
        return b
    if b == -math.inf:
        return a
    hi, lo = max(a, b), min(a, b)
    return hi + math.log2(1.0 + 2.0 ** (lo - hi))


def log2_instance_seconds(m: int, reach: int | None, time_limit: float) -> float:
    """log2 of the expected seconds of one instance over n ~ Binomial(m, 1/2): exact search
    ``(2^{floor(n/2)} + 2^{ceil(n/2)}) / SUMS_PER_SECOND``, and at least ``time_limit`` when n is
    beyond ``reach``. Log scale: m may be in the millions."""
    rate = math.log2(SUMS_PER_SECOND)
    if m > 4000:   # the binomial is concentrated: use its mean (n = m/2) and the tail bound
        n = m / 2
        exact = n / 2 + 1 - rate
        return max(exact, math.log2(time_limit)) if reach is not None and n > reach else exact
    total = -math.inf
    for n in range(m + 1):
        exact = math.log2(2.0 ** (n // 2) + 2.0 ** (n - n // 2)) - rate
        cost = max(exact, math.log2(time_limit)) if reach is not None and n > reach else exact
        total = _log2_add(total, _log2_binom_pmf(m, n) + cost)
    return total


@dataclass
class LayerEstimate:
    layer: int
    block_width: int
    instances: int
    typical_n: float          #: expected live coefficients per instance (m / 2)
    log2_seconds: float       #: core-seconds of the layer, log2
    memory_bytes: float       #: coefficient table of the layer


@dataclass
class CostEstimate:
    layers: list[LayerEstimate]
    workers: int
    parameters: int           #: dense parameters of g
    reach: int | None

    @property
    def log2_core_seconds(self) -> float:
        total = -math.inf
        for L in self.layers:
            total = _log2_add(total, L.log2_seconds)
        return total

    @property
    def hours(self) -> float:
        """Wall hours with ``workers`` cores (inf when beyond float range)."""
        x = self.log2_core_seconds - math.log2(self.workers * 3600.0)
        return 2.0 ** x if x < 1000 else math.inf

    @property
    def memory_bytes(self) -> float:
        return self.parameters * _BYTES_PER_PARAM + max((L.memory_bytes for L in self.layers), default=0.0)

    def describe_time(self) -> str:
        return _human_hours(self.log2_core_seconds - math.log2(self.workers * 3600.0))


def _human_hours(log2_hours: float) -> str:
    if log2_hours < 20:
        h = 2.0 ** log2_hours
        if h < 1:
            return f"{h * 60:.1f} minutes"
        return f"{h:,.1f} hours"
    return f"10^{log2_hours * math.log10(2):.0f} hours"


def _solver_reach(solver: str) -> int | None:
    """Exact enumeration reach of a backend: its ``capabilities.reach`` (mitm, torch-mitm and
    auto, which routes what it reaches to mitm: EXACT_MAX_N); None for OR-Tools only and the MIP
    backends (no enumeration limit), and for a backend that cannot be loaded."""
    try:
        return getattr(get_backend_class(solver).capabilities, "reach", None)
    except Exception:
        return None


_capped_noted: set = set()


def instance_time_limit(requested: float | None, note: bool = False) -> float:
    """The per-instance solver time limit a solve uses: ``requested`` (None: the default
    :data:`DEFAULT_TIME_LIMIT`), at most :data:`MAX_INSTANCE_SECONDS`; with ``note``, a capped
    value is said once (a warning) per value and process."""
    limit = float(requested or DEFAULT_TIME_LIMIT)
    if limit > MAX_INSTANCE_SECONDS:
        if note and limit not in _capped_noted:
            _capped_noted.add(limit)
            log.warning("--time-limit %g s capped to %g s per instance (the most a solver call is "
                        "allowed to run)", limit, MAX_INSTANCE_SECONDS)
        return MAX_INSTANCE_SECONDS
    return limit


def growth_reach(solver: str, objective: str = "error") -> int | None:
    """Largest live count growth may give an instance: GROWTH_MAX_N for the backends that answer
    beyond exact search by fix-and-search (auto, and the mitm backends, whose rows beyond it fall
    back to auto) with the objectives it serves (error, feasible); exact search's reach for the
    cardinality objective; None (no cap) for MIP backends."""
    reach = _solver_reach(solver)
    if reach is None:
        return None
    return GROWTH_MAX_N if objective in ("error", "feasible") else reach


def fixsearch_seconds(n: int) -> float:
    """Estimated seconds of one fix-and-search instance of ``n`` live coefficients (every round
    of :data:`subsetsum_lth.solvers.fixsearch.DEFAULT_ROUNDS`, each an exact search over the
    smallest free part and a greedy over the n others): on the fast side, as the other figures."""
    k = MIN_FREE
    return DEFAULT_ROUNDS * ((2.0 ** (k // 2) + 2.0 ** (k - k // 2)) + 4 * n) / SUMS_PER_SECOND


def estimate(plans, solver: str, workers: int, time_limit: float | None) -> CostEstimate:
    """Cost and memory estimate of solving every instance of ``plans`` (LayerPlans)."""
    reach = _solver_reach(solver)
    limit = instance_time_limit(time_limit, note=True)
    layers = []
    params = 0
    for pl in plans:
        halves = 2 if pl.signed_input else 1
        instances = (pl.p * halves + (1 if pl.has_bias else 0)) * pl.q
        m = int(pl.m)
        n_max = m / 2 + 1.5 * math.sqrt(m) + 1        # a generous upper quantile of Binomial(m, 1/2)
        layers.append(LayerEstimate(pl.index, m, instances, m / 2,
                                    math.log2(max(instances, 1)) + log2_instance_seconds(m, reach, limit),
                                    instances * n_max * _BYTES_PER_COEF))
        params += pl.held_entries() + pl.hidden + pl.q
    return CostEstimate(layers, max(1, int(workers)), params, reach)


def check_reach(est: CostEstimate, max_hours: float, eps_flag: str) -> None:
    """UserError (exit 2) with the estimate and the option to change when the run is beyond reach:
    more than ``max_hours`` of solving, or more memory than this machine has."""
    worst = max(est.layers, key=lambda L: L.log2_seconds)
    fix = (f"lower the random network's width ({eps_flag} larger, or --C / --block-width smaller)")
    if est.hours > max_hours:
        beyond = (f"; exact search enumerates at most n = {est.reach}, larger instances only get the "
                  f"time-limited fallback" if est.reach is not None and worst.typical_n > est.reach else "")
        raise UserError(
            f"this run would not finish: exact subset-sum search costs ~2^(n/2) per instance and layer "
            f"{worst.layer + 1} has {worst.instances:,} instances of ~{worst.typical_n:,.0f} live "
            f"coefficients (block width m = {worst.block_width:,}){beyond}; estimated solve time "
            f"{est.describe_time()} on {est.workers} core(s), above --max-hours {max_hours:g}. "
            f"To fix: {fix}, or raise --max-hours if the estimate is acceptable")
    ram = physical_memory()
    if ram is not None and est.memory_bytes > 0.9 * ram:
        raise UserError(
            f"this run would need about {est.memory_bytes / 1e9:,.1f} GB of memory (g has "
            f"{est.parameters:,} parameters; the largest layer's instance table "
            f"{max(L.memory_bytes for L in est.layers) / 1e9:,.1f} GB), more than this machine's "
            f"{ram / 1e9:.1f} GB; to fix: {fix}")


def check_growth(plans, grow: int | None, max_growth: int | None, width_mode: str, reach: int | None) -> None:
    """Refuse an explicit ``--grow`` whose first step already puts a grown block's instances beyond
    what growth allows (``reach``: :func:`growth_reach`; the default growth is only capped at run
    time: see :func:`growth_within_reach`)."""
    if grow is None or width_mode == "formula" or reach is None or max_growth == 0:
        return
    for pl in plans:
        if pl.grow and (pl.m + pl.grow) / 2 > reach:
            most = max(1, 2 * reach - pl.m)
            raise UserError(
                f"--grow {pl.grow:,}: one growth step makes a block of layer {pl.index + 1} "
                f"{pl.m + pl.grow:,} units wide (~{(pl.m + pl.grow) / 2:,.0f} live coefficients per "
                f"instance), beyond exact search and fix-and-search (growth gives an instance at most "
                f"n = {reach}); lower --grow (at most {most} here) or use --width formula")


def instance_seconds(n: int, reach: int | None, time_limit: float, beyond: int | None = None) -> float:
    """Estimated seconds of one instance of ``n`` live coefficients: exact search
    ``(2^{floor(n/2)} + 2^{ceil(n/2)}) / SUMS_PER_SECOND``, at least ``time_limit`` beyond ``reach``
    -- except up to ``beyond`` (:func:`growth_reach`), where fix-and-search answers
    (:func:`fixsearch_seconds`)."""
    n = int(n)
    if reach is not None and beyond is not None and reach < n <= beyond:
        return fixsearch_seconds(n)
    exact = (2.0 ** (n // 2) + 2.0 ** (n - n // 2)) / SUMS_PER_SECOND
    return max(exact, time_limit) if reach is not None and n > reach else exact


def solve_workers(sc, executor=None) -> int:
    """Cores a solve will use, for the cost estimate (never more than this machine's)."""
    if executor is not None:
        return int(getattr(executor, "capacity", None) or getattr(executor, "_max_workers", None) or 1)
    return min(sc.workers or available_cores(), available_cores())


@dataclass
class GrowthBudget:
    """What adaptive growth may still spend over a whole run: estimated core-seconds of re-solving
    and float32 entries of g (the construction's allocation cap). :meth:`charge` spends only
    when both suffice."""

    core_seconds: float
    entries: int

    def charge(self, core_seconds: float, entries: int) -> str | None:
        """Spend, or return why not (and spend nothing)."""
        if entries > self.entries:
            return f"g would exceed the {MAX_RANDOM_ENTRIES:,} float32 weights this tool allocates"
        if core_seconds > self.core_seconds:
            return ("the re-solves would pass the --max-hours budget of the estimated solve time "
                    f"(~{core_seconds:,.0f} core-seconds asked, {max(self.core_seconds, 0):,.0f} left)")
        self.core_seconds -= core_seconds
        self.entries -= int(entries)
        return None


def growth_budget(plans, max_hours: float) -> GrowthBudget:
    """The :class:`GrowthBudget` of a run of ``plans`` (before any growth): ``max_hours`` of
    estimated single-core re-solving — not scaled by the worker count, so that where growth stops
    (and so the masks of a seed) never depends on ``--workers`` — and the entries g may still
    add before the construction's allocation cap."""
    entries = sum(pl.held_entries() for pl in plans)
    return GrowthBudget(max_hours * 3600.0, MAX_RANDOM_ENTRIES - entries)


def growth_within_reach(live_after, reach: int | None):
    """Boolean mask: a grown group's live count (its instances' n) stays within exact search's
    reach. Growth is driven by the live units of the groups that still have an instance outside
    τ, not by the block width: a block of 60 units may hold only 14 live ones in a sign half."""
    import numpy as np
    live = np.asarray(live_after)
    if reach is None:
        return np.ones(live.shape, dtype=bool)
    return live <= reach
