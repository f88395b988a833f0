"""``auto``, the default backend: a portfolio whose routing is the data table :data:`ROUTES`
(objective x live count -> engine), printed by ``subsetsum-lth solvers``.

Exact meet-in-the-middle where it reaches (``mitm.MAX_N``, 40 live coefficients), fix-and-search
beyond it (part of the subset fixed, the rest searched exactly; growth is not capped by exact
search's reach), OR-Tools as the MIP engine (CP-SAT for small cardinality instances, knapsack
B&B for the rows fix-and-search leaves). Gurobi only on request (``--solver gurobi``).

The engines are the OR-Tools class's (:mod:`subsetsum_lth.solvers.ortools_knapsack`); auto
gives it the options this table says, so the table is the routing, not a description of it.
Every row records the engine that produced it (``BatchResult.engines``); a row another engine
finishes (mitm settling a knapsack answer within rounding of τ, a CP-SAT instance it could not
prove, a knapsack after fix-and-search) records that engine.

Run folders written before ``auto`` existed name this routing ``ortools`` (it was that
backend's default then): :data:`LEGACY_NAMES` reads them as ``auto``.
"""
from __future__ import annotations

from dataclasses import dataclass

from . import fixsearch
from .base import Capabilities
from .mitm import MAX_N
from .ortools_knapsack import MITM, ORTOOLS, OrToolsKnapsackSolver


@dataclass(frozen=True)
class Route:
    objective: str
    lo: int                 #: live counts lo..hi (hi None: no upper end)
    hi: int | None
    engine: str
    how: str

    def takes(self, objective: str, n: int) -> bool:
        return objective == self.objective and self.lo <= n and (self.hi is None or n <= self.hi)


#: cardinality instances up to this many live coefficients go to CP-SAT (mitm above, to its reach)
CPSAT_CARDINALITY_MAX_N = 12
#: feasible instances of more live coefficients try a coarse knapsack first (any subset within τ)
COARSE_FEASIBLE_MIN_N = 34

ROUTES: tuple[Route, ...] = (
    Route("error", 0, MAX_N, MITM, "exact meet-in-the-middle"),
    Route("error", MAX_N + 1, None, fixsearch.ENGINE,
          "fix part of the subset, search the rest exactly; OR-Tools knapsack B&B (time-limited) "
          "for rows it leaves"),
    Route("feasible", 0, COARSE_FEASIBLE_MIN_N, MITM, "exact meet-in-the-middle"),
    Route("feasible", COARSE_FEASIBLE_MIN_N + 1, MAX_N, ORTOOLS,
          "coarse knapsack (any subset within τ); mitm for rows it leaves"),
    Route("feasible", MAX_N + 1, None, fixsearch.ENGINE,
          "fix-and-search; then a coarse knapsack, then the time-limited knapsack B&B"),
    Route("cardinality", 0, CPSAT_CARDINALITY_MAX_N, ORTOOLS,
          "CP-SAT (two phases); mitm for rows it cannot prove"),
    Route("cardinality", CPSAT_CARDINALITY_MAX_N + 1, MAX_N, MITM, "exact cardinality search"),
    Route("cardinality", MAX_N + 1, None, ORTOOLS, "CP-SAT (time-limited)"),
)

#: names old run folders give this routing -> the backend that now holds it
LEGACY_NAMES = {"ortools": "auto"}


def route(objective: str, n: int) -> Route:
    """The row of :data:`ROUTES` for an instance of ``n`` live coefficients."""
    for r in ROUTES:
        if r.takes(objective, n):
            return r
    raise KeyError(f"no route for objective {objective!r}, n = {n}")


def routing_table() -> list[dict]:
    """:data:`ROUTES` as plain dicts (``subsetsum-lth solvers --json``)."""
    return [{"objective": r.objective, "live_min": r.lo, "live_max": r.hi, "engine": r.engine,
             "how": r.how} for r in ROUTES]


def _options() -> dict:
    """The OR-Tools class's options that make it follow :data:`ROUTES`."""
    card = [r for r in ROUTES if r.objective == "cardinality" and r.engine == ORTOOLS and r.lo == 0]
    coarse = [r for r in ROUTES if r.objective == "feasible" and r.engine == ORTOOLS]
    exact = [r for r in ROUTES if r.objective == "error" and r.engine == MITM]
    return {"knapsack_max_n": 0, "cardinality_max_n": card[0].hi, "coarse_min_n": coarse[0].lo - 1,
            "fixsearch": True, "exact_max_n": exact[0].hi}


_ROUTED = _options()


class AutoSolver(OrToolsKnapsackSolver):
    """The portfolio: :data:`ROUTES` decides which engine takes each instance."""

    name = "auto"
    capabilities = Capabilities(exact=True, objectives=("error", "feasible", "cardinality"),
                                float_coefficients=True, max_n=None, reach=MAX_N)
    description = (f"portfolio (default): exact meet-in-the-middle up to n = {MAX_N}, fix-and-search "
                   "beyond it, OR-Tools CP-SAT for small cardinality instances (routing: "
                   "'subsetsum-lth solvers')")
    default_batch = 1024
    fallback_rank = 1               # takes any n

    # the OR-Tools class's options, with the defaults the table gives (bench reads the signature)
    def __init__(self, time_limit: float | None = None, knapsack_max_n: int | None = _ROUTED["knapsack_max_n"],
                 knapsack_time_limit: float = 0.25, cardinality_deterministic_time: float = 5.0,
                 cardinality_max_n: int | None = _ROUTED["cardinality_max_n"],
                 fixsearch: bool = _ROUTED["fixsearch"], exact_max_n: int | None = _ROUTED["exact_max_n"],
                 fixsearch_free: int | None = None, fixsearch_rounds: int = fixsearch.DEFAULT_ROUNDS,
                 coarse_min_n: int | None = _ROUTED["coarse_min_n"], **options):
        super().__init__(time_limit=time_limit, knapsack_max_n=knapsack_max_n,
                         knapsack_time_limit=knapsack_time_limit,
                         cardinality_deterministic_time=cardinality_deterministic_time,
                         cardinality_max_n=cardinality_max_n, fixsearch=fixsearch, exact_max_n=exact_max_n,
                         fixsearch_free=fixsearch_free, fixsearch_rounds=fixsearch_rounds,
                         coarse_min_n=coarse_min_n, **options)
