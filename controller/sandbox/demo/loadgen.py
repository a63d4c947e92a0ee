"""Realistic traffic for the demo, with ground truth that arrives late.

Requests (``POST /predict`` with features from :func:`controller.sandbox.demo.model.generate`) arrive as a
Poisson process whose rate wobbles gently around ``--rate``; worker threads send them over
keep-alive connections (one ``http.client`` connection each, reconnected after a failure) and read
``x-served-by`` to know which version answered. The generator knows every request's true label:
for ``--labelled-share`` of the answered requests it reports it ``--label-delay`` seconds later,
as real feedback (chargebacks, reviews) arrives, by incrementing ``fraud_predictions_labelled_total``
and ``fraud_predictions_correct_total`` per version: the label join a real platform runs.

``demo_requests_total{version, outcome}`` counts every request as ``ok``, ``injected_error`` (a
500 a server failed on purpose) or ``routing_failure`` (anything else: refused or reset
connections, timeouts, a proxy's own 5xx, an answer without ``x-served-by``), which must stay 0
while weights change. Traffic is open-loop: when the workers fall a second behind, new arrivals
are shed (counted in the summary) rather than queued without bound. SIGTERM or SIGINT stops it;
``--summary FILE`` then receives the totals.

Run: ``python -m controller.sandbox.demo.loadgen --target http://127.0.0.1:PORT --metrics-port M``.
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import http.client
import itertools
import json
import math
import queue
import random
import sys
import threading
import time
from collections import Counter as Tally
from collections.abc import Iterator, Mapping
from enum import StrEnum
from pathlib import Path
from typing import Any, Generic, TypeVar
from urllib.parse import urlsplit

import numpy as np
from prometheus_client import CollectorRegistry, Counter, start_http_server

from controller.sandbox.demo.model import generate
from controller.sandbox.demo.processes import stop_on_signals

T = TypeVar("T")
UNKNOWN = "unknown"
#: A keep-alive connection idle this long is reopened before use: the proxy may have closed it.
MAX_IDLE_S = 20.0
#: How long, at most, a stop waits for requests in flight before the totals are written.
STOP_GRACE_S = 2.0
_JSON = {"Content-Type": "application/json"}


class RequestOutcome(StrEnum):
    OK = "ok"
    INJECTED_ERROR = "injected_error"
    ROUTING_FAILURE = "routing_failure"


def classify(status: int | None, headers: Mapping[str, str], *, body_ok: bool = True) -> tuple[str, RequestOutcome]:
    """Which version answered and how; ``status`` None means no HTTP answer at all."""
    lower = {k.lower(): v for k, v in headers.items()}
    version = lower.get("x-served-by") or UNKNOWN
    if status is None or version == UNKNOWN:
        return version, RequestOutcome.ROUTING_FAILURE
    if status == 200 and body_ok:
        return version, RequestOutcome.OK
    if status >= 500 and lower.get("x-injected-error") == "1":
        return version, RequestOutcome.INJECTED_ERROR
    return version, RequestOutcome.ROUTING_FAILURE


def rate_at(t: float, rate: float, wobble: float, period: float) -> float:
    """The arrival rate at ``t`` seconds from the start: ``rate`` x (1 + wobble x sin)."""
    return rate * (1.0 + wobble * math.sin(2.0 * math.pi * t / period))


def arrivals(rng: random.Random, rate: float, *, wobble: float = 0.0, period: float = 60.0) -> Iterator[float]:
    """Arrival times (seconds from the start) of a Poisson process with rate :func:`rate_at` (by thinning)."""
    if rate <= 0 or not 0.0 <= wobble < 1.0 or period <= 0:
        raise ValueError(f"need rate > 0, 0 <= wobble < 1 and period > 0, got {rate}, {wobble}, {period}")
    peak = rate * (1.0 + wobble)
    t = 0.0
    while True:
        t += rng.expovariate(peak)
        if rng.random() * peak <= rate_at(t, rate, wobble, period):
            yield t


class LateLabels(Generic[T]):
    """Items that become due at a later time (a thread-safe heap): ground truth on its way."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, T]] = []
        self._seq = itertools.count()
        self._lock = threading.Lock()

    def push(self, due: float, item: T) -> None:
        with self._lock:
            heapq.heappush(self._heap, (due, next(self._seq), item))

    def pop_due(self, now: float) -> list[T]:
        """Every item due at or before ``now``, in due order (ties in push order)."""
        out: list[T] = []
        with self._lock:
            while self._heap and self._heap[0][0] <= now:
                out.append(heapq.heappop(self._heap)[2])
        return out

    def next_due(self) -> float | None:
        with self._lock:
            return self._heap[0][0] if self._heap else None

    def __len__(self) -> int:
        with self._lock:
            return len(self._heap)


