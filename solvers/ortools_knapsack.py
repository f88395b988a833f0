"""OR-Tools engine: knapsack branch-and-bound (error, feasible) and CP-SAT (cardinality).

One class serves two backends. ``ortools`` is OR-Tools only: every error/feasible instance goes
to the knapsack B&B, every cardinality instance to CP-SAT (no fix-and-search: growth beyond
exact search is not capped for it, each instance is a time-limited knapsack). The rows OR-Tools
cannot decide on its own are settled exactly by mitm and record "mitm" as their engine: a
knapsack that does not prove its optimum within ``knapsack_time_limit`` (n <= mitm's reach),
an answer within integer rounding of τ, CP-SAT's limit on cardinality. ``auto`` (the default,
:mod:`subsetsum_lth.solvers.portfolio`) is this class with the options its routing table
gives: exact meet-in-the-middle up to its reach (``mitm.MAX_N``), fix-and-search beyond it,
CP-SAT for small cardinality instances. Every row records the engine that produced it
(``BatchResult.engines``: "mitm", "fixsearch" or "ortools").

Why mitm takes what it reaches in ``auto``: it is faster at every size, and the
branch-and-bound has no useful bound on this problem (profit = weight): on one core, error
objective, construction-shaped instances (``subsetsum-lth bench solvers --n N --solvers
mitm,ortools --clock cpu``, 5,000 instances, everything <= 12 to the knapsack), mitm solved
832k / 662k / 785k / 529k / 305k instances/s at n = 4 / 6 / 8 / 10 / 12 against the knapsack's
21k / 14k / 17k / 10k / 4.9k (39-62x), with the same optimal errors; the knapsack costs ~5 ms
at n = 16 and ~40 ms at n = 21. Beyond mitm's reach (``exact_max_n``) the rows go to
fix-and-search (:mod:`subsetsum_lth.solvers.fixsearch`: fix part of the subset, search the rest
exactly by meet-in-the-middle, re-fix until within tau; status FEASIBLE, or OPTIMAL/INFEASIBLE
where the target is at or beyond the range of the subset sums); ~9-19k instances/s at n = 48-96,
``subsetsum-lth bench solvers --n 48,64,96``. The rows it does not settle, and every row beyond
the reach with ``fixsearch=False``, go to the knapsack B&B with the backend's ``time_limit``
(10 s if unset; half of it per knapsack, at most ``interrupt.MAX_UNSTOPPABLE_SECONDS``, since a
knapsack cannot be interrupted; TIMEOUT, or FEASIBLE when its answer is within tolerance, if it
cannot prove the optimum). ``knapsack_max_n=k`` sends instances of <= k live coefficients to
the knapsack instead, ``knapsack_max_n=None`` (``ortools``) sends everything.

The knapsack formulation. Flip the negative coefficients (s'_i = 1 - s_i where c_i < 0):
every weight becomes |c_i| >= 0 and the target becomes t' = t - sum_{c_i < 0} c_i. The best
sum <= t' is one 0/1 knapsack (profits = weights = scaled |c|, capacity floor(scaled t')); the
best sum >= t' is the complement knapsack (capacity W - ceil(scaled t')). The better of the two,
by the error recomputed in float64, is the optimum up to the rounding of the integer scaling
(<= n / scale, ~1e-10 with scale the power of two with sum|c| * scale in [2^39, 2^40), see
:mod:`subsetsum_lth.solvers._scaled`). A row whose answer is outside tau by less than that rounding is
settled exactly by mitm (:mod:`subsetsum_lth.solvers._settle`), so the within-tau test is the float64 one.
A knapsack that hits ``knapsack_time_limit`` falls back to mitm, so answers stay exact.

Feasible objective: as the error objective, except beyond ``coarse_min_n`` live coefficients
(auto: 34, from its routing table; or everywhere with ``knapsack_max_n=None``), where a *coarse* knapsack pair comes first (quantum
tau / (2 (n + 2)): fast at any n, ~0.3 ms at n = 21; any subset within tolerance will do),
then the exact path for the rows it did not settle.

Cardinality: instances with more than ``cardinality_max_n`` live coefficients (auto: 12; up to
mitm's reach) go to mitm's exact cardinality search (vectorised; CP-SAT needs ~10 ms per instance at n = 21,
mitm ~30 us). The others: CP-SAT (with the presolve workaround of :func:`subsetsum_lth.solvers._scaled.
cp_solver`: OR-Tools 9.15 certified wrong minimal cardinalities on 2^40-scaled rows), two
phases per instance on the scaled integers with a *relaxed* tolerance (ceil(tau * scale) + n
+ 1, so infeasibility proofs are sound): minimise sum(s), then
with sum(s) fixed minimise the error. The result is verified with the float64 error; the
(measure-zero) rows where the relaxation let a slightly-out-of-tolerance subset through, and
rows where CP-SAT's deterministic time limit is hit, go to the exact mitm backend.
One worker, fixed seed, deterministic time limits: the same input gives the same subset.
"""
from __future__ import annotations

