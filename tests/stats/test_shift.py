"""latency_shift_test: type-I error at the margin under peeking with a moving split, power, interpolation."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from scipy import interpolate, optimize, stats

from controller.stats import StatsInputError, latency_shift_test
from controller.stats.shift import MAX_WATCHED, _thin, counts_above, locate, pchip
from tests.stats.sim import CANARY_SHARE, LOOKS, RUNS, THRESHOLD, max_rate

#: Istio's default millisecond buckets, plus +Inf.
ISTIO = [0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000, 600000]
ISTIO = [*ISTIO, 1800000, 3600000, math.inf]
BOUNDS = np.asarray(ISTIO)
MARGIN = 0.05
Q = 0.99
#: Requests per look, both versions: 100 per second over a one-minute interval, as in the benchmark.
PER_LOOK = 6000.0

Dist = Any  # a frozen scipy.stats distribution


def _probs(dist: Dist) -> np.ndarray:
    """Per-bucket probabilities of a latency distribution on Istio's buckets."""
    cdf = np.append(dist.cdf(BOUNDS[:-1]), 1.0)
    return np.diff(np.concatenate(([0.0], cdf)))


def _tail_regression_probs() -> np.ndarray:
    """The benchmark's tail regression: lognormal(40 ms, 0.5) below the median, p99 x1.3 above it."""
    z = np.log(BOUNDS[:-1] / 40.0)
    sigma_high = 0.5 + math.log(1.3) / stats.norm.ppf(0.99)
    cdf = np.where(z > 0, stats.norm.cdf(z / sigma_high), stats.norm.cdf(z / 0.5))
    return np.diff(np.concatenate(([0.0], cdf, [1.0])))


def _rollout(rng: np.random.Generator, canary: np.ndarray, stable: np.ndarray, per_look: float = PER_LOOK):
    """Cumulative bucket increments per look for (canary, stable) under the moving split."""
    total = rng.poisson(per_look, LOOKS)
    n_canary = rng.binomial(total, CANARY_SHARE)
    c = np.cumsum([rng.multinomial(n, canary) for n in n_canary], axis=1)
    s = np.cumsum([rng.multinomial(n, stable) for n in total - n_canary], axis=1)
    return c, s


def _looks(
    rng: np.random.Generator,
    canary: np.ndarray,
    stable: np.ndarray,
    per_look: float = PER_LOOK,
    margin: float = MARGIN,
):
    """(e_value, e_value_noninferior) at every look of one simulated rollout."""
    c, s = _rollout(rng, canary, stable, per_look)
    out = []
    for t in range(1, LOOKS + 1):
        r = latency_shift_test(ISTIO, c[:t], s[:t], quantile=Q, relative_margin=margin)
        out.append((r.e_value, r.e_value_noninferior))
    return out


# --- validity -------------------------------------------------------------------------------------


def test_type_one_error_at_the_margin_under_continuous_peeking() -> None:
    """Canary = stable x 1.05 exactly (the worst case of the null), 20 looks, split 1% -> 50%."""
    stable = stats.lognorm(s=0.5, scale=40.0)
    canary = stats.lognorm(s=0.5, scale=40.0 * (1 + MARGIN))
    rng = np.random.default_rng(21)
    worse = noninferior = 0
    for _ in range(RUNS):
        looks = _looks(rng, _probs(canary), _probs(stable))
        worse += any(e >= THRESHOLD for e, _ in looks)
        noninferior += any(p >= THRESHOLD for _, p in looks)
    print(f"shift: type-I 'worse' {worse / RUNS:.4f}, 'no worse' {noninferior / RUNS:.4f} over {RUNS} runs")
    assert worse / RUNS <= max_rate()
    assert noninferior / RUNS <= max_rate()  # the boundary is also in the mirror test's null


