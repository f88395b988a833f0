"""Typed, range-checked access to the fields of one JSON object read from a run folder.

Every problem is one :class:`RunFolderError` naming the file, the field, what it must be and what
it holds (shortened), and the fix (:data:`subsetsum_lth.runfolder.RECREATE`).
"""
from __future__ import annotations

import math

from subsetsum_lth.errors import RunFolderError
from subsetsum_lth.runfolder import RECREATE


def short(v) -> str:
    r = repr(v)
    return r if len(r) <= 60 else r[:57] + "..."


class Fields:
    """Typed, range-checked access to one JSON object; every problem names file and field."""

    def __init__(self, obj: dict, where: str):
        self.obj, self.where = obj, where

    def fail(self, key: str, want: str, value) -> RunFolderError:
        return RunFolderError(f"{self.where}: {key!r} must be {want}, got {short(value)}; {RECREATE}")

    def has(self, key: str) -> bool:
        return key in self.obj

    def number(self, key: str, *, positive=False, nonneg=False, optional=False, none_ok=False, maximum=None):
        if key not in self.obj:
            if optional:
                return None
            raise RunFolderError(f"{self.where} lacks {key!r}; {RECREATE}")
        v = self.obj[key]
        if v is None and none_ok:
            return None
        want = ("a finite number > 0" if positive else "a finite number >= 0" if nonneg else "a finite number")
        if maximum is not None:
            want += f" and <= {maximum:g}"
        if none_ok:
            want += " or null"
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise self.fail(key, want, v)
        if (positive and not v > 0) or (nonneg and not v >= 0) or (maximum is not None and v > maximum):
            raise self.fail(key, want, v)
        return float(v)

    def integer(self, key: str, *, minimum=0, optional=False):
        if key not in self.obj:
            if optional:
                return None
            raise RunFolderError(f"{self.where} lacks {key!r}; {RECREATE}")
        v = self.obj[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            raise self.fail(key, f"an integer >= {minimum}", v)
        return int(v)

    def choice(self, key: str, choices, optional=False):
        if key not in self.obj:
            if optional:
                return None
            raise RunFolderError(f"{self.where} lacks {key!r}; {RECREATE}")
        v = self.obj[key]
        if not isinstance(v, str) or v not in choices:
            raise self.fail(key, "one of " + ", ".join(map(repr, choices)), v)
        return v

    def boolean(self, key: str, optional=False, default=None):
        if key not in self.obj:
            if optional:
                return default
            raise RunFolderError(f"{self.where} lacks {key!r}; {RECREATE}")
        v = self.obj[key]
        if not isinstance(v, bool):
            raise self.fail(key, "true or false", v)
        return v

    def int_list(self, key: str, *, length=None, minimum=0, optional=False):
        if key not in self.obj:
            if optional:
                return None
            raise RunFolderError(f"{self.where} lacks {key!r}; {RECREATE}")
        v = self.obj[key]
        want = f"a list of {'' if length is None else str(length) + ' '}integers >= {minimum}"
        if (not isinstance(v, list) or (length is not None and len(v) != length)
                or any(isinstance(e, bool) or not isinstance(e, int) or e < minimum for e in v)):
            raise self.fail(key, want, v)
        return [int(e) for e in v]


# ----------------------------------------------------------------------------- the run
