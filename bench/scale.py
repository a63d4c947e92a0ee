"""``python -m bench.scale``: the controller at platform scale, against a real Prometheus.

For each N of ``--sizes``: N rollouts (each in its own namespace: Istio's request counter by code
and its latency histogram, and labelled-outcome counters, for a stable and a canary at 5 %),
``--minutes`` of history backfilled with ``promtool`` into Debian's Prometheus (30 s scrapes), the
ModelRollouts in the local API stand-in (in a child process, as an API server is), and the real
``Manager`` with the real Prometheus edge (batched, incremental looks) passing once a minute on a
virtual clock over that history, every rollout looking every minute (they hold at their first
step: too few requests to advance). Each size runs in a process of its own, so its peak memory is
its own. Per pass: wall seconds of the pass and of its look, controller CPU seconds, HTTP
requests and samples fetched from Prometheus, API requests, the stand-in's CPU and the controller's
memory. With ``--no-cache`` every look reads every window since the analysis began (the cost the
cache saves); with ``--age M`` the passes begin at minute M of the analyses (:func:`age_rollouts`).
Writes ``bench/results/scale.json`` and ``scale.png``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from controller.api.model import ModelRollout
from controller.api.times import timestamp
from controller.edges.kube import KubeCluster
from controller.edges.kube.informer import Informer
from controller.edges.prometheus import PrometheusClient, PrometheusSettings
from controller.edges.prometheus.client import Points, Sample
from controller.engine.ports import EdgeFailure, MetricsSource
from controller.engine.record import ANALYSES_LIMIT
from controller.manager.loop import Manager
from controller.manager.wiring import PrometheusSource
from controller.metrics.cache import WindowCache
from controller.metrics.samples import Observation, Window
from controller.sandbox.demo.processes import Prometheus, require
from controller.sandbox.localapi import ready_pod
from controller.traffic.templating import default_environment

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "scale.json"
T0 = 1_800_000_000  # on the minute grid
SCRAPE = 30
ISTIO_LE = ("5", "10", "25", "50", "100", "250", "500", "1000", "2500", "5000", "+Inf")
RPS = 2.0  # requests per second per rollout
CANARY_SHARE = 0.05
PROMTOOL = "/usr/bin/promtool"


def policy(i: int) -> dict[str, Any]:
    """Rollout ``i``: latency, errors and accuracy, held at its first step (too few requests to move on)."""
    ns = f"s{i}"
    return {
        "apiVersion": "canarist.io/v1alpha1",
        "kind": "ModelRollout",
        "metadata": {"name": "model", "namespace": ns},
        "spec": {
            "service": {"name": "model", "port": 8080},
            "stable": {"name": "v1", "labels": {"app": "model", "version": "v1"}},
            "canary": {"name": "v2", "labels": {"app": "model", "version": "v2"}},
            "strategy": {
                "steps": [5, 50],
                "interval": "1m",
                "minRequests": 100_000_000,
                "progressDeadline": "24h",
                "onNoData": "Hold",
                "onInconclusive": "Hold",
            },
            "analysis": {
                "metrics": [
                    {"name": "latency-p99", "kind": "IstioLatency", "quantile": 0.99, "slo": {"max": "500ms"}},
                    {"name": "errors", "kind": "IstioErrorRate", "slo": {"max": "2%"}},
                    {
                        "name": "accuracy",
                        "kind": "CustomRatio",
                        "ratio": {
                            "success": "correct_total",
                            "total": "labelled_total",
                            "matchLabels": {"app": "model"},
                        },
                        "margin": {"absolute": "2%"},
                    },
                ]
            },
        },
    }


def history(n: int, minutes: int, path: Path) -> int:
    """Write ``minutes`` of every rollout's series as OpenMetrics to ``path``; the number of samples."""
    rng = np.random.default_rng(n)
    steps = minutes * 60 // SCRAPE
    samples = 0
    with path.open("w") as out:
        families: dict[str, list[str]] = {"istio_requests": [], "istio_request_duration_milliseconds": [],
                                          "correct": [], "labelled": []}  # fmt: skip
        for i in range(n):
            for version, share in (("v1", 1 - CANARY_SHARE), ("v2", CANARY_SHARE)):
                per_step = rng.poisson(RPS * SCRAPE * share, steps)
                total = np.concatenate(([0], np.cumsum(per_step)))
                errors = np.concatenate(([0], np.cumsum(rng.binomial(per_step, 0.005))))
                istio = (
                    f'reporter="destination",destination_service_namespace="s{i}",'
                    f'destination_service_name="model",destination_version="{version}"'
                )
                app = f'namespace="s{i}",app="model",version="{version}"'
                series = {
                    f'istio_requests_total{{{istio},response_code="200"}}': total - errors,
                    f'istio_requests_total{{{istio},response_code="500"}}': errors,
                    f"correct_total{{{app}}}": np.floor(total * 0.45),
                    f"labelled_total{{{app}}}": np.floor(total * 0.5),
                }
                shares = np.array([0.01, 0.05, 0.2, 0.5, 0.8, 0.95, 0.99, 0.997, 0.999, 0.9995, 1.0])
                for le, p in zip(ISTIO_LE, shares, strict=True):
                    series[f'istio_request_duration_milliseconds_bucket{{{istio},le="{le}"}}'] = np.floor(total * p)
                for name, values in series.items():
                    family = next(f for f in families if name.startswith(f))
                    families[family].extend(f"{name} {int(v)} {T0 - 120 + k * SCRAPE}" for k, v in enumerate(values))
                    samples += len(values)
        for family, lines in families.items():
            kind = "histogram" if family == "istio_request_duration_milliseconds" else "counter"
            out.write(f"# TYPE {family} {kind}\n")
            out.write("\n".join(lines) + "\n")
        out.write("# EOF\n")
    return samples


