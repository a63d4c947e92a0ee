"""An embedded local stand-in for the Kubernetes API server, spoken to over HTTP by the official client.

No kube-apiserver can be had where canarist is developed and demonstrated, so the tests and
``canarist demo`` run the controller's real Kubernetes edge against this. It keeps the API
server's semantics where canarist depends on them, so the edge is tested against behaviour, not
against a mock of the client's methods:

- objects get ``uid``, ``creationTimestamp``, ``generation`` (bumped when anything but metadata and
  status changes) and a ``resourceVersion`` from one global counter on every write; a write that
  changes nothing is a no-op (same resourceVersion, no watch event), as in the real server;
- create (201, 409 AlreadyExists), get (404 NotFound), list (the list's resourceVersion, label
  selectors ``k=v k==v k!=v k !k k in (a,b) k notin (a,b)``, fieldSelector on metadata.name and
  metadata.namespace), replace (409 Conflict on a stale resourceVersion; custom resources need one,
  built-ins may update unconditionally), merge-patch, strategic-merge-patch (applied as a merge
  patch: lists are replaced, not merged by key) and JSON-patch, delete (preconditions, finalizers
  set deletionTimestamp, ownerReference garbage collection in the background style, or Orphan);
- the status subresource: writes to ``/status`` change only status, writes to the object keep the
  stored status (and create drops it) for resources that have one;
- watch: ``?watch=true&resourceVersion=N`` streams ADDED/MODIFIED/DELETED since N as JSON lines
  (chunked), ends after ``timeoutSeconds``; no resourceVersion means "current state as ADDED, then
  changes"; a resourceVersion older than the last :meth:`LocalApiServer.compact` gets an ERROR event
  with a 410 Expired Status, as the real server sends it;
- errors are ``kind: Status`` objects with ``reason`` and ``code``;
- ``metadata.managedFields`` for Update operations (create, update, patch; the status subresource
  separately): the writer, named by ``?fieldManager=`` or else its User-Agent up to the first "/",
  takes ownership of the fields it added or changed, which leave every other manager; entries left
  empty are dropped. Lists are atomic (a CRD's default); managedFields a client sends are ignored
  (the real server would take them as the new record);
- authentication: :attr:`LocalApiServer.tokens` maps bearer tokens to users (a static token file);
  an unknown token is 401 on every request, no token (or no tokens configured) is
  ``system:anonymous``; ``POST /apis/authentication.k8s.io/v1/selfsubjectreviews`` answers who the
  caller is, and :class:`Request` records it. Every caller may do everything (no authorization).

For tests and the demo: :attr:`LocalApiServer.log` records every request in order (method, path, body, answer
code), :meth:`LocalApiServer.fail` injects faults (the next N matching requests answer a code and/or
are delayed), :meth:`LocalApiServer.seed` puts objects in directly (status included), and
``istio_status=True`` plays istiod writing the ``Reconciled`` condition after each Istio write.

Not supported: namespaces as objects, admission and schema validation, defaulting, server-side
apply, pagination (``limit``/``continue``), bookmarks, dry run, collection deletes, foreground
deletion (treated as background), label-selector transitions in watches (events are filtered on
the object's state in the event), authorization.
"""

from __future__ import annotations

import contextlib
import copy
import json
import secrets
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from kubernetes import client

from controller.sandbox.localapi.documents import (
    ApiError,
    field_matcher,
    json_patch,
    label_matcher,
    merge_patch,
    selected,
    track_update,
)


@dataclass(frozen=True)
class Resource:
    group: str  # "" for the core group
    plural: str
    kind: str
    versions: tuple[str, ...]
    status: bool = False  # has the status subresource
    custom: bool = False  # a CRD: an update must carry metadata.resourceVersion


RESOURCES = {
    (r.group, r.plural): r
    for r in (
        Resource("canarist.io", "modelrollouts", "ModelRollout", ("v1alpha1",), status=True, custom=True),
        Resource("networking.istio.io", "virtualservices", "VirtualService", ("v1", "v1beta1"), True, True),
        Resource("networking.istio.io", "destinationrules", "DestinationRule", ("v1", "v1beta1"), True, True),
        Resource("telemetry.istio.io", "telemetries", "Telemetry", ("v1", "v1alpha1"), True, True),
        Resource("", "pods", "Pod", ("v1",), status=True),
        Resource("", "events", "Event", ("v1",)),
        Resource("events.k8s.io", "events", "Event", ("v1",)),
        Resource("coordination.k8s.io", "leases", "Lease", ("v1",)),
    )
}
Key = tuple[str, str, str, str]  # group, plural, namespace, name


