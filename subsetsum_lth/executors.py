"""Where solver batches run: a local process pool, a Dask cluster, or any concurrent.futures.Executor.

A *pool* here is a thin handle around an executor that the solve driver
(:func:`subsetsum_lth.solve.solve_all`) can also repair:

* ``capacity`` — how many batches may be in flight at once (the driver keeps no more than this
  submitted, so that a batch's submission time is close to its start time, which is what the
  per-batch time limit measures);
* ``recover()`` — after a worker died (``BrokenProcessPool``), build a fresh pool;
* ``kill_running()`` — after a batch ran past its time limit, stop the workers that run it
  (a process pool's workers are killed and the pool rebuilt; Dask cannot interrupt a running
  task, so there the batch is only cancelled and resubmitted).

Kinds (``--executor``):

* ``process`` — ``concurrent.futures.ProcessPoolExecutor`` (spawn), the default;
* ``dask`` — an existing Dask distributed scheduler (``--scheduler tcp://host:8786``), through
  ``Client.get_executor()``;
* ``dask-local`` — a ``LocalCluster`` of ``--workers`` single-threaded worker processes.

Dask is an optional extra: ``pip install 'subsetsum-lth[dask]'``. Solver objects are never
shipped: each worker process creates its own backend (one Gurobi Env per process) on first use.
"""
from __future__ import annotations

import concurrent.futures as cf
import importlib.util
import logging
import multiprocessing as mp
import os

from subsetsum_lth.errors import UserError

log = logging.getLogger(__name__)

EXECUTORS = ("process", "dask", "dask-local")
DASK_HINT = "pip install 'subsetsum-lth[dask]'"


def dask_available() -> tuple[bool, str | None]:
    """(available, reason) without importing dask."""
    for mod in ("dask", "distributed"):
        if importlib.util.find_spec(mod) is None:
            return False, f"the Dask executor needs dask[distributed], which is not installed: {DASK_HINT}"
    return True, None


def check_executor(kind: str, scheduler: str | None = None) -> None:
    """Fail early, with the fix, for an unknown executor, a missing extra or a missing address."""
    if kind not in EXECUTORS:
        raise UserError(f"unknown executor {kind!r}; choose one of {', '.join(EXECUTORS)}")
    if kind.startswith("dask"):
        ok, reason = dask_available()
        if not ok:
            raise UserError(reason)
    if kind == "dask" and not scheduler:
        raise UserError("--executor dask needs --scheduler ADDRESS (e.g. tcp://10.0.0.1:8786); "
                        "use --executor dask-local to start a cluster on this machine")
    if scheduler and kind != "dask":
        raise UserError("--scheduler is only used with --executor dask")


class Pool:
    """Base handle: wraps one executor."""

    kind = "external"
    rebuildable = False

    def __init__(self, executor: cf.Executor | None = None, capacity: int | None = None):
        self._executor = executor
        self.capacity = int(capacity or getattr(executor, "_max_workers", None) or os.cpu_count() or 1)

    @property
    def executor(self) -> cf.Executor:
        return self._executor

    def submit(self, fn, *args) -> cf.Future:
        return self.executor.submit(fn, *args)

    def recover(self) -> None:
        """Make the pool usable again after workers died (no-op where the engine heals itself)."""
        if not self.rebuildable:
            raise RuntimeError("the executor's workers died and it cannot be rebuilt from here")

    def kill_running(self, expired: list) -> bool:
        """Stop the workers running the ``expired`` futures (past their time limit); True if the
        other in-flight futures were lost too and must be resubmitted by the caller."""
        return False

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


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


class ProcessPool(Pool):
    """A local spawn-based ProcessPoolExecutor that can be rebuilt after a worker dies."""

    kind = "process"
    rebuildable = True

    def __init__(self, workers: int):
        super().__init__(None, workers)
        self.workers = int(workers)
        self.rebuilds = 0

    @property
    def executor(self) -> cf.Executor:
        if self._executor is None:
            self._executor = cf.ProcessPoolExecutor(max_workers=self.workers, mp_context=mp.get_context("spawn"),
                                                    initializer=_watch_parent)
        return self._executor

    def recover(self) -> None:
        old, self._executor = self._executor, None
        self.rebuilds += 1
        if old is not None:
            _kill_processes(old)
            old.shutdown(wait=False, cancel_futures=True)
        log.warning("rebuilding the process pool (%d workers) after a worker failure", self.workers)

    def kill_running(self, expired: list) -> bool:
        # a ProcessPoolExecutor cannot stop one task: kill its workers, rebuild, resubmit the rest
        if self._executor is None:
            return False
        _kill_processes(self._executor)
        return True

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None


