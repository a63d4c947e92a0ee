"""The controller's own operations surface: Prometheus metrics, /healthz and /readyz.

``/metrics`` uses prometheus-client with a registry of our own; ``/healthz`` answers while the
process runs; ``/readyz`` once the first pass has listed the rollouts (a follower is ready too:
it is healthy, it just does not act).
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from controller.decision import Phase
from controller.reconcile import Outcome


class ControllerMetrics:
    """The series canarist exports about itself, and the Observer the manager reports to."""

    def __init__(self) -> None:
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
        self.ready = threading.Event()

    def reconciled(self, outcome: Outcome, seconds: float) -> None:
        self.ready.set()
        self.duration.observe(seconds)
        self.decisions.labels(outcome.key, outcome.action.value).inc()
        if "unavailable" in outcome.reason:
            self.errors.labels(outcome.key).inc()
        if outcome.phase is not None:
            for phase in Phase:
                self.phase.labels(outcome.key, phase.value).set(1.0 if phase is outcome.phase else 0.0)
        if outcome.canary_weight is not None:
            self.weight.labels(outcome.key).set(outcome.canary_weight)

    def leading(self, leader: bool) -> None:
        self.ready.set()
        self.leader.set(1.0 if leader else 0.0)


def serve(metrics: ControllerMetrics, port: int, host: str = "0.0.0.0") -> ThreadingHTTPServer:
    """Start the operations HTTP server in a daemon thread; the caller shuts it down."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/metrics":
                self._send(200, generate_latest(metrics.registry), CONTENT_TYPE_LATEST)
            elif self.path == "/healthz":
                self._send(200, b"ok\n", "text/plain")
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

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, name="canarist-ops", daemon=True).start()
    return server
