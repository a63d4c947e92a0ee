"""The building blocks: closed forms against numerical integration and exact expectations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, special, stats

from controller.stats.mixtures import (
    Part,
    bernoulli,
    beta_binomial_confidence_sequence,
    binomial_shift_log_e,
    exact_mixture_log_e,
    normal_mixture_log_e,
    normal_mixture_radius,
)


@pytest.mark.parametrize(("score", "info", "tau"), [(3.0, 10.0, 0.5), (-2.0, 100.0, 0.1), (40.0, 900.0, 0.05)])
def test_normal_mixtures_match_their_integrals(score: float, info: float, tau: float) -> None:
    def component(theta: float) -> float:
        return math.exp(theta * score - theta * theta * info / 2.0)

    half = integrate.quad(lambda th: 2 * stats.norm.pdf(th, scale=tau) * component(th), 0, np.inf)[0]
    full = integrate.quad(lambda th: stats.norm.pdf(th, scale=tau) * component(th), -np.inf, np.inf)[0]
    assert normal_mixture_log_e(score, info, tau, side="greater") == pytest.approx(math.log(half), rel=1e-7)
    assert normal_mixture_log_e(-score, info, tau, side="less") == pytest.approx(math.log(half), rel=1e-7)
    assert normal_mixture_log_e(score, info, tau, side="two-sided") == pytest.approx(math.log(full), rel=1e-7)
    # ... which is Johari, Pekelis & Walsh's formula with dhat - theta0 = S / I:
    jpw = 0.5 * math.log(1 / (1 + info * tau**2)) + info**2 * tau**2 * (score / info) ** 2 / (2 * (1 + info * tau**2))
    assert normal_mixture_log_e(score, info, tau, side="two-sided") == pytest.approx(jpw)


def test_confidence_radius_inverts_the_two_sided_mixture() -> None:
    info, tau, alpha = 2500.0, 0.02, 0.05
    radius = normal_mixture_radius(info, tau, alpha)
    assert normal_mixture_log_e(info * radius, info, tau, side="two-sided") == pytest.approx(math.log(1 / alpha))


@pytest.mark.parametrize("p0", [0.01, 0.3, 0.9])
def test_binomial_mixture_has_expectation_one_at_the_null_and_less_inside(p0: float) -> None:
    n = 30
    x = np.arange(n + 1, dtype=np.float64)

    def expectation(p: float, side: str) -> float:
        e = [
            math.exp(binomial_shift_log_e(np.array([k]), np.array([float(n)]), np.array([p0]), side=side))  # type: ignore[arg-type]
            for k in x
        ]
        return float(np.dot(stats.binom.pmf(x, n, p), e))

    assert expectation(p0, "greater") == pytest.approx(1.0, rel=1e-9)
    assert expectation(p0, "less") == pytest.approx(1.0, rel=1e-9)
    assert expectation(p0 * 0.8, "greater") < 1.0
    assert expectation(min(0.99, p0 * 1.1), "less") < 1.0


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 5000), frac=st.floats(0, 1), alpha=st.sampled_from([0.01, 0.05, 0.2]))
def test_beta_binomial_sequence_contains_the_mle_and_moves_with_the_data(n: int, frac: float, alpha: float) -> None:
    s = math.floor(frac * n)
    lo, hi = beta_binomial_confidence_sequence(s, n, alpha=alpha, prior_a=1.0, prior_b=99.0)
    assert 0.0 <= lo <= s / n <= hi <= 1.0
    if s < n:
        lo2, hi2 = beta_binomial_confidence_sequence(s + 1, n, alpha=alpha, prior_a=1.0, prior_b=99.0)
        assert lo2 >= lo - 1e-12
        assert hi2 >= hi - 1e-12


# --- the exact-CGF mixture: rare events ------------------------------------------------------------


@pytest.mark.parametrize(("n", "p", "tau"), [(60, 0.005, 0.005), (300, 0.001, 0.001), (40, 0.08, 0.01)])
def test_exact_mixture_has_expectation_one_where_the_gaussian_one_does_not(n: int, p: float, tau: float) -> None:
    """One window of n Bernoulli(p) requests, coefficient 1 / p(1-p) (a canary beside a large stable).

    The exact mixture's expectation over the binomial is 1 (a mixture of mean-one components); the
    Gaussian mixture's, with the same score and information, is above 1 for rare events: it is not
    an e-value there.
    """
    var = p * (1 - p)
    coef = 1.0 / var
    part = Part(np.array([coef]), np.array([float(n)]), *bernoulli(p))
    xs = np.arange(n + 1)
    log_pmf = stats.binom.logpmf(xs, n, p)
    exact_log = [exact_mixture_log_e(coef * (x - n * p), (part,), tau) for x in xs]
    gaussian_log = [normal_mixture_log_e(coef * (x - n * p), n * coef, tau, side="greater") for x in xs]
    exact = special.logsumexp(log_pmf + np.asarray(exact_log))  # log of the expectation
    gaussian = special.logsumexp(log_pmf + np.asarray(gaussian_log))
    print(f"n {n}, p {p}: log E[exact] {exact:.2e}, log E[gaussian] {gaussian:.3g}")
    assert exact == pytest.approx(0.0, abs=1e-9)
    if p < 0.01:
        assert gaussian > math.log(1.02)


def test_exact_mixture_matches_the_gaussian_one_for_many_frequent_events() -> None:
    """Where the central limit theorem holds (many events a window), the two agree within 0.05 nats."""
    rng = np.random.default_rng(3)
    p, tau = 0.3, 0.01
    n = rng.poisson(5000, 30).astype(float)
    x = rng.binomial(n.astype(int), p + 0.005)
    coef = 1.0 / (p * (1 - p))
    score = float((coef * (x - n * p)).sum())
    part = Part(np.full(n.size, coef), n, *bernoulli(p))
    exact = exact_mixture_log_e(score, (part,), tau)
    gaussian = normal_mixture_log_e(score, float((n * coef).sum()), tau, side="greater")
    assert exact == pytest.approx(gaussian, abs=0.05)
    assert exact > 3.0  # and it is real evidence, not a degenerate zero


def test_exact_mixture_without_requests_is_no_evidence() -> None:
    empty = Part(np.array([]), np.array([]), *bernoulli(0.01))
    assert exact_mixture_log_e(5.0, (empty,), 0.01) == 0.0
    assert exact_mixture_log_e(5.0, (), 0.01) == 0.0
