"""Test-only fault injection, kept out of the package: a folder put on PYTHONPATH by the tests
(tests/helpers.py ``fault_env``), so that every Python process started with it -- the CLI run
as a subprocess and the worker processes it spawns -- runs this at start-up. Without one of the
two variables below it does nothing.

* ``SUBSETSUM_LTH_FAULT_AFTER_BATCHES=N``: the process dies abruptly (as under kill -9) right
  after the N-th finished batch was stored in the resume store; ``N:SIGNAME`` (e.g.
  ``3:SIGTERM``) sends itself that signal once instead.
* ``SUBSETSUM_LTH_WORKER_FAULT=MODE:N:MARKER``: the worker process that starts its N-th batch
  dies abruptly (MODE ``kill``) or hangs (MODE ``hang``), exactly once over all workers (the
  first to create the file MARKER does it); never in the parent process.
* ``SUBSETSUM_LTH_WORKER_SLOW_START=SECONDS``: every process-pool worker sleeps that long in its
  initializer before taking any call (a worker spawned on a busy machine).
"""
import os

FAULT_ENV = "SUBSETSUM_LTH_FAULT_AFTER_BATCHES"
WORKER_FAULT_ENV = "SUBSETSUM_LTH_WORKER_FAULT"
SLOW_START_ENV = "SUBSETSUM_LTH_WORKER_SLOW_START"


def _install_store_fault(spec: str) -> None:
    import logging

    from subsetsum_lth import resume_store
    limit, _, signame = spec.partition(":")
    real_put = resume_store.ResumeStore.put
    puts = [0]

    def put(self, *args, **kwargs):
        real_put(self, *args, **kwargs)
        puts[0] += 1
        if signame and puts[0] == int(limit):
            import signal
            os.kill(os.getpid(), getattr(signal, signame))
        elif not signame and puts[0] >= int(limit):
            logging.getLogger("subsetsum_lth.solve").error(
                "fault injection: killing this process after %d stored batches", puts[0])
            os._exit(137)

    resume_store.ResumeStore.put = put


def _install_worker_fault(spec: str) -> None:
    import multiprocessing as mp
    import time

    from subsetsum_lth import solve
    mode, n, marker = spec.split(":", 2)
    real = solve.solve_batch
    batches = [0]

    def solve_batch(*args, **kwargs):
        if mp.parent_process() is not None:
            batches[0] += 1
            if batches[0] == int(n):
                try:
                    os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                except FileExistsError:
                    pass
                else:
                    if mode == "kill":
                        os._exit(137)
                    elif mode == "hang":
                        time.sleep(3600)
        return real(*args, **kwargs)

    # pickled by reference as subsetsum_lth.solve.solve_batch: the same name in every process
    solve_batch.__module__, solve_batch.__qualname__ = real.__module__, real.__qualname__
    solve.solve_batch = solve_batch


def _install_slow_start(seconds: str) -> None:
    import multiprocessing as mp
    import time

    from subsetsum_lth import executors
    real = executors._worker_init

    def _worker_init(*args, **kwargs):
        if mp.parent_process() is not None:
            time.sleep(float(seconds))
        return real(*args, **kwargs)

    _worker_init.__module__, _worker_init.__qualname__ = real.__module__, real.__qualname__
    executors._worker_init = _worker_init


if os.environ.get(FAULT_ENV):
    _install_store_fault(os.environ[FAULT_ENV])
if os.environ.get(WORKER_FAULT_ENV):
    _install_worker_fault(os.environ[WORKER_FAULT_ENV])
if os.environ.get(SLOW_START_ENV):
    _install_slow_start(os.environ[SLOW_START_ENV])
