"""Latency shift test from histogram buckets: "canary latencies at most (1 + m) x stable's".

The relative margin of a latency metric ("p99 at most 5 % worse") cannot be resolved on Istio's
coarse buckets by comparing quantiles alone: both versions' p99 usually sit in the same bucket
(100, 250] ms. What can be tested at every bucket bound b is the scaled-stable stochastic order

    P_canary(latency > b)  <=  P_stable(latency > b / (1 + m)),

which holds for every b exactly when the canary's latencies are no worse than the stable's scaled
by (1 + m) (and so every canary quantile is at most (1 + m) x the stable's).

**Reading the stable's exceedance at b / (1 + m).** That point lies inside a bucket, so the stable's
CDF is interpolated there: probit(F) against log-latency, through every bound where the stable's
pooled histogram has requests on both sides, with a monotone cubic (PCHIP); the fraction of the
bucket below the point is read off that curve and applied to each interval's counts. It is exact
for lognormal latencies (probit(F) is then a straight line), and the neighbouring bounds supply the
curvature of other shapes: on Istio's buckets a 5 % margin behaves like 4.4-5.5 % for gamma,
Weibull (shape 1.5-3), log-logistic and shifted-exponential latencies, 4 % for a near-deterministic
Weibull of shape 5, and 4.2-7.4 % for a two-mode mixture. Interpolating linearly (in probit or in
log-latency between the bucket's two bounds) is badly biased on coarse buckets: the CDF linear in
log-latency (our first version) made a 5 % margin act like 12 % at 100 ms (tail regressions went
unseen for thousands of requests) and like 3.3-3.8 % at 50 ms for light-tailed latencies (a canary
exactly at the margin was rolled back in 98 % of simulated rollouts). In the first bucket (lower
bound 0), and where the stable has no requests on one side of a bound, the fraction falls back to
linear in latency or in log-latency. The interpolation uses the stable's data only, never the
canary's.

**Which bounds are watched.** The finite bounds where the stable's exceedance at b / (1 + m) lies
in [(1 - q) / 4, 1/2]: from the median out to the tail the quantile q watches. Bounds further out
carry too few events per interval for the interval-wise normal approximation; bounds in the body
would widen the claim to "the fast half of the requests got slower", which a p99 policy does not
make.

**Regression evidence** (``e_value``). Per interval j, d_j = u'(canary exceedance shares - scaled
stable exceedance shares) over the watched bounds for a direction u >= 0, weighted by
I_j = 1 / (V (1/n_canary,j + 1/n_stable,j)) with V = u' Sigma u the variance of u'(exceedance
indicators) at the null boundary (Sigma from the stable's shares). As in :func:`proportion_test`,
S = sum_j I_j d_j is a martingale with drift <= 0 under the null whatever the split does
(u >= 0 keeps every null distribution at drift <= 0), and a half-normal mixture over theta >= 0 of
exp(theta S - K(theta)) is the e-process, K charging each request's u'(exceedance indicators) its
exact cumulant generating function at the null (a Gaussian theta^2 I / 2 under-charges the few,
right-skewed tail events of a small canary share). One direction per watched bound b0:
the locally most powerful direction against "the stable scaled by one more margin", restricted to
the bounds >= b0 (u = Sigma^-1 Delta on those bounds, clipped at 0, where Delta is the change in
exceedance one more margin of slowdown would cause). The first direction pools every watched bound
(best for a slowdown of the whole distribution: about 12 % more information than the best single
bound on the benchmark's lognormal), the last is the outermost bound alone (best for a tail-only
regression, where the canary is *faster* than the null near the median and a pooled direction would
cancel out). ``e_value`` is their plain average: an average of e-processes with weights fixed in
advance (equal, one per watched bound) is one, and it costs at most log(number of bounds) against
the best direction.

**Mixing scale.** tau = :data:`TAU_MARGINS` x Delta along the direction, with Delta what one more
margin of *uniform* slowdown does to the statistic. It depends on the policy's margin and the
stable's histogram, never on the canary's data. Why twice Delta: the half-normal mixture loses
little when tau is too wide (2x: ~6 % more requests) and much when it is too narrow (1/3: ~25 %),
and regressions worth a rollback are rarely a uniform slowdown of exactly twice the margin: a tail
regression (a slow dependency, a queue) moves the outer bounds' exceedance 2-3 times as much as a
uniform slowdown of the same p99. With a margin of 0, "one more margin" is
:data:`REFERENCE_SLOWDOWN` (5 %). On the benchmark, tau = Delta needed 25 % more canary requests
for the tail scenario than 2 Delta and 1.5 % fewer for the uniform +10 % one. tau is capped at V,
as in :func:`proportion_test`, for rare tail events.

**Fine histograms.** At most :data:`MAX_WATCHED` bounds are watched (spread evenly over the watched
range): the cost grows with the square of the watched bounds and linearly with the intervals.

**Proof of non-inferiority** (``e_value_noninferior``): each watched bound on its own, the mirror
(harmless side) mixture, and the *minimum* over bounds: every watched bound out to the quantile
itself (stable exceedance >= 1 - q; the innermost watched bound when none is that wide) must be
shown within the margin. The regression side looks further out, to (1 - q) / 4, because tail
regressions show there first; proving the margin that far out is slow (where 0.5 % of requests are
slower than a bound, a 5 % margin moves that share by less than 0.1 point: over a hundred thousand
canary requests to prove) and more than a q-quantile policy promises.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import special

from controller.stats.mixtures import Part, exact_mixture_log_e, to_e_value
from controller.stats.validation import (
    FloatArray,
    IntArray,
    StatsInputError,
    check_alpha,
    check_cumulative,
    check_edges,
    check_nonnegative,
    check_open_unit,
    check_same_shape,
)

#: Mixing scale in units of Delta, the effect one more margin of uniform slowdown has on the
#: statistic (see the module docstring).
TAU_MARGINS = 2.0
#: The slowdown that stands in for "one more margin" when the margin is 0 ("no slower than stable"):
#: without it the direction and the mixing scale would be 0 and the test blind.
REFERENCE_SLOWDOWN = 0.05
#: Bounds whose stable exceedance is below this share of (1 - q) carry too few events to test.
TAIL_FACTOR = 0.25
#: ... and above this share they describe the body, not the latency the metric watches.
BODY_SHARE = 0.5
#: Most bucket bounds watched (one direction each): the cost grows with their square. Istio's default
#: histogram never has more than about a dozen in the watched range.
MAX_WATCHED = 24
#: Smallest variance and mixing scale used (exceedance shares are clipped away from 0 and 1).
_FLOOR = 1e-9


@dataclass(frozen=True)
class LatencyShiftResult:
    """``e_value``: regression beyond the margin shown; ``e_value_noninferior``: within it shown.

    ``bounds``: the bucket bounds tested; ``canary_exceedance`` / ``scaled_stable_exceedance``:
    the shares compared at each, over all usable intervals; ``worst_ratio``: the largest ratio of
    the two (above 1 means the canary is slower at that bound than the scaled stable).
    """

    e_value: float
    e_value_noninferior: float
    bounds: tuple[float, ...]
    canary_exceedance: tuple[float, ...]
    scaled_stable_exceedance: tuple[float, ...]
    worst_ratio: float
    n_canary: int
    n_stable: int
    relative_margin: float


@dataclass(frozen=True)
class Located:
    """Where points fall: bucket ``k`` (bounds[k-1] < x <= bounds[k]) and the CDF's ``fraction`` of it."""

    k: IntArray
    fraction: FloatArray


