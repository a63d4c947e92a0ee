"""One reconcile of one ModelRollout: read -> gate -> observe -> analyse -> decide -> apply -> record.

Short on purpose: the deciding is in :mod:`controller.judge.machine` and :mod:`controller.judge.analysis`,
the talking in the edges behind :class:`controller.engine.ports.Cluster` and :class:`MetricsSource`.
Order matters for the invariants: the decision is recorded in the status (a compare-and-swap on
the resourceVersion) *before* its routes are applied. A controller killed between the two finds
the new step in the status and applies its routes (idempotent), so it never re-applies an older
weight; had the routes gone first, a restarted controller would decide again from the old step
and a hold would write the older weight back. A rollback's routes send 100 % to stable before
anything else happens.

Every edge error of one reconcile ends that reconcile (with its retry delay), and no decision that
gives the canary more traffic is recorded until all its pods are ready (the readiness gate: before
the first step, after a restart, before an advance, and for a human's promote too).
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import jinja2

from controller.api.load import from_object
from controller.api.model import ModelRollout
from controller.api.names import FINALIZER
from controller.api.schedule import RouteState
from controller.api.status import Action, MetricStatus, Phase, RolloutStatus
from controller.api.text import printable
from controller.api.times import timestamp
from controller.engine.gate import run_gate
from controller.engine.ports import (
    Cluster,
    ClusterUnavailableError,
    ConflictError,
    EdgeFailure,
    GateProbe,
    MetricsSource,
)
from controller.engine.record import (
    GATE_PASSED,
    canary_revision,
    exposure_revision,
    from_status,
    metric_status,
    pending_command,
    share_at,
    status_corrected,
    to_status,
)
from controller.engine.steering import settle_command
from controller.judge.analysis import analyse
from controller.judge.gate import GateStatus, GateVerdict
from controller.judge.machine import Decision, Evidence, Status, Transition, decide, routes_for
from controller.metrics.samples import Observation, Window, window_ends
from controller.traffic import tenancy
from controller.traffic.render import render

#: How many analysis windows a look may span (two hours of one-minute windows).
MAX_WINDOWS = 120
#: Phases whose canary may serve traffic: the SLO guards keep looking in each (paused included).
GUARDED_PHASES = (Phase.PROGRESSING, Phase.PAUSED)
#: Decisions after which the analysis begins afresh: the windows before them had another canary,
#: or another schedule whose shares the history can no longer replay.
ANALYSIS_STARTS = (Action.START, Action.RESTART, Action.RESCHEDULE)
#: Seconds before a gate that is not passed yet is asked again (its checks run in the loop).
GATE_RETRY_S = 5.0


@dataclass(frozen=True)
class Outcome:
    """What one reconcile did, for logs, metrics and tests."""

    key: str
    action: Action
    reason: str
    phase: Phase | None
    canary_weight: int | None
    route_writes: int
    status_written: bool
    requeue_after: float
    #: An edge this reconcile could not reach (the look became no data, or a call failed).
    edge_failure: EdgeFailure | None = None
    #: The step the decision leaves the rollout at, and each metric's verdict at this look (for
    #: notifications; empty when no look was taken).
    step: int | None = None
    metrics: tuple[MetricStatus, ...] = ()


def reconcile(
    obj: Mapping[str, Any],
    cluster: Cluster,
    metrics: MetricsSource,
    env: jinja2.Environment,
    *,
    now: float,
    rules: tenancy.TenancyRules = tenancy.DEFAULT_RULES,
    gates: GateProbe | None = None,
) -> Outcome:
    """Bring one rollout one decision further; never raises for a user's mistake or a flaky edge.

    ``gates`` observes a rollout's pre-traffic gate (``spec.gate``) while it is initializing; without
    it a rollout with a gate never starts (it waits for the gate until its progress deadline)."""
    metadata = obj.get("metadata") or {}
    key = f"{metadata.get('namespace')}/{metadata.get('name')}"
    try:
        if metadata.get("deletionTimestamp"):
            return _release(obj, cluster, key)
        return _reconcile(_finalized(obj, cluster), cluster, metrics, env, key, now=now, rules=rules, gates=gates)
    except ConflictError:
        return Outcome(key, Action.NONE, "the rollout changed meanwhile: re-reading", None, None, 0, False, 0.0)
    except ClusterUnavailableError as exc:
        failure = EdgeFailure("kubernetes", exc.reason, exc.retryable)
        reason = f"API server unavailable: {exc.reason}"
        return Outcome(key, Action.NONE, reason, None, None, 0, False, exc.retry_after, failure)


def _reconcile(
    obj: Mapping[str, Any],
    cluster: Cluster,
    metrics: MetricsSource,
    env: jinja2.Environment,
    key: str,
    *,
    now: float,
    rules: tenancy.TenancyRules = tenancy.DEFAULT_RULES,
    gates: GateProbe | None = None,
) -> Outcome:
    rollout, problem = parse(obj, rules)
    if rollout is None:
        cluster.emit_event(obj, reason="InvalidSpec", message=problem, warning=True)
        return Outcome(key, Action.NONE, problem, None, None, 0, False, 300.0)
    interval = rollout.spec.strategy.interval_seconds
    raw, stored = _stored_status(obj)
    status = from_status(stored)
    corrected = status_corrected(raw, status)
    if corrected:
        cluster.emit_event(obj, reason="StatusCorrected", message=corrected, warning=True)
    revision, exposure = canary_revision(rollout), exposure_revision(rollout)
    pending = pending_command(obj, now)
    commands = (pending[0],) if pending else ()

    evidence, failure = None, None
    if status.phase in GUARDED_PHASES and _analysis_due(stored, now, interval):
        evidence, failure = look(rollout, status, metrics, now)
    gate = _gate(obj, cluster, rollout=rollout, status=status, stored=stored, gates=gates)
    decision = decide(
        rollout,
        status,
        evidence,
        now,
        commands=commands,
        canary_revision=revision,
        exposure_revision=exposure,
        gate=gate,
    )

    in_force = _in_force(rollout, status)
    if _exposes_more(decision.routes, in_force) and rollout.spec.canary.labels:
        ready, total = cluster.pods_ready(rollout.metadata.namespace, rollout.spec.canary.labels)
        if total == 0 or ready < total:
            why = decision.action.value.lower()
            reason = f"waiting for canary pods to be ready ({ready}/{total}) before {why}: {decision.reason}"
            # The command waits for the pods; the evidence does not: a rollback or a hold goes ahead.
            without = (
                decide(rollout, status, evidence, now, canary_revision=revision, exposure_revision=exposure, gate=gate)
                if commands
                else decision
            )
            if not commands or _exposes_more(without.routes, in_force):
                return _record_hold(
                    obj, cluster, rollout, status, routes=in_force, evidence=evidence, reason=reason, now=now,
                    failure=failure, gate=gate, stored=(raw, stored),
                )  # fmt: skip
            if without.action in (Action.HOLD, Action.NONE):  # say why the command is not acted on yet
                said = f"{reason}; meanwhile {without.reason}"
                without = replace(without, reason=said, status=replace(without.status, message=said))
            decision, pending = replace(without, commands_heard=False), None
    acted = pending[1] if pending and decision.commands_heard else None

    objects = render(rollout, decision.routes, env)
    # Before anything is recorded: a refused rollout holds. Less canary traffic (a rollback) is never
    # held up by another tenant's routes: it rewrites canarist's own objects, without a host newly
    # refused (the edge's apply_routes checks again, so the refused host must go, not be ignored).
    conflicts = cluster.route_conflicts(obj, objects)
    withdrawing = decision.status.phase in (Phase.ROLLING_BACK, Phase.FAILED)
    if conflicts and (withdrawing or _exposes_less(decision.routes, in_force)):
        if any(c.kind == "Telemetry" for c in conflicts):  # only a metric tag: a rollback goes without it
            objects = [o for o in objects if o.get("kind") != "Telemetry"]
        objects = tenancy.without_hosts(objects, {c.host for c in conflicts if c.kind != "Telemetry"})
        conflicts = cluster.route_conflicts(obj, objects)
    if conflicts:
        reason = "routes refused: " + "; ".join(str(c) for c in conflicts)
        if stored.message != reason:
            cluster.emit_event(obj, reason="RoutesRefused", message=reason, warning=True)
        return _record_hold(
            obj, cluster, rollout, status, routes=in_force, evidence=evidence, reason=reason, now=now, failure=failure,
            gate=gate, stored=(raw, stored),
        )  # fmt: skip
    written, writes = _record_and_route(
        obj, cluster, decision, objects, evidence=evidence, now=now, acted=acted, gate=gate, stored=(raw, stored)
    )
    if decision.action not in (Action.HOLD, Action.NONE):
        warning = decision.action in (Action.ROLLBACK, Action.RESCHEDULE)
        cluster.emit_event(obj, reason=decision.action.value, message=decision.reason, warning=warning)
    settle_command(cluster, obj, acted=acted, now=now)  # consumed or expired: removed; preempted: kept
    return Outcome(
        key,
        decision.action,
        decision.reason,
        decision.status.phase,
        decision.routes.canary_weight,
        writes,
        written,
        GATE_RETRY_S if gate is not None and gate.status is GateStatus.WAITING else _requeue(decision, interval),
        failure,
        decision.status.step,
        tuple(metric_status(m) for m in evidence.metrics) if evidence is not None else (),
    )


def _record_and_route(
    obj: Mapping[str, Any],
    cluster: Cluster,
    decision: Decision,
    objects: list[dict[str, Any]],
    *,
    evidence: Evidence | None,
    now: float,
    acted: str | None,
    gate: GateVerdict | None = None,
    stored: tuple[Mapping[str, Any], RolloutStatus] | None = None,
) -> tuple[bool, int]:
    """Record ``decision`` in the status and write its routes: whether the status was written, and
    how many route objects were.

    The decision first, so no route moves before it is recorded; once the routes are written, the
    decision is marked as in force (its ``routedAt``), in a second write. A decision from an earlier
    pass that is not yet so marked (the controller died between the two, or the route write failed)
    is marked by the next pass, after its routes are written again. ``stored``: ``obj``'s status as
    :func:`_stored_status` read it (read again when not given: a long log takes a while).
    """
    raw, previous = stored or _stored_status(obj)
    body = to_status(
        decision.status,
        routes=decision.routes,
        evidence=evidence,
        previous=previous,
        generation=(obj.get("metadata") or {}).get("generation"),
        now=now,
        command_id=acted,
        gate=gate,
    )
    unconfirmed = _unconfirmed(decision.status)
    if unconfirmed and decision.status.history[-1].at < now:  # an earlier decision's: the routes first
        writes = len(cluster.apply_routes(obj, objects).writes)
        return _write_status(cluster, obj, raw, _routed(body, now)) is not None, writes
    written = _write_status(cluster, obj, raw, body)
    writes = len(cluster.apply_routes(obj, objects).writes)
    if unconfirmed and written is not None:
        with contextlib.suppress(ConflictError, ClusterUnavailableError):  # if not, the next pass marks it
            _write_status(cluster, written, body, _routed(body, now))
    return written is not None, writes


def _unconfirmed(status: Status) -> bool:
    """Whether the last recorded decision, in a phase that is analysed, is not yet known to be in force."""
    last = status.history[-1] if status.history else None
    return last is not None and last.routed_at is None and status.phase in GUARDED_PHASES


def _routed(body: dict[str, Any], now: float) -> dict[str, Any]:
    """The status ``body`` with its last decision's routes confirmed in force at ``now``."""
    *earlier, last = body["history"]
    return {**body, "history": [*earlier, {**last, "routedAt": timestamp(now)}]}


