"""Solve many subset-sum instances: solver lookup, batching, executors (the resume store of
finished batches is :mod:`subsetsum_lth.resume_store`).

Instances are sorted by their number of live coefficients (exact backends cost ~2^{n/2}),
cut into batches, and sent to an executor; results come back keyed by instance id, so the
answer does not depend on the number of workers or on completion order.
"""
from __future__ import annotations

import concurrent.futures as cf
from concurrent.futures.process import BrokenProcessPool
import logging
import os
import time
from dataclasses import dataclass

import numpy as np

from subsetsum_lth import limits
from subsetsum_lth.errors import UserError
from subsetsum_lth.executors import Pool, _watch_parent, as_pool, check_executor, deferred_signals, make_pool
from subsetsum_lth.progress import Bar, advance
from subsetsum_lth.resume_store import (ResumeStore, _result_digest, batch_digest, batch_key,  # noqa: F401
                                        stored_engines)
from subsetsum_lth.solvers.base import SolverUnavailable
from subsetsum_lth.solvers.instances import BatchResult, InstanceBatch, Status, row_engines
from subsetsum_lth.solve_config import SolveConfig, backend_fact, default_batch  # noqa: F401  (public here too)
from subsetsum_lth.solvers.registry import get_backend, get_backend_class, list_backends

log = logging.getLogger(__name__)


def in_process(config: SolveConfig, solver: str | None = None, n_batches: int | None = None) -> bool:
    """Whether the batches of ``solver`` (default ``config.solver``) run in this process instead of
    a pool of workers: always for a backend with ``uses_pool = False``; else with the local
    process executor, no batch timeout (only a worker process can be stopped) and one worker or
    at most one batch (``n_batches``; None: not known yet). The one place this is decided: the
    CLI asks it before starting a pool for a whole run, ``solve_all`` before each solve."""
    if not backend_fact(solver or config.solver, "uses_pool"):
        return True
    if config.executor != "process" or config.batch_timeout:
        return False
    return config.resolved_workers() == 1 or (n_batches is not None and n_batches <= 1)


def check_solver(config: SolveConfig) -> None:
    """Fail early, with the fix, if the solver is unknown, unavailable or lacks the objective."""

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
    check_executor(config.executor, config.scheduler)
    _ = SolverUnavailable


_BACKENDS: dict = {}


def solve_batch(solver: str, options: dict, batch: InstanceBatch) -> BatchResult:
    """Worker entry point: one backend object per process, reused across batches."""

    key = (solver, tuple(sorted(options.items())))
    backend = _BACKENDS.get(key)
    if backend is None:
        backend = _BACKENDS[key] = get_backend(solver, **options)
    backend.check_objective(batch.objective)
    t0 = time.perf_counter()
    res = backend.solve(batch)
    res.seconds = time.perf_counter() - t0
    return res


def _failed(sub: InstanceBatch, solver: str, reason: str) -> BatchResult:
    """A batch that could not be solved: every row ERROR, with the reason as its message."""
    k = len(sub)
    return BatchResult(sub.ids.copy(), np.zeros((k, sub.width), dtype=bool), np.full(k, np.inf),
                       np.full(k, int(Status.ERROR), dtype=np.int8), solver, 0.0,
                       {int(i): f"{solver}: {reason}" for i in sub.ids})


def fallback_order() -> list[str]:
    """The backends that may re-solve failed instances, by their ``fallback_rank`` (lowest first;
    ties by name); backends that cannot be loaded or have no rank are left out."""

    ranked = []
    for name in list_backends():
        rank = backend_fact(name, "fallback_rank")
        if rank is not None:
            ranked.append((rank, name))
    return [name for _, name in sorted(ranked)]


def fallback_solver(solver: str, objective: str, max_count: int) -> str | None:
    """Another exact backend for instances the first one could not finish (TIMEOUT/ERROR): the
    first of :func:`fallback_order` (mitm, auto, then ortools) that is exact, takes the objective, fits
    every instance (``max_n``) and is available; None if there is none."""

    for name in fallback_order():
        if name == solver:
            continue
        cls = get_backend_class(name)
        cap = cls.capabilities
        if not cap.exact or objective not in cap.objectives:
            continue
        if cap.max_n is not None and max_count > cap.max_n:
            continue
        if cls.is_available()[0]:
            return name
    return None


@dataclass
class _Item:
    rows: np.ndarray
    sub: InstanceBatch
    key: str | None
    attempts: int = 0


