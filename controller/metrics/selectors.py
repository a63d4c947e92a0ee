"""PromQL text that nothing a policy says can break out of: names checked, values escaped. Pure.

Metric and label names are checked against Prometheus' grammar, label values escaped for a
double-quoted PromQL string (and for RE2 in ``=~`` unions), so a selector built here matches
exactly the values it was given. Also the range durations and millisecond times every query uses.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum

METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_RE2_SPECIAL = frozenset("\\.+*?()|[]{}^$")


class CatalogError(ValueError):
    """A name or value that cannot be put into PromQL safely: a configuration error, never retried."""


def escape_label_value(value: str) -> str:
    """The body of a double-quoted PromQL string that reads back exactly as ``value``.

    Backslash and quote are escaped, control characters written as ``\\uXXXX``; other Unicode is
    kept as UTF-8. Lone surrogates (not encodable as UTF-8) are refused.
    """
    if not isinstance(value, str):
        raise CatalogError(f"label value must be a string, got {type(value).__name__}")
    out: list[str] = []
    for char in value:
        code = ord(char)
        if 0xD800 <= code <= 0xDFFF:
            raise CatalogError(f"label value {value!r} contains a lone surrogate (not UTF-8)")
        if char in ('"', "\\"):
            out.append("\\" + char)
        elif code < 0x20 or 0x7F <= code <= 0x9F:
            out.append(f"\\u{code:04x}")
        else:
            out.append(char)
    return "".join(out)


def escape_regex(value: str) -> str:
    """``value`` as an RE2 pattern matching exactly that text (before PromQL string escaping)."""
    return "".join("\\" + c if c in _RE2_SPECIAL else c for c in value)


def check_metric_name(name: str) -> str:
    if not isinstance(name, str) or not METRIC_NAME.fullmatch(name):
        raise CatalogError(f"invalid Prometheus metric name {name!r}: must match [a-zA-Z_:][a-zA-Z0-9_:]*")
    return name


def check_label_name(name: str) -> str:
    if not isinstance(name, str) or not LABEL_NAME.fullmatch(name) or name.startswith("__"):
        raise CatalogError(
            f"invalid Prometheus label name {name!r}: must match [a-zA-Z_][a-zA-Z0-9_]* and not start with '__'"
        )
    return name


class Op(StrEnum):
    EQ = "="
    NE = "!="
    RE = "=~"
    NRE = "!~"


@dataclass(frozen=True)
class Matcher:
    """One label matcher; for ``=~``/``!~`` the value is a pattern (build it with :func:`any_of`)."""

    label: str
    op: Op
    value: str


def any_of(label: str, values: Iterable[str]) -> Matcher:
    """A matcher for any of ``values`` exactly: ``=`` for one value, an escaped RE2 union otherwise."""
    unique = sorted(set(values))
    if not unique or any(v == "" for v in unique):
        raise CatalogError(f"label {label!r}: empty value refused (it would match series without the label)")
    if len(unique) == 1:
        return Matcher(label, Op.EQ, unique[0])
    return Matcher(label, Op.RE, "|".join(escape_regex(v) for v in unique))


def selector(matchers: Sequence[Matcher]) -> str:
    """``{a="x", b=~"y|z"}`` with every name checked and every value escaped."""
    parts = []
    for m in matchers:
        if not isinstance(m.op, Op):
            raise CatalogError(f"invalid matcher operator {m.op!r}")
        parts.append(f'{check_label_name(m.label)}{m.op.value}"{escape_label_value(m.value)}"')
    return "{" + ", ".join(parts) + "}"


def promql_duration(seconds: float) -> str:
    """A PromQL range duration: ``60s``, or ``1500ms`` when not a whole number of seconds."""
    millis = to_millis(seconds)
    if millis <= 0:
        raise CatalogError(f"window length must be positive, got {seconds!r}")
    return f"{millis // 1000}s" if millis % 1000 == 0 else f"{millis}ms"


def to_millis(seconds: float) -> int:
    if not math.isfinite(seconds):
        raise CatalogError(f"time must be finite, got {seconds!r}")
    return round(seconds * 1000)
