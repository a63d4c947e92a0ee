"""The node agent's loop: sample NVML, attribute each GPU process to its pod, keep the snapshot to export.

Each sample reads the GPU source, maps every process to its pod through ``/proc/PID/cgroup``, asks
the pod directory for those pods, and shapes the series (:func:`controller.edges.gpu.series.shape`).
The GPU-seconds counted per series are kept in memory across samples, also for a while after
their series vanished (a container that leaves a GPU and comes back continues its count): a counter
restarts only when the agent does. A failed read is counted, logged in one line and the last
snapshot dropped (stale numbers are worse than none); the loop goes on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from controller.edges.gpu.directory import PodDirectory
from controller.edges.gpu.nvml import GpuSource, NvmlSampleError
from controller.edges.gpu.pods import pod_of_pid
from controller.edges.gpu.series import SeriesKey, Snapshot, shape

log = logging.getLogger("canarist.gpu")

#: Seconds a vanished series' GPU-seconds are remembered, so that it continues if it comes back.
FORGET_AFTER = 3600.0


@dataclass(frozen=True)
class Health:
    """What ``/metrics`` says of the agent itself."""

    samples_ok: int
    samples_error: int


class Agent:
    """One node's agent: :meth:`sample` once, or :meth:`run` every ``interval`` seconds until stopped."""

    def __init__(
        self,
        source: GpuSource,
        directory: PodDirectory,
        *,
        interval: float = 5.0,
        proc: Path = Path("/proc"),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source, self.directory, self.interval, self.proc, self.clock = source, directory, interval, proc, clock
        self._lock = threading.Lock()
        self._snapshot = Snapshot()
        self._ok = self._errors = 0
        self._last_ok: float | None = None  # when the last successful sample was taken
        self._last_pass = clock()  # when a sample (of any outcome) last completed; the start counts
        self._counted: dict[SeriesKey, float] = {}
        self._seen: dict[SeriesKey, float] = {}

    def sample(self) -> bool:
        """Take one sample and make it the exported snapshot; False (counted and logged) when the read failed."""
        now = self.clock()
        try:
            reading = self.source.read()
        except NvmlSampleError as exc:
            log.warning("gpu-agent: sample failed: %s", exc)
            with self._lock:
                self._errors += 1
                self._snapshot = Snapshot()
                self._last_pass = self.clock()
            return False
        pod_of = {p.pid: pod_of_pid(p.pid, self.proc) for p in reading.processes}
        pods = self.directory.find({ref for ref in pod_of.values() if ref is not None})
        elapsed = None if self._last_ok is None else max(now - self._last_ok, 0.0)
        snapshot = shape(reading, pod_of, pods, elapsed, self._counted)
        for row in snapshot.rows:
            if row.gpu_seconds is not None:
                self._counted[row.key], self._seen[row.key] = row.gpu_seconds, now
        for key in [key for key, seen in self._seen.items() if now - seen > FORGET_AFTER]:
            del self._counted[key], self._seen[key]
        with self._lock:
            self._snapshot, self._last_ok = snapshot, now
            self._ok += 1
            self._last_pass = self.clock()
        return True

    def run(self, stop: threading.Event) -> None:
        """Sample every ``interval`` seconds (from the start of one sample to the next) until ``stop`` is set."""
        while not stop.is_set():
            started = self.clock()
            self.sample()
            stop.wait(max(self.interval - (self.clock() - started), 0.0))

    def current(self) -> tuple[Snapshot, Health]:
        """The snapshot to export and the agent's own counts, read together."""
        with self._lock:
            return self._snapshot, Health(self._ok, self._errors)

    def stalled(self) -> float | None:
        """Seconds since a sample last completed when that is more than three intervals and 5 s, else None."""
        with self._lock:
            age = self.clock() - self._last_pass
        return age if age > 3 * self.interval + 5.0 else None
