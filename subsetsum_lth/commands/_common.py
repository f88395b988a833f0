"""Small helpers shared by the subcommands (printing lives here, not in the library)."""
from __future__ import annotations

import json
import sys

from tqdm import tqdm


def tqdm_progress(enabled: bool = True):
    """A Progress factory for the library: returns a per-stage callable(n) with .close()."""
    def factory(total: int, desc: str):
        bar = tqdm(total=total, desc=desc, unit="inst", unit_scale=True, disable=not enabled,
                   file=sys.stderr, dynamic_ncols=True, leave=False)

        class Tick:
            def __call__(self, n: int) -> None:
                bar.update(n)

            def close(self) -> None:
                bar.close()
        return Tick()
    return factory


def print_json(obj) -> None:
    from subsetsum_lth.runfolder import _json_default
    print(json.dumps(obj, indent=2, default=_json_default))


def positive_float(text: str) -> float:
    import argparse
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (v > 0 and v != float("inf")):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return v


def positive_int(text: str) -> int:
    import argparse
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return v


def non_negative_int(text: str) -> int:
    import argparse
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return v


def non_negative_float(text: str) -> float:
    import argparse
    import math
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (v >= 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"must be a non-negative number, got {text}")
    return v
