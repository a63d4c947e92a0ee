"""The rollout state machine: (status, evidence, human commands, now) -> decision with its reason.

Pure: the clock is an argument, and the decision says which routes to apply rather than applying
them. The rules, in order of precedence:

1. A new canary revision restarts the rollout cleanly, and so does a change of who else reaches the
   canary (A/B cohorts, sticky users, the mirror): either could send it more than its recorded weight.
2. An SLO breach rolls back at once, whatever else is going on (paused included).
3. A schedule edited mid-rollout is followed as a recorded transition (Reschedule), never to a
   weight above the one the last recorded transition set: see :meth:`_Machine.rescheduled`.
4. Human commands: abort, pause, resume, promote (one step, or ``--full``), retry.
5. A proven regression rolls back.
6. Every metric passing with the step's minimum canary requests advances; on the last step the
   pass must be *proven non-inferiority*, so nothing is promoted without evidence. Earlier steps
   advance on "no harm": every metric has data and none is worse, because the point of a small
   step is to limit exposure while the evidence accumulates (the e-values carry across steps).
   A *suspect* canary is the exception: while some metric leans towards a regression (its
   evidence against the canary exceeds its evidence for it; for one comparison, its estimate is
   past the margin), the step keeps its weight for up to ``holdOnSuspicion``, then advances on
   "no harm" as before.
7. Otherwise hold, saying what is missing, until ``progressDeadline``; then the policy's
   ``onNoData`` / ``onInconclusive`` choice (Hold, Pause or Abort).

Why hold a suspect: a step's weight sets both how fast a bad canary hurts users and how much each
of its requests can tell. Compared with stable on the same interval, a canary request is worth
1 - w of one compared with a perfectly known stable (the information of a difference of two means,
1 / (1/n_canary + 1/n_stable), per canary request), so at 50 % it tells half of what it tells at
5 %. Racing a suspect to the last step buys time with requests; holding it spends time to save
them. On the benchmark (bench/README.md) holding for up to 20 minutes cut the canary requests
served before a rollback by 1.2-1.9x; rollbacks came later and a good canary's promotion took five
minutes longer.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import StrEnum

from controller.api.metrics_spec import OnDrift
from controller.api.model import ModelRollout, OnTimeout
from controller.api.schedule import RouteState, schedule, state_for_step
from controller.api.status import Action, Phase, Verdict
from controller.api.units import format_duration
from controller.judge.gate import GateStatus, GateVerdict

HISTORY_LIMIT = 50


class CommandKind(StrEnum):
    PROMOTE = "promote"
    PROMOTE_FULL = "promote-full"
    ABORT = "abort"
    PAUSE = "pause"
    RESUME = "resume"
    RETRY = "retry"


@dataclass(frozen=True)
class Command:
    """A human's request, as recorded through the API, with who asked."""

    kind: CommandKind
    by: str = "unknown"


@dataclass(frozen=True)
class Distribution:
    """Both versions' bucket counts over the analysis so far: a latency metric's cumulative counts at
    ``edges``, or a prediction distribution's counts per named bucket (``buckets``; ``edges`` empty)."""

    edges: tuple[float, ...]  # upper bounds in seconds, the last one +Inf
    stable: tuple[float, ...]
    canary: tuple[float, ...]
    buckets: tuple[str, ...] | None = None


@dataclass(frozen=True)
class MetricEvidence:
    """One metric's verdict and the numbers behind it (canonical units: seconds or fractions)."""

    name: str
    verdict: Verdict
    reason: str
    slo_breached: bool = False
    e_regression: float = 1.0
    e_noninferiority: float = 1.0
    threshold: float = float("inf")
    estimate: float | None = None
    interval: tuple[float, float] | None = None
    n_stable: int = 0
    n_canary: int = 0
    distribution: Distribution | None = None


@dataclass(frozen=True)
class Evidence:
    """Everything the analysis found at one look."""

    metrics: tuple[MetricEvidence, ...]
    canary_requests_in_step: int

    def with_verdict(self, verdict: Verdict) -> list[MetricEvidence]:
        return [m for m in self.metrics if m.verdict is verdict]

    def suspects(self) -> list[MetricEvidence]:
        """Inconclusive metrics whose evidence leans towards a regression."""
        return [m for m in self.with_verdict(Verdict.INCONCLUSIVE) if m.e_regression > m.e_noninferiority]


