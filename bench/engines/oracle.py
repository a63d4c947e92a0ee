"""``oracle-sprt``: Wald's SPRT with the true per-request distributions known - the limit for any engine.

H0: the canary's requests follow the stable version's true distribution; H1: they follow the scenario's
true canary distribution (in ``aa``, where the two are equal, H1 is the policy's regression at the
margins: every latency x1.05, error rate +0.25 points, accuracy -1 point, so the test stays proper).
The log-likelihood ratio adds, per canary request, the log ratio of its latency bucket's probabilities
and of its error outcome, and per labelled canary outcome the log ratio of correct / wrong. Only the
canary's data enter (the stable's distribution is known). Intervals whose raw increments are garbled by a
counter reset are skipped. Roll back when the LLR reaches log((1 - beta) / alpha), promote when it falls
to log(beta / (1 - alpha)); otherwise advance through the schedule and hold at the last step.
"""

from __future__ import annotations

import math

import numpy as np

from bench.engines.base import BenchPolicy, Schedule, Verdict
from bench.simulate import FloatArray, IntervalData, Truth, VersionTruth


def _log_ratio(p1: FloatArray, p0: FloatArray) -> FloatArray:
    """log(p1 / p0) elementwise, 0 where both are 0 (an outcome neither hypothesis produces)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.log(p1) - np.log(p0)
    return np.where((p1 == 0) & (p0 == 0), 0.0, out)


class OracleSprtEngine:
    name = "oracle-sprt"

    def __init__(self, truth: Truth, beta: float = 0.2) -> None:
        self.truth = truth
        self.beta = beta
        self.policy = BenchPolicy()
        self.schedule = Schedule()
        self.llr = 0.0
        self.upper = 0.0
        self.lower = 0.0
        self.h1 = truth.canary
        self.bins = np.zeros(len(truth.bucket_edges_ms))
        self.error = (0.0, 0.0)  # log ratios for (error, success)
        self.label = (0.0, 0.0)  # log ratios for (correct, wrong)

    def alternative(self, policy: BenchPolicy) -> VersionTruth:
        """H1: the true canary, or the policy's margins when the canary is identical to stable."""
        if self.truth.canary != self.truth.stable:
            return self.truth.canary
        return self.truth.stable.scaled(
            1 + policy.latency_margin_rel, policy.error_margin_abs, -policy.accuracy_margin_abs
        )

    def reset(self, policy: BenchPolicy) -> None:
        self.policy = policy
        self.schedule.reset()
        self.llr = 0.0
        self.upper = math.log((1 - self.beta) / policy.alpha)
        self.lower = math.log(self.beta / (1 - policy.alpha))
        h0, h1 = self.truth.stable, self.alternative(policy)
        self.h1 = h1
        self.bins = _log_ratio(h1.bin_probs(), h0.bin_probs())
        self.error = (math.log(h1.error_rate / h0.error_rate), math.log((1 - h1.error_rate) / (1 - h0.error_rate)))
        self.label = (math.log(h1.accuracy / h0.accuracy), math.log((1 - h1.accuracy) / (1 - h0.accuracy)))

    def decide(self, data: IntervalData) -> Verdict:
        if not data.canary.reset:
            c = data.canary.raw
            seen = c.buckets > 0  # 0 x inf is no evidence: only observed buckets count
            self.llr += float(np.sum(c.buckets[seen] * self.bins[seen]))
            self.llr += c.errors * self.error[0] + (c.requests - c.errors) * self.error[1]
            self.llr += c.correct * self.label[0] + (c.labelled - c.correct) * self.label[1]
        if self.llr >= self.upper:
            return Verdict.ROLLBACK
        if self.llr <= self.lower:
            return Verdict.PROMOTE
        verdict = self.schedule.passed(data, self.policy)
        return Verdict.CONTINUE if verdict is Verdict.PROMOTE else verdict


def make_engine(truth: Truth) -> OracleSprtEngine:
    return OracleSprtEngine(truth)
