"""Sharding across replicas (controller/edges/kube/shards.py; issue 17, item 3).

Three levels: the pure placement (which shard a rollout is in, which replica a shard prefers) as
properties; shard sets of several replicas on the local API stand-in, stepped on a virtual clock
through joins, stalls, deaths and shutdowns, with "never two holders" checked at every step; and
the fence and the loop: a write about a rollout whose shard is not surely ours never leaves, and a
sharded Manager reconciles only its own shards' rollouts. Real processes: test_shards_process.py.
"""

from __future__ import annotations

import copy
import hashlib
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.edges.kube import KubeCluster
from controller.edges.kube.leader import LeaseLostError
from controller.edges.kube.shards import ShardSet, key_of_call, preferred_replica, shard_lease_name, shard_of
from controller.engine.ports import Cluster, EdgeFailure
from controller.manager.loop import Manager
from controller.manager.ops import ControllerMetrics
from controller.metrics.samples import Observation, Window
from controller.sandbox.chaos.leases import LeaseChecker
from controller.sandbox.localapi import LocalApiServer, local_api_server, ready_pod
from controller.sandbox.localapi.calls import Caller
from controller.traffic.templating import default_environment
from tests.test_leader import ROLLOUT, WRITES_TABLE

NS = "canarist-system"
SHARDS = 16


@pytest.fixture
def server() -> Iterator[LocalApiServer]:
    with local_api_server(istio_status=True) as api:
        yield api


# --- placement ------------------------------------------------------------------------------------


def test_a_rollouts_shard_is_pinned_across_processes_and_versions() -> None:
    """SHA-256, never Python's salted hash(): every replica, now and after an upgrade, agrees."""
    digest = hashlib.sha256(b"team-a/fraud-detector").digest()
    assert shard_of("team-a/fraud-detector", SHARDS) == int.from_bytes(digest[:8], "big") % SHARDS == 7
    assert shard_of("team-a/fraud-detector", 1) == 0


def test_rollouts_spread_evenly_over_the_shards() -> None:
    counts = [0] * SHARDS
    for i in range(2000):
        counts[shard_of(f"ns-{i % 37}/model-{i}", SHARDS)] += 1
    assert min(counts) >= 80 and max(counts) <= 170, counts  # 125 expected, 4 standard deviations


MEMBERS = st.lists(st.text("abcdefgh-0123456789", min_size=1, max_size=12), min_size=1, max_size=8, unique=True)


@given(members=MEMBERS, data=st.data())
@settings(max_examples=200)
def test_a_replica_leaving_moves_only_its_own_shards(members: list[str], data: st.DataObject) -> None:
    gone = data.draw(st.sampled_from(members))
    rest = [m for m in members if m != gone]
    for shard in range(SHARDS):
        before, after = preferred_replica(shard, members), preferred_replica(shard, rest)
        if before != gone:
            assert after == before
        else:
            assert after in rest or not rest


@given(members=MEMBERS, newcomer=st.text("ijklmnop", min_size=1, max_size=6))
@settings(max_examples=200)
def test_a_replica_joining_takes_shards_only_for_itself(members: list[str], newcomer: str) -> None:
    for shard in range(SHARDS):
        after = preferred_replica(shard, [*members, newcomer])
        assert after in (preferred_replica(shard, members), newcomer)


def test_the_preferred_replica_does_not_depend_on_the_order_members_are_listed() -> None:
    members = ["replica-0", "replica-1", "replica-2"]
    assert all(preferred_replica(s, members) == preferred_replica(s, members[::-1]) for s in range(SHARDS))
    assert preferred_replica(3, []) is None


KEYS: list[tuple[str, tuple[Any, ...], dict[str, Any], str | None]] = [
    ("an object first", ({"metadata": {"namespace": "ml", "name": "scorer"}}, []), {}, "ml/scorer"),
    ("namespace and name", ("ml", "scorer", {"phase": "Progressing"}, "7"), {}, "ml/scorer"),
    ("the owner by keyword", (), {"owner": {"metadata": {"namespace": "ml", "name": "x"}}}, "ml/x"),
    ("by keywords", (), {"namespace": "ml", "name": "y"}, "ml/y"),
    ("an object without a name", ({"metadata": {"namespace": "ml"}},), {}, None),
    ("nothing", (), {}, None),
    ("not strings", (3, 4), {}, None),
]


