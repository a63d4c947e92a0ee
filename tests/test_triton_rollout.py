"""Whole rollouts on real Tritons: the controller loop, the real gate edge, and traffic that only
reaches a version through the routes canarist wrote.

The world of test_e2e.py (the local API stand-in, the official client, a real Prometheus) with
Tritons instead of a simulated mesh. Traffic goes through :func:`envoy_route`, which routes each
request as Envoy would by the stored VirtualService: the first HTTP route whose match holds (an
exact URI, an ``x-request-id`` regex matched whole; a random id per request, as Envoy generates),
its rewrite naming the Triton version (routing mode TritonVersion), or its weighted subsets
(Subset). Triton's own ``nv_inference_count`` then says who served what.
"""

from __future__ import annotations

import random
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as triton_http

from controller.api.times import parse_timestamp
from controller.edges.kube import KubeCluster
from controller.edges.prometheus import PrometheusClient, PrometheusSettings
from controller.edges.triton import TritonProbe
from controller.manager.loop import Manager
from controller.manager.wiring import PrometheusSource
from controller.sandbox.demo.triton import Tensor, TritonServer, inference_count
from controller.sandbox.localapi import LocalApiServer, local_api_server
from controller.traffic.templating import default_environment
from tests.prometheus_fixture import PrometheusServer
from tests.triton_fixture import fraud_model, scorer

NS, NAME = "ml", "fraud"
POLLING = ("--model-control-mode=poll", "--repository-poll-secs=1", "--exit-on-error=false")


def envoy_route(service: dict[str, Any] | None, path: str, request_id: str, rng: random.Random) -> tuple[str, str]:
    """(host, path) Envoy sends a request to, by ``service``'s HTTP routes; ("", "") when none matches."""
    for route in (service or {}).get("spec", {}).get("http", []):
        matches = route.get("match") or [{}]
        for match in matches:
            uri = (match.get("uri") or {}).get("exact")
            regex = ((match.get("headers") or {}).get("x-request-id") or {}).get("regex")
            if (uri is None or uri == path) and (regex is None or re.fullmatch(regex, request_id)):
                destinations = route["route"]
                weights = [d.get("weight", 100 if len(destinations) == 1 else 0) for d in destinations]
                (chosen,) = rng.choices(destinations, weights=weights) if sum(weights) else destinations[:1]
                rewritten = (route.get("rewrite") or {}).get("uri", path)
                target = chosen["destination"]
                return str(target.get("subset") or target["host"]), rewritten
    return "", ""


@dataclass
class Traffic:
    """Requests to the model through the stored routes, from a thread, until stopped."""

    api: LocalApiServer
    servers: dict[str, TritonServer]  # a route's host or subset -> the Triton behind it
    stop: threading.Event = field(default_factory=threading.Event)
    sent: dict[str, int] = field(default_factory=dict)  # the path's version, or the subset -> requests
    first: dict[str, float] = field(default_factory=dict)

    def run(self) -> None:
        rng, data = random.Random(5), np.ones((1, 4), dtype=np.float32)
        clients = {key: triton_http.InferenceServerClient(s.url) for key, s in self.servers.items()}
        while not self.stop.is_set():
            service = self.api.get("networking.istio.io", "virtualservices", NS, NAME)
            for _ in range(10):
                host, path = envoy_route(service, "/v2/models/fraud/infer", uuid.uuid4().hex, rng)
                if not host:
                    continue
                found = re.fullmatch(r"/v2/models/fraud(?:/versions/(\d+))?/infer", path)
                version = found.group(1) or "" if found else ""
                key = version or host
                request = triton_http.InferInput("features", [1, 4], "FP32")
                request.set_data_from_numpy(data)
                self.first.setdefault(key, time.time())
                self.sent[key] = self.sent.get(key, 0) + 1
                clients[host if host in clients else "triton"].infer("fraud", [request], model_version=version)
            self.stop.wait(0.05)


def policy(gate: dict[str, Any], routing: dict[str, Any] | None, deadline: str = "60s") -> dict[str, Any]:
    subset = routing is None
    return {
        "apiVersion": "canarist.io/v1alpha1",
        "kind": "ModelRollout",
        "metadata": {"name": NAME, "namespace": NS},
        "spec": {
            "service": {"name": "triton", "port": 8000},
            "stable": {"name": "v1", **({"labels": {"version": "v1"}} if subset else {})},
            "canary": {"name": "v2", **({"labels": {"version": "v2"}} if subset else {})},
            **({"routing": routing} if routing else {}),
            "gate": {"triton": gate},
            "strategy": {"steps": [50], "interval": "3s", "minRequests": 50, "progressDeadline": deadline},
            "analysis": {
                "metrics": [{"name": "failures", "kind": "TritonErrorRate", "slo": {"max": "5%"}}],
            },
        },
    }


