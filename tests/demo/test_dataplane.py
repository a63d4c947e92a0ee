"""The demo's data plane with real processes: model servers, haproxy, the load generator.

Nothing is mocked: servers and the load generator run as ``python -m`` processes, haproxy is
Debian's binary (missing, the tests FAIL). Every process is started in its own session and
stopped by PID, and each test ends by checking that no process is left in those sessions.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from controller.api.load import load
from controller.api.model import ModelRollout
from controller.api.schedule import RouteState, schedule, state_for_step
from controller.sandbox.demo.haproxy import Haproxy, HaproxyError, weights_from_virtual_service
from controller.sandbox.demo.loadgen import LateLabels, RequestOutcome, arrivals, classify, rate_at
from controller.sandbox.demo.model import Model, generate, train
from controller.sandbox.demo.processes import free_port
from controller.sandbox.demo.server import ISTIO_BUCKETS_MS
from controller.traffic.render import render
from controller.traffic.templating import default_environment

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
ISTIO_LABELS = {
    "reporter",
    "destination_service_namespace",
    "destination_service_name",
    "destination_workload",
    "destination_version",
}


# --- processes ---------------------------------------------------------------------------------


def sessions_alive(sids: set[int]) -> list[int]:
    """PIDs of live processes whose session is one we started (so grandchildren count too)."""
    alive = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[3]) in sids and fields[0] != "Z":
            alive.append(int(entry.name))
    return alive


class Processes:
    """Processes started for one test, each in its own session; stop() ends and checks them all."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.started: list[subprocess.Popen[bytes]] = []
        self.names: dict[int, str] = {}
        self.haproxies: list[Haproxy] = []

    def spawn(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        with (self.workdir / f"{name}.log").open("wb") as log:
            process = subprocess.Popen(
                [PYTHON, *args], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.started.append(process)
        self.names[process.pid] = name
        return process

    def server(self, version: str, model: Path, *extra: str) -> int:
        """A model server on a free port, once its /healthz answers."""
        port = free_port()
        process = self.spawn(
            f"server-{version}", "-m", "controller.sandbox.demo.server", "--version", version, "--port", str(port),
            "--model", str(model), "--service", "fraud-detector", "--namespace", "demo", "--seed", "7", *extra,
        )  # fmt: skip
        wait_until(lambda: get(f"http://127.0.0.1:{port}/healthz")[0] == 200, process, f"server {version}")
        return port

    def haproxy(self, servers: dict[str, int], weights: dict[str, int], workdir: Path | None = None) -> Haproxy:
        proxy = Haproxy(
            workdir or self.workdir / "haproxy", frontend_port=free_port(), servers=servers, weights=weights
        )
        self.haproxies.append(proxy)
        return proxy.start()

    def terminate(self, process: subprocess.Popen[bytes], timeout: float = 5.0) -> int:
        """SIGTERM and the exit status; the process must be gone within ``timeout``."""
        process.send_signal(signal.SIGTERM)
        return process.wait(timeout)

    def stop(self) -> None:
        for proxy in self.haproxies:
            proxy.stop()
        codes: dict[str, int | str] = {}
        for process in self.started:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            try:
                codes[self.names[process.pid]] = process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                codes[self.names[process.pid]] = "killed"
        sids = {p.pid for p in self.started} | {p.pid for p in self.haproxies if p.pid is not None}
        assert sessions_alive(sids) == [], "processes left behind"
        assert all(code == 0 for code in codes.values()), f"not a clean exit on SIGTERM: {codes}"


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Processes]:
    processes = Processes(tmp_path)
    yield processes
    processes.stop()


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    x, y = generate(np.random.default_rng(1), 20_000)
    path = tmp_path_factory.mktemp("model") / "model.json"
    train(x, y, seed=1).save(path)
    return path


def wait_until(ready: Callable[[], bool], process: subprocess.Popen[bytes], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert process.poll() is None, f"{what} exited with {process.returncode}"
        assert time.monotonic() < deadline, f"{what} not ready within {timeout:g}s"
        time.sleep(0.05)


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


def post(conn: http.client.HTTPConnection, body: bytes | str) -> tuple[int, dict[str, str], Any]:
    return post_to(conn, "/predict", body)


def post_to(conn: http.client.HTTPConnection, path: str, body: bytes | str) -> tuple[int, dict[str, str], Any]:
    conn.request("POST", path, body, {"Content-Type": "application/json"})
    response = conn.getresponse()
    data = response.read()
    return response.status, {k.lower(): v for k, v in response.headers.items()}, json.loads(data)


def scrape(port: int) -> dict[str, list[tuple[dict[str, str], float]]]:
    """{sample name: [(labels, value)]} of a /metrics page."""
    status, text = get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def features(n: int, seed: int = 5) -> list[list[float]]:
    x, _ = generate(np.random.default_rng(seed), n)
    return [list(map(float, row)) for row in x]


# --- the model server ----------------------------------------------------------------------------


def test_server_predicts_and_reports_exactly_as_an_istio_sidecar(procs: Processes, model_file: Path) -> None:
    port = procs.server("v2", model_file, "--latency-median", "0.005")
    model = Model.load(model_file)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    rows = features(20)
    for row in rows:
        status, headers, answer = post(conn, json.dumps({"features": row}))
        assert status == 200 and headers["x-served-by"] == "v2" and "x-injected-error" not in headers
        assert answer["version"] == "v2"
        assert answer["score"] == pytest.approx(model.predict_proba(np.array(row))[0], abs=1e-6)
        assert answer["fraud"] == bool(model.predict(np.array(row))[0])
    for bad in ('{"features": [1, 2]}', "not json", '{"rows": []}'):
        status, headers, answer = post(conn, bad)
        assert status == 400 and "error" in answer and headers["x-served-by"] == "v2"
    assert get(f"http://127.0.0.1:{port}/healthz") == (200, b"ok\n")
    assert get(f"http://127.0.0.1:{port}/nothing")[0] == 404

    samples = scrape(port)
    identity = {
        "reporter": "destination",
        "destination_service_namespace": "demo",
        "destination_service_name": "fraud-detector",
        "destination_workload": "fraud-detector-v2",
        "destination_version": "v2",
    }
    requests = {labels["response_code"]: value for labels, value in samples["istio_requests_total"]}
    assert requests == {"200": 20, "400": 3}
    assert all(set(labels) == ISTIO_LABELS | {"response_code"} for labels, _ in samples["istio_requests_total"])
    assert all({k: labels[k] for k in identity} == identity for labels, _ in samples["istio_requests_total"])
    buckets = samples["istio_request_duration_milliseconds_bucket"]
    assert all(set(labels) == ISTIO_LABELS | {"le"} for labels, _ in buckets)
    assert [float(labels["le"]) for labels, _ in buckets] == [*map(float, ISTIO_BUCKETS_MS), float("inf")]
    assert buckets[-1][1] == 23  # errors are timed too
    ((labels, count),) = samples["istio_request_duration_milliseconds_count"]
    assert labels == identity and count == 23
    assert samples["istio_request_duration_milliseconds_sum"][0][1] > 20 * 2.0  # 20 requests of ~5 ms


def test_injected_errors_are_marked_and_slowdown_shows_in_the_histogram(procs: Processes, model_file: Path) -> None:
    common = ("--latency-median", "0.01", "--latency-sigma", "0.3")
    fast = procs.server("v1", model_file, *common)
    slow = procs.server("v2", model_file, *common, "--slowdown", "5", "--error-rate", "1.0")
    rows = features(25)
    for port in (fast, slow):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        for row in rows:
            status, headers, answer = post(conn, json.dumps({"features": row}))
            if port == fast:
                assert status == 200 and "x-injected-error" not in headers
            else:
                assert status == 500 and headers["x-injected-error"] == "1" and headers["x-served-by"] == "v2"
                assert answer == {"error": "injected failure", "version": "v2"}
    mean_ms = {}
    for name, port in (("fast", fast), ("slow", slow)):
        samples = scrape(port)
        codes = {labels["response_code"]: value for labels, value in samples["istio_requests_total"]}
        # The 200 series exists from the start, at 0, so that increase() counts the first requests.
        assert codes == ({"200": 25} if name == "fast" else {"200": 0, "500": 25})
        total = samples["istio_request_duration_milliseconds_sum"][0][1]
        mean_ms[name] = total / samples["istio_request_duration_milliseconds_count"][0][1]
        buckets = {labels["le"]: v for labels, v in samples["istio_request_duration_milliseconds_bucket"]}
        assert buckets["25.0"] >= 22 if name == "fast" else buckets["25.0"] <= 3  # P(< 25 ms): 0.999 and 0.01
    # medians 10 ms and 50 ms (sigma 0.3): means about 10.5 and 52 ms, plus a little overhead
    assert 8 < mean_ms["fast"] < 25 and 40 < mean_ms["slow"] < 90
    assert mean_ms["slow"] > 3 * mean_ms["fast"]


def test_compute_per_inference_is_exported_as_the_gpu_agents_series_labelled_a_cpu_stand_in(
    procs: Processes, model_file: Path
) -> None:
    plain = procs.server("v1", model_file, "--latency-median", "0")
    costly = procs.server("v2", model_file, "--latency-median", "0", "--compute-ms", "4")
    for port in (plain, costly):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        for row in features(25):
            assert post(conn, json.dumps({"features": row}))[0] == 200
    assert "canarist_gpu_seconds_total" not in scrape(plain)  # no compute asked for: no GPU series
    ((labels, seconds),) = scrape(costly)["canarist_gpu_seconds_total"]
    assert labels == {"pod": "fraud-detector-v2-0", "container": "model", "gpu": "cpu-stand-in", "version": "v2"}
    assert 25 * 0.004 <= seconds < 25 * 0.004 * 1.5  # this thread's CPU time, at least what was asked


def test_a_fault_can_be_switched_on_live_and_is_not_traffic(procs: Processes, model_file: Path) -> None:
    port = procs.server("v2", model_file, "--latency-median", "0.001")
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    body = json.dumps({"features": features(1)[0]})

    def fault(payload: str) -> tuple[int, Any]:
        status, _, answer = post_to(conn, "/admin/fault", payload)
        return status, answer

    assert post(conn, body)[0] == 200
    assert fault('{"error_rate": 1.0}') == (200, {"error_rate": 1.0, "slowdown": 1.0})
    status, headers, _ = post(conn, body)
    assert status == 500 and headers["x-injected-error"] == "1"
    assert fault('{"error_rate": 0, "slowdown": 2.5}') == (200, {"error_rate": 0.0, "slowdown": 2.5})
    assert post(conn, body)[0] == 200
    for bad in ('{"error_rate": 2}', '{"slowdown": 0}', "[1]", "nope"):
        assert fault(bad)[0] == 400
    codes = {labels["response_code"]: v for labels, v in scrape(port)["istio_requests_total"]}
    assert codes == {"200": 2, "500": 1}  # the control requests are not counted as traffic


def test_server_stops_at_once_on_sigterm_and_sigint(procs: Processes, model_file: Path) -> None:
    for signum, version in ((signal.SIGTERM, "v1"), (signal.SIGINT, "v2")):
        port = procs.server(version, model_file)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        assert post(conn, json.dumps({"features": features(1)[0]}))[0] == 200  # a keep-alive connection stays open
        process = procs.started[-1]
        begin = time.monotonic()
        process.send_signal(signum)
        assert process.wait(5) == 0
        assert time.monotonic() - begin < 2.0
        conn.close()


def test_server_refuses_a_missing_model_file(procs: Processes, tmp_path: Path) -> None:
    process = procs.spawn("bad", "-m", "controller.sandbox.demo.server", "--version", "v1", "--port", str(free_port()),
                          "--model", str(tmp_path / "missing.json"))  # fmt: skip
    assert process.wait(10) == 2
    procs.started.remove(process)


# --- the load generator's pure parts ---------------------------------------------------------------


def test_outcomes_are_classified_strictly() -> None:
    served = {"X-Served-By": "v2"}
    assert classify(200, served) == ("v2", RequestOutcome.OK)
    assert classify(200, served, body_ok=False) == ("v2", RequestOutcome.ROUTING_FAILURE)
    assert classify(500, {**served, "x-injected-error": "1"}) == ("v2", RequestOutcome.INJECTED_ERROR)
    assert classify(500, served) == ("v2", RequestOutcome.ROUTING_FAILURE)  # a real crash, not the injected one
    assert classify(400, served) == ("v2", RequestOutcome.ROUTING_FAILURE)
    assert classify(503, {"content-type": "text/html"}) == ("unknown", RequestOutcome.ROUTING_FAILURE)  # haproxy's own
    assert classify(503, {"x-injected-error": "1"}) == ("unknown", RequestOutcome.ROUTING_FAILURE)  # no server named
    assert classify(200, {}) == ("unknown", RequestOutcome.ROUTING_FAILURE)
    assert classify(None, {}) == ("unknown", RequestOutcome.ROUTING_FAILURE)  # refused, reset, timed out


def test_arrivals_are_poisson_at_the_mean_rate_with_a_wobble() -> None:
    steady = arrivals(random.Random(1), 100.0)
    times = np.array([next(steady) for _ in range(20_000)])
    gaps = np.diff(times)
    assert np.all(gaps > 0)
    assert times[-1] == pytest.approx(200.0, rel=0.03)  # 20 000 arrivals at 100/s: 3 sigma is 2 %
    assert np.std(gaps) / np.mean(gaps) == pytest.approx(1.0, abs=0.03)  # exponential gaps
    wobbly = arrivals(random.Random(2), 100.0, wobble=0.5, period=10.0)
    phases = np.array([next(wobbly) for _ in range(20_000)]) % 10.0
    high, low = np.sum(phases < 5.0), np.sum(phases >= 5.0)  # sin > 0 in the first half-period
    assert high / low == pytest.approx((1 + 1 / np.pi) / (1 - 1 / np.pi), rel=0.05)
    assert rate_at(2.5, 100.0, 0.5, 10.0) == pytest.approx(150.0)
    with pytest.raises(ValueError):
        next(arrivals(random.Random(3), 100.0, wobble=1.0))


def test_late_labels_arrive_when_due_in_order() -> None:
    labels: LateLabels[str] = LateLabels()
    assert labels.next_due() is None and labels.pop_due(1e9) == []
    for due, item in ((3.0, "c"), (1.0, "a"), (2.0, "b1"), (2.0, "b2"), (5.0, "late")):
        labels.push(due, item)
    assert labels.next_due() == 1.0 and len(labels) == 5
    assert labels.pop_due(0.5) == []
    assert labels.pop_due(2.0) == ["a", "b1", "b2"]  # due ones only, ties in push order
    assert labels.pop_due(4.0) == ["c"]
    assert len(labels) == 1 and labels.next_due() == 5.0


# --- haproxy, the data plane --------------------------------------------------------------------------


def test_haproxy_balances_each_request_of_a_keepalive_connection_by_weight(procs: Processes, model_file: Path) -> None:
    servers = {v: procs.server(v, model_file, "--latency-median", "0.001") for v in ("v1", "v2")}
    proxy = procs.haproxy(servers, {"v1": 70, "v2": 30})
    assert proxy.current_weights() == {"v1": 70, "v2": 30}
    conn = http.client.HTTPConnection("127.0.0.1", proxy.frontend_port, timeout=5)
    body = json.dumps({"features": features(1)[0]})
    seen: Counter[str] = Counter()
    sockets = set()
    for _ in range(500):
        status, headers, _ = post(conn, body)
        assert status == 200
        seen[headers["x-served-by"]] += 1
        sockets.add(id(conn.sock))
    assert len(sockets) == 1  # one client connection throughout: balancing is per request
    # roundrobin is deterministic: the split is exact to within a request per round
    assert abs(seen["v1"] - 350) <= 2 and abs(seen["v2"] - 150) <= 2
    assert proxy.served() == dict(seen)  # hrsp_* count requests, not connections
    rows = {row["svname"]: row for row in proxy.stats()}
    for version, n in seen.items():  # haproxy 2.6 counts a server "session" per request too
        assert int(rows[version]["stot"]) == int(rows[version]["req_tot"]) == int(rows[version]["hrsp_2xx"]) == n
    proxy.set_weights({"v1": 0, "v2": 100})
    assert proxy.current_weights() == {"v1": 0, "v2": 100}
    after = Counter(post(conn, body)[1]["x-served-by"] for _ in range(50))
    assert after == {"v2": 50}


def test_weights_change_under_load_and_no_request_is_lost(procs: Processes, model_file: Path) -> None:
    servers = {v: procs.server(v, model_file, "--latency-median", "0.01") for v in ("v1", "v2")}
    proxy = procs.haproxy(servers, {"v1": 70, "v2": 30})
    metrics, summary = free_port(), procs.workdir / "summary.json"
    loadgen = procs.spawn(
        "loadgen", "-m", "controller.sandbox.demo.loadgen", "--target", f"http://127.0.0.1:{proxy.frontend_port}",
        "--rate", "250", "--workers", "16", "--metrics-port", str(metrics), "--labelled-share", "0.5",
        "--label-delay", "0.3", "--seed", "3", "--versions", "v1,v2", "--summary", str(summary),
    )  # fmt: skip
    wait_until(lambda: sum(proxy.served().values()) >= 600, loadgen, "600 requests through haproxy", timeout=20)
    split = proxy.served()
    share = split["v1"] / sum(split.values())
    # deterministic roundrobin, plus at most 16 requests in flight (16/600 < 3 points): +-5 points is safe
    assert abs(share - 0.70) <= 0.05, split

    proxy.set_weights({"v1": 0, "v2": 100})
    time.sleep(0.5)  # requests already sent to v1 finish
    before = proxy.served()
    time.sleep(1.5)
    after = proxy.served()
    assert after["v1"] == before["v1"], "v1 got new requests at weight 0"
    assert after["v2"] - before["v2"] > 150

    samples = scrape(metrics)
    requests = {(labels["version"], labels["outcome"]): v for labels, v in samples["demo_requests_total"]}
    assert requests["unknown", "routing_failure"] == 0 and requests["v1", "routing_failure"] == 0
    assert requests["v1", "ok"] > 300 and requests["v2", "ok"] > 300
    labelled = {labels["version"]: v for labels, v in samples["fraud_predictions_labelled_total"]}
    correct = {labels["version"]: v for labels, v in samples["fraud_predictions_correct_total"]}
    assert all(labels["model"] == "fraud-detector" for labels, _ in samples["fraud_predictions_labelled_total"])
    assert labelled["v1"] > 100 and labelled["v2"] > 100
    assert 0.8 < correct["v1"] / labelled["v1"] <= 1.0  # the model is about 93 % right

    assert procs.terminate(loadgen) == 0
    result = json.loads(summary.read_text())
    assert result["routing_failures"] == 0
    assert result["outcomes"] == {"ok": result["sent"], "injected_error": 0, "routing_failure": 0}
    assert result["by_version"] == proxy.served()  # the client and haproxy agree on every request
    assert result["shed"] == 0


def test_a_stopped_loadgen_writes_its_totals_while_requests_hang(procs: Processes) -> None:
    """A target that accepts and never answers (a canary stuck under an SLO breach) holds every worker
    in a request; SIGTERM must still bring the summary within seconds, not after the request timeout
    (the demo's supervisor once lost the totals to its SIGKILL)."""
    hanging = socket.create_server(("127.0.0.1", 0), backlog=64)
    accepted: list[socket.socket] = []

    def take() -> None:  # accept and never answer, until the socket is closed
        with contextlib.suppress(OSError):
            while True:
                accepted.append(hanging.accept()[0])

    threading.Thread(target=take, daemon=True).start()
    port, metrics, summary = hanging.getsockname()[1], free_port(), procs.workdir / "hanging.json"
    loadgen = procs.spawn(
        "loadgen", "-m", "controller.sandbox.demo.loadgen", "--target", f"http://127.0.0.1:{port}",
        "--rate", "50", "--workers", "4", "--metrics-port", str(metrics), "--timeout", "60",
        "--versions", "v1,v2", "--summary", str(summary),
    )  # fmt: skip
    wait_until(lambda: len(accepted) >= 4, loadgen, "4 hanging connections", timeout=20)
    started = time.monotonic()
    assert procs.terminate(loadgen, timeout=8.0) == 0
    assert time.monotonic() - started < 8.0
    result = json.loads(summary.read_text())
    assert result["sent"] >= 4 and result["routing_failures"] == 0  # in flight: neither answered nor failed
    hanging.close()
    for connection in accepted:
        connection.close()


def test_haproxy_long_workdir_and_refusals(procs: Processes, model_file: Path, tmp_path: Path) -> None:
    port = procs.server("v1", model_file)
    deep = tmp_path / ("d" * 60) / ("e" * 60)  # admin.sock there would exceed sun_path's 108 bytes
    proxy = procs.haproxy({"v1": port, "v2": free_port()}, {"v1": 100}, workdir=deep)
    assert len(str(proxy.socket)) < 108 and proxy.socket.exists()
    assert proxy.current_weights() == {"v1": 100, "v2": 0}
    with pytest.raises(ValueError, match="unknown servers"):
        proxy.set_weights({"v3": 10})
    with pytest.raises(ValueError, match=r"0\.\.256"):
        proxy.set_weights({"v1": 300})
    with pytest.raises(HaproxyError, match="already started"):
        proxy.start()
    proxy.stop()
    proxy.stop()  # idempotent
    assert not proxy.socket.parent.exists()
    with pytest.raises(HaproxyError, match="not running"):
        proxy.set_weights({"v1": 1})


def test_missing_haproxy_is_an_error_not_a_skip(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr("controller.sandbox.demo.haproxy.HAPROXY", str(tmp_path / "no-haproxy"))
    proxy = Haproxy(tmp_path, frontend_port=free_port(), servers={"v1": free_port()}, weights={"v1": 1})
    with pytest.raises(HaproxyError, match="apt-get install"):
        proxy.start()
    assert proxy.pid is None


def test_the_real_haproxy_is_installed() -> None:
    from controller.sandbox.demo import haproxy
    from controller.sandbox.demo.processes import require

    assert require(haproxy.HAPROXY, "haproxy") == haproxy.HAPROXY  # else PartMissingError says what to install


# --- weights from the rendered VirtualService ------------------------------------------------------------

ENV = default_environment()


def example(name: str) -> ModelRollout:
    path = ROOT / "policies" / name
    (rollout,) = load(path.read_text(), str(path))
    return rollout


def virtual_service(rollout: ModelRollout, state: RouteState) -> dict[str, Any]:
    (service,) = [o for o in render(rollout, state, ENV) if o["kind"] == "VirtualService"]
    return service


def test_weights_follow_every_step_of_a_rendered_rollout_and_its_rollback() -> None:
    rollout = example("fraud-detector-istio.yaml")
    seen = []
    for index in range(len(schedule(rollout)) + 1):  # every step, then promotion
        weights = weights_from_virtual_service(virtual_service(rollout, state_for_step(rollout, index)))
        assert set(weights) == {"v41", "v42"} and sum(weights.values()) == 100
        seen.append(weights["v42"])
    assert seen == [1, 5, 25, 50, 100]
    rollback = virtual_service(rollout, RouteState(0, cohorts=False))
    assert weights_from_virtual_service(rollback) == {"v41": 100, "v42": 0}


def test_weights_skip_cohort_and_sticky_routes_and_mirrors() -> None:
    rollout = example("search-embedder-ab.yaml")  # header and cookie cohorts, sticky users, a shadow phase
    shadow = virtual_service(rollout, state_for_step(rollout, 0))
    assert [r["name"] for r in shadow["spec"]["http"]][:2] == ["cohort-beta-testers", "cohort-opt-in"]
    assert weights_from_virtual_service(shadow) == {"e5-base": 100, "e5-large": 0}  # mirrored, not served
    live = virtual_service(rollout, RouteState(20))
    assert weights_from_virtual_service(live) == {"e5-base": 80, "e5-large": 20}
    rollback = virtual_service(rollout, RouteState(0, cohorts=False))
    assert [r["name"] for r in rollback["spec"]["http"]] == ["primary"]
    assert weights_from_virtual_service(rollback) == {"e5-base": 100, "e5-large": 0}


def test_weights_refuse_what_haproxy_cannot_follow() -> None:
    triton = example("ocr-triton-versions.yaml")
    with pytest.raises(ValueError, match="Triton-mode"):
        weights_from_virtual_service(virtual_service(triton, RouteState(10)))
    single = {"kind": "VirtualService", "spec": {"http": [{"route": [{"destination": {"host": "h", "subset": "a"}}]}]}}
    assert weights_from_virtual_service(single) == {"a": 100}  # no weight: all of it
    with pytest.raises(ValueError, match="expected a VirtualService"):
        weights_from_virtual_service({"kind": "DestinationRule"})
    with pytest.raises(ValueError, match=r"no spec\.http routes"):
        weights_from_virtual_service({"kind": "VirtualService", "spec": {"tcp": []}})
    two = [{"destination": {"subset": "a"}, "weight": 60}, {"destination": {"subset": "b"}, "weight": 30}]
    with pytest.raises(ValueError, match="do not sum to 100"):
        weights_from_virtual_service({"kind": "VirtualService", "spec": {"http": [{"name": "primary", "route": two}]}})
    two[1]["weight"] = 40.5
    with pytest.raises(ValueError, match=r"integer in 0\.\.100"):
        weights_from_virtual_service({"kind": "VirtualService", "spec": {"http": [{"name": "primary", "route": two}]}})
