"""The PromQL catalog and the answers-to-Observation builder, on plain values (no Prometheus)."""

from __future__ import annotations

import itertools
import math
import random
import re
from collections.abc import Sequence
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.api.load import load
from controller.api.metrics_spec import RatioQuery
from controller.api.model import ModelRollout
from controller.api.routing import ModelVersion
from controller.metrics.bounds import MAX_HISTOGRAM_EDGES, coarsen
from controller.metrics.cache import WindowCache, unpacked
from controller.metrics.catalog import Family, Labels, PodSeries, Reduce, Role
from controller.metrics.kinds import agent, dcgm, hami, triton
from controller.metrics.kinds.istio import BUCKETS as ISTIO_BUCKETS
from controller.metrics.kinds.istio import REQUESTS as ISTIO_REQUESTS
from controller.metrics.measure import REQUESTS_KEY, build_observations, metric_queries, no_data, plan
from controller.metrics.plan import Plan
from controller.metrics.samples import CountSeries, DistributionSeries, GaugeSeries, HistogramSeries, Window
from controller.metrics.selectors import (
    CatalogError,
    Matcher,
    Op,
    any_of,
    check_label_name,
    check_metric_name,
    escape_label_value,
    promql_duration,
    selector,
)

SUBSET = """
apiVersion: canarist.io/v1alpha1
kind: ModelRollout
metadata: {name: ranker, namespace: ml}
spec:
  service: {name: ranker, port: 8000}
  stable: {name: r1, labels: {app: ranker, version: r1}}
  canary: {name: r2, labels: {app: ranker, version: r2}}
  analysis:
    metrics:
      - {name: p99, kind: IstioLatency, slo: {max: 250ms}}
      - {name: errors, kind: IstioErrorRate, slo: {max: 2%}}
      - {name: latency, kind: TritonLatency, margin: {relative: 10%}}
      - {name: queue, kind: TritonQueueLatency, margin: {absolute: 20ms}}
      - {name: failures, kind: TritonErrorRate, slo: {max: 1%}}
      - {name: triton-util, kind: TritonGpuUtilization, slo: {max: 95%}}
      - {name: triton-mem, kind: TritonGpuMemory, slo: {max: 90%}}
      - {name: dcgm-util, kind: DcgmGpuUtilization, slo: {max: 95%}}
      - {name: dcgm-mem, kind: DcgmGpuMemory, slo: {max: 90%}}
      - {name: cost, kind: GpuSecondsPerInference, margin: {relative: 15%}}
      - {name: agent-mem, kind: AgentGpuMemory, slo: {max: 90%}}
      - {name: agent-util, kind: AgentGpuUtilization, margin: {absolute: 5%}}
      - {name: agent-cost, kind: AgentGpuSecondsPerInference, margin: {relative: 10%}}
      - {name: hami-mem, kind: HamiGpuMemory, slo: {max: 90%}}
      - {name: hami-util, kind: HamiGpuUtilization, margin: {absolute: 5%}}
      - name: scores
        kind: PredictionDistribution
        outputs: {histogram: ranker_score, matchLabels: {model: ranker}, positiveAbove: 0.5}
        margin: {absolute: 10%}
      - name: classes
        kind: PredictionDistribution
        outputs: {counter: ranker_class_total, classLabel: label, matchLabels: {model: ranker},
                  positiveClasses: [top]}
        margin: {absolute: 5%}
        onDrift: Pause
      - name: accuracy
        kind: CustomRatio
        ratio:
          {success: correct_total, total: labelled_total, versionLabel: model_version, matchLabels: {model: ranker}}
        margin: {absolute: 1%}
"""

TRITON = """
apiVersion: canarist.io/v1alpha1
kind: ModelRollout
metadata: {name: ocr, namespace: docs}
spec:
  service: {name: triton, port: 8000}
  stable: {name: ocr-v3}
  canary: {name: ocr-v4}
  routing: {mode: TritonVersion, triton: {model: ocr, stableVersion: 3, canaryVersion: 4}}
  analysis:
    metrics:
      - {name: latency, kind: TritonLatency, margin: {relative: 10%}}
      - {name: failures, kind: TritonErrorRate, slo: {max: 1%}}
      - {name: p99, kind: IstioLatency, slo: {max: 250ms}}
      - {name: gpu, kind: DcgmGpuUtilization, slo: {max: 95%}}
      - name: accuracy
        kind: CustomRatio
        ratio: {success: chars_correct_total, total: chars_labelled_total, versionLabel: model_version,
                matchLabels: {model: ocr}}
        margin: {absolute: 1%}
"""

(ROLLOUT,) = load(SUBSET, "subset.yaml")
(TRITON_ROLLOUT,) = load(TRITON, "triton.yaml")

ISTIO_SEL = (
    'reporter="destination", destination_service_namespace="ml", destination_service_name="ranker", '
    'destination_version=~"r1|r2"'
)
ISTIO_BY = "destination_service_namespace, destination_service_name, destination_version"
POD_SEL = 'namespace="ml", version=~"r1|r2"'
POD_BY = "namespace, version, pod"
CUSTOM_SEL = 'namespace="ml", model="ranker", model_version=~"r1|r2"'
CUSTOM_BY = "namespace, model, model_version"


def counter(metric: str, by: str, sel: str, split: str = "") -> tuple[str, str]:
    group = f"{by}, {split}" if split else by
    return (
        f"sum by ({group}) (increase({metric}{{{sel}}}[60s]))",
        f"sum by ({by}) (resets({metric}{{{sel}}}[60s]))",
    )


def gauge(metric: str, aggregate: str = "sum") -> str:
    return f"{aggregate} by ({POD_BY}) (avg_over_time({metric}{{{POD_SEL}}}[60s]))"


def devices(metric: str, uuid: str) -> str:
    """The attribution check's query: which GPU each pod's device-wide series come from."""
    return f"count by ({POD_BY}, {uuid}) (avg_over_time({metric}{{{POD_SEL}}}[60s]))"


def agent_gauge(metric: str, aggregate: str = "sum", once_per_gpu: bool = False) -> str:
    inner = f"avg_over_time({metric}{{{POD_SEL}}}[60s])"
    if once_per_gpu:
        inner = f"max by ({POD_BY}, gpu) ({inner})"
    return f"{aggregate} by ({POD_BY}) ({inner})"


def hami_query(metric: str, legacy: str) -> str:
    new = f'avg_over_time({metric}{{namespace="ml"}}[60s])'
    old = f'avg_over_time({legacy}{{podnamespace="ml"}}[60s])'
    old = f'label_replace({old}, "namespace", "$1", "podnamespace", "(.*)")'
    old = f'label_replace({old}, "pod", "$1", "podname", "(.*)")'
    pods = (
        'max by (namespace, pod, version) (label_replace(kube_pod_labels{namespace="ml", label_version=~"r1|r2"}, '
        '"version", "$1", "label_version", "(.+)"))'
    )
    return (
        f"sum by ({POD_BY}) ((({new}) or (({old}) unless on (namespace, pod) ({new}))) "
        f"* on (namespace, pod) group_left (version) {pods})"
    )