def _in_force(rollout: ModelRollout, status: Status) -> RouteState:
    """The routes in force as recorded: the weight the last transition set (older records: the stored
    weight), whatever the spec now says a step means."""
    routes = routes_for(rollout, status)
    recorded = status.history[-1].weight if status.history else None
    recorded = recorded if recorded is not None else status.canary_weight
    return replace(routes, canary_weight=recorded) if recorded is not None else routes


def _exposes_less(new: RouteState, old: RouteState) -> bool:
    """Whether ``new`` sends the canary less traffic than ``old`` and nothing more."""
    return not _exposes_more(new, old) and (new.canary_weight, new.mirror_percent) != (
        old.canary_weight,
        old.mirror_percent,
    )


def _exposes_more(new: RouteState, old: RouteState) -> bool:
    """Whether ``new`` sends the canary more live or mirrored traffic than ``old``."""
    return new.canary_weight > old.canary_weight or new.mirror_percent > old.mirror_percent


def _release(obj: Mapping[str, Any], cluster: Cluster, key: str) -> Outcome:
    """A deleted rollout: restore the routes it replaced, then let the API server remove it."""
    metadata = obj.get("metadata") or {}
    if FINALIZER not in (metadata.get("finalizers") or []):
        return Outcome(key, Action.NONE, "deleted", None, None, 0, False, 300.0)
    released = cluster.release_routes(obj)
    cluster.emit_event(obj, reason="RoutesReleased", message=f"routes restored ({len(released.writes)} writes)")
    cluster.set_finalizer(
        metadata["namespace"], metadata["name"], present=False, resource_version=metadata.get("resourceVersion", "")
    )
    return Outcome(key, Action.NONE, "deleted: routes restored", None, None, len(released.writes), False, 300.0)


