"""GPU gauges: exact betting guardrails and share comparisons, and the GPU-seconds-per-inference comparison.

The bounded tests are checked the way the rate tests are: A/A false alarms under continuous looks
(including null distributions where a Gaussian approximation is wrong: all mass at the ends of the
range, strong skew, pods that differ), coverage of the confidence sequence, and the exact expectation
of the e-value at the null, by enumerating every outcome of small discrete nulls.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.stats import (
    StatsInputError,
    bounded_comparison_test,
    gauge_comparison_test,
    gauge_guardrail,
    normal_guardrail,
)
from controller.stats.gauges import bounded_comparison_log_e_path, guardrail_log_e_path
from tests.stats.sim import ALPHA, LOOKS, RUNS, THRESHOLD, max_rate

LOG_THRESHOLD = math.log(THRESHOLD)
#: A confidence sequence misses a mean when the capital against it reaches 2 / alpha on either side.
LOG_CS_THRESHOLD = math.log(2.0 / ALPHA)
#: The realistic horizon of the bounded tests: an hour of 1-minute windows.
HOUR = 60

Draw = Callable[[np.random.Generator, int], np.ndarray]


def _beta(mean: float, sd: float) -> Draw:
    """Per-pod interval means ~ Beta with this mean and standard deviation."""
    size = mean * (1 - mean) / sd**2 - 1
    return lambda rng, k: rng.beta(mean * size, (1 - mean) * size, k)


def _two_point(low: float, high: float, mean: float) -> Draw:
    """All mass at low and high, with this mean: where a normal approximation is at its worst."""
    p = (mean - low) / (high - low)
    return lambda rng, k: np.where(rng.random(k) < p, high, low)


def _pods_differ(means: tuple[float, ...], sd: float) -> Draw:
    """One Beta per pod (pod i has mean means[i]): hot and cool pods in every interval."""
    draws = [_beta(m, sd) for m in means]
    return lambda rng, k: np.array([draws[i % len(draws)](rng, 1)[0] for i in range(k)])


def _groups(rng: np.random.Generator, draw: Draw, pods: int | None, looks: int) -> list[np.ndarray]:
    """``looks`` intervals of ``pods`` pods each (1-3 at random when None)."""
    counts = rng.integers(1, 4, looks) if pods is None else np.full(looks, pods)
    return [draw(rng, int(k)) for k in counts]


def _first_look(log_e: np.ndarray, log_threshold: float = LOG_THRESHOLD) -> int | None:
    """The first look (1-based) at which the e-value reaches the threshold, if any."""
    hits = np.flatnonzero(log_e >= log_threshold)
    return int(hits[0]) + 1 if hits.size else None


# --- the guardrail ---------------------------------------------------------------------------------

#: Nulls at the 0.9 ceiling: (name, draw, pods per interval or None for 1-3).
GUARD_NULLS: list[tuple[str, Draw, int | None]] = [
    ("beta sd 0.05", _beta(0.9, 0.05), None),
    ("two-point {0, 1}", _two_point(0.0, 1.0, 0.9), None),
    ("two-point {0.5, 1}", _two_point(0.5, 1.0, 0.9), 4),
    ("skewed beta sd 0.25", _beta(0.9, 0.25), 4),
    ("pods 0.8 / 1.0", _pods_differ((0.8, 0.999), 0.01), 2),
]


@pytest.mark.parametrize(("name", "draw", "pods"), GUARD_NULLS, ids=[n for n, _, _ in GUARD_NULLS])
def test_guardrail_type_one_error_at_the_limit(name: str, draw: Draw, pods: int | None) -> None:
    """The mean exactly at the 0.9 ceiling, looked at after each of 60 intervals, both directions."""
    rng = np.random.default_rng(41)
    breach = within = missed = 0
    for _ in range(RUNS):
        up, down = guardrail_log_e_path(_groups(rng, draw, pods, HOUR), limit=0.9)
        breach += bool(up.max() >= LOG_THRESHOLD)
        within += bool(down.max() >= LOG_THRESHOLD)
        missed += bool(max(up.max(), down.max()) >= LOG_CS_THRESHOLD)  # the CS at alpha misses 0.9
    rates = np.array([breach, within, missed]) / RUNS
    print(f"gauge guardrail ({name}): type-I breach {rates[0]:.4f}, within {rates[1]:.4f}, CS miss {rates[2]:.4f}")
    assert rates.max() <= max_rate()


def test_guardrail_confidence_sequence_inverts_the_e_processes() -> None:
    """ci_low > mu exactly when the capital against "mean <= mu" reached 2 / alpha (and the mirror)."""
    rng = np.random.default_rng(45)
    for lower, upper in [(0.0, 1.0), (0.0, 2.0)]:
        values = [rng.uniform(lower + 0.3 * upper, lower + 0.8 * upper, 3) for _ in range(30)]
        res = gauge_guardrail(values, limit=0.5 * upper, lower=lower, upper=upper)
        assert res.ci_low <= res.mean <= res.ci_high
        for mu in np.linspace(lower, upper, 41)[1:-1]:
            if min(abs(mu - res.ci_low), abs(mu - res.ci_high)) < 1e-6:
                continue
            up, down = guardrail_log_e_path(values, limit=mu, lower=lower, upper=upper)
            assert (res.ci_low > mu) == (up[-1] >= LOG_CS_THRESHOLD)
            assert (res.ci_high < mu) == (down[-1] >= LOG_CS_THRESHOLD)
        assert res.e_value == pytest.approx(
            math.exp(guardrail_log_e_path(values, limit=0.5 * upper, lower=lower, upper=upper)[0][-1])
        )


def _to_detection(paths: list[np.ndarray], pods: int) -> tuple[float, float]:
    """Share of runs that reach 1 / alpha within the hour, and the median pod-intervals it took."""
    looks = [_first_look(p) for p in paths]
    caught = [k for k in looks if k is not None]
    median = float(np.median(caught)) * pods if len(caught) * 2 > len(looks) else math.inf
    return len(caught) / len(looks), median


def test_guardrail_power_over_an_hour() -> None:
    """4 pods, 1-minute windows, up to an hour: how many pod-intervals to prove a breach or headroom.

    Exact betting stakes at most 1 / 0.9 of the capital against a mean <= 0.9 (mass at 0 is in
    that null), so a pod at 0.95 adds at most log(0.95 / 0.9) ~ 0.054 nats: some 70 pod-intervals
    to reach 1 / 0.05, where the normal mixture used before needed ~12 (and was not exact). Headroom
    is cheap: a mean of 0.8 is 10x the distance to 1 and pays up to 0.1 / 0.1 per unit bet.
    """
    rng = np.random.default_rng(42)
    pods, runs = 4, 200
    cases = {
        "0.95 (sd 0.03) over 0.9": (_beta(0.95, 0.03), 0, 0.9),
        "0.99 (sd 0.005) over 0.95": (_beta(0.99, 0.005), 0, 0.95),
        "0.8 (sd 0.05) under 0.9": (_beta(0.8, 0.05), 1, 0.9),
        "0.5 (sd 0.1) under 0.9": (_beta(0.5, 0.1), 1, 0.9),
    }
    for name, (draw, side, limit) in cases.items():
        paths = [guardrail_log_e_path(_groups(rng, draw, pods, HOUR), limit=limit) for _ in range(runs)]
        power, median = _to_detection([p[side] for p in paths], pods)
        wrong = np.mean([p[1 - side].max() >= LOG_THRESHOLD for p in paths])
        print(
            f"gauge guardrail {name}: power in an hour {power:.3f}, "
            f"median pod-intervals {median:.0f} ({median / pods:.0f} min)"
        )
        assert power >= 0.95
        assert median <= 120  # 30 minutes at 4 pods
        assert wrong <= max_rate(runs=runs)


# --- the bounded comparison --------------------------------------------------------------------------


class ComparisonNull(NamedTuple):
    """Canary and stable shares with canary mean = (1 + r) x stable mean + a in every interval."""

    canary: Draw
    stable: Draw
    pods: int | None  # a version, in every interval; None: 1-3 at random
    r: float
    a: float
    swing: float = 0.0  # a load common to both versions: 1 + swing sin(t / 3)


COMPARISON_NULLS = {
    "beta, 4 pods": ComparisonNull(_beta(0.55, 0.05), _beta(0.5, 0.05), 4, 0.1, 0.0),
    "two-point {0, 1}, 1-3 pods": ComparisonNull(_two_point(0, 1, 0.55), _two_point(0, 1, 0.5), None, 0.1, 0.0),
    "skewed beta, absolute 5 pp": ComparisonNull(_beta(0.9, 0.2), _beta(0.85, 0.2), 2, 0.0, 0.05),
    "pods differ": ComparisonNull(_pods_differ((0.35, 0.75), 0.02), _beta(0.5, 0.05), 2, 0.1, 0.0),
    "load swing": ComparisonNull(_beta(0.55, 0.05), _beta(0.5, 0.05), 4, 0.1, 0.0, swing=0.3),
}


def _share_pair(
    rng: np.random.Generator, case: ComparisonNull, *, looks: int = HOUR
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per-pod shares of both versions, scaled by the case's common load (and kept in [0, 1])."""
    load = 1.0 + case.swing * np.sin(np.arange(looks) / 3.0)
    can = _groups(rng, case.canary, case.pods, looks)
    sta = _groups(rng, case.stable, case.pods, looks)
    scale = zip(can, sta, load, strict=True)
    pairs = [(np.clip(c * f, 0, 1), np.clip(s * f, 0, 1)) for c, s, f in scale]
    return [c for c, _ in pairs], [s for _, s in pairs]


