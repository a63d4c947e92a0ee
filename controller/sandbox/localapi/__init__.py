"""An embedded local stand-in for the Kubernetes API server (for tests and ``canarist demo``).

Not a Kubernetes: one process, objects in memory, the API server's semantics where canarist
relies on them (resourceVersion and 409, 404, the status subresource, watch, finalizers, owner
references). The official client talks to it over HTTP, exactly as it talks to a cluster.

This module presents the package's public API; the parts live in its modules (``server`` first).
"""

from controller.sandbox.localapi.calls import Request
from controller.sandbox.localapi.documents import ApiError, ready_pod
from controller.sandbox.localapi.server import LocalApiServer, local_api_server

__all__ = ["ApiError", "LocalApiServer", "Request", "local_api_server", "ready_pod"]
