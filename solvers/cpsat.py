"""Naive baseline: one CP-SAT model per instance (Pensia et al.'s MIP, on scaled integers).

Formulation (scale = 2^40 / (sum|c| + |t|), C = round(c * scale), T = round(t * scale)):
binary s, integer err >= |T - C.s|, err <= TAU.

* error: minimise err. TAU is the *relaxed* bound ceil(tau * scale) + n + 1, which contains
  every subset within tolerance despite the rounding, so INFEASIBLE is a sound proof; the
  min-error subset is then found by a second solve without the bound. Optimal up to the
  rounding (<= (n + 2) / scale ~ 1e-11).
* feasible: no objective, first solution, with the *conservative* bound
  floor(tau * scale) - n - 1 (every integer solution is within tolerance); if that is
  infeasible, the error model decides.
* cardinality: minimise sum(s) under the relaxed bound, then, with sum(s) fixed, minimise err.

Status from the error recomputed in float64 (OPTIMAL iff within tolerance for 'error').
``time_limit`` (seconds per solve, wall clock) gives FEASIBLE / TIMEOUT when hit; without it
the solver is deterministic (one worker, fixed seed). Measured: ~0.5 s per instance for the
error objective at n = 21 (proving optimality at full precision is hard for CP-SAT), ~10 ms
for min-cardinality.
"""
from __future__ import annotations

import importlib.util
import math
import time

import numpy as np

from solvers.base import Capabilities, SolverBackend
from subsetsum_lth.instances import BatchResult, InstanceBatch, Status, finalize

_SCALE_BITS = 40


class CpSatSolver(SolverBackend):
    name = "cpsat"
    capabilities = Capabilities(exact=True, objectives=("error", "feasible", "cardinality"),
                                float_coefficients=True, max_n=None)
    description = "one OR-Tools CP-SAT model per instance (naive baseline)"

    @classmethod
    def is_available(cls) -> tuple[bool, str | None]:
        if importlib.util.find_spec("ortools") is None:
            return False, "ortools is not installed: pip install ortools"
        return True, None

    def solve(self, batch: InstanceBatch) -> BatchResult:
        t0, selections, status, messages = self.start(batch)
        k = len(batch)
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
            status[i] = st
            if st == Status.ERROR and int(batch.ids[i]) not in messages:
                messages[int(batch.ids[i])] = f"cpsat: {inst.message or 'solver failure'}"
        return finalize(batch, selections, status, self.name, time.perf_counter() - t0, messages)


class _Instance:
    def __init__(self, t: float, c: np.ndarray, tau: float, time_limit: float | None):
        from ortools.sat.python import cp_model

        self.cp = cp_model
        self.t, self.c, self.tau, self.time_limit = t, np.asarray(c, dtype=np.float64), tau, time_limit
        self.n = n = self.c.shape[0]
        self.scale = 2.0 ** _SCALE_BITS / max(1.0, float(np.abs(self.c).sum()) + abs(t))
        self.coef = [int(x) for x in np.rint(self.c * self.scale)]
        self.target = int(round(t * self.scale))
        self.relaxed = int(math.ceil(tau * self.scale)) + n + 1
        self.conservative = int(math.floor(tau * self.scale)) - n - 1
        self.message = ""

    # -- helpers
    def _model(self, bound: int | None):
        m = self.cp.CpModel()
        s = [m.NewBoolVar(f"s{j}") for j in range(self.n)]
        total = self.cp.LinearExpr.WeightedSum(s, self.coef) if self.n else 0
        hi = (bound if bound is not None else
              int(sum(abs(x) for x in self.coef)) + abs(self.target) + 1)
        err = m.NewIntVar(0, max(hi, 0), "err")
        m.Add(total - self.target <= err)
        m.Add(self.target - total <= err)
        return m, s, err

    def _solve(self, m):
        solver = self.cp.CpSolver()
        solver.parameters.num_workers = 1
        solver.parameters.random_seed = 0
        if self.time_limit:
            solver.parameters.max_time_in_seconds = float(self.time_limit)
        st = solver.Solve(m)
        return solver, st

    def _error(self, sel) -> float:
        return abs(self.t - float(np.where(sel, self.c, 0.0).sum()))

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

    # -- objectives
    def solve_error(self):
        sel, st = self._min_error(self.relaxed)
        if st == self.cp.INFEASIBLE:
            best, _ = self._min_error(None)
            return best, Status.INFEASIBLE
        if sel is None:
            return None, self._fail(st)
        within = self._error(sel) <= self.tau
        if st == self.cp.OPTIMAL:
            return sel, Status.OPTIMAL if within else Status.INFEASIBLE
        return sel, Status.FEASIBLE if within else Status.TIMEOUT

    def solve_feasible(self):
        if self.conservative >= 0:
            m, s, _ = self._model(self.conservative)
            solver, st = self._solve(m)
            if st in (self.cp.OPTIMAL, self.cp.FEASIBLE):
                return self._values(solver, s), Status.FEASIBLE
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
        # the relaxed bound let through a subset a hair outside the tolerance (rounding)
        self.message = "subset at the tolerance boundary within integer rounding"
        return sel, Status.ERROR
