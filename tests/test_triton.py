"""Triton's own metrics, read for real: a real Triton serving versions of a model, scraped by a real Prometheus.

One world for the module (a Triton start and a load of ~30 s are the cost): in routing mode
TritonVersion one Triton serves the stable version 1, an equal canary 2 and a canary 3 slowed by
20 ms a request, told apart by Triton's own ``model`` and ``version`` labels; in Subset mode one
Triton per version (each serving its model as version 1), told apart by the pod's ``version``
label the scrape configuration adds (Triton's own becomes ``exported_version``). Traffic goes to
every version at once through ``tritonclient``; ``canarist analyze`` then judges each canary with
the Triton metric kinds through the production Prometheus edge.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as triton_http
import yaml

from controller.sandbox.demo.processes import PartMissingError, StartError
from controller.sandbox.demo.triton import TritonInstall, TritonServer
from tests.prometheus_fixture import PrometheusServer
from tests.triton_fixture import fraud_model, scorer

CANARIST = Path(sys.executable).parent / "canarist"
NS = "ml"
INTERVAL_S = 3
LOAD_S = 30
SLOW_MS = 20.0


@dataclass
class Target:
    """One Triton model version that the load sends requests to."""

    server: TritonServer
    model: str
    version: str
    sent: int = 0
    failed: int = 0


@dataclass
class World:
    prometheus: PrometheusServer
    shared: TritonServer
    per_version: dict[str, TritonServer]
    loaded: tuple[float, float] = (0.0, 0.0)  # the load's first and last second (Unix time)
    targets: list[Target] = field(default_factory=list)


def load(targets: list[Target], seconds: float, stop: threading.Event) -> None:
    """Requests to every target in turn, a random batch of features each, until ``seconds`` pass."""
    rng = np.random.default_rng(7)
    clients = {id(t.server): triton_http.InferenceServerClient(t.server.url) for t in targets}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not stop.is_set():
        for target in targets:
            request = triton_http.InferInput("features", [2, 4], "FP32")
            request.set_data_from_numpy(rng.normal(size=(2, 4)).astype(np.float32))
            target.sent += 1
            try:
                clients[id(target.server)].infer(target.model, [request], model_version=target.version)
            except triton_http.InferenceServerException:
                target.failed += 1


def scrape(server: TritonServer, labels: dict[str, str]) -> dict[str, Any]:
    return {"targets": [server.metrics_target], "labels": {"namespace": NS, **labels}}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("triton")
    servers: list[TritonServer] = []
    prometheus: PrometheusServer | None = None
    stop = threading.Event()
    try:
        install = TritonInstall.find()

        def start(name: str, versions: dict[int, str]) -> TritonServer:
            server = TritonServer(install, tmp / name, [fraud_model(versions)])
            servers.append(server)
            return server.start()

        shared = start("shared", {1: scorer(), 2: scorer(), 3: scorer(delay_ms=SLOW_MS)})
        per_version = {
            "fraud-v1": start("stable", {1: scorer()}),
            "fraud-v2": start("equal", {1: scorer()}),
            "fraud-v3": start("slow", {1: scorer(delay_ms=SLOW_MS)}),
        }
        configs = [scrape(shared, {"pod": "triton-0"})] + [
            scrape(server, {"pod": f"{name}-0", "version": name}) for name, server in per_version.items()
        ]
        prometheus = PrometheusServer(
            tmp / "prometheus",
            scrape_configs=[{"job_name": "triton", "scrape_interval": "1s", "static_configs": configs}],
        ).start()
        targets = [Target(shared, "fraud", v) for v in ("1", "2", "3")]
        targets += [Target(server, "fraud", "1") for server in per_version.values()]
        began = time.time()
        load(targets, LOAD_S, stop)
        ended = time.time()
        time.sleep(2.5)  # the last scrape in
        yield World(prometheus, shared, per_version, (began, ended), targets)
    except (PartMissingError, StartError) as exc:
        pytest.fail(str(exc), pytrace=False)
    finally:
        stop.set()
        if prometheus is not None:
            prometheus.stop()
        for server in servers:
            server.stop()


def policy(tmp: Path, routing: dict[str, Any], canary: str, labels: bool) -> Path:
    """A one-step policy judging latency (10 % margin) and failures with the Triton kinds."""

    def version(name: str) -> dict[str, Any]:
        return {"name": name, "labels": {"app": "triton", "version": name}} if labels else {"name": name}

    document = {
        "apiVersion": "canarist.io/v1alpha1",
        "kind": "ModelRollout",
        "metadata": {"name": "fraud", "namespace": NS},
        "spec": {
            "service": {"name": "triton", "port": 8000},
            "stable": version("fraud-v1"),
            "canary": version(canary),
            "routing": routing,
            "strategy": {"steps": [50], "interval": f"{INTERVAL_S}s", "minRequests": 50},
            "analysis": {
                "alpha": 0.05,
                "metrics": [
                    {"name": "latency", "kind": "TritonLatency", "margin": {"relative": "10%"}},
                    {"name": "failures", "kind": "TritonErrorRate", "slo": {"max": "2%"}, "margin": {"absolute": "1%"}},
                ],
            },
        },
    }
    path = tmp / f"{canary}-{routing['mode']}.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def analyze(world: World, path: Path) -> tuple[int, dict[str, Any]]:
    """One look over the windows the load filled (the grid is the clock's: whole windows inside it)."""
    began, ended = world.loaded
    at = int(ended // INTERVAL_S) * INTERVAL_S
    since = f"{int((at - began) // INTERVAL_S) * INTERVAL_S - INTERVAL_S}s"
    command = [CANARIST, "analyze", str(path), "--prometheus", world.prometheus.url, "--at", str(at)]
    done = subprocess.run(
        [*command, "--since", since, "--weight", "50", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done.returncode, json.loads(done.stdout) if done.stdout.strip() else {"stderr": done.stderr}


def triton_version(canary: int) -> dict[str, Any]:
    return {"mode": "TritonVersion", "triton": {"model": "fraud", "stableVersion": 1, "canaryVersion": canary}}


@pytest.mark.parametrize(
    ("routing", "canary", "labels"),
    [(triton_version(2), "fraud-v2", False), ({"mode": "Subset"}, "fraud-v2", True)],
    ids=["TritonVersion", "Subset"],
)
def test_an_equal_canary_version_is_not_rolled_back(
    world: World, tmp_path: Path, routing: dict[str, Any], canary: str, labels: bool
) -> None:
    code, look = analyze(world, policy(tmp_path, routing, canary, labels))
    print(json.dumps(look, indent=1)[:4000])
    assert code != 1, look
    verdicts = {m["name"]: m for m in look["metrics"]}
    assert verdicts["latency"]["verdict"] != "Fail" and verdicts["failures"]["verdict"] != "Fail"


@pytest.mark.parametrize(
    ("routing", "canary", "labels"),
    [(triton_version(3), "fraud-v3", False), ({"mode": "Subset"}, "fraud-v3", True)],
    ids=["TritonVersion", "Subset"],
)
def test_a_slowed_canary_version_is_rolled_back_naming_its_latency(
    world: World, tmp_path: Path, routing: dict[str, Any], canary: str, labels: bool
) -> None:
    code, look = analyze(world, policy(tmp_path, routing, canary, labels))
    print(json.dumps(look, indent=1)[:4000])
    assert code == 1, look
    verdicts = {m["name"]: m for m in look["metrics"]}
    assert verdicts["latency"]["verdict"] == "Fail" and "latency" in look["reason"]
