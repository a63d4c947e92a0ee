"""NVIDIA DCGM's kinds, read per pod from the exporter's ``DCGM_FI_DEV_*`` gauges. Pure.

GPU utilisation (percent, shown as a share) and framebuffer memory used per pod, and the GPU cost
of an inference: the pod's GPUs' utilisation times the window's seconds, per inference Triton
counted. DCGM's series name a pod but no model, so with routing mode TritonVersion, where both
versions share the pods, none of these kinds can tell the versions apart.

Before dcgm-exporter's per-process support, its values are the whole GPU's: every pod on a shared
GPU (time-slicing, MPS, HAMi) reports the same numbers. Each look also reads which GPU (``UUID``)
each of the rollout's pods is on, and a pod that shares its GPU with another of them is dropped as
*not attributable*, said in the metric's reason, never compared as if the value were its own.
"""

from __future__ import annotations

from collections.abc import Mapping

from controller.api.metrics_spec import MetricKind
from controller.metrics.catalog import PodSeries, Reduce, Role, pod_kind
from controller.metrics.kinds import triton
from controller.metrics.read import Gauges, KindReading
from controller.metrics.samples import Window

GPU_UTILIZATION = PodSeries("DCGM_FI_DEV_GPU_UTIL", Reduce.AVG_OVER_TIME, "avg")
GPU_UTILIZATION_SUM = PodSeries("DCGM_FI_DEV_GPU_UTIL", Reduce.AVG_OVER_TIME)  # over the pod's GPUs
FB_USED = PodSeries("DCGM_FI_DEV_FB_USED", Reduce.AVG_OVER_TIME)
FB_FREE = PodSeries("DCGM_FI_DEV_FB_FREE", Reduce.AVG_OVER_TIME)
#: Which GPU (dcgm-exporter's ``UUID`` label) each pod's series come from: pods sharing one are not attributable.
DEVICES = PodSeries("DCGM_FI_DEV_GPU_UTIL", Reduce.AVG_OVER_TIME, "count", split="UUID")


def _utilization(parts: Mapping[Role, Mapping[str, float]], pod: str, window: Window) -> float:
    return parts[Role.UTILIZATION][pod] / 100.0


def _memory(parts: Mapping[Role, Mapping[str, float]], pod: str, window: Window) -> float:
    return parts[Role.USED][pod] / (parts[Role.USED][pod] + parts[Role.FREE][pod])


def _gpu_seconds(parts: Mapping[Role, Mapping[str, float]], pod: str, window: Window) -> float:
    """Sum over the pod's GPUs of utilisation x seconds, per inference."""
    seconds = parts[Role.UTILIZATION][pod] / 100.0 * (window.end - window.start)
    return seconds / parts[Role.INFERENCES][pod]


READINGS: dict[MetricKind, KindReading] = {
    MetricKind.DCGM_GPU_UTILIZATION: Gauges(
        pod_kind({Role.UTILIZATION: GPU_UTILIZATION, Role.DEVICES: DEVICES}, per_pod=True), _utilization
    ),
    MetricKind.DCGM_GPU_MEMORY: Gauges(
        pod_kind({Role.USED: FB_USED, Role.FREE: FB_FREE, Role.DEVICES: DEVICES}, per_pod=True), _memory
    ),
    MetricKind.GPU_SECONDS_PER_INFERENCE: Gauges(
        pod_kind(
            {Role.UTILIZATION: GPU_UTILIZATION_SUM, Role.INFERENCES: triton.INFERENCES, Role.DEVICES: DEVICES},
            per_pod=True,
        ),
        _gpu_seconds,
    ),
}
