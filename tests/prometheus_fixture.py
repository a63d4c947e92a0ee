"""A real Prometheus for tests, and deterministic scenario histories to load into it.

Fixtures (register with ``pytest_plugins = ["tests.prometheus_fixture"]`` or import them):

* ``prometheus_factory``: builds :class:`PrometheusServer` objects in ``tmp_path`` and stops them
  all afterwards.
* ``prometheus_server``: one started server with an empty TSDB and no scrape jobs.
* ``scenario_prometheus`` (module scope): one server holding every scenario of :data:`SCENARIOS`,
  each in its own namespace, with the ground truth per window; parametrised over the two tested
  stores, Prometheus and VictoriaMetrics (Debian's ``victoria-metrics``, histories imported through
  its API), so every test that reads it runs against both.

The server is Debian's ``/usr/bin/prometheus`` (2.42) run in the foreground on a free loopback port
with its own config and TSDB directory, stopped by PID. A missing binary FAILS the test: nothing
is skipped for a missing Prometheus. Histories are written with ``promtool tsdb
create-blocks-from openmetrics`` before the start: each series at 15 s scrapes over 30 minutes from
:data:`T0`, with windows of 60 s whose ends fall on scrapes, so that Prometheus 2.x's closed range
selectors see a sample at both edges and ``increase()`` is exact (no extrapolation).
"""

from __future__ import annotations

import os
import re
import subprocess
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from controller.api.load import load
from controller.api.model import ModelRollout
from controller.edges.prometheus import PrometheusClient, PrometheusSettings
from controller.metrics.samples import Window
from controller.sandbox.demo import processes
from controller.sandbox.demo.processes import PartMissingError, Prometheus, StartError, Supervisor, VictoriaMetrics

PROMTOOL = os.environ.get("CANARIST_PROMTOOL", "/usr/bin/promtool")

T0 = 1_700_000_040  # a multiple of 60: windows end on whole minutes
SCRAPE = 15
DURATION = 30 * 60
WINDOW = 60
STEPS = DURATION // SCRAPE
ISTIO_EDGES_MS = (0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000, 600000)
LE = (*(f"{e:g}" for e in ISTIO_EDGES_MS), "+Inf")
SERVICE = "model"
HISTOGRAM = "istio_request_duration_milliseconds"
VERSIONS = ("v1", "v2")  # stable, canary
PODS = 2


def require(binary: str) -> str:
    """The binary, or the test FAILS saying how to install it (nothing is skipped)."""
    try:
        return processes.require(binary, "prometheus")
    except PartMissingError as exc:
        pytest.fail(str(exc), pytrace=False)


# --- the server -------------------------------------------------------------------------------


