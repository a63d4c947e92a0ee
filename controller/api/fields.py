"""The field types a ModelRollout policy is built from, and the base class of its parts.

Every string a user writes that later reaches PromQL, an Istio object or a template is held to a
syntax here (patterns, constrained types, regex bounds), so the model modules only name types:
:mod:`controller.api.routing`, :mod:`controller.api.metrics_spec` and :mod:`controller.api.model`.
"""

from __future__ import annotations

import math
import re
import warnings
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    StringConstraints,
    WithJsonSchema,
)
from pydantic.alias_generators import to_camel

from controller.api.units import DURATION_PATTERN, parse_duration

# --- names and label syntax -------------------------------------------------------------------
# Everything a user writes that later lands in a PromQL selector, an Istio object or a template is
# restricted to a syntax that cannot break out of it: no quotes, braces, backslashes or newlines.

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
HOST = r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
GATEWAY = r"^(mesh|([a-z0-9]([-a-z0-9]*[a-z0-9])?/)?[a-z0-9]([-a-z0-9]*[a-z0-9])?)$"
LABEL_KEY = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)
LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
PROM_METRIC_NAME = r"^[a-zA-Z_:][a-zA-Z0-9_:]*$"
PROM_LABEL_NAME = r"^[a-zA-Z][a-zA-Z0-9_]*$"
HEADER_NAME = r"^[a-z0-9][a-z0-9-]*$"
COOKIE_TOKEN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
#: Characters no free-text field (header match values, regexes) may hold: what a YAML reader
#: refuses or folds (C0 and C1 controls, DEL, line and paragraph separators, a byte-order mark,
#: the non-characters of the Basic Multilingual Plane) and what a terminal acts on (escapes,
#: bidirectional overrides). One character class for pydantic (Rust regex), the API server (Go
#: RE2) and editors (ECMAScript): control bytes as ``\xHH`` escapes, the rest as the characters
#: themselves, as no ``\u`` escape means the same in all three (the generated files escape them).
#: Surrogates cannot reach a pattern: pydantic refuses them in any string, and so does UTF-8.
UNSAFE_CHARACTERS = (
    r"\x00-\x1f\x7f-\x9f"
    "\u200e\u200f\u202a-\u202e\u2066-\u2069"  # bidirectional marks, embeddings, overrides, isolates
    "\u2028\u2029\ufeff\ufdd0-\ufdef\ufffe\uffff"
)
SAFE_TEXT = "^[^" + UNSAFE_CHARACTERS + r"\"'`\\{}]*$"
REGEX_TEXT = "^[^" + UNSAFE_CHARACTERS + "]*$"
#: Regex bounds. RE2 (Envoy's engine) refuses nesting deeper than 1000 and counted repetitions
#: above 1000 (also multiplied through nested groups); canarist checks a pattern with Python's
#: ``re``, whose parser recurses once per group, so it bounds nesting at 100.
MAX_REGEX_NESTING = 100
MAX_REGEX_REPEAT = 1000
TRITON_MODEL = COOKIE_TOKEN
FRACTION_PATTERN = r"^[0-9]+(\.[0-9]+)?%$"
QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(%|ms|s|m|h)([0-9]+(\.[0-9]+)?(ms|s|m|h))*$"

DnsLabel = Annotated[str, StringConstraints(pattern=DNS_LABEL, max_length=63)]
Host = Annotated[str, StringConstraints(pattern=HOST, max_length=253)]
Gateway = Annotated[str, StringConstraints(pattern=GATEWAY, max_length=127)]


def _check_label_key(key: str) -> str:
    prefix, _, name = key.rpartition("/")
    if len(name) > 63:
        raise ValueError(f"label key name {name[:20]!r}... is longer than 63 characters")
    if len(prefix) > 253:
        raise ValueError("label key prefix is longer than 253 characters")
    return key


LabelKey = Annotated[str, StringConstraints(pattern=LABEL_KEY, max_length=317), AfterValidator(_check_label_key)]
LabelValue = Annotated[str, StringConstraints(pattern=LABEL_VALUE, max_length=63)]
PromMetricName = Annotated[str, StringConstraints(pattern=PROM_METRIC_NAME, max_length=200)]
PromLabelName = Annotated[str, StringConstraints(pattern=PROM_LABEL_NAME, max_length=100)]
HeaderName = Annotated[str, StringConstraints(pattern=HEADER_NAME, max_length=100)]
CookieToken = Annotated[str, StringConstraints(pattern=COOKIE_TOKEN, max_length=100)]
SafeText = Annotated[str, StringConstraints(pattern=SAFE_TEXT, max_length=1024)]


def _check_duration(text: str) -> str:
    parse_duration(text)
    return text


