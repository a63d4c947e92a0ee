"""The Prometheus edge of the chaos soak: the fault proxy as the client sees it, and a soak through it.

Against Debian's real Prometheus (tests/prometheus_fixture.py): ``vector(time())`` needs no stored
series and its value is the time it was evaluated for, so a stale answer shows itself. The soak runs
the real controller with the production Prometheus edge against a real Prometheus scraping the
truth live, through the proxy, in real time.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.api.times import rfc3339
from controller.edges.prometheus import (
    PrometheusClient,
    PrometheusError,
    PrometheusSettings,
    PrometheusTimeout,
    PrometheusUnavailable,
)
from controller.sandbox.chaos.promproxy import ProxyFault, ProxySchedule, prometheus_proxy
from controller.sandbox.chaos.promsoak import PREFIX, Look, PrometheusEdge, PrometheusRun
from controller.sandbox.chaos.soak import SoakConfig, run_soak
from controller.sandbox.chaos.truth import policy, rollout_name
from controller.sandbox.localapi import local_api_server
from tests.prometheus_fixture import PrometheusServer

NOW = 1_700_000_040.0
CLIENT_TIMEOUT = 1.0
QUERY = "vector(time())"


def forced(kind: ProxyFault | None, **options: Any) -> ProxySchedule:
    """A schedule that gives every query ``kind`` (None: no fault)."""
    weights = {k: 1.0 if k is kind else 0.0 for k in ProxyFault}
    return ProxySchedule(0, rate=1.0 if kind else 0.0, client_timeout=CLIENT_TIMEOUT, weights=weights, **options)


def ask(url: str, at: float = NOW) -> list[tuple[dict[str, str], float]]:
    return PrometheusClient(PrometheusSettings(url, timeout=CLIENT_TIMEOUT)).vector(QUERY, at)


def ask_range(url: str, start: float = NOW - 60, end: float = NOW) -> list[float]:
    """The values of the range query, one per step of 30 s (``vector(time())``: the times asked)."""
    client = PrometheusClient(PrometheusSettings(url, timeout=CLIENT_TIMEOUT))
    return [value for _, points in client.matrix(QUERY, start, end, 30) for _, value in points]


def is_nan(values: list[float]) -> bool:
    return any(math.isnan(v) for v in values)


# what the client gets for one instant query, per kind: a check of the samples, or the error it raises
INSTANT: dict[ProxyFault, Callable[[list[float]], bool] | type[PrometheusError]] = {
    ProxyFault.DELAY: lambda values: values == [NOW],
    ProxyFault.TIMEOUT: PrometheusTimeout,
    ProxyFault.ERROR_5XX: PrometheusUnavailable,
    ProxyFault.CUT_BODY: PrometheusUnavailable,
    ProxyFault.NAN: is_nan,
    ProxyFault.POS_INF: lambda values: values == [math.inf],
    ProxyFault.NEG_INF: lambda values: values == [-math.inf],
    ProxyFault.EMPTY: lambda values: values == [],
    # an answer for another time is no sample at the time asked (never the other time's value)
    ProxyFault.STALE: lambda values: values == [],
}


@pytest.mark.parametrize("kind", list(ProxyFault))
def test_each_fault_as_the_client_sees_it(kind: ProxyFault, prometheus_server: PrometheusServer) -> None:
    schedule = forced(kind, delay=0.3)
    with prometheus_proxy(prometheus_server.url, schedule) as proxy:
        began = time.monotonic()
        expected = INSTANT[kind]
        if isinstance(expected, type):
            with pytest.raises(expected) as raised:
                ask(proxy.url)
            if kind is not ProxyFault.TIMEOUT:
                assert not isinstance(raised.value, PrometheusTimeout), raised.value
        else:
            assert expected([value for _, value in ask(proxy.url)])
        took = time.monotonic() - began
    assert schedule.injected == {kind.value: 1}
    if kind is ProxyFault.DELAY:
        assert 0.3 <= took < CLIENT_TIMEOUT
    if kind is ProxyFault.TIMEOUT:
        assert CLIENT_TIMEOUT <= took < CLIENT_TIMEOUT + 1.0


def test_without_faults_the_proxy_passes_real_answers(prometheus_server: PrometheusServer) -> None:
    schedule = forced(None)
    with prometheus_proxy(prometheus_server.url, schedule) as proxy:
        assert ask(proxy.url) == [({}, NOW)]
        assert ask_range(proxy.url) == [NOW - 60, NOW - 30, NOW]
    assert not schedule.injected


def test_a_stale_answer_is_one_given_earlier_or_one_for_earlier_times(prometheus_server: PrometheusServer) -> None:
    """Stale range answers carry other times' points; the proxy replays its last answer to the same PromQL."""
    schedule = forced(ProxyFault.STALE, stale_by=30.0)
    with prometheus_proxy(prometheus_server.url, schedule) as proxy:
        assert ask_range(proxy.url) == [NOW - 90, NOW - 60, NOW - 30]  # nothing earlier: the times moved back
        schedule.rate = 0.0
        assert ask_range(proxy.url, NOW, NOW + 60) == [NOW, NOW + 30, NOW + 60]  # a real answer, remembered
        schedule.rate = 1.0
        assert ask_range(proxy.url, NOW + 60, NOW + 120) == [NOW, NOW + 30, NOW + 60]  # the remembered one
    assert schedule.injected == {"stale": 2}


