"""The reconciler, tick by tick, against canarist's in-memory Cluster and a synthetic metrics source.

The edge itself (the official client against the HTTP fake of the API server) is tested in
test_kube.py; here the point is the composition: gates, analysis cadence, decisions, the order of
writes, restarts, human commands, and that nothing goes backwards without a rollback.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.api.model import ModelRollout
from controller.api.names import COMMAND_ANNOTATION, COMMAND_AT_ANNOTATION, COMMAND_BY_ANNOTATION, COMMAND_ID_ANNOTATION
from controller.api.schedule import RouteState
from controller.api.status import Action, Phase, RolloutStatus
from controller.api.times import parse_timestamp, rfc3339, timestamp
from controller.engine.ports import ClusterUnavailableError, EdgeFailure
from controller.engine.reconcile import Outcome, analysis_windows, reconcile
from controller.engine.record import ANALYSES_LIMIT, from_status, to_status
from controller.judge.machine import Status, Transition
from controller.metrics.samples import CountSeries, HistogramSeries, MetricData, Observation, Window
from controller.sandbox.chaos.truth import EDGES, HEALTHY, SLOW
from controller.traffic.templating import default_environment
from tests.memory_cluster import MemoryCluster

ROOT = Path(__file__).resolve().parent.parent
POLICY = yaml.safe_load((ROOT / "policies/fraud-detector-istio.yaml").read_text())
ENV = default_environment()
RPS = 200
T0 = 1_800_000_000.0  # on the minute grid


@dataclass
class Synthetic:
    """Deterministic traffic: 200 req/s split by each window's share; the canary as configured."""

    canary_errors: float = 0.005
    canary_latency: tuple[float, ...] = HEALTHY
    down: bool = False
    looks: int = 0

    def observe(
        self, rollouts: Sequence[ModelRollout], windows: Mapping[str, Sequence[Window]], at: float
    ) -> tuple[dict[str, Observation], EdgeFailure | None]:
        self.looks += 1
        out = {}
        for rollout in rollouts:
            ws = tuple(windows[rollout.key])
            if self.down:
                none: tuple[None, ...] = (None,) * len(ws)
                reason = "connection refused (temporary)"
                metrics = tuple(MetricData(m.name, None, reason) for m in rollout.spec.analysis.metrics)
                out[rollout.key] = Observation(ws, none, none, metrics)
                continue
            stable = [round(RPS * 60 * (1 - w.canary_share)) for w in ws]
            canary = [round(RPS * 60 * w.canary_share) for w in ws]
            hist = HistogramSeries(
                EDGES,
                tuple(tuple(float(round(n * s)) for s in HEALTHY) for n in stable),
                tuple(tuple(float(round(n * s)) for s in self.canary_latency) for n in canary),
            )
            # rounded down: rounding 0.6 expected errors up would make a healthy 1 % canary fail 0.83 %
            errors = CountSeries(
                tuple(math.floor(n * 0.005) for n in stable),
                tuple(stable),
                tuple(math.floor(n * self.canary_errors) for n in canary),
                tuple(canary),
            )
            metrics = (MetricData("latency-p99", hist), MetricData("error-rate", errors))
            out[rollout.key] = Observation(ws, tuple(stable), tuple(canary), metrics)
        return out, EdgeFailure("prometheus", "connection refused", retryable=True) if self.down else None


def drive(cluster: MemoryCluster, source: Synthetic, *, minutes: int, start: float = T0) -> list[Outcome]:
    """Reconcile the rollout once every 30 s for ``minutes`` minutes; return every outcome."""
    outcomes = []
    for tick in range(minutes * 2):
        (obj,), _ = cluster.list_rollouts(None)
        outcomes.append(reconcile(obj, cluster, source, ENV, now=start + 30 * tick + 1))
    return outcomes


def weights(cluster: MemoryCluster) -> list[int]:
    """The canary weight of every VirtualService write, in order."""
    out = []
    for kind, _, body in cluster.route_writes:
        if kind == "VirtualService":
            primary = next(r for r in body["spec"]["http"] if r["name"] == "primary")
            out.append(primary["route"][1]["weight"])
    return out


def status(cluster: MemoryCluster) -> dict[str, Any]:
    (obj,), _ = cluster.list_rollouts(None)
    return obj["status"]


@pytest.fixture
def cluster() -> MemoryCluster:
    memory = MemoryCluster()
    memory.add(POLICY)
    return memory


