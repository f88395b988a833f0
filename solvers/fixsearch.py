"""Fix-and-search: instances with more live coefficients than exact search reaches (n > 40).

Exact meet-in-the-middle costs ~2^{n/2} per instance, so it stops at n = 40
(:data:`subsetsum_lth.solvers.mitm.MAX_N`). Beyond that, for the 'error' and 'feasible'
objectives, part of the subset is *fixed* and the rest is searched exactly:

1. Range check (exact). With ``lo`` the sum of the negative coefficients and ``hi`` that of the
   positive ones, every subset sum lies in [lo, hi]. A target at or beyond an end has the
   subset that reaches that end as its exact min-error subset: OPTIMAL when within τ, else a
   proved INFEASIBLE (the closest subset is reported). This is what settles the growth steps
   of a bias far outside [-1, 1] cheaply, until its block has grown enough.
2. Round 0: the ``free`` coefficients of largest |c| stay free; the others, in order of
   decreasing |c|, are taken greedily (a coefficient is taken when it moves the running sum
   closer to ``t - centre``, ``centre`` the midpoint of the free part's range, where its subset
   sums are densest). The free part is then solved exactly by meet-in-the-middle against the
   residual target ``t - (fixed sum)``.
3. Rounds 1, 2, ...: the same with another free set (random) and another greedy (order by
   |c| times a random factor, the goal jittered by the free part's spread), the random draws
   seeded from the instance's own bytes (target, live coefficients, τ) -- never from its batch,
   its id or the worker -- so the subset of an instance is the same for any batching and any
   number of workers.

A row stops at its first subset within τ (status FEASIBLE: optimality over all 2^n subsets
is not proved); a row with none after ``rounds`` rounds is TIMEOUT (infeasibility not
proved) and keeps its closest subset, for the caller's fallback. Every error is recomputed in
float64 from the chosen subset (:func:`subsetsum_lth.solvers.instances.subset_errors`).

The free size: by default the smallest ``k`` in [``MIN_FREE``, ``MAX_FREE``] with
``2^k >= 2^FREE_MARGIN * spread / τ`` (``spread`` the root sum of squares of the row's
coefficients, the scale of the free part's subset sums): where τ is coarse (0.01), k = 24 and a
round costs ~0.3 ms; a finer τ gets a larger, slower free part.
"""
from __future__ import annotations

import hashlib
import math

import numpy as np

from . import mitm
from .instances import Status, subset_errors

#: the engine name the rows it settles record (``BatchResult.engines``)
ENGINE = "fixsearch"
#: free coefficients searched exactly per round: bounds of the automatic choice
MIN_FREE = 20
MAX_FREE = 34
#: bits of density beyond spread / τ the automatic free size asks for
FREE_MARGIN = 8
#: rounds (re-fixings) per row before it is given up as TIMEOUT
DEFAULT_ROUNDS = 24
#: rounds for a row whose τ is below :func:`finest_tau`
_FINE_ROUNDS = 2


def free_size(coef: np.ndarray, n: int, tau: float, free: int | None = None) -> int:
    """Free coefficients for one row of ``n`` live coefficients (see the module docstring)."""
    if free is not None:
        return max(0, min(int(free), n))
    spread = float(np.sqrt(np.sum(np.square(coef[:n])))) if n else 0.0
    if tau > 0 and spread > 0:
        need = math.ceil(math.log2(spread / tau)) + FREE_MARGIN
    else:
        need = MAX_FREE
    return max(0, min(n, max(MIN_FREE, min(MAX_FREE, need))))


def finest_tau(coef) -> float:
    """The smallest τ fix-and-search resolves on a row with these (live) coefficients: below it
    the automatic free size would pass MAX_FREE (2^MAX_FREE free subset sums no longer space
    well below τ), and a row it cannot settle is left to the caller with few rounds spent."""
    spread = float(np.sqrt(np.sum(np.square(np.asarray(coef, dtype=np.float64)))))
    return math.ldexp(spread, -(MAX_FREE - FREE_MARGIN))


