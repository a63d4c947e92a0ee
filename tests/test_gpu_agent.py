"""The GPU node agent: its series from a sample (pure), its pod directory against the local Kubernetes
API stand-in through the official client, its loop, and its /metrics scraped over HTTP.

The GPU is a stand-in at the agent's ``GpuSource`` Protocol that answers what NVML answered on a real
H200 (bench/results/gpu_agent_check.txt: two processes sharing it, 1,616,904,192 B at 0 % SM and
2,690,646,016 B at 99 % SM; 143,771 MiB in all); the processes' pods come from synthetic /proc trees.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kubernetes.client
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from controller.edges.gpu import nvml
from controller.edges.gpu.agent import Agent
from controller.edges.gpu.directory import KubePodDirectory, NoPods, connect, pod_info
from controller.edges.gpu.exporter import serve
from controller.edges.gpu.nvml import GpuProcess, GpuReading, NvmlSampleError
from controller.edges.gpu.pods import PodRef
from controller.edges.gpu.series import PodInfo, Row, shape
from controller.sandbox.localapi import LocalApiServer

H200 = "GPU-d8b4443a-80c4-ebd9-37bf-1dd3774469db"  # the lent machine's GPU, as NVML names it
OTHER_GPU = "GPU-5e1f0c2a-9b7d-4c3e-8f6a-0d1e2f3a4b5c"
H200_TOTAL = 143_771 * 2**20  # nvmlDeviceGetMemoryInfo(handle).total on that H200 (143771 MiB)
IDLE_BYTES, BUSY_BYTES = 1_616_904_192, 2_690_646_016  # its two processes: 1 GiB idle, 2 GiB spinning
NODE = "gpu-node-1"

UID_STABLE = "0b5c1d6e-7f8a-4b9c-8d0e-1f2a3b4c5d6e"
UID_CANARY = "7a1e2b3c-4d5e-4f60-8a9b-0c1d2e3f4a5b"
UID_ELSEWHERE = "9d8c7b6a-5f4e-4d3c-8b2a-1f0e9d8c7b6a"
UID_UNKNOWN = "11111111-2222-4333-8444-555555555555"
CID_STABLE = "a3f9c2" + "0" * 58
CID_CANARY = "b4e0d3" + "1" * 58
CID_SIDECAR = "c5d1e4" + "2" * 58


# --- stand-ins: the GPU at its Protocol, /proc as files, the API server over HTTP --------------------


@dataclass
class RecordedGpu:
    """Answers the agent's reads with readings in NVML's shapes, one per read (the last one repeats); an
    exception in the script is raised by that read, as :class:`controller.edges.gpu.nvml.Nvml` raises it."""

    script: list[GpuReading | Exception]
    reads: int = 0

    def read(self) -> GpuReading:
        step = self.script[min(self.reads, len(self.script) - 1)]
        self.reads += 1
        if isinstance(step, Exception):
            raise step
        return step


def h200(*processes: tuple[int, int | None, float | None], unsupported: bool = False) -> GpuReading:
    """One H200 with ``(pid, used bytes, SM %)`` processes; memory bandwidth reads 0 %, as it did there."""
    return GpuReading(
        processes=[
            GpuProcess(H200, pid, used, None if unsupported else sm, None if unsupported else 0.0)
            for pid, used, sm in processes
        ],
        gpus=[H200],
        unsupported=[H200] if unsupported else [],
        memory_total_bytes={H200: H200_TOTAL},
    )


def cgroup(uid: str, container: str) -> str:
    """A burstable pod's container under the systemd cgroup driver and containerd (cgroup v2)."""
    slice_uid = uid.replace("-", "_")
    return (
        f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{slice_uid}.slice/"
        f"cri-containerd-{container}.scope\n"
    )


def proc_tree(root: Path, cgroups: dict[int, str]) -> Path:
    for pid, text in cgroups.items():
        (root / str(pid)).mkdir(parents=True)
        (root / str(pid) / "cgroup").write_text(text)
    return root


@pytest.fixture
def proc(tmp_path: Path) -> Path:
    """464 in the stable pod, 465 in the canary pod, 466 a host process, 467 in a pod the API does not know."""
    return proc_tree(
        tmp_path / "proc",
        {
            464: cgroup(UID_STABLE, CID_STABLE),
            465: cgroup(UID_CANARY, CID_CANARY),
            466: "0::/system.slice/nvidia-persistenced.service\n",
            467: cgroup(UID_UNKNOWN, CID_STABLE),
        },
    )


