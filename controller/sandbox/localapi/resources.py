"""What the local API stand-in serves, and how a request's path names it.

The table of resources (group, plural, kind, versions, whether it has a status subresource, whether
it is a custom resource), the key objects are stored under, the route a path parses into, and the
clock the server-set timestamps come from. Shared by the store, the server and its HTTP handler.
"""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Resource:
    group: str  # "" for the core group
    plural: str
    kind: str
    versions: tuple[str, ...]
    status: bool = False  # has the status subresource
    custom: bool = False  # a CRD: an update must carry metadata.resourceVersion
    namespaced: bool = True  # False: cluster-scoped (a Namespace)


RESOURCES = {
    (r.group, r.plural): r
    for r in (
        Resource("canarist.io", "modelrollouts", "ModelRollout", ("v1alpha1",), status=True, custom=True),
        Resource("networking.istio.io", "virtualservices", "VirtualService", ("v1", "v1beta1"), True, True),
        Resource("networking.istio.io", "destinationrules", "DestinationRule", ("v1", "v1beta1"), True, True),
        Resource("telemetry.istio.io", "telemetries", "Telemetry", ("v1", "v1alpha1"), True, True),
        Resource("", "pods", "Pod", ("v1",), status=True),
        Resource("", "secrets", "Secret", ("v1",)),
        Resource("", "events", "Event", ("v1",)),
        Resource("events.k8s.io", "events", "Event", ("v1",)),
        Resource("coordination.k8s.io", "leases", "Lease", ("v1",)),
        Resource("", "namespaces", "Namespace", ("v1",), status=True, namespaced=False),
    )
}
Key = tuple[str, str, str, str]  # group, plural, namespace, name


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


def now() -> str:
    """Now, to the second, from the same clock as ``time.time()``: ``time.gmtime()`` without an
    argument reads a coarse clock that can lag a few milliseconds behind a second boundary."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time()))
