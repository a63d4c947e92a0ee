"""The Prometheus edge and observe() against a real Prometheus (Debian's 2.42), a live exporter and faulty servers."""

from __future__ import annotations

import gzip
import json
import math
import socket
import ssl
import threading
import time
import urllib.parse
import urllib.request
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

from controller.api.model import ModelRollout
from controller.edges.prometheus import (
    AnswerTooLarge,
    PrometheusClient,
    PrometheusConfigError,
    PrometheusError,
    PrometheusSettings,
    PrometheusTimeout,
    PrometheusUnavailable,
    QueryError,
    fetch,
    grid_step,
    observe,
    observe_or_explain,
)
from controller.edges.prometheus.look import look_rounds
from controller.metrics.cache import WindowCache
from controller.metrics.measure import plan
from controller.metrics.plan import Query
from controller.metrics.read import Results
from controller.metrics.samples import CountSeries, HistogramSeries, Observation, Window
from controller.metrics.selectors import Matcher, Op, any_of, selector
from controller.sandbox.demo.processes import free_port
from tests.hostile_http import BEHAVIOURS, HEADERS, HostileServer
from tests.prometheus_fixture import (
    LE,
    SCENARIOS,
    T0,
    OpenMetrics,
    PrometheusServer,
    ScenarioPrometheus,
    scenario_rollout,
)

STABLE, CANARY = "v1", "v2"


def client(url: str, **options: Any) -> PrometheusClient:
    return PrometheusClient(PrometheusSettings(url, **options))


# --- scenario histories -----------------------------------------------------------------------


@dataclass
class Look:
    observations: dict[str, Observation]
    requests_sent: int


@pytest.fixture(scope="module")
def scenario_look(scenario_prometheus: ScenarioPrometheus) -> Look:
    """One look at every scenario rollout together."""
    source = scenario_prometheus.client()
    rollouts = [scenario_prometheus.rollout(name) for name in SCENARIOS]
    windows = {r.key: scenario_prometheus.windows(r.metadata.namespace) for r in rollouts}
    observations = observe(source, rollouts, windows, scenario_prometheus.at)
    return Look(observations, source.requests_sent)


def of(look: Look, name: str) -> Observation:
    return look.observations[f"{name}/model"]


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_scenario_counts_are_exact(name: str, scenario_look: Look, scenario_prometheus: ScenarioPrometheus) -> None:
    truth = scenario_prometheus.truths[name]
    obs = of(scenario_look, name)
    assert list(obs.stable_requests) == truth.requests[STABLE]
    assert list(obs.canary_requests) == truth.requests[CANARY]
    errors = obs.metric("error-rate")
    assert errors is not None and isinstance(errors.series, CountSeries)
    assert list(errors.series.stable_events) == truth.errors[STABLE]
    assert list(errors.series.canary_trials) == truth.requests[CANARY]
    latency = obs.metric("latency-p99")
    assert latency is not None and isinstance(latency.series, HistogramSeries)
    assert latency.series.edges == tuple(float(le) / 1000 for le in LE)
    for got, want in ((latency.series.stable, truth.buckets[STABLE]), (latency.series.canary, truth.buckets[CANARY])):
        assert [None if c is None else tuple(int(x) for x in c) for c in got] == want
    accuracy = obs.metric("accuracy")
    assert accuracy is not None and isinstance(accuracy.series, CountSeries)
    assert list(accuracy.series.canary_events) == truth.correct[CANARY]
    assert list(accuracy.series.canary_trials) == truth.labelled[CANARY]


def _share(series: HistogramSeries, side: str, edge: float) -> float:
    """Share of the side's requests at or below ``edge`` seconds, over every window with data."""
    k = series.edges.index(edge)
    rows = [c for c in (series.stable if side == STABLE else series.canary) if c is not None]
    return sum(c[k] for c in rows) / sum(c[-1] for c in rows)


def _rate(series: CountSeries, side: str) -> float:
    events = series.stable_events if side == STABLE else series.canary_events
    trials = series.stable_trials if side == STABLE else series.canary_trials
    return sum(e for e in events if e is not None) / sum(t for t in trials if t is not None)


def test_good_canary_looks_like_stable(scenario_look: Look) -> None:
    obs = of(scenario_look, "good")
    latency, errors = obs.metric("latency-p99").series, obs.metric("error-rate").series  # type: ignore[union-attr]
    assert abs(_share(latency, STABLE, 0.05) - _share(latency, CANARY, 0.05)) < 0.03  # type: ignore[arg-type]
    assert abs(_rate(errors, STABLE) - _rate(errors, CANARY)) < 0.005  # type: ignore[arg-type]
    assert all(m.reason == "" for m in obs.metrics)


def test_latency_regression_shifts_the_canary_buckets(scenario_look: Look) -> None:
    latency = of(scenario_look, "latency-regression").metric("latency-p99").series
    assert _share(latency, STABLE, 0.05) > 0.6  # type: ignore[arg-type]
    assert _share(latency, CANARY, 0.05) < 0.3  # type: ignore[arg-type]


def test_error_regression(scenario_look: Look) -> None:
    errors = of(scenario_look, "error-regression").metric("error-rate").series
    assert _rate(errors, STABLE) < 0.01  # type: ignore[arg-type]
    assert _rate(errors, CANARY) > 0.03  # type: ignore[arg-type]


