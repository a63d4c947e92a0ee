"""The transport of the Kubernetes edge: the API client, every call through ``_call``, and errors mapped.

The only package that imports ``kubernetes``. Errors are translated at the boundary: 409 is
ConflictError, 404 NotFoundError; 5xx, 429, timeouts and refused connections are
ClusterUnavailableError with ``retry_after`` (the server's Retry-After when it sends one); any
other refusal (400, 403, 422) is :class:`RejectedError`, a ClusterUnavailableError with a long
delay and the server's message, so a missing RBAC verb is reported and retried, never a crash.

:class:`KubeClient` holds the client and the settings every concern of
:class:`controller.edges.kube.cluster.KubeCluster` shares, and the raw reads and writes of custom objects.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, cast

import urllib3
from kubernetes import client, config

from controller.api.model import GROUP, PLURAL, VERSION
from controller.edges.kube.objects import object_name, object_namespace
from controller.engine.ports import ClusterUnavailableError, ConflictError, NotFoundError

T = TypeVar("T")


class RejectedError(ClusterUnavailableError):
    """The API server refused the request (400, 403, 422...): retrying will not help until someone acts."""

    def __init__(self, reason: str, *, code: int, retry_after: float = 60.0) -> None:
        super().__init__(reason, retry_after=retry_after)
        self.code = code


def retry_policy() -> urllib3.Retry:
    """How the client itself retries (``Configuration.retries``; :meth:`KubeCluster.from_settings` sets
    it): a refused connection twice, quickly; never a timed-out read, and never a 5xx or 429 (by
    default urllib3 sleeps out a 503's Retry-After, blocking the controller): those reach the
    reconcile loop as ClusterUnavailableError with their Retry-After, and it retries."""
    return urllib3.Retry(
        total=2, connect=2, read=0, status=0, other=0, backoff_factor=0.2, respect_retry_after_header=False
    )


@dataclass(frozen=True)
class Kind:
    """Where a custom resource lives in the API."""

    group: str
    version: str
    plural: str


ROLLOUTS = Kind(GROUP, VERSION, PLURAL)


def untyped(function: Any) -> Callable[..., Any]:
    """A function of the client without annotations, as a callable mypy accepts."""
    return cast(Callable[..., Any], function)


def api_configuration(kubeconfig: str | None, context: str | None) -> client.Configuration:
    """The client configuration: in a pod, with no kubeconfig or context asked for, its service account;
    else the kubeconfig (``kubeconfig``, else ``$KUBECONFIG``, else ``~/.kube/config``) at ``context``.
    Raises what the kubernetes client raises for a missing or broken configuration."""
    configuration = client.Configuration()
    configuration.retries = retry_policy()
    if kubeconfig is None and context is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        untyped(config.load_incluster_config)(client_configuration=configuration)
    else:
        load = untyped(config.load_kube_config)
        load(config_file=kubeconfig, context=context, client_configuration=configuration)
    return configuration


def as_dict(value: object) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TypeError(f"expected a JSON object from the API server, got {type(value).__name__}")
    return value


def translate(exc: client.ApiException, what: str) -> Exception:
    """The protocol's error for an error answer of the API server."""
    code, message = int(exc.status or 0), str(exc.reason or "")
    with contextlib.suppress(ValueError, AttributeError):
        message = str(json.loads(exc.body or "{}").get("message") or message)
    reason = f"{what}: {code} {message}".strip()
    if code == 409:
        return ConflictError(reason)
    if code == 404:
        return NotFoundError(reason)
    if code == 410:
        return ClusterUnavailableError(f"{reason} (list again)", retry_after=0.0)
    if code == 429 or code >= 500 or code == 0:
        try:
            retry_after = float((exc.headers or {}).get("Retry-After", 5.0))
        except (TypeError, ValueError):
            retry_after = 5.0
        return ClusterUnavailableError(reason, retry_after=retry_after)
    return RejectedError(reason, code=code)


def context_namespace(kubeconfig: str | None, context: str | None) -> str:
    """The namespace set on the kubeconfig context (``context``, else the current one), else "default"."""
    contexts, current = untyped(config.list_kube_config_contexts)(config_file=kubeconfig)
    chosen = next((c for c in contexts if c.get("name") == context), None) if context else current
    return str(((chosen or {}).get("context") or {}).get("namespace") or "default")


class ObjectCache(Protocol):
    """A local copy of one kind in every namespace (:class:`controller.edges.kube.informer.Informer`)."""

    kind: Kind

    def snapshot(self) -> list[dict[str, Any]] | None: ...

    def wrote(self, obj: Mapping[str, Any]) -> None: ...

    def deleted(self, obj: Mapping[str, Any]) -> None: ...


class KubeClient:
    """The API client and the shared settings, with the raw reads and writes every concern goes through."""

    #: A watch-fed copy of the cluster's VirtualServices that the conflict check reads (informer.py);
    #: None: it lists them. The writes below keep it current with the controller's own.
    virtual_services: ObjectCache | None = None

    def __init__(
        self,
        api_client: client.ApiClient,
        *,
        identity: str | None = None,
        propagation_delay: float = 2.0,
        conflict_retries: int = 5,
        request_timeout: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.api_client = api_client
        self.identity = identity or socket.gethostname()
        self.propagation_delay = propagation_delay
        self.conflict_retries = conflict_retries
        self.request_timeout = request_timeout
        self.sleep, self.clock = sleep, clock
        self.custom = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)
        self.events = client.EventsV1Api(api_client)
        #: The namespace a command acts in without -n: the kubeconfig context's, as kubectl does.
        self.default_namespace = "default"
        #: Objects read (and written) inside :meth:`_reads_shared`, by (group, plural, namespace, name).
        self._shared: dict[tuple[str, str, str, str], dict[str, Any]] | None = None

    # --- transport: every call goes through _call, which translates errors ---

    def _call(self, what: str, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        kwargs.setdefault("_request_timeout", self.request_timeout)
        try:
            return fn(*args, **kwargs)
        except client.ApiException as exc:
            raise translate(exc, what) from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise ClusterUnavailableError(f"{what}: {type(exc).__name__}: {exc}") from None

    @contextlib.contextmanager
    def _reads_shared(self) -> Iterator[None]:
        """Inside, an object read once is not read again (the controller's own writes replace it, a
        refused write forgets it): one apply checks and writes on one read of each object, where the
        check and each write read it afresh before. Reads outside are never shared."""
        outer, self._shared = self._shared, self._shared if self._shared is not None else {}
        try:
            yield
        finally:
            self._shared = outer

    def _remember(self, kind: Kind, obj: Mapping[str, Any], *, gone: bool = False) -> None:
        if self._shared is not None:
            key = (kind.group, kind.plural, object_namespace(obj), object_name(obj))
            if gone:
                self._shared.pop(key, None)
            else:
                self._shared[key] = dict(obj)

    def _get(self, kind: Kind, namespace: str, name: str) -> dict[str, Any]:
        if self._shared is not None and (kept := self._shared.get((kind.group, kind.plural, namespace, name))):
            return kept
        return self._read(kind, namespace, name)

    def _read(self, kind: Kind, namespace: str, name: str) -> dict[str, Any]:
        """A GET, never shared: for what others change (a status Istio reports)."""
        where = (kind.group, kind.version, namespace, kind.plural, name)
        found = as_dict(
            self._call(f"get {kind.plural} {namespace}/{name}", self.custom.get_namespaced_custom_object, *where)
        )
        self._remember(kind, found)
        return found

    def _list(self, kind: Kind, namespace: str | None) -> tuple[list[dict[str, Any]], str]:
        if namespace:
            found = self._call(
                f"list {kind.plural}", self.custom.list_namespaced_custom_object,
                kind.group, kind.version, namespace, kind.plural,
            )  # fmt: skip
        else:
            found = self._call(
                f"list {kind.plural}", self.custom.list_cluster_custom_object, kind.group, kind.version, kind.plural
            )
        listing = as_dict(found)
        items = [as_dict(item) for item in listing.get("items") or []]
        return items, str((listing.get("metadata") or {}).get("resourceVersion", ""))

    def _create(self, kind: Kind, namespace: str, body: Mapping[str, Any]) -> dict[str, Any]:
        where = (kind.group, kind.version, namespace, kind.plural)
        what = f"create {kind.plural} {namespace}/{object_name(body)}"
        return self._cached(
            kind, as_dict(self._call(what, self.custom.create_namespaced_custom_object, *where, dict(body)))
        )

    def _cached(self, kind: Kind, written: dict[str, Any]) -> dict[str, Any]:
        self._remember(kind, written)
        cache = self.virtual_services
        if cache is not None and (kind.group, kind.plural) == (cache.kind.group, cache.kind.plural):
            cache.wrote(written)
        return written

    def _replace(self, kind: Kind, body: Mapping[str, Any], *, status: bool = False) -> dict[str, Any]:
        namespace, name = object_namespace(body), object_name(body)
        where = (kind.group, kind.version, namespace, kind.plural, name)
        method = (
            self.custom.replace_namespaced_custom_object_status
            if status
            else self.custom.replace_namespaced_custom_object
        )
        try:
            written = as_dict(self._call(f"update {kind.plural} {namespace}/{name}", method, *where, dict(body)))
        except ConflictError:  # changed meanwhile: the next read must be a fresh one
            self._remember(kind, body, gone=True)
            raise
        return self._cached(kind, written)

    def _delete(self, kind: Kind, obj: Mapping[str, Any]) -> None:
        preconditions = client.V1Preconditions(uid=str(obj["metadata"]["uid"]))
        options = client.V1DeleteOptions(propagation_policy="Background", preconditions=preconditions)
        where = (kind.group, kind.version, object_namespace(obj), kind.plural, object_name(obj))
        self._remember(kind, obj, gone=True)
        with contextlib.suppress(NotFoundError):  # gone already
            self._call(
                f"delete {kind.plural} {object_name(obj)}",
                self.custom.delete_namespaced_custom_object,
                *where,
                body=options,
            )
        cache = self.virtual_services
        if cache is not None and (kind.group, kind.plural) == (cache.kind.group, cache.kind.plural):
            cache.deleted(obj)

    def who_am_i(self) -> tuple[str | None, float | None]:
        """The user name the API server authenticates this client as (a SelfSubjectReview) and the
        server's clock (its Date header); (None, None) where the API is not served or not allowed."""
        import email.utils

        review = client.V1SelfSubjectReview(api_version="authentication.k8s.io/v1", kind="SelfSubjectReview")
        api = client.AuthenticationV1Api(self.api_client)
        try:
            data, _, headers = self._call("who am I", api.create_self_subject_review_with_http_info, review)
        except (NotFoundError, ConflictError, ClusterUnavailableError):  # not served, refused or unreachable
            return None, None
        user = getattr(getattr(data, "status", None), "user_info", None)
        name = getattr(user, "username", None)
        date = (headers or {}).get("Date")
        try:
            server_time = email.utils.parsedate_to_datetime(date).timestamp() if date else None
        except (TypeError, ValueError):
            server_time = None
        return (str(name) if name else None), server_time