def _run_in_process(todo, solver, options, done) -> None:
    for it in todo:
        try:
            res = solve_batch(solver, options, it.sub)
        except Exception as exc:  # a backend bug must not sink the run: the rows become ERROR
            log.error("%s failed on a batch of %d instances: %s", solver, len(it.sub), exc)
            done(it, _failed(it.sub, solver, f"{type(exc).__name__}: {exc}"), False)
            continue
        done(it, res, True)


def _run_in_pool(pool: Pool, todo, solver, options, config: SolveConfig, done) -> None:
    """Submit batches (at most ``pool.capacity`` in flight), retry a batch whose worker died or that
    ran past ``config.batch_timeout`` (bounded by ``config.retries``), then report it as failed.
    SIGINT/SIGTERM are delivered between two waits, never inside one (see ``deferred_signals``)."""

    with deferred_signals() as signals:
        _drive_pool(pool, todo, solver, options, config, done, signals)


#: seconds between two checks for a deferred signal while waiting on batches
_POLL_SECONDS = 0.25


def _drive_pool(pool: Pool, todo, solver, options, config: SolveConfig, done, signals: list) -> None:
    from collections import deque

    pending = deque(todo)
    inflight: dict = {}                   # future -> (item, submitted at)
    limit = config.batch_timeout
    max_attempts = 1 + max(0, int(config.retries))
    def fail(it: _Item, reason: str) -> None:
        it.attempts += 1
        if it.attempts >= max_attempts:
            log.error("batch of %d instances failed %d times (%s); its instances are reported as failed",
                      len(it.sub), it.attempts, reason)
            done(it, _failed(it.sub, solver, f"batch failed {it.attempts} times: {reason}"), False)
        else:
            log.warning("batch of %d instances failed (%s); retrying (attempt %d of %d)",
                        len(it.sub), reason, it.attempts + 1, max_attempts)
            pending.append(it)

    def broken(reason: str) -> None:
        # every batch that was in flight may have been the one that killed its worker
        for fut, (it, _) in list(inflight.items()):
            fut.cancel()
            fail(it, reason)
        inflight.clear()
        if not pool.rebuildable:
            while pending:
                it = pending.popleft()
                done(it, _failed(it.sub, solver, f"the executor broke: {reason}"), False)
            return
        pool.breaks = getattr(pool, "breaks", 0) + 1
        if pool.breaks > max_attempts:   # consecutive breaks with no batch finished in between
            raise UserError(f"the {pool.kind} workers keep dying with no batch finished ({reason}); "
                            "check that worker processes can start and import subsetsum_lth "
                            "(e.g. run from a script file, not stdin), or use --workers 1")
        pool.recover()

    while (pending or inflight) and not signals:
        while pending and len(inflight) < pool.capacity:
            it = pending.popleft()
            try:
                fut = pool.submit(solve_batch, solver, options, it.sub)
            except (BrokenProcessPool, RuntimeError) as exc:
                pending.appendleft(it)
                broken(f"cannot submit: {exc}")
                continue
            inflight[fut] = (it, time.monotonic())
        if not inflight:
            continue
        wait_s = _POLL_SECONDS
        ready = pool.ready_since() if limit else None
        if limit and ready is None and pool.starting_for() > limits.WORKER_START_SECONDS:
            broken(f"the worker processes did not start within {limits.WORKER_START_SECONDS:g}s")
            continue
        if ready is not None:
            # a batch's clock starts at its submission, or once the workers are up if later
            oldest = max(ready, min(t for _, t in inflight.values()))
            wait_s = min(wait_s, max(0.05, oldest + limit - time.monotonic()))
        finished, _ = cf.wait(list(inflight), timeout=wait_s, return_when=cf.FIRST_COMPLETED)
        pool_broke = None
        for fut in finished:
            it, _ = inflight.pop(fut)
            try:
                res = fut.result()
            except cf.CancelledError:
                pending.append(it)
            except BrokenProcessPool as exc:
                pool_broke = f"a worker process died ({exc})"
                fail(it, pool_broke)
            except Exception as exc:   # dask KilledWorker, a backend exception, a lost connection
                fail(it, f"{type(exc).__name__}: {exc}")
            else:
                pool.breaks = 0
                done(it, res, True)
        if pool_broke:
            broken(pool_broke)
            continue
        if ready is not None:
            now = time.monotonic()
            expired = [f for f, (_, t) in inflight.items() if now - max(t, ready) > limit]
            if expired:
                lost_all = pool.kill_running(expired)
                for f in expired:
                    it, _ = inflight.pop(f)
                    f.cancel()
                    fail(it, f"not done within --batch-timeout {limit:g}s")
                if lost_all:
                    # the other batches in flight lost their workers through no fault of their own
                    for f, (it, _) in inflight.items():
                        f.cancel()
                        pending.appendleft(it)
                    inflight.clear()
                    pool.recover()


