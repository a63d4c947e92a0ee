"""Adoption at the edge: which object a rollout's route goes to, and the conflicts when a host is taken.

Adoption
  Where the user already has a DestinationRule for the rollout's host, or a VirtualService whose
  ``hosts`` contain it (short names resolved in the object's namespace, as Istio does), canarist
  adopts it instead of creating a second object for the host, which Istio would merge
  unpredictably (the oldest one if there are several). The user's spec is saved once, as JSON, in
  ``canarist.io/original-spec``; the object is labelled ``canarist.io/adopted-by: <rollout>`` and
  gets no owner reference (deleting the rollout never deletes the user's object). What is kept:

  * DestinationRule: everything (host, trafficPolicy, exportTo, workloadSelector, the user's
    subsets in their order). canarist's subsets are appended, replacing a user subset of the same
    name while adopted; the policy's trafficPolicy, if any, goes on canarist's subsets (subset
    level), so the user's top-level trafficPolicy still governs the user's subsets.
  * VirtualService: every field but ``http`` as is (hosts, gateways, exportTo, tcp, tls; the
    policy's extra hosts and gateways are not added). In ``http``, every route that sends no traffic
    to the rollout's host is kept unchanged, in place. Each route that does is taken over in place:
    first canarist's specific routes (A/B cohorts, sticky users, Triton's URI-rewriting shares),
    each with its match AND-ed with the user route's match and the user route's other settings
    (rewrite, headers, corsPolicy, ...) under canarist's; then the user route itself, keeping its
    name, match and settings, with its destinations replaced by canarist's weighted split (and
    canarist's mirror, timeout and retries where the policy sets them). If no route sends traffic
    to the host, canarist's routes are appended. Edits to an adopted object while adopted are lost.

  :meth:`KubeCluster.release_routes` writes the saved spec back exactly and removes canarist's
  annotations and label: the object is again as the user left it.

GitOps: keeping Argo CD and Flux from fighting canarist over weights
  Objects canarist created are not in git: Argo CD lists them under the ModelRollout (owner
  reference) without diffing them, Flux never sees them. For an adopted object that is in git:

  * Argo CD, in the Application::

        ignoreDifferences:
          - group: networking.istio.io
            kind: VirtualService
            jqPathExpressions: [".spec.http[].route[].weight"]  # JSON pointers have no wildcard
          - group: networking.istio.io
            kind: DestinationRule
            jqPathExpressions: [".spec.subsets"]
        syncPolicy:
          syncOptions: [RespectIgnoreDifferences=true]

    The weight path is enough once git already routes to both subsets; where canarist takes a
    route over (new destinations, cohort routes) ignore ``.spec.http`` instead.
  * Flux (kustomize-controller): annotate the object in git with
    ``kustomize.toolkit.fluxcd.io/ssa: IfNotPresent`` (Flux creates it and then never overrides
    it), or ``Ignore`` while rollouts run. ``canarist.io/managed-weights: "true"`` marks the
    objects canarist steers, for such rules and for people.

The merge rules themselves are pure, in :mod:`controller.traffic.adopt`; here is where the object to
adopt is found (:meth:`RouteAdoption._locate`), what :meth:`RouteAdoption.route_conflicts` refuses,
and the adopted object's target.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from typing import Any

from controller.api.names import ADOPTED_LABEL, MANAGED_BY, ORIGINAL_ANNOTATION, ROLLOUT_LABEL
from controller.edges.kube.client import Kind, KubeClient
from controller.edges.kube.objects import (
    ISTIO_GROUP,
    PLURALS,
    TELEMETRY_GROUP,
    TELEMETRY_PLURAL,
    TELEMETRY_VERSION,
    adopted_by,
    annotations_of,
    created_by,
    labels_of,
    marks_of,
    object_name,
    object_namespace,
)
from controller.engine.ports import Conflict, NotFoundError, RouteConflictError
from controller.traffic.adopt import fqdn, merge_destination_rule, merge_virtual_service
from controller.traffic.tenancy import istio_name, overlaps


def _host_of(desired: Mapping[str, Any]) -> str:
    spec = desired.get("spec") or {}
    host = spec.get("host", "") if desired.get("kind") == "DestinationRule" else (spec.get("hosts") or [""])[0]
    return fqdn(str(host), object_namespace(desired))


def _serves(obj: Mapping[str, Any], host: str) -> bool:
    """Whether ``obj`` (a DestinationRule or VirtualService) is for ``host``."""
    spec = obj.get("spec") or {}
    hosts = spec.get("hosts") or [] if obj.get("kind") == "VirtualService" else [spec.get("host", "")]
    return host in {fqdn(str(h), object_namespace(obj)) for h in hosts}


def _hosts_of(obj: Mapping[str, Any]) -> list[str]:
    """The hosts an Istio object names: a VirtualService's ``hosts``, a DestinationRule's ``host``."""
    spec = obj.get("spec") or {}
    hosts = spec.get("hosts") or [] if obj.get("kind") == "VirtualService" else [spec.get("host") or ""]
    return [str(h) for h in hosts if h]


def _gateways(obj: Mapping[str, Any]) -> set[str]:
    """The proxies a VirtualService applies to: ``mesh`` (the default) or ``namespace/gateway``."""
    names = (obj.get("spec") or {}).get("gateways") or ["mesh"]
    home = object_namespace(obj)
    return {str(g) if str(g) == "mesh" or "/" in str(g) else f"{home}/{g}" for g in names}


def _host_of_rollout(objects: Sequence[Mapping[str, Any]]) -> str:
    """The host the rendered DestinationRule is for (what a conflict is about)."""
    return next((str((o.get("spec") or {}).get("host")) for o in objects if o.get("kind") == "DestinationRule"), "")


def _canarists(obj: Mapping[str, Any]) -> str | None:
    """The rollout that manages ``obj`` (created or adopted), or None for the user's own object."""
    labels = labels_of(obj)
    if ADOPTED_LABEL in labels:
        return labels[ADOPTED_LABEL]
    return labels.get(ROLLOUT_LABEL) if MANAGED_BY.items() <= labels.items() else None


