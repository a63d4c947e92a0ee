"""The soak's metrics through the real Prometheus edge: a real Prometheus, behind the seeded fault proxy.

:class:`PrometheusEdge` is :attr:`SoakConfig.metrics <controller.sandbox.chaos.soak.SoakConfig>`'s
option. For one run it starts the soak's truth served live (:mod:`~controller.sandbox.chaos.livetruth`,
which says why the soak then runs in real time), Debian's ``prometheus`` scraping it, and the fault
proxy (:mod:`~controller.sandbox.chaos.promproxy`) in front of that, seeded by the run's seed. Each
controller the soak starts gets a fresh :class:`~controller.manager.wiring.PrometheusSource` (the
production edge: prometheus-api-client over HTTP) pointed at the proxy, and the rollouts' policies
are the soak's, their durations scaled so that one interval is :attr:`PrometheusEdge.interval`
real seconds.

Every look is recorded with the faults the proxy injected while it ran, which makes "missing data is
never a pass" checkable (:meth:`PrometheusRun.problems`): a look whose answer was cut, refused or
never came must fail (no data, with the reason), and no Advance or Promote may be decided on it;
a look that got a NaN, Inf, empty or stale answer must read the broken part as missing: it must
find data in fewer cells (metric, window, version) than the same look asked of Prometheus directly
at once after it, never take the broken numbers (or another time's) for data.
"""

from __future__ import annotations

import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controller.api.model import GROUP, PLURAL, ModelRollout
from controller.api.times import stored_time
from controller.api.units import format_duration
from controller.edges.prometheus import PrometheusClient, PrometheusError, PrometheusSettings
from controller.engine.ports import EdgeFailure, MetricsSource
from controller.manager.wiring import PrometheusSource
from controller.metrics.samples import CountSeries, HistogramSeries, Observation, Window
from controller.sandbox.chaos.livetruth import LiveTruth, serving
from controller.sandbox.chaos.promproxy import ProxyFault, ProxySchedule, prometheus_proxy
from controller.sandbox.chaos.truth import policy
from controller.sandbox.demo.processes import Prometheus, free_port
from controller.sandbox.localapi import LocalApiServer

PREFIX = "prometheus-"
#: Faults that leave the client no whole answer: the look must fail.
BREAKING = (ProxyFault.TIMEOUT, ProxyFault.ERROR_5XX, ProxyFault.CUT_BODY)
#: Faults that hand the client a whole answer with broken data: the look must see a gap.
CORRUPTING = (ProxyFault.NAN, ProxyFault.POS_INF, ProxyFault.NEG_INF, ProxyFault.EMPTY, ProxyFault.STALE)
PROMOTIONS = ("Advance", "Promote")


class RealClock:
    """The soak's clock in real time: ``now`` is ``time.time()``; moving it forward waits until then."""

    @property
    def now(self) -> float:
        return time.time()

    @now.setter
    def now(self, value: float) -> None:
        time.sleep(max(value - time.time(), 0.0))

    def __call__(self) -> float:
        return time.time()


@dataclass(frozen=True)
class Look:
    """One look of one rollout: when, the proxy's faults during it, whether it failed, the cells it found
    with data and (after a fault) those the same look found asking Prometheus directly."""

    key: str
    at: float
    faults: frozenset[ProxyFault]
    failed: bool
    cells: int
    direct: int | None = None


def cells(observation: Observation | None) -> int:
    """The cells (requests or metric, window, version) of an observation that hold data."""
    if observation is None:
        return 0
    columns: list[tuple[Any, ...]] = [observation.stable_requests, observation.canary_requests]
    for data in observation.metrics:
        series = data.series
        if isinstance(series, CountSeries):
            columns += [series.stable_events, series.stable_trials, series.canary_events, series.canary_trials]
        elif isinstance(series, HistogramSeries):
            columns += [series.stable, series.canary]
    return sum(value is not None for column in columns for value in column)


@dataclass
class RecordedSource:
    """A MetricsSource that records each look (:class:`Look`) with the proxy's faults injected during it;
    after a fault, it asks the same look of ``direct`` (Prometheus without the proxy) to compare."""

    inner: MetricsSource
    direct: MetricsSource
    schedule: ProxySchedule
    looks: list[Look]

    def observe(
        self, rollouts: Sequence[ModelRollout], windows: Mapping[str, Sequence[Window]], at: float
    ) -> tuple[dict[str, Observation], EdgeFailure | None]:
        before = Counter(self.schedule.injected)
        observations, failure = self.inner.observe(rollouts, windows, at)
        faults = frozenset(ProxyFault(kind) for kind in self.schedule.injected - before)
        direct = self.direct.observe(rollouts, windows, at)[0] if faults & set(CORRUPTING) else None
        for rollout in rollouts:
            found = cells(observations.get(rollout.key))
            truth = cells(direct.get(rollout.key)) if direct is not None else None
            self.looks.append(Look(rollout.key, at, faults, failure is not None, found, truth))
        return observations, failure