def pod(uid: str, name: str, labels: dict[str, str], containers: dict[str, str], node: str = NODE) -> dict[str, Any]:
    """A running pod as the API server stores it: uid, node, labels and its containers' runtime ids."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "ml-serving", "uid": uid, "labels": labels},
        "spec": {"nodeName": node, "containers": [{"name": n, "image": "triton:24.08"} for n in containers.values()]},
        "status": {
            "phase": "Running",
            "containerStatuses": [{"name": n, "containerID": cid, "ready": True} for cid, n in containers.items()],
        },
    }


STABLE_POD = pod(
    UID_STABLE,
    "fraud-v41-6f7d9",
    {"app": "fraud-detector", "version": "v41"},
    {f"containerd://{CID_STABLE}": "model", f"containerd://{CID_SIDECAR}": "istio-proxy"},
)
CANARY_POD = pod(
    UID_CANARY,
    "fraud-v42-8c2b1",
    {"app": "fraud-detector", "app.kubernetes.io/version": "v42", "version": "ignored"},
    {f"cri-o://{CID_CANARY}": "model"},
)
ELSEWHERE_POD = pod(UID_ELSEWHERE, "fraud-v41-on-another-node", {"version": "v41"}, {}, node="gpu-node-2")


@dataclass
class NodeLocalApi(LocalApiServer):
    """The local API stand-in, recording the node each pod listing asks for (its ``spec.nodeName`` field selector)."""

    node_lists: list[str | None] = field(default_factory=list)

    def _list(self, route: Any, query: dict[str, str]) -> dict[str, Any]:
        if route.resource.plural == "pods":
            terms = [t for t in query.get("fieldSelector", "").split(",") if t]
            self.node_lists.append(next((t.partition("=")[2] for t in terms if t.startswith("spec.nodeName=")), None))
        listing: dict[str, Any] = super()._list(route, query)
        return listing


@pytest.fixture
def api() -> Iterator[NodeLocalApi]:
    server = NodeLocalApi().start()
    try:
        for obj in (STABLE_POD, CANARY_POD, ELSEWHERE_POD):
            server.seed(obj)  # seeded: the status (containerStatuses) is the kubelet's to write
        yield server
    finally:
        server.stop()


@dataclass
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


KNOWN = {
    UID_STABLE: PodInfo("ml-serving", "fraud-v41-6f7d9", {"version": "v41"}, {CID_STABLE: "model"}),
    UID_CANARY: PodInfo("ml-serving", "fraud-v42-8c2b1", {"app.kubernetes.io/version": "v42"}, {CID_CANARY: "model"}),
}
POD_OF = {464: PodRef(UID_STABLE, CID_STABLE), 465: PodRef(UID_CANARY, CID_CANARY), 466: None}
STABLE_KEY = ("ml-serving", "fraud-v41-6f7d9", "model", H200, "v41")
CANARY_KEY = ("ml-serving", "fraud-v42-8c2b1", "model", H200, "v42")


# --- the series of one sample (pure) ---------------------------------------------------------


def test_two_pods_of_different_versions_on_one_gpu_get_their_own_memory_and_sm_share() -> None:
    snapshot = shape(h200((464, IDLE_BYTES, 0.0), (465, BUSY_BYTES, 99.0)), POD_OF, KNOWN, None, {})
    assert snapshot.rows == [
        Row(STABLE_KEY, IDLE_BYTES, H200_TOTAL, 0.0, 0.0, 0.0),
        Row(CANARY_KEY, BUSY_BYTES, H200_TOTAL, 0.99, 0.0, 0.0),  # the first sample counts no GPU time
    ]
    assert snapshot.utilization_supported == {H200: True} and snapshot.unattributed == {H200: 0}


def test_gpu_seconds_integrate_the_sm_share_over_the_seconds_since_the_previous_sample() -> None:
    first = shape(h200((465, BUSY_BYTES, 99.0)), POD_OF, KNOWN, 5.0, {})
    assert first.rows[0].gpu_seconds == pytest.approx(0.99 * 5.0)  # a series new this period: its share x 5 s
    second = shape(h200((465, BUSY_BYTES, 50.0)), POD_OF, KNOWN, 2.0, {CANARY_KEY: 4.95})
    assert second.rows[0].gpu_seconds == pytest.approx(4.95 + 0.5 * 2.0)


def test_a_containers_processes_are_summed_and_a_share_is_capped_at_one() -> None:
    pod_of = {**POD_OF, 470: PodRef(UID_CANARY, CID_CANARY)}
    reading = h200((465, BUSY_BYTES, 70.0), (470, IDLE_BYTES, 60.0))
    [row] = shape(reading, pod_of, KNOWN, 1.0, {}).rows
    assert row.key == CANARY_KEY and row.memory_used_bytes == BUSY_BYTES + IDLE_BYTES
    assert row.sm_ratio == 1.0 and row.gpu_seconds == 1.0


def test_processes_in_no_pod_or_an_unknown_pod_are_counted_per_gpu_not_exported() -> None:
    reading = h200((464, IDLE_BYTES, 0.0), (466, 2**30, 10.0), (467, 2**30, 5.0))
    reading.gpus.append(OTHER_GPU)
    pod_of = {**POD_OF, 467: PodRef(UID_UNKNOWN, CID_STABLE)}
    snapshot = shape(reading, pod_of, KNOWN, 1.0, {})
    assert [row.key for row in snapshot.rows] == [STABLE_KEY]
    assert snapshot.unattributed == {H200: 2, OTHER_GPU: 0}


def test_a_gpu_without_per_process_utilisation_exports_memory_only() -> None:
    snapshot = shape(h200((465, BUSY_BYTES, None), unsupported=True), POD_OF, KNOWN, 5.0, {CANARY_KEY: 3.0})
    assert snapshot.rows == [Row(CANARY_KEY, BUSY_BYTES, H200_TOTAL, None, None, None)]  # unknown, not 0
    assert snapshot.utilization_supported == {H200: False}


def test_memory_nvml_cannot_read_is_unknown_for_the_whole_container() -> None:
    pod_of = {**POD_OF, 470: PodRef(UID_CANARY, CID_CANARY)}
    [row] = shape(h200((465, BUSY_BYTES, 10.0), (470, None, 0.0)), pod_of, KNOWN, 1.0, {}).rows
    assert row.memory_used_bytes is None and row.sm_ratio == pytest.approx(0.1)


@pytest.mark.parametrize(
    ("labels", "version"),
    [
        ({"service.istio.io/canonical-revision": "r7", "app.kubernetes.io/version": "v2", "version": "v1"}, "r7"),
        ({"app.kubernetes.io/version": "v2", "version": "v1"}, "v2"),
        ({"version": "v1"}, "v1"),
        ({"app": "fraud-detector"}, ""),
    ],
)
def test_the_version_label_is_the_one_istio_reads(labels: dict[str, str], version: str) -> None:
    assert PodInfo("ns", "p", labels).version == version


def test_a_container_is_named_from_the_pods_status_else_by_its_id() -> None:
    info = PodInfo("ns", "p", {}, {CID_STABLE: "model"})
    assert (info.container_name(CID_STABLE), info.container_name(CID_CANARY), info.container_name(None)) == (
        "model",
        CID_CANARY,  # restarted: the status does not list its new id yet
        "",  # the pod's own cgroup
    )


@pytest.mark.parametrize("runtime", ["containerd", "cri-o", "docker"])
def test_a_pods_container_ids_are_read_for_every_runtime(runtime: str) -> None:
    uid, info = pod_info(pod(UID_STABLE, "p", {}, {f"{runtime}://{CID_STABLE}": "model"})) or ("", None)
    assert uid == UID_STABLE and info is not None and info.containers == {CID_STABLE: "model"}
    assert pod_info({"metadata": {"name": "no-uid"}}) is None


# --- the pod directory, against the local API stand-in through the official client -----------------


def test_the_directory_lists_only_this_nodes_pods_with_names_labels_and_containers(api: NodeLocalApi) -> None:
    directory = KubePodDirectory(api.api_client, NODE)
    refs = [PodRef(UID_STABLE, CID_STABLE), PodRef(UID_CANARY, CID_CANARY), PodRef(UID_ELSEWHERE)]
    found = directory.find(refs)
    assert api.node_lists == [NODE]  # one listing, of this node
    assert set(found) == {UID_STABLE, UID_CANARY}  # the other node's pod is not listed
    stable, canary = found[UID_STABLE], found[UID_CANARY]
    assert (stable.namespace, stable.name, stable.version) == ("ml-serving", "fraud-v41-6f7d9", "v41")
    assert stable.containers == {CID_STABLE: "model", CID_SIDECAR: "istio-proxy"}
    assert canary.version == "v42" and canary.container_name(CID_CANARY) == "model"


def test_an_unknown_pod_lists_again_but_at_most_every_few_seconds(api: NodeLocalApi) -> None:
    clock = Clock()
    directory = KubePodDirectory(api.api_client, NODE, min_refresh=5.0, max_age=60.0, clock=clock)
    new = PodRef("22222222-3333-4444-8555-666666666666", "d" * 64)
    assert directory.find([PodRef(UID_STABLE, CID_STABLE)]) and len(api.node_lists) == 1
    assert directory.find([new]) == {} and len(api.node_lists) == 1  # too soon
    api.seed(pod(new.uid, "fraud-v42-new", {"version": "v42"}, {f"containerd://{new.container_id}": "model"}))
    clock.now += 5.0
    assert directory.find([new])[new.uid].name == "fraud-v42-new" and len(api.node_lists) == 2
    clock.now += 30.0
    directory.find([PodRef(UID_STABLE, CID_STABLE)])  # all known: no listing
    assert len(api.node_lists) == 2
    clock.now += 30.0
    directory.find([PodRef(UID_STABLE, CID_STABLE)])  # a minute old: listed again (labels change, pods go)
    assert len(api.node_lists) == 3


@pytest.mark.parametrize("code", [403, 500])
def test_an_api_server_that_refuses_is_one_line_and_the_last_listing_is_kept(
    api: NodeLocalApi, code: int, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    directory = KubePodDirectory(api.api_client, NODE, clock=clock)
    assert UID_STABLE in directory.find([PodRef(UID_STABLE)])
    api.fail("/api/v1/pods", code, times=3)
    with caplog.at_level(logging.INFO, logger="canarist.gpu"):
        for _ in range(3):
            clock.now += 60.0
            assert UID_STABLE in directory.find([PodRef(UID_STABLE)])  # kept
        clock.now += 60.0
        directory.find([PodRef(UID_STABLE)])
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines  # the failure once (not once per try), then the recovery
    assert f"cannot list this node's pods ({code} " in lines[0] and "\n" not in lines[0]
    assert "works again" in lines[1]


def test_an_unreachable_api_server_is_one_line_and_no_pod_is_known(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    configuration = kubernetes.client.Configuration()
    configuration.host, configuration.retries = f"http://127.0.0.1:{port}", 0
    with kubernetes.client.ApiClient(configuration) as unreachable, caplog.at_level(logging.INFO, "canarist.gpu"):
        assert KubePodDirectory(unreachable, NODE, timeout=2.0).find([PodRef(UID_STABLE)]) == {}
    [line] = [r.getMessage() for r in caplog.records]
    assert "cannot list this node's pods" in line and "no pod known yet" in line and "\n" not in line
    assert "Connection refused" in line or "MaxRetryError" in line, line


def test_the_agent_reaches_the_api_server_through_a_kubeconfig(
    api: NodeLocalApi, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "local", "cluster": {"server": api.url}}],
        "users": [{"name": "agent", "user": {"token": "t"}}],
        "contexts": [{"name": "local", "context": {"cluster": "local", "user": "agent"}}],
        "current-context": "local",
    }
    (tmp_path / "kubeconfig").write_text(yaml.safe_dump(config))
    directory = connect(str(tmp_path / "kubeconfig"), None, NODE)
    assert isinstance(directory, KubePodDirectory)
    assert set(directory.find([PodRef(UID_STABLE), PodRef(UID_CANARY)])) == {UID_STABLE, UID_CANARY}


def test_without_any_kubernetes_configuration_it_is_one_line_and_no_pod_is_known(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with caplog.at_level(logging.INFO, "canarist.gpu"):
        directory = connect(str(tmp_path / "no-such-kubeconfig"), None, NODE)
    assert isinstance(directory, NoPods) and directory.find([PodRef(UID_STABLE)]) == {}
    [line] = [r.getMessage() for r in caplog.records]
    assert line.startswith("gpu-agent: no Kubernetes API (") and "\n" not in line


# --- the agent: samples, stale series, NVML failures, the loop ------------------------------------


def test_a_series_whose_process_ended_vanishes_and_its_count_continues_if_it_returns(proc: Path) -> None:
    clock = Clock()
    both, canary_gone = h200((464, IDLE_BYTES, 0.0), (465, BUSY_BYTES, 99.0)), h200((464, IDLE_BYTES, 0.0))
    source = RecordedGpu([both, both, canary_gone, both])
    agent = Agent(source, KnownPods(KNOWN), interval=5.0, proc=proc, clock=clock)
    seconds = []
    for _ in range(4):
        assert agent.sample()
        snapshot, _ = agent.current()
        seconds.append({row.key: row.gpu_seconds for row in snapshot.rows}.get(CANARY_KEY))
        clock.now += 5.0
    assert seconds == [0.0, pytest.approx(4.95), None, pytest.approx(4.95 + 4.95)]


def test_an_nvml_failure_mid_run_is_counted_logged_once_and_the_loop_goes_on(
    proc: Path, caplog: pytest.LogCaptureFixture
) -> None:
    lost = NvmlSampleError(nvml.explain(nvml.pynvml.NVMLError(nvml.pynvml.NVML_ERROR_GPU_IS_LOST)))
    reading = h200((465, BUSY_BYTES, 99.0))
    agent = Agent(RecordedGpu([reading, lost, reading]), KnownPods(KNOWN), proc=proc)
    with caplog.at_level(logging.INFO, logger="canarist.gpu"):
        assert [agent.sample(), agent.sample()] == [True, False]
        assert agent.current()[0].rows == []  # no stale numbers while the GPU cannot be read
        assert agent.sample()
    snapshot, health = agent.current()
    assert (health.samples_ok, health.samples_error) == (2, 1) and [r.key for r in snapshot.rows] == [CANARY_KEY]
    [line] = [r.getMessage() for r in caplog.records]
    assert line.startswith("gpu-agent: sample failed: NVMLError_GpuIsLost: ") and "\n" not in line


def test_nvml_reports_each_gpus_total_memory_and_a_failure_mid_read_as_one_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The real :class:`Nvml` over pynvml's own functions answering with pynvml's own structures (as the
    driver would on that H200); no GPU here, so the functions are stood in for."""
    pynvml = nvml.pynvml
    process = pynvml.nvmlStructToFriendlyObject(pynvml.c_nvmlProcessInfo_v3_t(pid=465, usedGpuMemory=BUSY_BYTES))
    sample = pynvml.c_nvmlProcessUtilizationSample_t(pid=465, timeStamp=10**15, smUtil=99, memUtil=0)
    memory = pynvml.c_nvmlMemory_t(total=H200_TOTAL, free=H200_TOTAL - BUSY_BYTES, used=BUSY_BYTES)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetCount", lambda: 1)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetHandleByIndex", lambda index: object())
    monkeypatch.setattr(pynvml, "nvmlDeviceGetUUID", lambda handle: H200)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetMemoryInfo", lambda handle: memory)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetComputeRunningProcesses", lambda handle: [process])
    monkeypatch.setattr(pynvml, "nvmlDeviceGetProcessUtilization", lambda handle, since: [sample])
    reader = object.__new__(nvml.Nvml)  # NVML cannot be initialised here: no library
    reader.last_seen_us = {}
    assert reader.read() == GpuReading([GpuProcess(H200, 465, BUSY_BYTES, 99.0, 0.0)], [H200], [], {H200: H200_TOTAL})

    def lost(handle: object) -> object:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)

    monkeypatch.setattr(pynvml, "nvmlDeviceGetMemoryInfo", lost)
    with pytest.raises(NvmlSampleError, match=r"^NVMLError_GpuIsLost: "):
        reader.read()


