"""The catalog: which series each metric kind reads, and what one rollout asks of them. Pure.

Every built-in kind is read from *base families*: one metric, reduced over an analysis window
(``increase`` for counters, ``avg_over_time`` for gauges) and aggregated by the labels that name a
rollout's version (plus ``pod``, ``le`` or ``response_code`` where the kind needs them). A
rollout's :class:`Ask` of a family is the identity values that pick its stable and canary series;
:mod:`controller.metrics.plan` unions them across rollouts into one query per family.

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
* CustomRatio: its ``namespaceLabel`` (default ``namespace``), always the rollout's own namespace,
  its ``matchLabels`` (required) and its ``versionLabel``; the version's value is its pod label of
  that name if it has one, else its name (Subset), or the Triton model version (TritonVersion). So
  a pod of another namespace reporting the same version name is never counted as this canary.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum

from controller.api.kinds import slo_max
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
    are unioned across rollouts. ``fixed`` matchers are the same for every rollout.
    """

    metric: str
    reduce: Reduce
    identity: tuple[str, ...]
    aggregate: str = "sum"
    pod: str | None = None
    split: str | None = None
    fixed: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        check_metric_name(self.metric)
        for label in (*self.identity, self.pod, self.split, *(k for k, _ in self.fixed)):
            if label is not None:
                check_label_name(label)
        if self.aggregate not in ("sum", "avg"):
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
        return f"{self.aggregate} by ({', '.join(self.group)}) ({inner})"

    def resets_promql(self, values: Sequence[Iterable[str]], window: float) -> str:
        inner = f"resets({self.metric}{selector(self.matchers(values))}[{promql_duration(window)}])"
        return f"sum by ({', '.join(self.reset_group)}) ({inner}) > 0"


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


ISTIO_IDENTITY = ("destination_service_namespace", "destination_service_name", "destination_version")
_ISTIO_FIXED = (("reporter", "destination"),)
ISTIO_REQUESTS = Family(
    "istio_requests_total", Reduce.INCREASE, ISTIO_IDENTITY, split="response_code", fixed=_ISTIO_FIXED
)
ISTIO_BUCKETS = Family(
    "istio_request_duration_milliseconds_bucket", Reduce.INCREASE, ISTIO_IDENTITY, split="le", fixed=_ISTIO_FIXED
)


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


def pod_families(labels: Labels, triton_mode: bool) -> dict[str, Family]:
    """Triton and DCGM families, per pod, keyed by a short name."""
    identity = (
        (labels.namespace, labels.triton_model, labels.triton_version)
        if triton_mode
        else (labels.namespace, labels.version)
    )

    def counter(metric: str) -> Family:
        return Family(metric, Reduce.INCREASE, identity, pod=labels.pod)

    def gauge(metric: str, aggregate: str = "sum") -> Family:
        return Family(metric, Reduce.AVG_OVER_TIME, identity, aggregate=aggregate, pod=labels.pod)

    return {
        "success": counter("nv_inference_request_success"),
        "failure": counter("nv_inference_request_failure"),
        "duration": counter("nv_inference_request_duration_us"),
        "queue": counter("nv_inference_queue_duration_us"),
        "inferences": counter("nv_inference_count"),
        "triton_util": gauge("nv_gpu_utilization", "avg"),
        "triton_used": gauge("nv_gpu_memory_used_bytes"),
        "triton_total": gauge("nv_gpu_memory_total_bytes"),
        "dcgm_util": gauge("DCGM_FI_DEV_GPU_UTIL", "avg"),
        "dcgm_util_sum": gauge("DCGM_FI_DEV_GPU_UTIL"),
        "dcgm_used": gauge("DCGM_FI_DEV_FB_USED"),
        "dcgm_free": gauge("DCGM_FI_DEV_FB_FREE"),
    }


#: The families each pod-scraped kind reads, by role (names from :func:`pod_families`).
POD_KINDS: dict[MetricKind, dict[Role, str]] = {
    MetricKind.TRITON_LATENCY: {Role.DURATION: "duration", Role.SUCCESS: "success"},
    MetricKind.TRITON_QUEUE_LATENCY: {Role.DURATION: "queue", Role.SUCCESS: "success"},
    MetricKind.TRITON_ERROR_RATE: {Role.SUCCESS: "success", Role.FAILURE: "failure"},
    MetricKind.TRITON_GPU_UTILIZATION: {Role.UTILIZATION: "triton_util"},
    MetricKind.TRITON_GPU_MEMORY: {Role.USED: "triton_used", Role.TOTAL: "triton_total"},
    MetricKind.DCGM_GPU_UTILIZATION: {Role.UTILIZATION: "dcgm_util"},
    MetricKind.DCGM_GPU_MEMORY: {Role.USED: "dcgm_used", Role.FREE: "dcgm_free"},
    MetricKind.GPU_SECONDS_PER_INFERENCE: {Role.UTILIZATION: "dcgm_util_sum", Role.INFERENCES: "inferences"},
}
PER_POD_GPU = frozenset(
    {
        MetricKind.TRITON_GPU_UTILIZATION,
        MetricKind.TRITON_GPU_MEMORY,
        MetricKind.DCGM_GPU_UTILIZATION,
        MetricKind.DCGM_GPU_MEMORY,
        MetricKind.GPU_SECONDS_PER_INFERENCE,
    }
)


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


def _ask(family: Family, stable: Sequence[str | None], canary: Sequence[str | None], what: str) -> Ask | str:
    if any(v is None for v in (*stable, *canary)):
        return what
    s, c = tuple(v for v in stable if v is not None), tuple(v for v in canary if v is not None)
    if s == c:
        label = family.identity[-1]
        return f"stable and canary have the same {label!r} value {s[-1]!r}: their series cannot be told apart"
    return Ask(family, s, c)


