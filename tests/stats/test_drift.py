"""The prediction-distribution test: total variation distance between the versions' outputs."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from controller.stats import StatsInputError
from controller.stats.drift import distribution_shift_test
from controller.stats.mixtures import normal_mixture_log_e
from tests.stats.sim import ALPHA, CANARY_SHARE, LOOKS, THRESHOLD, max_rate

K = 10
#: The stable's output distribution: scores of a fraud model, mostly low (10 buckets of 0.1).
STABLE = np.diff(np.concatenate(([0.0], 1 - (1 - np.linspace(0.1, 1.0, K)) ** 3)))


def moved(p: np.ndarray, amount: float, source: int = 0, target: int = K - 1) -> np.ndarray:
    """``p`` with ``amount`` of probability moved from bucket ``source`` to ``target``: TVD exactly ``amount``."""
    q = p.copy()
    q[source] -= amount
    q[target] += amount
    assert q.min() >= 0 and math.isclose(0.5 * np.abs(q - p).sum(), amount)
    return q


def run(rng: np.random.Generator, canary: np.ndarray, margin: float, per_look: float = 400.0) -> tuple[bool, ...]:
    """One rollout's looks under the moving split: (drift ever proven, within ever proven, CS ever missed)."""
    total = rng.poisson(per_look, LOOKS)
    n_canary = rng.binomial(total, CANARY_SHARE)
    can = np.array([rng.multinomial(n, canary) for n in n_canary])
    sta = np.array([rng.multinomial(n, STABLE) for n in total - n_canary])
    truth = 0.5 * np.abs(canary - STABLE).sum()
    drift = within = missed = False
    for t in range(1, LOOKS + 1):
        res = distribution_shift_test(can[:t], sta[:t], margin=margin, alpha=ALPHA, positive_from=5)
        drift |= res.e_value >= THRESHOLD
        within |= res.e_value_within >= THRESHOLD
        missed |= not res.ci_low <= truth <= res.ci_high
    return drift, within, missed


RUNS = 2000


@pytest.mark.parametrize(("name", "canary"), [("a/a", STABLE), ("at the margin", moved(STABLE, 0.05))])
def test_drift_is_proven_falsely_at_most_alpha_under_continuous_looks(name: str, canary: np.ndarray) -> None:
    rng = np.random.default_rng(61)
    drift, _, missed = np.array([run(rng, canary, margin=0.05) for _ in range(RUNS)]).mean(axis=0)
    print(f"distribution shift ({name}, margin 5%): false drift {drift:.4f}, CS miss {missed:.4f}")
    assert drift <= max_rate(runs=RUNS)
    assert missed <= max_rate(runs=RUNS)


def test_within_the_margin_is_proven_falsely_at_most_alpha() -> None:
    rng = np.random.default_rng(62)
    results = np.array([run(rng, moved(STABLE, 0.1), margin=0.1, per_look=2000.0) for _ in range(RUNS)])
    _, within, missed = results.mean(axis=0)
    print(f"distribution shift (TVD = margin 10%): false within {within:.4f}, CS miss {missed:.4f}")
    assert within <= max_rate(runs=RUNS)
    assert missed <= max_rate(runs=RUNS)


def test_a_shifted_canary_is_caught_and_a_like_one_proven_within() -> None:
    rng = np.random.default_rng(63)
    shifted = np.array([run(rng, moved(STABLE, 0.2), margin=0.05) for _ in range(400)]).mean(axis=0)
    alike = np.array([run(rng, STABLE, margin=0.1, per_look=2000.0) for _ in range(400)]).mean(axis=0)
    print(f"distribution shift: TVD 0.2 caught {shifted[0]:.3f}; equal proven within 10% {alike[1]:.3f}")
    assert shifted[0] >= 0.95
    assert alike[1] >= 0.9
    assert max(shifted[1], alike[0]) <= max_rate(runs=400)


def _outcomes(p: np.ndarray, n: int) -> list[tuple[np.ndarray, float]]:
    """Every bucket-count vector of n draws from p, with its probability."""
    out = []
    for draws in itertools.product(range(len(p)), repeat=n):
        counts = np.bincount(draws, minlength=len(p))
        out.append((counts, float(np.prod([p[d] for d in draws]))))
    return out


