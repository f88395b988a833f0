"""What the solve stage is asked to do: :class:`SolveConfig` (backend, objective, workers, limits,
executor; each field's flag and help in its metadata) and the backend facts its defaults come from."""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from subsetsum_lth import limits
from subsetsum_lth.errors import UserError
from subsetsum_lth.options import option
from subsetsum_lth.solvers.base import SolverBackend
from subsetsum_lth.solvers.registry import DEFAULT_SOLVER, get_backend_class


def backend_fact(solver: str, fact: str):
    """A class attribute the driver reads from backend ``solver`` (``default_batch``,
    ``fallback_rank``, ``uses_pool``): SolverBackend's default where the backend does not set it
    (a plug-in that does not subclass SolverBackend) or cannot be loaded (an unknown or broken
    solver fails elsewhere, with its own message)."""
    try:
        cls = get_backend_class(solver)
    except Exception:
        cls = SolverBackend
    return getattr(cls, fact, getattr(SolverBackend, fact))


def default_batch(solver: str) -> int:
    """Instances per batch for ``solver`` when no batch size is given (its ``default_batch``)."""
    return int(backend_fact(solver, "default_batch"))


_WHERE = "where the solver batches run"    #: the help section of the executor's options


@dataclass
class SolveConfig:
    # each field's flag and help: subsetsum_lth.options (the CLI's options are generated from them)
    solver: str = option(DEFAULT_SOLVER, flag="--solver", help="solver backend (see 'subsetsum-lth solvers')")
    objective: str = option("error", flag="--objective", choices=("error", "feasible", "cardinality"),
                            help="error: minimise |w - ŵ| (the paper's MIP); cardinality: fewest kept "
                                 "coefficients within τ; feasible: any subset within τ")
    workers: int | None = option(None, flag="--workers", help="solver processes (default: all cores)")  # 1: here
    batch_size: int | None = option(None, flag="--batch-size", help="instances per solver batch (default: per "
                                    "backend, e.g. 1024 for ortools, 4096 for mitm)")
    time_limit: float | None = option(None, flag="--time-limit", help="per-instance solver time limit (s) of the "
                                      "backends that take one, and of the fallback for instances beyond exact "
                                      f"search (default: {limits.DEFAULT_TIME_LIMIT:g})")
    executor: str = option("process", flag="--executor", choices=("process", "dask", "dask-local"), group=_WHERE,
                           help="process: a local process pool; dask: a Dask distributed cluster (--scheduler); "
                                "dask-local: start a Dask LocalCluster of --workers processes "
                                "(dask needs: pip install 'subsetsum-lth[dask]')")
    scheduler: str | None = option(None, flag="--scheduler", metavar="ADDRESS", group=_WHERE,
                                   help="Dask scheduler address for --executor dask, e.g. tcp://10.0.0.1:8786")
    batch_timeout: float | None = option(None, flag="--batch-timeout", metavar="SECONDS", group=_WHERE,
                                         help="a batch not done in this time (counted once the process pool's "
                                              "workers have started) is cancelled (its worker replaced) "
                                              "and retried, then its instances are reported as failed")
    retries: int = option(2, flag="--retries", group=_WHERE,
                          help="extra attempts for a batch whose worker died or that timed out")
    fallback: bool = option(True, flag="--no-fallback", group=_WHERE,
                            help="do not re-solve TIMEOUT/ERROR instances with another exact backend")

    def __post_init__(self) -> None:
        """The numbers, checked once here (the CLI only parses them); the solver's availability
        and the executor are checked by :func:`check_solver`."""
        for name, flag in (("workers", "--workers"), ("batch_size", "--batch-size")):
            v = getattr(self, name)
            if v is not None:     # --workers beyond the cores is capped (with a note) when the pool starts
                limits.check_int(flag, v, 1, limits.MAX_COUNT)
        for name, flag in (("time_limit", "--time-limit"), ("batch_timeout", "--batch-timeout")):
            v = getattr(self, name)
            if v is not None:
                if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
                    raise UserError(f"{flag} must be a positive number of seconds, got {v!r}")
                limits.check_seconds(flag, v)
        limits.check_int("--retries", self.retries, 0, limits.MAX_RETRIES)

    def resolved_workers(self) -> int:
        w = self.workers if self.workers is not None else (os.cpu_count() or 1)
        if w < 1:
            raise UserError(f"--workers must be >= 1, got {w}")
        return w

    def resolved_batch(self) -> int:
        return int(self.batch_size or default_batch(self.solver))
