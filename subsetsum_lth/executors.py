"""Where solver batches run: a local process pool, a Dask cluster, or any concurrent.futures.Executor.

A *pool* here is a thin handle around an executor that the solve driver
(:func:`subsetsum_lth.solve.solve_all`) can also repair:

* ``capacity`` — how many batches may be in flight at once (the driver keeps no more than this
  submitted, so that a batch's submission time is close to its start time, which is what the
  per-batch time limit measures);
* ``ready_since()`` — when the workers were all up (a fresh process pool spawns its workers and
  imports torch in each, seconds on a busy machine): the per-batch time limit counts from the
  later of a batch's submission and this, so start-up is never taken for a hung batch;
* ``recover()`` — after a worker died (``BrokenProcessPool``), build a fresh pool;
* ``kill_running()`` — after a batch ran past its time limit, stop the workers that run it
  (a process pool's workers are killed and the pool rebuilt; Dask cannot interrupt a running
  task, so there the batch is only cancelled and resubmitted).

Kinds (``--executor``):

* ``process`` — ``concurrent.futures.ProcessPoolExecutor`` (spawn), the default;
* ``dask`` — an existing Dask distributed scheduler (``--scheduler tcp://host:8786``), through
  ``Client.get_executor()``;
* ``dask-local`` — a ``LocalCluster`` of ``--workers`` single-threaded worker processes, private
  to this run: it listens on 127.0.0.1 only, with TLS and certificates made for this run
  (``Security.temporary()``, which needs the ``cryptography`` package), and no dashboard, so no
  other user of the machine can connect to it and run code in its workers.

A remote scheduler (``--executor dask``) is reached with Dask's own security configuration: a
``tls://`` address and the ``distributed.comm.tls.*`` settings (CA file, client certificate and
key; in ``~/.config/dask/*.yaml`` or ``DASK_DISTRIBUTED__COMM__TLS__*`` environment variables),
which ``Client`` reads by itself. A plain ``tcp://`` address to another host is used as given,
with a warning.

Dask is an optional extra: ``pip install 'subsetsum-lth[dask]'``. Solver objects are never
shipped: each worker process creates its own backend (one Gurobi Env per process) on first use.
"""
from __future__ import annotations

import asyncio
import concurrent.futures as cf
import contextlib
import importlib.util
import logging
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from multiprocessing import resource_tracker

from subsetsum_lth.errors import UserError
from subsetsum_lth.limits import cap_workers

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
    if kind == "dask-local" and importlib.util.find_spec("cryptography") is None:
        raise UserError("--executor dask-local secures its local cluster with TLS, which needs the "
                        "'cryptography' package: pip install cryptography (or use --executor process)")


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

    def ready_since(self) -> float | None:
        """``time.monotonic()`` from which the workers are up (None: still starting); by default
        the executor's workers are taken as running already."""
        return 0.0

    def starting_for(self) -> float:
        """Seconds the workers have been starting (0 once they are up)."""
        return 0.0

    def start(self) -> None:
        """Start the workers, or connect, now (a failure is a UserError before anything is written);
        by default the executor is used as given."""

    def close(self) -> None:
        pass

    def abort(self) -> None:
        """Stop as fast as possible (interrupted); by default the same as :meth:`close`."""
        self.close()

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