class RolloutAsks:
    """The identity values of one rollout, and the asks of each kind."""

    def __init__(self, rollout: ModelRollout, labels: Labels) -> None:
        self.rollout = rollout
        self.labels = labels
        spec = rollout.spec
        self.triton = spec.routing.triton if spec.routing.mode is RoutingMode.TRITON_VERSION else None
        self.pods = pod_families(labels, self.triton is not None)
        self.ns = rollout.metadata.namespace

    def istio(self, family: Family, *, randomised: bool = True) -> Ask | str:
        spec = self.rollout.spec
        if self.triton is not None:
            return "Istio cannot tell the versions apart with routing mode TritonVersion (both run in the same pods)"
        if randomised and split_tagged(self.rollout):  # cohort and sticky requests: compare the split's only
            family = replace(family, fixed=(*family.fixed, (SPLIT_TAG, SPLIT_VALUE)))
        return _ask(
            family,
            (self.ns, spec.service.name, istio_version(spec.stable)),
            (self.ns, spec.service.name, istio_version(spec.canary)),
            f"Istio reads a version from none of the pod labels of spec.stable/spec.canary: set one of "
            f"{', '.join(ISTIO_VERSION_LABELS)}",
        )

    def pod(self, name: str) -> Ask | str:
        family = self.pods[name]
        if self.triton is not None:
            t = self.triton
            return _ask(
                family, (self.ns, t.model, str(t.stable_version)), (self.ns, t.model, str(t.canary_version)), ""
            )
        spec = self.rollout.spec
        label = self.labels.version
        return _ask(
            family,
            (self.ns, pod_label_value(spec.stable, label)),
            (self.ns, pod_label_value(spec.canary, label)),
            f"no pod label of spec.stable/spec.canary maps to the Prometheus label {label!r} that names the version",
        )

    def requests(self) -> tuple[dict[Role, Ask], str]:
        if self.triton is not None:
            return self.kind_asks({Role.SUCCESS: "success", Role.FAILURE: "failure"})
        ask = self.istio(ISTIO_REQUESTS)
        return ({Role.REQUESTS: ask}, "") if isinstance(ask, Ask) else ({}, ask)

    def kind_asks(self, roles: Mapping[Role, str]) -> tuple[dict[Role, Ask], str]:
        asks: dict[Role, Ask] = {}
        for role, name in roles.items():
            ask = self.pod(name)
            if isinstance(ask, str):
                return {}, ask
            asks[role] = ask
        return asks, ""

    def metric(self, metric: Metric) -> MetricPlan:
        kind = metric.kind
        if kind in (MetricKind.ISTIO_LATENCY, MetricKind.ISTIO_ERROR_RATE):
            role, family = (
                (Role.BUCKETS, ISTIO_BUCKETS) if kind is MetricKind.ISTIO_LATENCY else (Role.REQUESTS, ISTIO_REQUESTS)
            )
            ask = self.istio(family)
            asks, why = ({role: ask}, "") if isinstance(ask, Ask) else ({}, ask)
            if asks and metric.slo is not None and split_tagged(self.rollout):  # the guard sees every request
                everything = self.istio(family, randomised=False)
                if isinstance(everything, Ask):
                    asks[Role.BUCKETS_ALL if role is Role.BUCKETS else Role.REQUESTS_ALL] = everything
            if kind is MetricKind.ISTIO_LATENCY and (bound := slo_max(metric)) is not None:
                return MetricPlan(metric.name, kind, asks, why, keep=(bound,))
        elif kind is MetricKind.CUSTOM_RATIO:
            asks, why = self.custom(metric)
        elif kind in PER_POD_GPU and self.triton is not None:
            asks, why = {}, f"{kind.value} is per pod, and with routing mode TritonVersion both versions share the pods"
        else:
            asks, why = self.kind_asks(POD_KINDS[kind])
        return MetricPlan(metric.name, kind, asks, why)

    def custom(self, metric: Metric) -> tuple[dict[Role, Ask], str]:
        ratio = metric.ratio
        if ratio is None:
            return {}, "CustomRatio needs ratio.success and ratio.total"
        if not ratio.match_labels:  # validation requires them; a policy built around it is not queried
            return {}, "CustomRatio needs ratio.matchLabels: labels that pick this rollout's own series"
        if {ratio.namespace_label, ratio.version_label} & set(ratio.match_labels):
            return {}, "ratio.matchLabels must not name the namespace or the version label"
        keys = tuple(sorted(ratio.match_labels))
        identity = (ratio.namespace_label, *keys, ratio.version_label)
        fixed = (self.ns, *(ratio.match_labels[k] for k in keys))
        stable, canary = (self.custom_version(ratio.version_label, side) for side in ("stable", "canary"))
        asks: dict[Role, Ask] = {}
        split = ((ratio.split_label, SPLIT_VALUE),) if ratio.split_label is not None else ()
        for role, name in ((Role.SUCCESS, ratio.success), (Role.TOTAL, ratio.total)):
            ask = _ask(Family(name, Reduce.INCREASE, identity, fixed=split), (*fixed, stable), (*fixed, canary), "")
            if isinstance(ask, str):
                return {}, ask
            asks[role] = ask
        return asks, ""

    def custom_version(self, label: str, side: str) -> str:
        if self.triton is not None:
            return str(self.triton.stable_version if side == "stable" else self.triton.canary_version)
        version: ModelVersion = getattr(self.rollout.spec, side)
        return pod_label_value(version, label) or version.name