SHAPES = {
    "gamma": (stats.gamma(2, scale=20.0), stats.gamma(2, scale=20.0 * (1 + MARGIN))),
    "weibull-3": (stats.weibull_min(3, scale=50.0), stats.weibull_min(3, scale=50.0 * (1 + MARGIN))),
    "log-logistic": (stats.fisk(3, scale=40.0), stats.fisk(3, scale=40.0 * (1 + MARGIN))),
    "shifted-exponential": (stats.expon(loc=20.0, scale=20.0), stats.expon(loc=21.0, scale=21.0)),
}


@pytest.mark.parametrize("shape", list(SHAPES))
def test_type_one_error_at_the_margin_for_other_latency_shapes(shape: str) -> None:
    """Where interpolating inside a bucket is not exact: light and heavy tails, a latency floor."""
    stable, canary = SHAPES[shape]
    runs = 200
    rng = np.random.default_rng(22)
    rejected = sum(any(e >= THRESHOLD for e, _ in _looks(rng, _probs(canary), _probs(stable))) for _ in range(runs))
    print(f"shift ({shape}): type-I {rejected / runs:.4f}")
    assert rejected / runs <= max_rate(runs=runs)


def test_low_traffic_stays_valid() -> None:
    """600 requests a look: the canary sees about 6 requests at the first look and a few tail events."""
    stable = stats.lognorm(s=0.5, scale=40.0)
    canary = stats.lognorm(s=0.5, scale=40.0 * (1 + MARGIN))
    runs = 400
    rng = np.random.default_rng(23)
    rejected = sum(
        any(e >= THRESHOLD for e, _ in _looks(rng, _probs(canary), _probs(stable), per_look=600)) for _ in range(runs)
    )
    assert rejected / runs <= max_rate(runs=runs)


# --- power ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "canary", "by_look"),
    [
        ("every latency x1.1", _probs(stats.lognorm(s=0.5, scale=44.0)), 8),
        ("p99 x1.3, median unchanged", _tail_regression_probs(), 5),
    ],
)
def test_power_against_the_benchmark_regressions(name: str, canary: np.ndarray, by_look: int) -> None:
    """Both regressions are caught in nearly every run, most of them early."""
    stable = _probs(stats.lognorm(s=0.5, scale=40.0))
    rng = np.random.default_rng(24)
    first = []
    for _ in range(100):
        hits = [t for t, (e, _) in enumerate(_looks(rng, canary, stable), start=1) if e >= THRESHOLD]
        first.append(hits[0] if hits else LOOKS + 1)
    caught = np.mean(np.asarray(first) <= LOOKS)
    print(f"shift power ({name}): {caught:.2f}, median first look {np.median(first)}")
    assert caught >= 0.95
    assert np.median(first) <= by_look


def test_a_zero_margin_is_valid_for_an_identical_canary_and_not_blind() -> None:
    """A margin of 0 ("no slower than stable at all"): the identical canary is the null boundary; +10 % is caught.

    A zero margin once made "one more margin" zero: a direction and a mixing scale of 0, a test that
    never rolled back anything. The reference slowdown (5 %) stands in for it.
    """
    stable = _probs(stats.lognorm(s=0.5, scale=40.0))
    slower = _probs(stats.lognorm(s=0.5, scale=44.0))
    rng = np.random.default_rng(25)
    runs = 300
    rejected = sum(any(e >= THRESHOLD for e, _ in _looks(rng, stable, stable, margin=0.0)) for _ in range(runs))
    caught = sum(any(e >= THRESHOLD for e, _ in _looks(rng, slower, stable, margin=0.0)) for _ in range(100))
    print(f"shift, margin 0: type-I {rejected / runs:.4f}, power against x1.1 {caught / 100:.2f}")
    assert rejected / runs <= max_rate(runs=runs)
    assert caught >= 95


def test_an_identical_canary_is_proven_within_the_margin() -> None:
    stable = _probs(stats.lognorm(s=0.5, scale=40.0))
    rng = np.random.default_rng(25)
    proven = [any(p >= THRESHOLD for _, p in _looks(rng, stable, stable)) for _ in range(50)]
    assert np.mean(proven) >= 0.9


