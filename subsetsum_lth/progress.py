"""The library's one progress convention: the tqdm bar itself.

A function with a long loop takes ``progress``, a factory ``progress(total, desc) -> bar`` that
the caller supplies (the CLI's is :func:`subsetsum_lth.commands._progress.progress_factory`). A
bar is a tqdm bar or anything tqdm-like: ``update(n)`` and, optionally, ``set_postfix(**kw)`` and
``close()``; a plain callable ``bar(n)`` is accepted too. The library never makes a bar or prints:
it advances, annotates and closes what it was given, through the functions below, which
accept ``None`` (no progress wanted).

A bar whose ``close()`` printed a closing line sets ``said_done``; :func:`phase` then adds none.
A factory may also have ``note(message)`` (one line of news for the user: a phase starts, a
layer is solved) and accept ``progress(total, desc, unit=...)``; the CLI's does. :func:`phase`
announces a stage through ``note`` and opens its bar; :func:`note` also logs the line (INFO), so
a caller without a factory still finds the phases in its log.
"""
from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

log = logging.getLogger(__name__)

#: a tqdm(-like) bar (``update(n)``, optionally ``set_postfix(**kw)``, ``close()``) or a callable ``bar(n)``
Bar = Any
#: ``progress(total, desc) -> bar``
Progress = Callable[[int, str], Bar]


def advance(bar, n: int = 1) -> None:
    """``n`` more units done."""
    if bar is None:
        return
    update = getattr(bar, "update", None)
    if update is not None:
        update(n)
    else:
        bar(n)


def annotate(bar, **fields) -> None:
    """Show ``fields`` next to the bar (tqdm's ``set_postfix``), where the bar can."""
    if bar is not None and hasattr(bar, "set_postfix"):
        bar.set_postfix(**fields)


def close(bar) -> None:
    """The stage is over (tqdm's ``close``), where the bar can."""
    if bar is not None and hasattr(bar, "close"):
        bar.close()


def note(progress, message: str) -> None:
    """One line of news for the user (a phase begins or ends, a layer is done): handed to the
    factory's ``note`` where it has one, and logged."""
    log.info("%s", message)
    fn = getattr(progress, "note", None)
    if fn is not None:
        fn(message)


def open_bar(progress, total: int, desc: str, unit: str | None = None):
    """``progress(total, desc)`` (with ``unit=`` where the factory takes it), or None."""
    if progress is None:
        return None
    if unit is not None and getattr(progress, "takes_unit", False):
        return progress(total, desc, unit=unit)
    return progress(total, desc)


@contextmanager
def phase(progress, desc: str, detail: str = "", total: int = 0, unit: str | None = None) -> Iterator[Any]:
    """A stage of work: ``note`` "desc: detail ..." when it begins and "desc: done in S s" when it
    ends, and a bar of ``total`` units (yielded; None when ``total`` is 0 or no progress) that the
    stage advances. The lines come in the order the stages run, so a log shows what is running."""
    note(progress, f"{desc}: {detail} ..." if detail else f"{desc} ...")
    t0 = time.perf_counter()
    bar = open_bar(progress, total, desc, unit) if total else None
    try:
        yield bar
    finally:
        close(bar)
    if not getattr(bar, "said_done", False):    # a bar that printed its own closing line
        note(progress, f"{desc}: done in {time.perf_counter() - t0:.1f} s")


def duration(seconds: float) -> str:
    """'45 s', '3.5 min', '1.2 h'."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


class Eta:
    """The time left in a loop of ``total`` steps, from the loop's own timed steps.

    Call :meth:`step` after every step with the clock's reading. The first ``skip`` steps (they
    pay for allocations and warm-up) are left out; the time per step is the mean over the last
    ``window`` timed steps, so the estimate follows the machine as it gets busier or freer.
    ``tail_steps``: work after the loop, in step-equivalents (e.g. a final evaluation), added to
    what is left. :attr:`ready` once ``probe`` steps (a twentieth of a short loop, at least two)
    after the skipped ones are timed, or
    ``probe_seconds`` have passed with at least two of them: the moment to announce the first
    estimate."""

    def __init__(self, total: int, skip: int = 1, window: int = 200, probe: int = 20,
                 probe_seconds: float = 3.0, tail_steps: float = 0.0):
        from collections import deque
        self.total, self.skip, self.tail = int(total), int(skip), float(tail_steps)
        # a short loop is probed for a twentieth of its steps (at least 2), a long one for ``probe``
        probe = max(2, min(int(probe), self.total // 20))
        self.probe, self.probe_seconds = max(1, min(probe, self.total - self.skip)), float(probe_seconds)
        self.done = 0
        self.times: deque = deque(maxlen=max(2, int(window) + 1))   # clock readings after the skipped steps

    def step(self, now: float, n: int = 1) -> None:
        """``n`` more steps done at clock reading ``now``."""
        self.done += int(n)
        if self.done >= self.skip:
            self.times.append((self.done, float(now)))

    @property
    def timed(self) -> int:
        """Steps timed so far (after the skipped ones)."""
        return self.times[-1][0] - self.times[0][0] if len(self.times) > 1 else 0

    @property
    def ready(self) -> bool:
        if self.timed >= self.probe:
            return True
        return self.timed >= 2 and self.times[-1][1] - self.times[0][1] >= self.probe_seconds

    def seconds_per_step(self) -> float | None:
        if self.timed < 1:
            return None
        (n0, t0), (n1, t1) = self.times[0], self.times[-1]
        return (t1 - t0) / (n1 - n0)

    def remaining(self) -> float | None:
        """Seconds left (the steps not done, and the tail), or None before a step is timed."""
        per = self.seconds_per_step()
        if per is None:
            return None
        return per * (max(self.total - self.done, 0) + self.tail)
