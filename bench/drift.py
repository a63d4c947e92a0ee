"""``python -m bench.drift``: a label-free early warning, timed against the labels it runs ahead of.

A fraud classifier's canary gets 10 % of 50 requests/s; its outputs are scored into 10 buckets of
0.1 and each request's label arrives for 20 % of them, 1 to 3 one-minute windows late. One policy,
two metrics sharing alpha = 0.05 equally: ``predictions`` (PredictionDistribution, margin 5 %)
and ``accuracy`` (CustomRatio on the late labels, margin 2 points). Looks after each window for an
hour, judged by canarist's own analysis. Scenarios:

- ``aa``: the canary is the stable model (the false "drift proven" rate must stay within its alpha
  share, 0.025, under continuous looks);
- ``shifted``: trained on a broken label join: a share of its scores moved up (total variation
  distance 0.15) and its accuracy 4 points lower;
- ``subtle``: a distance of 0.06, just past the margin, and accuracy 1 point lower (within its margin).

Per scenario: how often each metric proves harm, and the median minutes to it. Writes
``bench/results/drift.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from controller.api.metrics_spec import Margin, Metric, MetricKind, OutputsQuery, RatioQuery
from controller.api.status import Verdict
from controller.judge.analysis import evaluate
from controller.metrics.samples import CountSeries, DistributionSeries, MetricData

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "drift.json"
WINDOWS = 60
RATE = 50.0  # requests per second, both versions
CANARY_SHARE = 0.1
LABELLED = 0.2  # share of requests whose label arrives
DELAYS = (1, 2, 3)  # windows a label takes to arrive, equally likely
ALPHA = 0.05
BUCKETS = 10
#: The stable model's scores: mostly low, a fraud tail (shares of the 10 buckets of 0.1).
STABLE = np.array([0.62, 0.12, 0.06, 0.04, 0.03, 0.03, 0.02, 0.02, 0.02, 0.04])
ACCURACY = 0.92


@dataclass(frozen=True)
class Scenario:
    name: str
    moved: float  # share of the canary's outputs moved from the lowest bucket to the middle ones: its TVD
    accuracy_drop: float


SCENARIOS = (Scenario("aa", 0.0, 0.0), Scenario("shifted", 0.15, 0.04), Scenario("subtle", 0.06, 0.01))
PREDICTIONS = Metric(
    name="predictions",
    kind=MetricKind.PREDICTION_DISTRIBUTION,
    outputs=OutputsQuery(histogram="fraud_score", match_labels={"model": "fraud"}),
    margin=Margin(absolute="5%"),
)
ACCURACY_METRIC = Metric(
    name="accuracy",
    kind=MetricKind.CUSTOM_RATIO,
    higher_is_better=True,
    ratio=RatioQuery(success="correct_total", total="labelled_total", match_labels={"model": "fraud"}),
    margin=Margin(absolute="2%"),
)


def canary_scores(moved: float) -> np.ndarray:
    """The stable's score shares with ``moved`` taken from the lowest bucket and spread over buckets 3-6."""
    shares = STABLE.copy()
    shares[0] -= moved
    shares[3:7] += moved / 4
    return shares


