"""The backend protocol: capability flags, lazy availability, batched solve."""
from __future__ import annotations

import abc
import time
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from .instances import BatchResult, InstanceBatch, Status
from .interrupt import solver_time_limit


class SolverUnavailable(RuntimeError):
    """Raised when a backend is asked for but cannot run here (missing package, licence)."""


@dataclass(frozen=True)
class Capabilities:
    exact: bool                      #: proves optimality of the objectives it supports
    objectives: tuple[str, ...]      #: subset of instances.OBJECTIVES
    float_coefficients: bool = True  #: takes real coefficients (else scales to integers internally)
    max_n: int | None = None         #: largest number of live coefficients it accepts (None: any)
    #: its reach: the largest live count it searches exactly by enumeration (mitm: 40; None: no
    #: enumeration limit, e.g. a MIP). Growth and the cost estimate read it; one number per backend
    reach: int | None = None


class SolverBackend(abc.ABC):
    """A subset-sum backend.

    Subclasses set ``name`` and ``capabilities``, implement ``is_available`` without importing
    heavy packages at module import time, and implement ``solve`` over a whole batch.
    Errors they report are recomputed in float64 by :func:`subsetsum_lth.solvers.instances.finalize`.

    What the solve driver (``subsetsum_lth.solve``) needs to know about a backend is said here,
    as class attributes, and read from nowhere else: ``default_batch``, ``fallback_rank`` and
    ``uses_pool``.
    """

    name: ClassVar[str]
    capabilities: ClassVar[Capabilities]
    description: ClassVar[str] = ""
    #: instances per batch when no batch size is given: enough work per batch (>= ~100 ms) to
    #: amortise sending it to a worker
    default_batch: ClassVar[int] = 512
    #: place in the fallback order (lowest first) of the exact backends that re-solve instances
    #: another backend left TIMEOUT/ERROR; None: never used as a fallback
    fallback_rank: ClassVar[int | None] = None
    #: False: the backend's batches always run in the calling process, never in a pool of
    #: worker processes or on a cluster (for a backend that parallelises itself or holds a device)
    uses_pool: ClassVar[bool] = True

    def __init__(self, time_limit: float | None = None, **options):
        #: seconds per native solve; never more than interrupt.MAX_TIME_LIMIT (the driver says so)
        self.time_limit = solver_time_limit(time_limit)
        self.options = options

    @classmethod
    def is_available(cls) -> tuple[bool, str | None]:
        """(available, reason-if-not). Must not have side effects beyond a cheap import check."""
        return True, None

    @abc.abstractmethod
    def solve(self, batch: InstanceBatch) -> BatchResult:
        """Solve every instance of ``batch``; one result row per instance, same order."""

    def check_objective(self, objective: str) -> None:
        if objective not in self.capabilities.objectives:
            raise ValueError(
                f"solver {self.name!r} does not support objective {objective!r} "
                f"(supports: {', '.join(self.capabilities.objectives)})"
            )

    def start(self, batch: InstanceBatch) -> tuple[float, np.ndarray, np.ndarray, dict]:
        """Common prologue of ``solve``: check the objective; return (start time, empty
        selections, statuses all ERROR until set, messages)."""
        self.check_objective(batch.objective)
        k = len(batch)
        return (time.perf_counter(), np.zeros((k, batch.width), dtype=bool),
                np.full(k, int(Status.ERROR), dtype=np.int8), {})
