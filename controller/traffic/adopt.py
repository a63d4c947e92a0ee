"""Adopting a user's DestinationRule or VirtualService: the pure merge rules, no I/O.

canarist adds only its subsets and routes to an object the user already has for the host, keeps
everything else, and can restore the original exactly (see :mod:`controller.edges.kube.adoption`, which reads and
writes the objects; the rules here are tested with plain values).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any


def normalise(value: Any) -> Any:
    """Drop None values and empty containers, recursively: what the API treats as absent."""
    if isinstance(value, Mapping):
        out = {k: normalise(v) for k, v in value.items()}
        return {k: v for k, v in out.items() if v is not None and v not in ({}, [])}
    if isinstance(value, list | tuple):
        return [normalise(v) for v in value]
    return value


def fqdn(host: str, namespace: str) -> str:
    """A host as Istio resolves it in ``namespace``: a name without a dot is a Service there."""
    return host if "." in host or host.startswith("*") else f"{host}.{namespace}.svc.cluster.local"


def merge_destination_rule(original: Mapping[str, Any], ours: Mapping[str, Any]) -> dict[str, Any]:
    """The user's DestinationRule spec with canarist's subsets added.

    The rules are in :mod:`controller.edges.kube.adoption`'s docstring, under Adoption."""
    spec = copy.deepcopy(dict(original))
    mine = copy.deepcopy(list(ours.get("subsets") or []))
    for subset in mine:
        if ours.get("trafficPolicy"):
            subset.setdefault("trafficPolicy", copy.deepcopy(ours["trafficPolicy"]))
    names = {s.get("name") for s in mine}
    subsets = [s for s in spec.get("subsets") or [] if s.get("name") not in names] + mine
    if subsets:
        spec["subsets"] = subsets
    return spec


def merge_virtual_service(
    original: Mapping[str, Any], ours: Mapping[str, Any], host: str, namespace: str
) -> dict[str, Any]:
    """The user's VirtualService spec with canarist's routes for ``host``.

    The rules are in :mod:`controller.edges.kube.adoption`'s docstring, under Adoption."""
    spec = copy.deepcopy(dict(original))
    routes = [dict(r) for r in ours.get("http") or []]
    if not routes:
        return spec
    *specific, primary = routes
    merged: list[dict[str, Any]] = []
    taken = False
    for route in spec.get("http") or []:
        if not _targets(route, fqdn(host, namespace), namespace):
            merged.append(route)
            continue
        taken = True
        settings = {k: v for k, v in route.items() if k not in ("name", "match", "route", "mirror", "mirrorPercentage")}
        for extra in specific:
            restricted = {**copy.deepcopy(settings), **copy.deepcopy(extra)}
            if route.get("match"):
                restricted["match"] = [_and(u, c) for u in route["match"] for c in extra.get("match") or [{}]]
            merged.append(restricted)
        merged.append({**route, **{k: copy.deepcopy(primary[k]) for k in _TAKEN if k in primary}})
    if not taken:  # no route sends traffic to the host
        merged.extend(copy.deepcopy(routes))
    spec["http"] = merged
    return spec


_TAKEN = ("route", "mirror", "mirrorPercentage", "timeout", "retries")


def _targets(route: Mapping[str, Any], host: str, namespace: str) -> bool:
    destinations = route.get("route") or []
    return any(fqdn(str((d.get("destination") or {}).get("host", "")), namespace) == host for d in destinations)


def _and(user: Mapping[str, Any], ours: Mapping[str, Any]) -> dict[str, Any]:
    """Both matches at once: header-like maps are joined, any other field of ours wins."""
    joined = copy.deepcopy(dict(user))
    for key, value in ours.items():
        if key in ("headers", "queryParams", "withoutHeaders") and isinstance(joined.get(key), dict):
            joined[key] = {**joined[key], **copy.deepcopy(value)}
        else:
            joined[key] = copy.deepcopy(value)
    return joined