def test_a_good_canary_walks_every_step_and_is_promoted(cluster: MemoryCluster) -> None:
    drive(cluster, Synthetic(), minutes=40)
    assert status(cluster)["phase"] == "Succeeded", status(cluster)["message"]
    assert weights(cluster) == [1, 5, 25, 50, 100]
    assert [k for k, _, _ in cluster.route_writes][:2] == ["DestinationRule", "VirtualService"]
    actions = [t["action"] for t in status(cluster)["history"]]
    assert actions == ["Start", "Advance", "Advance", "Advance", "Promote", "Complete"]
    assert "non-inferiority proven" in status(cluster)["history"][-2]["reason"]
    assert [reason for reason, _, _ in cluster.events] == actions


def test_an_error_regression_rolls_back_to_100_percent_stable(cluster: MemoryCluster) -> None:
    drive(cluster, Synthetic(canary_errors=0.03), minutes=20)
    st = status(cluster)
    assert st["phase"] == "Failed"
    assert weights(cluster)[-1] == 0
    rollback = next(t for t in st["history"] if t["action"] == "Rollback")
    assert "error-rate" in rollback["reason"]
    error_rate = next(m for m in st["metrics"] if m["name"] == "error-rate")
    assert error_rate["verdict"] == "Fail" and error_rate["eValue"] >= error_rate["threshold"]
    assert any(warning for reason, _, warning in cluster.events if reason == "Rollback")


def test_an_slo_breach_rolls_back_at_the_first_analysis(cluster: MemoryCluster) -> None:
    outcomes = drive(cluster, Synthetic(canary_latency=SLOW), minutes=6)
    first_rollback = next(i for i, o in enumerate(outcomes) if o.action is Action.ROLLBACK)
    analyses = [i for i, o in enumerate(outcomes) if o.phase is not None and i <= first_rollback]
    assert "SLO breached: latency-p99" in outcomes[first_rollback].reason
    assert weights(cluster)[-1] == 0 and status(cluster)["phase"] == "Failed"
    assert first_rollback <= 4, analyses


def test_prometheus_down_holds_with_the_reason_then_pauses_at_the_deadline(cluster: MemoryCluster) -> None:
    source = Synthetic(down=True)
    outcomes = drive(cluster, source, minutes=10)
    assert all(o.action is not Action.ROLLBACK for o in outcomes)
    assert "no data" in status(cluster)["message"] and "connection refused" in status(cluster)["message"]
    assert weights(cluster) == [1]
    drive(cluster, source, minutes=14, start=T0 + 600)
    assert status(cluster)["phase"] == "Paused"
    assert "past the progress deadline" in status(cluster)["message"]


def test_prometheus_recovering_lets_the_rollout_continue(cluster: MemoryCluster) -> None:
    drive(cluster, Synthetic(down=True), minutes=5)
    assert weights(cluster) == [1]
    drive(cluster, Synthetic(), minutes=40, start=T0 + 300)
    assert status(cluster)["phase"] == "Succeeded"


def test_canary_pods_not_ready_hold_before_any_route_is_written(cluster: MemoryCluster) -> None:
    cluster.pods = (1, 3)
    outcomes = drive(cluster, Synthetic(), minutes=2)
    assert cluster.route_writes == []
    assert "waiting for canary pods to be ready (1/3)" in outcomes[-1].reason
    cluster.pods = (3, 3)
    drive(cluster, Synthetic(), minutes=1, start=T0 + 120)
    assert weights(cluster) == [1]


def test_quiet_ticks_write_nothing(cluster: MemoryCluster) -> None:
    outcomes = drive(cluster, Synthetic(), minutes=1)
    assert outcomes[0].route_writes == 2 and outcomes[0].status_written
    quiet = reconcile(cluster.list_rollouts(None)[0][0], cluster, Synthetic(), ENV, now=T0 + 45)
    assert quiet.route_writes == 0 and not quiet.status_written


def test_a_lost_status_write_never_sends_the_weights_back(cluster: MemoryCluster) -> None:
    """A failed status write stops the tick before any route moves; later ticks never go back."""
    drive(cluster, Synthetic(), minutes=3)
    before = weights(cluster)
    original = cluster.patch_rollout_status

    def lost(*args: Any, **kwargs: Any) -> Any:
        raise ClusterUnavailableError("connection reset", retry_after=1.0)

    cluster.patch_rollout_status = lost  # type: ignore[method-assign]
    obj = cluster.list_rollouts(None)[0][0]
    reconcile(obj, cluster, Synthetic(), ENV, now=T0 + 200)
    cluster.patch_rollout_status = original  # type: ignore[method-assign]
    drive(cluster, Synthetic(), minutes=40, start=T0 + 201)
    seen = weights(cluster)
    assert seen[: len(before)] == before
    assert all(b >= a for a, b in itertools.pairwise(seen)), seen
    assert status(cluster)["phase"] == "Succeeded"