@pytest.mark.parametrize("name", list(COMPARISON_NULLS))
def test_bounded_comparison_type_one_error_at_the_margin(name: str) -> None:
    """Canary mean exactly (1 + r) x stable + a in every interval, looked at after each of 60."""
    case = COMPARISON_NULLS[name]
    rng = np.random.default_rng(46)
    delta = 0.05  # canary - stable in every case without a load swing
    worse = noninferior = missed = 0
    for _ in range(RUNS):
        can, sta = _share_pair(rng, case)
        up, down = bounded_comparison_log_e_path(can, sta, relative_margin=case.r, absolute_margin=case.a)
        worse += bool(up.max() >= LOG_THRESHOLD)
        noninferior += bool(down.max() >= LOG_THRESHOLD)
        if not case.swing:  # the sequence covers a constant difference (with a swing it moves)
            up, down = bounded_comparison_log_e_path(can, sta, absolute_margin=delta)
            missed += bool(max(up.max(), down.max()) >= LOG_CS_THRESHOLD)
    rates = np.array([worse, noninferior, missed]) / RUNS
    print(f"bounded comparison ({name}): type-I {rates[0]:.4f}, mirror {rates[1]:.4f}, CS miss {rates[2]:.4f}")
    assert rates.max() <= max_rate()


