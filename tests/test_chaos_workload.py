"""The workload faults of the chaos soak (controller/sandbox/chaos/workload) and the command invariant.

(a) Each workload kind as the controller sees it: one rollout, the real controller over the local API
    (no API faults), the event applied between passes, the controller's answer checked in what it
    stores, with the invariant checker watching every write.
(b) The ``command-once`` invariant is not vacuous: hand-made write sequences acting on a command
    twice, without recording it, or not as asked, are caught; a clean one passes. Outcomes a human
    steered are judged right only when the history names the command that decided them.
(c) A short seeded soak with faults, crashes and workload events of every kind: no violation, no
    wrong outcome.
"""

from __future__ import annotations

import copy
import logging
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from controller.api.load import from_object
from controller.api.names import COMMAND_ANNOTATION
from controller.edges.kube import KubeCluster
from controller.judge.machine import CommandKind
from controller.manager.loop import Manager
from controller.sandbox.chaos.invariants import InvariantChecker, restore_problem, wrong_outcome
from controller.sandbox.chaos.soak import SoakConfig, VirtualClock, run_soak
from controller.sandbox.chaos.truth import NAMESPACE, TruthMetrics, policy, ready_pods, user_objects
from controller.sandbox.chaos.workload import ISTIO_WAIT, Workload, WorkloadKind
from controller.sandbox.localapi import LocalApiServer, local_api_server
from controller.traffic.templating import default_environment
from tests.test_chaos import AT, ROLLOUT_KEY, check, clean_writes, rollout, transition

KEY = f"{NAMESPACE}/model-000"
ISTIO = "networking.istio.io"
BY = "(claimed, written by manager canarist-cli)"


# --- (a) each kind as the controller sees it ---------------------------------------------------


@dataclass
class Stage:
    """One rollout (on the user's own routes), its controller, the workload and the checker."""

    api: LocalApiServer
    workload: Workload
    manager: Manager
    clock: VirtualClock
    checker: InvariantChecker
    originals: list[dict[str, Any]]

    def passes(self, count: int, *, catch_up: bool = True) -> None:
        """``count`` passes of the controller, the workload's time moving between them (not its events)."""
        for _ in range(count):
            self.manager.tick()
            if catch_up:
                self.workload.catch_up(self.clock.now)
            self.clock.now += self.workload.tick

    def until(self, phase: str, most: int = 40) -> dict[str, Any]:
        for done in range(most + 1):
            if self.status().get("phase") == phase:
                return self.status()
            if done < most:
                self.passes(1)
        raise AssertionError(f"not {phase} after {most} passes: {self.status()}")

    def rollout(self) -> dict[str, Any]:
        found = self.api.get("canarist.io", "modelrollouts", NAMESPACE, "model-000")
        assert found is not None
        return found

    def status(self) -> dict[str, Any]:
        return self.rollout().get("status") or {}

    def last(self) -> dict[str, Any]:
        history: list[dict[str, Any]] = self.status()["history"]
        return history[-1]


def stage_for(truth: str, **workload: Any) -> Iterator[Stage]:
    with local_api_server() as api:
        checker = InvariantChecker()
        api.write_observer = checker
        for pod in ready_pods(0):
            api.seed(pod)
        originals = [api.seed(obj) for obj in user_objects(0)]
        api.seed(policy(0))
        load = Workload(api, seed=1, rate=1.0, **workload)
        cluster = KubeCluster(api.make_client(), request_timeout=5.0, **load.edge_settings())
        clock = VirtualClock()
        manager = Manager(
            cluster, TruthMetrics({KEY: truth}), default_environment(), clock, namespace=NAMESPACE, rng=random.Random(0)
        )
        yield Stage(api, load, manager, clock, checker, originals)
        assert [str(v) for v in checker.violations] == []


@pytest.fixture
def good() -> Iterator[Stage]:
    yield from stage_for("good")


@pytest.fixture
def regressing() -> Iterator[Stage]:
    yield from stage_for("regressing")


def test_a_flapping_canary_pod_holds_the_advance_until_it_is_ready_again(good: Stage) -> None:
    good.until("Progressing")
    good.workload.apply(WorkloadKind.POD_FLAP, KEY, good.clock.now)
    pod = good.api.get("", "pods", NAMESPACE, "model-000-v2-0") or {}
    assert pod["status"]["conditions"] == [{"type": "Ready", "status": "False"}]
    good.passes(8, catch_up=False)  # the pod stays unready: an advance is due, but held
    assert good.status()["canaryWeight"] == 5 and good.last()["action"] == "Start"
    assert "waiting for canary pods to be ready (0/1)" in good.status()["message"]
    good.clock.now += 600  # the kubelet reports it ready again
    good.workload.catch_up(good.clock.now)
    good.passes(1)
    assert good.last()["action"] == "Advance" and good.status()["canaryWeight"] == 25


