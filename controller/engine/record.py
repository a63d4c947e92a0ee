"""The ModelRollout's status subresource: the state machine's Status and its evidence, as stored.

The status is the source of truth: a controller restarted at any point reads it back and carries
on from the same step. Everything here is pure conversion between the cluster's camelCase dicts
and the state machine's values, plus the derived facts the reconciler needs (the canary's
revision, the traffic share in force at any past time, human commands from annotations).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any

from controller.api.model import ModelRollout
from controller.api.schedule import RouteState, realized_share
from controller.api.text import printable
from controller.api.times import parse_timestamp, timestamp
from controller.engine.steering import check_command
from controller.judge.machine import (
    Action,
    Command,
    Evidence,
    MetricEvidence,
    Phase,
    Status,
    Transition,
    routes_for,
)

E_VALUE_CAP = 1e300
#: Bounds on the report's logs in the status, so an object stays far below etcd's 1.5 MiB
#: (a look is about 1 KiB; 120 looks are two hours of one-minute intervals).
ANALYSES_LIMIT = 120
WEIGHTS_LIMIT = 100
DISTRIBUTIONS_LIMIT = 30
#: The status in bytes (compact JSON), whatever the metrics, looks or user strings: etcd refuses an
#: object over 1.5 MiB, and the spec and metadata need their share. Past it the oldest log entries go.
STATUS_BYTES_LIMIT = 256 * 1024
#: Logs given up first when the status outgrows its bound; the decision history keeps its last entry.
_SHED_ORDER = ("distributions", "analyses", "weights", "history")
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
    previous: Mapping[str, Any],
    generation: int | None,
    now: float,
    command_id: str | None = None,
) -> dict[str, Any]:
    """The status subresource to write: the machine's state, the routes in force and the evidence.

    Besides the latest look, it keeps bounded logs for ``canarist report``: the weight in force over
    time, every look's numbers, and the latency distributions at each decision that changed something.
    A new canary revision starts them afresh: they describe this canary's rollout.
    """
    metrics = [metric_status(m) for m in evidence.metrics] if evidence is not None else previous.get("metrics", [])
    changed = bool(status.history) and status.history[-1].at == now
    if previous.get("canaryRevision") not in (None, "", status.canary_revision):
        previous = {k: v for k, v in previous.items() if k not in ("weights", "analyses", "distributions")}
    last_command = command_id if command_id is not None else previous.get("lastCommandId")
    last_analysis = timestamp(now) if evidence is not None else previous.get("lastAnalysisAt")
    out: dict[str, Any] = {
        "phase": status.phase.value,
        "currentStep": status.step,
        "canaryWeight": routes.canary_weight,
        "mirrorPercent": routes.mirror_percent,
        "stepStartedAt": timestamp(status.step_started_at),
        "canaryRevision": status.canary_revision,
        "exposureRevision": status.exposure_revision or None,
        "message": printable(status.message),
        "observedGeneration": generation,
        "lastAnalysisAt": last_analysis if isinstance(last_analysis, str) else None,
        "lastCommandId": printable(last_command, COMMAND_ID_LIMIT) if isinstance(last_command, str) else None,
        "metrics": [m for m in metrics if isinstance(m, Mapping)] if isinstance(metrics, list) else [],
        "history": [transition_status(t) for t in status.history],
        "weights": weights_log(previous.get("weights"), routes.canary_weight, now),
        "analyses": analyses_log(previous.get("analyses"), status, routes, evidence, now),
        "distributions": distributions_log(previous.get("distributions"), status, evidence, now, changed=changed),
        "conditions": conditions(status, previous.get("conditions", []), now),
    }
    return bounded({k: v for k, v in out.items() if v is not None})


def bounded(body: dict[str, Any], limit: int = STATUS_BYTES_LIMIT) -> dict[str, Any]:
    """``body`` shrunk to at most ``limit`` bytes of JSON by dropping the oldest log entries.

    The logs feed ``canarist report``; the phase, step, weights in force, latest evidence and the
    last recorded decision are what the controller needs, and they are never dropped.
    """
    size = _size(body)
    for key in _SHED_ORDER:
        entries = body.get(key)
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


def _size(value: Any) -> int:
    """Bytes of ``value`` as the API server stores it: compact JSON in UTF-8."""
    return len(json.dumps(value, separators=(",", ":"), allow_nan=True, ensure_ascii=False).encode())


def _log(previous: Any) -> list[Any]:
    return [item for item in previous if isinstance(item, Mapping)] if isinstance(previous, list) else []


def weights_log(previous: Any, weight: int, now: float) -> list[Any]:
    """The canary weight over time: one entry each time the weight in force changes."""
    log = _log(previous)
    if not log or log[-1].get("canaryWeight") != weight:
        log.append({"at": timestamp(now), "canaryWeight": weight})
    return log[-WEIGHTS_LIMIT:]


def analyses_log(previous: Any, status: Status, routes: RouteState, evidence: Evidence | None, now: float) -> list[Any]:
    """Every look's numbers (the e-value paths and estimates the report draws)."""
    log = _log(previous)
    if evidence is not None:
        metrics = [{k: v for k, v in metric_status(m).items() if k != "reason"} for m in evidence.metrics]
        log.append(
            {"at": timestamp(now), "step": status.step, "canaryWeight": routes.canary_weight, "metrics": metrics}
        )
    return log[-ANALYSES_LIMIT:]


