"""Anytime-valid tests on GPU gauges, using per-pod interval means as the unit of observation.

Raw gauge samples are autocorrelated within a pod (a busy GPU stays busy), so scrapes are not
independent draws; the per-pod mean over an analysis interval is, near enough. Both tests score a
one-sided normal mixture with a predictable, deliberately conservative variance: an upper
confidence bound from earlier intervals only (and Hoeffding's bound for the bounded guardrails).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import special

from controller.stats.mixtures import normal_mixture_log_e, normal_mixture_radius, to_e_value
from controller.stats.validation import (
    FloatArray,
    StatsInputError,
    check_alpha,
    check_nonnegative,
    check_number,
    check_positive,
    check_value_groups,
)

#: Lower chi-square quantile behind the variance upper confidence bound of :func:`_variance_bound`.
VARIANCE_LEVEL = 0.1
#: Smallest standard deviation assumed, relative to the range (guardrails) or the stable level
#: (comparisons), so runs of identical values do not get unbounded weight.
_MIN_SD = 0.01

#: Per-interval groups of per-pod values: a list of lists, or a 2-D array when every interval has as many.
Groups = Sequence[Sequence[float]] | Sequence[FloatArray] | FloatArray


@dataclass(frozen=True)
class GuardrailResult:
    """Evidence about the mean of per-pod interval means against an absolute ``limit``.

    ``e_value``: the mean exceeds the limit (utilisation ceiling, memory headroom breached).
    ``e_value_within``: the mean is below it. ``mean`` (weighted like the test) and
    ``(ci_low, ci_high)``: the mean and its anytime-valid confidence sequence. ``n``: pod-intervals.
    """

    e_value: float
    e_value_within: float
    mean: float
    ci_low: float
    ci_high: float
    n: int
    limit: float


@dataclass(frozen=True)
class GaugeComparisonResult:
    """Evidence about canary mean vs (1 + relative_margin) x stable mean + absolute_margin.

    ``e_value``: the canary exceeds that (e.g. costs more GPU-seconds per inference than allowed);
    ``e_value_noninferior``: it stays below. ``statistic``: z-score of the weighted mean excess,
    positive = harmful. ``estimate``, ``(ci_low, ci_high)``: canary minus stable mean per interval,
    with an anytime-valid confidence sequence at ``alpha`` (same approximation as the test).
    """

    statistic: float
    e_value: float
    e_value_noninferior: float
    estimate: float
    ci_low: float
    ci_high: float
    n_intervals: int
    relative_margin: float
    absolute_margin: float


def gauge_guardrail(
    values: Groups,
    *,
    limit: float,
    lower: float = 0.0,
    upper: float = 1.0,
    alpha: float = 0.05,
    tau: float | None = None,
) -> GuardrailResult:
    """Absolute guardrail on one version: is the mean per-pod interval value above ``limit``?

    ``values[j]`` holds one mean per pod for interval j, within [lower, upper] (utilisation or
    memory fraction: [0, 1]). The e-process is the one-sided normal mixture (Johari, Pekelis & Walsh,
    Oper. Res. 70(3), 2022) on S = sum_i (y_i - limit) / v_i, I = sum_i 1 / v_i. Values in a range of
    width w are w^2/4-sub-Gaussian (Hoeffding's lemma), so v_i = w^2/4 would be exact; we use the
    smaller of that and a variance bound from earlier intervals (:func:`_variance_bound`), exact at
    the first looks and close to Gaussian efficiency later. Exact nonparametric betting
    (Waudby-Smith & Ramdas, JRSS-B 2024) cannot bet more than 1/limit against a mean <= limit and so
    needs ~20x more pod-intervals to see utilisation 0.95 against a 0.9 ceiling; per-pod interval
    means are averages of many scrapes, close enough to Gaussian. ``tau`` (value units) defaults to
    5% of the range.
    """
    lo = check_number(lower, name="lower")
    hi = check_number(upper, name="upper")
    if not lo < hi:
        raise StatsInputError("upper", "must be greater than lower")
    cap = check_number(limit, name="limit")
    if not lo < cap < hi:
        raise StatsInputError("limit", f"must be strictly inside ({lo}, {hi})")
    alpha = check_alpha(alpha)
    width = hi - lo
    tau_ = 0.05 * width if tau is None else check_positive(tau, name="tau")
    groups = check_value_groups(values, name="values", lower=lo, upper=hi)
    y = np.concatenate(groups)
    starts = [int(i) for i in np.cumsum([0] + [g.size for g in groups[:-1]])]
    info, score = _predictable_info(y - cap, starts, cap=width * width / 4.0, floor=(_MIN_SD * width) ** 2)
    if info <= 0:
        return GuardrailResult(1.0, 1.0, math.nan, -math.inf, math.inf, 0, cap)
    centre = cap + score / info
    radius = normal_mixture_radius(info, tau_, alpha)
    return GuardrailResult(
        e_value=to_e_value(normal_mixture_log_e(score, info, tau_, side="greater")),
        e_value_within=to_e_value(normal_mixture_log_e(score, info, tau_, side="less")),
        mean=centre,
        ci_low=centre - radius,
        ci_high=centre + radius,
        n=int(y.size),
        limit=cap,
    )


def _group_means(groups: list[FloatArray]) -> tuple[FloatArray, FloatArray]:
    """Mean and size of each group (mean 0 for an empty group)."""
    sizes = np.fromiter((g.size for g in groups), dtype=np.float64, count=len(groups))
    cum = np.concatenate(([0.0], np.cumsum(np.concatenate(groups))))
    ends = np.cumsum(sizes).astype(np.int64)
    sums = cum[ends] - cum[ends - sizes.astype(np.int64)]
    return np.divide(sums, sizes, out=np.zeros_like(sums), where=sizes > 0), sizes


def _variance_bounds(values: FloatArray, starts: list[int]) -> FloatArray:
    """For each interval, an upper confidence bound for the variance from earlier intervals' values.

    s^2 (k - 1) / chi2_{k-1}(VARIANCE_LEVEL) over the k values before the interval's first one
    (inf with k < 2): with few values it is far above s^2, so early looks are weighted cautiously,
    and it approaches s^2 as data accumulate.
    """
    k = np.asarray(starts, dtype=np.float64)
    shifted = values - values[0] if values.size else values
    s1 = np.concatenate(([0.0], np.cumsum(shifted)))[starts]
    s2 = np.concatenate(([0.0], np.cumsum(shifted * shifted)))[starts]
    out = np.full(k.size, math.inf)
    ok = k >= 2
    ss = np.maximum(s2[ok] - s1[ok] * s1[ok] / k[ok], 0.0)
    out[ok] = ss / (2.0 * special.gammaincinv((k[ok] - 1.0) / 2.0, VARIANCE_LEVEL))
    return out


def _predictable_info(values: FloatArray, starts: list[int], *, cap: float, floor: float) -> tuple[float, float]:
    """Information sum 1/v_i and score sum y_i/v_i with v_i fixed before y_i's interval.

    ``starts[j]`` is the index of interval j's first value. v_i = min(cap, bound from earlier
    intervals), at least ``floor``; values with an infinite v_i (no usable bound yet) are skipped.
    Predictable weights keep the score a martingale under the null for Gaussian increments.
    """
    if not starts:
        return 0.0, 0.0
    var = np.maximum(np.minimum(cap, _variance_bounds(values, starts)), floor)
    ends = [*starts[1:], values.size]
    cum = np.concatenate(([0.0], np.cumsum(values)))
    sums = cum[ends] - cum[starts]
    sizes = np.asarray(ends, dtype=np.float64) - np.asarray(starts, dtype=np.float64)
    use = np.isfinite(var) & (sizes > 0)
    return float((sizes[use] / var[use]).sum()), float((sums[use] / var[use]).sum())


def gauge_comparison_test(
    canary: Groups,
    stable: Groups,
    *,
    relative_margin: float = 0.0,
    absolute_margin: float = 0.0,
    alpha: float = 0.05,
    tau: float | None = None,
) -> GaugeComparisonResult:
    """One-sided test of canary mean > (1 + relative_margin) x stable mean + absolute_margin.

    ``canary[j]`` / ``stable[j]`` hold per-pod interval means (>= 0, e.g. GPU-seconds per inference)
    for interval j; intervals missing either version are skipped. Each interval gives one difference
    d_j = mean(canary_j) - (1 + r) mean(stable_j) - a, which cancels load swings common to both
    versions. S = sum_j d_j / v_j and I = sum_j 1 / v_j are scored with the one-sided normal
    (sub-Gaussian) mixture of Johari, Pekelis & Walsh (Oper. Res. 70(3), 2022). The conservative
    variance: v_j is an upper confidence bound (:func:`_variance_bound`) from the differences of
    earlier intervals only, so the first two intervals only calibrate it and weights never use the
    data they weigh. tau defaults to the margin at the first interval's stable level L (r L + a), or
    0.05 L. Approximate, not exact: it assumes near-Gaussian interval differences with a stable
    variance; heavy tails (t with 3 d.f.) stay within alpha in our simulations.
    """
    r = check_nonnegative(relative_margin, name="relative_margin")
    a = check_nonnegative(absolute_margin, name="absolute_margin")
    alpha = check_alpha(alpha)
    user_tau = None if tau is None else check_positive(tau, name="tau")
    can = check_value_groups(canary, name="canary", lower=0.0, upper=math.inf)
    sta = check_value_groups(stable, name="stable", lower=0.0, upper=math.inf)
    if len(can) != len(sta):
        raise StatsInputError("stable", f"{len(sta)} intervals but the canary has {len(can)}")

    can_mean, can_size = _group_means(can)
    sta_mean, sta_size = _group_means(sta)
    both = (can_size > 0) & (sta_size > 0)
    pairs = np.stack([can_mean[both], sta_mean[both]], axis=1)
    level = float(pairs[0, 1]) if pairs.size else 0.0
    margin_at_level = r * level + a
    default_tau = margin_at_level if margin_at_level > 0 else 0.05 * level
    tau_ = user_tau if user_tau is not None else default_tau
    raw = pairs[:, 0] - pairs[:, 1]
    excess = pairs[:, 0] - (1.0 + r) * pairs[:, 1] - a
    starts = list(range(raw.size))
    floor = (_MIN_SD * max(level, a, 1e-300)) ** 2
    info, score = _predictable_info(excess, starts, cap=math.inf, floor=floor)
    info_cs, score_cs = _predictable_info(raw, starts, cap=math.inf, floor=floor)
    if info <= 0 or info_cs <= 0 or tau_ <= 0:
        return GaugeComparisonResult(0.0, 1.0, 1.0, math.nan, -math.inf, math.inf, 0, r, a)
    estimate = score_cs / info_cs
    radius = normal_mixture_radius(info_cs, tau_, alpha)
    return GaugeComparisonResult(
        statistic=score / math.sqrt(info),
        e_value=to_e_value(normal_mixture_log_e(score, info, tau_, side="greater")),
        e_value_noninferior=to_e_value(normal_mixture_log_e(score, info, tau_, side="less")),
        estimate=estimate,
        ci_low=estimate - radius,
        ci_high=estimate + radius,
        n_intervals=int(raw.size),
        relative_margin=r,
        absolute_margin=a,
    )
