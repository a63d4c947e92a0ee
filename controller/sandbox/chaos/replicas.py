"""Replicas of the controller on one Lease, in the soak's virtual time: stalls, deaths and take-overs.

:class:`ReplicaSet` runs ``count`` controllers, each a real :class:`~controller.manager.loop.Manager`
with its own API client (authenticated as its own user, named as its Lease identity, so the API
server knows who wrote), its own :class:`~controller.sandbox.chaos.crashes.CrashingElector` on the
virtual clock and its own crashing Kubernetes edge; every pass each ticks (the leader also
watches). Seeded events on top of the soak's faults:

- a replica dies (:class:`~controller.sandbox.chaos.crashes.ControllerCrash`, in its edge or
  around its Lease calls) and restarts at once: as the same identity (its container restarted) or,
  half the time, as a new one (its pod was replaced), knowing only what the API says;
- a replica stalls (a long GC pause, a frozen node) for :attr:`ReplicaSet.stall_passes` passes,
  longer than its lease, so another takes over: between passes, or in the middle of one (after a
  call to the cluster returned, e.g. between its status write and its route write, or between
  reading the Lease and writing it). While it stalls the others tick and the clock moves; then it
  goes on with its stale belief, and the fence (or the Lease's resourceVersion) must stop it.

The virtual clock moves only between passes, and only once no request is in flight (:meth:`settle`):
a request takes no virtual time, so a late write is never judged as landing a whole tick after it
was sent. The :class:`~controller.sandbox.chaos.leases.LeaseChecker` (:attr:`ReplicaSet.checker`)
judges every write.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

from controller.edges.kube.client import retry_policy
from controller.engine.ports import Cluster
from controller.manager.loop import Elector, Manager
from controller.sandbox.chaos.crashes import ControllerCrash, CrashingCluster, CrashingElector
from controller.sandbox.chaos.invariants import Key
from controller.sandbox.chaos.leases import LeaseChecker
from controller.sandbox.localapi import LocalApiServer
from controller.sandbox.localapi.calls import Injection, RequestFilter, WriteObserver

LEASE = "canarist-controller"
#: Where a stall matters most: the status written, the routes not yet (the stale replica must not
#: write them once another leads); stalls come there this many times as often as elsewhere.
STATUS_WRITTEN = "after patch_rollout_status"
STATUS_PAUSE_WEIGHT = 10


class Clock(Protocol):
    now: float

    def __call__(self) -> float: ...


def both(*observers: WriteObserver) -> WriteObserver:
    """One write observer that hands each write to every one of ``observers``, in order."""

    def observe(version: int, event: str, key: Key, obj: dict[str, Any]) -> None:
        for observer in observers:
            observer(version, event, key, obj)

    return observe


@dataclass
class InFlight:
    """A request filter in front of ``inner`` that counts the requests the server began to serve;
    with the server's log (every request is logged once served or given up), what is in flight."""

    inner: RequestFilter | None
    started: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, method: str, path: str, query: dict[str, str]) -> Injection | None:
        with self.lock:
            self.started += 1
        return self.inner(method, path, query) if self.inner is not None else None


class PausingCluster:
    """A :class:`~controller.engine.ports.Cluster` that calls ``pause`` after each of its calls
    returned: a replica may stall there, before its next call is fenced."""

    def __init__(self, inner: Cluster, pause: Callable[[str], None]) -> None:
        self.inner, self.pause = inner, pause

    def __getattr__(self, name: str) -> Any:
        found = getattr(self.inner, name)
        if name.startswith("_") or not callable(found):
            return found

        def paused(*args: Any, **kwargs: Any) -> Any:
            result = found(*args, **kwargs)
            self.pause(f"after {name}")
            return result

        return paused


@dataclass
class Replica:
    index: int
    generation: int = 0
    manager: Manager | None = None
    #: The pass it comes back at from a stall between passes.
    stalled_until: int = 0

    @property
    def identity(self) -> str:
        return f"replica-{self.index}-{self.generation}"


