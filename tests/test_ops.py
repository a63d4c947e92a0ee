"""The controller's operations surface, served for real: liveness that follows the loop's progress,
a server that slow clients cannot hold, the bind address, and the options `run` shares with `analyze`."""

from __future__ import annotations

import random
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.api.status import Action, MetricStatus, Phase, Verdict
from controller.cli.main import cli, main
from controller.edges.kube import KubeCluster
from controller.edges.prometheus import PrometheusClient, PrometheusSettings
from controller.engine.reconcile import Outcome
from controller.manager import ops
from controller.manager.loop import Manager
from controller.manager.ops import ControllerMetrics, serve
from controller.manager.wiring import PrometheusSource
from controller.sandbox.localapi import LocalApiServer, local_api_server
from controller.traffic.templating import default_environment

CANARIST = Path(sys.executable).parent / "canarist"


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


@pytest.fixture
def api() -> Iterator[LocalApiServer]:
    with local_api_server() as fake:
        yield fake


# --- liveness follows the loop ----------------------------------------------------------------

STALL = 30.0


@pytest.mark.parametrize(
    ("since_last_pass", "code"),
    [(0.0, 200), (STALL / 2, 200), (STALL - 0.01, 200), (STALL + 0.01, 503), (10 * STALL, 503)],
)
@pytest.mark.parametrize("ever_passed", [True, False], ids=["after-a-pass", "since-start"])
def test_healthz_fails_once_no_pass_completed_within_the_bound(
    since_last_pass: float, code: int, ever_passed: bool
) -> None:
    now = [100.0]
    metrics = ControllerMetrics(stall_after=STALL, clock=lambda: now[0])
    if ever_passed:
        now[0] = 200.0
        metrics.ticked()
    now[0] += since_last_pass
    server = serve(metrics, 0)
    try:
        status, body = get(server.server_address[1], "/healthz")
    finally:
        server.shutdown()
        server.server_close()
    assert status == code, body
    assert body == "ok\n" if code == 200 else body.startswith("stalled: no loop pass completed for")


def test_the_loop_beats_each_pass_and_a_stuck_pass_fails_liveness(api: LocalApiServer) -> None:
    """The real loop on the fake API server: while it is stuck on the API server (9 s, more than the
    6 s bound: one pass and the loop's longest wait of 5 s), /healthz answers 503; then 200 again."""
    metrics = ControllerMetrics(stall_after=6.0)
    source = PrometheusSource(PrometheusClient(PrometheusSettings(url="http://127.0.0.1:9", timeout=1.0)))
    cluster = KubeCluster(api.make_client(), propagation_delay=0.0)
    manager = Manager(cluster, source, default_environment(), time.time, namespace="ml", observer=metrics)
    server = serve(metrics, 0)
    port = server.server_address[1]
    stop = threading.Event()
    loop = threading.Thread(target=manager.run, args=(stop,), daemon=True)

    def until(code: int, seconds: float) -> float:
        started = time.monotonic()
        while get(port, "/healthz")[0] != code:
            assert time.monotonic() - started < seconds, f"/healthz never answered {code}"
            time.sleep(0.25)
        return time.monotonic() - started

    try:
        loop.start()
        until(200, 5)
        time.sleep(1.0)  # the first pass is over: the loop waits for changes
        assert metrics.stalled() is None
        api.fail("/modelrollouts", None, method="GET", delay=9.0)  # its next call hangs
        until(503, 12)
        assert "stalled: no loop pass completed" in get(port, "/healthz")[1]
        until(200, 15)
    finally:
        stop.set()
        loop.join(timeout=20)
        server.shutdown()
        server.server_close()


