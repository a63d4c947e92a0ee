"""The ModelRollout's status subresource: the state machine's Status and its evidence, as stored.

The status is the source of truth: a controller restarted at any point reads it back and carries
on from the same step. Everything here is pure conversion between the stored status (the typed
:class:`controller.api.status.RolloutStatus`) and the state machine's values, plus the derived
facts the reconciler needs (the canary's revision, the traffic share in force at any past time,
human commands from annotations).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any

from controller.api.model import ModelRollout
from controller.api.schedule import RouteState, realized_share
from controller.api.status import (
    AnalysisEntry,
    Condition,
    DistributionEntry,
    LookLog,
    MetricStatus,
    Phase,
    Requests,
    RolloutStatus,
    StoredTransition,
    WeightEntry,
)
from controller.api.text import printable
from controller.engine.steering import check_command
from controller.judge.gate import GateStatus, GateVerdict
from controller.judge.machine import Command, Evidence, MetricEvidence, Status, Transition, routes_for

E_VALUE_CAP = 1e300
#: Bounds on the report's logs in the status, so an object stays far below etcd's 1.5 MiB
#: (a look of three metrics is about 330 bytes in the look log's columns; 120 looks are two hours of
#: one-minute intervals).
ANALYSES_LIMIT = 120
WEIGHTS_LIMIT = 100
DISTRIBUTIONS_LIMIT = 30
#: Most buckets of a prediction distribution the status records, and the longest bucket name kept.
OUTPUT_BUCKETS_LIMIT = 32
BUCKET_NAME_LIMIT = 63
#: The status in bytes (compact JSON), whatever the metrics, looks or user strings: etcd refuses an
#: object over 1.5 MiB, and the spec and metadata need their share. Past it the oldest log entries go.
STATUS_BYTES_LIMIT = 256 * 1024
#: Logs given up first when the status outgrows its bound; the decision history keeps its last entry.
_SHED_ORDER = ("distributions", "looks", "weights", "history")
#: A metric's reason when even the latest evidence outgrows the bound (50 metrics x 1 KiB of CJK do).
METRIC_REASON_SHORT = 200
#: A command id is compared with the annotation's: bounded like a label value, far above any real one.
COMMAND_ID_LIMIT = 253


def canary_revision(rollout: ModelRollout) -> str:
    """A short hash of what makes the canary this canary: a change restarts the analysis."""
    spec = rollout.spec
    triton = spec.routing.triton
    identity = {
        "name": spec.canary.name,
        "labels": dict(sorted(spec.canary.labels.items())),
        "tritonVersion": triton.canary_version if triton is not None else None,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]


def exposure_revision(rollout: ModelRollout) -> str:
    """A short hash of who reaches the canary besides the weighted split: A/B cohorts, sticky users,
    the mirror. An edit restarts the rollout: it could send the canary more than its recorded weight."""
    routing, strategy = rollout.spec.routing, rollout.spec.strategy
    identity = {
        "match": [m.model_dump(mode="json") for m in routing.match],
        "sticky": routing.sticky.model_dump(mode="json") if routing.sticky is not None else None,
        "mirror": strategy.mirror.model_dump(mode="json") if strategy.mirror is not None else None,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]


def to_status(
    status: Status,
    *,
    routes: RouteState,
    evidence: Evidence | None,
    previous: RolloutStatus,
    generation: int | None,
    now: float,
    command_id: str | None = None,
    gate: GateVerdict | None = None,
) -> dict[str, Any]:
    """The status subresource to write: the machine's state, the routes in force and the evidence.

    Besides the latest look, it keeps bounded logs for ``canarist report``: the weight in force over
    time, every look's numbers, and the latency distributions at each decision that changed something.
    A new canary revision starts them afresh: they describe this canary's rollout.
    """
    looked = [metric_status(m) for m in evidence.metrics] if evidence is not None else None
    changed = bool(status.history) and status.history[-1].at == now
    if previous.canary_revision not in (None, "", status.canary_revision):
        previous = previous.model_copy(update={"weights": [], "looks": LookLog(), "distributions": []})
    last_command = command_id if command_id is not None else previous.last_command_id
    written = RolloutStatus(
        phase=status.phase,
        current_step=status.step,
        canary_weight=routes.canary_weight,
        mirror_percent=routes.mirror_percent,
        step_started_at=status.step_started_at,
        canary_revision=status.canary_revision,
        exposure_revision=status.exposure_revision or None,
        message=printable(status.message),
        observed_generation=generation,
        last_analysis_at=now if evidence is not None else previous.last_analysis_at,
        last_command_id=printable(last_command, COMMAND_ID_LIMIT) if last_command is not None else None,
        metrics=looked if looked is not None else previous.metrics,
        history=[transition_status(t) for t in status.history],
        weights=weights_log(previous.weights, routes.canary_weight, now),
        looks=looks_log(previous.looks, status, routes, looked, now),
        distributions=distributions_log(previous.distributions, status, evidence, now, changed=changed),
        conditions=conditions(status, previous.conditions, now, gate),
    )
    return bounded(written.dump())


def bounded(body: dict[str, Any], limit: int = STATUS_BYTES_LIMIT) -> dict[str, Any]:
    """``body`` shrunk to at most ``limit`` bytes of JSON by dropping the oldest log entries.

    The logs feed ``canarist report``; the phase, step, weights in force, latest evidence and the
    last recorded decision are what the controller needs, and they are never dropped.
    """
    size = _size(body)
    for key in _SHED_ORDER:
        entries = body.get(key)
        if key == "looks" and isinstance(entries, dict):
            while size > limit and (n := len(entries.get("at") or ())) > 0:
                per_look = _size(entries) / n  # drop about as many as the excess needs, then measure again
                _drop_oldest_looks(entries, min(n, max(1, math.ceil((size - limit) / per_look))))
                if not entries.get("at"):  # every look gone: the metrics' empty columns with them
                    entries["metrics"] = []
                size = _size(body)
            continue
        if size <= limit or not isinstance(entries, list):
            continue
        keep = 1 if key == "history" else 0
        while size > limit and len(entries) > keep:
            size -= _size(entries.pop(0)) + 1  # the entry and its comma
        size = _size(body)  # exact again: the last entry had no comma
    if size > limit:  # only the latest evidence is left: its reasons are what may still be long
        for metric in body.get("metrics") or []:
            if isinstance(metric, dict) and isinstance(metric.get("reason"), str):
                metric["reason"] = printable(metric["reason"], METRIC_REASON_SHORT)
    return body


def _drop_oldest_looks(looks: dict[str, Any], count: int) -> None:
    """The stored look log (columns) without its ``count`` oldest looks."""
    metrics = looks.get("metrics")
    for part in (looks, *(m for m in metrics if isinstance(m, dict))) if isinstance(metrics, list) else (looks,):
        for key, column in part.items():
            if isinstance(column, list) and column is not metrics:
                part[key] = column[count:]


def _size(value: Any) -> int:
    """Bytes of ``value`` as the API server stores it: compact JSON in UTF-8."""
    return len(json.dumps(value, separators=(",", ":"), allow_nan=True, ensure_ascii=False).encode())


def weights_log(previous: list[WeightEntry], weight: int, now: float) -> list[WeightEntry]:
    """The canary weight over time: one entry each time the weight in force changes."""
    log = list(previous)
    if not log or log[-1].canary_weight != weight:
        log.append(WeightEntry(at=now, canary_weight=weight))
    return log[-WEIGHTS_LIMIT:]


def looks_log(
    previous: LookLog, status: Status, routes: RouteState, looked: list[MetricStatus] | None, now: float
) -> LookLog:
    """Every look's numbers (the e-value paths and estimates the report draws); ``looked``: this
    look's metrics, None when there was no look."""
    if looked is None:
        return previous.within(ANALYSES_LIMIT)
    entry = AnalysisEntry.model_construct(at=now, step=status.step, canary_weight=routes.canary_weight, metrics=looked)
    return previous.appended(entry, ANALYSES_LIMIT)