GOLDEN: dict[str, tuple[str, ...]] = {
    REQUESTS_KEY: counter("istio_requests_total", ISTIO_BY, ISTIO_SEL, "response_code"),
    "p99": counter("istio_request_duration_milliseconds_bucket", ISTIO_BY, ISTIO_SEL, "le"),
    "errors": counter("istio_requests_total", ISTIO_BY, ISTIO_SEL, "response_code"),
    "latency": (
        *counter("nv_inference_request_duration_us", POD_BY, POD_SEL),
        *counter("nv_inference_request_success", POD_BY, POD_SEL),
    ),
    "queue": (
        *counter("nv_inference_queue_duration_us", POD_BY, POD_SEL),
        *counter("nv_inference_request_success", POD_BY, POD_SEL),
    ),
    "failures": (
        *counter("nv_inference_request_success", POD_BY, POD_SEL),
        *counter("nv_inference_request_failure", POD_BY, POD_SEL),
    ),
    "triton-util": (gauge("nv_gpu_utilization", "avg"), devices("nv_gpu_utilization", "gpu_uuid")),
    "triton-mem": (
        gauge("nv_gpu_memory_used_bytes"),
        gauge("nv_gpu_memory_total_bytes"),
        devices("nv_gpu_utilization", "gpu_uuid"),
    ),
    "dcgm-util": (gauge("DCGM_FI_DEV_GPU_UTIL", "avg"), devices("DCGM_FI_DEV_GPU_UTIL", "UUID")),
    "dcgm-mem": (
        gauge("DCGM_FI_DEV_FB_USED"),
        gauge("DCGM_FI_DEV_FB_FREE"),
        devices("DCGM_FI_DEV_GPU_UTIL", "UUID"),
    ),
    "cost": (
        gauge("DCGM_FI_DEV_GPU_UTIL"),
        *counter("nv_inference_count", POD_BY, POD_SEL),
        devices("DCGM_FI_DEV_GPU_UTIL", "UUID"),
    ),
    "agent-mem": (
        agent_gauge("canarist_gpu_memory_used_bytes"),
        agent_gauge("canarist_gpu_memory_total_bytes", once_per_gpu=True),
    ),
    "agent-util": (
        agent_gauge("canarist_gpu_sm_utilization_ratio"),
        agent_gauge("canarist_gpu_memory_total_bytes", "count", once_per_gpu=True),
    ),
    "agent-cost": (
        *counter("canarist_gpu_seconds_total", "namespace, version", POD_SEL),
        *counter("istio_requests_total", ISTIO_BY, ISTIO_SEL, "response_code"),
    ),
    "hami-mem": (
        hami_query("hami_vgpu_memory_used_bytes", "vGPU_device_memory_usage_in_bytes"),
        hami_query("hami_vgpu_memory_limit_bytes", "vGPU_device_memory_limit_in_bytes"),
    ),
    "hami-util": (hami_query("hami_container_device_utilization_ratio", "Device_utilization_desc_of_container"),),
    "scores": counter(
        "ranker_score_bucket", "namespace, model, version", 'namespace="ml", model="ranker", version=~"r1|r2"', "le"
    ),
    "classes": counter(
        "ranker_class_total", "namespace, model, version", 'namespace="ml", model="ranker", version=~"r1|r2"', "label"
    ),
    "accuracy": (
        *counter("correct_total", CUSTOM_BY, CUSTOM_SEL),
        *counter("labelled_total", CUSTOM_BY, CUSTOM_SEL),
    ),
}

TRITON_SEL = 'namespace="docs", model="ocr", version=~"3|4"'
TRITON_BY = "namespace, model, version, pod"
TRITON_GOLDEN: dict[str, tuple[str, ...]] = {
    REQUESTS_KEY: (
        *counter("nv_inference_request_success", TRITON_BY, TRITON_SEL),
        *counter("nv_inference_request_failure", TRITON_BY, TRITON_SEL),
    ),
    "latency": (
        *counter("nv_inference_request_duration_us", TRITON_BY, TRITON_SEL),
        *counter("nv_inference_request_success", TRITON_BY, TRITON_SEL),
    ),
    "failures": (
        *counter("nv_inference_request_success", TRITON_BY, TRITON_SEL),
        *counter("nv_inference_request_failure", TRITON_BY, TRITON_SEL),
    ),
    "p99": (),
    "gpu": (),
    "accuracy": (
        *counter("chars_correct_total", CUSTOM_BY, 'namespace="docs", model="ocr", model_version=~"3|4"'),
        *counter("chars_labelled_total", CUSTOM_BY, 'namespace="docs", model="ocr", model_version=~"3|4"'),
    ),
}


# --- golden PromQL ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(GOLDEN))
def test_promql_for_every_kind(name: str) -> None:
    assert metric_queries(ROLLOUT, 60.0)[name] == GOLDEN[name]


@pytest.mark.parametrize("name", list(TRITON_GOLDEN))
def test_promql_in_triton_version_mode(name: str) -> None:
    assert metric_queries(TRITON_ROLLOUT, 60.0)[name] == TRITON_GOLDEN[name]


def test_kinds_that_cannot_split_versions_in_triton_mode_say_why() -> None:
    target = plan([TRITON_ROLLOUT], {TRITON_ROLLOUT.key: [Window(0, 60, 0.1)]}, 60).targets[0]
    reasons = {m.name: m.unsupported for m in target.metrics}
    assert "TritonVersion" in reasons["p99"]
    assert "share the pods" in reasons["gpu"]
    assert reasons["latency"] == reasons["accuracy"] == ""


def test_configurable_pod_labels() -> None:
    labels = Labels(namespace="kubernetes_namespace", pod="kubernetes_pod_name")
    texts = metric_queries(ROLLOUT, 60.0, labels)["dcgm-util"]
    assert texts == (
        "avg by (kubernetes_namespace, version, kubernetes_pod_name) "
        '(avg_over_time(DCGM_FI_DEV_GPU_UTIL{kubernetes_namespace="ml", version=~"r1|r2"}[60s]))',
        "count by (kubernetes_namespace, version, kubernetes_pod_name, UUID) "
        '(avg_over_time(DCGM_FI_DEV_GPU_UTIL{kubernetes_namespace="ml", version=~"r1|r2"}[60s]))',
    )
    same = metric_queries(ROLLOUT, 60.0, Labels(version="app"))  # app=ranker on both versions
    assert same["dcgm-util"] == ()
    target = plan([ROLLOUT], {ROLLOUT.key: [Window(0, 60, 0.1)]}, 60, Labels(version="app")).targets[0]
    assert "cannot be told apart" in next(m.unsupported for m in target.metrics if m.name == "dcgm-util")


def test_version_label_found_through_prometheus_sanitising() -> None:
    """recsys-style pods: the label model-version is scraped as model_version."""
    stable = ModelVersion(name="a", labels={"app": "x", "model-version": "2026-11-02"})
    canary = ModelVersion(name="b", labels={"app": "x", "model-version": "2026-11-20"})
    spec = ROLLOUT.spec.model_copy(update={"stable": stable, "canary": canary})
    rollout = ROLLOUT.model_copy(update={"spec": spec})
    queries = metric_queries(rollout, 60.0, Labels(version="model_version"))
    assert 'model_version=~"2026-11-02|2026-11-20"' in queries["latency"][0]
    assert queries[REQUESTS_KEY] == ()  # Istio reads its version from none of these labels
    target = plan([rollout], {rollout.key: [Window(0, 60, 0.1)]}, 60).targets[0]
    assert "Istio reads a version from none" in target.requests_unsupported


@pytest.mark.parametrize(
    ("seconds", "text"), [(60, "60s"), (3600, "3600s"), (90.5, "90500ms"), (0.25, "250ms"), (1e-3, "1ms")]
)
def test_window_durations(seconds: float, text: str) -> None:
    assert promql_duration(seconds) == text


@pytest.mark.parametrize("seconds", [0, -60, 1e-4, math.inf, math.nan])
def test_bad_window_durations_are_refused(seconds: float) -> None:
    with pytest.raises(CatalogError):
        promql_duration(seconds)


# --- no selector injection --------------------------------------------------------------------

HOSTILE_VALUES = [
    '"',
    '"}',
    '"} or vector(1) #',
    'v1", destination_version=~".*',
    "\\",
    '\\"',
    "\\\\",
    'a\\"}b',
    "\n",
    'v1\n"}',
    "\r\n",
    "\t",
    "\x00",
    "\x7f",
    "\x85",
    "\u2028",
    "{",
    "}",
    "{}",
    "=~",
    "!~.*",
    ".*",
    "a|b",
    "|",
    "(a)",
    "[a-z]+",
    "^$",
    "v1)",
    "`",
    "'",
    "é",
    "版本",
    "🚀",
    "a b",
    "\\u0022",
    "\\x22",
]


def go_unquote(literal: str) -> str:
    """Read a double-quoted PromQL string the way Prometheus' lexer and strconv.Unquote do."""
    assert literal[0] == literal[-1] == '"', literal
    body, out, i = literal[1:-1], [], 0
    simple = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v", "\\": "\\", '"': '"'}
    while i < len(body):
        c = body[i]
        assert c != '"', f"unescaped quote in {literal!r}"
        assert ord(c) >= 0x20 and c != "\x7f", f"raw control character in {literal!r}"
        if c != "\\":
            out.append(c)
            i += 1
            continue
        e = body[i + 1]
        if e in simple:
            out.append(simple[e])
            i += 2
        elif e == "u":
            out.append(chr(int(body[i + 2 : i + 6], 16)))
            i += 6
        else:
            raise AssertionError(f"escape \\{e} is not PromQL")
    return "".join(out)


