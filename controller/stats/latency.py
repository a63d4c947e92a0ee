"""Anytime-valid latency tests from histogram buckets: an absolute SLO guard and a relative quantile test.

The CDF at a bucket bound, F(b), is a Bernoulli mean ("request no slower than b"), so both tests
are one-sided Bernoulli tests on bucket exceedances (cf. Howard & Ramdas, "Sequential estimation of
quantiles with applications to A/B-testing and best-arm identification", Bernoulli 28(3), 2022;
Lindon, Sanden & Shirikian, "Rapid regression detection in software deployments through sequential
testing", KDD 2022). The q-quantile is Q = inf{x : F(x) >= q}, hence Q <= b exactly when
P(latency > b) <= 1 - q. Nothing is interpolated inside buckets: every claim is made at a bound.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from controller.stats.histograms import (
    QuantileEstimate,
    bucket_quantile,
    edge_at_or_above,
    edge_at_or_below,
    edges_at_or_above,
    edges_at_or_below,
    exceedances,
)
from controller.stats.mixtures import (
    beta_binomial_confidence_sequence,
    binomial_shift_log_e_many,
    to_e_value,
)
from controller.stats.validation import (
    FloatArray,
    IntArray,
    StatsInputError,
    check_alpha,
    check_cumulative,
    check_edges,
    check_nonnegative,
    check_open_unit,
    check_positive,
    check_same_edges,
    check_same_shape,
)

#: Beta prior concentration k (mean 1 - q) for the confidence sequence on an exceedance share.
CS_CONCENTRATION = 100.0


@dataclass(frozen=True)
class SloResult:
    """Evidence about the canary's SLO "q-quantile <= bound", i.e. P(latency > bound) <= 1 - q.

    ``e_value``: breached, tested at ``breach_edge``, the smallest bucket bound >= bound (None when
    the bound is past every finite bound: no breach can be shown). ``e_value_compliant``: met, tested
    at ``compliance_edge``, the largest bucket bound <= bound. ``exceedance`` is the observed share
    above ``exceedance_edge`` (the breach edge, else the compliance edge) with its anytime-valid
    confidence sequence ``(ci_low, ci_high)``; ``target`` = 1 - q.
    """

    e_value: float
    e_value_compliant: float
    breach_edge: float | None
    compliance_edge: float | None
    exceedance_edge: float | None
    exceedance: float
    ci_low: float
    ci_high: float
    target: float
    estimate: QuantileEstimate
    n: int


@dataclass(frozen=True)
class LatencyComparisonResult:
    """Evidence about "canary q-quantile <= (1 + relative_margin) x stable q-quantile".

    ``e_value``: regression shown (canary above the margin); ``e_value_noninferior``: within the
    margin shown. ``stable_edge`` / ``canary_edge``: the bucket bounds a and e that carry the
    current regression evidence (stable's quantile <= a, canary's > e >= (1 + margin) a), None while
    there is none.
    """

    e_value: float
    e_value_noninferior: float
    canary_quantile: QuantileEstimate
    stable_quantile: QuantileEstimate
    stable_edge: float | None
    canary_edge: float | None
    n_canary: int
    n_stable: int
    relative_margin: float


def _edge_log_e(cumulative: IntArray, p0: float, side: Literal["greater", "less"]) -> FloatArray:
    """log e-value at every finite bound for "P(latency > bound) vs p0", from all intervals' totals.

    The null share is the same in every interval, so the product over intervals of the binomial
    mixture telescopes to the mixture on the totals; it is monotone in the exceedance count and so
    nonincreasing (``greater``) or nondecreasing (``less``) in the bound.
    """
    over = exceedances(cumulative).sum(axis=0).astype(np.float64)
    return binomial_shift_log_e_many(over, float(cumulative[:, -1].sum()), p0, side=side)


def latency_slo_test(
    edges: npt.ArrayLike,
    canary_cumulative: npt.ArrayLike,
    *,
    quantile: float,
    bound: float,
    alpha: float = 0.05,
) -> SloResult:
    """Absolute SLO guard on the canary alone: is P(latency > bound) above 1 - quantile?

    ``canary_cumulative`` has shape (intervals, buckets), cumulative increments per interval. The
    e-process is a mixture of Bernoulli likelihood ratios on the exceedance indicator against
    p0 = 1 - quantile over a grid of log odds ratios (harmful side only), valid at every look.
    Which bound is tested, and why: if the SLO bound is not a bucket bound, the breach test uses the
    smallest bound >= it (more than 1 - q of requests above it implies the SLO is breached) and the
    compliance test the largest bound <= it. Testing the breach at a lower bound, as one might read
    the SLO off the ``le`` bucket below it, would roll back canaries that meet the SLO; put SLO
    bounds on bucket bounds to lose nothing.
    """
    bounds = check_edges(edges)
    hist = check_cumulative(bounds, canary_cumulative, name="canary_cumulative")
    q = check_open_unit(quantile, name="quantile")
    limit = check_positive(bound, name="bound")
    alpha = check_alpha(alpha)
    p0 = 1.0 - q

    breach = edge_at_or_above(bounds, limit)
    comply = edge_at_or_below(bounds, limit)
    log_breach = _edge_log_e(hist, p0, "greater")
    log_comply = _edge_log_e(hist, p0, "less")
    n = int(hist[:, -1].sum())
    shown = breach if breach is not None else comply
    if shown is not None and n > 0:
        over = float(exceedances(hist)[:, shown].sum())
        lo, hi = beta_binomial_confidence_sequence(
            over, n, alpha=alpha, prior_a=CS_CONCENTRATION * p0, prior_b=CS_CONCENTRATION * q
        )
        share = over / n
    else:
        share, lo, hi = math.nan, 0.0, 1.0
    return SloResult(
        e_value=to_e_value(float(log_breach[breach])) if breach is not None else 1.0,
        e_value_compliant=to_e_value(float(log_comply[comply])) if comply is not None else 1.0,
        breach_edge=float(bounds[breach]) if breach is not None else None,
        compliance_edge=float(bounds[comply]) if comply is not None else None,
        exceedance_edge=float(bounds[shown]) if shown is not None else None,
        exceedance=share,
        ci_low=lo,
        ci_high=hi,
        target=p0,
        estimate=bucket_quantile(q, bounds, hist.sum(axis=0)),
        n=n,
    )


def _best_pair(stable_log_e: FloatArray, canary_log_e: FloatArray, partner: IntArray) -> tuple[float, int | None]:
    """max over stable bounds a of min(E_stable(a), E_canary(partner(a))), in logs (0 if none).

    Also the index of the best stable bound, or None when no pair carries any evidence (E <= 1).
    """
    valid = np.nonzero(partner >= 0)[0]
    if valid.size == 0:
        return 0.0, None
    pair = np.minimum(stable_log_e[valid], canary_log_e[partner[valid]])
    best = int(np.argmax(pair))
    return float(pair[best]), (int(valid[best]) if pair[best] > 0 else None)


def latency_regression_test(
    edges: npt.ArrayLike,
    canary_cumulative: npt.ArrayLike,
    stable_cumulative: npt.ArrayLike,
    *,
    quantile: float,
    relative_margin: float,
    stable_edges: npt.ArrayLike | None = None,
) -> LatencyComparisonResult:
    """Relative quantile test: is the canary's q-quantile more than (1 + margin) x the stable's?

    What is tested, exactly, at bucket bounds only: for a stable bound a and the canary bound
    e(a) = the smallest bound >= (1 + m) a, regression is shown when both
    "P_stable(latency > a) < 1 - q" (so Q_stable <= a) and "P_canary(latency > e) > 1 - q" (so
    Q_canary > e >= (1 + m) Q_stable) are shown: an intersection-union test, so the evidence for
    one pair is the smaller of the two e-processes. We take the best pair and halve it: under the
    null only one fixed stable bound (the largest below Q_stable) and one fixed canary bound
    (e(a) for the smallest a >= Q_stable) can have a true null, and by monotonicity in the bound
    every pair's evidence is at most the larger of those two test martingales, so half the maximum
    is bounded by their average, itself a test martingale. The mirror (``e_value_noninferior``)
    pairs "Q_stable > a" with "Q_canary <= e" for e(a) the largest bound <= (1 + m) a.
    Why conservative under coarse buckets: the margin is rounded up to whole buckets (with Istio's
    bounds, a stable p99 in (100, 250] ms is only called regressed when the canary's p99 exceeds
    500 ms), never down, so coarse buckets cost power but never validity. The stable's quantile
    estimate is not used by the test (it is reported); stable's evidence is cheap as it takes most
    of the traffic.
    """
    bounds = check_edges(edges)
    if stable_edges is not None:
        bounds = check_same_edges(bounds, stable_edges, name="stable_edges")
    canary = check_cumulative(bounds, canary_cumulative, name="canary_cumulative")
    stable = check_cumulative(bounds, stable_cumulative, name="stable_cumulative")
    check_same_shape(canary, stable, name="stable_cumulative")
    q = check_open_unit(quantile, name="quantile")
    margin = check_nonnegative(relative_margin, name="relative_margin")
    if not math.isfinite(1.0 + margin):
        raise StatsInputError("relative_margin", "too large")
    p0 = 1.0 - q

    finite = bounds[:-1]
    up = edges_at_or_above(bounds, (1.0 + margin) * finite)
    down = edges_at_or_below(bounds, (1.0 + margin) * finite)
    log_reg, where = _best_pair(_edge_log_e(stable, p0, "less"), _edge_log_e(canary, p0, "greater"), up)
    log_ni, _ = _best_pair(_edge_log_e(stable, p0, "greater"), _edge_log_e(canary, p0, "less"), down)
    partner = int(up[where]) if where is not None else None
    return LatencyComparisonResult(
        e_value=to_e_value(log_reg) / 2.0,
        e_value_noninferior=to_e_value(log_ni) / 2.0,
        canary_quantile=bucket_quantile(q, bounds, canary.sum(axis=0)),
        stable_quantile=bucket_quantile(q, bounds, stable.sum(axis=0)),
        stable_edge=float(finite[where]) if where is not None else None,
        canary_edge=float(finite[partner]) if partner is not None else None,
        n_canary=int(canary[:, -1].sum()),
        n_stable=int(stable[:, -1].sum()),
        relative_margin=margin,
    )