@dataclass(frozen=True)
class Transition:
    """One recorded decision that changed the phase or the step, with the canary weight it set.

    ``weight`` is None in transitions recorded before canarist kept it. ``routed_at``: when the
    routes the decision set were confirmed in force (written, or found already so); None until then.
    A decision is recorded before its routes are written, and a route write may land minutes later
    (a controller that died between the two, an API down for Istio writes): until ``routed_at`` the
    traffic may still be split the old way.
    """

    at: float
    from_phase: Phase
    to_phase: Phase
    from_step: int
    to_step: int
    action: Action
    reason: str
    weight: int | None = None
    routed_at: float | None = None


@dataclass(frozen=True)
class Status:
    """Where a rollout is: kept in the cluster, so a restarted controller continues from here."""

    phase: Phase = Phase.INITIALIZING
    step: int = 0
    step_started_at: float = 0.0
    canary_revision: str = ""
    message: str = ""
    history: tuple[Transition, ...] = field(default_factory=tuple)
    #: The canary weight the stored status says is in force (what older records' transitions lack).
    canary_weight: int | None = None
    #: Who else reaches the canary (A/B cohorts, sticky users, the mirror): an edit restarts.
    exposure_revision: str = ""


@dataclass(frozen=True)
class Decision:
    action: Action
    status: Status
    reason: str
    routes: RouteState
    #: Whether the human commands were considered: False when something came first (a restart, an
    #: SLO breach, a rescheduled step), so the command stays pending for the next decision.
    commands_heard: bool = False


def routes_for(rollout: ModelRollout, status: Status) -> RouteState:
    """The route state a phase implies: rollbacks send 100% to stable and drop the cohorts.

    Initializing sends nothing to the canary either: a new or restarted canary gets traffic only
    when its Start is recorded, after its pods passed the readiness gate.
    """
    if status.phase in (Phase.INITIALIZING, Phase.ROLLING_BACK, Phase.FAILED):
        return RouteState(0, cohorts=False)
    if status.phase in (Phase.PROMOTING, Phase.SUCCEEDED):
        return RouteState(100)
    return state_for_step(rollout, min(status.step, len(schedule(rollout))))


def decide(
    rollout: ModelRollout,
    status: Status,
    evidence: Evidence | None,
    now: float,
    *,
    commands: tuple[Command, ...] = (),
    canary_revision: str = "",
    exposure_revision: str = "",
    gate: GateVerdict | None = None,
) -> Decision:
    """The next decision for ``rollout``; ``evidence`` is None when no analysis ran this tick, ``gate``
    None when no pre-traffic gate ran (the rollout has none, or it is past its start)."""
    machine = _Machine(rollout, status, now)
    return machine.run(evidence, commands, canary_revision, exposure_revision, gate)


