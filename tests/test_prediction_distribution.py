"""PredictionDistribution against a real Prometheus: score histograms and class counters as applications export them.

One backfilled history (10 one-minute windows, 15 s scrapes) of three rollouts' model outputs:
``alike`` (the canary scores like the stable), ``drifted`` (the canary's scores moved up: a model
trained on a broken label join) and ``classes`` (a class counter whose canary predicts the
positive class twice as often). Every count the look returns is checked against what was written,
and the analysis against what the canary did.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from controller.api.load import load
from controller.api.model import ModelRollout
from controller.api.status import Verdict
from controller.edges.prometheus import PrometheusClient, PrometheusSettings, observe
from controller.judge.analysis import analyse
from controller.metrics.samples import DistributionSeries, Observation, Window
from tests.prometheus_fixture import OpenMetrics, PrometheusServer

T0 = 1_700_000_040
SCRAPE = 15
WINDOWS = 10
BOUNDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)  # the score histogram's buckets, and +Inf
RATE = 40.0  # outputs per second per version
#: Per rollout (namespace): the canary's score distribution (Beta a, b); the stable's is Beta(2, 5).
SCORES = {"alike": (2.0, 5.0), "drifted": (3.0, 4.0)}
CLASSES = ("legit", "review", "fraud")
CLASS_SHARES = {"v1": (0.80, 0.15, 0.05), "v2": (0.75, 0.15, 0.10)}


def policy(namespace: str, metric: dict[str, Any]) -> str:
    return f"""
apiVersion: canarist.io/v1alpha1
kind: ModelRollout
metadata: {{name: fraud, namespace: {namespace}}}
spec:
  service: {{name: fraud, port: 8080}}
  stable: {{name: v1, labels: {{app: fraud, version: v1}}}}
  canary: {{name: v2, labels: {{app: fraud, version: v2}}}}
  analysis:
    metrics: [{metric}]
