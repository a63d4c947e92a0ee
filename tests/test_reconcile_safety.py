"""Safety of one reconcile under the adversarial review's findings (issue 11), as classes of input.

- a paused rollout keeps its SLO guard (finding 3);
- no decision that gives the canary more traffic is recorded while its pods are not all ready,
  whoever asked (finding 5), and a restarted canary gets no traffic before its Start;
- an edge error anywhere in a reconcile ends that reconcile, never the controller (finding 2c),
  and a stored status of any shape is read without raising (finding 2d);
- the status stays within its byte bound whatever the metrics, looks and user strings (finding 7);
- one rollout's unexpected failure never stops another's (finding 2, the loop's isolation).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.api.model import ModelRollout
from controller.api.names import COMMAND_ANNOTATION, COMMAND_AT_ANNOTATION, COMMAND_BY_ANNOTATION, COMMAND_ID_ANNOTATION
from controller.api.schedule import RouteState
from controller.api.status import Action, Phase, RolloutStatus, Verdict
from controller.api.times import rfc3339, timestamp
from controller.engine.ports import ClusterUnavailableError, ConflictError, EdgeFailure
from controller.engine.reconcile import reconcile
from controller.engine.record import STATUS_BYTES_LIMIT, bounded, to_status
from controller.judge.machine import Evidence, MetricEvidence, Status
from controller.manager.loop import Manager
from controller.metrics.samples import Observation, Window
from tests.memory_cluster import MemoryCluster
from tests.test_reconcile import ENV, POLICY, T0, Synthetic, drive, status, weights


@pytest.fixture
def cluster() -> MemoryCluster:
    memory = MemoryCluster()
    memory.add(POLICY)
    return memory


def command(cluster: MemoryCluster, kind: str, command_id: str, now: float) -> None:
    """A fresh steering command as `canarist <kind>` writes it (see controller/engine/steering.py)."""
    cluster.annotate_rollout(
        "ml-serving",
        "fraud-detector",
        {
            COMMAND_ANNOTATION: kind,
            COMMAND_BY_ANNOTATION: "alice",
            COMMAND_ID_ANNOTATION: command_id,
            COMMAND_AT_ANNOTATION: rfc3339(now),
        },
    )


# --- finding 3: the SLO guard keeps running while paused ---------------------------------------


def test_a_paused_rollout_with_a_breaching_canary_is_rolled_back(cluster: MemoryCluster) -> None:
    drive(cluster, Synthetic(), minutes=2)
    command(cluster, "pause", "p1", T0 + 120)
    drive(cluster, Synthetic(), minutes=2, start=T0 + 120)
    assert status(cluster)["phase"] == "Paused"
    drive(cluster, Synthetic(canary_errors=0.5), minutes=5, start=T0 + 240)
    st = status(cluster)
    assert st["phase"] == "Failed", st["message"]
    assert any(t["action"] == "Rollback" and "SLO breached" in t["reason"] for t in st["history"])
    assert weights(cluster)[-1] == 0


def test_a_paused_healthy_rollout_stays_paused_and_keeps_looking(cluster: MemoryCluster) -> None:
    drive(cluster, Synthetic(), minutes=2)
    command(cluster, "pause", "p1", T0 + 120)
    drive(cluster, Synthetic(), minutes=6, start=T0 + 120)
    st = status(cluster)
    assert st["phase"] == "Paused"
    paused_at = next(t["at"] for t in reversed(st["history"]) if t["action"] == "Pause")
    assert st["lastAnalysisAt"] > paused_at  # the guard looked after the pause


# --- finding 5: the readiness gate cannot be bypassed ------------------------------------------

GATE_CASES = [
    # (what happens, how many ticks first, command)
    ("start", 0, None),
    ("advance", 4, None),
    ("promote", 1, "promote"),
    ("promote --full", 1, "promote-full"),
]


@pytest.mark.parametrize(("case", "minutes", "order"), GATE_CASES, ids=[c[0] for c in GATE_CASES])
@pytest.mark.parametrize("pods", [(0, 0), (0, 3), (2, 3)])
def test_no_more_canary_traffic_until_every_canary_pod_is_ready(
    cluster: MemoryCluster, case: str, minutes: int, order: str | None, pods: tuple[int, int]
) -> None:
    if minutes:
        drive(cluster, Synthetic(), minutes=minutes)
    before = status(cluster).get("canaryWeight", 0) if minutes else 0
    writes_before = len(cluster.route_writes)
    cluster.pods = pods
    if order:
        command(cluster, order, "c1", T0 + minutes * 60)
    drive(cluster, Synthetic(), minutes=3, start=T0 + minutes * 60)
    st = status(cluster)
    assert st["canaryWeight"] <= before, (case, st["message"])
    assert all(w <= before for w in weights(cluster)[writes_before:]), case
    assert f"waiting for canary pods to be ready ({pods[0]}/{pods[1]})" in st["message"], st["message"]
    if order:
        assert st.get("lastCommandId") != "c1"  # still pending: acted on once the pods are ready
        cluster.pods = (3, 3)
        drive(cluster, Synthetic(), minutes=1, start=T0 + minutes * 60 + 180)
        assert status(cluster)["lastCommandId"] == "c1"
        assert status(cluster)["canaryWeight"] > before


def test_a_new_canary_revision_gets_no_traffic_before_its_pods_are_ready(cluster: MemoryCluster) -> None:
    drive(cluster, Synthetic(), minutes=8)
    assert status(cluster)["canaryWeight"] >= 5
    cluster.pods = (0, 2)
    body = cluster.get_rollout("ml-serving", "fraud-detector")
    body["spec"]["canary"] = {"name": "v43", "labels": {"app": "fraud-detector", "version": "v43"}}
    cluster.create_or_update_rollout(body)
    drive(cluster, Synthetic(), minutes=2, start=T0 + 480)
    st = status(cluster)
    assert st["phase"] == "Initializing" and st["canaryWeight"] == 0
    assert weights(cluster)[-1] == 0  # the routes say what the status says
    cluster.pods = (2, 2)
    drive(cluster, Synthetic(), minutes=1, start=T0 + 600)
    assert status(cluster)["phase"] == "Progressing" and weights(cluster)[-1] == 1


# --- finding 2 (c, d): an edge error or a broken status ends one reconcile, never the process -----


class FlakyPods(MemoryCluster):
    """The pods list answers 503, as an API server under load does."""

    def pods_ready(self, namespace: str, labels: Mapping[str, str]) -> tuple[int, int]:
        raise ClusterUnavailableError("list pods: 503 Service Unavailable", retry_after=2.0)


def test_a_failing_pods_list_holds_the_rollout_with_the_retry_delay() -> None:
    flaky = FlakyPods()
    flaky.add(POLICY)
    outcomes = drive(flaky, Synthetic(), minutes=1)
    assert all(o.action is Action.NONE and "503" in o.reason and o.requeue_after == 2.0 for o in outcomes)
    assert flaky.route_writes == []


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=3),
    max_leaves=20,
)
STATUS_KEYS = [
    "phase", "currentStep", "history", "stepStartedAt", "canaryRevision", "message", "conditions", "metrics",
    "weights", "looks", "analyses", "distributions", "lastAnalysisAt", "lastCommandId", "canaryWeight",
]  # fmt: skip


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(stored=st.dictionaries(st.sampled_from(STATUS_KEYS), json_values, max_size=8) | json_values)
def test_any_stored_status_reconciles_without_raising_and_never_to_100(stored: Any) -> None:
    memory = MemoryCluster()
    body = copy.deepcopy(POLICY)
    body["status"] = stored
    memory.add(body)
    (obj,), _ = memory.list_rollouts(None)
    outcome = reconcile(obj, memory, Synthetic(), ENV, now=T0 + 1)
    assert outcome.canary_weight in (None, 0, 1), outcome  # nothing recorded: at most the first step


# --- finding 7: the status stays within its byte bound ------------------------------------------


def evidence(metrics: int, reason: str) -> Evidence:
    return Evidence(
        tuple(
            MetricEvidence(
                name=f"metric-{i:02d}", verdict=Verdict.INCONCLUSIVE, reason=reason, estimate=0.1, interval=(0.0, 0.2)
            )
            for i in range(metrics)
        ),
        1000,
    )


@settings(max_examples=8, deadline=None)
@given(
    metrics=st.integers(1, 50),
    looks=st.integers(1, 130),
    by=st.integers(0, 300_000),
    char=st.sampled_from(["r", "\u4e00", "\U0001f600"]),  # 1, 3 and 4 bytes in UTF-8
)
def test_the_status_stays_within_its_bytes_whatever_the_metrics_looks_and_strings(
    metrics: int, looks: int, by: int, char: str
) -> None:
    rollout_status = Status(phase=Phase.PROGRESSING, step=1, message="paused by " + "x" * by)
    previous: dict[str, Any] = {}
    for look in range(looks):
        previous = to_status(
            rollout_status,
            routes=RouteState(5),
            evidence=evidence(metrics, char * (by // 10)),
            previous=RolloutStatus.read(previous),
            generation=1,
            now=T0 + 60 * look,
            command_id="y" * by,
        )
        stored = json.dumps(previous, separators=(",", ":"), ensure_ascii=False).encode()  # as the API server keeps it
        assert len(stored) <= STATUS_BYTES_LIMIT
        kept = previous["looks"]  # the oldest looks shed first, every column still a value per look
        columns = [
            kept["step"],
            kept["canaryWeight"],
            *(c for m in kept["metrics"] for k, c in m.items() if k != "name"),
        ]
        assert all(len(column) == len(kept["at"]) for column in columns)
        assert not kept["at"] or kept["at"][-1] == timestamp(T0 + 60 * look)
    assert previous["phase"] == "Progressing" and previous["metrics"]


def test_a_status_over_its_bytes_sheds_the_oldest_looks_first_and_every_look_with_its_columns() -> None:
    looks = {
        "at": [timestamp(T0 + 60 * k) for k in range(4)],
        "step": [0, 0, 1, 1],
        "metrics": [{"name": f"m{i}", "eValue": [1.0, 2.0, 3.0, 4.0], "verdict": ["Pass"] * 4} for i in range(3)],
    }
    body = {"phase": "Progressing", "message": "x" * 1000, "looks": copy.deepcopy(looks)}
    one_look = len(json.dumps(body)) - 100  # about one look less than the whole
    shed = bounded(copy.deepcopy(body), limit=one_look)
    kept = shed["looks"]
    assert kept["at"] == looks["at"][-len(kept["at"]) :] and 0 < len(kept["at"]) < 4
    assert all(len(m["eValue"]) == len(m["verdict"]) == len(kept["at"]) for m in kept["metrics"])
    gone = bounded(copy.deepcopy(body), limit=1100)  # room for the message alone
    assert gone["looks"] == {"at": [], "step": [], "metrics": []} and gone["message"] == body["message"]


# --- finding 2: one rollout's failure never stops another's -------------------------------------


class Poisoned(Synthetic):
    """Metrics that blow up for one rollout: an unexpected bug in one reconcile, not an edge error."""

    def observe(
        self, rollouts: Sequence[ModelRollout], windows: Mapping[str, Sequence[Window]], at: float
    ) -> tuple[dict[str, Observation], EdgeFailure | None]:
        if any(r.metadata.name == "poisoned" for r in rollouts):
            raise RecursionError("maximum recursion depth exceeded")
        return super().observe(rollouts, windows, at)


def test_a_poisoned_rollout_among_healthy_ones_lets_the_healthy_ones_finish() -> None:
    memory = MemoryCluster()
    for name in ("alpha", "poisoned", "zulu"):
        body = copy.deepcopy(POLICY)
        body["metadata"]["name"] = name
        body["spec"]["service"]["name"] = name
        memory.add(body)
    clock = [T0]
    manager = Manager(memory, Poisoned(), ENV, lambda: clock[0])
    for _ in range(120):
        manager.tick()
        clock[0] += 30
    phases = {name: obj.get("status", {}).get("phase") for (_, name), obj in memory.rollouts.items()}
    assert phases["alpha"] == phases["zulu"] == "Succeeded", phases
    assert phases["poisoned"] == "Progressing"
    failures = [m for reason, m, warning in memory.events if reason == "ReconcileFailed" and warning]
    assert failures and all("RecursionError" in m for m in failures)
    assert len(failures) < 20  # backed off, not retried every tick


# --- the review of these fixes: commands, old records, exposure, requeue ------------------------


def edit(cluster: MemoryCluster, change: Any) -> None:
    """Edit the rollout's spec as `kubectl apply` would (a new generation)."""
    body = cluster.get_rollout("ml-serving", "fraud-detector")
    change(body["spec"])
    cluster.create_or_update_rollout(body)


