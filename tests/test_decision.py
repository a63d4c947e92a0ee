"""The rollout state machine, table-driven over every transition."""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import yaml

from controller.api.load import load
from controller.api.model import ModelRollout
from controller.api.schedule import RouteState, schedule
from controller.api.status import Action, Phase, Verdict
from controller.judge.gate import GateStatus, GateVerdict
from controller.judge.machine import Command, CommandKind, Evidence, MetricEvidence, Status, decide, routes_for

ROOT = Path(__file__).resolve().parent.parent
# fraud-detector: steps 1, 5, 25, 50; minRequests 500; deadline 20m; onNoData Pause; onInconclusive Abort
(ROLLOUT,) = load((ROOT / "policies/fraud-detector-istio.yaml").read_text(), "fraud")
LAST = len(schedule(ROLLOUT)) - 1
T0 = 1_000_000.0
DEADLINE = 20 * 60


def metric(verdict: Verdict, *, breach: bool = False, name: str = "latency-p99") -> MetricEvidence:
    return MetricEvidence(name=name, verdict=verdict, reason=f"{verdict.value.lower()} reason", slo_breached=breach)


def evidence(*verdicts: Verdict, requests: int = 1000, breach: bool = False) -> Evidence:
    metrics = tuple(metric(v, name=f"m{i}", breach=breach and i == 0) for i, v in enumerate(verdicts))
    return Evidence(metrics=metrics, canary_requests_in_step=requests)


def leaning(against: float, for_: float, *, requests: int = 1000) -> Evidence:
    """A passing m0 and an inconclusive m1 with e-values ``against`` and ``for_`` the canary."""
    m1 = replace(metric(Verdict.INCONCLUSIVE, name="m1"), e_regression=against, e_noninferiority=for_)
    return Evidence(metrics=(metric(Verdict.PASS, name="m0"), m1), canary_requests_in_step=requests)


HOLD = 10 * 60  # the default holdOnSuspicion


P, F, U, N = Verdict.PASS, Verdict.FAIL, Verdict.INCONCLUSIVE, Verdict.NODATA


@dataclass(frozen=True)
class Case:
    name: str
    phase: Phase
    step: int
    evidence: Evidence | None
    waited: float
    commands: tuple[Command, ...]
    action: Action
    to_phase: Phase
    to_step: int
    reason: str


def case(  # noqa: PLR0917 - one positional column per table column keeps the table readable
    name: str,
    phase: Phase,
    step: int,
    ev: Evidence | None,
    action: Action,
    to: Phase,
    to_step: int,
    reason: str,
    *,
    waited: float = 60.0,
    commands: tuple[CommandKind, ...] = (),
) -> Case:
    return Case(
        name, phase, step, ev, waited, tuple(Command(c, by="alice") for c in commands), action, to, to_step, reason
    )


