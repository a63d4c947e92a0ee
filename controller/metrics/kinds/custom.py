"""CustomRatio: two counters of the application's own whose increments form a proportion. Pure.

``ratio.success`` out of ``ratio.total`` per version (accuracy on labelled outcomes, click-through),
read only from the rollout's own series: its ``namespaceLabel`` is always the rollout's namespace,
its ``matchLabels`` (required) pick the rollout's series within it, and its ``versionLabel`` names
the version: the version's pod label of that name if it has one, else its name (Subset), or the
Triton model version (TritonVersion). So a pod of another namespace reporting the same version name
is never counted as this canary. With ``ratio.splitLabel`` only the randomised split's increments
are read.
"""

from __future__ import annotations

from controller.api.metrics_spec import Metric, MetricKind
from controller.api.names import SPLIT_VALUE
from controller.api.routing import ModelVersion
from controller.metrics.catalog import (
    Ask,
    Family,
    MetricPlan,
    Reduce,
    Role,
    RolloutAsks,
    ask_for,
    pod_label_value,
)
from controller.metrics.read import Builder, Counts, KindReading, total
from controller.metrics.samples import Window


def _plan(asks: RolloutAsks, metric: Metric) -> MetricPlan:
    found, why = _asks(asks, metric)
    return MetricPlan(metric.name, metric.kind, found, why)


def _asks(asks: RolloutAsks, metric: Metric) -> tuple[dict[Role, Ask], str]:
    ratio = metric.ratio
    if ratio is None:
        return {}, "CustomRatio needs ratio.success and ratio.total"
    if not ratio.match_labels:  # validation requires them; a policy built around it is not queried
        return {}, "CustomRatio needs ratio.matchLabels: labels that pick this rollout's own series"
    if {ratio.namespace_label, ratio.version_label} & set(ratio.match_labels):
        return {}, "ratio.matchLabels must not name the namespace or the version label"
    keys = tuple(sorted(ratio.match_labels))
    identity = (ratio.namespace_label, *keys, ratio.version_label)
    fixed = (asks.ns, *(ratio.match_labels[k] for k in keys))
    stable, canary = (version_value(asks, ratio.version_label, side) for side in ("stable", "canary"))
    found: dict[Role, Ask] = {}
    split = ((ratio.split_label, SPLIT_VALUE),) if ratio.split_label is not None else ()
    for role, name in ((Role.SUCCESS, ratio.success), (Role.TOTAL, ratio.total)):
        ask = ask_for(Family(name, Reduce.INCREASE, identity, fixed=split), (*fixed, stable), (*fixed, canary), "")
        if isinstance(ask, str):
            return {}, ask
        found[role] = ask
    return found, ""


def version_value(asks: RolloutAsks, label: str, side: str) -> str:
    """The ``versionLabel`` value of one side: its pod label, else its name, or its Triton model version."""
    if asks.triton is not None:
        return str(asks.triton.stable_version if side == "stable" else asks.triton.canary_version)
    version: ModelVersion = getattr(asks.rollout.spec, side)
    return pod_label_value(version, label) or version.name


def _success_total(builder: Builder, plan: MetricPlan, window: Window, side: str, role: Role) -> tuple[int, int] | str:
    """(success, total) increments; success may be absent (none), never larger than total."""
    total_metric = plan.asks[Role.TOTAL].family.metric
    trials = total(builder.cell(plan, Role.TOTAL, window, side), total_metric)
    if isinstance(trials, str):
        return trials
    success_metric = plan.asks[Role.SUCCESS].family.metric
    success = total(builder.cell(plan, Role.SUCCESS, window, side), success_metric, absent_is_zero=True)
    if isinstance(success, str):
        return success
    if success > trials:
        return f"{success_metric} grew more than {total_metric}"
    return success, trials


READINGS: dict[MetricKind, KindReading] = {MetricKind.CUSTOM_RATIO: Counts(_plan, _success_total)}