class LoadGenerator:
    """Open-loop traffic to one target, its outcomes and late labels as Prometheus counters."""

    def __init__(
        self,
        target: str,
        registry: CollectorRegistry,
        *,
        rate: float = 150.0,
        workers: int = 16,
        labelled_share: float = 0.5,
        label_delay: float = 2.0,
        seed: int = 0,
        model_service: str = "fraud-detector",
        wobble: float = 0.15,
        wobble_period: float = 60.0,
        timeout: float = 5.0,
        versions: tuple[str, ...] = (),
    ) -> None:
        url = urlsplit(target)
        if url.scheme != "http" or not url.hostname:
            raise ValueError(f"target must be an http:// URL, got {target!r}")
        if workers < 1 or not 0.0 <= labelled_share <= 1.0 or label_delay < 0:
            raise ValueError("need workers >= 1, 0 <= labelled share <= 1 and label delay >= 0")
        self.host, self.port = url.hostname, url.port or 80
        self.path = url.path.rstrip("/") + "/predict"
        self.rate, self.workers, self.timeout = rate, workers, timeout
        self.labelled_share, self.label_delay, self.seed = labelled_share, label_delay, seed
        self.model, self.wobble, self.wobble_period = model_service, wobble, wobble_period
        self.requests = Counter("demo_requests", "Requests by answering version and outcome.",
                                ["version", "outcome"], registry=registry)  # fmt: skip
        self.labelled = Counter("fraud_predictions_labelled", "Predictions whose true label arrived.",
                                ["model", "version"], registry=registry)  # fmt: skip
        self.correct = Counter("fraud_predictions_correct", "Labelled predictions that were right.",
                               ["model", "version"], registry=registry)  # fmt: skip
        for version in versions:  # series exist from the start, so increase() sees the first events
            for outcome in RequestOutcome:
                self.requests.labels(version, outcome.value)
            self.labelled.labels(model_service, version)
            self.correct.labels(model_service, version)
        self.requests.labels(UNKNOWN, RequestOutcome.ROUTING_FAILURE.value)
        self.labels: LateLabels[tuple[str, bool]] = LateLabels()
        self.jobs: queue.Queue[tuple[list[float], bool] | None] = queue.Queue()
        self._lock = threading.Lock()
        self.sent = 0
        self.shed = 0
        self.outcomes: Tally[tuple[str, RequestOutcome]] = Tally()
        self.label_counts: Tally[tuple[str, bool]] = Tally()
        self.elapsed = 0.0

    def run(self, stop: threading.Event, duration: float | None = None) -> dict[str, Any]:
        """Send traffic until ``stop`` is set (or ``duration`` has passed); the summary."""
        threads = [threading.Thread(target=self._worker, args=(i,), daemon=True) for i in range(self.workers)]
        threads.append(threading.Thread(target=self._labeller, args=(stop,), daemon=True))
        for thread in threads:
            thread.start()
        start = time.monotonic()
        rng = np.random.default_rng(self.seed)
        rows = self._transactions(rng)
        max_backlog = max(int(self.rate), 10 * self.workers)  # about a second of traffic
        for t in arrivals(random.Random(self.seed), self.rate, wobble=self.wobble, period=self.wobble_period):
            if duration is not None and t >= duration:
                break
            if stop.wait(max(0.0, start + t - time.monotonic())):
                break
            if self.jobs.qsize() >= max_backlog:
                with self._lock:
                    self.shed += 1
                continue
            self.jobs.put(next(rows))
        self.elapsed = time.monotonic() - start
        with contextlib.suppress(queue.Empty):
            while True:
                self.jobs.get_nowait()
        for _ in range(self.workers):
            self.jobs.put(None)
        stop.set()
        # One deadline for all: a request still in flight (a slow canary) is left out of the totals
        # rather than holding the summary past the supervisor's patience.
        deadline = time.monotonic() + min(self.timeout, STOP_GRACE_S)
        for thread in threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        return self.summary()

    def _transactions(self, rng: np.random.Generator) -> Iterator[tuple[list[float], bool]]:
        while True:
            x, y = generate(rng, 512)
            for row, label in zip(x.tolist(), y.tolist(), strict=True):
                yield row, label > 0.5

    def _worker(self, index: int) -> None:
        """Send jobs over one keep-alive connection; http.client reopens it after a close."""
        rng = random.Random(self.seed * 1000 + index)
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        last_used = time.monotonic()
        while (job := self.jobs.get()) is not None:
            features, truth = job
            if time.monotonic() - last_used > MAX_IDLE_S:
                conn.close()
            with self._lock:
                self.sent += 1
            status: int | None = None
            headers: dict[str, str] = {}
            fraud: bool | None = None
            try:
                conn.request("POST", self.path, json.dumps({"features": features}), _JSON)
                response = conn.getresponse()
                body = response.read()
                status, headers = response.status, dict(response.headers.items())
                fraud = _fraud(body) if status == 200 else None
                if response.will_close:
                    conn.close()
            except (OSError, http.client.HTTPException):
                conn.close()
            last_used = time.monotonic()
            version, outcome = classify(status, headers, body_ok=fraud is not None)
            self.requests.labels(version, outcome.value).inc()
            with self._lock:
                self.outcomes[version, outcome] += 1
            if outcome is RequestOutcome.OK and rng.random() < self.labelled_share:
                self.labels.push(last_used + self.label_delay, (version, fraud == truth))
        conn.close()

    def _labeller(self, stop: threading.Event) -> None:
        """Report the labels that have arrived; those still on their way at the stop are dropped."""
        while True:
            for version, correct in self.labels.pop_due(time.monotonic()):
                self.labelled.labels(self.model, version).inc()
                if correct:
                    self.correct.labels(self.model, version).inc()
                with self._lock:
                    self.label_counts[version, correct] += 1
            due = self.labels.next_due()
            wait = 0.05 if due is None else min(0.05, max(0.0, due - time.monotonic()))
            if stop.wait(wait):
                return

    def summary(self) -> dict[str, Any]:
        """Totals: sent, answers per version, outcomes, labels reported per version."""
        with self._lock:
            outcomes = {o.value: 0 for o in RequestOutcome}
            by_version: Tally[str] = Tally()
            for (version, outcome), n in self.outcomes.items():
                outcomes[outcome.value] += n
                if version != UNKNOWN:
                    by_version[version] += n
            labelled: Tally[str] = Tally()
            correct: Tally[str] = Tally()
            for (version, right), n in self.label_counts.items():
                labelled[version] += n
                correct[version] += n * right
            elapsed = max(self.elapsed, 1e-9)
            return {
                "sent": self.sent,
                "by_version": dict(sorted(by_version.items())),
                "outcomes": outcomes,
                "routing_failures": outcomes[RequestOutcome.ROUTING_FAILURE],
                "labelled": dict(sorted(labelled.items())),
                "correct": dict(sorted(correct.items())),
                "labels_pending": len(self.labels),
                "shed": self.shed,
                "duration_s": round(self.elapsed, 3),
                "achieved_rate": round(sum(outcomes.values()) / elapsed, 1),
            }