def test_bounded_comparison_confidence_sequence_inverts_the_e_processes() -> None:
    rng = np.random.default_rng(47)
    can, sta = _share_pair(rng, ComparisonNull(_beta(0.6, 0.1), _beta(0.5, 0.1), 2, 0.0, 0.0), looks=20)
    res = bounded_comparison_test(can, sta, relative_margin=0.1)
    assert res.ci_low <= res.estimate <= res.ci_high
    assert res.n_intervals == 20
    for delta in np.linspace(-0.5, 0.5, 41):
        if min(abs(delta - res.ci_low), abs(delta - res.ci_high)) < 1e-6:
            continue
        up, down = bounded_comparison_log_e_path(can, sta, absolute_margin=float(delta))
        assert (res.ci_low > delta) == (up[-1] >= LOG_CS_THRESHOLD)
        assert (res.ci_high < delta) == (down[-1] >= LOG_CS_THRESHOLD)
    up, down = bounded_comparison_log_e_path(can, sta, relative_margin=0.1)
    assert (res.e_value, res.e_value_noninferior) == pytest.approx((math.exp(up[-1]), math.exp(down[-1])))


def test_bounded_comparison_power_over_an_hour() -> None:
    """4 pods a version, 1-minute windows: intervals to prove a share regression or non-inferiority.

    Each interval pairs 4 canary with 4 stable pods (4 independent groups); a group's difference
    d = canary - 1.1 stable can be as low as -1.1 under the null, so a bet stakes at most 1 / 1.1.
    """
    rng = np.random.default_rng(44)
    pods, runs = 4, 200
    cases = {
        "utilisation 0.65 vs 0.5 (allowed 0.55)": (_beta(0.65, 0.05), _beta(0.5, 0.05), 0),
        "memory 0.6 vs 0.5 (allowed 0.55)": (_beta(0.6, 0.02), _beta(0.5, 0.02), 0),
        "equal utilisation 0.5, within 10%": (_beta(0.5, 0.05), _beta(0.5, 0.05), 1),
    }
    for name, (canary, stable, side) in cases.items():
        paths = []
        for _ in range(runs):
            can, sta = _share_pair(rng, ComparisonNull(canary, stable, pods, 0.1, 0.0))
            paths.append(bounded_comparison_log_e_path(can, sta, relative_margin=0.1))
        power, median = _to_detection([p[side] for p in paths], pods)
        wrong = np.mean([p[1 - side].max() >= LOG_THRESHOLD for p in paths])
        print(
            f"bounded comparison {name}: power in an hour {power:.3f}, "
            f"median pod-intervals a version {median:.0f} ({median / pods:.0f} min)"
        )
        assert power >= 0.95
        assert median <= 120  # 30 minutes at 4 pods a version
        assert wrong <= max_rate(runs=runs)


