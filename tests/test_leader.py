"""Leader election: the pure rules, then two electors on one Lease of the fake API server."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes.client import ApiException

from controller.kube import retry_policy
from controller.leader import (
    LeaderElector,
    LeaseRecord,
    Verdict,
    decide,
    expired,
    released,
    renew_deadline_passed,
    successor,
)
from controller.localapi import LocalApiServer, local_api_server

NS, LEASE = "canarist-system", "canarist-controller"


# --- the rules, without I/O -------------------------------------------------------------------


def test_expiry_is_measured_from_our_own_observation() -> None:
    assert not expired(observed_at=100.0, duration=15, now=114.9)
    assert expired(observed_at=100.0, duration=15, now=115.0)


@pytest.mark.parametrize(
    ("record", "now", "verdict"),
    [
        (None, 0.0, Verdict.CREATE),
        (LeaseRecord("me", 15, 0.0, 0.0), 1.0, Verdict.RENEW),
        (LeaseRecord("me", 15, 0.0, 0.0), 1000.0, Verdict.RENEW),
        (LeaseRecord("", 1, 0.0, 0.0), 0.5, Verdict.TAKE_OVER),
        (LeaseRecord("other", 15, 0.0, 0.0), 14.0, Verdict.FOLLOW),
        (LeaseRecord("other", 15, 0.0, 0.0), 15.0, Verdict.TAKE_OVER),
    ],
)
def test_decide(record: LeaseRecord | None, now: float, verdict: Verdict) -> None:
    assert decide(record, "me", now, observed_at=0.0) is verdict


def test_the_holders_timestamps_do_not_decide_expiry() -> None:
    """A renewTime far in the past (a skewed clock) does not let a fresh observer take over."""
    ancient = LeaseRecord("other", 15, 0.0, 0.0)
    assert decide(ancient, "me", now=10_000.0, observed_at=9_999.0) is Verdict.FOLLOW


def test_successor_counts_transitions_and_keeps_acquire_time_on_renewal() -> None:
    created = successor(None, "a", 10.0, 15)
    assert created == LeaseRecord("a", 15, 10.0, 10.0, 0)
    renewed = successor(created, "a", 20.0, 15)
    assert renewed == LeaseRecord("a", 15, 10.0, 20.0, 0)
    taken = successor(renewed, "b", 40.0, 15)
    assert taken == LeaseRecord("b", 15, 40.0, 40.0, 1)
    free = released(taken, 50.0)
    assert free.holder == "" and free.transitions == 1
    assert successor(free, "a", 51.0, 15).transitions == 2


def test_renew_deadline() -> None:
    assert not renew_deadline_passed(100.0, 15, 109.9)
    assert renew_deadline_passed(100.0, 15, 110.0)
    assert renew_deadline_passed(None, 15, 0.0)


# --- two replicas on one Lease ----------------------------------------------------------------


@pytest.fixture
def server() -> Iterator[LocalApiServer]:
    with local_api_server() as fake:
        yield fake


def elector(server: LocalApiServer, identity: str, clock: Any = lambda: 0.0) -> LeaderElector:
    return LeaderElector(server.make_client(retries=retry_policy()), NS, LEASE, identity, lease_seconds=15, clock=clock)


def lease(server: LocalApiServer) -> dict[str, Any]:
    found = server.get("coordination.k8s.io", "leases", NS, LEASE)
    assert found is not None
    return found["spec"]


def test_exactly_one_leads_and_the_other_takes_over_only_after_expiry(server) -> None:
    a, b = elector(server, "a"), elector(server, "b")
    assert a.try_acquire_or_renew(0.0) is True
    assert b.try_acquire_or_renew(0.0) is False
    spec = lease(server)
    assert spec["holderIdentity"] == "a" and spec["leaseDurationSeconds"] == 15
    assert spec["leaseTransitions"] == 0 and spec["acquireTime"] == spec["renewTime"]

    for now in (2.0, 4.0, 6.0):  # a renews: b keeps following
        assert (a.try_acquire_or_renew(now), b.try_acquire_or_renew(now)) == (True, False)
    renewed = lease(server)
    assert renewed["renewTime"] != renewed["acquireTime"] and renewed["holderIdentity"] == "a"

    # a dies after its renewal at t=6; b saw that renewal at t=6 and waits a full lease duration
    for now in (8.0, 14.0, 20.9):
        assert b.try_acquire_or_renew(now) is False
    assert b.try_acquire_or_renew(21.0) is True
    assert lease(server)["holderIdentity"] == "b" and lease(server)["leaseTransitions"] == 1
    assert a.try_acquire_or_renew(22.0) is False  # a comes back: it follows
    assert b.try_acquire_or_renew(23.0) is True


def test_release_hands_over_at_once(server) -> None:
    a, b = elector(server, "a"), elector(server, "b")
    assert a.try_acquire_or_renew(0.0) and not b.try_acquire_or_renew(1.0)
    a.release()
    assert a.leading is False and lease(server)["holderIdentity"] == ""
    assert b.try_acquire_or_renew(2.0) is True
    assert lease(server)["leaseTransitions"] == 1
    a.release()  # not leading: touches nothing
    assert lease(server)["holderIdentity"] == "b"


def test_a_race_to_create_the_lease_has_one_winner(server) -> None:
    a, b = elector(server, "a"), elector(server, "b")
    server.fail("/leases", None, method="POST", delay=0.3)  # the first create to arrive waits
    start = threading.Barrier(2)
    results: dict[str, bool] = {}

    def run(who: LeaderElector) -> None:
        start.wait()
        results[who.identity] = who.try_acquire_or_renew(0.0)

    threads = [threading.Thread(target=run, args=(e,)) for e in (a, b)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results.values()) == [False, True]
    assert lease(server)["holderIdentity"] == next(k for k, v in results.items() if v)
    assert [r.code for r in server.writes] in ([201, 409], [409, 201])


def test_a_stale_takeover_loses_to_a_renewal(server) -> None:
    """b read the expired lease, a renewed meanwhile: b's write carries a stale resourceVersion."""
    a, b = elector(server, "a"), elector(server, "b")
    a.try_acquire_or_renew(0.0)
    b.try_acquire_or_renew(0.0)
    stale = b._read()
    a.try_acquire_or_renew(16.0)
    assert stale is not None
    with pytest.raises(ApiException) as caught:
        b._write(stale, successor(None, "b", 16.0, 15))
    assert caught.value.status == 409
    assert b.try_acquire_or_renew(16.0) is False  # and the elector reads it as "someone else leads"


def test_a_leader_that_cannot_renew_steps_down_at_its_renew_deadline(server) -> None:
    a = elector(server, "a")
    assert a.try_acquire_or_renew(0.0)
    server.fail("/leases", 500, times=100)
    assert a.try_acquire_or_renew(5.0) is True  # a blip: still within the renew deadline
    assert a.try_acquire_or_renew(10.0) is False
    follower = elector(server, "b")
    assert follower.try_acquire_or_renew(11.0) is False  # the API answers 500 to it too


def test_the_clock_is_used_when_no_time_is_given(server) -> None:
    now = [100.0]
    a = elector(server, "a", clock=lambda: now[0])
    b = elector(server, "b", clock=lambda: now[0])
    assert (a.try_acquire_or_renew(), b.try_acquire_or_renew()) == (True, False)
    now[0] = 114.9
    assert b.try_acquire_or_renew() is False  # b first saw the record at 100
    now[0] = 115.0
    assert b.try_acquire_or_renew() is True


def test_an_empty_identity_is_refused(server) -> None:
    with pytest.raises(ValueError, match="identity"):
        elector(server, "")
