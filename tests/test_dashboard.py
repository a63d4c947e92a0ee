"""The Grafana dashboard (issue 18, item 2): every panel's query returns data from a real controller run.

The world of test_e2e.py (the API stand-in, live traffic whose split follows the stored
VirtualService) and a real Prometheus scraping both the traffic and the controller's own /metrics
(the operations server of ``canarist run``). The controller runs sharded (one replica), with a
notifier, and meets an API outage on the way, so that every series the dashboard draws exists.
Grafana itself cannot be installed here: each panel's PromQL is run by Prometheus with the
dashboard's variables filled in as Grafana would ($rollout: All; $__rate_interval: 5m), and the
dashboard file is checked to be the one the install ships (a ConfigMap Grafana's sidecar loads).
"""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, start_http_server

from controller.api.notify import NotifyEvent, SinkType
from controller.edges.kube import KubeCluster
from controller.edges.kube.shards import ShardSet
from controller.edges.notify import Notifier, Sink
from controller.edges.prometheus import PrometheusClient, PrometheusSettings
from controller.manager.loop import Manager
from controller.manager.ops import ControllerMetrics, serve
from controller.manager.wiring import PrometheusSource
from controller.sandbox.demo.processes import free_port
from controller.sandbox.localapi import local_api_server
from controller.traffic.templating import default_environment
from tests.notify_receiver import receiver
from tests.prometheus_fixture import PrometheusServer
from tests.test_e2e import NAME, NS, Mesh, policy, ready_pod

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "istio" / "dashboards" / "canarist.json"
#: How Grafana fills in the dashboard's variables for "All" over a recent range.
FILLED = {"$rollout": ".*", "$__rate_interval": "5m"}


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return loaded


def queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) for every target of every panel."""
    return [(panel["title"], target["expr"]) for panel in dashboard()["panels"] for target in panel["targets"]]


def test_the_dashboard_is_well_formed() -> None:
    board = dashboard()
    panels = board["panels"]
    assert board["uid"] == "canarist" and len({p["id"] for p in panels}) == len(panels)
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert variables["rollout"]["includeAll"] and variables["rollout"]["allValue"] == ".*"
    for panel in panels:
        assert panel["targets"] and panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert [t["refId"] for t in panel["targets"]] == [chr(65 + i) for i in range(len(panel["targets"]))]
        for target in panel["targets"]:
            assert set(re.findall(r"\$[a-z_]+", target["expr"])) <= set(FILLED), target["expr"]
    titles = {p["title"] for p in panels}
    for wanted in ("Canary weight", "Phase", "Decisions", "Reconcile latency (p50, p99)", "Edge errors"):
        assert wanted in titles


def test_the_install_ships_the_dashboard_as_a_configmap_grafana_loads() -> None:
    kustomization = yaml.safe_load((ROOT / "istio" / "kustomization.yaml").read_text(encoding="utf-8"))
    (generated,) = kustomization["configMapGenerator"]
    assert generated["files"] == ["dashboards/canarist.json"] and generated["namespace"] == "canarist-system"
    assert generated["options"]["labels"]["grafana_dashboard"] == "1"
    assert generated["options"]["disableNameSuffixHash"] is True


@pytest.fixture
def scraped_run(prometheus_factory: Callable[..., PrometheusServer]) -> Iterator[PrometheusServer]:
    """A good canary taken to Succeeded by a sharded, notifying controller; Prometheus scraped it all."""
    with local_api_server(istio_status=True) as api, receiver() as hooks:
        for version in ("v1", "v2"):
            api.seed(ready_pod(version))
        traffic = CollectorRegistry()
        mesh_port = free_port()
        start_http_server(mesh_port, addr="127.0.0.1", registry=traffic)
        mesh = Mesh(api, 0.005, threading.Event(), {"v1": 0, "v2": 0})
        threading.Thread(target=mesh.run, args=(traffic,), daemon=True).start()
        metrics = ControllerMetrics()
        ops = serve(metrics, 0)
        scrape = [
            {"job_name": "mesh", "scrape_interval": "1s", "static_configs": [{"targets": [f"127.0.0.1:{mesh_port}"]}]},
            {"job_name": "canarist", "scrape_interval": "1s",
             "static_configs": [{"targets": [f"127.0.0.1:{ops.server_address[1]}"]}]},
        ]  # fmt: skip
        prometheus = prometheus_factory(scrape_configs=scrape).start()
        sink = Sink("platform", SinkType.WEBHOOK, lambda: hooks.url("/canarist"), tuple(NotifyEvent))
        notifier = Notifier(defaults=[sink], count=metrics.notified).start()
        manager = Manager(
            KubeCluster(api.make_client(), propagation_delay=0.0),
            PrometheusSource(PrometheusClient(PrometheusSettings(url=prometheus.url, timeout=5.0))),
            default_environment(),
            time.time,
            namespace=NS,
            observer=metrics,
            shards=ShardSet(api.make_client(), "canarist-system", "replica-0", lease_seconds=15),
            notifier=notifier,
        )
        try:
            api.seed(policy(steps=[20, 50]))
            api.fail("/pods", 503, times=2)  # an API outage on the way: the edge-errors panel has data
            deadline = time.time() + 150
            while time.time() < deadline:
                manager.tick()
                metrics.ticked()
                stored = api.get("canarist.io", "modelrollouts", NS, NAME) or {}
                if (stored.get("status") or {}).get("phase") == "Succeeded":
                    break
                time.sleep(0.5)
            assert (stored.get("status") or {}).get("phase") == "Succeeded", stored.get("status")
            time.sleep(3.0)  # a few more scrapes of the last numbers
            yield prometheus
        finally:
            mesh.stop.set()
            notifier.close(timeout=2.0)
            ops.shutdown()
            ops.server_close()


def instant(prometheus: PrometheusServer, expr: str) -> list[dict[str, Any]]:
    url = f"{prometheus.url}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
    with urllib.request.urlopen(url, timeout=10) as answer:
        body = json.loads(answer.read())
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def test_every_panel_query_returns_data_from_a_real_controller_run(scraped_run: PrometheusServer) -> None:
    empty = []
    for title, expr in queries():
        filled = expr
        for variable, value in FILLED.items():
            filled = filled.replace(variable, value)
        if not instant(scraped_run, filled):
            empty.append(f"{title}: {filled}")
    assert empty == [], "\n".join(empty)
    rollouts = instant(scraped_run, "group by (rollout) (canarist_rollout_canary_weight)")
    assert [r["metric"]["rollout"] for r in rollouts] == [f"{NS}/{NAME}"]  # the $rollout variable's values
