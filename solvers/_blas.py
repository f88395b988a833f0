"""Run numpy's small matmuls on one BLAS thread, temporarily.

The numpy backends multiply thin matrices (k x ~10 by ~10 x 2^10): on one thread that takes
well under a microsecond per row, while a multi-threaded OpenBLAS hands each call to worker
threads that spin and wait; on a busy machine, or in a process pool with one worker per core,
that made the meet-in-the-middle backend up to ten times slower. :func:`single_thread_blas`
sets numpy's bundled OpenBLAS to one thread for the duration of a solve and restores the
previous value afterwards (reference-counted, so nested and concurrent uses are safe). Where
the library cannot be found (another BLAS, another OS) it does nothing.
"""
from __future__ import annotations

import ctypes
import threading
from contextlib import contextmanager

_SYMBOLS = (
    ("scipy_openblas_get_num_threads64_", "scipy_openblas_set_num_threads64_"),
    ("scipy_openblas_get_num_threads", "scipy_openblas_set_num_threads"),
    ("openblas_get_num_threads64_", "openblas_set_num_threads64_"),
    ("openblas_get_num_threads", "openblas_set_num_threads"),
)

_lock = threading.Lock()
_state = {"users": 0, "saved": None}
_api: list | None = None


def _find_api():
    """(get, set) of the OpenBLAS loaded by numpy, or None."""
    global _api
    if _api is not None:
        return _api[0]
    found = None
    try:
        import numpy  # noqa: F401  (makes sure numpy's BLAS is loaded)
        with open("/proc/self/maps") as fh:
            paths = sorted({line.split()[-1] for line in fh
                            if "openblas" in line.lower() and ".so" in line})
        for path in paths:
            lib = ctypes.CDLL(path)
            for get_name, set_name in _SYMBOLS:
                if hasattr(lib, get_name) and hasattr(lib, set_name):
                    get, set_ = getattr(lib, get_name), getattr(lib, set_name)
                    get.restype = ctypes.c_int
                    set_.argtypes = [ctypes.c_int]
                    found = (get, set_)
                    break
            if found:
                break
    except Exception:  # not Linux, no /proc, another BLAS: leave it alone
        found = None
    _api = [found]
    return found


@contextmanager
def single_thread_blas():
    api = _find_api()
    if api is None:
        yield
        return
    get, set_ = api
    with _lock:
        if _state["users"] == 0:
            _state["saved"] = int(get())
            if _state["saved"] != 1:
                set_(1)
        _state["users"] += 1
    try:
        yield
    finally:
        with _lock:
            _state["users"] -= 1
            if _state["users"] == 0 and _state["saved"] not in (None, 1):
                set_(_state["saved"])
