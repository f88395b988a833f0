"""Settle exactly, with the meet-in-the-middle backend, the rows a backend could not decide.

Backends that solve on scaled integers (CP-SAT, knapsack) or with a feasibility tolerance
(Gurobi) see every subset's error only up to a small rounding. A row whose answer lies within
that rounding of tau (the integer model admits it, the float64 error of
:func:`subsetsum_lth.solvers.instances.subset_errors` does not, or the reverse) cannot be decided by
the model; it is solved again here, exactly, on the float64 error, so that every backend
applies the same tolerance test. Such rows are rare (a band ~1e-11 wide around tau) except in
degenerate instances (targets or coefficients far below the rounding, tau = 0 on sums that
are not exact in float64). Rows beyond mitm's enumeration limit become ERROR, with a message.
"""
from __future__ import annotations

import numpy as np

from . import mitm
from .instances import InstanceBatch, Status


def settle_with_mitm(batch: InstanceBatch, rows, selections: np.ndarray, status: np.ndarray,
                     messages: dict, solver: str, engines: np.ndarray | None = None) -> None:
    """Settle ``rows`` in place; with ``engines`` (one entry per row of ``batch``), the rows
    mitm re-solved record "mitm" as their engine."""
    rows = np.asarray(rows, dtype=np.int64)
    if rows.size == 0:
        return
    fits = rows[batch.counts[rows] <= mitm.MAX_N]
    if engines is not None:
        engines[fits] = mitm.MeetInTheMiddleSolver.name
    if fits.size:
        sub = batch.take(fits)
        sel, feasible = mitm.solve_arrays(sub.targets, sub.coefficients, sub.counts,
                                          sub.tolerances, batch.objective)
        selections[fits] = sel
        good = Status.FEASIBLE if batch.objective == "feasible" else Status.OPTIMAL
        status[fits] = np.where(feasible, int(good), int(Status.INFEASIBLE))
    for i in np.setdiff1d(rows, fits):
        status[i] = Status.ERROR
        messages[int(batch.ids[i])] = (
            f"{solver}: the subset's error is within integer rounding of τ and n = "
            f"{int(batch.counts[i])} is beyond the exact check (n <= {mitm.MAX_N})")