class _Machine:
    def __init__(self, rollout: ModelRollout, status: Status, now: float) -> None:
        self.rollout = rollout
        self.status = status
        self.now = now
        self.steps = len(schedule(rollout))
        strategy = rollout.spec.strategy
        self.deadline = strategy.progress_deadline_seconds
        self.min_requests = strategy.min_requests
        self.suspicion_hold = strategy.hold_on_suspicion_seconds

    def go(self, action: Action, phase: Phase, step: int, reason: str) -> Decision:
        old = self.status
        new_step_started = self.now if (step != old.step or phase != old.phase) else old.step_started_at
        history = old.history
        status = replace(old, phase=phase, step=step, step_started_at=new_step_started, message=reason)
        routes = routes_for(self.rollout, status)
        if action is not Action.HOLD and action is not Action.NONE:
            entry = Transition(self.now, old.phase, phase, old.step, step, action, reason, routes.canary_weight)
            history = (*old.history, entry)[-HISTORY_LIMIT:]
        return Decision(action, replace(status, history=history), reason, routes)

    def stay(self, reason: str, action: Action = Action.HOLD) -> Decision:
        return self.go(action, self.status.phase, self.status.step, reason)

    def run(
        self,
        evidence: Evidence | None,
        commands: tuple[Command, ...],
        revision: str,
        exposure: str,
        gate: GateVerdict | None = None,
    ) -> Decision:
        status = self.status
        if revision and status.canary_revision and revision != status.canary_revision:
            self.status = replace(status, canary_revision=revision, exposure_revision=exposure)
            return self.go(Action.RESTART, Phase.INITIALIZING, 0, f"canary changed to revision {revision}: restarting")
        if revision and not status.canary_revision:
            self.status = replace(status, canary_revision=revision)
        exposed = self.status.exposure_revision
        if exposure and exposed and exposure != exposed and self.status.phase in (Phase.PROGRESSING, Phase.PAUSED):
            self.status = replace(self.status, exposure_revision=exposure)
            return self.go(
                Action.RESTART, Phase.INITIALIZING, 0, "A/B cohorts, sticky users or the mirror changed: restarting"
            )
        if exposure and exposure != exposed:
            self.status = replace(self.status, exposure_revision=exposure)
        breached = [m for m in (evidence.metrics if evidence else ()) if m.slo_breached]
        active = self.status.phase in (Phase.INITIALIZING, Phase.PROGRESSING, Phase.PAUSED)
        if breached and active:
            names = ", ".join(f"{m.name} ({m.reason})" for m in breached)
            return self.go(Action.ROLLBACK, Phase.ROLLING_BACK, self.status.step, f"SLO breached: {names}")
        rescheduled = self.rescheduled()
        if rescheduled is not None:
            return rescheduled
        if self.status.phase is Phase.INITIALIZING and gate is not None and gate.status is not GateStatus.PASSED:
            # Before its first request the canary must pass the gate: a human's abort goes ahead,
            # a promote waits for it (kept pending).
            aborts = [c for c in commands if c.kind is CommandKind.ABORT]
            decided = self.command(aborts[0]) if aborts else None
            return replace(decided, commands_heard=True) if decided is not None else self.gated(gate)
        for command in commands:
            decision = self.command(command)
            if decision is not None:
                return replace(decision, commands_heard=True)
        return replace(self.tick(evidence, gate), commands_heard=True)

    def command(self, command: Command) -> Decision | None:
        phase = self.status.phase
        active = phase in (Phase.INITIALIZING, Phase.PROGRESSING, Phase.PAUSED)
        by = f" by {command.by}"
        if command.kind is CommandKind.ABORT and active:
            return self.go(Action.ROLLBACK, Phase.ROLLING_BACK, self.status.step, f"aborted{by}")
        if command.kind is CommandKind.PAUSE and phase is Phase.PROGRESSING:  # before the start: nothing to hold
            return self.go(Action.PAUSE, Phase.PAUSED, self.status.step, f"paused{by}")
        if command.kind is CommandKind.RESUME and phase is Phase.PAUSED:
            decision = self.go(Action.RESUME, Phase.PROGRESSING, self.status.step, f"resumed{by}")
            return replace(decision, status=replace(decision.status, step_started_at=self.now))
        if command.kind is CommandKind.PROMOTE_FULL and active:
            return self.go(Action.PROMOTE, Phase.PROMOTING, self.steps, f"promoted to 100%{by}")
        if command.kind is CommandKind.PROMOTE and active:
            return self.advance(f"step {self.status.step} skipped{by}")
        if command.kind is CommandKind.RETRY and phase is Phase.FAILED:
            return self.go(Action.RETRY, Phase.INITIALIZING, 0, f"retried{by}")
        return None

    def gated(self, gate: GateVerdict) -> Decision:
        """The canary has not passed its gate: fail now, or wait for it until the progress deadline."""
        if gate.status is GateStatus.FAILED:
            return self.go(Action.ROLLBACK, Phase.ROLLING_BACK, 0, f"gate failed: {gate.reason}")
        started = self.status.step_started_at or self.now  # a new rollout: its clock starts now
        waited = self.now - started
        if waited >= self.deadline:
            why = f"gate not passed within the progress deadline: {gate.reason}"
            return self.go(Action.ROLLBACK, Phase.ROLLING_BACK, 0, why)
        left = self.deadline - waited
        decision = self.stay(f"waiting for the gate: {gate.reason} ({left:.0f}s left before the progress deadline)")
        return replace(decision, status=replace(decision.status, step_started_at=started))

    def rescheduled(self) -> Decision | None:
        """Follow a schedule edited mid-rollout without routing more than the evidence reached.

        The last recorded transition says which canary weight is in force. When the current step no
        longer exists (steps removed) or now means another weight, the rollout moves to the highest
        step whose weight is at most the recorded one, as a recorded transition; if every step is
        now above it, the rollout restarts (weight 0, the readiness gate, then a recorded Start).
        """
        status = self.status
        if status.phase not in (Phase.PROGRESSING, Phase.PAUSED):
            return None
        recorded = status.history[-1].weight if status.history else None
        if recorded is None:  # a record from before transitions kept their weight: the stored one
            recorded = status.canary_weight
        weights = [step.canary_weight for step in schedule(self.rollout)]
        in_range = status.step < len(weights)
        if in_range and (recorded is None or weights[status.step] == recorded):
            return None
        if recorded is None:  # an old record, and the step is gone: nothing is known to be safe but a restart
            recorded = -1
        below = [i for i, w in enumerate(weights) if w <= recorded]
        was = f"step {status.step}" + (f" ({recorded}%)" if recorded >= 0 else "")
        if not below:
            return self.go(
                Action.RESCHEDULE, Phase.INITIALIZING, 0, f"steps changed: {was} has no equal or lower step: restarting"
            )
        target = max(below)
        return self.go(
            Action.RESCHEDULE, status.phase, target, f"steps changed: {was} is now step {target} ({weights[target]}%)"
        )

    def advance(self, reason: str) -> Decision:
        following = self.status.step + 1
        if following >= self.steps:
            return self.go(Action.PROMOTE, Phase.PROMOTING, self.steps, reason)
        weight = schedule(self.rollout)[following].canary_weight
        return self.go(Action.ADVANCE, Phase.PROGRESSING, following, f"{reason}: step {following} ({weight}%)")

    def tick(self, evidence: Evidence | None, gate: GateVerdict | None = None) -> Decision:
        phase = self.status.phase
        if phase is Phase.INITIALIZING:
            passed = "; gate passed" if gate is not None else ""
            return self.go(Action.START, Phase.PROGRESSING, 0, f"routes in place: analysing step 0{passed}")
        if phase is Phase.PROMOTING:
            return self.go(Action.COMPLETE, Phase.SUCCEEDED, self.steps, "canary serves 100%: promoted")
        if phase is Phase.ROLLING_BACK:
            return self.go(Action.COMPLETE, Phase.FAILED, self.status.step, "stable serves 100%: rolled back")
        if phase is not Phase.PROGRESSING:
            return self.stay(self.status.message, Action.NONE)
        if evidence is None:
            return self.stay(self.status.message or "waiting for the first analysis", Action.NONE)
        return self.judge(evidence)

    def judge(self, evidence: Evidence) -> Decision:
        failed = evidence.with_verdict(Verdict.FAIL)
        if failed:
            names = ", ".join(f"{m.name} ({m.reason})" for m in failed)
            if all(self.pauses_on_drift(m.name) for m in failed):
                why = f"prediction drift proven: {names}: paused for a human"
                return self.go(Action.PAUSE, Phase.PAUSED, self.status.step, why)
            return self.go(Action.ROLLBACK, Phase.ROLLING_BACK, self.status.step, f"regression proven: {names}")
        nodata = evidence.with_verdict(Verdict.NODATA)
        inconclusive = evidence.with_verdict(Verdict.INCONCLUSIVE)
        last = self.status.step >= self.steps - 1
        enough = evidence.canary_requests_in_step >= self.min_requests
        waited = self.now - self.status.step_started_at
        suspects = evidence.suspects() if not last and waited < self.suspicion_hold else []
        if enough and not nodata and not suspects and (not inconclusive or not last):
            proof = "non-inferiority proven" if not inconclusive else "no harm detected"
            return self.advance(f"{proof} on every metric with {evidence.canary_requests_in_step} canary requests")
        if nodata or not enough:
            why = (
                "no data: " + ", ".join(f"{m.name} ({m.reason})" for m in nodata)
                if nodata
                else f"{evidence.canary_requests_in_step} of {self.min_requests} canary requests this step"
            )
            return self.timeout(self.rollout.spec.strategy.on_no_data, why, waited)
        if suspects:
            names = ", ".join(
                f"{m.name} (e-value {m.e_regression:.3g} against, {m.e_noninferiority:.3g} for)" for m in suspects
            )
            why = f"suspect: {names}; weight kept for up to {format_duration(self.suspicion_hold)}"
            return self.timeout(self.rollout.spec.strategy.on_inconclusive, why, waited)
        names = ", ".join(m.name for m in inconclusive)
        return self.timeout(self.rollout.spec.strategy.on_inconclusive, f"inconclusive: {names}", waited)

    def pauses_on_drift(self, name: str) -> bool:
        """Whether the metric is a prediction distribution whose policy pauses on a proven drift."""
        metric = next((m for m in self.rollout.spec.analysis.metrics if m.name == name), None)
        return metric is not None and metric.on_drift is OnDrift.PAUSE

    def timeout(self, choice: OnTimeout, why: str, waited: float) -> Decision:
        if waited < self.deadline:
            left = self.deadline - waited
            return self.stay(f"holding: {why} ({left:.0f}s left before the progress deadline)")
        past = f"{why}, past the progress deadline"
        if choice is OnTimeout.ABORT:
            return self.go(Action.ROLLBACK, Phase.ROLLING_BACK, self.status.step, f"{past}: abort")
        if choice is OnTimeout.PAUSE:
            return self.go(Action.PAUSE, Phase.PAUSED, self.status.step, f"{past}: paused for a human")
        return self.stay(f"holding: {past}")
