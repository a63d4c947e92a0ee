"""What a client learns about the stand-in before it asks for objects, and the tables it prints. Pure.

kubectl asks ``/version``, ``/api`` and ``/apis``, then each group version's resource list, to map
``kubectl get mr`` to a path; these answer as the API server does (legacy discovery, JSON), with
ModelRollout's short names and categories from its CRD (:func:`controller.api.schema.crd`).
``kubectl get`` asks for a ``meta.k8s.io/v1`` Table: the CRD's printer columns for ModelRollouts
(the API server's CRD table convertor: a ``date`` column as an age, an ``integer`` one as a number,
a missing value as none), Istio's own columns for its kinds, name and age for the others.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from collections.abc import Iterable, Mapping
from typing import Any

from controller.api.schema import crd
from controller.api.times import stored_time
from controller.sandbox.localapi.resources import RESOURCES, Resource

#: The Kubernetes version the stand-in answers as (the API it keeps the semantics of).
VERSION = {
    "major": "1",
    "minor": "32",
    "gitVersion": "v1.32.0-canarist-localapi",
    "gitCommit": "",
    "gitTreeState": "clean",
    "buildDate": "2026-01-01T00:00:00Z",
    "goVersion": "",
    "compiler": "",
    "platform": "linux/amd64",
}
VERBS = ["create", "delete", "get", "list", "patch", "update", "watch"]
PRESERVE = "x-kubernetes-preserve-unknown-fields"
_CRD = crd()
_ISTIO_CATEGORIES = {"networking.istio.io": ["istio-io", "networking-istio-io"], "telemetry.istio.io": ["istio-io"]}
_SHORT_NAMES = {
    ("canarist.io", "modelrollouts"): list(_CRD["spec"]["names"]["shortNames"]),
    ("networking.istio.io", "virtualservices"): ["vs"],
    ("networking.istio.io", "destinationrules"): ["dr"],
    ("", "pods"): ["po"],
    ("", "events"): ["ev"],
    ("events.k8s.io", "events"): ["ev"],
    ("", "namespaces"): ["ns"],
}
_CATEGORIES = {("canarist.io", "modelrollouts"): list(_CRD["spec"]["names"]["categories"]), ("", "pods"): ["all"]}
#: Printer columns after the name: (name, type, JSON path, description), as each kind's CRD has them.
Column = tuple[str, str, str, str]
_AGE: Column = ("Age", "date", ".metadata.creationTimestamp", "")
_COLUMNS: dict[tuple[str, str], list[Column]] = {
    ("canarist.io", "modelrollouts"): [
        (c["name"], c["type"], c["jsonPath"], c.get("description", ""))
        for c in _CRD["spec"]["versions"][0]["additionalPrinterColumns"]
    ],
    ("networking.istio.io", "virtualservices"): [
        ("Gateways", "string", ".spec.gateways", "The names of gateways and sidecars that should apply these routes"),
        ("Hosts", "string", ".spec.hosts", "The destination hosts to which traffic is being sent"),
        _AGE,
    ],
    ("networking.istio.io", "destinationrules"): [
        ("Host", "string", ".spec.host", "The name of a service from the service registry"),
        _AGE,
    ],
}
_NAME_COLUMN = {
    "name": "Name",
    "type": "string",
    "format": "name",
    "description": "Name must be unique within a namespace.",
    "priority": 0,
}


def core_versions(server: str) -> dict[str, Any]:
    """``/api``: the legacy group's versions."""
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server}],
    }


def groups() -> dict[str, Any]:
    """``/apis``: every named group and its versions, the first one preferred."""
    by_group: dict[str, list[str]] = {}
    for resource in RESOURCES.values():
        if resource.group:
            known = by_group.setdefault(resource.group, [])
            known.extend(v for v in resource.versions if v not in known)
    listed = []
    for group, versions in sorted(by_group.items()):
        entries = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
        listed.append({"name": group, "versions": entries, "preferredVersion": entries[0]})
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": listed}


