"""Solve many subset-sum instances: solver lookup, batching, executors, resume store.

Instances are sorted by their number of live coefficients (exact backends cost ~2^{n/2}),
cut into batches, and sent to an executor; results come back keyed by instance id, so the
answer does not depend on the number of workers or on completion order.
"""
from __future__ import annotations

import concurrent.futures as cf
from concurrent.futures.process import BrokenProcessPool
import hashlib
import logging
import multiprocessing as mp
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from subsetsum_lth.errors import UserError
from subsetsum_lth.executors import Pool, _watch_parent, as_pool, make_pool  # noqa: F401
from subsetsum_lth.progress import Bar, advance
from subsetsum_lth.solve_config import SolveConfig, backend_fact, default_batch  # noqa: F401  (public here too)
from subsetsum_lth.solvers.instances import BatchResult, InstanceBatch, Status

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
    from subsetsum_lth.solvers.base import SolverUnavailable
    from subsetsum_lth.solvers.registry import get_backend_class, list_backends

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
    from subsetsum_lth.executors import check_executor
    check_executor(config.executor, config.scheduler)
    _ = SolverUnavailable


_BACKENDS: dict = {}


def solve_batch(solver: str, options: dict, batch: InstanceBatch) -> BatchResult:
    """Worker entry point: one backend object per process, reused across batches."""
    from subsetsum_lth.solvers.registry import get_backend

    _maybe_worker_fault()
    key = (solver, tuple(sorted(options.items())))
    backend = _BACKENDS.get(key)
    if backend is None:
        backend = _BACKENDS[key] = get_backend(solver, **options)
    backend.check_objective(batch.objective)
    t0 = time.perf_counter()
    res = backend.solve(batch)
    res.seconds = time.perf_counter() - t0
    return res


def batch_digest(solver: str, batch: InstanceBatch) -> str:
    """sha256 of everything that decides a batch's answer: solver, objective, ids, targets,
    coefficients, counts and tolerances (τ)."""
    h = hashlib.sha256()
    h.update(f"{solver}|{batch.objective}|".encode())
    for a in (batch.ids, batch.targets, batch.coefficients, batch.counts, batch.tolerances):
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def batch_key(solver: str, batch: InstanceBatch) -> str:
    return batch_digest(solver, batch)[:32]


def _result_digest(ids, selections, status) -> str:
    h = hashlib.sha256()
    for a in (ids, selections, status):
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


