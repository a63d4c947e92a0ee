"""A watch-fed cache of every VirtualService in the cluster, for the cross-namespace conflict check.

A rollout asking for a host it does not route yet must be checked against every VirtualService
of every namespace (:meth:`~controller.edges.kube.adoption.RouteAdoption.route_conflicts`). Listing
them all per check made N new rollouts O(N^2) in API traffic: 2,000 rollouts starting at once moved
gigabytes. So, as client-go's informers do, one list and then one watch keep a local copy that the
check reads; the controller's own writes go into it at once (it reads what it wrote). The copy can
lag the API server by the moment a watch event takes to arrive: a VirtualService another team
creates in that moment is missed, as it would be by a check that listed a moment earlier. The
same-namespace checks (an object of the same name, the host's object in the namespace) always read
the API server. A 410 Gone (history compacted) or a broken watch lists again; until the first list
succeeds, and after an error until the next one does, the check lists for itself.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import urllib3
from kubernetes import client, watch

from controller.edges.kube.client import Kind, as_dict, untyped
from controller.edges.kube.objects import ISTIO_GROUP, PLURALS, object_name, object_namespace

log = logging.getLogger("canarist.kube")

VIRTUAL_SERVICES = Kind(ISTIO_GROUP, "v1", PLURALS["VirtualService"])


class Informer:
    """List, then watch, one kind in every namespace; :meth:`snapshot` is None until in sync."""

    def __init__(
        self,
        api_client: client.ApiClient,
        kind: Kind = VIRTUAL_SERVICES,
        *,
        watch_seconds: int = 300,
        backoff: float = 2.0,
        request_timeout: float = 30.0,
    ) -> None:
        self.api = client.CustomObjectsApi(api_client)
        self.kind, self.watch_seconds, self.backoff = kind, watch_seconds, backoff
        self.request_timeout = request_timeout
        self._objects: dict[tuple[str, str], dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._synced = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lists = 0  # how many times it listed (once, unless the watch broke)

    def start(self) -> Informer:
        self._thread = threading.Thread(target=self._run, name=f"informer-{self.kind.plural}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._synced.clear()

    def wait_synced(self, timeout: float) -> bool:
        return self._synced.wait(timeout)

    def snapshot(self) -> list[dict[str, Any]] | None:
        """Every object as last seen, or None when not in sync (the caller lists for itself)."""
        if not self._synced.is_set():
            return None
        with self._lock:
            return list(self._objects.values())

    def wrote(self, obj: Mapping[str, Any]) -> None:
        """The controller's own write (create or update), in the copy before its watch event."""
        with self._lock:
            self._objects[(object_namespace(obj), object_name(obj))] = dict(obj)

    def deleted(self, obj: Mapping[str, Any]) -> None:
        with self._lock:
            self._objects.pop((object_namespace(obj), object_name(obj)), None)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                version = self._list()
                for kind, obj in self._watch(version):
                    key = (object_namespace(obj), object_name(obj))
                    with self._lock:
                        if kind == "DELETED":
                            self._objects.pop(key, None)
                        else:
                            self._objects[key] = obj
            except (client.ApiException, urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
                if isinstance(exc, client.ApiException) and exc.status == 410:
                    log.info("%s watch expired (410): listing again", self.kind.plural)
                    continue
                log.warning(
                    "%s informer: %s: listing again in %.0fs", self.kind.plural, type(exc).__name__, self.backoff
                )
                self._synced.clear()
                self._stop.wait(self.backoff)

    def _list(self) -> str:
        found = as_dict(
            self.api.list_cluster_custom_object(
                self.kind.group, self.kind.version, self.kind.plural, _request_timeout=self.request_timeout
            )
        )
        objects = {(object_namespace(o), object_name(o)): as_dict(o) for o in found.get("items") or []}
        with self._lock:
            self._objects = objects
        self.lists += 1
        self._synced.set()
        return str((found.get("metadata") or {}).get("resourceVersion", ""))

    def _watch(self, version: str) -> Iterator[tuple[str, dict[str, Any]]]:
        watcher = untyped(watch.Watch)()
        function: Callable[..., Any] = self.api.list_cluster_custom_object
        stream = untyped(watcher.stream)(
            function, self.kind.group, self.kind.version, self.kind.plural, resource_version=version,
            timeout_seconds=self.watch_seconds, _request_timeout=self.watch_seconds + 10,
        )  # fmt: skip
        try:
            for event in stream:
                if self._stop.is_set():
                    return
                kind = str(event.get("type"))
                if kind == "ERROR":
                    status = as_dict(event.get("raw_object"))
                    raise client.ApiException(status=int(status.get("code") or 500), reason=str(status.get("reason")))
                if kind in ("ADDED", "MODIFIED", "DELETED"):
                    yield kind, as_dict(event.get("raw_object"))
        finally:
            untyped(watcher.stop)()