_MATCHER = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)(=~|!~|!=|=)("(?:[^"\\]|\\.)*")\s*(,|\})')


def parse_selector(text: str) -> list[tuple[str, str, str]]:
    """Every matcher of a selector (label, op, decoded value): proof of what Prometheus would see."""
    assert text[0] == "{", text
    found, pos = [], 1
    while True:
        m = _MATCHER.match(text, pos)
        assert m, f"not a selector at {text[pos:]!r}"
        found.append((m.group(1), m.group(2), go_unquote(m.group(3))))
        pos = m.end()
        if m.group(4) == "}":
            assert pos == len(text), f"text after the selector: {text[pos:]!r}"
            return found


@pytest.mark.parametrize("value", HOSTILE_VALUES, ids=[ascii(v) for v in HOSTILE_VALUES])
def test_hostile_value_is_escaped_in_equality(value: str) -> None:
    text = selector([Matcher("destination_version", Op.EQ, value)])
    assert parse_selector(text) == [("destination_version", "=", value)]


@pytest.mark.parametrize("value", HOSTILE_VALUES, ids=[ascii(v) for v in HOSTILE_VALUES])
def test_hostile_value_is_escaped_in_regex_unions(value: str) -> None:
    other = "v2"
    ((label, op, pattern),) = parse_selector(selector([any_of("destination_version", [value, other])]))
    assert (label, op) == ("destination_version", "=~")
    regex = re.compile(pattern, re.DOTALL)  # Prometheus anchors =~ at both ends (fullmatch)
    assert regex.fullmatch(value) and regex.fullmatch(other)
    for near_miss in (value + "x", "x" + value, "", "a", "v1", "anything"):
        if near_miss not in (value, other):
            assert not regex.fullmatch(near_miss), near_miss


@pytest.mark.parametrize("value", HOSTILE_VALUES, ids=[ascii(v) for v in HOSTILE_VALUES])
def test_hostile_value_in_a_policy_that_slipped_past_validation(value: str) -> None:
    """Even a rollout built without validation cannot inject a matcher."""
    canary = ModelVersion.model_construct(name="r2", labels={"version": value})
    rollout = ROLLOUT.model_copy(update={"spec": ROLLOUT.spec.model_copy(update={"canary": canary})})
    for text in metric_queries(rollout, 60.0)["errors"]:
        found = parse_selector(re.search(r"\{.*\}(?=\[60s\])", text, re.DOTALL).group(0))  # type: ignore[union-attr]
        assert [label for label, _, _ in found] == [
            "reporter",
            "destination_service_namespace",
            "destination_service_name",
            "destination_version",
        ]


@pytest.mark.parametrize("value", ["\ud800", "a\udfffb"], ids=["lone-high-surrogate", "lone-low-surrogate"])
def test_values_that_are_not_utf8_are_refused(value: str) -> None:
    with pytest.raises(CatalogError, match="surrogate"):
        escape_label_value(value)


def test_empty_values_are_refused() -> None:
    """label="" matches every series without the label: never what a rollout means."""
    with pytest.raises(CatalogError, match="empty"):
        any_of("destination_version", ["v1", ""])
    with pytest.raises(CatalogError, match="empty"):
        any_of("destination_version", [])


HOSTILE_LABEL_NAMES = [
    'version"}',
    "__name__",
    "__meta_x",
    "1abc",
    "a-b",
    "a b",
    "ünï",
    "",
    "a{b",
    "a=~b",
    "le\n",
    "a.b",
]


@pytest.mark.parametrize("name", HOSTILE_LABEL_NAMES, ids=[ascii(n) for n in HOSTILE_LABEL_NAMES])
def test_hostile_label_names_are_refused(name: str) -> None:
    with pytest.raises(CatalogError):
        check_label_name(name)
    with pytest.raises(CatalogError):
        selector([Matcher(name, Op.EQ, "v1")])
    with pytest.raises(CatalogError):
        Labels(version=name)


HOSTILE_METRICS = [
    'foo{bar="x"}',
    "foo or vector(1)",
    "foo)",
    "",
    "foo bar",
    "sum(foo)",
    "1foo",
    "foo\n",
    'foo"',
    "f[5m]",
]


@pytest.mark.parametrize("name", HOSTILE_METRICS, ids=[ascii(n) for n in HOSTILE_METRICS])
def test_hostile_metric_names_are_refused(name: str) -> None:
    with pytest.raises(CatalogError):
        check_metric_name(name)
    with pytest.raises(CatalogError):
        Family(name, Reduce.INCREASE, ("version",))
    ratio = RatioQuery.model_construct(
        success=name, total="labelled_total", version_label="version", match_labels={"model": "x"}
    )
    metric = ROLLOUT.spec.analysis.metrics[-1].model_copy(update={"ratio": ratio})
    analysis = ROLLOUT.spec.analysis.model_copy(update={"metrics": [metric]})
    rollout = ROLLOUT.model_copy(update={"spec": ROLLOUT.spec.model_copy(update={"analysis": analysis})})
    with pytest.raises(CatalogError):
        plan([rollout], {rollout.key: [Window(0, 60, 0.1)]}, 60)


def test_hostile_match_label_names_of_custom_ratios_are_refused() -> None:
    ratio = RatioQuery.model_construct(
        success="ok_total", total="all_total", version_label="version", match_labels={'model"}': "x"}
    )
    metric = ROLLOUT.spec.analysis.metrics[-1].model_copy(update={"ratio": ratio})
    analysis = ROLLOUT.spec.analysis.model_copy(update={"metrics": [metric]})
    rollout = ROLLOUT.model_copy(update={"spec": ROLLOUT.spec.model_copy(update={"analysis": analysis})})
    with pytest.raises(CatalogError):
        plan([rollout], {rollout.key: [Window(0, 60, 0.1)]}, 60)


def test_unknown_matcher_operators_are_refused() -> None:
    with pytest.raises(CatalogError):
        selector([Matcher("version", "=~~", "x")])  # type: ignore[arg-type]


# --- grouping ---------------------------------------------------------------------------------


def fleet(n: int) -> list[ModelRollout]:
    """``n`` copies of the subset rollout, each its own service in its own namespace."""
    out = []
    for i in range(n):
        meta = ROLLOUT.metadata.model_copy(update={"namespace": f"ns{i}", "name": f"svc{i}"})
        service = ROLLOUT.spec.service.model_copy(update={"name": f"svc{i}"})
        out.append(
            ROLLOUT.model_copy(update={"metadata": meta, "spec": ROLLOUT.spec.model_copy(update={"service": service})})
        )
    return out


def windows(n: int, length: float = 60.0, end: float = 6000.0) -> list[Window]:
    return [Window(end - (n - i) * length, end - (n - i - 1) * length, 0.1) for i in range(n)]


@pytest.mark.parametrize("n", [1, 5, 20, 100])
def test_query_count_does_not_grow_with_rollouts(n: int) -> None:
    rollouts = fleet(n)
    the_plan = plan(rollouts, {r.key: windows(10) for r in rollouts}, at=6000)
    assert len(the_plan.queries) == len(plan(fleet(1), {"ns0/svc0": windows(10)}, at=6000).queries) == 40
    istio = next(q.promql for q in the_plan.queries if q.promql.startswith("sum by") and "istio_requests" in q.promql)
    for i in range(n):
        assert f"ns{i}" in istio and f"svc{i}" in istio
    assert all(len(q.times) == 10 for q in the_plan.queries)


def test_one_query_per_window_length_not_per_window() -> None:
    rollouts = fleet(3)
    by = {rollouts[0].key: windows(5, 60.0), rollouts[1].key: windows(5, 120.0), rollouts[2].key: windows(7, 60.0)}
    the_plan = plan(rollouts, by, at=6000)
    assert len(the_plan.queries) == 80  # two window lengths
    sixty = [q for q in the_plan.queries if "[60s]" in q.promql]
    assert {len(q.times) for q in sixty} == {7}


def test_windows_after_the_look_are_not_asked_for() -> None:
    the_plan = plan([ROLLOUT], {ROLLOUT.key: windows(3, end=6000)}, at=5950)
    assert all(q.times == (5880.0, 5940.0) for q in the_plan.queries)
    assert the_plan.targets[0].future == frozenset({2})


