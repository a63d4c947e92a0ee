"""The ModelRollout policy: a pure, typed model of the files platform teams keep in git.

Structure (types, ranges, unknown fields) is checked here by pydantic; rules that span fields or
depend on a metric's kind live in :mod:`controller.api.rules`, so every problem can be reported
with the exact field path. Field names are camelCase on the wire, snake_case in Python.
"""

from __future__ import annotations

import math
import re
import warnings
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    StringConstraints,
    WithJsonSchema,
    model_validator,
)
from pydantic.alias_generators import to_camel

from controller.api.units import DURATION_PATTERN, parse_duration

API_VERSION = "canarist.io/v1alpha1"
KIND = "ModelRollout"
GROUP, VERSION = API_VERSION.split("/")
PLURAL = "modelrollouts"

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


# --- metadata ---------------------------------------------------------------------------------


class ObjectMeta(Model):
    """The subset of Kubernetes ObjectMeta a policy file sets, plus what the API server adds."""

    name: DnsLabel
    namespace: DnsLabel = "default"
    labels: dict[LabelKey, LabelValue] = Field(default_factory=dict)
    annotations: dict[LabelKey, str] = Field(default_factory=dict)
    # Set by the API server on objects read from a cluster; never needed in a policy file.
    uid: str | None = None
    resource_version: str | None = None
    generation: int | None = None
    creation_timestamp: str | None = None
    deletion_timestamp: str | None = None
    finalizers: list[str] | None = None
    owner_references: list[dict[str, Any]] | None = None
    managed_fields: list[dict[str, Any]] | None = None


# --- service and versions ---------------------------------------------------------------------


class ServiceRef(Model):
    """The Kubernetes Service whose traffic is split, and where the VirtualService answers."""

    name: DnsLabel
    port: int = Field(ge=1, le=65535)
    host: Host | None = Field(default=None, description="Mesh host; defaults to <name>.<namespace>.svc.cluster.local.")
    hosts: list[Host] = Field(
        default_factory=list, description="Further hosts the VirtualService answers for (e.g. a public name)."
    )
    gateways: list[Gateway] = Field(
        default_factory=lambda: ["mesh"], description="Istio gateways; 'mesh' means all sidecars."
    )


class ModelVersion(Model):
    """One model version: its name (the DestinationRule subset) and the pod labels that select it."""

    name: DnsLabel
    labels: dict[LabelKey, LabelValue] = Field(default_factory=dict)


# --- routing ----------------------------------------------------------------------------------


class RoutingMode(StrEnum):
    SUBSET = "Subset"
    TRITON_VERSION = "TritonVersion"


class TritonRouting(Model):
    """Both versions are loaded in the same Triton pods; the route picks the model version."""

    model: Annotated[str, StringConstraints(pattern=TRITON_MODEL, max_length=128)]
    stable_version: int = Field(ge=1)
    canary_version: int = Field(ge=1)


class StringMatch(Model):
    """How a header value matches: exactly one of exact, prefix or regex (RE2 syntax)."""

    exact: SafeText | None = None
    prefix: SafeText | None = None
    regex: Regex | None = None


class CookieMatch(Model):
    name: CookieToken
    value: CookieToken


class CanaryMatch(Model):
    """A set of users sent to the canary whatever the step's weight (an A/B cohort)."""

    name: DnsLabel | None = None
    headers: dict[HeaderName, StringMatch] = Field(default_factory=dict)
    cookie: CookieMatch | None = None


class StickySession(Model):
    """Users who reached the canary keep it: its responses set a cookie that routes them back."""

    cookie_name: CookieToken = "canarist-canary"
    max_age: Duration = "24h"


class RetryPolicy(Model):
    attempts: int = Field(ge=0, le=100)
    per_try_timeout: Duration | None = None
    retry_on: Annotated[str, StringConstraints(pattern=r"^[a-z0-9-]+(,[a-z0-9-]+)*$", max_length=256)] | None = None


