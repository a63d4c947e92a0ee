"""canarist's promises, checked on every write the local API stand-in accepts and at the end of a run.

:class:`InvariantChecker` is a :data:`~controller.sandbox.localapi.calls.WriteObserver`: plugged into
``LocalApiServer.write_observer``, it sees each accepted write (in resourceVersion order, with the
store's lock held) and keeps its own view of the objects. On every write:

- ``weights``: every weighted HTTP route of a VirtualService has integer weights summing to 100;
- ``make-before-break``: no route names a subset that the DestinationRules already stored (for its
  host, short names resolved in the namespace) do not define, neither when the VirtualService is
  written nor when a DestinationRule changes under it;
- ``status-bounds``: the status' logs within engine/record's limits, the status within its bytes;
- ``history-append-only``: the status history only grows (its oldest entries dropped only at its
  bound), unless the canary revision changed (a new canary starts afresh);
- ``promotion-without-evidence``: an Advance or Promote is recorded only with the analysis that
  allowed it (recorded in the same write, no metric failing) or a human command acted on;
- ``promotion-before-record``: a VirtualService gives the canary more weight only once the rollout's
  status records that weight (the decision is recorded before its routes move);
- ``succeeded-without-promote``: a rollout reaches Succeeded only with a Promote in its history;
- ``slo-breach-rollback``: once a whole window of a known SLO breach is readable (``breaches``: the
  rollout's key and when its canary starts breaching; readable at the end of the first window on the
  ``interval`` grid that begins at the onset or later, inside the analysis (which begins with the
  last Start or Restart recorded), and once the stored routes send the canary traffic
  (``serving_since``, when known)), the first analysis recorded from then on rolls back: no look
  that could see the breach holds, advances or promotes the canary.
- ``command-once``: a steering command is acted on exactly once and recorded with who asked: its id
  becomes ``status.lastCommandId`` in the write that records its decision (the id the annotations
  carry), never again later (across restarts and lost answers too), with at most one decision that
  names the annotation's ``-by`` and fits the command; a human's decision (a reason such as ``paused
  by ...``) is never recorded without a new command id, and a recorded id is never lost.

Each violation is one line: invariant, object, write number (the resourceVersion), detail. At the end
of a run, :func:`wrong_outcome` judges a rollout's phase against the truth of its canary (a human's
abort or promotion, traceable in the history, is a right end too) and :func:`restore_problem` an
adopted object against the user's original.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from controller.api.names import (
    ADOPTED_LABEL,
    COMMAND_ANNOTATION,
    COMMAND_BY_ANNOTATION,
    COMMAND_ID_ANNOTATION,
    ROLLOUT_LABEL,
)
from controller.api.times import parse_time
from controller.engine.reconcile import ANALYSIS_STARTS as _STARTS
from controller.engine.record import ANALYSES_LIMIT, DISTRIBUTIONS_LIMIT, STATUS_BYTES_LIMIT, WEIGHTS_LIMIT
from controller.judge.machine import HISTORY_LIMIT
from controller.traffic.adopt import fqdn

Key = tuple[str, str, str, str]  # group, plural, namespace, name
ISTIO = "networking.istio.io"
ROLLOUTS = ("canarist.io", "modelrollouts")
LOG_LIMITS = {"history": HISTORY_LIMIT, "weights": WEIGHTS_LIMIT, "looks": ANALYSES_LIMIT}
LOG_LIMITS["distributions"] = DISTRIBUTIONS_LIMIT
PROMOTIONS = ("Advance", "Promote")
#: The decisions from which the controller analyses a canary afresh (its windows begin there).
ANALYSIS_STARTS = tuple(action.value for action in _STARTS)
#: A decision a human command caused, as the state machine words its reason (``... by WHO``).
COMMANDED = re.compile(
    r"^(?P<what>aborted|paused|resumed|promoted to 100%|step \d+ skipped|retried) by (?P<by>.+?)"
    r"(?:: step \d+ \(\d+%\))?$",
    re.DOTALL,
)
#: The actions each command may record (promote: one step, which may be the last).
COMMAND_ACTIONS = {
    "abort": ("Rollback",),
    "pause": ("Pause",),
    "resume": ("Resume",),
    "promote": ("Advance", "Promote"),
    "promote-full": ("Promote",),
    "retry": ("Retry",),
}


@dataclass(frozen=True)
class Violation:
    invariant: str
    object: str  # "plural namespace/name"
    write: int  # the resourceVersion of the write
    detail: str

    def __str__(self) -> str:
        return f"{self.invariant}: {self.object} at write {self.write}: {self.detail}"


def _decisions(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The decisions of ``history`` without when their routes were confirmed (filled in later)."""
    return [{k: v for k, v in entry.items() if k != "routedAt"} for entry in history]