# --- from answers to observations ---------------------------------------------------------------

ENDS = (5880.0, 5940.0, 6000.0)


class Answers:
    """Hand-made answers for a plan: every query answered (empty) unless rows are added."""

    def __init__(self, the_plan: Plan) -> None:
        self.plan = the_plan
        self.data: dict[tuple[str, int], list[tuple[dict[str, str], float]]] = {
            (q.promql, round(t * 1000)): [] for q in the_plan.queries for t in q.times
        }

    def add(self, family: Family, window: int, value: float, *, resets: bool = False, **labels: str) -> Answers:
        """A row of ``family``'s answer; a counter's row comes with its group's ``resets()`` row (0) as
        Prometheus answers it, unless one was added."""
        text = self.plan.text(family, 60_000, resets)
        assert text is not None
        end = round(ENDS[window] * 1000)
        self.data[(text, end)].append((labels, value))
        reset_text = self.plan.text(family, 60_000, True)
        if not resets and reset_text is not None:
            group = {k: v for k, v in labels.items() if k in family.reset_group}
            if all(row != group for row, _ in self.data[(reset_text, end)]):
                self.data[(reset_text, end)].append((group, 0.0))
        return self

    def drop(self, family: Family, window: int) -> None:
        del self.data[(self.plan.text(family, 60_000), round(ENDS[window] * 1000))]  # type: ignore[arg-type]


def istio(version: str, **extra: str) -> dict[str, str]:
    return {
        "destination_service_namespace": "ml",
        "destination_service_name": "ranker",
        "destination_version": version,
        **extra,
    }


def look(rollout: ModelRollout = ROLLOUT, at: float = 6000.0) -> tuple[Plan, Answers]:
    the_plan = plan([rollout], {rollout.key: windows(3)}, at=at)
    return the_plan, Answers(the_plan)


def observed(the_plan: Plan, answers: Answers, rollout: ModelRollout = ROLLOUT) -> Any:
    return build_observations(the_plan, answers.data)[rollout.key]


def test_requests_and_error_counts() -> None:
    the_plan, a = look()
    for w in range(3):
        a.add(ISTIO_REQUESTS, w, 100.0, **istio("r1", response_code="200"))
        a.add(ISTIO_REQUESTS, w, 5.0, **istio("r1", response_code="503"))
        a.add(ISTIO_REQUESTS, w, 49.6, **istio("r2", response_code="200"))  # increase() extrapolates
        a.add(ISTIO_REQUESTS, w, 1.0, **istio("r2", response_code="404"))  # not a server error
    a.add(ISTIO_REQUESTS, 0, 999.0, **{**istio("r2", response_code="200"), "destination_service_namespace": "other"})
    obs = observed(the_plan, a)
    assert obs.stable_requests == (105, 105, 105)
    assert obs.canary_requests == (51, 51, 51)
    errors = obs.metric("errors")
    assert errors.series == CountSeries((5, 5, 5), (105, 105, 105), (0, 0, 0), (51, 51, 51))
    assert errors.reason == ""


@pytest.mark.parametrize(
    ("value", "reason"),
    [(math.nan, "NaN in istio_requests_total"), (math.inf, "Inf in"), (-3.0, "negative increase")],
)
def test_nan_inf_and_negative_increments_are_no_data(value: float, reason: str) -> None:
    the_plan, a = look()
    for w in range(3):
        a.add(ISTIO_REQUESTS, w, 100.0, **istio("r1", response_code="200"))
        a.add(ISTIO_REQUESTS, w, 50.0 if w != 1 else value, **istio("r2", response_code="200"))
    obs = observed(the_plan, a)
    assert obs.canary_requests == (50, None, 50)
    errors = obs.metric("errors")
    assert errors.series.canary_trials == (50, None, 50)
    assert errors.reason.startswith("canary: ")
    assert reason in errors.reason and "(window 1)" in errors.reason


def test_a_missing_version_is_no_data_with_the_reason() -> None:
    the_plan, a = look()
    for w in range(3):
        a.add(ISTIO_REQUESTS, w, 100.0, **istio("r1", response_code="200"))
    obs = observed(the_plan, a)
    assert obs.canary_requests == (None, None, None)
    errors = obs.metric("errors")
    assert errors.series.stable_trials == (100, 100, 100)
    assert errors.series.canary_trials == (None, None, None)
    assert errors.reason == "canary: no istio_requests_total series (windows 0-2)"


def test_nothing_at_all_is_no_series() -> None:
    the_plan, a = look()
    obs = observed(the_plan, a)
    assert obs.stable_requests == obs.canary_requests == (None, None, None)
    assert all(m.series is None for m in obs.metrics)
    assert obs.metric("errors").reason.startswith("stable: no istio_requests_total series (windows 0-2)")


def test_a_counter_reset_makes_that_window_no_data() -> None:
    the_plan, a = look()
    for w in range(3):
        a.add(ISTIO_REQUESTS, w, 100.0, **istio("r1", response_code="200"))
        a.add(ISTIO_REQUESTS, w, 50.0, **istio("r2", response_code="200"))
    a.add(ISTIO_REQUESTS, 2, 1.0, resets=True, **istio("r2"))
    obs = observed(the_plan, a)
    assert obs.canary_requests == (50, 50, None)
    assert obs.stable_requests == (100, 100, 100)
    assert obs.metric("errors").reason == "canary: counter reset of istio_requests_total (window 2)"


def test_an_unanswered_query_is_no_data() -> None:
    the_plan, a = look()
    for w in range(3):
        a.add(ISTIO_REQUESTS, w, 100.0, **istio("r1", response_code="200"))
        a.add(ISTIO_REQUESTS, w, 50.0, **istio("r2", response_code="200"))
    a.drop(ISTIO_REQUESTS, 1)
    obs = observed(the_plan, a)
    assert obs.canary_requests == (50, None, 50)
    assert "istio_requests_total not queried (window 1)" in obs.metric("errors").reason


def test_windows_after_the_look_are_no_data() -> None:
    the_plan, a = look(at=5950.0)
    for w in range(2):
        a.add(ISTIO_REQUESTS, w, 10.0, **istio("r1", response_code="200"))
        a.add(ISTIO_REQUESTS, w, 10.0, **istio("r2", response_code="200"))
    obs = observed(the_plan, a)
    assert obs.canary_requests == (10, 10, None)
    assert "window ends after the look (window 2)" in obs.metric("errors").reason


def test_on_victoria_metrics_a_window_without_samples_at_its_edges_is_no_data() -> None:
    """The store counts from the last sample before a window however old: a gap check refuses such windows."""
    the_plan = plan([ROLLOUT], {ROLLOUT.key: windows(3)}, at=6000, gap_seconds=30.0)
    gap = the_plan.gap_text(ISTIO_REQUESTS, 60_000)
    assert gap is not None and "count_over_time(istio_requests_total{" in gap and "[30s] offset 60s" in gap
    assert plan([ROLLOUT], {ROLLOUT.key: windows(3)}, at=6000).gap_text(ISTIO_REQUESTS, 60_000) is None
    a = Answers(the_plan)
    for w in range(3):
        for version in ("r1", "r2"):
            a.add(ISTIO_REQUESTS, w, 100.0, **istio(version, response_code="200"))
            if not (version == "r1" and w == 1):  # the stable's window 1 follows a scrape gap
                a.data[(gap, round(ENDS[w] * 1000))].append((istio(version), 4.0))
    obs = observed(the_plan, a)
    assert obs.stable_requests == (100, None, 100) and obs.canary_requests == (100, 100, 100)
    assert "stable: no sample of istio_requests_total in the 30s before the window's start or end (window 1)" in (
        obs.metric("errors").reason
    )


def test_a_full_window_cache_never_leaves_a_skipped_window_unread() -> None:
    """Entries are dropped before a look is planned, never while it is built: no window reads as not queried."""
    cache = WindowCache(settle=0.0, max_windows=2)
    for _ in range(3):
        the_plan = plan([ROLLOUT], {ROLLOUT.key: windows(3)}, at=6000, cache=cache)
        a = Answers(the_plan)
        for w in range(3):
            for version in ("r1", "r2"):
                if the_plan.text(ISTIO_REQUESTS, 60_000) is not None and (
                    (the_plan.text(ISTIO_REQUESTS, 60_000), round(ENDS[w] * 1000)) in a.data
                ):
                    a.add(ISTIO_REQUESTS, w, 100.0, **istio(version, response_code="200"))
        obs = build_observations(the_plan, a.data, cache, 6000)[ROLLOUT.key]
        assert obs.stable_requests == (100, 100, 100) and obs.canary_requests == (100, 100, 100), obs
        assert len(cache.entries) > 2  # filled past its size during the look, trimmed before the next


