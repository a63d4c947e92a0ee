"""Where a rollout's traffic goes: the service, the two versions, the routes and Istio's traffic policy.

The parts of the ModelRollout spec that :mod:`controller.traffic` renders into a VirtualService and
a DestinationRule; their field types come from :mod:`controller.api.fields`.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import Field, StringConstraints

from controller.api.fields import (
    TRITON_MODEL,
    CookieToken,
    DnsLabel,
    Duration,
    Gateway,
    HeaderName,
    Host,
    LabelKey,
    LabelValue,
    Model,
    Regex,
    SafeText,
)
from controller.api.units import parse_duration

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

    @property
    def max_age_seconds(self) -> float:
        """``maxAge`` in seconds, as the cookie's Max-Age."""
        return parse_duration(self.max_age)


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
