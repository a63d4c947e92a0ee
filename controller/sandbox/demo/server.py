"""One model version serving HTTP, seen as Istio's sidecar would report a pod of it.

``POST /predict`` answers ``{"fraud": bool, "score": float, "version": ...}`` with header
``x-served-by``. Each answer takes a log-normal service time (median x slowdown) so that latency
histograms mean something, and with probability ``--error-rate`` it is a deliberate 500 marked
``x-injected-error: 1`` (a failing canary); ``POST /admin/fault`` with ``{"error_rate": x,
"slowdown": y}`` changes both live, for a canary that breaks mid-rollout. ``GET /metrics``
exposes exactly the series an Istio sidecar reports with ``reporter="destination"``: ``istio_requests_total`` and
``istio_request_duration_milliseconds`` with Istio's default buckets, so the controller's real
queries read them unchanged. Each answered prediction's score also goes into the histogram
``fraud_score`` (labels ``model`` and ``version``), as an application exports its model's outputs
(not with ``--no-score-histogram``: a Triton behind the sidecar exports them itself).
``GET /healthz`` answers ``ok``. SIGTERM or SIGINT stops it with exit 0.

With ``--compute-ms`` each inference also spends that much CPU time computing, and the server
exports ``canarist_gpu_seconds_total`` in the shape ``canarist gpu-agent`` gives a pod's GPU time
(``pod``, ``container``, ``gpu``, ``version``), counting that CPU time: the demo has no GPU, so its
``gpu`` label says ``cpu-stand-in``. A canary with twice the compute per inference is as accurate
and, at a few milliseconds against a 20 ms service time, about as fast: only its GPU cost differs.

Run: ``python -m controller.sandbox.demo.server --version v2 --port P --model FILE.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

from controller.sandbox.demo.model import N_FEATURES, Model
from controller.sandbox.demo.processes import stop_on_signals

#: Istio's default buckets for ``istio_request_duration_milliseconds``.
ISTIO_BUCKETS_MS = (
    0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000, 600000, 1800000, 3600000,
)  # fmt: skip
ISTIO_LABELS = (
    "reporter",
    "destination_service_namespace",
    "destination_service_name",
    "destination_workload",
    "destination_version",
)
MAX_BODY = 64 * 1024
#: The score histogram's bucket bounds: the model's outputs, compared between versions (PredictionDistribution).
SCORE_METRIC = "fraud_score"
SCORE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
#: The ``gpu`` label of the demo's GPU-time series: CPU seconds standing in for a GPU's.
CPU_STAND_IN = "cpu-stand-in"


def spend_cpu(seconds: float) -> float:
    """Compute for ``seconds`` of this thread's CPU time (an inference's work); the CPU seconds spent."""
    start = time.thread_time()
    while (spent := time.thread_time() - start) < seconds:
        sum(i * i for i in range(200))
    return spent


class ServingError(RuntimeError):
    """The model behind the sidecar (Triton) did not answer: the request fails with 503."""


class TritonScorer:
    """Scores through a Triton that serves this version's model (``fraud``, features -> score), as a
    pod's sidecar passes requests to its Triton: one client per server thread."""

    def __init__(self, url: str) -> None:
        # Imported when the server starts, not on its first request: the import (gevent's) would hold
        # every request thread of a canary that just got its first traffic.
        import tritonclient.http as triton_http
        from tritonclient.utils import InferenceServerException

        self.url = url
        self._http, self._errors = triton_http, InferenceServerException
        self._local = threading.local()

    def score(self, features: np.ndarray) -> float:
        triton_http, InferenceServerException = self._http, self._errors  # noqa: N806
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = triton_http.InferenceServerClient(self.url, network_timeout=10.0)
        request = triton_http.InferInput("features", [1, N_FEATURES], "FP32")
        request.set_data_from_numpy(features.reshape(1, N_FEATURES).astype(np.float32))
        try:
            answer = client.infer("fraud", [request]).as_numpy("score")
        except (InferenceServerException, OSError) as exc:
            self._local.client = None
            raise ServingError(f"Triton {self.url}: {exc}") from None
        if answer is None:
            raise ServingError(f"Triton {self.url}: the answer has no output 'score'")
        return float(answer[0])