def _first_difference(a: Any, b: Any) -> str:
    for field in ("stable_requests", "canary_requests"):
        if getattr(a, field) != getattr(b, field):
            return f"{field}: {getattr(a, field)} != {getattr(b, field)}"
    for x, y in zip(a.metrics, b.metrics, strict=True):
        if x != y:
            return f"{x.name}: {x} != {y}"
    return "windows"


SPLITS = ("0.1", "250", "+Inf", "200", "500", "top", "x", "g1")


Stored = dict[tuple[str, int], list[tuple[dict[str, str], float]]]


def truth(the_plan: Plan, rng: random.Random, doubt: float) -> Stored:
    """Random answers to every query of ``the_plan`` (rows for each version of each rollout, pods,
    splits, NaN, resets, scrape gaps, and with probability ``doubt`` each, unanswered queries), as a store
    holds them once settled."""
    groups: dict[Family, list[dict[str, str]]] = {}
    for target in the_plan.targets:
        for ask in [*target.requests.values(), *(a for m in target.metrics for a in m.asks.values())]:
            for values in (ask.stable, ask.canary):
                for pod in ("p1", "p2") if ask.family.pod else ("",):
                    labels = dict(zip(ask.family.identity, values, strict=True))
                    if ask.family.pod:
                        labels[ask.family.pod] = pod
                    groups.setdefault(ask.family, []).append(labels)
    out: Stored = {}
    gaps = (((family, length, None), text) for (family, length), text in the_plan.gaps.items())
    for (family, _, resets), text in [*the_plan.texts.items(), *gaps]:
        for t in {round(t * 1000) for q in the_plan.queries if q.promql == text for t in q.times}:
            if rng.random() < doubt:
                continue  # never answered
            rows = []
            for labels in groups[family]:
                if rng.random() < (0.1 if resets is False else doubt):
                    continue  # a series missing (no traffic), or a resets() or gap row lost: doubtful
                if resets is None:  # the scrape gap check: a sample close before the window's edges, or none
                    group = {k: v for k, v in labels.items() if k in family.reset_group}
                    rows.append((group, 1.0 if rng.random() >= doubt else 0.0))
                elif resets is True:
                    group = {k: v for k, v in labels.items() if k in family.reset_group}
                    rows.append((group, rng.choice((0.0, 0.0, 0.0, 1.0, math.nan))))
                elif family.split and resets is False:
                    for split in rng.sample(SPLITS, 3):
                        rows.append(({**labels, family.split: split}, rng.choice((0.0, 3.0, 40.0, 41.5, math.nan))))
                else:
                    rows.append((labels, rng.choice((0.0, 1.0, 7.0, 40.0, 1e3, math.nan))))
            out[(text, t)] = rows
    return out


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), gap=st.sampled_from([None, 30.0]), doubt=st.sampled_from([0.0, 0.02, 0.1]))
def test_looks_with_a_window_cache_build_what_full_re_reads_build(seed: int, gap: float | None, doubt: float) -> None:
    """Whatever the answers (doubtful ones included) and whatever a look loses, every look built with the
    cache is the one built from a full re-read of the same answers, and a kept window is never asked again."""
    rng = random.Random(seed)
    rollouts = [ROLLOUT, TRITON_ROLLOUT]
    every = {r.key: windows(8, end=6000.0) for r in rollouts}
    store = truth(plan(rollouts, every, at=7000.0, gap_seconds=gap), rng, doubt)
    settled_asked: list[set[tuple[str, int]]] = []
    cache = WindowCache(settle=60.0)
    for at in (5700.0, 5760.0, 5830.0, 5900.0, 6000.0, 6100.0, 6200.0):
        full_plan = plan(rollouts, every, at=at, gap_seconds=gap)
        cached_plan = plan(rollouts, every, at=at, gap_seconds=gap, cache=cache)
        asked = {(q.promql, round(t * 1000)) for q in cached_plan.queries for t in q.times}
        lost = {key for key in asked if rng.random() < doubt}  # answers of this look lost on the way
        settled_asked.append({key for key in asked if key[1] <= 1000 * (at - 60.0)})
        seen = {key: rows for key, rows in store.items() if key not in lost}
        full = build_observations(full_plan, seen)  # a full re-read that lost the same answers
        kept = build_observations(cached_plan, {k: v for k, v in seen.items() if k in asked}, cache, at)
        for key, observation in full.items():
            assert kept[key] == observation, (at, key, _first_difference(kept[key], observation))
    if doubt == 0.0:  # every settled window is read once, then kept: never asked for again
        assert cache.hits > 0
        for earlier, later in itertools.pairwise(settled_asked):
            assert not earlier & later


def test_the_window_cache_stays_bounded_and_never_reuses_a_rollouts_id() -> None:
    """Entries, signatures (one per release of each rollout) and shared keys are all bounded; a forgotten
    signature's id is never handed out again, so its entries can never be read as another's."""
    cache = WindowCache(settle=0.0, max_windows=5, max_signatures=3, max_interned=4)
    ids = []
    for release in range(20):
        ids.append(cache.signature(f"rollout-release-{release}".encode()))
        window = Window(60.0 * release, 60.0 * (release + 1), 0.1)
        cache.put(ids[-1], window, ("p99", "stable"), ({float(release): 1}, ()))
        cache.complete(ids[-1], window, True)
        cache.trim()
        assert len(cache.entries) <= 5 and len(cache._signatures) <= 3 and len(cache._interned) <= 4
    assert ids == sorted(set(ids))  # all different
    assert cache.signature(b"rollout-release-0") not in ids  # forgotten, then seen again: a new id
    kept = Window(60.0 * 19, 60.0 * 20, 0.1)
    values = cache.kept(ids[19], kept)
    assert values is not None and unpacked(values["p99", "stable"]) == ({19.0: 1}, ())


def test_a_bound_written_as_minus_zero_is_zero() -> None:
    """'-0' and '0' are one bound, and it is +0.0 whichever came first (a kept window is then the same bits)."""
    the_plan, a = look()
    for le, n in (("-0", 1.0), ("100", 2.0), ("+Inf", 3.0)):
        a.add(ISTIO_BUCKETS, 0, n, **istio("r1", le=le))
        a.add(ISTIO_BUCKETS, 0, n, **istio("r2", le=le))
    series = observed(the_plan, a).metric("p99").series
    assert isinstance(series, HistogramSeries) and series.edges[0] == 0.0
    assert math.copysign(1.0, series.edges[0]) == 1.0


def test_histograms_in_seconds_on_the_shared_edges() -> None:
    the_plan, a = look()
    for w in range(3):
        for le, n in (("100", 10.0), ("250", 20.0), ("+Inf", 30.0)):
            a.add(ISTIO_BUCKETS, w, n, **istio("r1", le=le))
        for le, n in (("100", 5.0), ("250", 8.0), ("1000", 9.0), ("+Inf", 12.0)):  # one more bound
            a.add(ISTIO_BUCKETS, w, n, **istio("r2", le=le))
    series = observed(the_plan, a).metric("p99").series
    assert isinstance(series, HistogramSeries)
    assert series.edges == (0.1, 0.25, math.inf)
    assert series.stable == ((10, 20, 30),) * 3
    assert series.canary == ((5, 8, 12),) * 3


def test_one_bound_written_two_ways_is_one_bucket() -> None:
    """'100' and '100.0' (another client library, or Prometheus 3's normalised le) count together."""
    the_plan, a = look()
    for w in range(3):
        for version in ("r1", "r2"):
            for le, n in (("100", 6.0), ("100.0", 4.0), ("250", 20.0), ("+Inf", 30.0)):
                a.add(ISTIO_BUCKETS, w, n, **istio(version, le=le))
    series = observed(the_plan, a).metric("p99").series
    assert series.edges == (0.1, 0.25, math.inf)
    assert series.stable == ((10, 20, 30),) * 3