def instance_seed(t: float, coef: np.ndarray, tau: float) -> int:
    """A 64-bit seed from the instance's own bytes (target, live coefficients, τ)."""
    h = hashlib.blake2b(digest_size=8)
    h.update(np.float64(t).tobytes())
    h.update(np.float64(tau).tobytes())
    h.update(np.ascontiguousarray(coef, dtype=np.float64).tobytes())
    return int.from_bytes(h.digest(), "little")


def range_settled(targets, coefficients, counts, tolerances):
    """Rows whose target is at or beyond the range [lo, hi] of their subset sums, decided exactly.

    Returns (rows, selections (k, width), within (k,)): for those rows the subset reaching the
    nearer end of the range (all negative, or all positive, coefficients) -- the exact min-error
    subset -- and whether it is within τ."""
    coef = np.asarray(coefficients, dtype=np.float64)
    live = np.arange(coef.shape[1])[None, :] < np.asarray(counts)[:, None]
    neg = (coef < 0) & live
    pos = (coef > 0) & live
    lo = np.where(neg, coef, 0.0).sum(axis=1)
    hi = np.where(pos, coef, 0.0).sum(axis=1)
    t = np.asarray(targets, dtype=np.float64)
    below, above = t <= lo, t >= hi
    rows = np.flatnonzero(below | above)
    sel = np.where(below[rows, None], neg[rows], pos[rows])
    err = subset_errors(t[rows], coef[rows], sel)
    return rows, sel, err <= np.asarray(tolerances, dtype=np.float64)[rows]


def fix_and_search(targets, coefficients, counts, tolerances, free: int | None = None,
                   rounds: int = DEFAULT_ROUNDS) -> tuple[np.ndarray, np.ndarray]:
    """Subsets within τ for rows of any n, by fixing part of the subset and searching the rest
    exactly (module docstring). Rows of at most ``free`` (or the automatic free size) live
    coefficients are simply solved exactly.

    Returns (selections (k, width) bool, status (k,) int8): OPTIMAL / INFEASIBLE where the
    range check or a full exact search decided, FEASIBLE where a subset within τ was found,
    TIMEOUT where none was after ``rounds`` rounds (the closest subset found is kept)."""
    t_all = np.asarray(targets, dtype=np.float64)
    coef_all = np.asarray(coefficients, dtype=np.float64)
    counts = np.asarray(counts, dtype=np.int64)
    tau_all = np.asarray(tolerances, dtype=np.float64)
    k_rows, width = coef_all.shape
    sel = np.zeros((k_rows, width), dtype=bool)
    status = np.full(k_rows, int(Status.TIMEOUT), dtype=np.int8)
    if k_rows == 0:
        return sel, status
    best_err = np.full(k_rows, np.inf)

    done = np.zeros(k_rows, dtype=bool)
    rows, s, within = range_settled(t_all, coef_all, counts, tau_all)
    sel[rows] = s
    status[rows] = np.where(within, int(Status.OPTIMAL), int(Status.INFEASIBLE))
    done[rows] = True

    ks = np.array([free_size(coef_all[i], int(counts[i]), float(tau_all[i]), free)
                   for i in range(k_rows)], dtype=np.int64)
    # rows the exact search covers whole: one exact solve
    whole = np.flatnonzero(~done & (ks >= counts))
    if whole.size:
        s, feas = mitm.solve_arrays(t_all[whole], coef_all[whole], counts[whole], tau_all[whole], "error")
        sel[whole] = s
        status[whole] = np.where(feas, int(Status.OPTIMAL), int(Status.INFEASIBLE))
        done[whole] = True

    pending = np.flatnonzero(~done)
    seeds = {int(i): instance_seed(t_all[i], coef_all[i, :counts[i]], tau_all[i]) for i in pending}
    # rows whose τ is finer than fix-and-search resolves: a round or two, then the caller's fallback
    coarse = np.array([tau_all[i] >= finest_tau(coef_all[i, :counts[i]]) for i in range(k_rows)])
    for r in range(max(1, int(rounds))):
        if r >= _FINE_ROUNDS:
            pending = pending[coarse[pending]]
        if pending.size == 0:
            break
        cand = _round(r, pending, t_all, coef_all, counts, ks, seeds)
        err = subset_errors(t_all[pending], coef_all[pending], cand)
        better = err < best_err[pending]
        upd = pending[better]
        sel[upd] = cand[better]
        best_err[upd] = err[better]
        ok = err <= tau_all[pending]
        status[pending[ok]] = int(Status.FEASIBLE)
        pending = pending[~ok]
    return sel, status


