"""Command-line options described where their values live: in config dataclass fields.

A field made with :func:`option` carries its flag name and help text in ``field.metadata``; the
CLI generates its argparse options from them (``subsetsum_lth/request/``), and a library check
names the flag with :func:`flag` without knowing about argparse. The metadata is plain data:

    flag      "--seed" (a bool field: the flag switches it from its default; "--no-plots" for a
              field that defaults to True)
    help      the help line
    metavar   shown for the value (optional)
    choices   the allowed values (optional)
    repeat    True: the flag may be given several times, the values are collected (optional)
    group     title of the help section the option is listed under (optional)
"""
from __future__ import annotations

import dataclasses
from typing import Any

_KEYS = ("flag", "help", "metavar", "choices", "repeat", "group")


def option(default: Any = dataclasses.MISSING, *, flag: str, help: str, default_factory: Any = dataclasses.MISSING,
           **meta: Any) -> Any:
    """A dataclass field with a command-line flag: ``seed: int = option(0, flag="--seed", help=...)``."""
    unknown = set(meta) - set(_KEYS)
    if unknown:
        raise TypeError(f"unknown option metadata {sorted(unknown)}; use {_KEYS}")
    metadata = {"flag": flag, "help": help, **meta}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def flag(cls_or_obj: Any, name: str) -> str:
    """The flag of field ``name`` ("--" + the name with dashes when it declares none), for messages."""
    for f in dataclasses.fields(cls_or_obj):
        if f.name == name:
            return f.metadata.get("flag") or "--" + name.replace("_", "-")
    raise KeyError(f"{type(cls_or_obj).__name__ if not isinstance(cls_or_obj, type) else cls_or_obj.__name__} "
                   f"has no field {name!r}")


def options(cls_or_obj: Any) -> dict[str, dataclasses.Field]:
    """field name -> field, for the fields that carry a flag."""
    return {f.name: f for f in dataclasses.fields(cls_or_obj) if f.metadata.get("flag")}
