"""The typed status (controller.api.status): what the controller writes reads back as written, and
any stored value at all reads without raising into well-typed parts."""

from __future__ import annotations

import json
import math
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from controller.api.schedule import RouteState
from controller.api.status import (
    Action,
    AnalysisEntry,
    Condition,
    DistributionEntry,
    LookLog,
    MetricStatus,
    Phase,
    Requests,
    RolloutStatus,
    StoredTransition,
    Verdict,
    WeightEntry,
)
from controller.api.times import timestamp
from controller.engine.record import to_status
from controller.judge.machine import Distribution, Evidence, MetricEvidence, Status, Transition

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z


def stored_json(body: Any) -> str:
    """``body`` as the API server keeps it: compact JSON in UTF-8 (NaN as Python writes it)."""
    return json.dumps(body, separators=(",", ":"), allow_nan=True, ensure_ascii=False)


# --- what the controller writes -----------------------------------------------------------------

moments = st.floats(min_value=0, max_value=4e9, allow_nan=False)
numbers = st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(10**6), 10**6).map(float)
texts = st.text(max_size=30)
transitions = st.builds(
    Transition,
    at=moments,
    from_phase=st.sampled_from(Phase),
    to_phase=st.sampled_from(Phase),
    from_step=st.integers(0, 10),
    to_step=st.integers(0, 10),
    action=st.sampled_from(Action),
    reason=texts,
    weight=st.none() | st.integers(0, 100),
)
statuses = st.builds(
    Status,
    phase=st.sampled_from(Phase),
    step=st.integers(0, 10),
    step_started_at=moments,
    canary_revision=st.text("0123456789abcdef", max_size=12),
    message=texts,
    history=st.lists(transitions, max_size=4).map(tuple),
    canary_weight=st.none() | st.integers(0, 100),
    exposure_revision=st.text("0123456789abcdef", max_size=12),
)
counts = st.lists(st.integers(0, 10**6).map(float), min_size=2, max_size=5)
distributions = counts.flatmap(
    lambda stable: st.builds(
        Distribution,
        edges=st.lists(st.floats(0.001, 60), min_size=len(stable) - 1, max_size=len(stable) - 1).map(
            lambda e: (*e, math.inf)
        ),
        stable=st.just(tuple(stable)),
        canary=st.lists(st.integers(0, 10**6).map(float), min_size=len(stable), max_size=len(stable)).map(tuple),
    )
)
metric_evidence = st.builds(
    MetricEvidence,
    name=texts,
    verdict=st.sampled_from(Verdict),
    reason=texts,
    slo_breached=st.booleans(),
    e_regression=numbers,
    e_noninferiority=numbers,
    threshold=numbers,
    estimate=st.none() | numbers,
    interval=st.none() | st.tuples(numbers, numbers),
    n_stable=st.integers(0, 10**9),
    n_canary=st.integers(0, 10**9),
    distribution=st.none() | distributions,
)
evidences = st.none() | st.builds(
    Evidence, metrics=st.lists(metric_evidence, max_size=3).map(tuple), canary_requests_in_step=st.integers(0, 10**6)
)
routes = st.builds(
    RouteState,
    canary_weight=st.integers(0, 100),
    mirror_percent=st.floats(0, 100) | st.integers(0, 100),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    looks=st.lists(st.tuples(statuses, routes, evidences), min_size=1, max_size=3),
    generation=st.none() | st.integers(0, 10**6),
    command_id=st.none() | texts,
)
def test_what_the_controller_writes_reads_back_as_written(
    looks: list[tuple[Status, RouteState, Evidence | None]], generation: int | None, command_id: str | None
) -> None:
    """Class: any chain of writes, each over the last one read back: reading a written status and
    dumping it gives the same JSON, byte for byte and key for key."""
    written: dict[str, Any] = {}
    for i, (status, in_force, evidence) in enumerate(looks):
        written = to_status(
            status,
            routes=in_force,
            evidence=evidence,
            previous=RolloutStatus.read(written),
            generation=generation,
            now=T0 + 60 * i,
            command_id=command_id,
        )
        assert stored_json(RolloutStatus.read(written).dump()) == stored_json(written)


