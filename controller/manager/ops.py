"""The controller's own operations surface: Prometheus metrics, /healthz and /readyz.

``/metrics`` uses prometheus-client with a registry of our own; ``/healthz`` answers ok only while
the loop makes progress (a pass completed within ``stall_after`` seconds, on the monotonic clock),
so a loop stuck on an edge gets the pod restarted; ``/readyz`` once the first pass has listed the
rollouts (a follower is ready too: it is healthy, it just does not act).

The server binds the address it is given (loopback unless told otherwise) and drops a connection
that sends nothing for ``SOCKET_TIMEOUT`` seconds or is still open after ``REQUEST_DEADLINE``
seconds (a client trickling a byte at a time), so slow clients cannot pile up threads.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from controller.api.status import Phase
from controller.engine.reconcile import Outcome

#: Seconds a client of the operations server may stay silent before its connection is dropped.
SOCKET_TIMEOUT = 5.0
#: Seconds one connection may last in all, however it trickles.
REQUEST_DEADLINE = 10.0


class ControllerMetrics:
    """The series canarist exports about itself, and the Observer the manager reports to."""

    def __init__(self, stall_after: float = 180.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.stall_after, self.clock = stall_after, clock
        self.last_pass = clock()  # the start counts: the first pass gets the same time as any other
        self.registry = CollectorRegistry()
        self.phase = Gauge(
            "canarist_rollout_phase", "1 for the rollout's current phase", ["rollout", "phase"], registry=self.registry
        )
        self.weight = Gauge(
            "canarist_rollout_canary_weight", "Canary weight in percent", ["rollout"], registry=self.registry
        )
        self.decisions = Counter(
            "canarist_decisions", "Decisions taken, by action", ["rollout", "action"], registry=self.registry
        )
        self.duration = Histogram(
            "canarist_reconcile_duration_seconds", "Time one reconcile took", registry=self.registry
        )
        self.errors = Counter(
            "canarist_edge_errors", "Reconciles that met an unavailable edge", ["rollout"], registry=self.registry
        )
        self.leader = Gauge("canarist_leader", "1 while this replica leads", registry=self.registry)
        self.passes = Gauge(
            "canarist_last_pass_timestamp_seconds", "When the loop last completed a pass", registry=self.registry
        )
        self.ready = threading.Event()

    def ticked(self) -> None:
        """The loop completed a pass: the liveness heartbeat."""
        self.last_pass = self.clock()
        self.passes.set_to_current_time()

    def stalled(self) -> float | None:
        """Seconds since the last completed pass if that is more than ``stall_after``, else None."""
        age = self.clock() - self.last_pass
        return age if age > self.stall_after else None

    def reconciled(self, outcome: Outcome, seconds: float) -> None:
        self.ready.set()
        self.duration.observe(seconds)
        self.decisions.labels(outcome.key, outcome.action.value).inc()
        if outcome.edge_failure is not None:
            self.errors.labels(outcome.key).inc()
        if outcome.phase is not None:
            for phase in Phase:
                self.phase.labels(outcome.key, phase.value).set(1.0 if phase is outcome.phase else 0.0)
        if outcome.canary_weight is not None:
            self.weight.labels(outcome.key).set(outcome.canary_weight)

    def leading(self, leader: bool) -> None:
        self.ready.set()
        self.leader.set(1.0 if leader else 0.0)


def serve(metrics: ControllerMetrics, port: int, host: str = "127.0.0.1") -> ThreadingHTTPServer:
    """Start the operations HTTP server on ``host``:``port`` in a daemon thread; the caller shuts it down."""

    class Handler(BaseHTTPRequestHandler):
        timeout = SOCKET_TIMEOUT  # the socket's timeout: a silent client is dropped

        def setup(self) -> None:
            super().setup()
            self._deadline = threading.Timer(REQUEST_DEADLINE, self._cut)
            self._deadline.daemon = True
            self._deadline.start()

        def finish(self) -> None:
            self._deadline.cancel()
            super().finish()

        def _cut(self) -> None:
            """The connection outlived its deadline (a trickling client): end it."""
            with contextlib.suppress(OSError):  # closed meanwhile
                self.connection.shutdown(socket.SHUT_RDWR)

        def do_GET(self) -> None:
            if self.path == "/metrics":
                self._send(200, generate_latest(metrics.registry), CONTENT_TYPE_LATEST)
            elif self.path == "/healthz":
                age = metrics.stalled()
                if age is None:
                    self._send(200, b"ok\n", "text/plain")
                else:
                    self._send(503, f"stalled: no loop pass completed for {age:.0f}s\n".encode(), "text/plain")
            elif self.path == "/readyz":
                ready = metrics.ready.is_set()
                self._send(200 if ready else 503, b"ok\n" if ready else b"starting\n", "text/plain")
            else:
                self._send(404, b"not found\n", "text/plain")

        def _send(self, code: int, body: bytes, content_type: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            return

    class Server(ThreadingHTTPServer):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET  # "::" for dual-stack pods
        daemon_threads = True

    server = Server((host, port), Handler)
    threading.Thread(target=server.serve_forever, name="canarist-ops", daemon=True).start()
    return server