def test_the_loop_samples_every_interval_until_stopped(proc: Path) -> None:
    source = RecordedGpu([h200((464, IDLE_BYTES, 0.0), (465, BUSY_BYTES, 99.0))])
    agent = Agent(source, KnownPods(KNOWN), interval=0.05, proc=proc)
    stop = threading.Event()
    loop = threading.Thread(target=agent.run, args=(stop,))
    started = time.monotonic()
    loop.start()
    while agent.current()[1].samples_ok < 4 and time.monotonic() - started < 5:
        time.sleep(0.01)
    stop.set()
    loop.join(timeout=2)
    elapsed = time.monotonic() - started
    snapshot, health = agent.current()
    assert not loop.is_alive() and health.samples_ok == source.reads >= 4
    [_, canary] = snapshot.rows
    # samples start an interval apart at least, and all of them within the test's time
    assert canary.gpu_seconds is not None
    assert 0.99 * (health.samples_ok - 1) * 0.05 * 0.99 <= canary.gpu_seconds <= 0.99 * elapsed


@dataclass
class KnownPods:
    """A pod directory that knows a fixed set of pods (the Kubernetes one is tested above)."""

    pods: dict[str, PodInfo]

    def find(self, refs: Any) -> dict[str, PodInfo]:
        return {ref.uid: self.pods[ref.uid] for ref in refs if ref.uid in self.pods}


