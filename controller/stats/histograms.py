"""Helpers for cumulative (Prometheus ``le``) histograms: quantile estimates and bucket look-ups.

Bucket bounds are in whatever unit the metric uses (Istio: milliseconds); callers convert SLO
bounds to that unit. The last bound is always +Inf.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from controller.stats.validation import (
    FloatArray,
    IntArray,
    StatsInputError,
    check_cumulative,
    check_edges,
    check_number,
)

#: Relative slack when comparing a computed bound (e.g. 1.1 x 250) with a bucket bound.
_REL_TOL = 1e-9


@dataclass(frozen=True)
class QuantileEstimate:
    """``value`` as PromQL's histogram_quantile computes it, and the bucket bounds bracketing it.

    The true quantile of the observed sample lies in [lower, upper]; ``value`` is only the linear
    interpolation inside that bucket. NaN everywhere when there are no observations.
    """

    value: float
    lower: float
    upper: float


def histogram_quantile(q: float, edges: npt.ArrayLike, cumulative: npt.ArrayLike) -> QuantileEstimate:
    """Quantile of one cumulative histogram with Prometheus' bucketQuantile semantics.

    Linear interpolation inside the bucket holding rank q * count, with 0 as the lower bound of the
    first bucket when its bound is positive; a quantile in the +Inf bucket returns the largest
    finite bound (bracket [that bound, +Inf]). Unlike PromQL, q outside [0, 1] is refused.
    """
    q = check_number(q, name="q")
    if not 0.0 <= q <= 1.0:
        raise StatsInputError("q", "must be in [0, 1]")
    bounds = check_edges(edges)
    counts = check_cumulative(bounds, cumulative, name="cumulative", ndim=1)
    return bucket_quantile(q, bounds, counts)


def bucket_quantile(q: float, bounds: FloatArray, counts: IntArray) -> QuantileEstimate:
    """:func:`histogram_quantile` on already validated bounds and cumulative counts."""
    total = float(counts[-1])
    if total == 0:
        return QuantileEstimate(math.nan, math.nan, math.nan)
    rank = q * total
    last = bounds.size - 1
    hits = np.nonzero(counts[:last] >= rank)[0]
    b = int(hits[0]) if hits.size else last
    if b == last:
        return QuantileEstimate(float(bounds[last - 1]), float(bounds[last - 1]), math.inf)
    end = float(bounds[b])
    if b == 0 and end <= 0:
        return QuantileEstimate(end, -math.inf, end)
    start = 0.0 if b == 0 else float(bounds[b - 1])
    count = float(counts[b]) - (float(counts[b - 1]) if b > 0 else 0.0)
    if b > 0:
        rank -= float(counts[b - 1])
    value = start + (end - start) * (rank / count) if count > 0 else math.nan
    return QuantileEstimate(value, start, end)


def exceedances(cumulative: IntArray) -> IntArray:
    """Observations above each finite bound: total minus the cumulative count, along the last axis."""
    return cumulative[..., -1:] - cumulative[..., :-1]


def edges_at_or_above(bounds: FloatArray, values: FloatArray) -> IntArray:
    """For each value, the index of the smallest finite bucket bound >= it, or -1 if none."""
    finite = bounds[:-1]
    idx = np.searchsorted(finite, values - np.abs(values) * _REL_TOL, side="left")
    out: IntArray = np.where(idx < finite.size, idx, -1).astype(np.int64)
    return out


def edges_at_or_below(bounds: FloatArray, values: FloatArray) -> IntArray:
    """For each value, the index of the largest finite bucket bound <= it, or -1 if none."""
    finite = bounds[:-1]
    idx = np.searchsorted(finite, values + np.abs(values) * _REL_TOL, side="right") - 1
    out: IntArray = idx.astype(np.int64)
    return out


def edge_at_or_above(bounds: FloatArray, value: float) -> int | None:
    """Index of the smallest finite bucket bound >= value, or None."""
    k = int(edges_at_or_above(bounds, np.array([value]))[0])
    return k if k >= 0 else None


def edge_at_or_below(bounds: FloatArray, value: float) -> int | None:
    """Index of the largest finite bucket bound <= value, or None."""
    k = int(edges_at_or_below(bounds, np.array([value]))[0])
    return k if k >= 0 else None
