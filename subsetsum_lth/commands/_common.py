"""Small helpers shared by the subcommands (printing lives here, not in the library)."""
from __future__ import annotations

import argparse
import json
import math

from subsetsum_lth.errors import UserError
from subsetsum_lth.limits import MAX_SECONDS, check_float, check_int
from subsetsum_lth.runfolder import _json_default


def print_json(obj) -> None:
    print(json.dumps(obj, indent=2, default=_json_default))


def integer(text: str) -> int:
    """argparse ``type=`` of an integer flag: '12', also '1e9' or '2.0' (an integral number);
    the range is checked by :func:`int_range` or by the config dataclass."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not (math.isfinite(v) and v.is_integer()):
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer")
    return int(v)


def int_range(lo: int = 1, hi: int | None = None, why: str = "", name: str | None = None):
    """argparse ``type=``: an integer in ``lo..hi`` (the range check of :func:`limits.check_int`)."""
    def parse(text: str) -> int:
        try:
            return check_int("", integer(text), lo, hi, why)
        except UserError as exc:
            raise argparse.ArgumentTypeError(str(exc).strip()) from None
    parse.__name__ = name or {0: "non_negative_int", 1: "positive_int"}.get(lo, "int_range")
    return parse


def float_range(lo: float | None = 0.0, hi: float | None = None, lo_open: bool = True, why: str = "",
                unit: str = "", name: str | None = None):
    """argparse ``type=``: a finite float in ``(lo, hi]`` (``[lo, hi]`` unless ``lo_open``)."""
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        try:
            return check_float("", v, lo, hi, lo_open, why, unit)
        except UserError as exc:
            raise argparse.ArgumentTypeError(str(exc).strip()) from None
    parse.__name__ = name or ("positive_float" if lo_open else "non_negative_float")
    return parse


def seconds(zero_ok: bool = False):
    """argparse ``type=`` of a time flag: finite, positive (or 0), at most a week."""
    return float_range(0.0, MAX_SECONDS, lo_open=not zero_ok, why="a week", unit=" of seconds")


positive_float = float_range(0.0)
non_negative_float = float_range(0.0, lo_open=False)
positive_int = int_range(1)
non_negative_int = int_range(0)


def bound_text(bound: float, where: str, digits: int = 4) -> str:
    """A certified bound with the set it holds on: 'sup over ‖x‖₂ ≤ 17.18, x ≥ 0 of ‖f(x) − ĝ(x)‖₂ ≤ 6.458'."""
    return f"sup over {where} of ‖f(x) − ĝ(x)‖₂ ≤ {bound:.{digits}g}"


def scale_text(scale: dict | None, bound_name: str = "the certified bound", lead: str = "to judge it") -> str | None:
    """The figures a bound on ‖f − ĝ‖₂ is judged by (evaluation.bound_scale), in one line, or None."""
    if not scale:
        return None
    text = (f"{lead}, on {scale['examples']:,} test images: ‖f(x)‖₂ median {scale['output_norm_median']:.4g}, "
            f"max {scale['output_norm_max']:.4g}; class margin (ĝ keeps f's class where ‖f(x) − ĝ(x)‖₂ is "
            f"below it) min {scale['class_margin_min']:.3g}, median {scale['class_margin_median']:.4g}")
    if "certified_same_class_fraction" in scale:
        text += (f"; {bound_name} guarantees f's class on {100 * scale['certified_same_class_fraction']:.2f}% "
                 f"of them ({scale['examples_in_certified_set']:,} lie in its set)")
    return text
