"""The ModelRollout policy: a pure, typed model of the files platform teams keep in git.

Structure (types, ranges, unknown fields) is checked by pydantic; rules that span fields or depend
on a metric's kind live in :mod:`controller.api.rules`, so every problem can be reported with the
exact field path. Field names are camelCase on the wire, snake_case in Python. This module holds the
resource itself (identity, metadata, step schedule, spec); its parts live beside it: the field types
in :mod:`controller.api.fields`, service and routing in :mod:`controller.api.routing`, the analysis
in :mod:`controller.api.metrics_spec`.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import Field

from controller.api.fields import DnsLabel, Duration, LabelKey, LabelValue, Model, Percent
from controller.api.gate import Gate
from controller.api.metrics_spec import Analysis
from controller.api.notify import Notify
from controller.api.routing import ModelVersion, Routing, ServiceRef, TrafficPolicy
from controller.api.units import parse_duration

API_VERSION = "canarist.io/v1alpha1"
KIND = "ModelRollout"
GROUP, VERSION = API_VERSION.split("/")
PLURAL = "modelrollouts"


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

    @property
    def interval_seconds(self) -> float:
        """``interval`` in seconds: the length of one analysis window."""
        return parse_duration(self.interval)

    @property
    def progress_deadline_seconds(self) -> float:
        return parse_duration(self.progress_deadline)

    @property
    def hold_on_suspicion_seconds(self) -> float:
        return parse_duration(self.hold_on_suspicion)


# --- the resource -----------------------------------------------------------------------------


class RolloutSpec(Model):
    service: ServiceRef
    stable: ModelVersion
    canary: ModelVersion
    routing: Routing = Field(default_factory=Routing)
    traffic_policy: TrafficPolicy | None = None
    strategy: Strategy = Field(default_factory=Strategy)
    gate: Gate | None = Field(default=None, description="What must hold before the canary gets its first request.")
    analysis: Analysis
    notify: Notify | None = Field(default=None, description="Where this rollout's decisions are announced.")


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