import importlib.util
import math
import time

import numpy as np

from . import fixsearch, mitm
from ._scaled import cp_solve, cp_solver, scaled_bound, scaled_ints, shift_for
from ._settle import settle_with_mitm
from .base import Capabilities, SolverBackend
from .instances import (BatchResult, InstanceBatch, Status, finalize, recompute_errors,
                        subset_errors)
from .interrupt import MAX_UNSTOPPABLE_SECONDS

#: Integer scale of the exact path: sum of scaled |c| = 2^40 (int64 headroom for CP-SAT sums).
_FINE_BITS = 40
#: the engine names its rows record (``BatchResult.engines``)
ORTOOLS = "ortools"
MITM = "mitm"


def _mitm():
    return mitm


class OrToolsKnapsackSolver(SolverBackend):
    """OR-Tools only: knapsack B&B (error/feasible) and CP-SAT (cardinality) for every instance;
    mitm settles what they cannot decide (those rows record engine "mitm").

    Options (the defaults are OR-Tools only; ``auto`` sets them from its routing table):
        knapsack_max_n: largest number of live coefficients sent to the knapsack B&B for the
            error/feasible objectives (None, the default: no limit, everything goes to the
            knapsack; auto: 0, mitm takes every instance it reaches).
        knapsack_time_limit: seconds per knapsack before falling back to mitm (default 0.25).
        cardinality_deterministic_time: CP-SAT deterministic time limit per phase (default 5).
        cardinality_max_n: largest number of live coefficients sent to CP-SAT for the
            cardinality objective (None, the default: no limit; auto: 12); larger instances, up
            to mitm's reach, use mitm.
        coarse_min_n: feasible objective, with a ``knapsack_max_n``: rows of more live
            coefficients try a coarse knapsack first (default: mitm's reach; auto: 34).
        fixsearch: error/feasible rows of more than ``exact_max_n`` live coefficients go to
            fix-and-search first (default False; auto: True); False: straight to the knapsack.
        exact_max_n: with ``fixsearch``, rows up to this many live coefficients are solved
            exactly (default mitm's reach, 40; smaller values only to test the fix-and-search
            path on small rows).
        fixsearch_free: free coefficients per fix-and-search round (default: from τ, 20-34).
        fixsearch_rounds: fix-and-search rounds per row (default 24).
    """

    name = "ortools"
    capabilities = Capabilities(exact=True, objectives=("error", "feasible", "cardinality"),
                                float_coefficients=True, max_n=None, reach=None)
    description = ("OR-Tools only: knapsack B&B (error/feasible) and CP-SAT (cardinality) for every "
                   "instance, time-limited; mitm settles the rows they cannot decide")
    default_batch = 1024
    fallback_rank = 2               # takes any n; after auto

    @classmethod
    def is_available(cls) -> tuple[bool, str | None]:
        if importlib.util.find_spec("ortools") is None:
            return False, "ortools is not installed: pip install ortools"
        return True, None

    def __init__(self, time_limit: float | None = None, knapsack_max_n: int | None = None,
                 knapsack_time_limit: float = 0.25, cardinality_deterministic_time: float = 5.0,
                 cardinality_max_n: int | None = None, fixsearch: bool = False,
                 exact_max_n: int | None = None, fixsearch_free: int | None = None,
                 fixsearch_rounds: int = fixsearch.DEFAULT_ROUNDS, coarse_min_n: int | None = None,
                 **options):
        super().__init__(time_limit=time_limit, **options)
        self.fixsearch = bool(fixsearch)
        self.exact_max_n = _mitm().MAX_N if exact_max_n is None else int(exact_max_n)
        self.coarse_min_n = _mitm().MAX_N if coarse_min_n is None else int(coarse_min_n)
        self.fixsearch_free = fixsearch_free
        self.fixsearch_rounds = int(fixsearch_rounds)
        self.knapsack_max_n = knapsack_max_n
        self.knapsack_time_limit = min(float(knapsack_time_limit), MAX_UNSTOPPABLE_SECONDS)
        self.cardinality_deterministic_time = float(cardinality_deterministic_time)
        self.cardinality_max_n = cardinality_max_n

    # ------------------------------------------------------------------ public

    def solve(self, batch: InstanceBatch) -> BatchResult:
        t0, selections, status, messages = self.start(batch)
        k = len(batch)
        engines = np.full(k, ORTOOLS, dtype=object)    # knapsack B&B / CP-SAT unless set below
        if k:
            if batch.objective == "cardinality":
                self._solve_cardinality(batch, selections, status, messages, engines)
            else:
                self._solve_error(batch, selections, status, messages, engines)
        return finalize(batch, selections, status, self.name, time.perf_counter() - t0, messages,
                        engines)

    # ------------------------------------------------------------------ error / feasible

    def _solve_error(self, batch, selections, status, messages, engines) -> None:
        from ortools.algorithms.python import knapsack_solver

        solver = knapsack_solver.KnapsackSolver(
            knapsack_solver.SolverType.KNAPSACK_MULTIDIMENSION_BRANCH_AND_BOUND_SOLVER,
            "subsetsum")
        feasible_only = batch.objective == "feasible"
        proven = np.zeros(len(batch), dtype=bool)   # selection is the exact min-error subset
        band = np.zeros(len(batch))    # knapsack rows: the integer rounding, in real units
        # routing, vectorised (padding is zero, so it never counts as a live nonzero)
        if self.knapsack_max_n is None:
            small_rows = np.ones(len(batch), dtype=bool)
            coarse_rows = feasible_only & (batch.tolerances > 0)
        else:
            small_rows = np.count_nonzero(batch.coefficients, axis=1) <= self.knapsack_max_n
            coarse_rows = feasible_only & (batch.tolerances > 0) & (batch.counts > self.coarse_min_n)
        if self.fixsearch:
            # beyond exact search: fix part of the subset, search the rest exactly; the rows it
            # settles leave the routing, the others go on below (knapsack B&B, time-limited)
            settled = self._fix_and_search(batch, selections, status)
            engines[settled] = fixsearch.ENGINE
            small_rows &= ~settled
            coarse_rows &= ~settled
        else:
            settled = np.zeros(len(batch), dtype=bool)
        # a target at or beyond an end of the range of the subset sums: the subset reaching that
        # end is the exact min-error subset (no search; most growth steps of a large bias)
        ends, end_sel, _ = fixsearch.range_settled(batch.targets, batch.coefficients, batch.counts,
                                                   batch.tolerances)
        keep = ~settled[ends] & ~small_rows[ends]
        ends = ends[keep]
        selections[ends] = end_sel[keep]
        # the closed form stands in for the exact search these rows are routed to
        engines[ends] = np.where(batch.counts[ends] <= self.exact_max_n, MITM, fixsearch.ENGINE)
        proven[ends] = True
        settled[ends] = True
        coarse_rows[ends] = False
        # rows whose min-error subset is still to be found exactly (mitm, one vectorised batch)
        exact_rows = list(np.flatnonzero(~small_rows & ~coarse_rows & ~settled))
        for i in np.flatnonzero(small_rows | coarse_rows):
            n = int(batch.counts[i])
            t = float(batch.targets[i])
            c = batch.coefficients[i, :n]
            tau = float(batch.tolerances[i])
            small = bool(small_rows[i])
            total = float(np.abs(c).sum())
            fine_shift = shift_for(total, _FINE_BITS) if total > 0 else 0
            if coarse_rows[i]:
                # coarse knapsack: fast at any n; any subset it returns within tolerance will do
                # (quantum <= tau / (2 (n + 2)))
                quanta = 2.0 * (n + 2) / tau      # inf for a subnormal tau: the fine scale then
                coarse_shift = min(math.ceil(math.log2(quanta)), fine_shift) if math.isfinite(quanta) else fine_shift
                sel, _ = _knapsack_pair(solver, t, c, coarse_shift, self.knapsack_time_limit,
                                        first_within=tau)
                if _error(t, c, sel) <= tau:
                    selections[i, :n] = sel
                    status[i] = Status.FEASIBLE
                    continue
            if not small:
                exact_rows.append(i)
                continue
            sel, ok = _knapsack_pair(solver, t, c, fine_shift, self.knapsack_time_limit)
            if ok:
                selections[i, :n] = sel
                proven[i] = True
                if total > 0:
                    band[i] = math.ldexp(2 * n + 4, -fine_shift)
            else:
                exact_rows.append(i)
        self._exact_fallback(batch, np.sort(np.array(exact_rows, dtype=np.int64)), selections,
                             proven, status, messages, engines)
        rows = np.flatnonzero(proven)
        err = recompute_errors(batch, selections)
        good = Status.FEASIBLE if feasible_only else Status.OPTIMAL
        status[rows] = np.where(err[rows] <= batch.tolerances[rows], int(good),
                                int(Status.INFEASIBLE))
        # knapsack answers outside tau by less than their rounding: another subset may be
        # within tau in float64 -> decide those rows exactly
        undecided = np.flatnonzero(proven & (band > 0) & (err > batch.tolerances)
                                   & (err <= batch.tolerances + band))
        settle_with_mitm(batch, undecided, selections, status, messages, self.name, engines)

    def _fix_and_search(self, batch, selections, status) -> np.ndarray:
        """Rows beyond ``exact_max_n`` by fix-and-search; returns the rows it settled (a subset
        within tau, or the exact answer of a target at or beyond the range of the subset sums)."""
        settled = np.zeros(len(batch), dtype=bool)
        rows = np.flatnonzero(batch.counts > self.exact_max_n)
        if rows.size == 0:
            return settled
        sub = batch.take(rows)
        sel, st = fixsearch.fix_and_search(sub.targets, sub.coefficients, sub.counts, sub.tolerances,
                                           free=self.fixsearch_free, rounds=self.fixsearch_rounds)
        ok = st != Status.TIMEOUT
        done = rows[ok]
        selections[done] = sel[ok]
        good = st[ok]
        if batch.objective == "feasible":
            good = np.where(good == Status.OPTIMAL, int(Status.FEASIBLE), good)
        status[done] = good
        settled[done] = True
        return settled

    def _exact_fallback(self, batch, rows, selections, proven, status, messages, engines=None) -> None:
        """Exact min-error subsets with mitm; rows beyond its reach keep a time-limited knapsack
        answer (FEASIBLE if within tolerance, else TIMEOUT). ``engines``: set per row (None:
        the rows keep the engine that decided them)."""
        if rows.size == 0:
            return
        mitm = _mitm()
        fits = batch.counts[rows] <= mitm.MAX_N
        ok_rows = rows[fits]
        if engines is not None:
            engines[ok_rows] = MITM
            engines[rows[~fits]] = ORTOOLS
        if ok_rows.size:
            sub = batch.take(ok_rows)
            selections[ok_rows] = mitm.min_error_selections(sub.targets, sub.coefficients,
                                                            sub.counts)
            proven[ok_rows] = True
        big = rows[~fits]
        if big.size:
            from ortools.algorithms.python import knapsack_solver
            solver = knapsack_solver.KnapsackSolver(
                knapsack_solver.SolverType.KNAPSACK_MULTIDIMENSION_BRANCH_AND_BOUND_SOLVER,
                "subsetsum")
            limit = self.time_limit if self.time_limit else 10.0
            for i in big:
                n = int(batch.counts[i])
                t, c = float(batch.targets[i]), batch.coefficients[i, :n]
                total = float(np.abs(c).sum())
                # each knapsack holds the GIL and cannot be stopped: a signal waits for it
                sel, ok = _knapsack_pair(solver, t, c,
                                         shift_for(total, _FINE_BITS) if total > 0 else 0,
                                         min(limit / 2, MAX_UNSTOPPABLE_SECONDS))
                selections[i, :n] = sel
                if ok:
                    proven[i] = True
                else:
                    within = _error(t, c, sel) <= batch.tolerances[i]
                    status[i] = Status.FEASIBLE if within else Status.TIMEOUT

    # ------------------------------------------------------------------ cardinality

    def _solve_cardinality(self, batch, selections, status, messages, engines) -> None:
        fallback = []
        infeasible = []
        mitm = _mitm()
        for i in range(len(batch)):
            n = int(batch.counts[i])
            if (self.cardinality_max_n is not None and n > self.cardinality_max_n
                    and n <= mitm.MAX_N):
                fallback.append(i)           # exact and vectorised: mitm's cardinality search
                continue
            t = float(batch.targets[i])
            c = batch.coefficients[i, :n]
            tau = float(batch.tolerances[i])
            outcome, sel = _cardinality_cpsat(t, c, tau, self.cardinality_deterministic_time)
            if outcome == "optimal" and _error(t, c, sel) <= tau:
                selections[i, :n] = sel
                status[i] = Status.OPTIMAL
            elif outcome == "infeasible":
                infeasible.append(i)
            else:
                fallback.append(i)
        infeasible = np.array(infeasible, dtype=np.int64)
        if infeasible.size:   # proved (sound relaxation); report the min-error subset
            proven = np.zeros(len(batch), dtype=bool)
            self._exact_fallback(batch, infeasible, selections, proven, status, messages)
            status[infeasible] = Status.INFEASIBLE
        fallback = np.array(fallback, dtype=np.int64)
        if fallback.size:
            fits = fallback[batch.counts[fallback] <= mitm.MAX_N]
            engines[fits] = MITM
            if fits.size:
                sub = batch.take(fits)
                sel, feas = mitm.solve_arrays(sub.targets, sub.coefficients, sub.counts,
                                              sub.tolerances, "cardinality")
                selections[fits] = sel
                status[fits] = np.where(feas, int(Status.OPTIMAL), int(Status.INFEASIBLE))
            for i in np.setdiff1d(fallback, fits):
                status[i] = Status.TIMEOUT
                messages[int(batch.ids[i])] = (
                    "ortools: CP-SAT did not prove the minimal cardinality within its limit")