CASES = [
    case(
        "initializing starts step 0",
        Phase.INITIALIZING,
        0,
        None,
        Action.START,
        Phase.PROGRESSING,
        0,
        "analysing step 0",
    ),
    case("pass advances", Phase.PROGRESSING, 0, evidence(P, P), Action.ADVANCE, Phase.PROGRESSING, 1, "step 1 (5%)"),
    case(
        "no harm advances early steps",
        Phase.PROGRESSING,
        1,
        evidence(P, U),
        Action.ADVANCE,
        Phase.PROGRESSING,
        2,
        "no harm detected",
    ),
    case(
        "suspect holds its weight",
        Phase.PROGRESSING,
        1,
        leaning(4.0, 0.5),
        Action.HOLD,
        Phase.PROGRESSING,
        1,
        "suspect: m1 (e-value 4 against, 0.5 for)",
    ),
    case(
        "suspect advances after holdOnSuspicion",
        Phase.PROGRESSING,
        1,
        leaning(4.0, 0.5),
        Action.ADVANCE,
        Phase.PROGRESSING,
        2,
        "no harm detected",
        waited=HOLD,
    ),
    case(
        "leaning towards the canary advances",
        Phase.PROGRESSING,
        1,
        leaning(0.5, 4.0),
        Action.ADVANCE,
        Phase.PROGRESSING,
        2,
        "no harm detected",
    ),
    case(
        "no evidence either way advances",
        Phase.PROGRESSING,
        1,
        leaning(1.0, 1.0),
        Action.ADVANCE,
        Phase.PROGRESSING,
        2,
        "no harm detected",
    ),
    case(
        "suspect on the last step is inconclusive",
        Phase.PROGRESSING,
        LAST,
        leaning(4.0, 0.5),
        Action.HOLD,
        Phase.PROGRESSING,
        LAST,
        "inconclusive: m1",
    ),
    case(
        "suspect with too few requests waits for them",
        Phase.PROGRESSING,
        1,
        leaning(4.0, 0.5, requests=10),
        Action.HOLD,
        Phase.PROGRESSING,
        1,
        "10 of 500 canary requests",
    ),
    case(
        "last step needs proof",
        Phase.PROGRESSING,
        LAST,
        evidence(P, U),
        Action.HOLD,
        Phase.PROGRESSING,
        LAST,
        "inconclusive: m1",
    ),
    case(
        "last step proven promotes",
        Phase.PROGRESSING,
        LAST,
        evidence(P, P),
        Action.PROMOTE,
        Phase.PROMOTING,
        LAST + 1,
        "non-inferiority proven",
    ),
    case(
        "too few requests holds",
        Phase.PROGRESSING,
        0,
        evidence(P, P, requests=10),
        Action.HOLD,
        Phase.PROGRESSING,
        0,
        "10 of 500 canary requests",
    ),
    case("no data holds", Phase.PROGRESSING, 2, evidence(P, N), Action.HOLD, Phase.PROGRESSING, 2, "no data: m1"),
    case(
        "no data past deadline pauses",
        Phase.PROGRESSING,
        2,
        evidence(P, N),
        Action.PAUSE,
        Phase.PAUSED,
        2,
        "past the progress deadline: paused",
        waited=DEADLINE + 1,
    ),
    case(
        "inconclusive past deadline aborts",
        Phase.PROGRESSING,
        LAST,
        evidence(U, P),
        Action.ROLLBACK,
        Phase.ROLLING_BACK,
        LAST,
        "inconclusive: m0, past the progress deadline: abort",
        waited=DEADLINE,
    ),
    case(
        "regression rolls back",
        Phase.PROGRESSING,
        1,
        evidence(F, P),
        Action.ROLLBACK,
        Phase.ROLLING_BACK,
        1,
        "regression proven: m0",
    ),
    case(
        "regression beats too few requests",
        Phase.PROGRESSING,
        1,
        evidence(F, P, requests=1),
        Action.ROLLBACK,
        Phase.ROLLING_BACK,
        1,
        "regression proven",
    ),
    case(
        "slo breach rolls back at once",
        Phase.PROGRESSING,
        0,
        evidence(F, N, requests=3, breach=True),
        Action.ROLLBACK,
        Phase.ROLLING_BACK,
        0,
        "SLO breached: m0",
    ),
    case(
        "slo breach overrides pause",
        Phase.PAUSED,
        2,
        evidence(F, P, breach=True),
        Action.ROLLBACK,
        Phase.ROLLING_BACK,
        2,
        "SLO breached",
    ),
    case(
        "slo breach beats promote command",
        Phase.PROGRESSING,
        1,
        evidence(F, P, breach=True),
        Action.ROLLBACK,
        Phase.ROLLING_BACK,
        1,
        "SLO breached",
        commands=(CommandKind.PROMOTE_FULL,),
    ),
    case("paused ignores passing evidence", Phase.PAUSED, 1, evidence(P, P), Action.NONE, Phase.PAUSED, 1, ""),
    case(
        "promoting completes", Phase.PROMOTING, LAST + 1, None, Action.COMPLETE, Phase.SUCCEEDED, LAST + 1, "promoted"
    ),
    case("rolling back completes", Phase.ROLLING_BACK, 2, None, Action.COMPLETE, Phase.FAILED, 2, "rolled back"),
    case(
        "succeeded is terminal", Phase.SUCCEEDED, LAST + 1, evidence(F, F), Action.NONE, Phase.SUCCEEDED, LAST + 1, ""
    ),
    case("failed is terminal", Phase.FAILED, 1, evidence(P, P), Action.NONE, Phase.FAILED, 1, ""),
    case("no analysis this tick", Phase.PROGRESSING, 1, None, Action.NONE, Phase.PROGRESSING, 1, ""),
    case(
        "abort",
        Phase.PROGRESSING,
        2,
        evidence(P, P),
        Action.ROLLBACK,
        Phase.ROLLING_BACK,
        2,
        "aborted by alice",
        commands=(CommandKind.ABORT,),
    ),
    case(
        "abort while paused",
        Phase.PAUSED,
        2,
        None,
        Action.ROLLBACK,
        Phase.ROLLING_BACK,
        2,
        "aborted by alice",
        commands=(CommandKind.ABORT,),
    ),
    case(
        "abort after success is ignored",
        Phase.SUCCEEDED,
        LAST + 1,
        None,
        Action.NONE,
        Phase.SUCCEEDED,
        LAST + 1,
        "",
        commands=(CommandKind.ABORT,),
    ),
    case(
        "pause",
        Phase.PROGRESSING,
        1,
        evidence(P, P),
        Action.PAUSE,
        Phase.PAUSED,
        1,
        "paused by alice",
        commands=(CommandKind.PAUSE,),
    ),
    case(
        "resume",
        Phase.PAUSED,
        1,
        None,
        Action.RESUME,
        Phase.PROGRESSING,
        1,
        "resumed by alice",
        commands=(CommandKind.RESUME,),
    ),
    case(
        "resume when not paused is ignored",
        Phase.PROGRESSING,
        LAST,
        evidence(U, U),
        Action.HOLD,
        Phase.PROGRESSING,
        LAST,
        "inconclusive",
        commands=(CommandKind.RESUME,),
    ),
    case(
        "promote skips one step",
        Phase.PROGRESSING,
        1,
        evidence(U, N),
        Action.ADVANCE,
        Phase.PROGRESSING,
        2,
        "step 1 skipped by alice",
        commands=(CommandKind.PROMOTE,),
    ),
    case(
        "promote on last step promotes",
        Phase.PROGRESSING,
        LAST,
        evidence(U, N),
        Action.PROMOTE,
        Phase.PROMOTING,
        LAST + 1,
        "skipped by alice",
        commands=(CommandKind.PROMOTE,),
    ),
    case(
        "promote full",
        Phase.PAUSED,
        0,
        None,
        Action.PROMOTE,
        Phase.PROMOTING,
        LAST + 1,
        "promoted to 100% by alice",
        commands=(CommandKind.PROMOTE_FULL,),
    ),
    case(
        "retry after failure",
        Phase.FAILED,
        2,
        None,
        Action.RETRY,
        Phase.INITIALIZING,
        0,
        "retried by alice",
        commands=(CommandKind.RETRY,),
    ),
    case(
        "retry while progressing is ignored",
        Phase.PROGRESSING,
        0,
        evidence(P, P),
        Action.ADVANCE,
        Phase.PROGRESSING,
        1,
        "non-inferiority",
        commands=(CommandKind.RETRY,),
    ),
]


