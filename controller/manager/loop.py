"""The controller's loop: which rollout to reconcile when, leadership, GitOps sync and shutdown.

Each rollout is reconciled when it changes (a watch event) and when its requeue time comes (its
interval, or at once after a transition that needs a follow-up). Only the leader acts; a follower
keeps its lease renewed or waits for it. Sharded (:mod:`controller.edges.kube.shards`), every
replica acts, each on the rollouts of the shards it holds. Time is injected so tests can drive the loop tick by tick.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import jinja2

from controller.api.load import PolicyError, load
from controller.api.notify import NotifyEvent
from controller.api.status import Action
from controller.api.text import printable
from controller.engine import notices
from controller.engine.batch import BatchedLooks
from controller.engine.ports import (
    Cluster,
    ClusterUnavailableError,
    ConflictError,
    GateProbe,
    MetricsSource,
    NotFoundError,
)
from controller.engine.reconcile import Outcome, planned_look, reconcile
from controller.traffic.tenancy import TenancyRules

log = logging.getLogger("canarist")
#: After an unexpected error, a rollout waits this long, doubling per failure in a row up to the max.
FAILURE_BACKOFF = 10.0
FAILURE_BACKOFF_MAX = 600.0


class Elector(Protocol):
    """Leader election (a Lease in production); it keeps its own (monotonic) time."""

    def try_acquire_or_renew(self) -> bool: ...

    def ensure(self, budget: float) -> bool:
        """Whether the lease stays ours for ``budget`` more seconds (renewing once if need be)."""
        ...

    def fence(self, cluster: Cluster) -> Cluster:
        """``cluster`` with every write refused once the lease may have been lost."""
        ...

    def release(self) -> None: ...


class Shards(Protocol):
    """Sharding across replicas (shard Leases in production): which rollouts this replica drives."""

    #: The live replicas (this one included) as last seen.
    members: list[str]

    def renew(self) -> list[int]:
        """Keep membership, take or hand back shards; the shards surely held now."""
        ...

    def owns(self, key: str) -> bool:
        """Whether rollout ``key`` (``namespace/name``) is this replica's to drive now."""
        ...

    def ensure(self, key: str, budget: float) -> bool:
        """Whether rollout ``key``'s shard stays ours for ``budget`` more seconds (renewing once if need be)."""
        ...

    def fence(self, cluster: Cluster) -> Cluster:
        """``cluster`` with each write refused once its rollout's shard may have been lost."""
        ...

    def release(self) -> None: ...


class Notifier(Protocol):
    """Announces decisions (controller/edges/notify in production)."""

    def notify(self, rollout: Mapping[str, Any], outcome: Outcome, event: NotifyEvent) -> None:
        """Queue the announcement of ``event``; returns at once (delivery is off the reconcile path)."""
        ...


class Observer(Protocol):
    """Where the loop reports what it did (Prometheus metrics in production)."""

    def reconciled(self, outcome: Outcome, seconds: float) -> None: ...

    def leading(self, leader: bool) -> None: ...

    def ticked(self) -> None:
        """The loop completed a pass (the liveness heartbeat)."""
        ...

    def sharded(self, held: int, members: int) -> None:
        """Sharded replicas: the shards this one holds, and the live replicas it sees."""
        ...

    def forgotten(self, key: str) -> None:
        """Rollout ``key`` is no longer this replica's (deleted, or its shard moved): drop its gauges."""
        ...