maybe_numbers = st.none() | numbers
look_metrics = st.builds(
    MetricStatus,
    name=st.none() | st.sampled_from(["latency-p99", "errors", "accuracy", "\u4e00"]),
    verdict=st.none() | st.sampled_from(Verdict),
    reason=st.none() | texts,
    slo_breached=st.none() | st.booleans(),
    e_value=maybe_numbers,
    e_value_non_inferiority=maybe_numbers,
    threshold=maybe_numbers,
    estimate=maybe_numbers,
    interval=st.none() | st.lists(maybe_numbers, min_size=2, max_size=2),
    requests=st.none()
    | st.builds(Requests, stable=st.none() | st.integers(0, 10**9), canary=st.none() | st.integers(0, 10**9)),
)
look_rows = st.builds(
    AnalysisEntry,
    at=st.integers(0, 4 * 10**9).map(float),
    step=st.none() | st.integers(0, 10),
    canary_weight=st.none() | st.integers(0, 100),
    metrics=st.lists(look_metrics, max_size=5),
)


def as_kept(row: AnalysisEntry) -> str:
    """What the look log keeps of a look, as JSON: the first metric of each name, when it has a
    value, its reals to six significant digits, no reason."""

    def real(value: float | None) -> float | None:
        return float(f"{value:.6g}") if value is not None and math.isfinite(value) else value

    metrics: dict[str, Any] = {}
    seen: set[str] = set()
    for m in row.metrics:
        if m.name is None or m.name in seen:
            continue
        seen.add(m.name)
        low, high = m.interval or (None, None)
        requests = m.requests or Requests()
        kept = MetricStatus(
            name=m.name, verdict=m.verdict, slo_breached=m.slo_breached, e_value=real(m.e_value),
            e_value_non_inferiority=real(m.e_value_non_inferiority), threshold=real(m.threshold),
            estimate=real(m.estimate), interval=[real(low), real(high)] if (low, high) != (None, None) else None,
            requests=requests if (requests.stable, requests.canary) != (None, None) else None,
        )  # fmt: skip
        if any(v is not None for k, v in kept.dump().items() if k != "name"):
            metrics[m.name] = kept.dump()
    row_json = {"at": row.at, "step": row.step, "canaryWeight": row.canary_weight, "metrics": metrics}
    return json.dumps(row_json, sort_keys=True, allow_nan=True)


@settings(max_examples=200, deadline=None)
@given(rows=st.lists(look_rows, max_size=12), limit=st.integers(1, 8))
@example(  # a name twice in one look, the first without a value: the first is the one kept (none)
    rows=[AnalysisEntry(at=0.0, metrics=[MetricStatus(name="errors"), MetricStatus(name="errors", estimate=0.0)])],
    limit=1,
)
def test_the_look_log_keeps_every_looks_numbers_as_columns(rows: list[AnalysisEntry], limit: int) -> None:
    """Class: any looks (metrics missing, repeated, unnamed or all None; NaN, infinities), appended
    one by one through the wire: the log's rows are the last ``limit`` looks, each as kept."""
    log = LookLog()
    for row in rows:
        stored = RolloutStatus(looks=log.appended(row, limit)).dump()
        log = RolloutStatus.read(json.loads(stored_json(stored))).looks
        assert all(len(m.e_value) == len(log.at) for m in log.metrics)  # every column a value per look
    assert [as_kept(row) for row in log.entries()] == [as_kept(row) for row in rows[-limit:]]
    if rows:  # the same looks stored as a list (before the columns) read to the same log
        listed = {"analyses": [row.dump() for row in rows[-limit:]]}
        assert [as_kept(row) for row in RolloutStatus.read(listed).looks.entries()] == [
            as_kept(r) for r in rows[-limit:]
        ]


