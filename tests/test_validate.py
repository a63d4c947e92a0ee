"""``canarist validate``: every malformed policy is refused with one located, actionable line.

Each case is a small mutation of a valid policy (policies/fraud-detector-istio.yaml), written to a
file and checked through the CLI: exit status 2, a ``FILE:LINE:COL: FIELD: REASON`` line naming
the expected field and reason, every output line in that format, and never a traceback. The whole
table also runs once through the real ``canarist`` executable, and the hostile inputs (alias bomb,
huge file, deep nesting, bad encoding) each run in their own process.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result

from controller.cli.main import cli

ROOT = Path(__file__).resolve().parent.parent
POLICIES = ROOT / "policies"
EXAMPLES = sorted(POLICIES.glob("*.yaml"))
BASE_FILE = POLICIES / "fraud-detector-istio.yaml"
BASE_TEXT = BASE_FILE.read_text(encoding="utf-8")
BASE: dict[str, Any] = yaml.safe_load(BASE_TEXT)
CANARIST = Path(sys.executable).parent / "canarist"
EXIT_INVALID = 2

# --- building malformed policies --------------------------------------------------------------

Key = str | int
Mutator = Callable[[dict[str, Any]], None]
_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def _keys(path: str | list[Key]) -> list[Key]:
    """``'spec.metrics[1].slo'`` -> ``['spec', 'metrics', 1, 'slo']`` (lists pass through)."""
    if isinstance(path, list):
        return path
    return [name if name else int(index) for name, index in _PART.findall(path)]


def _parent(data: Any, keys: list[Key]) -> Any:
    for key in keys[:-1]:
        data = data.setdefault(key, {}) if isinstance(data, dict) else data[key]
    return data


def put(path: str | list[Key], value: Any) -> Mutator:
    """Set the field at ``path`` (creating missing mappings on the way)."""

    def mutate(data: dict[str, Any]) -> None:
        keys = _keys(path)
        _parent(data, keys)[keys[-1]] = copy.deepcopy(value)

    return mutate


def drop(path: str | list[Key]) -> Mutator:
    def mutate(data: dict[str, Any]) -> None:
        keys = _keys(path)
        del _parent(data, keys)[keys[-1]]

    return mutate


def add_metric(metric: dict[str, Any]) -> Mutator:
    """Append a metric: it becomes spec.analysis.metrics[2]."""

    def mutate(data: dict[str, Any]) -> None:
        data["spec"]["analysis"]["metrics"].append(copy.deepcopy(metric))

    return mutate


def dump(data: Any) -> bytes:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True).encode("utf-8")


def replace_once(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, f"{old!r} must occur exactly once in the base text"
    return text.replace(old, new)


@dataclass(frozen=True)
class Bad:
    """A malformed policy and the diagnostic it must produce.

    ``reason`` is a literal fragment of the reason, or a compiled regular expression. ``at`` pins
    the position: an exact ``(line, column)``, or a marker string whose first occurrence in the
    file is where the diagnostic must point.
    """

    id: str
    make: Callable[[], bytes]
    field: str
    reason: str | re.Pattern[str]
    at: tuple[int, int] | str | None = None


def mut(id: str, *mutators: Mutator, field: str, reason: str | re.Pattern[str], at: Any = None) -> Bad:
    def make() -> bytes:
        data = copy.deepcopy(BASE)
        for mutate in mutators:
            mutate(data)
        return dump(data)

    return Bad(id, make, field, reason, at)


def edit(id: str, old: str, new: str, *, field: str, reason: str | re.Pattern[str], at: Any = None) -> Bad:
    """The base file's own text with one substring replaced (comments and lines kept)."""
    return Bad(id, lambda: replace_once(BASE_TEXT, old, new).encode("utf-8"), field, reason, at)


def raw(id: str, content: bytes | Callable[[], bytes], *, field: str = "", reason: Any, at: Any = None) -> Bad:
    make = content if callable(content) else (lambda: content)
    return Bad(id, make, field, reason, at)


def _alias_bomb(levels: int = 9) -> bytes:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    names = "abcdefghijklmnopqrstuvwxyz"
    for i in range(1, levels + 1):
        lines.append(f"{names[i]}: &{names[i]} [{', '.join([f'*{names[i - 1]}'] * 9)}]")
    return ("\n".join(lines) + "\n").encode()


def _big_file() -> bytes:
    """A valid policy padded with a comment to 10 MB."""
    return BASE_TEXT.encode() + b"# " + b"x" * (10 * 1024 * 1024) + b"\n"


def _deep(depth: int = 10_000) -> bytes:
    return b"apiVersion: canarist.io/v1alpha1\nkind: ModelRollout\nmetadata: " + b"[" * depth + b"]" * depth + b"\n"


def _deep_maps(depth: int = 10_000) -> bytes:
    return b"spec: " + b"{a: " * depth + b"1" + b"}" * depth + b"\n"


LATENCY = "spec.analysis.metrics[0]"  # IstioLatency, quantile 0.99, slo.max 250ms, margin.relative 5%
ERRORS = "spec.analysis.metrics[1]"  # IstioErrorRate, slo.max 2%, margin.absolute 0.25%
DNS = "must be a DNS-1123 label"
LABEL_VALUE = "must be a Kubernetes label value"
LABEL_KEY = "must be a Kubernetes label key"
DURATION = "must be a duration with a unit"
SAFE_TEXT = "must not contain quotes, backslashes, braces or control characters"
RE2 = re.compile(r"RE2|not supported|invalid regular expression")
CUSTOM: dict[str, Any] = {
    "name": "accuracy",
    "kind": "CustomRatio",
    "higherIsBetter": True,
    "ratio": {"success": "correct_total", "total": "labelled_total", "matchLabels": {"model": "fraud"}},
    "margin": {"absolute": "1%"},
}


def custom(**changes: Any) -> dict[str, Any]:
    metric = copy.deepcopy(CUSTOM)
    for key, value in changes.items():
        if value is None:
            metric.pop(key, None)
        else:
            metric[key] = value
    return metric


def ratio(**changes: Any) -> dict[str, Any]:
    return {**CUSTOM["ratio"], **changes}


def match(*cohorts: dict[str, Any]) -> Mutator:
    return put("spec.routing.match", list(cohorts))


def header(value: dict[str, Any], name: str = "x-cohort") -> Mutator:
    return match({"name": "beta", "headers": {name: value}})


def triton(stable: int = 3, canary: int = 4) -> Mutator:
    return put(
        "spec.routing",
        {"mode": "TritonVersion", "triton": {"model": "fraud", "stableVersion": stable, "canaryVersion": canary}},
    )


OUTPUTS: dict[str, Any] = {"histogram": "fraud_score", "matchLabels": {"model": "fraud"}, "positiveAbove": 0.5}


