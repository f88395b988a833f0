"""Argparse options generated from dataclass fields made with subsetsum_lth.options.option, and
the reading of their values back from the parsed namespace."""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from subsetsum_lth.commands._common import integer
from subsetsum_lth.options import options

#: annotation (its first alternative, as written) -> argparse ``type=``
_TYPES = {"int": integer, "float": float, "str": None, "Path": Path}


def _value_type(annotation: str):
    base = str(annotation).split("|")[0].strip()
    if base.startswith("tuple[") or base.startswith("list["):
        base = base[base.index("[") + 1:].split(",")[0].rstrip("]").strip()
    if base not in _TYPES:
        raise TypeError(f"no command-line type for annotation {annotation!r}")
    return _TYPES[base]


def _container(parser, title: str | None):
    """The parser, or its argument group titled ``title`` (made on first use, in order)."""
    if not title or not isinstance(parser, argparse.ArgumentParser):
        return parser
    for group in parser._action_groups:
        if group.title == title:
            return group
    return parser.add_argument_group(title)


def add_option(parser, cls, name: str, **override: Any) -> argparse.Action:
    """Add field ``name`` of dataclass ``cls`` to ``parser`` (a parser, group or mutually
    exclusive group) as its metadata says; ``override``: argparse keywords that differ for this
    command (a range-checking ``type``, say)."""
    f = options(cls)[name]
    meta = f.metadata
    flag = meta["flag"]
    if f.default is not dataclasses.MISSING:
        default = f.default
    elif f.default_factory is not dataclasses.MISSING:
        default = f.default_factory()
    else:
        default = dataclasses.MISSING
    positional = not flag.startswith("-")
    kw: dict[str, Any] = {"help": meta["help"]}
    if str(f.type).split("|")[0].strip() == "bool":
        # a flag switches the value from its default (--fast; --no-plots of a field that defaults to
        # True); a field that defaults to True or None under a positive flag is an on/off pair
        if default is False:
            action = "store_true"
        elif default is True and flag.startswith("--no-"):
            action = "store_false"
        else:
            action = argparse.BooleanOptionalAction
        kw.update(action=action, default=default)
    else:
        kw["type"] = _value_type(f.type)
        if meta.get("choices") is not None:
            kw["choices"] = meta["choices"]
        if meta.get("metavar"):
            kw["metavar"] = meta["metavar"]
        elif not positional and "choices" not in kw:     # as argparse names it, not after the field
            kw["metavar"] = flag.lstrip("-").replace("-", "_").upper()
        if meta.get("repeat"):          # a flag given several times; a positional: one or more values
            kw.update(nargs="+") if positional else kw.update(action="append")
        if default is dataclasses.MISSING:
            if not positional:
                kw["required"] = True
        else:
            kw["default"] = default
    kw.update(override)
    if positional:
        return _container(parser, meta.get("group")).add_argument(name, **kw)
    return _container(parser, meta.get("group")).add_argument(flag, dest=name, **kw)


def add_options(parser, cls, *names: str, **overrides: dict) -> None:
    """:func:`add_option` for each of ``names`` in order (``overrides``: name -> argparse keywords)."""
    for name in names:
        add_option(parser, cls, name, **overrides.get(name, {}))


def add_remaining(parser, *classes) -> None:
    """Add every field with a flag of ``classes`` that ``parser`` does not have yet (after the
    ones a command lists in its own order): a field added to a config class is a flag at once."""
    for cls in classes:
        for name, f in options(cls).items():
            flag = f.metadata["flag"]
            if flag.startswith("-") and flag not in parser._option_string_actions:
                add_option(parser, cls, name)


def read_fields(ns: argparse.Namespace, cls) -> dict:
    """{field: value} of the fields of ``cls`` whose flags the namespace holds (lists as tuples)."""
    out = {}
    for name in options(cls):
        if hasattr(ns, name):
            v = getattr(ns, name)
            out[name] = tuple(v) if isinstance(v, list) else v
    return out
