"""``kayenta``: Netflix's ACA judge (Kayenta ``NetflixACAJudge`` + ``MannWhitneyClassifier``) on per-interval points.

Per interval and per version, one point per metric, as Kayenta would fetch with a 1-interval step through
PromQL (so reset-aware ``promql`` increments): the p99 latency (``histogram_quantile``), the error rate
and the accuracy of the labels reported in that interval. A version without requests gives NaN, which
Kayenta's default ``nanStrategy`` (none) replaces with 0.

Every interval the judge runs on the *cumulative* window (all points so far), as a canary stage whose
analysis interval is the step and whose lookback is unbounded does, with no correction for repeated
looks. Per metric, faithfully to ``NetflixACAJudge.classifyMetric`` / ``MannWhitneyClassifier.classify``:

1. transform: NaN -> 0, then drop outliers outside ``[min(p1, Q1 - 3 IQR), max(p99, Q3 + 3 IQR)]``
   (``IQRDetector(factor = 3.0, reduceSensitivity = true)``), each series on its own;
2. identical samples, or a single distinct value overall: Pass;
3. a 98 % confidence interval [lo, hi] for the location shift canary - stable and its estimate est
   (R's asymptotic ``wilcox.test(conf.int = TRUE)``, which Kayenta ports), tolerance 0.25:
   High when ``lo > 0.25 |est|`` and mean(canary) / mean(stable) >= 1 (the default ``allowedIncrease``);
   Low when ``hi < -0.25 |est|`` and the ratio <= 1. So the tolerance is a fraction of the estimated shift
   itself, not of the stable's level: in effect the CI must exclude 0 by a quarter of the estimate;
4. a solver failure (e.g. a single point per side: Kayenta's bracketing solver refuses ``min == max``) is
   an Error, and an Error metric's group drops out of the score.

Directions as a user would configure them: latency and errors ``increase``, accuracy ``decrease``.
Scoring (``WeightedSumScorer``): one group per metric, equal weights; the score is the sum over groups
with data of (100 if Pass else 0) x weight, so one High metric (or one Error) gives 66.7 < the marginal
threshold 75: the interval fails and the canary is rolled back (stop on a failed interval). Passing
intervals advance the schedule; after the last step the final score must reach the pass threshold 95.

Judging starts once each side has ``min_points`` points (default 2): with one point per side the solver
bracket is empty and every metric would be an Error; a real analysis never judges a single point.
"""

from __future__ import annotations

import math
from enum import Enum

import numpy as np

from bench.engines.base import BenchPolicy, Schedule, Verdict
from bench.simulate import ISTIO_BUCKETS_MS, Counts, FloatArray, IntervalData, Truth
from bench.stats import MannWhitneyError, commons_percentile, histogram_quantile, kayenta_shift_interval


class Direction(Enum):
    INCREASE = "increase"
    DECREASE = "decrease"
    EITHER = "either"


class Label(Enum):
    PASS = "Pass"
    HIGH = "High"
    LOW = "Low"
    NODATA = "Nodata"
    ERROR = "Error"


METRICS: tuple[tuple[str, Direction], ...] = (
    ("latency-p99", Direction.INCREASE),
    ("error-rate", Direction.INCREASE),
    ("accuracy", Direction.DECREASE),
)


def points(counts: Counts) -> tuple[float, float, float]:
    """One interval's points: p99 latency (ms), error rate, accuracy (NaN where undefined)."""
    p99 = histogram_quantile(0.99, ISTIO_BUCKETS_MS, counts.cumulative) if counts.requests > 0 else math.nan
    errors = counts.errors / counts.requests if counts.requests > 0 else math.nan
    accuracy = counts.correct / counts.labelled if counts.labelled > 0 else math.nan
    return (p99, errors, accuracy)


