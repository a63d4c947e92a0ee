"""The PromQL catalog: which series each metric kind reads, and the queries one look needs. Pure.

Every built-in kind is read from *base families*: one metric, reduced over an analysis window
(``increase`` for counters, ``avg_over_time`` for gauges) and aggregated by the labels that name a
rollout's version (plus ``pod``, ``le`` or ``response_code`` where the kind needs them). The
values that pick each rollout's versions are unioned into one selector per family, so one look
asks Prometheus one query per (family, window length), however many rollouts there are; the
results are split back per rollout by exact label equality (:mod:`controller.metrics.read`), so a wide
regex can never leak one rollout's series into another's. Every counter family is paired with a
``resets()`` query: a window in which a counter restarted is *no data*, never a wrong count.

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

Label names and metric names are checked, label values escaped for PromQL (and for RE2 in ``=~``
unions); nothing a policy says can break out of a selector.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum

from controller.api.kinds import parse_value
from controller.api.metrics_spec import Metric, MetricKind
from controller.api.model import ModelRollout
from controller.api.routing import ModelVersion, RoutingMode
from controller.api.schedule import SPLIT_TAG, SPLIT_VALUE, split_tagged
from controller.metrics.samples import Window

METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
ISTIO_VERSION_LABELS = ("service.istio.io/canonical-revision", "app.kubernetes.io/version", "version")
REQUESTS_KEY = "(requests)"
_RE2_SPECIAL = frozenset("\\.+*?()|[]{}^$")


class CatalogError(ValueError):
    """A name or value that cannot be put into PromQL safely: a configuration error, never retried."""


# --- escaping ---------------------------------------------------------------------------------


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


@dataclass(frozen=True)
class Target:
    """One rollout's part of a look: its windows, the request count asks and its metrics."""

    key: str
    windows: tuple[Window, ...]
    requests: Mapping[Role, Ask]
    requests_unsupported: str
    metrics: tuple[MetricPlan, ...]
    future: frozenset[int]  # indices of windows that end after the look's time


@dataclass(frozen=True)
class Query:
    """One PromQL text to evaluate at each of ``times`` (window ends, seconds)."""

    promql: str
    times: tuple[float, ...]


@dataclass(frozen=True)
class Plan:
    """Every query a look runs, and how to find each rollout's rows in the answers."""

    targets: tuple[Target, ...]
    queries: tuple[Query, ...]
    texts: Mapping[tuple[Family, int, bool], str]  # (family, window ms, resets?) -> PromQL

    def text(self, family: Family, window_ms: int, resets: bool = False) -> str | None:
        return self.texts.get((family, window_ms, resets))


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


class _Rollout:
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
            if kind is MetricKind.ISTIO_LATENCY and metric.slo is not None and metric.slo.max is not None:
                return MetricPlan(metric.name, kind, asks, why, keep=(parse_value(kind, metric.slo.max),))
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


def plan(
    rollouts: Sequence[ModelRollout],
    windows_by_rollout: Mapping[str, Sequence[Window]],
    at: float,
    labels: Labels | None = None,
) -> Plan:
    """Every query one look needs for all ``rollouts`` together, deduplicated and grouped.

    One PromQL text per (family, window length) with the identity values of every rollout unioned,
    evaluated at the union of the window ends; one ``resets()`` text beside each counter's. Windows
    ending after ``at`` are not asked for (their data is incomplete).
    """
    labels = labels or Labels()
    targets: list[Target] = []
    values: dict[tuple[Family, int], list[set[str]]] = {}
    times: dict[tuple[Family, int], set[int]] = {}
    at_ms = to_millis(at)
    for rollout in rollouts:
        windows = tuple(windows_by_rollout.get(rollout.key, ()))
        r = _Rollout(rollout, labels)
        requests, requests_why = r.requests()
        metrics = tuple(r.metric(m) for m in rollout.spec.analysis.metrics)
        future = frozenset(i for i, w in enumerate(windows) if to_millis(w.end) > at_ms)
        targets.append(Target(rollout.key, windows, requests, requests_why, metrics, future))
        asks = [*requests.values(), *(a for m in metrics for a in m.asks.values())]
        for i, window in enumerate(windows):
            if i in future:
                continue
            length = to_millis(window.end) - to_millis(window.start)
            for ask in asks:
                key = (ask.family, length)
                slots = values.setdefault(key, [set() for _ in ask.family.identity])
                for slot, s, c in zip(slots, ask.stable, ask.canary, strict=True):
                    slot.update((s, c))
                times.setdefault(key, set()).add(to_millis(window.end))
    texts: dict[tuple[Family, int, bool], str] = {}
    queries: list[Query] = []
    for (family, length), slots in sorted(values.items(), key=lambda kv: (kv[0][0].metric, repr(kv[0]))):
        ends = tuple(t / 1000 for t in sorted(times[(family, length)]))
        texts[(family, length, False)] = family.promql(slots, length / 1000)
        queries.append(Query(texts[(family, length, False)], ends))
        if family.is_counter:
            texts[(family, length, True)] = family.resets_promql(slots, length / 1000)
            queries.append(Query(texts[(family, length, True)], ends))
    return Plan(tuple(targets), _merge(queries), texts)


def _merge(queries: Sequence[Query]) -> tuple[Query, ...]:
    """One query per PromQL text (families shared by several kinds), with the union of their times."""
    merged: dict[str, set[float]] = {}
    for q in queries:
        merged.setdefault(q.promql, set()).update(q.times)
    return tuple(Query(text, tuple(sorted(ts))) for text, ts in merged.items())


def metric_queries(rollout: ModelRollout, window: float, labels: Labels | None = None) -> dict[str, tuple[str, ...]]:
    """The PromQL each metric of ``rollout`` reads over one ``window`` (seconds), for docs and reports.

    Keyed by metric name, with the request counts under :data:`REQUESTS_KEY` (not a valid metric
    name, so it cannot collide); counters come with their ``resets()`` query.
    """
    the_plan = plan([rollout], {rollout.key: [Window(0.0, window, 0.0)]}, window, labels)
    (target,) = the_plan.targets
    length = to_millis(window)
    named = [(REQUESTS_KEY, target.requests), *((m.name, m.asks) for m in target.metrics)]
    out: dict[str, tuple[str, ...]] = {}
    for name, asks in named:
        texts = [the_plan.text(a.family, length, resets) for a in asks.values() for resets in (False, True)]
        out[name] = tuple(dict.fromkeys(t for t in texts if t is not None))
    return out