def test_a_rollout_gone_from_the_controller_takes_its_gauges_with_it(api: LocalApiServer) -> None:
    """Deleted (or, sharded, moved to another replica): no stale phase or weight is scraped for it."""
    metrics = ControllerMetrics()
    source = PrometheusSource(PrometheusClient(PrometheusSettings(url="http://127.0.0.1:9", timeout=1.0)))
    manager = Manager(KubeCluster(api.make_client(), propagation_delay=0.0), source, default_environment(),
                      time.time, namespace="ml", observer=metrics)  # fmt: skip
    for name in ("kept", "gone"):
        api.seed({"apiVersion": "canarist.io/v1alpha1", "kind": "ModelRollout",
                  "metadata": {"name": name, "namespace": "ml"}, "spec": {}})  # fmt: skip
    manager.tick()
    looked = (MetricStatus(name="errors", verdict=Verdict.INCONCLUSIVE, e_value=3.0, threshold=40.0),)
    for key in ("ml/kept", "ml/gone"):  # as if each had reached its first step
        metrics.reconciled(
            Outcome(key, Action.ADVANCE, "step 1", Phase.PROGRESSING, 5, 1, True, 60.0, None, 1, looked), 0.1
        )
    assert metrics.registry.get_sample_value("canarist_metric_e_value", {"rollout": "ml/gone", "metric": "errors"}) == 3
    assert metrics.registry.get_sample_value("canarist_rollout_canary_weight", {"rollout": "ml/gone"}) == 5
    with api.cond:
        del api.objects[("canarist.io", "modelrollouts", "ml", "gone")]
    manager.due = dict.fromkeys(manager.due, 0.0)
    manager.tick()
    exported = metrics.registry.get_sample_value
    assert exported("canarist_rollout_canary_weight", {"rollout": "ml/gone"}) is None
    assert exported("canarist_rollout_phase", {"rollout": "ml/gone", "phase": "Progressing"}) is None
    assert exported("canarist_rollout_canary_weight", {"rollout": "ml/kept"}) == 5
    assert exported("canarist_metric_e_value", {"rollout": "ml/gone", "metric": "errors"}) is None
    gone = {"rollout": "ml/gone", "metric": "errors", "verdict": "Inconclusive"}
    assert exported("canarist_metric_verdict", gone) is None
    kept = {"rollout": "ml/kept", "metric": "errors", "verdict": "Inconclusive"}
    assert exported("canarist_metric_verdict", kept) == 1
    assert exported("canarist_metric_threshold", {"rollout": "ml/kept", "metric": "errors"}) == 40


# --- slow clients cannot hold the server -------------------------------------------------------


def silent(sock: socket.socket) -> None:
    sock.sendall(b"GET /metr")


def trickling(sock: socket.socket) -> None:
    for byte in b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200:
        try:
            sock.sendall(bytes([byte]))
        except OSError:
            return
        time.sleep(0.1)


@pytest.mark.parametrize("client", [silent, trickling])
def test_a_slow_client_is_cut_off_and_others_are_served(monkeypatch: pytest.MonkeyPatch, client: object) -> None:
    monkeypatch.setattr(ops, "SOCKET_TIMEOUT", 0.5)
    monkeypatch.setattr(ops, "REQUEST_DEADLINE", 1.5)
    metrics = ControllerMetrics()
    server = serve(metrics, 0)
    port = server.server_address[1]
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        started = time.monotonic()
        feeding = threading.Thread(target=client, args=(sock,), daemon=True)  # type: ignore[arg-type]
        feeding.start()
        assert get(port, "/healthz")[0] == 200  # served meanwhile
        received = b""
        while chunk := sock.recv(4096):  # until the server closes the connection
            received += chunk
        took = time.monotonic() - started
        assert took < 3.0, took
        assert b"200 OK" not in received
        sock.close()
    finally:
        server.shutdown()
        server.server_close()


# --- the bind address --------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_the_server_binds_the_address_it_is_given(host: str) -> None:
    try:
        server = serve(ControllerMetrics(), 0, host)
    except OSError as exc:  # no IPv6 on this machine
        pytest.skip(f"cannot bind {host}: {exc}")
    try:
        assert server.server_address[0] == host
        with socket.create_connection((host, server.server_address[1]), timeout=5) as sock:
            sock.sendall(b"GET /readyz HTTP/1.0\r\n\r\n")
            assert sock.recv(100).startswith(b"HTTP/1.0 503")  # not ready: no pass yet
    finally:
        server.shutdown()
        server.server_close()


def test_the_server_binds_loopback_unless_told_otherwise() -> None:
    server = serve(ControllerMetrics(), 0)
    try:
        assert server.server_address[0] == "127.0.0.1"
    finally:
        server.shutdown()
        server.server_close()
    run = cli.commands["run"]
    [option] = [p for p in run.params if p.name == "metrics_bind_address"]
    assert option.default == "127.0.0.1"