def outputs_metric(**fields: Any) -> dict[str, Any]:
    """A PredictionDistribution metric (valid unless ``fields`` break it; None drops a field)."""
    metric = {
        "name": "predictions",
        "kind": "PredictionDistribution",
        "outputs": OUTPUTS,
        "margin": {"absolute": "10%"},
    }
    metric.update(fields)
    return {k: v for k, v in metric.items() if v is not None}


CASES: list[Bad] = [
    # --- unknown fields, with a "did you mean" hint, at several depths ---
    mut("unknown-top", put("apiversion", "x"), field="apiversion", reason="unknown field (did you mean 'apiVersion'?)"),
    mut("unknown-top-spec", put("specc", {}), field="specc", reason="(did you mean 'spec'?)", at="specc:"),
    mut("unknown-metadata", put("metadata.nmae", "x"), field="metadata.nmae", reason="(did you mean 'name'?)"),
    edit(
        "unknown-strategy",
        "    interval: 1m\n",
        "    interval: 1m\n    intervl: 2m\n",
        field="spec.strategy.intervl",
        reason="unknown field (did you mean 'interval'?)",
        at=(47, 5),
    ),
    edit(
        "unknown-in-list-item",
        "        quantile: 0.99\n",
        "        quantile: 0.99\n        quantil: 0.95\n",
        field=f"{LATENCY}.quantil",
        reason="(did you mean 'quantile'?)",
        at=(57, 9),
    ),
    edit(
        "unknown-deep-in-list-item",
        "          max: 250ms\n",
        "          max: 250ms\n          maxx: 300ms\n",
        field=f"{LATENCY}.slo.maxx",
        reason="(did you mean 'max'?)",
        at=(59, 11),
    ),
    mut(
        "unknown-traffic-policy",
        put("spec.trafficPolicy.connectionPool.http.http2MaxRequest", 5),
        field="spec.trafficPolicy.connectionPool.http.http2MaxRequest",
        reason="(did you mean 'http2MaxRequests'?)",
        at="http2MaxRequest:",
    ),
    mut(
        "unknown-snake-case",
        put("spec.strategy.min_requests", 3),
        field="spec.strategy.min_requests",
        reason="(did you mean 'minRequests'?)",
    ),
    mut(
        "unknown-in-cookie-match",
        match({"cookie": {"name": "beta", "value": "on", "vaule": "on"}}),
        field="spec.routing.match[0].cookie.vaule",
        reason="(did you mean 'value'?)",
    ),
    mut(
        "unknown-in-header-match",  # a field under a dict value (headers.<name>) gets a hint too
        header({"exactt": "beta"}),
        field="spec.routing.match[0].headers.x-cohort.exactt",
        reason="unknown field (did you mean 'exact'?)",
    ),
    # --- missing required fields ---
    mut("missing-apiVersion", drop("apiVersion"), field="apiVersion", reason="required field is missing"),
    mut("missing-kind", drop("kind"), field="kind", reason="required field is missing"),
    mut("missing-metadata-name", drop("metadata.name"), field="metadata.name", reason="required field is missing"),
    mut("missing-service", drop("spec.service"), field="spec.service", reason="required field is missing"),
    mut("missing-service-port", drop("spec.service.port"), field="spec.service.port", reason="required"),
    mut("missing-canary", drop("spec.canary"), field="spec.canary", reason="required field is missing"),
    mut("missing-analysis", drop("spec.analysis"), field="spec.analysis", reason="required field is missing"),
    mut(
        "missing-metrics",
        drop("spec.analysis.metrics"),
        field="spec.analysis.metrics",
        reason="required field is missing",
    ),
    mut("empty-metrics", put("spec.analysis.metrics", []), field="spec.analysis.metrics", reason="at least 1"),
    mut("missing-metric-kind", drop(f"{ERRORS}.kind"), field=f"{ERRORS}.kind", reason="required field is missing"),
    mut(
        "missing-mirror-percentage",
        put("spec.strategy.mirror", {"intervals": 2}),
        field="spec.strategy.mirror.percentage",
        reason="required field is missing",
    ),
    # --- wrong apiVersion / kind ---
    mut("wrong-apiVersion", put("apiVersion", "canarist.io/v1"), field="apiVersion", reason="canarist.io/v1alpha1"),
    mut("wrong-kind", put("kind", "Rollout"), field="kind", reason="'ModelRollout'"),
    # --- bad types ---
    mut("type-port-string", put("spec.service.port", "http"), field="spec.service.port", reason="valid integer"),
    mut("type-port-float", put("spec.service.port", 8080.5), field="spec.service.port", reason="valid integer"),
    edit("type-port-bool", "port: 8080", "port: true", field="spec.service.port", reason="valid integer"),
    edit(
        "type-minRequests-bool",
        "minRequests: 500",
        "minRequests: yes",
        field="spec.strategy.minRequests",
        reason="valid integer",
    ),
    mut("type-spec-null", put("spec", None), field="spec", reason="valid dictionary"),
    mut("type-metadata-list", put("metadata", ["fraud"]), field="metadata", reason="valid dictionary"),
    mut("type-name-int", put("metadata.name", 123), field="metadata.name", reason="valid string"),
    mut("type-label-value-int", put("metadata.labels.team", 7), field="metadata.labels.team", reason="valid string"),
    mut("type-steps-string", put("spec.strategy.steps", "1,5,25"), field="spec.strategy.steps", reason="valid list"),
    mut("type-metrics-mapping", put("spec.analysis.metrics", {"a": 1}), field="spec.analysis.metrics", reason="list"),
    mut("type-quantile-string", put(f"{LATENCY}.quantile", "p99"), field=f"{LATENCY}.quantile", reason="number"),
    mut("type-interval-int", put("spec.strategy.interval", 60), field="spec.strategy.interval", reason="string"),
    mut(
        "type-relative-bool",
        put(f"{LATENCY}.margin.relative", True),
        field=f"{LATENCY}.margin.relative",
        reason="expected a fraction",
    ),
    mut("enum-metric-kind", put(f"{LATENCY}.kind", "Latency"), field=f"{LATENCY}.kind", reason="'IstioLatency'"),
    mut("enum-routing-mode", put("spec.routing.mode", "Weighted"), field="spec.routing.mode", reason="'Subset'"),
    mut("enum-onNoData", put("spec.strategy.onNoData", "Ignore"), field="spec.strategy.onNoData", reason="'Hold'"),
    mut(
        "enum-load-balancer",
        put("spec.trafficPolicy.loadBalancer.simple", "FASTEST"),
        field="spec.trafficPolicy.loadBalancer.simple",
        reason="'ROUND_ROBIN'",
    ),
    # --- names that are not DNS labels ---
    mut("name-uppercase", put("metadata.name", "Fraud-Detector"), field="metadata.name", reason=DNS),
    mut("name-underscore", put("metadata.name", "fraud_detector"), field="metadata.name", reason=DNS),
    mut("name-dots", put("metadata.name", "fraud.detector"), field="metadata.name", reason=DNS),
    mut("name-trailing-dash", put("metadata.name", "fraud-"), field="metadata.name", reason=DNS),
    mut("name-empty", put("metadata.name", ""), field="metadata.name", reason=DNS),
    mut("name-64-chars", put("metadata.name", "a" * 64), field="metadata.name", reason="63"),
    mut("name-cyrillic-homoglyph", put("metadata.name", "fr\u0430ud"), field="metadata.name", reason=DNS),
    mut("namespace-uppercase", put("metadata.namespace", "ML"), field="metadata.namespace", reason=DNS),
    mut("service-name-leading-dash", put("spec.service.name", "-fraud"), field="spec.service.name", reason=DNS),
    mut("version-name-dot", put("spec.canary.name", "v4.2"), field="spec.canary.name", reason=DNS),
    mut("metric-name-uppercase", put(f"{ERRORS}.name", "Error-Rate"), field=f"{ERRORS}.name", reason=DNS),
    mut("port-out-of-range", put("spec.service.port", 70000), field="spec.service.port", reason="65535"),
    mut("port-zero", put("spec.service.port", 0), field="spec.service.port", reason="greater than or equal to 1"),
    mut(
        "host-bad",
        put("spec.service.host", "Fraud..svc"),
        field="spec.service.host",
        reason="must be a DNS host name",
    ),
    mut("hosts-star", put("spec.service.hosts", ["*"]), field="spec.service.hosts[0]", reason="DNS host name"),
    mut(
        "hosts-repeat-service-host",
        put("spec.service.hosts", ["fraud-detector.ml-serving.svc.cluster.local"]),
        field="spec.service.hosts",
        reason="repeats the service host",
    ),
    # --- label values and keys that could break out of a PromQL selector or a template ---
    mut("label-quote-brace", put("metadata.labels.team", 'x"}'), field="metadata.labels.team", reason=LABEL_VALUE),
    mut(
        "label-promql-injection",
        put("spec.canary.labels.version", 'v42"} or vector(1) #'),
        field="spec.canary.labels.version",
        reason=LABEL_VALUE,
    ),
    mut("label-open-brace", put("spec.stable.labels.app", "a{b"), field="spec.stable.labels.app", reason=LABEL_VALUE),
    mut("label-backslash", put("metadata.labels.team", "a\\b"), field="metadata.labels.team", reason=LABEL_VALUE),
    mut(
        "label-newline",
        put("spec.stable.labels.version", "v41\n"),
        field="spec.stable.labels.version",
        reason=LABEL_VALUE,
    ),
    mut("label-shell", put("metadata.labels.team", "$(whoami)"), field="metadata.labels.team", reason=LABEL_VALUE),
    mut("label-jinja-expr", put("metadata.labels.team", "{{ x }}"), field="metadata.labels.team", reason=LABEL_VALUE),
    mut(
        "label-jinja-block",
        put("spec.canary.labels.app", "{% raw %}"),
        field="spec.canary.labels.app",
        reason=LABEL_VALUE,
    ),
    mut(
        "label-zero-width-space",
        put("spec.stable.labels.version", "v\u200b41"),
        field="spec.stable.labels.version",
        reason=LABEL_VALUE,
    ),
    mut(
        "label-fullwidth",
        put("spec.stable.labels.version", "\uff56\uff14\uff11"),
        field="spec.stable.labels.version",
        reason=LABEL_VALUE,
    ),
    mut(
        "label-rtl-override",
        put("metadata.labels.team", "pay\u202eml"),
        field="metadata.labels.team",
        reason=LABEL_VALUE,
    ),
    mut("label-value-64-chars", put("metadata.labels.team", "a" * 64), field="metadata.labels.team", reason="63"),
    mut(
        "label-key-quote",
        put(["metadata", "labels", 'team"}'], "x"),
        field='metadata.labels.team"}',
        reason=LABEL_KEY,
    ),
    mut(
        "label-key-brace",
        put(["spec", "canary", "labels", "{{app}}"], "x"),
        field="spec.canary.labels.{{app}}",
        reason=LABEL_KEY,
    ),
    mut(
        "label-key-64-chars",  # the name part of a Kubernetes label key is at most 63 characters
        put(["metadata", "labels", "k" * 64], "x"),
        field=f"metadata.labels.{'k' * 64}",
        reason=re.compile(r"label key|63"),
    ),
    mut(
        "ratio-match-label-value-injection",
        add_metric(custom(ratio=ratio(matchLabels={"model": 'x"} or vector(1)'}))),
        field="spec.analysis.metrics[2].ratio.matchLabels.model",
        reason=LABEL_VALUE,
    ),
    mut(
        "header-exact-quote",
        header({"exact": 'beta"'}),
        field="spec.routing.match[0].headers.x-cohort.exact",
        reason=SAFE_TEXT,
    ),
    mut(
        "header-prefix-newline",
        header({"prefix": "a\nb"}),
        field="spec.routing.match[0].headers.x-cohort.prefix",
        reason=SAFE_TEXT,
    ),
    mut(
        "header-exact-jinja",
        header({"exact": "{% include 'x' %}"}),
        field="spec.routing.match[0].headers.x-cohort.exact",
        reason=SAFE_TEXT,
    ),
    mut(
        "cookie-name-equals",
        match({"cookie": {"name": "beta=1", "value": "on"}}),
        field="spec.routing.match[0].cookie.name",
        reason="may contain only letters, digits",  # a cookie is not "a Triton model name"
    ),
    mut(
        "triton-model-path",
        triton(),
        put("spec.routing.triton.model", "ocr/../x"),
        drop("spec.stable.labels"),
        drop("spec.canary.labels"),
        field="spec.routing.triton.model",
        reason="may contain only letters, digits",
    ),
    # --- durations ---
    mut("duration-bare-number", put("spec.strategy.interval", "500"), field="spec.strategy.interval", reason=DURATION),
    mut("duration-space", put("spec.strategy.interval", "5 m"), field="spec.strategy.interval", reason=DURATION),
    mut("duration-negative", put("spec.strategy.interval", "-1s"), field="spec.strategy.interval", reason=DURATION),
    mut("duration-days", put("spec.strategy.interval", "1d"), field="spec.strategy.interval", reason=DURATION),
    mut("duration-two-dots", put("spec.strategy.interval", "1.5.3s"), field="spec.strategy.interval", reason=DURATION),
    mut(
        "duration-retry-timeout",
        put("spec.routing.retries.perTryTimeout", "500"),
        field="spec.routing.retries.perTryTimeout",
        reason=DURATION,
    ),
    mut(
        "duration-sticky-max-age",
        put("spec.routing.sticky", {"maxAge": "1d"}),
        field="spec.routing.sticky.maxAge",
        reason=DURATION,
    ),
    mut("interval-below-1s", put("spec.strategy.interval", "500ms"), field="spec.strategy.interval", reason="1s"),
    mut(
        "progress-deadline-below-interval",
        put("spec.strategy.progressDeadline", "30s"),
        field="spec.strategy.progressDeadline",
        reason="must be at least the interval",
    ),
    # --- fractions ---
    mut(
        "relative-over-100-percent",
        put(f"{LATENCY}.margin.relative", "150%"),
        field=f"{LATENCY}.margin.relative",
        reason="must be between 0 and 1",
    ),
    mut(
        "relative-negative",
        put(f"{LATENCY}.margin.relative", -0.1),
        field=f"{LATENCY}.margin.relative",
        reason="must be between 0 and 1",
    ),
    mut(
        "relative-bad-percent",
        put(f"{LATENCY}.margin.relative", "5 %"),
        field=f"{LATENCY}.margin.relative",
        reason="invalid fraction",
    ),
    mut("slo-share-over-1", put(f"{ERRORS}.slo.max", 2), field=f"{ERRORS}.slo.max", reason="at most 1 (100%)"),
    mut("slo-share-200-percent", put(f"{ERRORS}.slo.max", "200%"), field=f"{ERRORS}.slo.max", reason="at most 1"),
    mut("slo-share-negative", put(f"{ERRORS}.slo.max", -0.1), field=f"{ERRORS}.slo.max", reason="not be negative"),
    edit(
        "slo-share-nan",
        "          max: 2%\n",
        "          max: .nan\n",
        field=f"{ERRORS}.slo.max",
        reason=re.compile(r"nan|NaN|finite|number|between"),
    ),
    mut(
        "margin-absolute-negative",
        put(f"{ERRORS}.margin.absolute", "-1%"),
        field=f"{ERRORS}.margin.absolute",
        reason="expected a number, a percentage",
    ),
    # --- SLO on the wrong side, unit errors, quantiles ---
    mut(
        "slo-min-for-latency",
        put(f"{LATENCY}.slo", {"min": "100ms"}),
        field=f"{LATENCY}.slo.min",
        reason="IstioLatency is bounded by slo.max, not slo.min",
    ),
    mut(
        "slo-max-for-higher-is-better",
        add_metric(custom(slo={"max": "90%"})),
        field="spec.analysis.metrics[2].slo.max",
        reason="CustomRatio is bounded by slo.min, not slo.max",
    ),
    mut(
        "slo-number-for-latency",
        put(f"{LATENCY}.slo.max", 0.25),
        field=f"{LATENCY}.slo.max",
        reason="expected a duration such as '250ms' for IstioLatency, got 0.25",
    ),
    mut(
        "margin-number-for-latency",
        put(f"{LATENCY}.margin", {"absolute": 0.1}),
        field=f"{LATENCY}.margin.absolute",
        reason="expected a duration",
    ),
    mut(
        "slo-duration-for-share",
        put(f"{ERRORS}.slo.max", "1s"),
        field=f"{ERRORS}.slo.max",
        reason="expected a fraction such as 0.02 or '2%' for IstioErrorRate",
    ),
    mut(
        "quantile-on-error-rate",
        put(f"{ERRORS}.quantile", 0.9),
        field=f"{ERRORS}.quantile",
        reason="only allowed for IstioLatency",
    ),
    mut(
        "quantile-on-triton-latency",
        add_metric({"name": "triton-latency", "kind": "TritonLatency", "quantile": 0.9, "slo": {"max": "1s"}}),
        field="spec.analysis.metrics[2].quantile",
        reason="only allowed for IstioLatency",
    ),
    mut("quantile-one", put(f"{LATENCY}.quantile", 1), field=f"{LATENCY}.quantile", reason="less than 1"),
    # --- margins, metric structure ---
    mut(
        "margin-relative-and-absolute",
        put(f"{ERRORS}.margin", {"relative": "5%", "absolute": "1%"}),
        field=f"{ERRORS}.margin",
        reason="needs exactly one of relative or absolute",
    ),
    mut(
        "metric-without-slo-or-margin",
        drop(f"{ERRORS}.slo"),
        drop(f"{ERRORS}.margin"),
        field=ERRORS,
        reason="needs an slo, a margin against stable, or both",
    ),
    mut(
        "duplicate-metric-name",
        put(f"{ERRORS}.name", "latency-p99"),
        field=f"{ERRORS}.name",
        reason="duplicate metric name 'latency-p99'",
    ),
    mut(
        "higher-is-better-on-builtin",
        put(f"{ERRORS}.higherIsBetter", True),
        field=f"{ERRORS}.higherIsBetter",
        reason="only allowed for kind CustomRatio",
    ),
    mut(
        "ratio-on-builtin",
        put(f"{ERRORS}.ratio", ratio()),
        field=f"{ERRORS}.ratio",
        reason="only allowed for kind CustomRatio",
    ),
    mut(
        "custom-ratio-without-ratio",
        add_metric(custom(ratio=None)),
        field="spec.analysis.metrics[2].ratio",
        reason="required for kind CustomRatio",
    ),
    mut(
        "ratio-bad-metric-name",
        add_metric(custom(ratio=ratio(success="correct-total"))),
        field="spec.analysis.metrics[2].ratio.success",
        reason="must be a Prometheus metric name",
    ),
    mut(
        "ratio-metric-name-injection",
        add_metric(custom(ratio=ratio(total='labelled_total{job="x"}'))),
        field="spec.analysis.metrics[2].ratio.total",
        reason="must be a Prometheus metric name",
    ),
    mut(
        "ratio-bad-version-label",
        add_metric(custom(ratio=ratio(versionLabel="__name__"))),
        field="spec.analysis.metrics[2].ratio.versionLabel",
        reason="must be a Prometheus label name",
    ),
    # --- PredictionDistribution: the outputs' series and an absolute margin on the distance ---
    mut(
        "outputs-without-source",
        add_metric(outputs_metric(outputs={"matchLabels": {"model": "fraud"}})),
        field="spec.analysis.metrics[2].outputs",
        reason="needs exactly one of histogram (scores) or counter (classes)",
    ),
    mut(
        "outputs-both-sources",
        add_metric(outputs_metric(outputs={**OUTPUTS, "counter": "fraud_predictions_total"})),
        field="spec.analysis.metrics[2].outputs",
        reason="needs exactly one of histogram (scores) or counter (classes)",
    ),
    mut(
        "outputs-positive-classes-on-a-histogram",
        add_metric(outputs_metric(outputs={**OUTPUTS, "positiveClasses": ["fraud"]})),
        field="spec.analysis.metrics[2].outputs",
        reason="positiveClasses is for a counter of classes",
    ),
    mut(
        "outputs-match-labels-name-the-version",
        add_metric(outputs_metric(outputs={**OUTPUTS, "matchLabels": {"version": "v2"}})),
        field="spec.analysis.metrics[2].outputs",
        reason="matchLabels must not name the namespace, version, class or split label",
    ),
    mut(
        "outputs-metric-name-injection",
        add_metric(outputs_metric(outputs={**OUTPUTS, "histogram": 'score{job="x"}'})),
        field="spec.analysis.metrics[2].outputs.histogram",
        reason="must be a Prometheus metric name",
    ),
    mut(
        "prediction-distribution-without-outputs",
        add_metric(outputs_metric(outputs=None)),
        field="spec.analysis.metrics[2].outputs",
        reason="required for kind PredictionDistribution",
    ),
    mut(
        "prediction-distribution-relative-margin",
        add_metric(outputs_metric(margin={"relative": "10%"})),
        field="spec.analysis.metrics[2].margin",
        reason="PredictionDistribution needs margin.absolute",
    ),
    mut(
        "prediction-distribution-with-slo",
        add_metric(outputs_metric(slo={"max": "10%"})),
        field="spec.analysis.metrics[2].slo",
        reason="set margin.absolute, not an slo",
    ),
    mut(
        "prediction-distribution-margin-of-everything",
        add_metric(outputs_metric(margin={"absolute": "100%"})),
        field="spec.analysis.metrics[2].margin.absolute",
        reason="must be below 1 (100%)",
    ),
    mut(
        "outputs-on-builtin",
        put(f"{ERRORS}.outputs", OUTPUTS),
        field=f"{ERRORS}.outputs",
        reason="only allowed for kind PredictionDistribution",
    ),
    mut(
        "on-drift-on-builtin",
        put(f"{ERRORS}.onDrift", "Pause"),
        field=f"{ERRORS}.onDrift",
        reason="only allowed for kind PredictionDistribution",
    ),
    mut(
        "on-drift-unknown",
        add_metric(outputs_metric(onDrift="Ignore")),
        field="spec.analysis.metrics[2].onDrift",
        reason="input should be 'Rollback' or 'Pause'",
    ),
    # --- CustomRatio scoping: the rollout's namespace, and labels that pick its own series ---
    mut(
        "ratio-without-match-labels",
        add_metric(custom(ratio={"success": "correct_total", "total": "labelled_total"})),
        field="spec.analysis.metrics[2].ratio.matchLabels",
        reason="required field is missing",
    ),
    mut(
        "ratio-empty-match-labels",
        add_metric(custom(ratio=ratio(matchLabels={}))),
        field="spec.analysis.metrics[2].ratio.matchLabels",
        reason="at least 1 item",
    ),
    mut(
        "ratio-match-labels-name-the-namespace",
        add_metric(custom(ratio=ratio(matchLabels={"model": "fraud", "namespace": "payments"}))),
        field="spec.analysis.metrics[2].ratio",
        reason="set from the rollout's own namespace",
    ),
    mut(
        "ratio-match-labels-name-a-custom-namespace-label",
        add_metric(custom(ratio=ratio(namespaceLabel="k8s_ns", matchLabels={"k8s_ns": "payments"}))),
        field="spec.analysis.metrics[2].ratio",
        reason="set from the rollout's own namespace",
    ),
    mut(
        "ratio-match-labels-name-the-version-label",
        add_metric(custom(ratio=ratio(matchLabels={"model": "fraud", "version": "v2"}))),
        field="spec.analysis.metrics[2].ratio",
        reason="it is the versionLabel",
    ),
    mut(
        "ratio-namespace-label-is-the-version-label",
        add_metric(custom(ratio=ratio(namespaceLabel="version"))),
        field="spec.analysis.metrics[2].ratio",
        reason="must be different labels",
    ),
    mut(
        "ratio-bad-namespace-label",
        add_metric(custom(ratio=ratio(namespaceLabel="__name__"))),
        field="spec.analysis.metrics[2].ratio.namespaceLabel",
        reason="must be a Prometheus label name",
    ),
    mut(
        "ratio-bad-match-label-name",
        add_metric(custom(ratio=ratio(matchLabels={'model"}': "x"}))),
        field='spec.analysis.metrics[2].ratio.matchLabels.model"}',
        reason="must be a Prometheus label name",
    ),
    mut("metric-weight-zero", put(f"{LATENCY}.weight", 0), field=f"{LATENCY}.weight", reason="greater than 0"),
    mut("metric-weight-negative", put(f"{LATENCY}.weight", -1), field=f"{LATENCY}.weight", reason="greater than 0"),
    mut("alpha-zero", put("spec.analysis.alpha", 0), field="spec.analysis.alpha", reason="greater than 0"),
    mut("alpha-too-large", put("spec.analysis.alpha", 0.9), field="spec.analysis.alpha", reason="0.5"),
    # --- the step schedule ---
    mut(
        "steps-not-increasing",
        put("spec.strategy.steps", [1, 25, 5]),
        field="spec.strategy.steps[2]",
        reason="weights must increase: 5 follows 25",
    ),
    mut(
        "steps-repeated",
        put("spec.strategy.steps", [5, 5]),
        field="spec.strategy.steps[1]",
        reason="weights must increase",
    ),
    mut("steps-zero", put("spec.strategy.steps", [0, 5]), field="spec.strategy.steps[0]", reason="greater than"),
    mut("steps-empty", put("spec.strategy.steps", []), field="spec.strategy.steps", reason="at least one weight"),
    mut(
        "steps-and-step-weight",
        put("spec.strategy.stepWeight", 10),
        field="spec.strategy.stepWeight",
        reason="either steps or stepWeight, not both",
    ),
    mut(
        "max-weight-without-step-weight",
        put("spec.strategy.maxWeight", 50),
        field="spec.strategy.maxWeight",
        reason="only allowed together with stepWeight",
    ),
    mut(
        "first-step-100",
        put("spec.strategy.steps", [100]),
        field="spec.strategy.steps[0]",
        reason="keep some traffic on stable",
    ),
    mut(
        "step-weight-100",
        drop("spec.strategy.steps"),
        put("spec.strategy.stepWeight", 100),
        field="spec.strategy.stepWeight",
        reason="keep some traffic on stable",
    ),
    mut(
        "step-weight-above-max",
        drop("spec.strategy.steps"),
        put("spec.strategy.stepWeight", 60),
        put("spec.strategy.maxWeight", 50),
        field="spec.strategy.stepWeight",
        reason="is above maxWeight (50)",
    ),
    mut(
        "mirror-zero",
        put("spec.strategy.mirror", {"percentage": 0}),
        field="spec.strategy.mirror.percentage",
        reason="greater than 0",
    ),
    mut(
        "mirror-over-100",
        put("spec.strategy.mirror", {"percentage": 150}),
        field="spec.strategy.mirror.percentage",
        reason="100",
    ),
    # --- versions ---
    mut("same-version-names", put("spec.canary.name", "v41"), field="spec.canary.name", reason="must differ"),
    mut(
        "same-version-labels",
        put("spec.canary.labels", {"app": "fraud-detector", "version": "v41"}),
        field="spec.canary.labels",
        reason="select the same pods",
    ),
    mut(
        "subset-without-labels",
        drop("spec.stable.labels"),
        field="spec.stable.labels",
        reason="required with routing mode Subset",
    ),
    # --- routing ---
    mut(
        "triton-mode-without-triton",
        put("spec.routing.mode", "TritonVersion"),
        field="spec.routing.triton",
        reason="required with routing mode TritonVersion",
    ),
    mut(
        "triton-without-triton-mode",
        put("spec.routing.triton", {"model": "fraud", "stableVersion": 3, "canaryVersion": 4}),
        field="spec.routing.triton",
        reason="only allowed with routing mode TritonVersion",
    ),
    mut(
        "triton-equal-versions",
        triton(3, 3),
        field="spec.routing.triton.canaryVersion",
        reason="must differ from stableVersion",
    ),
    mut(
        "triton-version-zero",
        triton(0, 4),
        field="spec.routing.triton.stableVersion",
        reason="greater than or equal to 1",
    ),
    mut(
        "mirror-with-triton-version",
        triton(),
        put("spec.strategy.mirror", {"percentage": 10}),
        field="spec.strategy.mirror",
        reason="not supported with routing mode TritonVersion",
    ),
    mut(
        "cohort-without-headers-or-cookie",
        match({"name": "beta"}),
        field="spec.routing.match[0]",
        reason="needs headers or a cookie",
    ),
    mut(
        "header-exact-and-prefix",
        header({"exact": "a", "prefix": "b"}),
        field="spec.routing.match[0].headers.x-cohort",
        reason="needs exactly one of exact, prefix or regex",
    ),
    mut(
        "header-prefix-and-regex",
        header({"prefix": "a", "regex": "b.*"}),
        field="spec.routing.match[0].headers.x-cohort",
        reason="needs exactly one of exact, prefix or regex",
    ),
    mut(
        "header-empty-match",
        header({}),
        field="spec.routing.match[0].headers.x-cohort",
        reason="needs exactly one of exact, prefix or regex",
    ),
    mut(
        "header-invalid-regex",
        header({"regex": "(beta"}),
        field="spec.routing.match[0].headers.x-cohort.regex",
        reason="invalid regular expression",
    ),
    mut(
        "header-lookahead-regex",
        header({"regex": "(?=beta)b.*"}),
        field="spec.routing.match[0].headers.x-cohort.regex",
        reason="not supported by Envoy's RE2: lookarounds",
    ),
    mut(
        "header-lookbehind-regex",
        header({"regex": "(?<!x)beta"}),
        field="spec.routing.match[0].headers.x-cohort.regex",
        reason="not supported by Envoy's RE2",
    ),
    mut(
        "header-backreference-regex",
        header({"regex": "(a)\\1"}),
        field="spec.routing.match[0].headers.x-cohort.regex",
        reason="not supported by Envoy's RE2",
    ),
    mut(
        "header-atomic-group-regex",  # Python 3.11 accepts (?>...), RE2 does not
        header({"regex": "(?>beta)s"}),
        field="spec.routing.match[0].headers.x-cohort.regex",
        reason=RE2,
    ),
    mut(
        "header-possessive-regex",  # Python 3.11 accepts a++, RE2 does not
        header({"regex": "beta++"}),
        field="spec.routing.match[0].headers.x-cohort.regex",
        reason=RE2,
    ),
    mut(
        "header-named-backreference-regex",  # (?P=name) is a back-reference RE2 lacks
        header({"regex": "(?P<c>a)(?P=c)"}),
        field="spec.routing.match[0].headers.x-cohort.regex",
        reason=RE2,
    ),
    mut(
        "header-regex-too-long",
        header({"regex": "a" * 2000}),
        field="spec.routing.match[0].headers.x-cohort.regex",
        reason="1024",
    ),
    mut(
        "header-name-uppercase",
        header({"exact": "beta"}, name="X-Cohort"),
        field="spec.routing.match[0].headers.X-Cohort",
        reason="must be a lowercase HTTP header name",
    ),
    mut(
        "header-cookie-and-cookie-field",
        match({"headers": {"cookie": {"exact": "a=b"}}, "cookie": {"name": "a", "value": "b"}}),
        field="spec.routing.match[0].headers.cookie",
        reason="conflicts with the cookie field",
    ),
    mut(
        "duplicate-cohort-name",
        match(
            {"name": "beta", "cookie": {"name": "a", "value": "b"}},
            {"name": "beta", "cookie": {"name": "a", "value": "c"}},
        ),
        field="spec.routing.match[1].name",
        reason="duplicate match name 'beta'",
    ),
    mut(
        "retry-on-unknown",
        put("spec.routing.retries.retryOn", "5xx,sometimes"),
        field="spec.routing.retries.retryOn",
        reason="unknown retry condition 'sometimes'",
    ),
    mut(
        "retry-on-spaces",
        put("spec.routing.retries.retryOn", "5xx, reset"),
        field="spec.routing.retries.retryOn",
        reason="does not match",
    ),
    mut(
        "retry-attempts-negative",
        put("spec.routing.retries.attempts", -1),
        field="spec.routing.retries.attempts",
        reason="greater than or equal to 0",
    ),
    mut(
        "gateway-uppercase",
        put("spec.service.gateways", ["Public_GW"]),
        field="spec.service.gateways[0]",
        reason="must be 'mesh' or a gateway name",
    ),
    mut(
        "gateway-two-slashes",
        put("spec.service.gateways", ["mesh", "a/b/c"]),
        field="spec.service.gateways[1]",
        reason="must be 'mesh' or a gateway name",
    ),
    mut(
        "gateway-empty",
        put("spec.service.gateways", [""]),
        field="spec.service.gateways[0]",
        reason="must be 'mesh' or a gateway name",
    ),
    # --- YAML itself ---
    edit("yaml-syntax-error", "port: 8080", "port: [8080", field="", reason="invalid YAML", at=(16, 9)),
    edit("yaml-tab-indent", "    port: 8080\n", "\tport: 8080\n", field="", reason="invalid YAML", at=(15, 1)),
    edit(
        "yaml-duplicate-key",
        "    port: 8080\n",
        "    port: 8080\n    port: 9090\n",
        field="",
        reason="duplicate key 'port'",
        at=(16, 5),
    ),
    edit(
        "yaml-anchor-and-alias",
        "  service:\n    name: fraud-detector\n",
        "  service:\n    name: &svc fraud-detector\n    host: *svc\n",
        field="",
        reason="anchors and aliases are not allowed",
        at="&svc",
    ),
    edit("yaml-merge-key", "  canary:\n    name: v42\n", "  canary:\n    <<: {name: v42}\n", field="", reason="keys"),
    edit("yaml-unknown-scalar-tag", "port: 8080", "port: !port 8080", field="", reason="unsupported YAML tag"),
    edit(
        "yaml-unknown-collection-tag",  # a tag on a sequence is refused like one on a scalar
        "steps: [1, 5, 25, 50, 100]",
        "steps: !weights [1, 5, 25, 50, 100]",
        field="",
        reason="unsupported YAML tag",
    ),
    edit(
        "yaml-python-tag",
        "port: 8080",
        "port: !!python/object/apply:os.system ['true']",
        field="",
        reason="unsupported YAML tag",
    ),
    edit(
        "yaml-control-character",  # one diagnostic line, at the character, whatever PyYAML says
        "team: payments-ml",
        "team: payments\x07ml",
        field="",
        reason="invalid YAML",
        at=(11, 19),
    ),
    raw(
        "yaml-top-level-list", b"- apiVersion: canarist.io/v1alpha1\n- kind: ModelRollout\n", reason="must be a mapping"
    ),
    raw("yaml-top-level-scalar", b"ModelRollout\n", reason="must be a mapping"),
    raw("yaml-empty-file", b"", reason="no ModelRollout document"),
    raw("yaml-only-comments", b"# nothing here\n---\n", reason="no ModelRollout document"),
    raw("yaml-not-utf8", b"apiVersion: canarist.io/v1alpha1\nkind: \xff\xfeModelRollout\n", reason="not UTF-8"),
    raw("yaml-alias-bomb", _alias_bomb, reason="YAML anchors and aliases are not allowed", at=(1, 4)),
    raw("yaml-10-mb", _big_file, reason="larger than"),
    raw("yaml-deep-flow-lists", _deep, reason=re.compile(r"nested|deep")),
    raw("yaml-deep-flow-maps", _deep_maps, reason=re.compile(r"nested|deep")),
    raw(
        "yaml-nesting-over-limit",
        b"metadata: " + b"[" * 100 + b"]" * 100 + b"\n",
        reason=re.compile(r"nested deeper than \d+ levels"),
    ),
    raw(
        "second-document-invalid",
        (
            BASE_TEXT + "---\n" + replace_once(BASE_TEXT, "name: fraud-detector\n  namespace", "name: Bad\n  namespace")
        ).encode(),
        field="metadata.name",
        reason=DNS,
        at=(len(BASE_TEXT.splitlines()) + 1 + 8, 3),
    ),
]

