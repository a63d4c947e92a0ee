"""Leader election: the pure rules, then two electors on one Lease of the fake API server, then the
lease's validity: a replica never acts (nor writes) once its lease may have been lost."""

from __future__ import annotations

import copy
import itertools
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kubernetes.client import ApiException

from controller.api.names import FINALIZER
from controller.edges.kube import KubeCluster, retry_policy
from controller.edges.kube.leader import (
    LeaderElector,
    LeaseLostError,
    LeaseRecord,
    LeaseVerdict,
    default_margin,
    expired,
    judge_lease,
    released,
    successor,
    valid_until,
)
from controller.edges.prometheus import PrometheusClient, PrometheusSettings
from controller.engine.ports import Cluster
from controller.manager.loop import Manager
from controller.manager.wiring import PrometheusSource
from controller.sandbox.localapi import LocalApiServer, local_api_server
from controller.traffic.templating import default_environment

NS, LEASE = "canarist-system", "canarist-controller"
COUNTER = itertools.count()


# --- the rules, without I/O -------------------------------------------------------------------


def test_expiry_is_measured_from_our_own_observation() -> None:
    assert not expired(observed_at=100.0, duration=15, now=114.9)
    assert expired(observed_at=100.0, duration=15, now=115.0)


@pytest.mark.parametrize(
    ("record", "now", "verdict"),
    [
        (None, 0.0, LeaseVerdict.CREATE),
        (LeaseRecord("me", 15, 0.0, 0.0), 1.0, LeaseVerdict.RENEW),
        (LeaseRecord("me", 15, 0.0, 0.0), 1000.0, LeaseVerdict.RENEW),
        (LeaseRecord("", 1, 0.0, 0.0), 0.5, LeaseVerdict.TAKE_OVER),
        (LeaseRecord("other", 15, 0.0, 0.0), 14.0, LeaseVerdict.FOLLOW),
        (LeaseRecord("other", 15, 0.0, 0.0), 15.0, LeaseVerdict.TAKE_OVER),
    ],
)
def test_judge_lease(record: LeaseRecord | None, now: float, verdict: LeaseVerdict) -> None:
    assert judge_lease(record, "me", now, observed_at=0.0) is verdict


def test_the_holders_timestamps_do_not_decide_expiry() -> None:
    """A renewTime far in the past (a skewed clock) does not let a fresh observer take over."""
    ancient = LeaseRecord("other", 15, 0.0, 0.0)
    assert judge_lease(ancient, "me", now=10_000.0, observed_at=9_999.0) is LeaseVerdict.FOLLOW


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


def test_validity_runs_from_the_send_time_less_the_margin() -> None:
    assert valid_until(100.0, 15, default_margin(15)) == 113.5
    assert default_margin(2) == 0.25 and default_margin(15) == 1.5


# --- two replicas on one Lease ----------------------------------------------------------------


@pytest.fixture
def server() -> Iterator[LocalApiServer]:
    with local_api_server() as fake:
        yield fake


def elector(server: LocalApiServer, identity: str, clock: Any = lambda: 0.0, **options: Any) -> LeaderElector:
    """An elector whose monotonic clock is ``clock`` (wall-clock times in the Lease: the real ones)."""
    client = server.make_client(retries=retry_policy())
    return LeaderElector(client, NS, LEASE, identity, lease_seconds=15, monotonic=clock, **options)


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


def test_a_leader_that_cannot_renew_steps_down_when_its_lease_may_end(server) -> None:
    a = elector(server, "a")
    assert a.try_acquire_or_renew(0.0)
    server.fail("/leases", 500, times=100)
    assert a.try_acquire_or_renew(5.0) is True  # a blip: the renewal sent at 0 still holds
    assert a.remaining(5.0) == 15 - 1.5 - 5.0
    assert a.try_acquire_or_renew(13.4) is True
    assert a.try_acquire_or_renew(13.5) is False and a.remaining(13.5) == 0.0
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


# --- validity: never two leaders, never a write after the lease may be lost -------------------

ACTIONS = st.lists(
    st.one_of(
        st.tuples(st.sampled_from(["a", "b"]), st.just(0.0)),  # that replica tries to acquire or renew
        st.tuples(st.just("wait"), st.floats(0.0, 20.0)),  # time passes: whoever did not act stalled
        st.tuples(st.just("fail"), st.just(0.0)),  # the next Lease request is answered 500
        st.tuples(st.just("release"), st.just(0.0)),  # a steps down
    ),
    max_size=30,
)


