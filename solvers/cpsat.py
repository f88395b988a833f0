"""Naive baseline: one CP-SAT model per instance (Pensia et al.'s MIP, on scaled integers).

Formulation (scale: the power of two with 2^39 <= (sum|c| + |t|) * scale < 2^40, see
:mod:`subsetsum_lth.solvers._scaled`; C = round(c * scale), T = round(t * scale)):
binary s, integer err >= |T - C.s|, err <= TAU.

* error: minimise err. TAU is the *relaxed* bound ceil(tau * scale) + n + 1, which contains
  every subset within tolerance despite the rounding, so INFEASIBLE is a sound proof; the
  min-error subset is then found by a second solve without the bound. Optimal up to the
  rounding (<= (n + 2) / scale ~ 1e-11).
* feasible: no objective, first solution, with the *conservative* bound
  floor(tau * scale) - n - 1 (every integer solution is within tolerance); if that is
  infeasible, the error model decides.
* cardinality: minimise sum(s) under the relaxed bound, then, with sum(s) fixed, minimise err.

Status from the error recomputed in float64 (:func:`subsetsum_lth.solvers.instances.subset_errors`;
OPTIMAL iff within tolerance for 'error'). A row whose integer optimum lies within the rounding
of tau but whose float64 error does not (the relaxed bound admits it, the float64 test refuses
it: e.g. t = 1e-103, c = [1], tau = 0, where the empty subset scales to error 0) cannot be
decided by the integer model; it is settled exactly by :mod:`subsetsum_lth.solvers._settle` (mitm).
``time_limit`` (seconds per solve, wall clock) gives FEASIBLE / TIMEOUT when hit; without it
the solver is deterministic (one worker, fixed seed). Measured: ~0.5 s per instance for the
error objective at n = 21 (proving optimality at full precision is hard for CP-SAT), ~10 ms
for min-cardinality.
"""
from __future__ import annotations

import importlib.util
import time

import numpy as np

from ._scaled import cp_solve, cp_solver, scaled_bound, scaled_ints, shift_for
from ._settle import settle_with_mitm
from .base import Capabilities, SolverBackend
from .instances import BatchResult, InstanceBatch, Status, finalize, subset_errors

_SCALE_BITS = 40


class CpSatSolver(SolverBackend):
    name = "cpsat"
    capabilities = Capabilities(exact=True, objectives=("error", "feasible", "cardinality"),
                                float_coefficients=True, max_n=None)
    description = "one OR-Tools CP-SAT model per instance (naive baseline)"
    default_batch = 32

    @classmethod
    def is_available(cls) -> tuple[bool, str | None]:
        if importlib.util.find_spec("ortools") is None:
            return False, "ortools is not installed: pip install ortools"
        return True, None

    def solve(self, batch: InstanceBatch) -> BatchResult:
        t0, selections, status, messages = self.start(batch)
        k = len(batch)
        undecided = []          # within integer rounding of tau: settled exactly below
        for i in range(k):
            n = int(batch.counts[i])
            if not np.any(batch.coefficients[i, :n]):   # only the empty sum exists, in effect
                within = abs(float(batch.targets[i])) <= batch.tolerances[i]
                good = Status.FEASIBLE if batch.objective == "feasible" else Status.OPTIMAL
                status[i] = good if within else Status.INFEASIBLE
                continue
            inst = _Instance(float(batch.targets[i]), batch.coefficients[i, :n],
                             float(batch.tolerances[i]), self.time_limit)
            try:
                sel, st = getattr(inst, "solve_" + batch.objective)()
            except Exception as exc:  # one bad instance must not sink the batch
                sel, st = None, Status.ERROR
                messages[int(batch.ids[i])] = f"cpsat: {type(exc).__name__}: {exc}"
            if sel is not None:
                selections[i, :n] = sel
            if st is None:
                undecided.append(i)
                continue
            status[i] = st
            if st == Status.ERROR and int(batch.ids[i]) not in messages:
                messages[int(batch.ids[i])] = f"cpsat: {inst.message or 'solver failure'}"
        engines = np.full(k, self.name, dtype=object)
        settle_with_mitm(batch, undecided, selections, status, messages, self.name, engines)
        return finalize(batch, selections, status, self.name, time.perf_counter() - t0, messages,
                        engines)


