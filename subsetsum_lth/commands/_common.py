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
