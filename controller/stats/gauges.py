"""Anytime-valid tests on GPU gauges, using per-pod interval means as the unit of observation.

Raw gauge samples are autocorrelated within a pod (a busy GPU stays busy), so scrapes are not
independent draws; the per-pod mean over an analysis interval is, near enough. Within an interval
the pods' values are taken as independent given the earlier intervals (each pod's own noise; a load
swing that moves every pod is part of the interval's mean).

**Exact** (bounded values, any distribution): :func:`gauge_guardrail` (one version's mean against an
absolute limit) and :func:`bounded_comparison_test` (canary vs stable for shares in [0, 1]: GPU
utilisation, memory used / total). Both bet against the null (Waudby-Smith & Ramdas, "Estimating
means of bounded random variables by betting", JRSS-B 86(1), 2024): a value z in [-B, C] whose mean
is at most 0 under the null multiplies the capital by 1 + lambda z, nonnegative for every lambda in
[0, 1 / B], with expectation at most 1. The e-value is a fixed mixture over a grid of such bets
(:data:`BET_FRACTIONS` of 1 / B, weighted by :data:`BET_WEIGHTS`; a discrete "universal portfolio",
Cover 1991): each bet's capital is a nonnegative supermartingale, so is their weighted average, and
Ville's inequality bounds the chance it ever reaches 1 / alpha by alpha; its expectation at every
fixed look is at most 1 (exactly 1 at the null boundary). Constant bets are predictable however the
values of one interval are ordered, and the pods of one interval may differ: the null bounds their
mean, and by AM-GM the product of their factors has expectation prod (1 + lambda E z_i) <=
exp(lambda sum E z_i) <= 1.

The price of exactness: no bet above 1 / B, because a null with mass at the bottom of the range
would ruin a larger one. A share of 0.95 against a 0.9 ceiling earns at most log(0.95 / 0.9) ~ 0.054
nats a pod-interval: about 70 pod-intervals to reach 1 / 0.05, where the normal mixture used before
needed about 12 by assuming near-Gaussian values with a well-estimated variance (see
tests/stats/test_gauges.py for the measurements).

**Approximate**: :func:`gauge_comparison_test` and :func:`normal_guardrail`, for unbounded gauges
(GPU-seconds per inference, mean latency in seconds), where no bound makes betting worthwhile;
they score a normal mixture with a conservative variance bound.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import optimize, special

from controller.stats.mixtures import normal_mixture_log_e, normal_mixture_radius, to_e_value
from controller.stats.validation import (
    FloatArray,
    IntArray,
    StatsInputError,
    check_alpha,
    check_nonnegative,
    check_number,
    check_positive,
    check_value_groups,
)

#: Bet sizes of the betting e-processes, as fractions of the largest bet that keeps the capital
#: nonnegative, and the share of the capital each gets (a discretised Beta(3, 1) prior): the best
#: fraction is 1 for clear breaches of a ceiling and lower when the noise is large against the
#: effect; leaning to the full bet needs ~10-20 % fewer pod-intervals in the simulations than a
#: uniform split, and loses nothing measurable when a smaller fraction is best.
BET_FRACTIONS: FloatArray = np.arange(1, 33, dtype=np.float64) / 32.0
BET_WEIGHTS: FloatArray = BET_FRACTIONS**2 / np.sum(BET_FRACTIONS**2)

#: Lower chi-square quantile behind the variance upper confidence bound of :func:`_variance_bounds`
#: (the approximate :func:`gauge_comparison_test` only).
VARIANCE_LEVEL = 0.1
#: Smallest standard deviation :func:`gauge_comparison_test` assumes, relative to the stable level,
#: so runs of identical values do not get unbounded weight.
_MIN_SD = 0.01

#: Per-interval groups of per-pod values: a list of lists, or a 2-D array when every interval has as many.
Groups = Sequence[Sequence[float]] | Sequence[FloatArray] | FloatArray


@dataclass(frozen=True)
class GuardrailResult:
    """Evidence about the mean of per-pod interval means against an absolute ``limit``.

    ``e_value``: the mean exceeds the limit (utilisation ceiling, memory headroom breached).
    ``e_value_within``: the mean is below it. ``mean`` (the plain mean of the pod-intervals) and
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
    ``e_value_noninferior``: it stays below. ``statistic``: z-score of the mean excess, positive =
    harmful (descriptive). ``estimate``, ``(ci_low, ci_high)``: canary minus stable mean per interval,
    with an anytime-valid confidence sequence at ``alpha`` (exact for :func:`bounded_comparison_test`,
    with the test's approximation for :func:`gauge_comparison_test`).
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


def guardrail_log_e_path(
    values: Groups, *, limit: float, lower: float = 0.0, upper: float = 1.0
) -> tuple[FloatArray, FloatArray]:
    """log e-values (mean above ``limit``, mean below it) after each interval of ``values``.

    The betting e-processes behind :func:`gauge_guardrail`, at every look at once (for simulations).
    """
    lo, hi, cap, groups = _guardrail_inputs(values, limit=limit, lower=lower, upper=upper)
    x, ends = _normalised(groups, lo, hi)
    m = (cap - lo) / (hi - lo)
    return _mixture_log_capital((x - m) / m, ends), _mixture_log_capital((m - x) / (1.0 - m), ends)


def gauge_guardrail(
    values: Groups,
    *,
    limit: float,
    lower: float = 0.0,
    upper: float = 1.0,
    alpha: float = 0.05,
) -> GuardrailResult:
    """Absolute guardrail on one version: is the mean per-pod interval value above ``limit``?

    ``values[j]`` holds one mean per pod for interval j, within [lower, upper] (utilisation or
    memory fraction: [0, 1]; seconds: clipped to a generous ceiling by the caller). Exact for any
    distribution on the range (see the module docstring): with x the values rescaled to [0, 1] and m
    the rescaled limit, ``e_value`` mixes the capitals prod (1 + c (x_i - m) / m) and
    ``e_value_within`` prod (1 + c (m - x_i) / (1 - m)) over c in :data:`BET_FRACTIONS`. The
    confidence sequence inverts the same e-processes at alpha / 2 a side (its bounds are where the
    capital against that mean reaches 2 / alpha; the capitals are monotone in the mean, so it is an
    interval, and it always holds the sample mean). ``mean`` is the plain mean of the pod-intervals.
    """
    alpha = check_alpha(alpha)
    lo, hi, cap, groups = _guardrail_inputs(values, limit=limit, lower=lower, upper=upper)
    x, ends = _normalised(groups, lo, hi)
    if x.size == 0:
        return GuardrailResult(1.0, 1.0, math.nan, lo, hi, 0, cap)
    m = (cap - lo) / (hi - lo)
    total = ends[-1:]
    breach, within = _mixture_log_capital((x - m) / m, total), _mixture_log_capital((m - x) / (1.0 - m), total)
    low, high = betting_confidence_bounds(x, alpha)
    width = hi - lo
    return GuardrailResult(
        e_value=to_e_value(float(breach[-1])),
        e_value_within=to_e_value(float(within[-1])),
        mean=lo + width * float(x.mean()),
        ci_low=lo + width * low,
        ci_high=lo + width * high,
        n=int(x.size),
        limit=cap,
    )


def _guardrail_inputs(
    values: Groups, *, limit: float, lower: float, upper: float
) -> tuple[float, float, float, list[FloatArray]]:
    lo = check_number(lower, name="lower")
    hi = check_number(upper, name="upper")
    if not lo < hi:
        raise StatsInputError("upper", "must be greater than lower")
    cap = check_number(limit, name="limit")
    if not lo < cap < hi:
        raise StatsInputError("limit", f"must be strictly inside ({lo}, {hi})")
    return lo, hi, cap, check_value_groups(values, name="values", lower=lo, upper=hi)


def _normalised(groups: list[FloatArray], lo: float, hi: float) -> tuple[FloatArray, IntArray]:
    """All values rescaled to [0, 1], and the index one past each interval's last value."""
    x = (np.concatenate(groups) - lo) / (hi - lo)
    ends = np.cumsum([g.size for g in groups], dtype=np.int64)
    return np.clip(x, 0.0, 1.0), ends


def _mixture_log_capital(scaled: FloatArray, ends: IntArray) -> FloatArray:
    """log sum_c w_c prod_{i < end} (1 + c u_i) over :data:`BET_FRACTIONS` c, :data:`BET_WEIGHTS` w,
    at each of ``ends``.

    ``scaled`` holds u = z / B >= -1: each value's excess over the null mean in units of the largest
    loss B, so every factor is nonnegative (0 at the bottom of the range with c = 1).
    """
    u = np.maximum(np.asarray(scaled, dtype=np.float64), -1.0)  # rounding must not dip below -1
    with np.errstate(divide="ignore"):
        logs = np.log1p(np.multiply.outer(u, BET_FRACTIONS))
    cum = np.vstack((np.zeros((1, BET_FRACTIONS.size)), np.cumsum(logs, axis=0)))
    out: FloatArray = special.logsumexp(cum[ends] + np.log(BET_WEIGHTS), axis=1)
    return out


def betting_confidence_bounds(x: FloatArray, alpha: float) -> tuple[float, float]:
    """Anytime-valid bounds on the mean of values in [0, 1], by inverting the betting e-processes.

    The lower bound is the mean mu at which the capital against "mean <= mu" reaches 2 / alpha (it
    falls as mu rises: each factor 1 + c (x - mu) / mu does), the upper one the mirror; the two sides
    share alpha, so the interval misses the true mean at some look with probability at most alpha.
    At the sample mean both capitals are at most 1 (log(1 + t) <= t), so it is always inside.
    """
    target = math.log(2.0 / alpha)
    n = np.array([x.size], dtype=np.int64)
    mean = float(x.mean())

    def above(mu: float) -> float:
        return float(_mixture_log_capital((x - mu) / mu, n)[0]) - target

    def below(mu: float) -> float:
        return float(_mixture_log_capital((mu - x) / (1.0 - mu), n)[0]) - target

    # Search brackets strictly inside (0, 1), where both capitals are finite.
    bottom = max(mean * 1e-9, float(np.finfo(np.float64).tiny))
    top = min(1.0 - (1.0 - mean) * 1e-9, float(np.nextafter(1.0, 0.0)))
    low, high = 0.0, 1.0
    if bottom < mean and above(bottom) > 0.0:
        low = float(optimize.brentq(above, bottom, mean, xtol=1e-10))
    if mean < top and below(top) > 0.0:
        high = float(optimize.brentq(below, mean, top, xtol=1e-10))
    return low, high


def bounded_comparison_log_e_path(
    canary: Groups, stable: Groups, *, relative_margin: float = 0.0, absolute_margin: float = 0.0
) -> tuple[FloatArray, FloatArray]:
    """log e-values (canary worse, non-inferior) after each interval, for shares in [0, 1].

    The betting e-processes behind :func:`bounded_comparison_test`, at every look at once (for
    simulations). ``absolute_margin`` may be negative here, down to -1: with no relative margin the
    e-processes at margin delta are those the confidence sequence for canary - stable inverts.
    """
    r = check_nonnegative(relative_margin, name="relative_margin")
    a = check_number(absolute_margin, name="absolute_margin")
    if not -1.0 < a < 1.0:
        raise StatsInputError("absolute_margin", "must be inside (-1, 1) for shares in [0, 1]")
    can, sta, ends = _paired_groups(canary, stable)
    excess = can - (1.0 + r) * sta - a  # in [-(1 + r) - a, 1 - a]
    return (
        _mixture_log_capital(excess / (1.0 + r + a), ends),
        _mixture_log_capital(-excess / (1.0 - a), ends),
    )


def bounded_comparison_test(
    canary: Groups,
    stable: Groups,
    *,
    relative_margin: float = 0.0,
    absolute_margin: float = 0.0,
    alpha: float = 0.05,
) -> GaugeComparisonResult:
    """One-sided test of canary mean > (1 + relative_margin) x stable mean + absolute_margin, exact.

    For shares in [0, 1] (GPU utilisation, memory used / total): ``canary[j]`` / ``stable[j]`` hold
    per-pod interval means for interval j; intervals missing either version are skipped. Pairing
    within an interval cancels load swings common to both versions. With n canary and k stable pods,
    the interval's pods are split, in the order given, into g = gcd(n, k) groups of n / g canary and
    k / g stable pods, and each group gives a difference d = mean(canary) - (1 + r) mean(stable) - a
    in [-(1 + r) - a, 1 - a] whose mean over groups is the interval's (1 pod against 4 gives one
    group; 4 against 4 give four, and four times the evidence, since independent groups cannot all
    sit at the bottom of the range together). ``e_value`` bets on the mean of d being above 0,
    ``e_value_noninferior`` below (see the module docstring: exact for any distribution).
    ``estimate`` is the mean of canary - stable over the groups, and ``(ci_low, ci_high)`` its
    betting confidence sequence (:func:`betting_confidence_bounds` on the differences, in [-1, 1]).
    ``statistic``: the mean of d over its standard error, descriptive only.
    """
    r = check_nonnegative(relative_margin, name="relative_margin")
    a = check_nonnegative(absolute_margin, name="absolute_margin")
    if a >= 1.0:
        raise StatsInputError("absolute_margin", "must be below 1 for shares in [0, 1]")
    alpha = check_alpha(alpha)
    worse, noninferior = bounded_comparison_log_e_path(canary, stable, relative_margin=r, absolute_margin=a)
    can, sta, ends = _paired_groups(canary, stable)
    n_intervals = int(np.count_nonzero(np.diff(ends, prepend=0)))
    if can.size == 0:
        return GaugeComparisonResult(0.0, 1.0, 1.0, math.nan, -1.0, 1.0, 0, r, a)
    excess = can - (1.0 + r) * sta - a
    # Descriptive only; identical differences get the smallest spread the gauge resolves, not 0.
    spread = max(float(excess.std(ddof=1)), 1e-6) if excess.size > 1 else math.inf
    statistic = float(excess.mean()) * math.sqrt(excess.size) / spread
    low, high = betting_confidence_bounds((can - sta + 1.0) / 2.0, alpha)
    return GaugeComparisonResult(
        statistic=statistic,
        e_value=to_e_value(float(worse[-1])),
        e_value_noninferior=to_e_value(float(noninferior[-1])),
        estimate=float((can - sta).mean()),
        ci_low=2.0 * low - 1.0,
        ci_high=2.0 * high - 1.0,
        n_intervals=n_intervals,
        relative_margin=r,
        absolute_margin=a,
    )


def _paired_groups(canary: Groups, stable: Groups) -> tuple[FloatArray, FloatArray, IntArray]:
    """Canary and stable group means over the intervals with both versions (see the test's docstring),
    and for each interval the number of groups up to and including it."""
    can = check_value_groups(canary, name="canary", lower=0.0, upper=1.0)
    sta = check_value_groups(stable, name="stable", lower=0.0, upper=1.0)
    if len(can) != len(sta):
        raise StatsInputError("stable", f"{len(sta)} intervals but the canary has {len(can)}")
    can_means: list[FloatArray] = [np.zeros(0)]
    sta_means: list[FloatArray] = [np.zeros(0)]
    counts: list[int] = []
    for c, s in zip(can, sta, strict=True):
        groups = math.gcd(c.size, s.size) if c.size and s.size else 0
        if groups:
            can_means.append(c.reshape(groups, -1).mean(axis=1))
            sta_means.append(s.reshape(groups, -1).mean(axis=1))
        counts.append(groups)
    return np.concatenate(can_means), np.concatenate(sta_means), np.cumsum(counts, dtype=np.int64)


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
    """Approximate one-sided test of canary mean > (1 + relative_margin) x stable mean + absolute_margin.

    For unbounded gauges only (GPU-seconds per inference): nothing bounds them, so the exact betting
    of :func:`bounded_comparison_test` has no largest loss to size its bets by, and this test assumes
    near-Gaussian interval differences instead. Shares in [0, 1] belong to the exact test.

    ``canary[j]`` / ``stable[j]`` hold per-pod interval means (>= 0, e.g. GPU-seconds per inference)
    for interval j; intervals missing either version are skipped. Each interval gives one difference
    d_j = mean(canary_j) - (1 + r) mean(stable_j) - a, which cancels load swings common to both
    versions. S = sum_j d_j / v_j and I = sum_j 1 / v_j are scored with the one-sided normal
    (sub-Gaussian) mixture of Johari, Pekelis & Walsh (Oper. Res. 70(3), 2022). The conservative
    variance: v_j is an upper confidence bound (:func:`_variance_bounds`) from the differences of
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


def normal_guardrail(
    values: Groups,
    *,
    limit: float,
    lower: float = 0.0,
    upper: float = 1.0,
    alpha: float = 0.05,
    tau: float | None = None,
) -> GuardrailResult:
    """Approximate guardrail for unbounded means (seconds): is the mean per-pod interval value above ``limit``?

    Kept for seconds kinds (Triton's mean latency per pod), whose only bound is the generous ceiling
    the caller clips to: betting against that ceiling (:func:`gauge_guardrail`) would take dozens of
    intervals to prove a mean under its limit.

    ``values[j]`` holds one mean per pod for interval j, within [lower, upper]. The e-process is the
    one-sided normal mixture (Johari, Pekelis & Walsh, Oper. Res. 70(3), 2022) on
    S = sum_i (y_i - limit) / v_i, I = sum_i 1 / v_i, with v_i the smaller of the range's Hoeffding
    bound w^2/4 and a variance bound from earlier intervals (:func:`_variance_bounds`): exact at the
    first looks, close to Gaussian efficiency later. ``tau`` (value units) defaults to 5% of the range.
    """
    lo, hi, cap, groups = _guardrail_inputs(values, limit=limit, lower=lower, upper=upper)
    alpha = check_alpha(alpha)
    width = hi - lo
    tau_ = 0.05 * width if tau is None else check_positive(tau, name="tau")
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
