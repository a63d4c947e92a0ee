"""Rules that span several fields of a ModelRollout, each reported with the exact field path.

pydantic has already checked types, ranges and unknown fields; what is left are the rules a
schema cannot say ("the two versions must select different pods", "an SLO on latency is a
duration"). Every rule returns :class:`Problem` values rather than raising, so a user sees all
of them at once.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

from controller.api.gate import INTEGER_RANGES, MAX_TIMEOUT_S, MIN_TIMEOUT_S
from controller.api.kinds import TRAITS, Unit, lower_is_better, parse_value
from controller.api.metrics_spec import Metric, MetricKind, split_label
from controller.api.model import ModelRollout
from controller.api.routing import RoutingMode, StringMatch
from controller.api.schedule import has_cohorts, split_tagged
from controller.api.units import parse_duration

Path = tuple[str | int, ...]

#: Envoy's retry conditions (x-envoy-retry-on and x-envoy-retry-grpc-on) that Istio passes through.
RETRY_CONDITIONS = frozenset(
    {
        "5xx", "gateway-error", "reset", "reset-before-request", "connect-failure", "envoy-ratelimited",
        "retriable-4xx", "refused-stream", "retriable-status-codes", "retriable-headers", "http3-post-connect-failure",
        "cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable",
    }
)  # fmt: skip


@dataclass(frozen=True)
class Problem:
    """One reason a policy is refused: where (a path of wire field names and list indices) and why."""

    path: Path
    reason: str

    @property
    def dotted(self) -> str:
        out = ""
        for part in self.path:
            out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
        return out

    def __str__(self) -> str:
        """The one-line form every caller prints: ``field.path: reason``."""
        return f"{self.dotted}: {self.reason}"


def check(rollout: ModelRollout) -> list[Problem]:
    """Every cross-field problem in ``rollout``; an empty list means it is valid."""
    return [
        *_versions(rollout),
        *_routing(rollout),
        *_strategy(rollout),
        *_gate(rollout),
        *_metrics(rollout),
        *_randomised(rollout),
        *_notify(rollout),
    ]


def _notify(rollout: ModelRollout) -> Iterator[Problem]:
    seen: set[str] = set()
    for i, sink in enumerate(rollout.spec.notify.sinks if rollout.spec.notify else []):
        if sink.name in seen:
            yield Problem(("spec", "notify", "sinks", i, "name"), f"duplicate sink name {sink.name!r}")
        seen.add(sink.name)


def _randomised(rollout: ModelRollout) -> Iterator[Problem]:
    """With A/B cohorts or sticky users, a comparison with stable must see only randomised requests.

    Cohort and sticky requests reach the canary because of who sends them, so counting them in a
    comparison would compare different populations: the difference is no longer the canary's
    effect, and the test's error guarantee is gone. Istio's metrics are tagged with the split
    (controller.api.schedule.split_tagged); CustomRatio counters can be, by the application
    (``ratio.splitLabel``); other kinds cannot, so only their SLO guards (the canary alone against
    an absolute bound, valid on any traffic) may run.
    """
    spec = rollout.spec
    if not split_tagged(rollout):  # nothing sets the header: a splitLabel would count forged requests only
        for i, metric in enumerate(spec.analysis.metrics):
            if split_label(metric) is not None:
                yield Problem(
                    (
                        "spec",
                        "analysis",
                        "metrics",
                        i,
                        "ratio" if metric.ratio is not None else "outputs",
                        "splitLabel",
                    ),
                    "only with A/B cohorts or sticky users in routing mode Subset, where canarist sets the "
                    "x-canarist-split header",
                )
    if not has_cohorts(rollout):
        return
    if split_tagged(rollout) and not {k for k, v in spec.stable.labels.items() if spec.canary.labels.get(k) == v}:
        yield Problem(
            ("spec", "canary", "labels"),
            "with A/B cohorts or sticky users, both versions need a pod label in common (e.g. app) so that the "
            "split's Telemetry selects their pods",
        )
    for i, metric in enumerate(spec.analysis.metrics):
        if metric.margin is None:
            continue
        tagged = (TRAITS[metric.kind].istio_split and split_tagged(rollout)) or split_label(metric) is not None
        if not tagged:
            yield Problem(
                ("spec", "analysis", "metrics", i, "margin"),
                f"A/B cohorts and sticky users reach the canary without randomisation, and {metric.kind.value} "
                "series cannot leave them out of a comparison with stable"
                + (
                    f": set {'ratio' if metric.kind is MetricKind.CUSTOM_RATIO else 'outputs'}.splitLabel to the "
                    "label your application sets from the x-canarist-split header"
                    if metric.kind in (MetricKind.CUSTOM_RATIO, MetricKind.PREDICTION_DISTRIBUTION)
                    else ""
                )
                + ("; an slo alone stays valid" if metric.kind is not MetricKind.PREDICTION_DISTRIBUTION else ""),
            )


def _versions(rollout: ModelRollout) -> Iterator[Problem]:
    spec = rollout.spec
    if spec.stable.name == spec.canary.name:
        yield Problem(("spec", "canary", "name"), f"must differ from spec.stable.name ({spec.stable.name!r})")
    if spec.routing.mode is RoutingMode.SUBSET:
        for side in ("stable", "canary"):
            if not getattr(spec, side).labels:
                yield Problem(
                    ("spec", side, "labels"),
                    "required with routing mode Subset: the pod labels of this version",
                )
        if spec.stable.labels and spec.stable.labels == spec.canary.labels:
            yield Problem(("spec", "canary", "labels"), "select the same pods as spec.stable.labels")
    if rollout.host in spec.service.hosts:
        yield Problem(("spec", "service", "hosts"), f"repeats the service host {rollout.host!r}")


def _routing(rollout: ModelRollout) -> Iterator[Problem]:
    routing = rollout.spec.routing
    base: Path = ("spec", "routing")
    if routing.mode is RoutingMode.TRITON_VERSION:
        if routing.triton is None:
            yield Problem((*base, "triton"), "required with routing mode TritonVersion")
        elif routing.triton.stable_version == routing.triton.canary_version:
            yield Problem((*base, "triton", "canaryVersion"), "must differ from stableVersion")
        if rollout.spec.strategy.mirror is not None:
            yield Problem(
                ("spec", "strategy", "mirror"),
                "not supported with routing mode TritonVersion: a mirrored request keeps the stable version's path",
            )
    elif routing.triton is not None:
        yield Problem((*base, "triton"), "only allowed with routing mode TritonVersion")
    names: set[str] = set()
    for i, match in enumerate(routing.match):
        where: Path = (*base, "match", i)
        if not match.headers and match.cookie is None:
            yield Problem(where, "needs headers or a cookie to match")
        if match.name is not None:
            if match.name in names:
                yield Problem((*where, "name"), f"duplicate match name {match.name!r}")
            names.add(match.name)
        for header, string_match in match.headers.items():
            yield from _string_match((*where, "headers", header), string_match)
            if header == "cookie" and match.cookie is not None:
                yield Problem((*where, "headers", header), "conflicts with the cookie field of the same match")
    if routing.retries is not None and routing.retries.retry_on is not None:
        for condition in routing.retries.retry_on.split(","):
            if condition not in RETRY_CONDITIONS and not (condition.isdigit() and len(condition) == 3):
                yield Problem((*base, "retries", "retryOn"), f"unknown retry condition {condition!r}")


MAX_PORT = 65535


def _gate(rollout: ModelRollout) -> Iterator[Problem]:
    gate = rollout.spec.gate
    if gate is None:
        return
    base: Path = ("spec", "gate", "triton")
    triton, routing = gate.triton, rollout.spec.routing
    if routing.mode is RoutingMode.TRITON_VERSION:
        if triton.stable_url is not None:
            yield Problem(
                (*base, "stableUrl"), "only with routing mode Subset (with TritonVersion one Triton serves both)"
            )
        if routing.triton is not None and triton.model not in (None, routing.triton.model):
            yield Problem((*base, "model"), f"must be routing.triton.model ({routing.triton.model!r}) or left out")
    else:
        if triton.model is None:
            yield Problem((*base, "model"), "required with routing mode Subset: the model's name in Triton")
        if triton.stable_url is None:
            yield Problem((*base, "stableUrl"), "required with routing mode Subset: the stable's signature is compared")
    if not MIN_TIMEOUT_S <= triton.timeout_seconds <= MAX_TIMEOUT_S:
        yield Problem(
            (*base, "timeout"), f"must be from {MIN_TIMEOUT_S:g}s to {MAX_TIMEOUT_S:g}s: the controller waits for it"
        )
    for field in ("url", "stableUrl"):
        url = triton.url if field == "url" else triton.stable_url
        port = (url or "").rpartition(":")[2]
        if port.isdigit() and not 0 < int(port) <= MAX_PORT:
            yield Problem((*base, field), f"port {port} is not a TCP port (1 to {MAX_PORT})")
    for i, request in enumerate(triton.golden_requests):
        where: Path = (*base, "goldenRequests", i)
        for name, tensor in request.inputs.items():
            bounds = INTEGER_RANGES.get(tensor.datatype.value)
            bad = next(
                (v for v in tensor.data if bounds and not (v.is_integer() and bounds[0] <= v <= bounds[1])), None
            )
            if bad is not None and bounds is not None:
                yield Problem(
                    (*where, "inputs", name, "data"),
                    f"{bad:g} is not a {tensor.datatype.value} (integers {bounds[0]} to {bounds[1]})",
                )
            if math.prod(tensor.shape) != len(tensor.data):
                yield Problem(
                    (*where, "inputs", name, "data"),
                    f"holds {len(tensor.data)} values, shape {tensor.shape} needs {math.prod(tensor.shape)}",
                )
        for name, output in request.outputs.items():
            if output.shape is not None and output.data is not None and math.prod(output.shape) != len(output.data):
                yield Problem(
                    (*where, "outputs", name, "data"),
                    f"holds {len(output.data)} values, shape {output.shape} needs {math.prod(output.shape)}",
                )


def _string_match(where: Path, match: StringMatch) -> Iterator[Problem]:
    given = [f for f in ("exact", "prefix", "regex") if getattr(match, f) is not None]
    if len(given) != 1:
        yield Problem(where, "needs exactly one of exact, prefix or regex")


def _strategy(rollout: ModelRollout) -> Iterator[Problem]:
    strategy = rollout.spec.strategy
    base: Path = ("spec", "strategy")
    if strategy.steps is not None and strategy.step_weight is not None:
        yield Problem((*base, "stepWeight"), "give either steps or stepWeight, not both")
    if strategy.max_weight is not None and strategy.step_weight is None:
        yield Problem((*base, "maxWeight"), "only allowed together with stepWeight")
    if strategy.steps is not None:
        steps = strategy.steps
        if not steps:
            yield Problem((*base, "steps"), "needs at least one weight")
        for i in range(1, len(steps)):
            if steps[i] <= steps[i - 1]:
                yield Problem((*base, "steps", i), f"weights must increase: {steps[i]} follows {steps[i - 1]}")
        if steps and steps[0] == 100:
            yield Problem((*base, "steps", 0), "the first step must keep some traffic on stable to compare against")
    if strategy.step_weight is not None:
        top = strategy.max_weight if strategy.max_weight is not None else 100
        if strategy.step_weight > top:
            yield Problem((*base, "stepWeight"), f"is above maxWeight ({top})")
        elif strategy.step_weight == 100:
            yield Problem((*base, "stepWeight"), "must keep some traffic on stable to compare against")
    interval = parse_duration(strategy.interval)
    if interval < 1.0:
        yield Problem((*base, "interval"), "must be at least 1s")
    if parse_duration(strategy.progress_deadline) < interval:
        yield Problem((*base, "progressDeadline"), f"must be at least the interval ({strategy.interval})")


def _metrics(rollout: ModelRollout) -> Iterator[Problem]:
    seen: set[str] = set()
    for i, metric in enumerate(rollout.spec.analysis.metrics):
        where: Path = ("spec", "analysis", "metrics", i)
        if metric.name in seen:
            yield Problem((*where, "name"), f"duplicate metric name {metric.name!r}")
        seen.add(metric.name)
        yield from _metric(where, metric)


def _metric(where: Path, metric: Metric) -> Iterator[Problem]:
    traits = TRAITS[metric.kind]
    if metric.quantile is not None and not traits.has_quantile:
        yield Problem((*where, "quantile"), f"only allowed for IstioLatency ({metric.kind.value} compares a mean)")
    custom = metric.kind is MetricKind.CUSTOM_RATIO
    if custom and metric.ratio is None:
        yield Problem((*where, "ratio"), "required for kind CustomRatio: the success and total counters")
    if not custom:
        if metric.ratio is not None:
            yield Problem((*where, "ratio"), "only allowed for kind CustomRatio")
        if metric.higher_is_better is not None:
            yield Problem((*where, "higherIsBetter"), "only allowed for kind CustomRatio")
    outputs = metric.kind is MetricKind.PREDICTION_DISTRIBUTION
    if outputs:
        yield from _outputs(where, metric)
        return
    if metric.outputs is not None:
        yield Problem((*where, "outputs"), "only allowed for kind PredictionDistribution")
    if metric.on_drift is not None:
        yield Problem((*where, "onDrift"), "only allowed for kind PredictionDistribution")
    if metric.slo is None and metric.margin is None:
        yield Problem(where, "needs an slo, a margin against stable, or both")
    unit_hint = "a duration such as '250ms'" if traits.unit is Unit.SECONDS else "a fraction such as 0.02 or '2%'"
    if metric.slo is not None:
        allowed, refused = ("max", "min") if lower_is_better(metric) else ("min", "max")
        if getattr(metric.slo, refused) is not None:
            yield Problem(
                (*where, "slo", refused),
                f"{metric.kind.value} is bounded by slo.{allowed}, not slo.{refused}",
            )
        bound = getattr(metric.slo, allowed)
        if bound is None:
            yield Problem((*where, "slo", allowed), f"required: {unit_hint}")
        else:
            yield from _value(metric.kind, (*where, "slo", allowed), bound, unit_hint)
    if metric.margin is not None:
        given = [f for f in ("relative", "absolute") if getattr(metric.margin, f) is not None]
        if len(given) != 1:
            yield Problem((*where, "margin"), "needs exactly one of relative or absolute")
        if metric.margin.absolute is not None:
            yield from _value(metric.kind, (*where, "margin", "absolute"), metric.margin.absolute, unit_hint)


def _outputs(where: Path, metric: Metric) -> Iterator[Problem]:
    """A PredictionDistribution: its outputs' series and an absolute margin on the distance, nothing else."""
    if metric.outputs is None:
        yield Problem(
            (*where, "outputs"),
            "required for kind PredictionDistribution: the model's score histogram or class counter",
        )
    if metric.slo is not None:
        yield Problem((*where, "slo"), "PredictionDistribution compares the versions: set margin.absolute, not an slo")
    if metric.margin is None or metric.margin.absolute is None or metric.margin.relative is not None:
        yield Problem(
            (*where, "margin"),
            "PredictionDistribution needs margin.absolute: the distance allowed between the versions' outputs, "
            "e.g. 10%",
        )
        return
    problems = list(_value(metric.kind, (*where, "margin", "absolute"), metric.margin.absolute, "a fraction: '10%'"))
    yield from problems
    if not problems and parse_value(metric.kind, metric.margin.absolute) >= 1:
        yield Problem((*where, "margin", "absolute"), "must be below 1 (100%): every distance is at most 1")


def _value(kind: MetricKind, where: Path, value: float | str, unit_hint: str) -> Iterator[Problem]:
    try:
        number = parse_value(kind, value)
    except ValueError:
        yield Problem(where, f"expected {unit_hint} for {kind.value}, got {value!r}")
        return
    if number < 0:
        yield Problem(where, "must not be negative")
    elif TRAITS[kind].unit is Unit.FRACTION and number > 1:
        yield Problem(where, f"is a share and must be at most 1 (100%), got {value!r}")
