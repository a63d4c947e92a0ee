"""``naive-mwu`` and ``fixed``: classical fixed-horizon tests on per-request data, peeked at or not.

Both pool the raw increments of every interval without a counter reset (a reset interval is no data),
and test, one-sided, whether the canary is *worse* than stable (no margin: a plain regression test):
latency with the binned Mann-Whitney U on the bucket counts, errors and accuracy with pooled
two-proportion z tests, each at alpha / 3 (Bonferroni over the three metrics).

``naive-mwu`` re-tests the cumulative data every interval, with no correction for the repeated looks,
rolls back on the first rejection, advances otherwise and promotes after the last step.
``fixed`` tests once, after the last step: promote if nothing rejects, else roll back. The canary serves
its traffic through every step before that single look: that exposure is its harm.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from bench.engines.base import BenchPolicy, Schedule, Tally, Verdict
from bench.simulate import IntervalData, Truth
from controller.stats import StatsInputError, binned_mannwhitneyu, two_proportion_ztest


def _pvalue(test: Callable[[], float]) -> float:
    """A test's p-value, or NaN where a version has no data yet."""
    try:
        return test()
    except StatsInputError:
        return math.nan


def regression_pvalues(canary: Tally, stable: Tally) -> dict[str, float]:
    """One-sided p-values that the canary is worse than stable, per metric (NaN without data)."""
    return {
        "latency": _pvalue(lambda: binned_mannwhitneyu(canary.buckets, stable.buckets, alternative="greater").pvalue),
        "error-rate": _pvalue(
            lambda: (
                two_proportion_ztest(
                    canary.errors, canary.requests, stable.errors, stable.requests, alternative="greater"
                ).pvalue
            )
        ),
        # worse accuracy = more misclassified labelled requests
        "accuracy": _pvalue(
            lambda: (
                two_proportion_ztest(
                    canary.labelled - canary.correct,
                    canary.labelled,
                    stable.labelled - stable.correct,
                    stable.labelled,
                    alternative="greater",
                ).pvalue
            )
        ),
    }


def rejects(canary: Tally, stable: Tally, level: float) -> bool:
    return any(not math.isnan(p) and p <= level for p in regression_pvalues(canary, stable).values())


class _PooledEngine:
    """Pools the usable raw increments of both versions; subclasses decide when to test."""

    name = ""

    def __init__(self) -> None:
        self.policy = BenchPolicy()
        self.schedule = Schedule()
        self.canary = Tally()
        self.stable = Tally()

    def reset(self, policy: BenchPolicy) -> None:
        self.__init__()  # type: ignore[misc]
        self.policy = policy

    def _pool(self, data: IntervalData) -> None:
        self.canary.add(data.canary)
        self.stable.add(data.stable)

    def _rejects(self) -> bool:
        return rejects(self.canary, self.stable, self.policy.alpha / 3)


class NaiveMannWhitneyEngine(_PooledEngine):
    name = "naive-mwu"

    def decide(self, data: IntervalData) -> Verdict:
        self._pool(data)
        if self._rejects():
            return Verdict.ROLLBACK
        return self.schedule.passed(data, self.policy)


class FixedHorizonEngine(_PooledEngine):
    name = "fixed"

    def decide(self, data: IntervalData) -> Verdict:
        self._pool(data)
        verdict = self.schedule.passed(data, self.policy)
        if verdict is not Verdict.PROMOTE:
            return verdict
        return Verdict.ROLLBACK if self._rejects() else Verdict.PROMOTE


def make_naive(truth: Truth) -> NaiveMannWhitneyEngine:
    return NaiveMannWhitneyEngine()


def make_fixed(truth: Truth) -> FixedHorizonEngine:
    return FixedHorizonEngine()
