"""User text made safe to print and to store: no control characters, no terminal escapes, bounded.

Names, reasons and identities reach terminals (``canarist status``), logs, Events and the status.
A control character or an escape sequence in them could rewrite what an operator sees, and an
unbounded one could grow an object past etcd's limit; so every user string passes through here
before it is printed or stored. Two forms, on purpose: :func:`printable` replaces what it removes
with U+FFFD (status, Events, tables: the edit stays visible), :func:`escaped` writes it as its
Python escape (a validation diagnostic shows exactly which character is wrong).
"""

from __future__ import annotations

import re
import unicodedata

#: ANSI/VT escape sequences (CSI, OSC and two-character escapes), removed whole.
_ESCAPES = re.compile(r"\x1b(\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)?|[@-Z\\-_])")
#: Default bound on one printed or stored user string, in characters.
TEXT_LIMIT = 1024


def printable(text: str, limit: int = TEXT_LIMIT) -> str:
    """``text`` without escape sequences, control, format (bidi) or unassigned characters, at most ``limit`` long.

    Removed characters become U+FFFD so that an edit stays visible; a cut is marked with an ellipsis.
    """
    cut = len(text) > limit
    if not cut and text.isascii() and text.isprintable():  # the usual text: nothing to remove or cut
        return text
    cleaned = _ESCAPES.sub("\ufffd", text[: limit + 16])  # never more work than the bound needs
    cleaned = "".join(ch if _shown(ch) else "\ufffd" for ch in cleaned)
    if cut or len(cleaned) > limit:
        cleaned = cleaned[: max(limit - 1, 0)] + "\u2026"
    return cleaned


def _shown(ch: str) -> bool:
    if ch == " ":
        return True
    category = unicodedata.category(ch)
    # Cc: C0/C1 controls, Cf: format (bidi overrides, zero-width), Cs: surrogates, Co/Cn: private/unassigned,
    # Zl/Zp: line and paragraph separators (they break a line in most terminals).
    return category[0] != "C" and category not in ("Zl", "Zp")


def escaped(text: str, limit: int = 500) -> str:
    """``text`` with every unprintable character (controls, separators, ...) as its Python escape.

    What a policy echoes back (a bad value, an unknown key) cannot move the cursor, recolour a
    terminal, reorder text or start a new line; over ``limit`` characters it is cut with "...".
    """
    if len(text) > limit:
        text = text[:limit] + "..."
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)
