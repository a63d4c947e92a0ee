"""A real ``kill -9``: two ``canarist run`` processes on one Lease, killed at the moments that matter.

The world of test_e2e.py (the local API stand-in, a real Prometheus scraping live traffic whose
split follows the stored VirtualService) and the real executable, started twice with
``--leader-elect`` (a 10 s lease, the shortest ``canarist run`` takes). Each replica authenticates
with its own token, so the API server knows which one wrote. The InvariantChecker and the
LeaseChecker of controller/sandbox/chaos judge every write the API stores while a seeded schedule
sends SIGKILL to a replica:

1. right after its status write recorded a new weight, before it could write the routes (it
   restarts at once, as the same identity: it must write those routes, from the status);
2. right after its Lease renewal was stored, before it heard the answer (it restarts as a new
   pod: a new identity, so the replicas have to wait out the lease before one takes it over);
3. while it watches rollouts, after a random delay;
4. the follower, at a random moment.

At the end the good canary has Succeeded with the expected history and weights, no invariant was
broken, and the Lease never had two holders at once. A second run with an erroring canary kills the
leader right after it recorded the rollback, before its routes went back to stable; it comes back
as a new pod, and whichever replica takes the Lease over must finish the rollback.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import tests.test_e2e
from controller.edges.kube import KubeCluster
from controller.sandbox.chaos.invariants import ROLLOUTS, InvariantChecker, Key, canary_weight
from controller.sandbox.chaos.leases import LEASES, LeaseChecker
from controller.sandbox.chaos.replicas import both
from controller.sandbox.localapi import LocalApiServer
from tests.prometheus_fixture import PrometheusServer
from tests.test_e2e import NAME, NS, check_writes, live_mesh, policy

CANARIST = Path(sys.executable).parent / "canarist"
SEED = 13


@dataclass
class Replica:
    """One ``canarist run`` process and how it authenticates; ``generation`` counts new pods."""

    name: str
    generation: int = 0
    process: subprocess.Popen[bytes] | None = None
    kills: list[str] = field(default_factory=list)

    @property
    def identity(self) -> str:
        return f"{self.name}-{self.generation}"


@dataclass
class Fleet:
    """The API server, Prometheus and the replicas; the write observer that kills on cue."""

    api: LocalApiServer
    prometheus: PrometheusServer
    tmp: Path
    replicas: list[Replica]
    lease: LeaseChecker
    invariants: InvariantChecker = field(default_factory=InvariantChecker)
    #: Armed: the next write it accepts kills its writer (in the server, before the answer leaves).
    trigger: Callable[[Key, dict[str, Any], str], bool] | None = None
    killed: threading.Event = field(default_factory=threading.Event)

    def start(self, replica: Replica) -> None:
        token = f"token-{replica.identity}"
        self.api.tokens[token] = replica.identity
        self.lease.replicas.add(replica.identity)
        log = (self.tmp / f"{replica.identity}.log").open("ab")
        replica.process = subprocess.Popen(
            [str(CANARIST), "run", "--kubeconfig", str(self.kubeconfig(token)), "--prometheus", self.prometheus.url,
             "-n", NS, "--leader-elect", "--lease-namespace", NS, "--lease-seconds", "10",
             "--identity", replica.identity, "--metrics-port", "0"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip

    def kubeconfig(self, token: str) -> Path:
        return self.api.write_kubeconfig(self.tmp / f"kubeconfig-{token}", token=token, namespace=NS)

    def by_identity(self, identity: str | None) -> Replica | None:
        return next((r for r in self.replicas if r.identity == identity), None)

    def kill(self, replica: Replica, why: str) -> None:
        assert replica.process is not None
        os.kill(replica.process.pid, signal.SIGKILL)
        replica.process.wait()
        replica.kills.append(why)

    def observe(self, version: int, event: str, key: Key, obj: dict[str, Any]) -> None:
        """The write observer that pulls the trigger (with the store's lock held, the answer unsent)."""
        writer = self.api.writer
        replica = self.by_identity(writer.user if writer else None)
        if self.trigger is None or replica is None or not self.trigger(key, obj, replica.identity):
            return
        self.trigger = None
        assert replica.process is not None
        os.kill(replica.process.pid, signal.SIGKILL)  # at once: its next request must never leave
        replica.kills.append(f"write {version}")
        self.killed.set()

    def arm(self, trigger: Callable[[Key, dict[str, Any], str], bool]) -> None:
        """Kill the writer of the next write ``trigger`` accepts."""
        self.killed.clear()
        self.trigger = trigger

    def fired(self, seconds: float) -> Replica:
        """Wait for the armed kill; whom it killed."""
        assert self.killed.wait(seconds), "the moment to kill never came"
        victim = next(r for r in self.replicas if r.kills and r.kills[-1].startswith("write "))
        assert victim.process is not None
        victim.process.wait()
        return victim

    def holder(self) -> Replica | None:
        return self.by_identity(self.lease.term.holder if self.lease.term else None)

    def status(self) -> dict[str, Any]:
        return dict((self.api.get("canarist.io", "modelrollouts", NS, NAME) or {}).get("status") or {})

    def watching(self, replica: Replica) -> bool:
        """Whether the last request ``replica`` made is a watch (it is in one now)."""
        mine = [r for r in self.api.log[-50:] if r.user == replica.identity]
        return bool(mine) and mine[-1].query.get("watch") in ("true", "1")


def a_first_weight(key: Key, obj: dict[str, Any], identity: str) -> bool:
    """The status write that records the first canary weight (its routes are not written yet)."""
    weight = (obj.get("status") or {}).get("canaryWeight")
    return key[:2] == ROLLOUTS and isinstance(weight, int) and weight > 0


def a_renewal(key: Key, obj: dict[str, Any], identity: str) -> bool:
    """The holder's Lease renewal."""
    return key[:2] == LEASES and (obj.get("spec") or {}).get("holderIdentity") == identity


def wait_for(what: str, check: Callable[[], bool], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"{what} did not happen in {seconds}s"
        time.sleep(0.1)


@pytest.fixture
def fleet_of(
    prometheus_factory: Callable[..., PrometheusServer], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[[float], Fleet]]:
    """Fleets whose canary answers this share of requests with errors; their replicas end with the test."""
    monkeypatch.setattr(tests.test_e2e, "RPS", 1000)  # proofs come sooner
    fleets: list[Fleet] = []
    with ExitStack() as stack:

        def make(canary_error_rate: float) -> Fleet:
            api, _, prometheus = stack.enter_context(live_mesh(prometheus_factory, canary_error_rate))
            lease = LeaseChecker(lambda: api.writer, time.time)
            made = Fleet(api, prometheus, tmp_path, [Replica("replica-a"), Replica("replica-b")], lease)
            api.write_observer = both(made.invariants, lease, made.observe)
            fleets.append(made)
            return made

        try:
            yield make
        finally:
            running = [r.process for made in fleets for r in made.replicas if r.process and r.process.poll() is None]
            for process in running:
                process.send_signal(signal.SIGTERM)  # it hands the Lease back
            for process in running:
                process.wait(timeout=15)
            for log in sorted(tmp_path.glob("replica-*.log")):
                print(f"--- {log.name}\n{log.read_text()[-3000:]}")


def test_two_real_replicas_killed_at_random_and_chosen_moments_keep_every_invariant(
    fleet_of: Callable[[float], Fleet],
) -> None:
    began, fleet = time.monotonic(), fleet_of(0.005)
    rng = random.Random(SEED)
    a, b = fleet.replicas
    KubeCluster(fleet.api.make_client()).create_or_update_rollout(policy(steps=[20, 50]))  # as a person applies it

    # 1. between the status write and the route write: back at once, as the same pod
    fleet.arm(a_first_weight)
    fleet.start(a)
    fleet.start(b)
    victim = fleet.fired(30)
    assert fleet.status()["canaryWeight"] == 20
    assert fleet.api.get("networking.istio.io", "virtualservices", NS, NAME) is None  # no routes yet
    fleet.start(victim)
    wait_for("the routes", lambda: fleet_weight(fleet) == 20, 20)

    # 2. mid-Lease renewal: the holder dies before it hears the answer; a new pod replaces it
    fleet.arm(a_renewal)
    victim = fleet.fired(20)
    time.sleep(rng.uniform(0, 2))
    dead = victim.identity
    victim.generation += 1
    fleet.start(victim)
    wait_for("the take-over", lambda: fleet.lease.term is not None and fleet.lease.term.holder not in ("", dead), 30)

    # 3. the leader, mid-watch after a random delay; 4. the follower at a random moment
    leader = fleet.holder()
    assert leader is not None
    wait_for("a watch", lambda: fleet.watching(leader), 20)
    time.sleep(rng.uniform(0, 1))
    fleet.kill(leader, "mid-watch")
    fleet.start(leader)
    follower = next(r for r in fleet.replicas if r is not leader)
    time.sleep(rng.uniform(0, 3))
    fleet.kill(follower, "at random")
    fleet.start(follower)

    wait_for("the end", lambda: fleet.status().get("phase") in ("Succeeded", "Failed"), 60)
    status = fleet.status()
    assert status["phase"] == "Succeeded", status["message"]
    assert [t["action"] for t in status["history"]] == ["Start", "Advance", "Promote", "Complete"]
    weights = check_writes(fleet.api)
    assert sorted(set(weights)) == [20, 50, 100] and weights == sorted(weights), weights
    assert [str(v) for v in fleet.invariants.violations + fleet.lease.violations] == []
    assert fleet.lease.transitions >= 1 and fleet.lease.writes > 0
    assert sum(len(r.kills) for r in fleet.replicas) == 4
    assert time.monotonic() - began < 90


def a_rollback(key: Key, obj: dict[str, Any], identity: str) -> bool:
    """The status write that records the rollback (its routes still give the canary weight)."""
    history = (obj.get("status") or {}).get("history") or []
    return key[:2] == ROLLOUTS and bool(history) and history[-1].get("action") == "Rollback"


def test_a_replica_killed_between_the_rollback_and_its_routes_is_finished_by_the_next_leader(
    fleet_of: Callable[[float], Fleet],
) -> None:
    fleet = fleet_of(0.08)  # 8 % errors: over the 2 % SLO
    a, b = fleet.replicas
    KubeCluster(fleet.api.make_client()).create_or_update_rollout(policy(steps=[20, 50]))
    fleet.arm(a_rollback)
    fleet.start(a)
    fleet.start(b)
    victim = fleet.fired(60)
    assert fleet.status()["canaryWeight"] == 0 and fleet_weight(fleet) > 0  # recorded, not yet routed
    dead = victim.identity
    victim.generation += 1  # a new pod: whichever replica takes over must finish the rollback
    fleet.start(victim)
    wait_for("the rollback's routes", lambda: fleet_weight(fleet) == 0, 40)
    wait_for("the end", lambda: fleet.status().get("phase") == "Failed", 20)
    status = fleet.status()
    assert [t["action"] for t in status["history"]][-2:] == ["Rollback", "Complete"]
    assert check_writes(fleet.api) in ([20, 0], [20, 50, 0])
    assert [str(v) for v in fleet.invariants.violations + fleet.lease.violations] == []
    assert fleet.lease.transitions == 1 and fleet.lease.term is not None and fleet.lease.term.holder != dead


def fleet_weight(fleet: Fleet) -> int:
    """The canary weight the stored VirtualService gives (the traffic follows it)."""
    service = fleet.api.get("networking.istio.io", "virtualservices", NS, NAME)
    rollout = fleet.api.get(*ROLLOUTS, NS, NAME)
    return 0 if service is None or rollout is None else canary_weight(rollout, service)
