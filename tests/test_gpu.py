"""The GPU node edge: a process's pod from its cgroup file (every kubelet layout), and NVML's failures
worded, with the real ``pynvml`` on this GPU-less machine (the real GPU path: bench/gpu_agent_check.sh)."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.edges.gpu import nvml
from controller.edges.gpu.pods import PodRef, pod_of_cgroup, pod_of_pid

UID = "0b5c1d6e-7f8a-4b9c-8d0e-1f2a3b4c5d6e"
CID = "a3f9c2" + "0" * 58
SLICE = UID.replace("-", "_")  # the systemd driver's spelling of the uid
CANARIST = Path(sys.executable).parent / "canarist"

LAYOUTS = [
    (
        "systemd, containerd, burstable (v2)",
        f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{SLICE}.slice/cri-containerd-{CID}.scope\n",
        PodRef(UID, CID, "containerd"),
    ),
    (
        "systemd, CRI-O, best effort (v2)",
        f"0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{SLICE}.slice/crio-{CID}.scope\n",
        PodRef(UID, CID, "cri-o"),
    ),
    (
        "systemd, guaranteed (no QoS level), docker",
        f"0::/kubepods.slice/kubepods-pod{SLICE}.slice/docker-{CID}.scope\n",
        PodRef(UID, CID, "docker"),
    ),
    ("cgroupfs, burstable (v2)", f"0::/kubepods/burstable/pod{UID}/{CID}\n", PodRef(UID, CID)),
    ("cgroupfs, guaranteed", f"0::/kubepods/pod{UID}/{CID}\n", PodRef(UID, CID)),
    (
        "cgroup v1, one line per hierarchy",
        f"12:pids:/kubepods/besteffort/pod{UID}/{CID}\n11:memory:/kubepods/besteffort/pod{UID}/{CID}\n1:name=systemd:/\n",
        PodRef(UID, CID),
    ),
    ("the pod's own cgroup, no container", f"0::/kubepods/burstable/pod{UID}\n", PodRef(UID, None)),
    (
        "read from another pod's cgroup namespace, cgroupfs",
        f"0::/../../../burstable/pod{UID}/{CID}\n",
        PodRef(UID, CID),
    ),
    ("read from another pod's cgroup namespace, cgroupfs, guaranteed", f"0::/../../pod{UID}/{CID}\n", PodRef(UID, CID)),
    (
        "read from another pod's cgroup namespace, systemd",
        f"0::/../../../kubepods-burstable.slice/kubepods-burstable-pod{SLICE}.slice/cri-containerd-{CID}.scope\n",
        PodRef(UID, CID, "containerd"),
    ),
    ("the reader's own cgroup namespace root", "0::/\n", None),
    ("a host process", "0::/system.slice/containerd.service\n", None),
    ("a user's shell", "0::/user.slice/user-0.slice/session-3.scope\n", None),
    ("empty", "", None),
]


@pytest.mark.parametrize(("text", "pod"), [c[1:] for c in LAYOUTS], ids=[c[0] for c in LAYOUTS])
def test_a_process_is_mapped_to_its_pod_in_every_kubelet_layout(text: str, pod: PodRef | None) -> None:
    assert pod_of_cgroup(text) == pod


@given(
    st.uuids(version=4),
    st.text("0123456789abcdef", min_size=64, max_size=64),
    st.sampled_from(["burstable", "besteffort", ""]),
    st.sampled_from(["systemd", "cgroupfs"]),
)
def test_any_pod_uid_and_container_id_come_back_as_they_went_in(
    pod_uid: uuid.UUID, container: str, qos: str, driver: str
) -> None:
    uid = str(pod_uid)
    if driver == "systemd":
        level = f"kubepods-{qos}" if qos else "kubepods"
        parent = f"/kubepods.slice/{level}.slice" if qos else "/kubepods.slice"
        path = f"{parent}/{level}-pod{uid.replace('-', '_')}.slice/cri-containerd-{container}.scope"
    else:
        path = f"/kubepods/{qos + '/' if qos else ''}pod{uid}/{container}"
    found = pod_of_cgroup(f"0::{path}\n")
    assert found is not None and (found.uid, found.container_id) == (uid, container)


def test_a_pid_is_read_from_a_proc_tree_and_a_gone_one_is_none(tmp_path: Path) -> None:
    (tmp_path / "4242").mkdir()
    (tmp_path / "4242" / "cgroup").write_text(LAYOUTS[0][1])
    assert pod_of_pid(4242, tmp_path) == PodRef(UID, CID, "containerd")
    assert pod_of_pid(4243, tmp_path) is None  # it ended meanwhile


# --- NVML ----------------------------------------------------------------------------------------


def test_without_a_gpu_nvml_is_unavailable_with_one_line_saying_why() -> None:
    with pytest.raises(nvml.NvmlUnavailableError) as refused:
        nvml.Nvml()
    assert str(refused.value).startswith("NVMLError_LibraryNotFound: NVML library not found (libnvidia-ml.so)")


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (nvml.pynvml.NVML_ERROR_LIBRARY_NOT_FOUND, "no NVIDIA driver on this node"),
        (nvml.pynvml.NVML_ERROR_DRIVER_NOT_LOADED, "the NVIDIA driver is not loaded"),
        (nvml.pynvml.NVML_ERROR_NO_PERMISSION, "no permission to use NVML"),
        (nvml.pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH, "differ in version"),
        (nvml.pynvml.NVML_ERROR_GPU_IS_LOST, "GPU is lost"),  # NVML's own words for the rest
    ],
)
def test_each_nvml_failure_is_worded_for_the_person_reading_the_log(code: int, words: str) -> None:
    error = nvml.pynvml.NVMLError(code)  # the real class pynvml raises for that code
    line = nvml.explain(error)
    assert line.startswith(type(error).__name__ + ": ") and words in line and "\n" not in line


@pytest.mark.parametrize(
    "args",
    [["--once"], [], ["--interval", "1", "--port", "0", "--node-name", "gpu-node-1"]],
    ids=["once", "the agent", "the agent with options"],
)
def test_the_agent_without_a_gpu_exits_1_with_one_line_and_no_traceback(args: list[str]) -> None:
    done = subprocess.run([CANARIST, "gpu-agent", *args], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1, done
    assert done.stderr.strip().count("\n") == 0 and "Traceback" not in done.stderr
    assert "NVMLError_LibraryNotFound" in done.stderr and done.stdout == ""
