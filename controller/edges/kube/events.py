"""Events recorded on a rollout (events.k8s.io/v1, core/v1 where that is not served), its pods'
readiness, and the Secret keys its notification sinks name (controller/edges/notify)."""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Mapping
from typing import Any

from kubernetes import client

from controller.api.model import API_VERSION, KIND
from controller.api.names import REPORTING_CONTROLLER
from controller.api.text import printable
from controller.edges.kube.client import KubeClient, as_dict, untyped
from controller.edges.kube.objects import object_name
from controller.engine.ports import NotFoundError

log = logging.getLogger("canarist.kube")


class EventsAndPods(KubeClient):
    """The Event and pod methods of :class:`controller.engine.ports.Cluster`."""

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
            log.warning("could not record event %s on %s: %s", reason, object_name(owner), exc)

    def read_secret(self, namespace: str, name: str, key: str) -> str:
        """The text of ``key`` in Secret ``namespace/name`` (a notification sink's URL); NotFoundError if
        either is missing. Needs ``get`` on that namespace's Secrets (istio/rbac-notify.yaml): the
        default install grants none. The value is never logged nor put in an error."""
        import base64
        import binascii

        where = f"secret {namespace}/{name}"
        found = self._call(f"get {where}", self.core.read_namespaced_secret, name, namespace, _request_timeout=5.0)
        data = getattr(found, "data", None) or {}
        if key not in data:
            raise NotFoundError(f"{where}: no key {key!r}")
        try:
            return base64.b64decode(data[key], validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise NotFoundError(f"{where}: key {key!r} is not UTF-8 text") from None

    def pods_ready(self, namespace: str, labels: Mapping[str, str]) -> tuple[int, int]:
        """(ready, total) pods matching ``labels``; finished and terminating pods are not counted."""
        selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        found = self._call(
            f"list pods in {namespace}", self.core.list_namespaced_pod, namespace, label_selector=selector
        )
        ready = total = 0
        for pod in as_dict(untyped(self.api_client.sanitize_for_serialization)(found)).get("items") or []:
            status = pod.get("status") or {}
            if (pod.get("metadata") or {}).get("deletionTimestamp") or status.get("phase") in ("Succeeded", "Failed"):
                continue
            total += 1
            ready += any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
        return ready, total
