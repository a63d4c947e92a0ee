"""Operating the controller end to end: Prometheus outages, humans steering from the CLI, two
replicas on one Lease, and controllers killed at every step boundary.

Same world as test_e2e.py: the official Kubernetes client against the fake API server, a real
Prometheus scraping live traffic whose split follows the VirtualService canarist writes, intervals
of seconds. Every write the API server received is checked afterwards with ``check_writes``
(integer weights summing to 100, no route to a subset no earlier DestinationRule defined).
"""

from __future__ import annotations

import copy
import itertools
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

import tests.prometheus_fixture
import tests.test_e2e
from controller.api.status import Action
from controller.edges.kube import KubeCluster
from controller.edges.kube.leader import LeaderElector
from controller.edges.prometheus import PrometheusClient, PrometheusSettings
from controller.engine.reconcile import reconcile
from controller.manager.loop import Manager
from controller.manager.wiring import PrometheusSource
from controller.sandbox.localapi import LocalApiServer, local_api_server
from controller.traffic.templating import default_environment
from tests.prometheus_fixture import PrometheusServer
from tests.test_e2e import NAME, NS, Mesh, check_writes, live_mesh, policy, ready_pod
from tests.test_reconcile import ENV, POLICY, T0, Synthetic

CANARIST = Path(sys.executable).parent / "canarist"
LEASE = "canarist-controller"


def non_decreasing(weights: Sequence[int]) -> bool:
    return all(a <= b for a, b in itertools.pairwise(weights))