def resources(group: str, version: str) -> dict[str, Any] | None:
    """``/api/v1`` or ``/apis/GROUP/VERSION``: the resources served there, or None (not served)."""
    served = [r for r in RESOURCES.values() if r.group == group and version in r.versions]
    if not served:
        return None
    listed: list[dict[str, Any]] = []
    for resource in served:
        key = (resource.group, resource.plural)
        entry: dict[str, Any] = {
            "name": resource.plural,
            "singularName": resource.kind.lower(),
            "namespaced": resource.namespaced,
            "kind": resource.kind,
            "verbs": VERBS,
        }
        if key in _SHORT_NAMES:
            entry["shortNames"] = _SHORT_NAMES[key]
        categories = _CATEGORIES.get(key) or _ISTIO_CATEGORIES.get(resource.group)
        if categories:
            entry["categories"] = categories
        listed.append(entry)
        if resource.status:
            listed.append(
                {
                    "name": f"{resource.plural}/status",
                    "singularName": "",
                    "namespaced": resource.namespaced,
                    "kind": resource.kind,
                    "verbs": ["get", "patch", "update"],
                }
            )
    group_version = f"{group}/{version}" if group else version
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": listed}


def _group_versions() -> list[tuple[str, str]]:
    """Every (group, version) served, the core group as ("", "v1")."""
    return sorted({(r.group, v) for r in RESOURCES.values() for v in r.versions})


def _gv_path(group: str, version: str) -> str:
    return f"apis/{group}/{version}" if group else f"api/{version}"


#: Changes when what the documents say changes (kubectl caches a group version's document by it).
_OPENAPI_HASH = hashlib.sha256(json.dumps(_CRD, sort_keys=True).encode()).hexdigest()[:16].upper()


def openapi_paths() -> dict[str, Any]:
    """``/openapi/v3``: where each group version's OpenAPI document is (what kubectl's validation reads)."""
    paths = {_gv_path(g, v): {"serverRelativeURL": f"/openapi/v3/{_gv_path(g, v)}?hash={_OPENAPI_HASH}"}
             for g, v in _group_versions()}  # fmt: skip
    return {"paths": paths}


