"""Latency shift test from histogram buckets: "canary latencies at most (1 + m) x stable's".

The relative margin of a latency metric ("p99 at most 5 % worse") cannot be resolved on Istio's
coarse buckets by comparing quantiles alone: both versions' p99 usually sit in the same bucket
(100, 250] ms. What can be tested at every bucket bound b is the scaled-stable stochastic order

    P_canary(latency > b)  <=  P_stable(latency > b / (1 + m)),

which holds for every b exactly when the canary's latencies are no worse than the stable's scaled
by (1 + m) (and so every canary quantile is at most (1 + m) x the stable's). Per bound it is a
two-proportion test — canary requests above b against stable requests above b / (1 + m) — run
with the interval-stratified one-sided mixture SPRT of :func:`proportion_test`, so it stays valid
while the traffic split changes. The stable's count above b / (1 + m) is read off its buckets by
interpolating the CDF linearly in log-latency inside the bucket (linearly in latency in the first
bucket): the one modelling assumption, mild for smooth latency distributions.

Which bounds: the finite bounds where the stable's exceedance at b / (1 + m) lies in
[(1 - q) / 4, 1/2], i.e. from around the median out to the tail the quantile q watches. Regression
evidence is the *average* of the bounds' e-values (an average of e-processes is one); proof of
non-inferiority is their *minimum* (every watched bound must be shown within the margin).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from controller.stats.proportions import proportion_test
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

#: Mixing scale of each bound's test, in standard deviations of its exceedance share: the effects
#: worth detecting (a 5-10 % latency shift) move a share by about a tenth to a fifth of its sd.
TAU_SCALE = 0.15
#: Bounds whose stable exceedance is below this share of (1 - q) carry too few events to test.
TAIL_FACTOR = 0.25
#: ... and above this share they describe the body, not the latency the metric watches.
BODY_SHARE = 0.5


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


def stable_counts_above(bounds: FloatArray, cumulative: IntArray, points: FloatArray) -> FloatArray:
    """Per interval, the number of requests above each point, interpolated inside its bucket."""
    totals = cumulative[:, -1].astype(np.float64)
    out = np.empty((cumulative.shape[0], points.size), dtype=np.float64)
    for i, x in enumerate(points):
        k = int(np.searchsorted(bounds, x, side="left"))  # bucket k holds x: bounds[k-1] < x <= bounds[k]
        upper_count = cumulative[:, k].astype(np.float64)
        lower_count = cumulative[:, k - 1].astype(np.float64) if k > 0 else np.zeros_like(totals)
        lower_bound = bounds[k - 1] if k > 0 else 0.0
        upper_bound = bounds[k]
        if not math.isfinite(upper_bound):
            fraction = 0.0  # inside the +Inf bucket: count everything above the last finite bound
        elif lower_bound > 0:
            fraction = math.log(x / lower_bound) / math.log(upper_bound / lower_bound)
        else:
            fraction = x / upper_bound
        below = lower_count + fraction * (upper_count - lower_count)
        out[:, i] = totals - below
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
    """
    bounds = check_edges(edges)
    canary = check_cumulative(bounds, canary_cumulative, name="canary_cumulative")
    stable = check_cumulative(bounds, stable_cumulative, name="stable_cumulative")
    check_same_shape(canary, stable, name="stable_cumulative")
    q = check_open_unit(quantile, name="quantile")
    margin = check_nonnegative(relative_margin, name="relative_margin")
    if margin > 10:
        raise StatsInputError("relative_margin", "must be at most 10 (1000 %)")
    alpha = check_alpha(alpha)

    finite = bounds[:-1]
    scaled_points = finite / (1.0 + margin)
    stable_above = stable_counts_above(bounds, stable, scaled_points)
    stable_total = float(stable[:, -1].sum())
    share = stable_above.sum(axis=0) / stable_total if stable_total > 0 else np.zeros(finite.size)
    watched = np.nonzero((share >= TAIL_FACTOR * (1.0 - q)) & (share <= BODY_SHARE))[0]
    n_canary, n_stable = int(canary[:, -1].sum()), int(stable[:, -1].sum())
    if watched.size == 0 or n_canary == 0:
        return LatencyShiftResult(1.0, 1.0, (), (), (), math.nan, n_canary, n_stable, margin)

    canary_trials = canary[:, -1]
    stable_trials = stable[:, -1]
    harm, proof = [], []
    canary_shares, stable_shares = [], []
    for k in watched:
        canary_above = canary_trials - canary[:, k]
        scaled_above = np.clip(np.rint(stable_above[:, k]), 0, stable_trials).astype(np.int64)
        level = float(share[k])
        tau = max(TAU_SCALE * math.sqrt(level * (1.0 - level)), 1e-4)
        result = proportion_test(
            canary_above,
            canary_trials,
            scaled_above,
            stable_trials,
            margin=0.0,
            higher_is_better=False,
            alpha=alpha,
            tau=tau,
        )
        harm.append(result.e_value)
        proof.append(result.e_value_noninferior)
        canary_shares.append(float(canary_above.sum() / max(canary_trials.sum(), 1)))
        stable_shares.append(float(scaled_above.sum() / max(stable_trials.sum(), 1)))
    ratios = [c / s if s > 0 else math.inf for c, s in zip(canary_shares, stable_shares, strict=True)]
    return LatencyShiftResult(
        e_value=float(np.mean(harm)),
        e_value_noninferior=float(np.min(proof)),
        bounds=tuple(float(finite[k]) for k in watched),
        canary_exceedance=tuple(canary_shares),
        scaled_stable_exceedance=tuple(stable_shares),
        worst_ratio=max(ratios),
        n_canary=n_canary,
        n_stable=n_stable,
        relative_margin=margin,
    )