# --- /metrics and /healthz over HTTP ------------------------------------------------------------


def scrape(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return int(answer.status), answer.read().decode()
    except urllib.error.HTTPError as refused:
        return refused.code, refused.read().decode()


def test_metrics_are_scraped_over_http_with_the_pods_from_the_api_server(api: NodeLocalApi, proc: Path) -> None:
    clock = Clock()
    source = RecordedGpu([h200((464, IDLE_BYTES, 0.0), (465, BUSY_BYTES, 99.0), (466, 2**20, 1.0))])
    agent = Agent(source, KubePodDirectory(api.api_client, NODE), interval=5.0, proc=proc, clock=clock)
    assert agent.sample()
    clock.now += 5.0
    assert agent.sample()
    server = serve(agent, 0)
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        code, text = scrape(f"{base}/metrics")
        assert code == 200
        families = {f.name: f for f in text_string_to_metric_families(text)}
        got = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
        canary = (("container", "model"), ("gpu", H200), ("namespace", "ml-serving"), ("pod", "fraud-v42-8c2b1"))
        stable = (("container", "model"), ("gpu", H200), ("namespace", "ml-serving"), ("pod", "fraud-v41-6f7d9"))
        canary, stable = (*canary, ("version", "v42")), (*stable, ("version", "v41"))
        assert got[("canarist_gpu_memory_used_bytes", canary)] == BUSY_BYTES
        assert got[("canarist_gpu_memory_used_bytes", stable)] == IDLE_BYTES
        assert got[("canarist_gpu_memory_total_bytes", canary)] == H200_TOTAL
        assert got[("canarist_gpu_sm_utilization_ratio", canary)] == pytest.approx(0.99)
        assert got[("canarist_gpu_sm_utilization_ratio", stable)] == 0.0
        assert got[("canarist_gpu_memory_bandwidth_utilization_ratio", canary)] == 0.0
        assert got[("canarist_gpu_seconds_total", canary)] == pytest.approx(0.99 * 5.0)
        assert families["canarist_gpu_seconds"].type == "counter"
        assert families["canarist_gpu_memory_used_bytes"].type == "gauge"
        assert got[("canarist_gpu_agent_samples_total", (("result", "ok"),))] == 2
        assert got[("canarist_gpu_agent_samples_total", (("result", "error"),))] == 0
        assert got[("canarist_gpu_process_utilization_supported", (("gpu", H200),))] == 1
        assert got[("canarist_gpu_agent_unattributed_processes", (("gpu", H200),))] == 1  # the host's pid 466
        per_pod = [
            k for k in got if k[0].startswith(("canarist_gpu_memory", "canarist_gpu_sm", "canarist_gpu_seconds"))
        ]
        assert len(per_pod) == 2 * 5  # two pods x five series, nothing for the host process
        print(text)  # the report quotes one real scrape
        assert scrape(f"{base}/healthz") == (200, "ok\n")
        assert scrape(f"{base}/nothing")[0] == 404
        clock.now += 3 * 5.0 + 5.1  # no sample completed for three intervals and 5 s: the loop is stuck
        code, text = scrape(f"{base}/healthz")
        assert code == 503 and text.startswith("stalled: no sample completed for 20s")
    finally:
        server.shutdown()
        server.server_close()


def test_without_an_api_server_the_agent_still_exports_and_counts_every_process_unattributed(proc: Path) -> None:
    agent = Agent(RecordedGpu([h200((464, IDLE_BYTES, 0.0), (465, BUSY_BYTES, 99.0))]), NoPods(), proc=proc)
    assert agent.sample()
    snapshot, _ = agent.current()
    assert snapshot.rows == [] and snapshot.unattributed == {H200: 2}
