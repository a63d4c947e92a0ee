"""Anytime-valid non-inferiority test for two proportions (error rate, accuracy) with a margin.

The mixture SPRT of Johari, Pekelis & Walsh, "Always valid inference: continuous monitoring of A/B
tests" (Operations Research 70(3), 2022), made one-sided and stratified by analysis interval so
that it stays valid while the traffic split changes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from controller.stats.mixtures import Part, bernoulli, exact_mixture_log_e, normal_mixture_radius, to_e_value
from controller.stats.validation import (
    FloatArray,
    StatsInputError,
    check_alpha,
    check_nonnegative,
    check_positive,
    two_arm_counts,
)

#: Mixing scale used when the margin is 0 (no natural effect size to centre the mixture on).
DEFAULT_TAU = 0.005
_EPS = 1e-9


@dataclass(frozen=True)
class ProportionResult:
    """Evidence about ``canary rate - stable rate`` against the margin.

    ``e_value``: evidence that the canary is worse than the margin allows (roll back when
    >= 1/alpha_j). ``e_value_noninferior``: evidence that it is within the margin (may advance).
    ``statistic``: z-score of the interval-stratified excess over the margin, positive = harmful.
    ``estimate`` and ``(ci_low, ci_high)``: canary minus stable rate with its anytime-valid
    confidence sequence at ``alpha``.
    """

    statistic: float
    e_value: float
    e_value_noninferior: float
    estimate: float
    ci_low: float
    ci_high: float
    canary_rate: float
    stable_rate: float
    n_canary: int
    n_stable: int
    information: float
    margin: float


def _bernoulli_var(p: float) -> float:
    p = min(max(p, _EPS), 1.0 - _EPS)
    return p * (1.0 - p)


def _weighted(
    bad_t: FloatArray, n_t: FloatArray, bad_c: FloatArray, n_c: FloatArray, *, var_t: float, var_c: float
) -> tuple[FloatArray, float]:
    """Per-interval information I_j of the difference of the rates, and the score sum_j I_j * d_j."""
    weight: FloatArray = 1.0 / (var_t / n_t + var_c / n_c)
    diff = bad_t / n_t - bad_c / n_c
    return weight, float((weight * diff).sum())


def proportion_test(
    canary_successes: npt.ArrayLike,
    canary_trials: npt.ArrayLike,
    stable_successes: npt.ArrayLike,
    stable_trials: npt.ArrayLike,
    *,
    margin: float,
    higher_is_better: bool = False,
    alpha: float = 0.05,
    tau: float | None = None,
) -> ProportionResult:
    """One-sided mSPRT of "canary worse than stable by more than ``margin``", and its mirror.

    Inputs are per-interval increments (successes of trials) for each version. With
    ``higher_is_better=False`` (error rate) the null of ``e_value`` is canary <= stable + margin;
    with ``True`` (accuracy) it is canary >= stable - margin. ``e_value_noninferior`` tests the
    opposite null (canary worse than the margin allows), so a large value proves non-inferiority.

    Why it stays valid while the split changes: each interval j with traffic on both arms gives a
    difference d_j of harmful rates, approximately N(delta, 1/I_j) with
    I_j = (s_T^2/n_Tj + s_C^2/n_Cj)^-1, where n_Tj, n_Cj were fixed by the split chosen before the
    interval. S = sum_j I_j (d_j - margin) is then a martingale with variance I = sum_j I_j, and
    JPW's statistic is the normal mixture of exp(theta S - theta^2 I / 2). Here each component charges,
    instead of theta^2 I / 2, the exact cumulant generating function of the requests' failure
    indicators at the null boundary (:func:`~controller.stats.mixtures.exact_mixture_log_e`), which is
    the same in the central-limit regime and stays a supermartingale for rare failures, where the
    Gaussian charge does not (a canary held at 1 % with 0.5 % errors: 6.5 % false rejections at
    alpha 0.05). Pooling raw counts instead would compare arms whose traffic came from different hours at
    different shares (Simpson's paradox) and is not a martingale when the split moves. We mix over a
    half-normal (harmful side only), which keeps the test valid for the whole composite null, not
    just its boundary. The variances are plugged in at the null boundary anchored on the stable arm
    (s_C^2 = p_C (1 - p_C), s_T^2 = (p_C + margin)(1 - p_C - margin), p_C shrunk by +1/2 / +1), so
    the weights do not depend on the canary's outcomes: more canary failures never lower
    ``e_value``. The confidence sequence uses the two-sided mixture with per-arm plug-ins, the canary's
    at least the stable's (a canary with no failures yet must not get a near-zero variance).
    ``tau`` (the mixing scale, in rate units) defaults to the margin, or 0.005 when the margin is 0;
    choose it near the smallest harmful excess worth detecting. It is capped at the canary's null
    variance s_T^2: a failure moves S by about theta / s^2 per event, and for rare events (0.1%
    errors, margin 0) components with theta well above s^2 ~ p would put their weight on alternatives
    where single errors are large evidence: valid (the exact charge), but a poor bet. Not at the
    stable's: a stable without errors has s_C^2 ~ 0, and that cap would leave both a clean canary
    unprovable and a canary failing 3 % of requests uncaught (tests/stats: type-I and power with an
    error-free stable).
    """
    cs, ct, ss, st = two_arm_counts(canary_successes, canary_trials, stable_successes, stable_trials)
    margin = check_nonnegative(margin, name="margin")
    if margin >= 1.0:
        raise StatsInputError("margin", "must be < 1")
    alpha = check_alpha(alpha)
    tau = (margin if margin > 0 else DEFAULT_TAU) if tau is None else check_positive(tau, name="tau")

    # Work on the harmful event (error, or a wrong answer when higher is better).
    bad_t = (ct - cs if higher_is_better else cs).astype(np.float64)
    bad_c = (st - ss if higher_is_better else ss).astype(np.float64)
    both = (ct > 0) & (st > 0)
    n_t, n_c = ct[both].astype(np.float64), st[both].astype(np.float64)
    b_t, b_c = bad_t[both], bad_c[both]

    p_c = (bad_c.sum() + 0.5) / (st.sum() + 1.0)
    var_t0, var_c = _bernoulli_var(p_c + margin), _bernoulli_var(p_c)
    weight, score = _weighted(b_t, n_t, b_c, n_c, var_t=var_t0, var_c=var_c)
    info = float(weight.sum())
    score -= info * margin
    statistic = score / math.sqrt(info) if info > 0 else 0.0
    tau = min(tau, var_t0)
    # Each request's failure indicator enters the score with its interval's weight over its arm's
    # requests; charging each arm its exact Bernoulli cumulant generating function (at the null
    # boundary p_C + margin for the canary, p_C for the stable) keeps every mixture component a
    # supermartingale for rare failures too (see exact_mixture_log_e).
    canary = bernoulli(min(p_c + margin, 1.0 - _EPS))
    stable = bernoulli(p_c)
    log_reg = exact_mixture_log_e(score, (Part(weight / n_t, n_t, *canary), Part(-weight / n_c, n_c, *stable)), tau)
    log_ni = exact_mixture_log_e(-score, (Part(-weight / n_t, n_t, *canary), Part(weight / n_c, n_c, *stable)), tau)

    p_t = (bad_t.sum() + 0.5) / (ct.sum() + 1.0)
    var_t = max(_bernoulli_var(p_t), var_c)
    weight_cs, score_cs = _weighted(b_t, n_t, b_c, n_c, var_t=var_t, var_c=var_c)
    info_cs = float(weight_cs.sum())
    sign = -1.0 if higher_is_better else 1.0
    if info_cs > 0:
        estimate = sign * score_cs / info_cs
        radius = normal_mixture_radius(info_cs, tau, alpha)
        lo, hi = max(estimate - radius, -1.0), min(estimate + radius, 1.0)
    else:
        estimate, lo, hi = math.nan, -1.0, 1.0

    n_canary, n_stable = int(ct.sum()), int(st.sum())
    return ProportionResult(
        statistic=statistic,
        e_value=to_e_value(log_reg),
        e_value_noninferior=to_e_value(log_ni),
        estimate=estimate,
        ci_low=lo,
        ci_high=hi,
        canary_rate=int(cs.sum()) / n_canary if n_canary else math.nan,
        stable_rate=int(ss.sum()) / n_stable if n_stable else math.nan,
        n_canary=n_canary,
        n_stable=n_stable,
        information=info,
        margin=margin,
    )
