"""``canarist demo``: a whole model rollout on one machine, with real parts, decided by the real controller.

It starts, on loopback ports it picks: two versions of a fraud classifier trained at start (each an
HTTP model server exporting what an Istio sidecar reports; with ``serving="triton"`` each passes its
requests to its own real Triton, which serves the model, and the rollout has a pre-traffic gate on
them), haproxy as the data plane, a load
generator that reports late ground-truth labels, Debian's Prometheus scraping all of it, and the
local stand-in for the Kubernetes API (:mod:`controller.sandbox.localapi`). The controller is the same
:class:`~controller.manager.loop.Manager` and reconcile code as in a cluster, speaking to that stand-in
through the official client; a mesh agent plays istiod and applies each VirtualService it writes to
haproxy. Everything started is stopped by PID at the end, also on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import yaml

from controller.api.status import Action, Phase, RolloutStatus
from controller.edges.kube import KubeCluster
from controller.edges.prometheus import PrometheusClient, PrometheusSettings
from controller.manager.loop import Manager
from controller.manager.wiring import PrometheusSource, gate_probe
from controller.report.page import build_report
from controller.sandbox.demo import model
from controller.sandbox.demo.haproxy import Haproxy
from controller.sandbox.demo.mesh import MeshAgent, SplitCheck
from controller.sandbox.demo.processes import ManagedProcess, Prometheus, StartError, Supervisor, free_port, http_ok
from controller.sandbox.demo.scenarios import (
    CANARY,
    COMPUTE_MS,
    NAME,
    NAMESPACE,
    SERVICE,
    STABLE,
    Scenario,
    demo_policy,
    interval_seconds,
)
from controller.sandbox.demo.server import SCORE_BUCKETS, SCORE_METRIC
from controller.sandbox.demo.triton import TritonInstall, TritonServer, fraud_model, inference_count
from controller.sandbox.localapi import LocalApiServer, ready_pod
from controller.traffic.templating import default_environment

TERMINAL = (Phase.SUCCEEDED, Phase.FAILED)
DECIDING = (Action.PROMOTE, Action.ROLLBACK)


@dataclass(frozen=True)
class DemoOptions:
    scenario: Scenario
    speed: float = 1.0
    rate: float = 150.0  # requests per second through haproxy
    labelled_share: float = 0.8  # share of predictions whose true label comes back
    seed: int = 0
    out: Path = Path("canarist-demo")
    budget: float = 170.0  # seconds the rollout may take before the demo gives up
    serving: str = "builtin"  # or "triton": each version served by its own Triton (scenarios.SERVING)

    @property
    def kubeconfig(self) -> Path:
        """Where the demo writes a kubeconfig for its embedded API while it runs (kubectl, ``canarist``)."""
        return self.out / "kubeconfig"

    @property
    def on_triton(self) -> bool:
        """Whether the versions are served by Triton (the bad-signature scenario always is)."""
        return self.serving == "triton" or self.scenario.signature_change


@dataclass
class DemoResult:
    """What happened, with the numbers a newcomer (and a test) checks."""

    scenario: str
    phase: str
    expected: bool
    reason: str
    seconds_to_decide: float | None
    canary_requests_to_decide: int | None
    splits: list[SplitCheck]
    refused_routes: list[str]
    loadgen: dict[str, Any]
    report: Path | None
    pids: list[int]
    rollout: dict[str, Any] = field(default_factory=dict)
    broke_at: float | None = None
    #: Served by Triton: each version's inferences by Triton's own count (nv_inference_count).
    triton_inferences: dict[str, int] | None = None

    @property
    def routing_failures(self) -> int:
        return int(self.loadgen.get("routing_failures", -1))


@dataclass
class World:
    """The running parts, for the view and the loop."""

    api: LocalApiServer
    haproxy: Haproxy
    mesh: MeshAgent
    manager: Manager
    canary_admin: str  # the canary server's base URL, for the scenario's fault
    started: float
    tritons: dict[str, TritonServer] = field(default_factory=dict)

    def rollout(self) -> dict[str, Any]:
        return self.api.get("canarist.io", "modelrollouts", NAMESPACE, NAME) or {}


#: Shows the world and the rollout object just read (the demo's live view).
Show = Callable[["World", dict[str, Any]], None]


def run_demo(options: DemoOptions, *, show: Show | None = None) -> DemoResult:
    """Run one scenario to its decision and return what happened; every process is stopped after."""
    with tempfile.TemporaryDirectory(prefix="canarist-demo-") as tmp, Supervisor() as supervisor, _interruptible():
        work = Path(tmp)
        world, loadgen = _start(options, work, supervisor)
        broke_at = _drive(world, options, show)
        obj = world.rollout()
        summary = _stop_loadgen(loadgen, work / "loadgen.json")
        inferences = _inferences(world)
        splits = world.mesh.checks()
        report = build_report(obj, options.out).index if obj.get("status") else None
        status = RolloutStatus.read(obj.get("status"))
        result = DemoResult(
            scenario=options.scenario.name,
            phase=status.phase.value if status.phase is not None else "Unknown",
            expected=False,
            reason=_final_reason(status),
            seconds_to_decide=_seconds_to_decide(status),
            canary_requests_to_decide=_canary_requests_to_decide(world),
            splits=splits,
            refused_routes=list(world.mesh.refused),
            loadgen=summary,
            report=report,
            pids=[
                *supervisor.pids(),
                *([world.haproxy.pid] if world.haproxy.pid else []),
                *(t.process.pid for t in world.tritons.values() if t.process is not None and t.process.pid),
            ],
            rollout=obj,
            broke_at=broke_at,
            triton_inferences=inferences,
        )
        result.expected = result.phase == options.scenario.expected_phase
    return result


def _start(options: DemoOptions, work: Path, supervisor: Supervisor) -> tuple[World, ManagedProcess]:
    scenario = options.scenario
    rng = np.random.default_rng(options.seed)
    features, labels = model.generate(rng, 20_000)
    stable_model = model.train(features, labels, seed=options.seed)
    canary_model = (
        model.train_degraded(features, labels, seed=options.seed, mislabel_rate=scenario.mislabel_rate)
        if scenario.mislabel_rate > 0
        else stable_model
    )
    stable_model.save(work / "v1.json")
    canary_model.save(work / "v2.json")

    tritons = _start_tritons(work, supervisor, stable_model, canary_model, scenario) if options.on_triton else {}
    ports = {STABLE: free_port(), CANARY: free_port()}
    for version, path, slowdown, errors in (
        (STABLE, work / "v1.json", 1.0, 0.0),
        (CANARY, work / "v2.json", scenario.slowdown, scenario.error_rate),
    ):
        argv = [
            sys.executable, "-m", "controller.sandbox.demo.server", "--version", version, "--port", str(ports[version]),
            "--model", str(path), "--service", SERVICE, "--namespace", NAMESPACE, "--slowdown", str(slowdown),
            "--error-rate", str(errors), "--seed", str(options.seed + len(version)),
            *(["--triton", tritons[version].url, "--no-score-histogram"] if tritons else []),
            *(["--compute-ms", str(COMPUTE_MS * (scenario.gpu_cost if version == CANARY else 1.0))]
              if scenario.gpu_cost is not None else []),
        ]  # fmt: skip
        supervisor.start(ManagedProcess(f"model {version}", argv, work / f"{version}.log"), _healthy(ports[version]))

    haproxy = Haproxy(
        work / "haproxy", frontend_port=free_port(), servers=ports, weights={STABLE: 100, CANARY: 0}
    ).start()
    supervisor.on_stop(haproxy.stop)

    labels_port = free_port()
    label_delay = max(2.0 / options.speed, 0.2)
    argv = [
        sys.executable, "-m", "controller.sandbox.demo.loadgen", "--target", f"http://127.0.0.1:{haproxy.frontend_port}",
        "--rate", str(options.rate), "--metrics-port", str(labels_port),
        "--labelled-share", str(options.labelled_share), "--label-delay", str(label_delay),
        "--seed", str(options.seed), "--summary", str(work / "loadgen.json"), "--versions", f"{STABLE},{CANARY}",
    ]  # fmt: skip
    loadgen = supervisor.start(
        ManagedProcess("load generator", argv, work / "loadgen.log"),
        lambda: http_ok(f"http://127.0.0.1:{labels_port}/metrics"),
    )

    jobs = {"mesh": [f"127.0.0.1:{p}" for p in ports.values()], "labels": [f"127.0.0.1:{labels_port}"]}
    # Each target carries the namespace label Kubernetes service discovery would give it: the demo's
    # CustomRatio is scoped to the rollout's namespace through it.
    scrape = [
        {"job_name": job, "static_configs": [{"targets": targets, "labels": {"namespace": NAMESPACE}}]}
        for job, targets in jobs.items()
    ]
    if tritons:  # Triton's own metrics, per pod as the scrape configuration labels them
        pods = [
            {"targets": [t.metrics_target], "labels": {"namespace": NAMESPACE, "pod": f"{SERVICE}-{v}-0", "version": v}}
            for v, t in tritons.items()
        ]
        scrape.append({"job_name": "triton", "static_configs": pods})
    prometheus = Prometheus(work / "prometheus", scrape_configs=scrape, scrape_interval="1s").start(supervisor)

    _wait_scraped(prometheus.url, targets=sum(len(t) for t in jobs.values()) + len(tritons))

    api = LocalApiServer().start()
    supervisor.on_stop(api.stop)
    options.out.mkdir(parents=True, exist_ok=True)  # watched and steered from another terminal while it runs
    kubeconfig = api.write_kubeconfig(options.kubeconfig, namespace=NAMESPACE)
    supervisor.on_stop(lambda: kubeconfig.unlink(missing_ok=True))  # its API is gone with the demo
    for version in (STABLE, CANARY):
        api.seed(_ready_pod(version))
    mesh = MeshAgent(api, haproxy, NAMESPACE, NAME)
    mesh.begin({STABLE: 100, CANARY: 0})
    supervisor.on_stop(mesh.start())

    cluster = KubeCluster(api.api_client, propagation_delay=0.0)
    source = PrometheusSource(PrometheusClient(PrometheusSettings(url=prometheus.url, timeout=5.0)))
    manager = Manager(cluster, source, default_environment(), time.time, namespace=NAMESPACE, gates=gate_probe())
    policy = demo_policy(
        options.speed, _gate(tritons, features[:1]) if tritons else None, gpu_cost=scenario.gpu_cost is not None
    )
    (work / "rollout.yaml").write_text(yaml.safe_dump(policy, sort_keys=False))
    cluster.create_or_update_rollout(policy)
    canary_admin = f"http://127.0.0.1:{ports[CANARY]}"
    return World(api, haproxy, mesh, manager, canary_admin, time.time(), tritons), loadgen


def _inferences(world: World) -> dict[str, int] | None:
    """Each version's inferences by its Triton's own count; None when not on Triton or a count is unreadable."""
    try:
        return {v: inference_count(t) for v, t in world.tritons.items()} if world.tritons else None
    except OSError:
        return None


def _start_tritons(
    work: Path, supervisor: Supervisor, stable: model.Model, canary: model.Model, scenario: Scenario
) -> dict[str, TritonServer]:
    """A Triton per version, each serving the fraud model as its pod would; the bad-signature canary's
    config names its output otherwise."""
    install = TritonInstall.find()
    tritons = {}
    for version, trained, output in (
        (STABLE, stable, "score"),
        (CANARY, canary, "probability" if scenario.signature_change else "score"),
    ):
        scores = (SCORE_METRIC, {"model": SERVICE}, SCORE_BUCKETS)  # the scrape adds namespace, pod and version
        model = fraud_model(trained.to_json(), output=output, scores=scores)
        server = TritonServer(install, work / f"triton-{version}", [model])
        supervisor.on_stop(server.stop)
        tritons[version] = server.start()
    return tritons


def _gate(tritons: dict[str, TritonServer], golden: np.ndarray) -> dict[str, Any]:
    """The demo policy's spec.gate: the canary's Triton against the stable's, on one golden transaction
    (no error, a score of the right shape, finite)."""
    row = [float(v) for v in golden[0]]
    request = {
        "name": "one-transaction",
        "inputs": {"features": {"datatype": "FP32", "shape": [1, len(row)], "data": row}},
        "outputs": {"score": {"shape": [1]}},
    }
    triton = {"url": tritons[CANARY].url, "stableUrl": tritons[STABLE].url, "model": "fraud", "timeout": "5s"}
    return {"triton": {**triton, "goldenRequests": [request]}}


def _drive(world: World, options: DemoOptions, show: Show | None) -> float | None:
    """Reconcile until the rollout ends (or the budget is spent); break the canary when the scenario says."""
    scenario = options.scenario
    deadline = world.started + options.budget
    broke_at = None
    settle = interval_seconds(options.speed)
    while time.time() < deadline:
        world.manager.tick()
        obj = world.rollout()
        status = RolloutStatus.read(obj.get("status"))
        if show is not None:
            show(world, obj)
        if status.phase in TERMINAL:
            break
        if (
            broke_at is None
            and scenario.breaks_at_step is not None
            and status.phase is Phase.PROGRESSING
            and (status.current_step or 0) >= scenario.breaks_at_step
            and time.time() - _step_started(status) >= settle / 2
            and 0.05 <= (time.time() % settle) / settle <= 0.3  # early in a window: the next look sees it
        ):
            _inject(world.canary_admin, scenario.break_error_rate)
            broke_at = time.time()
        time.sleep(min(world.manager.next_wakeup(), 0.25))
    return broke_at


def _wait_scraped(url: str, *, targets: int, timeout: float = 20.0) -> None:
    """Until Prometheus has scraped every target twice, so the first window has data on both sides."""
    query = urllib.parse.urlencode({"query": "count(count_over_time(up[1m]) >= 2)"})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError, KeyError, IndexError):
            with urllib.request.urlopen(f"{url}/api/v1/query?{query}", timeout=2) as answer:
                result = json.load(answer)["data"]["result"]
            if result and int(float(result[0]["value"][1])) >= targets:
                return
        time.sleep(0.2)
    raise StartError(f"Prometheus at {url} did not scrape all {targets} targets within {timeout:.0f}s")


def _healthy(port: int) -> Callable[[], bool]:
    return lambda: http_ok(f"http://127.0.0.1:{port}/healthz")


def _inject(base: str, error_rate: float) -> None:
    """Tell the canary to start failing (the scenario's mid-rollout breakage)."""
    body = json.dumps({"error_rate": error_rate}).encode()
    request = urllib.request.Request(f"{base}/admin/fault", data=body, method="POST")
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=5) as answer:
        answer.read()


