"""The numpy kernels of the exact meet-in-the-middle search (:mod:`subsetsum_lth.solvers.mitm`
holds the backend, its reach and the batch drivers), vectorised over rows of the same n.

Each instance's live coefficients are split into halves A (the first ``n // 2``) and B. All
``2^|A|`` subset sums ``a`` and all values ``q = t - b`` over the ``2^|B|`` subset sums ``b``
are enumerated (one matmul of the coefficients with a 0/1 table, then doubling
``S <- [S, S + c_j]`` beyond 12 coefficients; column index bit j = coefficient j selected),
and ``|t - a - b| = |a - q|`` is minimised as a *closest pair* between the two sets.

The closest pair is found with one row-wise sort of the union: the closest pair between two
sets of reals is always adjacent in the sorted union (any element lying between the two would
pair with one of them at least as closely). The set of each value travels with it in the
lowest bit of its sort key (A: 0, Q: 1), so no argsort is needed; the chosen pair is found
back by equality on the keys, and every reported error is recomputed from the coefficients.

* Float path (any n): keys are the float64 sums themselves with the lowest mantissa bit
  replaced by the label (a one-ulp move), so the answer is the optimum to a few ulps
  (~1e-15 for sums of order 1).
* 32-bit fast path (n in ``_FAST_N``): each value is mapped to ``z = (v - lo) * (2^31 - 256)
  / span`` (bounds of the row's sums) and represented by an int32 key ~ z built directly in
  integer arithmetic (sums of the first 8 coefficients of a half by one float matmul, rounded
  to even integers, + the label; further coefficients rounded to even integers and added by
  int32 doubling), so no float sums, casts or label passes over the whole row; sorting int32 is
  about twice as fast as float64. The rounding error is known per row, and a row is accepted
  only when the best pair is certified exact by a margin argument (see
  :func:`_error_chunk_int32`); the others (~2-3% at n = 21) go through the float path.

Min-cardinality: sums are grouped by popcount; cardinality levels ``c = 0, 1, ...`` are tried
in order, each level solving the closest-pair problem for every split ``(pa, c - pa)``; the
first level with an error ``<= tau`` wins, with the smallest error of that level (ties:
lexicographic (cardinality, error)). Rows with no subset within tolerance are detected with
the plain error search first and return the min-error subset.

Everything is deterministic: a fixed matmul/add order, sorting, first index of equal keys.
Numpy's BLAS is held to one thread while solving (:func:`single_thread_blas`, threadpoolctl):
the matmuls are thin, and BLAS worker threads only spin (10x slower on a busy machine).
Throughput on one core (n = 21, τ = 0.01, objective 'error', ``subsetsum-lth bench solvers
--clock cpu``): ~74-93k instances/s of CPU time on an AVX-512 machine, uniform or trained-like
targets (~51k with numpy's AVX-512 kernels disabled, ``NPY_DISABLE_CPU_FEATURES``); the int32
sort is ~45-50% of it. The wall clock on a shared, loaded machine gives far less (20-45k/s).
"""
from __future__ import annotations

import math
import threading
from functools import lru_cache
from math import comb

import numpy as np
from threadpoolctl import ThreadpoolController

from .instances import subset_errors

#: Memory budget of the working arrays of one chunk of rows (bytes), and the number of
#: enumerated sums per chunk that keeps the working set cache-friendly.
MEMORY_BUDGET = 256 * 2**20
_CACHE_ELEMENTS = 2**16
#: 8-byte arrays of the chunk's width alive at once (union, sorted copy, gaps, masks, ...).
_ARRAYS_PER_ELEMENT = 6
#: Subset sums of up to this many coefficients come from one matmul with a 0/1 table; the
#: remaining coefficients are added by doubling (contiguous blocks of >= 2^_MATMUL_BITS).
_MATMUL_BITS = 12
#: n range where the 32-bit-key fast path is tried first (it answers ~95% of rows at n = 21,
#: fewer as n grows because the optimum gets smaller than the key resolution).
_FAST_N = (8, 23)

_SIGN = np.int64(63)
_ONE = np.int64(1)
_NOT_ONE = ~np.int64(1)
_ODD_TO_NEGATIVE = np.uint32(2**31 + 1)
#: range of the 32-bit keys; the int32 range less room for the rounding of the integer sums
_KEY_RANGE = float(2**31 - 256)
#: fast path: subset sums of this many coefficients (per half) by one float matmul, the rest by
#: int32 doubling
_INT_MATMUL_BITS = 8


