"""``python -m bench.gpu``: GPU cost per inference on shared GPUs, per-pod attribution against device-wide series.

A canary and its stable share GPUs (time-slicing, MPS, HAMi): 4 stable pods on 4 GPUs, 2 canary
pods each on the GPU of a stable pod, 25 % of the requests to the canary (Poisson per pod and
minute), each inference costing a Gamma-distributed GPU time (mean 20 ms for stable, ``ratio`` x
that for the canary) and each pod's minute a contention factor (log-normal, 5 %). One-minute
windows for an hour, one look per window, a policy of one metric: GPU-seconds per inference no
more than 25 % above stable's (alpha 0.05). Three judges see the same runs:

- ``agent``: canarist on ``canarist gpu-agent``'s series (``AgentGpuSecondsPerInference``): each
  version's own GPU-seconds over its requests.
- ``dcgm-per-pod``: device-wide series (DCGM before per-process support, Triton's ``nv_gpu_*``)
  compared as if each pod's, as canarist's ``GpuSecondsPerInference`` did before it checked which
  GPU each pod is on: a pod's GPU-seconds are its whole GPU's, over its own inferences.
- ``dcgm-attributed``: canarist on the same device-wide series today: the pods sharing a GPU are
  not attributable and dropped, leaving the stable pods alone on theirs against no canary pod.

Per judge and scenario: the share of runs rolled back and promoted (non-inferiority proven), and
the median windows to that decision. Writes ``bench/results/gpu.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from controller.api.metrics_spec import Margin, Metric, MetricKind
from controller.api.status import Verdict
from controller.judge.analysis import evaluate
from controller.metrics.samples import GaugeSeries, MetricData

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "gpu.json"
WINDOWS = 60
RATE = 40.0  # requests per second, both versions
CANARY_SHARE = 0.25
STABLE_PODS, CANARY_PODS = 4, 2  # canary pod i shares GPU i with stable pod i
COST = 0.02  # mean GPU-seconds per stable inference
COST_SHAPE = 4.0  # Gamma shape of one inference's GPU time (cv 0.5)
CONTENTION = 0.05  # log-normal sd of a pod's minute-long slowdown
ALPHA = 0.05
MARGIN = "25%"
SCENARIOS = {"aa": 1.0, "cost-x1.1": 1.1, "at-margin-x1.25": 1.25, "cost-x2": 2.0}

#: (stable groups, canary groups) per window: one value per pod, or one per version.
Columns = tuple[list[list[float]], list[list[float]]]


@dataclass(frozen=True)
class Minute:
    """One window: each pod's requests and GPU-seconds."""

    stable_requests: np.ndarray
    stable_seconds: np.ndarray
    canary_requests: np.ndarray
    canary_seconds: np.ndarray


def simulate(rng: np.random.Generator, ratio: float) -> list[Minute]:
    """An hour of minutes of both versions' pods."""
    minutes = []
    for _ in range(WINDOWS):
        columns = []
        for pods, share, cost in (
            (STABLE_PODS, 1.0 - CANARY_SHARE, COST),
            (CANARY_PODS, CANARY_SHARE, COST * ratio),
        ):
            requests = rng.poisson(RATE * 60.0 * share / pods, pods)
            work = rng.gamma(np.maximum(requests, 1) * COST_SHAPE, cost / COST_SHAPE) * (requests > 0)
            columns += [requests, work * rng.lognormal(0.0, CONTENTION, pods)]
        minutes.append(Minute(*columns))
    return minutes


def agent(minutes: Sequence[Minute]) -> Columns:
    """Each version's own GPU-seconds over its requests, one value per window (the agent's counter / Istio's)."""
    return (
        [[float(m.stable_seconds.sum() / m.stable_requests.sum())] for m in minutes],
        [[float(m.canary_seconds.sum() / m.canary_requests.sum())] for m in minutes],
    )


def _device_seconds(m: Minute) -> np.ndarray:
    """Each GPU's GPU-seconds: its stable pod's and, on the first CANARY_PODS GPUs, its canary pod's."""
    device = m.stable_seconds.astype(np.float64).copy()
    device[:CANARY_PODS] += m.canary_seconds
    return device