class CountingClient(PrometheusClient):
    """The real client, counting the samples (points) its answers carry."""

    samples = 0

    def vector(self, query: str, at: float) -> list[Sample]:
        found = super().vector(query, at)
        self.samples += len(found)
        return found

    def matrix(self, query: str, start: float, end: float, step: float) -> list[tuple[dict[str, str], Points]]:
        found = super().matrix(query, start, end, step)
        self.samples += sum(len(points) for _, points in found)
        return found


@dataclass
class Timed:
    """The metrics source, timing each look."""

    source: MetricsSource
    seconds: list[float] = field(default_factory=list)
    rollouts: list[int] = field(default_factory=list)

    def observe(
        self, rollouts: Sequence[ModelRollout], windows: Mapping[str, Sequence[Window]], at: float
    ) -> tuple[dict[str, Observation], EdgeFailure | None]:
        started = time.perf_counter()
        try:
            return self.source.observe(rollouts, windows, at)
        finally:
            self.seconds.append(time.perf_counter() - started)
            self.rollouts.append(len(rollouts))


def ready_pods(i: int) -> list[dict[str, Any]]:
    """Rollout ``i``'s pods, ready (as the kubelet reports them), one per version."""
    return [ready_pod(f"s{i}", f"model-{v}-0", {"app": "model", "version": v}) for v in ("v1", "v2")]


def _api_server(pipe: Connection) -> None:
    """The local API stand-in in its own process: its URL out, then on each message its request count
    and CPU seconds so far ("count"), objects stored as given (("seed", objects)), or the end ("stop")."""
    from controller.sandbox.localapi import LocalApiServer

    server = LocalApiServer().start()
    pipe.send(server.url)
    while (message := pipe.recv()) != "stop":
        if isinstance(message, tuple) and message[0] == "seed":
            for obj in message[1]:
                server.seed(obj)
            pipe.send(len(message[1]))
            continue
        with server.cond:
            pipe.send((len(server.log), time.process_time()))
    server.stop()


