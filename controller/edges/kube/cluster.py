"""The Kubernetes edge: :class:`controller.engine.ports.Cluster` over the official ``kubernetes`` client.

:class:`KubeCluster` composes the concerns of the edge, each a class over the shared transport
(:class:`controller.edges.kube.client.KubeClient`): the rollouts (:mod:`~controller.edges.kube.rollouts`),
route convergence (:mod:`~controller.edges.kube.routes`) with adoption and conflicts
(:mod:`~controller.edges.kube.adoption`), Events and pods (:mod:`~controller.edges.kube.events`).
"""

from __future__ import annotations

import os

from kubernetes import client

from controller.edges.kube.client import api_configuration, context_namespace
from controller.edges.kube.events import EventsAndPods
from controller.edges.kube.rollouts import Rollouts
from controller.edges.kube.routes import Routes


class KubeCluster(Rollouts, Routes, EventsAndPods):
    """The :class:`controller.engine.ports.Cluster` protocol on a real (or fake) API server."""

    @classmethod
    def from_settings(
        cls, kubeconfig: str | None = None, context: str | None = None, *, propagation_delay: float = 2.0
    ) -> KubeCluster:
        """In a pod, with no kubeconfig or context asked for: the service account; else the kubeconfig
        (``kubeconfig``, else ``$KUBECONFIG``, else ``~/.kube/config``) at ``context``."""
        configuration = api_configuration(kubeconfig, context)
        in_pod = kubeconfig is None and context is None and os.environ.get("KUBERNETES_SERVICE_HOST")
        namespace = "default" if in_pod else context_namespace(kubeconfig, context)
        cluster = cls(client.ApiClient(configuration), propagation_delay=propagation_delay)
        cluster.default_namespace = namespace
        return cluster
