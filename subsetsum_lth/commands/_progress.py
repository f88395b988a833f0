"""Progress output of the CLI: tqdm bars on a terminal, plain periodic lines otherwise.

With stderr going to a file or a pipe a tqdm bar writes carriage returns that nobody sees
until the end, so long steps would look silent. There each stage prints one plain line at
most every ``INTERVAL`` seconds (what, how far, elapsed, an estimate of what is left) and,
if it printed anything, a last line when it ends.

:func:`progress_factory` is the one factory the subcommands hand to the library (the convention
of :mod:`subsetsum_lth.progress`): its bars are tqdm's own, or :class:`PlainTick`, which has
tqdm's ``update``/``set_postfix``/``close``.
"""
from __future__ import annotations

import sys
import time
from typing import Callable

from subsetsum_lth.progress import duration  # noqa: F401  (the CLI's formatting of a time, here too)

#: seconds between two plain progress lines of one stage
INTERVAL = 10.0


def is_terminal(stream=None) -> bool:
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def say(message: str) -> None:
    """One line on stderr, flushed (announcements, progress lines)."""
    print(message, file=sys.stderr, flush=True)


def plural(unit: str) -> str:
    """'step' -> 'steps', 'batch' -> 'batches'."""
    return unit + ("es" if unit.endswith(("s", "sh", "ch", "x")) else "s")


class PlainTick:
    """A progress stage that prints plain lines: the tqdm-less twin of a bar, with tqdm's
    ``update(n)``, ``set_postfix(**kw)`` and ``close()``."""

    def __init__(self, total: int, desc: str, unit: str = "step", interval: float = INTERVAL,
                 write: Callable[[str], None] = say, clock: Callable[[], float] = time.monotonic):
        self.total, self.desc, self.unit, self.interval = int(total), desc, unit, float(interval)
        self.write, self.clock = write, clock
        self.n = 0
        self.postfix = ""
        self.t0 = self.last = clock()
        self.printed = False
        self.said_done = False     #: close() printed the closing line (subsetsum_lth.progress.phase)

    def _line(self, final: bool = False) -> str:
        elapsed = self.clock() - self.t0
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        left = ""
        if not final and 0 < self.n < self.total:
            left = f", about {duration(elapsed * (self.total - self.n) / self.n)} left"
        post = f", {self.postfix}" if self.postfix else ""
        head = f"{self.desc}: done, " if final else f"{self.desc}: "
        return f"{head}{self.n:,}/{self.total:,} {plural(self.unit)}{pct}{post}, {duration(elapsed)} elapsed{left}"

    def update(self, n: int = 1) -> None:
        self.n += int(n)
        now = self.clock()
        if now - self.last >= self.interval:
            self.last = now
            self.printed = True
            self.write(self._line())

    def set_postfix(self, **kw) -> None:
        self.postfix = ", ".join(f"{k} {v}" for k, v in kw.items())

    def close(self) -> None:
        if self.printed:
            self.write(self._line(final=True))
            self.printed = False
            self.said_done = True


class ProgressFactory:
    """The Progress factory the subcommands give the library, ``factory(total, desc, unit=None)
    -> bar`` (see :mod:`subsetsum_lth.progress`): the tqdm bar itself when stderr is a terminal,
    else a :class:`PlainTick` printing plain lines every ``interval`` seconds; a disabled tqdm bar
    (no output) when not ``enabled``. ``unit='inst'`` counts solver instances (1.2k, 3.4M).
    ``note(message)``: the library's phase announcements and per-layer lines, one line on stderr
    (through tqdm on a terminal, so that a bar is not torn), nothing when not ``enabled``."""

    takes_unit = True

    def __init__(self, enabled: bool = True, unit: str = "step", interval: float = INTERVAL,
                 terminal: bool | None = None, write: Callable[[str], None] | None = None):
        self.enabled, self.unit, self.interval = enabled, unit, interval
        self.terminal = is_terminal() if terminal is None else terminal
        self.write = write

    def __call__(self, total: int, desc: str, unit: str | None = None):
        unit = unit or self.unit
        if self.enabled and not self.terminal:
            return PlainTick(total, desc, unit, self.interval, **({"write": self.write} if self.write else {}))
        from tqdm import tqdm
        return tqdm(total=total, desc=desc, unit=unit, unit_scale=unit == "inst", disable=not self.enabled,
                    file=sys.stderr, dynamic_ncols=True, leave=False)

    def note(self, message: str) -> None:
        if not self.enabled:
            return
        if self.write is not None:
            self.write(message)
        elif self.terminal:
            from tqdm import tqdm
            tqdm.write(message, file=sys.stderr)
            sys.stderr.flush()
        else:
            say(message)


def progress_factory(enabled: bool = True, unit: str = "step", interval: float = INTERVAL,
                     terminal: bool | None = None) -> ProgressFactory:
    """A :class:`ProgressFactory`."""
    return ProgressFactory(enabled, unit, interval, terminal)