@pytest.mark.parametrize(("args", "kwargs", "key"), [k[1:] for k in KEYS], ids=[k[0] for k in KEYS])
def test_the_rollout_a_write_is_about(args: tuple[Any, ...], kwargs: dict[str, Any], key: str | None) -> None:
    assert key_of_call(args, kwargs) == key


# --- shard sets on the API stand-in, on a virtual clock ----------------------------------------------


class Fleet:
    """Shard sets of named replicas on one API server, all reading one virtual monotonic clock."""

    def __init__(self, server: LocalApiServer, lease_seconds: int = 10) -> None:
        self.server, self.lease_seconds, self.now = server, lease_seconds, 0.0
        self.sets: dict[str, ShardSet] = {}

    def join(self, who: str) -> ShardSet:
        self.sets[who] = ShardSet(
            self.server.make_client(), NS, who, shards=SHARDS, lease_seconds=self.lease_seconds,
            monotonic=lambda: self.now, request_timeout=2,
        )  # fmt: skip
        return self.sets[who]

    def holders(self) -> dict[int, list[str]]:
        """Who surely holds each shard now; asserts it is never two."""
        held: dict[int, list[str]] = {}
        for who, shard_set in self.sets.items():
            for shard in shard_set.held():
                held.setdefault(shard, []).append(who)
        assert all(len(names) == 1 for names in held.values()), (self.now, held)
        return held

    def rounds(self, who: Sequence[str], rounds: int, step: float = 2.0) -> None:
        for _ in range(rounds):
            for name in who:
                self.sets[name].renew()
                self.holders()
            self.now += step

    def by_replica(self) -> dict[str, int]:
        counts = dict.fromkeys(self.sets, 0)
        for names in self.holders().values():
            counts[names[0]] += 1
        return counts


def test_replicas_share_every_shard_and_a_dead_ones_shards_move_once_its_leases_expire(server: LocalApiServer) -> None:
    fleet = Fleet(server)
    for who in ("a", "b", "c"):
        fleet.join(who)
    fleet.rounds(["a", "b", "c"], 3)
    assert sorted(fleet.holders()) == list(range(SHARDS))
    shares = fleet.by_replica()
    assert all(shares[who] >= 1 for who in "abc"), shares
    assert {s: names[0] for s, names in fleet.holders().items()} == {
        s: preferred_replica(s, ["a", "b", "c"]) for s in range(SHARDS)
    }
    of_c = sorted(s for s, names in fleet.holders().items() if names == ["c"])

    fleet.rounds(["a", "b"], 2)  # c is gone without a word (SIGKILL): its shards wait out its leases
    assert sorted(s for s, names in fleet.holders().items() if names == ["c"]) == of_c
    fleet.rounds(["a", "b"], 6)  # past c's lease duration as a and b observed it
    assert sorted(fleet.holders()) == list(range(SHARDS))
    assert fleet.by_replica()["c"] == 0 and all(fleet.holders()[s] != ["c"] for s in of_c)


def test_a_newcomer_gets_its_share_and_a_replica_that_shuts_down_hands_over_at_once(server: LocalApiServer) -> None:
    fleet = Fleet(server)
    fleet.join("a")
    fleet.rounds(["a"], 1)
    assert len(fleet.holders()) == SHARDS  # alone: everything
    fleet.join("b")
    fleet.rounds(["b", "a", "b"], 1)  # b joins; a sees it and hands back; b takes them
    expected_b = {s for s in range(SHARDS) if preferred_replica(s, ["a", "b"]) == "b"}
    assert {s for s, names in fleet.holders().items() if names == ["b"]} == expected_b
    assert sorted(fleet.holders()) == list(range(SHARDS))

    before = fleet.now
    fleet.sets["a"].release()  # SIGTERM: its shards and its membership handed back
    fleet.rounds(["b"], 1, step=0.0)
    assert fleet.now == before and sorted(fleet.holders()) == list(range(SHARDS))
    assert fleet.by_replica()["b"] == SHARDS


def test_an_unreachable_api_keeps_only_what_the_last_renewals_hold(server: LocalApiServer) -> None:
    fleet = Fleet(server)
    a = fleet.join("a")
    fleet.rounds(["a"], 1)
    server.fail("/leases", 503, times=10_000)
    assert a.held() == list(range(SHARDS))
    fleet.now += 5
    assert a.renew() == list(range(SHARDS))  # still within the last renewals
    fleet.now += 5
    assert a.renew() == []  # past them (less the safety margin): nothing is held
    server.faults.clear()


# --- the fence --------------------------------------------------------------------------------------