def _rss_bytes() -> int:
    """This process' resident memory now (the peak is ru_maxrss)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


@contextlib.contextmanager
def api_server() -> Iterator[tuple[str, Connection]]:
    parent, child = multiprocessing.get_context("spawn").Pipe()
    process = multiprocessing.get_context("spawn").Process(target=_api_server, args=(child,), daemon=True)
    process.start()
    try:
        yield parent.recv(), parent
    finally:
        parent.send("stop")
        process.join(10)


def aged_looks(looks: Mapping[str, Any], count: int) -> dict[str, Any]:
    """A look log of ``count`` looks a minute apart from T0 on, each the values of ``looks``' last:
    the status of an analysis that has looked every minute since T0 (its log as long as it would be)."""

    def column(values: Sequence[Any]) -> list[Any]:
        return [values[-1]] * count

    return {
        "at": [timestamp(T0 + 60 * (k + 1)) for k in range(count)],
        "step": column(looks["step"]),
        "canaryWeight": column(looks["canaryWeight"]),
        "metrics": [{k: v if k == "name" else column(v) for k, v in m.items()} for m in looks["metrics"]],
    }


def age_rollouts(manager: Manager, cluster: KubeCluster, clock: list[float], age: int) -> tuple[float, float]:
    """Bring the rollouts to ``age`` minutes of analysis as a controller restarted then finds
    them: started at T0, one look a minute since (their status' look log as long as that makes it),
    and nothing kept in memory; then the restart's first pass, whose look reads every window since T0
    (in rounds: :data:`controller.edges.prometheus.look.MAX_LOOK_WINDOWS`). Returns the seconds all
    of it took, and the restart's first pass."""
    if age < 3:
        raise ValueError("an age is at least 3 minutes: the start, a look, and the restart's first look")
    started = time.perf_counter()
    for minute in (0, 1):  # the Start, then one look: the shape of a look's numbers
        clock[0] = T0 + 60 * minute + 1
        manager.due.clear()
        manager.tick()
    objects, _ = cluster.list_rollouts(None)
    for obj in objects:  # looked at minutes 1 to age - 2; the first look after the restart is at age - 1
        status = dict(obj["status"])
        status["looks"] = aged_looks(status["looks"], min(age - 2, ANALYSES_LIMIT - 1))
        status["lastAnalysisAt"] = timestamp(T0 + 60 * (age - 2))
        metadata = obj["metadata"]
        cluster.patch_rollout_status(metadata["namespace"], metadata["name"], status, metadata["resourceVersion"])
    clock[0] = T0 + 60 * (age - 1) + 1
    manager.due.clear()
    restarted = time.perf_counter()
    manager.tick()  # the restart's first pass: one look, its windows read in rounds by the edge
    return time.perf_counter() - started, time.perf_counter() - restarted


def run_size(n: int, minutes: int, cache: bool, age: int = 0) -> dict[str, Any]:
    """One size, in this process: the per-pass numbers and the peak memory. With ``age``, the passes
    begin at that minute of the rollouts' analysis (see :func:`age_rollouts`)."""
    from kubernetes import client as kube

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        started = time.time()
        with multiprocessing.get_context("spawn").Pool(1) as pool:  # its strings never in this process' peak
            samples = pool.apply(history, (n, age + minutes + 2, work / "history.om"))
        subprocess.run(
            [require(PROMTOOL, "prometheus"), "tsdb", "create-blocks-from", "openmetrics", str(work / "history.om"),
             str(work / "prometheus" / "tsdb")],
            check=True, capture_output=True, timeout=3600,
        )  # fmt: skip
        backfill = time.time() - started
        prometheus = Prometheus(work / "prometheus", scrape_configs=[], scrape_interval="15s").start(timeout=120)
        try:
            with api_server() as (url, api):
                configuration = kube.Configuration()
                configuration.host = url
                cluster = KubeCluster(kube.ApiClient(configuration), propagation_delay=0.0)
                informer = Informer(kube.ApiClient(configuration)).start()  # as `canarist run` wires it
                assert informer.wait_synced(60), "the VirtualService informer never synced"
                cluster.virtual_services = informer
                api.send(("seed", [pod for i in range(n) for pod in ready_pods(i)]))
                api.recv()
                for i in range(n):
                    cluster.create_or_update_rollout(policy(i))
                settings = PrometheusSettings(prometheus.url, timeout=60.0, look_timeout=300.0)
                client = CountingClient(settings)
                source = Timed(PrometheusSource(client, None, WindowCache(settle=60.0) if cache else None))
                clock = [float(T0)]
                manager = Manager(cluster, source, default_environment(), lambda: clock[0], tick_deadline=3600.0)
                aging, restart = age_rollouts(manager, cluster, clock, age) if age else (None, None)
                restart_rss = _rss_bytes() if age else None
                passes = []
                for minute in range(age, age + minutes):
                    clock[0] = T0 + 60 * minute + 1
                    manager.due.clear()  # every rollout is due: one look a minute each
                    api.send("count")
                    (api_before, api_cpu), samples_before, requests_before = (
                        api.recv(),
                        client.samples,
                        client.requests_sent,
                    )
                    looks_before = len(source.seconds)
                    cpu = resource.getrusage(resource.RUSAGE_SELF)
                    wall = time.perf_counter()
                    outcomes = manager.tick()
                    wall = time.perf_counter() - wall
                    after = resource.getrusage(resource.RUSAGE_SELF)
                    api.send("count")
                    api_after, api_cpu_after = api.recv()
                    passes.append(
                        {
                            "minute": minute,
                            "reconciles": len(outcomes),
                            "pass_seconds": round(wall, 3),
                            "look_seconds": round(sum(source.seconds[looks_before:]), 3),
                            "looks": len(source.seconds) - looks_before,
                            "cpu_seconds": round(after.ru_utime + after.ru_stime - cpu.ru_utime - cpu.ru_stime, 3),
                            "prometheus_requests": client.requests_sent - requests_before,
                            "prometheus_samples": client.samples - samples_before,
                            "api_requests": api_after - api_before,
                            "api_server_cpu_seconds": round(api_cpu_after - api_cpu, 3),
                            "rss_mib": round(_rss_bytes() / 2**20, 1),
                        }
                    )
                    print(f"N={n} minute {minute}: {passes[-1]}", file=sys.stderr, flush=True)
                informer.stop()
        finally:
            prometheus.stop()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"rollouts": n, "cache": cache, "age": age, "aging_seconds": round(aging, 1) if aging else None,
            "restart_pass_seconds": round(restart, 1) if restart else None,
            "restart_rss_mib": round(restart_rss / 2**20, 1) if restart_rss else None,
            "history_samples": samples, "backfill_seconds": round(backfill, 1), "peak_rss_bytes": peak,
            "passes": passes}  # fmt: skip


