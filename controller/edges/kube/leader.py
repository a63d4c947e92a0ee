"""Leader election on a ``coordination.k8s.io/v1`` Lease: of several replicas, exactly one acts.

The rules are client-go's (``k8s.io/client-go/tools/leaderelection``), in small pure functions:

- no Lease: create it and lead;
- the Lease names us: renew it (``renewTime``) and lead;
- it names nobody (released): take it over at once;
- it names another holder: follow, until the record has not changed for ``leaseDurationSeconds``
  *as measured by our own clock* since we first saw it so. Like client-go, expiry is judged from
  when this replica observed the record, never from the holder's timestamps, so clock skew between
  nodes cannot make two leaders; a fresh replica therefore waits one lease duration first.

Every write carries the resourceVersion that was read: if two replicas race, the API server lets
one win and answers the other 409, which means "someone else leads". ``leaseTransitions`` counts
holder changes; ``acquireTime`` is when the current holder took the lease.

How long the lease is surely ours: a follower takes over no earlier than ``leaseDurationSeconds``
after it *observed* our renewal, and it cannot observe it before we sent it. So a renewal the API
server accepted keeps the lease ours until (the moment the request was sent, on our monotonic
clock) + lease duration, less a safety margin for clock-rate differences and scheduling. The
elector answers :meth:`LeaderElector.remaining` from that, never from wall-clock timestamps, and
:class:`Fenced` refuses every write to the cluster unless the lease stays ours for at least the
time one write may take (renewing once first if it is short), so a replica that stalled past its
lease never writes routes after a standby may have taken over.
"""

from __future__ import annotations

import datetime as dt
import enum
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, cast

import urllib3
from kubernetes import client

from controller.engine.ports import Cluster, ClusterUnavailableError

log = logging.getLogger("canarist.leader")


@dataclass(frozen=True)
class LeaseRecord:
    """The Lease's spec as election reads it; times are seconds since the epoch."""

    holder: str
    duration: int
    acquire_time: float | None = None
    renew_time: float | None = None
    transitions: int = 0


class LeaseVerdict(enum.Enum):
    CREATE = "create"
    RENEW = "renew"
    TAKE_OVER = "take over"
    FOLLOW = "follow"


def expired(observed_at: float, duration: float, now: float) -> bool:
    """Whether a record unchanged since ``observed_at`` (our clock) has outlived its duration."""
    return now >= observed_at + duration


def judge_lease(record: LeaseRecord | None, identity: str, now: float, observed_at: float) -> LeaseVerdict:
    """What ``identity`` does about the Lease ``record`` (None: there is none)."""
    if record is None:
        return LeaseVerdict.CREATE
    if record.holder == identity:
        return LeaseVerdict.RENEW
    if not record.holder or expired(observed_at, record.duration, now):
        return LeaseVerdict.TAKE_OVER
    return LeaseVerdict.FOLLOW


def successor(record: LeaseRecord | None, identity: str, now: float, lease_seconds: int) -> LeaseRecord:
    """The record ``identity`` writes to lead from ``now`` (create, renew or take over)."""
    if record is not None and record.holder == identity:
        return replace(record, duration=lease_seconds, renew_time=now, acquire_time=record.acquire_time or now)
    transitions = 0 if record is None else record.transitions + 1  # a new holder (or a released lease)
    return LeaseRecord(identity, lease_seconds, now, now, transitions)


def released(record: LeaseRecord, now: float) -> LeaseRecord:
    """The record a leader leaves behind when it steps down: nobody holds it, anyone may take it."""
    return LeaseRecord("", 1, now, now, record.transitions)


def valid_until(sent_at: float, lease_seconds: float, margin: float) -> float:
    """Until when (our monotonic clock) a renewal sent at ``sent_at`` and accepted keeps the lease ours."""
    return sent_at + lease_seconds - margin


def default_margin(lease_seconds: float) -> float:
    """The safety margin: a tenth of the lease (clock-rate differences), at least a quarter second."""
    return max(0.25, lease_seconds / 10)


def _epoch(value: dt.datetime | None) -> float | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.timestamp()


def _time(epoch: float | None) -> dt.datetime | None:
    return None if epoch is None else dt.datetime.fromtimestamp(epoch, dt.UTC)