@pytest.mark.parametrize("kill_after", range(1, 12))
def test_restarting_at_any_tick_resumes_the_same_step(cluster: MemoryCluster, kill_after: int) -> None:
    """State lives in the cluster: a fresh controller (nothing in memory) continues identically."""
    drive(cluster, Synthetic(), minutes=kill_after)
    step_before = status(cluster)["currentStep"]
    fresh = reconcile(cluster.list_rollouts(None)[0][0], cluster, Synthetic(), ENV, now=T0 + kill_after * 60 + 5)
    assert status(cluster)["currentStep"] >= step_before
    assert fresh.action is not Action.ROLLBACK


def annotate(cluster: MemoryCluster, command: str, command_id: str, at: float) -> None:
    cluster.annotate_rollout(
        "ml-serving",
        "fraud-detector",
        {
            COMMAND_ANNOTATION: command,
            COMMAND_BY_ANNOTATION: "alice",
            COMMAND_ID_ANNOTATION: command_id,
            COMMAND_AT_ANNOTATION: rfc3339(at),  # commands expire: issued just before it is acted on
        },
    )


def test_pause_resume_and_abort_are_honoured_once_with_who_asked(cluster: MemoryCluster) -> None:
    drive(cluster, Synthetic(), minutes=2)
    annotate(cluster, "pause", "1", T0 + 120)
    drive(cluster, Synthetic(), minutes=10, start=T0 + 120)
    st = status(cluster)
    assert st["phase"] == "Paused" and "paused by alice" in st["message"] and st["lastCommandId"] == "1"
    paused_weights = weights(cluster)
    annotate(cluster, "resume", "2", T0 + 720)
    drive(cluster, Synthetic(), minutes=1, start=T0 + 720)
    assert status(cluster)["phase"] == "Progressing"
    annotate(cluster, "abort", "3", T0 + 780)
    drive(cluster, Synthetic(), minutes=2, start=T0 + 780)
    assert status(cluster)["phase"] == "Failed"
    assert "aborted by alice" in [t["reason"] for t in status(cluster)["history"]][-2]
    assert weights(cluster)[-1] == 0 and weights(cluster)[: len(paused_weights)] == paused_weights


def test_promote_full_goes_straight_to_100(cluster: MemoryCluster) -> None:
    drive(cluster, Synthetic(), minutes=1)
    annotate(cluster, "promote-full", "9", T0 + 60)
    drive(cluster, Synthetic(), minutes=1, start=T0 + 60)
    assert status(cluster)["phase"] == "Succeeded" and weights(cluster)[-1] == 100


def test_a_new_canary_restarts_from_the_first_step(cluster: MemoryCluster) -> None:
    drive(cluster, Synthetic(), minutes=8)
    assert status(cluster)["currentStep"] >= 1
    body = cluster.get_rollout("ml-serving", "fraud-detector")
    body["spec"]["canary"] = {"name": "v43", "labels": {"app": "fraud-detector", "version": "v43"}}
    cluster.create_or_update_rollout(body)
    drive(cluster, Synthetic(), minutes=2, start=T0 + 480)
    history = status(cluster)["history"]
    assert any(t["action"] == "Restart" for t in history)
    assert status(cluster)["currentStep"] <= 1
    restarted = parse_timestamp(next(t["at"] for t in history if t["action"] == "Restart"))
    times = {"weights": [w["at"] for w in status(cluster)["weights"]], "looks": status(cluster)["looks"]["at"]}
    for log, stamps in times.items():  # the report's logs describe the new canary only
        assert stamps and all(parse_timestamp(at) >= restarted for at in stamps), log


def test_an_invalid_rollout_is_refused_with_an_event_and_no_routes(cluster: MemoryCluster) -> None:
    body = cluster.get_rollout("ml-serving", "fraud-detector")
    body["spec"]["strategy"]["steps"] = [50, 5]
    cluster.create_or_update_rollout(body)
    outcome = drive(cluster, Synthetic(), minutes=1)[0]
    assert outcome.action is Action.NONE and "steps" in outcome.reason
    assert cluster.route_writes == [] and cluster.events[0][0] == "InvalidSpec"


