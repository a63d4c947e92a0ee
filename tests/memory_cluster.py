"""An in-memory implementation of canarist's own ``Cluster`` protocol, for fast reconcile tests.

Not a mock of the Kubernetes client (the edge is tested against the HTTP fake of the API server):
it keeps objects with resourceVersions and answers the protocol's calls with the same rules, so
thousands of reconciles run in a second. Every route write is recorded in order.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from controller.api.names import FINALIZER, ROLLOUT_LABEL
from controller.engine.ports import ApplyResult, Conflict, ConflictError, NotFoundError, RouteConflictError, WatchEvent
from controller.traffic.tenancy import istio_name, overlaps


@dataclass
class MemoryCluster:
    rollouts: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    routes: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)
    route_writes: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    events: list[tuple[str, str, bool]] = field(default_factory=list)
    pods: tuple[int, int] = (2, 2)
    counter: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def add(self, body: Mapping[str, Any]) -> dict[str, Any]:
        obj = copy.deepcopy(dict(body))
        metadata = obj.setdefault("metadata", {})
        metadata.setdefault("namespace", "default")
        metadata["resourceVersion"] = str(next(self.counter))
        metadata["generation"] = 1
        self.rollouts[(metadata["namespace"], metadata["name"])] = obj
        return copy.deepcopy(obj)

    def list_rollouts(self, namespace: str | None) -> tuple[list[dict[str, Any]], str]:
        found = [copy.deepcopy(o) for (ns, _), o in sorted(self.rollouts.items()) if namespace in (None, ns)]
        return found, str(next(self.counter))

    def watch_rollouts(
        self, namespace: str | None, resource_version: str, timeout_seconds: int
    ) -> Iterator[WatchEvent]:
        return iter(())

    def get_rollout(self, namespace: str, name: str) -> dict[str, Any]:
        if (namespace, name) not in self.rollouts:
            raise NotFoundError(f"{namespace}/{name}")
        return copy.deepcopy(self.rollouts[(namespace, name)])

    def create_or_update_rollout(self, body: Mapping[str, Any]) -> dict[str, Any]:
        key = (body["metadata"].get("namespace", "default"), body["metadata"]["name"])
        if key not in self.rollouts:
            return self.add(body)
        current = self.rollouts[key]
        if current.get("spec") != body.get("spec"):
            current["spec"] = copy.deepcopy(body["spec"])
            current["metadata"]["generation"] += 1
            current["metadata"]["resourceVersion"] = str(next(self.counter))
        return copy.deepcopy(current)

    def patch_rollout_status(
        self, namespace: str, name: str, status: Mapping[str, Any], resource_version: str
    ) -> dict[str, Any]:
        current = self.rollouts[(namespace, name)]
        if resource_version and current["metadata"]["resourceVersion"] != resource_version:
            raise ConflictError(f"{namespace}/{name} changed")
        current["status"] = copy.deepcopy(dict(status))
        current["metadata"]["resourceVersion"] = str(next(self.counter))
        return copy.deepcopy(current)

    def annotate_rollout(
        self,
        namespace: str,
        name: str,
        annotations: Mapping[str, str | None],
        *,
        resource_version: str = "",
        field_manager: str | None = None,
    ) -> dict[str, Any]:
        current = self.rollouts[(namespace, name)]
        if resource_version and current["metadata"]["resourceVersion"] != resource_version:
            raise ConflictError(f"{namespace}/{name} changed")
        mine = current["metadata"].setdefault("annotations", {})
        for key, value in annotations.items():
            if value is None:
                mine.pop(key, None)
            else:
                mine[key] = value
        current["metadata"]["resourceVersion"] = str(next(self.counter))
        return copy.deepcopy(current)

    def set_finalizer(self, namespace: str, name: str, *, present: bool, resource_version: str) -> dict[str, Any]:
        current = self.rollouts[(namespace, name)]
        if resource_version and current["metadata"]["resourceVersion"] != resource_version:
            raise ConflictError(f"{namespace}/{name} changed")
        finalizers = [f for f in current["metadata"].get("finalizers", []) if f != FINALIZER]
        current["metadata"]["finalizers"] = [*finalizers, FINALIZER] if present else finalizers
        current["metadata"]["resourceVersion"] = str(next(self.counter))
        if not present and current["metadata"].get("deletionTimestamp"):
            del self.rollouts[(namespace, name)]  # the last finalizer is gone: the API server deletes it
        return copy.deepcopy(current)

    def apply_routes(self, owner: Mapping[str, Any], objects: Sequence[Mapping[str, Any]]) -> ApplyResult:
        conflicts = self.route_conflicts(owner, objects)
        if conflicts:
            raise RouteConflictError(conflicts)
        writes = []
        for obj in objects:
            key = (obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"])
            if self.routes.get(key) != obj:
                verb = "update" if key in self.routes else "create"
                self.routes[key] = copy.deepcopy(dict(obj))
                self.route_writes.append((obj["kind"], verb, copy.deepcopy(dict(obj))))
                writes.append((obj["kind"], obj["metadata"]["name"], verb))
        return ApplyResult(tuple(writes))

    def route_conflicts(self, owner: Mapping[str, Any], objects: Sequence[Mapping[str, Any]]) -> list[Conflict]:
        """The protocol's rule: a host another VirtualService (any namespace) routes, unless this
        rollout's own VirtualService already routes it. Seed ``routes`` with others' objects to test."""
        home, rollout = owner["metadata"].get("namespace", "default"), owner["metadata"]["name"]
        mine = self.routes.get(("VirtualService", home, rollout))
        held = {istio_name(h, home) for h in ((mine or {}).get("spec") or {}).get("hosts") or []}
        conflicts = []
        for obj in objects:
            if obj["kind"] != "VirtualService":
                continue
            for (kind, ns, name), other in sorted(self.routes.items()):
                if kind != "VirtualService" or (ns, name) == (home, rollout):
                    continue
                for host in obj["spec"].get("hosts") or []:
                    theirs = [h for h in other["spec"].get("hosts") or [] if overlaps(host, home, h, ns)]
                    if theirs and istio_name(host, home) not in held:
                        conflicts.append(Conflict(host, kind, ns, name, theirs[0]))
        return conflicts

    def release_routes(self, owner: Mapping[str, Any]) -> ApplyResult:
        name = owner["metadata"]["name"]
        gone = [k for k, o in self.routes.items() if o["metadata"].get("labels", {}).get(ROLLOUT_LABEL) == name]
        for key in reversed(gone):  # VirtualService first: no route to a vanished subset
            del self.routes[key]
        return ApplyResult(tuple((k[0], k[2], "delete") for k in gone))

    def emit_event(self, owner: Mapping[str, Any], *, reason: str, message: str, warning: bool = False) -> None:
        self.events.append((reason, message, warning))

    def pods_ready(self, namespace: str, labels: Mapping[str, str]) -> tuple[int, int]:
        return self.pods