def openapi_document(path: str) -> dict[str, Any] | None:
    """``/openapi/v3/api/v1`` or ``/openapi/v3/apis/GROUP/VERSION``: each kind's schema, found by its
    ``x-kubernetes-group-version-kind``; ModelRollout's is its CRD's (kubectl then refuses an unknown
    field as the API server would), the others take any field (the stand-in keeps no built-in schemas).
    No paths: kubectl then patches a custom resource with a JSON merge patch, as it does a CRD's."""
    found = next(((g, v) for g, v in _group_versions() if _gv_path(g, v) == path.strip("/")), None)
    if found is None:
        return None
    group, version = found
    schemas: dict[str, Any] = {}
    paths: dict[str, Any] = {}
    for resource in RESOURCES.values():
        if resource.group != group or version not in resource.versions:
            continue
        if (group, resource.plural) == ("canarist.io", "modelrollouts"):
            schema = copy.deepcopy(_CRD["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
            schema.setdefault("properties", {})["metadata"] = {"type": "object", PRESERVE: True}
        else:
            schema = {"type": "object", PRESERVE: True}
        gvk = {"group": group, "version": version, "kind": resource.kind}
        schema["x-kubernetes-group-version-kind"] = [gvk]
        prefix = ".".join(reversed(group.split("."))) if group else "io.k8s.api.core"
        schemas[f"{prefix}.{version}.{resource.kind}"] = schema
        # The PATCH operation says the server validates fields (kubectl then sends ?fieldValidation=Strict
        # instead of validating itself) and takes no strategic merge patch for a custom resource.
        where = "/namespaces/{namespace}" if resource.namespaced else ""
        patch = {
            "x-kubernetes-group-version-kind": gvk,
            "parameters": [{"name": "fieldValidation", "in": "query", "schema": {"type": "string"}}],
            "requestBody": {"content": {t: {"schema": {"type": "object"}} for t in patch_types(resource)}},
            "responses": {"200": {"description": "OK"}},
        }
        paths[f"/{path.strip('/')}{where}/{resource.plural}/{{name}}"] = {"patch": patch}
    info = {"title": "Kubernetes", "version": VERSION["gitVersion"]}
    return {"openapi": "3.0.0", "info": info, "paths": paths, "components": {"schemas": schemas}}


def patch_types(resource: Resource) -> tuple[str, ...]:
    """The patch media types the API server takes for ``resource``: no strategic merge for a custom one."""
    accepted = ("application/json-patch+json", "application/merge-patch+json")
    return accepted if resource.custom else (*accepted, "application/strategic-merge-patch+json")


def unknown_fields(resource: Resource, obj: Mapping[str, Any]) -> list[str]:
    """The fields of ``obj`` its kind's schema does not declare (``spec.strategy.stepz``), as the API
    server's strict field validation finds them; none for a kind whose schema the stand-in lacks."""
    if (resource.group, resource.plural) != ("canarist.io", "modelrollouts"):
        return []
    schema = _CRD["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    found: list[str] = []
    _walk({k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata")}, schema, "", found)
    return found


def _walk(value: Any, schema: Mapping[str, Any], where: str, found: list[str]) -> None:
    if schema.get(PRESERVE):
        return
    if isinstance(value, Mapping):
        properties = schema.get("properties")
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            path = f"{where}.{key}" if where else str(key)
            if properties is not None and key in properties:
                _walk(item, properties[key], path, found)
            elif isinstance(extra, Mapping):
                _walk(item, extra, path, found)
            elif properties is not None or extra is False:
                found.append(path)
    elif isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        for index, item in enumerate(value):
            _walk(item, schema["items"], f"{where}[{index}]", found)


def wants_table(accept: str) -> bool:
    """Whether the client asked for a ``meta.k8s.io/v1`` Table (as ``kubectl get`` does)."""
    for part in accept.split(","):
        params = dict(p.strip().partition("=")[::2] for p in part.split(";")[1:])
        if params.get("as") == "Table" and params.get("g") == "meta.k8s.io" and params.get("v") == "v1":
            return True
    return False


def table(resource: Resource, objects: Iterable[Mapping[str, Any]], *, resource_version: str = "") -> dict[str, Any]:
    """The objects as kubectl prints them: a Table of the kind's columns, each row with its metadata."""
    columns = _COLUMNS.get((resource.group, resource.plural), [_AGE])
    definitions = [
        _NAME_COLUMN,
        *({"name": n, "type": t, "format": "", "description": d, "priority": 0} for n, t, _, d in columns),
    ]
    rows = []
    for obj in objects:
        metadata = obj.get("metadata") or {}
        cells = [metadata.get("name", ""), *(_cell(kind, _at(obj, path)) for _, kind, path, _ in columns)]
        partial = {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": metadata}
        rows.append({"cells": cells, "object": partial})
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version},
        "columnDefinitions": definitions,
        "rows": rows,
    }


def _at(obj: Mapping[str, Any], path: str) -> Any:
    """A simple JSON path's value (``.a.b.c``), or None."""
    value: Any = obj
    for part in path.strip(".").split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def _cell(kind: str, value: Any) -> Any:
    """One cell as the API server's CRD table convertor writes it."""
    if value is None:
        return None
    if kind == "string":
        return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    if kind == "integer":
        return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
    if kind == "number":
        return value if isinstance(value, int | float) and not isinstance(value, bool) else None
    if kind == "boolean":
        return value if isinstance(value, bool) else None
    if kind == "date":
        moment = stored_time(value) if isinstance(value, str) else None
        return "<invalid>" if moment is None else human_duration(time.time() - moment)
    return None


def human_duration(seconds: float) -> str:
    """An age as kubectl shows it (apimachinery's ``duration.HumanDuration``): 42s, 3m5s, 5h, 2d3h, 3y."""
    s = int(seconds)  # toward zero, as Go's int(d.Seconds())
    if s < -1:
        return "<invalid>"
    if s < 0:
        return "0s"
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        rest = s % 60
        return f"{minutes}m{rest}s" if rest else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 8:
        rest = minutes % 60
        return f"{hours}h{rest}m" if rest else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        rest = hours % 24
        return f"{hours // 24}d{rest}h" if rest else f"{hours // 24}d"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        rest = (hours // 24) % 365
        return f"{hours // 24 // 365}y{rest}d" if rest else f"{hours // 24 // 365}y"
    return f"{hours // 24 // 365}y"
