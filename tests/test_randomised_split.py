"""Finding 15: only the randomised split is compared; A/B cohorts and sticky users are left out.

Requests that reach the canary because of who sends them (a header or cookie cohort, a sticky
cookie) are not randomised, so counting them against the stable's would compare different
populations. With cohorts, the weighted route sets ``x-canarist-split``, every other route removes
it (a client cannot forge it), an Istio Telemetry resource turns it into the ``canarist_split``
metric tag, and the Istio queries select the tagged requests only. Kinds whose series cannot be
told apart may keep their SLO guards, never a comparison.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.api.load import PolicyError, load
from controller.api.model import ModelRollout
from controller.api.names import SPLIT_HEADER, SPLIT_TAG, SPLIT_VALUE
from controller.api.schedule import RouteState, schedule, state_for_step
from controller.edges.kube import KubeCluster, retry_policy
from controller.edges.prometheus import PrometheusClient, PrometheusSettings, observe
from controller.judge.analysis import analyse
from controller.metrics.measure import metric_queries
from controller.metrics.samples import CountSeries, Window
from controller.sandbox.localapi import local_api_server
from controller.traffic.render import render
from controller.traffic.templating import default_environment
from tests.memory_cluster import MemoryCluster
from tests.prometheus_fixture import OpenMetrics, PrometheusServer
from tests.test_render import assert_istio_valid

ROOT = Path(__file__).resolve().parent.parent
ENV = default_environment()
AB = yaml.safe_load((ROOT / "policies/search-embedder-ab.yaml").read_text())
PLAIN = yaml.safe_load((ROOT / "policies/fraud-detector-istio.yaml").read_text())


def rollout_of(body: dict[str, Any]) -> ModelRollout:
    (rollout,) = load(json.dumps(body), "policy.yaml")  # JSON is YAML, without the aliases safe_dump adds
    return rollout


def routing_variants() -> st.SearchStrategy[dict[str, Any]]:
    cohort = st.fixed_dictionaries(
        {"headers": st.just({"x-beta": {"exact": "yes"}})}, optional={"name": st.sampled_from(["a", "b", "c"])}
    )
    return st.fixed_dictionaries(
        {},
        optional={
            "match": st.lists(cohort, min_size=1, max_size=3, unique_by=lambda c: c.get("name", id(c))),
            "sticky": st.just({"cookieName": "canary", "maxAge": "1h"}),
        },
    )


def routes(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    (service,) = [o for o in objects if o["kind"] == "VirtualService"]
    routes: list[dict[str, Any]] = service["spec"]["http"]
    return routes


@settings(max_examples=60, deadline=None)
@given(routing=routing_variants(), weight=st.integers(0, 100), cohorts=st.booleans())
def test_only_the_weighted_route_carries_the_split_header(routing: dict[str, Any], weight: int, cohorts: bool) -> None:
    body = copy.deepcopy(AB)
    body["spec"]["routing"] = {**routing, "timeout": "3s"}
    body["spec"]["analysis"]["metrics"] = body["spec"]["analysis"]["metrics"][:2]  # the Istio ones
    try:
        rollout = rollout_of(body)
    except PolicyError as exc:
        pytest.fail(str(exc))
    objects = render(rollout, RouteState(weight, cohorts=cohorts), ENV)
    assert_istio_valid(objects)
    tagged = bool(routing)
    telemetries = [o for o in objects if o["kind"] == "Telemetry"]
    assert len(telemetries) == (1 if tagged else 0)
    for route in routes(objects):
        mutation = (route.get("headers") or {}).get("request") or {}
        if not tagged:
            assert not mutation, route
        elif route["name"] == "primary":
            assert mutation == {"set": {SPLIT_HEADER: SPLIT_VALUE}}, route
        else:  # a cohort or a sticky user: never counted as randomised, whatever the client sent
            assert mutation == {"remove": [SPLIT_HEADER]}, route
    if tagged:
        (tag,) = telemetries
        assert tag["spec"]["selector"]["matchLabels"] == {"app": "embedder"}  # both versions' pods
        overrides = tag["spec"]["metrics"][0]["overrides"]
        assert {o["match"]["metric"] for o in overrides} == {"REQUEST_COUNT", "REQUEST_DURATION"}
        assert all(o["match"]["mode"] == "SERVER" for o in overrides)  # reporter="destination", as queried
        assert all(o["tagOverrides"] == {SPLIT_TAG: {"value": f"request.headers['{SPLIT_HEADER}']"}} for o in overrides)


def test_istio_queries_select_the_split_only_with_cohorts() -> None:
    with_cohorts = metric_queries(rollout_of(AB), 60.0)
    without = metric_queries(rollout_of(PLAIN), 60.0)
    tag = f'{SPLIT_TAG}="{SPLIT_VALUE}"'
    for name in ("latency-p95", "error-rate"):  # the comparison reads the split; the SLO guard every request
        assert any(tag in q for q in with_cohorts[name]), with_cohorts[name]
        assert any(tag not in q for q in with_cohorts[name]), with_cohorts[name]
    assert all(tag not in q for qs in without.values() for q in qs)
    assert all(f'split="{SPLIT_VALUE}"' in q for q in with_cohorts["click-through"])  # ratio.splitLabel


COMPARISONS = [
    ("IstioLatency", None, True),
    ("IstioErrorRate", None, True),
    ("CustomRatio", "split", True),
    ("CustomRatio", None, False),
    ("PredictionDistribution", "split", True),
    ("PredictionDistribution", None, False),
    ("TritonLatency", None, False),
    ("DcgmGpuUtilization", None, False),
]


@pytest.mark.parametrize(("kind", "split_label", "allowed"), COMPARISONS)
@pytest.mark.parametrize("cohorts", [True, False])
def test_a_comparison_needs_series_that_leave_cohorts_out(
    kind: str, split_label: str | None, allowed: bool, cohorts: bool
) -> None:
    body = copy.deepcopy(AB)
    if not cohorts:
        body["spec"]["routing"] = {"timeout": "3s"}
    metric: dict[str, Any] = {
        "name": "m",
        "kind": kind,
        "margin": {"absolute": "1%" if "Latency" not in kind else "5ms"},
    }
    if kind == "IstioLatency":
        metric["quantile"] = 0.9
    source = {"CustomRatio": "ratio", "PredictionDistribution": "outputs"}.get(kind)
    if kind == "CustomRatio":
        metric["ratio"] = {"success": "ok_total", "total": "all_total", "matchLabels": {"service": "embedder"}}
    if kind == "PredictionDistribution":
        metric["outputs"] = {"histogram": "embedder_score", "matchLabels": {"service": "embedder"}}
    if split_label and source:
        metric[source]["splitLabel"] = split_label
    body["spec"]["analysis"]["metrics"] = [metric]
    if split_label and not cohorts:  # nothing would set the header: only forged requests would count
        with pytest.raises(PolicyError, match=rf"{source}\.splitLabel: only with A/B cohorts"):
            rollout_of(body)
    elif allowed or not cohorts:
        rollout_of(body)
    else:
        with pytest.raises(PolicyError, match=r"metrics\[0\]\.margin: A/B cohorts and sticky users"):
            rollout_of(body)
        if kind == "PredictionDistribution":
            return  # it compares the versions or nothing: no SLO guard to fall back on
        metric.pop("margin")
        metric["slo"] = {"min": "50%"} if kind == "CustomRatio" else {"max": "1s" if "Latency" in kind else "50%"}
        rollout_of(body)  # an SLO guard, on the canary alone, stays valid on any traffic


def test_the_split_tag_is_created_with_the_routes_and_removed_with_them() -> None:
    memory = MemoryCluster()
    owner = memory.add(AB)
    rollout = rollout_of(AB)
    memory.apply_routes(owner, render(rollout, state_for_step(rollout, 2), ENV))
    assert [k for k, _, _ in memory.route_writes] == ["DestinationRule", "Telemetry", "VirtualService"]
    memory.release_routes(owner)
    assert memory.routes == {}


# --- against a real Prometheus: the cohort's requests are not counted ---------------------------

T0 = 1_700_000_040
CANARY_COHORT_ERRORS = 0.3  # the cohort (say, internal testers on a debug build) fails a lot


def test_a_failing_cohort_is_left_out_of_the_comparison_but_breaches_the_slo(
    prometheus_factory: Callable[..., PrometheusServer],
) -> None:
    """Stable and the canary's randomised share fail 1 %; the canary's cohort fails 30 %: the comparison
    sees no difference, and the SLO guard, which reads every canary request, sees the breach."""
    rollout = rollout_of(AB)
    history = OpenMetrics()
    base = {"reporter": "destination", "destination_service_namespace": "search"}
    base["destination_service_name"] = "embedder"
    series = {  # (version, split tag): requests per 15 s scrape, failing share
        ("e5-base", SPLIT_VALUE): (300, 0.01),
        ("e5-large", SPLIT_VALUE): (100, 0.01),
        ("e5-large", "unknown"): (100, CANARY_COHORT_ERRORS),
    }
    for step in range(41):
        t = T0 + 15 * step
        for (version, split), (rate, failing) in series.items():
            labels = {**base, "destination_version": version, SPLIT_TAG: split}
            bad = round(rate * failing)
            for code, n in (("200", rate - bad), ("503", bad)):
                point = (t, float(n * step))
                history.add(
                    "istio_requests", "counter", "istio_requests_total", {**labels, "response_code": code}, point
                )
    server = prometheus_factory()
    server.write_history(history.render())
    server.start()
    source = PrometheusClient(PrometheusSettings(server.url))
    windows = tuple(Window(T0 + 60 * i, T0 + 60 * (i + 1), 0.2) for i in range(10))
    observation = observe(source, [rollout], {rollout.key: windows}, T0 + 600)[rollout.key]
    errors = next(m.series for m in observation.metrics if m.name == "error-rate")
    assert isinstance(errors, CountSeries)
    for i in range(len(windows)):
        assert errors.canary_trials[i] == 400 and errors.canary_events[i] == 4, i  # the randomised 100 a scrape only
        assert errors.stable_trials[i] == 1200 and errors.stable_events[i] == 12, i
        assert errors.canary_all_trials is not None and errors.canary_all_events is not None
        assert errors.canary_all_trials[i] == 800 and errors.canary_all_events[i] == 4 + 120, i  # the SLO's: all
    verdicts = {m.name: m for m in analyse(rollout, observation, step_started_at=T0).metrics}
    guard = verdicts["error-rate"]
    assert guard.slo_breached, guard.reason  # the cohort's 30 % errors breach the 1 % SLO: a rollback
    assert "canary 1.000% vs stable 1.000%" in guard.reason or guard.estimate == pytest.approx(0.0), guard.reason


def test_every_step_of_the_example_renders_its_tag_before_the_route() -> None:
    rollout = rollout_of(AB)
    for step in range(len(schedule(rollout)) + 1):
        kinds = [o["kind"] for o in render(rollout, state_for_step(rollout, step), ENV)]
        assert kinds == ["DestinationRule", "Telemetry", "VirtualService"], step


def test_the_kubernetes_edge_creates_prunes_and_releases_the_split_tag() -> None:
    """Through the official client against the API stand-in: created with the routes, owned by the
    rollout, deleted when the cohorts go, and with the rollout's routes on release."""
    with local_api_server() as server:
        cluster = KubeCluster(server.make_client(retries=retry_policy()), identity="test", propagation_delay=0)
        owner = cluster.create_or_update_rollout({k: v for k, v in AB.items() if k != "status"})
        rollout = rollout_of(AB)
        done = cluster.apply_routes(owner, render(rollout, state_for_step(rollout, 2), ENV))
        assert [(kind, verb) for kind, _, verb in done.writes] == [
            ("DestinationRule", "create"),
            ("Telemetry", "create"),
            ("VirtualService", "create"),
        ]
        tag = server.get("telemetry.istio.io", "telemetries", "search", "search-embedder-split")
        assert tag is not None and tag["metadata"]["ownerReferences"][0]["kind"] == "ModelRollout"
        assert cluster.apply_routes(owner, render(rollout, state_for_step(rollout, 2), ENV)).writes == ()

        plain = copy.deepcopy(AB)
        plain["spec"]["routing"] = {"timeout": "3s"}
        plain["spec"]["analysis"]["metrics"] = plain["spec"]["analysis"]["metrics"][:2]
        done = cluster.apply_routes(owner, render(rollout_of(plain), state_for_step(rollout, 2), ENV))
        assert ("Telemetry", "search-embedder-split", "delete") in done.writes

        cluster.apply_routes(owner, render(rollout, state_for_step(rollout, 2), ENV))
        released = cluster.release_routes(owner)
        assert ("Telemetry", "search-embedder-split", "delete") in released.writes
        assert server.get("telemetry.istio.io", "telemetries", "search", "search-embedder-split") is None
