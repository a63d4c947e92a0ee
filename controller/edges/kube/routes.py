"""Route convergence: the rollout's Istio objects brought to what canarist wants, in a safe order.

Routes (:meth:`KubeCluster.apply_routes`)
  Objects are applied in the given order (DestinationRule first: make before break). Each is read,
  compared with what canarist wants (normalised spec; canarist's labels, annotations and owner
  reference) and written only when they differ, by a replace carrying the resourceVersion read; a
  409 is retried with a fresh read (:attr:`KubeCluster.conflict_retries` tries). A subset leaving a
  DestinationRule stays until the VirtualServices of the same call are written, and goes in a last
  write after them. Before a VirtualService is written after a DestinationRule changed, canarist
  waits until Istio has taken it up: the ``Reconciled`` condition at the new generation when istiod
  reports status, at most :attr:`KubeCluster.propagation_delay` seconds (all of it when istiod
  reports nothing). :meth:`KubeCluster.release_routes` waits the same way between the
  VirtualServices and the DestinationRules. DestinationRules do not carry the weight annotation, so
  a step rewrites only the VirtualService.

  Objects canarist creates carry canarist's labels (``app.kubernetes.io/managed-by: canarist``,
  ``canarist.io/rollout: <name>``), an owner reference to the ModelRollout (``controller: true``,
  ``blockOwnerDeletion: false``: deleting the rollout garbage-collects them) and the annotation
  ``canarist.io/managed-weights: "true"``.

Adoption of the user's own objects and the conflicts are in :mod:`controller.edges.kube.adoption`.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from controller.api.model import API_VERSION, KIND
from controller.api.names import ADOPTED_LABEL, MANAGED_WEIGHTS_ANNOTATION, ORIGINAL_ANNOTATION, WEIGHT_ANNOTATION
from controller.edges.kube.adoption import RouteAdoption
from controller.edges.kube.client import Kind, RejectedError, as_dict
from controller.edges.kube.objects import (
    ISTIO_GROUP,
    PLURALS,
    adopted_by,
    annotations_of,
    created_by,
    labels_of,
    marks_of,
    object_name,
    object_namespace,
)
from controller.engine.ports import (
    ApplyResult,
    ClusterUnavailableError,
    ConflictError,
    NotFoundError,
    RouteConflictError,
)
from controller.traffic.adopt import normalise

log = logging.getLogger("canarist.kube")
Writes = list[tuple[str, str, str]]


def _same(target: Mapping[str, Any], current: Mapping[str, Any]) -> bool:
    """Whether writing ``target`` would change nothing canarist manages in ``current``."""

    def managed(obj: Mapping[str, Any]) -> Any:
        metadata = obj.get("metadata") or {}
        fields = ("labels", "annotations", "ownerReferences")
        return normalise({"spec": obj.get("spec"), **{f: metadata.get(f) for f in fields}})

    return bool(managed(target) == managed(current))


def _reconciled(status: Mapping[str, Any], generation: int) -> bool:
    if int(status.get("observedGeneration") or 0) < generation:
        return False
    return any(c.get("type") == "Reconciled" and c.get("status") == "True" for c in status.get("conditions") or [])


def _owner_reference(owner: Mapping[str, Any]) -> dict[str, Any] | None:
    metadata = owner.get("metadata") or {}
    if not metadata.get("uid"):
        return None
    return {
        "apiVersion": str(owner.get("apiVersion") or API_VERSION),
        "kind": str(owner.get("kind") or KIND),
        "name": str(metadata["name"]),
        "uid": str(metadata["uid"]),
        "controller": True,
        "blockOwnerDeletion": False,
    }


@dataclass(frozen=True)
class _Written:
    """An object this call wrote, at the generation Istio must take up."""

    kind: Kind
    namespace: str
    name: str
    generation: int


def _written(kind: Kind, obj: Mapping[str, Any]) -> _Written:
    return _Written(
        kind, object_namespace(obj), object_name(obj), int((obj.get("metadata") or {}).get("generation") or 1)
    )


class Routes(RouteAdoption):
    """The route methods of :class:`controller.engine.ports.Cluster`: apply and release."""

    istio_version = "v1"

    def apply_routes(self, owner: Mapping[str, Any], objects: Sequence[Mapping[str, Any]]) -> ApplyResult:
        with self._reads_shared():  # the check and the writes on one read of each object
            return self._apply_routes(owner, objects)

    def _apply_routes(self, owner: Mapping[str, Any], objects: Sequence[Mapping[str, Any]]) -> ApplyResult:
        for desired in objects:
            if object_namespace(desired) != object_namespace(owner):
                where = f"{object_namespace(desired)}/{object_name(desired)}"
                raise RejectedError(
                    f"{desired.get('kind')} {where}: not in the rollout's namespace "
                    f"{object_namespace(owner)!r}: not writing",
                    code=403,
                )
        conflicts = self.route_conflicts(owner, objects)
        if conflicts:
            raise RouteConflictError(conflicts)
        writes: Writes = []
        subsets_written: list[_Written] = []
        routes_written: list[_Written] = []
        leaving: list[Mapping[str, Any]] = []
        for desired in objects:
            kind = desired.get("kind")
            if kind == "DestinationRule":
                written, stale = self._converge(owner, desired, writes, keep_stale=True)
                subsets_written.extend([written] if written else [])
                leaving.extend([desired] if stale else [])
            elif kind == "VirtualService":
                before = functools.partial(self._settle, subsets_written)
                written, _ = self._converge(owner, desired, writes, before=before)
                routes_written.extend([written] if written else [])
            elif kind == "Telemetry":
                self._converge_owned(owner, desired, writes)
            else:
                raise ValueError(f"canarist applies DestinationRules, Telemetries and VirtualServices, not {kind!r}")
        for desired in leaving:  # subsets no route of this call uses any more: remove them last
            self._converge(owner, desired, writes, before=functools.partial(self._settle, routes_written))
        wanted = {object_name(o) for o in objects if o.get("kind") == "Telemetry"}
        for obj in self._telemetries(owner, needed=bool(wanted)):  # a tag the policy no longer needs
            if object_name(obj) not in wanted:
                self._delete(self._telemetry_kind(), obj)
                writes.append(("Telemetry", object_name(obj), "delete"))
        return ApplyResult(tuple(writes))

    def _telemetries(self, owner: Mapping[str, Any], *, needed: bool = False) -> list[dict[str, Any]]:
        """The Telemetries this rollout created in its namespace.

        Unless one is ``needed``, a refused list (a ClusterRole from before canarist wrote them, or no
        Telemetry CRD in the cluster) means there is none of ours: a rollout without A/B cohorts never
        needs the permission."""
        try:
            found = self._list(self._telemetry_kind(), object_namespace(owner))[0]
        except (RejectedError, NotFoundError):
            if needed:
                raise
            return []
        return [o for o in found if created_by(o, object_name(owner))]

    def _converge_owned(self, owner: Mapping[str, Any], desired: Mapping[str, Any], writes: Writes) -> None:
        """Create or update an object only canarist writes; one of the same name it did not create is a conflict."""
        kind = self._telemetry_kind(str(desired.get("apiVersion", "")))
        namespace, name = object_namespace(desired), object_name(desired)
        for _ in range(self.conflict_retries):
            try:
                current = self._get(kind, namespace, name)
            except NotFoundError:
                current = None
            if current is not None and not created_by(current, object_name(owner)):
                raise RejectedError(
                    f"{desired['kind']} {namespace}/{name} exists and was not created by this rollout: not overwriting",
                    code=409,
                )
            target = self._created(owner, desired) if current is None else self._owned(owner, desired, current)
            if current is not None and _same(target, current):
                return
            try:
                if current is None:
                    self._create(kind, namespace, target)
                else:
                    self._replace(kind, target)
            except ConflictError:
                continue
            writes.append((str(desired["kind"]), name, "create" if current is None else "update"))
            return
        raise ConflictError(f"{desired['kind']} {namespace}/{name}: still conflicting after retries")

    def _converge(
        self,
        owner: Mapping[str, Any],
        desired: Mapping[str, Any],
        writes: Writes,
        *,
        keep_stale: bool = False,
        before: Callable[[], None] = lambda: None,
    ) -> tuple[_Written | None, bool]:
        """Bring one object to ``desired`` (created, owned or adopted), retrying 409 with a fresh read.

        Returns what was written (or None) and whether leaving subsets were kept for later."""
        kind_name = str(desired["kind"])
        kind = Kind(ISTIO_GROUP, str(desired["apiVersion"]).rpartition("/")[2], PLURALS[kind_name])
        for attempt in range(self.conflict_retries):
            current, adopt = self._locate(owner, desired, kind)
            if current is None:
                target: dict[str, Any] = self._created(owner, desired)
                stale: list[Any] = []
            else:
                target = self._adopted(owner, desired, current) if adopt else self._owned(owner, desired, current)
                names = {s.get("name") for s in target["spec"].get("subsets") or []}
                old = (current.get("spec") or {}).get("subsets") or []
                stale = [s for s in old if s.get("name") not in names] if keep_stale else []
                if stale:
                    target["spec"]["subsets"] = [*target["spec"].get("subsets", []), *stale]
                if _same(target, current):
                    return None, bool(stale)
            if attempt == 0:
                before()  # wait for Istio once, before the first write
            name, verb = object_name(target), "update"
            if current is None:
                verb = "create"
            elif adopt and not adopted_by(current, object_name(owner)):
                verb = "adopt"  # the first write to the user's object
            try:
                done = (
                    self._create(kind, object_namespace(target), target)
                    if verb == "create"
                    else self._replace(kind, target)
                )
            except ConflictError:
                log.info("%s %s/%s changed meanwhile: reading it again", kind_name, object_namespace(target), name)
                continue
            writes.append((kind_name, name, verb))
            return _written(kind, done), bool(stale)
        raise ConflictError(
            f"{kind_name} {object_namespace(desired)}/{object_name(desired)}: still conflicting after retries"
        )

    def _created(self, owner: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any]:
        body = copy.deepcopy(dict(desired))
        body["metadata"]["annotations"] = marks_of(desired)
        reference = _owner_reference(owner)
        if reference is not None:
            body["metadata"]["ownerReferences"] = [reference]
        return as_dict(normalise(body))

    def _owned(self, owner: Mapping[str, Any], desired: Mapping[str, Any], current: dict[str, Any]) -> dict[str, Any]:
        target = {k: copy.deepcopy(v) for k, v in current.items() if k != "status"}
        target["spec"] = copy.deepcopy(desired.get("spec") or {})
        metadata = target["metadata"]
        metadata["labels"] = {**labels_of(current), **labels_of(desired)}
        metadata["annotations"] = marks_of(desired, kept=current)
        reference = _owner_reference(owner)
        if reference is not None:
            kept = [r for r in metadata.get("ownerReferences") or [] if r.get("kind") != KIND]
            metadata["ownerReferences"] = [*kept, reference]
        return target

    def release_routes(self, owner: Mapping[str, Any]) -> ApplyResult:
        rollout, namespace = object_name(owner), object_namespace(owner) or "default"
        writes: Writes = []
        routes_written: list[_Written] = []
        for kind_name in ("VirtualService", "DestinationRule"):  # no route may outlive the subset it uses
            kind = Kind(ISTIO_GROUP, self.istio_version, PLURALS[kind_name])
            if kind_name == "DestinationRule":
                self._settle(routes_written)
            for obj in self._list(kind, namespace)[0]:
                if created_by(obj, rollout):
                    self._delete(kind, obj)
                    writes.append((kind_name, object_name(obj), "delete"))
                elif adopted_by(obj, rollout):
                    routes_written.append(self._restore(kind, obj))
                    writes.append((kind_name, object_name(obj), "restore"))
        for obj in self._telemetries(owner):  # no route sets the split header any more
            self._delete(self._telemetry_kind(), obj)
            writes.append(("Telemetry", object_name(obj), "delete"))
        return ApplyResult(tuple(writes))

    def _restore(self, kind: Kind, current: dict[str, Any]) -> _Written:
        for _ in range(self.conflict_retries):
            target = {k: copy.deepcopy(v) for k, v in current.items() if k != "status"}
            annotations = annotations_of(current)
            target["spec"] = json.loads(annotations[ORIGINAL_ANNOTATION])
            for key in (ORIGINAL_ANNOTATION, MANAGED_WEIGHTS_ANNOTATION, WEIGHT_ANNOTATION):
                annotations.pop(key, None)
            labels = {k: v for k, v in labels_of(current).items() if k != ADOPTED_LABEL}
            for field, values in (("annotations", annotations), ("labels", labels)):
                target["metadata"][field] = values
                if not values:
                    del target["metadata"][field]
            try:
                done = self._replace(kind, target)
                return _written(kind, done)
            except ConflictError:
                current = self._get(kind, object_namespace(current), object_name(current))
        raise ConflictError(
            f"{kind.plural} {object_namespace(current)}/{object_name(current)}: still conflicting after retries"
        )

    def _settle(self, written: list[_Written]) -> None:
        """Wait until Istio has taken up what this call wrote (once: the list is emptied).

        Polls the objects' ``Reconciled`` condition, for at most :attr:`propagation_delay` seconds:
        without status reporting from istiod, that is the whole delay."""
        pending, written[:] = list(written), []
        deadline = self.clock() + self.propagation_delay
        while pending and self.propagation_delay > 0:
            first = pending[0]
            try:
                status = self._read(first.kind, first.namespace, first.name).get("status") or {}
            except (NotFoundError, ClusterUnavailableError):
                status = {}
            if _reconciled(status, first.generation):
                pending.pop(0)
                continue
            remaining = deadline - self.clock()
            if remaining <= 0:
                log.info("%s %s/%s: no Reconciled condition from Istio; waited %ss", first.kind.plural,
                         first.namespace, first.name, self.propagation_delay)  # fmt: skip
                return
            self.sleep(min(0.25, remaining))