def test_buckets_that_are_not_cumulative_are_no_data() -> None:
    the_plan, a = look()
    for w in range(3):
        for le, n in (("100", 10.0), ("250", 20.0 if w else 5.0), ("+Inf", 30.0)):
            a.add(ISTIO_BUCKETS, w, n, **istio("r1", le=le))
            a.add(ISTIO_BUCKETS, w, n, **istio("r2", le=le))
    data = observed(the_plan, a).metric("p99")
    assert data.series.stable[0] is None and data.series.stable[1] is not None
    assert "not cumulative" in data.reason


def pod(version: str, name: str) -> dict[str, str]:
    return {"namespace": "ml", "version": version, "pod": name}


def family(series: PodSeries) -> Family:
    return series.family(Labels(), triton_mode=False)


def test_triton_latency_per_pod_in_seconds_dropping_a_reset_pod() -> None:
    the_plan, a = look()
    for w in range(3):
        for version, us in (("r1", 2_000_000.0), ("r2", 3_000_000.0)):
            for p in ("p0", "p1"):
                a.add(family(triton.DURATION), w, us, **pod(version, f"{version}-{p}"))
                a.add(family(triton.SUCCESS), w, 100.0, **pod(version, f"{version}-{p}"))
    a.add(family(triton.SUCCESS), 1, 1.0, resets=True, **pod("r2", "r2-p1"))
    data = observed(the_plan, a).metric("latency")
    assert isinstance(data.series, GaugeSeries)
    assert data.series.stable == ((0.02, 0.02),) * 3
    assert data.series.canary == ((0.03, 0.03), (0.03,), (0.03, 0.03))
    assert data.reason == "canary: 1 pod(s) dropped (counter reset, NaN, Inf or no inferences) (window 1)"


def test_gpu_gauges_memory_and_cost_per_pod() -> None:
    the_plan, a = look()
    for w in range(3):
        for version in ("r1", "r2"):
            who = pod(version, f"{version}-p0")
            a.add(family(dcgm.GPU_UTILIZATION), w, 50.0, **who)
            a.add(family(dcgm.GPU_UTILIZATION_SUM), w, 100.0, **who)  # two GPUs at 50 %
            a.add(family(dcgm.FB_USED), w, 3.0, **who)
            a.add(family(dcgm.FB_FREE), w, 1.0, **who)
            a.add(family(triton.GPU_UTILIZATION), w, 0.4, **who)
            a.add(family(triton.GPU_USED), w, 2.0, **who)
            a.add(family(triton.GPU_TOTAL), w, 8.0, **who)
            a.add(family(triton.INFERENCES), w, 300.0 if version == "r1" else 0.0, **who)
    obs = observed(the_plan, a)
    assert obs.metric("dcgm-util").series.stable == ((0.5,),) * 3
    assert obs.metric("dcgm-mem").series.canary == ((0.75,),) * 3
    assert obs.metric("triton-util").series.stable == ((0.4,),) * 3
    assert obs.metric("triton-mem").series.stable == ((0.25,),) * 3
    cost = obs.metric("cost")
    assert cost.series.stable == ((pytest.approx(1.0 * 60 / 300),),) * 3  # 1 GPU-second per second, 300 inferences
    assert cost.series.canary == (None, None, None)  # no inferences: no cost per inference
    assert "no pod with usable GpuSecondsPerInference data" in cost.reason


def test_pods_sharing_a_gpu_are_not_attributable_on_device_wide_series() -> None:
    """DCGM gives every pod on a GPU the whole GPU's value: those pods are dropped, said in the reason."""
    the_plan, a = look()
    on_gpu = {"r1-a": "GPU-1", "r1-b": "GPU-2", "r2-a": "GPU-1"}  # r1-a and the canary share GPU-1
    for w in range(3):
        for name, gpu in on_gpu.items():
            who = pod(name[:2], name)
            value = 90.0 if gpu == "GPU-1" else 40.0  # the device's, whoever runs on it
            a.add(family(dcgm.GPU_UTILIZATION), w, value, **who)
            a.add(family(dcgm.DEVICES), w, 1.0, UUID=gpu, **who)
            a.add(family(triton.GPU_UTILIZATION), w, value / 100, **who)
            a.add(family(triton.DEVICES), w, 1.0, gpu_uuid=gpu, **who)
    obs = observed(the_plan, a)
    for name in ("dcgm-util", "triton-util"):
        data = obs.metric(name)
        assert data.series.stable == ((0.4,),) * 3, name  # r1-b alone on GPU-2 is attributable
        assert data.series.canary == (None,) * 3, name
        assert "not attributable" in data.reason and "whole GPU's" in data.reason, name


def test_a_gpu_shared_within_one_version_is_not_attributable_either() -> None:
    the_plan, a = look()
    for w in range(3):
        for name, gpu in (("r1-a", "GPU-1"), ("r1-b", "GPU-1"), ("r2-a", "GPU-2")):
            who = pod(name[:2], name)
            a.add(family(dcgm.GPU_UTILIZATION), w, 70.0, **who)
            a.add(family(dcgm.DEVICES), w, 1.0, UUID=gpu, **who)
    data = observed(the_plan, a).metric("dcgm-util")
    assert data.series.stable == (None,) * 3 and data.series.canary == ((0.7,),) * 3
    assert data.reason.startswith("stable: not attributable")


def test_agent_kinds_are_each_pods_own_on_a_shared_gpu() -> None:
    the_plan, a = look()
    total = 80e9
    for w in range(3):
        # stable and canary share GPU-1; the canary uses twice the memory and SM time
        a.add(agent.MEMORY_USED, w, 12e9, **pod("r1", "r1-a"))  # answers are per pod (summed by PromQL)
        a.add(agent.MEMORY_USED, w, 24e9, **pod("r2", "r2-a"))
        a.add(agent.MEMORY_TOTAL, w, total, **pod("r1", "r1-a"))
        a.add(agent.MEMORY_TOTAL, w, total, **pod("r2", "r2-a"))
        a.add(agent.SM_SHARE, w, 0.6, **pod("r1", "r1-a"))  # on two GPUs
        a.add(agent.SM_SHARE, w, 0.9, **pod("r2", "r2-a"))
        a.add(agent.GPUS, w, 2.0, **pod("r1", "r1-a"))
        a.add(agent.GPUS, w, 1.0, **pod("r2", "r2-a"))
        a.add(agent.GPU_SECONDS, w, 18.0, namespace="ml", version="r1")  # 0.3 x 60 s
        a.add(agent.GPU_SECONDS, w, 54.0, namespace="ml", version="r2")
        a.add(ISTIO_REQUESTS, w, 570.0, **istio("r1", response_code="200"))
        a.add(ISTIO_REQUESTS, w, 30.0, **istio("r1", response_code="503"))
        a.add(ISTIO_REQUESTS, w, 300.0, **istio("r2", response_code="200"))
    obs = observed(the_plan, a)
    assert obs.metric("agent-mem").series.stable == ((pytest.approx(0.15),),) * 3
    assert obs.metric("agent-mem").series.canary == ((pytest.approx(0.3),),) * 3
    assert obs.metric("agent-util").series.stable == ((0.3,),) * 3
    assert obs.metric("agent-util").series.canary == ((0.9,),) * 3
    cost = obs.metric("agent-cost").series
    assert cost.stable == ((pytest.approx(18.0 / 600),),) * 3  # every request, failed ones too
    assert cost.canary == ((pytest.approx(54.0 / 300),),) * 3


def test_agent_cost_is_no_data_across_a_counter_reset_or_without_requests() -> None:
    the_plan, a = look()
    for w in range(3):
        a.add(agent.GPU_SECONDS, w, 10.0, resets=w == 1, namespace="ml", version="r1")
        a.add(agent.GPU_SECONDS, w, 10.0, namespace="ml", version="r2")
        a.add(ISTIO_REQUESTS, w, 100.0, **istio("r1", response_code="200"))
    data = observed(the_plan, a).metric("agent-cost")
    assert data.series.stable == ((0.1,), None, (0.1,))
    assert data.series.canary == (None,) * 3
    assert "counter reset of canarist_gpu_seconds_total (window 1)" in data.reason
    assert "canary: no istio_requests_total series" in data.reason


