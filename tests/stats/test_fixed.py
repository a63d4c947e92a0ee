"""Fixed-horizon references against scipy on the expanded samples."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from controller.stats import StatsInputError, binned_mannwhitneyu, fisher_exact_test, two_proportion_ztest

ALTERNATIVES = ("two-sided", "less", "greater")


def _expand(counts: np.ndarray) -> np.ndarray:
    """One observation per count, valued by its bucket index (each bucket one tied value)."""
    return np.repeat(np.arange(counts.size, dtype=np.float64), counts)


def _check_mwu(t: np.ndarray, c: np.ndarray, alternative: str, continuity: bool) -> None:
    ours = binned_mannwhitneyu(t, c, alternative=alternative, use_continuity=continuity)  # type: ignore[arg-type]
    ref = stats.mannwhitneyu(
        _expand(t), _expand(c), alternative=alternative, use_continuity=continuity, method="asymptotic"
    )
    assert ours.statistic == pytest.approx(ref.statistic, rel=1e-9, abs=1e-9)
    assert ours.pvalue == pytest.approx(ref.pvalue, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("alternative", ALTERNATIVES)
@pytest.mark.parametrize("continuity", [True, False])
def test_mann_whitney_matches_scipy_on_latency_buckets(alternative: str, continuity: bool) -> None:
    rng = np.random.default_rng(51)
    for _ in range(20):
        k = int(rng.integers(2, 20))
        t = rng.multinomial(int(rng.integers(1, 400)), rng.dirichlet(np.ones(k)))
        c = rng.multinomial(int(rng.integers(1, 4000)), rng.dirichlet(np.ones(k)))
        _check_mwu(t, c, alternative, continuity)


@settings(max_examples=100, deadline=None)
@given(
    t=st.lists(st.integers(0, 30), min_size=2, max_size=6),
    c=st.lists(st.integers(0, 30), min_size=2, max_size=6),
    alternative=st.sampled_from(ALTERNATIVES),
)
def test_mann_whitney_matches_scipy_property(t: list[int], c: list[int], alternative: str) -> None:
    k = min(len(t), len(c))
    ta, ca = np.array(t[:k]), np.array(c[:k])
    if ta.sum() == 0 or ca.sum() == 0 or np.count_nonzero(ta + ca) < 2:
        return  # scipy's answer is NaN without any variance; ours is p = 1
    _check_mwu(ta, ca, alternative, True)


def test_mann_whitney_degenerate_and_bad_input() -> None:
    res = binned_mannwhitneyu([0, 5, 0], [0, 7, 0])
    assert (res.statistic, res.pvalue) == (17.5, 1.0)
    with pytest.raises(StatsInputError):
        binned_mannwhitneyu([0, 0], [1, 2])
    with pytest.raises(StatsInputError):
        binned_mannwhitneyu([1, 2, 3], [1, 2])
    with pytest.raises(StatsInputError):
        binned_mannwhitneyu([1, 2], [1, 2], alternative="bigger")  # type: ignore[arg-type]


@pytest.mark.parametrize(("x1", "n1", "x2", "n2"), [(30, 1000, 12, 1000), (3, 50, 40, 900), (0, 10, 1, 1000)])
def test_two_proportion_z_matches_the_closed_form(x1: int, n1: int, x2: int, n2: int) -> None:
    """z^2 is Pearson's chi-square on the 2x2 table without Yates' correction."""
    res = two_proportion_ztest(x1, n1, x2, n2)
    chi2 = stats.chi2_contingency([[x1, n1 - x1], [x2, n2 - x2]], correction=False)
    assert res.statistic**2 == pytest.approx(chi2.statistic, rel=1e-9)
    assert res.pvalue == pytest.approx(chi2.pvalue, rel=1e-9)
    p1, p2, pooled = x1 / n1, x2 / n2, (x1 + x2) / (n1 + n2)
    z = (p1 - p2) / np.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    assert res.statistic == pytest.approx(z, rel=1e-12)
    assert two_proportion_ztest(x1, n1, x2, n2, alternative="greater").pvalue == pytest.approx(stats.norm.sf(z))
    assert two_proportion_ztest(x1, n1, x2, n2, alternative="less").pvalue == pytest.approx(stats.norm.cdf(z))
    assert res.estimate == pytest.approx(p1 - p2)


def test_two_proportion_z_without_variance() -> None:
    res = two_proportion_ztest(0, 10, 0, 20)
    assert (res.statistic, res.pvalue) == (0.0, 1.0)
    with pytest.raises(StatsInputError):
        two_proportion_ztest(11, 10, 0, 20)
    with pytest.raises(StatsInputError):
        two_proportion_ztest(0, 0, 0, 20)


@pytest.mark.parametrize("alternative", ALTERNATIVES)
def test_fisher_matches_scipy_and_the_hypergeometric_tail(alternative: str) -> None:
    x1, n1, x2, n2 = 9, 200, 2, 300
    res = fisher_exact_test(x1, n1, x2, n2, alternative=alternative)  # type: ignore[arg-type]
    ref = stats.fisher_exact([[x1, n1 - x1], [x2, n2 - x2]], alternative=alternative)
    assert (res.statistic, res.pvalue) == pytest.approx((ref.statistic, ref.pvalue), rel=1e-12)
    if alternative == "greater":
        tail = stats.hypergeom.sf(x1 - 1, n1 + n2, x1 + x2, n1)
        assert res.pvalue == pytest.approx(tail, rel=1e-9)