def distributions_log(
    previous: Any, status: Status, evidence: Evidence | None, now: float, *, changed: bool
) -> list[Any]:
    """Latency bucket counts of both versions at each look whose decision changed something."""
    log = _log(previous)
    if evidence is not None and changed:
        action = status.history[-1].action.value
        for metric in evidence.metrics:
            shape = metric.distribution
            if shape is None:
                continue
            log.append(
                {
                    "at": timestamp(now),
                    "step": status.step,
                    "action": action,
                    "metric": metric.name,
                    "edges": [e for e in shape.edges if math.isfinite(e)],
                    "stable": [int(v) for v in shape.stable],
                    "canary": [int(v) for v in shape.canary],
                }
            )
    return log[-DISTRIBUTIONS_LIMIT:]


def metric_status(metric: MetricEvidence) -> dict[str, Any]:
    return {
        "name": metric.name,
        "verdict": metric.verdict.value,
        "reason": printable(metric.reason),
        "sloBreached": metric.slo_breached,
        "eValue": _e(metric.e_regression),
        "eValueNonInferiority": _e(metric.e_noninferiority),
        "threshold": _e(metric.threshold),
        "estimate": _finite(metric.estimate),
        "interval": [_finite(metric.interval[0]), _finite(metric.interval[1])] if metric.interval else None,
        "requests": {"stable": metric.n_stable, "canary": metric.n_canary},
    }


def transition_status(transition: Transition) -> dict[str, Any]:
    out: dict[str, Any] = {
        "at": timestamp(transition.at),
        "fromPhase": transition.from_phase.value,
        "toPhase": transition.to_phase.value,
        "fromStep": transition.from_step,
        "toStep": transition.to_step,
        "action": transition.action.value,
        "reason": printable(transition.reason),
    }
    if transition.weight is not None:
        out["canaryWeight"] = transition.weight
    return out


def _transition(item: Any) -> Transition | None:
    """One stored history entry, or None if it is not one (edited by hand, or from the future)."""
    if not isinstance(item, Mapping):
        return None
    try:
        weight = item.get("canaryWeight")
        entry = Transition(
            at=parse_timestamp(item.get("at")),
            from_phase=Phase(item["fromPhase"]),
            to_phase=Phase(item["toPhase"]),
            from_step=_index(item["fromStep"]),
            to_step=_index(item["toStep"]),
            action=Action(item["action"]),
            reason=str(item.get("reason", "")),
            weight=weight if _is_weight(weight) else None,
        )
    except (KeyError, ValueError, TypeError):
        return None
    return entry


def _index(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"not a step index: {value!r}")
    return value


def _is_weight(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 100


def from_status(raw: Any) -> Status:
    """Read a stored status back, trusting its phase and step only as far as its history records them.

    Anything missing or unreadable falls back to a fresh start. The history is the record of every
    decision that changed the phase or the step: a phase or step that its last entry does not
    record (a status edited by hand, say ``currentStep: 99`` or ``phase: Promoting``) is replaced by
    what the history says, and with no history at all the rollout starts afresh. So no edit of the
    status reaches 100 % without a recorded promotion. :func:`status_corrected` says whether it happened.
    """
    if not isinstance(raw, Mapping) or not raw:
        return Status()
    items = raw.get("history")
    history = tuple(t for t in (_transition(i) for i in (items if isinstance(items, list) else [])) if t is not None)
    phase, step = (history[-1].to_phase, history[-1].to_step) if history else (Phase.INITIALIZING, 0)
    message = raw.get("message")
    revision = raw.get("canaryRevision")
    exposure = raw.get("exposureRevision")
    weight = raw.get("canaryWeight")
    started = parse_timestamp(raw.get("stepStartedAt"))
    return Status(
        phase=phase,
        step=step,
        # a step starts with the transition into it or later (a resume): never earlier than the record
        step_started_at=max(started, history[-1].at) if history else started,
        canary_revision=revision if isinstance(revision, str) else "",
        message=message if isinstance(message, str) else "",
        history=history,
        canary_weight=weight if _is_weight(weight) else None,
        exposure_revision=exposure if isinstance(exposure, str) else "",
    )


def status_corrected(raw: Any, status: Status) -> str:
    """Why the stored phase or step was not taken as written ('' when it was)."""
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


def conditions(status: Status, previous: Any, now: float) -> list[dict[str, Any]]:
    """Kubernetes-style conditions (Progressing, Paused, Succeeded, Failed), transition times kept."""
    wanted = {
        "Progressing": CONDITION_OF_PHASE[status.phase][1],
        "Paused": "True" if status.phase is Phase.PAUSED else "False",
        "Succeeded": "True" if status.phase is Phase.SUCCEEDED else "False",
        "Failed": "True" if status.phase is Phase.FAILED else "False",
    }
    items = previous if isinstance(previous, list) else []
    before = {c.get("type"): c for c in items if isinstance(c, Mapping)}
    out = []
    for kind, value in wanted.items():
        old = before.get(kind)
        since = old.get("lastTransitionTime") if old and old.get("status") == value else timestamp(now)
        out.append(
            {
                "type": kind,
                "status": value,
                "reason": status.phase.value,
                "message": printable(status.message),
                "lastTransitionTime": since if isinstance(since, str) else timestamp(now),
            }
        )
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


def share_at(rollout: ModelRollout, status: Status, moment: float) -> float:
    """The canary's realized traffic share in force at ``moment``, replayed from the history."""
    state = Status(phase=Phase.INITIALIZING)
    for transition in status.history:
        if transition.at > moment:
            break
        state = Status(phase=transition.to_phase, step=transition.to_step)
    if state.phase is Phase.INITIALIZING:
        return 0.0
    return realized_share(rollout, routes_for(rollout, state))


def _e(value: float) -> float:
    return min(value, E_VALUE_CAP)


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None
