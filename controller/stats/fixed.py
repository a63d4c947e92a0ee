"""Fixed-horizon reference tests (for the benchmark and the report, never for sequential decisions).

Valid only when applied once at a horizon fixed in advance: looking after every interval with
these is exactly the repeated-testing error Kayenta makes. Results mirror scipy.stats: a frozen
result with ``statistic`` and ``pvalue``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
from scipy import special
from scipy import stats as sps

from controller.stats.validation import StatsInputError, as_counts, check_successes

Alternative = Literal["two-sided", "less", "greater"]
_ALTERNATIVES = ("two-sided", "less", "greater")


@dataclass(frozen=True)
class MannWhitneyResult:
    """``statistic`` is U for the canary (pairs canary > stable, ties count 1/2), as in scipy."""

    statistic: float
    pvalue: float
    zscore: float
    n_canary: int
    n_stable: int


@dataclass(frozen=True)
class TwoProportionResult:
    """``statistic`` is the pooled z-score of canary rate minus stable rate."""

    statistic: float
    pvalue: float
    estimate: float


@dataclass(frozen=True)
class FisherResult:
    """``statistic`` is the sample odds ratio, as scipy.stats.fisher_exact returns it."""

    statistic: float
    pvalue: float


def _check_alternative(alternative: str) -> None:
    if alternative not in _ALTERNATIVES:
        raise StatsInputError("alternative", f"must be one of {_ALTERNATIVES}")


def _normal_pvalue(z: float, alternative: Alternative) -> float:
    if alternative == "greater":
        return float(special.ndtr(-z))
    if alternative == "less":
        return float(special.ndtr(z))
    return min(1.0, 2.0 * float(special.ndtr(-abs(z))))


def binned_mannwhitneyu(
    canary_counts: npt.ArrayLike,
    stable_counts: npt.ArrayLike,
    *,
    alternative: Alternative = "two-sided",
    use_continuity: bool = True,
) -> MannWhitneyResult:
    """Mann-Whitney U from per-bucket counts (not cumulative), every bucket one tied value.

    U = sum_k t_k (C_{<k} + c_k / 2) with t, c the canary and stable counts in bucket k and C_{<k}
    the stable count below it; E[U] = mn/2; Var U = (mn/12) [(N+1) - sum_k (s_k^3 - s_k)/(N(N-1))]
    with s_k = t_k + c_k (the exact tie correction). Normal approximation, with continuity
    correction as scipy.stats.mannwhitneyu(method="asymptotic") applies it; ``greater`` means the
    canary tends to be larger (slower).
    """
    _check_alternative(alternative)
    t = as_counts(canary_counts, name="canary_counts").astype(np.float64)
    c = as_counts(stable_counts, name="stable_counts").astype(np.float64)
    if t.shape != c.shape:
        raise StatsInputError("stable_counts", "bucket layouts differ between versions")
    m, n = float(t.sum()), float(c.sum())
    if m == 0 or n == 0:
        raise StatsInputError("canary_counts" if m == 0 else "stable_counts", "no observations")
    below = np.cumsum(c) - c
    u1 = float((t * (below + c / 2.0)).sum())
    u2 = m * n - u1
    total = m + n
    s = t + c
    tie = float((s**3 - s).sum())
    sd = math.sqrt(m * n / 12.0 * ((total + 1.0) - tie / (total * (total - 1.0))))
    u = {"greater": u1, "less": u2}.get(alternative, max(u1, u2))
    numerator = u - m * n / 2.0 - (0.5 if use_continuity else 0.0)
    if sd == 0.0:
        return MannWhitneyResult(u1, 1.0, 0.0, int(m), int(n))
    z = numerator / sd
    p = float(special.ndtr(-z)) * (2.0 if alternative == "two-sided" else 1.0)
    return MannWhitneyResult(u1, min(max(p, 0.0), 1.0), z, int(m), int(n))


def _two_by_two(
    canary_successes: int, canary_trials: int, stable_successes: int, stable_trials: int
) -> tuple[int, int, int, int]:
    counts = as_counts([canary_successes, canary_trials, stable_successes, stable_trials], name="counts")
    check_successes(counts[[0, 2]], counts[[1, 3]], name="successes")
    return int(counts[0]), int(counts[1]), int(counts[2]), int(counts[3])


def two_proportion_ztest(
    canary_successes: int,
    canary_trials: int,
    stable_successes: int,
    stable_trials: int,
    *,
    alternative: Alternative = "two-sided",
) -> TwoProportionResult:
    """Pooled two-proportion z-test: z = (p1 - p2) / sqrt(p (1 - p) (1/n1 + 1/n2)).

    ``greater`` means the canary's rate is higher. With no variance (all or no successes in both
    arms) the result is z = 0, p = 1.
    """
    _check_alternative(alternative)
    x1, n1, x2, n2 = _two_by_two(canary_successes, canary_trials, stable_successes, stable_trials)
    if n1 == 0 or n2 == 0:
        raise StatsInputError("canary_trials" if n1 == 0 else "stable_trials", "no trials")
    p1, p2 = x1 / n1, x2 / n2
    pooled = (x1 + x2) / (n1 + n2)
    se = math.sqrt(pooled * (1.0 - pooled) * (1.0 / n1 + 1.0 / n2))
    if se == 0.0:
        return TwoProportionResult(0.0, 1.0, p1 - p2)
    z = (p1 - p2) / se
    return TwoProportionResult(z, _normal_pvalue(z, alternative), p1 - p2)


def fisher_exact_test(
    canary_successes: int,
    canary_trials: int,
    stable_successes: int,
    stable_trials: int,
    *,
    alternative: Alternative = "two-sided",
) -> FisherResult:
    """Fisher's exact test on [[x1, n1 - x1], [x2, n2 - x2]] (wraps scipy.stats.fisher_exact).

    ``greater`` means the canary's odds of success are higher.
    """
    _check_alternative(alternative)
    x1, n1, x2, n2 = _two_by_two(canary_successes, canary_trials, stable_successes, stable_trials)
    res = sps.fisher_exact([[x1, n1 - x1], [x2, n2 - x2]], alternative=alternative)
    return FisherResult(float(res.statistic), float(res.pvalue))
