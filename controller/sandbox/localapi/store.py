"""The objects of the local API stand-in and the API server's semantics over them.

Create, read, list, replace and patch, delete with preconditions, finalizers and ownerReference
garbage collection, the resourceVersion counter with the history of every write, and the watch
that streams that history. :class:`ObjectStore` is a mixin of
:class:`~controller.sandbox.localapi.server.LocalApiServer`, which holds the state it works on and
serves it over HTTP; every method here runs with ``cond`` held by the caller (``watch`` takes it).
"""

from __future__ import annotations

import bisect
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from controller.sandbox.localapi.calls import WriteObserver
from controller.sandbox.localapi.discovery import patch_types
from controller.sandbox.localapi.documents import (
    ApiError,
    clone,
    field_matcher,
    json_patch,
    label_matcher,
    merge_patch,
    same_document,
    selected,
    track_update,
)
from controller.sandbox.localapi.resources import RESOURCES, Key, Route, now


class Objects(dict[Key, dict[str, Any]]):
    """The stored objects by key, indexed by kind and namespace as the API server's storage is, so
    that listing one namespace's pods does not walk (and sort) every object of the cluster: with
    thousands of rollouts a list per reconcile was the stand-in's own O(N^2) (bench.scale). Keep
    writes to ``[]=``, ``del`` and ``pop``: they keep the index."""

    def __init__(self) -> None:
        super().__init__()
        self._index: dict[tuple[str, str], dict[str, set[Key]]] = {}

    def __setitem__(self, key: Key, value: dict[str, Any]) -> None:
        super().__setitem__(key, value)
        self._index.setdefault(key[:2], {}).setdefault(key[2], set()).add(key)

    def __delitem__(self, key: Key) -> None:
        super().__delitem__(key)
        self._index[key[:2]][key[2]].discard(key)

    def pop(self, key: Key, *default: Any) -> Any:
        if key in self:
            self._index[key[:2]][key[2]].discard(key)
        return super().pop(key, *default)

    def of_kind(self, group: str, plural: str, namespace: str = "") -> list[Key]:
        """The keys of one kind, in one namespace ("" for all), sorted as a list answers them."""
        by_namespace = self._index.get((group, plural), {})
        found = by_namespace.get(namespace, set()) if namespace else set().union(*by_namespace.values())
        return sorted(found)


def _content(obj: dict[str, Any]) -> dict[str, Any]:
    """What generation tracks: everything but metadata, status and the type."""
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "apiVersion", "kind")}


def _version(entry: tuple[int, str, Key, dict[str, Any]]) -> int:
    return entry[0]