_IDS = [case.id for case in CASES]
assert len(set(_IDS)) == len(_IDS), "case ids must be unique"

# --- checking the output ----------------------------------------------------------------------


def _reason_pattern(reason: str | re.Pattern[str]) -> str:
    return reason.pattern if isinstance(reason, re.Pattern) else re.escape(reason)


def expected_line(source: str, field: str, reason: str | re.Pattern[str]) -> re.Pattern[str]:
    """``^FILE:LINE:COL: FIELD: ...REASON`` (no field for problems of the YAML text itself)."""
    field_part = f"{re.escape(field)}: " if field else ""
    return re.compile(rf"^{re.escape(source)}:(\d+):(\d+): {field_part}.*{_reason_pattern(reason)}")


def well_formed(source: str) -> re.Pattern[str]:
    return re.compile(rf"^{re.escape(source)}:\d+:\d+: \S")


def position_of(content: bytes, marker: str) -> tuple[int, int]:
    text = content.decode("utf-8")
    for number, line in enumerate(text.splitlines(), start=1):
        if marker in line:
            return number, line.index(marker) + 1
    raise AssertionError(f"marker {marker!r} not in the policy text")


def check_refusal(output: str, source: str, case: Bad, content: bytes) -> None:
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if line.strip()]
    assert lines, "no diagnostic printed"
    form = well_formed(source)
    malformed = [line for line in lines if not form.match(line)]
    assert not malformed, f"output lines not in FILE:LINE:COL: form: {malformed!r}\n{output}"
    pattern = expected_line(source, case.field, case.reason)
    found = [m for m in map(pattern.match, lines) if m]
    assert found, f"no line matches {pattern.pattern!r}:\n{output}"
    if case.at is not None:
        at = position_of(content, case.at) if isinstance(case.at, str) else case.at
        positions = [(int(m.group(1)), int(m.group(2))) for m in found]
        assert at in positions, f"expected position {at}, got {positions}:\n{output}"


