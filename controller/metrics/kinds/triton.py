"""Triton's kinds, read per pod from the inference server's own ``nv_*`` series. Pure.

Latency and queueing time are per-pod means (microseconds summed over the window, per successful
inference), the error rate counts failed inferences among all, and the GPU kinds read Triton's GPU
gauges. A version is its pods' version label, or with routing mode TritonVersion, where both
versions run in the same pods, Triton's own model and version labels; then Triton's success and
failure counters are also the rollout's traffic counts, and the GPU kinds, whose series name a
pod but no model, cannot tell the versions apart. Triton's ``nv_gpu_*`` gauges are the whole GPU's:
a pod sharing its GPU (``gpu_uuid``) with another of the rollout's pods is dropped as not
attributable (:mod:`controller.metrics.kinds.dcgm` says why).
"""

from __future__ import annotations

from collections.abc import Mapping

from controller.api.metrics_spec import MetricKind
from controller.metrics.catalog import Ask, MetricPlan, PodSeries, Reduce, Role, RolloutAsks, pod_kind
from controller.metrics.read import Builder, Counts, Gauges, KindReading, total
from controller.metrics.samples import Window

SUCCESS = PodSeries("nv_inference_request_success", Reduce.INCREASE)
FAILURE = PodSeries("nv_inference_request_failure", Reduce.INCREASE)
DURATION = PodSeries("nv_inference_request_duration_us", Reduce.INCREASE)
QUEUE = PodSeries("nv_inference_queue_duration_us", Reduce.INCREASE)
INFERENCES = PodSeries("nv_inference_count", Reduce.INCREASE)
GPU_UTILIZATION = PodSeries("nv_gpu_utilization", Reduce.AVG_OVER_TIME, "avg")
GPU_USED = PodSeries("nv_gpu_memory_used_bytes", Reduce.AVG_OVER_TIME)
GPU_TOTAL = PodSeries("nv_gpu_memory_total_bytes", Reduce.AVG_OVER_TIME)
#: Which GPU (``gpu_uuid``) each pod's ``nv_gpu_*`` series come from: pods sharing one are not attributable.
DEVICES = PodSeries("nv_gpu_utilization", Reduce.AVG_OVER_TIME, "count", split="gpu_uuid")
_COUNTS = {Role.SUCCESS: SUCCESS, Role.FAILURE: FAILURE}


def request_asks(asks: RolloutAsks) -> tuple[dict[Role, Ask], str]:
    """The asks of a rollout's request counts in routing mode TritonVersion: successes and failures."""
    return asks.kind_asks(_COUNTS)


def counts(builder: Builder, asks: Mapping[Role, Ask], window: Window, side: str) -> tuple[int, int] | str:
    """(failures, requests) from Triton's success and failure counters, summed over pods."""
    success = total(builder.cell(asks, Role.SUCCESS, window, side), asks[Role.SUCCESS].family.metric)
    failure = builder.cell(asks, Role.FAILURE, window, side)
    failures = total(failure, asks[Role.FAILURE].family.metric, absent_is_zero=not isinstance(success, str))
    if isinstance(success, str) or isinstance(failures, str):
        return success if isinstance(success, str) else str(failures)
    return failures, success + failures


def _failures(builder: Builder, plan: MetricPlan, window: Window, side: str, role: Role) -> tuple[int, int] | str:
    return counts(builder, plan.asks, window, side)


def _mean_seconds(parts: Mapping[Role, Mapping[str, float]], pod: str, window: Window) -> float:
    """Microseconds spent per successful inference, in seconds."""
    return parts[Role.DURATION][pod] / parts[Role.SUCCESS][pod] / 1e6


def _utilization(parts: Mapping[Role, Mapping[str, float]], pod: str, window: Window) -> float:
    return parts[Role.UTILIZATION][pod]


def _memory(parts: Mapping[Role, Mapping[str, float]], pod: str, window: Window) -> float:
    return parts[Role.USED][pod] / parts[Role.TOTAL][pod]


READINGS: dict[MetricKind, KindReading] = {
    MetricKind.TRITON_LATENCY: Gauges(pod_kind({Role.DURATION: DURATION, Role.SUCCESS: SUCCESS}), _mean_seconds),
    MetricKind.TRITON_QUEUE_LATENCY: Gauges(pod_kind({Role.DURATION: QUEUE, Role.SUCCESS: SUCCESS}), _mean_seconds),
    MetricKind.TRITON_ERROR_RATE: Counts(pod_kind(_COUNTS), _failures),
    MetricKind.TRITON_GPU_UTILIZATION: Gauges(
        pod_kind({Role.UTILIZATION: GPU_UTILIZATION, Role.DEVICES: DEVICES}, per_pod=True), _utilization
    ),
    MetricKind.TRITON_GPU_MEMORY: Gauges(
        pod_kind({Role.USED: GPU_USED, Role.TOTAL: GPU_TOTAL, Role.DEVICES: DEVICES}, per_pod=True), _memory
    ),
}
