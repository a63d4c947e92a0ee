"""Builds the concrete edges from settings: the one place that knows which edge is which.

An unknown metrics backend is an error, never a silent fallback.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from controller.api.model import ModelRollout
from controller.edges.prometheus import PrometheusClient, PrometheusSettings, observe_or_explain
from controller.edges.triton import TritonProbe
from controller.engine.ports import EdgeFailure, GateProbe, MetricsSource
from controller.metrics.cache import WindowCache
from controller.metrics.catalog import Labels
from controller.metrics.samples import Observation, Window

METRICS_BACKENDS = ("prometheus",)


@dataclass
class PrometheusSource:
    """The MetricsSource over Prometheus: a failed look is no data for every rollout, with the reason."""

    client: PrometheusClient
    labels: Labels | None = None
    #: Settled windows' cells from earlier looks, so a look asks only for what is new; None: read all.
    cache: WindowCache | None = None

    def observe(
        self, rollouts: Sequence[ModelRollout], windows: Mapping[str, Sequence[Window]], at: float
    ) -> tuple[dict[str, Observation], EdgeFailure | None]:
        observations, error = observe_or_explain(
            self.client, rollouts, windows, at, labels=self.labels, cache=self.cache
        )
        failure = EdgeFailure("prometheus", error.explained, error.retryable) if error else None
        return observations, failure


def metrics_source(backend: str, settings: PrometheusSettings, labels: Labels | None = None) -> MetricsSource:
    """The metrics edge for ``backend``; raises ValueError for one canarist does not know."""
    if backend == "prometheus":  # a window has settled two scrape intervals after its end
        cache = WindowCache(settle=2 * settings.max_scrape_interval)
        return PrometheusSource(PrometheusClient(settings), labels, cache)
    raise ValueError(f"unknown metrics backend {backend!r}; known: {', '.join(METRICS_BACKENDS)}")


def gate_probe() -> GateProbe:
    """The pre-traffic gates' edge: Triton over HTTP (the one kind of gate there is)."""
    return TritonProbe()
