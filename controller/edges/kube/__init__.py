"""The Kubernetes edge: the package of the controller that talks to the API server with ``kubernetes``.

This ``__init__`` presents the package's public API: :class:`KubeCluster` (in
:mod:`~controller.edges.kube.cluster`) and the names its users import with it, so that
``from controller.edges.kube import KubeCluster`` is the way in. Leader election is
:mod:`controller.edges.kube.leader`.

Modules: ``client`` (transport: the API client, ``_call``, the retry policy, errors mapped to the
types of :mod:`controller.engine.ports`), ``objects`` (the Istio kinds, and helpers that read the
marks named in :mod:`controller.api.names`), ``rollouts``, ``routes`` (convergence), ``adoption``
(the user's objects adopted; conflicts), ``events`` (Events and pods), ``cluster``
(:class:`KubeCluster`, composing them), ``leader`` (the Lease).
"""

from controller.edges.kube.client import RejectedError, context_namespace, retry_policy, translate
from controller.edges.kube.cluster import KubeCluster

__all__ = [
    "KubeCluster",
    "RejectedError",
    "context_namespace",
    "retry_policy",
    "translate",
]
