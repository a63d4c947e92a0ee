"""proportion_test: type-I error under continuous peeking with a moving split, power, coverage."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.stats import StatsInputError, proportion_test
from tests.stats.sim import ALPHA, LOOKS, RUNS, THRESHOLD, max_rate, split_trials

STABLE_ERRORS = 0.01
MARGIN = 0.0025


def _run(rng: np.random.Generator, canary_rate: float, *, per_look: float = 4000) -> tuple[bool, bool, bool]:
    """One rollout: (ever rejected 'worse', ever proved 'no worse', confidence sequence ever missed)."""
    nt, nc = split_trials(rng, per_look)
    xt, xc = rng.binomial(nt, canary_rate), rng.binomial(nc, STABLE_ERRORS)
    worse = noninferior = missed = False
    truth = canary_rate - STABLE_ERRORS
    for t in range(1, LOOKS + 1):
        res = proportion_test(xt[:t], nt[:t], xc[:t], nc[:t], margin=MARGIN, alpha=ALPHA)
        worse |= res.e_value >= THRESHOLD
        noninferior |= res.e_value_noninferior >= THRESHOLD
        missed |= not res.ci_low <= truth <= res.ci_high
    return worse, noninferior, missed


def test_type_one_error_at_the_margin_under_continuous_peeking() -> None:
    """Canary exactly at stable + margin (the worst case of the null), 20 looks, split 1% -> 50%."""
    rng = np.random.default_rng(11)
    results = np.array([_run(rng, STABLE_ERRORS + MARGIN) for _ in range(RUNS)])
    worse, noninferior, missed = results.mean(axis=0)
    print(f"proportions: type-I 'worse' {worse:.4f}, 'no worse' {noninferior:.4f}, CS miss {missed:.4f}")
    assert worse <= max_rate()
    assert noninferior <= max_rate()  # the boundary is also in the mirror test's null
    assert missed <= max_rate()


def test_rare_errors_and_a_tiny_canary_share_stay_valid() -> None:
    """0.1% errors, margin 0, 2000 requests a look: the canary sees ~20 requests at the first look."""
    rng = np.random.default_rng(12)
    rejected = 0
    for _ in range(RUNS):
        nt, nc = split_trials(rng, 2000)
        xt, xc = rng.binomial(nt, 0.001), rng.binomial(nc, 0.001)
        rejected += any(
            proportion_test(xt[:t], nt[:t], xc[:t], nc[:t], margin=0.0).e_value >= THRESHOLD
            for t in range(1, LOOKS + 1)
        )
    print(f"proportions (rare events): type-I {rejected / RUNS:.4f}")
    assert rejected / RUNS <= max_rate()


def test_rare_errors_on_a_canary_held_at_one_percent_stay_valid() -> None:
    """0.5 % errors, margin 0, a canary held at 1 % for 60 looks (~60 requests and 0.3 errors a look).

    The regime of a suspect canary held at its first step: the Gaussian mixture rejected in 6.5 % of
    such runs at alpha 0.05 (few, right-skewed counts); charging the exact Bernoulli cumulant
    generating function keeps it near 1 %.
    """
    rng = np.random.default_rng(14)
    runs, looks = 400, 60
    rejected = 0
    for _ in range(runs):
        total = rng.poisson(6000, looks)
        nt = rng.binomial(total, 0.01)
        nc = total - nt
        xt, xc = rng.binomial(nt, 0.005), rng.binomial(nc, 0.005)
        rejected += any(
            proportion_test(xt[:t], nt[:t], xc[:t], nc[:t], margin=0.0).e_value >= THRESHOLD
            for t in range(1, looks + 1)
        )
    print(f"proportions (canary held at 1 %): type-I {rejected / runs:.4f}")
    assert rejected / runs <= max_rate(runs=runs)


def test_power_and_coverage_against_a_real_regression() -> None:
    """Canary at 1.75% errors against 1% (margin 0.25 points): caught in nearly every run."""
    rng = np.random.default_rng(13)
    results = np.array([_run(rng, 0.0175) for _ in range(300)])
    worse, noninferior, missed = results.mean(axis=0)
    print(f"proportions: power {worse:.4f}, CS miss {missed:.4f}")
    assert worse >= 0.9
    assert noninferior <= max_rate(runs=300)
    assert missed <= max_rate(runs=300)


def test_a_good_canary_is_proven_no_worse() -> None:
    rng = np.random.default_rng(14)
    results = np.array([_run(rng, STABLE_ERRORS, per_look=20000) for _ in range(200)])
    worse, noninferior, _ = results.mean(axis=0)
    print(f"proportions: non-inferiority shown in {noninferior:.3f} of equal runs")
    assert worse <= max_rate(runs=200)
    assert noninferior >= 0.8


def test_a_service_without_errors_is_proven_no_worse_and_stays_valid() -> None:
    """Stable with no errors at all (common): a clean canary is proven within a 1-point margin, and a
    canary exactly at the margin (1% errors) is not, beyond alpha, under continuous peeking."""
    rng = np.random.default_rng(15)
    proven = 0
    for _ in range(200):
        nt, nc = split_trials(rng, 400)
        zeros = np.zeros_like(nt)
        proven += any(
            proportion_test(zeros[:t], nt[:t], zeros[:t], nc[:t], margin=0.01).e_value_noninferior >= THRESHOLD
            for t in range(1, LOOKS + 1)
        )
    assert proven / 200 >= 0.95
    fooled = 0
    for _ in range(RUNS):
        nt, nc = split_trials(rng, 400)
        xt, xc = rng.binomial(nt, 0.01), np.zeros_like(nc)
        fooled += any(
            proportion_test(xt[:t], nt[:t], xc[:t], nc[:t], margin=0.01).e_value_noninferior >= THRESHOLD
            for t in range(1, LOOKS + 1)
        )
    print(f"proportions (error-free stable): proven {proven / 200:.3f}, type-I 'no worse' {fooled / RUNS:.4f}")
    assert fooled / RUNS <= max_rate()


def test_a_regression_against_an_error_free_stable_is_caught_and_the_margin_is_not() -> None:
    """Stable without errors, margin 1 point: 3% errors are caught; exactly 1% is not, beyond alpha."""
    rng = np.random.default_rng(16)

    def caught(canary_rate: float) -> bool:
        nt, nc = split_trials(rng, 100)
        xt, zeros = rng.binomial(nt, canary_rate), np.zeros_like(nc)
        return any(
            proportion_test(xt[:t], nt[:t], zeros[:t], nc[:t], margin=0.01).e_value >= THRESHOLD
            for t in range(1, LOOKS + 1)
        )

    power = np.mean([caught(0.03) for _ in range(200)])
    type_one = np.mean([caught(0.01) for _ in range(RUNS)])
    print(f"proportions (error-free stable): power at 3% {power:.3f}, type-I at the margin {type_one:.4f}")
    assert power >= 0.9
    assert type_one <= max_rate()


def test_accuracy_direction() -> None:
    """higher_is_better: 85% accurate canary against a 90% stable with a 1 point margin."""
    n = np.full(10, 2000)
    res = proportion_test(np.full(10, 1700), n, np.full(10, 1800), n, margin=0.01, higher_is_better=True)
    assert res.e_value >= THRESHOLD
    assert res.estimate == pytest.approx(-0.05)
    assert res.ci_low < -0.05 < res.ci_high
    ok = proportion_test(np.full(10, 1800), n, np.full(10, 1800), n, margin=0.01, higher_is_better=True)
    assert ok.e_value < 1.0 < ok.e_value_noninferior


def test_no_information_gives_no_evidence() -> None:
    res = proportion_test([0, 0], [0, 0], [5, 3], [100, 100], margin=0.01)
    assert res.e_value == res.e_value_noninferior == 1.0
    assert res.n_canary == 0


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (([1], [0], [0], [10]), "canary_successes"),
        (([-1], [10], [0], [10]), "canary_successes"),
        (([1], [10], [0], [float("nan")]), "stable_trials"),
        (([1.5], [10], [0], [10]), "canary_successes"),
        (([1], [10], [0, 1], [10, 10]), "stable_trials"),
        (([], [], [], []), "canary_trials"),
    ],
)
def test_bad_input_is_refused(args: tuple[list[float], ...], field: str) -> None:
    with pytest.raises(StatsInputError) as info:
        proportion_test(*args, margin=0.01)
    assert info.value.field == field


def test_bad_options_are_refused() -> None:
    with pytest.raises(StatsInputError):
        proportion_test([1], [10], [1], [10], margin=-0.1)
    with pytest.raises(StatsInputError):
        proportion_test([1], [10], [1], [10], margin=0.01, alpha=1.5)
    with pytest.raises(StatsInputError):
        proportion_test([1], [10], [1], [10], margin=0.01, tau=0.0)


@st.composite
def _histories(draw: st.DrawFn) -> tuple[list[int], list[int], list[int], list[int], int]:
    k = draw(st.integers(1, 6))
    nt = draw(st.lists(st.integers(0, 500), min_size=k, max_size=k))
    nc = draw(st.lists(st.integers(0, 5000), min_size=k, max_size=k))
    xt = [draw(st.integers(0, n)) for n in nt]
    xc = [draw(st.integers(0, n)) for n in nc]
    return xt, nt, xc, nc, draw(st.integers(0, k - 1))


@settings(max_examples=150, deadline=None)
@given(history=_histories(), margin=st.sampled_from([0.0, 0.0025, 0.01, 0.05]), better=st.booleans())
def test_more_canary_failures_never_lower_the_regression_evidence(
    history: tuple[list[int], list[int], list[int], list[int], int], margin: float, better: bool
) -> None:
    """For fixed n, one more canary failure (error, or wrong answer) in any interval."""
    xt, nt, xc, nc, j = history
    worse = list(xt)
    if better:  # a failure is a missing success
        if worse[j] == 0:
            return
        worse[j] -= 1
    else:
        if worse[j] == nt[j]:
            return
        worse[j] += 1
    before = proportion_test(xt, nt, xc, nc, margin=margin, higher_is_better=better)
    after = proportion_test(worse, nt, xc, nc, margin=margin, higher_is_better=better)
    assert after.e_value >= before.e_value * (1 - 1e-12)
    assert after.e_value_noninferior <= before.e_value_noninferior * (1 + 1e-12)
    assert after.statistic >= before.statistic - 1e-9
