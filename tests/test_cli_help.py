"""Every subcommand's --help shows each default once, and flags never show a stored value."""
from __future__ import annotations

import argparse
import re

import pytest

from subsetsum_lth.cli import build_parser


def _parsers(parser: argparse.ArgumentParser, path=("subsetsum-lth",)):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, path + (name,))


PARSERS = dict((" ".join(p), parser) for p, parser in _parsers(build_parser()))


def test_every_subcommand_is_walked():
    names = set(PARSERS)
    for cmd in ("train-target", "approximate", "edge-popup", "compare", "certify", "solvers",
                "bench", "bench solvers", "bench approximate"):
        assert f"subsetsum-lth {cmd}" in names


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_help_shows_each_default_once(name):
    parser = PARSERS[name]
    formatter = parser._get_formatter()
    for action in parser._actions:
        if action.help is None:       # argparse prints no help line, so no default either
            assert not (action.option_strings and action.nargs != 0 and action.default is not None), \
                f"{name} {'/'.join(action.option_strings)}: default {action.default!r} never shown"
        if action.help in (None, argparse.SUPPRESS):
            continue
        text = " ".join(formatter._expand_help(action).split())
        where = f"{name} {'/'.join(action.option_strings) or action.dest}: {text!r}"
        assert len(re.findall(r"\(default", text, re.I)) <= 1, where
        assert len(re.findall(r"\bdefault\b", text, re.I)) <= 1, where
        assert "(default: None)" not in text, where
        if isinstance(action, argparse.BooleanOptionalAction):
            if isinstance(action.default, bool):   # on/off pair: name the flag in effect
                on = [o for o in action.option_strings if not o.startswith("--no-")]
                off = [o for o in action.option_strings if o.startswith("--no-")]
                flag = (on if action.default else off)[0]
                assert re.findall(r"\(default: ([^)]*)\)", text) == [flag], where
        elif action.nargs == 0:       # store_true/false, count: the flag is the whole story
            assert not re.search(r"\(default: (True|False|0)\)", text), where
    # and the rendered page as a whole (wrapped lines included)
    page = " ".join(parser.format_help().split())
    assert not re.search(r"\(default:[^()]*(\([^()]*\))?[^()]*\) \(default", page), page


def test_flags_read_right():
    approx = PARSERS["subsetsum-lth approximate"].format_help()
    assert "(default: True)" not in approx and "(default: False)" not in approx
    train = " ".join(PARSERS["subsetsum-lth train-target"].format_help().split())
    assert "give every Linear layer a bias (default: --bias)" in train