class PrometheusServer(Prometheus):
    """The demo's :class:`~controller.sandbox.demo.processes.Prometheus` (15 s scrapes), plus backfilled histories.

    A missing binary or a server that never gets ready FAILS the test (nothing is skipped).
    """

    def __init__(self, workdir: Path, *, scrape_configs: list[dict[str, Any]] | None = None) -> None:
        super().__init__(workdir, scrape_configs=scrape_configs or [], scrape_interval="15s")
        self.tsdb = workdir / "tsdb"
        self.tsdb.mkdir(parents=True, exist_ok=True)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def write_history(self, openmetrics: str, name: str = "history") -> None:
        """Backfill ``openmetrics`` (must end with ``# EOF``) into the TSDB; before :meth:`start`."""
        if not openmetrics.endswith("# EOF\n"):
            raise ValueError("an OpenMetrics history must end with '# EOF'")
        source = self.workdir / f"{name}.om"
        source.write_text(openmetrics)
        done = subprocess.run(
            [require(PROMTOOL), "tsdb", "create-blocks-from", "openmetrics", str(source), str(self.tsdb)],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        if done.returncode != 0:
            pytest.fail(f"promtool could not write the history: {done.stderr.strip()[-2000:]}", pytrace=False)

    def start(
        self, supervisor: Supervisor | None = None, timeout: float = 30.0, *, port: int | None = None
    ) -> PrometheusServer:
        try:
            super().start(supervisor, timeout, port=port)
        except (PartMissingError, StartError) as exc:
            pytest.fail(str(exc), pytrace=False)
        return self


@pytest.fixture
def prometheus_factory(tmp_path: Path) -> Iterator[Callable[..., PrometheusServer]]:
    """Make (not start) servers in their own directories; every one is stopped at teardown."""
    servers: list[PrometheusServer] = []

    def make(*, scrape_configs: list[dict[str, Any]] | None = None) -> PrometheusServer:
        server = PrometheusServer(tmp_path / f"prometheus-{len(servers)}", scrape_configs=scrape_configs)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def prometheus_server(prometheus_factory: Callable[..., PrometheusServer]) -> PrometheusServer:
    """A started Prometheus with an empty TSDB and no scrape jobs."""
    server: PrometheusServer = prometheus_factory().start()
    return server


# --- OpenMetrics histories --------------------------------------------------------------------


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


@dataclass
class OpenMetrics:
    """Collects samples and renders them family by family, each series in time order."""

    families: dict[str, tuple[str, dict[tuple[str, tuple[tuple[str, str], ...]], list[tuple[float, float]]]]] = field(
        default_factory=dict
    )

    def add(self, family: str, kind: str, sample: str, labels: dict[str, str], point: tuple[float, float]) -> None:
        """One sample (time in seconds, value) of the series ``sample{labels}`` in ``family``."""
        _, series = self.families.setdefault(family, (kind, {}))
        series.setdefault((sample, tuple(sorted(labels.items()))), []).append(point)

    def render_text(self) -> str:
        """Prometheus' text format with millisecond timestamps, as VictoriaMetrics imports it."""
        lines: list[str] = []
        for _, series in self.families.values():
            for (sample, labels), points in series.items():
                text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
                lines.extend(f"{sample}{{{text}}} {v:.17g} {round(t * 1000)}" for t, v in sorted(points))
        return "\n".join(lines) + "\n"

    def render(self) -> str:
        lines: list[str] = []
        for family, (kind, series) in self.families.items():
            lines.append(f"# TYPE {family} {kind}")
            for (sample, labels), points in series.items():
                text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
                lines.extend(f"{sample}{{{text}}} {v:.17g} {t}" for t, v in sorted(points))
        return "\n".join(lines) + "\n# EOF\n"


# --- scenarios --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    """Two versions of one service; each field is what differs from a healthy canary."""

    name: str
    seed: int
    share: float = 0.25  # canary share of the requests
    rate: float = 20.0  # requests per second, both versions together
    error_rate: tuple[float, float] = (0.005, 0.005)
    median_ms: tuple[float, float] = (40.0, 40.0)
    slow_share: tuple[float, float] = (0.0, 0.0)  # share of requests taking ~1.5 s (an SLO breach)
    accuracy: tuple[float, float] = (0.92, 0.92)
    reset_after_step: int | None = None  # the canary's first pod restarts after this scrape
    gap_steps: tuple[int, int] | None = None  # scrapes [a, b) missing for every series

    @property
    def namespace(self) -> str:
        return self.name


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("good", seed=1),
        Scenario("latency-regression", seed=2, median_ms=(40.0, 90.0)),
        Scenario("error-regression", seed=3, error_rate=(0.005, 0.05)),
        Scenario("accuracy-regression", seed=4, accuracy=(0.92, 0.80)),
        Scenario("slo-breach", seed=5, slow_share=(0.0, 0.05)),
        Scenario("no-traffic", seed=6, share=0.0),
        Scenario("counter-reset", seed=7, reset_after_step=41),  # restart between 615 s and 630 s: window 10
        Scenario("missing-scrape", seed=8, gap_steps=(61, 72)),  # no scrapes in (900 s, 1080 s): windows 15-17
    )
}


@dataclass
class Truth:
    """Per version (stable, canary) and window: what the history holds, None where it must be no data."""

    requests: dict[str, list[int | None]]
    errors: dict[str, list[int | None]]
    buckets: dict[str, list[tuple[int, ...] | None]]  # cumulative at LE
    correct: dict[str, list[int | None]]
    labelled: dict[str, list[int | None]]


