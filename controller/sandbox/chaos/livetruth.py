"""The soak's truth served live, as Istio's sidecars report it, for a real Prometheus to scrape.

:class:`LiveTruth` is a Prometheus collector of ``istio_requests_total`` (by ``response_code``) and
the ``istio_request_duration_milliseconds`` histogram, with the labels Istio's destination sidecars
put on them (:mod:`controller.metrics.kinds.istio` reads them). Every :attr:`~LiveTruth.every`
seconds it advances each rollout's counters by the traffic of the time gone by, split by the weight
the VirtualServices *stored in the API* give the canary at that moment (read from the API
stand-in's store, not through its faults): what a mesh does with the routes the controller wrote.
The numbers are :mod:`~controller.sandbox.chaos.truth`'s: errors and latency per canary kind, and
``RPS x 60 / interval`` requests per second, so an analysis window of ``interval`` real seconds
holds as many requests as the in-process truth's one-minute window.

Why live and in real time. The canary's share of each window is what the controller decides, faults
and all, so it cannot be written in advance: a history backfilled for a planned share per window
would be evidence for routes the controller never wrote. Writing the truth as it happens into a
virtual-time TSDB (a block backfilled, or a remote write, per tick) is heavy, and scrapes are
stamped with real time, so a virtual clock running a hundred times faster would leave windows
without a sample at their edges. So the soak runs in real time with short windows (seconds), and
Prometheus scrapes this collector every fraction of a second: the controller reads what Prometheus
really recorded, scrape lag and ``increase()``'s extrapolation included, and a window it cannot
read is no data, never a pass. The counters are exact fractions (no random draws), as the
in-process truth's are.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric

from controller.api.model import GROUP, PLURAL
from controller.sandbox.chaos.invariants import ISTIO, canary_weight
from controller.sandbox.chaos.truth import CANARY, EDGES, HEALTHY, RPS, STABLE_ERRORS
from controller.sandbox.localapi import LocalApiServer

VERSIONS = ("v1", "v2")  # stable, canary: truth.policy's
#: Istio's bucket bounds in milliseconds, as its ``le`` label writes them.
LE = (*(f"{edge * 1000:g}" for edge in EDGES[:-1]), "+Inf")
#: A representative latency per bucket (its upper bound; the last, twice the one before) for ``_sum``.
_BUCKET_MS = (*(edge * 1000 for edge in EDGES[:-1]), EDGES[-2] * 2000)


@dataclass
class Served:
    """One version's counters: requests by response code, cumulative bucket counts, latency sum (ms)."""

    codes: dict[str, float] = field(default_factory=lambda: {"200": 0.0, "500": 0.0})
    buckets: list[float] = field(default_factory=lambda: [0.0] * len(LE))
    sum_ms: float = 0.0

    def add(self, requests: float, errors: float, cumulative: tuple[float, ...]) -> None:
        self.codes["200"] += requests * (1 - errors)
        self.codes["500"] += requests * errors
        below = 0.0
        for index, share in enumerate(cumulative):
            self.buckets[index] += requests * share
            self.sum_ms += requests * (share - below) * _BUCKET_MS[index]
            below = share


@dataclass(eq=False)  # a collector is registered by identity
class LiveTruth:
    """The collector (see the module docstring): ``truths`` maps a rollout key (namespace/name) to its truth."""

    api: LocalApiServer
    truths: Mapping[str, str]
    interval: float
    every: float = 0.05
    #: What each rollout's versions served so far, by (rollout key, version).
    served: dict[tuple[str, str], Served] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        for key in self.truths:
            for version in VERSIONS:
                self.served[(key, version)] = Served()

    @property
    def rps(self) -> float:
        return RPS * 60 / self.interval

    def weights(self) -> dict[str, int]:
        """The canary weight the stored VirtualServices give each rollout (0 before any, or once it is gone)."""
        with self.api.cond:
            objects = dict(self.api.objects)
        found = dict.fromkeys(self.truths, 0)
        for key in self.truths:
            namespace, _, name = key.partition("/")
            rollout = objects.get((GROUP, PLURAL, namespace, name))
            if rollout is None:
                continue
            found[key] = max(
                (
                    canary_weight(rollout, o)
                    for k, o in objects.items()
                    if k[:3] == (ISTIO, "virtualservices", namespace)
                ),
                default=0,
            )
        return found

    def advance(self, seconds: float) -> None:
        """``seconds`` of traffic at the weights stored now."""
        weights = self.weights()
        with self.lock:
            for key, truth in self.truths.items():
                requests, share = self.rps * seconds, weights[key] / 100
                errors, latency = CANARY[truth]
                self.served[(key, VERSIONS[0])].add(requests * (1 - share), STABLE_ERRORS, HEALTHY)
                self.served[(key, VERSIONS[1])].add(requests * share, errors, latency)

    def run(self, stop: threading.Event) -> None:
        """Advance every :attr:`every` seconds by the real time gone by, until ``stop``."""
        last = time.monotonic()
        while not stop.wait(self.every):
            now = time.monotonic()
            self.advance(now - last)
            last = now

    def collect(self) -> Iterator[Metric]:
        labels = ["reporter", "destination_service_namespace", "destination_service_name", "destination_version"]
        requests = CounterMetricFamily(
            "istio_requests", "Requests, as Istio reports them", labels=[*labels, "response_code"]
        )
        duration = HistogramMetricFamily("istio_request_duration_milliseconds", "Request duration", labels=labels)
        with self.lock:
            for (key, version), served in self.served.items():
                namespace, _, name = key.partition("/")
                identity = ["destination", namespace, name, version]
                for code, count in served.codes.items():
                    requests.add_metric([*identity, code], count)
                buckets = list(zip(LE, served.buckets, strict=True))
                duration.add_metric(identity, buckets, served.sum_ms)
        yield requests
        yield duration


@contextmanager
def serving(truth: LiveTruth, port: int) -> Iterator[dict[str, Any]]:
    """``truth`` advancing in a thread and served on ``127.0.0.1:port``; yields the scrape config of its job."""
    registry = CollectorRegistry()
    registry.register(truth)
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    stop = threading.Event()
    runner = threading.Thread(target=truth.run, args=(stop,), name="live-truth", daemon=True)
    runner.start()
    try:
        yield {"job_name": "mesh", "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}
    finally:
        stop.set()
        server.shutdown()
        server.server_close()
        runner.join(timeout=5)
        thread.join(timeout=5)