class Backend:
    """What the handler needs: the model, the simulated service time and failures, the metrics."""

    def __init__(
        self,
        model: Model,
        *,
        version: str,
        service: str,
        namespace: str,
        latency_median: float = 0.02,
        latency_sigma: float = 0.4,
        slowdown: float = 1.0,
        error_rate: float = 0.0,
        seed: int | None = None,
        triton: str | None = None,
        compute_seconds: float = 0.0,
        score_histogram: bool = True,
    ) -> None:
        if latency_median < 0 or latency_sigma < 0 or slowdown <= 0:
            raise ValueError("latency median and sigma must be >= 0 and slowdown > 0")
        if not 0.0 <= compute_seconds <= 1.0:
            raise ValueError(f"compute time per inference must be in [0, 1] s, got {compute_seconds!r}")
        if not 0.0 <= error_rate <= 1.0:
            raise ValueError(f"error rate must be in [0, 1], got {error_rate!r}")
        self.model = model
        self.version = version
        self.triton = TritonScorer(triton) if triton else None
        self.latency_median = latency_median
        self.slowdown = slowdown
        self.sigma = latency_sigma
        self.error_rate = error_rate
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "istio_requests", "Requests, as Istio's sidecar reports them.", [*ISTIO_LABELS, "response_code"],
            registry=self.registry,
        )  # fmt: skip
        self.duration = Histogram(
            "istio_request_duration_milliseconds", "Request duration in milliseconds, as Istio reports it.",
            ISTIO_LABELS, buckets=ISTIO_BUCKETS_MS, registry=self.registry,
        )  # fmt: skip
        self.scores = None if not score_histogram else Histogram(
            SCORE_METRIC, "The model's fraud scores, as the application exports its outputs.", ["model", "version"],
            buckets=SCORE_BUCKETS, registry=self.registry,
        ).labels(service, version)  # fmt: skip
        self.identity = ("destination", namespace, service, f"{service}-{version}", version)
        # The series exist from the start (at 0), so increase() counts the very first requests.
        self.requests.labels(*self.identity, "200")
        self.duration.labels(*self.identity)
        self.compute_seconds = compute_seconds
        self.gpu_seconds = None
        if compute_seconds > 0:
            self.gpu_seconds = Counter(
                "canarist_gpu_seconds",
                "GPU-seconds as canarist gpu-agent exports a pod's; the demo has no GPU: the CPU seconds its "
                "inferences computed (gpu=cpu-stand-in)",
                ["pod", "container", "gpu", "version"],
                registry=self.registry,
            ).labels(f"{service}-{version}-0", "model", CPU_STAND_IN, version)

    def draw(self) -> tuple[float, bool]:
        """A service time in seconds and whether to fail this request on purpose."""
        with self._lock:
            median = self.latency_median * self.slowdown
            delay = median * math.exp(self.sigma * self._rng.gauss(0.0, 1.0)) if median > 0 else 0.0
            fail = self._rng.random() < self.error_rate
        return delay, fail

    def set_fault(self, body: bytes) -> dict[str, float]:
        """Change ``error_rate`` and/or ``slowdown`` live (a canary that breaks mid-rollout); the new values."""
        try:
            data = json.loads(body)
            error_rate = float(data.get("error_rate", self.error_rate))
            slowdown = float(data["slowdown"]) if "slowdown" in data else None
        except (ValueError, TypeError, AttributeError) as exc:
            raise ValueError(f'body must be {{"error_rate": x, "slowdown": y}} (either optional): {exc}') from None
        if not 0.0 <= error_rate <= 1.0 or (slowdown is not None and not slowdown > 0):
            raise ValueError(f"need 0 <= error_rate <= 1 and slowdown > 0, got {error_rate}, {slowdown}")
        with self._lock:
            self.error_rate = error_rate
            self.slowdown = self.slowdown if slowdown is None else slowdown
            return {"error_rate": self.error_rate, "slowdown": self.slowdown}

    def record(self, code: int, seconds: float) -> None:
        self.requests.labels(*self.identity, str(code)).inc()
        self.duration.labels(*self.identity).observe(seconds * 1000.0)

    def predict(self, body: bytes) -> dict[str, Any]:
        """The answer to one ``/predict`` body; ValueError if it is not ``{"features": [8 numbers]}``."""
        try:
            data = json.loads(body)
            features = np.asarray(data["features"], dtype=np.float64)
        except (ValueError, TypeError, KeyError) as exc:
            raise ValueError(f'body must be {{"features": [{N_FEATURES} numbers]}}: {exc}') from None
        if features.shape != (N_FEATURES,) or not np.all(np.isfinite(features)):
            raise ValueError(f"expected {N_FEATURES} finite features, got shape {features.shape}")
        score = self.triton.score(features) if self.triton is not None else float(self.model.predict_proba(features)[0])
        if self.gpu_seconds is not None:
            self.gpu_seconds.inc(spend_cpu(self.compute_seconds))
        if self.scores is not None:
            self.scores.observe(score)
        return {"fraud": score >= self.model.threshold, "score": round(score, 6), "version": self.version}