@pytest.mark.parametrize("c", CASES, ids=lambda c: c.name)
def test_transition(c: Case) -> None:
    status = Status(phase=c.phase, step=c.step, step_started_at=T0, canary_revision="r1", message="")
    decision = decide(ROLLOUT, status, c.evidence, T0 + c.waited, commands=c.commands, canary_revision="r1")
    assert decision.action is c.action, decision.reason
    assert decision.status.phase is c.to_phase
    assert decision.status.step == c.to_step
    assert c.reason in decision.reason
    assert decision.routes == routes_for(ROLLOUT, decision.status)
    if c.action not in (Action.HOLD, Action.NONE):
        last = decision.status.history[-1]
        assert (last.from_phase, last.to_phase, last.action) == (c.phase, c.to_phase, c.action)
        assert last.at == T0 + c.waited and c.reason in last.reason
    else:
        assert decision.status.history == status.history


def test_every_phase_and_action_is_exercised() -> None:
    assert {c.phase for c in CASES} == set(Phase)
    assert {c.action for c in CASES} | {Action.RESTART, Action.RESCHEDULE} == set(Action)


def test_new_canary_revision_restarts_from_step_zero() -> None:
    status = Status(phase=Phase.PROGRESSING, step=3, step_started_at=T0, canary_revision="r1")
    decision = decide(ROLLOUT, status, evidence(P, P), T0 + 5, canary_revision="r2")
    assert (decision.action, decision.status.phase, decision.status.step) == (Action.RESTART, Phase.INITIALIZING, 0)
    assert decision.status.canary_revision == "r2"
    assert "r2" in decision.reason


def test_routes_follow_the_phase() -> None:
    assert routes_for(ROLLOUT, Status(Phase.INITIALIZING, 2)) == RouteState(0, cohorts=False)
    assert routes_for(ROLLOUT, Status(Phase.ROLLING_BACK, 3)) == RouteState(0, cohorts=False)
    assert routes_for(ROLLOUT, Status(Phase.FAILED, 3)) == RouteState(0, cohorts=False)
    assert routes_for(ROLLOUT, Status(Phase.PROMOTING, LAST + 1)) == RouteState(100)
    assert routes_for(ROLLOUT, Status(Phase.PROGRESSING, 2)) == RouteState(25)
    assert routes_for(ROLLOUT, Status(Phase.PAUSED, 1)) == RouteState(5)