def test_windows_carry_the_time_weighted_share_of_each_step(cluster: MemoryCluster) -> None:
    drive(cluster, Synthetic(), minutes=6)
    (obj,), _ = cluster.list_rollouts(None)
    rollout = ModelRollout.model_validate({**obj, "metadata": {"name": "x", "namespace": "ml-serving"}})
    st = from_status(RolloutStatus.read(obj["status"]))
    windows = analysis_windows(rollout, st, T0 + 6 * 60 + 1)
    assert windows[0].start >= T0 and all(w.end - w.start == 60 for w in windows)
    assert windows[0].canary_share == pytest.approx(0.01 * 59 / 60)  # started 1 s into the first window
    assert windows[1].canary_share == pytest.approx(0.01)
    assert all(0.0 <= w.canary_share <= 0.05 for w in windows)


def test_deleting_a_rollout_restores_the_routes_then_lets_it_go(cluster: MemoryCluster) -> None:
    drive(cluster, Synthetic(), minutes=2)
    (obj,), _ = cluster.list_rollouts(None)
    assert "canarist.io/restore-routes" in obj["metadata"]["finalizers"]
    assert cluster.routes
    cluster.rollouts[("ml-serving", "fraud-detector")]["metadata"]["deletionTimestamp"] = "2027-01-15T08:00:00Z"
    (obj,), _ = cluster.list_rollouts(None)
    outcome = reconcile(obj, cluster, Synthetic(), ENV, now=T0 + 200)
    assert outcome.reason == "deleted: routes restored" and outcome.route_writes == 2
    assert cluster.routes == {} and cluster.rollouts == {}
    assert cluster.events[-1][0] == "RoutesReleased"


def test_the_status_keeps_what_a_report_draws(cluster: MemoryCluster) -> None:
    drive(cluster, Synthetic(), minutes=40)
    stored = status(cluster)
    assert [w["canaryWeight"] for w in stored["weights"]] == [1, 5, 25, 50, 100]
    looks = stored["looks"]  # a column per field, a value per look
    assert len(looks["at"]) >= 5
    assert len(looks["step"]) == len(looks["canaryWeight"]) == len(looks["at"])
    assert looks["step"] == sorted(looks["step"])
    first = looks["metrics"][0]
    assert "reason" not in first
    assert all(len(column) == len(looks["at"]) for key, column in first.items() if key != "name")
    assert all(e >= 0 for e in first["eValue"])
    # One latency snapshot per decision that moved the rollout, its counts cumulative and per version.
    snapshots = stored["distributions"]
    assert [s["action"] for s in snapshots] == ["Advance", "Advance", "Advance", "Promote"]
    for snapshot in snapshots:
        assert snapshot["metric"] == "latency-p99"
        assert len(snapshot["stable"]) == len(snapshot["canary"]) == len(snapshot["edges"]) + 1
        assert snapshot["canary"] == sorted(snapshot["canary"]) and snapshot["canary"][-1] > 0
    totals = [s["canary"][-1] for s in snapshots]
    assert totals == sorted(totals)


def test_the_report_logs_stay_bounded(cluster: MemoryCluster) -> None:
    drive(cluster, Synthetic(canary_latency=SLOW), minutes=2)
    previous = {"analyses": [{"at": "x", "metrics": []}] * 500, "weights": "not a list", "distributions": [1, 2]}
    (obj,), _ = cluster.list_rollouts(None)

    def written(stored: dict[str, Any]) -> dict[str, Any]:
        """The status written over ``stored`` without a look."""
        status = from_status(RolloutStatus.read(obj["status"]))
        return to_status(status, routes=RouteState(5), evidence=None, previous=RolloutStatus.read(stored),
                         generation=1, now=T0)  # fmt: skip

    body = written(previous)
    assert len(body["looks"]["at"]) == ANALYSES_LIMIT  # the list form read, and cut to the bound
    assert body["weights"] == [{"at": timestamp(T0), "canaryWeight": 5}]
    assert body["distributions"] == []
    at = [timestamp(T0 - 60 * k) for k in range(5, 0, -1)]
    edited = {"looks": {"at": at, "metrics": [{"name": "errors", "eValue": [2.0] * 300, "verdict": ["Pass"]}]}}
    looks = written(edited)["looks"]
    (errors,) = looks["metrics"]  # a column longer than the log (edited by hand) cut to it
    assert looks["at"] == at and errors["eValue"] == [2.0] * 5 and errors["verdict"] == ["Pass"] + [None] * 4


def test_windows_around_a_step_change_are_marked_unsteady(cluster: MemoryCluster) -> None:
    drive(cluster, Synthetic(), minutes=6)
    (obj,), _ = cluster.list_rollouts(None)
    status = from_status(RolloutStatus.read(obj["status"]))
    changes = [t.at for t in status.history]
    rollout = ModelRollout.model_validate({**obj, "metadata": {"name": "x", "namespace": "ml-serving"}})
    found = analysis_windows(rollout, status, T0 + 6 * 60)
    for window in found:
        near = any(window.end - 120 < at < window.end for at in changes)
        assert window.steady is not near, (window, changes)
    assert any(w.steady for w in found) and not all(w.steady for w in found)


