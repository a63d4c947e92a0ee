"""Sharded replicas for real: several ``canarist run --shards`` processes, many rollouts, one killed.

The world: the local API stand-in (in this process, so its write observers see every write and
who made it), live Istio request counters for every rollout whose split follows the rollout's
stored VirtualService (a small exporter here, scraped every second by Debian's Prometheus), ready
pods, and ``replicas`` controller processes, each authenticating as its own user. After
``kill_after_s`` the replica holding the most shards is killed with SIGKILL; the others must take
its shards over once their Leases expire and finish its rollouts.

Judged on every write (:class:`~controller.sandbox.chaos.leases.LeaseChecker` with a guard per
shard, and :class:`~controller.sandbox.chaos.invariants.InvariantChecker`): a replica writes a
rollout or its routes only while the stored Lease of the rollout's shard names it and its term is
not over, and a shard passes to another replica only once its holder's term ended (or it handed it
back). At the end every rollout must have Succeeded. ``python -m bench.shards`` runs it at 300
rollouts; tests/test_shards_process.py a short version.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter as Tally
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, start_http_server

from controller.edges.kube.shards import SHARD_PREFIX, shard_lease_name, shard_of
from controller.sandbox.chaos.invariants import ISTIO, ROLLOUTS, InvariantChecker, Key, canary_weight
from controller.sandbox.chaos.leases import LeaseChecker
from controller.sandbox.chaos.replicas import both
from controller.sandbox.demo.processes import Prometheus, free_port
from controller.sandbox.localapi import LocalApiServer, local_api_server, ready_pod

NAMESPACE = "fleet"
CANARIST = Path(sys.executable).parent / "canarist"
TERMINAL = ("Succeeded", "Failed")


@dataclass(frozen=True)
class ShardSoakConfig:
    rollouts: int = 24
    replicas: int = 3
    shards: int = 16
    interval_s: int = 5
    lease_seconds: int = 10
    #: Seconds after the rollouts are applied when the replica holding the most shards is killed.
    kill_after_s: float = 15.0
    deadline_s: float = 240.0
    #: Requests per second per rollout (its stable and canary together).
    rps: int = 400
    seed: int = 0
    #: False: the replicas run without ``--shards``, each driving every rollout (the checker's
    #: negative control: it must see writes without the shard's Lease).
    sharded: bool = True


@dataclass
class ShardSoakResult:
    config: ShardSoakConfig
    seconds: float = 0.0
    phases: dict[str, int] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    judged_writes: int = 0
    shard_transitions: int = 0
    killed: str = ""
    shards_of_killed: int = 0
    #: Rollouts whose writes came from more than one replica (taken over from the killed one).
    taken_over: int = 0
    writes_by_replica: dict[str, int] = field(default_factory=dict)
    logs: dict[str, str] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return not self.violations and self.phases == {"Succeeded": self.config.rollouts}

    def summary(self) -> dict[str, Any]:
        return {
            "rollouts": self.config.rollouts,
            "replicas": self.config.replicas,
            "shards": self.config.shards,
            "seconds": round(self.seconds, 1),
            "phases": self.phases,
            "violations": len(self.violations),
            "judged_writes": self.judged_writes,
            "shard_transitions": self.shard_transitions,
            "killed": self.killed,
            "shards_of_killed": self.shards_of_killed,
            "rollouts_taken_over": self.taken_over,
            "writes_by_replica": self.writes_by_replica,
        }


def name_of(index: int) -> str:
    return f"model-{index:03d}"


def policy(index: int, interval_s: int) -> dict[str, Any]:
    """Rollout ``index``: its own Service of the same name, one step at 50 %, judged on errors."""
    name = name_of(index)
    return {
        "apiVersion": "canarist.io/v1alpha1",
        "kind": "ModelRollout",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "service": {"name": name, "port": 8080},
            "stable": {"name": "v1", "labels": {"app": name, "version": "v1"}},
            "canary": {"name": "v2", "labels": {"app": name, "version": "v2"}},
            "strategy": {
                "steps": [50],
                "interval": f"{interval_s}s",
                "minRequests": 200,
                "progressDeadline": "20m",
                "onNoData": "Hold",
                "onInconclusive": "Hold",
            },
            "analysis": {
                "alpha": 0.05,
                "metrics": [
                    {"name": "errors", "kind": "IstioErrorRate", "slo": {"max": "2%"}, "margin": {"absolute": "1%"}}
                ],
            },
        },
    }


def ready_pods(index: int) -> list[dict[str, Any]]:
    name = name_of(index)
    return [ready_pod(NAMESPACE, f"{name}-{v}-0", {"app": name, "version": v}) for v in ("v1", "v2")]


def guard(key: Key, shards: int) -> str:
    """The Lease that guards ``key``: its rollout's shard (routes are named as their rollout here)."""
    return shard_lease_name(shard_of(f"{key[2]}/{key[3]}", shards))


