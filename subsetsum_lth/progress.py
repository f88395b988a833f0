"""The library's one progress convention: the tqdm bar itself.

A function with a long loop takes ``progress``, a factory ``progress(total, desc) -> bar`` that
the caller supplies (the CLI's is :func:`subsetsum_lth.commands._progress.progress_factory`). A
bar is a tqdm bar or anything tqdm-like: ``update(n)`` and, optionally, ``set_postfix(**kw)`` and
``close()``; a plain callable ``bar(n)`` is accepted too. The library never makes a bar or prints:
it advances, annotates and closes what it was given, through the three functions below, which
accept ``None`` (no progress wanted).
"""
from __future__ import annotations

from typing import Any, Callable

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