def test_accuracy_regression(scenario_look: Look) -> None:
    accuracy = of(scenario_look, "accuracy-regression").metric("accuracy").series
    assert _rate(accuracy, STABLE) > 0.9  # type: ignore[arg-type]
    assert _rate(accuracy, CANARY) < 0.85  # type: ignore[arg-type]


def test_slo_breach_puts_canary_requests_over_the_bound(scenario_look: Look) -> None:
    latency = of(scenario_look, "slo-breach").metric("latency-p99").series
    assert 1 - _share(latency, STABLE, 0.25) < 0.01  # type: ignore[arg-type]  # p99 <= 250 ms holds
    assert 1 - _share(latency, CANARY, 0.25) > 0.03  # type: ignore[arg-type]  # p99 <= 250 ms is breached


def test_no_traffic_canary_is_no_data_with_the_reason(scenario_look: Look) -> None:
    obs = of(scenario_look, "no-traffic")
    assert obs.canary_requests == (None,) * 30
    assert all(n is not None and n > 0 for n in obs.stable_requests)
    for metric in obs.metrics:
        assert "canary: no " in metric.reason and "(windows 0-29)" in metric.reason


def test_counter_reset_window_is_no_data(scenario_look: Look) -> None:
    obs = of(scenario_look, "counter-reset")
    assert [i for i, n in enumerate(obs.canary_requests) if n is None] == [10]
    assert None not in obs.stable_requests
    for metric in obs.metrics:
        assert metric.reason.startswith("canary: counter reset of ") and metric.reason.endswith("(window 10)")


class ResetsLost:
    """A PromQL source whose ``resets()`` answers come back empty, as after a lost or stale answer."""

    def __init__(self, inner: PrometheusClient) -> None:
        self.inner = inner

    def vector(self, query: str, at: float) -> list[tuple[dict[str, str], float]]:
        return [] if "resets(" in query else self.inner.vector(query, at)

    def matrix(self, query: str, start: float, end: float, step: float) -> list[tuple[dict[str, str], Any]]:
        return [] if "resets(" in query else self.inner.matrix(query, start, end, step)


@pytest.mark.parametrize("name", ["good", "counter-reset"])
def test_a_lost_resets_answer_is_no_data_not_no_reset(name: str, scenario_prometheus: ScenarioPrometheus) -> None:
    """Found by the chaos soak through the Prometheus proxy (seed 0, 6 rollouts, proxy rate 0.35): a
    ``resets()`` answer lost to a stale or empty answer read as "no counter reset", so the reset
    guard passed on missing data (here the counter-reset window 10 would be read as a count)."""
    rollout = scenario_prometheus.rollout(name)
    windows = {rollout.key: scenario_prometheus.windows(name)}
    source = ResetsLost(scenario_prometheus.client())
    obs = observe(source, [rollout], windows, scenario_prometheus.at)[rollout.key]
    assert set(obs.stable_requests) == {None} and set(obs.canary_requests) == {None}
    for metric in obs.metrics:
        assert metric.series is None and "resets of " in metric.reason and " not answered" in metric.reason


def test_missing_scrapes_are_no_data(scenario_look: Look, scenario_prometheus: ScenarioPrometheus) -> None:
    obs = of(scenario_look, "missing-scrape")
    assert [i for i, n in enumerate(obs.stable_requests) if n is None] == [15, 16, 17]
    assert [i for i, n in enumerate(obs.canary_requests) if n is None] == [15, 16, 17]
    reason = obs.metric("error-rate").reason  # type: ignore[union-attr]
    if scenario_prometheus.store == "prometheus":  # fewer than two samples in those windows: no answer
        assert "stable: no istio_requests_total series (windows 15-17)" in reason
    else:  # VictoriaMetrics answers 0 inside the gap and the gap's requests after it: the check refuses both
        assert "stable: no sample of istio_requests_total in the 30s before the window's start or end " in reason
        assert "(windows 15, 17)" in reason and "no istio_requests_total series (window 16)" in reason


# --- incremental looks: settled windows are read once ------------------------------------------


def test_looks_that_keep_settled_windows_build_exactly_what_full_re_reads_build(
    scenario_prometheus: ScenarioPrometheus,
) -> None:
    """A look every minute over every window since the start, with and without the cache: bit for bit."""
    rollouts = [scenario_prometheus.rollout(name) for name in SCENARIOS]
    cache = WindowCache(settle=60.0)
    asked: list[int] = []
    for minute in range(3, 31, 3):
        at = T0 + 60 * minute
        windows = {
            r.key: tuple(w for w in scenario_prometheus.windows(r.metadata.namespace) if w.end <= at) for r in rollouts
        }
        full = observe(scenario_prometheus.client(), rollouts, windows, at)
        kept = observe(scenario_prometheus.client(), rollouts, windows, at, cache=cache)
        assert kept == full, f"minute {minute}"
        asked.append(sum(len(q.times) for q in plan(rollouts, windows, at, cache=cache).queries))
    assert cache.hits > 0
    # once a window has settled it is never asked for again: what the next look asks for does not grow
    # with the age of the rollouts. Only a window whose answer was refused is asked for again: on
    # VictoriaMetrics the two windows at the edges of the missing-scrape gap (8 points each).
    doubtful = 0 if scenario_prometheus.store == "prometheus" else 2 * 8
    assert asked[0] == min(asked) and max(asked) <= asked[0] + doubtful, asked


