"""Human commands through annotations: who asked (as far as can be told), whether it is still fresh, consuming it.

A command is four annotations on the ModelRollout: ``canarist.io/command`` (what), ``-by`` (who
says they asked), ``-id`` (which request) and ``-at`` (when it was issued, RFC 3339). Anyone who
may edit the object may write all four, so none of them is proof of anything:

- **Who**: the ``-by`` value is a *claim*. ``canarist promote`` writes the name the API server
  authenticated it as (a SelfSubjectReview), but a hand-written annotation can say anything. The
  controller adds what the API server itself recorded about the write: the field managers that
  ``metadata.managedFields`` names as the writers of the command annotation (a client chooses its
  manager name too, so that is a hint, not proof). Every recorded name reads
  ``alice (claimed, written by manager canarist-cli)``.
- **When**: a command older than :data:`COMMAND_TTL`, issued before the object was created (a
  backup restored, a manifest re-applied with the annotations still on it) or before the canary
  last changed, or with no readable issue time, is *expired*: never acted on, recorded as an
  Event, then removed.
- **Once**: an acted-on command is recorded as ``status.lastCommandId`` in the same write as the
  decision, and its annotations are removed afterwards (compare-and-swap on the resourceVersion,
  so a newer command written meanwhile is never removed unseen).

Every user string that reaches the status, an Event or a terminal goes through
:func:`controller.api.text.printable` first.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from controller.api.names import COMMAND_ANNOTATION, COMMAND_AT_ANNOTATION, COMMAND_BY_ANNOTATION, COMMAND_ID_ANNOTATION
from controller.api.text import printable
from controller.api.times import parse_time, rfc3339
from controller.engine.ports import Cluster, ClusterUnavailableError, ConflictError, NotFoundError
from controller.judge.machine import Command, CommandKind

#: A command is acted on only within this many seconds of being issued (10 minutes).
COMMAND_TTL = 600.0
#: How far in the future an issue time may lie (clocks of the CLI, API server and controller differ).
CLOCK_SKEW = 120.0
#: The longest "who asked" canarist stores (a DNS subdomain's limit).
BY_LIMIT = 253
#: The field manager ``canarist promote`` and the others write commands as (managedFields records it).
CLI_FIELD_MANAGER = "canarist-cli"
COMMAND_ANNOTATIONS = (COMMAND_ANNOTATION, COMMAND_BY_ANNOTATION, COMMAND_ID_ANNOTATION, COMMAND_AT_ANNOTATION)


@dataclass(frozen=True)
class CommandCheck:
    """The command in a rollout's annotations, and whether it may be acted on (``problem`` is None)."""

    text: str  # the command annotation, printable
    command_id: str
    by: str  # who, as recorded: the claim and the writers managedFields name
    issued_at: float | None
    problem: str | None  # why it is not acted on (expired, unknown, unreadable); None: fresh
    done: bool  # already acted on (status.lastCommandId)

    @property
    def command(self) -> Command | None:
        """The command to act on: fresh, known and not yet done."""
        if self.problem is not None or self.done:
            return None
        return Command(CommandKind(self.text), by=self.by)


def command_annotations(kind: CommandKind, *, by: str, command_id: str, at: float) -> dict[str, str]:
    """The four annotations of a command, as ``canarist promote`` and the others write them."""
    return {
        COMMAND_ANNOTATION: kind.value,
        COMMAND_BY_ANNOTATION: printable(by, BY_LIMIT),
        COMMAND_ID_ANNOTATION: command_id,
        COMMAND_AT_ANNOTATION: rfc3339(at),
    }


def writers(metadata: Mapping[str, Any], annotation: str) -> list[str]:
    """The field managers that ``metadata.managedFields`` names as owning ``annotation`` (main resource)."""
    names: list[str] = []
    entries = metadata.get("managedFields")
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, Mapping) or entry.get("subresource"):
            continue
        fields = entry.get("fieldsV1")
        meta = fields.get("f:metadata") if isinstance(fields, Mapping) else None
        owned = meta.get("f:annotations") if isinstance(meta, Mapping) else None
        if isinstance(owned, Mapping) and f"f:{annotation}" in owned:
            name = printable(str(entry.get("manager") or "(no name)"), 64)
            names += [] if name in names else [name]
    return names


def identity(metadata: Mapping[str, Any]) -> str:
    """Who asked, as honestly as the object can tell: the claimed name and who wrote the annotation."""
    annotations = metadata.get("annotations") or {}
    claimed = printable(str(annotations.get(COMMAND_BY_ANNOTATION) or "unknown"), 128)
    if not isinstance(metadata.get("managedFields"), list):
        return printable(f"{claimed} (claimed, writer unknown)", BY_LIMIT)
    found = writers(metadata, COMMAND_ANNOTATION)
    wrote = f"written by manager {', '.join(found)}" if found else "writer unknown"
    return printable(f"{claimed} (claimed, {wrote})", BY_LIMIT)


