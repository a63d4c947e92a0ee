"""Absolute SLO guard on one version's event rate: is the canary's error rate above its bound?

An SLO "error rate <= 2%" is a one-sided Bernoulli claim on the canary alone. The e-process is the
mixture of binomial likelihood ratios that shift the log odds of the bound (Lindon & Malek,
NeurIPS 2022, with a fixed null share), valid at every look; the mirror e-process proves the rate
is within the bound. The confidence sequence is Robbins' beta-binomial mixture.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from controller.stats.mixtures import beta_binomial_confidence_sequence, binomial_shift_log_e, to_e_value
from controller.stats.validation import as_counts, check_alpha, check_open_unit, check_successes

#: Beta prior concentration for the confidence sequence (mean = the bound).
CS_CONCENTRATION = 100.0


@dataclass(frozen=True)
class RateSloResult:
    """``e_value``: the rate exceeds ``bound``; ``e_value_compliant``: it is at most ``bound``."""

    e_value: float
    e_value_compliant: float
    rate: float
    ci_low: float
    ci_high: float
    bound: float
    events: int
    trials: int


def rate_slo_test(events: npt.ArrayLike, trials: npt.ArrayLike, *, bound: float, alpha: float = 0.05) -> RateSloResult:
    """One-sided anytime-valid test of "event rate > ``bound``" from per-interval counts."""
    n = as_counts(trials, name="trials")
    x = as_counts(events, name="events")
    check_successes(x, n, name="events")
    p0 = check_open_unit(bound, name="bound")
    alpha = check_alpha(alpha)
    xf, nf = x.astype(np.float64), n.astype(np.float64)
    null = np.full(xf.shape, p0)
    breach = binomial_shift_log_e(xf, nf, null, side="greater")
    within = binomial_shift_log_e(xf, nf, null, side="less")
    total_events, total_trials = int(x.sum()), int(n.sum())
    lo, hi = beta_binomial_confidence_sequence(
        total_events, total_trials, alpha=alpha, prior_a=CS_CONCENTRATION * p0, prior_b=CS_CONCENTRATION * (1 - p0)
    )
    return RateSloResult(
        e_value=to_e_value(breach),
        e_value_compliant=to_e_value(within),
        rate=total_events / total_trials if total_trials else math.nan,
        ci_low=lo,
        ci_high=hi,
        bound=p0,
        events=total_events,
        trials=total_trials,
    )