def invoke(*args: str) -> Result:
    result = CliRunner().invoke(cli, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"canarist {' '.join(args)} raised {result.exception!r}\n{result.output}")
    return result


def run_canarist(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CANARIST), *args], capture_output=True, text=True, timeout=60, cwd=cwd, check=False)


# --- the table --------------------------------------------------------------------------------


def test_there_are_at_least_50_malformed_cases() -> None:
    assert len(CASES) >= 50


def test_base_policy_is_valid_after_a_round_trip(tmp_path: Path) -> None:
    """The mutations start from a valid policy: dumping it unchanged must still validate."""
    path = tmp_path / "base.yaml"
    path.write_bytes(dump(BASE))
    result = invoke("validate", str(path))
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("case", CASES, ids=_IDS)
def test_malformed_policy_is_refused(case: Bad, tmp_path: Path) -> None:
    content = case.make()
    path = tmp_path / f"{case.id}.yaml"
    path.write_bytes(content)
    result = invoke("validate", str(path))
    assert result.exit_code == EXIT_INVALID, result.output
    check_refusal(result.output, str(path), case, content)


def test_every_case_through_the_executable(tmp_path: Path) -> None:
    """All malformed files in one directory, one real process: each is reported, none crashes."""
    for case in CASES:
        (tmp_path / f"{case.id}.yaml").write_bytes(case.make())
    proc = run_canarist("validate", ".", cwd=tmp_path)
    assert proc.returncode == EXIT_INVALID, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    lines = proc.stdout.splitlines()
    missing = []
    for case in CASES:
        source = f"{case.id}.yaml"
        pattern = expected_line(source, case.field, case.reason)
        if not any(pattern.match(line) for line in lines):
            missing.append(case.id)
    assert not missing, f"no expected diagnostic for {missing}:\n{proc.stdout}"