@dataclass(frozen=True)
class PrometheusEdge:
    """The soak's metrics through a real Prometheus behind the fault proxy (see the module docstring).

    ``fault_rate``: the share of queries the proxy breaks; ``interval``: real seconds per analysis
    interval; ``scrape``: Prometheus' scrape interval; ``client_timeout``: the client's per query."""

    fault_rate: float = 0.2
    interval: float = 2.0
    scrape: float = 0.5
    client_timeout: float = 1.0
    workdir: Path | None = None

    @contextmanager
    def open(self, api: LocalApiServer, truths: Mapping[str, str], seed: int) -> Iterator[PrometheusRun]:
        """Live truth, Prometheus and the proxy for one run, stopped after the block."""
        with ExitStack() as stack:
            workdir = self.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="canarist-soak-")))
            truth = LiveTruth(api, truths, self.interval)
            job = stack.enter_context(serving(truth, free_port()))
            scrape = f"{round(self.scrape * 1000)}ms"
            job |= {"scrape_interval": scrape, "scrape_timeout": scrape}
            prometheus = Prometheus(workdir / "prometheus", scrape_configs=[job], scrape_interval=scrape)
            stack.callback(prometheus.stop)
            prometheus.start()
            schedule = ProxySchedule(
                seed,
                rate=self.fault_rate,
                client_timeout=self.client_timeout,
                delay=self.client_timeout / 4,
                stale_by=3 * self.interval,
            )
            proxy = stack.enter_context(prometheus_proxy(prometheus.url, schedule))
            _await_scrapes(prometheus.url, self.scrape)
            yield PrometheusRun(self, proxy.url, prometheus.url, schedule)


@dataclass
class PrometheusRun:
    """What one run of the soak uses of its Prometheus edge."""

    edge: PrometheusEdge
    url: str  # the proxy's
    upstream: str  # Prometheus'
    schedule: ProxySchedule
    looks: list[Look] = field(default_factory=list)
    clock: RealClock = field(default_factory=RealClock)

    def policy(self, index: int) -> dict[str, Any]:
        """:func:`truth.policy`, with an interval of :attr:`PrometheusEdge.interval` real seconds and
        its other durations scaled alike (a 30-interval progress deadline, a 10-interval suspicion hold)."""
        body = policy(index)
        interval = self.edge.interval
        body["spec"]["strategy"] |= {
            "interval": format_duration(interval),
            "progressDeadline": format_duration(30 * interval),
            "holdOnSuspicion": format_duration(10 * interval),
        }
        return body

    def source(self) -> MetricsSource:
        """A fresh edge for a fresh controller: PrometheusSource over its own client, to the proxy."""
        timeout = self.edge.client_timeout
        proxied, direct = (
            PrometheusSource(PrometheusClient(PrometheusSettings(url, timeout=timeout, look_timeout=4 * timeout)))
            for url in (self.url, self.upstream)
        )
        return RecordedSource(proxied, direct, self.schedule, self.looks)

    @property
    def faults(self) -> Counter[str]:
        """The proxy's faults by kind, prefixed so that they do not mix with the API's."""
        return Counter({f"{PREFIX}{kind}": n for kind, n in self.schedule.injected.items()})

    def problems(self, api: LocalApiServer) -> list[str]:
        """Looks the proxy broke that were taken for data or decided on (see the module docstring);
        call it before the rollouts are deleted."""
        found = []
        promoted: set[tuple[str, int]] = set()
        for key in {look.key for look in self.looks}:
            namespace, _, name = key.partition("/")
            status = (api.get(GROUP, PLURAL, namespace, name) or {}).get("status") or {}
            for transition in status.get("history") or []:
                at = stored_time(transition.get("at"))
                if transition.get("action") in PROMOTIONS and at is not None:
                    promoted.add((key, round(at * 1000)))
        for look in self.looks:
            kinds = ", ".join(sorted(look.faults))
            where = f"{look.key} at {look.at:.3f}"
            if look.faults & set(BREAKING) and not look.failed:
                found.append(f"prometheus-no-data: a look of {where} met {kinds} and did not fail")
            if look.direct is not None and not look.failed and look.cells >= look.direct:
                found.append(
                    f"prometheus-no-data: a look of {where} met {kinds} and found data in {look.cells} cells, "
                    f"Prometheus itself in {look.direct}"
                )
            if look.failed and (look.key, round(look.at * 1000)) in promoted:
                found.append(f"prometheus-no-data: {where} advanced on a failed look ({kinds or 'no proxy fault'})")
        return found


def _await_scrapes(url: str, scrape: float, timeout: float = 30.0) -> None:
    """Wait until Prometheus has scraped the live truth twice (it applies a new target within seconds),
    so that the soak's first windows have data."""
    client = PrometheusClient(PrometheusSettings(url, timeout=5.0))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with suppress(PrometheusError):
            if client.vector('count_over_time(up{job="mesh"}[1m]) >= 2', time.time()):
                return
        time.sleep(scrape)
    raise RuntimeError(f"Prometheus at {url} did not scrape the live truth within {timeout:g}s")
