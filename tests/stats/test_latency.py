"""Latency from histogram buckets: PromQL quantiles, the SLO guard, the relative quantile test."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from controller.stats import (
    StatsInputError,
    histogram_quantile,
    latency_regression_test,
    latency_slo_test,
)
from tests.stats.sim import LOOKS, RUNS, THRESHOLD, max_rate

#: Istio's default millisecond buckets, plus +Inf.
ISTIO = [0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000, 600000]
ISTIO = [*ISTIO, 1800000, 3600000, math.inf]
#: Fine geometric buckets (10% apart), where the relative test's null can actually be approached.
FINE = [100 * 1.1**k for k in range(30)] + [math.inf]
SIGMA = 0.8


def _bucket_probs(edges: list[float], p99: float) -> np.ndarray:
    """Per-bucket probabilities of a lognormal latency whose true 99th percentile is ``p99``."""
    scale = p99 / math.exp(SIGMA * stats.norm.ppf(0.99))
    cdf = np.append(stats.lognorm.cdf(np.array(edges[:-1]), s=SIGMA, scale=scale), 1.0)
    return np.diff(np.concatenate(([0.0], cdf)))


def _histories(rng: np.random.Generator, probs: np.ndarray, per_look: float) -> np.ndarray:
    return np.cumsum(rng.multinomial(rng.poisson(per_look, LOOKS), probs), axis=1)


def _tail(p99: float, at: float) -> float:
    scale = p99 / math.exp(SIGMA * stats.norm.ppf(0.99))
    return float(stats.lognorm.sf(at, s=SIGMA, scale=scale))


# --- histogram_quantile ---------------------------------------------------------------------------


def test_quantile_matches_promql_interpolation() -> None:
    edges = [0.5, 1, 5, math.inf]
    assert histogram_quantile(0.5, edges, [10, 20, 30, 40]).value == pytest.approx(1.0)
    est = histogram_quantile(0.6, edges, [10, 20, 30, 40])  # rank 24: 4/10 into (1, 5]
    assert (est.value, est.lower, est.upper) == pytest.approx((2.6, 1.0, 5.0))
    first = histogram_quantile(0.1, edges, [10, 20, 30, 40])  # first bucket interpolates from 0
    assert (first.value, first.lower, first.upper) == pytest.approx((0.2, 0.0, 0.5))
    top = histogram_quantile(0.99, edges, [10, 20, 30, 40])  # in +Inf: largest finite bound
    assert (top.value, top.lower, top.upper) == (5.0, 5.0, math.inf)
    assert math.isnan(histogram_quantile(0.5, edges, [0, 0, 0, 0]).value)
    neg = histogram_quantile(0.1, [-1.0, 1.0, math.inf], [5, 10, 10])
    assert neg.value == -1.0


@settings(max_examples=200, deadline=None)
@given(
    bins=st.lists(st.integers(0, 50), min_size=3, max_size=8),
    q1=st.floats(0.01, 1.0),
    q2=st.floats(0.01, 1.0),
)
def test_quantile_is_monotone_and_bracketed(bins: list[int], q1: float, q2: float) -> None:
    if sum(bins) == 0:
        return
    edges = [*[float(2**k) for k in range(len(bins) - 1)], math.inf]
    cum = np.cumsum(bins)
    lo, hi = sorted((q1, q2))
    a, b = histogram_quantile(lo, edges, cum), histogram_quantile(hi, edges, cum)
    assert a.value <= b.value + 1e-9
    for est in (a, b):
        assert est.lower <= est.value <= est.upper


# --- SLO guard --------------------------------------------------------------------------------------


def _slo_run(rng: np.random.Generator, p99: float, per_look: float = 500) -> tuple[bool, bool, bool]:
    hist = _histories(rng, _bucket_probs(ISTIO, p99), per_look)
    truth = _tail(p99, 500.0)
    breach = met = missed = False
    for t in range(1, LOOKS + 1):
        res = latency_slo_test(ISTIO, hist[:t], quantile=0.99, bound=500.0)
        breach |= res.e_value >= THRESHOLD
        met |= res.e_value_compliant >= THRESHOLD
        missed |= not res.ci_low <= truth <= res.ci_high
    return breach, met, missed


def test_slo_type_one_error_at_the_bound() -> None:
    """True p99 exactly 500 ms, on a bucket bound: both directions are at their null boundary."""
    rng = np.random.default_rng(31)
    breach, met, missed = np.array([_slo_run(rng, 500.0) for _ in range(RUNS)]).mean(axis=0)
    print(f"latency SLO: type-I breach {breach:.4f}, compliant {met:.4f}, CS miss {missed:.4f}")
    assert breach <= max_rate()
    assert met <= max_rate()
    assert missed <= max_rate()


def test_slo_power() -> None:
    rng = np.random.default_rng(32)
    slow = np.array([_slo_run(rng, 700.0) for _ in range(200)]).mean(axis=0)
    fast = np.array([_slo_run(rng, 300.0) for _ in range(200)]).mean(axis=0)
    print(f"latency SLO: breach caught at p99=700ms {slow[0]:.3f}, compliance shown at 300ms {fast[1]:.3f}")
    assert slow[0] >= 0.9
    assert fast[1] >= 0.9
    assert max(slow[1], fast[0]) <= max_rate(runs=200)


def test_slo_between_bucket_bounds_uses_the_conservative_bound_each_way() -> None:
    """SLO 300 ms with buckets at 250 and 500: breach is tested at 500, compliance at 250."""
    hist = np.array([[0, 0, 0, 0, 0, 0, 900, 960, 990, 1000] + [1000] * 10])
    res = latency_slo_test(ISTIO, hist, quantile=0.99, bound=300.0)
    assert (res.breach_edge, res.compliance_edge) == (500.0, 250.0)
    assert res.exceedance == pytest.approx(0.01)  # above the breach edge
    # 4% above 250 ms would breach "p99 <= 250 ms", yet proves nothing about 300 ms.
    assert res.e_value < THRESHOLD
    beyond = latency_slo_test(ISTIO, hist, quantile=0.99, bound=5_000_000.0)
    assert beyond.breach_edge is None
    assert beyond.e_value == 1.0


@settings(max_examples=100, deadline=None)
@given(bins=st.lists(st.integers(0, 400), min_size=20, max_size=20), src=st.integers(0, 18))
def test_slower_requests_never_lower_the_breach_evidence(bins: list[int], src: int) -> None:
    if bins[src] == 0:
        return
    slower = list(bins)
    slower[src] -= 1
    slower[-1] += 1
    before = latency_slo_test(ISTIO, [np.cumsum(bins)], quantile=0.99, bound=500.0)
    after = latency_slo_test(ISTIO, [np.cumsum(slower)], quantile=0.99, bound=500.0)
    assert after.e_value >= before.e_value * (1 - 1e-12)
    assert after.e_value_compliant <= before.e_value_compliant * (1 + 1e-12)


# --- relative quantile regression -------------------------------------------------------------------


def _relative_run(rng: np.random.Generator, edges: list[float], stable: float, canary: float) -> tuple[bool, bool]:
    hs = _histories(rng, _bucket_probs(edges, stable), 4000)
    hc = _histories(rng, _bucket_probs(edges, canary), 400)
    worse = noninferior = False
    for t in range(1, LOOKS + 1):
        res = latency_regression_test(edges, hc[:t], hs[:t], quantile=0.99, relative_margin=0.1)
        worse |= res.e_value >= THRESHOLD
        noninferior |= res.e_value_noninferior >= THRESHOLD
    return worse, noninferior


def test_relative_type_one_error_at_the_margin() -> None:
    """Canary p99 exactly 1.1 x stable's, stable's p99 just above a fine bucket bound (worst case)."""
    rng = np.random.default_rng(33)
    stable = FINE[5] * 1.001
    rates = np.array([_relative_run(rng, FINE, stable, 1.1 * stable) for _ in range(RUNS)]).mean(axis=0)
    print(f"latency relative: type-I regression {rates[0]:.4f}, non-inferiority {rates[1]:.4f}")
    assert rates[0] <= max_rate()
    assert rates[1] <= max_rate()


def test_relative_power() -> None:
    rng = np.random.default_rng(34)
    istio = np.array([_relative_run(rng, ISTIO, 200.0, 800.0) for _ in range(100)]).mean(axis=0)
    fine = np.array([_relative_run(rng, FINE, 200.0, 300.0) for _ in range(100)]).mean(axis=0)
    print(f"latency relative: power 4x on Istio buckets {istio[0]:.2f}, 1.5x on fine buckets {fine[0]:.2f}")
    assert istio[0] >= 0.9
    assert fine[0] >= 0.9


def test_relative_reports_the_witnessing_bounds() -> None:
    stable = np.array([[0, 0, 0, 0, 0, 0, 9000, 9990, 10000] + [10000] * 11])
    canary = np.array([[0, 0, 0, 0, 0, 0, 800, 900, 950, 1000] + [1000] * 10])
    res = latency_regression_test(ISTIO, canary, stable, quantile=0.99, relative_margin=0.1)
    assert res.e_value >= THRESHOLD
    assert (res.stable_edge, res.canary_edge) == (250.0, 500.0)
    assert res.stable_quantile.upper == 250.0


def test_bucket_layouts_must_match() -> None:
    hist = np.array([[1, 2, 3]])
    with pytest.raises(StatsInputError) as info:
        latency_regression_test(
            [1, 2, math.inf], hist, hist, quantile=0.9, relative_margin=0.1, stable_edges=[1, 3, math.inf]
        )
    assert info.value.field == "stable_edges"
    with pytest.raises(StatsInputError):
        latency_regression_test([1, 2, math.inf], hist, np.array([[1, 2, 3, 4]]), quantile=0.9, relative_margin=0.1)
    with pytest.raises(StatsInputError):
        latency_regression_test(
            [1, 2, math.inf], hist, np.array([[1, 2, 3], [1, 2, 3]]), quantile=0.9, relative_margin=0.1
        )


@pytest.mark.parametrize(
    ("edges", "hist", "field"),
    [
        ([1, 2, 3], [[1, 2, 3]], "edges"),
        ([2, 1, math.inf], [[1, 2, 3]], "edges"),
        ([1, 2, math.inf], [[3, 2, 3]], "canary_cumulative"),
        ([1, 2, math.inf], [[1, -2, 3]], "canary_cumulative"),
        ([1, 2, math.inf], [[1, 2, float("nan")]], "canary_cumulative"),
        ([1, 2, math.inf], [[1, 2]], "canary_cumulative"),
        ([1, float("nan"), math.inf], [[1, 2, 3]], "edges"),
    ],
)
def test_bad_histograms_are_refused(edges: list[float], hist: list[list[float]], field: str) -> None:
    with pytest.raises(StatsInputError) as info:
        latency_slo_test(edges, hist, quantile=0.99, bound=1.5)
    assert info.value.field == field


def test_bad_options_are_refused() -> None:
    hist = [[1, 2, 3]]
    for kwargs in (
        {"quantile": 1.0, "bound": 1.0},
        {"quantile": 0.9, "bound": 0.0},
        {"quantile": 0.9, "bound": 1.0, "alpha": 0},
    ):
        with pytest.raises(StatsInputError):
            latency_slo_test([1, 2, math.inf], hist, **kwargs)
    with pytest.raises(StatsInputError):
        histogram_quantile(1.5, [1, math.inf], [1, 2])