def summary(record: Mapping[str, Any]) -> dict[str, Any]:
    """The steady passes' medians (the first two start the rollouts and read their whole past)."""
    steady = record["passes"][2:] or record["passes"]
    late = record["passes"][-10:]

    def median(key: str, passes: Sequence[Mapping[str, Any]] = steady) -> float:
        return float(np.median([p[key] for p in passes]))

    n = record["rollouts"]
    return {
        "rollouts": n,
        "cache": record["cache"],
        "age_minutes": record.get("age", 0),
        "restart_pass_seconds": record.get("restart_pass_seconds"),
        "pass_seconds": median("pass_seconds"),
        "look_seconds": median("look_seconds"),
        "cpu_seconds_per_minute": median("cpu_seconds"),
        "cpu_ms_per_rollout": 1000 * median("cpu_seconds") / n,
        "prometheus_requests_per_look": median("prometheus_requests"),
        "prometheus_samples_per_look": median("prometheus_samples"),
        "api_requests_per_pass": median("api_requests"),
        "peak_rss_mib": record["peak_rss_bytes"] / 2**20,
        "every_pass_within_a_minute": all(p["pass_seconds"] < 60 for p in record["passes"]),
        # the first pass starts every rollout (no look): the looks' passes are what the interval bounds
        "every_look_within_a_minute": all(p["pass_seconds"] < 60 for p in record["passes"] if p["looks"]),
        # the pass that starts every rollout (with --age, the restart's first pass is restart_pass_seconds)
        "first_pass_seconds": record["passes"][0]["pass_seconds"]
        if record["passes"] and not record.get("age")
        else None,
        # the last ten passes: the analyses' oldest, where what grows with age costs most
        "late_minutes": [late[0]["minute"], late[-1]["minute"]] if late else None,
        "late_pass_seconds": median("pass_seconds", late) if late else None,
        "late_cpu_seconds_per_minute": median("cpu_seconds", late) if late else None,
        "late_max_pass_seconds": max(p["pass_seconds"] for p in late) if late else None,
        "late_api_server_cpu_seconds": median("api_server_cpu_seconds", late) if late else None,
        "late_rss_mib": late[-1]["rss_mib"] if late else None,
    }