def transform(values: FloatArray) -> FloatArray:
    """Kayenta's default transform: NaN -> 0, then IQR outlier removal (factor 3, reduced sensitivity)."""
    data = np.nan_to_num(values, nan=0.0)
    if len(data) == 0:
        return data
    p25, p75 = commons_percentile(data, 25), commons_percentile(data, 75)
    iqr = p75 - p25
    lower = min(commons_percentile(data, 1), p25 - 3.0 * iqr)
    upper = max(commons_percentile(data, 99), p75 + 3.0 * iqr)
    return data[(data >= lower) & (data <= upper)]


class KayentaEngine:
    name = "kayenta"

    def __init__(
        self,
        tolerance: float = 0.25,
        confidence: float = 0.98,
        min_points: int = 2,
        pass_score: float = 95.0,
        marginal_score: float = 75.0,
    ) -> None:
        self.tolerance = tolerance
        self.confidence = confidence
        self.min_points = min_points
        self.pass_score = pass_score
        self.marginal_score = marginal_score
        self.policy = BenchPolicy()
        self.schedule = Schedule()
        self.canary: list[tuple[float, float, float]] = []
        self.stable: list[tuple[float, float, float]] = []
        self.rng = np.random.default_rng(0)

    def reset(self, policy: BenchPolicy) -> None:
        self.policy = policy
        self.schedule.reset()
        self.canary = []
        self.stable = []
        self.rng = np.random.default_rng(0)

    def _noise(self, values: FloatArray) -> FloatArray:
        scale = abs(float(values[0])) * 1e-5
        return values + self.rng.normal(0.0, scale, len(values)) if scale > 0 else values

    def classify(self, experiment: FloatArray, control: FloatArray, direction: Direction) -> Label:
        """``MannWhitneyClassifier.classify`` for one metric (already transformed)."""
        if len(experiment) == 0 or len(control) == 0:
            return Label.PASS  # nanStrategy none: missing data passes
        if len(experiment) == len(control) and np.array_equal(np.sort(experiment), np.sort(control)):
            return Label.PASS
        if len(np.unique(np.concatenate([experiment, control]))) == 1:
            return Label.PASS
        if len(np.unique(experiment)) == 1 and len(np.unique(control)) == 1:
            experiment, control = self._noise(experiment), self._noise(control)
        try:
            ci = kayenta_shift_interval(experiment, control, self.confidence)
        except MannWhitneyError:
            return Label.ERROR
        bound = self.tolerance * abs(ci.estimate)
        control_mean = float(np.mean(control))
        deviation = 1.0 if control_mean == 0.0 else float(np.mean(experiment)) / control_mean
        if direction in (Direction.INCREASE, Direction.EITHER) and ci.lower > bound and deviation >= 1.0:
            return Label.HIGH
        if direction in (Direction.DECREASE, Direction.EITHER) and ci.upper < -bound and deviation <= 1.0:
            return Label.LOW
        return Label.PASS

    def score(self) -> float:
        """The judge's summary score over the cumulative window (``WeightedSumScorer``, equal groups)."""
        canary = np.asarray(self.canary, dtype=np.float64)
        stable = np.asarray(self.stable, dtype=np.float64)
        weight = 100.0 / len(METRICS)
        total = 0.0
        for j, (_, direction) in enumerate(METRICS):
            label = self.classify(transform(canary[:, j]), transform(stable[:, j]), direction)
            if label in (Label.NODATA, Label.ERROR):
                continue  # the group has no data: its weight is lost
            total += (100.0 if label is Label.PASS else 0.0) * weight / 100.0
        return total

    def decide(self, data: IntervalData) -> Verdict:
        self.canary.append(points(data.canary.promql))
        self.stable.append(points(data.stable.promql))
        if len(self.canary) < self.min_points:
            verdict = self.schedule.passed(data, self.policy)
            return Verdict.CONTINUE if verdict is Verdict.PROMOTE else verdict  # never promote unjudged
        score = self.score()
        if score < self.marginal_score:
            return Verdict.ROLLBACK
        verdict = self.schedule.passed(data, self.policy)
        if verdict is Verdict.PROMOTE and score < self.pass_score:
            return Verdict.ROLLBACK
        return verdict


def make_engine(truth: Truth) -> KayentaEngine:
    return KayentaEngine()