def test_a_command_preempted_by_a_reschedule_is_acted_on_next_not_lost(cluster: MemoryCluster) -> None:
    drive(cluster, Synthetic(), minutes=8)
    assert status(cluster)["currentStep"] >= 1
    edit(cluster, lambda spec: spec["strategy"].update(steps=[2, 3, 4, 6]))
    command(cluster, "abort", "a1", T0 + 480)
    drive(cluster, Synthetic(), minutes=2, start=T0 + 480)
    st = status(cluster)
    actions = [t["action"] for t in st["history"]]
    assert "Reschedule" in actions and actions[-2:] == ["Rollback", "Complete"], actions
    assert st["phase"] == "Failed" and st["lastCommandId"] == "a1"


def test_a_record_from_before_transitions_kept_their_weight_never_jumps_on_an_edit(cluster: MemoryCluster) -> None:
    """A status the previous release wrote (no canaryWeight per transition): the stored weight counts."""
    drive(cluster, Synthetic(), minutes=8)
    stored = cluster.rollouts[("ml-serving", "fraud-detector")]["status"]
    before = stored["canaryWeight"]
    assert 5 <= before <= 50
    for entry in stored["history"]:
        entry.pop("canaryWeight", None)
    cluster.pods = (0, 2)
    edit(cluster, lambda spec: spec["strategy"].update(steps=[1, 60, 75, 90]))  # every step above 1 % jumps
    writes = len(cluster.route_writes)
    drive(cluster, Synthetic(), minutes=3, start=T0 + 480)
    assert all(w <= before for w in weights(cluster)[writes:]), weights(cluster)
    st = status(cluster)
    assert st["canaryWeight"] <= before and any(t["action"] == "Reschedule" for t in st["history"])