def test_substituted_values_land_in_range_answers(prometheus_server: PrometheusServer) -> None:
    for kind, check in ((ProxyFault.NAN, is_nan), (ProxyFault.POS_INF, lambda v: math.inf in v)):
        with prometheus_proxy(prometheus_server.url, forced(kind)) as proxy:
            values = ask_range(proxy.url)
        assert len(values) == 3 and check(values), (kind, values)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32), rate=st.floats(0.05, 1.0))
def test_the_same_seed_gives_the_same_schedule(seed: int, rate: float) -> None:
    def faults() -> list[tuple[ProxyFault | None, float]]:
        schedule = ProxySchedule(seed, rate=rate)
        drawn = []
        for _ in range(60):
            fault, detail = schedule.draw()
            if fault is not None:
                schedule.count(fault)
            drawn.append((fault, detail.random()))
        return drawn

    first = faults()
    assert first == faults()
    kinds = {f for f, _ in first if f is not None}
    if len(kinds) < len(ProxyFault) and rate > 0.5:  # uncovered kinds go first
        pytest.fail(f"{rate:.2f} of 60 queries met only {sorted(kinds)}")


# --- the soak -----------------------------------------------------------------------------------

#: 6 rollouts (2 of each truth) in real time: 1 s intervals, scrapes every 0.25 s; a third of the
#: queries broken by the proxy. No API faults or crashes (tests/test_chaos.py has those): a route
#: write they delay by seconds leaves windows whose recorded share the routes did not have yet, and
#: the sample-ratio guard then holds a good canary for good (seed 1 with crash_rate 0.01; reported).
SOAK = SoakConfig(
    rollouts=6,
    seed=0,
    fault_rate=0.0,
    crash_rate=0.0,
    tick=0.25,
    minutes=1.0,
    watch_every=0,
    metrics=PrometheusEdge(fault_rate=0.35, interval=1.0, scrape=0.25),
)


def test_a_seeded_soak_through_the_proxy_and_a_real_prometheus() -> None:
    """Every proxy fault happens inside a look, and each look is checked (PrometheusRun.problems, in
    ``violations``): one that met a timeout, 5xx or cut body failed and advanced nothing; one that met
    NaN, Inf, empty or stale answers found fewer cells with data than Prometheus itself."""
    result = run_soak(SOAK)
    assert result.violations == []
    assert result.wrong_outcomes == []
    assert result.unfinished == []
    assert result.not_restored == []
    injected = {kind for kind, n in result.faults.items() if n}
    assert {f"{PREFIX}{kind}" for kind in ProxyFault} <= injected, sorted(injected)
    assert sorted(result.phases.values()) == ["Failed"] * 4 + ["Succeeded"] * 2
    assert result.seconds < 60


def test_the_missing_data_checks_catch_each_breach() -> None:
    """Hand-made looks: a broken answer that did not fail the look, a failed look that advanced, and a
    corrupted answer read as whole data are each reported; a clean or well-handled look is not."""
    at, key = NOW, f"chaos/{rollout_name(0)}"
    with local_api_server() as api:
        api.seed(policy(0) | {"status": {"history": [{"action": "Advance", "at": rfc3339(at), "step": 1}]}})
        run = PrometheusRun(PrometheusEdge(), "http://127.0.0.1:1", "http://127.0.0.1:2", forced(None))
        run.looks += [
            Look(key, at - 1, frozenset({ProxyFault.ERROR_5XX}), failed=True, cells=0),  # well handled
            Look(key, at - 2, frozenset({ProxyFault.EMPTY}), failed=False, cells=4, direct=8),  # well handled
            Look(key, at - 3, frozenset(), failed=False, cells=8),  # clean
            Look(key, at - 4, frozenset({ProxyFault.CUT_BODY}), failed=False, cells=8),
            Look(key, at, frozenset({ProxyFault.TIMEOUT}), failed=True, cells=0),
            Look(key, at - 5, frozenset({ProxyFault.STALE}), failed=False, cells=8, direct=8),
        ]
        problems = run.problems(api)
    assert len(problems) == 3, problems
    assert "met cut-body and did not fail" in problems[0]
    assert "advanced on a failed look (timeout)" in problems[1]
    assert "met stale and found data in 8 cells, Prometheus itself in 8" in problems[2]
