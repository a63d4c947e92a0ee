"""Rendering: the invariants of DESIGN.md section 4, Istio's own schemas, and the route layout."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pydantic
import pytest
import yaml
from cloudcoil.models.istio.networking import v1 as istio
from cloudcoil.models.istio.telemetry import v1 as telemetry
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.api import rules
from controller.api.load import load
from controller.api.model import ModelRollout
from controller.api.schedule import (
    REQUEST_ID_BUCKETS,
    RouteState,
    realized_share,
    request_id_buckets,
    request_id_regex,
    schedule,
    split_tagged,
    state_for_step,
)
from controller.traffic.render import RenderError, check_invariants, render
from controller.traffic.templating import default_environment

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "policies").glob("*.yaml"))
ENV = default_environment()


def _strict_istio_models() -> None:
    """Make cloudcoil's Istio models refuse unknown fields, as the API server would prune them."""
    models = [
        c
        for module in (istio, telemetry)
        for c in vars(module).values()
        if isinstance(c, type) and issubclass(c, pydantic.BaseModel) and c.__module__ == module.__name__
    ]
    for model in models:
        model.model_config["extra"] = "forbid"
    for model in models:
        model.model_rebuild(force=True)


_strict_istio_models()


def load_example(path: Path) -> ModelRollout:
    (rollout,) = load(path.read_text(), str(path))
    return rollout


def assert_istio_valid(objects: list[dict[str, Any]]) -> None:
    """Validate against Istio's published API (cloudcoil models) and our invariants, independently."""
    kinds = [o["kind"] for o in objects]
    assert kinds in (
        ["DestinationRule", "VirtualService"],
        ["DestinationRule", "Telemetry", "VirtualService"],  # the split's tag, with A/B cohorts
    ), "make before break: DestinationRule first, the split's tag before a route sets its header"
    for obj in objects:
        if obj["kind"] == "Telemetry":
            telemetry.Telemetry.model_validate(obj)
    rule = istio.DestinationRule.model_validate(objects[0])
    service = istio.VirtualService.model_validate(objects[-1])
    subsets = {s.name for s in rule.spec.subsets or []}
    assert service.spec is not None and service.spec.http
    for route in service.spec.http:
        destinations = route.route or []
        assert destinations, f"route {route.name} sends traffic nowhere"
        weights = [d.weight for d in destinations]
        if len(destinations) > 1:
            assert all(isinstance(w, int) and 0 <= w <= 100 for w in weights), weights
            assert sum(w for w in weights if w is not None) == 100, weights
        targets = [d.destination for d in destinations] + ([route.mirror] if route.mirror else [])
        for target in targets:
            assert target.host == rule.spec.host
            if target.subset is not None:
                assert target.subset in subsets, f"{target.subset} routed but not defined"


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_renders_valid_istio_objects_at_every_step(path: Path) -> None:
    rollout = load_example(path)
    for index in range(len(schedule(rollout)) + 1):
        assert_istio_valid(render(rollout, state_for_step(rollout, index), ENV))


def test_there_are_at_least_four_examples() -> None:
    assert len(EXAMPLES) >= 4


def test_subset_split_weights_mirror_and_order() -> None:
    rollout = load_example(ROOT / "policies/search-embedder-ab.yaml")
    shadow = render(rollout, state_for_step(rollout, 0), ENV)[-1]["spec"]["http"]
    assert [r["name"] for r in shadow] == ["cohort-beta-testers", "cohort-opt-in", "primary"]
    primary = shadow[-1]
    assert [d["weight"] for d in primary["route"]] == [100, 0]
    assert primary["mirror"]["subset"] == "e5-large"
    assert primary["mirrorPercentage"] == {"value": 50.0}

    live = render(rollout, RouteState(20), ENV)[-1]["spec"]["http"]
    assert [r["name"] for r in live] == ["cohort-beta-testers", "cohort-opt-in", "sticky-canary", "primary"]
    assert "mirror" not in live[-1]
    stable, canary = live[-1]["route"]
    assert (stable["weight"], canary["weight"]) == (80, 20)
    assert (stable["destination"]["subset"], canary["destination"]["subset"]) == ("e5-base", "e5-large")
    cookie = canary["headers"]["response"]["add"]["set-cookie"]
    assert cookie == "embedder-canary=e5-large; Max-Age=86400; Path=/"
    assert re.fullmatch(live[2]["match"][0]["headers"]["cookie"]["regex"], "a=1; embedder-canary=e5-large; b=2")
    assert not re.fullmatch(live[2]["match"][0]["headers"]["cookie"]["regex"], "xembedder-canary=e5-large")
    assert live[0]["match"] == [{"headers": {"x-canarist-cohort": {"exact": "beta"}}}]
    assert all(r["timeout"] == "3s" for r in live)