def record_of(lease: client.V1Lease) -> LeaseRecord:
    spec = lease.spec or client.V1LeaseSpec()
    return LeaseRecord(
        holder=spec.holder_identity or "",
        duration=int(spec.lease_duration_seconds or 0),
        acquire_time=_epoch(spec.acquire_time),
        renew_time=_epoch(spec.renew_time),
        transitions=int(spec.lease_transitions or 0),
    )


def _spec(record: LeaseRecord) -> client.V1LeaseSpec:
    return client.V1LeaseSpec(
        holder_identity=record.holder,
        lease_duration_seconds=record.duration,
        acquire_time=_time(record.acquire_time),
        renew_time=_time(record.renew_time),
        lease_transitions=record.transitions,
    )


class LeaderElector:
    """One replica's side of the election; call :meth:`try_acquire_or_renew` every few seconds
    (well within ``lease_seconds``) and :meth:`release` on shutdown.

    ``clock`` gives the wall-clock times written into the Lease (for people reading it);
    ``monotonic`` measures everything this replica decides by: expiry of others' records and how
    long its own lease lasts. A ``now`` passed to a method is a reading of ``monotonic``.
    """

    def __init__(
        self,
        api_client: client.ApiClient,
        namespace: str,
        name: str,
        identity: str,
        *,
        lease_seconds: int = 15,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        request_timeout: float = 5.0,
        margin: float | None = None,
        write_budget: float | None = None,
    ) -> None:
        if not identity:
            raise ValueError("a leader election identity must not be empty")
        self.margin = default_margin(lease_seconds) if margin is None else margin
        #: The time one write to the cluster may take to reach the API server (see :class:`Fenced`).
        self.write_budget = min(2.0, lease_seconds / 4) if write_budget is None else write_budget
        if self.margin + self.write_budget >= lease_seconds:
            raise ValueError(f"a lease of {lease_seconds}s leaves no time to act after its safety margin")
        self.api = client.CoordinationV1Api(api_client)
        self.namespace, self.name, self.identity = namespace, name, identity
        self.lease_seconds = lease_seconds
        self.clock, self.monotonic = clock, monotonic
        self.request_timeout = request_timeout
        self.leading = False
        self._observed: LeaseRecord | None = None
        self._observed_at = 0.0
        self._valid_until: float | None = None

    def try_acquire_or_renew(self, now: float | None = None) -> bool:
        """Lead if we may (create, renew or take over the Lease); return whether we lead now."""
        given, now = now is not None, self.monotonic() if now is None else now
        try:
            lease = self._read()
            record = record_of(lease) if lease is not None else None
            if record != self._observed:
                self._observed, self._observed_at = record, now
            verdict = judge_lease(record, self.identity, now, self._observed_at)
            if verdict is LeaseVerdict.FOLLOW:
                self._valid_until = None
                return self._lead(False)
            wanted = successor(record, self.identity, self.clock(), self.lease_seconds)
            sent = now if given else self.monotonic()  # measured from the moment the request leaves
            written = self._write(lease, wanted)
            self._observed, self._observed_at = record_of(written), now
            self._valid_until = valid_until(sent, self.lease_seconds, self.margin)
            if verdict is not LeaseVerdict.RENEW:
                log.info("%s took the lease %s/%s (%s)", self.identity, self.namespace, self.name, verdict.value)
            return self._lead(True)
        except client.ApiException as exc:
            if exc.status == 409:  # another replica wrote first: it leads
                self._valid_until = None
                return self._lead(False)
            log.warning("lease %s/%s: %s %s", self.namespace, self.name, exc.status, exc.reason)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            log.warning("lease %s/%s: %s", self.namespace, self.name, exc)
        return self._lead(self.remaining(now) > 0)  # unreachable: lead while the last renewal holds

    def saw(self, lease: client.V1Lease, now: float) -> None:
        """The Lease as read elsewhere (a listing) at ``now``: expiry counts from when it was first
        seen unchanged, whoever read it; a replica that lists the Leases every pass can take an
        expired one over as soon as it is its turn, not one lease duration after its first look."""
        record = record_of(lease)
        if record != self._observed:
            self._observed, self._observed_at = record, now

    def remaining(self, now: float | None = None) -> float:
        """Seconds the lease is surely still ours (0: it may be lost, or was never ours)."""
        if not self.leading or self._valid_until is None:
            return 0.0
        now = self.monotonic() if now is None else now
        return max(0.0, self._valid_until - now)

    def holds(self, now: float | None = None) -> bool:
        """Whether the lease is surely still ours at ``now``."""
        return self.remaining(now) > 0

    def ensure(self, budget: float) -> bool:
        """Whether the lease stays ours for ``budget`` more seconds, renewing once if it is shorter."""
        if self.remaining() >= budget:
            return True
        if not self.leading:
            return False
        self.try_acquire_or_renew()
        return self.remaining() >= budget

    def fence(self, cluster: Cluster) -> Cluster:
        """``cluster``, with every write refused unless this lease stays ours long enough for it."""
        # Fenced answers every method of the Protocol through __getattr__ (those added later too).
        return cast(Cluster, cast(object, Fenced(cluster, self.ensure, self.write_budget)))

    def release(self) -> None:
        """Step down and leave the Lease free for another replica (best effort)."""
        was_leading, self.leading = self.leading, False
        self._valid_until = None
        if not was_leading:
            return
        try:
            lease = self._read()
            if lease is None or record_of(lease).holder != self.identity:
                return
            self._write(lease, released(record_of(lease), self.clock()))
            log.info("%s released the lease %s/%s", self.identity, self.namespace, self.name)
        except (client.ApiException, urllib3.exceptions.HTTPError, OSError) as exc:
            log.warning("could not release the lease %s/%s: %s", self.namespace, self.name, exc)

    def _lead(self, leading: bool) -> bool:
        if not leading:
            self._valid_until = None
        self.leading = leading
        return leading

    def _read(self) -> client.V1Lease | None:
        try:
            return self.api.read_namespaced_lease(self.name, self.namespace, _request_timeout=self.request_timeout)
        except client.ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def _write(self, lease: client.V1Lease | None, record: LeaseRecord) -> client.V1Lease:
        if lease is None:
            body = client.V1Lease(
                metadata=client.V1ObjectMeta(name=self.name, namespace=self.namespace), spec=_spec(record)
            )
            return self.api.create_namespaced_lease(self.namespace, body, _request_timeout=self.request_timeout)
        body = client.V1Lease(metadata=lease.metadata, spec=_spec(record))  # with the resourceVersion read
        return self.api.replace_namespaced_lease(self.name, self.namespace, body, _request_timeout=self.request_timeout)