class Routing(Model):
    mode: RoutingMode = Field(default=RoutingMode.SUBSET, strict=False)
    triton: TritonRouting | None = None
    match: list[CanaryMatch] = Field(default_factory=list, description="A/B cohorts always routed to the canary.")
    sticky: StickySession | None = None
    timeout: Duration | None = None
    retries: RetryPolicy | None = None


# --- DestinationRule traffic policy (Istio's own field names) ---------------------------------


class LoadBalancerAlgorithm(StrEnum):
    ROUND_ROBIN = "ROUND_ROBIN"
    LEAST_REQUEST = "LEAST_REQUEST"
    RANDOM = "RANDOM"
    PASSTHROUGH = "PASSTHROUGH"


class LoadBalancer(Model):
    simple: LoadBalancerAlgorithm = Field(strict=False)


class TcpPool(Model):
    max_connections: int | None = Field(default=None, ge=1)
    connect_timeout: Duration | None = None


class HttpPool(Model):
    http1_max_pending_requests: int | None = Field(default=None, ge=1)
    http2_max_requests: int | None = Field(default=None, ge=1)
    max_requests_per_connection: int | None = Field(default=None, ge=0)
    max_retries: int | None = Field(default=None, ge=0)
    idle_timeout: Duration | None = None


class ConnectionPool(Model):
    tcp: TcpPool | None = None
    http: HttpPool | None = None


class OutlierDetection(Model):
    consecutive_5xx_errors: int | None = Field(default=None, ge=0, alias="consecutive5xxErrors")
    consecutive_gateway_errors: int | None = Field(default=None, ge=0)
    interval: Duration | None = None
    base_ejection_time: Duration | None = None
    max_ejection_percent: int | None = Field(default=None, ge=0, le=100)
    min_health_percent: int | None = Field(default=None, ge=0, le=100)


class TrafficPolicy(Model):
    load_balancer: LoadBalancer | None = None
    connection_pool: ConnectionPool | None = None
    outlier_detection: OutlierDetection | None = None


# --- the step schedule ------------------------------------------------------------------------


class OnTimeout(StrEnum):
    """What a rollout does when a step's deadline passes without a decision."""

    HOLD = "Hold"  # keep the current weights and keep analysing
    PAUSE = "Pause"  # keep the current weights and wait for a human
    ABORT = "Abort"  # roll back to the stable version


class MirrorPhase(Model):
    """A shadow phase before the first weighted step: copies of live requests go to the canary."""

    percentage: Percent = Field(gt=0)
    intervals: int = Field(default=1, ge=1, le=100)


class Strategy(Model):
    steps: list[Annotated[int, Field(ge=1, le=100)]] | None = None
    step_weight: int | None = Field(default=None, ge=1, le=100)
    max_weight: int | None = Field(default=None, ge=1, le=100)
    mirror: MirrorPhase | None = None
    interval: Duration = "1m"
    min_requests: int = Field(default=100, ge=1, description="Canary requests a step needs before it advances.")
    progress_deadline: Duration = "30m"
    hold_on_suspicion: Duration = Field(
        default="10m",
        description="How long a step keeps its weight while a metric leans towards a regression (0s: never).",
    )
    on_no_data: OnTimeout = Field(
        default=OnTimeout.PAUSE,
        strict=False,
        description="After the progress deadline without data: Hold, Pause or Abort.",
    )
    on_inconclusive: OnTimeout = Field(
        default=OnTimeout.PAUSE,
        strict=False,
        description="After the progress deadline without a conclusion: Hold, Pause or Abort.",
    )


# --- analysis ---------------------------------------------------------------------------------


class MetricKind(StrEnum):
    ISTIO_LATENCY = "IstioLatency"
    ISTIO_ERROR_RATE = "IstioErrorRate"
    TRITON_LATENCY = "TritonLatency"
    TRITON_QUEUE_LATENCY = "TritonQueueLatency"
    TRITON_ERROR_RATE = "TritonErrorRate"
    TRITON_GPU_UTILIZATION = "TritonGpuUtilization"
    TRITON_GPU_MEMORY = "TritonGpuMemory"
    DCGM_GPU_UTILIZATION = "DcgmGpuUtilization"
    DCGM_GPU_MEMORY = "DcgmGpuMemory"
    GPU_SECONDS_PER_INFERENCE = "GpuSecondsPerInference"
    CUSTOM_RATIO = "CustomRatio"


