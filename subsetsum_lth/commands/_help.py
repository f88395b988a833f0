"""The help formatter of every subcommand: each default shown once, and flags that read right.

argparse's ArgumentDefaultsHelpFormatter appends "(default: X)" to every option, also to help
that already states its default in words ("(default: 1, or from --data) (default: None)"), to
options whose default None only means "not given", and to flags, where the stored value reads
backwards ("--no-fallback … (default: True)"). This one appends "(default: X)" only to an option
that takes a value, has a real default and does not describe it already; an on/off pair
(--bias/--no-bias) names the flag that is in effect by default.
"""
from __future__ import annotations

import argparse
import re

_MENTIONS_DEFAULT = re.compile(r"\bdefault\b|%\(default\)", re.IGNORECASE)
#: what Python 3.9-3.11's BooleanOptionalAction appends to its help by itself
_AUTO_BOOL_DEFAULT = " (default: %(default)s)"


def default_note(action: argparse.Action) -> str | None:
    """The "(default: …)" this formatter appends to ``action``'s help, or None."""
    help_text = action.help or ""
    if isinstance(action, argparse.BooleanOptionalAction):
        if not isinstance(action.default, bool) or _MENTIONS_DEFAULT.search(
                help_text.replace(_AUTO_BOOL_DEFAULT, "")):
            return None
        positive = [o for o in action.option_strings if not o.startswith("--no-")]
        negative = [o for o in action.option_strings if o.startswith("--no-")]
        flag = (positive if action.default else negative) or action.option_strings
        return f"(default: {flag[0]})"
    if action.nargs == 0:             # store_true/false/const, count, help, version
        return None
    if action.default is None or action.default is argparse.SUPPRESS:
        return None
    if not action.option_strings:     # positionals: required, no default to show
        return None
    if _MENTIONS_DEFAULT.search(help_text):
        return None
    return "(default: %(default)s)"


class HelpFormatter(argparse.HelpFormatter):
    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = action.help or ""
        if isinstance(action, argparse.BooleanOptionalAction):
            help_text = help_text.replace(_AUTO_BOOL_DEFAULT, "")
        note = default_note(action)
        if note:
            help_text = f"{help_text} {note}" if help_text else note
        return help_text