class LeaseLostError(ClusterUnavailableError):
    """A write refused because the lease may no longer be ours: another replica may be leading."""


class Fenced:
    """A :class:`~controller.engine.ports.Cluster` whose writes go out only while the lease is surely ours.

    Reads pass through. Every other method (the Protocol's writes, and any method this class does
    not know: fail safe) first asks ``ensure(budget)``; a refusal raises :class:`LeaseLostError`,
    which the reconciler treats as an unavailable API server (hold, retry later). Route changes are
    several writes with waits for Istio between them, so they need the budget of all of them.
    Events are best effort by contract: a refused one is dropped, never raised.
    """

    READS = frozenset({"list_rollouts", "watch_rollouts", "get_rollout", "pods_ready", "route_conflicts"})
    ROUTES = frozenset({"apply_routes", "release_routes"})
    BEST_EFFORT = frozenset({"emit_event"})

    def __init__(self, inner: Cluster, ensure: Callable[[float], bool], budget: float) -> None:
        self.inner, self.ensure, self.budget = inner, ensure, budget

    def __getattr__(self, name: str) -> Any:
        found = getattr(self.inner, name)
        if name in self.READS or name.startswith("_") or not callable(found):
            return found
        budget = self.budget
        if name in self.ROUTES:  # at most two waits for Istio between the writes: all must fit
            budget += 2 * float(getattr(self.inner, "propagation_delay", 0.0))

        def fenced(*args: Any, **kwargs: Any) -> Any:
            if self.allowed(budget, args, kwargs):
                return found(*args, **kwargs)
            if name in self.BEST_EFFORT:
                log.info("%s skipped: the lease may have been lost", name)
                return None
            raise LeaseLostError(f"{name}: not written, its lease may have been lost", retry_after=1.0)

        return fenced

    def allowed(self, budget: float, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> bool:
        """Whether a write with these arguments may go out (the one Lease: whatever it is about)."""
        return self.ensure(budget)