def _stop_loadgen(loadgen: ManagedProcess, summary: Path) -> dict[str, Any]:
    """Stop the load generator and read its totals; a machine under load gets time to write them."""
    loadgen.stop(timeout=30.0)
    try:
        loaded: dict[str, Any] = json.loads(summary.read_text())
        return loaded
    except (OSError, ValueError):
        return {}


def _step_started(status: RolloutStatus) -> float:
    return status.step_started_at if status.step_started_at is not None else time.time()


def _final_reason(status: RolloutStatus) -> str:
    deciding = [t for t in status.history if t.action in DECIDING]
    if deciding:
        return deciding[-1].reason
    return status.message or ""


def _seconds_to_decide(status: RolloutStatus) -> float | None:
    """From the first step (Start) to the promotion or rollback."""
    start = next((t for t in status.history if t.action is Action.START), None)
    decided = next((t for t in status.history if t.action in DECIDING), None)
    if start is None or decided is None:
        return None
    return (decided.at or 0.0) - (start.at or 0.0)


def _canary_requests_to_decide(world: World) -> int | None:
    """Requests the canary served before the weights changed for the promotion or rollback."""
    final = [p for p in world.mesh.periods if p.weights.get(CANARY, 0) in (0, 100)]
    if len(final) < 2:  # the first is the all-stable start
        return None
    return final[1].served_before.get(CANARY, 0)


def _ready_pod(version: str) -> dict[str, Any]:
    """The Pod object a model server stands for (ready: its /healthz answered)."""
    return ready_pod(NAMESPACE, f"{SERVICE}-{version}-0", {"app": SERVICE, "version": version})


@contextlib.contextmanager
def _interruptible() -> Iterator[None]:
    """SIGTERM and SIGINT end the demo through the finally blocks that stop every process.

    SIGINT too, explicitly: a process started in the background by a non-interactive shell inherits
    SIGINT ignored, and Python then leaves it ignored (a CI run launched that way saw the demo
    finish its rollout after Ctrl-C).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous_term = signal.signal(signal.SIGTERM, on_term)
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous_term)
        signal.signal(signal.SIGINT, previous_int)