def plot(records: Sequence[Mapping[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, (left, middle, right) = pyplot.subplots(1, 3, figsize=(15, 4))
    for r in records:
        label = f"N={r['rollouts']}" + ("" if r["cache"] else " (no cache)")
        minutes = [p["minute"] for p in r["passes"]]
        left.plot(minutes, [p["prometheus_samples"] / r["rollouts"] for p in r["passes"]], marker=".", label=label)
        middle.plot(minutes, [p["pass_seconds"] for p in r["passes"]], marker=".", label=label)
        right.plot(minutes, [p["cpu_seconds"] for p in r["passes"]], marker=".", label=label)
    left.set(xlabel="minute of the rollouts' analysis", ylabel="samples fetched per look, per rollout")
    middle.set(xlabel="minute", ylabel="seconds per pass (one look a minute each)")
    right.set(xlabel="minute", ylabel="controller CPU seconds per pass")
    for ax in (middle, right):
        ax.axhline(60, color="gray", linestyle="--")  # the interval: a pass, and one core
    for ax in (left, middle, right):
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="100,500,2000", help="rollout counts (default 100,500,2000)")
    ap.add_argument("--minutes", type=int, default=12, help="passes (minutes of analysis) per size (default 12)")
    ap.add_argument("--no-cache-size", type=int, default=500, help="also run this size without the cache (0: none)")
    ap.add_argument(
        "--age", type=int, default=0, help="begin the passes at this minute of the analyses (a restart then: default 0)"
    )
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)  # run one size in this process, JSON to stdout
    ap.add_argument("--no-cache", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    if args.one is not None:
        print(json.dumps(run_size(args.one, args.minutes, not args.no_cache, args.age)))
        return 0
    sizes = [int(s) for s in args.sizes.split(",") if s]
    runs = [(n, True) for n in sizes] + ([(args.no_cache_size, False)] if args.no_cache_size else [])
    records = []
    for n, cache in runs:
        command = [sys.executable, "-m", "bench.scale", "--one", str(n), "--minutes", str(args.minutes), "--age",
                   str(args.age)]  # fmt: skip
        done = subprocess.run(
            [*command, *([] if cache else ["--no-cache"])], capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            print(done.stderr[-3000:], file=sys.stderr)
            return 1
        records.append(json.loads(done.stdout))
        print(json.dumps(summary(records[-1])), flush=True)
    result = {
        "settings": {
            "sizes": sizes,
            "minutes": args.minutes,
            "age_minutes": args.age,
            "scrape_seconds": SCRAPE,
            "rps_per_rollout": RPS,
            "canary_share": CANARY_SHARE,
            "interval_seconds": 60,
        },
        "summary": [summary(r) for r in records],
        "runs": records,
        "python": platform.python_version(),
        "cpus": multiprocessing.cpu_count(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    plot(records, args.out.with_suffix(".png"))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
