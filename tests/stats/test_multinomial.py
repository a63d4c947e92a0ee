"""Sample ratio mismatch and count regression tests (Lindon & Malek, NeurIPS 2022)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.stats import StatsInputError, count_regression_test, sample_ratio_test
from controller.stats.mixtures import dirichlet_multinomial_log_bf
from controller.stats.multinomial import transported_dirichlet_log_e
from tests.stats.sim import CANARY_PERCENT, CANARY_SHARE, LOOKS, RUNS, THRESHOLD, max_rate, split_trials

SPLITS = np.stack([100 - CANARY_PERCENT, CANARY_PERCENT], axis=1)


def _srm_run(rng: np.random.Generator, log_bias: float) -> bool:
    """Requests per look; the canary's true share is its weight tilted by exp(log_bias)."""
    total = rng.poisson(5000, LOOKS)
    tilted = CANARY_SHARE * math.exp(log_bias)
    canary = rng.binomial(total, tilted / (tilted + 1 - CANARY_SHARE))
    counts = np.stack([total - canary, canary], axis=1)
    return any(sample_ratio_test(counts[:t], SPLITS[:t]).e_value >= THRESHOLD for t in range(1, LOOKS + 1))


def test_srm_type_one_error_while_the_split_moves() -> None:
    rng = np.random.default_rng(21)
    rate = sum(_srm_run(rng, 0.0) for _ in range(RUNS)) / RUNS
    print(f"sample ratio: type-I {rate:.4f}")
    assert rate <= max_rate()


def test_srm_power() -> None:
    """The canary gets 5% more than its share (e.g. 5.25% instead of 5%)."""
    rng = np.random.default_rng(22)
    rate = sum(_srm_run(rng, math.log(1.05)) for _ in range(200)) / 200
    print(f"sample ratio: power at a 5% relative mismatch {rate:.3f}")
    assert rate >= 0.9


def _count_run(rng: np.random.Generator, ratio: float, margin: float = 0.0) -> tuple[bool, bool]:
    nt, nc = split_trials(rng, 5000)
    xt, xc = rng.binomial(nt, 0.01 * ratio), rng.binomial(nc, 0.01)
    worse = noninferior = False
    for t in range(1, LOOKS + 1):
        res = count_regression_test(xt[:t], nt[:t], xc[:t], nc[:t], relative_margin=margin)
        worse |= res.e_value >= THRESHOLD
        noninferior |= res.e_value_noninferior >= THRESHOLD
    return worse, noninferior


def test_count_regression_type_one_error_while_the_split_moves() -> None:
    """Same 1% error rate on both versions, and a canary at exactly the 20% relative margin."""
    rng = np.random.default_rng(23)
    equal = np.array([_count_run(rng, 1.0) for _ in range(RUNS)]).mean(axis=0)
    at_margin = np.array([_count_run(rng, 1.2, 0.2) for _ in range(RUNS // 2)]).mean(axis=0)
    print(f"count regression: type-I {equal[0]:.4f} (margin 0), {at_margin[0]:.4f} (margin 20%)")
    assert equal[0] <= max_rate()
    assert equal[1] <= max_rate()
    assert at_margin[0] <= max_rate(runs=RUNS // 2)
    assert at_margin[1] <= max_rate(runs=RUNS // 2)


def test_count_regression_power() -> None:
    rng = np.random.default_rng(24)
    results = np.array([_count_run(rng, 1.4) for _ in range(200)]).mean(axis=0)
    print(f"count regression: power at 1.4x errors {results[0]:.3f}")
    assert results[0] >= 0.9
    assert results[1] <= max_rate(runs=200)
    good = np.array([_count_run(rng, 0.7, 0.2) for _ in range(100)]).mean(axis=0)
    assert good[0] <= max_rate(runs=100)
    assert good[1] >= 0.8


def test_constant_split_reproduces_the_papers_bayes_factor() -> None:
    """With one split the interval product telescopes to B(a0 + x)/B(a0) / prod theta0^x."""
    rng = np.random.default_rng(25)
    rho = np.array([0.7, 0.2, 0.1])
    counts = rng.multinomial(300, [0.6, 0.3, 0.1], size=7).astype(np.float64)
    product = transported_dirichlet_log_e(counts, np.tile(rho, (7, 1)), 100.0)
    batch = dirichlet_multinomial_log_bf(counts.sum(axis=0), 100.0 * rho, rho)
    assert product == pytest.approx(batch, rel=1e-10)


def test_dirichlet_bayes_factor_has_expectation_one_under_the_null() -> None:
    """Sum over all outcomes of P0(x) * BF(x) = 1 (small n, exact enumeration)."""
    from scipy import stats

    rho, prior, n = np.array([0.8, 0.2]), np.array([3.0, 1.5]), 12
    total = sum(
        stats.binom.pmf(x, n, rho[1]) * math.exp(dirichlet_multinomial_log_bf(np.array([n - x, x]), prior, rho))
        for x in range(n + 1)
    )
    assert total == pytest.approx(1.0, rel=1e-12)


def test_srm_result_fields() -> None:
    res = sample_ratio_test([[950, 50], [900, 100]], [[95, 5], [90, 10]])
    assert res.counts == (1850, 150)
    assert res.expected == pytest.approx((1850.0, 150.0))
    assert res.statistic == pytest.approx(0.0)
    assert res.e_value < 1.0


@pytest.mark.parametrize(
    ("counts", "splits", "field"),
    [
        ([[10, 1]], [[100, 0]], "splits"),
        ([[10, 1]], [[90, 10], [90, 10]], "splits"),
        ([[10, -1]], [[90, 10]], "counts"),
        ([[10, 1]], [[90, float("inf")]], "splits"),
        ([[10]], [[1]], "counts"),
        ([10, 1], [90, 10], "counts"),
    ],
)
def test_srm_bad_input(counts: list[list[float]], splits: list[list[float]], field: str) -> None:
    with pytest.raises(StatsInputError) as info:
        sample_ratio_test(counts, splits)
    assert info.value.field == field


def test_count_bad_input() -> None:
    with pytest.raises(StatsInputError):
        count_regression_test([5], [4], [1], [10])
    with pytest.raises(StatsInputError):
        count_regression_test([1], [4], [1], [10], relative_margin=-0.5)
    with pytest.raises(StatsInputError):
        count_regression_test([1], [4], [1], [10], grid=())


@settings(max_examples=150, deadline=None)
@given(
    data=st.lists(
        st.tuples(st.integers(1, 400), st.integers(1, 4000), st.floats(0, 1), st.floats(0, 1)),
        min_size=1,
        max_size=6,
    ),
    pick=st.integers(0, 5),
    margin=st.sampled_from([0.0, 0.2]),
)
def test_more_canary_errors_never_lower_the_evidence(
    data: list[tuple[int, int, float, float]], pick: int, margin: float
) -> None:
    nt = [d[0] for d in data]
    nc = [d[1] for d in data]
    xt = [int(d[2] * n) for d, n in zip(data, nt, strict=True)]
    xc = [int(d[3] * n) for d, n in zip(data, nc, strict=True)]
    j = pick % len(data)
    if xt[j] == nt[j]:
        return
    more = list(xt)
    more[j] += 1
    before = count_regression_test(xt, nt, xc, nc, relative_margin=margin)
    after = count_regression_test(more, nt, xc, nc, relative_margin=margin)
    assert after.e_value >= before.e_value * (1 - 1e-12)
    assert after.e_value_noninferior <= before.e_value_noninferior * (1 + 1e-12)