def distributions_log(
    previous: list[DistributionEntry], status: Status, evidence: Evidence | None, now: float, *, changed: bool
) -> list[DistributionEntry]:
    """Both versions' bucket counts (latency, or model outputs) at each look whose decision changed something.

    A prediction distribution of more than :data:`OUTPUT_BUCKETS_LIMIT` buckets (a class counter
    with many classes) is not recorded: the status has a size budget, and the report draws the rest.
    """
    log = list(previous)
    if evidence is not None and changed:
        action = status.history[-1].action
        for metric in evidence.metrics:
            shape = metric.distribution
            if shape is None or (shape.buckets is not None and len(shape.buckets) > OUTPUT_BUCKETS_LIMIT):
                continue
            log.append(
                DistributionEntry(
                    at=now,
                    step=status.step,
                    action=action,
                    metric=metric.name,
                    edges=[e for e in shape.edges if math.isfinite(e)] if shape.buckets is None else None,
                    buckets=[printable(b)[:BUCKET_NAME_LIMIT] for b in shape.buckets] if shape.buckets else None,
                    stable=[int(v) for v in shape.stable],
                    canary=[int(v) for v in shape.canary],
                )
            )
    return log[-DISTRIBUTIONS_LIMIT:]


def metric_status(metric: MetricEvidence) -> MetricStatus:
    return MetricStatus(
        name=metric.name,
        verdict=metric.verdict,
        reason=printable(metric.reason),
        slo_breached=metric.slo_breached,
        e_value=_e(metric.e_regression),
        e_value_non_inferiority=_e(metric.e_noninferiority),
        threshold=_e(metric.threshold),
        estimate=_finite(metric.estimate),
        interval=[_finite(metric.interval[0]), _finite(metric.interval[1])] if metric.interval else None,
        requests=Requests(stable=metric.n_stable, canary=metric.n_canary),
    )


