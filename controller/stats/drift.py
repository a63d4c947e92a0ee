"""Anytime-valid comparison of two output distributions: how differently do the versions predict?

Each analysis window j holds, per version, the counts of the model's outputs in K fixed buckets
(score buckets of a histogram, or classes). The distance is the **total variation distance**
TVD = max over sets A of buckets of P_canary(A) - P_stable(A) = 1/2 sum_k |p_canary,k - p_stable,k|:
the largest share of requests whose output the canary moves from one group of buckets to another
(0.1: at most 10 % of requests would be answered in a different bucket). A team sets a margin on
it ("the canary predicts like stable within 5 %") and on a classifier's **positive rate** (the
share of outputs at or above a threshold), the one number most decisions read.

**The evidence.** For a set A fixed before window j, D_j(A) = share of the canary's outputs in A -
share of the stable's; given the counts, its mean is P_canary(A) - P_stable(A) <= TVD, and it is a
difference of two means of indicators, so by Hoeffding's lemma it is sub-Gaussian with variance
proxy (1 / n_canary + 1 / n_stable) / 4 for *any* output distributions. With weights
w_j = 4 / (1 / n_canary,j + 1 / n_stable,j), S = sum_j w_j (D_j - m) and I = sum_j w_j, every
exp(theta S - theta^2 I / 2) is a nonnegative supermartingale under "TVD <= m" (theta >= 0), and so
is the half-normal mixture of them (:func:`~controller.stats.mixtures.normal_mixture_log_e`): exact,
nonparametric, valid however often it is read and however the split changes between windows.

- ``e_value`` (the canary predicts differently by more than the margin): A_j is the set where the
  canary's outputs were more frequent in the windows *before* j (predictable, so the bound above
  holds); windows with no such set yet do not count.
- ``e_value_within`` (it predicts like stable within the margin): the null "TVD >= m" says some set
  A has P_canary(A) - P_stable(A) >= m; each set's mirror e-process (theta <= 0) is valid under its
  part of the null, so their minimum is valid under all of it, and the minimum is the set where the
  canary's weighted shares are largest (the most damning set, chosen after the fact: no cost).
- The confidence sequence for TVD inverts both at alpha / 2 each; the positive rate's difference
  has its own two-sided sequence (one fixed set: the buckets at or above the threshold).

Assumes the outputs in a window are independent draws given the counts (each request its own
input), which is what a model serving independent requests gives. "Within" also assumes the way the
canary differs is the same in every window (the distributions may move with the traffic, the
direction of their difference not): if the canary's outputs moved one way in some windows and the
other way in others, the pooled differences would cancel and "within" could be proven falsely. The
"drift" side needs no such assumption (each window is bet on its own).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from controller.stats.mixtures import normal_mixture_log_e, normal_mixture_radius, to_e_value
from controller.stats.validation import FloatArray, StatsInputError, check_alpha, check_positive

#: Mixing scale when the margin is 0 (no natural effect size to centre the mixture on).
DEFAULT_TAU = 0.05
#: Bisection steps for the confidence sequence's bounds (distance resolution 2^-30).
_STEPS = 30


@dataclass(frozen=True)
class DistributionShiftResult:
    """Evidence about the total variation distance between the canary's and the stable's outputs.

    ``e_value``: TVD > ``margin`` (the canary predicts differently); ``e_value_within``: TVD < margin.
    ``distance``: the weighted plug-in TVD (biased up by sampling noise on few requests);
    ``(ci_low, ci_high)``: its anytime-valid confidence sequence. ``positive_shift``: canary minus
    stable positive rate, with ``positive_ci``, when a threshold bucket was given.
    ``canary_shares`` / ``stable_shares``: each version's pooled share per bucket.
    """

    e_value: float
    e_value_within: float
    distance: float
    ci_low: float
    ci_high: float
    margin: float
    canary_shares: tuple[float, ...]
    stable_shares: tuple[float, ...]
    n_canary: int
    n_stable: int
    positive_shift: float | None = None
    positive_ci: tuple[float, float] | None = None


def _counts(values: npt.ArrayLike, name: str) -> npt.NDArray[np.int64]:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 2 or array.shape[1] < 2:
        raise StatsInputError(name, "must be windows x buckets (at least 2 buckets)")
    if not np.all(np.isfinite(array)) or np.any(array < 0) or np.any(array != np.round(array)):
        raise StatsInputError(name, "must be non-negative whole counts")
    return array.astype(np.int64)


def distribution_shift_test(
    canary: npt.ArrayLike,
    stable: npt.ArrayLike,
    *,
    margin: float,
    alpha: float = 0.05,
    positive_from: int | None = None,
    tau: float | None = None,
) -> DistributionShiftResult:
    """Is the total variation distance between the versions' outputs above ``margin``, or below it?

    ``canary[j][k]`` / ``stable[j][k]``: outputs in bucket k in window j (not cumulative). A window
    missing either version (no outputs) adds nothing. ``positive_from``: the first bucket counted as
    a positive output, for the positive rate's shift.
    """
    can, sta = _counts(canary, "canary"), _counts(stable, "stable")
    if can.shape != sta.shape:
        raise StatsInputError("stable", f"shape {sta.shape} differs from the canary's {can.shape}")
    if not 0.0 <= margin < 1.0 or not math.isfinite(margin):
        raise StatsInputError("margin", "must be in [0, 1)")
    alpha = check_alpha(alpha)
    buckets = can.shape[1]
    if positive_from is not None and not 0 < positive_from < buckets:
        raise StatsInputError("positive_from", f"must be a bucket index in 1..{buckets - 1}")
    tau_ = (margin if margin > 0 else DEFAULT_TAU) if tau is None else check_positive(tau, name="tau")

    n_c, n_s = can.sum(axis=1).astype(np.float64), sta.sum(axis=1).astype(np.float64)
    used = (n_c > 0) & (n_s > 0)
    weight = np.zeros_like(n_c)
    weight[used] = 4.0 / (1.0 / n_c[used] + 1.0 / n_s[used])
    diff = np.zeros(can.shape, dtype=np.float64)
    diff[used] = can[used] / n_c[used, None] - sta[used] / n_s[used, None]
    drift_score, drift_info = _predictable_score(weight, diff)
    weighted = (weight[:, None] * diff).sum(axis=0)
    worst = float(np.clip(weighted, 0.0, None).sum())  # the set where the canary's shares are largest
    info = float(weight.sum())

    def log_drift(m: float) -> float:
        return normal_mixture_log_e(drift_score - m * drift_info, drift_info, tau_, side="greater")

    def log_within(m: float) -> float:
        return normal_mixture_log_e(worst - m * info, info, tau_, side="less")

    positive: float | None = None
    positive_ci: tuple[float, float] | None = None
    if positive_from is not None and info > 0:
        positive = float(weighted[positive_from:].sum()) / info
        radius = normal_mixture_radius(info, tau_, alpha)
        positive_ci = (max(-1.0, positive - radius), min(1.0, positive + radius))
    level = math.log(2.0 / alpha)
    return DistributionShiftResult(
        e_value=to_e_value(log_drift(margin)),
        e_value_within=to_e_value(log_within(margin)),
        distance=worst / info if info > 0 else math.nan,
        ci_low=_first(lambda m: log_drift(m) < level, default=1.0),
        ci_high=_first(lambda m: log_within(m) >= level, default=1.0),
        margin=margin,
        canary_shares=_shares(can),
        stable_shares=_shares(sta),
        n_canary=int(n_c.sum()),
        n_stable=int(n_s.sum()),
        positive_shift=positive,
        positive_ci=positive_ci,
    )


def _predictable_score(weight: FloatArray, diff: FloatArray) -> tuple[float, float]:
    """S and I of the drift e-process: window j scored on the set A_j where the canary's weighted
    shares exceeded the stable's over windows 0..j-1 (skipped while that set is empty)."""
    before = np.cumsum(weight[:, None] * diff, axis=0) - weight[:, None] * diff
    chosen = before > 0.0
    counted = chosen.any(axis=1) & (weight > 0)
    score = float((weight * (diff * chosen).sum(axis=1))[counted].sum())
    return score, float(weight[counted].sum())


def _first(holds: Callable[[float], bool], *, default: float) -> float:
    """The smallest distance in [0, 1] where ``holds`` (monotone: false, then true) becomes true."""
    if holds(0.0):
        return 0.0
    if not holds(1.0):
        return default
    lo, hi = 0.0, 1.0
    for _ in range(_STEPS):
        mid = (lo + hi) / 2.0
        lo, hi = (lo, mid) if holds(mid) else (mid, hi)
    return hi


def _shares(counts: npt.NDArray[np.int64]) -> tuple[float, ...]:
    total = counts.sum()
    pooled = counts.sum(axis=0) / total if total else np.zeros(counts.shape[1])
    return tuple(float(x) for x in pooled)