def _edge_slope(h0: float, h1: float, m0: float, m1: float) -> float:
    """PCHIP's one-sided three-point end slope, kept shape-preserving."""
    d = ((2.0 * h0 + h1) * m0 - h0 * m1) / (h0 + h1)
    if np.sign(d) != np.sign(m0):
        return 0.0
    if np.sign(m0) != np.sign(m1) and abs(d) > 3.0 * abs(m0):
        return 3.0 * m0
    return d


def pchip(xs: FloatArray, ys: FloatArray, x: FloatArray) -> FloatArray:
    """Monotone piecewise-cubic Hermite interpolation (Fritsch-Carlson, as scipy's PchipInterpolator).

    ``xs`` increasing, at least two nodes; ``x`` inside [xs[0], xs[-1]] (outside, the end cubics extend).
    """
    h = np.diff(xs)
    slope = np.diff(ys) / h
    d = np.full(xs.size, slope[0])
    if xs.size > 2:
        w1, w2 = 2.0 * h[1:] + h[:-1], h[1:] + 2.0 * h[:-1]
        same = slope[:-1] * slope[1:] > 0
        safe = np.where(slope != 0, slope, 1.0)
        d[1:-1] = np.where(same, (w1 + w2) / (w1 / safe[:-1] + w2 / safe[1:]), 0.0)
        d[0] = _edge_slope(h[0], h[1], slope[0], slope[1])
        d[-1] = _edge_slope(h[-1], h[-2], slope[-1], slope[-2])
    i = np.clip(np.searchsorted(xs, x, side="right") - 1, 0, xs.size - 2)
    t = (x - xs[i]) / h[i]
    out: FloatArray = (
        (1 + 2 * t) * (1 - t) ** 2 * ys[i]
        + t * (1 - t) ** 2 * h[i] * d[i]
        + t * t * (3 - 2 * t) * ys[i + 1]
        + t * t * (t - 1) * h[i] * d[i + 1]
    )
    return out


