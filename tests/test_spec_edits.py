"""A schedule edited mid-rollout, and a status edited by hand, never route more than the evidence reached.

Finding 4 of the adversarial review: steps [10, 25, 50] at step 2 edited to [10] sent 100 % to the
canary with no promotion recorded, and a status edited to ``currentStep: 99`` or ``phase: Promoting``
reached 100 % without evidence. The invariants, over every schedule, edit and phase:

- the routes of every decision are those its last recorded transition set (the record is the truth);
- the canary's weight rises only by a recorded Start, Advance or Promote;
- 100 % only after a recorded Promote.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from controller.api.model import ModelRollout
from controller.api.status import Action, Phase, RolloutStatus, Verdict
from controller.api.times import timestamp
from controller.engine.record import from_status, status_corrected, to_status
from controller.judge.machine import Command, CommandKind, Evidence, MetricEvidence, Status, decide, routes_for
from tests.test_decision import ROLLOUT, T0

RAISES = {Action.START, Action.ADVANCE, Action.PROMOTE}

schedules = st.lists(st.integers(1, 99), min_size=1, max_size=6, unique=True).map(sorted)
verdicts = st.sampled_from(list(Verdict))
commands = st.sampled_from([None, *CommandKind])


def with_steps(steps: list[int]) -> ModelRollout:
    strategy = ROLLOUT.spec.strategy.model_copy(update={"steps": steps, "step_weight": None, "mirror": None})
    return ROLLOUT.model_copy(update={"spec": ROLLOUT.spec.model_copy(update={"strategy": strategy})})


def evidence_of(verdict: Verdict, requests: int) -> Evidence:
    return Evidence((MetricEvidence(name="m0", verdict=verdict, reason="r"),), requests)


def check(before: Status, decision_status: Status, weight: int, action: Action, rollout: ModelRollout) -> None:
    """The invariants for one decision taken from ``before``."""
    previous = routes_for(rollout, before).canary_weight if not before.history else before.history[-1].weight
    assert weight == routes_for(rollout, decision_status).canary_weight
    if decision_status.history:
        assert decision_status.history[-1].weight == weight, (action, decision_status.history[-1])
    if previous is not None and weight > previous:
        # a pause before the first step starts the rollout paused at step 0 (through the readiness gate)
        starts_paused = action is Action.PAUSE and before.phase is Phase.INITIALIZING
        assert action in RAISES or starts_paused, (action, previous, weight)
    if weight == 100:
        assert any(t.action is Action.PROMOTE for t in decision_status.history), decision_status.history


@settings(max_examples=300, deadline=None)
@given(
    first=schedules,
    second=schedules,
    walk=st.lists(st.tuples(verdicts, st.integers(0, 2000), commands), min_size=1, max_size=8),
    after=st.tuples(verdicts, st.integers(0, 2000), commands),
)
def test_a_schedule_edited_at_any_point_never_routes_above_the_recorded_weight(
    first: list[int], second: list[int], walk: list[tuple[Verdict, int, CommandKind | None]], after: Any
) -> None:
    rollout, status, now = with_steps(first), Status(canary_revision="r"), T0
    for verdict, requests, command in walk:
        orders = (Command(command, by="alice"),) if command else ()
        decision = decide(rollout, status, evidence_of(verdict, requests), now, commands=orders, canary_revision="r")
        check(status, decision.status, decision.routes.canary_weight, decision.action, rollout)
        status, now = decision.status, now + 60
    edited = with_steps(second)
    verdict, requests, command = after
    orders = (Command(command, by="alice"),) if command else ()
    decision = decide(edited, status, evidence_of(verdict, requests), now, commands=orders, canary_revision="r")
    check(status, decision.status, decision.routes.canary_weight, decision.action, edited)


def test_steps_shortened_below_the_current_step_keep_a_recorded_weight_not_100() -> None:
    """The reviewer's case: [10, 25, 50] at step 2 (50 %) edited to [10]."""
    rollout, status = with_steps([10, 25, 50]), Status(canary_revision="r")
    for _ in range(3):
        status = decide(rollout, status, evidence_of(Verdict.PASS, 5000), T0, canary_revision="r").status
    assert (status.phase, status.step, routes_for(rollout, status).canary_weight) == (Phase.PROGRESSING, 2, 50)
    decision = decide(with_steps([10]), status, None, T0 + 60, canary_revision="r")
    assert decision.action is Action.RESCHEDULE
    assert (decision.status.step, decision.routes.canary_weight) == (0, 10)
    assert "steps changed: step 2 (50%) is now step 0 (10%)" in decision.reason


def test_steps_all_above_the_recorded_weight_restart_through_the_gate() -> None:
    rollout, status = with_steps([10, 25]), Status(canary_revision="r")
    status = decide(rollout, status, None, T0, canary_revision="r").status  # Start: 10 %
    decision = decide(with_steps([40, 80]), status, None, T0 + 60, canary_revision="r")
    assert (decision.action, decision.status.phase, decision.routes.canary_weight) == (
        Action.RESCHEDULE,
        Phase.INITIALIZING,
        0,
    )


def stored(rollout: ModelRollout, status: Status) -> dict[str, Any]:
    return to_status(
        status, routes=routes_for(rollout, status), evidence=None, previous=RolloutStatus(), generation=1, now=T0 + 600
    )


EDITS = [
    {"currentStep": 99},
    {"phase": "Promoting"},
    {"phase": "Succeeded", "currentStep": 4},
    {"phase": "Promoting", "currentStep": 99, "history": []},
    {"history": [1]},
    {"history": "x", "phase": "Paused"},
    {"history": [{"toPhase": "Promoting"}], "phase": "Promoting"},
]


def test_a_status_edited_by_hand_is_read_as_its_history_records_it() -> None:
    rollout, status = with_steps([10, 25, 50]), Status(canary_revision="r")
    status = decide(rollout, status, None, T0, canary_revision="r").status  # Start: step 0, 10 %
    for edit in EDITS:
        raw = {**stored(rollout, status), **edit}
        trusted = from_status(RolloutStatus.read(raw))
        assert routes_for(rollout, trusted).canary_weight <= 10, edit
        assert status_corrected(raw, trusted), edit
        decision = decide(rollout, trusted, None, T0 + 700, canary_revision="r")
        assert decision.routes.canary_weight <= 10, (edit, decision)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=25,
)
status_keys = st.sampled_from(
    [
        "phase",
        "currentStep",
        "history",
        "stepStartedAt",
        "canaryRevision",
        "message",
        "conditions",
        "metrics",
        "weights",
        "looks",
        "analyses",
        "distributions",
        "lastAnalysisAt",
        "lastCommandId",
        "canaryWeight",
    ]
)


@settings(max_examples=300, deadline=None)
@given(raw=st.dictionaries(status_keys, json_values, max_size=8) | json_values)
def test_any_stored_status_is_read_without_raising_and_never_past_its_record(raw: Any) -> None:
    status = from_status(RolloutStatus.read(raw))
    assert status.phase in (Phase.INITIALIZING, *(t.to_phase for t in status.history))
    previous = raw if isinstance(raw, dict) else {}
    body = to_status(
        status,
        routes=routes_for(ROLLOUT, status),
        evidence=None,
        previous=RolloutStatus.read(previous),
        generation=1,
        now=T0,
    )
    assert from_status(RolloutStatus.read(body)) == status or body["history"] == []


def test_timestamps_round_trip() -> None:
    assert (
        from_status(RolloutStatus.read({"phase": "Initializing", "stepStartedAt": timestamp(T0)})).step_started_at == T0
    )
