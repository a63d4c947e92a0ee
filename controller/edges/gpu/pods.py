"""Which Kubernetes pod and container a host process belongs to, from its ``/proc/PID/cgroup``.

The kubelet puts each container in a cgroup named after its pod's uid and the container's id; the
layout depends on the cgroup driver and the runtime:

- systemd driver: ``/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid with
  underscores>.slice/cri-containerd-<id>.scope`` (``crio-<id>.scope`` for CRI-O, ``docker-<id>.scope``);
  the guaranteed class has no QoS level (``kubepods-pod<uid>.slice``);
- cgroupfs driver: ``/kubepods/burstable/pod<uid>/<id>`` (guaranteed: ``/kubepods/pod<uid>/<id>``).

cgroup v2 has one line ``0::/path``; v1 one line per hierarchy (``N:controllers:/path``), all naming
the same pod. A process outside any pod (the host's own) maps to None. A reader in its own cgroup
namespace (a container's default on cgroup v2, the agent's too: hostPID shares PIDs, not cgroups)
sees the path relative to its own cgroup, climbing out with ``..``:
``0::/../../../burstable/pod<uid>/<id>`` under cgroupfs (the systemd names carry the pod either way).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

_UID = r"[0-9a-fA-F]{8}[-_][0-9a-fA-F]{4}[-_][0-9a-fA-F]{4}[-_][0-9a-fA-F]{4}[-_][0-9a-fA-F]{12}"
_ID = r"[0-9a-f]{12,64}"
_SYSTEMD = re.compile(
    rf"kubepods(?:-(?:burstable|besteffort))?-pod(?P<uid>{_UID})\.slice"
    rf"(?:/(?:(?P<runtime>cri-containerd|crio|docker)-(?P<id>{_ID})\.scope))?"
)
_CGROUPFS = re.compile(
    rf"/(?:kubepods|\.\.)(?:/(?:burstable|besteffort))?/pod(?P<uid>{_UID})(?:/(?P<id>{_ID}))?(?:/|$)"
)
_RUNTIMES = {"cri-containerd": "containerd", "crio": "cri-o", "docker": "docker"}


@dataclass(frozen=True)
class PodRef:
    """A process's pod (its uid, as the API server writes it) and container (its runtime's id, if named)."""

    uid: str
    container_id: str | None = None
    runtime: str | None = None


def pod_of_cgroup(text: str) -> PodRef | None:
    """The pod and container the cgroup file ``text`` names, or None for a process outside any pod."""
    for line in text.splitlines():
        path = line.split(":", 2)[-1]
        found = _SYSTEMD.search(path)
        if found is not None:
            runtime = found.group("runtime")
            return PodRef(found.group("uid").replace("_", "-"), found.group("id"), _RUNTIMES.get(runtime or ""))
        found = _CGROUPFS.search(path)
        if found is not None:
            return PodRef(found.group("uid").replace("_", "-"), found.group("id"))
    return None


def pod_of_pid(pid: int, proc: Path = Path("/proc")) -> PodRef | None:
    """The pod of host process ``pid`` (None when it is in none, or gone: processes end)."""
    try:
        text = (proc / str(pid) / "cgroup").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    return pod_of_cgroup(text)