@dataclass
class Traffic:
    """Istio's request counter for every rollout; each split follows its last written VirtualService."""

    config: ShardSoakConfig
    weights: dict[str, int] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)

    def observe(self, version: int, event: str, key: Key, obj: dict[str, Any]) -> None:
        """A write observer: the split of each VirtualService as written (none once it is deleted)."""
        if key[:2] != (ISTIO, "virtualservices") or key[2] != NAMESPACE:
            return
        index = int(key[3].rpartition("-")[2]) if key[3].startswith("model-") else -1
        if event == "DELETED" or index < 0:
            self.weights.pop(key[3], None)
            return
        self.weights[key[3]] = canary_weight(policy(index, self.config.interval_s), obj)

    def run(self, registry: CollectorRegistry) -> None:
        labels = ["reporter", "destination_service_namespace", "destination_service_name", "destination_version"]
        requests = Counter("istio_requests", "requests", [*labels, "response_code"], registry=registry)
        rng = np.random.default_rng(self.config.seed)
        tick = 0.25
        per_tick = int(self.config.rps * tick)
        while not self.stop.wait(tick):
            for index in range(self.config.rollouts):
                name = name_of(index)
                canary = int(rng.binomial(per_tick, self.weights.get(name, 0) / 100))
                for version, served in (("v1", per_tick - canary), ("v2", canary)):
                    errors = int(rng.binomial(served, 0.005))
                    common = ("destination", NAMESPACE, name, version)
                    requests.labels(*common, "200").inc(served - errors)
                    requests.labels(*common, "503").inc(errors)


@dataclass
class _Replica:
    identity: str
    process: subprocess.Popen[bytes]
    log: Path