# The JSON the controller wrote for this status before the look log was kept as columns (captured
# from to_status as it was, its look log a list of looks): still read, to the same status.
LIST_LOG_GOLDEN = (
    '{"phase":"Progressing","currentStep":2,"canaryWeight":20,"mirrorPercent":2.5,"stepStartedAt":"2026-01-01T'
    '00:10:00Z","canaryRevision":"abc123def456","exposureRevision":"e0e0e0e0e0e0","message":"step 2: holding",'
    '"observedGeneration":3,"lastAnalysisAt":"2026-01-01T00:10:00Z","lastCommandId":"cmd-1","metrics":[{"name"'
    ':"latency-p99","verdict":"Inconclusive","reason":"needs more data","sloBreached":false,"eValue":2.5,"eVal'
    'ueNonInferiority":0.75,"threshold":1e+300,"estimate":0.125,"interval":[-0.05,0.3],"requests":{"stable":12'
    '00,"canary":340}},{"name":"error-rate","verdict":"NoData","reason":"no requests","sloBreached":true,"eVal'
    'ue":1e+300,"eValueNonInferiority":1.0,"threshold":20.0,"estimate":null,"interval":null,"requests":{"stabl'
    'e":0,"canary":0}}],"history":[{"at":"2026-01-01T00:00:00Z","fromPhase":"Initializing","toPhase":"Progress'
    'ing","fromStep":0,"toStep":1,"action":"Start","reason":"canary pods ready","canaryWeight":5},{"at":"2026-'
    '01-01T00:10:00Z","fromPhase":"Progressing","toPhase":"Progressing","fromStep":1,"toStep":2,"action":"Adva'
    'nce","reason":"no harm: 一 ok"}],"weights":[{"at":"2026-01-01T00:00:00Z","canaryWeight":5},{"at":"2026-01-'
    '01T00:10:00Z","canaryWeight":20}],"analyses":[{"at":"2026-01-01T00:05:00Z","step":1,"canaryWeight":5,"met'
    'rics":[]},{"at":"2026-01-01T00:10:00Z","step":2,"canaryWeight":20,"metrics":[{"name":"latency-p99","verdi'
    'ct":"Inconclusive","sloBreached":false,"eValue":2.5,"eValueNonInferiority":0.75,"threshold":1e+300,"estim'
    'ate":0.125,"interval":[-0.05,0.3],"requests":{"stable":1200,"canary":340}},{"name":"error-rate","verdict"'
    ':"NoData","sloBreached":true,"eValue":1e+300,"eValueNonInferiority":1.0,"threshold":20.0,"estimate":null,'
    '"interval":null,"requests":{"stable":0,"canary":0}}]}],"distributions":[{"at":"2026-01-01T00:10:00Z","ste'
    'p":2,"action":"Advance","metric":"latency-p99","edges":[0.1,0.25],"stable":[10,40,50],"canary":[3,9,12]}]'
    ',"conditions":[{"type":"Progressing","status":"True","reason":"Progressing","message":"step 2: holding","'
    'lastTransitionTime":"2026-01-01T00:00:00Z"},{"type":"Paused","status":"False","reason":"Progressing","mes'
    'sage":"step 2: holding","lastTransitionTime":"2026-01-01T00:10:00Z"},{"type":"Succeeded","status":"False"'
    ',"reason":"Progressing","message":"step 2: holding","lastTransitionTime":"2026-01-01T00:10:00Z"},{"type":'
    '"Failed","status":"False","reason":"Progressing","message":"step 2: holding","lastTransitionTime":"2026-0'
    '1-01T00:10:00Z"}]}'
)

