"""The chaos soak: whole rollouts driven by the real controller through a faulty Kubernetes API.

One run (:func:`run_soak`): a local API stand-in with a seeded :class:`FaultSchedule` and an
:class:`InvariantChecker` on every write; ``rollouts`` ModelRollouts in one namespace, a mix of
good, regressing and SLO-breaching canaries (:mod:`controller.sandbox.chaos.truth`), a third of them
on the user's own routes (adopted); the real :class:`~controller.manager.loop.Manager` and
:class:`~controller.edges.kube.KubeCluster` (the official client over HTTP) with a
:class:`TruthMetrics` source that splits each window's traffic by the routes as stored
(:class:`RouteTimeline`), on a virtual clock that moves ``tick`` seconds per pass, so an hour of
rollouts takes seconds. Every few passes the manager also watches (one real second). With
``metrics`` set (:class:`~controller.sandbox.chaos.promsoak.PrometheusEdge`), the metrics come
through the real Prometheus edge from a real Prometheus behind a seeded fault proxy instead, in real
time (``tick`` and ``minutes`` then count real time).

Crashes: before any edge call, with probability ``crash_rate``, the controller "dies"
(:class:`ControllerCrash`, which no ``except Exception`` catches): the pass is abandoned wherever it
was, and a fresh Manager with a fresh client takes over, knowing only what the API says (as after
``kill -9``). When every rollout has ended (or the time is up), their outcomes are judged against
their truth; then every rollout is deleted and the adopted objects must be the user's again.

Replicas: with ``replicas`` > 1, that many controllers share one Lease instead
(:mod:`controller.sandbox.chaos.replicas`): they stall past their lease and take over from each
other, and :mod:`controller.sandbox.chaos.leases` judges every write by the stored Lease as well.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

from controller.api.model import GROUP, PLURAL, VERSION
from controller.api.times import parse_time
from controller.edges.kube.client import retry_policy
from controller.engine.ports import Cluster
from controller.manager.loop import Elector, Manager
from controller.sandbox.chaos.crashes import ControllerCrash, CrashingCluster
from controller.sandbox.chaos.faults import FaultSchedule
from controller.sandbox.chaos.invariants import InvariantChecker, restore_problem, wrong_outcome
from controller.sandbox.chaos.promsoak import PrometheusEdge, RealClock
from controller.sandbox.chaos.replicas import ReplicaSet, both
from controller.sandbox.chaos.truth import (
    INTERVAL,
    NAMESPACE,
    TRUTHS,
    RouteTimeline,
    TruthMetrics,
    breach_minute,
    policy,
    ready_pods,
    rollout_name,
    user_objects,
)
from controller.sandbox.chaos.workload import Workload
from controller.sandbox.localapi import LocalApiServer, local_api_server
from controller.traffic.templating import default_environment

T0 = 1_800_000_000.0  # on the minute grid
FINAL_PHASES = ("Succeeded", "Failed")


@dataclass
class VirtualClock:
    now: float = T0

    def __call__(self) -> float:
        return self.now


@dataclass(frozen=True)
class SoakConfig:
    rollouts: int = 6
    seed: int = 0
    #: Probability that a request gets a fault (a watch: :attr:`FaultSchedule.watch_rate`); 0: none.
    fault_rate: float = 0.05
    #: Probability that the controller dies before an edge call.
    crash_rate: float = 0.01
    tick: float = 30.0
    #: Virtual minutes the rollouts get to end.
    minutes: float = 90.0
    #: The manager watches (one real second) every this many passes; 0: never.
    watch_every: int = 8
    client_timeout: float = 0.5
    #: Where the metrics come from: None, the in-process TruthMetrics on the virtual clock.
    metrics: PrometheusEdge | None = None
    #: Probability of a workload event per pass (times the share of rollouts under way), and of
    #: istiod reporting an Istio write late (:mod:`controller.sandbox.chaos.workload`); 0: none.
    workload_rate: float = 0.0
    #: Controllers on one Lease (controller.sandbox.chaos.replicas: stalls and take-overs); 1: no election.
    replicas: int = 1


@dataclass
class SoakResult:
    config: SoakConfig
    truths: dict[str, str]
    adopted: list[str]
    faults: Counter[str]
    restarts: int
    writes_checked: int
    violations: list[str]
    #: A rollout that ended against its truth (a good canary rolled back, a bad one promoted).
    wrong_outcomes: list[str]
    #: A rollout that had not ended when the time was up (liveness, not safety).
    unfinished: list[str]
    #: A deleted rollout not released, or an adopted object not restored to the user's.
    not_restored: list[str]
    #: Virtual minutes from the start to each rollout's end (absent: it never ended).
    minutes_to_end: dict[str, float]
    #: Per SLO-breaching canary rolled back: seconds from a whole window of the breach being readable
    #: to the rollback (0: the first look that could read it rolled back).
    breach_seconds: dict[str, float]
    seconds: float
    phases: dict[str, str] = field(default_factory=dict)
    #: With replicas: Lease take-overs, and replicas stalled past their lease.
    lease_transitions: int = 0
    stalls: int = 0


def truth_of(index: int, seed: int) -> str:
    """The mix: good, regressing and SLO-breaching canaries in turn, the order shifted by the seed."""
    return TRUTHS[(index + seed) % len(TRUTHS)]


def run_soak(config: SoakConfig) -> SoakResult:
    """One seeded run (see the module docstring)."""
    began = time.monotonic()
    checker = InvariantChecker()
    schedule = FaultSchedule(config.seed, rate=config.fault_rate, client_timeout=config.client_timeout)
    crash_rng = random.Random(f"crash-{config.seed}")
    order_rng = random.Random(f"order-{config.seed}")  # each fresh controller's order of equally due rollouts
    truths = {f"{NAMESPACE}/{rollout_name(i)}": truth_of(i, config.seed) for i in range(config.rollouts)}
    onsets = {  # the live truth behind Prometheus breaches from the start, in real time: no onsets there
        f"{NAMESPACE}/{rollout_name(i)}": T0 + INTERVAL * breach_minute(i, config.seed)
        for i in range(config.rollouts)
        if truth_of(i, config.seed) == "slo-breach" and config.metrics is None
    }
    checker.breaches, checker.interval = onsets, INTERVAL
    adopted = [rollout_name(i) for i in range(config.rollouts) if (i + config.seed) % 3 == 1]
    with (
        local_api_server() as api,
        config.metrics.open(api, truths, config.seed) if config.metrics else nullcontext() as prom,
    ):
        clock = prom.clock if prom else VirtualClock()
        timeline = RouteTimeline(api, lambda: clock.now)  # the truth follows the routes as stored
        api.write_observer = both(checker, timeline)
        checker.serving_since = timeline.serving_since
        originals = _seed(api, config.rollouts, adopted, prom.policy if prom else policy)
        if config.fault_rate > 0:
            api.request_filter = schedule
        workload = Workload(api, config.seed, rate=config.workload_rate, tick=config.tick)

        def fresh(cluster: Cluster | None = None, elector: Elector | None = None) -> Manager:
            if cluster is None:
                client = api.make_client(retries=retry_policy())
                cluster = CrashingCluster(
                    client,
                    rng=crash_rng,
                    crash_rate=config.crash_rate,
                    request_timeout=config.client_timeout,
                    **workload.edge_settings(),
                )
            metrics = prom.source() if prom else TruthMetrics(truths, onsets, routes=timeline)
            return Manager(
                cluster, metrics, default_environment(), clock, namespace=NAMESPACE, elector=elector, rng=order_rng
            )

        manager: Manager | ReplicaSet
        if config.replicas > 1:  # they judge who wrote, too
            manager = ReplicaSet(api, clock, fresh, NAMESPACE, config.replicas, config.seed, config.tick,
                                 config.crash_rate, config.client_timeout,
                                 edge_settings=workload.edge_settings())  # fmt: skip
            api.write_observer = both(checker, timeline, manager.checker)
        else:
            manager = fresh()
        manager, ended, restarts = _drive(
            api, manager, fresh, clock=clock, config=config, workload=workload, rollouts=len(truths)
        )
        phases = _phases(api)
        unfinished = [
            f"{key}: {truths[key]} canary still {phase}"
            for key, phase in phases.items()
            if key not in ended and key not in workload.deleted
        ]
        breach_seconds = {key: _rollback_after(api, key, checker) for key in checker.breaches}
        wrong = [
            f"{key}: {problem}"
            for key in ended
            if key not in workload.deleted and (problem := wrong_outcome(truths[key], _rollout(api, key))) is not None
        ]
        missing_data_passed = prom.problems(api) if prom else []
        restarts += _delete_all(api, manager, clock, config, fresh)
        not_restored = _restored(api, originals)
        api.request_filter = None
    replicas = manager if isinstance(manager, ReplicaSet) else None
    return SoakResult(
        config=config,
        truths=truths,
        adopted=adopted,
        faults=schedule.injected + workload.injected + (prom.faults if prom else Counter()),
        restarts=restarts + (replicas.restarts if replicas else 0),
        writes_checked=checker.writes,
        violations=[str(v) for v in checker.violations + (replicas.checker.violations if replicas else [])]
        + missing_data_passed,
        wrong_outcomes=wrong,
        unfinished=unfinished,
        not_restored=not_restored,
        minutes_to_end=ended,
        breach_seconds={key: seconds for key, seconds in breach_seconds.items() if seconds is not None},
        seconds=time.monotonic() - began,
        phases=phases,
        lease_transitions=replicas.checker.transitions if replicas else 0,
        stalls=replicas.stalls if replicas else 0,
    )


def _drive(
    api: LocalApiServer,
    manager: Manager | ReplicaSet,
    fresh: Callable[[], Manager],
    *,
    clock: VirtualClock | RealClock,
    config: SoakConfig,
    workload: Workload,
    rollouts: int,
) -> tuple[Manager | ReplicaSet, dict[str, float], int]:
    """Pass after pass (a crashed controller replaced by a fresh one) until every rollout ended or was
    deleted, or the run's minutes are up: the manager then, the minutes to each end, and the restarts."""
    start, passes, restarts = clock.now, 0, 0
    ended: dict[str, float] = {}
    while clock.now < start + config.minutes * 60 and len(ended.keys() | workload.deleted) < rollouts:
        try:
            manager.tick()
            if config.watch_every and passes % config.watch_every == config.watch_every - 1:
                manager.watch(1)
        except ControllerCrash:
            restarts += 1
            manager = fresh()
        passes += 1
        for key, phase in _phases(api).items():
            if phase in FINAL_PHASES and key not in ended:
                ended[key] = (clock.now - start) / 60
        workload.step(clock.now)
        clock.now += config.tick
    return manager, ended, restarts