def _finalized(obj: Mapping[str, Any], cluster: Cluster) -> Mapping[str, Any]:
    """The rollout with canarist's finalizer, added before any route is written."""
    metadata = obj.get("metadata") or {}
    if FINALIZER in (metadata.get("finalizers") or []):
        return obj
    return cluster.set_finalizer(
        metadata["namespace"], metadata["name"], present=True, resource_version=metadata.get("resourceVersion", "")
    )


def parse(obj: Mapping[str, Any], rules: tenancy.TenancyRules | None = None) -> tuple[ModelRollout | None, str]:
    """The object as a validated ModelRollout (:func:`controller.api.load.from_object`), or the first
    problem in one line; with ``rules``, a host or gateway its tenant may not use is a problem too
    (:func:`controller.traffic.tenancy.check`)."""
    rollout, problem = from_object(obj)
    if rollout is None or rules is None:
        return rollout, problem
    refused = tenancy.check(rollout, rules)
    return (None, str(refused[0])) if refused else (rollout, "")


def planned_look(
    obj: Mapping[str, Any], now: float, rules: tenancy.TenancyRules = tenancy.DEFAULT_RULES
) -> tuple[ModelRollout, tuple[Window, ...]] | None:
    """The rollout and the windows a reconcile at ``now`` would look at, or None if it would not look:
    what a controller needs to take many rollouts' looks as one (:class:`controller.engine.batch.BatchedLooks`)."""
    if (obj.get("metadata") or {}).get("deletionTimestamp"):
        return None
    rollout, _ = parse(obj, rules)
    if rollout is None:
        return None
    _, stored = _stored_status(obj)
    status = from_status(stored)
    if status.phase not in GUARDED_PHASES or not _analysis_due(stored, now, rollout.spec.strategy.interval_seconds):
        return None
    return rollout, analysis_windows(rollout, status, now)