def transition_status(transition: Transition) -> StoredTransition:
    return StoredTransition(
        at=transition.at,
        from_phase=transition.from_phase,
        to_phase=transition.to_phase,
        from_step=transition.from_step,
        to_step=transition.to_step,
        action=transition.action,
        reason=printable(transition.reason),
        canary_weight=transition.weight,
        routed_at=transition.routed_at,
    )


def _transition(stored: StoredTransition) -> Transition:
    """One stored history entry as the state machine's (an unreadable time is a fresh start's: 0)."""
    return Transition(
        at=stored.at if stored.at is not None else 0.0,
        from_phase=stored.from_phase,
        to_phase=stored.to_phase,
        from_step=stored.from_step,
        to_step=stored.to_step,
        action=stored.action,
        reason=stored.reason,
        weight=stored.canary_weight,
        routed_at=stored.routed_at,
    )


def from_status(stored: RolloutStatus) -> Status:
    """Read a stored status back, trusting its phase and step only as far as its history records them.

    Anything missing or unreadable falls back to a fresh start. The history is the record of every
    decision that changed the phase or the step: a phase or step that its last entry does not
    record (a status edited by hand, say ``currentStep: 99`` or ``phase: Promoting``) is replaced by
    what the history says, and with no history at all the rollout starts afresh. So no edit of the
    status reaches 100 % without a recorded promotion. :func:`status_corrected` says whether it happened.
    """
    history = tuple(_transition(t) for t in stored.history)
    phase, step = (history[-1].to_phase, history[-1].to_step) if history else (Phase.INITIALIZING, 0)
    started = stored.step_started_at if stored.step_started_at is not None else 0.0
    return Status(
        phase=phase,
        step=step,
        # a step starts with the transition into it or later (a resume): never earlier than the record
        step_started_at=max(started, history[-1].at) if history else started,
        canary_revision=stored.canary_revision or "",
        message=stored.message or "",
        history=history,
        canary_weight=stored.canary_weight,
        exposure_revision=stored.exposure_revision or "",
    )


