"""Gurobi backend: one MIP per instance (Pensia et al.'s formulation, real coefficients).

binary s, continuous err >= |t - c.s|, err <= tau:
* error: minimise err; if that model is infeasible (proved), the min-error subset comes from
  a second solve without the bound.
* feasible: no objective, stop at the first solution.
* cardinality: minimise sum(s); then, with sum(s) fixed, minimise err.

Tolerances are tightened for exactness (MIPGap = MIPGapAbs = 0, FeasibilityTol =
IntFeasTol = 1e-9, IntegralityFocus = 1), and the instance is scaled by a power of two (exact)
so that sum|c| + |t| lies in [2^9, 2^10): Gurobi's absolute tolerances (1e-9 at best) then
cost ~1e-12 of the instance's magnitude instead of 1e-9 (unscaled, a min-error subset came back
1e-9 worse than the optimum, and targets or coefficients below 1e-9 were invisible). Every
reported error is recomputed in float64 from the rounded 0/1 solution, and a claim of "within
tau" that the float64 error contradicts is settled exactly by mitm. One ``gurobipy.Env`` per process (OutputFlag = 0, Threads = 1,
Seed = 0), created on first use. ``time_limit`` is Gurobi's TimeLimit per solve.
gurobipy's pip wheel carries a size-limited licence (2000 variables / constraints), enough for
one instance per model.
"""
from __future__ import annotations

import importlib.util
import math
import os
import time

import numpy as np

from .base import Capabilities, SolverBackend
from ._scaled import shift_for
from ._settle import settle_with_mitm
from .instances import BatchResult, InstanceBatch, Status, finalize, recompute_errors
from .interrupt import native_call

#: the model's scale: sum|c| + |t| in [2^(bits-1), 2^bits)
_SCALE_BITS = 10
_ENV: dict[int, object] = {}          # pid -> gurobipy.Env (never shared across a fork)
_AVAILABLE: tuple[bool, str | None] | None = None

_INSTALL_HINT = "gurobipy is not installed: pip install 'subsetsum-lth[gurobi]'"


def _env():
    env = _ENV.get(os.getpid())
    if env is None:
        import gurobipy as gp

        env = gp.Env(empty=True)
        env.setParam("OutputFlag", 0)
        env.setParam("Threads", 1)
        env.setParam("Seed", 0)
        env.start()
        _ENV.clear()
        _ENV[os.getpid()] = env
    return env


class GurobiSolver(SolverBackend):
    name = "gurobi"
    capabilities = Capabilities(exact=True, objectives=("error", "feasible", "cardinality"),
                                float_coefficients=True, max_n=None)
    description = "one Gurobi MIP per instance (optional extra: subsetsum-lth[gurobi])"
    default_batch = 16

    @classmethod
    def is_available(cls) -> tuple[bool, str | None]:
        global _AVAILABLE
        if _AVAILABLE is None:
            if importlib.util.find_spec("gurobipy") is None:
                _AVAILABLE = (False, _INSTALL_HINT)
            else:
                try:
                    _env()
                    _AVAILABLE = (True, None)
                except Exception as exc:  # licence missing / expired / too many sessions
                    _AVAILABLE = (False, f"gurobipy cannot start an environment: {exc}")
        return _AVAILABLE

    def solve(self, batch: InstanceBatch) -> BatchResult:
        t0, selections, status, messages = self.start(batch)
        k = len(batch)
        env = _env()
        for i in range(k):
            n = int(batch.counts[i])
            try:
                sel, st, msg = _solve_one(env, float(batch.targets[i]), batch.coefficients[i, :n],
                                          float(batch.tolerances[i]), batch.objective,
                                          self.time_limit)
            except Exception as exc:  # one bad instance must not sink the batch
                sel, st, msg = None, Status.ERROR, f"{type(exc).__name__}: {exc}"
            if sel is not None:
                selections[i, :n] = sel
            status[i] = st
            if msg:
                messages[int(batch.ids[i])] = f"gurobi: {msg}"
        engines = np.full(k, self.name, dtype=object)
        _settle_boundary(batch, selections, status, messages, engines)
        return finalize(batch, selections, status, self.name, time.perf_counter() - t0, messages,
                        engines)


def _settle_boundary(batch: InstanceBatch, selections: np.ndarray, status: np.ndarray,
                     messages: dict, engines: np.ndarray | None = None) -> None:
    """Rows that Gurobi called within tolerance but whose float64 error exceeds τ (its
    FeasibilityTol lets |t - c.s| overshoot τ by ~1e-9) are settled exactly by mitm; rows
    beyond mitm's reach become ERROR. A claim of 'within τ' is never left unchecked."""
    err = recompute_errors(batch, selections)
    claimed = (status == Status.OPTIMAL) | (status == Status.FEASIBLE)
    settle_with_mitm(batch, np.flatnonzero(claimed & (err > batch.tolerances)), selections,
                     status, messages, "gurobi", engines)


