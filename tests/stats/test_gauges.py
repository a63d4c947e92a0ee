"""GPU gauges: absolute guardrails and the GPU-seconds-per-inference comparison."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.stats import StatsInputError, gauge_comparison_test, gauge_guardrail
from tests.stats.sim import LOOKS, RUNS, THRESHOLD, max_rate


def _utilisation(rng: np.random.Generator, mean: float, sd: float) -> list[np.ndarray]:
    """1-3 pods per look, per-pod interval means ~ Beta with the given mean and sd."""
    size = mean * (1 - mean) / sd**2 - 1
    return [rng.beta(mean * size, (1 - mean) * size, k) for k in rng.integers(1, 4, LOOKS)]


def _guard_run(rng: np.random.Generator, mean: float, sd: float = 0.05) -> tuple[bool, bool, bool]:
    values = _utilisation(rng, mean, sd)
    breach = within = missed = False
    for t in range(1, LOOKS + 1):
        res = gauge_guardrail(values[:t], limit=0.9)
        breach |= res.e_value >= THRESHOLD
        within |= res.e_value_within >= THRESHOLD
        missed |= not res.ci_low <= mean <= res.ci_high
    return breach, within, missed


def test_guardrail_type_one_error_at_the_limit() -> None:
    rng = np.random.default_rng(41)
    breach, within, missed = np.array([_guard_run(rng, 0.9) for _ in range(RUNS)]).mean(axis=0)
    print(f"gauge guardrail: type-I breach {breach:.4f}, within {within:.4f}, CS miss {missed:.4f}")
    assert breach <= max_rate()
    assert within <= max_rate()
    assert missed <= max_rate()


def test_guardrail_power() -> None:
    rng = np.random.default_rng(42)
    hot = np.array([_guard_run(rng, 0.95, 0.03) for _ in range(200)]).mean(axis=0)
    cool = np.array([_guard_run(rng, 0.8, 0.05) for _ in range(200)]).mean(axis=0)
    print(f"gauge guardrail: breach caught at 0.95 {hot[0]:.3f}, headroom shown at 0.8 {cool[1]:.3f}")
    assert hot[0] >= 0.9
    assert cool[1] >= 0.9
    assert max(hot[1], cool[0]) <= max_rate(runs=200)


def _cost_run(
    rng: np.random.Generator, ratio: float, cv: float, *, heavy: bool = False, swing: float = 0.3
) -> tuple[bool, bool, bool]:
    """GPU-seconds per inference: a load swing common to both, 1 then 3 canary pods, 8 stable pods."""
    load = 1.0 + swing * np.sin(np.arange(LOOKS) / 3.0)

    def noise(k: int) -> np.ndarray:
        return cv * (rng.standard_t(3, k) / math.sqrt(3.0) if heavy else rng.normal(0.0, 1.0, k))

    canary = [np.maximum(0.0, load[j] * ratio * (1 + noise(1 if j < 5 else 3))) for j in range(LOOKS)]
    stable = [np.maximum(0.0, load[j] * (1 + noise(8))) for j in range(LOOKS)]
    worse = noninferior = missed = False
    for t in range(1, LOOKS + 1):
        res = gauge_comparison_test(canary[:t], stable[:t], relative_margin=0.1)
        worse |= res.e_value >= THRESHOLD
        noninferior |= res.e_value_noninferior >= THRESHOLD
        missed |= not res.ci_low <= ratio - 1.0 <= res.ci_high  # exact when swing == 0
    return worse, noninferior, missed


def test_comparison_type_one_error_at_the_margin() -> None:
    """Canary exactly 10% costlier (the margin); runs cycle through pod noise 2%..30%, Gaussian and t(3)."""
    rng = np.random.default_rng(43)
    cases = [(0.02, False), (0.1, False), (0.3, False), (0.3, True)]
    results = np.array([_cost_run(rng, 1.1, cases[i % 4][0], heavy=cases[i % 4][1]) for i in range(RUNS)])
    for k, (cv, heavy) in enumerate(cases):
        worse, mirror, _ = results[k::4].mean(axis=0)
        print(f"gauge comparison (cv {cv}{', t3' if heavy else ''}): type-I {worse:.3f}, mirror {mirror:.3f}")
    worse, noninferior, _ = results.mean(axis=0)
    print(f"gauge comparison: type-I {worse:.4f}, mirror {noninferior:.4f}")
    assert worse <= max_rate()
    assert noninferior <= max_rate()


def test_comparison_power_and_coverage() -> None:
    rng = np.random.default_rng(44)
    costly = np.array([_cost_run(rng, 1.3, 0.1, swing=0.0) for _ in range(200)]).mean(axis=0)
    same = np.array([_cost_run(rng, 1.0, 0.05, swing=0.0) for _ in range(200)]).mean(axis=0)
    print(
        f"gauge comparison: 30% costlier caught {costly[0]:.3f}; equal cost proven within 10% {same[1]:.3f}; "
        f"CS miss {costly[2]:.3f} / {same[2]:.3f}"
    )
    assert costly[0] >= 0.8
    assert same[1] >= 0.8
    assert max(costly[1], same[0]) <= max_rate(runs=200)  # wrong-direction calls are type-I errors
    assert max(costly[2], same[2]) <= max_rate(runs=200)


def test_bad_gauge_input_is_refused() -> None:
    with pytest.raises(StatsInputError):
        gauge_guardrail([[0.5, 1.2]], limit=0.9)
    with pytest.raises(StatsInputError):
        gauge_guardrail([[0.5, float("nan")]], limit=0.9)
    with pytest.raises(StatsInputError):
        gauge_guardrail([[0.5]], limit=1.0)
    with pytest.raises(StatsInputError):
        gauge_guardrail([], limit=0.5)
    with pytest.raises(StatsInputError):
        gauge_guardrail([[[0.5]]], limit=0.5)  # type: ignore[arg-type]
    with pytest.raises(StatsInputError):
        gauge_comparison_test([[1.0]], [[1.0], [1.0]])
    with pytest.raises(StatsInputError):
        gauge_comparison_test([[-1.0]], [[1.0]])
    with pytest.raises(StatsInputError):
        gauge_comparison_test([[1.0]], [[1.0]], relative_margin=-0.1)


def test_too_little_data_is_no_evidence() -> None:
    res = gauge_comparison_test([[1.0], [], [2.0]], [[1.0], [1.0], []])
    assert res.e_value == res.e_value_noninferior == 1.0
    first = gauge_guardrail([[0.99, 0.99]], limit=0.9)
    assert first.e_value < THRESHOLD  # Hoeffding's worst-case variance until there is history


@settings(max_examples=100, deadline=None)
@given(
    groups=st.lists(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=4), min_size=1, max_size=6),
    bump=st.floats(0.0, 0.5),
)
def test_hotter_pods_in_the_latest_interval_never_lower_the_breach_evidence(
    groups: list[list[float]], bump: float
) -> None:
    """Weights come from earlier intervals only, so the latest interval enters linearly."""
    hotter = [*groups[:-1], [min(1.0, v + bump) for v in groups[-1]]]
    before, after = gauge_guardrail(groups, limit=0.8), gauge_guardrail(hotter, limit=0.8)
    assert after.e_value >= before.e_value * (1 - 1e-12)
    assert after.e_value_within <= before.e_value_within * (1 + 1e-12)
