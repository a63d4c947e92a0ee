"""One-shot analysis of a rollout, as ``canarist analyze`` runs it: windows in, a report out.

Pure: the caller fetches the observation (through the Prometheus edge) and prints the report. The
report is the same evidence and decision the controller would record at that point, in a stable
JSON shape (documented in the README).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from controller.api.model import API_VERSION, ModelRollout
from controller.api.schedule import RouteState, realized_share, schedule
from controller.api.status import Action, Phase
from controller.api.times import timestamp
from controller.api.units import format_duration
from controller.engine.record import metric_status
from controller.judge.analysis import analyse
from controller.judge.machine import Decision, Evidence, Status, decide
from controller.metrics.samples import Observation, Window, window_ends


class Conclusion(StrEnum):
    """What the rollout would do next, and the exit status ``analyze`` gives it."""

    ADVANCE = "advance"
    PROMOTE = "promote"
    HOLD = "hold"
    ROLLBACK = "rollback"

    @property
    def exit_code(self) -> int:
        return {Conclusion.ADVANCE: 0, Conclusion.PROMOTE: 0, Conclusion.ROLLBACK: 1, Conclusion.HOLD: 3}[self]


@dataclass(frozen=True)
class Point:
    """Where in the rollout the analysis stands: the step and the route state it assumes."""

    step: int
    routes: RouteState


def point(rollout: ModelRollout, *, step: int | None, weight: int | None) -> Point:
    """The step to analyse: an explicit weight, else a step index (default: the first step)."""
    steps = schedule(rollout)
    if weight is not None:
        index = next((s.index for s in steps if s.canary_weight == weight), 0)
        return Point(index, RouteState(weight))
    index = 0 if step is None else step
    if not 0 <= index < len(steps):
        raise ValueError(f"step {index} is out of range: this rollout analyses steps 0..{len(steps) - 1}")
    chosen = steps[index]
    return Point(index, RouteState(chosen.canary_weight, chosen.mirror_percent))


def windows(rollout: ModelRollout, share: float, *, at: float, since: float) -> tuple[Window, ...]:
    """Interval-long windows covering ``since`` seconds before ``at``, ending on the interval's grid.

    Aligned ends (multiples of the interval) let one range query serve every rollout and window.
    """
    interval = rollout.spec.strategy.interval_seconds
    ends = window_ends(interval, at, most=max(1, math.floor(since / interval)))
    return tuple(Window(end - interval, end, share) for end in ends)


def judge_look(
    rollout: ModelRollout, where: Point, observation: Observation, *, at: float
) -> tuple[Evidence, Decision]:
    """The evidence over all windows and what the state machine decides from it at ``at``.

    The step is taken to have started with the first window (all its canary requests count), but
    its deadline clock at ``at``: a one-shot look holds rather than timing out.
    """
    start = observation.windows[0].start if observation.windows else at
    evidence = analyse(rollout, observation, step_started_at=start)
    status = Status(phase=Phase.PROGRESSING, step=where.step, step_started_at=at)
    return evidence, decide(rollout, status, evidence, at)


def conclusion(decision: Decision) -> Conclusion:
    return {
        Action.ADVANCE: Conclusion.ADVANCE,
        Action.PROMOTE: Conclusion.PROMOTE,
        Action.ROLLBACK: Conclusion.ROLLBACK,
    }.get(decision.action, Conclusion.HOLD)


def look_document(
    rollout: ModelRollout,
    where: Point,
    observation: Observation,
    evidence: Evidence,
    decision: Decision,
    *,
    at: float,
    since: float,
    prometheus: str,
    error: str | None,
) -> dict[str, Any]:
    """The JSON document ``canarist analyze -o json`` prints (its shape is part of the CLI's contract)."""
    stable = sum(n for n in observation.stable_requests if n is not None)
    canary = sum(n for n in observation.canary_requests if n is not None)
    result = conclusion(decision)
    return {
        "apiVersion": API_VERSION,
        "kind": "Analysis",
        "rollout": rollout.key,
        "at": timestamp(at),
        "since": format_duration(since),
        "step": where.step,
        "canaryWeight": where.routes.canary_weight,
        "canaryShare": realized_share(rollout, where.routes),
        "windows": len(observation.windows),
        "requests": {"stable": stable, "canary": canary},
        "decision": result.value,
        "reason": decision.reason,
        "metrics": [metric_status(m).dump() for m in evidence.metrics],
        "prometheus": {"url": prometheus, "error": error},
    }