# The JSON the controller writes for this status: the stored shape is part of the contract, byte for byte.
GOLDEN = (
    '{"phase":"Progressing","currentStep":2,"canaryWeight":20,"mirrorPercent":2.5,"stepStartedAt":"2026-01-01T0'
    '0:10:00Z","canaryRevision":"abc123def456","exposureRevision":"e0e0e0e0e0e0","message":"step 2: holding","o'
    'bservedGeneration":3,"lastAnalysisAt":"2026-01-01T00:10:00Z","lastCommandId":"cmd-1","metrics":[{"name":"l'
    'atency-p99","verdict":"Inconclusive","reason":"needs more data","sloBreached":false,"eValue":2.5,"eValueNo'
    'nInferiority":0.75,"threshold":1e+300,"estimate":0.125,"interval":[-0.05,0.3],"requests":{"stable":1200,"c'
    'anary":340}},{"name":"error-rate","verdict":"NoData","reason":"no requests","sloBreached":true,"eValue":1e'
    '+300,"eValueNonInferiority":1.0,"threshold":20.0,"estimate":null,"interval":null,"requests":{"stable":0,"c'
    'anary":0}}],"history":[{"at":"2026-01-01T00:00:00Z","fromPhase":"Initializing","toPhase":"Progressing","fr'
    'omStep":0,"toStep":1,"action":"Start","reason":"canary pods ready","canaryWeight":5},{"at":"2026-01-01T00:'
    '10:00Z","fromPhase":"Progressing","toPhase":"Progressing","fromStep":1,"toStep":2,"action":"Advance","reas'
    'on":"no harm: 一 ok"}],"weights":[{"at":"2026-01-01T00:00:00Z","canaryWeight":5},{"at":"2026-01-01T00:10:00'
    'Z","canaryWeight":20}],"looks":{"at":["2026-01-01T00:05:00Z","2026-01-01T00:10:00Z"],"step":[1,2],"canaryW'
    'eight":[5,20],"metrics":[{"name":"latency-p99","verdict":[null,"Inconclusive"],"sloBreached":[null,false],'
    '"eValue":[null,2.5],"eValueNonInferiority":[null,0.75],"threshold":[null,1e+300],"estimate":[null,0.125],"'
    'low":[null,-0.05],"high":[null,0.3],"stable":[null,1200],"canary":[null,340]},{"name":"error-rate","verdic'
    't":[null,"NoData"],"sloBreached":[null,true],"eValue":[null,1e+300],"eValueNonInferiority":[null,1.0],"thr'
    'eshold":[null,20.0],"estimate":[null,null],"low":[null,null],"high":[null,null],"stable":[null,0],"canary"'
    ':[null,0]}]},"distributions":[{"at":"2026-01-01T00:10:00Z","step":2,"action":"Advance","metric":"latency-p'
    '99","edges":[0.1,0.25],"stable":[10,40,50],"canary":[3,9,12]}],"conditions":[{"type":"Progressing","status'
    '":"True","reason":"Progressing","message":"step 2: holding","lastTransitionTime":"2026-01-01T00:00:00Z"},{'
    '"type":"Paused","status":"False","reason":"Progressing","message":"step 2: holding","lastTransitionTime":"'
    '2026-01-01T00:10:00Z"},{"type":"Succeeded","status":"False","reason":"Progressing","message":"step 2: hold'
    'ing","lastTransitionTime":"2026-01-01T00:10:00Z"},{"type":"Failed","status":"False","reason":"Progressing"'
    ',"message":"step 2: holding","lastTransitionTime":"2026-01-01T00:10:00Z"}]}'
)