def _round(r: int, rows: np.ndarray, t_all, coef_all, counts, ks, seeds) -> np.ndarray:
    """One fixing per row of ``rows`` (round ``r``), its free part solved exactly: the rows'
    selections (len(rows), width)."""
    width = coef_all.shape[1]
    out = np.zeros((rows.size, width), dtype=bool)
    # rows with the same (n, k) share one vectorised greedy and one exact batch
    keys = np.stack([counts[rows], ks[rows]], axis=1)
    for n, k in np.unique(keys, axis=0):
        n, k = int(n), int(k)
        idx = np.flatnonzero((keys[:, 0] == n) & (keys[:, 1] == k))
        grp = rows[idx]
        c = coef_all[grp, :n]
        t = t_all[grp]
        mag = np.abs(c)
        if r == 0:
            order = np.argsort(-mag, axis=1, kind="stable")     # decreasing |c|
            pick = np.zeros(n, dtype=bool)
            pick[np.round(np.linspace(0, n - 1, k)).astype(np.int64)] = True   # spread over the magnitudes
            free_cols = order[:, pick]
            fixed_cols = order[:, ~pick]
            jitter = np.zeros(grp.size)
        else:
            free_cols = np.empty((grp.size, k), dtype=np.int64)
            fixed_cols = np.empty((grp.size, n - k), dtype=np.int64)
            jitter = np.empty(grp.size)
            for a, i in enumerate(grp):
                rng = np.random.default_rng([seeds[int(i)], r])
                perm = rng.permutation(n)
                free_cols[a] = perm[:k]
                rest = perm[k:]
                weight = mag[a, rest] * rng.uniform(0.5, 1.5, rest.size)
                fixed_cols[a] = rest[np.argsort(-weight, kind="stable")]
                jitter[a] = rng.standard_normal()
        cf = np.take_along_axis(c, free_cols, axis=1)
        cx = np.take_along_axis(c, fixed_cols, axis=1)
        # the free part's share of t: the same relative place in its range [lo_f, hi_f] as t has
        # in the row's range [lo, hi] (the middle for a central t, near an end for a t near it)
        lo, hi = np.minimum(c, 0.0).sum(axis=1), np.maximum(c, 0.0).sum(axis=1)
        lo_f, hi_f = np.minimum(cf, 0.0).sum(axis=1), np.maximum(cf, 0.0).sum(axis=1)
        frac = np.clip((t - lo) / np.where(hi > lo, hi - lo, 1.0), 0.0, 1.0)
        spread = 0.5 * np.sqrt(np.square(cf).sum(axis=1))
        share = np.clip(lo_f + frac * (hi_f - lo_f) + jitter * spread, lo_f, hi_f)
        goal = t - share
        acc = np.zeros(grp.size)
        take = np.zeros(cx.shape, dtype=bool)
        for j in range(cx.shape[1]):
            nxt = acc + cx[:, j]
            tj = np.abs(goal - nxt) < np.abs(goal - acc)
            take[:, j] = tj
            acc = np.where(tj, nxt, acc)
        s_free = mitm.min_error_selections(t - acc, np.ascontiguousarray(cf), np.full(grp.size, k))
        full = np.zeros((grp.size, n), dtype=bool)
        np.put_along_axis(full, free_cols, s_free[:, :k], axis=1)
        np.put_along_axis(full, fixed_cols, take, axis=1)
        out[idx, :n] = full
    return out