def test_rollback_state_removes_cohorts_and_sends_everything_to_stable() -> None:
    rollout = load_example(ROOT / "policies/search-embedder-ab.yaml")
    http = render(rollout, RouteState(0, cohorts=False), ENV)[-1]["spec"]["http"]
    assert [r["name"] for r in http] == ["primary"]
    assert [d["weight"] for d in http[0]["route"]] == [100, 0]


def test_triton_rewrites_each_share_to_its_model_version() -> None:
    rollout = load_example(ROOT / "policies/ocr-triton-versions.yaml")
    rule, service = render(rollout, RouteState(30), ENV)
    assert "subsets" not in rule["spec"]
    http = service["spec"]["http"]
    assert [r["name"] for r in http] == ["canary-share", "stable-share", "passthrough"]
    canary, stable, passthrough = http
    assert canary["rewrite"] == {"uri": "/v2/models/ocr/versions/4/infer"}
    assert stable["rewrite"] == {"uri": "/v2/models/ocr/versions/3/infer"}
    assert canary["match"][0]["uri"] == {"exact": "/v2/models/ocr/infer"}
    assert canary["match"][0]["headers"]["x-request-id"]["regex"] == request_id_regex(30)
    assert "match" not in passthrough and "rewrite" not in passthrough
    promoted = render(rollout, RouteState(100), ENV)[-1]["spec"]["http"]
    assert [r["name"] for r in promoted] == ["canary-share", "passthrough"]
    assert promoted[0]["rewrite"] == {"uri": "/v2/models/ocr/versions/4/infer"}
    start = render(rollout, RouteState(0), ENV)[-1]["spec"]["http"]
    assert [r["name"] for r in start] == ["stable-share", "passthrough"]


@pytest.mark.parametrize("weight", range(1, 100))
def test_request_id_regex_selects_exactly_its_share_of_uuids(weight: int) -> None:
    pattern = re.compile(request_id_regex(weight))
    chosen = sum(1 for p in range(REQUEST_ID_BUCKETS) if pattern.fullmatch(f"{p:03x}e4b2-8c1d-4f7a-9e2b-0c1d2e3f4a5b"))
    assert chosen == request_id_buckets(weight)
    assert abs(chosen / REQUEST_ID_BUCKETS - weight / 100) <= 0.5 / REQUEST_ID_BUCKETS
    assert not pattern.fullmatch("")


def test_realized_share_is_what_the_analysis_must_assume() -> None:
    triton = load_example(ROOT / "policies/ocr-triton-versions.yaml")
    subset = load_example(ROOT / "policies/fraud-detector-istio.yaml")
    assert realized_share(subset, RouteState(5)) == 0.05
    assert realized_share(triton, RouteState(5)) == 205 / 4096


def test_user_strings_are_data_not_yaml() -> None:
    text = (ROOT / "policies/search-embedder-ab.yaml").read_text()
    hostile = "a: b #c [d] &e *f !g |h >i %j @k ---"
    text = text.replace("exact: beta", f"exact: '{hostile}'")
    (rollout,) = load(text, "hostile.yaml")
    http = render(rollout, RouteState(5), ENV)[-1]["spec"]["http"]
    assert http[0]["match"][0]["headers"]["x-canarist-cohort"]["exact"] == hostile


