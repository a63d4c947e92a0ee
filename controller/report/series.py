"""The plots' data: plot-ready series read from a rollout's stored status, pure.

The functions here read the typed status (:class:`controller.api.status.RolloutStatus`: any field
may be missing in an older status, and an unreadable one is None) and the validated policy, and
return plain frozen values with times in minutes since the rollout began and numbers in the units
shown; tests drive them with statuses read from plain values.
:mod:`controller.report.drawing` lays those values out; :mod:`controller.report.page` also reads
the status through the helpers here (times, numbers, timed log entries, the estimate's scale).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from controller.api.kinds import (
    TRAITS,
    Shape,
    Unit,
    absolute_margin,
    lower_is_better,
    quantile,
    relative_margin,
    slo_max,
)
from controller.api.metrics_spec import Metric
from controller.api.model import ModelRollout
from controller.api.status import MetricStatus, Phase, RolloutStatus, StoredTransition
from controller.engine.record import E_VALUE_CAP
from controller.judge.machine import Status, routes_for

LATENCY_PANELS = 6
NAN = math.nan


@dataclass(frozen=True)
class Mark:
    """A decision on the time axis, and the canary weight right after it."""

    minutes: float
    action: str
    weight: float | None


@dataclass(frozen=True)
class WeightSeries:
    """The canary weight in force: a step function from each point on, drawn up to ``end``."""

    minutes: tuple[float, ...]
    weights: tuple[float, ...]
    end: float
    marks: tuple[Mark, ...]
    source: str  # "weights" (the status's log) or "history" (replayed from the decisions)


@dataclass(frozen=True)
class EvidencePath:
    """One metric's e-values at each look (NaN where a look did not record one)."""

    metric: str
    minutes: tuple[float, ...]
    regression: tuple[float, ...]
    noninferiority: tuple[float, ...]
    threshold: float | None


@dataclass(frozen=True)
class EstimatePath:
    """One metric's effect at each look, in display units (``label``), with its interval if any."""

    metric: str
    label: str
    unit: str
    minutes: tuple[float, ...]
    values: tuple[float, ...]
    lows: tuple[float, ...]  # NaN where there is no interval
    highs: tuple[float, ...]
    margin: float | None  # the non-inferiority margin in the same units, where it is known
    points: bool  # draw points (a relative change without an interval) rather than a line and band


@dataclass(frozen=True)
class Cdf:
    """Both versions' latency distributions at one decision: the share of requests at or below each edge."""

    metric: str
    minutes: float
    step: int | None
    action: str
    edges_ms: tuple[float, ...]
    stable: tuple[float, ...] | None  # None: no request of this version yet
    canary: tuple[float, ...] | None
    n_stable: int
    n_canary: int
    slo_ms: float | None
    quantile: float | None


@dataclass(frozen=True)
class OutputShares:
    """Both versions' output distributions (a prediction distribution metric) at one decision."""

    metric: str
    minutes: float
    step: int | None
    action: str
    buckets: tuple[str, ...]
    stable: tuple[float, ...] | None  # each bucket's share; None: no output of this version yet
    canary: tuple[float, ...] | None
    n_stable: int
    n_canary: int


def number(value: object) -> float | None:
    """A finite number, or None (booleans, strings and NaN are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


class Timed(Protocol):
    """A log entry of the status: the time it was recorded, None when unreadable."""

    @property
    def at(self) -> float | None: ...


E = TypeVar("E", bound=Timed)


def timed(log: Sequence[E]) -> list[tuple[float, E]]:
    """The entries of a log with a readable time, with it, in time order (stable for ties)."""
    found = [(e.at, i, e) for i, e in enumerate(log) if e.at is not None]
    return [(t, e) for t, _, e in sorted(found, key=lambda x: (x[0], x[1]))]


def times(status: RolloutStatus) -> list[float]:
    """Every time the status records, in order."""
    logs: tuple[Sequence[Timed], ...] = (status.history, status.weights, status.looks.entries(), status.distributions)
    found = [t for log in logs for t, _ in timed(log)]
    found += [t for t in (status.step_started_at, status.last_analysis_at) if t is not None]
    return sorted(found)


def origin(status: RolloutStatus) -> float | None:
    """Time zero of the plots: the first thing the status records (normally the Start decision)."""
    found = times(status)
    return found[0] if found else None


def _entry_weight(rollout: ModelRollout | None, entry: StoredTransition) -> float | None:
    """The weight a history entry put in force: as it recorded it, else replayed from its phase and step."""
    if entry.canary_weight is not None:  # recorded since canarist keeps it
        return float(entry.canary_weight)
    return weight_after(rollout, entry.to_phase, entry.to_step)


def weight_after(rollout: ModelRollout | None, target: Phase, step: int) -> float | None:
    """The canary weight a decision's target phase and step put in force (None if unknown)."""
    if target in (Phase.ROLLING_BACK, Phase.FAILED):
        return 0.0
    if target in (Phase.PROMOTING, Phase.SUCCEEDED):
        return 100.0
    if rollout is None:
        return None
    try:
        return float(routes_for(rollout, Status(phase=target, step=step)).canary_weight)
    except ValueError:
        return None