EXPOSURE_EDITS = {
    "a catch-all cohort": lambda spec: spec["routing"].update(
        match=[{"name": "all", "headers": {"user-agent": {"regex": ".*"}}}]
    ),
    "sticky users": lambda spec: spec["routing"].update(sticky={"cookieName": "canary"}),
    "a mirror": lambda spec: spec["strategy"].update(mirror={"percentage": 100}),
}


@pytest.mark.parametrize("change", list(EXPOSURE_EDITS.values()), ids=list(EXPOSURE_EDITS))
def test_who_else_reaches_the_canary_changed_mid_rollout_is_a_recorded_restart(
    cluster: MemoryCluster, change: Any
) -> None:
    drive(cluster, Synthetic(), minutes=8)
    cluster.pods = (0, 2)
    edit(cluster, change)
    drive(cluster, Synthetic(), minutes=2, start=T0 + 480)
    st = status(cluster)
    restart = st["history"][-1]
    assert restart["action"] == "Restart" and "cohorts, sticky users or the mirror changed" in restart["reason"]
    assert st["phase"] == "Initializing" and st["canaryWeight"] == 0 and weights(cluster)[-1] == 0


def test_a_promote_waiting_for_pods_does_not_delay_a_proven_regression(cluster: MemoryCluster) -> None:
    drive(cluster, Synthetic(), minutes=1)
    cluster.pods = (1, 2)
    command(cluster, "promote", "p1", T0 + 60)
    outcomes = drive(cluster, Synthetic(canary_errors=0.05), minutes=8, start=T0 + 60)
    rollback = next(i for i, o in enumerate(outcomes) if o.action is Action.ROLLBACK)
    assert rollback < 10, [o.reason for o in outcomes]  # minutes, not the command's ten-minute expiry
    assert "waiting for canary pods to be ready (1/2) before advance" in outcomes[0].reason


