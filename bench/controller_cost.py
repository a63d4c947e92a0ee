"""``python -m bench.controller_cost``: what the controller costs per rollout, measured.

Two numbers for the closing note of issue 5, measured with the real reconcile (the official
Kubernetes client, ``controller.edges.kube.KubeCluster``) against the test suite's fake API server and a
synthetic metrics source (no Prometheus: the metrics edge is timed by the Prometheus tests):

1. **Reconcile time per rollout**: median and p95 of single ``reconcile()`` calls, for 1 and for 50
   rollouts on one API server (at least 200 reconciles and 20 passes each), in two paths:
   *analysis* (an analysis is due: read the rollout's routes, look at every window since the
   analysis began, decide, write the status) and *quiet* (a re-reconcile within the same interval,
   as after a watch event: nothing is written). The rollouts hold at their first step
   (``minRequests`` out of reach), so every analysis pass does the same work but for the windows
   analysed, which grow by one per pass (up to the 120-window cap). Also the time of a whole pass
   (list + every reconcile) divided by the number of rollouts. Routes are applied with no
   propagation wait (``propagation_delay=0``): in a cluster, a DestinationRule change waits for
   Istio, which only the first reconcile of a rollout does.
2. **API writes per step** of a whole good rollout (policies/fraud-detector-istio.yaml, steps
   1 -> 5 -> 25 -> 50 -> 100 %), reconciled at its interval and at the requeue times the controller
   asks for: route writes (DestinationRule, VirtualService), status writes, Events and the rest
   (the finalizer), per reconcile, in total and per step.

The fake API server (``tests/kube_fake.py``) runs in a child process, as an API server would: its
CPU is not the controller's, and this module imports nothing from ``tests/``. The times include the
HTTP round trips to that fake (a Python server on loopback); the quiet path, which only reads the
routes, shows what a reconcile costs without analysis and writes. Writes
``bench/results/controller_cost.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import yaml

from controller.api.model import ModelRollout
from controller.edges.kube import KubeCluster
from controller.engine.ports import EdgeFailure
from controller.engine.reconcile import Outcome, reconcile
from controller.metrics.samples import CountSeries, HistogramSeries, MetricData, Observation, Window
from controller.sandbox.chaos.truth import EDGES, HEALTHY
from controller.traffic.templating import default_environment

ROOT = Path(__file__).resolve().parent.parent
POLICY = ROOT / "policies" / "fraud-detector-istio.yaml"
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "controller_cost.json"
T0 = 1_800_000_000.0  # on the minute grid
NAMESPACE = "bench"
MIN_PASSES = 20  # analysis passes over all rollouts, however many there are

# --- the fake API server, in a child process ----------------------------------------------------

#: Runs in the child: serve the fake, answer one JSON line per command line on stdin.
CHILD = """
import json, sys
from controller.sandbox.localapi import LocalApiServer

api = LocalApiServer().start()
print(json.dumps({"url": api.url}), flush=True)
for line in sys.stdin:
    request = json.loads(line)
    if request["op"] == "seed":
        for obj in request["objects"]:
            api.seed(obj)
        answer = {"ok": True}
    elif request["op"] == "log":
        with api.cond:
            log = [[r.method, r.path, r.code] for r in api.log[request["since"]:]]
            answer = {"log": log, "total": request["since"] + len(log)}
    else:
        break
    print(json.dumps(answer), flush=True)
