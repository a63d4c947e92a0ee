"""Input checks for the statistics layer, kept apart from the tests themselves (as scipy.stats does).

Every check raises :class:`StatsInputError` with the offending field and a reason. The analysis layer
maps it to *no data* (hold, say why): a counter reset, a NaN from Prometheus or a changed bucket
layout is never evidence for or against the canary.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]

#: Counts above this lose integer precision in float64.
MAX_COUNT = 2**53


class StatsInputError(ValueError):
    """Data the statistics cannot use; ``field`` names the input and ``reason`` says what is wrong."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def _as_float_array(values: object, *, name: str) -> FloatArray:
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise StatsInputError(name, "not a numeric array (ragged or non-numeric)") from exc
    return arr


def as_counts(values: object, *, name: str, ndim: int = 1) -> IntArray:
    """Per-interval counts as an int64 array of ``ndim`` dimensions: finite, integral, >= 0, non-empty.

    A negative increment means a counter reset that the query did not absorb; it is refused so that
    the caller reports *no data* rather than a bogus difference.
    """
    arr = _as_float_array(values, name=name)
    if arr.ndim != ndim:
        raise StatsInputError(name, f"expected a {ndim}-dimensional array, got shape {arr.shape}")
    if arr.size == 0:
        raise StatsInputError(name, "no intervals")
    if not np.isfinite(arr).all():
        raise StatsInputError(name, "NaN or infinite value")
    if arr.min() < 0:
        raise StatsInputError(name, "negative increment (counter reset?)")
    if (arr != np.round(arr)).any():
        raise StatsInputError(name, "not an integer count (round Prometheus increase() first)")
    if arr.max() > MAX_COUNT:
        raise StatsInputError(name, "count too large")
    return arr.astype(np.int64)


def check_same_shape(first: npt.NDArray[np.generic], second: npt.NDArray[np.generic], *, name: str) -> None:
    """Two per-interval arrays must describe the same intervals (and bucket layout)."""
    if first.shape != second.shape:
        raise StatsInputError(name, f"shape {second.shape} does not match {first.shape}")


def check_successes(successes: IntArray, trials: IntArray, *, name: str) -> None:
    """Successes (errors, correct answers) cannot exceed the trials they are counted among."""
    check_same_shape(trials, successes, name=name)
    if (successes > trials).any():
        raise StatsInputError(name, "more successes than trials in an interval")


