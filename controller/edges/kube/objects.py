"""The marks canarist reads and writes on the objects it manages: names, labels, annotations, ownership.

Shared by the modules of the Kubernetes edge (transport, routes, adoption, rollouts); not exported by
the package: they read the raw objects the edge handles, nothing else needs them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from controller.api.names import (
    ADOPTED_LABEL,
    MANAGED_BY,
    MANAGED_WEIGHTS_ANNOTATION,
    ORIGINAL_ANNOTATION,
    ROLLOUT_LABEL,
    WEIGHT_ANNOTATION,
)

ISTIO_GROUP = "networking.istio.io"
PLURALS = {"DestinationRule": "destinationrules", "VirtualService": "virtualservices"}
#: The randomised split's metric tag (templates/telemetry.yaml.j2): created and owned, never adopted.
TELEMETRY_GROUP, TELEMETRY_VERSION, TELEMETRY_PLURAL = "telemetry.istio.io", "v1", "telemetries"


def object_namespace(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("namespace", ""))


def object_name(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("name", ""))


def labels_of(obj: Mapping[str, Any]) -> dict[str, str]:
    return dict((obj.get("metadata") or {}).get("labels") or {})


def annotations_of(obj: Mapping[str, Any]) -> dict[str, str]:
    return dict((obj.get("metadata") or {}).get("annotations") or {})


def marks_of(obj: Mapping[str, Any], kept: Mapping[str, Any] | None = None) -> dict[str, str]:
    """canarist's annotations for ``obj`` over ``kept``'s. A DestinationRule has no weights and never
    carries the weight annotation: a step rewrites only the VirtualService (a DestinationRule write
    makes istiod push cluster config to every proxy)."""
    annotations = {**(annotations_of(kept) if kept else {}), **annotations_of(obj), MANAGED_WEIGHTS_ANNOTATION: "true"}
    if obj.get("kind") == "DestinationRule":
        annotations.pop(WEIGHT_ANNOTATION, None)
    return annotations


def created_by(obj: Mapping[str, Any], rollout: str) -> bool:
    labels = labels_of(obj)
    return labels.get(ROLLOUT_LABEL) == rollout and MANAGED_BY.items() <= labels.items()


def adopted_by(obj: Mapping[str, Any], rollout: str) -> bool:
    return labels_of(obj).get(ADOPTED_LABEL) == rollout and ORIGINAL_ANNOTATION in annotations_of(obj)