def test_invariant_check_refuses_bad_weights_and_undefined_subsets() -> None:
    rollout = load_example(ROOT / "policies/fraud-detector-istio.yaml")
    objects = render(rollout, RouteState(25), ENV)
    bad_sum = copy.deepcopy(objects)
    bad_sum[-1]["spec"]["http"][0]["route"][0]["weight"] = 70
    with pytest.raises(RenderError, match="sum to 95"):
        check_invariants(bad_sum)
    bad_type = copy.deepcopy(objects)
    bad_type[-1]["spec"]["http"][0]["route"][0]["weight"] = 75.0
    with pytest.raises(RenderError, match="not integers"):
        check_invariants(bad_type)
    with pytest.raises(RenderError, match="not defined by an earlier DestinationRule"):
        check_invariants(list(reversed(objects)))


def test_route_state_refuses_impossible_weights() -> None:
    for weight in (-1, 101):
        with pytest.raises(ValueError, match=r"0\.\.100"):
            RouteState(weight)
    with pytest.raises(ValueError, match="integer"):
        RouteState(12.5)  # type: ignore[arg-type]


# --- property: random valid policies, random route states -------------------------------------

names = st.from_regex(r"[a-z][a-z0-9]{0,8}", fullmatch=True)
label_values = st.from_regex(r"[A-Za-z0-9]([A-Za-z0-9._-]{0,10}[A-Za-z0-9])?", fullmatch=True)


@st.composite
def policies(draw: st.DrawFn) -> dict[str, Any]:
    triton = draw(st.booleans())
    stable, canary = draw(st.lists(names, min_size=2, max_size=2, unique=True))
    weights = sorted(draw(st.sets(st.integers(1, 99), min_size=1, max_size=6)))
    strategy: dict[str, Any] = {"steps": weights}
    if not triton and draw(st.booleans()):
        strategy["mirror"] = {"percentage": draw(st.integers(1, 100)), "intervals": draw(st.integers(1, 3))}
    routing: dict[str, Any] = {}
    if triton:
        versions = draw(st.lists(st.integers(1, 50), min_size=2, max_size=2, unique=True))
        routing = {
            "mode": "TritonVersion",
            "triton": {"model": draw(names), "stableVersion": versions[0], "canaryVersion": versions[1]},
        }
    cohorts = draw(st.lists(st.tuples(names, label_values), max_size=3, unique_by=lambda t: t[0]))
    if cohorts:
        routing["match"] = [{"name": f"c{i}", "headers": {h: {"exact": v}}} for i, (h, v) in enumerate(cohorts)]
    if draw(st.booleans()):
        routing["sticky"] = {"cookieName": draw(names)}
    if draw(st.booleans()):
        routing["timeout"] = f"{draw(st.integers(1, 60))}s"
    versions_spec = {
        "stable": {"name": stable, "labels": {"app": "m", "version": stable}},
        "canary": {"name": canary, "labels": {"app": "m", "version": canary}},
    }
    return {
        "apiVersion": "canarist.io/v1alpha1",
        "kind": "ModelRollout",
        "metadata": {"name": draw(names), "namespace": draw(names)},
        "spec": {
            "service": {"name": draw(names), "port": draw(st.integers(1, 65535))},
            **versions_spec,
            "routing": routing,
            "strategy": strategy,
            "analysis": {"metrics": [{"name": "errors", "kind": "IstioErrorRate", "slo": {"max": 0.02}}]},
        },
    }


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policies(), st.integers(0, 100), st.sampled_from([0.0, 5.0, 100.0]), st.booleans())
def test_any_valid_policy_renders_integer_weights_summing_to_100_and_defined_subsets(
    data: dict[str, Any], weight: int, mirror: float, cohorts: bool
) -> None:
    rollout = ModelRollout.model_validate(data)
    assert rules.check(rollout) == []
    triton = data["spec"]["routing"].get("mode") == "TritonVersion"
    state = RouteState(weight, 0.0 if triton else mirror, cohorts)
    objects = render(rollout, state, ENV)
    assert_istio_valid(objects)
    round_trip = list(yaml.safe_load_all(yaml.safe_dump_all(objects)))
    assert round_trip == objects
    tagged = split_tagged(rollout)  # A/B cohorts or sticky users in Subset mode: the split's Telemetry
    assert [o["kind"] for o in objects] == ["DestinationRule", *(["Telemetry"] if tagged else []), "VirtualService"]
    for index in range(len(schedule(rollout)) + 1):
        assert_istio_valid(render(rollout, state_for_step(rollout, index), ENV))
