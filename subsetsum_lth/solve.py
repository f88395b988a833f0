"""Solve many subset-sum instances: solver lookup, batching, executors, resume store.

Instances are sorted by their number of live coefficients (exact backends cost ~2^{n/2}),
cut into batches, and sent to an executor; results come back keyed by instance id, so the
answer does not depend on the number of workers or on completion order.
"""
from __future__ import annotations

import concurrent.futures as cf
import hashlib
import logging
import multiprocessing as mp
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from subsetsum_lth.errors import UserError
from subsetsum_lth.instances import BatchResult, InstanceBatch, Status

log = logging.getLogger(__name__)

#: Default instances per batch by backend: enough work per batch (≥ ~100 ms) to amortise IPC.
DEFAULT_BATCH = {"mitm": 4096, "ortools": 1024, "cpsat": 32, "gurobi": 16}


@dataclass
class SolveConfig:
    solver: str = "ortools"
    objective: str = "error"
    workers: int | None = None        #: None: all cores; 1: in this process
    batch_size: int | None = None     #: None: DEFAULT_BATCH[solver] or 512
    time_limit: float | None = None   #: per instance, seconds (backends that support it)

    def resolved_workers(self) -> int:
        w = self.workers if self.workers is not None else (os.cpu_count() or 1)
        if w < 1:
            raise UserError(f"--workers must be >= 1, got {w}")
        return w

    def resolved_batch(self) -> int:
        return int(self.batch_size or DEFAULT_BATCH.get(self.solver, 512))


def check_solver(config: SolveConfig) -> None:
    """Fail early, with the fix, if the solver is unknown, unavailable or lacks the objective."""
    from solvers.base import SolverUnavailable
    from solvers.registry import get_backend_class, list_backends

    try:
        cls = get_backend_class(config.solver)
    except KeyError:
        raise UserError(f"unknown solver {config.solver!r}; available: {', '.join(list_backends())} "
                        "(see 'subsetsum-lth solvers')") from None
    except Exception as exc:  # a plug-in that fails to import
        raise UserError(f"solver {config.solver!r} cannot be loaded: {exc}") from None
    ok, reason = cls.is_available()
    if not ok:
        raise UserError(f"solver {config.solver!r} is not available: {reason}")
    if config.objective not in cls.capabilities.objectives:
        raise UserError(f"solver {config.solver!r} does not support objective {config.objective!r}; "
                        f"it supports {', '.join(cls.capabilities.objectives)}")
    _ = SolverUnavailable


_BACKENDS: dict = {}


def solve_batch(solver: str, options: dict, batch: InstanceBatch) -> BatchResult:
    """Worker entry point: one backend object per process, reused across batches."""
    from solvers.registry import get_backend

    key = (solver, tuple(sorted(options.items())))
    backend = _BACKENDS.get(key)
    if backend is None:
        backend = _BACKENDS[key] = get_backend(solver, **options)
    backend.check_objective(batch.objective)
    t0 = time.perf_counter()
    res = backend.solve(batch)
    res.seconds = time.perf_counter() - t0
    return res


def batch_key(solver: str, batch: InstanceBatch) -> str:
    h = hashlib.sha256()
    h.update(f"{solver}|{batch.objective}|".encode())
    for a in (batch.ids, batch.targets, batch.coefficients, batch.counts, batch.tolerances):
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:32]


