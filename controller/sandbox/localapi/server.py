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
  metadata.namespace, and a pod's spec.nodeName and status.phase), replace (409 Conflict on a stale
  resourceVersion; custom resources need one, built-ins may update unconditionally), merge-patch,
  strategic-merge-patch of a built-in kind (applied as a merge patch: lists are replaced, not merged by key) and
  JSON-patch, delete (preconditions, finalizers set deletionTimestamp, ownerReference garbage
  collection in the background style, or Orphan);
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
are delayed), :attr:`LocalApiServer.request_filter` lets a fault schedule answer any request (see
:class:`~controller.sandbox.localapi.calls.Injection`), :attr:`LocalApiServer.write_observer` sees
every accepted write, :meth:`LocalApiServer.seed` puts objects in directly (status included), and
``istio_status=True`` plays istiod writing the ``Reconciled`` condition after each Istio write (late,
when :attr:`LocalApiServer.istio_report_due` defers it).

- what kubectl asks first and prints (:mod:`controller.sandbox.localapi.discovery`): ``/version``,
  ``/api``, ``/apis`` and each group version's resources (short names, categories, verbs), and
  ``meta.k8s.io/v1`` Tables (the CRD's printer columns) for a get or a watch that asks for one;
  a strategic merge patch of a custom resource is refused (415) as the real server refuses it;
- namespaces: created as objects, or there because an object is or was in one (Active);
- watch bookmarks: with ``allowWatchBookmarks=true``, a BOOKMARK event every
  :attr:`LocalApiServer.bookmark_interval` seconds of quiet, carrying the resourceVersion seen;
- the OpenAPI v3 documents kubectl reads: ModelRollout's schema from its CRD (``kubectl explain``)
  and PATCH operations that take ``fieldValidation``, so kubectl leaves validation to the server:
  with ``?fieldValidation=Strict`` a ModelRollout field its CRD does not declare is refused (400,
  "strict decoding error: unknown field ...") as the API server refuses it.

Not supported: admission (an object in a namespace never created is accepted), schema validation
other than unknown ModelRollout fields under ``Strict`` (and no pruning of unknown fields without
it), protobuf, defaulting, server-side apply, pagination (``limit``/``continue``), dry run,
collection deletes, foreground deletion (treated as background), label-selector transitions in
watches (events are filtered on the object's state in the event), authorization.

Here: :class:`LocalApiServer` (its state, the test hooks, serving, dispatching a request). Beside
it in :mod:`controller.sandbox.localapi`: ``store`` (the object semantics and the watch),
``handler`` (HTTP), ``resources`` (the resource table and routes), ``calls`` (the request
records) and ``documents`` (patches, selectors, errors: pure functions over dicts).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

from controller.sandbox.localapi import discovery
from controller.sandbox.localapi.calls import ANONYMOUS, Caller, Fault, Request, RequestFilter, WriteObserver
from controller.sandbox.localapi.documents import ApiError, clone, field_matcher, label_matcher, selected
from controller.sandbox.localapi.handler import RequestHandler
from controller.sandbox.localapi.resources import RESOURCES, Key, Route, now
from controller.sandbox.localapi.store import Objects, ObjectStore


@dataclass
class LocalApiServer(ObjectStore):
    """The API server's state and semantics; :meth:`start` serves it on a free loopback port."""

    istio_status: bool = False
    #: istiod slow to report (the chaos soak): for an Istio write, the moment its Reconciled report is
    #: due (on the caller's clock; see :meth:`report_istio`), or None for at once. None: always at once.
    istio_report_due: Callable[[Key], float | None] | None = None
    istio_pending: list[tuple[float, Key, int]] = field(default_factory=list)
    #: Bearer tokens and the user each one authenticates (the API server's static token file).
    #: Empty: no token authenticator (credentials are ignored; every request is anonymous).
    tokens: dict[str, str] = field(default_factory=dict)
    objects: Objects = field(default_factory=Objects)
    log: list[Request] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    #: A fault schedule consulted for every request (controller.sandbox.chaos); None: no such faults.
    request_filter: RequestFilter | None = None
    #: Sees every write the store accepts (controller.sandbox.chaos's invariants); None: nobody does.
    write_observer: WriteObserver | None = None
    #: Who made the request being served, set while ``cond`` is held, so that a write observer can
    #: tell which client wrote (garbage collection included); None outside a request (:meth:`seed`).
    writer: Caller | None = None
    resource_version: int = 0
    compacted: int = 0
    history: list[tuple[int, str, Key, dict[str, Any]]] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=lambda: threading.Condition(threading.RLock()))
    stopping: bool = False
    bookmark_interval: float = 1.0
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
        stored = clone(obj)
        metadata = stored.setdefault("metadata", {})
        metadata.setdefault("namespace", "default")
        metadata.setdefault("uid", str(uuid.uuid4()))
        metadata.setdefault("creationTimestamp", now())
        metadata.setdefault("generation", 1)
        with self.cond:
            key = (group, resource.plural, metadata["namespace"], metadata["name"])
            return clone(self._commit(key, stored, "MODIFIED" if key in self.objects else "ADDED"))

    def get(self, group: str, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        """The stored object, or None (a copy: changing it changes nothing)."""
        with self.cond:
            found = self.objects.get((group, plural, namespace, name))
            return clone(found) if found is not None else None

    def compact(self) -> None:
        """Forget history: watches from an older resourceVersion get 410 Expired."""
        with self.cond:
            self.compacted = self.resource_version
            self.history.clear()

    # --- serving ---

    def start(self) -> LocalApiServer:
        http = ThreadingHTTPServer(("127.0.0.1", 0), RequestHandler)
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

    def write_kubeconfig(self, path: Path, *, token: str | None = None, namespace: str = "default") -> Path:
        """A kubeconfig at ``path`` for this server (kubectl, ``canarist``, a controller process), its one
        context in ``namespace``, authenticating with ``token`` (None: anonymous)."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "local", "cluster": {"server": self.url}}],
            "users": [{"name": "user", "user": {"token": token} if token else {}}],
            "contexts": [{"name": "local", "context": {"cluster": "local", "user": "user", "namespace": namespace}}],
            "current-context": "local",
        }
        path.write_text(yaml.safe_dump(config))
        return path

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
        accept: str = "",
    ) -> tuple[int, Any]:
        caller = caller or Caller()
        if method == "GET" and (found := self._discovery(path.rstrip("/"))) is not None:
            return 200, found
        if path.rstrip("/") == "/apis/authentication.k8s.io/v1/selfsubjectreviews":
            if method != "POST":
                raise ApiError(405, f"{method} is not supported on {path}")
            return 201, self._self_subject_review(body, caller)
        route = self.route(path)
        with self.cond:
            self.writer = caller
            try:
                if method == "GET" and route.resource.plural == "namespaces" and not route.resource.group:
                    return 200, self._namespaces(route, query, table=discovery.wants_table(accept))
                if method == "GET" and discovery.wants_table(accept):
                    shown = [self._existing(route)] if route.name else self._list(route, query)["items"]
                    return 200, discovery.table(route.resource, shown, resource_version=str(self.resource_version))
                if method == "GET":
                    return 200, self._out(route, self._existing(route)) if route.name else self._list(route, query)
                if method == "PATCH" and route.name:  # the object as the patch leaves it: validated, then written
                    body = self._patched(route, body, content_type)
                if (
                    method in ("POST", "PUT", "PATCH")
                    and route.sub is None
                    and query.get("fieldValidation") == "Strict"
                ):
                    self._strictly_valid(route, body)
                if method == "POST" and not route.name and (route.namespace or not route.resource.namespaced):
                    created = self._create(route, body, caller.manager)
                    self._istiod(route, created)
                    return 201, self._out(route, created)
                if method in ("PUT", "PATCH") and route.name:
                    unconditional = method == "PATCH" or not route.resource.custom
                    updated = self._update(route, body, unconditional=unconditional, manager=caller.manager)
                    self._istiod(route, updated)
                    return 200, self._out(route, updated)
                if method == "DELETE" and route.name:
                    options = dict(body or {})
                    if "propagationPolicy" in query:
                        options.setdefault("propagationPolicy", query["propagationPolicy"])
                    return 200, self._delete(route, route.key(), options)
            finally:
                self.writer = None
        raise ApiError(405, f"{method} is not supported on {path}")

    def _namespaces(self, route: Route, query: dict[str, str], *, table: bool) -> dict[str, Any]:
        """A namespace, or the list: those created, and those an object is or was in (no admission here
        refuses an object in a namespace never created, so each such namespace exists, Active)."""
        stored = {key[3]: obj for key in self.objects.of_kind("", "namespaces") if (obj := self.objects[key])}
        implied = {key[2] for key in self.objects if key[2]} | {key[2] for *_, key, _ in self.history if key[2]}
        implied.add("default")
        for name in sorted(implied - stored.keys()):
            metadata = {
                "name": name,
                "uid": str(uuid.uuid5(uuid.NAMESPACE_URL, name)),
                "resourceVersion": "1",
                "creationTimestamp": "1970-01-01T00:00:00Z",
                "labels": {"kubernetes.io/metadata.name": name},
            }
            stored[name] = {"metadata": metadata, "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}}
        if route.name is not None:
            if route.name not in stored:
                raise ApiError(404, f"{route.what()} not found", details={"name": route.name, "kind": "namespaces"})
            shown = [stored[route.name]]
        else:
            labels = label_matcher(query.get("labelSelector", ""))
            fields = field_matcher(query.get("fieldSelector", ""), "namespaces")
            shown = [stored[n] for n in sorted(stored) if selected(stored[n], labels, fields)]
        if table:
            return discovery.table(route.resource, shown, resource_version=str(self.resource_version))
        if route.name is not None:
            return self._out(route, shown[0])
        items = [self._out(route, obj) for obj in shown]
        listed = {"resourceVersion": str(self.resource_version)}
        return {"apiVersion": "v1", "kind": "NamespaceList", "metadata": listed, "items": items}

    @staticmethod
    def _strictly_valid(route: Route, obj: Any) -> None:
        """Refuse what the kind's schema does not declare, as ``?fieldValidation=Strict`` has the API server do."""
        unknown = discovery.unknown_fields(route.resource, obj) if isinstance(obj, dict) else []
        if unknown:
            kind, version = route.resource.kind, route.version
            fields = ", ".join(f'unknown field "{path}"' for path in unknown)
            raise ApiError(
                400, f'{kind} in version "{version}" cannot be handled as a {kind}: strict decoding error: {fields}'
            )

    def _discovery(self, path: str) -> dict[str, Any] | None:
        """What ``path`` answers if it is a discovery path (``/version``, ``/api``, ``/apis``, a group
        version's resources), else None."""
        if path == "/version":
            return dict(discovery.VERSION)
        if path == "/api":
            return discovery.core_versions(self.url.removeprefix("http://"))
        if path == "/apis":
            return discovery.groups()
        if path == "/openapi/v3":
            return discovery.openapi_paths()
        if path.startswith("/openapi/v3/"):
            document = discovery.openapi_document(path.removeprefix("/openapi/v3/"))
            if document is None:
                raise ApiError(404, "the server could not find the requested resource")
            return document
        parts = path.split("/")[1:]
        if parts == ["api", "v1"]:
            return discovery.resources("", "v1")
        if len(parts) == 3 and parts[0] == "apis":
            found = discovery.resources(parts[1], parts[2])
            if found is None:
                raise ApiError(404, "the server could not find the requested resource")
            return found
        return None

    @staticmethod
    def _self_subject_review(body: Any, caller: Caller) -> dict[str, Any]:
        """authentication.k8s.io/v1 SelfSubjectReview: who the server authenticated this request as."""
        if not isinstance(body, dict) or body.get("kind", "SelfSubjectReview") != "SelfSubjectReview":
            raise ApiError(400, "the body of the request must be a SelfSubjectReview")
        info = {"username": caller.user, "groups": caller.groups}
        review = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
        return {**review, "metadata": {"creationTimestamp": now()}, "status": {"userInfo": info}}


@contextmanager
def local_api_server(*, istio_status: bool = False) -> Iterator[LocalApiServer]:
    """Start a fake API server on a free loopback port; its ``api_client`` talks to it."""
    server = LocalApiServer(istio_status=istio_status).start()
    try:
        yield server
    finally:
        server.stop()