def test_the_stored_json_is_byte_for_byte_what_it_was() -> None:
    history = (
        Transition(T0, Phase.INITIALIZING, Phase.PROGRESSING, 0, 1, Action.START, "canary pods ready", 5),
        Transition(T0 + 600, Phase.PROGRESSING, Phase.PROGRESSING, 1, 2, Action.ADVANCE, "no harm: \u4e00 ok", None),
    )
    status = Status(Phase.PROGRESSING, 2, T0 + 600, "abc123def456", "step 2: holding", history, 20, "e0e0e0e0e0e0")
    latency = Distribution((0.1, 0.25, math.inf), (10.0, 40.0, 50.0), (3.0, 9.0, 12.0))
    evidence = Evidence(
        (
            MetricEvidence("latency-p99", Verdict.INCONCLUSIVE, "needs more data", False, 2.5, 0.75, math.inf,
                           0.125, (-0.05, 0.3), 1200, 340, latency),
            MetricEvidence("error-rate", Verdict.NODATA, "no requests", True, math.inf, 1.0, 20.0, None, None, 0, 0),
        ),
        340,
    )  # fmt: skip
    previous = {
        "weights": [{"at": "2026-01-01T00:00:00Z", "canaryWeight": 5}],
        "analyses": [{"at": "2026-01-01T00:05:00Z", "step": 1, "canaryWeight": 5, "metrics": []}],
        "conditions": [
            {"type": "Progressing", "status": "True", "reason": "Progressing", "message": "m",
             "lastTransitionTime": "2026-01-01T00:00:00Z"}
        ],
        "lastCommandId": "cmd-1",
        "canaryRevision": "abc123def456",
    }  # fmt: skip
    written = to_status(
        status,
        routes=RouteState(20, 2.5),
        evidence=evidence,
        previous=RolloutStatus.read(previous),
        generation=3,
        now=T0 + 600,
    )
    assert stored_json(written) == GOLDEN
    assert stored_json(RolloutStatus.read(json.loads(GOLDEN)).dump()) == GOLDEN
    assert stored_json(RolloutStatus.read(json.loads(LIST_LOG_GOLDEN)).dump()) == GOLDEN


# --- anything at all, read leniently ------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=25,
)
WIRE_NAMES = [field.alias for field in RolloutStatus.model_fields.values()] + ["analyses"]  # the list look log


def is_int(value: object, low: int | None = None, high: int | None = None) -> bool:
    return (
        isinstance(value, int)
        and not isinstance(value, bool)
        and (low is None or value >= low)
        and (high is None or value <= high)
    )


def is_real(value: object, *, finite: bool = True) -> bool:
    return (is_int(value) or isinstance(value, float)) and not (finite and not math.isfinite(float(value)))  # type: ignore[arg-type]


def optional(value: object, check: Any) -> bool:
    return value is None or check(value)


def any_real(value: object) -> bool:
    return value is None or is_real(value, finite=False)


def metric_well_typed(m: MetricStatus) -> bool:
    requests = m.requests
    return (
        optional(m.name, lambda v: isinstance(v, str))
        and optional(m.verdict, lambda v: isinstance(v, Verdict))
        and optional(m.reason, lambda v: isinstance(v, str))
        and optional(m.slo_breached, lambda v: isinstance(v, bool))
        and all(map(any_real, (m.e_value, m.e_value_non_inferiority, m.threshold, m.estimate)))
        and optional(m.interval, lambda v: len(v) == 2 and all(map(any_real, v)))
        and (requests is None or all(optional(x, is_int) for x in (requests.stable, requests.canary)))
    )


def moment(value: object) -> bool:
    return isinstance(value, float) and timestamp(value) != ""