def test_a_new_canary_revision_mid_rollout_restarts_the_rollout_on_it(good: Stage) -> None:
    good.until("Progressing")
    good.passes(3)
    before = good.status()
    assert before["canaryWeight"] > 5
    good.workload.apply(WorkloadKind.NEW_REVISION, KEY, good.clock.now)
    assert good.rollout()["spec"]["canary"] == {"name": "v3", "labels": {"app": "model-000", "version": "v3"}}
    good.passes(2)
    status = good.status()
    actions = [t["action"] for t in status["history"]]
    assert actions[-2:] == ["Restart", "Start"] and status["canaryRevision"] != before["canaryRevision"]
    assert status["canaryWeight"] == 5
    subsets = {
        s["name"] for s in (good.api.get(ISTIO, "destinationrules", NAMESPACE, "model-000-dr") or {})["spec"]["subsets"]
    }
    assert "v3" in subsets
    assert good.until("Succeeded")["history"][-1]["action"] == "Complete"


def test_policy_edits_mid_rollout_are_valid_and_keep_the_truth(regressing: Stage) -> None:
    regressing.until("Progressing")
    for _ in range(6):
        regressing.workload.apply(WorkloadKind.POLICY_EDIT, KEY, regressing.clock.now)
        edited = regressing.rollout()
        assert from_object(edited)[0] is not None, from_object(edited)[1]
        regressing.passes(1)
    assert regressing.rollout()["metadata"]["generation"] > 1
    regressing.until("Failed", most=60)
    assert wrong_outcome("regressing", regressing.rollout()) is None


def test_a_promote_is_acted_on_once_and_names_who_asked(good: Stage) -> None:
    good.until("Progressing")
    command_id = good.workload.command(KEY, CommandKind.PROMOTE, good.clock.now)
    by = good.rollout()["metadata"]["annotations"]["canarist.io/command-by"]
    good.passes(2)  # the controller looks again within an interval (two passes)
    status = good.status()
    skipped = [t for t in status["history"] if "skipped" in t["reason"]]
    assert status["lastCommandId"] == command_id and [t["action"] for t in skipped] == ["Advance"]
    assert skipped[0]["reason"] == f"step 0 skipped by {by} {BY}: step 1 (25%)"
    assert COMMAND_ANNOTATION not in (good.rollout()["metadata"].get("annotations") or {})  # consumed
    good.passes(3)
    assert sum("skipped by" in t["reason"] for t in good.status()["history"]) == 1


def test_a_command_arriving_mid_pass_is_acted_on_once(good: Stage) -> None:
    good.until("Progressing")
    command_id = good.workload.command(KEY, CommandKind.PAUSE, good.clock.now, arrival="mid-pass")
    assert COMMAND_ANNOTATION not in (good.rollout()["metadata"].get("annotations") or {})
    for _ in range(3):  # it lands before one of the controller's requests, which acts on it then or next
        good.manager.tick()
        good.clock.now += good.workload.tick
    assert good.status()["lastCommandId"] == command_id and good.status()["phase"] == "Paused"
    assert [t["action"] for t in good.status()["history"]].count("Pause") == 1


def test_an_abort_of_a_good_canary_is_a_right_failure(good: Stage) -> None:
    good.until("Progressing")
    good.workload.apply(WorkloadKind.ABORT, KEY, good.clock.now)
    assert good.until("Failed")["history"][-2]["reason"].startswith("aborted by ")
    assert wrong_outcome("good", good.rollout()) is None


def test_a_full_promotion_of_a_bad_canary_is_a_right_success(regressing: Stage) -> None:
    regressing.until("Progressing")
    regressing.workload.command(KEY, CommandKind.PROMOTE_FULL, regressing.clock.now)
    assert regressing.until("Succeeded")["history"][-2]["reason"].startswith("promoted to 100% by ")
    assert wrong_outcome("regressing", regressing.rollout()) is None


def test_a_paused_rollout_is_resumed_after_two_passes(good: Stage) -> None:
    good.until("Progressing")
    good.workload.apply(WorkloadKind.PAUSE, KEY, good.clock.now)
    assert good.until("Paused", most=2) and good.last()["reason"].startswith("paused by ")
    good.passes(5)
    assert [t["action"] for t in good.status()["history"] if t["action"] in ("Pause", "Resume")] == ["Pause", "Resume"]
    assert good.workload.injected["workload-resume"] == 1
    assert good.until("Succeeded")