# --- exact expectations at the null -------------------------------------------------------------------

SUPPORT = (0.0, 0.5, 1.0)


def _outcomes(probs: list[tuple[float, float, float]]) -> list[tuple[float, tuple[float, ...]]]:
    """Every outcome of independent values on SUPPORT, value i with probabilities probs[i], and its probability."""
    out = []
    for combo in itertools.product(range(3), repeat=len(probs)):
        p = math.prod(probs[i][k] for i, k in enumerate(combo))
        out.append((p, tuple(SUPPORT[k] for k in combo)))
    return out


def _mean(probs: tuple[float, float, float]) -> float:
    return sum(p * v for p, v in zip(probs, SUPPORT, strict=True))


AT_06 = (0.2, 0.4, 0.4)  # mean 0.6
BELOW_06 = (0.3, 0.4, 0.3)  # mean 0.5


@pytest.mark.parametrize(
    ("pods", "martingale", "within_null"),
    [
        ([AT_06, AT_06] * 3, True, True),  # 2 pods, 3 intervals, mean at the limit: in both nulls
        ([(0.4, 0.4, 0.2), (0.0, 0.4, 0.6)] * 3, False, True),  # pods at 0.4 and 0.8: mean at the limit
        ([BELOW_06, AT_06] * 3, False, False),  # mean 0.55: inside the breach null only
    ],
    ids=["at the limit", "pods differ", "inside"],
)
def test_guardrail_expectation_is_at_most_one_at_every_look(
    pods: list[tuple[float, float, float]], martingale: bool, within_null: bool
) -> None:
    """E[e-value] at each fixed look, over all 3^6 outcomes: 1 at the boundary, below inside.

    The running maximum's expectation is above 1: nothing bounds it, and only Ville's inequality,
    P(max >= 1 / a) <= a, makes continuous looks safe (checked exactly here too).
    """
    limit, per_interval = 0.6, 2
    breach = np.zeros(3)
    within = np.zeros(3)
    peak = 0.0
    ville = dict.fromkeys((0.05, 0.2, 0.5), 0.0)
    for p, values in _outcomes(pods):
        groups = [list(values[k : k + per_interval]) for k in range(0, len(values), per_interval)]
        up, down = guardrail_log_e_path(groups, limit=limit)
        breach += p * np.exp(up)
        within += p * np.exp(down)
        peak += p * math.exp(max(up.max(), 0.0))  # the e-value starts at 1
        for a in ville:
            ville[a] += p * (up.max() >= math.log(1 / a))
    print(f"guardrail E[e] per look: breach {breach}, within {within}; E[max] {peak:.4f}, P(max >= 1/a) {ville}")
    assert (breach <= 1 + 1e-12).all()
    if within_null:
        assert (within <= 1 + 1e-12).all()
    if martingale:
        assert breach == pytest.approx(1.0, abs=1e-12)
        assert within == pytest.approx(1.0, abs=1e-12)
        assert peak > 1.2
    else:
        assert breach[-1] < 1 - 1e-3
    for a, prob in ville.items():
        assert prob <= a