@contextlib.contextmanager
def _world(config: ShardSoakConfig, workdir: Path) -> Iterator[tuple[LocalApiServer, Prometheus, Traffic]]:
    traffic = Traffic(config)
    registry = CollectorRegistry()
    port = free_port()
    start_http_server(port, addr="127.0.0.1", registry=registry)
    threading.Thread(target=traffic.run, args=(registry,), daemon=True).start()
    scrape = [{"job_name": "mesh", "scrape_interval": "1s", "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}]
    prometheus = Prometheus(workdir / "prometheus", scrape_configs=scrape)
    (workdir / "prometheus").mkdir(exist_ok=True)
    with local_api_server(istio_status=True) as api:  # istiod reports each route at once
        prometheus.start()
        try:
            yield api, prometheus, traffic
        finally:
            traffic.stop.set()
            prometheus.stop()


def run_shard_soak(config: ShardSoakConfig, workdir: Path | None = None) -> ShardSoakResult:
    """Run the sharded replicas to the end (see the module docstring); what happened, judged."""
    result = ShardSoakResult(config)
    with contextlib.ExitStack() as stack:
        where = workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="canarist-shards-")))
        api, prometheus, traffic = stack.enter_context(_world(config, where))
        leases = LeaseChecker(
            lambda: api.writer,
            time.time,
            guard=lambda key: guard(key, config.shards),
            judged=lambda name: name.startswith(SHARD_PREFIX),
        )
        invariants = InvariantChecker(interval=float(config.interval_s))
        writers: dict[str, Tally[str]] = {}

        def who_wrote(version: int, event: str, key: Key, obj: dict[str, Any]) -> None:
            user = api.writer.user if api.writer else None
            if key[:2] == ROLLOUTS and user in leases.replicas:
                writers.setdefault(key[3], Tally())[str(user)] += 1

        api.write_observer = both(invariants, leases, traffic.observe, who_wrote)
        for index in range(config.rollouts):
            for pod in ready_pods(index):
                api.seed(pod)
        replicas = [
            _start(api, prometheus, config, where, identity=f"replica-{n}", leases=leases)
            for n in range(config.replicas)
        ]
        stack.callback(_stop_all, replicas, result)
        began = time.monotonic()
        for index in range(config.rollouts):  # as a person applies them, once the replicas run
            api.seed(policy(index, config.interval_s))
        killed = False
        while time.monotonic() - began < config.deadline_s:
            phases = _phases(api, config.rollouts)
            if sum(phases.get(p, 0) for p in TERMINAL) == config.rollouts:
                break
            if not config.sharded and leases.violations:
                break  # the negative control has shown what it must
            if not killed and time.monotonic() - began >= config.kill_after_s:
                killed = True
                result.killed, result.shards_of_killed = _kill_busiest(replicas, leases)
            time.sleep(0.5)
        result.seconds = time.monotonic() - began
        result.phases = _phases(api, config.rollouts)
        result.violations = [str(v) for v in [*leases.violations, *invariants.violations]]
        result.judged_writes, result.shard_transitions = leases.writes, leases.transitions
        result.taken_over = sum(1 for tally in writers.values() if len(tally) > 1)
        result.writes_by_replica = dict(sum((t for t in writers.values()), Tally()))
    return result


def _start(
    api: LocalApiServer, prometheus: Prometheus, config: ShardSoakConfig, workdir: Path, *, identity: str,
    leases: LeaseChecker,
) -> _Replica:  # fmt: skip
    token = f"token-{identity}"
    api.tokens[token] = identity
    leases.replicas.add(identity)
    log = workdir / f"{identity}.log"
    kubeconfig = api.write_kubeconfig(workdir / f"kubeconfig-{identity}", token=token, namespace=NAMESPACE)
    argv = [
        str(CANARIST), "run", "--kubeconfig", str(kubeconfig), "--prometheus", prometheus.url, "-n", NAMESPACE,
        "--lease-namespace", NAMESPACE, "--lease-seconds", str(config.lease_seconds), "--identity", identity,
        "--metrics-port", "0", *(["--shards", str(config.shards)] if config.sharded else []),
    ]  # fmt: skip
    with log.open("ab") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    return _Replica(identity, process, log)


def _held_shards(leases: LeaseChecker, identity: str) -> int:
    now = time.time()
    return sum(1 for term in leases.terms.values() if term.holder == identity and term.until > now)


def _kill_busiest(replicas: list[_Replica], leases: LeaseChecker) -> tuple[str, int]:
    victim = max(replicas, key=lambda r: (_held_shards(leases, r.identity), r.identity))
    held = _held_shards(leases, victim.identity)
    os.kill(victim.process.pid, signal.SIGKILL)
    victim.process.wait()
    return victim.identity, held


def _stop_all(replicas: list[_Replica], result: ShardSoakResult) -> None:
    running = [r for r in replicas if r.process.poll() is None]
    for replica in running:
        replica.process.send_signal(signal.SIGTERM)  # each hands its shards back
    for replica in running:
        try:
            replica.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            replica.process.kill()
    result.logs = {r.identity: r.log.read_text(errors="replace")[-4000:] for r in replicas if r.log.exists()}


def _phases(api: LocalApiServer, rollouts: int) -> dict[str, int]:
    tally: Tally[str] = Tally()
    for index in range(rollouts):
        stored = api.get(ROLLOUTS[0], ROLLOUTS[1], NAMESPACE, name_of(index)) or {}
        tally[str((stored.get("status") or {}).get("phase") or "None")] += 1
    return dict(tally)