def weight_series(status: RolloutStatus, rollout: ModelRollout | None, t0: float) -> WeightSeries | None:
    """The weight over time from ``weights``, else replayed from ``history``; decisions as marks."""
    points = [(t, float(e.canary_weight)) for t, e in timed(status.weights) if e.canary_weight is not None]
    source = "weights"
    history = timed(status.history)
    if not points:
        source = "history"
        points = [(t, w) for t, e in history if (w := _entry_weight(rollout, e)) is not None]
    if not points:
        return None
    marks = []
    for t, e in history:
        before = [w for at, w in points if at <= t]
        marks.append(Mark((t - t0) / 60, e.action.value, before[-1] if before else None))
    return WeightSeries(
        minutes=tuple((t - t0) / 60 for t, _ in points),
        weights=tuple(w for _, w in points),
        end=(max(times(status)[-1], points[-1][0]) - t0) / 60,
        marks=tuple(marks),
        source=source,
    )


def looks(status: RolloutStatus) -> list[tuple[float, list[MetricStatus]]]:
    """(time, named metrics) of every look: the look log, else the latest ``metrics`` alone."""
    found = [(t, [m for m in e.metrics if m.name is not None]) for t, e in timed(status.looks.entries())]
    last = status.last_analysis_at
    if not found and last is not None:
        found.append((last, [m for m in status.metrics if m.name is not None]))
    return found


def metric_names(status: RolloutStatus, rollout: ModelRollout | None) -> list[str]:
    """The policy's metrics in its order, then any other the status recorded (e.g. traffic-split)."""
    names = [m.name for m in rollout.spec.analysis.metrics] if rollout is not None else []
    for _, metrics in looks(status):
        names += [m.name for m in metrics if m.name is not None and m.name not in names]
    return names


def evidence_paths(status: RolloutStatus, rollout: ModelRollout | None, t0: float) -> tuple[EvidencePath, ...]:
    """Each metric's e-value paths and the threshold it is held to (the latest real one)."""
    out = []
    for name in metric_names(status, rollout):
        rows = [(t, m) for t, metrics in looks(status) for m in metrics if m.name == name]
        regression = tuple(_positive(m.e_value) for _, m in rows)
        noninferiority = tuple(_positive(m.e_value_non_inferiority) for _, m in rows)
        if not any(math.isfinite(v) for v in regression + noninferiority):
            continue
        thresholds = [x for _, m in rows if (x := number(m.threshold)) is not None and 0 < x < E_VALUE_CAP]
        minutes = tuple((t - t0) / 60 for t, _ in rows)
        out.append(EvidencePath(name, minutes, regression, noninferiority, thresholds[-1] if thresholds else None))
    return tuple(out)


@dataclass(frozen=True)
class Scale:
    """How a metric's estimate is shown: multiplied by ``factor``, in ``unit``, against ``margin``."""

    factor: float
    unit: str
    label: str
    margin: float | None  # in display units, signed: the harmful side of zero
    points: bool


def estimate_scale(metric: Metric | None) -> Scale:
    """Display units and margin of a metric's estimate, following what the analysis computes."""
    if metric is None:
        return Scale(1.0, "", "estimate", None, False)
    relative, absolute = relative_margin(metric), absolute_margin(metric)
    harm = 1.0 if lower_is_better(metric) else -1.0
    if TRAITS[metric.kind].has_quantile:  # latency quantiles: canary / stable - 1
        shown = 100 * relative if relative is not None else None
        return Scale(100.0, "%", "relative change of the quantile (%)", shown, True)
    if TRAITS[metric.kind].shape is Shape.COUNTS and relative is not None and harm > 0:  # error rate ratio - 1
        return Scale(100.0, "%", "relative change of the rate (%)", 100 * relative, True)
    if TRAITS[metric.kind].shape is Shape.DISTRIBUTION:  # the distance between the outputs, not a difference
        shown = 100 * absolute if absolute is not None else None
        return Scale(100.0, "%", "outputs answered differently (% of requests)", shown, False)
    seconds = TRAITS[metric.kind].unit is Unit.SECONDS
    factor, unit = (1000.0, "ms") if seconds else (100.0, "pp")
    shown = harm * factor * absolute if absolute is not None else None
    return Scale(factor, unit, f"canary - stable ({unit})", shown, False)