def test_a_rollout_deleted_mid_step_gives_the_user_their_routes_back(good: Stage) -> None:
    good.until("Progressing")
    good.passes(2)
    good.workload.apply(WorkloadKind.DELETE, KEY, good.clock.now)
    assert good.workload.deleted == {KEY}
    good.passes(2)
    assert good.api.get("canarist.io", "modelrollouts", NAMESPACE, "model-000") is None
    for original in good.originals:
        plural = f"{original['kind'].lower()}s"
        current = good.api.get(ISTIO, plural, NAMESPACE, original["metadata"]["name"])
        assert restore_problem(original, current) is None


def istio_order(api: LocalApiServer) -> list[str]:
    """The Istio writes in order: "DR" / "VS" for a spec write, "DR reported" for istiod's report."""
    order = []
    for _, event, key, obj in api.history:
        if key[0] == ISTIO and event != "DELETED":
            kind = "DR" if key[1] == "destinationrules" else "VS"
            reported = (obj.get("status") or {}).get("observedGeneration") == obj["metadata"]["generation"]
            order.append(f"{kind} reported" if reported else kind)
    return order


@pytest.fixture
def late_istiod() -> Iterator[Stage]:
    yield from stage_for("good", istio_lag=(1.0, 1.0))


@pytest.fixture
def absent_istiod() -> Iterator[Stage]:
    yield from stage_for("good", istio_lag=(5.0, 5.0))


def test_a_late_reconciled_report_is_waited_for_before_the_route_moves(late_istiod: Stage) -> None:
    late_istiod.passes(1)
    assert istio_order(late_istiod.api)[:5] == ["DR", "VS", "DR", "DR reported", "VS"]  # the user's, then ours
    assert late_istiod.workload.istio_now == pytest.approx(1.0 + late_istiod.workload.tick)


def test_a_report_later_than_the_wait_does_not_stop_the_rollout(absent_istiod: Stage) -> None:
    absent_istiod.passes(1)
    assert istio_order(absent_istiod.api)[:4] == ["DR", "VS", "DR", "VS"]  # waited its 2 s, then went on
    assert absent_istiod.workload.istio_now == pytest.approx(ISTIO_WAIT + absent_istiod.workload.tick)
    assert absent_istiod.until("Succeeded")
    assert "DR reported" in istio_order(absent_istiod.api)  # istiod caught up in the end


# --- (b) the command invariant and steered outcomes ---------------------------------------------


def annotated(obj: dict[str, Any], command: str, command_id: str, by: str = "alice") -> dict[str, Any]:
    obj = copy.deepcopy(obj)
    obj["metadata"]["annotations"] = {
        "canarist.io/command": command,
        "canarist.io/command-id": command_id,
        "canarist.io/command-by": by,
        "canarist.io/command-at": AT[2],
    }
    return obj


def paused(command_id: str | None, *, reasons: tuple[str, ...] = (f"paused by alice {BY}",)) -> dict[str, Any]:
    """The rollout after clean_writes(), paused (once per reason), its status naming ``command_id``."""
    history = [transition("Start", AT[0], 5), transition("Advance", AT[1], 25)]
    for reason in reasons:
        history.append({**transition("Pause", AT[2], 25), "toPhase": "Paused", "reason": reason})
    obj = rollout(history, lastAnalysisAt=AT[1], phase="Paused")
    if command_id is not None:
        obj["status"]["lastCommandId"] = command_id
    return annotated(obj, "pause", command_id or "c1")


def test_a_command_acted_on_once_passes() -> None:
    writes = [*clean_writes(), (ROLLOUT_KEY, paused("c1"))]
    assert check(writes).violations == []


def test_a_command_acted_on_twice_is_caught() -> None:
    twice = paused("c1", reasons=(f"paused by alice {BY}", f"paused by alice {BY}"))
    writes = [*clean_writes(), (ROLLOUT_KEY, paused("c1")), (ROLLOUT_KEY, twice)]
    violations = check(writes).violations
    assert [(v.invariant, v.write) for v in violations] == [("command-once", 8)]
    assert "recorded without a new command id" in str(violations[0])


def test_a_command_id_decided_again_after_another_is_caught() -> None:
    resumed = paused("c2")
    resumed["status"]["phase"] = "Progressing"
    resumed["status"]["history"].append({**transition("Resume", AT[3], 25), "reason": f"resumed by bob {BY}"})
    resumed = annotated(resumed, "resume", "c2", by="bob")
    again = copy.deepcopy(resumed)
    again["status"]["lastCommandId"] = "c1"  # the old pause's id, acted on anew
    again["status"]["history"].append({**transition("Pause", AT[4], 25), "reason": f"paused by alice {BY}"})
    again = annotated(again, "pause", "c1")
    writes = [*clean_writes(), (ROLLOUT_KEY, paused("c1")), (ROLLOUT_KEY, resumed), (ROLLOUT_KEY, again)]
    assert [str(v).partition(": ")[2] for v in check(writes).violations] == [
        "modelrollouts chaos/model-000 at write 9: command 'c1' acted on again"
    ]


