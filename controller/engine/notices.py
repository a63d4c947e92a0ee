"""What a decision announces: its event, and the notification every sink is sent (pure).

:func:`event_of` names the event of one reconcile's :class:`~controller.engine.reconcile.Outcome`
(None: nothing to announce); :func:`notification` is the documented, versioned payload
(``canarist.io/notification/v1``) the generic webhook receives as JSON and the other sinks render
as text (:func:`title` and :func:`text`). Delivery is an edge's (controller/edges/notify).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from controller.api.notify import NotifyEvent
from controller.api.status import Action
from controller.api.text import printable
from controller.api.times import timestamp
from controller.engine.reconcile import Outcome

API_VERSION = "canarist.io/notification/v1"
KIND = "RolloutNotification"

_NUMBERS = re.compile(r"[0-9]+(\.[0-9]+)?")
_BY_ACTION = {
    Action.START: NotifyEvent.STARTED,
    Action.ADVANCE: NotifyEvent.ADVANCED,
    Action.PROMOTE: NotifyEvent.PROMOTED,
    Action.COMPLETE: NotifyEvent.COMPLETED,
    Action.PAUSE: NotifyEvent.PAUSED,
    Action.RESUME: NotifyEvent.RESUMED,
    Action.RETRY: NotifyEvent.RESTARTED,
    Action.RESTART: NotifyEvent.RESTARTED,
    Action.RESCHEDULE: NotifyEvent.RESTARTED,
}


def event_of(outcome: Outcome, previous_message: str | None) -> NotifyEvent | None:
    """The event ``outcome`` announces; a hold only when its reason differs from the stored one
    (``previous_message``) other than in its numbers (a countdown to the deadline, a count of
    ready pods), so a step waiting for evidence is announced once, not every look."""
    if outcome.action is Action.ROLLBACK:
        if outcome.reason.startswith(("gate failed", "gate not passed")):
            return NotifyEvent.GATE_FAILED
        if outcome.reason.startswith("SLO breached"):
            return NotifyEvent.SLO_BREACHED
        return NotifyEvent.ROLLED_BACK
    if outcome.action is Action.HOLD:
        return NotifyEvent.HELD if _gist(outcome.reason) != _gist(previous_message or "") else None
    return _BY_ACTION.get(outcome.action)


def _gist(reason: str) -> str:
    return _NUMBERS.sub("#", reason)


def stored_message(rollout_obj: Mapping[str, Any]) -> str | None:
    status = rollout_obj.get("status")
    message = status.get("message") if isinstance(status, Mapping) else None
    return message if isinstance(message, str) else None


def notification(
    rollout_obj: Mapping[str, Any], outcome: Outcome, event: NotifyEvent, *, at: float, report_url: str | None = None
) -> dict[str, Any]:
    """The payload of ``event`` (documented in the README, Notifications): plain JSON types only."""
    metadata = rollout_obj.get("metadata") or {}
    canary = outcome.canary_weight
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "event": event.value,
        "rollout": str(metadata.get("name", "")),
        "namespace": str(metadata.get("namespace", "")),
        "phase": outcome.phase.value if outcome.phase is not None else None,
        "step": outcome.step,
        "weights": {"stable": 100 - canary, "canary": canary} if canary is not None else None,
        "decision": outcome.action.value,
        "reason": printable(outcome.reason, 2048),
        "metrics": [
            {
                "name": m.name,
                "verdict": m.verdict.value if m.verdict is not None else None,
                "sloBreached": m.slo_breached,
                "estimate": _number(m.estimate),
                "interval": [_number(v) for v in m.interval] if m.interval else None,
                "eValue": _number(m.e_value),
                "threshold": _number(m.threshold),
                "requests": {"stable": m.requests.stable, "canary": m.requests.canary} if m.requests else None,
                "reason": printable(m.reason or "", 512),
            }
            for m in outcome.metrics
        ],
        "reportUrl": report_url,
        "at": timestamp(at),
    }


def _number(value: float | None) -> float | None:
    """JSON has no NaN or infinity: an e-value that is not a number is left out (null)."""
    return value if value is not None and math.isfinite(value) else None


def title(payload: Mapping[str, Any]) -> str:
    """One line: what happened to which rollout."""
    weights = payload.get("weights")
    where = f" at {weights['canary']}% canary" if isinstance(weights, Mapping) else ""
    return f"{payload['namespace']}/{payload['rollout']}: {payload['event']}{where}"


def text(payload: Mapping[str, Any]) -> str:
    """The body for chat and e-mail (Markdown that reads as plain text too)."""
    lines = [str(payload["reason"])]
    for metric in payload.get("metrics") or []:
        interval = metric.get("interval")
        shown = ""
        if metric.get("estimate") is not None:
            shown = f" estimate {metric['estimate']:.4g}"
            if interval and None not in interval:
                shown += f" [{interval[0]:.4g}, {interval[1]:.4g}]"
        breached = " (SLO breached)" if metric.get("sloBreached") else ""
        lines.append(f"- {metric['name']}: {metric.get('verdict') or 'no verdict'}{breached}{shown}")
    if payload.get("reportUrl"):
        lines.append(f"Report: {payload['reportUrl']}")
    return "\n".join(lines)