api.stop()
"""


@dataclass
class FakeApi:
    """The child process serving the fake API server, and its request log."""

    process: subprocess.Popen[str]
    url: str
    seen: int = 0

    def ask(self, request: Mapping[str, Any]) -> dict[str, Any]:
        stdin, stdout = self._pipes()
        stdin.write(json.dumps(request) + "\n")
        stdin.flush()
        answer: dict[str, Any] = json.loads(stdout.readline())
        return answer

    def seed(self, objects: Sequence[Mapping[str, Any]]) -> None:
        self.ask({"op": "seed", "objects": list(objects)})

    def requests_since_last(self) -> list[tuple[str, str, int]]:
        """Every request the server answered since the previous call: (method, path, code)."""
        answer = self.ask({"op": "log", "since": self.seen})
        self.seen = int(answer["total"])
        return [(str(m), str(p), int(c)) for m, p, c in answer["log"]]

    def _pipes(self) -> tuple[IO[str], IO[str]]:
        assert self.process.stdin is not None and self.process.stdout is not None
        return self.process.stdin, self.process.stdout


@contextlib.contextmanager
def fake_api() -> Iterator[FakeApi]:
    process = subprocess.Popen(
        [sys.executable, "-c", CHILD], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        if not first:
            raise SystemExit("the local API server did not start (is the project installed?)")
        yield FakeApi(process, json.loads(first)["url"])
    finally:
        with contextlib.suppress(OSError, ValueError):
            assert process.stdin is not None
            process.stdin.write('{"op": "stop"}\n')
            process.stdin.close()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def connect(api: FakeApi, workdir: Path) -> KubeCluster:
    """The controller's Kubernetes edge, from a kubeconfig as ``canarist run`` builds it."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "fake", "cluster": {"server": api.url}}],
        "users": [{"name": "bench", "user": {"token": "dummy"}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "bench", "namespace": NAMESPACE}}],
        "current-context": "fake",
    }
    path = workdir / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    return KubeCluster.from_settings(kubeconfig=str(path), propagation_delay=0.0)


# --- synthetic metrics -------------------------------------------------------------------------

CANARY_PER_WINDOW = 2_000


@dataclass
class Synthetic:
    """Traffic where the canary is exactly as good as stable: the same latency distribution and a 0.5 %
    error rate. Per window the canary gets 2,000 requests and stable a multiple of 2,000 in the ratio
    of the window's share, so no rounding tells the versions apart and the split matches the routes."""

    looks: int = 0

    def observe(
        self, rollouts: Sequence[ModelRollout], windows: Mapping[str, Sequence[Window]], at: float
    ) -> tuple[dict[str, Observation], EdgeFailure | None]:
        self.looks += 1
        out = {}
        for rollout in rollouts:
            ws = tuple(windows[rollout.key])
            canary = [CANARY_PER_WINDOW if w.canary_share > 0 else 0 for w in ws]
            stable = [
                CANARY_PER_WINDOW * round((1 - w.canary_share) / w.canary_share) if w.canary_share > 0 else 200_000
                for w in ws
            ]
            hist = HistogramSeries(
                EDGES,
                tuple(tuple(float(round(n * s)) for s in HEALTHY) for n in stable),
                tuple(tuple(float(round(n * s)) for s in HEALTHY) for n in canary),
            )
            errors = CountSeries(
                tuple(n // 200 for n in stable), tuple(stable), tuple(n // 200 for n in canary), tuple(canary)
            )
            metrics = (MetricData("latency-p99", hist), MetricData("error-rate", errors))
            out[rollout.key] = Observation(ws, tuple(stable), tuple(canary), metrics)
        return out, None


# --- policies and pods --------------------------------------------------------------------------


def rollout_body(index: int | None, *, hold: bool) -> dict[str, Any]:
    """The fraud-detector example in the bench namespace (its own service when ``index`` is given);
    ``hold``: minRequests out of reach, so every analysis holds at the first step."""
    body: dict[str, Any] = yaml.safe_load(POLICY.read_text())
    name = "fraud-detector" if index is None else f"fraud-detector-{index:02d}"
    body["metadata"] = {"name": name, "namespace": NAMESPACE}
    spec = body["spec"]
    spec["service"]["name"] = name
    for side in ("stable", "canary"):
        spec[side]["labels"]["app"] = name
    if hold:
        spec["strategy"].update(minRequests=10**9, progressDeadline="1000h")
    return body


def ready_pods(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    pods = []
    for side in ("stable", "canary"):
        labels = dict(body["spec"][side]["labels"])
        metadata = {"name": f"{labels['app']}-{labels['version']}-0", "namespace": NAMESPACE, "labels": labels}
        pods.append(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": metadata,
                "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
            }
        )
    return pods


# --- (1) reconcile time -------------------------------------------------------------------------


@dataclass
class Timing:
    rollouts: int
    path: str
    samples: list[float] = field(default_factory=list)  # seconds per reconcile
    passes: list[float] = field(default_factory=list)  # seconds per pass (list + every reconcile)
    windows: tuple[int, int] = (0, 0)

    def row(self) -> dict[str, Any]:
        ordered = sorted(self.samples)
        p95 = ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]
        per_rollout = statistics.median(self.passes) / self.rollouts if self.passes else None
        return {
            "rollouts": self.rollouts,
            "path": self.path,
            "reconciles": len(self.samples),
            "median_ms": round(statistics.median(ordered) * 1000, 2),
            "p95_ms": round(p95 * 1000, 2),
            "max_ms": round(ordered[-1] * 1000, 2),
            "pass_ms_per_rollout": round(per_rollout * 1000, 2) if per_rollout is not None else None,
            "windows_analysed": f"{self.windows[0]}-{self.windows[1]}" if self.windows[1] else "none",
        }


