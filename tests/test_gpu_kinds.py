"""The GPU metric kinds against a real Prometheus: realistic series of every GPU source, two pods on one GPU.

One backfilled history (10 one-minute windows, 15 s scrapes) of a stable and a canary whose first
pods share GPU ``GPU-A`` while the stable's second pod has ``GPU-B`` to itself, as each exporter
writes them:

- dcgm-exporter and Triton (``nv_gpu_*``) give both pods on GPU-A the whole GPU's value: those pods
  are *not attributable* and only the pod alone on its GPU is compared;
- canarist's gpu-agent gives each pod (and container) its own memory, SM share and GPU-seconds;
- HAMi gives each container its own slice, under its 2.9 names on one pod, its old names on
  another, and both on a third (a 2.9 monitor with ``--legacy-metrics``); its version comes from
  kube-state-metrics' ``kube_pod_labels``. A pod of another namespace reusing the version label is
  never read.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from controller.api.load import load
from controller.api.model import ModelRollout
from controller.api.status import Verdict
from controller.edges.prometheus import PrometheusClient, PrometheusSettings, observe
from controller.judge.analysis import analyse
from controller.metrics.samples import GaugeSeries, Observation, Window
from tests.prometheus_fixture import OpenMetrics, PrometheusServer

T0 = 1_700_000_040
SCRAPE = 15
WINDOWS = 10
NS = "ml"
GPU_A, GPU_B = "GPU-5b3c0a0e-aaaa-4c1e-9d6f-000000000001", "GPU-5b3c0a0e-bbbb-4c1e-9d6f-000000000002"
GIB = 2**30
TOTAL = 141 * GIB  # an H200's memory

#: pod -> (version, GPU, per container: (memory used, SM share)); v1-0 and v2-0 share GPU-A.
PODS: dict[str, tuple[str, str, dict[str, tuple[float, float]]]] = {
    "model-v1-0": ("v1", GPU_A, {"model": (6 * GIB, 0.20), "tokenizer": (2 * GIB, 0.0)}),
    "model-v1-1": ("v1", GPU_B, {"model": (8 * GIB, 0.25)}),
    "model-v2-0": ("v2", GPU_A, {"model": (16 * GIB, 0.50)}),  # the canary: twice the memory and SM time
}
REQUESTS_PER_SECOND = {"v1": 10.0, "v2": 5.0}
#: HAMi's slices: pod -> (used bytes, limit bytes, SM percent of the device, which names it exports).
HAMI = {
    "model-v1-0": (4e9, 10e9, 20.0, "new"),
    "model-v1-1": (5e9, 10e9, 30.0, "both"),
    "model-v2-0": (8e9, 10e9, 50.0, "old"),
}

POLICY = f"""
apiVersion: canarist.io/v1alpha1
kind: ModelRollout
metadata: {{name: model, namespace: {NS}}}
spec:
  service: {{name: model, port: 8080}}
  stable: {{name: v1, labels: {{app: model, version: v1}}}}
  canary: {{name: v2, labels: {{app: model, version: v2}}}}
  analysis:
    metrics:
      - {{name: dcgm-util, kind: DcgmGpuUtilization, slo: {{max: 95%}}}}
      - {{name: dcgm-mem, kind: DcgmGpuMemory, slo: {{max: 90%}}}}
      - {{name: triton-util, kind: TritonGpuUtilization, slo: {{max: 95%}}}}
      - {{name: triton-mem, kind: TritonGpuMemory, slo: {{max: 90%}}}}
      - {{name: dcgm-cost, kind: GpuSecondsPerInference, margin: {{relative: 20%}}}}
      - {{name: agent-mem, kind: AgentGpuMemory, margin: {{absolute: 2%}}}}
      - {{name: agent-util, kind: AgentGpuUtilization, margin: {{absolute: 5%}}}}
      - {{name: gpu-seconds-per-inference, kind: AgentGpuSecondsPerInference, margin: {{relative: 20%}}}}
      - {{name: hami-mem, kind: HamiGpuMemory, slo: {{max: 90%}}}}
      - {{name: hami-util, kind: HamiGpuUtilization, slo: {{max: 95%}}}}