def _check_regex(text: str) -> str:
    """Accept only regular expressions that RE2 (Envoy's engine) also accepts, within its bounds.

    Every failure is a ValueError (a validation error), never a RecursionError or OverflowError
    from ``re`` itself: the bounds are checked by a flat scan before anything is compiled.
    """
    if re.search(r"\(\?[=!<>(]|\(\?P=|\\[1-9]|\\[ZG]|[*+?}]\+", text):
        raise ValueError(
            "not supported by Envoy's RE2: lookarounds, back-references, atomic groups, conditionals, "
            "possessive quantifiers, \\Z and \\G"
        )
    depth, repeat = regex_bounds(text)
    if depth > MAX_REGEX_NESTING:
        raise ValueError(f"groups nested {depth} deep: at most {MAX_REGEX_NESTING} are allowed")
    if repeat > MAX_REGEX_REPEAT:
        raise ValueError(
            f"counted repetitions (multiplied through nested groups) exceed RE2's limit of {MAX_REGEX_REPEAT}"
        )
    try:
        with warnings.catch_warnings():  # "possible nested set" and the like: not the user's business here
            warnings.simplefilter("ignore")
            re.compile(text)
    except re.error as exc:
        raise ValueError(f"invalid regular expression: {exc}") from None
    except (RecursionError, OverflowError, MemoryError, ValueError) as exc:
        raise ValueError(f"regular expression too complex: {type(exc).__name__}") from None
    return text


_COUNT = re.compile(r"\{([0-9]+)(,([0-9]*))?\}")


def regex_bounds(text: str) -> tuple[int, int]:
    """The deepest group nesting and the largest product of nested repetition counts in ``text``.

    A flat scan that follows Python's and RE2's rules for escapes and character classes (so a
    ``(`` inside ``[...]`` or after ``\\`` is no group). A count ``{m,n}`` weighs ``n`` (``m``
    when open-ended), as RE2 expands it; the product runs through the groups it repeats.
    """
    depth = deepest = 0
    inner = [1]  # per open group: the largest repetition product inside it so far
    last = 1  # the repetition product of the atom just read (a group's: its inner product)
    i, n = 0, len(text)
    while i < n:
        char = text[i]
        if char == "\\":
            i, last = i + 2, 1
            continue
        if char == "[":
            i += 1
            if i < n and text[i] == "^":
                i += 1
            if i < n and text[i] == "]":
                i += 1
            while i < n and text[i] != "]":
                i += 2 if text[i] == "\\" else 1
            i, last = i + 1, 1
            continue
        if char == "(":
            depth += 1
            deepest = max(deepest, depth)
            inner.append(1)
            last = 1
        elif char == ")":
            if len(inner) > 1:
                depth -= 1
                last = inner.pop()
                inner[-1] = max(inner[-1], last)
        elif char == "{" and (count := _COUNT.match(text, i)) is not None:
            low, comma, high = count.group(1), count.group(2), count.group(3)
            bound = high if comma and high else low
            times = int(bound) if len(bound) <= 7 else 10**7  # a longer count is refused anyway
            inner[-1] = max(inner[-1], times * last)
            i = count.end()
            continue
        else:
            last = 1
        i += 1
    return deepest, max(inner)


def parse_fraction(value: float | str) -> float:
    """Read a share given as a number in [0, 1] or as a percentage string such as ``'2.5%'``."""
    if isinstance(value, str):
        if not re.match(FRACTION_PATTERN, value.strip()):
            raise ValueError(f"invalid fraction {value!r}: use a number such as 0.02 or a percentage such as '2%'")
        return float(value.strip()[:-1]) / 100.0
    return float(value)


def _check_fraction(value: Any) -> float | str:
    if isinstance(value, bool) or not isinstance(value, int | float | str) or not _finite(value):
        raise ValueError(f"expected a fraction such as 0.02 or a percentage such as '2%', got {value!r}")
    number = parse_fraction(value)
    if not 0.0 <= number <= 1.0:
        raise ValueError(f"must be between 0 and 1 (0% and 100%), got {value!r}")
    return value


def _finite(value: float | str) -> bool:
    return isinstance(value, str) or math.isfinite(value)


def _check_quantity(value: Any) -> float | str:
    if isinstance(value, bool) or not isinstance(value, int | float | str) or not _finite(value):
        raise ValueError(f"expected a number, a percentage such as '2%' or a duration such as '250ms', got {value!r}")
    if isinstance(value, str) and (len(value) > 32 or not re.match(QUANTITY_PATTERN, value)):
        raise ValueError(f"expected a number, a percentage such as '2%' or a duration such as '250ms', got {value!r}")
    return value


Duration = Annotated[
    str,
    StringConstraints(pattern=DURATION_PATTERN, max_length=32),
    AfterValidator(_check_duration),
]
Regex = Annotated[str, StringConstraints(pattern=REGEX_TEXT, max_length=1024), AfterValidator(_check_regex)]
Fraction = Annotated[
    float | str,
    PlainValidator(_check_fraction),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "minimum": 0, "maximum": 1},
                {"type": "string", "pattern": FRACTION_PATTERN},
            ]
        }
    ),
]
#: An SLO bound or absolute margin: a duration for latency kinds, a fraction otherwise.
Quantity = Annotated[
    float | str,
    PlainValidator(_check_quantity),
    WithJsonSchema(
        {
            "anyOf": [{"type": "number"}, {"type": "string", "pattern": QUANTITY_PATTERN}],
            "description": "A duration such as '250ms' for latency kinds; a share (0.02 or '2%') otherwise.",
        }
    ),
]
Percent = Annotated[float, Field(ge=0, le=100)]


class Model(BaseModel):
    """Base for policy values: immutable, camelCase on the wire, unknown fields and loose types refused."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        frozen=True,
        extra="forbid",
        strict=True,  # no "8080" for a port, no `yes` for a count: what the CRD would refuse too
        allow_inf_nan=False,
        str_strip_whitespace=False,
    )