@pytest.mark.parametrize("side", ["drift", "within"])
def test_expected_e_value_is_at_most_one_at_the_null_boundary(side: str) -> None:
    """Exact: every outcome of 3 windows (1 canary and 2 stable outputs each) of 3 buckets, enumerated."""
    stable = np.array([0.5, 0.3, 0.2])
    margin = 0.2
    canary = np.array([0.3, 0.3, 0.4])  # TVD exactly the margin
    windows = [(c, pc, s, ps) for c, pc in _outcomes(canary, 1) for s, ps in _outcomes(stable, 2)]
    expectation = 0.0
    for path in itertools.product(windows, repeat=3):
        can = np.array([w[0] for w in path])
        sta = np.array([w[2] for w in path])
        prob = float(np.prod([w[1] * w[3] for w in path]))
        res = distribution_shift_test(can, sta, margin=margin)
        expectation += prob * (res.e_value if side == "drift" else res.e_value_within)
    print(f"E[e] at the boundary ({side}): {expectation:.4f}")
    assert expectation <= 1.0 + 1e-9


def test_one_window_of_hoeffding_is_a_supermartingale_step() -> None:
    """The building block: for any theta >= 0, E exp(theta w (D - m) - theta^2 w / 2) <= 1 at P_c(A) - P_s(A) = m."""
    p_c, p_s, n_c, n_s = 0.7, 0.4, 3, 2
    w = 4.0 / (1.0 / n_c + 1.0 / n_s)
    for theta in (0.1, 0.5, 1.0, 3.0):
        expectation = 0.0
        for a in range(n_c + 1):
            for b in range(n_s + 1):
                prob = (
                    math.comb(n_c, a)
                    * p_c**a
                    * (1 - p_c) ** (n_c - a)
                    * math.comb(n_s, b)
                    * p_s**b
                    * (1 - p_s) ** (n_s - b)
                )
                d = a / n_c - b / n_s - (p_c - p_s)
                expectation += prob * math.exp(theta * w * d - theta**2 * w / 2)
        assert expectation <= 1.0
    assert normal_mixture_log_e(0.0, 0.0, 0.1, side="greater") == 0.0


def test_the_positive_rate_shift_and_shares_are_reported() -> None:
    can = np.array([[60, 40], [30, 20]])
    sta = np.array([[80, 20], [40, 10]])
    res = distribution_shift_test(can, sta, margin=0.05, positive_from=1)
    assert res.canary_shares == pytest.approx((0.6, 0.4)) and res.stable_shares == pytest.approx((0.8, 0.2))
    assert res.positive_shift == pytest.approx(0.2)
    assert res.distance == pytest.approx(0.2)
    assert res.positive_ci is not None and res.positive_ci[0] < 0.2 < res.positive_ci[1]
    assert res.ci_low <= 0.2 <= res.ci_high
    assert (res.n_canary, res.n_stable) == (150, 150)


def test_no_data_is_no_evidence() -> None:
    res = distribution_shift_test(np.zeros((3, 4)), np.ones((3, 4)), margin=0.1)
    assert res.e_value == 1.0 and res.e_value_within == 1.0
    assert (res.ci_low, res.ci_high) == (0.0, 1.0) and math.isnan(res.distance)


@pytest.mark.parametrize(
    ("canary", "stable", "margin"),
    [
        ([[1, 2]], [[1, 2, 3]], 0.1),
        ([[1, -2]], [[1, 2]], 0.1),
        ([[1, 2.5]], [[1, 2]], 0.1),
        ([[1]], [[1]], 0.1),
        ([[1, 2]], [[1, 2]], 1.0),
        ([[1, 2]], [[1, 2]], float("nan")),
    ],
)
def test_bad_input_is_refused(canary: list[list[float]], stable: list[list[float]], margin: float) -> None:
    with pytest.raises(StatsInputError):
        distribution_shift_test(canary, stable, margin=margin)
