"""The agent's series from one sample: each pod container's use of each GPU, as Prometheus rows.

Pure: a reading (what NVML says each GPU process uses), which pod each process is in (from its
cgroup), what the API server says of those pods, the seconds since the previous sample and the
GPU-seconds counted so far go in; a :class:`Snapshot` comes out. The exporter only writes it out,
so every rule about what a series holds is here, and is tested without HTTP, NVML or Kubernetes.

A series is one (namespace, pod, container, gpu, version): a container's processes on a GPU are
summed (memory, SM and memory-bandwidth shares; a share is capped at 1). A process in no pod, or
in a pod the API server does not know, has no series: it is counted per GPU as unattributed.
A GPU that does not report per-process utilisation gets memory series only: its shares and
GPU-seconds are unknown, which is absent, never 0.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from controller.edges.gpu.nvml import GpuReading
from controller.edges.gpu.pods import PodRef
from controller.metrics.catalog import ISTIO_VERSION_LABELS

#: The labels of every per-pod series, in this order (:attr:`Row.key`).
LABELS = ("namespace", "pod", "container", "gpu", "version")
#: (namespace, pod, container, gpu, version)
SeriesKey = tuple[str, str, str, str, str]
N = TypeVar("N", int, float)


@dataclass(frozen=True)
class PodInfo:
    """What the API server says of a pod: where it is, its labels, and its containers' names by runtime id."""

    namespace: str
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    containers: Mapping[str, str] = field(default_factory=dict)

    @property
    def version(self) -> str:
        """The pod's version as Istio reads it (``destination_version``), "" when no label gives one."""
        return next((self.labels[key] for key in ISTIO_VERSION_LABELS if key in self.labels), "")

    def container_name(self, container_id: str | None) -> str:
        """The container's name; its runtime id when the pod's status does not list it (yet); "" for the
        pod's own cgroup."""
        if container_id is None:
            return ""
        return self.containers.get(container_id, container_id)


@dataclass(frozen=True)
class Row:
    """One pod container's use of one GPU over the last sample period. None: unknown, not exported."""

    key: SeriesKey
    memory_used_bytes: int | None
    memory_total_bytes: int | None
    sm_ratio: float | None
    memory_bandwidth_ratio: float | None
    gpu_seconds: float | None


@dataclass(frozen=True)
class Snapshot:
    """Everything one sample exports: the per-pod rows and, per GPU (uuid), whether it reports per-process
    utilisation and how many of its processes have no pod."""

    rows: list[Row] = field(default_factory=list)
    utilization_supported: dict[str, bool] = field(default_factory=dict)
    unattributed: dict[str, int] = field(default_factory=dict)


@dataclass
class _Sum:
    memory: int | None = 0
    sm: float | None = 0.0
    bandwidth: float | None = 0.0


def shape(
    reading: GpuReading,
    pod_of: Mapping[int, PodRef | None],
    pods: Mapping[str, PodInfo],
    elapsed: float | None,
    counted: Mapping[SeriesKey, float],
) -> Snapshot:
    """The series of one sample.

    ``pod_of``: each pid's pod (None: in none); ``pods``: what the API server knows, by pod uid;
    ``elapsed``: seconds since the previous sample (None on the first, which counts no GPU time);
    ``counted``: each series' GPU-seconds so far, to which this period's share x ``elapsed`` is added.
    """
    unsupported = set(reading.unsupported)
    sums: dict[SeriesKey, _Sum] = {}
    unattributed = dict.fromkeys(reading.gpus, 0)
    for process in reading.processes:
        ref = pod_of.get(process.pid)
        pod = pods.get(ref.uid) if ref is not None else None
        if ref is None or pod is None:
            unattributed[process.gpu_uuid] = unattributed.get(process.gpu_uuid, 0) + 1
            continue
        key = (pod.namespace, pod.name, pod.container_name(ref.container_id), process.gpu_uuid, pod.version)
        total = sums.setdefault(key, _Sum())
        total.memory = _add(total.memory, process.used_memory_bytes)
        total.sm = _add(total.sm, _ratio(process.sm_percent))
        total.bandwidth = _add(total.bandwidth, _ratio(process.memory_percent))
    rows = []
    for key, total in sorted(sums.items()):
        sm = None if key[3] in unsupported or total.sm is None else min(total.sm, 1.0)
        bandwidth = None if key[3] in unsupported or total.bandwidth is None else min(total.bandwidth, 1.0)
        seconds = None if sm is None else counted.get(key, 0.0) + sm * (elapsed or 0.0)
        rows.append(Row(key, total.memory, reading.memory_total_bytes.get(key[3]), sm, bandwidth, seconds))
    supported = {gpu: gpu not in unsupported for gpu in reading.gpus}
    return Snapshot(rows, supported, unattributed)


def _ratio(percent: float | None) -> float | None:
    return None if percent is None else max(percent, 0.0) / 100.0


def _add(total: N | None, value: N | None) -> N | None:
    """A sum that is unknown as soon as one of its terms is."""
    return None if total is None or value is None else total + value