def measure_reconciles(rollouts: int, reconciles: int, workdir: Path) -> list[Timing]:
    """At least ``reconciles`` analysis reconciles (and :data:`MIN_PASSES` passes) over ``rollouts``
    rollouts, then as many quiet ones."""
    env, source = default_environment(), Synthetic()
    bodies = [rollout_body(i, hold=True) for i in range(rollouts)]
    with fake_api() as api:
        api.seed([pod for body in bodies for pod in ready_pods(body)] + bodies)
        cluster = connect(api, workdir)
        objects, _ = cluster.list_rollouts(NAMESPACE)
        for obj in objects:  # the start: finalizer, routes created, status
            started = reconcile(obj, cluster, source, env, now=T0 + 1)
            assert started.phase is not None and started.phase.value == "Progressing", started
        analysis, quiet = Timing(rollouts, "analysis"), Timing(rollouts, "quiet")
        passes = max(MIN_PASSES, math.ceil(reconciles / rollouts))
        for number in range(1, passes + 1):
            now = T0 + 60 * number + 1
            began = time.perf_counter()
            objects, _ = cluster.list_rollouts(NAMESPACE)
            for obj in objects:
                outcome = timed(analysis, obj, cluster, source, env=env, now=now)
                assert outcome.action.value == "Hold" and outcome.status_written, outcome
            analysis.passes.append(time.perf_counter() - began)
        analysis.windows = (1, min(passes, 120))
        looks = source.looks
        while len(quiet.samples) < len(analysis.samples):  # within the last interval: nothing to do
            began = time.perf_counter()
            objects, _ = cluster.list_rollouts(NAMESPACE)
            for obj in objects:
                outcome = timed(quiet, obj, cluster, source, env=env, now=T0 + 60 * passes + 2)
                assert outcome.route_writes == 0 and not outcome.status_written, outcome
            quiet.passes.append(time.perf_counter() - began)
        assert source.looks == looks  # no analysis ran
        writes = [r for r in api.requests_since_last() if r[0] != "GET"]
        expected = rollouts * (1 + 2 + 1 + 1) + rollouts * passes  # start: finalizer, DR+VS, status, event
        assert len(writes) == expected, (len(writes), expected)
    return [analysis, quiet]


def timed(
    timing: Timing, obj: Mapping[str, Any], cluster: KubeCluster, source: Synthetic, *, env: Any, now: float
) -> Outcome:
    began = time.perf_counter()
    outcome = reconcile(obj, cluster, source, env, now=now)
    timing.samples.append(time.perf_counter() - began)
    return outcome


# --- (2) writes per step ------------------------------------------------------------------------


def kind_of(method: str, path: str) -> str:
    if method == "GET":
        return "reads"
    if "/destinationrules" in path or "/virtualservices" in path:
        return "routes"
    if "/modelrollouts/" in path and path.endswith("/status"):
        return "status"
    if path.endswith("/events") or "/events/" in path:
        return "events"
    return "other"