class ResumeStore:
    """Finished batches as .npz files in a folder; a batch is found again by a content hash of
    its inputs, so resuming reuses exactly the work whose inputs are unchanged.

    A stored batch only saves solver time, it never decides an answer: on load the hash of the
    batch's inputs and a checksum of the stored result must match, every error is recomputed
    from the stored selections, and a batch whose status claims contradict the recomputed errors
    (within τ claimed but outside it, or INFEASIBLE claimed but within it) is discarded with a
    warning and solved again. Instances stored as INFEASIBLE, TIMEOUT or ERROR (claims no stored
    selection can prove) are solved again by :func:`solve_all`; only the instances within τ are
    reused. Unreadable or malformed files are discarded."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.folder / f"{key}.npz"

    def get(self, key: str, batch: InstanceBatch, solver: str | None = None) -> BatchResult | None:
        import stat as _stat
        from subsetsum_lth.solvers.instances import recompute_errors
        path = self._path(key)
        try:
            st = os.stat(path)
        except OSError:
            return None
        if not _stat.S_ISREG(st.st_mode):
            log.warning("ignoring %s: not a regular file; the batch is solved again", path)
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                ids, sel, status = z["ids"], z["selections"], z["status"]
                stored_solver, seconds = str(z["solver"]), float(z["seconds"])
                inputs, checksum = str(z["inputs_sha256"]), str(z["result_sha256"])
        except Exception as exc:  # a corrupt, truncated or old-format partial file is recomputed, not trusted
            log.warning("ignoring unreadable partial result %s (%s); the batch is solved again", path,
                        str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__)
            return None
        want = batch_digest(solver or stored_solver, batch)
        problem = None
        if inputs != want or key != want[:32]:
            problem = "its inputs hash does not match this batch (other targets, coefficients, τ, objective or solver)"
        elif checksum != _result_digest(ids, sel, status):
            problem = "its result checksum does not match (the file was changed)"
        elif (ids.dtype != np.int64 or not np.array_equal(ids, batch.ids) or sel.dtype != np.bool_
              or sel.shape != batch.coefficients.shape or status.dtype != np.int8 or status.shape != (len(batch),)
              or not np.isin(status, [int(v) for v in Status]).all()):
            problem = "its arrays do not have this batch's ids, shapes or types"
        if problem is None:
            sel = sel & batch.live_mask()
            errors = recompute_errors(batch, sel)          # never the stored errors
            slack = 1e-9 * (1.0 + np.abs(batch.targets) + np.abs(batch.coefficients).sum(axis=1))
            within = errors <= batch.tolerances + slack
            claimed_ok = (status == Status.OPTIMAL) | (status == Status.FEASIBLE)
            bad = (claimed_ok & ~within) | ((status == Status.INFEASIBLE) & within)
            if bad.any():
                problem = (f"{int(bad.sum())} of its statuses contradict the errors recomputed from its "
                           f"selections (e.g. recomputed error {errors[bad][0]:.3g}, τ {batch.tolerances[bad][0]:.3g})")
        if problem is not None:
            log.warning("discarding stored batch %s: %s; solving it again", path.name, problem)
            return None
        return BatchResult(ids.copy(), sel, errors, status.copy(), stored_solver, seconds)

    def put(self, key: str, res: BatchResult, batch: InstanceBatch | None = None,
            solver: str | None = None) -> None:
        import io
        from subsetsum_lth.runfolder import _atomic_write_bytes
        ids = np.ascontiguousarray(res.ids, dtype=np.int64)
        sel = np.ascontiguousarray(res.selections, dtype=bool)
        status = np.ascontiguousarray(res.status, dtype=np.int8)
        inputs = batch_digest(solver or res.solver, batch) if batch is not None else ""
        buf = io.BytesIO()
        np.savez(buf, ids=ids, selections=sel, errors=res.errors, status=status,
                 solver=np.array(res.solver), seconds=np.array(res.seconds),
                 inputs_sha256=np.array(inputs), result_sha256=np.array(_result_digest(ids, sel, status)))
        _atomic_write_bytes(self._path(key), buf.getvalue())

        _maybe_inject_fault()

    def count(self) -> int:
        return len(list(self.folder.glob("*.npz")))


FAULT_ENV = "SUBSETSUM_LTH_FAULT_AFTER_BATCHES"
_puts = 0


def _maybe_inject_fault() -> None:
    """Test-only fault injection: with $SUBSETSUM_LTH_FAULT_AFTER_BATCHES=N the process dies
    abruptly (as under kill -9) right after the N-th finished batch was stored; with ``N:SIGNAME``
    (e.g. ``3:SIGTERM``) it sends itself that signal once instead."""
    global _puts
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    limit, _, signame = spec.partition(":")
    _puts += 1
    if signame and _puts == int(limit):
        import signal
        os.kill(os.getpid(), getattr(signal, signame))
    elif not signame and _puts >= int(limit):
        log.error("fault injection: killing this process after %d stored batches", _puts)
        os._exit(137)


WORKER_FAULT_ENV = "SUBSETSUM_LTH_WORKER_FAULT"
_worker_batches = 0


def _maybe_worker_fault() -> None:
    """Test-only fault injection in a worker: ``$SUBSETSUM_LTH_WORKER_FAULT=MODE:N:MARKER`` makes
    the worker that starts its N-th batch die abruptly (MODE ``kill``, as under kill -9) or hang
    (MODE ``hang``), exactly once over all workers: the first to create the file MARKER does it.
    Never fires in the parent process (in-process solving)."""
    global _worker_batches
    spec = os.environ.get(WORKER_FAULT_ENV)
    if not spec or mp.parent_process() is None:
        return
    _worker_batches += 1
    mode, n, marker = spec.split(":", 2)
    if _worker_batches != int(n):
        return
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return
    if mode == "kill":
        os._exit(137)
    elif mode == "hang":
        time.sleep(3600)


def _failed(sub: InstanceBatch, solver: str, reason: str) -> BatchResult:
    """A batch that could not be solved: every row ERROR, with the reason as its message."""
    k = len(sub)
    return BatchResult(sub.ids.copy(), np.zeros((k, sub.width), dtype=bool), np.full(k, np.inf),
                       np.full(k, int(Status.ERROR), dtype=np.int8), solver, 0.0,
                       {int(i): f"{solver}: {reason}" for i in sub.ids})


def fallback_order() -> list[str]:
    """The backends that may re-solve failed instances, by their ``fallback_rank`` (lowest first;
    ties by name); backends that cannot be loaded or have no rank are left out."""
    from subsetsum_lth.solvers.registry import list_backends

    ranked = []
    for name in list_backends():
        rank = backend_fact(name, "fallback_rank")
        if rank is not None:
            ranked.append((rank, name))
    return [name for _, name in sorted(ranked)]


def fallback_solver(solver: str, objective: str, max_count: int) -> str | None:
    """Another exact backend for instances the first one could not finish (TIMEOUT/ERROR): the
    first of :func:`fallback_order` (mitm, then ortools) that is exact, takes the objective, fits
    every instance (``max_n``) and is available; None if there is none."""
    from subsetsum_lth.solvers.registry import get_backend_class

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
    from subsetsum_lth.executors import deferred_signals

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
        if limit:
            oldest = min(t for _, t in inflight.values())
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
        if limit:
            now = time.monotonic()
            expired = [f for f, (_, t) in inflight.items() if now - t > limit]
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


def solve_all(batch: InstanceBatch, config: SolveConfig,
              on_progress: Bar | None = None,
              store: ResumeStore | None = None,
              executor: cf.Executor | Pool | None = None) -> BatchResult:
    """Solve every instance of ``batch``; returns one BatchResult row-aligned with ``batch``.

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
    k = len(batch)
    selections = np.zeros((k, batch.width), dtype=bool)
    errors = np.full(k, np.inf)
    status = np.full(k, int(Status.ERROR), dtype=np.int8)
    messages: dict = {}
    if k == 0:
        return BatchResult(batch.ids, selections, errors, status, config.solver, 0.0, messages)
    t0 = time.perf_counter()
    workers = config.resolved_workers()
    pool = None if executor is None else as_pool(executor)
    own = False
    try:
        def run(solver: str, rows_all: np.ndarray, progress) -> None:
            nonlocal pool, own
            sub_all = batch if len(rows_all) == k else batch.take(rows_all)
            order = rows_all[np.argsort(sub_all.counts, kind="stable")]
            size = config.resolved_batch() if solver == config.solver else default_batch(solver)
            def items(rows_in: np.ndarray) -> list[_Item]:
                """``rows_in`` in batches of ``size``, each cut to its widest instance."""
                out = []
                for start in range(0, len(rows_in), size):
                    rows = rows_in[start:start + size]
                    sub = batch.take(rows)
                    width = int(sub.counts.max()) if len(sub) else 0
                    sub = InstanceBatch(sub.ids, sub.targets, sub.coefficients[:, :width], sub.counts,
                                        sub.tolerances, sub.objective)
                    out.append(_Item(rows, sub, batch_key(solver, sub) if store else None))
                return out

            todo = items(order)

            def done(it: _Item, res: BatchResult, solved: bool) -> None:
                if solved and store:
                    store.put(it.key, res, it.sub, solver)
                w = res.selections.shape[1]
                selections[it.rows] = False
                selections[it.rows, :w] = res.selections
                errors[it.rows] = res.errors
                status[it.rows] = res.status
                messages.update(res.messages)
                advance(progress, len(it.rows))

            left, reused, again = [], 0, []
            for it in todo:
                cached = store.get(it.key, it.sub, solver) if store else None
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
                                     cached.solver, cached.seconds), False)
                again.append(it.rows[~ok])
            if again:
                rows = np.concatenate(again)
                log.warning("resume: %d stored instances claimed infeasible, timed out or failed are solved "
                            "again (no stored selection proves such a claim)", rows.size)
                left.extend(items(rows))
            if store and reused:
                log.info("resume: %d of %d batches already solved", reused, len(todo))
            if not left:
                return
            # every backend that takes a time limit gets one, so no instance runs for ever
            # (at most limits.MAX_INSTANCE_SECONDS: an absurd --time-limit is capped, with a note)
            from subsetsum_lth.limits import instance_time_limit
            options = {"time_limit": instance_time_limit(config.time_limit, note=True)}
            # a pool the caller gave is used, unless the backend never runs in one
            given = pool is not None and backend_fact(solver, "uses_pool")
            if not given and in_process(config, solver, len(left)):
                _run_in_process(left, solver, options, done)
                return
            if pool is None:
                n = min(workers, len(left)) if config.executor == "process" else workers
                pool = make_pool(config.executor, n, config.scheduler)
                own = True
            _run_in_pool(pool, left, solver, options, config, done)

        run(config.solver, np.arange(k), on_progress)
        bad = np.flatnonzero((status == Status.ERROR) | (status == Status.TIMEOUT))
        if bad.size and config.fallback:
            fb = fallback_solver(config.solver, batch.objective, int(batch.counts[bad].max()))
            first = {int(batch.ids[i]): messages.get(int(batch.ids[i]), Status(int(status[i])).name)
                     for i in bad}
            if fb is None:
                log.error("%d instances failed with %s and no other exact backend can take them",
                          bad.size, config.solver)
            else:
                log.warning("%d instances ended TIMEOUT/ERROR with %s; solving them again with %s",
                            bad.size, config.solver, fb)
                for i in bad:
                    messages.pop(int(batch.ids[i]), None)
                run(fb, bad, None)
                still = bad[(status[bad] == Status.ERROR) | (status[bad] == Status.TIMEOUT)]
                for i in still:
                    key = int(batch.ids[i])
                    messages[key] = f"{first[key]}; then {messages.get(key, Status(int(status[i])).name)}"
                log.warning("fallback %s: %d of %d instances recovered", fb, bad.size - still.size, bad.size)
    except BaseException:
        if own and pool is not None:   # interrupted or failed: stop the workers, do not wait for them
            own = False
            pool.abort()
        raise
    finally:
        if own and pool is not None:
            pool.close()
    return BatchResult(batch.ids.copy(), selections, errors, status, config.solver,
                       time.perf_counter() - t0, messages)