@dataclass
class World:
    """The fake API server, Prometheus and the mesh's traffic; controllers are made on demand."""

    api: LocalApiServer
    prometheus: PrometheusServer
    mesh: Mesh
    tmp: Path
    managers: list[Manager] = field(default_factory=list)

    def manager(self, elector: LeaderElector | None = None) -> Manager:
        """A controller with nothing in memory: its own API client, Prometheus client and queue."""
        cluster = KubeCluster(self.api.make_client(), propagation_delay=0.0)
        source = PrometheusSource(PrometheusClient(PrometheusSettings(url=self.prometheus.url, timeout=5.0)))
        made = Manager(cluster, source, default_environment(), time.time, namespace=NS, elector=elector)
        self.managers.append(made)
        return made

    def elector(self, identity: str) -> LeaderElector:
        return LeaderElector(self.api.make_client(), NS, LEASE, identity, lease_seconds=2)

    def status(self) -> dict[str, Any]:
        return dict((self.api.get("canarist.io", "modelrollouts", NS, NAME) or {}).get("status") or {})

    def vs_writes(self) -> int:
        return sum(1 for r in self.api.writes if "/virtualservices" in r.path and r.code < 400)

    def kubeconfig(self) -> Path:
        path = self.tmp / "kubeconfig"
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.api.url}}],
            "users": [{"name": "oncall", "user": {"token": "dummy-token"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "oncall", "namespace": NS}}],
            "current-context": "fake",
        }
        path.write_text(yaml.safe_dump(config))
        return path

    def canarist(self, *args: str) -> str:
        """The real executable, acting through the API server like a person on call."""
        proc = subprocess.run(
            [str(CANARIST), *args, "--kubeconfig", str(self.kubeconfig())],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
        return proc.stdout


@pytest.fixture
def world(
    prometheus_factory: Callable[..., PrometheusServer], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[[], World]]:
    monkeypatch.setattr(tests.test_e2e, "RPS", 1000)  # more traffic than test_e2e.py: proofs come sooner
    with ExitStack() as stack:

        def make() -> World:
            api, mesh, prometheus = stack.enter_context(live_mesh(prometheus_factory, 0.005))
            return World(api, prometheus, mesh, tmp_path)

        yield make


def wait_for(what: str, check: Callable[[], bool], seconds: float, tick: Callable[[], object] | None = None) -> None:
    """Poll ``check`` (calling ``tick`` first each time, then every 0.5 s) until true, or fail."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        if tick is not None:
            tick()
        if check():
            return
        time.sleep(0.5 if tick is not None else 0.2)
    pytest.fail(f"{what} did not happen in {seconds}s")


# --- (a) Prometheus down mid-rollout ----------------------------------------------------------


def test_prometheus_down_holds_with_the_reason_then_the_rollout_continues(
    world: Callable[[], World], monkeypatch: pytest.MonkeyPatch
) -> None:
    w = world()
    manager = w.manager()
    manager.cluster.create_or_update_rollout(policy(steps=[20, 50]))
    wait_for("the start", lambda: w.status().get("phase") == "Progressing", 20, manager.tick)

    w.prometheus.stop()
    weight, writes = w.status()["canaryWeight"], w.vs_writes()
    wait_for("a hold for no data", lambda: "no data" in w.status().get("message", ""), 20, manager.tick)
    held_since = time.time()
    while time.time() < held_since + 7:  # two more intervals without Prometheus
        outcomes = manager.tick()
        assert all(o.action in (Action.HOLD, Action.NONE) for o in outcomes), outcomes
        status = w.status()
        assert status["phase"] == "Progressing" and status["canaryWeight"] == weight
        assert "holding: no data" in status["message"], status["message"]
        assert f"Prometheus at {w.prometheus.url} unavailable" in status["message"], status["message"]
        assert "left before the progress deadline" in status["message"]
        time.sleep(0.5)
    assert w.vs_writes() == writes and w.mesh.weight() == weight  # the weights stayed
    stuck = {m["name"]: m["verdict"] for m in w.status()["metrics"]}
    assert set(stuck.values()) == {"NoData"}, stuck

    port = w.prometheus.port  # the same server (same TSDB) back at the same address
    w.prometheus.start(port=port)
    assert w.prometheus.port == port

    wait_for("the promotion", lambda: w.status().get("phase") in ("Succeeded", "Failed"), 60, manager.tick)
    status = w.status()
    assert status["phase"] == "Succeeded", status["message"]
    weights = check_writes(w.api)
    assert non_decreasing(weights) and weights[-1] == 100 and weight in weights
    assert [t["action"] for t in status["history"]] == ["Start", "Advance", "Promote", "Complete"]


# --- (b) people steering from the CLI mid-rollout ---------------------------------------------


def test_pause_resume_and_abort_from_the_cli_mid_rollout(world: Callable[[], World]) -> None:
    w = world()
    manager = w.manager()
    manager.cluster.create_or_update_rollout(policy(steps=[10, 20, 30, 40, 50]))  # slack: abort before the end
    stop = threading.Event()
    loop = threading.Thread(target=manager.run, args=(stop,), daemon=True)  # the real loop: ticks and watches
    loop.start()
    try:
        wait_for("the start", lambda: w.status().get("phase") == "Progressing", 20)

        assert "pause requested" in w.canarist("pause", NAME)  # the context's namespace
        wait_for("the pause", lambda: w.status().get("phase") == "Paused", 10)
        paused = w.status()
        weight, writes = paused["canaryWeight"], w.vs_writes()
        # the name the API server authenticated the CLI as (no token here: anonymous), as a claim with its writer
        by = "system:anonymous (claimed, written by manager canarist-cli)"
        assert paused["history"][-1]["reason"] == f"paused by {by}"
        deadline = time.time() + 7  # two intervals: an unpaused rollout would have analysed and moved
        while time.time() < deadline:
            status = w.status()
            assert (status["phase"], status["canaryWeight"], status["currentStep"]) == (
                "Paused",
                weight,
                paused["currentStep"],
            )
            time.sleep(0.25)
        assert w.vs_writes() == writes and w.mesh.weight() == weight

        w.canarist("resume", NAME, "-n", NS)
        wait_for("the resume", lambda: w.status().get("phase") == "Progressing", 10)
        # the resume is recorded with who asked; a loaded machine may see the next advance already
        resumed = [t for t in w.status()["history"] if t["action"] == "Resume"]
        assert resumed and resumed[-1]["reason"] == f"resumed by {by}"

        w.canarist("abort", NAME)
        wait_for("the rollback", lambda: w.status().get("phase") == "Failed", 10)
    finally:
        stop.set()
        loop.join(timeout=15)
    assert not loop.is_alive()
    status = w.status()
    assert w.mesh.weight() == 0  # 100% stable
    history = [(t["action"], t["reason"]) for t in status["history"]]
    assert ("Pause", f"paused by {by}") in history and ("Resume", f"resumed by {by}") in history
    assert ("Rollback", f"aborted by {by}") in history
    assert history[-1][0] == "Complete" and status["phase"] == "Failed"
    weights = check_writes(w.api)
    assert weights[-1] == 0 and non_decreasing(weights[:-1]), weights
    events = [o for (group, plural, *_), o in w.api.objects.items() if plural == "events"]
    assert any(f"aborted by {by}" in str(e) for e in events)


# --- (c) two controllers, one Lease -----------------------------------------------------------


def test_two_controllers_on_one_lease_exactly_one_acts_and_the_other_takes_over(world: Callable[[], World]) -> None:
    w = world()
    a, b = w.manager(w.elector("replica-a")), w.manager(w.elector("replica-b"))
    KubeCluster(w.api.make_client()).create_or_update_rollout(policy(steps=[20, 50]))  # as a person applies it
    acted: dict[str, int] = {"a": 0, "b": 0}

    def tick(name: str, manager: Manager) -> None:
        """One tick; whatever it wrote to rollouts or routes must come from the leader."""
        start = len(w.api.log)
        outcomes = manager.tick()
        writes = [r for r in w.api.log[start:] if r.method != "GET" and "/leases/" not in r.path]
        if not manager.leader:
            assert not outcomes and not writes, (name, outcomes, [r.path for r in writes])
        acted[name] += len(writes)

    def round_of(*alive: tuple[str, Manager]) -> None:
        for name, manager in alive:
            tick(name, manager)
        leaders = sum(m.leader for _, m in alive)
        assert leaders == (1 if len(alive) == 2 else leaders) and leaders <= 1  # never two; one while both run

    # a acts first: it creates the Lease and leads; b follows
    round_of(("a", a), ("b", b))
    assert a.leader and not b.leader
    wait_for("the first step", lambda: w.status().get("canaryWeight") == 20, 20, lambda: round_of(("a", a), ("b", b)))
    wait_for("an analysis", lambda: bool(w.status().get("lastAnalysisAt")), 20, lambda: round_of(("a", a), ("b", b)))
    assert acted["a"] > 0 and acted["b"] == 0

    # a dies without releasing the Lease: b waits for it to expire (2 s on b's clock), then leads
    died = time.time()
    wait_for("the take-over", lambda: b.leader, 10, lambda: round_of(("b", b)))
    took_over = time.time() - died
    assert 1.0 <= took_over <= 5.0, took_over
    lease = w.api.get("coordination.k8s.io", "leases", NS, LEASE)
    assert lease is not None and lease["spec"]["holderIdentity"] == "replica-b"
    assert lease["spec"]["leaseTransitions"] == 1

    # a comes back with its stale belief: it follows and never acts again
    before = acted["a"]
    wait_for(
        "the promotion",
        lambda: w.status().get("phase") in ("Succeeded", "Failed"),
        60,
        lambda: round_of(("a", a), ("b", b)),
    )
    assert b.leader and not a.leader and acted["a"] == before and acted["b"] > 0
    status = w.status()
    assert status["phase"] == "Succeeded", status["message"]
    assert [t["action"] for t in status["history"]] == ["Start", "Advance", "Promote", "Complete"]
    assert check_writes(w.api) == [20, 50, 100]
    assert b.elector is not None
    b.elector.release()
    lease = w.api.get("coordination.k8s.io", "leases", NS, LEASE)
    assert lease is not None and lease["spec"]["holderIdentity"] == ""


# --- (d) killed at every step boundary --------------------------------------------------------


def test_a_controller_killed_at_every_step_boundary_resumes_from_the_status(world: Callable[[], World]) -> None:
    w = world()
    manager = w.manager()
    manager.cluster.create_or_update_rollout(policy(steps=[20, 50]))
    killed_at: list[tuple[str, int]] = []

    def tick() -> None:
        nonlocal manager
        outcomes = manager.tick()
        if any(o.action not in (Action.HOLD, Action.NONE) for o in outcomes):
            status = w.status()
            killed_at.append((status["phase"], status["currentStep"]))
            manager.cluster.api_client.close()  # type: ignore[attr-defined]
            manager = w.manager()  # a new process: nothing in memory, everything from the API

    wait_for("the end", lambda: w.status().get("phase") in ("Succeeded", "Failed"), 90, tick)
    status = w.status()
    assert status["phase"] == "Succeeded", status["message"]
    assert killed_at == [("Progressing", 0), ("Progressing", 1), ("Promoting", 2), ("Succeeded", 2)]
    assert len(w.managers) == 5
    assert [t["action"] for t in status["history"]] == ["Start", "Advance", "Promote", "Complete"]
    assert check_writes(w.api) == [20, 50, 100]  # non-decreasing, and no write repeated by a new controller


# --- killed between the route write and the status write -------------------------------------


def test_a_controller_killed_between_routes_and_status_never_applies_an_older_weight() -> None:
    with local_api_server() as api:
        api.seed(copy.deepcopy(POLICY))
        labels = POLICY["spec"]["canary"]["labels"]
        pod = ready_pod("v42")
        pod["metadata"].update(namespace=POLICY["metadata"]["namespace"], labels=labels)
        api.seed(pod)
        namespace, name = POLICY["metadata"]["namespace"], POLICY["metadata"]["name"]
        traffic = Synthetic()  # deterministic: this test needs no Prometheus
        for tick in range(8):
            cluster = KubeCluster(api.make_client(), propagation_delay=0.0)  # a new controller each time
            obj = cluster.get_rollout(namespace, name)
            if tick == 5:  # this reconcile advances 1% -> 5%: it dies after the routes, before the status
                api.fail("/status", 503, method="PUT")
            traffic.down = tick == 6  # and the next look finds no data
            reconcile(obj, cluster, traffic, ENV, now=T0 + 60 * tick + 1)
        weights = check_writes(api)
        assert weights[:2] == [1, 5]
        assert non_decreasing(weights), weights