def kubeconfig(tmp_path: Path, api: LocalApiServer) -> Path:
    path = tmp_path / "kubeconfig"
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "fake", "cluster": {"server": api.url}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "u"}}],
        "current-context": "fake",
    }
    path.write_text(yaml.safe_dump(config))
    return path


def run_controller(tmp_path: Path, api: LocalApiServer, *args: str) -> subprocess.CompletedProcess[str]:
    """`canarist run` against the fake API server, with ``args``: for the ones that must not start."""
    config = str(kubeconfig(tmp_path, api))
    return subprocess.run(
        [str(CANARIST), "run", "--kubeconfig", config, "--metrics-port", "0", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_executable_refuses_an_address_it_cannot_bind_in_one_line(tmp_path: Path, api: LocalApiServer) -> None:
    proc = run_controller(tmp_path, api, "--prometheus", "http://127.0.0.1:9", "--metrics-bind-address", "203.0.113.7")
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "--metrics-bind-address" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


BAD_STARTS = [
    ("--metrics-bind-address", "203.0.113.7", "--metrics-bind-address"),  # not an address of this machine
    ("--metrics-bind-address", "not-an-address.invalid", "--metrics-bind-address"),
    ("--ca-file", "missing.pem", "missing.pem"),
    ("--bearer-token-file", "missing.token", "missing.token"),
    ("--lease-seconds", "5", "--lease-seconds"),  # too short for its safety margin and one write
]


@pytest.mark.parametrize("bad", BAD_STARTS, ids=[f"{o}={v}" for o, v, _ in BAD_STARTS])
def test_run_refuses_a_bad_setting_before_acting_in_one_line(
    tmp_path: Path,
    api: LocalApiServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    bad: tuple[str, str, str],
) -> None:
    """The console script's entry point in process (the executable is run once above): exit 2, one
    line naming the setting, nothing written."""
    option, value, named = bad
    args = ["run", "--kubeconfig", str(kubeconfig(tmp_path, api)), "--prometheus", "https://127.0.0.1:9"]
    monkeypatch.setattr(sys, "argv", ["canarist", *args, "--metrics-port", "0", option, value])
    with pytest.raises(SystemExit) as exited:
        main()
    err = capsys.readouterr().err
    assert exited.value.code == 2, err
    assert named in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert api.writes == []


# --- `run` reaches Prometheus the way `analyze` does -------------------------------------------

TLS_OPTIONS = ("bearer_token_file", "ca_file", "insecure")


@pytest.mark.parametrize("name", TLS_OPTIONS)
def test_run_and_analyze_share_the_prometheus_tls_options(name: str) -> None:
    def spelled(command: str) -> tuple[object, ...]:
        [option] = [p for p in cli.commands[command].params if p.name == name]
        return (tuple(option.opts), option.is_flag, option.type.to_info_dict(), option.help)  # type: ignore[attr-defined]

    assert spelled("run") == spelled("analyze")


# --- each pass has a deadline; the ones left wait least next time ------------------------------


@pytest.mark.parametrize(("rollouts", "deadline"), [(6, 4.0), (10, 9.0), (3, 100.0), (8, 0.5)])
def test_a_pass_starts_no_reconcile_after_its_deadline_and_the_rest_go_first_next(
    api: LocalApiServer, rollouts: int, deadline: float
) -> None:
    """Every reading of the loop's clock advances it one second, so each reconcile takes time; a
    pass never starts one past its deadline, and over passes every rollout gets its turn."""
    ticks = iter(range(10**6))
    clock = lambda: float(next(ticks))  # noqa: E731
    for i in range(rollouts):  # invalid specs: each reconcile is one Event and a 300 s requeue
        api.seed(
            {
                "apiVersion": "canarist.io/v1alpha1",
                "kind": "ModelRollout",
                "metadata": {"name": f"r{i}", "namespace": "ml"},
                "spec": {},
            }
        )
    source = PrometheusSource(PrometheusClient(PrometheusSettings(url="http://127.0.0.1:9", timeout=1.0)))
    cluster = KubeCluster(api.make_client(), propagation_delay=0.0)
    manager = Manager(cluster, source, default_environment(), clock, namespace="ml", tick_deadline=deadline)
    seen: list[str] = []
    for _ in range(rollouts + 1):
        started = clock()
        outcomes = manager.tick()
        # the first always starts; each other one was let start (one reading before it began) before
        # the pass's deadline (the pass began at started + 1)
        assert all(manager.due[o.key] - 300 - 1 < started + 1 + deadline for o in outcomes[1:])
        assert len(outcomes) >= 1  # at least one, so the loop always progresses
        seen += [o.key for o in outcomes]
        if len(set(seen)) == rollouts:
            break
    assert set(seen) == {f"ml/r{i}" for i in range(rollouts)}
    assert len(seen) == rollouts, "a rollout went twice before every other had its turn"


class Died(BaseException):
    """The controller process dies (the loop's ``except Exception`` lets it through, as kill -9 would)."""


class DiesAfterOneReconcile:
    """An observer whose controller dies right after its first reconcile: a crash loop."""

    def __init__(self) -> None:
        self.first: str | None = None

    def reconciled(self, outcome: Any, seconds: float) -> None:
        self.first = outcome.key
        raise Died

    def leading(self, leader: bool) -> None: ...

    def ticked(self) -> None: ...

    def sharded(self, held: int, members: int) -> None: ...

    def forgotten(self, key: str) -> None: ...


def test_a_controller_that_keeps_dying_still_reaches_every_rollout_in_turn(api: LocalApiServer) -> None:
    """Found by the chaos soak (python -m bench.chaos --rollouts 9 --per-run 9 --seed 10 --fault-rate 0.3
    --crash-rate 0.08: two rollouts never finished): a fresh controller knows no rollout, and took
    them in name order, so one that died within its first reconciles spent every life on the same
    first rollouts. Equally due rollouts now go in random order (seeded here)."""
    names = [f"r{i}" for i in range(6)]
    for name in names:  # invalid specs: each reconcile is one Event, whatever the order
        api.seed({"apiVersion": "canarist.io/v1alpha1", "kind": "ModelRollout",
                  "metadata": {"name": name, "namespace": "ml"}, "spec": {}})  # fmt: skip
    source = PrometheusSource(PrometheusClient(PrometheusSettings(url="http://127.0.0.1:9", timeout=1.0)))
    firsts = []
    for life in range(30):  # each life: a fresh controller (state only from the API), dead after one reconcile
        observer = DiesAfterOneReconcile()
        cluster = KubeCluster(api.make_client(), propagation_delay=0.0)
        manager = Manager(cluster, source, default_environment(), time.time, namespace="ml", observer=observer,
                          rng=random.Random(life))  # fmt: skip
        with pytest.raises(Died):
            manager.tick()
        firsts.append(observer.first)
    assert set(firsts) == {f"ml/{n}" for n in names}, firsts


# --- canarist_edge_errors: typed failures, whichever edge ----------------------------------------


def edge_errors(metrics: ControllerMetrics, key: str) -> float:
    return metrics.registry.get_sample_value("canarist_edge_errors_total", {"rollout": key}) or 0.0


def test_a_look_that_prometheus_cannot_answer_and_a_failed_api_call_each_count_as_an_edge_error() -> None:
    """The counter reads the reconcile's typed failure, not words in its reason: an unreachable
    Prometheus (the look became no data) counts, and so does a 503 from the API server."""
    from tests.test_steering import NAME, NS, POLICY, ready_pods

    with local_api_server() as api:
        ready_pods(api)
        metrics = ControllerMetrics()
        down = PrometheusSource(PrometheusClient(PrometheusSettings(url="http://127.0.0.1:9", timeout=1.0)))
        cluster = KubeCluster(api.api_client, propagation_delay=0.0)
        cluster.create_or_update_rollout(POLICY)
        now = [time.time()]
        manager = Manager(cluster, down, default_environment(), lambda: now[0], namespace=NS, observer=metrics)
        key = f"{NS}/{NAME}"
        manager.tick()  # started: no look yet
        assert edge_errors(metrics, key) == 0.0
        now[0] += 600.0  # whole windows since the start to look at
        manager.due.clear()
        manager.tick()  # the first look: Prometheus refuses the connection
        assert edge_errors(metrics, key) == 1.0
        api.fail("/status", 503, method="PUT", times=10)
        now[0] += 60.0
        manager.due.clear()
        manager.tick()
        assert edge_errors(metrics, key) == 2.0