def windows(share: float) -> tuple[Window, ...]:
    """The scenario windows: 60 s each, ending on scrapes, over the whole history."""
    return tuple(Window(T0 + i * WINDOW, T0 + (i + 1) * WINDOW, share) for i in range(DURATION // WINDOW))


def scenario_policy(scenario: Scenario) -> dict[str, Any]:
    """A ModelRollout (as plain data) that watches the scenario's service."""
    ratio = {
        "success": "model_predictions_correct_total",
        "total": "model_predictions_labelled_total",
        "versionLabel": "version",
        "matchLabels": {"app": SERVICE},  # and namespace="<scenario>", from the rollout's namespace
    }
    return {
        "apiVersion": "canarist.io/v1alpha1",
        "kind": "ModelRollout",
        "metadata": {"name": SERVICE, "namespace": scenario.namespace},
        "spec": {
            "service": {"name": SERVICE, "port": 8080},
            "stable": {"name": VERSIONS[0], "labels": {"app": SERVICE, "version": VERSIONS[0]}},
            "canary": {"name": VERSIONS[1], "labels": {"app": SERVICE, "version": VERSIONS[1]}},
            "strategy": {"steps": [25, 50], "interval": "1m", "minRequests": 100},
            "analysis": {
                "metrics": [
                    {"name": "latency-p99", "kind": "IstioLatency", "quantile": 0.99, "slo": {"max": "250ms"}},
                    {"name": "error-rate", "kind": "IstioErrorRate", "slo": {"max": "2%"}},
                    {"name": "accuracy", "kind": "CustomRatio", "ratio": ratio, "margin": {"absolute": "2%"}},
                ]
            },
        },
    }


def scenario_rollout(scenario: Scenario) -> ModelRollout:
    (rollout,) = load(yaml.safe_dump(scenario_policy(scenario)), f"{scenario.name}.yaml")
    return rollout


def generate(scenario: Scenario, out: OpenMetrics) -> Truth:
    """Write the scenario's Istio and accuracy series into ``out``; return the truth per window."""
    rng = np.random.default_rng(scenario.seed)
    n_windows = DURATION // WINDOW

    def zeros() -> dict[str, list[int | None]]:
        return {v: [0] * n_windows for v in VERSIONS}

    buckets: dict[str, list[tuple[int, ...] | None]] = {v: [(0,) * len(LE)] * n_windows for v in VERSIONS}
    truth = Truth(zeros(), zeros(), buckets, zeros(), zeros())
    for side, version in enumerate(VERSIONS):
        share = scenario.share if side == 1 else 1.0 - scenario.share
        if share == 0.0:  # Istio creates a series on the first request: a version without traffic has none
            for column in (truth.requests, truth.errors, truth.correct, truth.labelled):
                column[version] = [None] * n_windows
            truth.buckets[version] = [None] * n_windows
            continue
        for pod in range(PODS):
            restart = scenario.reset_after_step if side == 1 and pod == 0 else None
            _pod_history(scenario, rng, out, truth, (side, version, pod, share, restart))
        _no_data_windows(scenario, truth, version if side == 1 else None)
    return truth


def _pod_history(scenario: Scenario, rng: np.random.Generator, out: OpenMetrics, truth: Truth, who: Any) -> None:
    """One pod's counters, scraped every 15 s from T0 (all series exist from the start, at 0)."""
    side, version, pod_index, share, restart = who
    pod = f"{SERVICE}-{version}-{pod_index}"
    istio = {
        "reporter": "destination",
        "destination_service_namespace": scenario.namespace,
        "destination_service_name": SERVICE,
        "destination_version": version,
        "destination_workload": f"{SERVICE}-{version}",
        "pod": pod,
    }
    app = {"namespace": scenario.namespace, "app": SERVICE, "pod": pod, "version": version}
    edges = np.array(ISTIO_EDGES_MS)
    codes = {"200": 0, "500": 0, "503": 0}
    cumulative_total = np.zeros(len(LE), dtype=np.int64)
    correct_total = labelled_total = 0
    for step in range(STEPS + 1):
        t = T0 + step * SCRAPE
        if step > 0:
            if restart == step - 1:  # the container restarted: every counter starts again from 0
                codes = dict.fromkeys(codes, 0)
                cumulative_total = np.zeros(len(LE), dtype=np.int64)
                correct_total = labelled_total = 0
            n = int(rng.poisson(scenario.rate * SCRAPE * share / PODS))
            errors = int(rng.binomial(n, scenario.error_rate[side]))
            e500 = int(rng.binomial(errors, 0.5))
            latency = rng.lognormal(np.log(scenario.median_ms[side]), 0.5, n)
            slow = rng.random(n) < scenario.slow_share[side]
            latency[slow] = rng.uniform(1200.0, 1800.0, int(slow.sum()))
            cumulative = np.append((latency[:, None] <= edges[None, :]).sum(axis=0), n)
            labelled = int(rng.binomial(n, 0.5))
            correct = int(rng.binomial(labelled, scenario.accuracy[side]))
            codes["200"] += n - errors
            codes["500"] += e500
            codes["503"] += errors - e500
            cumulative_total = cumulative_total + cumulative
            correct_total += correct
            labelled_total += labelled
            _count(truth, version, (step - 1) * SCRAPE // WINDOW, n, errors, cumulative, correct, labelled)
        if scenario.gap_steps and scenario.gap_steps[0] <= step < scenario.gap_steps[1]:
            continue  # the scrape failed: no sample at all
        for code, value in codes.items():
            out.add("istio_requests", "counter", "istio_requests_total", {**istio, "response_code": code}, (t, value))
        for le, count in zip(LE, cumulative_total, strict=True):
            labels = {**istio, "le": le}
            out.add(HISTOGRAM, "histogram", f"{HISTOGRAM}_bucket", labels, (t, int(count)))
        out.add("model_predictions_correct", "counter", "model_predictions_correct_total", app, (t, correct_total))
        out.add("model_predictions_labelled", "counter", "model_predictions_labelled_total", app, (t, labelled_total))


def _count(truth: Truth, version: str, window: int, *values: Any) -> None:
    n, errors, cumulative, correct, labelled = values
    for column, value in (
        (truth.requests, n),
        (truth.errors, errors),
        (truth.correct, correct),
        (truth.labelled, labelled),
    ):
        column[version][window] = (column[version][window] or 0) + int(value)
    old = truth.buckets[version][window] or (0,) * len(LE)
    truth.buckets[version][window] = tuple(int(a + b) for a, b in zip(old, cumulative, strict=True))


def _no_data_windows(scenario: Scenario, truth: Truth, canary: str | None) -> None:
    """Blank the windows that must read as no data: the reset window (canary), the gap (both)."""
    blank: list[tuple[str, int]] = []
    if scenario.reset_after_step is not None and canary is not None:
        blank.append((canary, scenario.reset_after_step * SCRAPE // WINDOW))
    if scenario.gap_steps is not None:
        first, stop = scenario.gap_steps
        # a window needs a sample at both ends; ends at multiples of WINDOW
        for w in range(DURATION // WINDOW):
            start, end = w * WINDOW // SCRAPE, (w + 1) * WINDOW // SCRAPE
            if first <= start < stop or first <= end < stop:
                blank.extend((v, w) for v in VERSIONS)
    for version, w in blank:
        for column in (truth.requests, truth.errors, truth.correct, truth.labelled):
            column[version][w] = None
        truth.buckets[version][w] = None


def write_scenarios(server: PrometheusServer, names: tuple[str, ...] = tuple(SCENARIOS)) -> dict[str, Truth]:
    """Backfill the named scenarios into one history for ``server``; the truth per scenario."""
    out = OpenMetrics()
    truths = {name: generate(SCENARIOS[name], out) for name in names}
    server.write_history(out.render(), "scenarios")
    return truths


@dataclass
class ScenarioPrometheus:
    server: PrometheusServer | VictoriaMetrics
    truths: dict[str, Truth]
    at: float = T0 + DURATION
    store: str = "prometheus"

    @property
    def url(self) -> str:
        return self.server.url

    def client(self, **options: Any) -> PrometheusClient:
        """A client of this store, as canarist is configured for it."""
        return PrometheusClient(PrometheusSettings(self.url, store=self.store, **options))

    @property
    def cli_options(self) -> list[str]:
        """The ``canarist run`` / ``analyze`` options that name this store."""
        return ["--prometheus", self.url, "--prometheus-store", self.store]

    def queries_served(self) -> int:
        """How many query API requests Prometheus itself has answered (its own counter)."""
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=5) as answer:
            text = answer.read().decode()
        pattern = r'^prometheus_http_requests_total\{[^}]*handler="/api/v1/query(?:_range)?"[^}]*\} (\S+)$'
        return int(sum(float(v) for v in re.findall(pattern, text, re.MULTILINE)))

    def rollout(self, name: str) -> ModelRollout:
        return scenario_rollout(SCENARIOS[name])

    def windows(self, name: str) -> tuple[Window, ...]:
        return windows(SCENARIOS[name].share)


#: The PromQL stores the Prometheus edge is tested against.
BACKENDS = ("prometheus", "victoria-metrics")


def victoria_metrics(workdir: Path) -> VictoriaMetrics:
    """A started VictoriaMetrics; a missing binary or one that never gets ready FAILS the test."""
    try:
        return VictoriaMetrics(workdir).start()
    except (PartMissingError, StartError) as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="module", params=BACKENDS)
def scenario_prometheus(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ScenarioPrometheus]:
    """One store holding every scenario (namespace = scenario name), for a whole test module."""
    workdir = tmp_path_factory.mktemp(f"scenarios-{request.param}")
    server: PrometheusServer | VictoriaMetrics
    if request.param == "prometheus":
        server = PrometheusServer(workdir)
        truths = write_scenarios(server)
        server.start()
    else:
        out = OpenMetrics()
        truths = {name: generate(SCENARIOS[name], out) for name in SCENARIOS}
        server = victoria_metrics(workdir)
        server.import_text(out.render_text())
    try:
        yield ScenarioPrometheus(server, truths, store=request.param)
    finally:
        server.stop()