def test_a_decision_is_marked_in_force_in_a_second_write_once_its_routes_are_written(cluster: MemoryCluster) -> None:
    calls: list[str] = []
    patch, apply = cluster.patch_rollout_status, cluster.apply_routes

    def patched(*args: Any, **kwargs: Any) -> Any:
        calls.append("status" + (" routedAt" if args[2]["history"][-1].get("routedAt") else ""))
        return patch(*args, **kwargs)

    def applied(*args: Any, **kwargs: Any) -> Any:
        calls.append("routes")
        return apply(*args, **kwargs)

    cluster.patch_rollout_status, cluster.apply_routes = patched, applied  # type: ignore[method-assign]
    drive(cluster, Synthetic(), minutes=1)
    assert calls[:3] == ["status", "routes", "status routedAt"]
    (start,) = status(cluster)["history"]
    assert start["action"] == "Start" and start["routedAt"] == start["at"]


def test_a_decision_whose_routes_failed_is_marked_in_force_by_the_pass_that_writes_them(cluster: MemoryCluster) -> None:
    """The routes first in that pass: the status never says they are in force before they are."""
    calls: list[str] = []
    patch, apply = cluster.patch_rollout_status, cluster.apply_routes
    down = True

    def patched(*args: Any, **kwargs: Any) -> Any:
        calls.append("status" + (" routedAt" if args[2]["history"][-1].get("routedAt") else ""))
        return patch(*args, **kwargs)

    def applied(*args: Any, **kwargs: Any) -> Any:
        calls.append("routes")
        if down:
            raise ClusterUnavailableError("istio writes refused", retry_after=1.0)
        return apply(*args, **kwargs)

    cluster.patch_rollout_status, cluster.apply_routes = patched, applied  # type: ignore[method-assign]
    drive(cluster, Synthetic(), minutes=2)  # four passes: the decision recorded, its routes refused
    (start,) = status(cluster)["history"]
    assert "routedAt" not in start and not cluster.routes
    down, calls[:] = False, []
    drive(cluster, Synthetic(), minutes=1, start=T0 + 150)
    assert calls[:2] == ["routes", "status routedAt"]
    (start,) = status(cluster)["history"]
    assert parse_timestamp(start["routedAt"]) == T0 + 151 and cluster.routes


def _history(*spans: tuple[float, float | None]) -> tuple[Transition, ...]:
    """A Start, then Advances, at the first of each pair; their routes confirmed in force at the second."""
    out = []
    for step, (at, routed) in enumerate(spans):
        action = Action.START if step == 0 else Action.ADVANCE
        confirmed = None if routed is None else T0 + routed
        out.append(Transition(T0 + at, Phase.PROGRESSING, Phase.PROGRESSING, step, step + 1, action, "", 5, confirmed))
    return tuple(out)


@pytest.mark.parametrize(
    ("spans", "unsteady_ends"),
    [
        # routes in force with the decision: the window it falls in and the next one
        ([(0, 0), (290, 290)], {60, 300, 360}),
        # the second decision's routes landed 3.5 minutes late: every window until a whole one after
        ([(0, 0), (290, 500)], {60, 300, 360, 420, 480, 540, 600}),
        # the last decision's routes are not yet known to be in force: no window after it is steady
        ([(0, 0), (290, None)], {60, 300, 360, 420, 480, 540, 600, 660, 720}),
        # an earlier decision never marked (recorded before routedAt was kept): until the next one
        ([(0, None), (290, 290)], {60, 120, 180, 240, 300, 360}),
    ],
)
def test_windows_are_steady_only_once_the_routes_of_every_decision_were_in_force(
    cluster: MemoryCluster, spans: list[tuple[float, float | None]], unsteady_ends: set[float]
) -> None:
    (obj,), _ = cluster.list_rollouts(None)
    rollout = ModelRollout.model_validate({**obj, "metadata": {"name": "x", "namespace": "ml-serving"}})
    history = _history(*spans)
    status = Status(phase=Phase.PROGRESSING, step=len(history), step_started_at=history[-1].at, history=history)
    found = analysis_windows(rollout, status, T0 + 720)
    assert {w.end - T0 for w in found if not w.steady} == unsteady_ends
    assert {w.end - T0 for w in found} == {60.0 * k for k in range(1, 13)}
