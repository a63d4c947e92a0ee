"""Replicas on one Lease in the chaos soak (controller/sandbox/chaos: replicas, leases, crashes).

(a) The Lease checker is not vacuous: a take-over before the holder's term ended, and a write by a
    replica the stored Lease does not name (or whose term is over), are caught; others are not.
(b) The local API tells the observer who wrote: the user its token authenticates.
(c) A short seeded soak with two replicas that stall, die (also mid-renewal) and take over: every
    invariant kept; with the fence taken away, the same soak catches the stale leader's writes, and
    with an elector that takes over without waiting out the lease, two leaders.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import controller.edges.kube.leader
import controller.sandbox.chaos.soak
from controller.edges.kube import KubeCluster
from controller.edges.kube.leader import LeaderElector
from controller.engine.ports import Cluster
from controller.sandbox.chaos.invariants import Key
from controller.sandbox.chaos.leases import LeaseChecker
from controller.sandbox.chaos.replicas import STATUS_WRITTEN, Replica, ReplicaSet
from controller.sandbox.chaos.soak import SoakConfig, run_soak
from controller.sandbox.chaos.truth import NAMESPACE, policy
from controller.sandbox.localapi import local_api_server
from controller.sandbox.localapi.calls import Caller

LEASE_KEY: Key = ("coordination.k8s.io", "leases", NAMESPACE, "canarist-controller")
ROLLOUT_KEY: Key = ("canarist.io", "modelrollouts", NAMESPACE, "model-000")
VS_KEY: Key = ("networking.istio.io", "virtualservices", NAMESPACE, "model-000")
EVENT_KEY: Key = ("", "events", NAMESPACE, "model-000.1")
T0 = 1_800_000_000.0


def lease(holder: str, renewed: float, seconds: int = 60) -> dict[str, Any]:
    renew = dt.datetime.fromtimestamp(renewed, dt.UTC).isoformat()
    return {"spec": {"holderIdentity": holder, "leaseDurationSeconds": seconds, "renewTime": renew}}


@dataclass
class Scene:
    """Writes by users at times, through a LeaseChecker for replicas ``a`` and ``b``."""

    now: float = T0
    user: str | None = None
    checker: LeaseChecker = field(init=False)

    def __post_init__(self) -> None:
        self.checker = LeaseChecker(
            lambda: Caller(self.user) if self.user else None, lambda: self.now, replicas={"a", "b"}
        )

    def write(self, user: str | None, at: float, key: Key, obj: dict[str, Any]) -> list[str]:
        self.user, self.now = user, at
        before = len(self.checker.violations)
        self.checker(self.checker.writes + 100, "MODIFIED", key, obj)
        return [v.invariant for v in self.checker.violations[before:]]


def test_a_clean_hand_over_passes_and_counts() -> None:
    scene = Scene()
    assert scene.write("a", T0, LEASE_KEY, lease("a", T0)) == []
    assert scene.write("a", T0 + 1, ROLLOUT_KEY, policy(0)) == []
    assert scene.write("a", T0 + 30, LEASE_KEY, lease("a", T0 + 30)) == []
    assert scene.write("a", T0 + 89, VS_KEY, {}) == []  # the term ends at T0 + 90
    assert scene.write("b", T0 + 90, LEASE_KEY, lease("b", T0 + 90)) == []
    assert scene.write("b", T0 + 91, VS_KEY, {}) == []
    assert scene.write(None, T0 + 92, ROLLOUT_KEY, policy(0)) == []  # a person: not judged
    assert scene.write("a", T0 + 93, EVENT_KEY, {}) == []  # an Event: anyone may
    assert scene.checker.transitions == 1 and scene.checker.violations == []


@given(st.floats(0, 120))
def test_a_take_over_before_the_term_ended_is_two_leaders(after: float) -> None:
    scene = Scene()
    scene.write("a", T0, LEASE_KEY, lease("a", T0))
    found = scene.write("b", T0 + after, LEASE_KEY, lease("b", T0 + after))
    assert found == (["two-leaders"] if after < 60 - 0.01 else [])


def test_a_released_lease_may_be_taken_at_once() -> None:
    scene = Scene()
    scene.write("a", T0, LEASE_KEY, lease("a", T0))
    scene.write("a", T0 + 1, LEASE_KEY, lease("", T0 + 1, seconds=1))
    assert scene.write("b", T0 + 1, LEASE_KEY, lease("b", T0 + 1)) == []


@pytest.mark.parametrize("key", [ROLLOUT_KEY, VS_KEY], ids=["rollout", "route"])
def test_a_write_by_a_replica_that_does_not_hold_the_lease_is_caught(key: Key) -> None:
    scene = Scene()
    assert scene.write("a", T0, key, {}) == ["write-without-lease"]  # no Lease at all yet
    scene.write("a", T0, LEASE_KEY, lease("a", T0))
    assert scene.write("b", T0 + 1, key, {}) == ["write-without-lease"]
    assert scene.write("a", T0 + 61, key, {}) == ["write-without-lease"]  # its term is over
    violation = str(scene.checker.violations[-1])
    assert violation.startswith("write-without-lease: ") and "written by a 1.000s after its term ended" in violation


# --- (b) who wrote ------------------------------------------------------------------------------


def test_the_observer_learns_who_wrote_from_the_token() -> None:
    seen: list[tuple[str, str | None]] = []
    with local_api_server() as api:
        api.tokens = {"token-a": "replica-a"}
        api.write_observer = lambda v, e, key, o: seen.append((key[3], api.writer.user if api.writer else None))
        api.seed(policy(0))
        client = api.make_client()
        client.set_default_header("Authorization", "Bearer token-a")
        cluster: Cluster = KubeCluster(client, propagation_delay=0.0)
        cluster.annotate_rollout(NAMESPACE, "model-000", {"touched": "yes"})
        KubeCluster(api.make_client()).annotate_rollout(NAMESPACE, "model-000", {"touched": "again"})
        assert api.writer is None
    assert seen == [("model-000", None), ("model-000", "replica-a"), ("model-000", "system:anonymous")]


# --- (c) the soak -------------------------------------------------------------------------------

REPLICAS = SoakConfig(rollouts=6, seed=3, fault_rate=0.1, crash_rate=0.02, watch_every=2, replicas=2)


def test_two_replicas_that_stall_die_and_take_over_keep_every_invariant(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.CRITICAL, logger="canarist")
    began = time.monotonic()
    result = run_soak(REPLICAS)
    assert result.violations == []
    assert result.wrong_outcomes == [] and result.unfinished == [] and result.not_restored == []
    assert result.lease_transitions > 0 and result.stalls > 0 and result.restarts > 0
    assert time.monotonic() - began < 60


@dataclass
class Stalling(ReplicaSet):
    """Stalls between the status write and the route write, often."""

    pause_rate: float = 0.05

    def _pause_of(self, replica: Replica) -> Callable[[str], None]:
        pause = super()._pause_of(replica)
        return lambda where: pause(where) if where == STATUS_WRITTEN else None


@pytest.mark.parametrize("fenced", [True, False], ids=["fenced", "unfenced"])
def test_a_leader_stalled_between_its_status_and_its_routes_never_writes_them_once_another_leads(
    fenced: bool, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fence is what keeps it: taken away, the same soak catches the stale leader's route writes."""
    caplog.set_level(logging.CRITICAL, logger="canarist")
    monkeypatch.setattr(controller.sandbox.chaos.soak, "ReplicaSet", Stalling)
    if not fenced:
        monkeypatch.setattr(LeaderElector, "fence", lambda self, cluster: cluster)
    result = run_soak(REPLICAS)
    stale = [v for v in result.violations if v.startswith("write-without-lease: virtualservices")]
    assert result.stalls > 3 and result.lease_transitions > 3
    if fenced:
        assert result.violations == [] and result.wrong_outcomes == [] and result.unfinished == []
    else:
        assert stale, result.violations


def test_an_elector_that_does_not_wait_out_the_lease_is_caught_as_two_leaders(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.CRITICAL, logger="canarist")
    monkeypatch.setattr(controller.edges.kube.leader, "expired", lambda observed_at, duration, now: True)
    result = run_soak(replace(REPLICAS, rollouts=3))
    assert any(v.startswith("two-leaders: leases chaos/canarist-controller") for v in result.violations)
