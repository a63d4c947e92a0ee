"""The ModelRollout custom resources on the API server: read, list, watch, create or update, status, marks.

What the manager and the CLI do to the rollouts themselves (not to the routes they steer): the status
replaced as a whole, commands and finalizers set by merge patches that compare-and-swap.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import urllib3
from kubernetes import client, watch

from controller.api.model import API_VERSION, GROUP, KIND, PLURAL, VERSION
from controller.api.names import FINALIZER
from controller.edges.kube.client import ROLLOUTS, KubeClient, as_dict, translate, untyped
from controller.edges.kube.objects import annotations_of, labels_of
from controller.engine.ports import ClusterUnavailableError, ConflictError, NotFoundError, WatchEvent
from controller.traffic.adopt import normalise


class Rollouts(KubeClient):
    """The rollout methods of :class:`controller.engine.ports.Cluster`."""

    def list_rollouts(self, namespace: str | None) -> tuple[list[dict[str, Any]], str]:
        return self._list(ROLLOUTS, namespace)

    def watch_rollouts(
        self, namespace: str | None, resource_version: str, timeout_seconds: int
    ) -> Iterator[WatchEvent]:
        watcher = untyped(watch.Watch)()
        if namespace:
            function: Callable[..., Any] = self.custom.list_namespaced_custom_object
            args: tuple[str, ...] = (GROUP, VERSION, namespace, PLURAL)
        else:
            function, args = self.custom.list_cluster_custom_object, (GROUP, VERSION, PLURAL)
        options = {"resource_version": resource_version, "timeout_seconds": timeout_seconds}
        stream = untyped(watcher.stream)(function, *args, _request_timeout=timeout_seconds + 10, **options)
        try:
            for event in stream:
                if event.get("type") in ("ADDED", "MODIFIED", "DELETED"):
                    yield WatchEvent(str(event["type"]), as_dict(event.get("raw_object")))
        except client.ApiException as exc:
            raise translate(exc, "watch rollouts") from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise ClusterUnavailableError(f"watch rollouts: {type(exc).__name__}: {exc}") from None
        finally:
            untyped(watcher.stop)()

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
            wanted["metadata"]["labels"] = {**labels_of(current), **labels}
            wanted["metadata"]["annotations"] = {**annotations_of(current), **annotations}
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
        body = {"apiVersion": API_VERSION, "kind": KIND, "metadata": metadata, "status": dict(status)}
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
        return as_dict(self._call(what, self.custom.patch_namespaced_custom_object, *where, patch, **options))

    def set_finalizer(self, namespace: str, name: str, *, present: bool, resource_version: str) -> dict[str, Any]:
        current = self.get_rollout(namespace, name)
        finalizers = [f for f in (current.get("metadata") or {}).get("finalizers") or [] if f != FINALIZER]
        if present:
            finalizers.append(FINALIZER)
        # A merge patch replaces the whole list; the resourceVersion makes it a compare-and-swap.
        patch = {"metadata": {"finalizers": finalizers, "resourceVersion": resource_version}}
        where = (GROUP, VERSION, namespace, PLURAL, name)
        what = f"set finalizer on rollout {namespace}/{name}"
        return as_dict(self._call(what, self.custom.patch_namespaced_custom_object, *where, patch))
