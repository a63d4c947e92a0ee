"""The kinds read from ``canarist gpu-agent``'s per-pod GPU series (``canarist_gpu_*``). Pure.

The agent reads NVML per process and attributes each process to its pod, so its series are the
pod's own even where pods share a GPU (HAMi slicing, time-slicing, MPS), where device-wide series
(DCGM's, Triton's ``nv_gpu_*``) give every pod the whole GPU's value. It labels each series with
``namespace``, ``pod``, ``container``, ``gpu`` (uuid) and ``version``: the pod's version as Istio
reads it (:data:`~controller.metrics.catalog.ISTIO_VERSION_LABELS`), so its series are asked for as
Istio's are, whatever the scrape configuration.

- AgentGpuMemory: per pod, GPU memory used over its GPUs' total (each GPU counted once).
- AgentGpuUtilization: per pod, its SM share of its GPUs (summed over its containers, averaged
  over its GPUs).
- AgentGpuSecondsPerInference: per version and window, the GPU-seconds its pods used
  (``increase(canarist_gpu_seconds_total)``) per request Istio counted to it: the GPU cost of an
  inference, which a canary as accurate and as fast can still double.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from controller.api.kinds import Shape
from controller.api.metrics_spec import Metric, MetricKind
from controller.metrics.catalog import Family, MetricPlan, Planner, Reduce, Role, RolloutAsks, all_asks
from controller.metrics.kinds import istio
from controller.metrics.read import Builder, Built, Cell, Gauges, KindReading, Valued
from controller.metrics.samples import GaugeSeries, Window

IDENTITY = ("namespace", "version")
POD = "pod"
GPU = "gpu"
MEMORY_USED = Family("canarist_gpu_memory_used_bytes", Reduce.AVG_OVER_TIME, IDENTITY, pod=POD)
MEMORY_TOTAL = Family("canarist_gpu_memory_total_bytes", Reduce.AVG_OVER_TIME, IDENTITY, pod=POD, once_per=GPU)
GPUS = Family("canarist_gpu_memory_total_bytes", Reduce.AVG_OVER_TIME, IDENTITY, "count", pod=POD, once_per=GPU)
SM_SHARE = Family("canarist_gpu_sm_utilization_ratio", Reduce.AVG_OVER_TIME, IDENTITY, pod=POD)
GPU_SECONDS = Family("canarist_gpu_seconds_total", Reduce.INCREASE, IDENTITY)


def _planner(roles: Mapping[Role, Family]) -> Planner:
    """The planner of a kind that reads the agent's ``roles``."""

    def planned(asks: RolloutAsks, metric: Metric) -> MetricPlan:
        found, why = all_asks({role: asks.agent(family) for role, family in roles.items()})
        return MetricPlan(metric.name, metric.kind, found, why)

    return planned


def _memory(parts: Mapping[Role, Mapping[str, float]], pod: str, window: Window) -> float:
    return parts[Role.USED][pod] / parts[Role.TOTAL][pod]


def _sm_share(parts: Mapping[Role, Mapping[str, float]], pod: str, window: Window) -> float:
    """The pod's SM share per GPU, at most 1 (NVML's samples can add up to a little over 100 %)."""
    return min(1.0, parts[Role.UTILIZATION][pod] / parts[Role.GPUS][pod])


def _gpu_seconds(cell: Cell | str, metric: str) -> float | str:
    """The GPU-seconds a version's pods used in a window, or why that is unknown."""
    if isinstance(cell, str):
        return cell
    if cell.resets:
        return f"counter reset of {metric}"
    if not cell.rows:
        return f"no {metric} series"
    value = sum(v for _, v in cell.rows)
    return value if math.isfinite(value) and value >= 0 else f"NaN, Inf or a negative increase in {metric}"


@dataclass(frozen=True)
class CostPerRequest:
    """GPU-seconds per request, one value per version and window (the agent's counter over Istio's)."""

    shape: ClassVar[Shape] = Shape.GAUGES

    def plan(self, asks: RolloutAsks, metric: Metric) -> MetricPlan:
        seconds = asks.agent(GPU_SECONDS)
        if isinstance(seconds, str):
            return MetricPlan(metric.name, metric.kind, {}, seconds)
        requests = asks.istio(istio.REQUESTS, randomised=False)  # every request the GPU served
        if isinstance(requests, str):
            return MetricPlan(metric.name, metric.kind, {}, requests)
        return MetricPlan(metric.name, metric.kind, {Role.GPU_SECONDS: seconds, Role.REQUESTS: requests})

    def build(self, builder: Builder, plan: MetricPlan) -> Built:
        def per_request(window: Window, side: str) -> Valued[tuple[float, ...]]:
            seconds = _gpu_seconds(builder.cell(plan, Role.GPU_SECONDS, window, side), GPU_SECONDS.metric)
            if isinstance(seconds, str):
                return seconds
            requests = istio.count_requests(builder, plan.asks, window, side)
            if isinstance(requests, str):
                return requests
            return "no requests" if requests == 0 else ((seconds / requests,), ())

        stable, canary, reasons = builder.collect(per_request, plan.name)
        if all(v is None for v in (*stable, *canary)):
            return None, reasons or ["no windows"]
        return GaugeSeries(tuple(stable), tuple(canary)), reasons


READINGS: dict[MetricKind, KindReading] = {
    MetricKind.AGENT_GPU_MEMORY: Gauges(_planner({Role.USED: MEMORY_USED, Role.TOTAL: MEMORY_TOTAL}), _memory),
    MetricKind.AGENT_GPU_UTILIZATION: Gauges(_planner({Role.UTILIZATION: SM_SHARE, Role.GPUS: GPUS}), _sm_share),
    MetricKind.AGENT_GPU_SECONDS_PER_INFERENCE: CostPerRequest(),
}