def _managed_by(obj: Mapping[str, Any], rollout: str) -> bool:
    return created_by(obj, rollout) or adopted_by(obj, rollout)


class RouteAdoption(KubeClient):
    """Finding the object for each of a rollout's routes (its own, the user's, or a conflict), and adopting."""

    def _telemetry_kind(self, api_version: str | None = None) -> Kind:
        version = api_version.rpartition("/")[2] if api_version else TELEMETRY_VERSION
        return Kind(TELEMETRY_GROUP, version, TELEMETRY_PLURAL)

    def _locate(
        self, owner: Mapping[str, Any], desired: Mapping[str, Any], kind: Kind
    ) -> tuple[dict[str, Any] | None, bool]:
        """The object to bring to ``desired`` and whether it is adopted; (None, False): create it."""
        rollout, namespace, name, host = (
            object_name(owner),
            object_namespace(desired),
            object_name(desired),
            _host_of(desired),
        )
        try:
            current = self._get(kind, namespace, name)
        except NotFoundError:
            candidates = [o for o in self._list(kind, namespace)[0] if _serves(o, host)]
        else:
            if _managed_by(current, rollout):
                return current, adopted_by(current, rollout)
            if _canarists(current) is None and _serves(current, host):
                return current, True
            theirs = ", ".join(_hosts_of(current)) or "no host"
            managed = _canarists(current)
            raise RouteConflictError(
                [Conflict(host, str(desired["kind"]), namespace, name, theirs, managed and f"{namespace}/{managed}")]
            )
        mine = [o for o in candidates if adopted_by(o, rollout)]
        others = [o for o in candidates if _canarists(o) not in (None, rollout)]
        if others and not mine:
            raise RouteConflictError(
                [
                    Conflict(
                        host, str(desired["kind"]), namespace, object_name(o), host, f"{namespace}/{_canarists(o)}"
                    )
                    for o in sorted(others, key=object_name)
                ]
            )
        users = sorted(
            (o for o in candidates if _canarists(o) is None),
            key=lambda o: (o["metadata"].get("creationTimestamp", ""), object_name(o)),
        )
        found = mine[0] if mine else users[0] if users else None  # the user's oldest: the one Istio honours
        return found, found is not None

    def route_conflicts(self, owner: Mapping[str, Any], objects: Sequence[Mapping[str, Any]]) -> list[Conflict]:
        """Read-only: what :meth:`apply_routes` would refuse (see :class:`controller.engine.ports.Conflict`).

        Two checks. In the rollout's namespace, each object's name and host: a same-named object for
        another host, or an object for the host managed by another rollout. Across every namespace,
        each host of each VirtualService against the hosts of every other VirtualService
        (:func:`controller.traffic.tenancy.overlaps`: short names, FQDNs, wildcards). A host the rollout's own
        VirtualService (created or adopted) already routes is never a conflict: it was taken when it
        was free, and a later object elsewhere must not freeze the rollout (nor its rollback). The
        user's own VirtualServices for the host in the rollout's namespace are adopted, not conflicts.
        So where the rollout's own objects already route every host it asks for, the second check
        has nothing to find and the cluster-wide listing is skipped: a steady reconcile costs a
        few GETs, not a read of every VirtualService (issue 17: 2,000 rollouts).
        """
        rollout, home = object_name(owner), object_namespace(owner)
        conflicts: list[Conflict] = []
        located: list[str] = []  # the hosts this rollout's own objects (found just now) already route
        services = [o for o in objects if o.get("kind") == "VirtualService"]
        for desired in objects:
            if desired.get("kind") == "Telemetry":  # canarist's own name: someone else's object is in the way
                try:
                    current = self._get(self._telemetry_kind(str(desired["apiVersion"])), home, object_name(desired))
                except NotFoundError:
                    continue
                if not created_by(current, rollout):
                    what = "its split tag, not created by this rollout"
                    conflicts.append(Conflict(_host_of_rollout(objects), "Telemetry", home, object_name(desired), what))
                continue
            plural = PLURALS.get(str(desired.get("kind")))
            if plural is None:
                continue
            kind = Kind(ISTIO_GROUP, str(desired["apiVersion"]).rpartition("/")[2], plural)
            try:
                found, _ = self._locate(owner, desired, kind)
            except RouteConflictError as exc:
                conflicts.extend(exc.conflicts)
                continue
            if found is not None and object_namespace(found) == home and _managed_by(found, rollout):
                located.extend(istio_name(h, home) for h in _hosts_of(found))
        wanted = {istio_name(str(h), home) for o in services for h in (o.get("spec") or {}).get("hosts") or []}
        if not services or wanted <= set(located):
            return conflicts  # every host already routed by this rollout: nothing elsewhere can conflict
        kind = Kind(ISTIO_GROUP, str(services[0]["apiVersion"]).rpartition("/")[2], PLURALS["VirtualService"])
        cached = self.virtual_services.snapshot() if self.virtual_services is not None else None
        everywhere = cached if cached is not None else self._list(kind, None)[0]
        ours = [o for o in everywhere if object_namespace(o) == home and _managed_by(o, rollout)]
        held = {istio_name(h, home) for o in ours for h in _hosts_of(o)}
        for desired in services:
            primary = _host_of(desired)
            for obj in everywhere:
                if any(obj is o for o in ours):
                    continue
                managed = _canarists(obj)
                if object_namespace(obj) == home and managed is None and _serves(obj, primary):
                    continue  # the user's object for the host: adopted, not a conflict
                if not _gateways(desired) & _gateways(obj):
                    continue  # bound to other proxies (an ingress gateway's catch-all, say): no request meets both
                by = f"{object_namespace(obj)}/{managed}" if managed else None
                for host in (str(h) for h in (desired.get("spec") or {}).get("hosts") or []):
                    if istio_name(host, home) in held:
                        continue
                    other = next((h for h in _hosts_of(obj) if overlaps(host, home, h, object_namespace(obj))), None)
                    if other is not None:
                        conflicts.append(
                            Conflict(host, "VirtualService", object_namespace(obj), object_name(obj), other, by)
                        )
        return list(dict.fromkeys(conflicts))

    def _adopted(self, owner: Mapping[str, Any], desired: Mapping[str, Any], current: dict[str, Any]) -> dict[str, Any]:
        saved = annotations_of(current).get(ORIGINAL_ANNOTATION)
        original = json.loads(saved) if saved else copy.deepcopy(current.get("spec") or {})
        ours = desired.get("spec") or {}
        if desired["kind"] == "DestinationRule":
            spec = merge_destination_rule(original, ours)
        else:
            spec = merge_virtual_service(original, ours, _host_of(desired), object_namespace(current))
        target = {k: copy.deepcopy(v) for k, v in current.items() if k != "status"}
        target["spec"] = spec
        target["metadata"]["labels"] = {**labels_of(current), ADOPTED_LABEL: object_name(owner)}
        annotations = marks_of(desired, kept=current)
        annotations[ORIGINAL_ANNOTATION] = json.dumps(original, sort_keys=True, separators=(",", ":"))
        target["metadata"]["annotations"] = annotations
        return target