def check_number(value: object, *, name: str) -> float:
    """A finite real number (bools refused: they are almost always a mistake here)."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise StatsInputError(name, f"expected a number, got {type(value).__name__}")
    out = float(value)
    if not math.isfinite(out):
        raise StatsInputError(name, "NaN or infinite value")
    return out


def check_alpha(alpha: object) -> float:
    """A significance level in (0, 1)."""
    value = check_number(alpha, name="alpha")
    if not 0.0 < value < 1.0:
        raise StatsInputError("alpha", "must be in (0, 1)")
    return value


def check_open_unit(value: object, *, name: str) -> float:
    """A probability strictly between 0 and 1 (a quantile level, a null share)."""
    out = check_number(value, name=name)
    if not 0.0 < out < 1.0:
        raise StatsInputError(name, "must be in (0, 1)")
    return out


def check_nonnegative(value: object, *, name: str) -> float:
    out = check_number(value, name=name)
    if out < 0.0:
        raise StatsInputError(name, "must be >= 0")
    return out


def check_positive(value: object, *, name: str) -> float:
    out = check_number(value, name=name)
    if out <= 0.0:
        raise StatsInputError(name, "must be > 0")
    return out


def check_split(split: object, *, name: str, intervals: int, arms: int) -> FloatArray:
    """Traffic shares per interval, shape (intervals, arms): each > 0 and each row summing to 1.

    Integer Istio weights (e.g. ``[95, 5]``) are accepted and normalised per row.
    """
    arr = _as_float_array(split, name=name)
    if arr.shape != (intervals, arms):
        raise StatsInputError(name, f"expected shape {(intervals, arms)}, got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise StatsInputError(name, "NaN or infinite value")
    if np.any(arr <= 0):
        raise StatsInputError(name, "every arm needs a share > 0 (leave out intervals where one is 0)")
    out: FloatArray = arr / arr.sum(axis=1, keepdims=True)
    return out


def check_edges(edges: object, *, name: str = "edges") -> FloatArray:
    """Histogram ``le`` upper bounds: strictly increasing, at least one finite, ending with +Inf."""
    arr = _as_float_array(edges, name=name)
    if arr.ndim != 1 or arr.size < 2:
        raise StatsInputError(name, "need at least one finite bucket bound and +Inf")
    if np.any(np.isnan(arr)) or not np.all(np.isfinite(arr[:-1])):
        raise StatsInputError(name, "bounds must be finite except the last")
    if arr[-1] != math.inf:
        raise StatsInputError(name, "the last bucket bound must be +Inf")
    if np.any(np.diff(arr) <= 0):
        raise StatsInputError(name, "bucket bounds must be strictly increasing")
    return arr


def check_cumulative(edges: FloatArray, counts: object, *, name: str, ndim: int = 2) -> IntArray:
    """Cumulative bucket increments, shape (intervals, buckets) or (buckets,), matching ``edges``.

    Counts must be non-decreasing along the buckets (a cumulative histogram); a different number of
    buckets means the layout changed between versions or intervals, which is refused.
    """
    arr = as_counts(counts, name=name, ndim=ndim)
    if arr.shape[-1] != edges.size:
        raise StatsInputError(name, f"{arr.shape[-1]} buckets do not match the {edges.size} bucket bounds")
    if (np.diff(arr, axis=-1) < 0).any():
        raise StatsInputError(name, "cumulative bucket counts decrease along le")
    return arr


def check_same_edges(first: object, second: object, *, name: str) -> FloatArray:
    """Two versions' bucket layouts must be identical to be compared edge by edge."""
    a = check_edges(first, name=name)
    b = check_edges(second, name=name)
    if a.shape != b.shape or not np.array_equal(a, b):
        raise StatsInputError(name, "bucket layouts differ between versions")
    return a


def check_value_groups(
    values: Sequence[Sequence[float]] | Sequence[FloatArray] | FloatArray, *, name: str, lower: float, upper: float
) -> list[FloatArray]:
    """Ragged per-interval groups (one value per pod), each finite and within [lower, upper]."""
    if isinstance(values, np.ndarray):
        values = list(values)
    if isinstance(values, str | bytes) or not isinstance(values, Sequence):
        raise StatsInputError(name, "expected a sequence of per-interval groups")
    if len(values) == 0:
        raise StatsInputError(name, "no intervals")
    groups: list[FloatArray] = []
    for group in values:
        arr = _as_float_array(group, name=name)
        if arr.ndim != 1:
            raise StatsInputError(name, "each interval must be a flat list of per-pod values")
        groups.append(arr)
    flat = np.concatenate(groups)
    if not np.all(np.isfinite(flat)):
        raise StatsInputError(name, "NaN or infinite value")
    if flat.size and (flat.min() < lower or flat.max() > upper):
        raise StatsInputError(name, f"value outside [{lower}, {upper}]")
    return groups


def two_arm_counts(
    canary_events: object,
    canary_trials: object,
    stable_events: object,
    stable_trials: object,
    *,
    events: str = "successes",
) -> tuple[IntArray, IntArray, IntArray, IntArray]:
    """Per-interval events of trials for both versions: counts, events <= trials, as many intervals."""
    ct = as_counts(canary_trials, name="canary_trials")
    ce = as_counts(canary_events, name=f"canary_{events}")
    check_successes(ce, ct, name=f"canary_{events}")
    st = as_counts(stable_trials, name="stable_trials")
    se = as_counts(stable_events, name=f"stable_{events}")
    check_successes(se, st, name=f"stable_{events}")
    if st.shape != ct.shape:
        raise StatsInputError("stable_trials", f"{st.size} intervals but the canary has {ct.size}")
    return ce, ct, se, st
