"""Anytime-valid tests on count data: sample ratio mismatch and count (error) regressions.

After Lindon & Malek, "Anytime-valid inference for multinomial count data" (NeurIPS 2022): given
that an event happened, the arm it came from is Multinomial(theta) with theta_i proportional to
rho_i e^{delta_i}, where rho is the arm's share of exposure; the null is delta = 0 (theta = rho).
Conditioning on each event's arm removes the common, time-varying event rate (load, time of day).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import special

from controller.stats.mixtures import (
    LOG_ODDS_GRID,
    binomial_shift_log_e,
    to_e_value,
)
from controller.stats.validation import (
    FloatArray,
    StatsInputError,
    as_counts,
    check_nonnegative,
    check_positive,
    check_split,
    two_arm_counts,
)

#: Dirichlet concentration k in alpha0 = k * theta0 (the default of Lindon & Malek's savvi package).
DEFAULT_CONCENTRATION = 100.0


@dataclass(frozen=True)
class SampleRatioResult:
    """Evidence that arms do not receive their configured shares (two-sided; roll back / alert).

    ``statistic`` is Pearson's chi-square of the total counts against their expected counts
    (descriptive only; decide on ``e_value``).
    """

    statistic: float
    e_value: float
    counts: tuple[int, ...]
    expected: tuple[float, ...]
    observed_shares: tuple[float, ...]
    expected_shares: tuple[float, ...]
    n: int


@dataclass(frozen=True)
class CountRegressionResult:
    """Evidence about the canary's event rate relative to the stable's, per unit of exposure.

    ``e_value``: canary rate > (1 + relative_margin) x stable rate. ``e_value_noninferior``: the
    opposite (proven within the margin). ``rate_ratio``: Mantel-Haenszel estimate of canary rate /
    stable rate, stratified by interval. ``statistic``: z-score of the canary's event count against
    its expectation at the null boundary, positive = harmful.
    """

    statistic: float
    e_value: float
    e_value_noninferior: float
    rate_ratio: float
    canary_events: int
    stable_events: int
    expected_canary_events: float
    relative_margin: float


def transported_dirichlet_log_e(counts: FloatArray, splits: FloatArray, concentration: float) -> float:
    """Product over intervals of Lindon & Malek Bayes factors, each with its own interval's split.

    Interval j contributes BF_j = [B(a_j + x_j) / B(a_j)] / prod_i rho_ji^{x_ji}, whose expectation
    is 1 under the null given n_j and rho_j whatever the prior a_j, as long as a_j is fixed before
    the interval; so the running product is a test martingale while the split changes. a_1 = k rho_1
    as in the paper; later a_j carries what was learnt: per-arm rate ratios
    r_i = (k rho_1i + sum_{l<j} x_li) / (k rho_1i + sum_{l<j} n_l rho_li) re-weighted by the new
    split, a_j = (k + sum_{l<j} n_l) * normalise(rho_j * r). With a constant split this telescopes
    exactly to the paper's BF_n = [B(alpha0 + x_n) / B(alpha0)] / prod_i theta0_i^{x_n,i}.
    """
    n = counts.sum(axis=1)
    before = np.cumsum(counts, axis=0) - counts  # x_<j per arm
    seen = np.cumsum(n) - n  # n_<j
    exposure0 = concentration * splits[0]
    exposure = exposure0 + np.cumsum(n[:, None] * splits, axis=0) - n[:, None] * splits
    theta = splits * (exposure0 + before) / exposure
    prior = (concentration + seen)[:, None] * theta / theta.sum(axis=1, keepdims=True)
    log_null = np.where(counts > 0, counts * np.log(splits), 0.0).sum(axis=1)
    log_bf = (
        special.gammaln(prior + counts).sum(axis=1)
        - special.gammaln((prior + counts).sum(axis=1))
        - special.gammaln(prior).sum(axis=1)
        + special.gammaln(prior.sum(axis=1))
        - log_null
    )
    return float(log_bf.sum())


def sample_ratio_test(
    counts: npt.ArrayLike, splits: npt.ArrayLike, *, concentration: float = DEFAULT_CONCENTRATION
) -> SampleRatioResult:
    """Sample-ratio-mismatch guard: do the arms get the traffic shares they were configured with?

    ``counts`` has shape (intervals, arms): requests per arm per interval; ``splits`` the configured
    weights per interval (Istio integer weights are fine; rows are normalised, every share must be
    > 0). Intervals are combined as in :func:`transported_dirichlet_log_e`, so weight changes between
    intervals keep the guarantee. A mismatch means the routing or the metric is broken, so every
    other comparison of the two versions is suspect.
    """
    x = as_counts(counts, name="counts", ndim=2)
    if x.shape[1] < 2:
        raise StatsInputError("counts", "need at least two arms")
    rho = check_split(splits, name="splits", intervals=x.shape[0], arms=x.shape[1])
    concentration = check_positive(concentration, name="concentration")
    xf = x.astype(np.float64)
    log_e = transported_dirichlet_log_e(xf, rho, concentration)

    totals = xf.sum(axis=0)
    expected = (xf.sum(axis=1, keepdims=True) * rho).sum(axis=0)
    n = int(x.sum())
    chi2 = float((((totals - expected) ** 2) / expected).sum()) if n else 0.0
    return SampleRatioResult(
        statistic=chi2,
        e_value=to_e_value(log_e),
        counts=tuple(int(c) for c in x.sum(axis=0)),
        expected=tuple(float(e) for e in expected),
        observed_shares=tuple(float(t / n) if n else math.nan for t in totals),
        expected_shares=tuple(float(e / n) if n else math.nan for e in expected),
        n=n,
    )


def count_regression_test(
    canary_events: npt.ArrayLike,
    canary_trials: npt.ArrayLike,
    stable_events: npt.ArrayLike,
    stable_trials: npt.ArrayLike,
    *,
    relative_margin: float = 0.0,
    grid: tuple[float, ...] = LOG_ODDS_GRID,
) -> CountRegressionResult:
    """One-sided count test: does the canary take more than its share of the events (errors)?

    Per interval, given its total number of events, the canary's count is Binomial with
    theta0_j = rho_j (1+m) / (rho_j (1+m) + 1 - rho_j) at the null boundary, rho_j = the canary's
    share of that interval's trials (observed requests, so a routing mismatch cannot pose as an
    error regression) and m = ``relative_margin``. The one-sided choice: the alternative is
    Lindon & Malek's theta proportional to rho e^delta with one delta for all intervals and
    delta - log(1+m) restricted to the harmful half, mixed over the log odds ratios in ``grid``
    (see :func:`~controller.stats.mixtures.binomial_shift_log_e`). It is a supermartingale for the
    whole composite null (canary rate <= (1+m) x stable rate) and only evidence in the harmful
    direction raises it. For m = 0 it is exact: the true conditional law is hypergeometric, smaller
    in convex order than the binomial (Hoeffding 1963), and the statistic is convex in the count; for
    m > 0 it relies on events being rare (the Poisson limit of the noncentral hypergeometric).
    """
    ce, ct, se, st = two_arm_counts(canary_events, canary_trials, stable_events, stable_trials, events="events")
    margin = check_nonnegative(relative_margin, name="relative_margin")
    if margin > 1e6:
        raise StatsInputError("relative_margin", "too large")
    if not grid or any(not (math.isfinite(d) and d > 0) for d in grid):
        raise StatsInputError("grid", "needs positive finite log odds ratios")

    use = (ct > 0) & (st > 0) & (ce + se > 0)
    nt, nc = ct[use].astype(np.float64), st[use].astype(np.float64)
    x, n = ce[use].astype(np.float64), (ce[use] + se[use]).astype(np.float64)
    tilt = (1.0 + margin) * nt
    theta0 = tilt / (tilt + nc)
    log_reg = binomial_shift_log_e(x, n, theta0, side="greater", grid=grid)
    log_ni = binomial_shift_log_e(x, n, theta0, side="less", grid=grid)

    expected = float((n * theta0).sum())
    var = float((n * theta0 * (1.0 - theta0)).sum())
    statistic = (float(x.sum()) - expected) / math.sqrt(var) if var > 0 else 0.0
    both = (ct > 0) & (st > 0)
    size = (ct + st)[both].astype(np.float64)
    mh_num = float((ce[both] * st[both] / size).sum())
    mh_den = float((se[both] * ct[both] / size).sum())
    rate_ratio = mh_num / mh_den if mh_den > 0 else (math.inf if mh_num > 0 else math.nan)
    return CountRegressionResult(
        statistic=statistic,
        e_value=to_e_value(log_reg),
        e_value_noninferior=to_e_value(log_ni),
        rate_ratio=rate_ratio,
        canary_events=int(ce.sum()),
        stable_events=int(se.sum()),
        expected_canary_events=expected,
        relative_margin=margin,
    )