class ObjectStore:
    """The objects and what a write does to them; the state itself is :class:`LocalApiServer`'s."""

    istio_status: bool
    istio_report_due: Callable[[Key], float | None] | None
    istio_pending: list[tuple[float, Key, int]]
    objects: Objects
    resource_version: int
    compacted: int
    history: list[tuple[int, str, Key, dict[str, Any]]]
    cond: threading.Condition
    stopping: bool
    write_observer: WriteObserver | None
    #: Seconds between a watch's BOOKMARK events when the client allows them (the real server: about a minute).
    bookmark_interval: float

    def _out(self, route: Route, obj: dict[str, Any]) -> dict[str, Any]:
        return {**clone(obj), "apiVersion": route.api_version, "kind": route.resource.kind}

    def _existing(self, route: Route, key: Key | None = None) -> dict[str, Any]:
        found = self.objects.get(key or route.key())
        if found is None:
            details = {"name": route.name, "group": route.resource.group, "kind": route.resource.plural}
            raise ApiError(404, f"{route.what()} not found", details=details)
        return found

    def _commit(self, key: Key, obj: dict[str, Any], kind: str) -> dict[str, Any]:
        self.resource_version += 1
        obj["metadata"]["resourceVersion"] = str(self.resource_version)
        if kind == "DELETED":
            self.objects.pop(key, None)
        else:
            self.objects[key] = obj
        self.history.append((self.resource_version, kind, key, clone(obj)))
        if self.write_observer is not None:
            self.write_observer(self.resource_version, kind, key, self.history[-1][3])
        self.cond.notify_all()
        return obj

    def _list(self, route: Route, query: dict[str, str]) -> dict[str, Any]:
        labels = label_matcher(query.get("labelSelector", ""))
        fields = field_matcher(query.get("fieldSelector", ""), route.resource.plural)
        group, plural = route.key()[:2]
        kind = (self.objects[key] for key in self.objects.of_kind(group, plural, route.namespace))
        items = [self._out(route, obj) for obj in kind if selected(obj, labels, fields)]
        listing = {"apiVersion": route.api_version, "kind": f"{route.resource.kind}List", "items": items}
        return {**listing, "metadata": {"resourceVersion": str(self.resource_version)}}

    def _create(self, route: Route, body: Any, manager: str = "unknown") -> dict[str, Any]:
        if not isinstance(body, dict):
            raise ApiError(400, "the body of the request must be an object")
        obj = clone(body)
        metadata = obj.setdefault("metadata", {})
        if metadata.get("namespace", route.namespace) != route.namespace:
            raise ApiError(400, "the namespace of the provided object does not match the namespace sent on the request")
        name = metadata.get("name") or (
            metadata.get("generateName") and metadata["generateName"] + secrets.token_hex(3)
        )
        if not name:
            raise ApiError(422, "metadata.name: Required value: name or generateName is required")
        key = route.key(name)
        if key in self.objects:
            details = {"name": name, "group": route.resource.group, "kind": route.resource.plural}
            raise ApiError(409, f"{route.what(name)} already exists", "AlreadyExists", details)
        for server_set in ("resourceVersion", "deletionTimestamp", "uid", "creationTimestamp", "managedFields"):
            metadata.pop(server_set, None)
        metadata.update(name=name, namespace=route.namespace, uid=str(uuid.uuid4()), creationTimestamp=now())
        if not route.resource.namespaced:
            del metadata["namespace"]
        metadata["generation"] = 1
        obj.update(apiVersion=route.api_version, kind=route.resource.kind)
        if route.resource.status:
            obj.pop("status", None)
        metadata["managedFields"] = self._tracked(route, [], {}, obj, manager)
        return self._commit(key, obj, "ADDED")

    def _patched(self, route: Route, patch: Any, content_type: str) -> dict[str, Any]:
        current = self._out(route, self._existing(route))
        kind = content_type.partition(";")[0].strip()
        accepted = patch_types(route.resource)  # a custom resource has no strategic merge patch
        if kind == "application/json-patch+json":
            patched = json_patch(current, patch)
        elif kind in accepted:
            patched = merge_patch(current, patch)
        else:
            raise ApiError(
                415,
                "the body of the request was in an unknown format - accepted media types include: "
                + ", ".join((*accepted, "application/apply-patch+yaml")),
            )
        if not isinstance(patched, dict):
            raise ApiError(422, "the patched object is not an object")
        return patched

    def _update(self, route: Route, body: Any, *, unconditional: bool, manager: str = "unknown") -> dict[str, Any]:
        if not isinstance(body, dict):
            raise ApiError(400, "the body of the request must be an object")
        old = self._existing(route)
        new_meta = body.get("metadata") or {}
        if new_meta.get("name", route.name) != route.name:
            raise ApiError(400, f"the name of the object ({new_meta.get('name')}) does not match the name on the URL")
        wanted = new_meta.get("resourceVersion")
        if not wanted and not unconditional:
            raise ApiError(422, "metadata.resourceVersion: Invalid value: 0x0: must be specified for an update")
        conflict = f"Operation cannot be fulfilled on {route.what()}: "
        if wanted and wanted != old["metadata"]["resourceVersion"]:
            raise ApiError(
                409,
                conflict + "the object has been modified; please apply your changes to the latest "
                "version and try again",
            )
        if new_meta.get("uid") not in (None, old["metadata"]["uid"]):
            raise ApiError(409, conflict + "Precondition failed: UID in precondition does not match")
        if route.sub == "status":
            merged = clone(old)
            merged.pop("status", None)
            if body.get("status") is not None:
                merged["status"] = clone(body["status"])
        else:
            merged = clone(body)
            meta = merged.setdefault("metadata", {})
            for kept in ("name", "namespace", "uid", "creationTimestamp", "generation", "deletionTimestamp"):
                meta.pop(kept, None)
                if kept in old["metadata"]:
                    meta[kept] = old["metadata"][kept]
            merged.pop("status", None)
            if route.resource.status and "status" in old:
                merged["status"] = clone(old["status"])
            if _content(merged) != _content(old):
                meta["generation"] = old["metadata"].get("generation", 1) + 1
        merged.update(apiVersion=old["apiVersion"], kind=old["kind"])
        merged["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
        merged["metadata"].pop("managedFields", None)  # the server's record: what a client sends is ignored
        if "managedFields" in old["metadata"]:
            merged["metadata"]["managedFields"] = old["metadata"]["managedFields"]
        if same_document(merged, old):
            return old  # a no-op: no new resourceVersion, no event
        entries = old["metadata"].get("managedFields") or []
        merged["metadata"]["managedFields"] = self._tracked(route, entries, old, merged, manager)
        if merged["metadata"].get("deletionTimestamp") and not merged["metadata"].get("finalizers"):
            return self._remove(route.key(), merged, orphan=False)
        return self._commit(route.key(), merged, "MODIFIED")

    def _tracked(
        self, route: Route, entries: Any, old: dict[str, Any], new: dict[str, Any], manager: str
    ) -> list[dict[str, Any]]:
        return track_update(
            entries,
            old,
            new,
            manager=manager,
            api_version=route.api_version,
            subresource=route.sub,
            has_status=route.resource.status,
            now=now(),
        )

    def _delete(self, route: Route, key: Key, options: dict[str, Any]) -> dict[str, Any]:
        old = self._existing(route, key)
        preconditions = options.get("preconditions") or {}
        for name in ("uid", "resourceVersion"):
            if preconditions.get(name) not in (None, old["metadata"].get(name)):
                raise ApiError(
                    409, f"Operation cannot be fulfilled on {route.what(key[3])}: Precondition failed: {name}"
                )
        if old["metadata"].get("finalizers"):
            if not old["metadata"].get("deletionTimestamp"):
                marked = clone(old)
                marked["metadata"]["deletionTimestamp"] = now()
                marked["metadata"]["generation"] = old["metadata"].get("generation", 1) + 1
                self._commit(key, marked, "MODIFIED")
            return self._out(route, self.objects[key])
        self._remove(key, clone(old), orphan=options.get("propagationPolicy") == "Orphan")
        details = {"name": key[3], "group": key[0], "kind": key[1], "uid": old["metadata"]["uid"]}
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details}

    def _remove(self, key: Key, obj: dict[str, Any], *, orphan: bool) -> dict[str, Any]:
        """Delete for good, then collect the dependents whose owners are all gone."""
        gone = self._commit(key, obj, "DELETED")
        uid = obj["metadata"]["uid"]
        live = {o["metadata"]["uid"] for o in self.objects.values()}
        for dep_key, dependent in list(self.objects.items()):
            refs = dependent["metadata"].get("ownerReferences") or []
            if dep_key[2] != key[2] or not any(r.get("uid") == uid for r in refs):
                continue
            rest = [r for r in refs if r.get("uid") != uid]
            if orphan or any(r.get("uid") in live for r in rest):
                kept = clone(dependent)
                kept["metadata"]["ownerReferences"] = rest
                if not rest:
                    del kept["metadata"]["ownerReferences"]
                self._commit(dep_key, kept, "MODIFIED")
            else:
                resource = RESOURCES[dep_key[:2]]
                dep_route = Route(resource, resource.versions[0], dep_key[2], dep_key[3], None)
                self._delete(dep_route, dep_key, {})
        return gone

    def _istiod(self, route: Route, obj: dict[str, Any]) -> None:
        """Play istiod's status reporting: mark the new generation Reconciled, at once or, when
        :attr:`istio_report_due` gives a moment, once :meth:`report_istio` reaches it."""
        if not self.istio_status or route.resource.group != "networking.istio.io":
            return
        generation = obj["metadata"].get("generation", 1)
        if (obj.get("status") or {}).get("observedGeneration") == generation:
            return
        key = route.key(obj["metadata"]["name"])
        due = self.istio_report_due(key) if self.istio_report_due is not None else None
        if due is None:
            self._reconciled(key, obj, generation)
        else:
            self.istio_pending.append((due, key, generation))

    def report_istio(self, moment: float) -> int:
        """Write the deferred Reconciled reports due by ``moment`` (istiod catching up); a report of a
        generation since replaced or deleted is dropped (its successor has its own). Returns how many."""
        with self.cond:
            due = [p for p in self.istio_pending if p[0] <= moment]
            self.istio_pending[:] = [p for p in self.istio_pending if p[0] > moment]
            reported = 0
            for _, key, generation in due:
                current = self.objects.get(key)
                if current is not None and current["metadata"].get("generation", 1) == generation:
                    reported += 1
                    self._reconciled(key, current, generation)
            return reported

    def _reconciled(self, key: Key, obj: dict[str, Any], generation: int) -> None:
        reported = clone(obj)
        condition = {"type": "Reconciled", "status": "True", "lastProbeTime": now(), "lastTransitionTime": now()}
        reported["status"] = {"observedGeneration": generation, "conditions": [condition]}
        self._commit(key, reported, "MODIFIED")

    def watch(self, route: Route, query: dict[str, str]) -> Iterator[dict[str, Any]]:
        """The watch stream: events since ``resourceVersion`` until ``timeoutSeconds`` or shutdown."""
        labels = label_matcher(query.get("labelSelector", ""))
        fields = field_matcher(query.get("fieldSelector", ""), route.resource.plural)
        deadline = time.monotonic() + float(query.get("timeoutSeconds") or 1800)
        bookmarks = query.get("allowWatchBookmarks") in ("true", "1")
        bookmark_due = time.monotonic() + self.bookmark_interval
        since = query.get("resourceVersion", "")
        with self.cond:
            if since in ("", "0"):
                cursor = self.resource_version
                initial = [("ADDED", k, o) for k, o in sorted(self.objects.items())]
            elif int(since) < self.compacted:
                status = ApiError(410, f"too old resource version: {since} ({self.compacted})").status()
                yield {"type": "ERROR", "object": status}
                return
            else:
                cursor, initial = int(since), []
        for kind, key, obj in initial:
            if self._watched(route, key, obj, labels, fields):
                yield {"type": kind, "object": self._out(route, obj)}
        while not self.stopping:
            bookmark = None
            with self.cond:
                # the history is in resourceVersion order: the writes after the cursor, without a
                # look at every write before it (a scan, under the lock, on every write at scale)
                first = bisect.bisect_right(self.history, cursor, key=_version)
                batch = [(k, key, o) for _, k, key, o in self.history[first:]]
                if batch:
                    cursor = self.resource_version
                elif (remaining := deadline - time.monotonic()) <= 0:
                    return
                elif bookmarks and time.monotonic() >= bookmark_due:  # how far the watch has seen: a resume point
                    bookmark_due = time.monotonic() + self.bookmark_interval
                    bookmark = self._bookmark(route, cursor)
                else:
                    self.cond.wait(min(remaining, 0.2))
                    continue
            if bookmark is not None:  # sent with the lock released, as every event is
                yield bookmark
                continue
            for kind, key, obj in batch:
                if self._watched(route, key, obj, labels, fields):
                    yield {"type": kind, "object": self._out(route, obj)}

    @staticmethod
    def _bookmark(route: Route, cursor: int) -> dict[str, Any]:
        """A BOOKMARK event: an object of the watched kind with only the resourceVersion seen so far."""
        marker = {"apiVersion": route.api_version, "kind": route.resource.kind}
        return {"type": "BOOKMARK", "object": {**marker, "metadata": {"resourceVersion": str(cursor)}}}

    @staticmethod
    def _watched(route: Route, key: Key, obj: dict[str, Any], labels: Any, fields: dict[str, str]) -> bool:
        same = key[:2] == route.key()[:2] and route.namespace in ("", key[2])
        return same and selected(obj, labels, fields)
