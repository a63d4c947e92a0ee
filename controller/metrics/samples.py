"""Per-interval, per-version measurements: what a metrics source returns and the analysis reads.

Columnar, one entry per analysis interval, because the statistics consume arrays and stratify by
interval (the traffic split may differ between intervals). ``None`` marks an interval without
usable data for that series (a counter reset, a missed scrape, no traffic): the analysis skips it
and says so, it never reads it as zero. Values are in canonical units: seconds, counts, fractions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

Cumulative = tuple[float, ...]


def window_ends(interval: float, until: float, *, most: int, since: float | None = None) -> tuple[float, ...]:
    """The ends of the interval-long windows on the clock's grid (ends at multiples of ``interval``):
    the last ``most`` that end by ``until``, and with ``since`` only those ending after it. The one
    grid of every look: aligned ends let one range query serve every rollout and window."""
    last = math.floor(until / interval) * interval
    first = last - (most - 1) * interval
    if since is not None:
        first = max(first, math.floor(since / interval) * interval + interval)
    count = round((last - first) / interval) + 1 if first <= last else 0
    return tuple(last - (count - 1 - k) * interval for k in range(count))


@dataclass(frozen=True)
class Window:
    """One analysis interval ``(start, end]`` and the canary's realized share of traffic in it.

    ``steady``: the share did not change in this window or the one before. Counts come from
    scrapes, which lag the clock by up to a scrape interval, so a window around a step change
    mixes two splits in proportions the time-weighted share only approximates.
    """

    start: float
    end: float
    canary_share: float
    steady: bool = True

    def __post_init__(self) -> None:
        if not self.end > self.start:
            raise ValueError(f"interval end {self.end} is not after its start {self.start}")
        if not 0.0 <= self.canary_share <= 1.0:
            raise ValueError(f"canary share {self.canary_share} is not in 0..1")


@dataclass(frozen=True)
class CountSeries:
    """Events out of trials per interval and version: errors of requests, correct of labelled."""

    stable_events: tuple[int | None, ...]
    stable_trials: tuple[int | None, ...]
    canary_events: tuple[int | None, ...]
    canary_trials: tuple[int | None, ...]
    #: Every canary request, A/B cohorts and sticky users included (the SLO guard's), where the
    #: comparison's columns above hold the randomised split only; None: the same requests.
    canary_all_events: tuple[int | None, ...] | None = None
    canary_all_trials: tuple[int | None, ...] | None = None


@dataclass(frozen=True)
class HistogramSeries:
    """Cumulative bucket increments per interval and version, on edges in seconds (last = +Inf)."""

    edges: tuple[float, ...]
    stable: tuple[Cumulative | None, ...]
    canary: tuple[Cumulative | None, ...]
    #: Every canary request, cohorts included (the SLO guard's); None: the same as ``canary``.
    canary_all: tuple[Cumulative | None, ...] | None = None

    def __post_init__(self) -> None:
        if not self.edges or not math.isinf(self.edges[-1]):
            raise ValueError("histogram edges must end with +Inf")
        if any(b <= a for a, b in zip(self.edges, self.edges[1:], strict=False)):
            raise ValueError("histogram edges must increase")


@dataclass(frozen=True)
class GaugeSeries:
    """Per-pod means of a gauge per interval and version (GPU utilisation, memory, cost)."""

    stable: tuple[tuple[float, ...] | None, ...]
    canary: tuple[tuple[float, ...] | None, ...]


@dataclass(frozen=True)
class DistributionSeries:
    """Counts of the model's outputs per bucket (score range or class), per interval and version.

    ``buckets`` name the buckets (``(0.1, 0.2]``, or a class); ``positive_from``: the first bucket
    counted as a positive prediction, when the policy names one.
    """

    buckets: tuple[str, ...]
    stable: tuple[tuple[int, ...] | None, ...]
    canary: tuple[tuple[int, ...] | None, ...]
    positive_from: int | None = None

    def __post_init__(self) -> None:
        if len(self.buckets) < 2:
            raise ValueError("a distribution needs at least two buckets")
        if any(c is not None and len(c) != len(self.buckets) for c in (*self.stable, *self.canary)):
            raise ValueError("every window's counts need one count per bucket")


Series = CountSeries | HistogramSeries | GaugeSeries | DistributionSeries


@dataclass(frozen=True)
class MetricData:
    """One metric's data for the whole rollout so far, or the reason there is none."""

    name: str
    series: Series | None
    reason: str = ""  # why series is None, or what was dropped (e.g. "counter reset in 1 interval")


@dataclass(frozen=True)
class Observation:
    """Everything one look at the metrics source found for one rollout."""

    windows: tuple[Window, ...]
    stable_requests: tuple[int | None, ...]
    canary_requests: tuple[int | None, ...]
    metrics: tuple[MetricData, ...] = field(default_factory=tuple)

    def metric(self, name: str) -> MetricData | None:
        return next((m for m in self.metrics if m.name == name), None)