"""


SCORE_METRIC = {
    "name": "predictions",
    "kind": "PredictionDistribution",
    "outputs": {"histogram": "fraud_score", "matchLabels": {"model": "fraud"}, "positiveAbove": 0.5},
    "margin": {"absolute": "10%"},
}
CLASS_METRIC = {
    "name": "predictions",
    "kind": "PredictionDistribution",
    "outputs": {
        "counter": "fraud_predictions_total",
        "classLabel": "decision",
        "matchLabels": {"model": "fraud"},
        "positiveClasses": ["fraud"],
    },
    "margin": {"absolute": "2%"},
}


def _history(truth: dict[str, dict[str, list[list[int]]]]) -> str:
    """Every series, scraped every 15 s; ``truth[namespace][version]`` gets the counts per window and bucket."""
    rng = np.random.default_rng(7)
    out = OpenMetrics()
    edges = np.array(BOUNDS)
    for namespace, (a, b) in SCORES.items():
        for version, (pa, pb) in (("v1", (2.0, 5.0)), ("v2", (a, b))):
            labels = {"namespace": namespace, "model": "fraud", "version": version}
            cumulative = np.zeros(len(BOUNDS) + 1, dtype=np.int64)
            per_window = truth.setdefault(namespace, {}).setdefault(version, [[0] * (len(BOUNDS) + 1)] * WINDOWS)
            for step in range(WINDOWS * 60 // SCRAPE + 1):
                if step:
                    scores = rng.beta(pa, pb, rng.poisson(RATE * SCRAPE))
                    counts = np.append((scores[:, None] <= edges[None, :]).sum(axis=0), scores.size)
                    cumulative += counts
                    window = (step - 1) * SCRAPE // 60
                    per_bucket = np.diff(np.concatenate(([0], counts)))
                    per_window[window] = [int(x + y) for x, y in zip(per_window[window], per_bucket, strict=True)]
                for le, value in zip((*(f"{e:g}" for e in BOUNDS), "+Inf"), cumulative, strict=True):
                    out.add(
                        "fraud_score",
                        "histogram",
                        "fraud_score_bucket",
                        {**labels, "le": le},
                        (T0 + step * SCRAPE, value),
                    )
    for version, shares in CLASS_SHARES.items():
        totals = dict.fromkeys(CLASSES, 0)
        per_window = truth.setdefault("classes", {}).setdefault(version, [[0] * len(CLASSES)] * WINDOWS)
        for step in range(WINDOWS * 60 // SCRAPE + 1):
            if step:
                drawn = rng.multinomial(rng.poisson(RATE * SCRAPE), shares)
                window = (step - 1) * SCRAPE // 60
                per_window[window] = [int(x + y) for x, y in zip(per_window[window], drawn, strict=True)]
                for name, n in zip(CLASSES, drawn, strict=True):
                    totals[name] += int(n)
            for name, value in totals.items():
                labels = {"namespace": "classes", "model": "fraud", "version": version, "decision": name}
                out.add("fraud_predictions", "counter", "fraud_predictions_total", labels, (T0 + step * SCRAPE, value))
    return out.render()


@pytest.fixture(scope="module")
def looked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(rollouts by namespace, their observations), with the truth written beside them."""
    truth: dict[str, dict[str, list[list[int]]]] = {}
    server = PrometheusServer(tmp_path_factory.mktemp("outputs"))
    server.write_history(_history(truth), "outputs")
    server.start()
    try:
        rollouts: dict[str, ModelRollout] = {}
        for namespace in SCORES:
            (rollouts[namespace],) = load(policy(namespace, SCORE_METRIC), f"{namespace}.yaml")
        (rollouts["classes"],) = load(policy("classes", CLASS_METRIC), "classes.yaml")
        windows = tuple(Window(T0 + 60 * i, T0 + 60 * (i + 1), 0.5) for i in range(WINDOWS))
        source = PrometheusClient(PrometheusSettings(server.url))
        observations = observe(
            source,
            list(rollouts.values()),
            dict.fromkeys((r.key for r in rollouts.values()), windows),
            T0 + 60 * WINDOWS,
        )
        yield {"rollouts": rollouts, "truth": truth}, {ns: observations[r.key] for ns, r in rollouts.items()}
    finally:
        server.stop()


def series(observation: Observation) -> DistributionSeries:
    data = observation.metric("predictions")
    assert data is not None and isinstance(data.series, DistributionSeries), data
    return data.series


@pytest.mark.parametrize("namespace", [*SCORES, "classes"])
def test_the_counts_are_exactly_what_the_model_exported(
    namespace: str, looked: tuple[dict[str, Any], dict[str, Any]]
) -> None:
    context, observations = looked
    got = series(observations[namespace])
    truth = context["truth"][namespace]
    assert [list(c) for c in got.stable] == truth["v1"]
    if namespace == "classes":
        assert got.buckets == ("legit", "review", "fraud") and got.positive_from == 2
        assert [list(c) for c in got.canary] == truth["v2"]
    else:
        assert len(got.buckets) == len(BOUNDS) + 1 and got.positive_from == 5  # scores above 0.5
        assert [list(c) for c in got.canary] == truth["v2"]


@pytest.mark.parametrize(
    ("namespace", "verdict"), [("alike", Verdict.PASS), ("drifted", Verdict.FAIL), ("classes", Verdict.FAIL)]
)
def test_a_drifted_canary_is_caught_and_a_like_one_proven_within_the_margin(
    namespace: str, verdict: Verdict, looked: tuple[dict[str, Any], dict[str, Any]]
) -> None:
    context, observations = looked
    (evidence,) = analyse(context["rollouts"][namespace], observations[namespace], step_started_at=T0).metrics
    assert evidence.verdict is verdict, evidence.reason
    assert "outputs differ by" in evidence.reason and "positive rate" in evidence.reason