_HOSTILE_IDS = {
    "yaml-alias-bomb",
    "yaml-10-mb",
    "yaml-deep-flow-lists",
    "yaml-deep-flow-maps",
    "yaml-not-utf8",
    "yaml-control-character",
    "yaml-syntax-error",
    "yaml-python-tag",
    "yaml-empty-file",
}
HOSTILE = [c for c in CASES if c.id in _HOSTILE_IDS]
assert len(HOSTILE) == len(_HOSTILE_IDS)


@pytest.mark.parametrize("case", HOSTILE, ids=[c.id for c in HOSTILE])
def test_hostile_yaml_in_its_own_process(case: Bad, tmp_path: Path) -> None:
    content = case.make()
    path = tmp_path / "policy.yaml"
    path.write_bytes(content)
    proc = run_canarist("validate", str(path))
    assert proc.returncode == EXIT_INVALID, proc.stdout + proc.stderr
    assert proc.stderr == "", proc.stderr
    check_refusal(proc.stdout, str(path), case, content)


# --- positions --------------------------------------------------------------------------------


def test_positions_of_list_items_are_exact(tmp_path: Path) -> None:
    text = replace_once(BASE_TEXT, "          max: 2%\n", "          max: 200%\n")
    text = replace_once(text, "      - name: error-rate\n", "      - name: latency-p99\n")
    path = tmp_path / "p.yaml"
    path.write_text(text)
    result = invoke("validate", str(path))
    assert result.exit_code == EXIT_INVALID
    lines = result.output.splitlines()
    assert (
        f"{path}:65:11: spec.analysis.metrics[1].slo.max: is a share and must be at most 1 (100%), got '200%'" in lines
    )
    assert f"{path}:62:9: spec.analysis.metrics[1].name: duplicate metric name 'latency-p99'" in lines