def _kill_processes(ex: cf.ProcessPoolExecutor) -> None:
    for p in list((getattr(ex, "_processes", None) or {}).values()):
        try:
            p.kill()
        except Exception:  # already gone
            pass


class DaskPool(Pool):
    """Dask distributed: an existing scheduler (``address``) or a LocalCluster started lazily.

    The scheduler retries tasks whose worker died (``distributed.scheduler.allowed-failures``),
    so a killed worker costs only its batch's time. A batch past its time limit is cancelled and
    the worker processing it is restarted (``Client.restart_workers``; its other tasks are
    rescheduled by the scheduler), then the batch is resubmitted.
    """

    kind = "dask"
    rebuildable = True

    def __init__(self, address: str | None = None, workers: int | None = None):
        ok, reason = dask_available()
        if not ok:
            raise UserError(reason)
        super().__init__(None, workers or 1)
        self.address = address
        self.workers = workers
        self._client = None
        self._cluster = None
        self._keys: dict = {}          # concurrent future -> dask key

    def submit(self, fn, *args) -> cf.Future:
        ex = self.executor
        before = set(getattr(ex, "_futures", ()))
        fut = ex.submit(fn, *args)
        new = set(getattr(ex, "_futures", ())) - before
        if len(new) == 1:
            self._keys[fut] = next(iter(new)).key
            fut.add_done_callback(lambda f: self._keys.pop(f, None))
        return fut

    def kill_running(self, expired: list) -> bool:
        keys = {self._keys.get(f) for f in expired} - {None}
        if not keys or self._client is None:
            return False
        try:
            busy = [w for w, ks in self._client.processing().items() if keys & set(ks)]
            if busy:
                log.warning("Dask: restarting %d worker(s) running a batch past its time limit", len(busy))
                self._client.restart_workers(busy, raise_for_error=False)
        except Exception as exc:  # best effort: the batch is resubmitted anyway
            log.warning("Dask: could not restart the worker of a timed-out batch: %s", exc)
        return False

    def _connect(self) -> None:
        from distributed import Client, LocalCluster

        if self.address:
            try:
                self._client = Client(self.address, timeout="20s")
            except Exception as exc:  # OSError / TimeoutError from the comm layer
                raise UserError(f"cannot connect to the Dask scheduler at {self.address}: {exc}; "
                                "start one with 'dask scheduler' and workers with "
                                "'dask worker ADDRESS --nthreads 1'") from None
        else:
            n = self.workers or os.cpu_count() or 1
            self._cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                         dashboard_address=":0", silence_logs=logging.ERROR)
            self._client = Client(self._cluster)
        if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
            logging.getLogger("distributed").setLevel(logging.WARNING)
        nthreads = sum(self._client.nthreads().values()) or 1
        self.capacity = int(nthreads)
        # pure=False: a resubmitted batch gets a new key instead of the old (cancelled) future
        self._executor = self._client.get_executor(pure=False)

    @property
    def executor(self) -> cf.Executor:
        if self._executor is None:
            self._connect()
        return self._executor

    @property
    def client(self):
        _ = self.executor
        return self._client

    def recover(self) -> None:
        log.warning("Dask: resubmitting batches after a worker failure")

    def close(self) -> None:
        if self._client is not None:
            try:
                self._client.close()
            finally:
                self._client = None
                self._executor = None
        if self._cluster is not None:
            self._cluster.close()
            self._cluster = None


def make_pool(kind: str = "process", workers: int | None = None, scheduler: str | None = None) -> Pool:
    """A pool of the given kind (nothing starts until the first batch is submitted)."""
    check_executor(kind, scheduler)
    if kind == "dask":
        return DaskPool(address=scheduler)
    # local workers: never more processes than cores (the driver also keeps no more batches in
    # flight than there are batches, so a small run starts few of them)
    from subsetsum_lth.limits import cap_workers
    workers = cap_workers(workers)
    if kind == "process":
        return ProcessPool(workers)
    return DaskPool(workers=workers)


def as_pool(executor) -> Pool:
    """A Pool for anything the driver was given: a Pool, or any concurrent.futures.Executor."""
    if isinstance(executor, Pool):
        return executor
    if isinstance(executor, cf.Executor):
        return Pool(executor)
    raise TypeError(f"expected a concurrent.futures.Executor, got {type(executor).__name__}")