@pytest.fixture
def world(tmp_path: Path, triton_factory: Callable[..., TritonServer]) -> Iterator[Callable[..., Any]]:
    with ExitStack() as stack:

        def make(servers: dict[str, TritonServer]) -> tuple[LocalApiServer, Manager, Traffic]:
            api = stack.enter_context(local_api_server())
            for version in ("v1", "v2"):  # the Subset mode's readiness gate reads the pods
                api.seed(
                    {
                        "apiVersion": "v1",
                        "kind": "Pod",
                        "metadata": {"name": f"triton-{version}-0", "namespace": NS, "labels": {"version": version}},
                        "status": {"conditions": [{"type": "Ready", "status": "True"}]},
                    }
                )
            scrape = [
                {
                    "targets": [s.metrics_target],
                    "labels": {"namespace": NS, "pod": f"{key}-0", **({"version": key} if key.startswith("v") else {})},
                }
                for key, s in servers.items()
            ]
            prometheus = PrometheusServer(
                tmp_path / "prometheus",
                scrape_configs=[{"job_name": "triton", "scrape_interval": "1s", "static_configs": scrape}],
            ).start()
            stack.callback(prometheus.stop)
            source = PrometheusSource(PrometheusClient(PrometheusSettings(url=prometheus.url, timeout=5.0)))
            cluster = KubeCluster(api.api_client, propagation_delay=0.0)
            manager = Manager(cluster, source, default_environment(), time.time, namespace=NS, gates=TritonProbe())
            traffic = Traffic(api, servers)
            thread = threading.Thread(target=traffic.run, daemon=True)
            thread.start()
            stack.callback(thread.join, 10)
            stack.callback(traffic.stop.set)
            return api, manager, traffic

        yield make


def until(
    api: LocalApiServer, manager: Manager, done: Callable[[dict[str, Any]], bool], seconds: float
) -> dict[str, Any]:
    deadline, status = time.time() + seconds, {}
    while time.time() < deadline:
        manager.tick()
        status = (api.get("canarist.io", "modelrollouts", NS, NAME) or {}).get("status") or {}
        if done(status):
            return status
        time.sleep(0.3)
    pytest.fail(f"not reached in {seconds}s: {status.get('phase')}: {status.get('message')}")


def test_no_request_reaches_a_canary_version_before_its_gate_passes(
    world: Callable[..., Any], triton_factory: Callable[..., TritonServer]
) -> None:
    server = triton_factory([fraud_model({1: scorer()})], options=POLLING)
    api, manager, traffic = world({"triton": server})
    routing = {"mode": "TritonVersion", "triton": {"model": "fraud", "stableVersion": 1, "canaryVersion": 2}}
    KubeCluster(api.make_client()).create_or_update_rollout(policy({"url": server.url}, routing))
    status = until(api, manager, lambda s: "waiting for the gate" in (s.get("message") or ""), 20)
    assert "version 2 is not loaded and ready yet" in status["message"]
    time.sleep(2)  # traffic flows meanwhile, all of it to the stable version
    manager.tick()
    assert traffic.sent.get("1", 0) > 50 and traffic.sent.get("2", 0) == 0 and inference_count(server, "2") == 0

    fraud_model({2: scorer(load_s=2)}).write(server.repository)  # the canary version arrives
    status = until(api, manager, lambda s: s.get("canaryWeight") == 50, 40)
    started = next(t for t in status["history"] if t["action"] == "Start")
    assert started["reason"] == "routes in place: analysing step 0; gate passed"
    gate = next(c for c in status["conditions"] if c["type"] == "GatePassed")
    assert gate["status"] == "True"
    deadline = time.time() + 10
    while inference_count(server, "2") == 0 and time.time() < deadline:
        time.sleep(0.2)
    assert inference_count(server, "2") > 0
    assert traffic.first["2"] >= parse_timestamp(started["at"])  # not one request before the Start was recorded


def test_a_canary_whose_signature_changed_is_failed_without_a_request(
    world: Callable[..., Any], triton_factory: Callable[..., TritonServer]
) -> None:
    stable = triton_factory([fraud_model({1: scorer()})])
    canary = triton_factory([fraud_model({1: scorer()}, outputs=(Tensor("probability", "FP32", (-1,)),))])
    api, manager, traffic = world({"v1": stable, "v2": canary})
    gate = {"url": canary.url, "stableUrl": stable.url, "model": "fraud"}
    KubeCluster(api.make_client()).create_or_update_rollout(policy(gate, None))
    status = until(api, manager, lambda s: s.get("phase") == "Failed", 30)
    assert (
        status["history"][0]["reason"] == "gate failed: signature differs from the stable's: output 'score' is missing"
    )
    time.sleep(1)
    assert traffic.sent.get("v1", 0) > 0 and traffic.sent.get("v2", 0) == 0
    assert inference_count(canary, "1") == 0 and inference_count(stable, "1") > 0
    reasons = [w.body.get("reason") for w in api.writes if "/events" in w.path and isinstance(w.body, dict)]
    assert "GateFailed" in reasons and "Start" not in reasons


def test_a_canary_version_that_never_loads_fails_at_the_progress_deadline_without_a_request(
    world: Callable[..., Any], triton_factory: Callable[..., TritonServer]
) -> None:
    server = triton_factory([fraud_model({1: scorer()})], options=POLLING)
    fraud_model({2: scorer(broken=True)}).write(server.repository)  # it will never load
    api, manager, traffic = world({"triton": server})
    routing = {"mode": "TritonVersion", "triton": {"model": "fraud", "stableVersion": 1, "canaryVersion": 2}}
    KubeCluster(api.make_client()).create_or_update_rollout(policy({"url": server.url}, routing, deadline="8s"))
    status = until(api, manager, lambda s: s.get("phase") == "Failed", 40)
    reason = status["history"][0]["reason"]
    waiting = "the canary's model 'fraud' version 2 is not loaded and ready yet"
    assert reason == f"gate not passed within the progress deadline: {waiting}"
    assert traffic.sent.get("1", 0) > 0 and traffic.sent.get("2", 0) == 0 and inference_count(server, "2") == 0