@pytest.mark.parametrize("max_windows", [1, 45, 100])
def test_a_look_over_its_window_bound_reads_in_rounds_exactly_what_one_round_reads(
    scenario_prometheus: ScenarioPrometheus, max_windows: int
) -> None:
    """A restart's first look over long analyses: the rollouts in rounds of at most ``max_windows``
    windows to read (one rollout alone may have more), each round one set of queries; the evidence is
    bit for bit one round's, with the cache too, and the next look, with every window kept, is one round."""
    rollouts = [scenario_prometheus.rollout(name) for name in SCENARIOS]
    at = scenario_prometheus.at
    windows = {
        r.key: tuple(w for w in scenario_prometheus.windows(r.metadata.namespace) if w.end <= at) for r in rollouts
    }
    whole_source = scenario_prometheus.client()
    whole = observe(whole_source, rollouts, windows, at)
    rounds = look_rounds(plan(rollouts, windows, at), rollouts, max_windows)
    assert len(rounds) > 1 and [r for group in rounds for r in group] == rollouts
    reads = [[len(windows[r.key]) for r in group] for group in rounds]
    assert all(sum(n) <= max_windows or len([w for w in n if w]) == 1 for n in reads), reads
    in_rounds = scenario_prometheus.client()
    assert observe(in_rounds, rollouts, windows, at, max_windows=max_windows) == whole
    assert whole_source.requests_sent < in_rounds.requests_sent <= len(rounds) * whole_source.requests_sent
    cache = WindowCache(settle=0.0)
    assert observe(scenario_prometheus.client(), rollouts, windows, at, cache=cache, max_windows=max_windows) == whole
    small = WindowCache(settle=0.0, max_windows=len(cache.entries) // 3)
    assert observe(scenario_prometheus.client(), rollouts, windows, at, cache=small, max_windows=max_windows) == whole
    assert len(small.entries) == len(cache.entries)  # a later round does not drop what an earlier one kept
    plan(rollouts, windows, at, cache=small)
    assert len(small.entries) == small.max_windows  # the next look's plan does
    kept = plan(rollouts, windows, at, cache=cache)
    assert len(look_rounds(kept, rollouts, max_windows)) == 1
    # all kept; but on VictoriaMetrics the two windows at the edges of the scrape gap, doubted, are read again
    assert not kept.queries if scenario_prometheus.store == "prometheus" else kept.queries


# --- O(metrics) requests, not O(rollouts) ------------------------------------------------------


def fleet(scenario_prometheus: ScenarioPrometheus, n: int) -> list[ModelRollout]:
    """``n`` rollouts: the scenarios first, then copies in namespaces that hold no data."""
    out = [scenario_prometheus.rollout(name) for name in list(SCENARIOS)[:n]]
    base = out[0]
    for i in range(len(out), n):
        meta = base.metadata.model_copy(update={"namespace": f"extra-{i}"})
        out.append(base.model_copy(update={"metadata": meta}))
    return out


@pytest.mark.parametrize("regular", [True, False], ids=["windows-on-a-grid", "irregular-windows"])
def test_http_requests_per_look_do_not_grow_with_rollouts(
    scenario_prometheus: ScenarioPrometheus, regular: bool
) -> None:
    sent: dict[int, int] = {}
    for n in (1, 5, 20):
        rollouts = fleet(scenario_prometheus, n)
        windows = scenario_prometheus.windows("good")
        if not regular:
            windows = (windows[3], windows[7], Window(windows[20].start + 7, windows[20].end + 7, 0.25))
        source = scenario_prometheus.client()
        server_side = scenario_prometheus.store == "prometheus"  # VictoriaMetrics' own count is not reliable
        before = scenario_prometheus.queries_served() if server_side else 0
        observations = observe(source, rollouts, {r.key: windows for r in rollouts}, scenario_prometheus.at)
        if server_side:
            assert scenario_prometheus.queries_served() - before == source.requests_sent  # no hidden retries
        assert len(observations) == n
        sent[n] = source.requests_sent
    # 4 families (requests, buckets, correct, labelled), each with its resets() query (and on
    # VictoriaMetrics its scrape-gap check)
    per_look = 4 * (3 if scenario_prometheus.store == "victoria-metrics" else 2)
    assert (
        sent == {1: per_look, 5: per_look, 20: per_look}
        if regular
        else {1: 3 * per_look, 5: 3 * per_look, 20: 3 * per_look}
    )


def test_bad_promql_is_a_query_error(scenario_prometheus: ScenarioPrometheus) -> None:
    source = scenario_prometheus.client()
    refused = "bad_data" if scenario_prometheus.store == "prometheus" else "HTTP 422"  # each store's wording
    with pytest.raises(QueryError, match=refused) as caught:
        source.vector("sum(rate(istio_requests_total[5m]", scenario_prometheus.at)
    assert not caught.value.retryable
    with pytest.raises(QueryError, match=refused):
        source.matrix("istio_requests_total{", scenario_prometheus.at - 60, scenario_prometheus.at, 15)
    if scenario_prometheus.store == "prometheus":  # VictoriaMetrics answers a scalar as a one-point vector
        with pytest.raises(QueryError, match="instant vector"):
            source.vector("1 + 1", scenario_prometheus.at)  # a scalar


def test_empty_results_and_nan_come_back_as_values(scenario_prometheus: ScenarioPrometheus) -> None:
    source = scenario_prometheus.client()
    assert source.vector('istio_requests_total{destination_version="nope"}', scenario_prometheus.at) == []
    nan = source.vector("vector(0) / 0", scenario_prometheus.at)
    if scenario_prometheus.store == "prometheus":
        ((_, value),) = nan
        assert math.isnan(value)
    else:  # VictoriaMetrics drops NaN points: no series, which the reader also takes as no data
        assert nan == []
    ((_, value),) = source.vector("vector(1) / 0", scenario_prometheus.at)
    assert value == math.inf


# --- hostile label values on a real Prometheus --------------------------------------------------

HOSTILE = ['"', '"}', '"} or vector(1) #', "\\", 'a\\"}b', "v1\n", "{}", "=~", ".*", "a|b", "(", "é版本🚀", "a b"]


def test_escaped_hostile_values_select_exactly_their_series(
    prometheus_factory: Callable[..., PrometheusServer],
) -> None:
    server = prometheus_factory()
    history = OpenMetrics()
    for i, value in enumerate([*HOSTILE, "a", "b", "v1", "other"]):
        history.add("canarist_hostile", "gauge", "canarist_hostile", {"v": value}, (1_700_000_000, float(i)))
    server.write_history(history.render())
    server.start()
    source = client(server.url)
    for value in HOSTILE:
        found = source.vector(f"canarist_hostile{selector([Matcher('v', Op.EQ, value)])}", 1_700_000_000)
        assert [labels["v"] for labels, _ in found] == [value]
        found = source.vector(f"canarist_hostile{selector([any_of('v', [value, 'other'])])}", 1_700_000_000)
        assert sorted(labels["v"] for labels, _ in found) == sorted([value, "other"])


# --- a live exporter --------------------------------------------------------------------------


def test_live_exporter_scraped_every_second(prometheus_factory: Callable[..., PrometheusServer]) -> None:
    registry = CollectorRegistry()
    names = ["reporter", "destination_service_namespace", "destination_service_name", "destination_version"]
    requests = Counter("istio_requests", "Requests.", [*names, "response_code"], registry=registry)
    durations = Histogram(
        "istio_request_duration_milliseconds", "Latency.", names, buckets=(10, 100, 1000), registry=registry
    )
    series = {v: ("destination", "live", "model", v) for v in (STABLE, CANARY)}
    for labels in series.values():  # every series exists at 0 before the first scrape
        requests.labels(*labels, "200")
        requests.labels(*labels, "503")
        durations.labels(*labels)
    port = free_port()
    http, _ = start_http_server(port, addr="127.0.0.1", registry=registry)
    try:
        job = {"job_name": "live", "scrape_interval": "1s", "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}
        server = prometheus_factory(scrape_configs=[job]).start()
        source = client(server.url)
        started = time.time()
        _wait_for(lambda: source.vector('up{job="live"}', time.time()) == [({"__name__": "up", **_target(port)}, 1.0)])
        requests.labels(*series[STABLE], "200").inc(294)
        requests.labels(*series[STABLE], "503").inc(6)
        requests.labels(*series[CANARY], "200").inc(100)
        for ms in (5, 50, 50, 500, 5000):
            durations.labels(*series[CANARY]).observe(ms)
        changed = time.time()
        query = 'timestamp(istio_requests_total{destination_version="v2", response_code="200"})'
        at = _wait_for(lambda: _latest(source, query, changed))
        assert time.time() - changed < 10, "a live scrape at 1 s should be queryable within seconds"
        rollout = scenario_rollout(SCENARIOS["good"]).model_copy(
            update={"metadata": scenario_rollout(SCENARIOS["good"]).metadata.model_copy(update={"namespace": "live"})}
        )
        window = Window(math.floor(started) - 5, at, 0.25)  # from before the first scrape to the last one
        obs = observe(source, [rollout], {rollout.key: [window]}, at)["live/model"]
        assert obs.stable_requests == (300,) and obs.canary_requests == (100,)
        assert obs.metric("error-rate").series == CountSeries((6,), (300,), (0,), (100,))  # type: ignore[union-attr]
        latency = obs.metric("latency-p99").series  # type: ignore[union-attr]
        assert isinstance(latency, HistogramSeries)
        assert latency.edges == (0.01, 0.1, 1.0, math.inf)
        assert latency.canary == ((1, 3, 4, 5),)
    finally:
        http.shutdown()
        http.server_close()


def _target(port: int) -> dict[str, str]:
    return {"instance": f"127.0.0.1:{port}", "job": "live"}


def _latest(source: PrometheusClient, query: str, after: float) -> float | None:
    """The time of the newest sample, once a scrape after ``after`` has it."""
    found = source.vector(query, time.time())
    if found and found[0][1] > after:
        return found[0][1]
    return None


def _wait_for(probe: Callable[[], Any], timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if got := probe():
            return got
        time.sleep(0.1)
    pytest.fail(f"timed out after {timeout}s waiting for Prometheus")


# --- faults -----------------------------------------------------------------------------------


@dataclass
class FakePrometheus:
    """A tiny HTTP server that answers every request the same way (after ``delay`` seconds)."""

    status: int
    body: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    tls: Path | None = None  # a PEM file with the certificate and its key
    hits: int = 0

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> FakePrometheus:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                fake.hits += 1
                time.sleep(fake.delay)
                payload = fake.body.encode()
                self.send_response(fake.status)
                for k, v in {"Content-Type": "application/json", **fake.headers}.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.handle_error = lambda *args: None  # type: ignore[method-assign]  # a client that gave up
        if self.tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(self.tls)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def __exit__(self, *args: Any) -> None:
        self.server.shutdown()
        self.server.server_close()


def error_body(kind: str, error: str) -> str:
    return json.dumps({"status": "error", "errorType": kind, "error": error})


def test_prometheus_stopped_mid_run_is_unavailable(prometheus_server: PrometheusServer) -> None:
    source = client(prometheus_server.url)
    assert source.vector("vector(1)", time.time()) == [({}, 1.0)]
    prometheus_server.stop()
    with pytest.raises(PrometheusUnavailable, match="connection failed") as caught:
        source.vector("vector(1)", time.time())
    assert caught.value.retryable and caught.value.retry_after == 15.0


def test_http_500_is_unavailable_without_retries() -> None:
    with FakePrometheus(500, error_body("internal", "boom")) as fake:
        with pytest.raises(PrometheusUnavailable, match="HTTP 500 internal: boom"):
            client(fake.url).vector("up", 1000.0)
        assert fake.hits == 1


def test_http_503_and_429_carry_the_servers_retry_delay() -> None:
    with FakePrometheus(503, error_body("unavailable", "starting"), {"Retry-After": "42"}) as fake:
        with pytest.raises(PrometheusUnavailable) as caught:
            client(fake.url).vector("up", 1000.0)
        assert caught.value.retry_after == 42.0
    with FakePrometheus(429, "slow down", {"Retry-After": "7"}) as fake:
        with pytest.raises(PrometheusUnavailable) as caught:
            client(fake.url).matrix("up", 1000.0, 1060.0, 15.0)
        assert caught.value.retry_after == 7.0


def test_a_slow_answer_is_unavailable_with_timeout_in_the_reason() -> None:
    with FakePrometheus(200, json.dumps({"status": "success", "data": {"result": []}}), delay=2.0) as fake:
        began = time.monotonic()
        with pytest.raises(PrometheusUnavailable, match=r"timed out after 0\.3s"):
            client(fake.url, timeout=0.3).vector("up", 1000.0)
        assert time.monotonic() - began < 1.5


def test_server_side_query_timeout_is_unavailable() -> None:
    body = error_body("timeout", "query timed out in expression evaluation")
    with FakePrometheus(503, body) as fake, pytest.raises(PrometheusUnavailable, match="query timed out on the server"):
        client(fake.url).vector("up", 1000.0)


def test_nothing_listening_is_unavailable() -> None:
    with pytest.raises(PrometheusUnavailable, match="connection failed"):
        client(f"http://127.0.0.1:{free_port()}").vector("up", 1000.0)


@pytest.mark.parametrize(
    ("status", "body", "error", "match"),
    [
        (400, error_body("bad_data", "parse error"), QueryError, "bad_data: parse error"),
        (422, error_body("execution", "many-to-many matching"), QueryError, "execution"),
        (401, "Unauthorized", PrometheusConfigError, "credentials"),
        (403, "Forbidden", PrometheusConfigError, "credentials"),
        (404, "404 page not found", PrometheusConfigError, "unexpected answer"),
        (200, "<html>a login page</html>", PrometheusConfigError, "did not answer as the Prometheus HTTP API"),
        (200, json.dumps({"status": "success", "data": {}}), PrometheusConfigError, "Prometheus HTTP API"),
        (200, json.dumps({"status": "success", "data": []}), PrometheusConfigError, "Prometheus HTTP API"),
        (200, json.dumps(["data"]), PrometheusConfigError, "Prometheus HTTP API"),
        (200, "[" * 100_000, PrometheusConfigError, "Prometheus HTTP API"),  # nested past the parser's depth
    ],
)
def test_configuration_errors_are_not_retried(status: int, body: str, error: type[Exception], match: str) -> None:
    with FakePrometheus(status, body) as fake:
        with pytest.raises(error, match=match) as caught:
            client(fake.url).vector("up", 1000.0)
        assert not caught.value.retryable  # type: ignore[attr-defined]


def test_credentials_reach_the_wire() -> None:
    seen: list[dict[str, str]] = []
    answer = json.dumps({"status": "success", "data": {"resultType": "vector", "result": []}})
    with FakePrometheus(200, answer) as fake:
        original = fake.server.RequestHandlerClass.do_GET  # type: ignore[attr-defined]

        def spy(handler: BaseHTTPRequestHandler) -> None:
            seen.append(dict(handler.headers))
            original(handler)

        fake.server.RequestHandlerClass.do_GET = spy  # type: ignore[attr-defined]
        client(fake.url, bearer_token="s3cret").vector("up", 1000.0)
        client(fake.url, basic_auth=("user", "pw")).vector("up", 1000.0)
    assert seen[0]["Authorization"] == "Bearer s3cret"
    assert seen[1]["Authorization"] == "Basic dXNlcjpwdw=="
    assert "s3cret" not in repr(PrometheusSettings("http://p", bearer_token="s3cret"))
    assert "pw" not in repr(PrometheusSettings("http://p", basic_auth=("user", "pw")))
    with pytest.raises(PrometheusConfigError):
        PrometheusSettings("ftp://prometheus")
    with pytest.raises(PrometheusConfigError):
        PrometheusSettings("http://p", bearer_token="a", basic_auth=("u", "p"))


# A self-signed certificate for IP 127.0.0.1, valid 2000-2100; test use only.
TEST_CERT = """-----BEGIN CERTIFICATE-----
MIIBVzCB/6ADAgECAgEBMAoGCCqGSM49BAMCMBQxEjAQBgNVBAMMCTEyNy4wLjAu
MTAgFw0wMDAxMDEwMDAwMDBaGA8yMTAwMDEwMTAwMDAwMFowFDESMBAGA1UEAwwJ
MTI3LjAuMC4xMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEs+/U/v3t5otG/eyn
hBgXClCEcI0Yfq+uu8ENGNyJAvL58z33DTI0+asekRw6T/8QbP2u1I1GhhHwrjSZ
LLFSk6NAMD4wDwYDVR0RBAgwBocEfwAAATAMBgNVHRMEBTADAQH/MB0GA1UdDgQW
BBSLRdSrAlsBvy2shJRSWSDgptffwjAKBggqhkjOPQQDAgNHADBEAiBov9nITrUh
673QZAoTiDEi0zfqvpFPKDp2I5Ysz8w5WgIgM6tL4M7w/KZC8Zh8GnsQA1m6FHKU
GGImJCABUoFHifo=
-----END CERTIFICATE-----
"""
TEST_KEY = """-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgdWWkSSeJ7OP9K/nx
Vkub9Z8cJ1VD8x8a1vO1vKFVyNyhRANCAASz79T+/e3mi0b97KeEGBcKUIRwjRh+
r667wQ0Y3IkC8vnzPfcNMjT5qx6RHDpP/xBs/a7UjUaGEfCuNJkssVKT
-----END PRIVATE KEY-----
"""


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_tls_options(tmp_path: Path) -> None:
    cert, both = tmp_path / "ca.pem", tmp_path / "server.pem"
    cert.write_text(TEST_CERT)
    both.write_text(TEST_CERT + TEST_KEY)
    answer = json.dumps({"status": "success", "data": {"resultType": "vector", "result": []}})
    with FakePrometheus(200, answer, tls=both) as fake:
        assert fake.url.startswith("https://")
        with pytest.raises(PrometheusConfigError, match="TLS failure") as caught:
            client(fake.url).vector("up", 1000.0)  # not signed by a CA the system trusts
        assert not caught.value.retryable
        assert client(fake.url, ca_file=str(cert)).vector("up", 1000.0) == []
        assert client(fake.url, insecure=True).vector("up", 1000.0) == []


def test_observe_or_explain_turns_an_outage_into_no_data(prometheus_server: PrometheusServer) -> None:
    rollout = scenario_rollout(SCENARIOS["good"])
    windows = {rollout.key: [Window(1000, 1060, 0.25)]}
    prometheus_server.stop()
    observations, error = observe_or_explain(client(prometheus_server.url), [rollout], windows, 1060)
    assert isinstance(error, PrometheusUnavailable)
    obs = observations[rollout.key]
    assert obs.stable_requests == obs.canary_requests == (None,)
    assert all(m.series is None and "connection failed" in m.reason and "(temporary)" in m.reason for m in obs.metrics)


# --- bounds: a whole answer within the timeout, a look within its deadline, answers within a size ---

#: What each hostile server must come to (with a 1 s timeout and the default size cap).
HOSTILE_OUTCOME: dict[str, type[PrometheusError]] = {
    "trickle-body": PrometheusTimeout,
    "trickle-headers": PrometheusTimeout,
    "trickle-chunked": PrometheusTimeout,
    "silent": PrometheusTimeout,
    "slow-endless-body": PrometheusTimeout,
    "endless-body": AnswerTooLarge,
    "oversized": AnswerTooLarge,
}


@pytest.mark.parametrize("method", ["vector", "matrix"])
@pytest.mark.parametrize("name", sorted(HOSTILE_OUTCOME))
def test_a_hostile_server_cannot_hold_a_query_past_its_timeout(name: str, method: str) -> None:
    """The timeout bounds connect + headers + body together: no server behaviour makes a query last longer."""
    with HostileServer(BEHAVIOURS[name]) as server:
        source = client(server.url, timeout=1.0)
        began = time.monotonic()
        with pytest.raises(PrometheusError) as caught:
            if method == "vector":
                source.vector("up", 1000.0)
            else:
                source.matrix("up", 1000.0, 1060.0, 15.0)
        elapsed = time.monotonic() - began
    assert type(caught.value) is HOSTILE_OUTCOME[name], caught.value.reason
    assert elapsed < 2.5, f"{name}: {elapsed:.1f}s"
    if isinstance(caught.value, PrometheusTimeout):
        assert caught.value.retryable and caught.value.scope == "query" and caught.value.seconds == 1.0
        assert "timed out after 1s" in caught.value.reason
    else:
        assert not caught.value.retryable and "byte limit" in caught.value.reason


def _compressed(encoding: str, data: bytes) -> bytes:
    if encoding == "gzip":
        return gzip.compress(data)
    return zlib.compress(data)  # HTTP's "deflate" is the zlib format


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_the_size_cap_counts_the_answer_decompressed(encoding: str) -> None:
    """A small compressed body that inflates past the cap is refused; under a larger cap it is read."""
    answer = json.dumps({"status": "success", "data": {"resultType": "vector", "result": []}, "pad": " " * 200_000})
    body = _compressed(encoding, answer.encode())
    assert len(body) < 65_536 < len(answer)

    def compressed(conn: socket.socket, stop: threading.Event) -> None:
        head = f"Content-Encoding: {encoding}\r\nContent-Length: {len(body)}\r\n\r\n"
        conn.sendall(HEADERS + head.encode() + body)
        stop.wait()

    with HostileServer(compressed) as server:
        with pytest.raises(AnswerTooLarge, match="over the 65,536 byte limit"):
            client(server.url, max_answer_bytes=65_536).vector("up", 1000.0)
        assert client(server.url, max_answer_bytes=300_000).vector("up", 1000.0) == []


class Spy(FakePrometheus):
    """A fake Prometheus that keeps each request's path and query parameters."""

    def __enter__(self) -> Spy:
        super().__enter__()
        self.seen: list[tuple[str, dict[str, list[str]]]] = []
        handler = self.server.RequestHandlerClass
        original = handler.do_GET  # type: ignore[attr-defined]

        def spy(request: BaseHTTPRequestHandler) -> None:
            url = urllib.parse.urlsplit(request.path)
            self.seen.append((url.path, urllib.parse.parse_qs(url.query)))
            original(request)

        handler.do_GET = spy  # type: ignore[attr-defined]
        return self


@pytest.mark.parametrize(
    ("start", "end", "step", "wire"),
    [
        (1000.0, 1060.0, 15.0, ("1000.000", "1060.000", "15.000")),
        (1000.25, 1060.75, 0.5, ("1000.250", "1060.750", "0.500")),  # the library alone would round to seconds
        (1_700_000_000.4, 1_700_000_600.6, 0.001, ("1700000000.400", "1700000600.600", "0.001")),
        (59.999, 60.001, 0.002, ("59.999", "60.001", "0.002")),
    ],
)
def test_the_times_asked_for_are_the_times_sent(
    start: float, end: float, step: float, wire: tuple[str, str, str]
) -> None:
    """Exact to the millisecond: Prometheus evaluates the grid canarist's windows lie on."""
    answer = json.dumps({"status": "success", "data": {"resultType": "matrix", "result": []}})
    with Spy(200, answer) as spy:
        assert client(spy.url, timeout=3.0).matrix("up", start, end, step) == []
        assert client(spy.url, timeout=3.0).vector("up", start) == []
    (range_path, range_params), (path, params) = spy.seen
    assert range_path == "/api/v1/query_range" and path == "/api/v1/query"
    assert range_params == {"query": ["up"], "start": [wire[0]], "end": [wire[1]], "step": [wire[2]], "timeout": ["3s"]}
    assert params == {"query": ["up"], "time": [wire[0]], "timeout": ["3s"]}


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_is_not_followed(status: int) -> None:
    """One query is one request; the credentials go to the configured URL and nowhere else."""
    answer = json.dumps({"status": "success", "data": {"resultType": "vector", "result": []}})
    with Spy(200, answer) as elsewhere, Spy(status, "", {"Location": f"{elsewhere.url}/api/v1/query"}) as fake:
        with pytest.raises(PrometheusConfigError, match=f"unexpected answer .*HTTP {status}"):
            client(fake.url, bearer_token="s3cret").vector("up", 1000.0)
        assert fake.hits == 1 and elsewhere.hits == 0


def test_a_finished_query_leaves_no_deadline_behind() -> None:
    """Quick answers on a kept-alive connection: no earlier query's deadline cuts a later one short."""
    answer = json.dumps({"status": "success", "data": {"resultType": "vector", "result": []}})
    with FakePrometheus(200, answer) as fake:
        source = client(fake.url, timeout=0.2)
        for _ in range(4):
            assert source.vector("up", 1000.0) == []
            time.sleep(0.3)  # past the previous query's deadline
        assert source.requests_sent == 4


def test_the_answer_size_cap_is_a_setting() -> None:
    with (
        HostileServer(BEHAVIOURS["endless-body"]) as server,
        pytest.raises(AnswerTooLarge, match="over the 65,536 byte limit") as caught,
    ):
        client(server.url, max_answer_bytes=65_536).vector("up", 1000.0)
    assert caught.value.limit == 65_536
    big = json.dumps({"status": "success", "data": {"resultType": "vector", "result": []}, "pad": "x" * 70_000})
    with FakePrometheus(200, big) as fake:  # declared length over the cap: refused before the body is read
        with pytest.raises(AnswerTooLarge):
            client(fake.url, max_answer_bytes=65_536).vector("up", 1000.0)
        assert client(fake.url).vector("up", 1000.0) == []


def test_an_oversized_answer_is_no_data_said_clearly() -> None:
    rollout = scenario_rollout(SCENARIOS["good"])
    windows = {rollout.key: [Window(1000, 1060, 0.25)]}
    with HostileServer(BEHAVIOURS["oversized"]) as server:
        observations, error = observe_or_explain(client(server.url), [rollout], windows, 1060)
    assert isinstance(error, AnswerTooLarge)
    for metric in observations[rollout.key].metrics:
        assert metric.series is None
        assert "byte limit" in metric.reason and "(answer too large)" in metric.reason


@pytest.mark.parametrize("look_timeout", [0.5, 1.2])
def test_a_look_has_a_total_deadline(look_timeout: float) -> None:
    """Each answer is quick enough for the query timeout, yet the look as a whole stops at its deadline."""
    answer = json.dumps({"status": "success", "data": {"resultType": "matrix", "result": []}})
    rollout = scenario_rollout(SCENARIOS["good"])
    windows = {rollout.key: [Window(1000, 1060, 0.25), Window(1060, 1120, 0.25)]}
    with FakePrometheus(200, answer, delay=0.3) as fake:
        source = client(fake.url, timeout=1.0, look_timeout=look_timeout)
        began = time.monotonic()
        with pytest.raises(PrometheusTimeout) as caught:
            observe(source, [rollout], windows, 1120)
        elapsed = time.monotonic() - began
    assert caught.value.scope == "look" and caught.value.retryable
    assert elapsed < look_timeout + 0.5
    assert source.requests_sent <= look_timeout / 0.3 + 1
    # an explicit look_timeout (e.g. what is left of a tick) overrides the setting
    with FakePrometheus(200, answer, delay=0.3) as fake:
        source = client(fake.url, timeout=1.0)
        began = time.monotonic()
        with pytest.raises(PrometheusTimeout, match="look"):
            observe(source, [rollout], windows, 1120, look_timeout=look_timeout)
        assert time.monotonic() - began < look_timeout + 0.5


def test_a_look_deadline_bounds_any_source() -> None:
    """fetch() checks the deadline between queries, whatever the source (no query starts after it)."""
    source = FakeSource()
    with pytest.raises(PrometheusTimeout) as caught:
        fetch(source, [Query("a", (60.0,)), Query("b", (60.0,))], deadline=time.monotonic() - 1)
    assert caught.value.scope == "look" and source.calls == []


@pytest.mark.parametrize("field_name", ["timeout", "look_timeout"])
@pytest.mark.parametrize("value", [0, -1, math.inf, math.nan, True, "5"])
def test_bad_deadlines_are_refused(field_name: str, value: Any) -> None:
    with pytest.raises(PrometheusConfigError, match=field_name):
        PrometheusSettings("http://p", **{field_name: value})


@pytest.mark.parametrize("value", [0, 1023, 2.5, True])
def test_bad_answer_caps_are_refused(value: Any) -> None:
    with pytest.raises(PrometheusConfigError, match="max_answer_bytes"):
        PrometheusSettings("http://p", max_answer_bytes=value)


# --- fetch: range queries on a grid, instant queries otherwise -----------------------------------


class FakeSource:
    """A PromQL source that records its calls and answers each time with the time as the value."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, ...]] = []

    def vector(self, query: str, at: float) -> list[tuple[dict[str, str], float]]:
        self.calls.append(("vector", query, str(at)))
        return [({"t": "x"}, at)]

    def matrix(self, query: str, start: float, end: float, step: float) -> list[tuple[dict[str, str], Any]]:
        self.calls.append(("matrix", query, f"{start}:{end}:{step}"))
        points, t = [], start
        while t <= end + 1e-9:
            points.append((t, t))
            t += step
        return [({"t": "x"}, points)]


@pytest.mark.parametrize(
    ("times", "step"),
    [([1000], None), ([1000, 2000], 1000), ([0, 60_000, 180_000], 60_000), ([0, 1, 10_000], None), ([0, 7, 21], 7)],
)
def test_grid_step(times: list[int], step: int | None) -> None:
    assert grid_step(times) == step


def test_fetch_uses_one_range_query_per_grid() -> None:
    source = FakeSource()
    results: Results = fetch(
        source, [Query("a", (60.0, 120.0, 240.0)), Query("b", (60.0,)), Query("c", (0.0, 0.001, 9.0))]
    )
    assert [c[0] for c in source.calls] == ["matrix", "vector", "vector", "vector", "vector"]
    assert results[("a", 240_000)] == [({"t": "x"}, 240.0)]
    assert results[("c", 1)] == [({"t": "x"}, 0.001)]
    assert ("a", 180_000) not in results  # a grid point nobody asked for


def test_observe_stops_at_the_first_failure() -> None:
    class Down(FakeSource):
        def matrix(self, query: str, start: float, end: float, step: float) -> list[tuple[dict[str, str], Any]]:
            self.calls.append(("matrix", query, ""))
            raise PrometheusUnavailable("down", retry_after=5)

    source = Down()
    rollout = scenario_rollout(SCENARIOS["good"])
    with pytest.raises(PrometheusUnavailable):
        observe(source, [rollout], {rollout.key: [Window(0, 60, 0.1), Window(60, 120, 0.1)]}, 120)
    assert len(source.calls) == 1


@pytest.mark.parametrize(
    "error",
    ["\x1b[2J\x1b]0;owned\x07\nFAKE LOG LINE", "\u202eevil\u202c" + "\u4e00" * 200_000, "ok\r\n\x00\x85"],
    ids=["escapes", "bidi-and-huge", "controls"],
)
def test_an_error_answer_reaches_reasons_printable_and_bounded(error: str) -> None:
    """Prometheus' error text flows into reasons, Events and logs: no control character, no escape, bounded."""
    with FakePrometheus(503, error_body("unavailable", error)) as fake, pytest.raises(PrometheusUnavailable) as caught:
        client(fake.url).vector("up", 1_700_000_000)
    reason = str(caught.value)
    assert len(reason) < 1200
    assert not any(ch in reason for ch in "\x1b\x07\n\r\x00\x85\u202e\u202c"), repr(reason[:200])