def _analysis_start(history: list[dict[str, Any]]) -> tuple[int, float] | None:
    """Where in ``history`` the analysis of the canary began, and when (the last Start or Restart)."""
    for index in range(len(history) - 1, -1, -1):
        if history[index].get("action") in ANALYSIS_STARTS:
            at = parse_time(history[index].get("at"), naive_as_utc=True)
            return None if at is None else (index, at)
    return None


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _log_length(value: Any) -> int:
    """Entries of a stored log: a list's mappings, or the look log's looks (its longest column)."""
    if isinstance(value, dict):
        columns = [value.get(key) for key in ("at", "step", "canaryWeight")]
        columns += [column for metric in _dicts(value.get("metrics")) for column in metric.values()]
        return max((len(c) for c in columns if isinstance(c, list)), default=0)
    return len(_dicts(value))


def _size(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":"), allow_nan=True, ensure_ascii=False).encode())


@dataclass
class InvariantChecker:
    """Checks each accepted write against the objects stored before it (see the module docstring)."""

    view: dict[Key, dict[str, Any]] = field(default_factory=dict)
    writes: int = 0
    violations: list[Violation] = field(default_factory=list)
    #: The canary weight each VirtualService gave when last written.
    canary_weights: dict[Key, int] = field(default_factory=dict)
    #: Rollouts (``namespace/name``) whose canary breaches its SLO, and from when (on the window grid).
    breaches: dict[str, float] = field(default_factory=dict)
    #: The analysis interval of those rollouts (seconds): the window grid.
    interval: float = 60.0
    #: For a rollout key and a moment: from when on the stored routes send its canary traffic (None:
    #: not yet); None: taken to be from the moment on.
    serving_since: Callable[[str, float], float | None] | None = None
    #: The command ids each rollout has recorded as acted on.
    commands_acted: dict[Key, set[str]] = field(default_factory=dict)

    def __call__(self, version: int, event: str, key: Key, obj: dict[str, Any]) -> None:
        self.writes += 1
        try:
            if event != "DELETED":
                self._check(version, key, obj)
        except Exception as exc:  # a checker that cannot read a write says so, and never breaks the server
            self._violate("checker-error", key, version, f"{type(exc).__name__}: {exc}")
        if event == "DELETED":
            self.view.pop(key, None)
            self.commands_acted.pop(key, None)
        else:
            self.view[key] = obj
        if key[:2] == (ISTIO, "destinationrules"):
            for other, stored in list(self.view.items()):
                if other[:3] == (ISTIO, "virtualservices", key[2]):
                    self._subsets(version, other, stored)

    def _violate(self, invariant: str, key: Key, version: int, detail: str) -> None:
        self.violations.append(Violation(invariant, f"{key[1]} {key[2]}/{key[3]}", version, detail))

    def _check(self, version: int, key: Key, obj: dict[str, Any]) -> None:
        if key[:2] == (ISTIO, "virtualservices"):
            self._weights(version, key, obj)
            self._subsets(version, key, obj)
            self._promotion(version, key, obj)
        elif key[:2] == ROLLOUTS:
            self._status(version, key, obj)

    # --- routes ---

    def _weights(self, version: int, key: Key, obj: dict[str, Any]) -> None:
        for index, route in enumerate(_dicts((obj.get("spec") or {}).get("http"))):
            destinations = _dicts(route.get("route"))
            weights = [d.get("weight", 100 if len(destinations) == 1 else None) for d in destinations]
            integral = all(isinstance(w, int) and not isinstance(w, bool) and 0 <= w <= 100 for w in weights)
            if destinations and (not integral or sum(w for w in weights if isinstance(w, int)) != 100):
                self._violate(
                    "weights", key, version, f"http[{index}] weights {weights} are not integers summing to 100"
                )

    def _defined(self, namespace: str) -> dict[str, set[str]]:
        """Subset names per host (as Istio resolves it) over the DestinationRules stored in ``namespace``."""
        defined: dict[str, set[str]] = {}
        for key, stored in self.view.items():
            if key[:3] == (ISTIO, "destinationrules", namespace):
                spec = stored.get("spec") or {}
                names = {str(s.get("name")) for s in _dicts(spec.get("subsets"))}
                defined.setdefault(fqdn(str(spec.get("host", "")), namespace), set()).update(names)
        return defined

    def _subsets(self, version: int, key: Key, obj: dict[str, Any]) -> None:
        defined = self._defined(key[2])
        for index, route in enumerate(_dicts((obj.get("spec") or {}).get("http"))):
            targets = [d.get("destination") or {} for d in _dicts(route.get("route"))]
            targets += [route["mirror"]] if isinstance(route.get("mirror"), dict) else []
            for target in targets:
                subset, host = target.get("subset"), fqdn(str(target.get("host", "")), key[2])
                if subset is not None and subset not in defined.get(host, set()):
                    detail = (
                        f"http[{index}] routes to subset {subset!r} of {host}, which no stored DestinationRule defines"
                    )
                    self._violate("make-before-break", key, version, detail)

    def _promotion(self, version: int, key: Key, obj: dict[str, Any]) -> None:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        name = labels.get(ROLLOUT_LABEL) or labels.get(ADOPTED_LABEL)
        rollout = self.view.get((*ROLLOUTS, key[2], str(name))) if name else None
        if rollout is None:
            return
        weight = canary_weight(rollout, obj)
        before, self.canary_weights[key] = self.canary_weights.get(key, 0), weight
        recorded = (rollout.get("status") or {}).get("canaryWeight")
        if weight > before and (not isinstance(recorded, int) or weight > recorded):
            detail = f"canary weight {before} -> {weight} while the status records {recorded}"
            self._violate("promotion-before-record", key, version, detail)

    # --- the rollout's status ---

    def _status(self, version: int, key: Key, obj: dict[str, Any]) -> None:
        new, old = _status_of(obj), _status_of(self.view.get(key))
        if new == old:
            return
        for log, limit in LOG_LIMITS.items():
            if (length := _log_length(new.get(log))) > limit:
                self._violate("status-bounds", key, version, f"{log} holds {length} entries (limit {limit})")
        size = _size(new)
        if size > STATUS_BYTES_LIMIT:
            self._violate("status-bounds", key, version, f"status is {size} bytes (limit {STATUS_BYTES_LIMIT})")
        appended = self._history(version, key, old, new, near_bound=size > STATUS_BYTES_LIMIT * 0.8)
        for transition in appended:
            if transition.get("action") in PROMOTIONS and not _allowed(transition, old, new):
                detail = (
                    f"{transition.get('action')} at {transition.get('at')} without an analysis or command allowing it"
                )
                self._violate("promotion-without-evidence", key, version, detail)
        self._command_once(version, key, obj, old=old, new=new, appended=appended)
        history = _dicts(new.get("history"))
        if new.get("phase") == "Succeeded" and not any(t.get("action") == "Promote" for t in history):
            self._violate("succeeded-without-promote", key, version, "phase Succeeded with no Promote in the history")
        self._breach(version, key, new, history)

    def readable(self, rollout: str, history: list[dict[str, Any]]) -> float | None:
        """When a whole window of ``rollout``'s breach is first in its analysis' windows (None: no
        breach, or no analysis begun)."""
        onset, started = self.breaches.get(rollout), _analysis_start(history)
        if onset is None or started is None:
            return None
        first = math.floor(started[1] / self.interval) * self.interval
        if self.serving_since is not None:
            serving = self.serving_since(rollout, started[1])
            if serving is None:
                return None
            first = max(first, math.ceil(serving / self.interval) * self.interval)
        return max(onset, first) + self.interval

    def _breach(self, version: int, key: Key, new: Mapping[str, Any], history: list[dict[str, Any]]) -> None:
        readable = self.readable(f"{key[2]}/{key[3]}", history)
        looked = parse_time(new.get("lastAnalysisAt"), naive_as_utc=True)
        if readable is None or looked is None or looked < readable:
            return
        began = (_analysis_start(history) or (0, 0.0))[0]
        if not any(t.get("action") == "Rollback" for t in history[began:]):
            detail = f"the analysis at {new.get('lastAnalysisAt')} could read the SLO breach and did not roll back"
            self._violate("slo-breach-rollback", key, version, detail)

    def _command_once(
        self,
        version: int,
        key: Key,
        obj: Mapping[str, Any],
        *,
        old: Mapping[str, Any],
        new: Mapping[str, Any],
        appended: list[dict[str, Any]],
    ) -> None:
        """``command-once`` for one status write (see the module docstring)."""
        before, after = old.get("lastCommandId"), new.get("lastCommandId")
        commanded = [t for t in appended if COMMANDED.match(str(t.get("reason", "")))]
        if after is None or after == before:
            if before is not None and after is None:
                self._violate("command-once", key, version, f"lastCommandId {before!r} lost")
            for transition in commanded:
                detail = f"{transition.get('action')} {transition.get('reason')!r} recorded without a new command id"
                self._violate("command-once", key, version, detail)
            return
        acted = self.commands_acted.setdefault(key, set())
        if after in acted:
            self._violate("command-once", key, version, f"command {after!r} acted on again")
        acted.add(str(after))
        annotations = (obj.get("metadata") or {}).get("annotations") or {}
        if (carried := annotations.get(COMMAND_ID_ANNOTATION)) != after:
            detail = f"lastCommandId {after!r} while the object carries command {carried!r}"
            self._violate("command-once", key, version, detail)
        if len(commanded) > 1:
            self._violate("command-once", key, version, f"command {after!r} decided {len(commanded)} times")
        by, kind = str(annotations.get(COMMAND_BY_ANNOTATION)), str(annotations.get(COMMAND_ANNOTATION))
        for transition in commanded:
            action, reason = transition.get("action"), str(transition.get("reason"))
            if action not in COMMAND_ACTIONS.get(kind, ()) or by not in reason:
                detail = f"command {kind} by {by} ({after!r}) recorded as {action} {reason!r}"
                self._violate("command-once", key, version, detail)

    def _history(
        self, version: int, key: Key, old: Mapping[str, Any], new: Mapping[str, Any], *, near_bound: bool
    ) -> list[dict[str, Any]]:
        """The transitions ``new`` appends to ``old``'s history; a violation if it rewrites any (a
        decision's ``routedAt`` may be filled in once: when its routes were confirmed in force)."""
        raw_before, raw_after = _dicts(old.get("history")), _dicts(new.get("history"))
        before, after = _decisions(raw_before), _decisions(raw_after)
        if after[: len(before)] == before:
            for index, (was, now) in enumerate(zip(raw_before, raw_after, strict=False)):
                if was.get("routedAt") not in (None, now.get("routedAt")):
                    detail = f"decision {index}'s routedAt {was.get('routedAt')} rewritten as {now.get('routedAt')}"
                    self._violate("history-append-only", key, version, detail)
            return raw_after[len(before) :]
        at_bound = len(after) >= HISTORY_LIMIT or near_bound
        for dropped in range(1, len(before) + 1):  # the oldest entries shed at the bound
            kept = before[dropped:]
            if at_bound and after[: len(kept)] == kept and len(after) >= len(kept):
                return raw_after[len(kept) :]
        if old.get("canaryRevision") not in (None, new.get("canaryRevision")):
            return raw_after  # a new canary: its history may start afresh
        detail = f"history of {len(before)} entries rewritten as {len(after)} (not only appended)"
        self._violate("history-append-only", key, version, detail)
        return []