def estimate_paths(status: RolloutStatus, rollout: ModelRollout | None, t0: float) -> tuple[EstimatePath, ...]:
    """Each metric's estimate (with interval) at each look that has one, in display units."""
    out = []
    for name in metric_names(status, rollout):
        scale = estimate_scale(metric_of(rollout, name))
        rows = []
        for t, metrics in looks(status):
            for m in metrics:
                value = number(m.estimate)
                if m.name == name and value is not None:
                    lo, hi = interval_of(m.interval)
                    rows.append(((t - t0) / 60, value * scale.factor, lo * scale.factor, hi * scale.factor))
        if rows:
            minutes, values, lows, highs = (tuple(column) for column in zip(*rows, strict=True))
            out.append(
                EstimatePath(name, scale.label, scale.unit, minutes, values, lows, highs, scale.margin, scale.points)
            )
    return tuple(out)


def latency_cdfs(
    status: RolloutStatus, rollout: ModelRollout | None, t0: float, limit: int = LATENCY_PANELS
) -> tuple[Cdf, ...]:
    """The latest ``limit`` well-formed bucket records as CDFs (share of requests at or below each edge)."""
    out = []
    for t, e in timed(status.distributions):
        if e.edges is None or e.stable is None or e.canary is None:
            continue
        bounds = [b for x in e.edges if (b := number(x)) is not None]
        if not bounds or len(bounds) < len(e.edges) or not len(e.stable) == len(e.canary) == len(bounds) + 1:
            continue
        stable, canary = [float(x) for x in e.stable], [float(x) for x in e.canary]
        metric = metric_of(rollout, e.metric)
        slo = slo_max(metric) if metric is not None else None
        seconds = metric is not None and TRAITS[metric.kind].unit is Unit.SECONDS
        out.append(
            Cdf(
                metric=e.metric if e.metric is not None else "latency",
                minutes=(t - t0) / 60,
                step=e.step,
                action=e.action.value if e.action is not None else "?",
                edges_ms=tuple(1000 * b for b in bounds),
                stable=_shares(stable),
                canary=_shares(canary),
                n_stable=int(stable[-1]),
                n_canary=int(canary[-1]),
                slo_ms=1000 * slo if slo is not None and seconds else None,
                quantile=quantile(metric) if metric is not None else None,
            )
        )
    return tuple(out[-limit:]) if limit > 0 else ()


def output_shares(status: RolloutStatus, t0: float, limit: int = LATENCY_PANELS) -> tuple[OutputShares, ...]:
    """The latest ``limit`` well-formed prediction-distribution records: each version's share per bucket."""
    out = []
    for t, e in timed(status.distributions):
        if e.buckets is None or e.stable is None or e.canary is None:
            continue
        if not len(e.buckets) == len(e.stable) == len(e.canary) or len(e.buckets) < 2:
            continue
        stable, canary = sum(e.stable), sum(e.canary)
        out.append(
            OutputShares(
                metric=e.metric if e.metric is not None else "predictions",
                minutes=(t - t0) / 60,
                step=e.step,
                action=e.action.value if e.action is not None else "?",
                buckets=tuple(e.buckets),
                stable=tuple(x / stable for x in e.stable) if stable > 0 else None,
                canary=tuple(x / canary for x in e.canary) if canary > 0 else None,
                n_stable=stable,
                n_canary=canary,
            )
        )
    return tuple(out[-limit:]) if limit > 0 else ()


def _shares(cumulative: list[float]) -> tuple[float, ...] | None:
    total = cumulative[-1]
    return tuple(c / total for c in cumulative[:-1]) if total > 0 else None


def _positive(value: float | None) -> float:
    x = number(value)
    return x if x is not None and x > 0 else NAN


def interval_of(value: Sequence[float | None] | None) -> tuple[float, float]:
    if value is not None and len(value) == 2:
        lo, hi = number(value[0]), number(value[1])
        if lo is not None and hi is not None:
            return lo, hi
    return NAN, NAN


def metric_of(rollout: ModelRollout | None, name: str | None) -> Metric | None:
    if rollout is None or name is None:
        return None
    return next((m for m in rollout.spec.analysis.metrics if m.name == name), None)