@lru_cache(maxsize=None)
def _table(h: int, lead_ones: bool) -> np.ndarray:
    """0/1 float64 table (h [+1], 2^h): column i holds the bits of i (after a row of ones)."""
    idx = np.arange(1 << h)
    bits = ((idx[None, :] >> np.arange(h)[:, None]) & 1).astype(np.float64)
    if lead_ones:
        bits = np.vstack([np.ones((1, 1 << h)), bits])
    bits.setflags(write=False)
    return bits


def _sums_into(out: np.ndarray, x: np.ndarray, h: int, lead: bool) -> None:
    """out (k, 2^h) <- all subset sums; column index bit j = coefficient j taken.

    x is (k, h) coefficients, or (k, 1 + h) = [constant, coefficients] when ``lead``
    (the constant is added to every sum). Deterministic: a fixed matmul then fixed adds.
    """
    low = min(h, _MATMUL_BITS)
    off = 1 if lead else 0
    m = 1 << low
    if low + off:
        np.matmul(x[:, :low + off], _table(low, lead), out=out[:, :m])
    else:
        out[:, :1] = 0.0
    for j in range(low, h):
        np.add(out[:, :m], x[:, off + j:off + j + 1], out=out[:, m:2 * m])
        m *= 2


@lru_cache(maxsize=None)
def _popcount_order(h: int) -> tuple[np.ndarray, np.ndarray]:
    """Permutation of range(2^h) grouping indices by popcount (stable), and group offsets."""
    idx = np.arange(1 << h)
    pc = np.zeros(1 << h, dtype=np.int64)
    for j in range(h):
        pc += (idx >> j) & 1
    perm = np.argsort(pc, kind="stable")
    offsets = np.zeros(h + 2, dtype=np.int64)
    offsets[1:] = np.cumsum(np.bincount(pc, minlength=h + 1))
    perm.setflags(write=False)
    offsets.setflags(write=False)
    return perm, offsets


class _Workspace(threading.local):
    """Per-thread scratch arrays, reused across chunks (no page faults on every chunk)."""

    def __init__(self):
        self.buffers: dict[str, np.ndarray] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype=np.float64) -> np.ndarray:
        size = math.prod(shape)
        buf = self.buffers.get(name)
        if buf is None or buf.size < size or buf.dtype != dtype:
            buf = np.empty(max(size, 1), dtype=dtype)
            # keep big buffers only while they fit the budget; they are cheap to re-create
            if buf.nbytes <= MEMORY_BUDGET:
                self.buffers[name] = buf
        return buf[:size].reshape(shape)


_WORK = _Workspace()


