"""Exact meet-in-the-middle in torch, batched over thousands of instances, on CPU or CUDA.

Per instance (``n`` live coefficients, halves A = the first ``n // 2`` and B = the rest): all
``2^|A|`` subset sums ``a`` and all ``q = t - b`` over the ``2^|B|`` subset sums ``b`` are built
by doubling (``S <- [S, S + c_j]``: column index bit j = coefficient j selected; elementwise
adds in a fixed order, so a value never depends on the batch), the A sums are sorted per row
(stable sort), every ``q`` is placed among them with a row-wise ``searchsorted``, and the pair
with the smallest ``|q - a| = |t - a - b|`` over the two neighbours of every ``q`` is the
min-error subset (the closest element of a sorted list to a point is one of its two
neighbours). Whole chunks of rows (all with the same n) go through each tensor operation at
once, which is what a GPU needs; on a CPU torch's row-wise sort is much slower than numpy's
(see the ``mitm`` backend for the fast CPU path).

Exact in the sense of the ``mitm`` float path: sums are float64, so the optimum is found to a
few ulps of the values; every reported error is recomputed by
:func:`subsetsum_lth.solvers.instances.finalize`, and "within τ" is decided on that float64
error as in every backend. Deterministic: a stable sort, the first minimal gap (in the order
of ``q``, lower neighbour first), no atomics; CPU and CUDA give the same selections. When
several subsets share the optimal error it may pick a different one than ``mitm``.

Only the 'error' and 'feasible' objectives (for 'feasible' the min-error subset is returned,
FEASIBLE when it is within τ); 'cardinality' is not implemented here.
"""
from __future__ import annotations

import importlib.util
import time
from functools import lru_cache

import numpy as np

from .base import Capabilities, SolverBackend, SolverUnavailable
from .instances import BatchResult, InstanceBatch, Status, finalize, subset_errors
from .mitm import MAX_N   # the enumeration's reach, the same as numpy mitm's (2^20 sums per half)



def _bits(index: np.ndarray, h: int) -> np.ndarray:
    return ((index[:, None] >> np.arange(h)) & 1).astype(bool)


@lru_cache(maxsize=1)
def _cuda_available() -> bool:
    import torch
    return bool(torch.cuda.is_available())


