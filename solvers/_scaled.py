"""Shared pieces of the backends that solve on scaled integers (CP-SAT, knapsack).

Scaling. Reals become integers by a *power of two* relative to the instance's magnitude:
``C = rint(c * 2^shift)`` with ``shift = bits - e`` where ``sum|c| + |t| < 2^e``, so the
scaled magnitudes stay below 2^bits whatever the magnitude of the instance (also for tiny or
subnormal targets and coefficients, where a fixed scale rounded everything to 0), and the
product ``c * 2^shift`` itself is exact (``np.ldexp``): only the final rounding to integers
(<= 1/2 per term) separates the integer model from the reals.

CP-SAT. OR-Tools 9.15's presolve can certify a wrong optimum when a linear constraint's
Boolean terms total more than 2^31 (``ActivityBoundHelper::RemoveEnforcementThatMakesConstraint
Trivial`` sums int64 coefficients into an ``int``; google/or-tools#5293, fixed by #5294): it
silently drops an enforcement literal, and with our 2^40-scaled rows it returned 3 instead of
2 coefficients at t = 1.125, c = [.5, .875, .125, .2421875, -.25, -.375], tau = 0.2, and 2
instead of 0 at t = 0. That presolve step is gated by ``presolve_inclusion_work_limit``;
:func:`cp_solver` sets it to 0 (the rest of presolve stays on).
"""
from __future__ import annotations

import math

import numpy as np

from .interrupt import native_call, solver_time_limit


def shift_for(total: float, bits: int) -> int:
    """Exponent s with total * 2^s < 2^bits <= 2 * total * 2^s (total > 0)."""
    return bits - math.frexp(float(total))[1]


def scaled_ints(x, shift: int) -> list[int]:
    """rint(x * 2^shift) as Python ints (x * 2^shift is exact)."""
    return [int(v) for v in np.rint(np.ldexp(np.asarray(x, dtype=np.float64), shift))]


def scaled_bound(tau: float, shift: int, extra: int, cap: int, up: bool = True) -> int:
    """ceil (``up``) or floor of tau * 2^shift, plus ``extra``, clamped to [-1, cap]. ``cap``
    is the largest integer error any subset can have (+1), so a tau that covers every subset
    (also one whose scaled value overflows to inf) gives ``cap``."""
    with np.errstate(over="ignore"):
        x = float(np.ldexp(float(tau), shift))
    if not math.isfinite(x):
        return cap
    v = (math.ceil(x) if up else math.floor(x)) + extra
    return max(-1, min(v, cap))


def cp_solver(deterministic_time: float | None = None, time_limit: float | None = None):
    """A CP-SAT solver: one worker, fixed seed, the presolve step of or-tools#5293 off."""
    from ortools.sat.python import cp_model

    solver = cp_model.CpSolver()
    p = solver.parameters
    p.num_workers = 1
    p.random_seed = 0
    p.presolve_inclusion_work_limit = 0     # or-tools#5293: unsound on large coefficients
    # Ctrl-C reaches Python (and stops the search through .interrupt), not CP-SAT's own handler,
    # which would end one Solve quietly and let the next one start
    p.catch_sigint_signal = False
    if deterministic_time is not None:
        p.max_deterministic_time = float(deterministic_time)
    if time_limit:
        p.max_time_in_seconds = solver_time_limit(time_limit)
    return solver


def cp_solve(solver, model):
    """``solver.Solve(model)``, stopped within milliseconds by SIGINT/SIGTERM (see :mod:`.interrupt`)."""
    with native_call(solver.stop_search):
        return solver.Solve(model)