def _fraud(body: bytes) -> bool | None:
    """The prediction in a 200 body, or None if the body is not one."""
    try:
        answer = json.loads(body)
    except ValueError:
        return None
    fraud = answer.get("fraud") if isinstance(answer, dict) else None
    return fraud if isinstance(fraud, bool) else None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m controller.sandbox.demo.loadgen", description="Demo traffic.")
    parser.add_argument("--target", required=True, help="base URL of the proxy, e.g. http://127.0.0.1:8080")
    parser.add_argument("--rate", type=float, default=150.0, help="mean requests per second")
    parser.add_argument("--metrics-port", type=int, required=True, help="loopback port of its /metrics")
    parser.add_argument("--labelled-share", type=float, default=0.5, help="share of answers whose label arrives")
    parser.add_argument("--label-delay", type=float, default=2.0, help="seconds until a label arrives")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=16, help="concurrent keep-alive connections (>= rate x latency)")
    parser.add_argument("--model-service", default="fraud-detector", help="the model label of the label counters")
    parser.add_argument("--versions", default="", help="comma-separated versions whose series start at 0")
    parser.add_argument("--wobble", type=float, default=0.15, help="relative amplitude of the rate's sine wave")
    parser.add_argument("--wobble-period", type=float, default=60.0, help="period of the wave in seconds")
    parser.add_argument("--timeout", type=float, default=5.0, help="per-request socket timeout in seconds")
    parser.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    parser.add_argument("--summary", type=Path, default=None, help="write the JSON summary here at the end")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    registry = CollectorRegistry()
    try:
        generator = LoadGenerator(
            args.target,
            registry,
            rate=args.rate,
            workers=args.workers,
            labelled_share=args.labelled_share,
            label_delay=args.label_delay,
            seed=args.seed,
            model_service=args.model_service,
            wobble=args.wobble,
            wobble_period=args.wobble_period,
            timeout=args.timeout,
            versions=tuple(v for v in args.versions.split(",") if v),
        )
        metrics, _ = start_http_server(args.metrics_port, addr="127.0.0.1", registry=registry)
    except (OSError, ValueError) as exc:
        print(f"loadgen: {exc}", file=sys.stderr)
        return 2
    stop = stop_on_signals()
    print(f"loadgen: {args.rate:g}/s to {args.target}, metrics on :{args.metrics_port}", file=sys.stderr, flush=True)
    summary = generator.run(stop, args.duration)
    if args.summary is not None:  # first: what the demo reports must not wait on the metrics server
        args.summary.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    metrics.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