def _solve_one(env, t: float, c: np.ndarray, tau: float, objective: str,
               time_limit: float | None):
    """(selection or None, Status, message)."""
    import gurobipy as gp
    from gurobipy import GRB

    n = c.shape[0]
    model = gp.Model(env=env)
    try:
        p = model.Params
        p.MIPGap = 0.0
        p.MIPGapAbs = 0.0
        p.FeasibilityTol = 1e-9
        p.IntFeasTol = 1e-9
        p.OptimalityTol = 1e-9
        p.IntegralityFocus = 1
        if time_limit:
            p.TimeLimit = float(time_limit)
        total = float(np.abs(c).sum()) + abs(t)
        shift = shift_for(total, _SCALE_BITS) if total > 0 else 0
        ts = math.ldexp(t, shift)
        with np.errstate(over="ignore"):
            taus = float(np.ldexp(tau, shift))
        s = [model.addVar(vtype=GRB.BINARY, name=f"s{j}") for j in range(n)]
        err = model.addVar(lb=0.0, ub=taus if math.isfinite(taus) else GRB.INFINITY, name="err")
        expr = gp.LinExpr([float(x) for x in np.ldexp(c, shift)], s)   # (MVar @ needs scipy)
        model.addConstr(ts - expr <= err)
        model.addConstr(expr - ts <= err)

        def values():
            return np.array([v.X > 0.5 for v in s], dtype=bool)

        def min_error_unbounded():
            err.UB = GRB.INFINITY
            model.setObjective(err, GRB.MINIMIZE)
            _optimize(model)
            return values() if model.SolCount else None

        if objective == "feasible":
            p.SolutionLimit = 1
            _optimize(model)
            if model.Status in (GRB.OPTIMAL, GRB.SOLUTION_LIMIT) and model.SolCount:
                return values(), Status.FEASIBLE, ""
            if model.Status in (GRB.INFEASIBLE, GRB.INF_OR_UNBD):
                p.SolutionLimit = 2_000_000_000
                return min_error_unbounded(), Status.INFEASIBLE, ""
            return _other(model, values)

        if objective == "error":
            model.setObjective(err, GRB.MINIMIZE)
            _optimize(model)
            if model.Status == GRB.OPTIMAL:
                return values(), Status.OPTIMAL, ""
            if model.Status in (GRB.INFEASIBLE, GRB.INF_OR_UNBD):
                return min_error_unbounded(), Status.INFEASIBLE, ""
            return _other(model, values)

        # cardinality
        card_expr = gp.LinExpr([1.0] * n, s)
        model.setObjective(card_expr, GRB.MINIMIZE)
        _optimize(model)
        if model.Status in (GRB.INFEASIBLE, GRB.INF_OR_UNBD):
            return min_error_unbounded(), Status.INFEASIBLE, ""
        if model.Status != GRB.OPTIMAL:
            return _other(model, values)
        first = values()
        model.addConstr(card_expr == int(first.sum()))
        model.setObjective(err, GRB.MINIMIZE)
        _optimize(model)
        if model.Status == GRB.OPTIMAL:
            return values(), Status.OPTIMAL, ""
        if model.Status == GRB.TIME_LIMIT:
            sel = values() if model.SolCount else first
            return sel, Status.FEASIBLE, "time limit in the error tie-break"
        return first, Status.FEASIBLE, f"error tie-break ended with Gurobi status {model.Status}"
    finally:
        model.dispose()


def _optimize(model) -> None:
    """``model.optimize()``, stopped within milliseconds by SIGINT/SIGTERM (:mod:`.interrupt`).
    Gurobi catches a Ctrl-C during ``optimize`` by itself and only ends that solve (status
    INTERRUPTED): that, like a stop request, is raised as KeyboardInterrupt, so the run stops
    instead of reporting the instance failed and starting the next one."""
    from gurobipy import GRB

    with native_call(model.terminate):
        model.optimize()
    if model.Status == GRB.INTERRUPTED:
        raise KeyboardInterrupt("Gurobi optimize was interrupted")


def _other(model, values):
    from gurobipy import GRB

    if model.Status == GRB.TIME_LIMIT:
        if model.SolCount:
            return values(), Status.FEASIBLE, ""
        return None, Status.TIMEOUT, ""
    return (values() if model.SolCount else None), Status.ERROR, \
        f"Gurobi status {model.Status}"