def test_more_slow_canary_requests_never_lower_the_evidence() -> None:
    """Moving canary requests into slower buckets can only raise e_value (and lower the proof)."""
    stable_p = _probs(stats.lognorm(s=0.5, scale=40.0))
    rng = np.random.default_rng(26)
    for _ in range(30):
        c, s = _rollout(rng, stable_p, stable_p)
        base = latency_shift_test(ISTIO, c[:8], s[:8], quantile=Q, relative_margin=MARGIN)
        slower = c[:8].copy()
        j, k = rng.integers(0, 8), rng.integers(4, 8)  # one interval, a bucket bound in 10..100 ms
        moved = min(5, int(slower[j, k] - (slower[j, k - 1] if k else 0)))
        slower[j, k : k + 1] -= moved  # requests from bucket k into bucket k + 1
        shifted = latency_shift_test(ISTIO, slower, s[:8], quantile=Q, relative_margin=MARGIN)
        assert shifted.e_value >= base.e_value * (1 - 1e-12)
        assert shifted.e_value_noninferior <= base.e_value_noninferior * (1 + 1e-12)


# --- the interpolation inside a bucket -------------------------------------------------------------


def _pooled(dist: Dist, n: float = 1e9) -> np.ndarray:
    return np.rint(np.cumsum(_probs(dist)) * n).astype(np.int64)


def test_interpolation_is_exact_for_lognormal_latencies() -> None:
    for sigma, median in ((0.5, 40.0), (1.0, 40.0), (0.3, 120.0)):
        dist = stats.lognorm(s=sigma, scale=median)
        pooled = _pooled(dist)
        points = BOUNDS[:-1] / (1 + MARGIN)
        above = counts_above(pooled[None, :], locate(BOUNDS, pooled, points))[0] / pooled[-1]
        true = dist.sf(points)
        watched = (true > 1e-4) & (true < 0.9999)
        np.testing.assert_allclose(above[watched], true[watched], rtol=2e-3, atol=1e-6)


@pytest.mark.parametrize("shape", list(SHAPES))
def test_interpolation_keeps_the_margin_for_other_shapes(shape: str) -> None:
    """The margin the test effectively applies at each watched bound stays within 4.4-5.6 %."""
    stable, _ = SHAPES[shape]
    pooled = _pooled(stable)
    points = BOUNDS[:-1] / (1 + MARGIN)
    above = counts_above(pooled[None, :], locate(BOUNDS, pooled, points))[0] / pooled[-1]
    for b, share in zip(BOUNDS[:-1], above, strict=True):
        if not (1 - Q) / 4 <= share <= 0.5:
            continue
        effective = optimize.brentq(lambda m, b=b, share=share: stable.sf(b / (1 + m)) - share, -0.5, 2.0)
        assert 0.044 <= effective <= 0.056, (shape, b, effective)


def test_pchip_matches_scipy() -> None:
    rng = np.random.default_rng(27)
    for size in (2, 3, 4, 7):
        for _ in range(50):
            xs = np.cumsum(rng.uniform(0.1, 1.0, size))
            ys = np.cumsum(rng.choice([0.0, 0.1, 1.0, 2.5], size))
            x = np.linspace(xs[0], xs[-1], 41)
            np.testing.assert_allclose(pchip(xs, ys, x), interpolate.PchipInterpolator(xs, ys)(x), atol=1e-12)


# --- inputs and edge cases ------------------------------------------------------------------------


def test_no_watched_bound_or_no_canary_is_no_evidence() -> None:
    timed_out = [[0] * (len(ISTIO) - 1) + [10]]  # every request above the last finite bound
    result = latency_shift_test(ISTIO, timed_out, timed_out, quantile=Q, relative_margin=MARGIN)
    assert (result.e_value, result.e_value_noninferior, result.bounds) == (1.0, 1.0, ())
    empty = [[0] * len(ISTIO)]
    result = latency_shift_test(ISTIO, timed_out, empty, quantile=Q, relative_margin=MARGIN)
    assert (result.e_value, result.e_value_noninferior, result.bounds) == (1.0, 1.0, ())
    stable = np.cumsum(np.full((3, len(ISTIO)), 10), axis=1)
    result = latency_shift_test(ISTIO, np.zeros_like(stable), stable, quantile=Q, relative_margin=MARGIN)
    assert (result.e_value, result.n_canary) == (1.0, 0)