#: signals only the parent process reacts to: workers ignore them (the parent stops them)
_PARENT_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def parent_signals_blocked():
    """Block SIGINT/SIGTERM in this thread while worker processes are started: a started process
    inherits the blocked mask through fork and exec, so a Ctrl-C to the process group during its
    start-up stays pending until its initializer ignores it (no worker traceback). A signal that
    arrives meanwhile for this process is delivered when the block ends.

    multiprocessing's resource tracker is started first, outside the block: the first spawn starts
    it, and its ``ensure_running`` unblocks SIGINT/SIGTERM unconditionally once it has launched
    (CPython 3.8-3.13), which let the first worker start with Ctrl-C deliverable and print a
    KeyboardInterrupt traceback from its imports."""
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        yield
        return
    resource_tracker.ensure_running()
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _PARENT_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def quiet_dask_logs() -> None:
    """Keep distributed's, tornado's and asyncio's closed-stream tracebacks off the terminal from
    here on (a run being stopped, or our own LocalCluster torn down: they say nothing about it)."""
    roots = ("distributed", "tornado", "asyncio")
    # their children too: distributed's logging config gives some their own level (notably
    # 'tornado.application': error), which a level set on the parent does not override
    names = [n for n in list(logging.Logger.manager.loggerDict) if n.split(".")[0] in roots]
    for name in {*roots, *names, "tornado.application", "tornado.general", "tornado.access"}:
        logging.getLogger(name).setLevel(logging.CRITICAL)


@contextlib.contextmanager
def deferred_signals():
    """Hold SIGINT/SIGTERM back while the driver waits on its futures, and deliver them at a safe
    point. Yields a list that receives the signal numbers; the caller polls it and leaves the
    block; on leaving, the previous handlers are restored and the first signal is raised again,
    so it takes its usual effect (KeyboardInterrupt, the CLI's SIGTERM handler, ...).

    Why: an exception raised by a signal handler inside ``concurrent.futures.wait`` can leave a
    future's lock held, and then the executor's manager thread, and interpreter exit, hang."""
    if threading.current_thread() is not threading.main_thread():
        yield []
        return
    pending: list = []

    def note(signum, frame):
        pending.append(signum)
        # Ctrl-C reaches a LocalCluster's scheduler and workers too: the streams they close make
        # distributed and tornado log tracebacks from their threads before the run can close them
        if "distributed" in sys.modules:
            quiet_dask_logs()
    old = {}
    for sig in _PARENT_SIGNALS:
        if signal.getsignal(sig) not in (signal.SIG_IGN, None):
            old[sig] = signal.signal(sig, note)
    try:
        yield pending
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        if pending:
            signal.raise_signal(pending[0])


def _worker_init() -> None:
    """Process-pool worker initializer: ignore SIGINT/SIGTERM (only the parent reacts to Ctrl-C
    or a termination request, and stops its workers), hold BLAS to one thread (a worker per core;
    the solvers' matmuls are thin), then watch the parent (:func:`_watch_parent`)."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(1, "blas")
    for sig in _PARENT_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _PARENT_SIGNALS)
    _watch_parent()


def dask_setup(worker=None) -> None:
    """Dask preload hook: ``dask-local`` starts its workers with this module as ``preload``, so
    each worker process ignores SIGINT/SIGTERM like a process-pool worker (only the parent
    reacts to Ctrl-C and closes the cluster), and stops the worker's HTTP server (health and
    metrics routes that would answer anyone on 127.0.0.1, without TLS)."""
    if threading.current_thread() is threading.main_thread():
        for sig in _PARENT_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
    _stop_http(worker)


def _stop_http(server) -> None:
    """Stop a Dask server's (scheduler's, worker's) HTTP server: it closes its listening sockets."""
    http = getattr(server, "http_server", None)
    if http is not None:
        http.stop()


#: seconds at most to wait for a Dask scheduler to answer (connect, handshake, identity); Dask's
#: ``distributed.comm.timeouts.connect`` when that is shorter
CONNECT_TIMEOUT = 10.0


def connect_timeout() -> float:
    """Seconds to wait for a scheduler: Dask's connect timeout, at most :data:`CONNECT_TIMEOUT`."""
    import dask
    from dask.utils import parse_timedelta
    try:
        configured = parse_timedelta(dask.config.get("distributed.comm.timeouts.connect"), "s")
    except (KeyError, TypeError, ValueError):
        configured = None
    return float(min(configured or CONNECT_TIMEOUT, CONNECT_TIMEOUT))


