"""PredictionDistribution: the model's outputs per version, as the application exports them. Pure.

``outputs.histogram`` names a Prometheus histogram of the model's scores (its ``<name>_bucket``
series, increased per ``le`` over each window) and ``outputs.counter`` a counter of its predicted
classes (increased per ``classLabel``). Either is read like a CustomRatio: only the rollout's own
series, its ``namespaceLabel`` always the rollout's namespace and its ``matchLabels`` (required)
picking them within it, the version from ``versionLabel`` (the version's pod label of that name,
else its name, or its Triton model version). With ``outputs.splitLabel`` only the randomised split's
outputs are read.

A window's outputs are the counts per bucket: the score ranges between the bounds both versions'
histograms share (at most :data:`~controller.metrics.bounds.MAX_HISTOGRAM_EDGES`, ``positiveAbove``
always kept), or every class either version predicted (a class a version did not predict in a
window counts 0 there). A doubtful window (a counter reset, NaN, buckets that are not cumulative,
no ``+Inf`` bucket) is no data for that version, as for every counter.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import pairwise
from typing import ClassVar

from controller.api.kinds import Shape
from controller.api.metrics_spec import Metric, MetricKind, OutputsQuery
from controller.api.names import SPLIT_VALUE
from controller.metrics.bounds import coarsen
from controller.metrics.catalog import Family, MetricPlan, Reduce, Role, RolloutAsks, ask_for
from controller.metrics.kinds.custom import version_value
from controller.metrics.read import Builder, Built, KindReading, Valued, total
from controller.metrics.samples import DistributionSeries, Window

HISTOGRAM, CLASSES = "le", "class"


def family(outputs: OutputsQuery) -> Family:
    """The one family a PredictionDistribution reads: its buckets (``le``) or classes, per version."""
    keys = tuple(sorted(outputs.match_labels))
    identity = (outputs.namespace_label, *keys, outputs.version_label)
    randomised = ((outputs.split_label, SPLIT_VALUE),) if outputs.split_label is not None else ()
    if outputs.histogram is not None:
        return Family(f"{outputs.histogram}_bucket", Reduce.INCREASE, identity, split="le", fixed=randomised)
    assert outputs.counter is not None  # validation: exactly one of the two
    return Family(outputs.counter, Reduce.INCREASE, identity, split=outputs.class_label, fixed=randomised)


def _plan(asks: RolloutAsks, metric: Metric) -> MetricPlan:
    outputs = metric.outputs
    if outputs is None:
        return MetricPlan(metric.name, metric.kind, {}, "PredictionDistribution needs outputs")
    fixed = (asks.ns, *(outputs.match_labels[k] for k in sorted(outputs.match_labels)))
    stable, canary = (version_value(asks, outputs.version_label, side) for side in ("stable", "canary"))
    ask = ask_for(family(outputs), (*fixed, stable), (*fixed, canary), "")
    if isinstance(ask, str):
        return MetricPlan(metric.name, metric.kind, {}, ask)
    keep = (outputs.positive_above,) if outputs.positive_above is not None else ()
    positives = tuple(outputs.positive_classes or ())
    return MetricPlan(metric.name, metric.kind, {Role.BUCKETS: ask}, keep=keep, positive_classes=positives)


def _window_counts(builder: Builder, plan: MetricPlan, window: Window, side: str) -> Valued[dict[str, float]]:
    """One version's increase per ``le`` (cumulative) or per class in one window, or why there is none."""
    ask = plan.asks[Role.BUCKETS]
    cell = builder.cell(plan, Role.BUCKETS, window, side)
    count = total(cell, ask.family.metric)
    if isinstance(count, str) or isinstance(cell, str):
        return str(count)
    label = ask.family.split or ""
    out: dict[str, float] = {}
    for labels, value in cell.rows:
        out[labels.get(label, "")] = out.get(labels.get(label, ""), 0.0) + value
    return out, ()


def _cumulative(raw: Mapping[str, float], metric: str) -> dict[float, int] | str:
    """A histogram window's cumulative counts by bound, checked as Prometheus' histograms promise."""
    out: dict[float, int] = {}
    for le, value in raw.items():
        try:
            out[float(le)] = out.get(float(le), 0) + round(value)  # '1' and '1.0' are one bound
        except ValueError:
            return f"{metric} has a bucket without a numeric le label"
    bounds = sorted(out)
    if not bounds or not math.isinf(bounds[-1]):
        return f"{metric} has no +Inf bucket"
    if any(out[b] < out[a] for a, b in pairwise(bounds)):
        return f"{metric} buckets are not cumulative"
    return out