@dataclass
class Manager:
    cluster: Cluster
    metrics: MetricsSource
    env: jinja2.Environment
    clock: Callable[[], float]
    namespace: str | None = None
    elector: Elector | None = None
    #: Several replicas sharing the rollouts (exclusive with ``elector``): each drives its shards' own.
    shards: Shards | None = None
    #: Where decisions are announced (spec.notify and the controller's default sinks); None: nowhere.
    notifier: Notifier | None = None
    observer: Observer | None = None
    policies: Path | None = None
    #: What each rollout may route beyond its own Service (controller.traffic.tenancy; the CLI's --allow-*).
    tenancy: TenancyRules = field(default_factory=TenancyRules)
    #: Observes pre-traffic gates (spec.gate); None: a rollout with a gate waits for it, then fails.
    gates: GateProbe | None = None
    due: dict[str, float] = field(default_factory=dict)
    #: Unexpected failures in a row per rollout, for its backoff.
    failures: dict[str, int] = field(default_factory=dict)
    leader: bool = False
    resource_version: str = ""
    #: A pass starts no reconcile after this many seconds (the rest stay due, oldest first next pass).
    tick_deadline: float = 60.0
    #: Seconds of lease a reconcile needs left to start (each write is fenced on its own as well).
    act_budget: float = 0.5
    #: Orders rollouts equally due, as those a fresh controller has never reconciled: at random, so a
    #: controller that keeps dying mid-pass does not spend every life on the same first few by name.
    rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        if self.elector is not None and self.shards is not None:
            raise ValueError("a controller either elects one leader or shares rollouts by shards, not both")
        if self.elector is not None:  # no write may leave once the lease may have been lost
            self.cluster = self.elector.fence(self.cluster)
        if self.shards is not None:  # nor one about a rollout whose shard may have been lost
            self.cluster = self.shards.fence(self.cluster)

    def tick(self) -> list[Outcome]:
        """One pass: renew leadership, sync GitOps policies, reconcile every rollout that is due."""
        now = self.clock()
        deadline = now + self.tick_deadline
        if not self._lead(now):
            return []
        if self.policies is not None:
            self.sync_policies()
        try:
            objects, self.resource_version = self.cluster.list_rollouts(self.namespace)
        except ClusterUnavailableError as exc:
            log.warning("listing rollouts failed: %s", exc.reason)
            return []
        outcomes: list[Outcome] = []
        present = set()
        waiting = [o for o in objects if self._mine(_key(o))]
        self.rng.shuffle(waiting)  # ties in random order: the sort below keeps it
        looks = self._batched_looks([o for o in waiting if self.due.get(_key(o), 0.0) <= now], now)
        for obj in sorted(waiting, key=lambda o: self.due.get(_key(o), 0.0)):  # the longest waiting first
            key = _key(obj)
            present.add(key)
            # the first due rollout always starts (progress), the others only before the deadline
            if self.due.get(key, 0.0) <= now and self._may_act(deadline if outcomes else float("inf"), key):
                outcomes.append(self.reconcile_one(obj, looks))
        for gone in set(self.due) - present:
            del self.due[gone]
            self.failures.pop(gone, None)
            if self.observer is not None:
                self.observer.forgotten(gone)
        return outcomes

    def _batched_looks(self, due: Sequence[Mapping[str, Any]], now: float) -> MetricsSource:
        """The due rollouts' looks taken as one (one query per metric family for all of them): the
        source this pass's reconciles read; a rollout whose look cannot be planned is left to its own."""
        batch = BatchedLooks(self.metrics)
        wanted = {}
        for obj in due:
            try:
                planned = planned_look(obj, now, self.tenancy)
            except Exception:  # its own reconcile meets the problem and reports it
                continue
            if planned is not None:
                wanted[planned[0].key] = planned
        if len(wanted) > 1:
            try:
                batch.take(wanted, now)
            except Exception:  # one rollout's bad data must not stop the others: each looks on its own
                log.exception("the pass's batched look failed: each rollout looks on its own")
        return batch

    def reconcile_one(self, obj: Mapping[str, Any], metrics: MetricsSource | None = None) -> Outcome:
        """Reconcile one rollout, isolated: an unexpected error is an Event and a backoff for it alone."""
        started = self.clock()
        try:
            outcome = reconcile(
                obj,
                self.cluster,
                metrics or self.metrics,
                self.env,
                now=started,
                rules=self.tenancy,
                gates=self.gates,
            )
        except Exception as exc:  # one rollout's bug must not stop the others
            outcome = self._failed(obj, exc)
        else:
            self.failures.pop(outcome.key, None)
            self._announce(obj, outcome)
        self.due[outcome.key] = started + outcome.requeue_after
        if self.observer is not None:
            self.observer.reconciled(outcome, max(self.clock() - started, 0.0))
        log.info(
            "reconciled %s: %s (%s) weight=%s writes=%d",
            outcome.key,
            outcome.action.value,
            printable(outcome.reason, 1024),  # user and server text: one bounded line
            outcome.canary_weight,
            outcome.route_writes,
        )
        return outcome

    def _announce(self, obj: Mapping[str, Any], outcome: Outcome) -> None:
        """Queue the decision's notification, if it announces one; never lets a notifier's bug through."""
        if self.notifier is None:
            return
        event = notices.event_of(outcome, notices.stored_message(obj))
        if event is None:
            return
        try:
            self.notifier.notify(obj, outcome, event)
        except Exception:  # a notification is never worth a decision
            log.exception("could not queue the notification of %s for %s", event.value, outcome.key)

    def _failed(self, obj: Mapping[str, Any], exc: Exception) -> Outcome:
        """An unexpected error in one reconcile: logged with its traceback, an Event, and a backoff."""
        key = _key(obj)
        failures = self.failures[key] = self.failures.get(key, 0) + 1
        backoff = min(FAILURE_BACKOFF * 2 ** (failures - 1), FAILURE_BACKOFF_MAX)
        reason = printable(f"internal error ({type(exc).__name__}: {exc}); retrying in {backoff:.0f}s", 512)
        log.exception("reconciling %s failed (%d in a row)", key, failures)
        try:
            self.cluster.emit_event(obj, reason="ReconcileFailed", message=reason, warning=True)
        except Exception:  # the Event is best effort; the log has the error
            log.warning("could not record the failure of %s as an Event", key)
        return Outcome(key, Action.NONE, reason, None, None, 0, False, backoff)

    def next_wakeup(self) -> float:
        """Seconds until the next rollout is due (capped so leadership is renewed in time)."""
        now = self.clock()
        soonest = min(self.due.values(), default=now + 5.0)
        return min(max(soonest - now, 0.0), 5.0)

    def watch(self, seconds: float) -> list[Outcome]:
        """Wait up to ``seconds`` for changes; reconcile each changed rollout at once."""
        if not self.leader or not self.resource_version or seconds < 1:
            return []
        outcomes = []
        deadline = self.clock() + max(seconds, self.tick_deadline)  # reconciles here are bounded too
        try:
            for event in self.cluster.watch_rollouts(self.namespace, self.resource_version, int(seconds)):
                if event.type == "DELETED":
                    self.due.pop(_key(event.object), None)
                    continue
                if not self._mine(_key(event.object)):
                    continue  # another replica's shard
                version = (event.object.get("metadata") or {}).get("resourceVersion")
                if version:
                    self.resource_version = str(version)
                if not self._may_act(deadline, _key(event.object)):
                    break
                outcomes.append(self.reconcile_one(event.object))
        except ClusterUnavailableError as exc:
            log.warning("watch failed: %s", exc.reason)
        return outcomes

    def sync_policies(self) -> None:
        """GitOps mode: create or update a ModelRollout for every valid policy file in the directory."""
        assert self.policies is not None
        for path in sorted(p for p in self.policies.rglob("*") if p.suffix in (".yaml", ".yml")):
            try:
                rollouts = load(path.read_text(encoding="utf-8"), str(path), ignore_other_kinds=True)
            except (PolicyError, OSError, UnicodeDecodeError) as exc:
                log.warning("policy %s refused, nothing applied: %s", path, str(exc).splitlines()[0])
                continue
            for rollout in rollouts:
                if not self._mine(rollout.key):
                    continue  # another replica's shard: that replica applies it
                body = rollout.model_dump(by_alias=True, exclude_none=True, mode="json", exclude={"status"})
                try:
                    self.cluster.create_or_update_rollout(body)
                except (ClusterUnavailableError, NotFoundError, ConflictError) as exc:
                    log.warning("could not apply %s: %s", rollout.key, exc)  # the next pass tries again

    def run(self, stop: threading.Event) -> None:
        """Loop until ``stop`` is set (SIGTERM), then hand the lease back."""
        try:
            while not stop.is_set():
                self.tick()
                if self.observer is not None:
                    self.observer.ticked()
                wait = self.next_wakeup()
                if self.leader and wait >= 1:
                    self.watch(wait)
                else:
                    stop.wait(wait if wait > 0 else 0.2)
        finally:
            if self.elector is not None and self.leader:
                self.elector.release()
            if self.shards is not None:
                self.shards.release()

    def _mine(self, key: str) -> bool:
        """Whether rollout ``key`` is this replica's to drive (always, unless sharded)."""
        return self.shards is None or self.shards.owns(key)

    def _may_act(self, deadline: float, key: str) -> bool:
        """Whether one more reconcile (of rollout ``key``) may start: before the pass's deadline, and
        with the lease (or its shard's) surely ours for :attr:`act_budget` more seconds (renewed
        first if it is short)."""
        if self.clock() >= deadline:
            log.warning("this pass reached its deadline of %ss: the rest wait for the next", self.tick_deadline)
            return False
        if self.shards is not None:
            return self.shards.ensure(key, self.act_budget)
        if self.elector is None or self.elector.ensure(self.act_budget):
            return True
        self._became(False)
        return False

    def _lead(self, now: float) -> bool:
        if self.shards is not None:  # "leading": holding at least one shard
            held = self.shards.renew()
            leader = bool(held)
            if self.observer is not None:
                self.observer.sharded(len(held), len(self.shards.members))
        else:
            leader = True if self.elector is None else self.elector.try_acquire_or_renew()
        self._became(leader)
        return leader

    def _became(self, leader: bool) -> None:
        if leader != self.leader:
            log.info("leadership %s", "acquired" if leader else "lost")
            self.leader = leader
            if self.observer is not None:
                self.observer.leading(leader)


def _key(obj: Mapping[str, Any]) -> str:
    metadata = obj.get("metadata") or {}
    return f"{metadata.get('namespace')}/{metadata.get('name')}"