def look(
    rollout: ModelRollout, status: Status, metrics: MetricsSource, now: float
) -> tuple[Evidence, EdgeFailure | None]:
    """Observe every window since the analysis of this canary began and analyse them."""
    windows = analysis_windows(rollout, status, now)
    observations, failure = metrics.observe([rollout], {rollout.key: windows}, now)
    observation = observations.get(rollout.key) or Observation(windows, (None,) * len(windows), (None,) * len(windows))
    return analyse(rollout, observation, step_started_at=status.step_started_at), failure


def analysis_windows(rollout: ModelRollout, status: Status, now: float) -> tuple[Window, ...]:
    """Interval-long windows on the clock grid from the analysis start to ``now``.

    Each window carries the canary share in force during it, time-weighted from the decision
    history when a step changed inside the window. A window is steady (its split may be checked
    against that share) unless a decision was recorded in it or the window before, or its routes
    were not yet confirmed in force then (:attr:`Transition.routed_at`): until they are, the traffic
    may still be split the old way.
    """
    interval = rollout.spec.strategy.interval_seconds
    started = next((t.at for t in reversed(status.history) if t.action in ANALYSIS_STARTS), None)
    start = started if started is not None else status.step_started_at
    unsettled = _unsettled(status.history)
    shares: dict[tuple[Phase, int], float] = {}
    windows = []
    for end in window_ends(interval, now, most=MAX_WINDOWS, since=start):
        steady = not any(end > decided and end - 2 * interval < routed for decided, routed in unsettled)
        windows.append(Window(end - interval, end, _mean_share(rollout, status, end - interval, end, shares), steady))
    return tuple(windows)


def _unsettled(history: Sequence[Transition]) -> list[tuple[float, float]]:
    """Per decision, from when to when the split may differ from the one recorded: from the decision
    until its routes were confirmed in force. Not confirmed: until now for the last decision, until
    the next decision for an earlier one (recorded before canarist kept the time)."""
    spans = []
    for index, transition in enumerate(history):
        routed = transition.routed_at
        if routed is None:
            routed = history[index + 1].at if index + 1 < len(history) else math.inf
        spans.append((transition.at, max(routed, transition.at)))
    return spans