#: Who a request without credentials is (anonymous authentication is on, as by default).
ANONYMOUS = "system:anonymous"


@dataclass(frozen=True)
class Caller:
    """Who the server authenticated a request as, and the field manager its writes are recorded under."""

    user: str = ANONYMOUS
    manager: str = "unknown"

    @property
    def groups(self) -> list[str]:
        return ["system:unauthenticated"] if self.user == ANONYMOUS else ["system:authenticated"]


@dataclass
class Request:
    """One request as the fake saw it; ``code`` is what it answered."""

    method: str
    path: str
    query: dict[str, str]
    body: Any
    code: int = 0
    user: str = ANONYMOUS  # who the server authenticated the request as


@dataclass
class Fault:
    match: str  # a substring of the request path
    method: str | None
    code: int | None
    times: int
    delay: float
    retry_after: int | None


@dataclass(frozen=True)
class Route:
    resource: Resource
    version: str
    namespace: str
    name: str | None
    sub: str | None

    @property
    def api_version(self) -> str:
        return f"{self.resource.group}/{self.version}" if self.resource.group else self.version

    def key(self, name: str | None = None) -> Key:
        return (self.resource.group, self.resource.plural, self.namespace, name or self.name or "")

    def what(self, name: str | None = None) -> str:
        group = self.resource.group
        return f'{self.resource.plural}{"." + group if group else ""} "{name or self.name}"'


