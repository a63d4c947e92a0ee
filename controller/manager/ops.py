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
import threading
import time
from collections.abc import Callable
from http.server import ThreadingHTTPServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from controller.api.status import MetricStatus, Phase, Verdict
from controller.edges.ops_http import serve_pages
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
        evidence = ["rollout", "metric"]
        self.e_value = Gauge(
            "canarist_metric_e_value",
            "A metric's evidence of a regression at the last look (an e-value: proven at the threshold)",
            evidence,
            registry=self.registry,
        )
        self.e_value_non_inferiority = Gauge(
            "canarist_metric_e_value_non_inferiority",
            "A metric's evidence that the canary is no worse than its margin at the last look",
            evidence,
            registry=self.registry,
        )
        self.threshold = Gauge(
            "canarist_metric_threshold",
            "The e-value at which a metric's evidence decides",
            evidence,
            registry=self.registry,
        )
        self.verdict = Gauge(
            "canarist_metric_verdict", "1 for a metric's verdict at the last look", [*evidence, "verdict"],
            registry=self.registry,
        )  # fmt: skip
        self.notifications = Counter(
            "canarist_notifications",
            "Notification deliveries by result (sent, retried, failed, dropped)",
            ["result"],
            registry=self.registry,
        )
        self.shards_held = Gauge(
            "canarist_shards_held", "Shard Leases this replica holds (sharded replicas)", registry=self.registry
        )
        self.shard_members = Gauge(
            "canarist_shard_members", "Live replicas as this one sees them (sharded replicas)", registry=self.registry
        )
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
        for metric in outcome.metrics:
            self._evidence(outcome.key, metric)

    def _evidence(self, key: str, metric: MetricStatus) -> None:
        """A look's numbers for one metric (NaN stays NaN: Prometheus stores it, Grafana leaves a gap)."""
        name = metric.name or ""
        for gauge, value in (
            (self.e_value, metric.e_value),
            (self.e_value_non_inferiority, metric.e_value_non_inferiority),
            (self.threshold, metric.threshold),
        ):
            if value is not None:
                gauge.labels(key, name).set(value)
        if metric.verdict is not None:
            for verdict in Verdict:
                self.verdict.labels(key, name, verdict.value).set(1.0 if verdict is metric.verdict else 0.0)

    def leading(self, leader: bool) -> None:
        self.ready.set()
        self.leader.set(1.0 if leader else 0.0)

    def notified(self, result: str) -> None:
        """A notification delivery's result (the notifier's ``count``; from its worker thread)."""
        self.notifications.labels(result).inc()

    def forgotten(self, key: str) -> None:
        """A rollout gone from this replica: its gauges go too, so no stale phase or weight is
        scraped from it while another replica (or nobody, once deleted) reports the rollout."""
        for phase in Phase:
            with contextlib.suppress(KeyError):
                self.phase.remove(key, phase.value)
        with contextlib.suppress(KeyError):
            self.weight.remove(key)
        for gauge in (self.e_value, self.e_value_non_inferiority, self.threshold, self.verdict):
            for labels in [s.labels for m in gauge.collect() for s in m.samples if s.labels.get("rollout") == key]:
                with contextlib.suppress(KeyError):
                    gauge.remove(*labels.values())

    def sharded(self, held: int, members: int) -> None:
        self.ready.set()
        self.shards_held.set(held)
        self.shard_members.set(members)


def serve(metrics: ControllerMetrics, port: int, host: str = "127.0.0.1") -> ThreadingHTTPServer:
    """Start the operations HTTP server on ``host``:``port`` in a daemon thread; the caller shuts it down."""

    def healthz() -> tuple[int, bytes, str]:
        age = metrics.stalled()
        if age is None:
            return 200, b"ok\n", "text/plain"
        return 503, f"stalled: no loop pass completed for {age:.0f}s\n".encode(), "text/plain"

    def readyz() -> tuple[int, bytes, str]:
        ready = metrics.ready.is_set()
        return (200, b"ok\n", "text/plain") if ready else (503, b"starting\n", "text/plain")

    pages = {
        "/metrics": lambda: (200, generate_latest(metrics.registry), CONTENT_TYPE_LATEST),
        "/healthz": healthz,
        "/readyz": readyz,
    }
    return serve_pages(pages, port, host, name="canarist-ops", socket_timeout=SOCKET_TIMEOUT, deadline=REQUEST_DEADLINE)
