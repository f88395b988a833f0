"""Stop native solver calls (CP-SAT ``Solve``, Gurobi ``optimize``) when the process is asked to stop.

Python runs a signal handler in the main thread between two bytecodes only: while the main
thread sits in a native solver call, SIGINT/SIGTERM wait until that call returns, which with a
long time limit can be hours. Two pieces fix that:

* a backend wraps each native call in :func:`native_call` with the solver's own thread-safe stop
  function (``CpSolver.stop_search``, ``Model.terminate``);
* :func:`stop_native_calls_on_signals` (entered once by the CLI, in the main thread) points
  Python's signal wakeup fd at a pipe and starts a thread that reads it: when SIGINT or SIGTERM
  arrives, the thread calls the stop function of every native call in progress (they release
  the GIL), the call returns within milliseconds, and the Python handler then runs as usual
  (the CLI's: KeyboardInterrupt, keep what was computed).

After a stop request every later :func:`native_call` stops at once, so a backend that loops over
instances does not start another long solve before the handler's exception reaches it.

Backends must not install their own SIGINT handler during a native call (CP-SAT's
``catch_sigint_signal`` is turned off in :func:`subsetsum_lth.solvers._scaled.cp_solver`), or
the signal never reaches Python.
"""
from __future__ import annotations

import contextlib
import itertools
import logging
import os
import signal
import threading
from typing import Callable

log = logging.getLogger(__name__)

#: hard upper bound (seconds) of any per-solve time limit a backend hands to a native solver
MAX_TIME_LIMIT = 3600.0
#: a native call that can be neither stopped from outside nor left by a signal (it holds the
#: GIL: OR-Tools' knapsack branch and bound) runs at most this long, which is what a signal
#: waits for
MAX_UNSTOPPABLE_SECONDS = 5.0

_lock = threading.Lock()
_calls: dict[int, Callable[[], None]] = {}
_ids = itertools.count()
_stop = threading.Event()


def solver_time_limit(seconds: float | None) -> float | None:
    """``seconds`` capped to :data:`MAX_TIME_LIMIT` (None stays None: the backend's default)."""
    if seconds is None or not seconds:
        return seconds
    return min(float(seconds), MAX_TIME_LIMIT)


@contextlib.contextmanager
def native_call(stop: Callable[[], None]):
    """``with native_call(solver.stop_search): solver.Solve(model)``: while the body runs, a stop
    request (a signal, see :func:`stop_native_calls_on_signals`, or :func:`request_stop`) calls
    ``stop()`` from another thread; if one came already, ``stop()`` is called at once."""
    key = next(_ids)
    with _lock:
        _calls[key] = stop
    try:
        if _stop.is_set():
            _call(stop)
        yield
    finally:
        with _lock:
            _calls.pop(key, None)


def _call(stop: Callable[[], None]) -> None:
    try:
        stop()
    except Exception as exc:  # a solver that already finished, or was disposed of
        log.debug("stopping a native solver call failed: %s", exc)


def request_stop() -> None:
    """Stop every native call in progress and every one started from now on (until :func:`reset`)."""
    _stop.set()
    with _lock:
        stops = list(_calls.values())
    for stop in stops:
        _call(stop)


def stop_requested() -> bool:
    return _stop.is_set()


def reset() -> None:
    """Forget an earlier stop request (native calls run to their own limits again)."""
    _stop.clear()


#: the signals that stop native calls: the ones the CLI turns into KeyboardInterrupt
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def stop_native_calls_on_signals(signals=STOP_SIGNALS):
    """While the body runs (main thread only; elsewhere a no-op), SIGINT/SIGTERM stop the native
    solver calls in progress (see the module docstring). The signal's Python handler is left as
    it is and still runs; a wakeup fd set before is restored afterwards and still gets the bytes."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "set_wakeup_fd"):
        yield
        return
    wanted = {int(s) for s in signals}
    r, w = os.pipe()
    os.set_blocking(w, False)
    try:
        previous = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    except (ValueError, OSError):   # not the main interpreter, or the fd cannot be used
        os.close(r)
        os.close(w)
        yield
        return
    reset()

    def watch() -> None:
        while True:
            try:
                data = os.read(r, 64)
            except OSError:
                return
            if not data:          # the write end was closed: the block is over
                return
            if previous >= 0:     # whoever set a wakeup fd before still hears of the signal
                try:
                    os.write(previous, data)
                except OSError:
                    pass
            if any(b in wanted for b in data):
                request_stop()

    thread = threading.Thread(target=watch, name="stop-native-calls", daemon=True)
    thread.start()
    try:
        yield
    finally:
        signal.set_wakeup_fd(previous)
        os.close(w)
        thread.join(timeout=1.0)
        os.close(r)
        reset()