def _status_of(obj: Mapping[str, Any] | None) -> dict[str, Any]:
    status = (obj or {}).get("status")
    return status if isinstance(status, dict) else {}


def _allowed(transition: Mapping[str, Any], old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """Whether the write recording ``transition`` records what allowed it: this write's analysis with
    no metric failing, or a human command acted on in this write whose decision it is."""
    commanded = COMMANDED.match(str(transition.get("reason", ""))) is not None
    if commanded and new.get("lastCommandId") and new.get("lastCommandId") != old.get("lastCommandId"):
        return True
    failing = any(m.get("verdict") == "Fail" for m in _dicts(new.get("metrics")))
    return new.get("lastAnalysisAt") == transition.get("at") and not failing


def canary_weight(rollout: Mapping[str, Any], service: Mapping[str, Any]) -> int:
    """The most weight any HTTP route of ``service`` gives the rollout's canary subset."""
    spec = rollout.get("spec") or {}
    namespace = str((rollout.get("metadata") or {}).get("namespace", ""))
    host = spec.get("service", {}).get("host") or fqdn(str(spec.get("service", {}).get("name", "")), namespace)
    canary = (spec.get("canary") or {}).get("name")
    best = 0
    for route in _dicts((service.get("spec") or {}).get("http")):
        destinations = _dicts(route.get("route"))
        total = 0
        for d in destinations:
            target = d.get("destination") or {}
            if target.get("subset") == canary and fqdn(str(target.get("host", "")), namespace) == host:
                weight = d.get("weight", 100 if len(destinations) == 1 else 0)
                total += weight if isinstance(weight, int) else 0
        best = max(best, total)
    return best


def wrong_outcome(truth: str, rollout: Mapping[str, Any] | None) -> str | None:
    """Why the rollout's end is wrong for its canary's truth, or None when it is right: a good canary
    Succeeded (or Failed by a human's abort), any other rolled back to Failed (or Succeeded by a
    human's promotion); the human's decision must be the one that ended it, named in the history."""
    status = (rollout or {}).get("status") or {}
    phase, history = status.get("phase"), _dicts(status.get("history"))
    if truth == "good":
        if phase == "Succeeded" or (phase == "Failed" and _commanded_last(history, "Rollback")):
            return None
        return f"a good canary ended {phase}: {status.get('message')}"
    rolled_back = any(t.get("action") == "Rollback" for t in history)
    if (phase == "Failed" and rolled_back) or (phase == "Succeeded" and _commanded_last(history, "Promote")):
        return None
    return f"a {truth} canary ended {phase} (rolled back: {rolled_back}): {status.get('message')}"


def _commanded_last(history: list[dict[str, Any]], action: str) -> bool:
    """Whether the last ``action`` in ``history`` is a human command's."""
    last = next((t for t in reversed(history) if t.get("action") == action), None)
    return last is not None and COMMANDED.match(str(last.get("reason", ""))) is not None


def restore_problem(original: Mapping[str, Any], current: Mapping[str, Any] | None) -> str | None:
    """How an adopted object differs from the user's original after its rollout was deleted (its
    spec, labels and annotations must be the user's again), or None."""
    if current is None:
        return "the user's object is gone"
    for part in ("labels", "annotations"):
        want = (original.get("metadata") or {}).get(part) or {}
        have = (current.get("metadata") or {}).get(part) or {}
        if want != have:
            return f"metadata.{part} is {have}, not the user's {want}"
    if original.get("spec") != current.get("spec"):
        return f"spec is {json.dumps(current.get('spec'))}, not the user's {json.dumps(original.get('spec'))}"
    return None
