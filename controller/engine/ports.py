"""What a reconcile needs from the world, as small Protocols: a Cluster (Kubernetes) and a MetricsSource.

The concrete edge (:mod:`controller.edges.kube`, the official ``kubernetes`` client) implements it; tests
run that edge against a local fake of the API server. Values crossing the boundary are plain
dicts (Kubernetes objects as the API returns them) and the small types below.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from controller.api.gate import GoldenRequest
from controller.api.model import ModelRollout
from controller.judge.gate import TritonObservation, TritonTarget
from controller.metrics.samples import Observation, Window


class ConflictError(Exception):
    """The object changed since it was read (HTTP 409): read it again and retry."""

    retryable = True


class NotFoundError(Exception):
    """The object does not exist (HTTP 404)."""

    retryable = False


class ClusterUnavailableError(Exception):
    """The API server could not be reached or answered 5xx: retry after ``retry_after`` seconds."""

    retryable = True

    def __init__(self, reason: str, *, retry_after: float = 5.0) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


@dataclass(frozen=True)
class EdgeFailure:
    """A call to the world that one reconcile could not complete: which edge, why, and whether the
    same call may succeed later. The reconcile's outcome carries it, so counting and backing off act
    on the type, not on words in a reason."""

    edge: str  # "kubernetes" or "prometheus"
    reason: str
    retryable: bool


@dataclass(frozen=True)
class WatchEvent:
    """One change of a ModelRollout: ADDED, MODIFIED or DELETED, with the object as it is now."""

    type: str
    object: Mapping[str, Any]


@dataclass(frozen=True)
class ApplyResult:
    """What :meth:`Cluster.apply_routes` did: the writes it made, in order, as (kind, name, verb)."""

    writes: tuple[tuple[str, str, str], ...] = field(default_factory=tuple)

    @property
    def changed(self) -> bool:
        return bool(self.writes)


@dataclass(frozen=True)
class Conflict:
    """A host the rollout wants that another VirtualService (any namespace) already routes.

    ``host`` is the rollout's, ``other_host`` the existing object's (they overlap: the same name, a
    short name and its FQDN, or a wildcard over it); ``managed_by`` is the rollout that manages the
    existing object (``namespace/name``), None when it is a user's own."""

    host: str
    kind: str
    namespace: str
    name: str
    other_host: str
    managed_by: str | None = None

    def __str__(self) -> str:
        by = f" (managed by rollout {self.managed_by})" if self.managed_by else ""
        return f"host {self.host} is already routed by {self.kind} {self.namespace}/{self.name} ({self.other_host}){by}"


class RouteConflictError(ClusterUnavailableError):
    """:meth:`Cluster.apply_routes` refused to write: the hosts are routed by others (``conflicts``).

    Nothing was written. Retrying helps only once the other object is gone, hence the long delay."""

    def __init__(self, conflicts: Sequence[Conflict], *, retry_after: float = 60.0) -> None:
        self.conflicts = tuple(conflicts)
        super().__init__("; ".join(str(c) for c in self.conflicts) or "routes refused", retry_after=retry_after)


class Cluster(Protocol):
    """The Kubernetes API as the controller uses it."""

    def list_rollouts(self, namespace: str | None) -> tuple[list[dict[str, Any]], str]:
        """Every ModelRollout (in ``namespace``, or all) and the list's resourceVersion."""
        ...

    def watch_rollouts(
        self, namespace: str | None, resource_version: str, timeout_seconds: int
    ) -> Iterator[WatchEvent]:
        """Changes since ``resource_version``; ends after ``timeout_seconds``."""
        ...

    def get_rollout(self, namespace: str, name: str) -> dict[str, Any]:
        """One ModelRollout; raises NotFoundError."""
        ...

    def create_or_update_rollout(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Create the ModelRollout or replace its spec and metadata labels/annotations (GitOps mode)."""
        ...

    def patch_rollout_status(
        self, namespace: str, name: str, status: Mapping[str, Any], resource_version: str
    ) -> dict[str, Any]:
        """Write the status subresource if the object is still at ``resource_version``; else ConflictError."""
        ...

    def annotate_rollout(
        self,
        namespace: str,
        name: str,
        annotations: Mapping[str, str | None],
        *,
        resource_version: str = "",
        field_manager: str | None = None,
    ) -> dict[str, Any]:
        """Merge-patch metadata.annotations (None removes a key), as ``field_manager`` (the API server
        records it in managedFields); only if still at ``resource_version`` when given, else ConflictError."""
        ...

    def set_finalizer(self, namespace: str, name: str, *, present: bool, resource_version: str) -> dict[str, Any]:
        """Add or remove :data:`FINALIZER` if the rollout is still at ``resource_version``; else ConflictError."""
        ...

    def apply_routes(self, owner: Mapping[str, Any], objects: Sequence[Mapping[str, Any]]) -> ApplyResult:
        """Apply DestinationRules and VirtualServices in the given order, writing only what changed.

        Objects canarist created carry an owner reference to ``owner``; an object the user already
        had for the same host is adopted: only canarist's subsets and routes are added, the rest is
        kept, and the original spec is saved in :data:`ORIGINAL_ANNOTATION` for :meth:`release_routes`.
        Conflicts (409) are retried with a fresh read. A host another VirtualService routes (see
        :meth:`route_conflicts`) raises :class:`RouteConflictError` before anything is written.
        """
        ...

    def route_conflicts(self, owner: Mapping[str, Any], objects: Sequence[Mapping[str, Any]]) -> list[Conflict]:
        """Read-only: the hosts of ``objects``' VirtualServices that another VirtualService routes.

        Every namespace the controller can see is searched; objects created or adopted by ``owner``,
        and the user's VirtualService in the owner's namespace that :meth:`apply_routes` would adopt,
        are not conflicts. Call it before recording a decision: a refused rollout holds."""
        ...

    def release_routes(self, owner: Mapping[str, Any]) -> ApplyResult:
        """Undo :meth:`apply_routes`: restore adopted objects exactly, delete the ones canarist created."""
        ...

    def emit_event(self, owner: Mapping[str, Any], *, reason: str, message: str, warning: bool = False) -> None:
        """Record a Kubernetes Event on the rollout (best effort: never raises)."""
        ...

    def pods_ready(self, namespace: str, labels: Mapping[str, str]) -> tuple[int, int]:
        """(ready, total) pods matching ``labels``: the gate before traffic moves to a version."""
        ...


class MetricsSource(Protocol):
    """Where observations come from (Prometheus in production): one look for many rollouts."""

    def observe(
        self, rollouts: Sequence[ModelRollout], windows: Mapping[str, Sequence[Window]], at: float
    ) -> tuple[dict[str, Observation], EdgeFailure | None]:
        """Observations per rollout key, and the failure if the look failed (then: no data, saying why)."""
        ...


class GateProbe(Protocol):
    """Observes what a pre-traffic gate needs (:mod:`controller.edges.triton`); the rules judge it."""

    def observe(self, target: TritonTarget, golden: Sequence[GoldenRequest]) -> TritonObservation:
        """What the Tritons say; a Triton that does not answer is ``unreachable``, never an exception."""
        ...