def status_corrected(raw: Any, status: Status) -> str:
    """Why the stored phase or step was not taken as written ('' when it was).

    Read from the raw status on purpose: it quotes what was written, which may be no phase or step
    at all (``phase: Bogus``), so it is what the typed status leaves out.
    """
    if not isinstance(raw, Mapping) or not raw:
        return ""
    stored = (raw.get("phase", Phase.INITIALIZING.value), raw.get("currentStep", 0))
    if stored == (status.phase.value, status.step):
        return ""
    said = f"phase {_shown(stored[0])} step {_shown(stored[1])}"
    record = f"{status.phase.value} step {status.step}" if status.history else "a fresh start (no recorded decision)"
    return f"the status said {said}, which its history does not record: continuing from {record}"


def _shown(value: Any) -> str:
    return printable(repr(value) if not isinstance(value, str) else value, 40)


CONDITION_OF_PHASE = {
    Phase.INITIALIZING: ("Progressing", "True"),
    Phase.PROGRESSING: ("Progressing", "True"),
    Phase.PROMOTING: ("Progressing", "True"),
    Phase.ROLLING_BACK: ("Progressing", "True"),
    Phase.PAUSED: ("Progressing", "False"),
    Phase.SUCCEEDED: ("Progressing", "False"),
    Phase.FAILED: ("Progressing", "False"),
}


#: The condition a pre-traffic gate's verdict is recorded in.
GATE_PASSED = "GatePassed"


def conditions(
    status: Status, previous: list[Condition], now: float, gate: GateVerdict | None = None
) -> list[Condition]:
    """Kubernetes-style conditions (Progressing, Paused, Succeeded, Failed, and GatePassed once a
    pre-traffic gate ran: what it checked, or why not), transition times kept."""
    wanted = {
        "Progressing": CONDITION_OF_PHASE[status.phase][1],
        "Paused": "True" if status.phase is Phase.PAUSED else "False",
        "Succeeded": "True" if status.phase is Phase.SUCCEEDED else "False",
        "Failed": "True" if status.phase is Phase.FAILED else "False",
    }
    before = {c.type: c for c in previous}
    out = []
    for kind, value in wanted.items():
        old = before.get(kind)
        since = old.last_transition_time if old is not None and old.status == value else None
        out.append(
            Condition(
                type=kind,
                status=value,
                reason=status.phase.value,
                message=printable(status.message),
                last_transition_time=since if since is not None else now,
            )
        )
    old = before.get(GATE_PASSED)
    if gate is not None:
        value = "True" if gate.status is GateStatus.PASSED else "False"
        since = old.last_transition_time if old is not None and old.status == value else None
        message = printable(gate.reason)
        out.append(
            Condition(
                type=GATE_PASSED,
                status=value,
                reason=gate.status.value,
                message=message,
                last_transition_time=since or now,
            )
        )
    elif old is not None:
        out.append(old)
    return out


def pending_command(rollout_obj: Mapping[str, Any], now: float) -> tuple[Command, str] | None:
    """The human command in the annotations to act on at ``now``, with its id; None if there is none.

    Only a fresh command counts (see :mod:`controller.engine.steering`): issued within the last
    ``COMMAND_TTL``, after the object was created and after the canary last changed, and not yet
    acted on (``status.lastCommandId``). Its ``by`` is the claimed name and the annotation's writers.
    """
    found = check_command(rollout_obj, now)
    command = found.command if found is not None else None
    return (command, found.command_id) if found is not None and command is not None else None


def share_at(
    rollout: ModelRollout, status: Status, moment: float, memo: dict[tuple[Phase, int], float] | None = None
) -> float:
    """The canary's realized traffic share in force at ``moment``, replayed from the history.

    ``memo`` keeps each phase and step's share across calls for the same rollout and status (the
    windows of a long analysis replay the same few steps hundreds of times)."""
    phase, step = Phase.INITIALIZING, 0
    for transition in status.history:
        if transition.at > moment:
            break
        phase, step = transition.to_phase, transition.to_step
    if phase is Phase.INITIALIZING:
        return 0.0
    if memo is not None and (phase, step) in memo:
        return memo[phase, step]
    share = realized_share(rollout, routes_for(rollout, Status(phase=phase, step=step)))
    if memo is not None:
        memo[phase, step] = share
    return share


def _e(value: float) -> float:
    return min(value, E_VALUE_CAP)


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None