def _seed(
    api: LocalApiServer, rollouts: int, adopted: list[str], policy: Callable[[int], dict[str, Any]]
) -> dict[tuple[str, str], dict[str, Any]]:
    """Pods, the user's own routes (returned as stored, by (plural, name)) and the rollouts' ``policy``."""
    originals = {}
    for index in range(rollouts):
        for pod in ready_pods(index):
            api.seed(pod)
        if rollout_name(index) in adopted:
            for obj in user_objects(index):
                stored = api.seed(obj)
                originals[(f"{obj['kind'].lower()}s", stored["metadata"]["name"])] = stored
        api.seed(policy(index))
    return originals


def _rollout(api: LocalApiServer, key: str) -> dict[str, Any] | None:
    namespace, _, name = key.partition("/")
    return api.get(GROUP, PLURAL, namespace, name)


def _rollback_after(api: LocalApiServer, key: str, checker: InvariantChecker) -> float | None:
    """Seconds from the breach being readable (:meth:`InvariantChecker.readable`) to the rollout's
    recorded Rollback (0: at or before it; None: not rolled back)."""
    history = ((_rollout(api, key) or {}).get("status") or {}).get("history") or []
    rollbacks = [i for i, t in enumerate(history) if t.get("action") == "Rollback"]
    if not rollbacks:
        return None
    readable = checker.readable(key, history[: rollbacks[0]])
    at = parse_time(history[rollbacks[0]].get("at"), naive_as_utc=True)
    if readable is None or at is None:
        return None
    return max(at - readable, 0.0)  # earlier: a part of a window was enough