def test_hami_kinds_per_pod() -> None:
    the_plan, a = look()
    plan_of = {m.name: m for m in the_plan.targets[0].metrics}
    used, limit = (plan_of["hami-mem"].asks[r].family for r in (Role.USED, Role.TOTAL))
    util = plan_of["hami-util"].asks[Role.UTILIZATION].family
    for w in range(3):
        for version, name, share in (("r1", "r1-a", 0.25), ("r2", "r2-a", 0.5)):
            a.add(used, w, share * 10e9, namespace="ml", version=version, pod=name)
            a.add(limit, w, 10e9, namespace="ml", version=version, pod=name)
            a.add(util, w, 100 * share, namespace="ml", version=version, pod=name)
    obs = observed(the_plan, a)
    assert obs.metric("hami-mem").series.stable == ((0.25,),) * 3
    assert obs.metric("hami-mem").series.canary == ((0.5,),) * 3
    assert obs.metric("hami-util").series.canary == ((0.5,),) * 3
    assert {used.metric, limit.metric, util.metric} == {
        hami.MEMORY_USED[0],
        hami.MEMORY_LIMIT[0],
        hami.UTILIZATION[0],
    }


def outputs_family(name: str) -> Family:
    plan_of = {m.name: m for m in look()[0].targets[0].metrics}
    return plan_of[name].asks[Role.BUCKETS].family


def test_score_histograms_become_counts_per_score_range_on_the_shared_bounds() -> None:
    the_plan, a = look()
    scores = outputs_family("scores")
    who = {"namespace": "ml", "model": "ranker"}
    for w in range(3):
        for le, n in (("0.25", 50.0), ("0.5", 80.0), ("0.75", 90.0), ("+Inf", 100.0)):
            a.add(scores, w, n, version="r1", le=le, **who)
        for le, n in (("0.25", 10.0), ("0.5", 20.0), ("0.6", 25.0), ("0.75", 60.0), ("+Inf", 100.0)):
            a.add(scores, w, n if w != 1 or le != "0.75" else 10.0, version="r2", le=le, **who)  # window 1 broken
        a.add(scores, w, 999.0, version="r2", le="+Inf", namespace="team-b", model="ranker")
    data = observed(the_plan, a).metric("scores")
    assert isinstance(data.series, DistributionSeries)
    assert data.series.buckets == ("<= 0.25", "(0.25, 0.5]", "(0.5, 0.75]", "(0.75, inf]")
    assert data.series.stable == ((50, 30, 10, 10),) * 3
    assert data.series.canary == ((10, 10, 40, 40), None, (10, 10, 40, 40))
    assert data.series.positive_from == 2  # scores above 0.5
    assert "canary: ranker_score_bucket buckets are not cumulative (window 1)" in data.reason


def test_a_score_bound_written_two_ways_is_one_bucket() -> None:
    the_plan, a = look()
    scores = outputs_family("scores")
    who = {"namespace": "ml", "model": "ranker"}
    for w in range(3):
        for version in ("r1", "r2"):
            for le, n in (("0.5", 30.0), ("0.50", 20.0), ("+Inf", 100.0)):
                a.add(scores, w, n, version=version, le=le, **who)
    data = observed(the_plan, a).metric("scores")
    assert data.series.buckets == ("<= 0.5", "(0.5, inf]")
    assert data.series.stable == ((50, 50),) * 3


def test_class_counters_become_counts_per_class_the_positive_ones_last() -> None:
    the_plan, a = look()
    classes = outputs_family("classes")
    who = {"namespace": "ml", "model": "ranker"}
    for w in range(3):
        for label, n in (("top", 30.0), ("middle", 50.0), ("bottom", 20.0)):
            a.add(classes, w, n, version="r1", label=label, **who)
        a.add(classes, w, 70.0, version="r2", label="top", **who)
        a.add(classes, w, 30.0, version="r2", label="bottom", **who)  # never predicts middle
    data = observed(the_plan, a).metric("classes")
    assert data.series.buckets == ("bottom", "middle", "top")
    assert data.series.stable == ((20, 50, 30),) * 3
    assert data.series.canary == ((30, 0, 70),) * 3
    assert data.series.positive_from == 2


def test_triton_error_counts_sum_pods_and_default_failures_to_zero() -> None:
    the_plan, a = look()
    for w in range(3):
        a.add(family(triton.SUCCESS), w, 90.0, **pod("r1", "a"))
        a.add(family(triton.SUCCESS), w, 10.0, **pod("r1", "b"))
        a.add(family(triton.FAILURE), w, 4.0, **pod("r1", "a"))
        a.add(family(triton.SUCCESS), w, 50.0, **pod("r2", "c"))
    series = observed(the_plan, a).metric("failures").series
    assert series == CountSeries((4,) * 3, (104,) * 3, (0,) * 3, (50,) * 3)


def custom(name: str) -> Family:
    return Family(name, Reduce.INCREASE, ("namespace", "model", "model_version"))


def test_custom_ratio_counts() -> None:
    the_plan, a = look()
    for w in range(3):
        a.add(custom("labelled_total"), w, 100.0, namespace="ml", model="ranker", model_version="r1")
        a.add(custom("correct_total"), w, 90.0, namespace="ml", model="ranker", model_version="r1")
        a.add(custom("labelled_total"), w, 40.0, namespace="ml", model="ranker", model_version="r2")
        if w == 1:
            a.add(custom("correct_total"), w, 41.0, namespace="ml", model="ranker", model_version="r2")
        a.add(custom("labelled_total"), w, 7.0, namespace="ml", model="other", model_version="r2")
        a.add(custom("labelled_total"), w, 900.0, namespace="team-b", model="ranker", model_version="r2")
    data = observed(the_plan, a).metric("accuracy")
    assert data.series == CountSeries((90,) * 3, (100,) * 3, (0, None, 0), (40, None, 40))
    assert data.reason == "canary: correct_total grew more than labelled_total (window 1)"


def test_triton_mode_requests_and_unsupported_metrics() -> None:
    the_plan = plan([TRITON_ROLLOUT], {TRITON_ROLLOUT.key: windows(3)}, at=6000)
    a = Answers(the_plan)
    success = _triton_family(triton.SUCCESS)
    for w in range(3):
        a.add(success, w, 80.0, namespace="docs", model="ocr", version="3", pod="t0")
        a.add(success, w, 20.0, namespace="docs", model="ocr", version="4", pod="t0")
    obs = observed(the_plan, a, TRITON_ROLLOUT)
    assert obs.stable_requests == (80, 80, 80) and obs.canary_requests == (20, 20, 20)
    assert obs.metric("p99").series is None and "TritonVersion" in obs.metric("p99").reason


def _triton_family(series: PodSeries) -> Family:
    return series.family(Labels(), triton_mode=True)


def test_no_data_observation() -> None:
    obs = no_data(ROLLOUT, windows(2), "Prometheus unavailable: connection refused")
    assert obs.stable_requests == obs.canary_requests == (None, None)
    assert {m.reason for m in obs.metrics} == {"Prometheus unavailable: connection refused"}
    assert len(obs.metrics) == len(ROLLOUT.spec.analysis.metrics)


def test_results_are_split_per_rollout_by_exact_labels() -> None:
    rollouts: Sequence[ModelRollout] = fleet(2)
    the_plan = plan(rollouts, {r.key: windows(3) for r in rollouts}, at=6000)
    a = Answers(the_plan)
    for w in range(3):
        for i, n in ((0, 10.0), (1, 20.0)):
            for v in ("r1", "r2"):
                labels = {
                    "destination_service_namespace": f"ns{i}",
                    "destination_service_name": f"svc{i}",
                    "destination_version": v,
                    "response_code": "200",
                }
                a.add(ISTIO_REQUESTS, w, n, **labels)
        # matched by the regex union, belonging to neither rollout
        a.add(ISTIO_REQUESTS, w, 1000.0, **{**labels, "destination_service_namespace": "ns0"})
    obs = build_observations(the_plan, a.data)
    assert obs["ns0/svc0"].canary_requests == (10, 10, 10)
    assert obs["ns1/svc1"].canary_requests == (20, 20, 20)


# --- CustomRatio: each rollout reads only its own namespace's and its own labels' series ----------

_NAME = st.from_regex(r"[a-z][a-z0-9]{0,5}", fullmatch=True)
_QUERY = re.compile(r"^sum by \(([^)]*)\) \((increase|resets)\(([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})\[[0-9]+m?s\]\)\)$")