class _Instance:
    def __init__(self, t: float, c: np.ndarray, tau: float, time_limit: float | None):
        from ortools.sat.python import cp_model

        self.cp = cp_model
        self.t, self.c, self.tau, self.time_limit = t, np.asarray(c, dtype=np.float64), tau, time_limit
        self.n = n = self.c.shape[0]
        shift = shift_for(float(np.abs(self.c).sum()) + abs(t), _SCALE_BITS)
        self.coef = scaled_ints(self.c, shift)
        self.target = scaled_ints([t], shift)[0]
        #: largest integer error of any subset, + 1
        self.cap = int(sum(abs(x) for x in self.coef)) + abs(self.target) + 1
        # |int error - scaled float64 error| <= (n + 1) / 2 + (float noise << 1)
        self.relaxed = scaled_bound(tau, shift, n + 1, self.cap, up=True)
        self.conservative = scaled_bound(tau, shift, -n - 1, self.cap, up=False)
        self.message = ""

    # -- helpers
    def _model(self, bound: int | None):
        m = self.cp.CpModel()
        s = [m.NewBoolVar(f"s{j}") for j in range(self.n)]
        total = self.cp.LinearExpr.WeightedSum(s, self.coef) if self.n else 0
        hi = bound if bound is not None else self.cap
        err = m.NewIntVar(0, max(hi, 0), "err")
        m.Add(total - self.target <= err)
        m.Add(self.target - total <= err)
        return m, s, err

    def _solve(self, m):
        solver = cp_solver(time_limit=self.time_limit)
        st = cp_solve(solver, m)
        return solver, st

    def _error(self, sel) -> float:
        return float(subset_errors(self.t, self.c, sel))

    def _values(self, solver, s):
        return np.array([bool(solver.Value(v)) for v in s], dtype=bool)

    def _min_error(self, bound):
        """(selection or None, cp status) of min err subject to err <= bound."""
        if bound is not None and bound < 0:
            return None, self.cp.INFEASIBLE
        m, s, err = self._model(bound)
        m.Minimize(err)
        solver, st = self._solve(m)
        if st in (self.cp.OPTIMAL, self.cp.FEASIBLE):
            return self._values(solver, s), st
        return None, st

    def _fail(self, st) -> Status:
        if st == self.cp.UNKNOWN:
            return Status.TIMEOUT
        self.message = f"CP-SAT status {int(st)}"
        return Status.ERROR

    # -- objectives: (selection or None, Status, or None: undecided within the rounding)
    def solve_error(self):
        sel, st = self._min_error(self.relaxed)
        if st == self.cp.INFEASIBLE:
            best, _ = self._min_error(None)
            return best, Status.INFEASIBLE
        if sel is None:
            return None, self._fail(st)
        within = self._error(sel) <= self.tau
        if st == self.cp.OPTIMAL:
            # not within: the relaxed bound admitted it, so the true optimum is within the
            # rounding of tau on one side or the other -> undecided
            return sel, Status.OPTIMAL if within else None
        return sel, Status.FEASIBLE if within else Status.TIMEOUT

    def solve_feasible(self):
        if self.conservative >= 0:
            m, s, _ = self._model(self.conservative)
            solver, st = self._solve(m)
            if st in (self.cp.OPTIMAL, self.cp.FEASIBLE):
                sel = self._values(solver, s)
                return sel, Status.FEASIBLE if self._error(sel) <= self.tau else None
            if st not in (self.cp.INFEASIBLE,):
                return None, self._fail(st)
        sel, st = self.solve_error()
        return sel, Status.FEASIBLE if st == Status.OPTIMAL else st

    def solve_cardinality(self):
        m, s, err = self._model(self.relaxed)
        m.Minimize(sum(s) if self.n else 0)
        solver, st = self._solve(m)
        if st == self.cp.INFEASIBLE:
            best, _ = self._min_error(None)
            return best, Status.INFEASIBLE
        if st not in (self.cp.OPTIMAL, self.cp.FEASIBLE):
            return None, self._fail(st)
        first = self._values(solver, s)
        if st != self.cp.OPTIMAL:
            return first, Status.FEASIBLE if self._error(first) <= self.tau else Status.TIMEOUT
        card = int(first.sum())
        m.Add(sum(s) == card)
        m.Minimize(err)
        for v, h in zip(s, first):
            m.AddHint(v, int(h))
        solver, st = self._solve(m)
        sel = self._values(solver, s) if st in (self.cp.OPTIMAL, self.cp.FEASIBLE) else first
        within = self._error(sel) <= self.tau
        if st == self.cp.OPTIMAL and within:
            return sel, Status.OPTIMAL
        if within:
            return sel, Status.FEASIBLE
        # the relaxed bound let through a subset outside the tolerance in float64 (rounding):
        # whether a subset of this cardinality is within tau is decided exactly elsewhere
        return sel, None