def _bounded(fn, seconds: float, what: str):
    """``fn()`` in a daemon thread, waited for at most ``seconds``: the calling thread waits in
    short slices, so a signal's handler runs meanwhile (a Dask call that never returns cannot
    keep SIGINT/SIGTERM from ending the command). Raises TimeoutError after ``seconds`` (the
    thread is left behind, a daemon) and re-raises what ``fn`` raised."""
    box: dict = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed to the caller
            box["error"] = exc
    t = threading.Thread(target=run, name=what, daemon=True)
    t.start()
    deadline = time.monotonic() + seconds
    while t.is_alive():
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no answer within {seconds:g} s")
        t.join(min(0.2, left))
    if "error" in box:
        raise box["error"]
    return box.get("value")


def _probe_scheduler(address: str, connection_args: dict, seconds: float) -> None:
    """Check that ``address`` answers as a Dask scheduler within ``seconds``: connect, Dask's
    handshake, then an ``identity`` call, each bounded (distributed's own ``Client(timeout=)``
    bounds the TCP connect only and then waits for ever on a listener that never answers).
    Raises OSError / TimeoutError / ValueError with the reason."""
    from distributed.comm import connect

    async def probe():
        # connect retries a refused connection until its timeout, then says why: let it
        comm = await connect(address, timeout=max(1.0, seconds - 1.0), **connection_args)
        try:
            await comm.write({"op": "identity", "reply": True})
            return await comm.read()
        finally:
            comm.abort()

    answer = _bounded(lambda: asyncio.run(asyncio.wait_for(probe(), seconds)), seconds + 2.0,
                      "dask-probe")
    if not (isinstance(answer, dict) and answer.get("type") == "Scheduler"):
        raise ValueError("it answered, but not as a Dask scheduler")


class ProcessPool(Pool):
    """A local spawn-based ProcessPoolExecutor that can be rebuilt after a worker dies."""

    kind = "process"
    rebuildable = True

    def __init__(self, workers: int):
        super().__init__(None, workers)
        self.workers = int(workers)
        self.rebuilds = 0
        self._up: list[cf.Future] = []
        self._created = 0.0
        self._ready_at: float | None = None

    @property
    def executor(self) -> cf.Executor:
        if self._executor is None:
            self._executor = cf.ProcessPoolExecutor(max_workers=self.workers, mp_context=mp.get_context("spawn"),
                                                    initializer=_worker_init)
            self._created, self._ready_at = time.monotonic(), None
            # one start-up call per worker, queued ahead of any batch (each submit spawns a worker
            # while none is idle): once all are back, every worker has started and imported
            self._up = [self._executor.submit(_worker_up) for _ in range(self.workers)]
        return self._executor

    def ready_since(self) -> float | None:
        if self._ready_at is None and self._executor is not None and all(f.done() for f in self._up):
            self._ready_at = time.monotonic()
        return self._ready_at

    def starting_for(self) -> float:
        if self._executor is None or self.ready_since() is not None:
            return 0.0
        return time.monotonic() - self._created

    def submit(self, fn, *args) -> cf.Future:
        with parent_signals_blocked():      # a submit may start a worker process
            return self.executor.submit(fn, *args)

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

    def abort(self) -> None:
        """Stop now (interrupted): kill the workers instead of waiting for their batches."""
        if self._executor is not None:
            _kill_processes(self._executor)
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None