def ratio_rollout(namespace: str, versions: tuple[str, str], match: dict[str, str], ns_label: str) -> ModelRollout:
    """A rollout whose only metric is a CustomRatio, its versions named by the pod label ``version``."""
    stable, canary = versions
    doc = {
        "apiVersion": "canarist.io/v1alpha1",
        "kind": "ModelRollout",
        "metadata": {"name": "model", "namespace": namespace},
        "spec": {
            "service": {"name": "model", "port": 8000},
            "stable": {"name": stable, "labels": {"version": stable}},
            "canary": {"name": canary, "labels": {"version": canary}},
            "analysis": {
                "metrics": [
                    {
                        "name": "accuracy",
                        "kind": "CustomRatio",
                        "ratio": {
                            "success": "ok_total",
                            "total": "all_total",
                            "versionLabel": "version",
                            "namespaceLabel": ns_label,
                            "matchLabels": match,
                        },
                        "margin": {"absolute": "1%"},
                    }
                ]
            },
        },
    }
    (rollout,) = load(yaml.safe_dump(doc), "ratio.yaml")
    return rollout


def _selects(selector_text: str, labels: dict[str, str]) -> bool:
    """Whether a PromQL selector matches a label set (a missing label is the empty string; regexes anchored)."""
    for name, op, value in parse_selector(selector_text):
        have = labels.get(name, "")
        if (op == "=" and have != value) or (op == "!=" and have == value):
            return False
        if (op == "=~" and not re.fullmatch(value, have)) or (op == "!~" and re.fullmatch(value, have)):
            return False
    return True


def evaluate(promql: str, series: Sequence[tuple[str, dict[str, str], float]]) -> list[tuple[dict[str, str], float]]:
    """What Prometheus answers to a catalog query over constant-increase ``series`` (no resets)."""
    m = _QUERY.match(promql)
    assert m, promql
    by, fn, metric, sel = [g.strip() for g in m.group(1).split(",")], m.group(2), m.group(3), m.group(4)
    groups: dict[tuple[str, ...], float] = {}
    for name, labels, value in series:
        if name == metric and _selects(sel, labels):
            key = tuple(labels.get(k, "") for k in by)
            groups[key] = groups.get(key, 0.0) + (0.0 if fn == "resets" else value)
    return [({k: v for k, v in zip(by, key, strict=True) if v}, total) for key, total in groups.items()]


@settings(max_examples=150, deadline=None)
@given(
    namespaces=st.lists(_NAME, min_size=2, max_size=2, unique=True),
    versions=st.lists(_NAME, min_size=2, max_size=2, unique=True),
    keys=st.lists(st.sampled_from(["model", "app", "team"]), min_size=1, max_size=2, unique=True),
    values=st.lists(_NAME, min_size=4, max_size=4),
    ns_label=st.sampled_from(["namespace", "kubernetes_namespace"]),
    data=st.data(),
)
def test_custom_ratio_selects_only_the_rollouts_own_series(
    *, namespaces: list[str], versions: list[str], keys: list[str], values: list[str], ns_label: str, data: Any
) -> None:
    """Rollouts in different namespaces with the same version names (and maybe the same matchLabels)
    never read each other's series, nor a stranger's, nor series without the namespace label."""
    same_labels = data.draw(st.booleans())
    match_a = {k: values[i] for i, k in enumerate(keys)}
    match_b = match_a if same_labels else {k: values[2 + i] for i, k in enumerate(keys)}
    stable, canary = versions
    rollouts = [
        ratio_rollout(namespaces[0], (stable, canary), match_a, ns_label),
        ratio_rollout(namespaces[1], (stable, canary), match_b, ns_label),
    ]
    universe: list[tuple[str, dict[str, str], float]] = []
    bit = 1
    for ns in (*namespaces, "stranger", None):
        for match in (match_a, match_b, {"model": "intruder"}):
            for version in (stable, canary, "other"):
                labels = {**match, "version": version, "pod": f"p{len(universe)}"}
                if ns is not None:
                    labels[ns_label] = ns
                universe.append(("ok_total", labels, 1.0))
                # every canary total its own power of two: a sum tells exactly which series it holds
                universe.append(("all_total", labels, float(2**bit) if version == canary else 3.0))
                bit += version == canary
    ends = windows(2)
    # each rollout alone: its query selects only series of its namespace and its matchLabels
    for rollout, match in zip(rollouts, (match_a, match_b), strict=True):
        the_plan = plan([rollout], {rollout.key: ends}, at=6000)
        for query in the_plan.queries:
            m = _QUERY.match(query.promql)
            if m is None or m.group(3) not in ("ok_total", "all_total"):
                continue
            for name, labels, _ in universe:
                if name == m.group(3) and _selects(m.group(4), labels):
                    assert labels.get(ns_label) == rollout.metadata.namespace, (query.promql, labels)
                    assert all(labels.get(k) == v for k, v in match.items()), (query.promql, labels)
    # together, in one union query per family: each rollout's counts are exactly its own series'
    the_plan = plan(rollouts, {r.key: ends for r in rollouts}, at=6000)
    answers = {(q.promql, round(t * 1000)): evaluate(q.promql, universe) for q in the_plan.queries for t in q.times
               if _QUERY.match(q.promql) and "istio" not in q.promql}  # fmt: skip
    observations = build_observations(the_plan, answers)
    for rollout, match in zip(rollouts, (match_a, match_b), strict=True):
        series = observations[rollout.key].metric("accuracy")
        assert series is not None and isinstance(series.series, CountSeries), series
        own = [
            v
            for name, labels, v in universe
            if name == "all_total"
            and labels.get(ns_label) == rollout.metadata.namespace
            and all(labels.get(k) == x for k, x in match.items())
            and labels["version"] == canary
        ]
        assert series.series.canary_trials == (round(sum(own)),) * 2


# --- fine histograms: at most MAX_HISTOGRAM_EDGES bounds, the SLO's kept ---------------------------


@settings(max_examples=200, deadline=None)
@given(
    finite=st.lists(st.floats(0.0001, 100.0), min_size=1, max_size=400, unique=True),
    keep=st.lists(st.floats(0.0, 200.0), max_size=3),
    cap=st.integers(3, 80),
)
def test_coarsened_bounds_are_few_and_keep_the_slo_edges(finite: list[float], keep: list[float], cap: int) -> None:
    edges = (*sorted(finite), math.inf)
    got = coarsen(edges, keep, cap)
    assert len(got) <= cap
    assert set(got) <= set(edges) and list(got) == sorted(got) and got[-1] == math.inf
    if len(edges) <= cap:
        assert got == edges
        return
    if cap - 1 - 2 * len(keep) > 1:  # room for the spread: the first and last finite bounds are in it
        assert got[0] == edges[0] and got[-2] == edges[-2]
    for value in keep[: (cap - 1) // 2]:  # the SLO's breach and compliance edges are kept, room permitting
        above = [e for e in edges[:-1] if e >= value]
        below = [e for e in edges[:-1] if e <= value]
        assert not above or above[0] in got
        assert not below or below[-1] in got


def test_a_histogram_of_ten_thousand_buckets_is_coarsened_to_the_cap() -> None:
    """10,000 buckets per version and window come out on at most MAX_HISTOGRAM_EDGES bounds, exactly."""
    the_plan, a = look()
    bounds = [f"{i / 10:g}" for i in range(1, 10_000)] + ["+Inf"]  # 0.1 ms .. 999.9 ms, and 250 ms among them
    for w in range(3):
        for version, scale in (("r1", 1.0), ("r2", 2.0)):
            for i, le in enumerate(bounds):
                a.add(ISTIO_BUCKETS, w, scale * (i + 1), **istio(version, le=le))
    data = observed(the_plan, a).metric("p99")
    series = data.series
    assert isinstance(series, HistogramSeries)
    assert len(series.edges) <= MAX_HISTOGRAM_EDGES and series.edges[-1] == math.inf
    assert 0.25 in series.edges  # the SLO (p99 <= 250ms) bound itself
    assert "10000 bucket bounds coarsened to" in data.reason
    index = {float(le) / 1000: i for i, le in enumerate(bounds)}
    for e, got in zip(series.edges, series.stable[0], strict=True):  # exact counts at every kept bound
        assert got == index[e] + 1
    for e, got in zip(series.edges, series.canary[0], strict=True):
        assert got == 2 * (index[e] + 1)