def _now() -> str:
    """Now, to the second, from the same clock as ``time.time()``: ``time.gmtime()`` without an
    argument reads a coarse clock that can lag a few milliseconds behind a second boundary."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time()))


def _content(obj: dict[str, Any]) -> dict[str, Any]:
    """What generation tracks: everything but metadata, status and the type."""
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "apiVersion", "kind")}


# --- the server -------------------------------------------------------------------------------


@dataclass
class LocalApiServer:
    """The API server's state and semantics; :meth:`start` serves it on a free loopback port."""

    istio_status: bool = False
    #: Bearer tokens and the user each one authenticates (the API server's static token file).
    #: Empty: no token authenticator (credentials are ignored; every request is anonymous).
    tokens: dict[str, str] = field(default_factory=dict)
    objects: dict[Key, dict[str, Any]] = field(default_factory=dict)
    log: list[Request] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    resource_version: int = 0
    compacted: int = 0
    history: list[tuple[int, str, Key, dict[str, Any]]] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=lambda: threading.Condition(threading.RLock()))
    stopping: bool = False
    url: str = ""
    _http: ThreadingHTTPServer | None = None
    _api_client: Any = None
    _clients: list[Any] = field(default_factory=list)

    # --- for tests ---

    @property
    def writes(self) -> list[Request]:
        """Every write request in order (faulted ones too: see ``code``)."""
        return [r for r in self.log if r.method != "GET"]

    def fail(
        self,
        match: str,
        code: int | None = 500,
        *,
        times: int = 1,
        method: str | None = None,
        delay: float = 0.0,
        retry_after: int | None = None,
    ) -> None:
        """The next ``times`` requests whose path contains ``match`` (and of ``method``) are delayed
        by ``delay`` seconds, then answered with ``code`` (None: answered normally)."""
        with self.cond:
            self.faults.append(Fault(match, method and method.upper(), code, times, delay, retry_after))

    def seed(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Store ``obj`` as given (status included), filling in the server-set metadata."""
        group = obj["apiVersion"].rpartition("/")[0]
        resource = next(r for r in RESOURCES.values() if r.group == group and r.kind == obj["kind"])
        stored = copy.deepcopy(obj)
        metadata = stored.setdefault("metadata", {})
        metadata.setdefault("namespace", "default")
        metadata.setdefault("uid", str(uuid.uuid4()))
        metadata.setdefault("creationTimestamp", _now())
        metadata.setdefault("generation", 1)
        with self.cond:
            key = (group, resource.plural, metadata["namespace"], metadata["name"])
            return copy.deepcopy(self._commit(key, stored, "MODIFIED" if key in self.objects else "ADDED"))

    def get(self, group: str, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        """The stored object, or None (a copy: changing it changes nothing)."""
        with self.cond:
            found = self.objects.get((group, plural, namespace, name))
            return copy.deepcopy(found) if found is not None else None

    def compact(self) -> None:
        """Forget history: watches from an older resourceVersion get 410 Expired."""
        with self.cond:
            self.compacted = self.resource_version
            self.history.clear()

    # --- serving ---

    def start(self) -> LocalApiServer:
        http = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        http.daemon_threads = True
        http.fake = self  # type: ignore[attr-defined]
        self._http = http
        self.url = f"http://127.0.0.1:{http.server_address[1]}"
        threading.Thread(target=http.serve_forever, args=(0.05,), name="kube-fake", daemon=True).start()
        return self

    @property
    def api_client(self) -> Any:
        """A ``kubernetes.client.ApiClient`` with the default configuration, for this server."""
        if self._api_client is None:
            self._api_client = self.make_client()
        return self._api_client

    def make_client(self, **settings: Any) -> Any:
        """A new ApiClient for this server, with these ``Configuration`` attributes (closed by :meth:`stop`)."""
        configuration = client.Configuration()
        configuration.host = self.url
        for name, value in settings.items():
            setattr(configuration, name, value)
        made = client.ApiClient(configuration)
        self._clients.append(made)
        return made

    def stop(self) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify_all()
        for made in self._clients:
            made.close()
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()

    # --- request handling ---

    def take_fault(self, method: str, path: str) -> Fault | None:
        with self.cond:
            for fault in self.faults:
                if fault.match in path and fault.method in (None, method):
                    fault.times -= 1
                    if fault.times <= 0:
                        self.faults.remove(fault)
                    return fault
        return None

    def record(self, request: Request) -> None:
        with self.cond:
            self.log.append(request)

    def route(self, path: str) -> Route:
        parts = [p for p in path.split("/") if p]
        if parts[:2] == ["api", "v1"]:
            group, version, rest = "", "v1", parts[2:]
        elif len(parts) >= 3 and parts[0] == "apis":
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise ApiError(404, "the server could not find the requested resource")
        namespace = ""
        if len(rest) >= 3 and rest[0] == "namespaces":
            namespace, rest = rest[1], rest[2:]
        resource = RESOURCES.get((group, rest[0])) if rest else None
        if resource is None or version not in resource.versions or len(rest) > 3:
            raise ApiError(404, "the server could not find the requested resource")
        sub = rest[2] if len(rest) == 3 else None
        if sub is not None and (sub != "status" or not resource.status):
            raise ApiError(404, "the server could not find the requested resource")
        return Route(resource, version, namespace, rest[1] if len(rest) > 1 else None, sub)

    def authenticate(self, authorization: str | None, user_agent: str | None, query: dict[str, str]) -> Caller:
        """The caller of a request: a known bearer token's user, else anonymous; an unknown token is
        refused (401) when tokens are configured. The field manager is ``?fieldManager=``, else the
        User-Agent up to its first "/" (as the API server derives it)."""
        manager = query.get("fieldManager") or (user_agent or "").split("/", 1)[0] or "unknown"
        scheme, _, token = (authorization or "").partition(" ")
        if not self.tokens or scheme.lower() != "bearer" or not token.strip():
            return Caller(ANONYMOUS, manager[:128])
        user = self.tokens.get(token.strip())
        if user is None:
            raise ApiError(401, "Unauthorized")
        return Caller(user, manager[:128])

    def handle(
        self,
        method: str,
        path: str,
        query: dict[str, str],
        body: Any,
        content_type: str,
        *,
        caller: Caller | None = None,
    ) -> tuple[int, Any]:
        caller = caller or Caller()
        if path.rstrip("/") == "/apis/authentication.k8s.io/v1/selfsubjectreviews":
            if method != "POST":
                raise ApiError(405, f"{method} is not supported on {path}")
            return 201, self._self_subject_review(body, caller)
        route = self.route(path)
        with self.cond:
            if method == "GET":
                return 200, self._out(route, self._existing(route)) if route.name else self._list(route, query)
            if method == "POST" and not route.name and route.namespace:
                created = self._create(route, body, caller.manager)
                self._istiod(route, created)
                return 201, self._out(route, created)
            if method in ("PUT", "PATCH") and route.name:
                if method == "PATCH":
                    body = self._patched(route, body, content_type)
                unconditional = method == "PATCH" or not route.resource.custom
                updated = self._update(route, body, unconditional=unconditional, manager=caller.manager)
                self._istiod(route, updated)
                return 200, self._out(route, updated)
            if method == "DELETE" and route.name:
                options = dict(body or {})
                if "propagationPolicy" in query:
                    options.setdefault("propagationPolicy", query["propagationPolicy"])
                return 200, self._delete(route, route.key(), options)
        raise ApiError(405, f"{method} is not supported on {path}")

    @staticmethod
    def _self_subject_review(body: Any, caller: Caller) -> dict[str, Any]:
        """authentication.k8s.io/v1 SelfSubjectReview: who the server authenticated this request as."""
        if not isinstance(body, dict) or body.get("kind", "SelfSubjectReview") != "SelfSubjectReview":
            raise ApiError(400, "the body of the request must be a SelfSubjectReview")
        info = {"username": caller.user, "groups": caller.groups}
        review = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
        return {**review, "metadata": {"creationTimestamp": _now()}, "status": {"userInfo": info}}

    def _out(self, route: Route, obj: dict[str, Any]) -> dict[str, Any]:
        return {**copy.deepcopy(obj), "apiVersion": route.api_version, "kind": route.resource.kind}

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
        self.history.append((self.resource_version, kind, key, copy.deepcopy(obj)))
        self.cond.notify_all()
        return obj

    def _list(self, route: Route, query: dict[str, str]) -> dict[str, Any]:
        labels = label_matcher(query.get("labelSelector", ""))
        fields = field_matcher(query.get("fieldSelector", ""))
        items = [
            self._out(route, obj)
            for key, obj in sorted(self.objects.items())
            if key[:2] == route.key()[:2] and route.namespace in ("", key[2]) and selected(obj, labels, fields)
        ]
        listing = {"apiVersion": route.api_version, "kind": f"{route.resource.kind}List", "items": items}
        return {**listing, "metadata": {"resourceVersion": str(self.resource_version)}}

    def _create(self, route: Route, body: Any, manager: str = "unknown") -> dict[str, Any]:
        if not isinstance(body, dict):
            raise ApiError(400, "the body of the request must be an object")
        obj = copy.deepcopy(body)
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
        metadata.update(name=name, namespace=route.namespace, uid=str(uuid.uuid4()), creationTimestamp=_now())
        metadata["generation"] = 1
        obj.update(apiVersion=route.api_version, kind=route.resource.kind)
        if route.resource.status:
            obj.pop("status", None)
        metadata["managedFields"] = self._tracked(route, [], {}, obj, manager)
        return self._commit(key, obj, "ADDED")

    def _patched(self, route: Route, patch: Any, content_type: str) -> dict[str, Any]:
        current = self._out(route, self._existing(route))
        kind = content_type.partition(";")[0].strip()
        if kind == "application/json-patch+json":
            patched = json_patch(current, patch)
        elif kind in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
            patched = merge_patch(current, patch)
        else:
            raise ApiError(
                415,
                f"the body of the request was in an unknown format - accepted media types include: "
                f"application/json-patch+json, application/merge-patch+json ({kind!r})",
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
            merged = copy.deepcopy(old)
            merged.pop("status", None)
            if body.get("status") is not None:
                merged["status"] = copy.deepcopy(body["status"])
        else:
            merged = copy.deepcopy(body)
            meta = merged.setdefault("metadata", {})
            for kept in ("name", "namespace", "uid", "creationTimestamp", "generation", "deletionTimestamp"):
                meta.pop(kept, None)
                if kept in old["metadata"]:
                    meta[kept] = old["metadata"][kept]
            merged.pop("status", None)
            if route.resource.status and "status" in old:
                merged["status"] = copy.deepcopy(old["status"])
            if _content(merged) != _content(old):
                meta["generation"] = old["metadata"].get("generation", 1) + 1
        merged.update(apiVersion=old["apiVersion"], kind=old["kind"])
        merged["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
        merged["metadata"].pop("managedFields", None)  # the server's record: what a client sends is ignored
        if "managedFields" in old["metadata"]:
            merged["metadata"]["managedFields"] = old["metadata"]["managedFields"]
        if merged == old:
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
            now=_now(),
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
                marked = copy.deepcopy(old)
                marked["metadata"]["deletionTimestamp"] = _now()
                marked["metadata"]["generation"] = old["metadata"].get("generation", 1) + 1
                self._commit(key, marked, "MODIFIED")
            return self._out(route, self.objects[key])
        self._remove(key, copy.deepcopy(old), orphan=options.get("propagationPolicy") == "Orphan")
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
                kept = copy.deepcopy(dependent)
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
        """Play istiod's status reporting: mark the new generation Reconciled."""
        if not self.istio_status or route.resource.group != "networking.istio.io":
            return
        generation = obj["metadata"].get("generation", 1)
        if (obj.get("status") or {}).get("observedGeneration") == generation:
            return
        reported = copy.deepcopy(obj)
        condition = {"type": "Reconciled", "status": "True", "lastProbeTime": _now(), "lastTransitionTime": _now()}
        reported["status"] = {"observedGeneration": generation, "conditions": [condition]}
        self._commit(route.key(obj["metadata"]["name"]), reported, "MODIFIED")

    def watch(self, route: Route, query: dict[str, str]) -> Iterator[dict[str, Any]]:
        """The watch stream: events since ``resourceVersion`` until ``timeoutSeconds`` or shutdown."""
        labels = label_matcher(query.get("labelSelector", ""))
        fields = field_matcher(query.get("fieldSelector", ""))
        deadline = time.monotonic() + float(query.get("timeoutSeconds") or 1800)
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
            with self.cond:
                batch = [(k, key, o) for rv, k, key, o in self.history if rv > cursor]
                if not batch:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return
                    self.cond.wait(min(remaining, 0.2))
                    continue
                cursor = self.resource_version
            for kind, key, obj in batch:
                if self._watched(route, key, obj, labels, fields):
                    yield {"type": kind, "object": self._out(route, obj)}

    @staticmethod
    def _watched(route: Route, key: Key, obj: dict[str, Any], labels: Any, fields: dict[str, str]) -> bool:
        same = key[:2] == route.key()[:2] and route.namespace in ("", key[2])
        return same and selected(obj, labels, fields)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # one small answer must not wait for a delayed ACK

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _handle(self) -> None:
        method = self.command
        fake: LocalApiServer = self.server.fake  # type: ignore[attr-defined]
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        request = Request(method, url.path, query, None)
        headers: dict[str, str] = {}
        try:
            try:
                request.body = json.loads(raw) if raw else None
            except ValueError:
                raise ApiError(400, "the body of the request could not be decoded as JSON") from None
            caller = fake.authenticate(self.headers.get("Authorization"), self.headers.get("User-Agent"), query)
            request.user = caller.user
            fault = fake.take_fault(method, url.path)
            if fault is not None:
                time.sleep(fault.delay)
                if fault.retry_after is not None:
                    headers["Retry-After"] = str(fault.retry_after)
                if fault.code is not None:
                    raise ApiError(fault.code, f"injected fault: {fault.code}")
            if method == "GET" and query.get("watch") in ("true", "1"):
                route = fake.route(url.path)
                request.code = 200
                fake.record(request)
                self._stream(fake.watch(route, query))
                return
            content_type = self.headers.get("Content-Type", "")
            code, payload = fake.handle(method, url.path, query, request.body, content_type, caller=caller)
        except ApiError as error:
            code, payload = error.code, error.status()
        request.code = code
        fake.record(request)
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client gave up waiting
            self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle  # noqa: N815  (http.server's names)

    def _stream(self, events: Iterator[dict[str, Any]]) -> None:
        self.close_connection = True
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        # Said, not only done: a client that pooled this connection would send its next request
        # into a socket we are closing (RemoteDisconnected), depending on who is faster.
        self.send_header("Connection", "close")
        self.end_headers()
        try:
            for event in events:
                line = json.dumps(event).encode() + b"\n"
                self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass


@contextmanager
def local_api_server(*, istio_status: bool = False) -> Iterator[LocalApiServer]:
    """Start a fake API server on a free loopback port; its ``api_client`` talks to it."""
    server = LocalApiServer(istio_status=istio_status).start()
    try:
        yield server
    finally:
        server.stop()
