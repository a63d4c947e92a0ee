"""The catalog's machinery: families, the labels that name a version, and what one rollout asks. Pure.

Every built-in kind is read from *base families*: one metric, reduced over an analysis window
(``increase`` for counters, ``avg_over_time`` for gauges) and aggregated by the labels that name a
rollout's version (plus ``pod``, ``le`` or ``response_code`` where the kind needs them). A
rollout's :class:`Ask` of a family is the identity values that pick its stable and canary series;
:mod:`controller.metrics.plan` unions them across rollouts into one query per family. Which
families each kind reads, and how it plans its asks, is the kind's own module in
:mod:`controller.metrics.kinds`.

Which labels name a version:

* Istio (``reporter="destination"``): ``destination_service_namespace``, ``destination_service_name``
  and ``destination_version``, the pod label Istio reads (``service.istio.io/canonical-revision``,
  else ``app.kubernetes.io/version``, else ``version``).
* Triton and DCGM series are scraped from the pods, with the pod's labels added by the scrape
  (kubernetes_sd ``labelmap`` of ``__meta_kubernetes_pod_label_(.+)``): :class:`Labels` names the
  namespace, pod and version labels (defaults ``namespace``, ``pod``, ``version``); a version's
  value is its pod label whose name, sanitised as Prometheus does (``model-version`` ->
  ``model_version``), is that label. With routing mode TritonVersion both versions share the pods
  and Triton's own ``model`` / ``version`` labels (the model version number) tell them apart.
* CustomRatio: its own labels, always scoped to the rollout's namespace
  (:mod:`controller.metrics.kinds.custom`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum

from controller.api.metrics_spec import Metric, MetricKind
from controller.api.model import ModelRollout
from controller.api.names import SPLIT_TAG, SPLIT_VALUE
from controller.api.routing import ModelVersion, RoutingMode
from controller.api.schedule import split_tagged
from controller.metrics.selectors import (
    CatalogError,
    Matcher,
    Op,
    any_of,
    check_label_name,
    check_metric_name,
    promql_duration,
    selector,
)

ISTIO_VERSION_LABELS = ("service.istio.io/canonical-revision", "app.kubernetes.io/version", "version")


# --- families ---------------------------------------------------------------------------------


class Reduce(StrEnum):
    INCREASE = "increase"
    AVG_OVER_TIME = "avg_over_time"


@dataclass(frozen=True)
class Family:
    """One metric reduced over a window and aggregated by ``identity`` (+ ``pod``, + ``split``).

    ``identity`` labels name a rollout's version (the last one is the version label); their values
    are unioned across rollouts. ``fixed`` matchers are the same for every rollout. ``once_per``
    counts each value of that label once (the max over the series that repeat it, e.g. a GPU's
    total memory on each of its containers' series) before the aggregation.
    """

    metric: str
    reduce: Reduce
    identity: tuple[str, ...]
    aggregate: str = "sum"
    pod: str | None = None
    split: str | None = None
    fixed: tuple[tuple[str, str], ...] = ()
    once_per: str | None = None

    def __post_init__(self) -> None:
        check_metric_name(self.metric)
        for label in (*self.identity, self.pod, self.split, self.once_per, *(k for k, _ in self.fixed)):
            if label is not None:
                check_label_name(label)
        if self.aggregate not in ("sum", "avg", "count"):
            raise CatalogError(f"unknown aggregation {self.aggregate!r}")

    @property
    def is_counter(self) -> bool:
        return self.reduce is Reduce.INCREASE

    @property
    def reset_group(self) -> tuple[str, ...]:
        """The labels a reset is reported by: the version, and the pod when the family is per pod."""
        return (*self.identity, self.pod) if self.pod else self.identity

    @property
    def group(self) -> tuple[str, ...]:
        return (*self.reset_group, self.split) if self.split else self.reset_group

    def matchers(self, values: Sequence[Iterable[str]]) -> list[Matcher]:
        """Fixed matchers, then one union matcher per identity label (``values`` aligned with it)."""
        fixed = [Matcher(k, Op.EQ, v) for k, v in self.fixed]
        return fixed + [any_of(label, vs) for label, vs in zip(self.identity, values, strict=True)]

    def promql(self, values: Sequence[Iterable[str]], window: float) -> str:
        inner = f"{self.reduce.value}({self.metric}{selector(self.matchers(values))}[{promql_duration(window)}])"
        if self.once_per is not None:
            inner = f"max by ({', '.join((*self.group, self.once_per))}) ({inner})"
        return f"{self.aggregate} by ({', '.join(self.group)}) ({inner})"

    def gap_promql(self, values: Sequence[Iterable[str]], window: float, lookback: float) -> str:
        """Per :attr:`reset_group`, a row only where the counter has a sample in the ``lookback`` seconds
        before the window's start and in those before its end. A store whose ``increase()`` counts from
        the last sample before the window however old (VictoriaMetrics) would otherwise count a scrape
        gap's events in the first window after it, and report 0 for the windows inside it."""
        series = f"{self.metric}{selector(self.matchers(values))}[{promql_duration(lookback)}]"
        group = ", ".join(self.reset_group)
        start = f"sum by ({group}) (count_over_time({series} offset {promql_duration(window)}))"
        return f"{start} and sum by ({group}) (count_over_time({series}))"

    def resets_promql(self, values: Sequence[Iterable[str]], window: float) -> str:
        """The resets in each window per :attr:`reset_group`, zeros included: a missing row is an
        unanswered question (no data), never "no reset"."""
        inner = f"resets({self.metric}{selector(self.matchers(values))}[{promql_duration(window)}])"
        return f"sum by ({', '.join(self.reset_group)}) ({inner})"


@dataclass(frozen=True)
class Labels:
    """Label names of pod-scraped series (Triton, DCGM), as the scrape configuration writes them."""

    namespace: str = "namespace"
    pod: str = "pod"
    version: str = "version"
    triton_model: str = "model"
    triton_version: str = "version"

    def __post_init__(self) -> None:
        for name in (self.namespace, self.pod, self.version, self.triton_model, self.triton_version):
            check_label_name(name)


class Role(StrEnum):
    """What a family contributes to a metric."""

    REQUESTS = "requests"
    BUCKETS = "buckets"
    REQUESTS_ALL = "requests-all"  # every request, A/B cohorts included: what an SLO guard reads
    BUCKETS_ALL = "buckets-all"
    SUCCESS = "success"
    FAILURE = "failure"
    TOTAL = "total"
    DURATION = "duration"
    INFERENCES = "inferences"
    UTILIZATION = "utilization"
    USED = "used"
    FREE = "free"
    GPUS = "gpus"  # how many GPUs a pod's series name
    GPU_SECONDS = "gpu-seconds"
    DEVICES = "devices"  # which GPU each pod's device-wide series is read from: the attribution check


@dataclass(frozen=True)
class PodSeries:
    """A metric scraped from the model's pods (Triton, DCGM), before the scrape's labels make it a family."""

    metric: str
    reduce: Reduce
    aggregate: str = "sum"
    split: str | None = None  # also grouped by (the GPU's uuid label, for the attribution check)

    def __post_init__(self) -> None:
        check_metric_name(self.metric)

    def family(self, labels: Labels, triton_mode: bool) -> Family:
        """The family, per pod, whose identity is Triton's model and version or the pods' version label."""
        identity = (
            (labels.namespace, labels.triton_model, labels.triton_version)
            if triton_mode
            else (labels.namespace, labels.version)
        )
        return Family(self.metric, self.reduce, identity, aggregate=self.aggregate, pod=labels.pod, split=self.split)


# --- what one rollout asks --------------------------------------------------------------------


@dataclass(frozen=True)
class Ask:
    """One family read for one rollout: the identity values that pick each version's series."""

    family: Family
    stable: tuple[str, ...]
    canary: tuple[str, ...]


@dataclass(frozen=True)
class MetricPlan:
    """How one policy metric is measured: its asks by role, or why it cannot be."""

    name: str
    kind: MetricKind
    asks: Mapping[Role, Ask] = field(default_factory=dict)
    unsupported: str = ""
    keep: tuple[float, ...] = ()  # values (canonical unit) whose bucket bounds survive coarsening: the SLO's
    positive_classes: tuple[str, ...] = ()  # a class counter's positive predictions (PredictionDistribution)


def istio_version(version: ModelVersion) -> str | None:
    """The ``destination_version`` Istio reports for this version's pods, if its labels give one."""
    return next((version.labels[k] for k in ISTIO_VERSION_LABELS if k in version.labels), None)


def sanitize_label(key: str) -> str:
    """A Kubernetes label key as Prometheus' ``labelmap`` writes it (``model-version`` -> ``model_version``)."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", key)


def pod_label_value(version: ModelVersion, prom_label: str) -> str | None:
    """The value of the version's pod label that the scrape turns into ``prom_label``."""
    if prom_label in version.labels:
        return version.labels[prom_label]
    return next((v for k, v in sorted(version.labels.items()) if sanitize_label(k) == prom_label), None)


def ask_for(family: Family, stable: Sequence[str | None], canary: Sequence[str | None], what: str) -> Ask | str:
    """The ask of ``family`` for these identity values, or why there is none (``what``: a value is missing)."""
    if any(v is None for v in (*stable, *canary)):
        return what
    if any(v == "" for v in (*stable, *canary)):  # a valid Kubernetes label value, but it selects nothing
        empty = [label for values in (stable, canary) for label, v in zip(family.identity, values, strict=False)]
        named = next(label for label, v in zip(empty, (*stable, *canary), strict=False) if v == "")
        return f"an empty {named!r} value cannot name a version's series"
    s, c = tuple(v for v in stable if v is not None), tuple(v for v in canary if v is not None)
    if s == c:
        label = family.identity[-1]
        return f"stable and canary have the same {label!r} value {s[-1]!r}: their series cannot be told apart"
    return Ask(family, s, c)


class RolloutAsks:
    """The identity values of one rollout, and the generic asks the kinds plan theirs with."""

    def __init__(self, rollout: ModelRollout, labels: Labels) -> None:
        self.rollout = rollout
        self.labels = labels
        spec = rollout.spec
        self.triton = spec.routing.triton if spec.routing.mode is RoutingMode.TRITON_VERSION else None
        self.ns = rollout.metadata.namespace

    def istio(self, family: Family, *, randomised: bool = True) -> Ask | str:
        spec = self.rollout.spec
        if self.triton is not None:
            return "Istio cannot tell the versions apart with routing mode TritonVersion (both run in the same pods)"
        if randomised and split_tagged(self.rollout):  # cohort and sticky requests: compare the split's only
            family = replace(family, fixed=(*family.fixed, (SPLIT_TAG, SPLIT_VALUE)))
        return ask_for(
            family,
            (self.ns, spec.service.name, istio_version(spec.stable)),
            (self.ns, spec.service.name, istio_version(spec.canary)),
            f"Istio reads a version from none of the pod labels of spec.stable/spec.canary: set one of "
            f"{', '.join(ISTIO_VERSION_LABELS)}",
        )

    def pod(self, series: PodSeries) -> Ask | str:
        family = series.family(self.labels, self.triton is not None)
        if self.triton is not None:
            t = self.triton
            return ask_for(
                family, (self.ns, t.model, str(t.stable_version)), (self.ns, t.model, str(t.canary_version)), ""
            )
        spec = self.rollout.spec
        label = self.labels.version
        return ask_for(
            family,
            (self.ns, pod_label_value(spec.stable, label)),
            (self.ns, pod_label_value(spec.canary, label)),
            f"no pod label of spec.stable/spec.canary maps to the Prometheus label {label!r} that names the version",
        )

    def agent(self, family: Family) -> Ask | str:
        """An ask of canarist gpu-agent's series: the pods' namespace, and their version as Istio reads it."""
        if self.triton is not None:
            return (
                "the GPU agent's series name a pod but no model, and with routing mode TritonVersion both "
                "versions share the pods"
            )
        spec = self.rollout.spec
        return ask_for(
            family,
            (self.ns, istio_version(spec.stable)),
            (self.ns, istio_version(spec.canary)),
            f"the GPU agent reads a version from none of the pod labels of spec.stable/spec.canary: set one of "
            f"{', '.join(ISTIO_VERSION_LABELS)}",
        )

    def kind_asks(self, roles: Mapping[Role, PodSeries]) -> tuple[dict[Role, Ask], str]:
        return all_asks({role: self.pod(series) for role, series in roles.items()})


def all_asks(made: Mapping[Role, Ask | str]) -> tuple[dict[Role, Ask], str]:
    """Every role's ask, or none and the first role's reason why there is none."""
    why = next((a for a in made.values() if isinstance(a, str)), None)
    return ({}, why) if why is not None else ({r: a for r, a in made.items() if isinstance(a, Ask)}, "")


#: How a kind plans one policy metric for one rollout.
Planner = Callable[[RolloutAsks, Metric], MetricPlan]


def pod_kind(roles: Mapping[Role, PodSeries], *, per_pod: bool = False) -> Planner:
    """The planner of a pod-scraped kind that reads ``roles``.

    ``per_pod`` kinds read series that name a pod but no model (the GPU's), so with routing mode
    TritonVersion, where both versions share the pods, they cannot tell the versions apart.
    """

    def planned(asks: RolloutAsks, metric: Metric) -> MetricPlan:
        if per_pod and asks.triton is not None:
            why = f"{metric.kind.value} is per pod, and with routing mode TritonVersion both versions share the pods"
            return MetricPlan(metric.name, metric.kind, {}, why)
        found, why = asks.kind_asks(roles)
        return MetricPlan(metric.name, metric.kind, found, why)

    return planned