@pytest.mark.filterwarnings("ignore:Generating overly large repr")  # the fake server's log, shown on failure
@given(actions=ACTIONS)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_two_replicas_never_hold_the_lease_at_the_same_moment(server: LocalApiServer, actions: Any) -> None:
    """Whatever the order of renewals, stalls, API failures and releases: at every moment at most one
    elector holds the lease, and a holder's validity never outlasts what its last accepted renewal
    (sent at that moment) allows."""
    lease_name = f"lease-{next(COUNTER)}"
    now = [0.0]
    replicas = {
        who: LeaderElector(
            server.make_client(), NS, lease_name, who, lease_seconds=15, monotonic=lambda: now[0], request_timeout=2
        )
        for who in ("a", "b")
    }
    renewed_at: dict[str, float] = {}
    for action, value in actions:
        if action == "wait":
            now[0] += value
        elif action == "fail":
            server.fail(f"/leases/{lease_name}", 500)
        elif action == "release":
            replicas["a"].release()
        elif replicas[action].try_acquire_or_renew() and replicas[action].remaining() == pytest.approx(13.5):
            renewed_at[action] = now[0]  # a renewal accepted just now
        holding = [who for who, e in replicas.items() if e.holds()]
        assert len(holding) <= 1, (holding, now[0])
        for who in holding:
            assert now[0] < renewed_at[who] + 15 - 1.5
    server.faults.clear()


@pytest.mark.parametrize("lease_seconds", [2, 15, 60])
def test_a_stalled_leader_holds_nothing_after_its_validity(server: LocalApiServer, lease_seconds: int) -> None:
    now = [1000.0]
    a = LeaderElector(server.make_client(), NS, LEASE, "a", lease_seconds=lease_seconds, monotonic=lambda: now[0])
    assert a.try_acquire_or_renew()
    end = 1000.0 + lease_seconds - default_margin(lease_seconds)
    for t in (1000.0, (1000.0 + end) / 2, end - 0.01):
        assert a.holds(t) and a.remaining(t) == pytest.approx(end - t)
    for t in (end, end + 0.01, end + lease_seconds, end + 10 * lease_seconds):
        assert not a.holds(t) and a.remaining(t) == 0.0


def test_a_lease_too_short_for_its_margin_is_refused(server: LocalApiServer) -> None:
    with pytest.raises(ValueError, match="no time to act"):
        LeaderElector(server.make_client(), NS, LEASE, "a", lease_seconds=2, margin=1.0, write_budget=1.0)


# --- the fence: the cluster's writes only while the lease is surely ours -----------------------

ROLLOUT = {
    "apiVersion": "canarist.io/v1alpha1",
    "kind": "ModelRollout",
    "metadata": {"name": "scorer", "namespace": "ml", "finalizers": [FINALIZER]},
    "spec": {},
}
#: Every write the controller makes, as a call on the Cluster (reads are listed in READS_TABLE).
WRITES_TABLE: list[tuple[str, Callable[[Cluster, dict[str, Any]], object]]] = [
    ("status", lambda c, o: c.patch_rollout_status("ml", "scorer", {"phase": "Progressing"}, "")),
    ("annotations", lambda c, o: c.annotate_rollout("ml", "scorer", {"x": "y"})),
    ("finalizer", lambda c, o: c.set_finalizer("ml", "scorer", present=False, resource_version="")),
    ("routes", lambda c, o: c.apply_routes(o, [])),
    ("release", lambda c, o: c.release_routes(o)),
    ("gitops", lambda c, o: c.create_or_update_rollout({**ROLLOUT, "metadata": {"name": "other", "namespace": "ml"}})),
]
READS_TABLE: list[tuple[str, Callable[[Cluster, dict[str, Any]], object]]] = [
    ("list", lambda c, o: c.list_rollouts("ml")),
    ("get", lambda c, o: c.get_rollout("ml", "scorer")),
    ("pods", lambda c, o: c.pods_ready("ml", {"app": "scorer"})),
]


def fenced_world(server: LocalApiServer, now: list[float]) -> tuple[LeaderElector, LeaderElector, Cluster]:
    a = LeaderElector(server.make_client(), NS, LEASE, "a", lease_seconds=15, monotonic=lambda: now[0])
    b = LeaderElector(server.make_client(), NS, LEASE, "b", lease_seconds=15, monotonic=lambda: now[0])
    server.seed(copy.deepcopy(ROLLOUT))
    return a, b, a.fence(KubeCluster(server.make_client(), propagation_delay=0.0))


@pytest.mark.parametrize(("what", "write"), WRITES_TABLE, ids=[w for w, _ in WRITES_TABLE])
def test_a_write_after_another_replica_took_over_is_refused_and_never_sent(
    server: LocalApiServer, what: str, write: Callable[[Cluster, dict[str, Any]], object]
) -> None:
    now = [0.0]
    a, b, cluster = fenced_world(server, now)
    assert a.try_acquire_or_renew() and not b.try_acquire_or_renew()
    now[0] = 16.0  # a stalled past its lease; b saw the record at 0 and takes over
    assert b.try_acquire_or_renew()
    before = len(server.writes)
    obj = server.get("canarist.io", "modelrollouts", "ml", "scorer")
    with pytest.raises(LeaseLostError, match="lease may have been lost"):
        write(cluster, obj or {})
    sent = [r.path for r in server.writes[before:] if "/leases" not in r.path]
    assert sent == [] and not a.leading, sent
    cluster.emit_event(obj or {}, reason="Start", message="best effort")  # dropped, never raised
    assert [r.path for r in server.writes[before:] if "/leases" not in r.path] == []