def locate(bounds: FloatArray, pooled: IntArray, points: FloatArray) -> Located:
    """For each point, its bucket and the interpolated fraction of the bucket below it.

    ``pooled`` is the stable's cumulative histogram over every interval. Inside a bucket whose two
    bounds both have stable requests on either side, probit(F) is interpolated against log-latency
    with a monotone cubic (PCHIP) through every such bound (F shrunk away from 0 and 1): exact for
    lognormal latencies, and the curvature of other shapes comes from the neighbouring bounds.
    Elsewhere the fraction is linear in log-latency (linear in latency in the first bucket), and 0 in
    the +Inf bucket (everything above the last finite bound counts).
    """
    total = float(pooled[-1])
    finite, counts = bounds[:-1], pooled[:-1]
    k = np.searchsorted(bounds, points, side="left")
    upper = bounds[k]
    lower = np.where(k > 0, bounds[np.maximum(k - 1, 0)], 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        fraction = np.where(lower > 0, np.log(points / lower) / np.log(upper / lower), points / upper)
    fraction = np.where(np.isfinite(upper), fraction, 0.0)
    nodes = np.nonzero((counts > 0) & (counts < total))[0]
    if nodes.size >= 2:
        k_in = np.clip(k, 1, finite.size - 1)
        has_node = np.zeros(finite.size, dtype=bool)
        has_node[nodes] = True
        inside = np.isfinite(upper) & (k > 0) & has_node[k_in - 1] & has_node[k_in] & (counts[k_in] > counts[k_in - 1])
        if inside.any():
            probit = special.ndtri((counts[nodes].astype(np.float64) + 0.5) / (total + 1.0))
            at = special.ndtr(pchip(np.log(finite[nodes]), probit, np.log(points[inside])))
            f_lo, f_hi = counts[k_in[inside] - 1] / total, counts[k_in[inside]] / total
            smooth = np.clip(((at * (total + 1.0) - 0.5) / total - f_lo) / (f_hi - f_lo), 0.0, 1.0)
            fraction[inside] = smooth
    return Located(k.astype(np.int64), fraction.astype(np.float64))


def counts_above(cumulative: IntArray, located: Located) -> FloatArray:
    """Per interval (row), the interpolated number of requests above each located point."""
    padded = np.concatenate([np.zeros((cumulative.shape[0], 1)), cumulative.astype(np.float64)], axis=1)
    upper = padded[:, located.k + 1]
    lower = padded[:, located.k]
    out: FloatArray = padded[:, -1:] - (lower + located.fraction * (upper - lower))
    return out


def _exceedance_covariance(shares: FloatArray) -> FloatArray:
    """Covariance of the indicators 1[latency > b] for bounds with these exceedance shares (decreasing)."""
    s = np.clip(shares, _FLOOR, 1.0 - _FLOOR)
    cov: FloatArray = np.minimum.outer(s, s) - np.outer(s, s)
    return cov


@dataclass(frozen=True)
class _Null:
    """The null at the watched bounds, the same for every direction.

    ``cov``: covariance of the exceedance indicators; ``levels``: the probabilities of a request
    exceeding none, the first, ..., every watched bound (the bounds are nested); ``delta``: what one
    more margin of uniform slowdown does to each exceedance share.
    """

    cov: FloatArray
    levels: FloatArray
    delta: FloatArray

    @classmethod
    def at(cls, shares: FloatArray, delta: FloatArray) -> _Null:
        """From the null's exceedance share at each watched bound (decreasing)."""
        s = np.clip(shares, 0.0, 1.0)
        levels = np.clip(-np.diff(np.concatenate([[1.0], s, [0.0]])), 0.0, None)
        return cls(_exceedance_covariance(shares), levels / levels.sum(), delta)


def _direction_log_e(
    diff: FloatArray, trials: tuple[FloatArray, FloatArray], u: FloatArray, null: _Null
) -> tuple[float, float]:
    """log e-values (harmful side, harmless side) of the mixture test along direction ``u``.

    ``diff``: per interval, canary minus scaled-stable exceedance shares at each bound; ``trials``:
    the canary's and the stable's requests behind them. A request's u'(exceedance indicators) takes
    one value per bucket between watched bounds; each version is charged that value's exact
    cumulant generating function at the null (:func:`exact_mixture_log_e`): tail bounds see few
    events per interval at a small canary share, where a Gaussian charge would be too light.
    """
    n_canary, n_stable = trials
    variance = max(float(u @ null.cov @ u), _FLOOR)
    info_j = 1.0 / (variance * (1.0 / n_canary + 1.0 / n_stable))
    score = float((info_j * (diff @ u)).sum())
    tau = min(max(TAU_MARGINS * float(u @ null.delta), _FLOOR), variance)
    values = np.concatenate([[0.0], np.cumsum(u)])
    canary = (n_canary, values, null.levels)
    stable = (n_stable, values, null.levels)
    harm = (Part(info_j / n_canary, *canary), Part(-info_j / n_stable, *stable))
    proof = (Part(-info_j / n_canary, *canary), Part(info_j / n_stable, *stable))
    return exact_mixture_log_e(score, harm, tau), exact_mixture_log_e(-score, proof, tau)


def _tail_direction(cov: FloatArray, delta: FloatArray, start: int) -> FloatArray:
    """Sigma^-1 Delta on the bounds from ``start`` outwards, clipped at 0 and scaled to max 1."""
    size = delta.size
    u = np.zeros(size)
    sub = slice(start, size)
    try:
        u[sub] = np.linalg.solve(cov[sub, sub], delta[sub])
    except np.linalg.LinAlgError:
        u[sub] = delta[sub]
    u = np.clip(u, 0.0, None)
    if u.max() <= 0.0:
        u[sub] = 1.0
    out: FloatArray = u / u.max()
    return out


def _thin(watched: IntArray, cap: int | None = None) -> IntArray:
    """At most ``cap`` (default :data:`MAX_WATCHED`) of the watched bounds, evenly by index, both ends kept.

    The test costs about (watched bounds)^2 x intervals; fine histograms (hundreds of buckets in the
    watched range) would otherwise take minutes. Which bounds are thinned out depends on the stable's
    histogram only, as the watched set itself does.
    """
    cap = MAX_WATCHED if cap is None else cap
    if watched.size <= cap:
        return watched
    picks = np.unique(np.round(np.linspace(0, watched.size - 1, cap)).astype(np.int64))
    out: IntArray = watched[picks]
    return out


def latency_shift_test(
    edges: npt.ArrayLike,
    canary_cumulative: npt.ArrayLike,
    stable_cumulative: npt.ArrayLike,
    *,
    quantile: float,
    relative_margin: float,
    alpha: float = 0.05,
) -> LatencyShiftResult:
    """Anytime-valid test of "canary latencies <= (1 + relative_margin) x stable latencies".

    Inputs are cumulative bucket increments per interval, shape (intervals, buckets), for the
    intervals where both versions have data. See the module docstring for what is tested.
    ``alpha`` is accepted for symmetry with the other tests; the e-values do not depend on it.
    """
    bounds = check_edges(edges)
    canary = check_cumulative(bounds, canary_cumulative, name="canary_cumulative")
    stable = check_cumulative(bounds, stable_cumulative, name="stable_cumulative")
    check_same_shape(canary, stable, name="stable_cumulative")
    q = check_open_unit(quantile, name="quantile")
    margin = check_nonnegative(relative_margin, name="relative_margin")
    if margin > 10:
        raise StatsInputError("relative_margin", "must be at most 10 (1000 %)")
    check_alpha(alpha)

    finite = bounds[:-1]
    pooled = stable.sum(axis=0)
    stable_total = float(pooled[-1])
    step = 1.0 + (margin if margin > 0 else REFERENCE_SLOWDOWN)
    both_points = locate(bounds, pooled, np.concatenate([finite / (1.0 + margin), finite / ((1.0 + margin) * step)]))
    size = finite.size
    at_margin = Located(both_points.k[:size], both_points.fraction[:size])
    beyond = Located(both_points.k[size:], both_points.fraction[size:])
    if stable_total > 0:
        share = counts_above(pooled[None, :], at_margin)[0] / stable_total
        share_beyond = counts_above(pooled[None, :], beyond)[0] / stable_total
    else:
        share = share_beyond = np.zeros(finite.size)
    watched = _thin(np.nonzero((share >= TAIL_FACTOR * (1.0 - q)) & (share <= BODY_SHARE))[0])
    n_canary, n_stable = int(canary[:, -1].sum()), int(stable[:, -1].sum())
    if watched.size == 0 or n_canary == 0:
        return LatencyShiftResult(1.0, 1.0, (), (), (), math.nan, n_canary, n_stable, margin)

    canary_trials = canary[:, -1].astype(np.float64)
    stable_trials = stable[:, -1].astype(np.float64)
    canary_above = canary_trials[:, None] - canary[:, watched].astype(np.float64)
    scaled_above = np.clip(
        counts_above(stable, Located(at_margin.k[watched], at_margin.fraction[watched])), 0.0, stable_trials[:, None]
    )
    both = (canary_trials > 0) & (stable_trials > 0)
    diff = canary_above[both] / canary_trials[both, None] - scaled_above[both] / stable_trials[both, None]
    trials = (canary_trials[both], stable_trials[both])
    null = _Null.at(share[watched], np.clip(share_beyond[watched] - share[watched], 0.0, None))

    harm, proof = [], []
    for i in range(watched.size):
        harm.append(_direction_log_e(diff, trials, _tail_direction(null.cov, null.delta, i), null)[0])
        if share[watched[i]] >= 1.0 - q or i == 0:
            single = np.zeros(watched.size)
            single[i] = 1.0
            proof.append(_direction_log_e(diff, trials, single, null)[1])
    log_harm = float(np.log(np.mean(np.exp(np.asarray(harm) - max(harm))))) + max(harm)

    canary_shares = canary_above.sum(axis=0) / max(canary_trials.sum(), 1.0)
    stable_shares = scaled_above.sum(axis=0) / max(stable_trials.sum(), 1.0)
    ratios = [c / s if s > 0 else math.inf for c, s in zip(canary_shares, stable_shares, strict=True)]
    return LatencyShiftResult(
        e_value=to_e_value(log_harm),
        e_value_noninferior=to_e_value(min(proof)),
        bounds=tuple(float(finite[k]) for k in watched),
        canary_exceedance=tuple(float(c) for c in canary_shares),
        scaled_stable_exceedance=tuple(float(s) for s in stable_shares),
        worst_ratio=max(ratios),
        n_canary=n_canary,
        n_stable=n_stable,
        relative_margin=margin,
    )