def _mean_share(
    rollout: ModelRollout, status: Status, start: float, end: float, memo: dict[tuple[Phase, int], float]
) -> float:
    cuts = sorted({start, end, *(t.at for t in status.history if start < t.at < end)})
    total = 0.0
    for a, b in itertools.pairwise(cuts):
        total += (b - a) * share_at(rollout, status, a, memo)
    return min(max(total / (end - start), 0.0), 1.0)


def _stored_status(obj: Mapping[str, Any]) -> tuple[Mapping[str, Any], RolloutStatus]:
    """The status as the cluster holds it (to tell whether a write changes it) and as read."""
    raw = obj.get("status")
    raw = raw if isinstance(raw, Mapping) else {}
    return raw, RolloutStatus.read(raw)


def _analysis_due(stored: RolloutStatus, now: float, interval: float) -> bool:
    last = stored.last_analysis_at
    return last is None or math.floor(now / interval) > math.floor(last / interval)


def _write_status(
    cluster: Cluster, obj: Mapping[str, Any], stored: Mapping[str, Any], body: dict[str, Any]
) -> dict[str, Any] | None:
    """Patch the status subresource only when it changed (no write storms on quiet ticks): the
    object as written, or None when nothing was."""
    if dict(stored) == body:
        return None
    metadata = obj.get("metadata") or {}
    return cluster.patch_rollout_status(
        metadata["namespace"], metadata["name"], body, metadata.get("resourceVersion", "")
    )


def _record_hold(
    obj: Mapping[str, Any],
    cluster: Cluster,
    rollout: ModelRollout,
    status: Status,
    *,
    routes: RouteState,
    evidence: Evidence | None,
    reason: str,
    now: float,
    failure: EdgeFailure | None = None,
    gate: GateVerdict | None = None,
    stored: tuple[Mapping[str, Any], RolloutStatus] | None = None,
) -> Outcome:
    """Hold where the rollout is (the canary is not ready for more): say why, keep the routes in force.

    No route is written, and a pending command stays pending: it is acted on once the canary's
    pods are ready.
    """
    held = replace(status, message=reason, canary_revision=status.canary_revision or canary_revision(rollout))
    raw, previous = stored or _stored_status(obj)
    body = to_status(
        held,
        routes=routes,
        evidence=evidence,
        previous=previous,
        generation=(obj.get("metadata") or {}).get("generation"),
        now=now,
        gate=gate,
    )
    written = _write_status(cluster, obj, raw, body) is not None
    return Outcome(rollout.key, Action.HOLD, reason, held.phase, routes.canary_weight, 0, written, 10.0, failure)


def _gate(
    obj: Mapping[str, Any],
    cluster: Cluster,
    *,
    rollout: ModelRollout,
    status: Status,
    stored: RolloutStatus,
    gates: GateProbe | None,
) -> GateVerdict | None:
    """The pre-traffic gate's verdict while the canary has no traffic yet (initializing), or None.

    An Event says when the verdict changes (not on every pass a version is still loading)."""
    if rollout.spec.gate is None or status.phase is not Phase.INITIALIZING:
        return None
    if gates is None:
        verdict = GateVerdict(GateStatus.WAITING, "this controller has no gate probe (it cannot reach Triton)")
    else:
        verdict = run_gate(rollout, gates) or GateVerdict(GateStatus.WAITING, "no gate")
    before = next((c for c in stored.conditions if c.type == GATE_PASSED), None)
    if before is None or (before.reason, before.message) != (verdict.status.value, printable(verdict.reason)):
        reason = {GateStatus.PASSED: "GatePassed", GateStatus.FAILED: "GateFailed", GateStatus.WAITING: "GateWaiting"}
        warning = verdict.status is GateStatus.FAILED
        cluster.emit_event(obj, reason=reason[verdict.status], message=verdict.reason, warning=warning)
    return verdict


def _requeue(decision: Decision, interval: float) -> float:
    """When to look again: at once after a transition that needs a follow-up, else next interval."""
    if decision.status.phase in (Phase.PROMOTING, Phase.ROLLING_BACK, Phase.INITIALIZING):
        return 1.0
    if decision.status.phase in (Phase.SUCCEEDED, Phase.FAILED):
        return 300.0
    return interval  # Paused too: its SLO guards look every interval