def test_a_suspect_held_past_the_progress_deadline_gets_the_policy_choice() -> None:
    """A hold longer than the deadline ends as any inconclusive step does: here onInconclusive: Abort."""
    strategy = ROLLOUT.spec.strategy.model_copy(update={"hold_on_suspicion": "1h"})
    rollout = ROLLOUT.model_copy(update={"spec": ROLLOUT.spec.model_copy(update={"strategy": strategy})})
    status = Status(phase=Phase.PROGRESSING, step=1, step_started_at=T0)
    held = decide(rollout, status, leaning(4.0, 0.5), T0 + DEADLINE - 1)
    assert held.action is Action.HOLD and "suspect: m1" in held.reason
    aborted = decide(rollout, status, leaning(4.0, 0.5), T0 + DEADLINE + 1)
    assert aborted.action is Action.ROLLBACK
    assert "suspect: m1" in aborted.reason and "past the progress deadline" in aborted.reason


def with_predictions(on_drift: str | None) -> ModelRollout:
    """The policy plus a PredictionDistribution metric named ``predictions``."""
    metric = {
        "name": "predictions",
        "kind": "PredictionDistribution",
        "outputs": {"histogram": "fraud_score", "matchLabels": {"model": "fraud"}},
        "margin": {"absolute": "10%"},
        **({"onDrift": on_drift} if on_drift else {}),
    }
    doc = ROLLOUT.model_dump(by_alias=True, exclude_none=True, mode="json")
    doc["spec"]["analysis"]["metrics"].append(metric)
    (rollout,) = load(yaml.safe_dump(doc), "with-predictions")
    return rollout


@pytest.mark.parametrize(
    ("on_drift", "others", "action", "phase", "reason"),
    [
        (None, P, Action.ROLLBACK, Phase.ROLLING_BACK, "regression proven: predictions"),
        ("Rollback", P, Action.ROLLBACK, Phase.ROLLING_BACK, "regression proven: predictions"),
        ("Pause", P, Action.PAUSE, Phase.PAUSED, "prediction drift proven: predictions"),
        ("Pause", F, Action.ROLLBACK, Phase.ROLLING_BACK, "regression proven: latency-p99"),  # a real regression wins
    ],
)
def test_a_proven_prediction_drift_rolls_back_or_pauses_as_the_policy_says(
    on_drift: str | None, others: Verdict, action: Action, phase: Phase, reason: str
) -> None:
    rollout = with_predictions(on_drift)
    status = Status(phase=Phase.PROGRESSING, step=1, step_started_at=T0)
    drift = (metric(others, name="latency-p99"), metric(F, name="predictions"))
    decision = decide(rollout, status, Evidence(metrics=drift, canary_requests_in_step=1000), T0 + 60)
    assert (decision.action, decision.status.phase, decision.status.step) == (action, phase, 1)
    assert reason in decision.reason


def test_hold_on_suspicion_zero_never_holds() -> None:
    strategy = ROLLOUT.spec.strategy.model_copy(update={"hold_on_suspicion": "0s"})
    rollout = ROLLOUT.model_copy(update={"spec": ROLLOUT.spec.model_copy(update={"strategy": strategy})})
    status = Status(phase=Phase.PROGRESSING, step=1, step_started_at=T0)
    assert decide(rollout, status, leaning(4.0, 0.5), T0 + 60).action is Action.ADVANCE


def test_step_clock_restarts_on_advance_and_resume_but_not_on_hold() -> None:
    status = Status(phase=Phase.PROGRESSING, step=1, step_started_at=T0)
    held = decide(ROLLOUT, status, evidence(U, U, requests=10), T0 + 100).status
    assert held.step_started_at == T0
    advanced = decide(ROLLOUT, status, evidence(P, P), T0 + 100).status
    assert advanced.step_started_at == T0 + 100
    paused = replace(status, phase=Phase.PAUSED)
    resumed = decide(ROLLOUT, paused, None, T0 + 5000, commands=(Command(CommandKind.RESUME),)).status
    assert resumed.step_started_at == T0 + 5000