def _closest_in_union(union: np.ndarray, ma: int, work: _Workspace | None = None
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Closest pair between columns [:ma] (set A) and [ma:] (set Q) of ``union``, per row.

    ``union`` is overwritten (the set label goes into the lowest mantissa bit). Returns column
    indices (ia into A, iq into Q) of a pair whose distance is minimal up to one ulp of the
    values. Deterministic: the first minimal gap in sorted order, the first equal column.
    """
    k, m = union.shape
    if work is None:
        s = np.empty((k, m))
        diff = np.empty((k, m - 1), dtype=np.int64)
        gaps = np.empty((k, m - 1))
        eq = np.empty((k, m), dtype=bool)
    else:
        s = work.get("sorted", (k, m))
        diff = work.get("diff", (k, m - 1), np.int64)
        gaps = work.get("gaps", (k, m - 1))
        eq = work.get("eq", (k, m), np.bool_)
    ub = union.view(np.int64)
    np.bitwise_and(ub[:, :ma], _NOT_ONE, out=ub[:, :ma])
    np.bitwise_or(ub[:, ma:], _ONE, out=ub[:, ma:])
    np.copyto(s, union)
    s.sort(axis=1)
    sb = s.view(np.int64)
    # Gaps between sorted neighbours; a gap between two elements of the same set is excluded
    # without branches: gaps are >= +0.0, so their bit patterns order like their values, and
    # setting the sign bit exactly where the labels differ makes those (and only those)
    # negative integers, still ordered by gap.
    np.bitwise_xor(sb[:, 1:], sb[:, :-1], out=diff)
    np.left_shift(diff, _SIGN, out=diff)
    np.subtract(s[:, 1:], s[:, :-1], out=gaps)
    gb = gaps.view(np.int64)
    np.bitwise_or(gb, diff, out=gb)
    j = gb.argmin(axis=1)
    rows = np.arange(k)
    lo = s[rows, j]
    hi = s[rows, j + 1]
    lo_is_a = (sb[rows, j] & _ONE) == 0
    va = np.where(lo_is_a, lo, hi)
    vq = np.where(lo_is_a, hi, lo)
    np.equal(union[:, :ma], va[:, None], out=eq[:, :ma])
    ia = eq[:, :ma].argmax(axis=1)
    np.equal(union[:, ma:], vq[:, None], out=eq[:, ma:])
    iq = eq[:, ma:].argmax(axis=1)
    return ia, iq


def closest_pairs(a: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise closest pair between ``a`` (k, ma) and ``q`` (k, mq), ma, mq >= 1.

    Returns (ia, iq), int64 (k,): column indices with |a[r, ia] - q[r, iq]| minimal up to
    one ulp of the values (callers recompute the error exactly).
    """
    ma = a.shape[1]
    union = np.empty((a.shape[0], ma + q.shape[1]))
    union[:, :ma] = a
    union[:, ma:] = q
    return _closest_in_union(union, ma)


def _bits(index: np.ndarray, h: int) -> np.ndarray:
    return ((index[:, None] >> np.arange(h)) & 1).astype(bool)


def _row_errors(t: np.ndarray, coef: np.ndarray, sel: np.ndarray) -> np.ndarray:
    return subset_errors(t, coef, sel)


def _ulps(t: np.ndarray, coef: np.ndarray) -> np.ndarray:
    """A bound on the float64 rounding of any subset's error, per row (8 n eps magnitude)."""
    n = coef.shape[1]
    return 8.0 * (n + 1) * np.finfo(np.float64).eps * (np.abs(t) + np.abs(coef).sum(axis=1))


def _rows_per_chunk(n: int, rows: int, fast: bool = False, cardinality: bool = False) -> int:
    h = n // 2
    width = (1 << h) + (1 << (n - h))
    # int32 keys (three 4-byte arrays per element): a bigger chunk amortises the ~60 numpy
    # calls of a chunk and still streams well
    cache = 4 * _CACHE_ELEMENTS if fast else _CACHE_ELEMENTS
    if cardinality:  # cheap levels touch a small part of each row: amortise calls instead
        cache = 8 * _CACHE_ELEMENTS
    by_cache = max(1, cache // width)
    by_memory = max(1, MEMORY_BUDGET // (width * 8 * _ARRAYS_PER_ELEMENT))
    return max(1, min(rows, by_cache, by_memory))


def _error_chunk(t: np.ndarray, coef: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Min-error subsets for rows with the same n. Returns (selection (k, n) bool, error)."""
    n = coef.shape[1]
    if _FAST_N[0] <= n <= _FAST_N[1]:
        sel, ok = _error_chunk_int32(t, coef)
        redo = np.flatnonzero(~ok)
        if redo.size:
            sel[redo] = _error_chunk_float(t[redo], coef[redo])[0]
        return sel, _row_errors(t, coef, sel)
    return _error_chunk_float(t, coef)


def _error_chunk_float(t: np.ndarray, coef: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Min-error subsets on float64 sums (any n). Returns (selection (k, n) bool, error)."""
    k, n = coef.shape
    h = n // 2
    hb = n - h
    ma = 1 << h
    union = _WORK.get("union", (k, ma + (1 << hb)))
    _sums_into(union[:, :ma], coef[:, :h], h, False)
    x = np.empty((k, 1 + hb))
    x[:, 0] = t
    np.negative(coef[:, h:], out=x[:, 1:])
    _sums_into(union[:, ma:], x, hb, True)     # q = t - b
    ia, iq = _closest_in_union(union, ma, _WORK)
    sel = np.concatenate([_bits(ia, h), _bits(iq, hb)], axis=1)
    return sel, _row_errors(t, coef, sel)


def _error_chunk_int32(t: np.ndarray, coef: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fast path of :func:`_error_chunk` on 32-bit keys; exact where it answers.

    Every value v (an A sum, or q = t - b) is mapped to z = (v - lo) * scale in
    [0, 2^31 - 256] (lo, scale per row from bounds on all sums) and represented by an int32
    key Z ~ z whose lowest bit is the set label (A: even, Q: odd). Keys are built directly in
    integer arithmetic: the sums of the first ``_INT_MATMUL_BITS`` coefficients of a half (with
    the constant) come from one float matmul, rounded to the nearest even integer (+ label);
    every further coefficient is rounded to an even integer w_j and added by doubling
    ``Z <- [Z, Z + w_j]`` in int32. So |Z - z| <= E with E = 1 + sum_j |w_j - c_j scale| (known
    per row, <= 1 + number of doubled coefficients), and for any pair the key difference g and
    the true scaled gap D satisfy |g - D| <= P = E_A + E_Q. No float sums, casts or label passes
    over the whole row.

    Let (x, z) be the adjacent different-label pair of minimal key difference d_min. The
    optimum pair has g* <= D* + P <= D_xz + P <= d_min + 2P, so the sorted run between its
    elements holds an adjacent different-label pair with key difference <= d_min + 2P and
    extends at most 2P beyond x and z. Hence, if (1) no *other* adjacent different-label pair
    has key difference <= d_min + M and (2) the sorted neighbours of x and z lie more than M
    away, with M >= 2P, the optimum *is* (x, z), and both keys are unique in the row, so their
    columns are found by equality. Rows failing (1) or (2) (a few percent: near-ties,
    duplicate sums) are returned with ok = False and must be solved by the float64 path.

    Returns (selection (k, n) bool, ok (k,) bool).
    """
    k, n = coef.shape
    h = n // 2
    hb = n - h
    ma = 1 << h
    m = ma + (1 << hb)
    # Bounds of all sums: A in [negA, posA], Q = t - b in [t - posB, t - negB]. One matmul
    # gives (sum A, sum B, positive part A, positive part B) per row.
    both = np.empty((k, 2 * n))
    both[:, :n] = coef
    np.maximum(coef, 0.0, out=both[:, n:])
    sa, sb, pa, pb = (both @ _bounds_table(h, hb)).T
    lo = np.minimum(sa - pa, t - pb)
    span = np.maximum(pa, t - (sb - pb)) - lo
    # z in [0, 2^31 - 256]: keys stay inside int32 with room for the rounding, differences < 2^31
    with np.errstate(over="ignore"):
        half = 0.5 * _KEY_RANGE / np.where(span > 0, span, 1.0)  # scale / 2: "Y units" (Z = 2Y)
    # a span so small (sums ~1e-300) that the scale overflows: those rows take the float path
    usable = np.isfinite(half)
    half = np.where(usable, half, 1.0)
    keys = _WORK.get("keys32", (k, m), np.int32)
    margin = np.zeros(k)
    for side, (cols, base, sign, width, label) in enumerate(
            ((slice(0, h), -lo, 1.0, h, 0), (slice(h, n), t - lo, -1.0, hb, 1))):
        bits = min(width, _INT_MATMUL_BITS)
        x = np.empty((k, 1 + width))
        x[:, 0] = base * half
        np.multiply(coef[:, cols], (sign * half)[:, None], out=x[:, 1:])
        out = keys[:, :ma] if side == 0 else keys[:, ma:]
        y = np.rint(x[:, :1 + bits] @ _table(bits, True))        # nearest Y, |error| <= 1/2
        y *= 2.0
        if label:
            y += 1.0
        np.copyto(out[:, :1 << bits], y, casting="unsafe")
        if width > bits:
            wr = np.rint(x[:, 1 + bits:])
            margin += 2.0 * np.abs(wr - x[:, 1 + bits:]).sum(axis=1)
            w = (2.0 * wr).astype(np.int32)
            step = 1 << bits
            for jj in range(width - bits):
                np.add(out[:, :step], w[:, jj:jj + 1], out=out[:, step:2 * step])
                step *= 2
        margin += 1.0
    # M >= 2P, plus slack for float noise in the matmul part (values up to 2^31, ~1e-6)
    limit = (2.0 * margin + 1.0).astype(np.int64) + 1
    s = _WORK.get("sorted32", (k, m), np.int32)
    np.copyto(s, keys)
    s.sort(axis=1)
    d = _WORK.get("diff32", (k, m - 1), np.int32)
    np.subtract(s[:, 1:], s[:, :-1], out=d)       # >= 0; odd <=> labels differ
    f = d   # in place: one buffer less in cache
    # d * (2^31 + 1) mod 2^32 = d | (d & 1) << 31 since d < 2^31: odd d (labels differ)
    # becomes INT32_MIN | d < 0, still ordered by d; even d (same set) stays >= 0.
    np.multiply(d.view(np.uint32), _ODD_TO_NEGATIVE, out=f.view(np.uint32))
    j = f.argmin(axis=1)
    rows = np.arange(k)
    fmin = f[rows, j].astype(np.int64)
    f[rows, j] = np.iinfo(np.int32).max
    unique = f.min(axis=1).astype(np.int64) > fmin + limit   # no other candidate close to the best
    padded = _WORK.get("pad32", (k, 4), np.int64)
    lo_j = np.maximum(j - 1, 0)
    hi_j = np.minimum(j + 2, m - 1)
    padded[:, 0] = s[rows, lo_j]
    padded[:, 1] = s[rows, j]
    padded[:, 2] = s[rows, j + 1]
    padded[:, 3] = s[rows, hi_j]
    gaps = np.diff(padded, axis=1)
    isolated = ((gaps[:, 0] > limit) | (j == 0)) & ((gaps[:, 2] > limit) | (j + 2 >= m))
    ok = unique & isolated & usable
    return _selection_of_keys(keys, padded[:, 1], padded[:, 2], h, hb), ok


def _selection_of_keys(keys: np.ndarray, kx: np.ndarray, kz: np.ndarray, h: int, hb: int
                       ) -> np.ndarray:
    """The subsets (k, h + hb) of the pair of unique int32 keys (kx, kz) per row: the column of
    each key (the even one in A = keys[:, :2^h], the odd one in Q), as bits."""
    k, m = keys.shape
    ma = 1 << h
    x_is_a = (kx & 1) == 0
    eq = _WORK.get("eq", (k, m), np.bool_)
    np.equal(keys[:, :ma], np.where(x_is_a, kx, kz).astype(np.int32)[:, None], out=eq[:, :ma])
    np.equal(keys[:, ma:], np.where(x_is_a, kz, kx).astype(np.int32)[:, None], out=eq[:, ma:])
    return np.concatenate([_bits(eq[:, :ma].argmax(axis=1), h), _bits(eq[:, ma:].argmax(axis=1), hb)],
                          axis=1)


@lru_cache(maxsize=None)
def _bounds_table(h: int, hb: int) -> np.ndarray:
    """(2n, 4) 0/1 matrix: [coef, max(coef, 0)] @ it = (sum A, sum B, pos A, pos B)."""
    n = h + hb
    w = np.zeros((2 * n, 4))
    w[:h, 0] = 1.0
    w[h:n, 1] = 1.0
    w[n:n + h, 2] = 1.0
    w[n + h:, 3] = 1.0
    w.setflags(write=False)
    return w


def _min_error_rows(t: np.ndarray, coef: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_error_chunk` over any number of rows of equal n, in cache-sized chunks."""
    k, n = coef.shape
    sel = np.zeros((k, n), dtype=bool)
    for rows in _chunks(np.arange(k), n, fast=_FAST_N[0] <= n <= _FAST_N[1]):
        sel[rows] = _error_chunk(t[rows], coef[rows])[0]
    return sel, _row_errors(t, coef, sel)


@lru_cache(maxsize=None)
def _table_by_popcount(h: int, lead_ones: bool) -> np.ndarray:
    table = np.ascontiguousarray(_table(h, lead_ones)[:, _popcount_order(h)[0]])
    table.setflags(write=False)
    return table


def _sums_by_popcount(x: np.ndarray, h: int, lead: bool) -> np.ndarray:
    """Like :func:`_sums_into`, columns ordered by popcount (``_popcount_order(h)``)."""
    if h <= _MATMUL_BITS:
        return x @ _table_by_popcount(h, lead)
    out = np.empty((x.shape[0], 1 << h))
    _sums_into(out, x, h, lead)
    return out[:, _popcount_order(h)[0]]


def _cardinality_chunk(t: np.ndarray, coef: np.ndarray, tau: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lexicographic (cardinality, error) minimum subject to error <= tau, rows of equal n.

    Levels c = 0, 1, ... are tried in order; level c solves the closest-pair problem between
    the A sums of popcount pa and the Q values of popcount c - pa, for every split pa. The
    first level whose best error is within tolerance wins (smallest error of that level).
    Before the levels get expensive, one plain min-error search removes the rows that have
    no subset within tolerance at all. Returns (selection, error, feasible); infeasible
    rows carry the min-error subset.
    """
    k, n = coef.shape
    h = n // 2
    hb = n - h
    sel = np.zeros((k, n), dtype=bool)
    err = np.full(k, np.inf)
    feasible = np.zeros(k, dtype=bool)
    if k == 0:
        return sel, err, feasible
    perm_a, off_a = _popcount_order(h)
    perm_b, off_b = _popcount_order(hb)
    a = _sums_by_popcount(np.ascontiguousarray(coef[:, :h]), h, False)
    xq = np.empty((k, 1 + hb))
    xq[:, 0] = t
    np.negative(coef[:, h:], out=xq[:, 1:])
    q = _sums_by_popcount(xq, hb, True)      # t - b
    # a, q, t, tau, coef hold the pending rows only; base maps them to the chunk's rows
    base = np.arange(k)
    full_cost = (1 << h) + (1 << hb)
    spent = 0
    checked_error = False
    for c in range(n + 1):
        pas = range(max(0, c - hb), min(c, h) + 1)
        level_cost = sum(comb(h, pa) + comb(hb, c - pa) for pa in pas)
        if not checked_error and spent + level_cost > full_cost // 2:
            checked_error = True
            s, e = _min_error_rows(t, coef)
            bad = e > tau
            sel[base[bad]] = s[bad]
            err[base[bad]] = e[bad]
            keep = ~bad
            a, q, t, tau, coef, base = a[keep], q[keep], t[keep], tau[keep], coef[keep], base[keep]
        if base.size == 0:
            break
        spent += level_cost
        rr = np.arange(base.size)
        best = np.full(base.size, np.inf)
        best_ia = np.zeros(base.size, dtype=np.int64)
        best_iq = np.zeros(base.size, dtype=np.int64)
        for pa in pas:
            pb = c - pa
            ar = a[:, off_a[pa]:off_a[pa + 1]]
            qr = q[:, off_b[pb]:off_b[pb + 1]]
            ia, iq = closest_pairs(ar, qr)
            e = np.abs(qr[rr, iq] - ar[rr, ia])
            better = e < best  # strict: the first split wins ties -> deterministic
            best = np.where(better, e, best)
            best_ia = np.where(better, ia + off_a[pa], best_ia)
            best_iq = np.where(better, iq + off_b[pb], best_iq)
        # |q - a| and the float64 error of subset_errors differ by a few ulps: take the pair
        # by the former, decide "within tau" by the latter (the one every backend uses)
        near = np.flatnonzero(best <= tau + _ulps(t, coef))
        ok = np.zeros(base.size, dtype=bool)
        if near.size:
            s = np.concatenate([_bits(perm_a[best_ia[near]], h),
                                _bits(perm_b[best_iq[near]], hb)], axis=1)
            e = _row_errors(t[near], coef[near], s)
            within = e <= tau[near]
            ok[near[within]] = True
            sel[base[near[within]]] = s[within]
            err[base[near[within]]] = e[within]
            feasible[base[near[within]]] = True
        if ok.any():
            keep = ~ok
            a, q, t, tau, coef, base = a[keep], q[keep], t[keep], tau[keep], coef[keep], base[keep]
    if base.size:  # level n covers every subset: reached only at ulp-level ties with tau
        s, e = _min_error_rows(t, coef)
        sel[base] = s
        err[base] = e
    return sel, err, feasible


def _chunks(group: np.ndarray, n: int, fast: bool = False, cardinality: bool = False):
    step = _rows_per_chunk(n, group.size, fast, cardinality)
    for start in range(0, group.size, step):
        yield group[start:start + step]


@lru_cache(maxsize=1)
def _blas_controller() -> ThreadpoolController:
    return ThreadpoolController()           # inspecting the loaded libraries costs ~ms: once


def single_thread_blas():
    """Context: numpy's BLAS on one thread for the duration, the previous limit restored after
    (threadpoolctl; with a process-wide OpenBLAS pool, only the thread that controls it changes
    anything, as threadpoolctl documents). Without a BLAS threadpoolctl knows, it does nothing."""
    return _blas_controller().limit(limits=1, user_api="blas")
