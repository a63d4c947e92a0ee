"""What each GPU process uses, from NVML through the ``pynvml`` module (the ``nvidia-ml-py`` package).

Per GPU (by uuid): the compute processes with their used memory
(``nvmlDeviceGetComputeRunningProcesses``) and their SM and memory utilisation over the last
sample period (``nvmlDeviceGetProcessUtilization``, which raises NotFound when no process ran
since the timestamp given: then nobody used the SMs, which is 0, not unknown), and each GPU's total
memory (``nvmlDeviceGetMemoryInfo``). A device that does not report per-process utilisation
(NotSupported) is reported as such, never crashed on. Without NVML (no driver, no library, no
permission) :class:`NvmlUnavailableError` carries one line that says which and what to do; a read
that fails later (a GPU lost) raises :class:`NvmlSampleError`, one line too.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Protocol

with warnings.catch_warnings():  # the deprecated `pynvml` shim, if installed as well, warns on import
    warnings.simplefilter("ignore", FutureWarning)
    import pynvml

#: Each NVML failure that means "no NVML here", worded for the person who reads the agent's log.
UNAVAILABLE = {
    "NVMLError_LibraryNotFound": "NVML library not found (libnvidia-ml.so): no NVIDIA driver on this node, "
    "or it is not mounted into the container (NVIDIA container toolkit, runtimeClassName: nvidia)",
    "NVMLError_DriverNotLoaded": "the NVIDIA driver is not loaded on this node (nvidia-smi fails too)",
    "NVMLError_NoPermission": "no permission to use NVML: the agent needs the GPU device files "
    "(/dev/nvidia*) and NVIDIA_VISIBLE_DEVICES=all",
    "NVMLError_LibRmVersionMismatch": "the NVML library and the loaded driver differ in version: reboot or "
    "reinstall the driver",
    "NVMLError_Uninitialized": "NVML is not initialised",
}


class NvmlUnavailableError(RuntimeError):
    """NVML cannot be used on this node; the message is one line saying why."""


class NvmlSampleError(RuntimeError):
    """One read of NVML failed (a GPU lost, the driver gone); the message is one line. The next read may work."""


@dataclass(frozen=True)
class GpuProcess:
    """One process on one GPU: its memory in bytes and, when the device reports it, its SM and memory
    utilisation in percent over the last sample period."""

    gpu_uuid: str
    pid: int
    used_memory_bytes: int | None
    sm_percent: float | None
    memory_percent: float | None


@dataclass
class GpuReading:
    """Every GPU's processes; ``unsupported`` names the GPUs that do not report per-process utilisation;
    ``memory_total_bytes`` is each GPU's memory (by uuid)."""

    processes: list[GpuProcess] = field(default_factory=list)
    gpus: list[str] = field(default_factory=list)
    unsupported: list[str] = field(default_factory=list)
    memory_total_bytes: dict[str, int] = field(default_factory=dict)


class GpuSource(Protocol):
    """Where the agent's readings come from: :class:`Nvml` on a node, values in tests."""

    def read(self) -> GpuReading:
        """Every GPU's processes now; raises :class:`NvmlSampleError` when this read failed."""
        ...


def explain(error: Exception) -> str:
    """One line for an NVML error: what it means on a node, or NVML's own words."""
    name = type(error).__name__
    return f"{name}: {UNAVAILABLE.get(name, str(error))}"


class Nvml:
    """NVML, initialised once; :meth:`read` samples every GPU. Use as a context manager (shutdown at exit)."""

    def __init__(self) -> None:
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            raise NvmlUnavailableError(explain(exc)) from None
        self.last_seen_us: dict[str, int] = {}

    def __enter__(self) -> Nvml:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(pynvml.NVMLError):
            pynvml.nvmlShutdown()

    def read(self) -> GpuReading:
        """Every GPU's compute processes, their memory, and their utilisation since the last read.

        Raises :class:`NvmlSampleError` (one line) when NVML fails meanwhile, e.g. a GPU fell off the bus."""
        try:
            return self._read()
        except pynvml.NVMLError as exc:
            raise NvmlSampleError(explain(exc)) from None

    def _read(self) -> GpuReading:
        reading = GpuReading()
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            uuid = _text(pynvml.nvmlDeviceGetUUID(handle))
            reading.gpus.append(uuid)
            reading.memory_total_bytes[uuid] = int(pynvml.nvmlDeviceGetMemoryInfo(handle).total)
            utilisation = self._utilisation(handle, uuid, reading)
            for process in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                memory = getattr(process, "usedGpuMemory", None)
                sm, mem = utilisation.get(process.pid, (0.0, 0.0)) if utilisation is not None else (None, None)
                reading.processes.append(
                    GpuProcess(uuid, int(process.pid), int(memory) if isinstance(memory, int) else None, sm, mem)
                )
        return reading

    def _utilisation(self, handle: Any, uuid: str, reading: GpuReading) -> dict[int, tuple[float, float]] | None:
        """pid -> mean (SM %, memory %) over its samples since the last read; None when the GPU cannot say."""
        since = self.last_seen_us.get(uuid, int((time.time() - 10) * 1e6))
        try:
            samples = pynvml.nvmlDeviceGetProcessUtilization(handle, since)
        except pynvml.NVMLError_NotFound:  # no process ran on it since then
            samples = []
        except pynvml.NVMLError_NotSupported:
            reading.unsupported.append(uuid)
            return None
        sums: dict[int, tuple[float, float, int]] = {}
        for sample in samples:
            self.last_seen_us[uuid] = max(self.last_seen_us.get(uuid, 0), int(sample.timeStamp))
            sm, mem, n = sums.get(int(sample.pid), (0.0, 0.0, 0))
            sums[int(sample.pid)] = (sm + float(sample.smUtil), mem + float(sample.memUtil), n + 1)
        return {pid: (sm / n, mem / n) for pid, (sm, mem, n) in sums.items()}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
