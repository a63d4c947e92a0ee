"""Sharding: several controller replicas share the rollouts, each rollout driven by one at a time.

One leader (:mod:`controller.edges.kube.leader`) carries a few hundred rollouts; past that the
work is split across replicas the Kubernetes way, with Leases:

- Every rollout belongs to one of ``shards`` fixed shards: a stable hash (SHA-256) of its
  ``namespace/name`` modulo the shard count. The key is the name, not the uid: it is known before
  the object exists (GitOps sync creates rollouts, and that write is fenced like any other), it is
  what the loop already keys a rollout by, and a rollout deleted and recreated stays where it was.
- Each shard is a Lease (``canarist-shard-NN``), held under client-go's rules by the same elector
  as the single leader: whoever holds it, and only while it surely holds it, acts on the shard's
  rollouts; every write is fenced on the Lease of the rollout it is about (:class:`ShardFenced`).
  So no rollout is driven by two replicas at once, whatever the replicas believe about each other.
- Which replica should hold a shard is rendezvous (highest-random-weight) hashing of the shard
  over the live replicas: each replica keeps a Lease of its own (``canarist-member-<identity>``)
  renewed while it runs, and a member whose Lease has not changed for its duration (by our own
  clock, as for any Lease) is gone. A replica takes the shards that prefer it and hands back, at
  once, those that prefer another live replica; when a replica dies its members' shards expire and
  move to their next preferred replicas; when one joins it takes about 1/N of each other's shards.
  Rendezvous hashing moves only the shards it must.

The views of the replicas may disagree for a moment (one has seen a new member, another not yet):
that only delays a hand-over, because taking a shard still needs its Lease free or expired.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, cast

import urllib3
from kubernetes import client

from controller.edges.kube.leader import Fenced, LeaderElector, LeaseLostError, LeaseRecord, expired, record_of
from controller.engine.ports import Cluster

log = logging.getLogger("canarist.shards")

SHARD_PREFIX = "canarist-shard-"
MEMBER_PREFIX = "canarist-member-"
#: The shard count a controller uses unless told: enough to spread over a dozen replicas evenly,
#: few enough that renewing a replica's share of them is a handful of requests a pass.
DEFAULT_SHARDS = 16


def _digest(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def shard_of(key: str, shards: int) -> int:
    """The shard of the rollout ``namespace/name`` (stable across processes and Python versions)."""
    return _digest(key) % shards


def shard_lease_name(shard: int) -> str:
    return f"{SHARD_PREFIX}{shard:02d}"


def preferred_replica(shard: int, members: Iterable[str]) -> str | None:
    """The member that should hold ``shard``: the highest hash of (member, shard); None if no member."""
    return max(members, key=lambda member: (_digest(f"{member}\0{shard}"), member), default=None)


def key_of_call(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> str | None:
    """The rollout (``namespace/name``) a Cluster write is about, from its arguments; None: unknown.

    Writes name their rollout as an object first (``apply_routes(owner, ...)``, ``emit_event``,
    ``create_or_update_rollout(body)``) or as ``namespace, name`` (status, annotations, finalizer)."""
    first = args[0] if args else kwargs.get("owner", kwargs.get("body"))
    if isinstance(first, Mapping):
        metadata = first.get("metadata") or {}
        namespace, name = metadata.get("namespace"), metadata.get("name")
    else:
        namespace = args[0] if args else kwargs.get("namespace")
        name = args[1] if len(args) > 1 else kwargs.get("name")
    if isinstance(namespace, str) and isinstance(name, str) and namespace and name:
        return f"{namespace}/{name}"
    return None


class ShardSet:
    """One replica's side of the sharding (see the module docstring); call :meth:`renew` every few
    seconds, well within ``lease_seconds``, and :meth:`release` on shutdown.

    ``monotonic`` measures everything this replica decides by (as in :class:`LeaderElector`).
    """

    def __init__(
        self,
        api_client: client.ApiClient,
        namespace: str,
        identity: str,
        *,
        shards: int = DEFAULT_SHARDS,
        lease_seconds: int = 15,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        request_timeout: float = 5.0,
    ) -> None:
        if shards < 1:
            raise ValueError("the shard count must be at least 1")
        if not identity:
            raise ValueError("a replica's identity must not be empty")

        def elector(name: str) -> LeaderElector:
            return LeaderElector(
                api_client, namespace, name, identity, lease_seconds=lease_seconds, clock=clock,
                monotonic=monotonic, request_timeout=request_timeout,
            )  # fmt: skip

        self.api = client.CoordinationV1Api(api_client)
        self.namespace, self.identity, self.count = namespace, identity, shards
        self.monotonic, self.request_timeout = monotonic, request_timeout
        self.membership = elector(f"{MEMBER_PREFIX}{identity}")
        self.electors = [elector(shard_lease_name(shard)) for shard in range(shards)]
        self.write_budget = self.electors[0].write_budget
        #: How often a busy replica looks at the members again mid-pass (see :meth:`ensure`).
        self.renew_every = lease_seconds / 3
        self._renewed_at: float | None = None
        #: Each other member's Lease as last read, and when (our clock) it was first seen so.
        self._seen: dict[str, tuple[LeaseRecord, float]] = {}
        self.members: list[str] = []

    def renew(self) -> list[int]:
        """Renew this replica's membership, take or keep the shards that prefer it, hand back the
        others it holds; return the shards surely held now."""
        self._renewed_at = self.monotonic()
        if self.membership.try_acquire_or_renew():
            self.members = self._live_members(self.monotonic())
        else:  # not even a member: hold nothing (an unreachable API keeps what its last renewal holds)
            self.members = []
        for shard, elector in enumerate(self.electors):
            if preferred_replica(shard, self.members) == self.identity:
                elector.try_acquire_or_renew()
            elif elector.leading:
                log.info("%s hands %s back", self.identity, shard_lease_name(shard))
                elector.release()
        return self.held()

    def held(self) -> list[int]:
        return [shard for shard, elector in enumerate(self.electors) if elector.holds()]

    def owns(self, key: str) -> bool:
        """Whether the shard of rollout ``key`` is surely this replica's now."""
        return self.electors[shard_of(key, self.count)].holds()

    def ensure(self, key: str, budget: float) -> bool:
        """Whether the shard of ``key`` stays ours for ``budget`` more seconds (renewing once if need be).

        A replica busy with a long pass renews nothing else in between: here, every Lease it holds
        (its membership too) that has less than half its term left is renewed first, so that its
        other shards do not lapse to another replica while it works through one; and every
        ``renew_every`` seconds it renews in full, so that shards another replica (one that joined
        meanwhile) should hold are handed over mid-pass, not after a pass of many minutes."""
        if self._renewed_at is not None and self.monotonic() - self._renewed_at >= self.renew_every:
            self.renew()
        else:
            self._keep_up()
        return self.electors[shard_of(key, self.count)].ensure(budget)

    def _keep_up(self) -> None:
        for elector in [self.membership, *self.electors]:
            if elector.leading and elector.remaining() < elector.lease_seconds / 2:
                elector.try_acquire_or_renew()

    def fence(self, cluster: Cluster) -> Cluster:
        """``cluster``, with each write refused unless the Lease of its rollout's shard stays ours."""
        return cast(Cluster, cast(object, ShardFenced(cluster, self.ensure, self.write_budget)))

    def release(self) -> None:
        """Hand every shard back and leave (best effort): the others take them over at once."""
        for elector in self.electors:
            elector.release()
        self.membership.release()

    def _live_members(self, now: float) -> list[str]:
        """This replica and every other whose membership Lease is held and has not expired."""
        try:
            leases = self.api.list_namespaced_lease(self.namespace, _request_timeout=self.request_timeout).items
        except (client.ApiException, urllib3.exceptions.HTTPError, OSError) as exc:
            log.warning("listing the members' Leases in %s: %s", self.namespace, exc)
            return self.members or [self.identity]  # the last view: nobody is taken for dead on an error
        seen: dict[str, tuple[LeaseRecord, float]] = {}
        shards = {elector.name: elector for elector in self.electors}
        for lease in leases or []:
            name = str((lease.metadata and lease.metadata.name) or "")
            if name in shards:
                shards[name].saw(lease, now)
            if not name.startswith(MEMBER_PREFIX):
                continue
            record = record_of(lease)
            before = self._seen.get(name)
            seen[name] = before if before is not None and before[0] == record else (record, now)
        self._seen = seen
        alive = {self.identity}
        for record, observed_at in seen.values():
            if record.holder and not expired(observed_at, record.duration, now):
                alive.add(record.holder)
        return sorted(alive)


class ShardFenced(Fenced):
    """:class:`Fenced`, with each write checked against the Lease of the shard of its rollout."""

    def __init__(self, inner: Cluster, ensure: Callable[[str, float], bool], budget: float) -> None:
        super().__init__(inner, lambda _budget: False, budget)
        self.ensure_for = ensure

    def allowed(self, budget: float, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> bool:
        key = key_of_call(args, kwargs)
        return key is not None and self.ensure_for(key, budget)  # a write about no known rollout: refused


__all__ = [
    "DEFAULT_SHARDS",
    "LeaseLostError",
    "ShardFenced",
    "ShardSet",
    "key_of_call",
    "preferred_replica",
    "shard_of",
]