class TorchMitmSolver(SolverBackend):
    """Exact meet-in-the-middle on torch tensors: O(2^{n/2} log) per instance, batched."""

    name = "torch-mitm"
    capabilities = Capabilities(exact=True, objectives=("error", "feasible"),
                                float_coefficients=True, max_n=MAX_N, reach=MAX_N)
    description = ("meet-in-the-middle in torch (sort + searchsorted over half-sums, batched; "
                   "CPU or CUDA, exact)")
    #: instances per solve call the driver should send (a GPU wants thousands at once)
    default_batch = 8192
    uses_pool = False    #: one device (a GPU, or torch's own threads): batches run in this process
    #: the device when none is given: "cuda" when torch sees a GPU, else "cpu"
    default_device = None
    #: bytes of working tensors per chunk of rows, per device type
    memory_budget = {"cpu": 128 * 2**20, "cuda": 2 * 2**30}
    #: torch CPU threads while solving (the driver runs one solver process per core)
    default_threads = 1

    def __init__(self, time_limit: float | None = None, device: str | None = None,
                 threads: int | None = None, memory_budget: int | None = None, **options):
        super().__init__(time_limit, **options)
        import torch

        name = device or self.default_device or ("cuda" if _cuda_available() else "cpu")
        try:
            self.device = torch.device(name)
        except (RuntimeError, TypeError) as exc:
            raise ValueError(f"torch-mitm: unknown device {name!r} ({exc}); use 'cpu' or 'cuda'") \
                from None
        if self.device.type == "cuda" and not _cuda_available():
            raise SolverUnavailable(
                f"torch-mitm: device {name!r} asked for but torch sees no CUDA GPU here; "
                "use device='cpu'")
        if self.device.type not in self.memory_budget and memory_budget is None:
            raise ValueError(f"torch-mitm: device type {self.device.type!r} is not supported; "
                             "use 'cpu' or 'cuda'")
        self.threads = self.default_threads if threads is None else int(threads)
        if self.threads < 1:
            raise ValueError(f"torch-mitm: threads must be >= 1, got {threads}")
        self.budget = int(memory_budget or self.memory_budget[self.device.type])

    @classmethod
    def is_available(cls) -> tuple[bool, str | None]:
        if importlib.util.find_spec("torch") is None:
            return False, "torch is not installed (pip install torch)"
        return True, None

    def _rows_per_chunk(self, n: int) -> int:
        h = n // 2
        ma, mq = 1 << h, 1 << (n - h)
        # a, sorted a, its permutation (8 bytes each per A sum); q, pos, lo, hi, two gaps,
        # the choice and a temporary (8 bytes each per q)
        per_row = 8 * (3 * ma + 9 * mq)
        return max(1, self.budget // per_row)

    def solve(self, batch: InstanceBatch) -> BatchResult:
        t0, selections, status, messages = self.start(batch)
        max_n = self.capabilities.max_n
        with np.errstate(over="ignore"):
            scale = np.abs(batch.targets) + np.abs(batch.coefficients).sum(axis=1)
        too_big = batch.counts > max_n
        overflow = ~np.isfinite(scale)
        for i in np.flatnonzero(too_big):
            messages[int(batch.ids[i])] = (
                f"torch-mitm: n = {int(batch.counts[i])} is beyond its reach n <= {max_n} "
                "(2^(n/2) enumeration)")
        for i in np.flatnonzero(overflow & ~too_big):
            messages[int(batch.ids[i])] = ("torch-mitm: |t| + sum |c| overflows float64; "
                                           "scale the instance down")
        ok_rows = np.flatnonzero(~too_big & ~overflow)
        if ok_rows.size:
            sel = self.min_error_selections(batch.targets[ok_rows], batch.coefficients[ok_rows],
                                            batch.counts[ok_rows])
            selections[ok_rows] = sel
            live = batch.live_mask()[ok_rows]
            feasible = subset_errors(batch.targets[ok_rows], batch.coefficients[ok_rows],
                                     sel & live) <= batch.tolerances[ok_rows]
            good = Status.FEASIBLE if batch.objective == "feasible" else Status.OPTIMAL
            status[ok_rows] = np.where(feasible, int(good), int(Status.INFEASIBLE))
        return finalize(batch, selections, status, self.name, time.perf_counter() - t0, messages)

    def min_error_selections(self, targets: np.ndarray, coefficients: np.ndarray,
                             counts: np.ndarray) -> np.ndarray:
        """Min-error subsets of a padded batch: selections (k, width) bool."""
        import torch

        k, width = coefficients.shape
        sel = np.zeros((k, width), dtype=bool)
        threads = None
        if self.device.type == "cpu":
            threads = torch.get_num_threads()
            torch.set_num_threads(self.threads)
        try:
            with torch.no_grad():
                for n in np.unique(counts):
                    n = int(n)
                    if n > MAX_N:
                        raise ValueError(f"torch-mitm: n = {n} exceeds the enumeration limit "
                                         f"{MAX_N}")
                    group = np.flatnonzero(counts == n)
                    step = self._rows_per_chunk(n)
                    for start in range(0, group.size, step):
                        rows = group[start:start + step]
                        t = torch.as_tensor(targets[rows], dtype=torch.float64).to(self.device)
                        c = torch.as_tensor(np.ascontiguousarray(coefficients[rows, :n]),
                                            dtype=torch.float64).to(self.device)
                        ia, iq = closest_pairs(t, c)
                        h = n // 2
                        sel[rows, :h] = _bits(ia.cpu().numpy(), h)
                        sel[rows, h:n] = _bits(iq.cpu().numpy(), n - h)
        finally:
            if threads is not None:
                torch.set_num_threads(threads)
        return sel


def subset_sums(base, cols, negate: bool = False):
    """(k, 2^h) tensor of ``base + sum_{j in S} (+-cols[:, j])`` over all subsets S (column index
    bit j = j in S), built by doubling: a fixed order of elementwise adds per value."""
    import torch

    k, h = cols.shape
    out = torch.empty((k, 1 << h), dtype=cols.dtype, device=cols.device)
    out[:, :1] = base
    m = 1
    for j in range(h):
        c = cols[:, j:j + 1]
        out[:, m:2 * m] = out[:, :m] - c if negate else out[:, :m] + c
        m *= 2
    return out


def closest_pairs(t, coef):
    """Row-wise min-error split of ``coef`` (k, n) (all rows with the same n) for targets ``t``
    (k,): returns (ia, iq), int64 tensors (k,), the subset indices of the A half (bits over the
    first n // 2 coefficients) and of the B half (bits over the rest)."""
    import torch

    k, n = coef.shape
    h = n // 2
    a = subset_sums(torch.zeros((k, 1), dtype=coef.dtype, device=coef.device), coef[:, :h])
    q = subset_sums(t[:, None], coef[:, h:], negate=True)           # t - b
    ma = a.shape[1]
    sa, perm = torch.sort(a, dim=1, stable=True)
    del a
    pos = torch.searchsorted(sa, q)                                 # first a >= q, in [0, ma]
    lo = (pos - 1).clamp_(min=0)
    hi = pos.clamp_(max=ma - 1)                                     # pos is not used again
    gap_lo = (q - sa.gather(1, lo)).abs_()
    gap_hi = (sa.gather(1, hi) - q).abs_()
    use_hi = gap_hi < gap_lo                                        # ties: the lower neighbour
    gap = torch.where(use_hi, gap_hi, gap_lo)
    ja = torch.where(use_hi, hi, lo)
    iq = gap.argmin(dim=1)                                          # the first minimal q
    ia = perm.gather(1, ja.gather(1, iq[:, None]))[:, 0]
    return ia, iq
