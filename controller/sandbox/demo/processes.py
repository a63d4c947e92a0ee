"""Child processes the demo starts, each stopped by its PID, and Debian's Prometheus among them.

Every process runs in its own session (process group), so a stop reaches its children too, and a
:class:`Supervisor` stops everything it started in reverse order, also when the demo is
interrupted. A missing binary is an error that says how to install it: the demo never pretends.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import yaml

PROMETHEUS = os.environ.get("CANARIST_PROMETHEUS", "/usr/bin/prometheus")
HAPROXY = os.environ.get("CANARIST_HAPROXY", "/usr/sbin/haproxy")
VICTORIA_METRICS = os.environ.get("CANARIST_VICTORIA_METRICS", "/usr/bin/victoria-metrics")


class PartMissingError(RuntimeError):
    """A real part (binary) the demo needs is not installed."""


class StartError(RuntimeError):
    """A part did not start or did not become ready; carries the tail of its log."""


def require(binary: str, package: str) -> str:
    """The binary's path, or a PartMissingError naming the Debian package to install."""
    if not (os.path.isfile(binary) and os.access(binary, os.X_OK)):
        raise PartMissingError(
            f"{binary} not found: install Debian's {package} (apt-get install -y --no-install-recommends {package}; "
            "`make demo` does)"
        )
    return binary


def stop_on_signals() -> threading.Event:
    """An event set by SIGTERM or SIGINT: how each demo process learns to stop cleanly."""
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return stop


def free_port() -> int:
    """A loopback port that was free a moment ago (the caller retries if it is taken meanwhile)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_ok(url: str) -> bool:
    """Whether ``url`` answers 200 right now."""
    with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as answer:
        return bool(answer.status == 200)
    return False


class ManagedProcess:
    """One child process: started in its own session, logged to a file, stopped by PID."""

    def __init__(self, name: str, argv: Sequence[str], log: Path, env: Mapping[str, str] | None = None) -> None:
        self.name = name
        self.argv = list(argv)
        self.log = log
        self.env = dict(env) if env is not None else None
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, ready: Callable[[], bool], timeout: float = 30.0) -> ManagedProcess:
        """Start and wait until ``ready()`` holds; a StartError (with the log's tail) if it never does."""
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env=self.env,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                break
            if ready():
                return self
            time.sleep(0.05)
        self.stop()
        raise StartError(f"{self.name} did not become ready; its log ends:\n{self.tail()}")

    def tail(self, chars: int = 2000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM to its process group, wait, then SIGKILL; idempotent."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=timeout)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)  # anything it left in its group


class Supervisor:
    """Everything the demo started, stopped in reverse order (by PID) however the demo ends."""

    def __init__(self) -> None:
        self.processes: list[ManagedProcess] = []
        self.stoppers: list[Callable[[], None]] = []

    def start(self, process: ManagedProcess, ready: Callable[[], bool], timeout: float = 30.0) -> ManagedProcess:
        self.processes.append(process)
        return process.start(ready, timeout)

    def on_stop(self, stopper: Callable[[], None]) -> None:
        """Also run ``stopper`` (an in-process server, a thread) when stopping, in reverse order."""
        self.stoppers.append(stopper)

    def pids(self) -> list[int]:
        return [p.pid for p in self.processes if p.pid is not None]

    def stop_all(self) -> None:
        for stopper in reversed(self.stoppers):
            with contextlib.suppress(Exception):
                stopper()
        self.stoppers.clear()
        for process in reversed(self.processes):
            process.stop()

    def __enter__(self) -> Supervisor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()


class Prometheus:
    """Debian's ``prometheus`` in the foreground with its own config and TSDB on a free loopback port."""

    def __init__(self, workdir: Path, *, scrape_configs: list[dict[str, Any]], scrape_interval: str = "1s") -> None:
        self.workdir = workdir
        self.scrape_configs = scrape_configs
        self.scrape_interval = scrape_interval
        self.port = 0
        self.process: ManagedProcess | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def argv(self, binary: str) -> list[str]:
        return [
            binary,
            f"--config.file={self.workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={self.workdir / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--storage.tsdb.retention.time=100y",  # backfilled histories are old: keep them
            "--query.lookback-delta=1m",
            "--log.level=warn",
        ]

    def start(
        self, supervisor: Supervisor | None = None, timeout: float = 30.0, *, port: int | None = None
    ) -> Prometheus:
        """Start on ``port`` (a restart at the same address), or on a free one."""
        binary = require(PROMETHEUS, "prometheus")
        (self.workdir / "tsdb").mkdir(parents=True, exist_ok=True)
        config = {"global": {"scrape_interval": self.scrape_interval}, "scrape_configs": self.scrape_configs}
        (self.workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        error: StartError | None = None
        for _ in range(1 if port else 3):  # a port taken between free_port() and the bind: try another
            self.port = port or free_port()
            self.process = ManagedProcess("prometheus", self.argv(binary), self.workdir / "prometheus.log")
            try:
                if supervisor is not None:
                    supervisor.start(self.process, lambda: http_ok(f"{self.url}/-/ready"), timeout)
                else:
                    self.process.start(lambda: http_ok(f"{self.url}/-/ready"), timeout)
                return self
            except StartError as exc:
                error = exc
        assert error is not None
        raise error

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()


class VictoriaMetrics:
    """Debian's single-node ``victoria-metrics`` on a free loopback port: a second PromQL store.

    Histories go in through its import API (:meth:`import_text`), already searchable when it returns.
    Queries near "now" are not delayed (``-search.latencyOffset=0s``) and results are not cached, so a
    test reads exactly what it wrote.
    """

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = 0
        self.process: ManagedProcess | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def argv(self, binary: str) -> list[str]:
        return [
            binary,
            f"-storageDataPath={self.workdir / 'data'}",
            f"-httpListenAddr=127.0.0.1:{self.port}",
            "-retentionPeriod=100y",  # imported histories are old: keep them
            "-search.latencyOffset=0s",
            "-search.disableCache",
            "-loggerLevel=WARN",
        ]

    def start(self, supervisor: Supervisor | None = None, timeout: float = 30.0) -> VictoriaMetrics:
        binary = require(VICTORIA_METRICS, "victoria-metrics")
        self.workdir.mkdir(parents=True, exist_ok=True)
        error: StartError | None = None
        for _ in range(3):  # a port taken between free_port() and the bind: try another
            self.port = free_port()
            self.process = ManagedProcess("victoria-metrics", self.argv(binary), self.workdir / "vm.log")
            try:
                if supervisor is not None:
                    supervisor.start(self.process, lambda: http_ok(f"{self.url}/health"), timeout)
                else:
                    self.process.start(lambda: http_ok(f"{self.url}/health"), timeout)
                return self
            except StartError as exc:
                error = exc
        assert error is not None
        raise error

    def import_text(self, text: str) -> None:
        """Store samples in Prometheus' text format with millisecond timestamps, searchable on return."""
        request = urllib.request.Request(f"{self.url}/api/v1/import/prometheus", data=text.encode(), method="POST")
        with urllib.request.urlopen(request, timeout=120) as answer:
            answer.read()
        with urllib.request.urlopen(f"{self.url}/internal/force_flush", timeout=60) as answer:
            answer.read()

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