class _Answer:
    """The answer :func:`solve_all` assembles, row-aligned with its batch: every batch result
    (a solved, a stored or a failed batch) is written into its rows, the engine of each row
    with it, so a re-solve (fallback) overwrites what the first solve left."""

    def __init__(self, batch: InstanceBatch):
        k = len(batch)
        self.selections = np.zeros((k, batch.width), dtype=bool)
        self.errors = np.full(k, np.inf)
        self.status = np.full(k, int(Status.ERROR), dtype=np.int8)
        self.engines = np.full(k, "", dtype=object)
        self.messages: dict = {}

    def put(self, rows: np.ndarray, res: BatchResult) -> None:
        w = res.selections.shape[1]
        self.selections[rows] = False
        self.selections[rows, :w] = res.selections
        self.errors[rows] = res.errors
        self.status[rows] = res.status
        self.engines[rows] = row_engines(res)
        self.messages.update(res.messages)

    def failed_rows(self) -> np.ndarray:
        return np.flatnonzero((self.status == Status.ERROR) | (self.status == Status.TIMEOUT))

    def result(self, batch: InstanceBatch, solver: str, seconds: float) -> BatchResult:
        engines = np.where(self.engines == "", solver, self.engines).astype(str)
        return BatchResult(batch.ids.copy(), self.selections, self.errors, self.status, solver, seconds,
                           self.messages, engines)