def check_command(rollout_obj: Mapping[str, Any], now: float) -> CommandCheck | None:
    """The command annotations of ``rollout_obj`` judged at ``now``; None when there is no command."""
    metadata = rollout_obj.get("metadata") or {}
    annotations = metadata.get("annotations") or {}
    if not any(key in annotations for key in COMMAND_ANNOTATIONS):
        return None
    text = printable(str(annotations.get(COMMAND_ANNOTATION) or ""), 64)
    at_text = annotations.get(COMMAND_AT_ANNOTATION)
    issued = parse_time(at_text)
    command_id = _bounded_id(str(annotations.get(COMMAND_ID_ANNOTATION) or f"{text}@{at_text}"))
    status = rollout_obj.get("status") or {}
    done = isinstance(status, Mapping) and command_id == status.get("lastCommandId")
    problem = _problem(text, issued, rollout_obj, now)
    return CommandCheck(text, command_id, identity(metadata), issued, problem, done)


def _bounded_id(raw: str) -> str:
    """The id as written when it is short and printable, else a digest of all of it: never a cut, so two
    long ids that share a prefix stay two commands."""
    if len(raw) <= 64 and printable(raw) == raw:
        return raw
    return "sha256:" + hashlib.sha256(raw.encode("utf-8", "surrogatepass")).hexdigest()[:40]


def _problem(text: str, issued: float | None, rollout_obj: Mapping[str, Any], now: float) -> str | None:
    if text not in {k.value for k in CommandKind}:
        return f"unknown command {text!r}" if text else f"no {COMMAND_ANNOTATION} annotation"
    if issued is None:
        return f"no readable {COMMAND_AT_ANNOTATION} (RFC 3339): when it was issued is unknown"
    if issued > now + CLOCK_SKEW:
        return f"issued in the future ({rfc3339(issued)}; is a clock wrong?)"
    if now - issued > COMMAND_TTL:
        return f"issued {rfc3339(issued)}, {round(now - issued)}s ago: commands expire after {round(COMMAND_TTL)}s"
    created = parse_time((rollout_obj.get("metadata") or {}).get("creationTimestamp"))
    if created is not None and issued < created:
        return f"issued {rfc3339(issued)}, before this object was created ({rfc3339(created)}): restored or re-applied?"
    changed = _canary_changed_at(rollout_obj.get("status") or {})
    if changed is not None and issued + 1 < changed:  # issue times may be cut to the second
        return f"issued {rfc3339(issued)}, before the canary changed ({rfc3339(changed)})"
    return None


def _canary_changed_at(status: Any) -> float | None:
    """When the current canary revision's rollout restarted (the last Restart), from the stored history."""
    history = status.get("history") if isinstance(status, Mapping) else None
    restarts = [
        parse_time(t.get("at"))
        for t in (history if isinstance(history, list) else [])
        if isinstance(t, Mapping) and t.get("action") == "Restart"
    ]
    known = [at for at in restarts if at is not None]
    return max(known) if known else None


def settle_command(cluster: Cluster, rollout_obj: Mapping[str, Any], *, acted: str | None, now: float) -> str | None:
    """Remove the command annotations once the command is done (``acted`` on this time or before) or
    expired, recording an expired one as a warning Event. Best effort: on a conflict or an API error
    nothing is removed and the next reconcile tries again (``lastCommandId`` keeps a done command
    from being acted on twice). Returns what it did, for logs and tests."""
    metadata = rollout_obj.get("metadata") or {}
    if check_command(rollout_obj, now) is None:
        return None  # no command when we read it (most reconciles): no call at all
    namespace, name = str(metadata.get("namespace") or "default"), str(metadata.get("name") or "")
    try:
        current = cluster.get_rollout(namespace, name)
        found = check_command(current, now)
        if found is None or not (found.done or found.command_id == acted or found.problem is not None):
            return None  # no command, or a fresh one written after our read: the next reconcile acts
        version = str((current.get("metadata") or {}).get("resourceVersion") or "")
        cluster.annotate_rollout(namespace, name, dict.fromkeys(COMMAND_ANNOTATIONS), resource_version=version)
    except (ConflictError, NotFoundError, ClusterUnavailableError):
        return None
    if found.done or found.command_id == acted:
        return "consumed"
    message = printable(f"{found.text or 'command'} by {found.by} not acted on: {found.problem}", 1024)
    cluster.emit_event(current, reason="CommandExpired", message=message, warning=True)
    return "expired"