@pytest.mark.parametrize(("what", "call"), WRITES_TABLE + READS_TABLE, ids=[w for w, _ in WRITES_TABLE + READS_TABLE])
def test_a_stalled_leader_nobody_replaced_renews_first_then_acts(
    server: LocalApiServer, what: str, call: Callable[[Cluster, dict[str, Any]], object]
) -> None:
    """Past its validity but still the Lease's holder: the fence renews (a compare-and-swap on the
    Lease), then lets the call through, so a slow pass never starves."""
    now = [0.0]
    a, _, cluster = fenced_world(server, now)
    assert a.try_acquire_or_renew()
    now[0] = 30.0
    assert not a.holds()
    call(cluster, server.get("canarist.io", "modelrollouts", "ml", "scorer") or {})
    assert a.holds() or what in dict(READS_TABLE)


@pytest.mark.parametrize(("what", "read"), READS_TABLE, ids=[w for w, _ in READS_TABLE])
def test_reads_pass_the_fence_without_a_lease(
    server: LocalApiServer, what: str, read: Callable[[Cluster, dict[str, Any]], object]
) -> None:
    now = [0.0]
    a, _, cluster = fenced_world(server, now)
    read(cluster, {})
    assert not a.leading and "/leases" not in " ".join(r.path for r in server.log)


def test_a_method_the_fence_does_not_know_is_fenced(server: LocalApiServer) -> None:
    """Fail safe: a callable the fence does not list as a read is treated as a write."""
    now = [0.0]
    _, _, cluster = fenced_world(server, now)
    with pytest.raises(LeaseLostError):
        cast(Any, cluster).from_settings()
    assert cast(Any, cluster).propagation_delay == 0.0  # plain attributes pass


# --- the loop: a leader stalled mid-reconcile writes nothing once a standby took over ----------


@pytest.mark.parametrize("standby_takes_over", [True, False])
def test_a_leader_stalled_past_its_lease_mid_reconcile_never_writes_after_it(
    server: LocalApiServer, standby_takes_over: bool
) -> None:
    """The real loop, elector and Kubernetes edge, on a 2 s Lease: the leader's reconcile stalls 3 s
    on the pods list (the API server is slow). If a standby took over meanwhile, the leader sends no
    write at all after the stall; if nobody did, it renews and carries on."""
    from tests.test_e2e import NAME, policy, ready_pod
    from tests.test_e2e import NS as ROLLOUT_NS

    for version in ("v1", "v2"):
        server.seed(ready_pod(version))
    rollout = policy(steps=[20, 50])
    rollout["metadata"]["finalizers"] = [FINALIZER]  # so that the first write comes after the stall
    server.seed(rollout)
    a = LeaderElector(server.make_client(), NS, LEASE, "a", lease_seconds=2)
    b = LeaderElector(server.make_client(), NS, LEASE, "b", lease_seconds=2)
    unreachable = PrometheusSource(PrometheusClient(PrometheusSettings(url="http://127.0.0.1:9", timeout=1.0)))
    cluster = KubeCluster(server.make_client(), propagation_delay=0.0)
    manager = Manager(cluster, unreachable, default_environment(), time.time, namespace=ROLLOUT_NS, elector=a)
    assert a.try_acquire_or_renew() and not b.try_acquire_or_renew()  # a leads, b follows
    server.fail("/pods", None, delay=3.0)  # the readiness gate's list stalls past the 2 s lease
    outcomes: list[Any] = []
    ticking = threading.Thread(target=lambda: outcomes.extend(manager.tick()))
    ticking.start()
    time.sleep(0.3)
    assert manager.leader and a.holds()
    start = len(server.log)
    while ticking.is_alive():
        if standby_takes_over:
            b.try_acquire_or_renew()
        time.sleep(0.05)
    ticking.join()
    writes = [r for r in server.log[start:] if r.method != "GET" and "/leases" not in r.path]
    if standby_takes_over:
        assert b.leading and not a.leading
        assert writes == [], [(r.method, r.path) for r in writes]
        [outcome] = outcomes
        assert outcome.key == f"{ROLLOUT_NS}/{NAME}" and "lease" in outcome.reason
        manager.due.clear()
        assert manager.tick() == [] and not manager.leader  # the next pass: a follower, acting on nothing
        assert [r for r in server.log[start:] if r.method != "GET" and "/leases" not in r.path] == []
    else:
        assert a.leading and manager.leader
        assert any("/status" in r.path for r in writes) and any("/virtualservices" in r.path for r in writes)
