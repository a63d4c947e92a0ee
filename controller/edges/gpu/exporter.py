"""The agent's ``/metrics`` and ``/healthz``: the latest snapshot as Prometheus series.

A custom collector writes out the agent's current snapshot at each scrape, so a series the last
sample did not see is simply not written (no stale label sets to remove). The HTTP server is the
controller's (:mod:`controller.edges.ops_http`): slow clients cannot pile up threads.
"""

from __future__ import annotations

from collections.abc import Iterator
from http.server import ThreadingHTTPServer

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from controller.edges.gpu.agent import Agent
from controller.edges.gpu.series import LABELS
from controller.edges.ops_http import serve_pages

#: Seconds a client may stay silent before its connection is dropped.
SOCKET_TIMEOUT = 5.0
#: Seconds one connection may last in all, however it trickles.
REQUEST_DEADLINE = 10.0


class AgentCollector(Collector):
    """Yields the agent's current snapshot as the ``canarist_gpu_*`` series."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    def collect(self) -> Iterator[Metric]:
        snapshot, health = self.agent.current()
        labels = list(LABELS)
        used = GaugeMetricFamily(
            "canarist_gpu_memory_used_bytes",
            "GPU memory used by the container's processes on this GPU (NVML, summed over its processes)",
            labels=labels,
        )
        total = GaugeMetricFamily(
            "canarist_gpu_memory_total_bytes", "This GPU's total memory, repeated per series", labels=labels
        )
        sm = GaugeMetricFamily(
            "canarist_gpu_sm_utilization_ratio",
            "The container's share of this GPU's SM time over the last sample period (0..1)",
            labels=labels,
        )
        bandwidth = GaugeMetricFamily(
            "canarist_gpu_memory_bandwidth_utilization_ratio",
            "The container's share of this GPU's memory bandwidth over the last sample period (0..1)",
            labels=labels,
        )
        seconds = CounterMetricFamily(
            "canarist_gpu_seconds", "GPU time the container used: its SM share integrated over time", labels=labels
        )
        for row in snapshot.rows:
            values = list(row.key)
            for family, value in (
                (used, row.memory_used_bytes),
                (total, row.memory_total_bytes),
                (sm, row.sm_ratio),
                (bandwidth, row.memory_bandwidth_ratio),
                (seconds, row.gpu_seconds),
            ):
                if value is not None:
                    family.add_metric(values, float(value))
        yield from (used, total, sm, bandwidth, seconds)
        samples = CounterMetricFamily(
            "canarist_gpu_agent_samples", "NVML samples the agent took, by result", labels=["result"]
        )
        samples.add_metric(["ok"], health.samples_ok)
        samples.add_metric(["error"], health.samples_error)
        supported = GaugeMetricFamily(
            "canarist_gpu_process_utilization_supported",
            "1 when the GPU reports per-process utilisation, 0 when NVML says NotSupported (memory only)",
            labels=["gpu"],
        )
        for gpu, ok in sorted(snapshot.utilization_supported.items()):
            supported.add_metric([gpu], 1.0 if ok else 0.0)
        unattributed = GaugeMetricFamily(
            "canarist_gpu_agent_unattributed_processes",
            "GPU processes in no pod, or in a pod the API server did not name",
            labels=["gpu"],
        )
        for gpu, count in sorted(snapshot.unattributed.items()):
            unattributed.add_metric([gpu], count)
        yield from (samples, supported, unattributed)


def registry_for(agent: Agent) -> CollectorRegistry:
    """A registry of the agent's series alone (no process or platform collectors)."""
    registry = CollectorRegistry()
    registry.register(AgentCollector(agent))
    return registry


def serve(agent: Agent, port: int, host: str = "127.0.0.1") -> ThreadingHTTPServer:
    """Serve ``/metrics`` and ``/healthz`` on ``host``:``port`` in a daemon thread; the caller shuts it down.
    Raises OSError when the address cannot be bound."""
    registry = registry_for(agent)

    def healthz() -> tuple[int, bytes, str]:
        age = agent.stalled()
        if age is None:
            return 200, b"ok\n", "text/plain"
        return 503, f"stalled: no sample completed for {age:.0f}s\n".encode(), "text/plain"

    pages = {"/metrics": lambda: (200, generate_latest(registry), CONTENT_TYPE_LATEST), "/healthz": healthz}
    return serve_pages(
        pages, port, host, name="canarist-gpu-agent", socket_timeout=SOCKET_TIMEOUT, deadline=REQUEST_DEADLINE
    )