class Slo(Model):
    """An absolute bound, checked on the canary alone: a breach rolls back at once."""

    max: Quantity | None = None
    min: Quantity | None = None


class Margin(Model):
    """How much worse than stable the canary may be (non-inferiority margin): one of the two."""

    relative: Fraction | None = None
    absolute: Quantity | None = None


# A CustomRatio is scoped to the rollout's own series, so no other tenant's counters count: every
# query selects ``namespaceLabel`` (default ``namespace``, the label Prometheus' Kubernetes service
# discovery conventionally gives pod-scraped series) equal to the rollout's namespace, and
# ``matchLabels`` (required, at least one) pick this rollout's series within its namespace (e.g.
# ``model: ranker``). Neither the namespace nor the version label may be set through ``matchLabels``.
class RatioQuery(Model):
    """Two counters whose increments form a proportion per version (e.g. correct / labelled), in one namespace."""

    success: PromMetricName
    total: PromMetricName
    version_label: PromLabelName = "version"
    namespace_label: PromLabelName = Field(
        default="namespace",
        description="The Prometheus label holding the Kubernetes namespace; it must equal the rollout's.",
    )
    match_labels: dict[PromLabelName, LabelValue] = Field(
        min_length=1,
        max_length=20,
        description="Labels (at least one) that pick this rollout's series within its namespace, e.g. model: ranker.",
    )
    split_label: PromLabelName | None = Field(
        default=None,
        description=(
            "With A/B cohorts or sticky users: the label your application sets from the x-canarist-split request "
            "header, so only the randomised split's outcomes are compared."
        ),
    )

    @model_validator(mode="after")
    def _scoped(self) -> RatioQuery:
        if self.namespace_label == self.version_label:
            raise ValueError("namespaceLabel and versionLabel must be different labels")
        if self.split_label is not None and self.split_label in (
            self.namespace_label,
            self.version_label,
            *self.match_labels,
        ):
            raise ValueError(f"splitLabel {self.split_label!r} must be a label of its own")
        if self.namespace_label in self.match_labels:
            raise ValueError(
                f"matchLabels must not name {self.namespace_label!r}: the namespace label is set from the "
                "rollout's own namespace"
            )
        if self.version_label in self.match_labels:
            raise ValueError(f"matchLabels must not name {self.version_label!r}: it is the versionLabel")
        return self


class Metric(Model):
    name: DnsLabel
    kind: MetricKind = Field(strict=False)
    weight: float = Field(default=1.0, gt=0, le=1000, description="Share of the error budget alpha.")
    quantile: float | None = Field(default=None, gt=0, lt=1, description="Latency quantile (IstioLatency).")
    slo: Slo | None = None
    margin: Margin | None = None
    higher_is_better: bool | None = Field(default=None, description="CustomRatio only (default true).")
    ratio: RatioQuery | None = None


class Analysis(Model):
    alpha: float = Field(default=0.05, gt=0, le=0.5, description="False-rollback budget for the whole rollout.")
    metrics: list[Metric] = Field(min_length=1, max_length=50)


class RolloutSpec(Model):
    service: ServiceRef
    stable: ModelVersion
    canary: ModelVersion
    routing: Routing = Field(default_factory=Routing)
    traffic_policy: TrafficPolicy | None = None
    strategy: Strategy = Field(default_factory=Strategy)
    analysis: Analysis


class ModelRollout(Model):
    api_version: Literal["canarist.io/v1alpha1"]
    kind: Literal["ModelRollout"]
    metadata: ObjectMeta
    spec: RolloutSpec
    status: dict[str, Any] | None = None

    @property
    def key(self) -> str:
        """``namespace/name``: how the rollout is named in logs, events and the CLI."""
        return f"{self.metadata.namespace}/{self.metadata.name}"

    @property
    def host(self) -> str:
        """The mesh host of the service, defaulted from the Service's name and namespace."""
        service = self.spec.service
        return service.host or f"{service.name}.{self.metadata.namespace}.svc.cluster.local"