def test_unknown_field_points_at_its_own_line(tmp_path: Path) -> None:
    text = """\
apiVersion: canarist.io/v1alpha1
kind: ModelRollout
metadata:
  name: demo
spec:
  service: {name: demo, port: 80}
  stable: {name: a, labels: {v: a}}
  canary: {name: b, labels: {v: b}}
  analysis:
    metrics:
      - name: errors
        kind: IstioErrorRate
        slo:
          max: 1%
          mx: 2%
"""
    path = tmp_path / "p.yaml"
    path.write_text(text)
    result = invoke("validate", str(path))
    assert result.exit_code == EXIT_INVALID
    assert result.output.splitlines() == [
        f"{path}:15:11: spec.analysis.metrics[0].slo.mx: unknown field (did you mean 'max'?)"
    ]


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    data = copy.deepcopy(BASE)
    put("spec.strategy.interval", "5 m")(data)
    put("metadata.labels.team", 'x"}')(data)
    put(f"{LATENCY}.slo.maxx", "1s")(data)
    path = tmp_path / "p.yaml"
    path.write_bytes(dump(data))
    result = invoke("validate", str(path))
    assert result.exit_code == EXIT_INVALID
    fields = sorted(line.split(": ")[1] for line in result.output.splitlines())
    assert fields == ["metadata.labels.team", "spec.analysis.metrics[0].slo.maxx", "spec.strategy.interval"]