def well_typed(s: RolloutStatus) -> bool:
    """Every kept value is of its declared type, within its range."""
    top = (
        optional(s.phase, lambda v: isinstance(v, Phase))
        and optional(s.current_step, lambda v: is_int(v, 0))
        and optional(s.canary_weight, lambda v: is_int(v, 0, 100))
        and optional(s.mirror_percent, is_real)
        and all(optional(x, moment) for x in (s.step_started_at, s.last_analysis_at))
        and all(optional(x, lambda v: isinstance(v, str)) for x in (s.canary_revision, s.exposure_revision))
        and all(optional(x, lambda v: isinstance(v, str)) for x in (s.message, s.last_command_id))
        and optional(s.observed_generation, is_int)
    )
    history = all(
        isinstance(t, StoredTransition)
        and optional(t.at, moment)
        and isinstance(t.from_phase, Phase) and isinstance(t.to_phase, Phase) and isinstance(t.action, Action)
        and is_int(t.from_step, 0) and is_int(t.to_step, 0) and isinstance(t.reason, str)
        and optional(t.canary_weight, lambda v: is_int(v, 0, 100))
        for t in s.history
    )  # fmt: skip
    weights = all(
        isinstance(w, WeightEntry) and optional(w.at, moment) and optional(w.canary_weight, lambda v: is_int(v, 0, 100))
        for w in s.weights
    )
    analyses = all(
        isinstance(a, AnalysisEntry)
        and optional(a.at, moment) and optional(a.step, lambda v: is_int(v, 0))
        and optional(a.canary_weight, lambda v: is_int(v, 0, 100)) and all(metric_well_typed(m) for m in a.metrics)
        for a in s.looks.entries()
    )  # fmt: skip
    shapes = all(
        isinstance(d, DistributionEntry)
        and optional(d.at, moment) and optional(d.step, lambda v: is_int(v, 0))
        and optional(d.action, lambda v: isinstance(v, Action)) and optional(d.metric, lambda v: isinstance(v, str))
        and optional(d.edges, lambda v: all(is_real(x) for x in v))
        and all(optional(c, lambda v: all(is_int(x) for x in v)) for c in (d.stable, d.canary))
        for d in s.distributions
    )  # fmt: skip
    conditions = all(
        isinstance(c, Condition)
        and all(optional(x, lambda v: isinstance(v, str)) for x in (c.type, c.status, c.reason, c.message))
        and optional(c.last_transition_time, moment)
        for c in s.conditions
    )
    return top and history and weights and analyses and shapes and conditions and all(map(metric_well_typed, s.metrics))


def read_well_typed(raw: object) -> RolloutStatus:
    read = RolloutStatus.read(raw)
    assert well_typed(read), read
    again = RolloutStatus.read(json.loads(stored_json(read.dump())))
    assert stored_json(again.dump()) == stored_json(read.dump())  # what is kept is stable
    return read


@settings(max_examples=300, deadline=None)
@given(raw=st.dictionaries(st.sampled_from(WIRE_NAMES) | st.text(max_size=8), json_values, max_size=10) | json_values)
def test_any_json_value_reads_without_raising_into_well_typed_parts(raw: Any) -> None:
    read_well_typed(raw)