class _Driver:
    """One :func:`solve_all` call: its batch, settings, resume store and pool (started on first
    need when the caller gave none, and then closed or aborted here)."""

    def __init__(self, batch: InstanceBatch, config: SolveConfig, store: ResumeStore | None, executor):
        self.batch, self.config, self.store = batch, config, store
        self.pool = None if executor is None else as_pool(executor)
        self.own = False
        self.answer = _Answer(batch)

    def items(self, solver: str, rows_in: np.ndarray, size: int) -> list[_Item]:
        """``rows_in`` in batches of ``size``, each cut to its widest instance."""
        out = []
        for start in range(0, len(rows_in), size):
            rows = rows_in[start:start + size]
            sub = self.batch.take(rows)
            width = int(sub.counts.max()) if len(sub) else 0
            sub = InstanceBatch(sub.ids, sub.targets, sub.coefficients[:, :width], sub.counts,
                                sub.tolerances, sub.objective)
            out.append(_Item(rows, sub, batch_key(solver, sub) if self.store else None))
        return out

    def reuse_stored(self, solver: str, todo: list[_Item], size: int, done) -> list[_Item]:
        """Take the batches of ``todo`` the resume store holds; returns the batches left to solve
        (those not stored, and the stored instances no selection proves, solved again)."""
        store = self.store
        if not store:
            return todo
        left, reused, again = [], 0, []
        for it in todo:
            cached = store.get(it.key, it.sub, solver)
            if cached is None:
                left.append(it)
                continue
            reused += 1
            # "no subset within τ", a timeout or an error cannot be checked from the stored
            # selections: never believed, those instances are solved again
            ok = (cached.status == Status.OPTIMAL) | (cached.status == Status.FEASIBLE)
            if ok.all():
                done(it, cached, False)
                continue
            if ok.any():
                done(_Item(it.rows[ok], it.sub.take(np.flatnonzero(ok)), None),
                     BatchResult(cached.ids[ok], cached.selections[ok], cached.errors[ok], cached.status[ok],
                                 cached.solver, cached.seconds, {}, row_engines(cached)[ok]), False)
            again.append(it.rows[~ok])
        if again:
            rows = np.concatenate(again)
            log.warning("resume: %d stored instances claimed infeasible, timed out or failed are solved "
                        "again (no stored selection proves such a claim)", rows.size)
            left.extend(self.items(solver, rows, size))
        if reused:
            log.info("resume: %d of %d batches already solved", reused, len(todo))
        return left

    def run(self, solver: str, rows_all: np.ndarray, progress) -> None:
        """Solve the rows ``rows_all`` of the batch with ``solver`` into ``self.answer``."""
        config, batch = self.config, self.batch
        sub_all = batch if len(rows_all) == len(batch) else batch.take(rows_all)
        order = rows_all[np.argsort(sub_all.counts, kind="stable")]
        size = config.resolved_batch() if solver == config.solver else default_batch(solver)

        def done(it: _Item, res: BatchResult, solved: bool) -> None:
            if solved and self.store:
                self.store.put(it.key, res, it.sub, solver)
            self.answer.put(it.rows, res)
            advance(progress, len(it.rows))

        left = self.reuse_stored(solver, self.items(solver, order, size), size, done)
        if not left:
            return
        # every backend that takes a time limit gets one, so no instance runs for ever
        # (at most limits.MAX_INSTANCE_SECONDS: an absurd --time-limit is capped, with a note)
        options = {"time_limit": limits.instance_time_limit(config.time_limit, note=True)}
        # a pool the caller gave is used, unless the backend never runs in one
        given = self.pool is not None and backend_fact(solver, "uses_pool")
        if not given and in_process(config, solver, len(left)):
            _run_in_process(left, solver, options, done)
            return
        if self.pool is None:
            workers = config.resolved_workers()
            n = min(workers, len(left)) if config.executor == "process" else workers
            self.pool = make_pool(config.executor, n, config.scheduler)
            self.own = True
        _run_in_pool(self.pool, left, solver, options, config, done)

    def fall_back(self) -> None:
        """Solve the TIMEOUT/ERROR rows again with another exact backend (:func:`fallback_solver`);
        a row that fails again keeps both messages."""
        config, batch, answer = self.config, self.batch, self.answer
        bad = answer.failed_rows()
        if not (bad.size and config.fallback):
            return
        fb = fallback_solver(config.solver, batch.objective, int(batch.counts[bad].max()))
        messages, status = answer.messages, answer.status
        first = {int(batch.ids[i]): messages.get(int(batch.ids[i]), Status(int(status[i])).name) for i in bad}
        if fb is None:
            log.error("%d instances failed with %s and no other exact backend can take them",
                      bad.size, config.solver)
            return
        log.warning("%d instances ended TIMEOUT/ERROR with %s; solving them again with %s",
                    bad.size, config.solver, fb)
        for i in bad:
            messages.pop(int(batch.ids[i]), None)
        self.run(fb, bad, None)
        still = bad[(status[bad] == Status.ERROR) | (status[bad] == Status.TIMEOUT)]
        for i in still:
            key = int(batch.ids[i])
            messages[key] = f"{first[key]}; then {messages.get(key, Status(int(status[i])).name)}"
        log.warning("fallback %s: %d of %d instances recovered", fb, bad.size - still.size, bad.size)

    def close(self, failed: bool) -> None:
        """Stop the pool this call started: abort it (interrupted or failed: do not wait for the
        workers) or close it."""
        if self.own and self.pool is not None:
            self.own = False
            if failed:
                self.pool.abort()
            else:
                self.pool.close()


def solve_all(batch: InstanceBatch, config: SolveConfig,
              on_progress: Bar | None = None,
              store: ResumeStore | None = None,
              executor: cf.Executor | Pool | None = None) -> BatchResult:
    """Solve every instance of ``batch``; returns one BatchResult row-aligned with ``batch``,
    with the engine that produced each row (``engines``).

    Instances a backend reports as TIMEOUT or ERROR (or whose batch failed ``config.retries`` + 1
    times) are solved again by another exact backend (:func:`fallback_solver`) when
    ``config.fallback`` is on; whatever still fails keeps status ERROR/TIMEOUT and a message.

    Args:
        on_progress: a progress bar advanced by the number of instances finished: tqdm-like
            (``update(n)``) or a callable ``on_progress(n)``; see :mod:`subsetsum_lth.progress`.
            Not closed here.
        store: resume store; batches found there are not solved again.
        executor: any concurrent.futures.Executor, or a :class:`subsetsum_lth.executors.Pool`
            (overrides ``config.workers`` and ``config.executor``); not closed here.
    """
    t0 = time.perf_counter()
    driver = _Driver(batch, config, store, executor)
    if len(batch) == 0:
        return driver.answer.result(batch, config.solver, 0.0)
    config.resolved_workers()          # a bad --workers fails before anything runs
    try:
        driver.run(config.solver, np.arange(len(batch)), on_progress)
        driver.fall_back()
    except BaseException:
        driver.close(failed=True)
        raise
    driver.close(failed=False)
    return driver.answer.result(batch, config.solver, time.perf_counter() - t0)