def test_a_pause_before_the_first_step_routes_nothing_to_the_canary(cluster: MemoryCluster) -> None:
    command(cluster, "pause", "p0", T0)
    outcome = reconcile(cluster.list_rollouts(None)[0][0], cluster, Synthetic(), ENV, now=T0 + 1)
    st = status(cluster)
    assert "Pause" not in [t["action"] for t in st["history"]]
    assert outcome.action is Action.START and st["lastCommandId"] == "p0"  # heard: nothing to hold yet


def test_a_paused_rollout_is_looked_at_every_interval(cluster: MemoryCluster) -> None:
    drive(cluster, Synthetic(), minutes=2)
    command(cluster, "pause", "p1", T0 + 120)
    (outcome,) = drive(cluster, Synthetic(), minutes=1, start=T0 + 120)[:1]
    assert outcome.phase is Phase.PAUSED and outcome.requeue_after == 60.0


class Contended(MemoryCluster):
    """Someone else keeps rewriting the rollouts GitOps applies: every write conflicts."""

    def create_or_update_rollout(self, body: Mapping[str, Any]) -> dict[str, Any]:
        raise ConflictError("still conflicting after retries")


def test_a_policy_that_keeps_conflicting_in_gitops_mode_never_stops_the_loop(tmp_path: Path) -> None:
    (tmp_path / "rollout.yaml").write_text(yaml.safe_dump(POLICY))
    memory = Contended()
    memory.add(POLICY)
    manager = Manager(memory, Synthetic(), ENV, lambda: T0, policies=tmp_path)
    outcomes = manager.tick()
    assert [o.key for o in outcomes] == ["ml-serving/fraud-detector"]  # the other rollouts still go on