"""


def _history() -> str:
    out = OpenMetrics()
    seconds: dict[tuple[str, str], float] = {}
    requests = dict.fromkeys(REQUESTS_PER_SECOND, 0.0)
    device_util = {GPU_A: 0.0, GPU_B: 0.0}
    device_used = {GPU_A: 0.0, GPU_B: 0.0}
    for _, gpu, containers in PODS.values():
        device_util[gpu] += sum(share for _, share in containers.values())
        device_used[gpu] += sum(used for used, _ in containers.values())
    for step in range(WINDOWS * 60 // SCRAPE + 1):
        t = T0 + step * SCRAPE
        for pod, (version, gpu, containers) in PODS.items():
            who = {"namespace": NS, "pod": pod, "version": version}
            dcgm = {**who, "gpu": "0" if gpu == GPU_A else "1", "UUID": gpu, "modelName": "NVIDIA H200"}
            out.add("DCGM_FI_DEV_GPU_UTIL", "gauge", "DCGM_FI_DEV_GPU_UTIL", dcgm, (t, 100 * device_util[gpu]))
            out.add("DCGM_FI_DEV_FB_USED", "gauge", "DCGM_FI_DEV_FB_USED", dcgm, (t, device_used[gpu] / 2**20))
            free = (TOTAL - device_used[gpu]) / 2**20
            out.add("DCGM_FI_DEV_FB_FREE", "gauge", "DCGM_FI_DEV_FB_FREE", dcgm, (t, free))
            triton = {**who, "gpu_uuid": gpu}
            out.add("nv_gpu_utilization", "gauge", "nv_gpu_utilization", triton, (t, device_util[gpu]))
            out.add("nv_gpu_memory_used_bytes", "gauge", "nv_gpu_memory_used_bytes", triton, (t, device_used[gpu]))
            out.add("nv_gpu_memory_total_bytes", "gauge", "nv_gpu_memory_total_bytes", triton, (t, TOTAL))
            inferences = step * SCRAPE * REQUESTS_PER_SECOND[version] / sum(p[0] == version for p in PODS.values())
            out.add("nv_inference_count", "counter", "nv_inference_count", {**who, "model": "fraud"}, (t, inferences))
            for container, (used, share) in containers.items():
                agent = {**who, "container": container, "gpu": gpu}
                if step:
                    seconds[(pod, container)] = seconds.get((pod, container), 0.0) + share * SCRAPE
                for name, value in (
                    ("canarist_gpu_memory_used_bytes", used),
                    ("canarist_gpu_memory_total_bytes", TOTAL),
                    ("canarist_gpu_sm_utilization_ratio", share),
                ):
                    out.add(name, "gauge", name, agent, (t, value))
                total = seconds.get((pod, container), 0.0)
                out.add("canarist_gpu_seconds", "counter", "canarist_gpu_seconds_total", agent, (t, total))
        for version, rate in REQUESTS_PER_SECOND.items():
            requests[version] += rate * SCRAPE if step else 0.0
            istio = {
                "reporter": "destination",
                "destination_service_namespace": NS,
                "destination_service_name": "model",
                "destination_version": version,
                "response_code": "200",
            }
            out.add("istio_requests", "counter", "istio_requests_total", istio, (t, requests[version]))
        _hami(out, t)
    return out.render()


def _hami(out: OpenMetrics, t: float) -> None:
    """HAMi's container series (new names, old names, or both) and kube-state-metrics' pod labels."""
    pods = {**{p: (NS, PODS[p][0], HAMI[p]) for p in HAMI}, "intruder": ("team-b", "v2", (9e9, 10e9, 90.0, "new"))}
    for pod, (namespace, version, (used, limit, sm, names)) in pods.items():
        labels = {"namespace": namespace, "pod": pod, "label_app": "model", "label_version": version}
        out.add("kube_pod_labels", "gauge", "kube_pod_labels", labels, (t, 1.0))
        new = {"namespace": namespace, "pod": pod, "container": "model", "vdevice_index": "0", "device_uuid": GPU_A}
        old = {"podnamespace": namespace, "podname": pod, "ctrname": "model", "vdeviceid": "0", "deviceuuid": GPU_A}
        series: list[tuple[str, dict[str, str], float]] = []
        if names in ("new", "both"):
            series += [
                ("hami_vgpu_memory_used_bytes", new, used),
                ("hami_vgpu_memory_limit_bytes", new, limit),
                ("hami_container_device_utilization_ratio", new, sm),
            ]
        if names in ("old", "both"):
            series += [
                ("vGPU_device_memory_usage_in_bytes", old, used),
                ("vGPU_device_memory_limit_in_bytes", old, limit),
                ("Device_utilization_desc_of_container", old, sm),
            ]
        for name, where, value in series:
            out.add(name, "gauge", name, {**where, "zone": "vGPU"}, (t, value))


@pytest.fixture(scope="module")
def gpu_look(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ModelRollout, Observation]]:
    server = PrometheusServer(tmp_path_factory.mktemp("gpu"))
    server.write_history(_history(), "gpu")
    server.start()
    try:
        (rollout,) = load(POLICY, "gpu.yaml")
        windows = tuple(Window(T0 + 60 * i, T0 + 60 * (i + 1), 0.3) for i in range(WINDOWS))
        source = PrometheusClient(PrometheusSettings(server.url))
        observations = observe(source, [rollout], {rollout.key: windows}, T0 + 60 * WINDOWS)
        yield rollout, observations[rollout.key]
    finally:
        server.stop()


def series(observation: Observation, name: str) -> GaugeSeries:
    data = observation.metric(name)
    assert data is not None and isinstance(data.series, GaugeSeries), (name, data)
    return data.series


def approx(*values: float) -> tuple[Any, ...]:
    return tuple(pytest.approx(v, rel=1e-9) for v in values)


@pytest.mark.parametrize("name", ["dcgm-util", "dcgm-mem", "dcgm-cost", "triton-util", "triton-mem"])
def test_device_wide_series_of_pods_sharing_a_gpu_are_not_attributable(
    name: str, gpu_look: tuple[ModelRollout, Observation]
) -> None:
    _, observation = gpu_look
    got = series(observation, name)
    alone = {
        "dcgm-util": 0.25,
        "dcgm-mem": 8 * GIB / TOTAL,
        "dcgm-cost": 0.25 * 60 / (10.0 * 60 / 2),  # its GPU's utilisation x 60 s over its half of v1's inferences
        "triton-util": 0.25,
        "triton-mem": 8 * GIB / TOTAL,
    }[name]
    assert got.stable == (approx(alone),) * WINDOWS  # model-v1-1, alone on GPU-B
    assert got.canary == (None,) * WINDOWS  # model-v2-0 shares GPU-A with model-v1-0
    reason = observation.metric(name).reason  # type: ignore[union-attr]
    assert "canary: not attributable" in reason and "stable: not attributable" in reason


def test_the_agents_series_are_each_pods_own(gpu_look: tuple[ModelRollout, Observation]) -> None:
    _, observation = gpu_look
    memory = series(observation, "agent-mem")
    assert memory.stable == (approx(8 * GIB / TOTAL, 8 * GIB / TOTAL),) * WINDOWS  # two containers summed
    assert memory.canary == (approx(16 * GIB / TOTAL),) * WINDOWS
    sm = series(observation, "agent-util")
    assert sm.stable == (approx(0.20, 0.25),) * WINDOWS
    assert sm.canary == (approx(0.50),) * WINDOWS


def test_gpu_seconds_per_inference_from_the_agents_counter(gpu_look: tuple[ModelRollout, Observation]) -> None:
    _, observation = gpu_look
    cost = series(observation, "gpu-seconds-per-inference")
    assert cost.stable == (approx((0.20 + 0.25) * 60 / (10.0 * 60)),) * WINDOWS
    assert cost.canary == (approx(0.50 * 60 / (5.0 * 60)),) * WINDOWS  # 2.2x the stable's


def test_hami_reads_new_and_old_names_once_each_and_only_the_rollouts_namespace(
    gpu_look: tuple[ModelRollout, Observation],
) -> None:
    _, observation = gpu_look
    memory = series(observation, "hami-mem")
    assert memory.stable == (approx(0.4, 0.5),) * WINDOWS  # model-v1-1 exports both names: counted once
    assert memory.canary == (approx(0.8),) * WINDOWS  # old names only; team-b's v2 pod not read
    sm = series(observation, "hami-util")
    assert sm.stable == (approx(0.2, 0.3),) * WINDOWS
    assert sm.canary == (approx(0.5),) * WINDOWS


def test_a_canary_that_doubles_gpu_seconds_per_inference_is_proven_worse(
    gpu_look: tuple[ModelRollout, Observation],
) -> None:
    rollout, observation = gpu_look
    evidence = {m.name: m for m in analyse(rollout, observation, step_started_at=T0).metrics}
    cost = evidence["gpu-seconds-per-inference"]
    assert cost.verdict is Verdict.FAIL, cost
    assert cost.estimate == pytest.approx(0.1 - 0.045)
    assert evidence["dcgm-util"].verdict is Verdict.NODATA
    assert "not attributable" in evidence["dcgm-util"].reason