@pytest.mark.parametrize(
    ("obj", "detail"),
    [
        (paused("c1", reasons=(f"paused by alice {BY}",) * 2), "command 'c1' decided 2 times"),
        (paused("c1", reasons=(f"paused by mallory {BY}",)), "command pause by alice ('c1') recorded as Pause"),
        (annotated(paused("c1"), "abort", "c1"), "command abort by alice ('c1') recorded as Pause"),
        (annotated(paused("c1"), "pause", "c0"), "lastCommandId 'c1' while the object carries command 'c0'"),
        (paused(None), "recorded without a new command id"),
    ],
    ids=["two-decisions", "not-who-asked", "not-what-was-asked", "not-the-carried-id", "no-id"],
)
def test_a_command_not_recorded_as_asked_is_caught(obj: dict[str, Any], detail: str) -> None:
    violations = check([*clean_writes(), (ROLLOUT_KEY, obj)]).violations
    assert violations and all(v.invariant == "command-once" for v in violations)
    assert any(detail in str(v) for v in violations), violations


def test_an_advance_in_the_write_of_a_command_that_did_not_decide_it_is_caught() -> None:
    advance = [transition("Start", AT[0], 5), transition("Advance", AT[1], 25)]  # the analysis' words
    consumed = annotated(rollout(advance, lastCommandId="c1"), "pause", "c1")  # a pause heard, not acted
    writes = clean_writes()
    writes[4] = (ROLLOUT_KEY, consumed)
    assert {v.invariant for v in check(writes).violations} == {"promotion-without-evidence"}


def test_a_recorded_command_id_lost_is_caught() -> None:
    lost = paused("c1")
    del lost["status"]["lastCommandId"]
    lost["status"]["message"] = "later"
    assert "lastCommandId 'c1' lost" in str(
        check([*clean_writes(), (ROLLOUT_KEY, paused("c1")), (ROLLOUT_KEY, lost)]).violations
    )


def ended(phase: str, *reasons_actions: tuple[str, str]) -> dict[str, Any]:
    history = [{**transition(action, AT[i], 0), "reason": reason} for i, (action, reason) in enumerate(reasons_actions)]
    return rollout(history, phase=phase)


@pytest.mark.parametrize(
    ("truth", "obj", "right"),
    [
        ("good", ended("Failed", ("Rollback", f"aborted by alice {BY}"), ("Complete", "rolled back")), True),
        ("good", ended("Failed", ("Rollback", "progress deadline passed: abort")), False),
        ("good", ended("Failed", ("Rollback", f"aborted by alice {BY}"), ("Rollback", "SLO breached: x")), False),
        ("regressing", ended("Succeeded", ("Promote", f"promoted to 100% by bob {BY}")), True),
        ("slo-breach", ended("Succeeded", ("Promote", f"step 3 skipped by bob {BY}")), True),
        ("regressing", ended("Succeeded", ("Promote", "passed on every metric")), False),
        (
            "regressing",
            ended("Succeeded", ("Advance", f"step 0 skipped by bob {BY}: step 1 (25%)"), ("Promote", "ok")),
            False,
        ),
    ],
    ids=[
        "aborted",
        "deadline",
        "abort-then-slo",
        "promoted-full",
        "promoted-last-step",
        "analysis",
        "promoted-earlier",
    ],
)
def test_a_steered_outcome_is_right_only_when_the_command_decided_it(
    truth: str, obj: dict[str, Any], right: bool
) -> None:
    assert (wrong_outcome(truth, obj) is None) is right


# --- (c) the short soak with workload events ------------------------------------------------------


def test_a_short_seeded_soak_with_workload_events_keeps_every_invariant(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.CRITICAL, logger="canarist")
    began = time.monotonic()
    result = run_soak(SoakConfig(rollouts=6, seed=0, fault_rate=0.1, crash_rate=0.02, watch_every=2, workload_rate=0.5))
    assert result.violations == []
    assert result.wrong_outcomes == [] and result.unfinished == [] and result.not_restored == []
    assert {k.value for k in WorkloadKind} <= {k for k, n in result.faults.items() if n > 0}, result.faults
    assert result.restarts > 0
    assert time.monotonic() - began < 30
