"""The contract between the harness and a decision engine, and the benchmark's policy.

The harness owns the schedule: it asks the engine once per interval, moves one step on ``advance``
(``advance`` on the last step is promotion), and ends the run on ``promote`` or ``rollback`` or at the
progress deadline. ``continue`` holds the current step for another interval.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any, Protocol

import numpy as np

from bench.simulate import N_BUCKETS, Counts, IntArray, IntervalData, Truth, VersionInterval


class Verdict(StrEnum):
    CONTINUE = "continue"
    ADVANCE = "advance"
    PROMOTE = "promote"
    ROLLBACK = "rollback"


@dataclass(frozen=True)
class BenchPolicy:
    """The rollout policy every engine is judged under (stated in ``stats.json``)."""

    latency_margin_rel: float = 0.05  # canary p99 (or latency distribution) at most 5 % worse
    error_margin_abs: float = 0.0025  # canary error rate at most +0.25 points
    accuracy_margin_abs: float = 0.01  # canary accuracy at most 1 point lower
    slo_p99_ms: float = 250.0
    slo_error_rate: float = 0.02
    alpha: float = 0.05  # false-rollback budget for the whole rollout
    deadline_s: float = 7200.0  # from the rollout's start; undecided by then: neither promoted nor rolled back
    step_intervals: int = 1  # intervals each step lasts for the schedule-driven baselines

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Engine(Protocol):
    """A decision engine: stateful over one rollout, reset before each."""

    name: str

    def reset(self, policy: BenchPolicy) -> None:
        """Forget everything: a new rollout starts under ``policy``."""
        ...

    def decide(self, data: IntervalData) -> Verdict:
        """The decision after one more interval of data."""
        ...


#: Builds an engine for one scenario; only the oracle may look at the truth.
EngineFactory = Callable[[Truth], Engine]


class Schedule:
    """Helper for schedule-driven baselines: advance after ``step_intervals`` passing intervals at a step."""

    def __init__(self) -> None:
        self.step = -1
        self.passes = 0

    def reset(self) -> None:
        self.step = -1
        self.passes = 0

    def passed(self, data: IntervalData, policy: BenchPolicy) -> Verdict:
        """Record a passing interval: advance when the step is done (promote on the last step)."""
        if data.step != self.step:
            self.step = data.step
            self.passes = 0
        self.passes += 1
        if self.passes < policy.step_intervals:
            return Verdict.CONTINUE
        return Verdict.PROMOTE if data.last_step else Verdict.ADVANCE


class Tally:
    """Cumulative counts of one version over the intervals whose raw increments are usable (no reset)."""

    def __init__(self) -> None:
        self.buckets: IntArray = np.zeros(N_BUCKETS, dtype=np.int64)
        self.requests = 0
        self.errors = 0
        self.labelled = 0
        self.correct = 0

    def add(self, version: VersionInterval) -> bool:
        """Add the interval's raw increments; a counter reset makes them unusable (no data), returns False."""
        if version.reset:
            return False
        self.add_counts(version.raw)
        return True

    def add_counts(self, counts: Counts) -> None:
        self.buckets = self.buckets + counts.buckets
        self.requests += counts.requests
        self.errors += counts.errors
        self.labelled += counts.labelled
        self.correct += counts.correct