def test_a_whole_good_rollout_walks_every_step_then_promotes() -> None:
    status, now, seen = Status(canary_revision="r1"), T0, []
    for _ in range(20):
        decision = decide(ROLLOUT, status, evidence(P, P), now, canary_revision="r1")
        status, now = decision.status, now + 60
        seen.append((decision.action, decision.routes.canary_weight))
        if status.phase is Phase.SUCCEEDED:
            break
    assert [w for _, w in seen] == [1, 5, 25, 50, 100, 100]
    assert status.phase is Phase.SUCCEEDED
    assert [t.action for t in status.history] == [Action.START, *[Action.ADVANCE] * 3, Action.PROMOTE, Action.COMPLETE]


def test_weights_never_go_backwards_without_a_rollback() -> None:
    """Across random evidence, the canary weight only falls by a rollback (to 0, cohorts off)."""
    rng = random.Random(7)
    for _ in range(200):
        status, now, weight = Status(canary_revision="r"), T0, 0
        for _ in range(30):
            ev = Evidence(tuple(metric(rng.choice(list(Verdict)), name=f"m{i}") for i in range(2)), rng.randint(0, 900))
            commands = (Command(rng.choice(list(CommandKind))),) if rng.random() < 0.1 else ()
            decision = decide(ROLLOUT, status, ev, now, commands=commands, canary_revision="r")
            new = decision.routes.canary_weight
            if new < weight:
                assert decision.status.phase in (Phase.ROLLING_BACK, Phase.INITIALIZING), decision
                assert new == 0 or decision.status.phase is Phase.INITIALIZING
            weight, status, now = new, decision.status, now + rng.choice([30, 60, 900])
            assert len(status.history) <= 50


# --- the pre-traffic gate -----------------------------------------------------------------------

GATE_VERDICTS = {
    "passed": GateVerdict(GateStatus.PASSED, "ready"),
    "waiting": GateVerdict(GateStatus.WAITING, "loading"),
    "failed": GateVerdict(GateStatus.FAILED, "signature differs"),
}


@pytest.mark.parametrize("phase", [p for p in Phase if p is not Phase.INITIALIZING])
@pytest.mark.parametrize("verdict", list(GATE_VERDICTS))
def test_a_gate_verdict_changes_nothing_once_the_canary_was_started(phase: Phase, verdict: str) -> None:
    status = Status(phase=phase, step=1, step_started_at=T0 - 30, canary_revision="r1")
    seen = evidence(Verdict.PASS)
    assert decide(ROLLOUT, status, seen, T0, gate=GATE_VERDICTS[verdict]) == decide(ROLLOUT, status, seen, T0)


@pytest.mark.parametrize(
    ("verdict", "waited", "action", "phase", "reason"),
    [
        ("passed", 0, Action.START, Phase.PROGRESSING, "routes in place: analysing step 0; gate passed"),
        ("waiting", 60, Action.HOLD, Phase.INITIALIZING, "waiting for the gate: loading"),
        (
            "waiting",
            10_000,
            Action.ROLLBACK,
            Phase.ROLLING_BACK,
            "gate not passed within the progress deadline: loading",
        ),
        ("failed", 0, Action.ROLLBACK, Phase.ROLLING_BACK, "gate failed: signature differs"),
    ],
)
def test_before_the_start_the_gate_decides(
    verdict: str, waited: float, action: Action, phase: Phase, reason: str
) -> None:
    status = Status(phase=Phase.INITIALIZING, step_started_at=T0 - waited, canary_revision="r1")
    decision = decide(ROLLOUT, status, None, T0, gate=GATE_VERDICTS[verdict])
    assert (decision.action, decision.status.phase) == (action, phase)
    assert decision.reason.startswith(reason) and decision.routes.canary_weight == (1 if action is Action.START else 0)


def test_a_new_rollout_waiting_for_its_gate_starts_its_deadline_clock_now() -> None:
    decision = decide(ROLLOUT, Status(), None, T0, gate=GATE_VERDICTS["waiting"])
    assert decision.action is Action.HOLD and decision.status.step_started_at == T0


@pytest.mark.parametrize(
    ("kind", "acted"),
    [(CommandKind.ABORT, Action.ROLLBACK), (CommandKind.PROMOTE_FULL, Action.HOLD), (CommandKind.PROMOTE, Action.HOLD)],
)
def test_while_the_gate_waits_an_abort_acts_and_a_promote_waits(kind: CommandKind, acted: Action) -> None:
    status = Status(phase=Phase.INITIALIZING, step_started_at=T0 - 5, canary_revision="r1")
    decision = decide(ROLLOUT, status, None, T0, commands=(Command(kind, "alice"),), gate=GATE_VERDICTS["waiting"])
    assert decision.action is acted and decision.commands_heard is (acted is Action.ROLLBACK)
