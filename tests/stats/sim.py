"""Shared settings for the simulation tests: continuous peeking with a moving traffic split."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import numpy as np

ALPHA = 0.05
THRESHOLD = 1.0 / ALPHA
RUNS = 1000
LOOKS = 20
#: The canary's weight (percent) at each look: the split moves 1 -> 5 -> 10 -> 25 -> 50.
CANARY_PERCENT = np.array([1, 5, 5, 10, 10, 25, 25, 25, 50, 50] + [50] * (LOOKS - 10))
CANARY_SHARE = CANARY_PERCENT / 100.0


def max_rate(alpha: float = ALPHA, runs: int = RUNS) -> float:
    """The largest rejection rate a test with level alpha may show: alpha + 3 standard errors."""
    return alpha + 3.0 * math.sqrt(alpha * (1.0 - alpha) / runs)


def ever(values: Iterable[float], threshold: float = THRESHOLD) -> bool:
    """Whether a sequence of e-values (one per look) ever reaches the threshold."""
    return any(v >= threshold for v in values)


def rejection_rate(runs: int, one_run: Callable[[np.random.Generator], bool], seed: int) -> float:
    """Share of simulated runs in which ``one_run`` (given its own generator) rejects."""
    rng = np.random.default_rng(seed)
    return sum(one_run(rng) for _ in range(runs)) / runs


def split_trials(rng: np.random.Generator, per_look: float) -> tuple[np.ndarray, np.ndarray]:
    """Requests per look for (canary, stable) under the moving split."""
    total = rng.poisson(per_look, LOOKS)
    canary = rng.binomial(total, CANARY_SHARE)
    return canary, total - canary