@dataclass
class ReplicaSet:
    """``count`` replicas on one Lease (see the module docstring); ``make`` is the soak's Manager
    for a cluster and an elector."""

    api: LocalApiServer
    clock: Clock
    make: Callable[[Cluster, Elector], Manager]
    #: Where the Lease is.
    namespace: str = "default"
    count: int = 2
    seed: int = 0
    seconds_per_pass: float = 30.0
    crash_rate: float = 0.01
    client_timeout: float = 0.5
    lease_seconds: int = 60
    #: Probability per pass that a replica stalls between passes; per call, in the middle of one.
    stall_rate: float = 0.03
    pause_rate: float = 0.003
    #: More settings of each replica's Kubernetes edge (the workload's istiod clock).
    edge_settings: dict[str, Any] = field(default_factory=dict)
    passes: int = 0
    restarts: int = 0
    stalls: int = 0
    replicas: list[Replica] = field(default_factory=list)
    checker: LeaseChecker = field(init=False)
    in_flight: InFlight = field(init=False)
    _rng: random.Random = field(init=False)
    _crash_rng: random.Random = field(init=False)
    _stalling: bool = False

    def __post_init__(self) -> None:
        self._rng, self._crash_rng = random.Random(f"stall-{self.seed}"), random.Random(f"crash-{self.seed}")
        self.checker = LeaseChecker(lambda: self.api.writer, self.clock, lease_name=LEASE)
        self.in_flight = InFlight(self.api.request_filter)
        self.api.request_filter = self.in_flight
        for index in range(self.count):
            self.replicas.append(self._started(Replica(index)))

    @property
    def stall_passes(self) -> int:
        """Passes a stall lasts: enough for its lease to expire and another replica to take over."""
        return math.ceil(self.lease_seconds / self.seconds_per_pass) + 1

    def tick(self) -> None:
        """One pass: maybe a stall begins; every replica not stalled ticks."""
        self.passes += 1
        awake = [r for r in self.replicas if r.stalled_until <= self.passes]
        if len(awake) == len(self.replicas) and self._rng.random() < self.stall_rate:
            stalled = next((r for r in awake if r.manager and r.manager.leader), self._rng.choice(awake))
            stalled.stalled_until, self.stalls = self.passes + self.stall_passes, self.stalls + 1
        for replica in self.replicas:
            if replica.stalled_until <= self.passes:
                self._step(replica, lambda manager: manager.tick())
        self.settle()

    def watch(self, seconds: float) -> None:
        """The leader watches for ``seconds`` (real ones); followers return at once."""
        for replica in self.replicas:
            if replica.stalled_until <= self.passes:
                self._step(replica, lambda manager: manager.watch(seconds))
        self.settle()

    def settle(self, seconds: float = 5.0) -> None:
        """Wait until no request is in flight (at most ``seconds``), so the clock may move."""
        deadline = time.monotonic() + seconds
        while self.in_flight.started > len(self.api.log) and time.monotonic() < deadline:
            time.sleep(0.005)

    def _step(self, replica: Replica, act: Callable[[Manager], object]) -> None:
        try:
            assert replica.manager is not None
            act(replica.manager)
        except ControllerCrash:
            self.restarts += 1
            if self._rng.random() < 0.5:  # a new pod, a new identity; else its container restarted
                replica.generation += 1
            self._started(replica)

    def _started(self, replica: Replica) -> Replica:
        """``replica`` as a fresh process: a new client, elector and manager, nothing in memory."""
        identity = replica.identity
        self.api.tokens[f"token-{identity}"] = identity
        self.checker.replicas.add(identity)
        client = self.api.make_client(retries=retry_policy())
        client.set_default_header("Authorization", f"Bearer token-{identity}")
        pause = self._pause_of(replica)
        elector = CrashingElector(
            client,
            self.namespace,
            LEASE,
            identity,
            lease_seconds=self.lease_seconds,
            clock=self.clock,
            monotonic=self.clock,
            request_timeout=self.client_timeout,
            rng=self._crash_rng,
            crash_rate=self.crash_rate,
            pause=pause,
        )
        edge = CrashingCluster(
            client,
            rng=self._crash_rng,
            crash_rate=self.crash_rate,
            request_timeout=self.client_timeout,
            **self.edge_settings,
        )
        manager = self.make(cast(Cluster, cast(object, PausingCluster(edge, pause))), elector)
        manager.act_budget = self.lease_seconds / 3  # as `canarist run` sets it
        replica.manager = manager
        return replica

    def _pause_of(self, replica: Replica) -> Callable[[str], None]:
        """The stall in the middle of a pass for ``replica``: the others tick ``stall_passes`` passes."""

        def pause(where: str) -> None:
            rate = self.pause_rate * (STATUS_PAUSE_WEIGHT if where == STATUS_WRITTEN else 1)
            if self._stalling or self._rng.random() >= rate:
                return
            self._stalling, self.stalls = True, self.stalls + 1
            try:
                for _ in range(self.stall_passes):
                    self.settle()
                    self.clock.now += self.seconds_per_pass
                    for other in self.replicas:
                        if other is not replica and other.stalled_until <= self.passes:
                            self._step(other, lambda manager: manager.tick())
            finally:
                self._stalling = False

        return pause