@pytest.mark.parametrize(
    ("canary", "stable", "pods", "r", "a"),
    [
        ((0.3, 0.4, 0.3), (0.4, 0.4, 0.2), (1, 1), 0.25, 0.0),  # 0.5 = 1.25 x 0.4
        ((0.4, 0.3, 0.3), (0.4, 0.4, 0.2), (2, 2), 0.0, 0.05),  # 0.45 = 0.4 + 0.05, two groups
        ((0.3, 0.4, 0.3), (0.4, 0.4, 0.2), (1, 2), 0.25, 0.0),  # 1 canary pod against 2: one group
    ],
    ids=["1 v 1, relative", "2 v 2, absolute", "1 v 2"],
)
def test_bounded_comparison_expectation_is_one_at_the_margin(
    canary: tuple[float, float, float],
    stable: tuple[float, float, float],
    pods: tuple[int, int],
    r: float,
    a: float,
) -> None:
    """E[e-value] at each fixed look over every outcome of 2 intervals, both directions: exactly 1."""
    assert _mean(canary) == pytest.approx((1 + r) * _mean(stable) + a)
    n_canary, n_stable = pods
    per_interval = n_canary + n_stable
    worse = np.zeros(2)
    noninferior = np.zeros(2)
    for p, values in _outcomes(([canary] * n_canary + [stable] * n_stable) * 2):
        chunks = [values[k : k + per_interval] for k in (0, per_interval)]
        can = [list(c[:n_canary]) for c in chunks]
        sta = [list(c[n_canary:]) for c in chunks]
        up, down = bounded_comparison_log_e_path(can, sta, relative_margin=r, absolute_margin=a)
        worse += p * np.exp(up)
        noninferior += p * np.exp(down)
    print(f"bounded comparison E[e] per look: worse {worse}, noninferior {noninferior}")
    assert worse == pytest.approx(1.0, abs=1e-12)
    assert noninferior == pytest.approx(1.0, abs=1e-12)


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


def _latency_guard_run(rng: np.random.Generator, mean: float, cv: float = 0.2) -> tuple[bool, bool, bool]:
    """Per-pod mean latency (seconds, 1-3 pods a look, Gamma) against a 250 ms SLO, clipped as the
    analysis clips seconds (20x the limit)."""
    limit = 0.25
    shape = 1.0 / cv**2
    values = [np.minimum(rng.gamma(shape, mean / shape, k), 20 * limit) for k in rng.integers(1, 4, LOOKS)]
    breach = within = missed = False
    for t in range(1, LOOKS + 1):
        res = normal_guardrail(values[:t], limit=limit, upper=20 * limit)
        breach |= res.e_value >= THRESHOLD
        within |= res.e_value_within >= THRESHOLD
        missed |= not res.ci_low <= mean <= res.ci_high
    return breach, within, missed


def test_seconds_guardrail_type_one_error_at_the_limit() -> None:
    """The approximate normal guardrail kept for seconds: within alpha at the limit, skewed pods included."""
    rng = np.random.default_rng(45)
    cases = (0.1, 0.3, 0.6)
    results = np.array([_latency_guard_run(rng, 0.25, cases[i % 3]) for i in range(RUNS)])
    breach, within, missed = results.mean(axis=0)
    print(f"seconds guardrail: type-I breach {breach:.4f}, within {within:.4f}, CS miss {missed:.4f}")
    assert breach <= max_rate()
    assert within <= max_rate()
    assert missed <= max_rate()


