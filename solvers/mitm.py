"""Exact meet-in-the-middle backend, pure numpy, vectorised over a batch: its reach
(:data:`MAX_N`, the one number every caller reads), the batch drivers and the backend class.
The enumeration and closest-pair kernels, and how they work, are in
:mod:`subsetsum_lth.solvers.mitm_kernels`.
"""
from __future__ import annotations

import time

import numpy as np

from .base import Capabilities, SolverBackend
from .instances import BatchResult, InstanceBatch, Status, finalize, subset_errors
from .mitm_kernels import (_FAST_N, _cardinality_chunk, _chunks, _error_chunk_float, _error_chunk_int32,
                           single_thread_blas)

#: Reach of the enumeration: the largest live count it searches exactly (2^20 sums per half).
#: The backend's ``capabilities.max_n``, auto's routing, the settle step, fix-and-search and
#: ``subsetsum_lth.limits.EXACT_MAX_N`` all read this one number.
MAX_N = 40

def min_error_selections(targets: np.ndarray, coefficients: np.ndarray, counts: np.ndarray
                         ) -> np.ndarray:
    """Exact min-error subsets of a padded batch: selections (k, width) bool."""
    targets, coefficients, _ = _scale_tiny_rows(targets, coefficients)
    with single_thread_blas():      # thin matmuls: BLAS threads only spin and wait
        return _min_error_selections(targets, coefficients, counts)


#: rows holding a nonzero value below this are scaled up first (see _scale_tiny_rows)
_TINY = 2.0 ** -960


def _scale_tiny_rows(targets, coefficients, tolerances=None):
    """Scale rows that hold a nonzero value below 2^-960 by a power of two (exact: the
    selections, and every comparison of an error with its scaled tolerance, are unchanged)
    so that their magnitude is ~2^1000.

    The set label of the sort keys moves each value by one ulp; for a sum that is subnormal
    that is the value itself (t = 5e-324, c = [5e-324] read "no subset within tau = 0"). Sums
    of values >= 2^-960 are multiples of 2^-1012 or zero, so after scaling no nonzero sum is
    subnormal. Rows whose magnitude already is ~2^1000 are left as they are.
    """
    targets = np.asarray(targets, dtype=np.float64)
    coefficients = np.asarray(coefficients, dtype=np.float64)
    a = np.abs(coefficients)
    at = np.abs(targets)
    tiny = ((a > 0) & (a < _TINY)).any(axis=1) | ((at > 0) & (at < _TINY))
    if not tiny.any():
        return targets, coefficients, tolerances
    rows = np.flatnonzero(tiny)
    shift = np.maximum(1000 - np.frexp(at[rows] + a[rows].sum(axis=1))[1], 0)
    targets, coefficients = targets.copy(), coefficients.copy()
    targets[rows] = np.ldexp(targets[rows], shift)
    coefficients[rows] = np.ldexp(coefficients[rows], shift[:, None])
    if tolerances is not None:
        tolerances = np.array(tolerances, dtype=np.float64, copy=True)
        with np.errstate(over="ignore"):      # a tau beyond 2^1024 covers every subset anyway
            tolerances[rows] = np.ldexp(tolerances[rows], shift)
    return targets, coefficients, tolerances


def _min_error_selections(targets: np.ndarray, coefficients: np.ndarray, counts: np.ndarray
                          ) -> np.ndarray:
    k, width = coefficients.shape
    sel = np.zeros((k, width), dtype=bool)
    for n in np.unique(counts):
        n = int(n)
        if n > MAX_N:
            raise ValueError(f"mitm: n = {n} exceeds the enumeration limit {MAX_N}")
        group = np.flatnonzero(counts == n)
        if _FAST_N[0] <= n <= _FAST_N[1]:
            redo = []
            for rows in _chunks(group, n, fast=True):
                s, ok = _error_chunk_int32(targets[rows],
                                           np.ascontiguousarray(coefficients[rows, :n]))
                sel[rows, :n] = s
                redo.append(rows[~ok])
            group = np.concatenate(redo)   # the few rows the fast path could not certify
        for rows in _chunks(group, n):
            sel[rows, :n] = _error_chunk_float(targets[rows],
                                               np.ascontiguousarray(coefficients[rows, :n]))[0]
    return sel


def solve_arrays(targets: np.ndarray, coefficients: np.ndarray, counts: np.ndarray,
                 tolerances: np.ndarray, objective: str) -> tuple[np.ndarray, np.ndarray]:
    """Exact solve of a padded batch. Returns (selections (k, width) bool, feasible (k,) bool).

    ``feasible`` tells whether the selection is within tolerance (for 'cardinality' it is then
    the lexicographic (cardinality, error) optimum; otherwise it is the min-error subset).
    """
    targets, coefficients, tolerances = _scale_tiny_rows(targets, coefficients, tolerances)
    with single_thread_blas():      # thin matmuls: BLAS threads only spin and wait
        return _solve_arrays(targets, coefficients, counts, tolerances, objective)


def _solve_arrays(targets: np.ndarray, coefficients: np.ndarray, counts: np.ndarray,
                  tolerances: np.ndarray, objective: str) -> tuple[np.ndarray, np.ndarray]:
    k, width = coefficients.shape
    if objective != "cardinality":
        sel = min_error_selections(targets, coefficients, counts)
        live = np.arange(width)[None, :] < counts[:, None]
        return sel, subset_errors(targets, coefficients, sel & live) <= tolerances
    sel = np.zeros((k, width), dtype=bool)
    feasible = np.zeros(k, dtype=bool)
    for n in np.unique(counts):
        n = int(n)
        if n > MAX_N:
            raise ValueError(f"mitm: n = {n} exceeds the enumeration limit {MAX_N}")
        for rows in _chunks(np.flatnonzero(counts == n), n, cardinality=True):
            s, _, f = _cardinality_chunk(targets[rows],
                                         np.ascontiguousarray(coefficients[rows, :n]),
                                         tolerances[rows])
            sel[rows, :n] = s
            feasible[rows] = f
    return sel, feasible


class MeetInTheMiddleSolver(SolverBackend):
    """Exact, pure numpy: O(2^{n/2} log) per instance, batched."""

    name = "mitm"
    capabilities = Capabilities(exact=True, objectives=("error", "feasible", "cardinality"),
                                float_coefficients=True, max_n=MAX_N, reach=MAX_N)
    description = f"meet-in-the-middle enumeration (numpy, exact, vectorised over the batch; n <= {MAX_N})"
    default_batch = 4096
    fallback_rank = 0               # tried first: exact and fast up to its reach

    def solve(self, batch: InstanceBatch) -> BatchResult:
        t0, selections, status, messages = self.start(batch)
        k = len(batch)
        max_n = self.capabilities.max_n
        too_big = batch.counts > max_n
        for i in np.flatnonzero(too_big):
            messages[int(batch.ids[i])] = (
                f"mitm: n = {int(batch.counts[i])} is beyond its reach n <= {max_n} (2^(n/2) enumeration)")
        ok_rows = np.flatnonzero(~too_big)
        if ok_rows.size:
            sub = batch if ok_rows.size == k else batch.take(ok_rows)
            sel, feasible = solve_arrays(sub.targets, sub.coefficients, sub.counts,
                                         sub.tolerances, batch.objective)
            selections[ok_rows] = sel
            good = Status.FEASIBLE if batch.objective == "feasible" else Status.OPTIMAL
            status[ok_rows] = np.where(feasible, int(good), int(Status.INFEASIBLE))
        return finalize(batch, selections, status, self.name, time.perf_counter() - t0, messages)
