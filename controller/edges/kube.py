"""The Kubernetes edge: :class:`controller.engine.ports.Cluster` over the official ``kubernetes`` client.

The only module that imports ``kubernetes``. Errors are translated at the boundary: 409 is
ConflictError, 404 NotFoundError; 5xx, 429, timeouts and refused connections are
ClusterUnavailableError with ``retry_after`` (the server's Retry-After when it sends one); any
other refusal (400, 403, 422) is :class:`RejectedError`, a ClusterUnavailableError with a long
delay and the server's message, so a missing RBAC verb is reported and retried, never a crash.

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
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import functools
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import urllib3
from kubernetes import client, config, watch

from controller.api.model import API_VERSION, GROUP, KIND, PLURAL, VERSION
from controller.api.text import printable
from controller.engine.ports import (
    FINALIZER,
    ORIGINAL_ANNOTATION,
    ApplyResult,
    ClusterUnavailableError,
    Conflict,
    ConflictError,
    NotFoundError,
    RouteConflictError,
    WatchEvent,
)
from controller.traffic.adopt import fqdn, merge_destination_rule, merge_virtual_service, normalise
from controller.traffic.render import MANAGED_BY, ROLLOUT_LABEL, WEIGHT_ANNOTATION
from controller.traffic.tenancy import istio_name, overlaps

log = logging.getLogger("canarist.kube")
T = TypeVar("T")

ISTIO_GROUP = "networking.istio.io"
PLURALS = {"DestinationRule": "destinationrules", "VirtualService": "virtualservices"}
#: The randomised split's metric tag (templates/telemetry.yaml.j2): created and owned, never adopted.
TELEMETRY_GROUP, TELEMETRY_VERSION, TELEMETRY_PLURAL = "telemetry.istio.io", "v1", "telemetries"
MANAGED_WEIGHTS_ANNOTATION = "canarist.io/managed-weights"
ADOPTED_LABEL = "canarist.io/adopted-by"
REPORTING_CONTROLLER = "canarist.io/controller"
Writes = list[tuple[str, str, str]]


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


# --- pure helpers: normalising, hosts, adoption -----------------------------------------------


def _namespace(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("namespace", ""))


def _host_of(desired: Mapping[str, Any]) -> str:
    spec = desired.get("spec") or {}
    host = spec.get("host", "") if desired.get("kind") == "DestinationRule" else (spec.get("hosts") or [""])[0]
    return fqdn(str(host), _namespace(desired))


def _serves(obj: Mapping[str, Any], host: str) -> bool:
    """Whether ``obj`` (a DestinationRule or VirtualService) is for ``host``."""
    spec = obj.get("spec") or {}
    hosts = spec.get("hosts") or [] if obj.get("kind") == "VirtualService" else [spec.get("host", "")]
    return host in {fqdn(str(h), _namespace(obj)) for h in hosts}


def _hosts_of(obj: Mapping[str, Any]) -> list[str]:
    """The hosts an Istio object names: a VirtualService's ``hosts``, a DestinationRule's ``host``."""
    spec = obj.get("spec") or {}
    hosts = spec.get("hosts") or [] if obj.get("kind") == "VirtualService" else [spec.get("host") or ""]
    return [str(h) for h in hosts if h]


def _labels(obj: Mapping[str, Any]) -> dict[str, str]:
    return dict((obj.get("metadata") or {}).get("labels") or {})


def _annotations(obj: Mapping[str, Any]) -> dict[str, str]:
    return dict((obj.get("metadata") or {}).get("annotations") or {})


def _ours(obj: Mapping[str, Any], kept: Mapping[str, Any] | None = None) -> dict[str, str]:
    """canarist's annotations for ``obj`` over ``kept``'s. A DestinationRule has no weights and never
    carries the weight annotation: a step rewrites only the VirtualService (a DestinationRule write
    makes istiod push cluster config to every proxy)."""
    annotations = {**(_annotations(kept) if kept else {}), **_annotations(obj), MANAGED_WEIGHTS_ANNOTATION: "true"}
    if obj.get("kind") == "DestinationRule":
        annotations.pop(WEIGHT_ANNOTATION, None)
    return annotations


def _gateways(obj: Mapping[str, Any]) -> set[str]:
    """The proxies a VirtualService applies to: ``mesh`` (the default) or ``namespace/gateway``."""
    names = (obj.get("spec") or {}).get("gateways") or ["mesh"]
    home = _namespace(obj)
    return {str(g) if str(g) == "mesh" or "/" in str(g) else f"{home}/{g}" for g in names}


def _host_of_rollout(objects: Sequence[Mapping[str, Any]]) -> str:
    """The host the rendered DestinationRule is for (what a conflict is about)."""
    return next((str((o.get("spec") or {}).get("host")) for o in objects if o.get("kind") == "DestinationRule"), "")


def _created_by(obj: Mapping[str, Any], rollout: str) -> bool:
    labels = _labels(obj)
    return labels.get(ROLLOUT_LABEL) == rollout and MANAGED_BY.items() <= labels.items()


def _adopted_by(obj: Mapping[str, Any], rollout: str) -> bool:
    return _labels(obj).get(ADOPTED_LABEL) == rollout and ORIGINAL_ANNOTATION in _annotations(obj)


def _canarists(obj: Mapping[str, Any]) -> str | None:
    """The rollout that manages ``obj`` (created or adopted), or None for the user's own object."""
    labels = _labels(obj)
    if ADOPTED_LABEL in labels:
        return labels[ADOPTED_LABEL]
    return labels.get(ROLLOUT_LABEL) if MANAGED_BY.items() <= labels.items() else None


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