def count_writes(workdir: Path) -> dict[str, Any]:
    """One good rollout, from creation to Succeeded; every request it caused, per reconcile."""
    env, source = default_environment(), Synthetic()
    body = rollout_body(None, hold=False)
    rows: list[dict[str, Any]] = []
    with fake_api() as api:
        api.seed([*ready_pods(body), body])
        cluster = connect(api, workdir)
        api.requests_since_last()
        now = T0 + 1
        for _ in range(200):
            obj = cluster.get_rollout(NAMESPACE, body["metadata"]["name"])
            api.requests_since_last()  # the read that hands the object over (a list or a watch event)
            outcome = reconcile(obj, cluster, source, env, now=now)
            counts = dict.fromkeys(("routes", "status", "events", "other", "reads"), 0)
            for method, path, code in api.requests_since_last():
                assert method == "GET" or code < 400, (method, path, code)  # a 404 read before a create is fine
                counts[kind_of(method, path)] += 1
            phase = outcome.phase.value if outcome.phase is not None else ""
            rows.append(
                {
                    "at_s": round(now - T0),
                    "action": outcome.action.value,
                    "phase": phase,
                    "weight": outcome.canary_weight,
                    **counts,
                }
            )
            if phase in ("Succeeded", "Failed"):
                break
            now += outcome.requeue_after
    assert rows[-1]["phase"] == "Succeeded", rows[-1]
    writes = ("routes", "status", "events", "other")
    totals = {k: sum(r[k] for r in rows) for k in (*writes, "reads")}
    weights = [r["weight"] for r in rows if r["action"] in ("Start", "Advance", "Promote")]
    steps = len(weights)  # the weights applied: 1, 5, 25, 50, 100
    return {
        "policy": str(POLICY.relative_to(ROOT)),
        "weights": weights,
        "reconciles": rows,
        "totals": totals,
        "steps": steps,
        "writes_total": sum(totals[k] for k in writes),
        "writes_per_step": round(sum(totals[k] for k in writes) / steps, 2),
        "per_step": {k: round(totals[k] / steps, 2) for k in (*writes, "reads")},
        "analysis_holds": sum(1 for r in rows if r["action"] == "Hold"),
    }


# --- report -------------------------------------------------------------------------------------

TIMING_COLUMNS = (
    ("rollouts", "rollouts"),
    ("path", "path"),
    ("reconciles", "reconciles"),
    ("median ms", "median_ms"),
    ("p95 ms", "p95_ms"),
    ("max ms", "max_ms"),
    ("pass ms/rollout", "pass_ms_per_rollout"),
    ("windows", "windows_analysed"),
)
WRITE_COLUMNS = (
    ("t s", "at_s"),
    ("action", "action"),
    ("phase", "phase"),
    ("weight", "weight"),
    ("routes", "routes"),
    ("status", "status"),
    ("events", "events"),
    ("other", "other"),
    ("reads", "reads"),
)


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    """Rows as aligned text: the first column left-aligned, the others right-aligned."""
    text = [[title for title, _ in columns]]
    text += [["" if row.get(key) is None else str(row[key]) for _, key in columns] for row in rows]
    widths = [max(len(line[i]) for line in text) for i in range(len(columns))]
    lines = []
    for line in text:
        cells = [
            cell.rjust(width) if i else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(line, widths, strict=True))
        ]
        lines.append("  ".join(cells))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.controller_cost", description=__doc__.split("\n\n")[0])
    ap.add_argument("--rollouts", default="1,50", help="rollout counts on one API server (default: 1,50)")
    ap.add_argument("--reconciles", type=int, default=200, help="analysis reconciles per count (at least)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results (default: %(default)s)")
    args = ap.parse_args(argv)
    counts = [int(x) for x in args.rollouts.split(",") if x.strip()]
    began = time.time()
    with tempfile.TemporaryDirectory(prefix="canarist-bench-") as tmp:
        timings = [t.row() for n in counts for t in measure_reconciles(n, args.reconciles, Path(tmp))]
        writes = count_writes(Path(tmp))

    print("reconcile time per rollout (official client -> fake API server in a child process; synthetic metrics)")
    print(table(timings, TIMING_COLUMNS))
    print(f"\nAPI requests per reconcile of a whole good rollout ({writes['policy']}, weights {writes['weights']})")
    summary = [
        {"at_s": "total", **writes["totals"]},
        {"at_s": f"per step (/{writes['steps']})", **writes["per_step"]},
    ]
    print(table([*writes["reconciles"], *summary], WRITE_COLUMNS))
    print(
        f"\nwrites per step: {writes['writes_per_step']} ({writes['writes_total']} writes / {writes['steps']} steps;"
        f" {writes['analysis_holds']} analysis holds among the reconciles)"
    )

    result = {
        "command": " ".join(["python -m bench.controller_cost", *(argv if argv is not None else sys.argv[1:])]),
        "machine": {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count()},
        "seconds": round(time.time() - began, 1),
        "reconcile_time": timings,
        "writes": writes,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
