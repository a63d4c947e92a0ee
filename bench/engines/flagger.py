"""``flagger``: canary-only thresholds per interval, as Flagger's scheduler judges its builtin metrics.

Each interval, the canary's ``request-duration`` (``histogram_quantile(0.99, ...)`` over the interval's
buckets) and ``request-success-rate`` are compared with fixed thresholds (here the policy's SLO: p99 <= 250
ms, error rate <= 2 %). Flagger never looks at the stable version. A failed check - a threshold crossed,
or no value (no canary requests: Prometheus returns NaN / an empty result, which Flagger counts as a
failure) - halts advancement and increments the failed-checks counter; at ``threshold`` failures Flagger
rolls back. A passing interval advances one step; passing on the last step promotes. Flagger reads
Prometheus through PromQL, whose ``rate()`` is reset-aware, so it sees the ``promql`` increments.
Accuracy has no builtin Flagger metric and is not part of the SLO, so it is not checked.
"""

from __future__ import annotations

import math

from bench.engines.base import BenchPolicy, Schedule, Verdict
from bench.simulate import ISTIO_BUCKETS_MS, IntervalData, Truth
from bench.stats import histogram_quantile


class FlaggerEngine:
    name = "flagger"

    def __init__(self, threshold: int = 5) -> None:
        self.threshold = threshold
        self.policy = BenchPolicy()
        self.failed = 0
        self.schedule = Schedule()

    def reset(self, policy: BenchPolicy) -> None:
        self.policy = policy
        self.failed = 0
        self.schedule.reset()

    def check(self, data: IntervalData) -> bool:
        """One interval's analysis: True when every metric has a value within its threshold."""
        counts = data.canary.promql
        if counts.requests <= 0:
            return False
        p99 = histogram_quantile(0.99, ISTIO_BUCKETS_MS, counts.cumulative)
        error_rate = counts.errors / counts.requests
        if math.isnan(p99) or p99 > self.policy.slo_p99_ms:
            return False
        return error_rate <= self.policy.slo_error_rate

    def decide(self, data: IntervalData) -> Verdict:
        if not self.check(data):
            self.failed += 1
            return Verdict.ROLLBACK if self.failed >= self.threshold else Verdict.CONTINUE
        return self.schedule.passed(data, self.policy)


def make_engine(truth: Truth, threshold: int = 5) -> FlaggerEngine:
    return FlaggerEngine(threshold)