def run_once(rng: np.random.Generator, scenario: Scenario) -> dict[str, int | None]:
    """One hour of looks: the first window (1-based) at which each metric proved harm, None if it never did."""
    canary_shares = canary_scores(scenario.moved)
    outputs_c: list[tuple[int, ...]] = []
    outputs_s: list[tuple[int, ...]] = []
    labelled = np.zeros((WINDOWS + max(DELAYS) + 1, 4), dtype=np.int64)  # correct, total per version
    found: dict[str, int | None] = {"predictions": None, "accuracy": None}
    budget = ALPHA / 2
    for t in range(WINDOWS):
        total = rng.poisson(RATE * 60)
        n_c = rng.binomial(total, CANARY_SHARE)
        outputs_c.append(tuple(int(x) for x in rng.multinomial(n_c, canary_shares)))
        outputs_s.append(tuple(int(x) for x in rng.multinomial(total - n_c, STABLE)))
        for side, n, accuracy in ((0, total - n_c, ACCURACY), (1, n_c, ACCURACY - scenario.accuracy_drop)):
            labels = rng.binomial(n, LABELLED)
            correct = rng.binomial(labels, accuracy)
            arrive = rng.multinomial(labels, [1 / len(DELAYS)] * len(DELAYS))
            right = (
                rng.multivariate_hypergeometric(arrive, correct) if labels else np.zeros(len(DELAYS), dtype=np.int64)
            )
            for delay, (n_arrive, n_right) in zip(DELAYS, zip(arrive, right, strict=True), strict=True):
                labelled[t + delay, 2 * side] += n_right
                labelled[t + delay, 2 * side + 1] += n_arrive
        looks = t + 1
        if found["predictions"] is None:
            series = DistributionSeries(tuple(str(k) for k in range(BUCKETS)), tuple(outputs_s), tuple(outputs_c))
            if evaluate(PREDICTIONS, MetricData("predictions", series), budget).verdict is Verdict.FAIL:
                found["predictions"] = looks
        if found["accuracy"] is None:
            arrived = labelled[1 : looks + 1]
            rates = CountSeries(
                tuple(int(x) for x in arrived[:, 0]),
                tuple(int(x) for x in arrived[:, 1]),
                tuple(int(x) for x in arrived[:, 2]),
                tuple(int(x) for x in arrived[:, 3]),
            )
            if evaluate(ACCURACY_METRIC, MetricData("accuracy", rates), budget).verdict is Verdict.FAIL:
                found["accuracy"] = looks
        if all(v is not None for v in found.values()):
            break
    return found


def run(runs: dict[str, int], seed: int) -> list[dict[str, Any]]:
    """Each scenario's runs: per metric, the share that proved harm and the median minutes to it."""
    records = []
    for s, scenario in enumerate(SCENARIOS):
        results = [run_once(np.random.default_rng([seed, s, r]), scenario) for r in range(runs[scenario.name])]
        for name in ("predictions", "accuracy"):
            caught = [t for r in results if (t := r[name]) is not None]
            records.append(
                {
                    "scenario": scenario.name,
                    "metric": name,
                    "runs": len(results),
                    "harm_proven_rate": len(caught) / len(results),
                    "median_minutes": statistics.median(caught) if caught else None,
                    "p90_minutes": float(np.percentile(caught, 90)) if caught else None,
                }
            )
        first = [r for r in results if r["predictions"] is not None and r["accuracy"] is not None]
        if first:
            earlier = sum(r["predictions"] < r["accuracy"] for r in first) / len(first)  # type: ignore[operator]
            records.append(
                {"scenario": scenario.name, "metric": "predictions-first", "runs": len(first), "share": earlier}
            )
    return records


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.drift", description=__doc__.split("\n\n")[0])
    ap.add_argument("--aa-runs", type=int, default=2000, help="A/A runs (default 2,000)")
    ap.add_argument("--runs", type=int, default=300, help="runs per regression scenario (default 300)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    if args.runs < 1 or args.aa_runs < 1:
        ap.error("--runs and --aa-runs must be at least 1")
    started = time.time()
    runs = {s.name: (args.aa_runs if s.name == "aa" else args.runs) for s in SCENARIOS}
    records = run(runs, args.seed)
    result = {
        "settings": {
            "runs": runs,
            "seed": args.seed,
            "windows": WINDOWS,
            "rate": RATE,
            "canary_share": CANARY_SHARE,
            "labelled": LABELLED,
            "label_delay_windows": list(DELAYS),
            "alpha": ALPHA,
            "alpha_per_metric": ALPHA / 2,
            "scenarios": {s.name: {"tvd": s.moved, "accuracy_drop": s.accuracy_drop} for s in SCENARIOS},
        },
        "results": records,
        "wall_seconds": round(time.time() - started, 1),
        "python": platform.python_version(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for r in records:
        print(json.dumps(r))
    print(f"wrote {args.out} in {result['wall_seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
