"""HAMi's kinds, read per pod from its vGPU monitor's container series. Pure.

HAMi slices one GPU between pods and accounts each container's share itself (its ``HAMi-core``
intercepts the container's CUDA calls), so its container series are the pod's own on a shared GPU:

- HamiGpuMemory: per pod, vGPU memory used over its limit (the slice it was given).
- HamiGpuUtilization: per pod, its SM share of the device (HAMi reports percent of the whole GPU,
  summed over the container's processes), at most 1.

HAMi 2.9 renamed its series (``hami_vgpu_memory_used_bytes``, ``hami_vgpu_memory_limit_bytes``,
``hami_container_device_utilization_ratio``, labelled ``namespace``, ``pod``, ``container``);
older monitors, and 2.9 with ``--legacy-metrics``, export ``vGPU_device_memory_usage_in_bytes``,
``vGPU_device_memory_limit_in_bytes`` and ``Device_utilization_desc_of_container`` labelled
``podnamespace``, ``podname``, ``ctrname``. Each query reads the new name, and the old one for pods
without it (relabelled to ``namespace`` and ``pod``), so a cluster mid-upgrade counts each pod once.

HAMi's series name a pod but not its labels, so the version comes from kube-state-metrics'
``kube_pod_labels`` (``label_<version label>``: kube-state-metrics must list that pod label in
``--metric-labels-allowlist``), joined on namespace and pod at each window's end. The monitor must
be scraped with ``honor_labels: true`` (HAMi's chart does), so its ``namespace`` and ``pod`` are
the model pod's, not the monitor's.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from controller.api.metrics_spec import Metric, MetricKind
from controller.metrics.catalog import (
    Family,
    MetricPlan,
    Planner,
    Reduce,
    Role,
    RolloutAsks,
    all_asks,
    ask_for,
    pod_label_value,
)
from controller.metrics.read import Gauges, KindReading
from controller.metrics.samples import Window
from controller.metrics.selectors import any_of, check_metric_name, promql_duration, selector

NAMESPACE, POD = "namespace", "pod"
LEGACY_NAMESPACE, LEGACY_POD = "podnamespace", "podname"
POD_LABELS = "kube_pod_labels"


@dataclass(frozen=True)
class HamiFamily(Family):
    """A HAMi container gauge (its 2.9 name, else its old one) per pod, with the pod's version joined in.

    ``identity`` is (namespace, version label); the version's values select ``kube_pod_labels``'
    ``label_<version label>``, the namespace's both HAMi's series and the pods.
    """

    legacy_metric: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_metric_name(self.legacy_metric)

    def promql(self, values: Sequence[Iterable[str]], window: float) -> str:
        namespaces, versions = (sorted(set(v)) for v in values)
        version = self.identity[-1]
        source = f"label_{version}"
        span = promql_duration(window)
        new = f"{self.reduce.value}({self.metric}{selector([any_of(NAMESPACE, namespaces)])}[{span}])"
        old = f"{self.reduce.value}({self.legacy_metric}{selector([any_of(LEGACY_NAMESPACE, namespaces)])}[{span}])"
        old = (
            f'label_replace(label_replace({old}, "{NAMESPACE}", "$1", "{LEGACY_NAMESPACE}", "(.*)"), '
            f'"{POD}", "$1", "{LEGACY_POD}", "(.*)")'
        )
        either = f"({new}) or (({old}) unless on ({NAMESPACE}, {POD}) ({new}))"
        pods = selector([any_of(NAMESPACE, namespaces), any_of(source, versions)])
        labelled = (
            f'max by ({NAMESPACE}, {POD}, {version}) (label_replace({POD_LABELS}{pods}, "{version}", "$1", '
            f'"{source}", "(.+)"))'
        )
        joined = f"({either}) * on ({NAMESPACE}, {POD}) group_left ({version}) {labelled}"
        return f"{self.aggregate} by ({', '.join(self.group)}) ({joined})"


def _family(metric: str, legacy: str, version_label: str) -> HamiFamily:
    return HamiFamily(metric, Reduce.AVG_OVER_TIME, (NAMESPACE, version_label), pod=POD, legacy_metric=legacy)


MEMORY_USED = ("hami_vgpu_memory_used_bytes", "vGPU_device_memory_usage_in_bytes")
MEMORY_LIMIT = ("hami_vgpu_memory_limit_bytes", "vGPU_device_memory_limit_in_bytes")
UTILIZATION = ("hami_container_device_utilization_ratio", "Device_utilization_desc_of_container")


def _planner(roles: Mapping[Role, tuple[str, str]]) -> Planner:
    """The planner of a HAMi kind that reads ``roles`` (each: the 2.9 name and the old one)."""

    def planned(asks: RolloutAsks, metric: Metric) -> MetricPlan:
        if asks.triton is not None:
            why = f"{metric.kind.value} is per pod, and with routing mode TritonVersion both versions share the pods"
            return MetricPlan(metric.name, metric.kind, {}, why)
        label = asks.labels.version
        spec = asks.rollout.spec
        missing = f"no pod label of spec.stable/spec.canary maps to the label {label!r} that names the version"
        stable = (asks.ns, pod_label_value(spec.stable, label))
        canary = (asks.ns, pod_label_value(spec.canary, label))
        found, why = all_asks(
            {
                role: ask_for(_family(name, legacy, label), stable, canary, missing)
                for role, (name, legacy) in roles.items()
            }
        )
        return MetricPlan(metric.name, metric.kind, found, why)

    return planned


def _memory(parts: Mapping[Role, Mapping[str, float]], pod: str, window: Window) -> float:
    return parts[Role.USED][pod] / parts[Role.TOTAL][pod]


def _utilization(parts: Mapping[Role, Mapping[str, float]], pod: str, window: Window) -> float:
    return min(1.0, parts[Role.UTILIZATION][pod] / 100.0)


READINGS: dict[MetricKind, KindReading] = {
    MetricKind.HAMI_GPU_MEMORY: Gauges(_planner({Role.USED: MEMORY_USED, Role.TOTAL: MEMORY_LIMIT}), _memory),
    MetricKind.HAMI_GPU_UTILIZATION: Gauges(_planner({Role.UTILIZATION: UTILIZATION}), _utilization),
}
