"""What this machine allows, and the one check of every numeric flag.

Cores and memory this process may use (affinity mask, ``ulimit -v``), a memory check that
refuses with an estimate, and the range checks every command's numeric flags go through
(finite, in range, below a sane cap). A foundation module: the network readers (checkpoint
sizes), the construction's config and the solve layer's estimates all use it.
"""
from __future__ import annotations

import logging
import math
import os

from subsetsum_lth.errors import UserError

log = logging.getLogger("subsetsum_lth.limits")


def available_cores() -> int:
    """CPU cores this process may run on (affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def cap_workers(requested: int | None, what: str = "--workers") -> int:
    """Worker processes to start: ``requested`` (default: all cores), at most the core count;
    says so in the log when it caps."""
    cores = available_cores()
    if requested is None:
        return cores
    if requested > cores:
        log.warning("%s %d capped to %d (the number of CPU cores here)", what, requested, cores)
        return cores
    return int(requested)


_THREADS_WARNED: set = set()


def cap_threads(requested: int, what: str = "--threads") -> int:
    """torch threads to use: ``requested``, at most the core count (torch/OpenMP crash on a
    hundred thousand threads); says so once in the log when it caps."""
    cores = available_cores()
    if requested > cores:
        if requested not in _THREADS_WARNED:
            _THREADS_WARNED.add(requested)
            log.warning("%s %d capped to %d (the number of CPU cores here)", what, requested, cores)
        return cores
    return int(requested)


def physical_memory() -> int | None:
    """Bytes of RAM of this machine (None where unknown)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def memory_limit() -> int | None:
    """Bytes this process may allocate: the machine's RAM, or less under a ``ulimit -v``
    (RLIMIT_AS) (None where neither is known)."""
    limits = [physical_memory()]
    try:
        import resource
        soft = resource.getrlimit(resource.RLIMIT_AS)[0]
        if soft not in (resource.RLIM_INFINITY, -1) and soft > 0:
            limits.append(int(soft))
    except (ImportError, OSError, ValueError, AttributeError):
        pass
    known = [x for x in limits if x]
    return min(known) if known else None


def human_bytes(n: float) -> str:
    """1.5 KB, 80.0 GB, 153.0 TB (decimal units)."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= size:
            return f"{n / size:,.1f} {unit}"
    return f"{int(n)} bytes"


def check_memory(needed: float, what: str, fix: str, share: float = 0.8) -> None:
    """UserError (exit 2) when ``needed`` bytes exceed ``share`` of what this process may
    allocate: '``what`` would need about X of memory, more than ... here; ``fix``'."""
    have = memory_limit()
    if have is not None and needed > share * have:
        raise UserError(f"{what} would need about {human_bytes(needed)} of memory, more than the "
                        f"{human_bytes(have)} this process may use here; {fix}")


# ----------------------------------------------------------------------------- number checks
# Every numeric flag of every command is checked by these two (the config dataclasses call them,
# and commands/_common.py's argparse types wrap them): finite, in range, below a sane cap.

#: seconds any time flag may ask for (--time-limit, --bab-seconds, --batch-timeout, --time-budget): a week
MAX_SECONDS = 7 * 24 * 3600.0
#: --max-hours at most: a year of estimated solving
MAX_HOURS = 365 * 24.0
#: random points of the empirical bound (--samples): a million (each is an input vector in float64)
MAX_SAMPLES = 1_000_000
#: gradient-ascent steps of the empirical bound (--steps)
MAX_STEPS = 100_000
#: training passes (--epochs)
MAX_EPOCHS = 100_000
#: seeds: numpy and torch take any integer below 2^63
MAX_SEED = 2 ** 63 - 1
#: instances, batches, block widths, retries: anything beyond these is a typo, not a plan
MAX_COUNT = 100_000_000
MAX_RETRIES = 1000


def _noun(lo) -> str:
    return {0: "a non-negative integer", 1: "a positive integer"}.get(lo, f"an integer >= {lo}")


def check_int(flag: str, value, lo: int = 1, hi: int | None = None, why: str = "") -> int:
    """``value`` as an int in ``lo..hi``, else UserError naming ``flag``, the value and the range
    (``why``: the reason for the cap, said with it)."""
    import numpy as np
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if not ok or value < lo or (hi is not None and value > hi):
        cap = "" if hi is None else f" at most {hi:,}" + (f" ({why})" if why else "")
        raise UserError(f"{flag} must be {_noun(lo)}{cap}, got {value!r}")
    return int(value)


def check_float(flag: str, value, lo: float | None = 0.0, hi: float | None = None,
                lo_open: bool = True, why: str = "", unit: str = "") -> float:
    """``value`` as a finite float in ``(lo, hi]`` (``[lo, hi]`` unless ``lo_open``), else
    UserError naming ``flag``, the value and the range."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = math.nan
    bad = not math.isfinite(v) or (lo is not None and (v <= lo if lo_open else v < lo)) \
        or (hi is not None and v > hi)
    if bad:
        if lo == 0 and lo_open:
            noun = f"a positive number{unit}"
        elif lo == 0:
            noun = f"a non-negative number{unit}"
        elif lo is None:
            noun = f"a finite number{unit}"
        else:
            noun = f"a number{unit} {'>' if lo_open else '>='} {lo:g}"
        cap = "" if hi is None else f" at most {hi:g}" + (f" ({why})" if why else "")
        raise UserError(f"{flag} must be {noun}{cap}, got {value!r}")
    return v


def check_seconds(flag: str, value, zero_ok: bool = False) -> float:
    """A time flag: finite, positive (or 0 when ``zero_ok``), at most :data:`MAX_SECONDS`."""
    return check_float(flag, value, 0.0, MAX_SECONDS, lo_open=not zero_ok, unit=" of seconds",
                       why="a week")