def a_written_status() -> dict[str, Any]:
    return json.loads(GOLDEN)


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path inside a stored status (dict keys and list indexes)."""
    found = [prefix] if prefix else []
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else []
    for key, child in children:
        found += paths(child, (*prefix, key))
    return found


PATHS = paths(a_written_status())
wrong_values = st.sampled_from([None, True, False, -1, 101, 2.5, math.nan, "", "x", "2026-13-1", [], [1], {}, {"a": 1}])


@settings(max_examples=400, deadline=None)
@given(where=st.sampled_from(PATHS), value=wrong_values | json_values)
def test_a_written_status_with_any_field_replaced_reads_without_raising(where: tuple[Any, ...], value: Any) -> None:
    """Class: one value anywhere in a real status replaced by a value of another type: the rest of the
    status reads as it was, that value is left out (None) or its entry is dropped."""
    raw = a_written_status()
    parent = raw
    for key in where[:-1]:
        parent = parent[key]
    parent[where[-1]] = value
    read = read_well_typed(raw)
    if len(where) == 1 and where[0] not in ("metrics", "history", "weights", "analyses", "distributions", "conditions"):
        untouched = {k: v for k, v in a_written_status().items() if k != where[0]}
        assert {k: v for k, v in read.dump().items() if k != where[0]} == untouched


def test_entries_are_kept_as_the_controller_always_kept_them() -> None:
    """Log entries: any mapping is kept (unreadable fields None); a decision needs its phases, steps and
    action, and reads an unreadable weight as unrecorded, any reason as text; bools are no numbers."""
    read = RolloutStatus.read(
        {
            "weights": [{"at": "x", "canaryWeight": 5}, 7, {"canaryWeight": 101}, {"canaryWeight": True}],
            "history": [
                {"fromPhase": "Paused", "toPhase": "Progressing", "fromStep": 0, "toStep": 1, "action": "Resume",
                 "reason": 5, "canaryWeight": True, "at": 1767225600},
                {"fromPhase": "Paused", "toPhase": "Progressing", "fromStep": True, "toStep": 1, "action": "Resume"},
                {"fromPhase": "Paused", "toPhase": "Progressing", "fromStep": 0, "toStep": -1, "action": "Resume"},
                {"fromPhase": "Later", "toPhase": "Progressing", "fromStep": 0, "toStep": 1, "action": "Resume"},
            ],
            "currentStep": True,
            "canaryWeight": 100,
            "stepStartedAt": "2026-01-01T00:00:00",
        }
    )  # fmt: skip
    assert [(w.at, w.canary_weight) for w in read.weights] == [(None, 5), (None, None), (None, None)]
    (decision,) = read.history
    assert (decision.reason, decision.canary_weight, decision.at) == ("5", None, None)
    assert (read.current_step, read.canary_weight, read.step_started_at) == (None, 100, T0)


def test_a_prediction_distribution_is_recorded_by_bucket_name_and_a_huge_one_not_at_all() -> None:
    from controller.engine.record import OUTPUT_BUCKETS_LIMIT, distributions_log

    history = (Transition(T0, Phase.PROGRESSING, Phase.ROLLING_BACK, 1, 1, Action.ROLLBACK, "drift", 5),)
    status = Status(Phase.ROLLING_BACK, 1, T0, "r", "m", history)
    names = ("legit", "fraud", "x" * 500 + "\x1b[31m")
    outputs = Distribution((), (80.0, 20.0, 0.0), (50.0, 40.0, 10.0), names)
    huge = Distribution((), (1.0,) * (OUTPUT_BUCKETS_LIMIT + 1), (1.0,) * (OUTPUT_BUCKETS_LIMIT + 1), ("c",) * 33)
    evidence = Evidence(
        (
            MetricEvidence("predictions", Verdict.FAIL, "drift", distribution=outputs),
            MetricEvidence("classes", Verdict.FAIL, "drift", distribution=huge),
        ),
        100,
    )
    (entry,) = distributions_log([], status, evidence, T0, changed=True)
    stored = entry.dump()
    assert "edges" not in stored and stored["buckets"][:2] == ["legit", "fraud"]
    assert len(stored["buckets"][2]) <= 63 and "\x1b" not in stored["buckets"][2]
    assert (stored["stable"], stored["canary"]) == ([80, 20, 0], [50, 40, 10])


LOOK_TIMES = ["2026-01-01T00:00:00Z", "2026-01-01T00:01:00Z", "2026-01-01T00:02:00Z"]


def test_an_unreadable_cell_of_the_look_log_is_none_and_the_rest_of_its_look_and_column_kept() -> None:
    """Per cell, as the list form was per field: a bad time, step, e-value or an unknown verdict
    (a newer controller's) loses that cell alone."""
    latency = {"name": "lat", "eValue": [1.5, True, 3.5], "verdict": ["Pass", "Unheard", "Fail"]}
    raw = {"looks": {"at": [LOOK_TIMES[0], "yesterday", LOOK_TIMES[2]], "step": [0, -1, 1], "metrics": [latency]}}
    rows = RolloutStatus.read(raw).looks.entries()
    assert [(r.at, r.step) for r in rows] == [(T0, 0), (None, None), (T0 + 120, 1)]
    assert [[(m.e_value, m.verdict) for m in r.metrics] for r in rows] == [
        [(1.5, Verdict.PASS)],
        [],  # nothing of it readable: that look had no metric
        [(3.5, Verdict.FAIL)],
    ]


def test_a_look_log_that_cannot_be_read_leaves_the_list_form_beside_it_read() -> None:
    listed = [{"at": LOOK_TIMES[0], "step": 1, "canaryWeight": 5, "metrics": [{"name": "lat", "eValue": 2.0}]}]
    for unreadable in ("x", 3, None, []):
        looks = RolloutStatus.read({"looks": unreadable, "analyses": listed}).looks
        assert [(r.at, r.step, [m.e_value for m in r.metrics]) for r in looks.entries()] == [(T0, 1, [2.0])]