def test_cross_field_problems_are_all_reported(tmp_path: Path) -> None:
    data = copy.deepcopy(BASE)
    put("spec.canary.name", "v41")(data)
    put("spec.strategy.steps", [5, 1])(data)
    put(f"{ERRORS}.name", "latency-p99")(data)
    path = tmp_path / "p.yaml"
    path.write_bytes(dump(data))
    result = invoke("validate", str(path))
    assert result.exit_code == EXIT_INVALID
    assert len(result.output.splitlines()) == 3, result.output


# --- good policies, directories, several documents ---------------------------------------------


@pytest.mark.parametrize("policy", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_policy_is_valid(policy: Path) -> None:
    result = invoke("validate", str(policy))
    assert result.exit_code == 0, result.output
    assert result.output == "ok: 1 policy in 1 file\n"


def test_example_directory_through_the_executable() -> None:
    assert len(EXAMPLES) == 4
    proc = run_canarist("validate", str(POLICIES))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout == "ok: 4 policies in 4 files\n"


def test_directory_mixing_good_and_bad_reports_only_the_bad(tmp_path: Path) -> None:
    for policy in EXAMPLES:
        shutil.copy(policy, tmp_path / policy.name)
    nested = tmp_path / "team" / "drafts"
    nested.mkdir(parents=True)
    (nested / "bad-duration.yml").write_text(replace_once(BASE_TEXT, "interval: 1m", "interval: 5 m"))
    (tmp_path / "bad-yaml.yaml").write_text("spec: [\n")
    (tmp_path / "notes.txt").write_text("not: [a policy")  # not a .yaml/.yml file: ignored
    proc = run_canarist("validate", str(tmp_path))
    assert proc.returncode == EXIT_INVALID
    assert "Traceback" not in proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 2, proc.stdout
    assert lines[0].startswith(f"{tmp_path / 'bad-yaml.yaml'}:2:1: invalid YAML")
    assert lines[1] == (
        f"{nested / 'bad-duration.yml'}:46:5: spec.strategy.interval: "
        "must be a duration with a unit, such as '500ms', '30s', '5m' or '1h30m'"
    )
    for policy in EXAMPLES:
        assert policy.name not in proc.stdout
    assert "notes.txt" not in proc.stdout


def test_missing_path_is_a_diagnostic(tmp_path: Path) -> None:
    result = invoke("validate", str(tmp_path / "nope.yaml"), str(BASE_FILE))
    assert result.exit_code == EXIT_INVALID
    assert result.output.splitlines() == [f"{tmp_path / 'nope.yaml'}:1:1: no such file or directory"]


def test_two_valid_documents_in_one_file(tmp_path: Path) -> None:
    other = BASE_TEXT.replace("name: fraud-detector\n  namespace", "name: fraud-detector-b\n  namespace")
    path = tmp_path / "two.yaml"
    path.write_text(BASE_TEXT + "---\n" + other)
    result = invoke("validate", str(path))
    assert result.exit_code == 0, result.output
    assert result.output == "ok: 2 policies in 1 file\n"


def test_each_bad_document_is_located_in_its_own_lines(tmp_path: Path) -> None:
    """Line numbers count from the top of the file, not of the document."""
    first = replace_once(BASE_TEXT, "interval: 1m", "interval: 1d")
    second = replace_once(BASE_TEXT, "    port: 8080\n", "    port: 8080\n    prot: 1\n")
    path = tmp_path / "two.yaml"
    path.write_text(first + "---\n" + second)
    result = invoke("validate", str(path))
    assert result.exit_code == EXIT_INVALID
    offset = len(first.splitlines()) + 1
    assert result.output.splitlines() == [
        f"{path}:46:5: spec.strategy.interval: must be a duration with a unit, such as '500ms', '30s', '5m' or '1h30m'",
        f"{path}:{offset + 16}:5: spec.service.prot: unknown field (did you mean 'port'?)",
    ]


def test_a_list_after_a_good_document_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(BASE_TEXT + "---\n- 1\n")
    result = invoke("validate", str(path))
    assert result.exit_code == EXIT_INVALID
    offset = len(BASE_TEXT.splitlines()) + 2
    assert result.output.splitlines() == [f"{path}:{offset}:1: a policy document must be a mapping"]