def _worker_up() -> int:
    """A process-pool worker's first call: returns once the worker has started and imported the
    package (its initializer ran), so that the driver knows when batch clocks may start."""
    return os.getpid()


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

        if logging.getLogger().getEffectiveLevel() > logging.DEBUG:   # no INFO chatter at start-up
            logging.getLogger("distributed").setLevel(logging.WARNING)
        if self.address:
            if _plain_remote(self.address):
                log.warning("the Dask scheduler %s is reached without TLS: anyone who can reach it can "
                            "run code on its workers; use a tls:// address and Dask's "
                            "distributed.comm.tls settings on a shared network", self.address)
            from distributed.security import Security

            seconds = connect_timeout()
            try:
                # Dask's own security settings (distributed.comm.tls.*), as Client reads them
                _probe_scheduler(self.address, Security().get_connection_args("client"), seconds)
                # not the default client: an unfinished one would be closed (and waited for) at exit
                self._client = _bounded(lambda: Client(self.address, timeout=f"{seconds:g}s",
                                                       set_as_default=False),
                                        2 * seconds + 2.0, "dask-connect")
            except Exception as exc:  # OSError / TimeoutError / ValueError from the probe or Client
                reason = _first_line(exc)
                if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
                    reason = f"no answer within {seconds:g} s (is it a Dask scheduler?)"
                elif exc.__cause__ is not None:     # distributed's "Timed out trying to connect"
                    reason = f"{reason} ({_first_line(exc.__cause__)})"
                raise UserError(f"cannot connect to the Dask scheduler at {self.address}: {reason}; "
                                "start one with 'dask scheduler' and workers with "
                                "'dask worker ADDRESS --nthreads 1'") from None
        else:
            from distributed.security import Security

            n = self.workers or os.cpu_count() or 1
            # private: loopback only, TLS with certificates made for this run, no dashboard
            security = Security.temporary()
            with parent_signals_blocked():     # workers and nannies inherit SIGINT/SIGTERM blocked
                self._cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                             host="127.0.0.1", protocol="tls://", security=security,
                                             dashboard_address=None, silence_logs=logging.ERROR,
                                             preload=[__name__],       # workers ignore Ctrl-C: dask_setup
                                             # the scheduler's HTTP server (health/metrics routes,
                                             # no dashboard): loopback, any free port
                                             scheduler_kwargs={"dashboard": False,
                                                               "dashboard_address": "127.0.0.1:0"})
            # no HTTP server: the scheduler's (health/metrics routes) would answer anyone on
            # 127.0.0.1 without TLS; the workers stop theirs in dask_setup
            _stop_http(getattr(self._cluster, "scheduler", None))
            self._client = Client(self._cluster, security=security)
        nthreads = sum(self._client.nthreads().values()) or 1
        self.capacity = int(nthreads)
        # pure=False: a resubmitted batch gets a new key instead of the old (cancelled) future
        self._executor = self._client.get_executor(pure=False)

    @property
    def executor(self) -> cf.Executor:
        if self._executor is None:
            self._connect()
        return self._executor

    def start(self) -> None:
        _ = self.executor

    @property
    def client(self):
        _ = self.executor
        return self._client

    def recover(self) -> None:
        log.warning("Dask: resubmitting batches after a worker failure")

    def close(self) -> None:
        # tearing down our own LocalCluster (notably after Ctrl-C) makes distributed and tornado
        # log closed-stream tracebacks, during the close and from its threads afterwards, that say
        # nothing about the run: keep them off the terminal from here on
        if self._cluster is not None:
            quiet_dask_logs()
        if self._client is not None:
            try:
                self._client.close()
            finally:
                self._client = None
                self._executor = None
        if self._cluster is not None:
            self._cluster.close()
            self._cluster = None


def _first_line(exc: BaseException) -> str:
    """The first line of an exception's message, without distributed's "in <Connector ...>: "."""
    import re
    text = str(exc).strip()
    text = text.splitlines()[0] if text else type(exc).__name__
    return re.sub(r"^in <[^>]*>: ", "", text)


def _plain_remote(address: str) -> bool:
    """True for an unencrypted address (tcp://, or no scheme) to a host other than this one."""
    scheme, _, rest = address.rpartition("://")
    if scheme not in ("", "tcp"):
        return False
    host = rest.rsplit(":", 1)[0].strip("[]")
    return host not in ("127.0.0.1", "localhost", "::1")


def make_pool(kind: str = "process", workers: int | None = None, scheduler: str | None = None) -> Pool:
    """A pool of the given kind (nothing starts until the first batch is submitted)."""
    check_executor(kind, scheduler)
    if kind == "dask":
        return DaskPool(address=scheduler)
    # local workers: never more processes than cores (the driver also keeps no more batches in
    # flight than there are batches, so a small run starts few of them)
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
