"""Building blocks shared by the tests: mixture martingales in closed form or on a small grid.

Each function returns the *log* of a nonnegative (super)martingale under its null that starts at 1,
so Ville's inequality P(sup_t M_t >= 1/alpha) <= alpha applies however often it is evaluated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import optimize, special

from controller.stats.validation import FloatArray

Side = Literal["greater", "less", "two-sided"]

#: Log odds ratios (alternatives) mixed with equal weight by the one-sided binomial tests: from a 3%
#: to a 55-fold change of the odds, spaced by factors of 2 so the best point is within sqrt(2) of
#: any effect in range. The grid costs log(8) ~ 2.1 nats against the best single alternative.
LOG_ODDS_GRID: tuple[float, ...] = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0, 2.0, 4.0)


def log_mean_exp(x: FloatArray) -> FloatArray:
    """log(mean(exp(x))) along the first axis without overflow (scipy's logsumexp is slow here)."""
    top = x.max(axis=0)
    top = np.where(np.isfinite(top), top, 0.0)
    out: FloatArray = np.log(np.exp(x - top).mean(axis=0)) + top
    return out


def to_e_value(log_e: float) -> float:
    """exp() that returns +inf instead of overflowing."""
    return math.inf if log_e > 709.0 else math.exp(log_e)


def normal_mixture_log_e(score: float, information: float, tau: float, *, side: Side) -> float:
    """log of the Gaussian mixture martingale for a drift, with score S = sum I_j (d_j - theta0).

    For ``two-sided`` this is the mixture SPRT of Johari, Pekelis & Walsh (Oper. Res. 70(3), 2022)
    with a N(0, tau^2) mixing distribution: -1/2 log(1 + I tau^2) + S^2 tau^2 / (2 (1 + I tau^2)).
    ``greater`` / ``less`` mix over a half-normal on the positive / negative half only: each
    component exp(theta S - theta^2 I / 2) with theta on that half is a supermartingale for the whole
    composite null on the other side, which the symmetric mixture is not.
    """
    if information <= 0.0:
        return 0.0
    v = 1.0 + information * tau * tau
    quad = score * score * tau * tau / (2.0 * v)
    base = -0.5 * math.log(v) + quad
    if side == "two-sided":
        return base
    signed = score if side == "greater" else -score
    return math.log(2.0) + base + float(special.log_ndtr(signed * tau / math.sqrt(v)))


#: The half-normal mixing distribution of :func:`exact_mixture_log_e`, discretised: theta = tau * z
#: at these points, with these (fixed, summing to 1) weights. A fixed discrete prior is as valid as
#: the continuous one; 32 points on (0, 5] track it within a few hundredths of a nat.
HALF_NORMAL_Z: FloatArray = (np.arange(32, dtype=np.float64) + 0.5) * (5.0 / 32)
HALF_NORMAL_LOG_W = -0.5 * HALF_NORMAL_Z**2 - float(special.logsumexp(-0.5 * HALF_NORMAL_Z**2))


@dataclass(frozen=True)
class Part:
    """One version's requests in a score: per window j, ``requests[j]`` requests, each entering the score
    as ``coef[j]`` x (its value - the null mean); a value is one of ``values`` with null ``probs``."""

    coef: FloatArray
    requests: FloatArray
    values: FloatArray
    probs: FloatArray

    def log_mgf_sum(self, theta: FloatArray) -> FloatArray:
        """sum_j requests_j x K(theta coef_j) for each theta, K the centred value's cumulant generating function."""
        a = np.outer(theta, self.coef)
        mean = float(self.probs @ self.values)
        # log sum_m p_m exp(a v_m), shifted by its largest exponent (at the smallest or largest
        # value): a plain matrix product, ten times faster than scipy's logsumexp here.
        support = self.probs > 0
        values, probs = self.values[support], self.probs[support]
        top = np.where(a > 0, a * values.max(), a * values.min())
        k = top + np.log(np.exp(a[:, :, None] * values[None, None, :] - top[:, :, None]) @ probs) - a * mean
        out: FloatArray = k @ self.requests
        return out


def bernoulli(p: float) -> tuple[FloatArray, FloatArray]:
    """(values, probs) of a Bernoulli(p) request: the event (1) or not (0)."""
    return np.array([0.0, 1.0]), np.array([1.0 - p, p])


def exact_mixture_log_e(score: float, parts: tuple[Part, ...], tau: float) -> float:
    """log of a half-normal mixture over theta >= 0 of exp(theta S - sum of the parts' CGFs at theta).

    S = sum over parts, windows and requests of coef_j (value - null mean). Each component
    exp(theta S - sum_j n_j K(theta coef_j)) is a product of per-request likelihood-ratio-like factors
    with mean exactly 1 at the null distribution, and at most 1 for any distribution whose values are
    stochastically smaller where coef > 0 (larger where coef < 0): a supermartingale however rare the
    events, where the Gaussian mixture (:func:`normal_mixture_log_e`) charges theta^2 Var / 2 and so
    under-charges a right-skewed count. That mattered: for an error rate of 0.5 % held at a 1 % canary
    share over 60 looks, margin 0, the Gaussian mixture rejected a true null in 6.5 % of runs at
    alpha 0.05 (this one: 1.3 %); an A/A benchmark canary held at 1 % was rolled back for errors in
    10 % of runs where the budget was 3.5 %.
    """
    if tau <= 0.0 or not any(float(part.requests.sum()) > 0.0 for part in parts):
        return 0.0  # no data: exactly no evidence
    theta = np.float64(tau) * HALF_NORMAL_Z
    log_m = theta * score + HALF_NORMAL_LOG_W
    for part in parts:
        log_m -= part.log_mgf_sum(theta)
    top = float(log_m.max())
    return top + math.log(float(np.exp(log_m - top).sum()))


def normal_mixture_radius(information: float, tau: float, alpha: float) -> float:
    """Half-width of the confidence sequence from inverting the two-sided normal mixture at alpha."""
    if information <= 0.0:
        return math.inf
    v = 1.0 + information * tau * tau
    return math.sqrt(v / (tau * tau) * (math.log(v) + 2.0 * math.log(1.0 / alpha))) / information


def binomial_shift_log_e(
    successes: FloatArray,
    trials: FloatArray,
    null_p: FloatArray,
    *,
    side: Literal["greater", "less"],
    grid: tuple[float, ...] = LOG_ODDS_GRID,
) -> float:
    """log of a mixture of binomial likelihood ratios that shift every interval's log odds alike.

    Interval j has ``successes[j]`` of ``trials[j]`` with null probability ``null_p[j]``; the
    alternative moves logit(p_j) by +d (``greater``) or -d (``less``) for d on ``grid``, equal
    weights. This is Lindon & Malek's (NeurIPS 2022) theta_i proportional to rho_i e^{delta_i} with
    a constant delta while rho changes between intervals. Each component is a product of likelihood
    ratios of a natural-parameter shift, a supermartingale for every null p'_j <= null_p[j] (resp.
    >=) since the binomial log-partition function is convex; the mixture inherits that. It is
    nondecreasing in every ``successes[j]`` for ``greater`` (nonincreasing for ``less``).
    """
    if successes.size == 0:
        return 0.0
    sign = 1.0 if side == "greater" else -1.0
    deltas = sign * np.asarray(grid, dtype=np.float64)[:, None]
    eta0 = special.logit(null_p)[None, :]
    eta = eta0 + deltas
    # log p = -softplus(-eta), log(1 - p) = -softplus(eta)
    log_p_ratio = np.logaddexp(0.0, -eta0) - np.logaddexp(0.0, -eta)
    log_q_ratio = np.logaddexp(0.0, eta0) - np.logaddexp(0.0, eta)
    per_component = successes * log_p_ratio + (trials - successes) * log_q_ratio
    return float(log_mean_exp(per_component.sum(axis=1)))


def binomial_shift_log_e_many(
    successes: FloatArray,
    trials: float,
    null_p: float,
    *,
    side: Literal["greater", "less"],
    grid: tuple[float, ...] = LOG_ODDS_GRID,
) -> FloatArray:
    """:func:`binomial_shift_log_e` for one null share, for many success counts out of ``trials``."""
    sign = 1.0 if side == "greater" else -1.0
    eta0 = float(special.logit(null_p))
    eta = eta0 + sign * np.asarray(grid, dtype=np.float64)
    log_p_ratio = (np.logaddexp(0.0, -eta0) - np.logaddexp(0.0, -eta))[:, None]
    log_q_ratio = (np.logaddexp(0.0, eta0) - np.logaddexp(0.0, eta))[:, None]
    per_component = successes[None, :] * log_p_ratio + (trials - successes)[None, :] * log_q_ratio
    return log_mean_exp(per_component)


def log_multivariate_beta(alpha: FloatArray) -> float:
    """log B(alpha) = sum log Gamma(alpha_i) - log Gamma(sum alpha_i)."""
    return float(special.gammaln(alpha).sum() - special.gammaln(alpha.sum()))


def dirichlet_multinomial_log_bf(counts: FloatArray, prior: FloatArray, null: FloatArray) -> float:
    """Lindon & Malek's Bayes factor: log [B(alpha0 + x) / B(alpha0)] - sum_i x_i log theta0_i.

    The Dirichlet-multinomial marginal over the multinomial likelihood at the null (the multinomial
    coefficient cancels). Its expectation under the null is exactly 1 for any fixed ``prior``.
    """
    seen = counts > 0
    return (
        log_multivariate_beta(prior + counts)
        - log_multivariate_beta(prior)
        - float((counts[seen] * np.log(null[seen])).sum())
    )


def beta_binomial_confidence_sequence(
    successes: float, trials: float, *, alpha: float, prior_a: float, prior_b: float
) -> tuple[float, float]:
    """Robbins' beta-binomial mixture confidence sequence for a Bernoulli mean.

    {p : p^S (1-p)^(N-S) >= alpha * B(a+S, b+N-S) / B(a, b)}: the set of p whose likelihood ratio
    martingale (mixture over a fixed Beta(a, b) prior against p) is below 1/alpha; an interval
    because the log likelihood is concave. Covers the true p at all times with probability 1-alpha.
    """
    if trials <= 0:
        return 0.0, 1.0
    s, f = successes, trials - successes
    log_marginal = float(special.betaln(prior_a + s, prior_b + f) - special.betaln(prior_a, prior_b))
    level = log_marginal + math.log(alpha)

    def gap(p: float) -> float:
        return (s * math.log(p) if s else 0.0) + (f * math.log1p(-p) if f else 0.0) - level

    mle = s / trials
    bottom, top = 5e-324, 1.0 - 2.0**-53  # finite log likelihood at both ends
    lo = 0.0 if s == 0 or gap(bottom) >= 0 else float(optimize.brentq(gap, bottom, mle, xtol=1e-14))
    hi = 1.0 if f == 0 or gap(top) >= 0 else float(optimize.brentq(gap, mle, top, xtol=1e-14))
    return lo, hi