def _phases(api: LocalApiServer) -> dict[str, str]:
    with api.cond:
        return {
            f"{k[2]}/{k[3]}": str((o.get("status") or {}).get("phase"))
            for k, o in api.objects.items()
            if k[:2] == (GROUP, PLURAL)
        }


def _delete_all(
    api: LocalApiServer,
    manager: Manager | ReplicaSet,
    clock: VirtualClock | RealClock,
    config: SoakConfig,
    fresh: Callable[[], Manager],
) -> int:
    """Delete every rollout (as ``kubectl delete`` would) and let the controller release their routes;
    returns the restarts on the way. Rollouts still there after 40 passes are left for the caller to find."""
    for name in sorted(_phases(api)):
        path = f"/apis/{GROUP}/{VERSION}/namespaces/{NAMESPACE}/{PLURAL}/{name.partition('/')[2]}"
        api.handle("DELETE", path, {}, None, "")
    restarts = 0
    for _ in range(40):
        if not _phases(api):
            break
        try:
            if config.metrics is not None:  # real time: an ended rollout's requeue (5 minutes) is past the run,
                manager.watch(1)  # so the deletion reaches the controller as the watch event it is
            manager.tick()
        except ControllerCrash:
            restarts += 1
            manager = fresh()
        clock.now += config.tick
    return restarts


def _restored(api: LocalApiServer, originals: dict[tuple[str, str], dict[str, Any]]) -> list[str]:
    """The rollouts not released and the adopted objects not restored, one line each."""
    problems = [f"{key}: still there after deletion" for key in _phases(api)]
    for (plural, name), original in sorted(originals.items()):
        current = api.get("networking.istio.io", plural, NAMESPACE, name)
        if (problem := restore_problem(original, current)) is not None:
            problems.append(f"{plural} {NAMESPACE}/{name} not restored: {problem}")
    return problems