def fenced_world(server: LocalApiServer, fleet: Fleet) -> dict[str, Cluster]:
    """Replicas a and b, their shards settled, each with its fenced cluster."""
    server.seed(copy.deepcopy(ROLLOUT))
    sets = {who: fleet.join(who) for who in ("a", "b")}
    fleet.rounds(["a", "b", "a", "b"], 1)
    return {who: s.fence(KubeCluster(server.make_client(), propagation_delay=0.0)) for who, s in sets.items()}


def _sent(server: LocalApiServer, before: int) -> list[str]:
    return [r.path for r in server.writes[before:] if "/leases" not in r.path]


@pytest.mark.parametrize(("what", "write"), WRITES_TABLE, ids=[w for w, _ in WRITES_TABLE])
def test_a_write_about_a_rollout_in_another_replicas_shard_is_refused_and_never_sent(
    server: LocalApiServer, what: str, write: Callable[[Cluster, dict[str, Any]], object]
) -> None:
    """Each write, by the replica not holding its rollout's shard: refused, nothing sent (an Event
    dropped); by the holder: it goes out."""
    fleet = Fleet(server)
    clusters = fenced_world(server, fleet)
    key = "ml/other" if what == "gitops" else "ml/scorer"
    (owner,) = fleet.holders()[shard_of(key, SHARDS)]
    (other,) = set(clusters) - {owner}
    obj = server.get("canarist.io", "modelrollouts", "ml", "scorer") or {}
    before = len(server.writes)
    with pytest.raises(LeaseLostError, match="lease may have been lost"):
        write(clusters[other], obj)
    clusters[other].emit_event(obj, reason="Start", message="best effort")  # dropped, never raised
    assert _sent(server, before) == []
    write(clusters[owner], obj)  # the holder's: passed to the API (no LeaseLostError)


def test_a_write_about_no_known_rollout_is_refused(server: LocalApiServer) -> None:
    clusters = fenced_world(server, Fleet(server))
    before = len(server.writes)
    for cluster in clusters.values():
        with pytest.raises(LeaseLostError):
            cluster.apply_routes({"metadata": {}}, [])
    assert _sent(server, before) == []


def test_the_lease_checker_catches_a_write_by_a_replica_not_holding_its_rollouts_shard() -> None:
    """The checker of the process test is not vacuous: a write under another shard's Lease, or under
    a shard Lease held by someone else, is a violation; under its own shard's Lease it is not."""
    user: list[str] = ["a"]
    now = [1_800_000_000.0]
    checker = LeaseChecker(
        lambda: Caller(user[0]),
        lambda: now[0],
        replicas={"a", "b"},
        guard=lambda key: shard_lease_name(shard_of(f"{key[2]}/{key[3]}", SHARDS)),
        judged=lambda name: name.startswith("canarist-shard-"),
    )
    mine = next(i for i in range(100) if shard_of(f"ml/m{i}", SHARDS) == 0)
    theirs = next(i for i in range(100) if shard_of(f"ml/m{i}", SHARDS) == 1)
    renew = "2027-01-15T08:00:00+00:00"
    now[0] = 1_800_000_000.0 + 1
    for shard, holder in ((0, "a"), (1, "b")):
        lease = {"spec": {"holderIdentity": holder, "leaseDurationSeconds": 10**9, "renewTime": renew}}
        checker(1, "ADDED", ("coordination.k8s.io", "leases", NS, shard_lease_name(shard)), lease)
    checker(2, "MODIFIED", ("canarist.io", "modelrollouts", "ml", f"m{mine}"), {})
    assert checker.violations == []
    checker(3, "MODIFIED", ("networking.istio.io", "virtualservices", "ml", f"m{theirs}"), {})
    assert [v.invariant for v in checker.violations] == ["write-without-lease"]
    user[0] = "b"
    b_takes_0 = {"spec": {"holderIdentity": "b", "leaseDurationSeconds": 10, "renewTime": renew}}
    checker(4, "MODIFIED", ("coordination.k8s.io", "leases", NS, shard_lease_name(0)), b_takes_0)
    assert [v.invariant for v in checker.violations] == ["write-without-lease", "two-leaders"]


# --- the sharded loop ---------------------------------------------------------------------------------


class NoTraffic:
    """A metrics source with no requests yet: every rollout holds at its first step, writing its status."""

    def observe(
        self, rollouts: Sequence[Any], windows: Mapping[str, Sequence[Window]], at: float
    ) -> tuple[dict[str, Observation], EdgeFailure | None]:
        return {}, None


