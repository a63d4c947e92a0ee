"""What the anchors compute and the report needs, beyond the fixed-horizon tests of ``controller.stats``:
Prometheus' own histogram_quantile (with its bucket repair, as Flagger sees it), Kayenta's Mann-Whitney
shift interval, Apache commons' percentile, and Clopper-Pearson intervals for the rates."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import optimize
from scipy import stats as sps

FloatArray = npt.NDArray[np.float64]


def histogram_quantile(q: float, upper_bounds: Sequence[float], cumulative: npt.ArrayLike) -> float:
    """Prometheus' ``histogram_quantile`` on cumulative ``le`` counts (+Inf last), linear within a bucket.

    Follows ``promql/quantile.go``: NaN without observations; a rank in the +Inf bucket returns the largest
    finite bound; the first bucket starts at 0.
    """
    counts = np.asarray(cumulative, dtype=np.float64)
    if len(counts) < 2 or not math.isinf(upper_bounds[-1]):
        return math.nan
    counts = np.maximum.accumulate(counts)  # Prometheus repairs non-monotonic buckets the same way
    observations = counts[-1]
    if not observations > 0:
        return math.nan
    rank = q * observations
    b = int(np.searchsorted(counts[:-1], rank, side="left"))
    if b == len(counts) - 1:
        return float(upper_bounds[-2])
    if b == 0 and upper_bounds[0] <= 0:
        return float(upper_bounds[0])
    start, end, count = 0.0, float(upper_bounds[b]), float(counts[b])
    if b > 0:
        start = float(upper_bounds[b - 1])
        count -= counts[b - 1]
        rank -= counts[b - 1]
    if count <= 0:
        return end
    return float(start + (end - start) * (rank / count))


def clopper_pearson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper-Pearson) two-sided confidence interval for a binomial proportion."""
    if n <= 0:
        return (0.0, 1.0)
    a = 1 - confidence
    lo = 0.0 if k == 0 else float(sps.beta.ppf(a / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(sps.beta.ppf(1 - a / 2, k + 1, n - k))
    return (lo, hi)


def commons_percentile(values: npt.ArrayLike, p: float) -> float:
    """Apache commons-math ``StatUtils.percentile`` (its default, R type 6: position p(n+1)/100)."""
    return float(np.percentile(np.asarray(values, dtype=np.float64), p, method="weibull"))


class MannWhitneyError(RuntimeError):
    """What Kayenta's Mann-Whitney throws (degenerate data, no bracket): the metric is classified Error."""


@dataclass(frozen=True)
class ShiftInterval:
    lower: float
    upper: float
    estimate: float


def kayenta_shift_interval(experiment: npt.ArrayLike, control: npt.ArrayLike, confidence: float) -> ShiftInterval:
    """Kayenta's ``MannWhitney.calculateConfidenceInterval``: R's asymptotic ``wilcox.test(conf.int=TRUE)``.

    The confidence interval for the location shift (experiment - control) inverts the continuity-corrected,
    tie-corrected normal approximation of the rank-sum statistic; roots found by bracketing in
    [min(x) - max(y), max(x) - min(y)], the estimate being the root at z = 0.
    """
    x = np.asarray(experiment, dtype=np.float64)
    y = np.asarray(control, dtype=np.float64)
    nx, ny = len(x), len(y)
    if nx == 0 or ny == 0:
        raise MannWhitneyError("no data")
    y_sorted = np.sort(y)
    total = nx + ny

    def z_of(mu: float) -> float:
        shifted = x - mu
        lo = np.searchsorted(y_sorted, shifted, side="left")
        hi = np.searchsorted(y_sorted, shifted, side="right")
        dz = float(np.sum(lo + (hi - lo) / 2.0)) - nx * ny / 2.0
        _, ties = np.unique(np.concatenate([shifted, y]), return_counts=True)
        tie = float(np.sum(ties.astype(np.float64) ** 3 - ties))
        sigma = math.sqrt(nx * ny / 12.0 * ((total + 1) - tie / (total * (total - 1))))
        if sigma == 0:
            raise MannWhitneyError("cannot compute confidence interval when all observations are tied")
        correction = 0.5 * float(np.sign(dz))
        return (dz - correction) / sigma

    mu_min = float(x.min() - y.max())
    mu_max = float(x.max() - y.min())
    if not mu_min < mu_max:
        raise MannWhitneyError("no interval to search (min >= max)")
    zq = float(sps.norm.ppf((1 - confidence) / 2))  # negative

    def root(quantile: float) -> float:
        f_lower = z_of(mu_min) - quantile
        f_upper = z_of(mu_max) - quantile
        if f_lower <= 0:
            return mu_min
        if f_upper >= 0:
            return mu_max
        return float(optimize.brentq(lambda mu: z_of(mu) - quantile, mu_min, mu_max, xtol=1e-12, rtol=1e-10))

    lower = root(-zq)
    upper = root(zq)
    f0, f1 = z_of(mu_min), z_of(mu_max)
    if f0 == 0:
        estimate = mu_min
    elif f1 == 0:
        estimate = mu_max
    elif f0 * f1 > 0:
        raise MannWhitneyError("the estimate is not bracketed")
    else:
        estimate = float(optimize.brentq(z_of, mu_min, mu_max, xtol=1e-12, rtol=1e-10))
    return ShiftInterval(lower, upper, estimate)
