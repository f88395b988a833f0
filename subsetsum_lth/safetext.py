"""Text that came from a file (checkpoint keys, metadata, pickled class names) made safe to print.

A key such as ``"\\x1b]0;pwned\\x07fc.weight"`` printed raw retitles the user's terminal, and
``"\\x1b[2J"`` clears it: every such string is printed through :func:`escape`, which writes
control characters (C0, DEL, C1), line/paragraph separators and bidirectional overrides as
``\\xNN`` / ``\\uNNNN`` and leaves everything else (accents, ×, ‖) as it is.
"""
from __future__ import annotations

import re

#: C0 controls, DEL, C1 controls, U+2028/2029, bidi embeddings/overrides/isolates, BOM
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ufeff]")
_UNSAFE_KEEP_NL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ufeff]")


def _code(m: re.Match) -> str:
    c = ord(m.group(0))
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def escape(text, keep_newlines: bool = False) -> str:
    """``text`` (anything; ``str()`` of it) with every terminal control character escaped;
    ``keep_newlines``: a ``\\n`` stays a line break (a multi-line message of this tool's own)."""
    return (_UNSAFE_KEEP_NL if keep_newlines else _UNSAFE).sub(_code, str(text))
