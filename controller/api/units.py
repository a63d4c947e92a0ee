"""Kubernetes-style quantities used in policy files: durations such as ``30s`` or ``1h30m``.

Durations are parsed into float seconds and printed back in the shortest exact form, so a policy
round-trips through the model without changing meaning.
"""

from __future__ import annotations

import re

_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)(ms|s|m|h))+$")
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")

#: Regular expression (JSON Schema dialect) that a duration string must match.
DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"


def parse_duration(text: str) -> float:
    """Return the number of seconds in ``text`` (``500ms``, ``30s``, ``5m``, ``1h30m``).

    Raises ValueError with a user-facing reason for anything else, including bare numbers:
    a unit is required so that ``500`` can never be read as seconds when milliseconds were meant.
    """
    if not isinstance(text, str):
        raise ValueError(f"expected a duration string such as '30s' or '5m', got {text!r}")
    stripped = text.strip()
    if not _DURATION.match(stripped):
        raise ValueError(f"invalid duration {text!r}: use a number with a unit ms, s, m or h, e.g. '30s'")
    seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in _PART.findall(stripped))
    return round(seconds, 6)


def format_duration(seconds: float) -> str:
    """Render seconds as the shortest duration string that parses back to the same value."""
    if seconds < 0:
        raise ValueError("durations are never negative")
    millis = round(seconds * 1000)
    if millis % 1000:
        return f"{millis}ms"
    whole = millis // 1000
    if whole == 0:
        return "0s"
    parts = []
    for unit, size in (("h", 3600), ("m", 60), ("s", 1)):
        count, whole = divmod(whole, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)
