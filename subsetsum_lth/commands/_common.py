"""Small helpers shared by the subcommands (printing lives here, not in the library)."""
from __future__ import annotations

import json


def print_json(obj) -> None:
    from subsetsum_lth.runfolder import _json_default
    print(json.dumps(obj, indent=2, default=_json_default))


def _number_type(cast, ok, requirement: str, noun: str):
    """An argparse ``type=`` that parses with ``cast`` and accepts values where ``ok(v)``."""
    def parse(text: str):
        import argparse
        try:
            v = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {noun}") from None
        if not ok(v):
            raise argparse.ArgumentTypeError(f"must be {requirement}, got {text}")
        return v
    parse.__name__ = requirement.replace(" ", "_")
    return parse


def _finite(v: float) -> bool:
    return v == v and v not in (float("inf"), float("-inf"))


positive_float = _number_type(float, lambda v: v > 0 and _finite(v), "a positive number", "a number")
non_negative_float = _number_type(float, lambda v: v >= 0 and _finite(v), "a non-negative number", "a number")
positive_int = _number_type(int, lambda v: v >= 1, "a positive integer", "an integer")
non_negative_int = _number_type(int, lambda v: v >= 0, "a non-negative integer", "an integer")
