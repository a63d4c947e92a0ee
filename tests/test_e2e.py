"""Whole rollouts: the controller loop, the official Kubernetes client against the fake API server,
and a real Prometheus scraping live traffic whose split follows the VirtualService canarist writes.

Seconds-long intervals keep each rollout under a minute. Every write the API server received is
checked afterwards: integer weights summing to 100, and no route to a subset that no earlier
DestinationRule defined (make before break).
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

from controller.edges.kube import KubeCluster
from controller.edges.prometheus import PrometheusClient, PrometheusSettings
from controller.manager.loop import Manager
from controller.manager.wiring import PrometheusSource
from controller.sandbox import localapi
from controller.sandbox.demo.processes import free_port
from controller.sandbox.localapi import LocalApiServer, local_api_server
from controller.traffic.templating import default_environment
from tests.prometheus_fixture import PrometheusServer

NS, NAME, SERVICE = "ml", "scorer", "scorer"
BUCKETS_MS = (0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000)
RPS = 400


def policy(*, steps: list[int]) -> dict[str, Any]:
    return {
        "apiVersion": "canarist.io/v1alpha1",
        "kind": "ModelRollout",
        "metadata": {"name": NAME, "namespace": NS},
        "spec": {
            "service": {"name": SERVICE, "port": 8080},
            "stable": {"name": "v1", "labels": {"app": SERVICE, "version": "v1"}},
            "canary": {"name": "v2", "labels": {"app": SERVICE, "version": "v2"}},
            "strategy": {
                "steps": steps,
                "interval": "3s",
                "minRequests": 200,
                "progressDeadline": "90s",
                "onNoData": "Hold",
                "onInconclusive": "Hold",
            },
            "analysis": {
                "alpha": 0.05,
                "metrics": [
                    {"name": "latency-p99", "kind": "IstioLatency", "slo": {"max": "250ms"}},
                    {
                        "name": "error-rate",
                        "kind": "IstioErrorRate",
                        "slo": {"max": "2%"},
                        "margin": {"absolute": "1%"},
                    },
                ],
            },
        },
    }


def ready_pod(version: str) -> dict[str, Any]:
    return localapi.ready_pod(NS, f"{SERVICE}-{version}-0", {"app": SERVICE, "version": version})


@dataclass
class Mesh:
    """Live traffic as an Istio sidecar would report it; the split follows the rendered VirtualService."""

    api: LocalApiServer
    canary_error_rate: float
    stop: threading.Event
    served: dict[str, int]

    def weight(self) -> int:
        service = self.api.get("networking.istio.io", "virtualservices", NS, NAME)
        if service is None:
            return 0
        primary = next(r for r in service["spec"]["http"] if r.get("name") == "primary")
        return int(primary["route"][1]["weight"])

    def run(self, registry: CollectorRegistry) -> None:
        labels = ["reporter", "destination_service_namespace", "destination_service_name", "destination_version"]
        requests = Counter("istio_requests", "requests", [*labels, "response_code"], registry=registry)
        duration = Histogram(
            "istio_request_duration_milliseconds", "latency", labels, buckets=BUCKETS_MS, registry=registry
        )
        rng = random.Random(7)
        while not self.stop.is_set():
            weight = self.weight()
            for _ in range(RPS // 10):
                version = "v2" if rng.random() * 100 < weight else "v1"
                error_rate = self.canary_error_rate if version == "v2" else 0.005
                code = "503" if rng.random() < error_rate else "200"
                common = ("destination", NS, SERVICE, version)
                requests.labels(*common, code).inc()
                duration.labels(*common).observe(rng.lognormvariate(math.log(40), 0.5))
                self.served[version] += 1
            self.stop.wait(0.1)


@contextmanager
def live_mesh(
    prometheus_factory: Callable[..., PrometheusServer], canary_error_rate: float
) -> Iterator[tuple[LocalApiServer, Mesh, PrometheusServer]]:
    """A fake API server with ready pods, live traffic following its VirtualService, and a Prometheus scraping it."""
    with local_api_server() as api:
        for version in ("v1", "v2"):
            api.seed(ready_pod(version))
        registry = CollectorRegistry()
        port = free_port()
        start_http_server(port, addr="127.0.0.1", registry=registry)
        mesh = Mesh(api, canary_error_rate, threading.Event(), {"v1": 0, "v2": 0})
        threading.Thread(target=mesh.run, args=(registry,), daemon=True).start()
        scrape = [{"job_name": "mesh", "scrape_interval": "1s", "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}]
        try:
            yield api, mesh, prometheus_factory(scrape_configs=scrape).start()
        finally:
            mesh.stop.set()


@pytest.fixture
def world(prometheus_factory: Callable[..., PrometheusServer]) -> Iterator[Callable[[float], tuple[Any, ...]]]:
    with ExitStack() as stack:

        def make(canary_error_rate: float) -> tuple[LocalApiServer, Manager, Mesh]:
            api, mesh, prometheus = stack.enter_context(live_mesh(prometheus_factory, canary_error_rate))
            cluster = KubeCluster(api.api_client, propagation_delay=0.0)
            source = PrometheusSource(PrometheusClient(PrometheusSettings(url=prometheus.url, timeout=5.0)))
            manager = Manager(cluster, source, default_environment(), time.time, namespace=NS)
            return api, manager, mesh

        yield make


def drive(api: LocalApiServer, manager: Manager, *, until: set[str], seconds: float) -> dict[str, Any]:
    deadline = time.time() + seconds
    while time.time() < deadline:
        manager.tick()
        rollout = api.get("canarist.io", "modelrollouts", NS, NAME) or {}
        if rollout.get("status", {}).get("phase") in until:
            return rollout
        time.sleep(0.5)
    pytest.fail(f"rollout did not reach {until} in {seconds}s: {(rollout.get('status') or {}).get('message')}")


def check_writes(api: LocalApiServer) -> list[int]:
    """Invariants over the sequence of writes the API server received; returns the canary weights."""
    defined: set[str] = set()
    weights = []
    for request in api.writes:
        body = request.body if isinstance(request.body, dict) else {}
        if "/destinationrules" in request.path and body.get("spec"):
            defined = {s["name"] for s in body["spec"].get("subsets", [])} | defined
        if "/virtualservices" in request.path and body.get("spec"):
            for route in body["spec"]["http"]:
                route_weights = [d.get("weight", 100) for d in route["route"]]
                assert all(isinstance(w, int) for w in route_weights) and sum(route_weights) == 100
                for destination in route["route"]:
                    assert destination["destination"].get("subset") in defined
            primary = next(r for r in body["spec"]["http"] if r["name"] == "primary")
            weights.append(primary["route"][1]["weight"])
    return weights


def test_a_good_canary_is_promoted_step_by_step(world: Callable[[float], tuple[Any, ...]]) -> None:
    api, manager, mesh = world(0.005)
    manager.cluster.create_or_update_rollout(policy(steps=[20, 50]))
    rollout = drive(api, manager, until={"Succeeded", "Failed"}, seconds=120)
    assert rollout["status"]["phase"] == "Succeeded", rollout["status"]["message"]
    assert check_writes(api) == [20, 50, 100]
    assert mesh.served["v2"] > 200
    actions = [t["action"] for t in rollout["status"]["history"]]
    assert actions == ["Start", "Advance", "Promote", "Complete"]


def test_an_error_regression_is_rolled_back_at_once(world: Callable[[float], tuple[Any, ...]]) -> None:
    api, manager, _ = world(0.08)
    manager.cluster.create_or_update_rollout(policy(steps=[20, 50]))
    rollout = drive(api, manager, until={"Succeeded", "Failed"}, seconds=90)
    status = rollout["status"]
    assert status["phase"] == "Failed"
    rollback = next(t for t in status["history"] if t["action"] == "Rollback")
    # 8 % errors breach the 2 % SLO and are 7.5 points worse than stable: whichever evidence reaches
    # its threshold first at that look (it depends on how many requests the first windows hold) names
    # the metric; both roll back at once.
    assert rollback["reason"].startswith(("SLO breached: error-rate", "regression proven: error-rate"))
    # The first look may see too little data to call the breach yet (no harm shown, so it advances);
    # the breach is then called at the next look, before any promotion.
    assert check_writes(api) in ([20, 0], [20, 50, 0])
    events = [o for (kind, *_), o in api.objects.items() if "events" in str(kind)]
    assert any("Rollback" in str(e) for e in events)