def _error(t: float, c: np.ndarray, sel: np.ndarray) -> float:
    return float(subset_errors(t, c, sel))


def _knapsack_pair(solver, t: float, c: np.ndarray, shift: int, time_limit: float,
                   first_within: float | None = None) -> tuple[np.ndarray, bool]:
    """Best subset by the two knapsacks (sum <= t' and sum >= t'), on the integers
    rint(x * 2^shift). Returns (selection, proven).

    ``proven``: both knapsacks proved optimal (or the case is trivial), so the selection is the
    min-error subset up to the integer rounding. With ``first_within`` the second knapsack is
    skipped when the first already gives an error <= first_within.
    """
    n = c.shape[0]
    neg = c < 0
    tp = t - float(c[neg].sum())          # target of the flipped problem
    weights_real = np.abs(c)
    scaled_w = np.rint(np.ldexp(weights_real, shift))
    items = np.flatnonzero(scaled_w > 0)
    total_items = float(weights_real[items].sum())
    flipped = np.zeros(n, dtype=bool)
    if items.size == 0 or tp <= 0.0:
        return neg.copy(), True           # every flipped sum is >= 0 >= t'
    if tp >= total_items:
        flipped[items] = True             # every flipped sum is <= total <= t'
        return flipped ^ neg, True
    w = scaled_w[items].astype(np.int64)
    w_list = [int(x) for x in w]
    big_w = int(w.sum())
    target = math.ldexp(tp, shift)
    caps = [(min(max(int(math.floor(target)), 0), big_w), False),
            (min(max(big_w - int(math.ceil(target)), 0), big_w), True)]
    best, best_err, proven = None, math.inf, True
    for capacity, complement in caps:
        solver.set_time_limit(time_limit)
        solver.init(w_list, [w_list], [capacity])
        solver.solve()
        proven &= bool(solver.is_solution_optimal())
        x = np.array([solver.best_solution_contains(j) for j in range(items.size)], dtype=bool)
        if complement:
            x = ~x
        cand = np.zeros(n, dtype=bool)
        cand[items] = x
        cand ^= neg
        e = _error(t, c, cand)
        if e < best_err:
            best, best_err = cand, e
        if first_within is not None and best_err <= first_within:
            break
    return best, proven