def test_reports_the_bounds_and_shares_it_compared() -> None:
    rng = np.random.default_rng(28)
    c, s = _rollout(rng, _tail_regression_probs(), _probs(stats.lognorm(s=0.5, scale=40.0)))
    result = latency_shift_test(ISTIO, c, s, quantile=Q, relative_margin=MARGIN)
    assert result.bounds == (50.0, 100.0)
    assert result.canary_exceedance[1] > result.scaled_stable_exceedance[1]
    assert result.worst_ratio == pytest.approx(result.canary_exceedance[1] / result.scaled_stable_exceedance[1])
    assert (result.n_canary, result.n_stable) == (int(c[:, -1].sum()), int(s[:, -1].sum()))
    assert result.e_value >= THRESHOLD


@pytest.mark.parametrize(
    ("canary", "stable", "kwargs", "field"),
    [
        ([[1, 2, 3]], [[1, 2, 3], [1, 2, 3]], {}, "stable_cumulative"),
        ([[1, 2, 3]], [[1, 2, 3]], {"relative_margin": 11.0}, "relative_margin"),
        ([[1, 2, 3]], [[1, 2, 3]], {"relative_margin": -0.1}, "relative_margin"),
        ([[1, 2, 3]], [[1, 2, 3]], {"quantile": 1.0}, "quantile"),
        ([[3, 2, 3]], [[1, 2, 3]], {}, "canary_cumulative"),
    ],
)
def test_bad_input_is_refused(canary: list, stable: list, kwargs: dict, field: str) -> None:
    options = {"quantile": Q, "relative_margin": MARGIN, **kwargs}
    with pytest.raises(StatsInputError) as exc:
        latency_shift_test([10.0, 100.0, math.inf], canary, stable, **options)
    assert exc.value.field == field


# --- fine histograms: at most MAX_WATCHED bounds watched ---------------------------------------------


def _fine(buckets: int, intervals: int, scale: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``buckets`` bounds (+Inf last) linear over 1..1000 ms, and lognormal cumulative counts per interval."""
    edges = np.append(np.linspace(1.0, 1000.0, buckets - 1), math.inf)
    probs = np.diff(np.append(0.0, np.append(stats.lognorm(s=0.5, scale=scale).cdf(edges[:-1]), 1.0)))
    counts = rng.multinomial(3000, probs, size=intervals)
    return edges, np.cumsum(counts, axis=1)


@pytest.mark.parametrize("buckets", [100, 1_000, 10_000])
@pytest.mark.parametrize("canary_scale", [40.0, 48.0])
def test_a_fine_histogram_watches_at_most_the_cap(buckets: int, canary_scale: float) -> None:
    """The cost grows with the square of the watched bounds: however fine the histogram, at most MAX_WATCHED."""
    rng = np.random.default_rng(buckets)
    edges, stable = _fine(buckets, 20, 40.0, rng)
    _, canary = _fine(buckets, 20, canary_scale, rng)
    result = latency_shift_test(edges, canary, stable, quantile=Q, relative_margin=MARGIN)
    assert 0 < len(result.bounds) <= MAX_WATCHED
    assert len(result.canary_exceedance) == len(result.bounds)
    if canary_scale > 40.0:  # a 20 % slowdown is still found on the thinned bounds
        assert result.e_value >= THRESHOLD


def test_thinning_keeps_both_ends_and_spreads_evenly() -> None:
    for size in range(MAX_WATCHED + 1, 400, 37):
        watched = np.arange(100, 100 + size)
        got = _thin(watched)
        assert got.size == MAX_WATCHED and got[0] == watched[0] and got[-1] == watched[-1]
        assert np.all(np.diff(got) > 0)
    small = np.arange(5, 5 + MAX_WATCHED)
    assert np.array_equal(_thin(small), small)