def test_sharded_managers_each_reconcile_exactly_their_own_shards_rollouts(server: LocalApiServer) -> None:
    fleet = Fleet(server, lease_seconds=15)
    tokens = {"token-a": "a", "token-b": "b"}
    server.tokens.update(tokens)
    checker = LeaseChecker(  # every write judged by the stored Lease of its rollout's shard
        lambda: server.writer,
        time.time,
        replicas={"a", "b"},
        guard=lambda key: shard_lease_name(shard_of(f"{key[2]}/{key[3]}", SHARDS)),  # routes: named as rollouts
        judged=lambda name: name.startswith("canarist-shard-"),
    )
    server.write_observer = checker
    managers = {}
    observer = ControllerMetrics()
    for token, who in tokens.items():
        shard_set = fleet.join(who)
        cluster = KubeCluster(server.make_client(api_key={"authorization": f"Bearer {token}"}), propagation_delay=0.0)
        managers[who] = Manager(
            cluster, NoTraffic(), default_environment(), lambda: 1_800_000_000.0, shards=shard_set,
            observer=observer if who == "a" else None,
        )  # fmt: skip
    names = [f"model-{i}" for i in range(12)]
    for name in names:
        seed_ready_pods(server, name)
        server.seed(holding_rollout(name))
    for _ in range(2):  # a alone first (it takes every shard), then b joins and a hands its share over
        for manager in managers.values():
            manager.tick()
    fleet.holders()
    for manager in managers.values():
        manager.due.clear()  # every rollout due again
    outcomes = {who: {o.key for o in manager.tick()} for who, manager in managers.items()}
    assert outcomes["a"].isdisjoint(outcomes["b"]) and outcomes["a"] and outcomes["b"]
    assert outcomes["a"] | outcomes["b"] == {f"ml/{name}" for name in names}
    for who, keys in outcomes.items():
        assert all(fleet.sets[who].owns(k) for k in keys), (who, keys)
    assert checker.violations == [] and checker.writes >= 2 * len(names)  # routes and status, each
    exported = observer.registry.get_sample_value
    assert exported("canarist_shards_held") == len(fleet.sets["a"].held()) > 0
    assert exported("canarist_shard_members") == 2


def holding_rollout(name: str, notify: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A rollout in ``ml`` of its own Service ``name``; without traffic it holds at its first step."""
    spec: dict[str, Any] = {
        "service": {"name": name, "port": 8080},
        "stable": {"name": "v1", "labels": {"app": name, "version": "v1"}},
        "canary": {"name": "v2", "labels": {"app": name, "version": "v2"}},
        "strategy": {"steps": [50], "interval": "1m", "onNoData": "Hold"},
        "analysis": {"metrics": [{"name": "errors", "kind": "IstioErrorRate", "slo": {"max": "2%"}}]},
    }
    if notify is not None:
        spec["notify"] = dict(notify)
    return {"apiVersion": "canarist.io/v1alpha1", "kind": "ModelRollout",
            "metadata": {"name": name, "namespace": "ml"}, "spec": spec}  # fmt: skip


def seed_ready_pods(server: LocalApiServer, name: str) -> None:
    """A ready pod of each version of ``holding_rollout(name)``."""
    for version in ("v1", "v2"):
        server.seed(ready_pod("ml", f"{name}-{version}", {"app": name, "version": version}))


def test_a_replica_busy_with_a_long_pass_hands_over_a_newcomers_shards_mid_pass(server: LocalApiServer) -> None:
    """Found by bench.shards at 300 rollouts: the first replica up took every shard, and its first
    pass (hundreds of reconciles) renewed nothing else, so the others waited the whole pass. A
    reconcile's check of its shard (``ensure``) now renews in full every third of a lease."""
    fleet = Fleet(server, lease_seconds=15)
    a = fleet.join("a")
    fleet.rounds(["a"], 1, step=0.0)
    assert len(a.held()) == SHARDS
    b = fleet.join("b")
    fleet.rounds(["b"], 1, step=0.0)  # b is a member now; a is in its pass and does not renew()
    keys = [f"ml/model-{i}" for i in range(40)]
    for key in keys:  # a's pass: one reconcile a second
        fleet.now += 1.0
        if a.owns(key):
            a.ensure(key, 1.0)
        fleet.holders()
        b.renew()
    expected_b = {s for s in range(SHARDS) if preferred_replica(s, ["a", "b"]) == "b"}
    assert set(b.held()) == expected_b and set(a.held()) == set(range(SHARDS)) - expected_b