def test_seconds_guardrail_power() -> None:
    rng = np.random.default_rng(46)
    slow = np.array([_latency_guard_run(rng, 0.325) for _ in range(200)]).mean(axis=0)
    fast = np.array([_latency_guard_run(rng, 0.2) for _ in range(200)]).mean(axis=0)
    print(f"seconds guardrail: 325 ms caught {slow[0]:.3f}, 200 ms proven within 250 ms {fast[1]:.3f}")
    assert slow[0] >= 0.9
    assert fast[1] >= 0.9
    assert max(slow[1], fast[0]) <= max_rate(runs=200)


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
    with pytest.raises(StatsInputError):
        bounded_comparison_test([[0.5]], [[1.2]])  # shares only
    with pytest.raises(StatsInputError):
        bounded_comparison_test([[0.5]], [[0.5], [0.5]])
    with pytest.raises(StatsInputError):
        bounded_comparison_test([[0.5]], [[0.5]], absolute_margin=1.0)
    with pytest.raises(StatsInputError):
        bounded_comparison_test([[0.5]], [[0.5]], relative_margin=-0.1)
    with pytest.raises(StatsInputError):
        bounded_comparison_test([[0.5]], [[0.5]], alpha=1.0)


def test_too_little_data_is_no_evidence() -> None:
    res = gauge_comparison_test([[1.0], [], [2.0]], [[1.0], [1.0], []])
    assert res.e_value == res.e_value_noninferior == 1.0
    first = gauge_guardrail([[0.99, 0.99]], limit=0.9)
    assert first.e_value < (0.99 / 0.9) ** 2 < THRESHOLD  # no bet above 1 / 0.9: two pods earn little
    none = bounded_comparison_test([[0.9], []], [[], [0.1]])
    assert (none.e_value, none.e_value_noninferior, none.n_intervals) == (1.0, 1.0, 0)
    one = bounded_comparison_test([[1.0], [], [0.3]], [[0.0], [0.5], []], relative_margin=0.1)
    assert one.n_intervals == 1
    assert one.e_value < 1 + 1 / 1.1 < THRESHOLD  # one interval, one group, stake <= 1 / 1.1


@pytest.mark.parametrize("value", [0.0, 5e-324, 0.9999999999999999, 1.0])
def test_values_at_the_ends_of_the_range_give_finite_answers(value: float) -> None:
    with np.errstate(all="raise"):
        res = gauge_guardrail([[value, value]] * 5, limit=0.5)
        pair = bounded_comparison_test([[value]] * 5, [[1.0 - value]] * 5)
    assert 0.0 <= res.ci_low <= res.mean <= res.ci_high <= 1.0
    assert -1.0 <= pair.ci_low <= pair.estimate <= pair.ci_high <= 1.0
    assert math.isfinite(pair.statistic)


@settings(max_examples=100, deadline=None)
@given(
    groups=st.lists(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=4), min_size=1, max_size=6),
    bump=st.floats(0.0, 0.5),
)
def test_hotter_pods_in_the_latest_interval_never_lower_the_breach_evidence(
    groups: list[list[float]], bump: float
) -> None:
    """Bets are nonnegative and fixed in advance, so each factor 1 + c (x - m) / m rises with x."""
    hotter = [*groups[:-1], [min(1.0, v + bump) for v in groups[-1]]]
    before, after = gauge_guardrail(groups, limit=0.8), gauge_guardrail(hotter, limit=0.8)
    assert after.e_value >= before.e_value * (1 - 1e-12)
    assert after.e_value_within <= before.e_value_within * (1 + 1e-12)
    stable = [[0.5] * len(g) for g in groups]
    worse_before = bounded_comparison_test(groups, stable, relative_margin=0.1)
    worse_after = bounded_comparison_test(hotter, stable, relative_margin=0.1)
    assert worse_after.e_value >= worse_before.e_value * (1 - 1e-12)
    assert worse_after.e_value_noninferior <= worse_before.e_value_noninferior * (1 + 1e-12)