def _cardinality_cpsat(t: float, c: np.ndarray, tau: float, det_time: float
                       ) -> tuple[str, np.ndarray | None]:
    """('optimal', selection) | ('infeasible', None) | ('unknown', None)."""
    from ortools.sat.python import cp_model

    n = c.shape[0]
    if not np.any(c):                         # only the empty subset exists, in effect
        if abs(t) <= tau:
            return "optimal", np.zeros(n, dtype=bool)
        return "infeasible", None
    shift = shift_for(float(np.abs(c).sum()) + abs(t), _FINE_BITS)
    coef = scaled_ints(c, shift)
    target = scaled_ints([t], shift)[0]
    cap = sum(abs(x) for x in coef) + abs(target) + 1      # > any subset's integer error
    # relaxation: contains every subset within tau in float64 (rounding <= (n + 1) / 2)
    slack = scaled_bound(tau, shift, n + 1, cap, up=True)
    model = cp_model.CpModel()
    s = [model.NewBoolVar(f"s{j}") for j in range(n)]
    total = cp_model.LinearExpr.WeightedSum(s, coef)
    model.Add(total - target <= slack)
    model.Add(target - total <= slack)
    model.Minimize(sum(s))
    solver = _cp_solver(det_time)
    st = cp_solve(solver, model)
    if st == cp_model.INFEASIBLE:
        return "infeasible", None
    if st != cp_model.OPTIMAL:
        return "unknown", None
    card = int(round(solver.ObjectiveValue()))
    hint = [int(solver.Value(v)) for v in s]
    # phase 2: among subsets of minimal cardinality, the smallest error
    err = model.NewIntVar(0, slack, "err")
    model.Add(total - target <= err)
    model.Add(target - total <= err)
    model.Add(sum(s) == card)
    model.Minimize(err)
    for v, h in zip(s, hint):
        model.AddHint(v, h)
    solver = _cp_solver(det_time)
    st = cp_solve(solver, model)
    if st != cp_model.OPTIMAL:
        return "unknown", None
    return "optimal", np.array([bool(solver.Value(v)) for v in s], dtype=bool)


def _cp_solver(det_time: float):
    return cp_solver(deterministic_time=det_time)
