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
one win and answers the other 409, which means "someone else leads". A leader that cannot reach
the API server keeps leading only until its renew deadline (two thirds of the lease duration after
its last renewal), well before any follower may take over. ``leaseTransitions`` counts holder
changes; ``acquireTime`` is when the current holder took the lease.
"""

from __future__ import annotations

import datetime as dt
import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import urllib3
from kubernetes import client

log = logging.getLogger("canarist.leader")


@dataclass(frozen=True)
class LeaseRecord:
    """The Lease's spec as election reads it; times are seconds since the epoch."""

    holder: str
    duration: int
    acquire_time: float | None = None
    renew_time: float | None = None
    transitions: int = 0


class Verdict(enum.Enum):
    CREATE = "create"
    RENEW = "renew"
    TAKE_OVER = "take over"
    FOLLOW = "follow"


def expired(observed_at: float, duration: float, now: float) -> bool:
    """Whether a record unchanged since ``observed_at`` (our clock) has outlived its duration."""
    return now >= observed_at + duration


def decide(record: LeaseRecord | None, identity: str, now: float, observed_at: float) -> Verdict:
    """What ``identity`` does about the Lease ``record`` (None: there is none)."""
    if record is None:
        return Verdict.CREATE
    if record.holder == identity:
        return Verdict.RENEW
    if not record.holder or expired(observed_at, record.duration, now):
        return Verdict.TAKE_OVER
    return Verdict.FOLLOW


def successor(record: LeaseRecord | None, identity: str, now: float, lease_seconds: int) -> LeaseRecord:
    """The record ``identity`` writes to lead from ``now`` (create, renew or take over)."""
    if record is not None and record.holder == identity:
        return replace(record, duration=lease_seconds, renew_time=now, acquire_time=record.acquire_time or now)
    transitions = 0 if record is None else record.transitions + 1  # a new holder (or a released lease)
    return LeaseRecord(identity, lease_seconds, now, now, transitions)


def released(record: LeaseRecord, now: float) -> LeaseRecord:
    """The record a leader leaves behind when it steps down: nobody holds it, anyone may take it."""
    return LeaseRecord("", 1, now, now, record.transitions)


def renew_deadline_passed(last_renewed: float | None, lease_seconds: float, now: float) -> bool:
    """Whether a leader that failed to renew must stop acting (two thirds of the lease after renewal)."""
    return last_renewed is None or now >= last_renewed + lease_seconds * 2 / 3


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
    (well within ``lease_seconds``) and :meth:`release` on shutdown."""

    def __init__(
        self,
        api_client: client.ApiClient,
        namespace: str,
        name: str,
        identity: str,
        *,
        lease_seconds: int = 15,
        clock: Callable[[], float] = time.time,
        request_timeout: float = 5.0,
    ) -> None:
        if not identity:
            raise ValueError("a leader election identity must not be empty")
        self.api = client.CoordinationV1Api(api_client)
        self.namespace, self.name, self.identity = namespace, name, identity
        self.lease_seconds = lease_seconds
        self.clock = clock
        self.request_timeout = request_timeout
        self.leading = False
        self._observed: LeaseRecord | None = None
        self._observed_at = 0.0
        self._renewed_at: float | None = None

    def try_acquire_or_renew(self, now: float | None = None) -> bool:
        """Lead if we may (create, renew or take over the Lease); return whether we lead now."""
        now = self.clock() if now is None else now
        try:
            lease = self._read()
            record = record_of(lease) if lease is not None else None
            if record != self._observed:
                self._observed, self._observed_at = record, now
            verdict = decide(record, self.identity, now, self._observed_at)
            if verdict is Verdict.FOLLOW:
                return self._lead(False)
            wanted = successor(record, self.identity, now, self.lease_seconds)
            written = self._write(lease, wanted)
            self._observed, self._observed_at = record_of(written), now
            self._renewed_at = now
            if verdict is not Verdict.RENEW:
                log.info("%s took the lease %s/%s (%s)", self.identity, self.namespace, self.name, verdict.value)
            return self._lead(True)
        except client.ApiException as exc:
            if exc.status == 409:  # another replica wrote first: it leads
                return self._lead(False)
            log.warning("lease %s/%s: %s %s", self.namespace, self.name, exc.status, exc.reason)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            log.warning("lease %s/%s: %s", self.namespace, self.name, exc)
        return self._lead(self.leading and not renew_deadline_passed(self._renewed_at, self.lease_seconds, now))

    def release(self) -> None:
        """Step down and leave the Lease free for another replica (best effort)."""
        was_leading, self.leading = self.leading, False
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