def dcgm_per_pod(minutes: Sequence[Minute]) -> Columns:
    """Every pod's GPU's seconds over the pod's own inferences: the device-wide value taken as the pod's."""
    stable, canary = [], []
    for m in minutes:
        device = _device_seconds(m)
        stable.append([float(d / n) for d, n in zip(device, m.stable_requests, strict=True) if n > 0])
        canary.append([float(d / n) for d, n in zip(device[:CANARY_PODS], m.canary_requests, strict=True) if n > 0])
    return stable, canary


def dcgm_attributed(minutes: Sequence[Minute]) -> Columns:
    """As dcgm_per_pod, but the pods sharing a GPU dropped (not attributable): no canary pod is left."""
    stable, canary = dcgm_per_pod(minutes)
    return [s[CANARY_PODS:] for s in stable], [[] for _ in canary]


JUDGES: dict[str, Callable[[Sequence[Minute]], Columns]] = {
    "agent": agent,
    "dcgm-per-pod": dcgm_per_pod,
    "dcgm-attributed": dcgm_attributed,
}
METRIC = Metric(
    name="gpu-seconds-per-inference",
    kind=MetricKind.AGENT_GPU_SECONDS_PER_INFERENCE,
    margin=Margin(relative=MARGIN),
)


def decide(columns: Columns) -> tuple[Verdict, int]:
    """The first decision (Fail: rollback, Pass: promote) over looks after each window, and its window (1-based);
    (Inconclusive or NoData, WINDOWS) when none comes within the hour."""
    stable, canary = columns
    verdict = Verdict.NODATA
    for t in range(1, WINDOWS + 1):
        series = GaugeSeries(tuple(tuple(g) or None for g in stable[:t]), tuple(tuple(g) or None for g in canary[:t]))
        verdict = evaluate(METRIC, MetricData(METRIC.name, series), ALPHA).verdict
        if verdict in (Verdict.FAIL, Verdict.PASS):
            return verdict, t
    return verdict, WINDOWS


def run(runs: int, seed: int) -> list[dict[str, Any]]:
    """Every judge on the same ``runs`` simulated hours of each scenario."""
    records = []
    for s, (scenario, ratio) in enumerate(SCENARIOS.items()):
        outcomes: dict[str, list[tuple[Verdict, int]]] = {name: [] for name in JUDGES}
        for r in range(runs):
            minutes = simulate(np.random.default_rng([seed, s, r]), ratio)
            for name, judge in JUDGES.items():
                outcomes[name].append(decide(judge(minutes)))
        for name, results in outcomes.items():
            rolled = [t for v, t in results if v is Verdict.FAIL]
            promoted = [t for v, t in results if v is Verdict.PASS]
            records.append(
                {
                    "judge": name,
                    "scenario": scenario,
                    "cost_ratio": ratio,
                    "runs": runs,
                    "rollback_rate": len(rolled) / runs,
                    "promote_rate": len(promoted) / runs,
                    "undecided_rate": (runs - len(rolled) - len(promoted)) / runs,
                    "median_windows_to_rollback": statistics.median(rolled) if rolled else None,
                    "median_windows_to_promote": statistics.median(promoted) if promoted else None,
                }
            )
    return records


def table(records: Sequence[dict[str, Any]]) -> str:
    """The results as a Markdown table (rollback / promote rates, median windows to each)."""

    def cell(rate: float, median: float | None) -> str:
        return f"{rate:.3f}" + (f" ({median:g} min)" if median is not None else "")

    lines = ["| judge | scenario | rolled back | promoted | undecided |", "|---|---|---|---|---|"]
    for r in records:
        lines.append(
            f"| {r['judge']} | {r['scenario']} | {cell(r['rollback_rate'], r['median_windows_to_rollback'])} | "
            f"{cell(r['promote_rate'], r['median_windows_to_promote'])} | {r['undecided_rate']:.3f} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=500, help="simulated hours per scenario (default 500)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    if args.runs < 1:
        ap.error("--runs must be at least 1")
    started = time.time()
    records = run(args.runs, args.seed)
    result = {
        "settings": {
            "runs": args.runs,
            "seed": args.seed,
            "windows": WINDOWS,
            "rate": RATE,
            "canary_share": CANARY_SHARE,
            "stable_pods": STABLE_PODS,
            "canary_pods": CANARY_PODS,
            "cost_seconds": COST,
            "margin": MARGIN,
            "alpha": ALPHA,
        },
        "results": records,
        "wall_seconds": round(time.time() - started, 1),
        "python": platform.python_version(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(table(records))
    print(f"wrote {args.out} in {result['wall_seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