@dataclass(frozen=True)
class Outputs:
    """The model's outputs read as counts per bucket per window: a :class:`DistributionSeries`."""

    shape: ClassVar[Shape] = Shape.DISTRIBUTION

    def plan(self, asks: RolloutAsks, metric: Metric) -> MetricPlan:
        return _plan(asks, metric)

    def build(self, builder: Builder, plan: MetricPlan) -> Built:
        metric = plan.asks[Role.BUCKETS].family.metric
        histogram = plan.asks[Role.BUCKETS].family.split == HISTOGRAM

        def fn(window: Window, side: str) -> Valued[dict[str, float]]:
            got = _window_counts(builder, plan, window, side)
            if isinstance(got, str) or not histogram:
                return got
            cumulative = _cumulative(got[0], metric)
            if isinstance(cumulative, str):
                return cumulative
            return {repr(k): float(v) for k, v in cumulative.items()}, ()

        stable, canary, reasons = builder.collect(fn, plan.name)
        present = [c for c in (*stable, *canary) if c is not None]
        if not present:
            return None, reasons or ["no windows"]
        if histogram:
            return _histogram(plan, stable, canary, present, reasons)
        return _classes(plan, stable, canary, present, reasons)


def _histogram(
    plan: MetricPlan,
    stable: list[dict[str, float] | None],
    canary: list[dict[str, float] | None],
    present: list[dict[str, float]],
    reasons: list[str],
) -> Built:
    """Counts between the bounds every window of both versions has (coarsened to the cap, the positive bound kept)."""
    shared = sorted(set.intersection(*(set(map(float, c)) for c in present)))
    if len(shared) < 2 or not math.isinf(shared[-1]):
        return None, [*reasons, "the versions' histograms share no bucket bounds ending with +Inf"]
    edges = coarsen(shared, plan.keep)
    positive = plan.keep[0] if plan.keep else None
    positive_from = edges.index(positive) + 1 if positive is not None and positive in edges[:-1] else None
    if positive is not None and positive_from is None:
        reasons = [*reasons, f"positiveAbove {positive:g} is not a bucket bound both versions' histograms share"]
    names = tuple(f"<= {b:g}" if i == 0 else f"({edges[i - 1]:g}, {b:g}]" for i, b in enumerate(edges))

    def counts(column: list[dict[str, float] | None]) -> tuple[tuple[int, ...] | None, ...]:
        out: list[tuple[int, ...] | None] = []
        for window in column:
            if window is None:
                out.append(None)
                continue
            cumulative = [round(window[repr(e)]) for e in edges]
            out.append(tuple(b - a for a, b in zip([0, *cumulative[:-1]], cumulative, strict=True)))
        return tuple(out)

    return DistributionSeries(names, counts(stable), counts(canary), positive_from), reasons


def _classes(
    plan: MetricPlan,
    stable: list[dict[str, float] | None],
    canary: list[dict[str, float] | None],
    present: list[dict[str, float]],
    reasons: list[str],
) -> Built:
    """Counts per class either version predicted; the positive classes (if named) last."""
    seen = sorted(set().union(*present))
    if len(seen) < 2:
        return None, [*reasons, "fewer than two classes predicted: no distribution to compare"]
    positives = set(plan.positive_classes)
    names = tuple([c for c in seen if c not in positives] + [c for c in seen if c in positives])
    positive_from = names.index(next(c for c in names if c in positives)) if positives & set(names) else None
    if positive_from == 0:
        positive_from = None  # every class predicted is positive: no rate to compare

    def counts(column: list[dict[str, float] | None]) -> tuple[tuple[int, ...] | None, ...]:
        return tuple(None if w is None else tuple(round(w.get(c, 0.0)) for c in names) for w in column)

    return DistributionSeries(names, counts(stable), counts(canary), positive_from), reasons


READINGS: dict[MetricKind, KindReading] = {MetricKind.PREDICTION_DISTRIBUTION: Outputs()}