class Handler(BaseHTTPRequestHandler):
    """HTTP/1.1 with keep-alive, as haproxy reuses its connections to the pods."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms delayed-ACK stall
    server: ModelServer

    def do_POST(self) -> None:
        if self.path == "/admin/fault":
            self._fault()
            return
        if self.path != "/predict":
            self.close_connection = True  # its body is left unread
            self._send(404, b"not found\n", "text/plain")
            return
        backend = self.server.backend
        start = time.perf_counter()
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY:
            self.close_connection = True
            self._answer(400, {"error": "a Content-Length up to 64 KiB is required"}, start)
            return
        body = self.rfile.read(length)
        delay, fail = backend.draw()
        try:
            answer = backend.predict(body)
        except ValueError as exc:
            self._answer(400, {"error": str(exc)}, start)
            return
        except ServingError as exc:
            self._answer(503, {"error": str(exc), "version": backend.version}, start)
            return
        time.sleep(delay)
        if fail:
            self._answer(500, {"error": "injected failure", "version": backend.version}, start, injected=True)
        else:
            self._answer(200, answer, start)

    def _fault(self) -> None:
        """``POST /admin/fault``: the demo's control of this pod, not traffic (so not in the metrics)."""
        length = int(self.headers.get("Content-Length") or 0)
        try:
            answer = self.server.backend.set_fault(self.rfile.read(min(length, MAX_BODY)))
        except ValueError as exc:
            self._send(400, json.dumps({"error": str(exc)}).encode(), "application/json")
            return
        self._send(200, json.dumps(answer).encode(), "application/json")

    def do_GET(self) -> None:
        if self.path == "/metrics":
            self._send(200, generate_latest(self.server.backend.registry), CONTENT_TYPE_LATEST)
        elif self.path == "/healthz":
            self._send(200, b"ok\n", "text/plain")
        else:
            self._send(404, b"not found\n", "text/plain")

    def _answer(self, code: int, payload: dict[str, Any], start: float, *, injected: bool = False) -> None:
        """Record the request as the sidecar would (before the bytes leave, so a scrape right after sees it)."""
        backend = self.server.backend
        backend.record(code, time.perf_counter() - start)
        headers = {"x-served-by": backend.version}
        if injected:
            headers["x-injected-error"] = "1"
        self._send(code, json.dumps(payload).encode(), "application/json", headers)

    def _send(self, code: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: a request log per prediction would drown the demo's output."""


class ModelServer(ThreadingHTTPServer):
    """A threading HTTP server (daemon threads: stopping never waits on a keep-alive connection)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port: int, backend: Backend, host: str = "127.0.0.1") -> None:
        self.backend = backend
        super().__init__((host, port), Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A proxy closing a pooled connection is routine; anything else is reported."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m controller.sandbox.demo.server", description="One model version serving HTTP."
    )
    parser.add_argument("--version", required=True, help="the model version this pod serves (destination_version)")
    parser.add_argument("--port", type=int, required=True, help="loopback port to listen on")
    parser.add_argument("--model", type=Path, required=True, help="the model file (Model.to_json)")
    parser.add_argument("--service", default="fraud-detector", help="destination_service_name")
    parser.add_argument("--namespace", default="demo", help="destination_service_namespace")
    parser.add_argument("--latency-median", type=float, default=0.02, help="median service time in seconds")
    parser.add_argument("--latency-sigma", type=float, default=0.4, help="log-normal sigma of the service time")
    parser.add_argument("--slowdown", type=float, default=1.0, help="multiplies the median service time")
    parser.add_argument("--error-rate", type=float, default=0.0, help="share of requests failed on purpose (500)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the service times and failures")
    parser.add_argument("--triton", help="score through this Triton (host:port) instead of in-process")
    parser.add_argument(
        "--no-score-histogram",
        action="store_true",
        help="do not export the scores (the Triton behind this sidecar exports them itself)",
    )
    parser.add_argument(
        "--compute-ms",
        type=float,
        default=0.0,
        help="CPU time each inference computes, exported as canarist_gpu_seconds_total (a GPU stand-in)",
    )
    parser.add_argument("--host", default="127.0.0.1", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        backend = Backend(
            Model.load(args.model),
            version=args.version,
            service=args.service,
            namespace=args.namespace,
            latency_median=args.latency_median,
            latency_sigma=args.latency_sigma,
            slowdown=args.slowdown,
            error_rate=args.error_rate,
            seed=args.seed,
            triton=args.triton,
            compute_seconds=args.compute_ms / 1000.0,
            score_histogram=not args.no_score_histogram,
        )
        server = ModelServer(args.port, backend, args.host)
    except (OSError, ValueError, KeyError) as exc:
        print(f"model server {args.version}: {exc}", file=sys.stderr)
        return 2
    stop = stop_on_signals()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    print(f"model server {args.version} listening on {args.host}:{args.port}", file=sys.stderr, flush=True)
    while not stop.wait(0.5):
        pass
    server.shutdown()
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
