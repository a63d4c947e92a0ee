"""Which pod a uid is: the namespace, name, labels and container names of the pods on this node.

:class:`KubePodDirectory` lists the node's pods (``fieldSelector=spec.nodeName=NODE``) with the
official client and keeps them: a listing is repeated when a process names a pod uid (or a
container id) it does not hold, at most every ``min_refresh`` seconds, and at least every
``max_age`` seconds (labels change, pods go). An API server that refuses or does not answer is
logged in one line and the last listing is kept: the agent goes on, and a pod it cannot name is
counted as unattributed. The only RBAC the agent needs is ``list`` on pods.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Collection, Mapping
from typing import Any, Protocol

import urllib3
from kubernetes import client, config

from controller.edges.gpu.pods import PodRef
from controller.edges.gpu.series import PodInfo
from controller.edges.kube.client import api_configuration, untyped

log = logging.getLogger("canarist.gpu")

#: The status lists whose ``containerID`` (``<runtime>://<id>``) names a container's cgroup.
_STATUS_LISTS = ("containerStatuses", "initContainerStatuses", "ephemeralContainerStatuses")


class PodDirectory(Protocol):
    """The pods the agent can name, by uid."""

    def find(self, refs: Collection[PodRef]) -> Mapping[str, PodInfo]:
        """What is known of the pods ``refs`` name, by uid; an unknown uid is left out. Never raises."""
        ...


def pod_info(pod: Mapping[str, Any]) -> tuple[str, PodInfo] | None:
    """A pod object (as the API server answers it, JSON) as (uid, what the agent needs of it); None when it
    has no uid or name."""
    metadata = pod.get("metadata") or {}
    uid, name = metadata.get("uid"), metadata.get("name")
    if not isinstance(uid, str) or not isinstance(name, str):
        return None
    status = pod.get("status") or {}
    containers = {}
    for key in _STATUS_LISTS:
        for container in status.get(key) or []:
            runtime_id = str(container.get("containerID") or "").partition("://")[2]
            if runtime_id and isinstance(container.get("name"), str):
                containers[runtime_id] = container["name"]
    labels = {str(k): str(v) for k, v in (metadata.get("labels") or {}).items()}
    return uid, PodInfo(str(metadata.get("namespace") or ""), name, labels, containers)


class NoPods:
    """The directory when no API server can be reached at all (no configuration): it knows no pod."""

    def find(self, refs: Collection[PodRef]) -> Mapping[str, PodInfo]:
        return {}


class KubePodDirectory:
    """The pods of ``node_name`` (every node's when None), listed through ``api_client`` and kept."""

    def __init__(
        self,
        api_client: Any,
        node_name: str | None,
        *,
        min_refresh: float = 5.0,
        max_age: float = 60.0,
        timeout: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.core = client.CoreV1Api(api_client)
        self.node_name, self.min_refresh, self.max_age, self.timeout = node_name, min_refresh, max_age, timeout
        self.clock = clock
        self.pods: dict[str, PodInfo] = {}
        self.listed_at: float | None = None  # when the last listing was tried, ok or not
        self.failing: str | None = None  # the last listing's failure, while it lasts

    def find(self, refs: Collection[PodRef]) -> Mapping[str, PodInfo]:
        if self._due(refs):
            self.refresh()
        return {ref.uid: self.pods[ref.uid] for ref in refs if ref.uid in self.pods}

    def _due(self, refs: Collection[PodRef]) -> bool:
        if self.listed_at is None:
            return True
        age = self.clock() - self.listed_at
        return age >= self.max_age or (age >= self.min_refresh and any(not self._knows(ref) for ref in refs))

    def _knows(self, ref: PodRef) -> bool:
        pod = self.pods.get(ref.uid)
        return pod is not None and (ref.container_id is None or ref.container_id in pod.containers)

    def refresh(self) -> None:
        """List the node's pods again; on failure keep the last listing and say so once."""
        self.listed_at = self.clock()
        selector = f"spec.nodeName={self.node_name}" if self.node_name else None
        try:
            answer = untyped(self.core.list_pod_for_all_namespaces)(
                field_selector=selector, _preload_content=False, _request_timeout=self.timeout
            )
            items = json.loads(answer.data).get("items") or []
        except client.ApiException as exc:
            self._failed(f"{exc.status} {_message(exc)}")
            return
        except (urllib3.exceptions.HTTPError, OSError, ValueError, AttributeError) as exc:
            self._failed(f"{type(exc).__name__}: {exc}")
            return
        self.pods = dict(found for item in items if isinstance(item, dict) and (found := pod_info(item)))
        if self.failing is not None:
            log.info("gpu-agent: listing this node's pods works again (%d pods)", len(self.pods))
            self.failing = None

    def _failed(self, reason: str) -> None:
        line = " ".join(reason.split())[:300]  # one line, however the server worded it
        if line != self.failing:
            known = f"keeping the {len(self.pods)} pods listed before" if self.pods else "no pod known yet"
            log.warning("gpu-agent: cannot list this node's pods (%s); %s, others count as unattributed", line, known)
        self.failing = line


def connect(kubeconfig: str | None, context: str | None, node_name: str | None) -> PodDirectory:
    """The directory of this node's pods: in a pod, through its service account; else through the kubeconfig.
    With no usable configuration, one line is logged and no pod is known (the agent still exports)."""
    try:
        configuration = api_configuration(kubeconfig, context)
    except (config.ConfigException, OSError, ValueError, TypeError) as exc:
        log.warning("gpu-agent: no Kubernetes API (%s): every GPU process counts as unattributed", _one_line(exc))
        return NoPods()
    if not node_name:
        log.warning("gpu-agent: NODE_NAME is not set: listing the pods of every node")
    return KubePodDirectory(client.ApiClient(configuration), node_name)


def _message(exc: client.ApiException) -> str:
    """The API server's own words (its Status message: who may not list what), else the HTTP reason."""
    try:
        message = json.loads(exc.body or "{}").get("message")
    except (ValueError, AttributeError):
        message = None
    return str(message or exc.reason or "")


def _one_line(exc: Exception) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
