"""The data that crosses process boundaries: batches of subset-sum instances and their results.

One instance: target ``t``, coefficients ``c`` (``n`` live entries, the rest of the row padded
with zeros), tolerance ``tau``; find ``s`` in {0,1}^n such that ``|t - c.s| <= tau`` and,
depending on the objective, ``|t - c.s|`` or ``||s||_0`` is minimal.

Everything is plain numpy so that a batch pickles cheaply and travels to any executor.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np

OBJECTIVES = ("error", "feasible", "cardinality")


class Status(enum.IntEnum):
    """Outcome of one instance. The integer values are stored in result arrays."""

    OPTIMAL = 0      #: proved optimal for the objective, within tolerance
    FEASIBLE = 1     #: within tolerance, optimality not proved (time limit, or objective 'feasible')
    INFEASIBLE = 2   #: proved: no subset is within tolerance
    TIMEOUT = 3      #: no feasible subset found before the time limit, infeasibility not proved
    ERROR = 4        #: the backend failed on this instance

    @property
    def ok(self) -> bool:
        return self in (Status.OPTIMAL, Status.FEASIBLE)


@dataclass
class InstanceBatch:
    """A batch of independent subset-sum instances.

    Attributes:
        ids: int64 (k,) — global instance ids, used to put results back in place.
        targets: float64 (k,).
        coefficients: float64 (k, n) — row i holds ``counts[i]`` live coefficients first,
            then zeros. Backends may ignore the padding or treat it as zero coefficients;
            the driver clears any padded selection.
        counts: int64 (k,) — number of live coefficients per row.
        tolerances: float64 (k,).
        objective: one of OBJECTIVES.
    """

    ids: np.ndarray
    targets: np.ndarray
    coefficients: np.ndarray
    counts: np.ndarray
    tolerances: np.ndarray
    objective: str = "error"

    def __post_init__(self) -> None:
        self.ids = np.ascontiguousarray(self.ids, dtype=np.int64)
        self.targets = np.ascontiguousarray(self.targets, dtype=np.float64)
        self.coefficients = np.ascontiguousarray(self.coefficients, dtype=np.float64)
        if self.coefficients.ndim != 2:
            raise ValueError("coefficients must be a 2-D array (instances x coefficients)")
        k = self.coefficients.shape[0]
        self.counts = np.ascontiguousarray(
            np.full(k, self.coefficients.shape[1]) if self.counts is None else self.counts,
            dtype=np.int64,
        )
        tol = np.asarray(self.tolerances, dtype=np.float64)
        self.tolerances = np.ascontiguousarray(np.broadcast_to(tol, (k,)))
        if self.objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {self.objective!r}; choose one of {OBJECTIVES}")
        for name in ("ids", "targets", "counts", "tolerances"):
            if getattr(self, name).shape != (k,):
                raise ValueError(f"{name} must have shape ({k},)")
        if np.any(self.counts < 0) or np.any(self.counts > self.coefficients.shape[1]):
            raise ValueError("counts must lie in [0, n]")
        if not (np.all(np.isfinite(self.targets)) and np.all(np.isfinite(self.coefficients))):
            raise ValueError("targets and coefficients must be finite")
        if np.any(self.tolerances < 0):
            raise ValueError("tolerances must be >= 0")

    @classmethod
    def from_lists(cls, targets, coefficient_rows, tolerance, objective="error", ids=None):
        """Build a batch from ragged Python/numpy rows (convenient in tests)."""
        rows = [np.asarray(r, dtype=np.float64).ravel() for r in coefficient_rows]
        n = max((len(r) for r in rows), default=0)
        coef = np.zeros((len(rows), n))
        for i, r in enumerate(rows):
            coef[i, : len(r)] = r
        counts = np.array([len(r) for r in rows], dtype=np.int64)
        ids = np.arange(len(rows)) if ids is None else ids
        return cls(ids, np.asarray(targets, dtype=np.float64), coef, counts, tolerance, objective)

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    @property
    def width(self) -> int:
        return int(self.coefficients.shape[1])

    def live_mask(self) -> np.ndarray:
        """bool (k, n): True where a coefficient is live (not padding)."""
        return np.arange(self.width)[None, :] < self.counts[:, None]

    def take(self, index) -> "InstanceBatch":
        """Sub-batch of the given rows (index array or boolean mask)."""
        return InstanceBatch(
            self.ids[index], self.targets[index], self.coefficients[index],
            self.counts[index], self.tolerances[index], self.objective,
        )

    def split(self, size: int) -> list["InstanceBatch"]:
        return [self.take(slice(i, i + size)) for i in range(0, len(self), max(1, size))]


@dataclass
class BatchResult:
    """Results for one batch, row-aligned with it.

    Attributes:
        ids: int64 (k,).
        selections: bool (k, n) — the chosen subset (best found, also on INFEASIBLE when the
            backend has one; all False otherwise).
        errors: float64 (k,) — |t - c.s| recomputed in float64 from ``selections``.
        status: int8 (k,) — ``Status`` values.
        solver: name of the backend that was asked to solve the batch.
        seconds: wall time the backend spent on the batch.
        engines: str (k,) — the engine that produced each row (``solver``'s own name, or the one
            a portfolio or a settle step handed the row to: "mitm", "fixsearch", "ortools", ...);
            None: every row is ``solver``'s (see :func:`row_engines`).
    """

    ids: np.ndarray
    selections: np.ndarray
    errors: np.ndarray
    status: np.ndarray
    solver: str = ""
    seconds: float = 0.0
    messages: dict = field(default_factory=dict)  #: id -> text for ERROR rows
    engines: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.ids.shape[0])


def row_engines(res: BatchResult) -> np.ndarray:
    """The engine of every row of ``res``, as a str array (``res.solver`` where it names none)."""
    if res.engines is None:
        return np.full(len(res), res.solver, dtype=object).astype(str)
    return np.asarray(res.engines, dtype=str)


def subset_errors(targets, coefficients, selections) -> np.ndarray:
    """|t - c.s| in float64: the one definition of the error that every backend's
    within-tolerance decision and the driver's report use.

    The selected coefficients are subtracted from t one at a time, in column order, so the value
    depends only on t and the selected coefficients: not on zero padding, on the batch width, or
    on which backend chose the subset (numpy's pairwise ``sum`` groups terms by row length, so
    the same subset could land one ulp either side of τ in two batches). Works on one row
    (t scalar, c and s of shape (n,)) or on a batch (t (k,), c and s (k, n)).
    """
    c = np.asarray(coefficients, dtype=np.float64)
    sel = np.asarray(selections, dtype=bool)
    acc = np.array(targets, dtype=np.float64, copy=True)
    for j in range(c.shape[-1]):
        acc = acc - np.where(sel[..., j], c[..., j], 0.0)   # x - 0.0 == x exactly
    return np.abs(acc)


def recompute_errors(batch: InstanceBatch, selections: np.ndarray) -> np.ndarray:
    """|t - c.s| in float64 from the chosen subsets (never from a solver's objective)."""
    sel = np.asarray(selections, dtype=bool) & batch.live_mask()
    return subset_errors(batch.targets, batch.coefficients, sel)


def finalize(batch: InstanceBatch, selections: np.ndarray, status: np.ndarray, solver: str,
             seconds: float = 0.0, messages: dict | None = None,
             engines: np.ndarray | None = None) -> BatchResult:
    """Common epilogue for backends: clear padding, recompute errors, downgrade claims that
    the recomputed error contradicts (a row claimed within tolerance but outside it by more
    than rounding becomes ERROR)."""
    sel = np.asarray(selections, dtype=bool) & batch.live_mask()
    errors = recompute_errors(batch, sel)
    status = np.asarray(status, dtype=np.int8).copy()
    claimed_ok = (status == Status.OPTIMAL) | (status == Status.FEASIBLE)
    with np.errstate(over="ignore"):     # a row whose |t| + sum|c| overflows: infinite slack
        slack = 1e-9 * (1.0 + np.abs(batch.targets) + np.abs(batch.coefficients).sum(axis=1))
    broken = claimed_ok & (errors > batch.tolerances + slack)
    messages = dict(messages or {})
    for i in np.flatnonzero(broken):
        messages[int(batch.ids[i])] = (
            f"{solver}: claimed within tolerance but recomputed error {errors[i]:.3g} > {batch.tolerances[i]:.3g}"
        )
    status[broken] = Status.ERROR
    if engines is not None:
        engines = np.asarray(engines, dtype=object).astype(str)
    return BatchResult(batch.ids.copy(), sel, errors, status, solver, seconds, messages, engines)