def _name(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("name", ""))


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


def _untyped(function: Any) -> Callable[..., Any]:
    """A function of the client without annotations, as a callable mypy accepts."""
    return cast(Callable[..., Any], function)


def _as_dict(value: object) -> dict[str, Any]:
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


@dataclass(frozen=True)
class _Written:
    """An object this call wrote, at the generation Istio must take up."""

    kind: Kind
    namespace: str
    name: str
    generation: int


def _written(kind: Kind, obj: Mapping[str, Any]) -> _Written:
    return _Written(kind, _namespace(obj), _name(obj), int((obj.get("metadata") or {}).get("generation") or 1))


def context_namespace(kubeconfig: str | None, context: str | None) -> str:
    """The namespace set on the kubeconfig context (``context``, else the current one), else "default"."""
    contexts, current = _untyped(config.list_kube_config_contexts)(config_file=kubeconfig)
    chosen = next((c for c in contexts if c.get("name") == context), None) if context else current
    return str(((chosen or {}).get("context") or {}).get("namespace") or "default")


# --- the edge ---------------------------------------------------------------------------------


class KubeCluster:
    """The :class:`controller.engine.ports.Cluster` protocol on a real (or fake) API server."""

    istio_version = "v1"

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

    @classmethod
    def from_settings(
        cls, kubeconfig: str | None = None, context: str | None = None, *, propagation_delay: float = 2.0
    ) -> KubeCluster:
        """In a pod, with no kubeconfig or context asked for: the service account; else the kubeconfig
        (``kubeconfig``, else ``$KUBECONFIG``, else ``~/.kube/config``) at ``context``."""
        configuration = client.Configuration()
        configuration.retries = retry_policy()
        namespace = "default"
        if kubeconfig is None and context is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
            _untyped(config.load_incluster_config)(client_configuration=configuration)
        else:
            load = _untyped(config.load_kube_config)
            load(config_file=kubeconfig, context=context, client_configuration=configuration)
            namespace = context_namespace(kubeconfig, context)
        cluster = cls(client.ApiClient(configuration), propagation_delay=propagation_delay)
        cluster.default_namespace = namespace
        return cluster

    # --- transport: every call goes through _call, which translates errors ---

    def _call(self, what: str, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        kwargs.setdefault("_request_timeout", self.request_timeout)
        try:
            return fn(*args, **kwargs)
        except client.ApiException as exc:
            raise translate(exc, what) from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise ClusterUnavailableError(f"{what}: {type(exc).__name__}: {exc}") from None

    def _get(self, kind: Kind, namespace: str, name: str) -> dict[str, Any]:
        where = (kind.group, kind.version, namespace, kind.plural, name)
        return _as_dict(
            self._call(f"get {kind.plural} {namespace}/{name}", self.custom.get_namespaced_custom_object, *where)
        )

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
        listing = _as_dict(found)
        items = [_as_dict(item) for item in listing.get("items") or []]
        return items, str((listing.get("metadata") or {}).get("resourceVersion", ""))

    def _create(self, kind: Kind, namespace: str, body: Mapping[str, Any]) -> dict[str, Any]:
        where = (kind.group, kind.version, namespace, kind.plural)
        what = f"create {kind.plural} {namespace}/{_name(body)}"
        return _as_dict(self._call(what, self.custom.create_namespaced_custom_object, *where, dict(body)))

    def _replace(self, kind: Kind, body: Mapping[str, Any], *, status: bool = False) -> dict[str, Any]:
        namespace, name = _namespace(body), _name(body)
        where = (kind.group, kind.version, namespace, kind.plural, name)
        method = (
            self.custom.replace_namespaced_custom_object_status
            if status
            else self.custom.replace_namespaced_custom_object
        )
        return _as_dict(self._call(f"update {kind.plural} {namespace}/{name}", method, *where, dict(body)))

    # --- rollouts ---

    def list_rollouts(self, namespace: str | None) -> tuple[list[dict[str, Any]], str]:
        return self._list(ROLLOUTS, namespace)

    def watch_rollouts(
        self, namespace: str | None, resource_version: str, timeout_seconds: int
    ) -> Iterator[WatchEvent]:
        watcher = _untyped(watch.Watch)()
        if namespace:
            function: Callable[..., Any] = self.custom.list_namespaced_custom_object
            args: tuple[str, ...] = (GROUP, VERSION, namespace, PLURAL)
        else:
            function, args = self.custom.list_cluster_custom_object, (GROUP, VERSION, PLURAL)
        options = {"resource_version": resource_version, "timeout_seconds": timeout_seconds}
        stream = _untyped(watcher.stream)(function, *args, _request_timeout=timeout_seconds + 10, **options)
        try:
            for event in stream:
                if event.get("type") in ("ADDED", "MODIFIED", "DELETED"):
                    yield WatchEvent(str(event["type"]), _as_dict(event.get("raw_object")))
        except client.ApiException as exc:
            raise translate(exc, "watch rollouts") from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise ClusterUnavailableError(f"watch rollouts: {type(exc).__name__}: {exc}") from None
        finally:
            _untyped(watcher.stop)()

    def get_rollout(self, namespace: str, name: str) -> dict[str, Any]:
        return self._get(ROLLOUTS, namespace, name)

    def create_or_update_rollout(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Create the rollout, or set its spec and the given labels and annotations (others are kept:
        a pending ``canarist.io/command`` survives a GitOps sync); no write when nothing changes."""
        metadata = body.get("metadata") or {}
        namespace, name = str(metadata.get("namespace") or "default"), str(metadata["name"])
        labels, annotations = dict(metadata.get("labels") or {}), dict(metadata.get("annotations") or {})
        spec = copy.deepcopy(body.get("spec") or {})
        for _ in range(self.conflict_retries):
            try:
                current = self.get_rollout(namespace, name)
            except NotFoundError:
                meta = {"name": name, "namespace": namespace, "labels": labels, "annotations": annotations}
                with contextlib.suppress(ConflictError):  # created meanwhile: read it again
                    fresh = {"apiVersion": API_VERSION, "kind": KIND, "metadata": meta, "spec": spec}
                    return self._create(ROLLOUTS, namespace, normalise(fresh))
                continue
            wanted = {k: copy.deepcopy(v) for k, v in current.items() if k != "status"}
            wanted["spec"] = spec
            wanted["metadata"]["labels"] = {**_labels(current), **labels}
            wanted["metadata"]["annotations"] = {**_annotations(current), **annotations}
            if normalise(wanted) == normalise({k: v for k, v in current.items() if k != "status"}):
                return current
            with contextlib.suppress(ConflictError):
                return self._replace(ROLLOUTS, wanted)
        raise ConflictError(f"rollout {namespace}/{name}: still conflicting after {self.conflict_retries} tries")

    def patch_rollout_status(
        self, namespace: str, name: str, status: Mapping[str, Any], resource_version: str
    ) -> dict[str, Any]:
        """Replace the status subresource by ``status`` (keys left out are removed) if the rollout is
        still at ``resource_version`` (empty: at whatever version it is now)."""
        if not resource_version:
            resource_version = str(self.get_rollout(namespace, name)["metadata"]["resourceVersion"])
        metadata = {"name": name, "namespace": namespace, "resourceVersion": resource_version}
        body = {"apiVersion": API_VERSION, "kind": KIND, "metadata": metadata, "status": copy.deepcopy(dict(status))}
        return self._replace(ROLLOUTS, body, status=True)

    def annotate_rollout(
        self,
        namespace: str,
        name: str,
        annotations: Mapping[str, str | None],
        *,
        resource_version: str = "",
        field_manager: str | None = None,
    ) -> dict[str, Any]:
        metadata: dict[str, Any] = {"annotations": dict(annotations)}  # a merge patch: None removes the key
        if resource_version:  # makes the patch a compare-and-swap
            metadata["resourceVersion"] = resource_version
        where = (GROUP, VERSION, namespace, PLURAL, name)
        what = f"annotate rollout {namespace}/{name}"
        options = {"field_manager": field_manager} if field_manager else {}
        patch = {"metadata": metadata}
        return _as_dict(self._call(what, self.custom.patch_namespaced_custom_object, *where, patch, **options))

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

    def set_finalizer(self, namespace: str, name: str, *, present: bool, resource_version: str) -> dict[str, Any]:
        current = self.get_rollout(namespace, name)
        finalizers = [f for f in (current.get("metadata") or {}).get("finalizers") or [] if f != FINALIZER]
        if present:
            finalizers.append(FINALIZER)
        # A merge patch replaces the whole list; the resourceVersion makes it a compare-and-swap.
        patch = {"metadata": {"finalizers": finalizers, "resourceVersion": resource_version}}
        where = (GROUP, VERSION, namespace, PLURAL, name)
        what = f"set finalizer on rollout {namespace}/{name}"
        return _as_dict(self._call(what, self.custom.patch_namespaced_custom_object, *where, patch))

    # --- routes ---

    def apply_routes(self, owner: Mapping[str, Any], objects: Sequence[Mapping[str, Any]]) -> ApplyResult:
        for desired in objects:
            if _namespace(desired) != _namespace(owner):
                raise RejectedError(
                    f"{desired.get('kind')} {_namespace(desired)}/{_name(desired)}: not in the rollout's namespace "
                    f"{_namespace(owner)!r}: not writing",
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
        wanted = {_name(o) for o in objects if o.get("kind") == "Telemetry"}
        for obj in self._telemetries(owner, needed=bool(wanted)):  # a tag the policy no longer needs
            if _name(obj) not in wanted:
                self._delete(self._telemetry_kind(), obj)
                writes.append(("Telemetry", _name(obj), "delete"))
        return ApplyResult(tuple(writes))

    def _telemetry_kind(self, api_version: str | None = None) -> Kind:
        version = api_version.rpartition("/")[2] if api_version else TELEMETRY_VERSION
        return Kind(TELEMETRY_GROUP, version, TELEMETRY_PLURAL)

    def _telemetries(self, owner: Mapping[str, Any], *, needed: bool = False) -> list[dict[str, Any]]:
        """The Telemetries this rollout created in its namespace.

        Unless one is ``needed``, a refused list (a ClusterRole from before canarist wrote them, or no
        Telemetry CRD in the cluster) means there is none of ours: a rollout without A/B cohorts never
        needs the permission."""
        try:
            found = self._list(self._telemetry_kind(), _namespace(owner))[0]
        except (RejectedError, NotFoundError):
            if needed:
                raise
            return []
        return [o for o in found if _created_by(o, _name(owner))]

    def _converge_owned(self, owner: Mapping[str, Any], desired: Mapping[str, Any], writes: Writes) -> None:
        """Create or update an object only canarist writes; one of the same name it did not create is a conflict."""
        kind = self._telemetry_kind(str(desired.get("apiVersion", "")))
        namespace, name = _namespace(desired), _name(desired)
        for _ in range(self.conflict_retries):
            try:
                current = self._get(kind, namespace, name)
            except NotFoundError:
                current = None
            if current is not None and not _created_by(current, _name(owner)):
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
            name, verb = _name(target), "update"
            if current is None:
                verb = "create"
            elif adopt and not _adopted_by(current, _name(owner)):
                verb = "adopt"  # the first write to the user's object
            try:
                done = (
                    self._create(kind, _namespace(target), target) if verb == "create" else self._replace(kind, target)
                )
            except ConflictError:
                log.info("%s %s/%s changed meanwhile: reading it again", kind_name, _namespace(target), name)
                continue
            writes.append((kind_name, name, verb))
            return _written(kind, done), bool(stale)
        raise ConflictError(f"{kind_name} {_namespace(desired)}/{_name(desired)}: still conflicting after retries")

    def _locate(
        self, owner: Mapping[str, Any], desired: Mapping[str, Any], kind: Kind
    ) -> tuple[dict[str, Any] | None, bool]:
        """The object to bring to ``desired`` and whether it is adopted; (None, False): create it."""
        rollout, namespace, name, host = _name(owner), _namespace(desired), _name(desired), _host_of(desired)
        try:
            current = self._get(kind, namespace, name)
        except NotFoundError:
            candidates = [o for o in self._list(kind, namespace)[0] if _serves(o, host)]
        else:
            if _created_by(current, rollout) or _adopted_by(current, rollout):
                return current, _adopted_by(current, rollout)
            if _canarists(current) is None and _serves(current, host):
                return current, True
            theirs = ", ".join(_hosts_of(current)) or "no host"
            managed = _canarists(current)
            raise RouteConflictError(
                [Conflict(host, str(desired["kind"]), namespace, name, theirs, managed and f"{namespace}/{managed}")]
            )
        mine = [o for o in candidates if _adopted_by(o, rollout)]
        others = [o for o in candidates if _canarists(o) not in (None, rollout)]
        if others and not mine:
            raise RouteConflictError(
                [
                    Conflict(host, str(desired["kind"]), namespace, _name(o), host, f"{namespace}/{_canarists(o)}")
                    for o in sorted(others, key=_name)
                ]
            )
        users = sorted(
            (o for o in candidates if _canarists(o) is None),
            key=lambda o: (o["metadata"].get("creationTimestamp", ""), _name(o)),
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
        """
        rollout, home = _name(owner), _namespace(owner)
        conflicts: list[Conflict] = []
        services = [o for o in objects if o.get("kind") == "VirtualService"]
        for desired in objects:
            if desired.get("kind") == "Telemetry":  # canarist's own name: someone else's object is in the way
                try:
                    current = self._get(self._telemetry_kind(str(desired["apiVersion"])), home, _name(desired))
                except NotFoundError:
                    continue
                if not _created_by(current, rollout):
                    what = "its split tag, not created by this rollout"
                    conflicts.append(Conflict(_host_of_rollout(objects), "Telemetry", home, _name(desired), what))
                continue
            plural = PLURALS.get(str(desired.get("kind")))
            if plural is None:
                continue
            kind = Kind(ISTIO_GROUP, str(desired["apiVersion"]).rpartition("/")[2], plural)
            try:
                self._locate(owner, desired, kind)
            except RouteConflictError as exc:
                conflicts.extend(exc.conflicts)
        if not services:
            return conflicts
        kind = Kind(ISTIO_GROUP, str(services[0]["apiVersion"]).rpartition("/")[2], PLURALS["VirtualService"])
        everywhere = self._list(kind, None)[0]
        ours = [o for o in everywhere if _namespace(o) == home and (_created_by(o, rollout) or _adopted_by(o, rollout))]
        held = {istio_name(h, home) for o in ours for h in _hosts_of(o)}
        for desired in services:
            primary = _host_of(desired)
            for obj in everywhere:
                if any(obj is o for o in ours):
                    continue
                managed = _canarists(obj)
                if _namespace(obj) == home and managed is None and _serves(obj, primary):
                    continue  # the user's object for the host: adopted, not a conflict
                if not _gateways(desired) & _gateways(obj):
                    continue  # bound to other proxies (an ingress gateway's catch-all, say): no request meets both
                by = f"{_namespace(obj)}/{managed}" if managed else None
                for host in (str(h) for h in (desired.get("spec") or {}).get("hosts") or []):
                    if istio_name(host, home) in held:
                        continue
                    other = next((h for h in _hosts_of(obj) if overlaps(host, home, h, _namespace(obj))), None)
                    if other is not None:
                        conflicts.append(Conflict(host, "VirtualService", _namespace(obj), _name(obj), other, by))
        return list(dict.fromkeys(conflicts))

    def _created(self, owner: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any]:
        body = copy.deepcopy(dict(desired))
        body["metadata"]["annotations"] = _ours(desired)
        reference = _owner_reference(owner)
        if reference is not None:
            body["metadata"]["ownerReferences"] = [reference]
        return _as_dict(normalise(body))

    def _owned(self, owner: Mapping[str, Any], desired: Mapping[str, Any], current: dict[str, Any]) -> dict[str, Any]:
        target = {k: copy.deepcopy(v) for k, v in current.items() if k != "status"}
        target["spec"] = copy.deepcopy(desired.get("spec") or {})
        metadata = target["metadata"]
        metadata["labels"] = {**_labels(current), **_labels(desired)}
        metadata["annotations"] = _ours(desired, kept=current)
        reference = _owner_reference(owner)
        if reference is not None:
            kept = [r for r in metadata.get("ownerReferences") or [] if r.get("kind") != KIND]
            metadata["ownerReferences"] = [*kept, reference]
        return target

    def _adopted(self, owner: Mapping[str, Any], desired: Mapping[str, Any], current: dict[str, Any]) -> dict[str, Any]:
        saved = _annotations(current).get(ORIGINAL_ANNOTATION)
        original = json.loads(saved) if saved else copy.deepcopy(current.get("spec") or {})
        ours = desired.get("spec") or {}
        if desired["kind"] == "DestinationRule":
            spec = merge_destination_rule(original, ours)
        else:
            spec = merge_virtual_service(original, ours, _host_of(desired), _namespace(current))
        target = {k: copy.deepcopy(v) for k, v in current.items() if k != "status"}
        target["spec"] = spec
        target["metadata"]["labels"] = {**_labels(current), ADOPTED_LABEL: _name(owner)}
        annotations = _ours(desired, kept=current)
        annotations[ORIGINAL_ANNOTATION] = json.dumps(original, sort_keys=True, separators=(",", ":"))
        target["metadata"]["annotations"] = annotations
        return target

    def release_routes(self, owner: Mapping[str, Any]) -> ApplyResult:
        rollout, namespace = _name(owner), _namespace(owner) or "default"
        writes: Writes = []
        routes_written: list[_Written] = []
        for kind_name in ("VirtualService", "DestinationRule"):  # no route may outlive the subset it uses
            kind = Kind(ISTIO_GROUP, self.istio_version, PLURALS[kind_name])
            if kind_name == "DestinationRule":
                self._settle(routes_written)
            for obj in self._list(kind, namespace)[0]:
                if _created_by(obj, rollout):
                    self._delete(kind, obj)
                    writes.append((kind_name, _name(obj), "delete"))
                elif _adopted_by(obj, rollout):
                    routes_written.append(self._restore(kind, obj))
                    writes.append((kind_name, _name(obj), "restore"))
        for obj in self._telemetries(owner):  # no route sets the split header any more
            self._delete(self._telemetry_kind(), obj)
            writes.append(("Telemetry", _name(obj), "delete"))
        return ApplyResult(tuple(writes))

    def _delete(self, kind: Kind, obj: Mapping[str, Any]) -> None:
        preconditions = client.V1Preconditions(uid=str(obj["metadata"]["uid"]))
        options = client.V1DeleteOptions(propagation_policy="Background", preconditions=preconditions)
        where = (kind.group, kind.version, _namespace(obj), kind.plural, _name(obj))
        with contextlib.suppress(NotFoundError):  # gone already
            self._call(
                f"delete {kind.plural} {_name(obj)}", self.custom.delete_namespaced_custom_object, *where, body=options
            )

    def _restore(self, kind: Kind, current: dict[str, Any]) -> _Written:
        for _ in range(self.conflict_retries):
            target = {k: copy.deepcopy(v) for k, v in current.items() if k != "status"}
            annotations = _annotations(current)
            target["spec"] = json.loads(annotations[ORIGINAL_ANNOTATION])
            for key in (ORIGINAL_ANNOTATION, MANAGED_WEIGHTS_ANNOTATION, WEIGHT_ANNOTATION):
                annotations.pop(key, None)
            labels = {k: v for k, v in _labels(current).items() if k != ADOPTED_LABEL}
            for field, values in (("annotations", annotations), ("labels", labels)):
                target["metadata"][field] = values
                if not values:
                    del target["metadata"][field]
            try:
                done = self._replace(kind, target)
                return _written(kind, done)
            except ConflictError:
                current = self._get(kind, _namespace(current), _name(current))
        raise ConflictError(f"{kind.plural} {_namespace(current)}/{_name(current)}: still conflicting after retries")

    def _settle(self, written: list[_Written]) -> None:
        """Wait until Istio has taken up what this call wrote (once: the list is emptied).

        Polls the objects' ``Reconciled`` condition, for at most :attr:`propagation_delay` seconds:
        without status reporting from istiod, that is the whole delay."""
        pending, written[:] = list(written), []
        deadline = self.clock() + self.propagation_delay
        while pending and self.propagation_delay > 0:
            first = pending[0]
            try:
                status = self._get(first.kind, first.namespace, first.name).get("status") or {}
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

    # --- events and pods ---

    def emit_event(self, owner: Mapping[str, Any], *, reason: str, message: str, warning: bool = False) -> None:
        """Record an events.k8s.io/v1 Event on the rollout (core/v1 where that API is not served).

        Best effort: a failure is logged, never raised. The message carries user and server text: it
        is stored printable (no control character or terminal escape) and bounded."""
        message = printable(message, 1024)
        try:
            metadata = owner.get("metadata") or {}
            namespace, name = str(metadata.get("namespace") or "default"), str(metadata.get("name") or "unknown")
            regarding = client.V1ObjectReference(
                api_version=str(owner.get("apiVersion") or API_VERSION),
                kind=str(owner.get("kind") or KIND),
                name=name,
                namespace=namespace,
                uid=metadata.get("uid"),
                resource_version=metadata.get("resourceVersion"),
            )
            meta = client.V1ObjectMeta(name=f"{name}.{time.time_ns():x}", namespace=namespace)
            now, kind, instance = dt.datetime.now(dt.UTC), "Warning" if warning else "Normal", self.identity[:128]
            event = client.EventsV1Event(
                metadata=meta, event_time=now, reporting_controller=REPORTING_CONTROLLER, reporting_instance=instance,
                action=reason[:128], reason=reason[:128], note=message[:1024], type=kind, regarding=regarding,
            )  # fmt: skip
            try:
                self._call("record event", self.events.create_namespaced_event, namespace, event, _request_timeout=5.0)
            except NotFoundError:  # no events.k8s.io/v1 here: the core API
                legacy = client.CoreV1Event(
                    metadata=meta, involved_object=regarding, reason=reason[:128], message=message[:1024], type=kind,
                    first_timestamp=now, last_timestamp=now, count=1, reporting_component=REPORTING_CONTROLLER,
                    reporting_instance=instance, source=client.V1EventSource(component=REPORTING_CONTROLLER),
                )  # fmt: skip
                self._call("record event", self.core.create_namespaced_event, namespace, legacy, _request_timeout=5.0)
        except Exception as exc:  # best effort by contract: an Event never stops a decision
            log.warning("could not record event %s on %s: %s", reason, _name(owner), exc)

    def pods_ready(self, namespace: str, labels: Mapping[str, str]) -> tuple[int, int]:
        """(ready, total) pods matching ``labels``; finished and terminating pods are not counted."""
        selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        found = self._call(
            f"list pods in {namespace}", self.core.list_namespaced_pod, namespace, label_selector=selector
        )
        ready = total = 0
        for pod in _as_dict(_untyped(self.api_client.sanitize_for_serialization)(found)).get("items") or []:
            status = pod.get("status") or {}
            if (pod.get("metadata") or {}).get("deletionTimestamp") or status.get("phase") in ("Succeeded", "Failed"):
                continue
            total += 1
            ready += any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
        return ready, total
