"""``canarist analyze`` end to end: the real executable against a real Prometheus.

Each scenario history (tests/prometheus_fixture.py) is a 30-minute Istio + accuracy record of two
versions; the canary carries 25 % of the traffic, which is step 0 of the scenario policy.
"""

from __future__ import annotations

import http.server
import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.sandbox.demo.processes import free_port
from tests.hostile_http import BEHAVIOURS, HostileServer
from tests.prometheus_fixture import SCENARIOS, ScenarioPrometheus, scenario_policy

CANARIST = str(Path(sys.executable).with_name("canarist"))


def analyze(
    where: str | ScenarioPrometheus, policy: Path, *args: str, at: float | None = None
) -> subprocess.CompletedProcess[str]:
    """``canarist analyze`` of ``policy`` against a URL, or a scenario store (with its --prometheus-store)."""
    store = where.cli_options if isinstance(where, ScenarioPrometheus) else ["--prometheus", where]
    command = [CANARIST, "analyze", str(policy), *store, "--since", "30m", "--step", "0", *args]
    if at is not None:
        command += ["--at", str(at)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture(scope="module")
def policies(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("policies")
    out = {}
    for name, scenario in SCENARIOS.items():
        path = folder / f"{name}.yaml"
        path.write_text(yaml.safe_dump(scenario_policy(scenario), sort_keys=False))
        out[name] = path
    return out


def run_json(prom: ScenarioPrometheus, policies: dict[str, Path], name: str) -> tuple[int, dict[str, Any]]:
    result = analyze(prom, policies[name], "-o", "json", at=prom.at)
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, json.loads(result.stdout)


EXPECTED = {
    # scenario: (decision, exit code, the metric named in the reason or None)
    "good": ("advance", 0, None),
    "latency-regression": ("rollback", 1, "latency-p99"),
    "error-regression": ("rollback", 1, "error-rate"),
    "accuracy-regression": ("rollback", 1, "accuracy"),
    "slo-breach": ("rollback", 1, "latency-p99"),
    "no-traffic": ("hold", 3, None),
    "counter-reset": ("advance", 0, None),
    "missing-scrape": ("advance", 0, None),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_scenario_gets_the_right_decision(
    scenario_prometheus: ScenarioPrometheus, policies: dict[str, Path], name: str
) -> None:
    decision, code, culprit = EXPECTED[name]
    returncode, doc = run_json(scenario_prometheus, policies, name)
    assert (doc["decision"], returncode) == (decision, code), doc["reason"]
    assert doc["kind"] == "Analysis" and doc["rollout"] == f"{name}/model"
    assert doc["windows"] == 30 and doc["canaryWeight"] == 25
    verdicts = {m["name"]: m for m in doc["metrics"]}
    assert set(verdicts) >= {"latency-p99", "error-rate", "accuracy"}
    if culprit is not None:
        assert culprit in doc["reason"]
        assert verdicts[culprit]["verdict"] == "Fail"
        assert verdicts[culprit]["eValue"] >= verdicts[culprit]["threshold"]
    if decision == "advance":
        assert all(m["verdict"] in ("Pass", "Inconclusive") for m in doc["metrics"]), doc["metrics"]
        assert doc["requests"]["canary"] > 100


def test_slo_breaches_are_flagged_as_such(scenario_prometheus: ScenarioPrometheus, policies: dict[str, Path]) -> None:
    _, doc = run_json(scenario_prometheus, policies, "slo-breach")
    latency = next(m for m in doc["metrics"] if m["name"] == "latency-p99")
    assert latency["sloBreached"] is True
    assert "SLO breached" in doc["reason"]


def test_no_traffic_is_no_data_never_a_failure(
    scenario_prometheus: ScenarioPrometheus, policies: dict[str, Path]
) -> None:
    _, doc = run_json(scenario_prometheus, policies, "no-traffic")
    assert doc["requests"]["canary"] == 0
    assert {m["verdict"] for m in doc["metrics"]} == {"NoData"}
    assert "no data" in doc["reason"]


def test_dropped_windows_are_explained(scenario_prometheus: ScenarioPrometheus, policies: dict[str, Path]) -> None:
    _, reset = run_json(scenario_prometheus, policies, "counter-reset")
    assert any("reset" in m["reason"] for m in reset["metrics"]), reset["metrics"]
    _, gap = run_json(scenario_prometheus, policies, "missing-scrape")
    said = "15-17" if scenario_prometheus.store == "prometheus" else "before the window's start or end (windows 15, 17)"
    assert any(said in m["reason"] for m in gap["metrics"]), gap["metrics"]


def test_table_output_names_every_metric_and_the_decision(
    scenario_prometheus: ScenarioPrometheus, policies: dict[str, Path]
) -> None:
    result = analyze(scenario_prometheus, policies["error-regression"], at=scenario_prometheus.at)
    assert result.returncode == 1
    for name in ("latency-p99", "error-rate", "accuracy", "decision: ROLLBACK"):
        assert name in result.stdout


def test_rfc3339_time_is_the_same_look(scenario_prometheus: ScenarioPrometheus, policies: dict[str, Path]) -> None:
    from datetime import UTC, datetime

    stamp = datetime.fromtimestamp(scenario_prometheus.at, UTC).isoformat().replace("+00:00", "Z")
    by_seconds = run_json(scenario_prometheus, policies, "good")[1]
    result = analyze(scenario_prometheus, policies["good"], "-o", "json", "--at", stamp)
    assert json.loads(result.stdout)["metrics"] == by_seconds["metrics"]


# --- faults: Prometheus down, failing, slow -------------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    delay = 0.0
    status = 500

    def do_GET(self) -> None:
        if self.delay:
            threading.Event().wait(self.delay)
        body = b'{"status":"error","errorType":"internal","error":"boom"}'
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET  # noqa: N815 - the name http.server dispatches to

    def log_message(self, *args: Any) -> None:
        return


@pytest.fixture
def fake_prometheus(request: pytest.FixtureRequest) -> Iterator[str]:
    handler = type("Handler", (_Handler,), dict(request.param))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    ("fake_prometheus", "why"),
    [({"status": 500}, "500"), ({"status": 503}, "503"), ({"delay": 3.0, "status": 200}, "timed out")],
    indirect=["fake_prometheus"],
    ids=["http-500", "http-503", "slow"],
)
def test_a_failing_prometheus_means_hold_with_the_reason(
    fake_prometheus: str, policies: dict[str, Path], why: str
) -> None:
    result = analyze(fake_prometheus, policies["good"], "-o", "json", "--timeout", "1", at=1_700_001_840)
    assert result.returncode == 3, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    doc = json.loads(result.stdout)
    assert doc["decision"] == "hold"
    assert why in doc["prometheus"]["error"]
    assert {m["verdict"] for m in doc["metrics"]} == {"NoData"}


def test_prometheus_stopped_means_hold(prometheus_factory: Any, policies: dict[str, Path]) -> None:
    server = prometheus_factory().start()
    url = server.url
    server.stop()
    result = analyze(url, policies["good"], "-o", "json", at=1_700_001_840)
    assert result.returncode == 3
    doc = json.loads(result.stdout)
    assert doc["decision"] == "hold" and doc["prometheus"]["error"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--at", "yesterday"], "--at"),
        (["--since", "5 minutes"], "--since"),
        (["--step", "7"], "out of range"),
        (["--weight", "10", "--step", "1"], "not both"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(policies: dict[str, Path], args: list[str], message: str) -> None:
    command = [CANARIST, "analyze", str(policies["good"]), "--prometheus", "http://127.0.0.1:9", *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


def test_bad_prometheus_url_is_refused(policies: dict[str, Path]) -> None:
    command = [CANARIST, "analyze", str(policies["good"]), "--prometheus", "localhost:9090"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2 and "--prometheus" in result.stderr


# --- bounds: a hostile Prometheus cannot hold a look -------------------------------------------


def _wall(url: str, policy: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    began = time.monotonic()
    result = analyze(url, policy, *args, at=1_700_001_840)
    return result, time.monotonic() - began


@pytest.mark.parametrize("name", ["trickle-body", "trickle-headers", "silent", "endless-body"])
def test_a_hostile_prometheus_means_hold_within_seconds(policies: dict[str, Path], name: str) -> None:
    """--timeout bounds each query's whole answer: a server trickling a byte a second cannot freeze a look.

    The bound is checked against the same command failing at once (nothing listening), so that a
    slow start of the interpreter on a loaded machine is not counted: the hostile server may add
    at most the 2 s timeout and a little slack, and the whole run stays under 8 s unless the
    machine is so loaded that the baseline alone is slow.
    """
    baseline, base_s = _wall(f"http://127.0.0.1:{free_port()}", policies["good"], "--timeout", "2")
    assert baseline.returncode == 3, baseline.stdout + baseline.stderr
    with HostileServer(BEHAVIOURS[name]) as server:
        result, wall_s = _wall(server.url, policies["good"], "--timeout", "2")
    assert result.returncode == 3, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert wall_s < max(8.0, base_s + 4.0), f"{name}: {wall_s:.1f}s (baseline {base_s:.1f}s)"
    assert wall_s - base_s < 4.0, f"{name}: {wall_s:.1f}s (baseline {base_s:.1f}s)"
    lines = result.stdout.splitlines()
    (decision,) = [line for line in lines if line.startswith("decision: HOLD: ")]
    (why,) = [line for line in lines if line.startswith("prometheus: ")]
    expected = "byte limit" if name == "endless-body" else "timed out after 2s"
    assert expected in decision and expected in why


def test_a_file_of_many_rollouts_is_one_look(
    scenario_prometheus: ScenarioPrometheus, policies: dict[str, Path], tmp_path: Path
) -> None:
    """Every rollout of a file analysed together: as many queries as for one, and the same verdicts."""
    together = tmp_path / "all.yaml"
    together.write_text("---\n".join(p.read_text() for p in policies.values()))
    counting = scenario_prometheus.store == "prometheus"  # VictoriaMetrics' own count is not reliable
    before = scenario_prometheus.queries_served() if counting else 0
    one = analyze(scenario_prometheus, policies["good"], at=scenario_prometheus.at)
    between = scenario_prometheus.queries_served() if counting else 0
    result = analyze(scenario_prometheus, together, "-o", "json", at=scenario_prometheus.at)
    if counting:
        assert scenario_prometheus.queries_served() - between == between - before
    assert one.returncode == 0 and result.returncode == 1, result.stderr  # the worst: a rollback
    docs = [json.loads(d) for d in re.split(r"(?m)^(?=\{)", result.stdout) if d.strip()]
    assert len(docs) == len(policies)
    for doc in docs:
        alone = run_json(scenario_prometheus, policies, doc["rollout"].split("/")[0])[1]
        assert doc["metrics"] == alone["metrics"]