class ResumeStore:
    """Finished batches as .npz files in a folder; a batch is found again by a content hash of
    its inputs, so resuming reuses exactly the work whose inputs are unchanged."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.folder / f"{key}.npz"

    def get(self, key: str, batch: InstanceBatch) -> BatchResult | None:
        path = self._path(key)
        if not path.exists():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                res = BatchResult(z["ids"], z["selections"], z["errors"], z["status"],
                                  str(z["solver"]), float(z["seconds"]))
        except Exception as exc:  # a corrupt partial file is recomputed, not trusted
            log.warning("ignoring unreadable partial result %s: %s", path, exc)
            return None
        if not np.array_equal(res.ids, batch.ids) or res.selections.shape != batch.coefficients.shape:
            return None
        return res

    def put(self, key: str, res: BatchResult) -> None:
        import io
        from subsetsum_lth.runfolder import _atomic_write_bytes
        buf = io.BytesIO()
        np.savez(buf, ids=res.ids, selections=res.selections, errors=res.errors, status=res.status,
                 solver=np.array(res.solver), seconds=np.array(res.seconds))
        _atomic_write_bytes(self._path(key), buf.getvalue())

        _maybe_inject_fault()

    def count(self) -> int:
        return len(list(self.folder.glob("*.npz")))


FAULT_ENV = "SUBSETSUM_LTH_FAULT_AFTER_BATCHES"
_puts = 0


def _maybe_inject_fault() -> None:
    """Test-only fault injection: with $SUBSETSUM_LTH_FAULT_AFTER_BATCHES=N the process dies
    abruptly (as under kill -9) right after the N-th finished batch was stored."""
    global _puts
    limit = os.environ.get(FAULT_ENV)
    if not limit:
        return
    _puts += 1
    if _puts >= int(limit):
        log.error("fault injection: killing this process after %d stored batches", _puts)
        os._exit(137)


def _watch_parent() -> None:
    """Worker initializer: exit when the parent process dies (kill -9, crash), so that no
    orphaned worker keeps running or holds the parent's output pipes open."""
    import threading
    from multiprocessing.connection import wait

    parent = mp.parent_process()
    if parent is None:
        return

    def watch():
        wait([parent.sentinel])
        os._exit(1)
    threading.Thread(target=watch, daemon=True, name="watch-parent").start()


def _make_executor(workers: int) -> cf.Executor:
    return cf.ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                                  initializer=_watch_parent)


def solve_all(batch: InstanceBatch, config: SolveConfig,
              on_progress: Callable[[int], None] | None = None,
              store: ResumeStore | None = None,
              executor: cf.Executor | None = None) -> BatchResult:
    """Solve every instance of ``batch``; returns one BatchResult row-aligned with ``batch``.

    Args:
        on_progress: called with the number of instances just finished.
        store: resume store; batches found there are not solved again.
        executor: any concurrent.futures.Executor (overrides ``config.workers``).
    """
    k = len(batch)
    n = batch.width
    selections = np.zeros((k, n), dtype=bool)
    errors = np.full(k, np.inf)
    status = np.full(k, int(Status.ERROR), dtype=np.int8)
    messages: dict = {}
    if k == 0:
        return BatchResult(batch.ids, selections, errors, status, config.solver, 0.0, messages)
    order = np.argsort(batch.counts, kind="stable")
    size = config.resolved_batch()
    chunks = []
    for start in range(0, k, size):
        rows = order[start:start + size]
        sub = batch.take(rows)
        width = int(sub.counts.max()) if len(sub) else 0
        sub = InstanceBatch(sub.ids, sub.targets, sub.coefficients[:, :width], sub.counts,
                            sub.tolerances, sub.objective)
        chunks.append((rows, sub))

    options = {"time_limit": config.time_limit} if config.time_limit else {}
    t0 = time.perf_counter()

    def accept(rows, res: BatchResult):
        w = res.selections.shape[1]
        selections[rows, :w] = res.selections
        errors[rows] = res.errors
        status[rows] = res.status
        messages.update(res.messages)
        if on_progress:
            on_progress(len(rows))

    todo = []
    for rows, sub in chunks:
        key = batch_key(config.solver, sub) if store else None
        cached = store.get(key, sub) if store else None
        if cached is not None:
            accept(rows, cached)
        else:
            todo.append((rows, sub, key))
    if store and len(todo) < len(chunks):
        log.info("resume: %d of %d batches already solved", len(chunks) - len(todo), len(chunks))

    workers = config.resolved_workers()
    if executor is None and (workers == 1 or len(todo) <= 1):
        for rows, sub, key in todo:
            res = solve_batch(config.solver, options, sub)
            if store:
                store.put(key, res)
            accept(rows, res)
    else:
        own = executor is None
        ex = executor or _make_executor(min(workers, len(todo)))
        try:
            futures = {ex.submit(solve_batch, config.solver, options, sub): (rows, sub, key)
                       for rows, sub, key in todo}
            for fut in cf.as_completed(futures):
                rows, sub, key = futures[fut]
                res = fut.result()
                if store:
                    store.put(key, res)
                accept(rows, res)
        finally:
            if own:
                ex.shutdown(wait=True, cancel_futures=True)
    return BatchResult(batch.ids.copy(), selections, errors, status, config.solver,
                       time.perf_counter() - t0, messages)
