"""The benchmark's own checks: a deterministic, faithful simulator and honest baselines."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from scipy import stats as sps

from bench.__main__ import matched_alphas, matched_policy
from bench.engines import canarist, engine_factories, make_engine
from bench.engines.base import BenchPolicy, Tally, Verdict
from bench.engines.naive import regression_pvalues
from bench.engines.oracle import OracleSprtEngine
from bench.harness import RECORD_KEYS, Outcome, horizon_intervals, run_rollout, served_after, summarise
from bench.simulate import (
    ISTIO_BUCKETS_MS,
    SCENARIOS,
    IntervalData,
    Rollout,
    RunTraffic,
    Served,
    SimConfig,
    truth_for,
)
from bench.stats import (
    clopper_pearson,
    histogram_quantile,
    kayenta_shift_interval,
)

ROOT = Path(__file__).resolve().parents[2]
CONFIG = SimConfig()
POLICY = BenchPolicy()
BASELINES = ("flagger", "kayenta", "naive-mwu", "fixed", "oracle-sprt")


def intervals(
    scenario: str, weights: Sequence[float], *, seed: int = 7, run: int = 3, config: SimConfig = CONFIG
) -> list[tuple[IntervalData, Served]]:
    """Simulate one rollout at the given weights, one interval each."""
    rollout = Rollout(RunTraffic(config, SCENARIOS[scenario], seed, run))
    return [rollout.step(w) for w in weights]


def vectors(data: IntervalData) -> list[npt.NDArray[np.float64]]:
    """Every number an engine sees in one interval, as arrays."""
    out: list[npt.NDArray[np.float64]] = []
    for v in (data.stable, data.canary):
        for c in (v.raw, v.promql):
            out.append(np.concatenate([[c.requests, c.errors, c.labelled, c.correct], c.buckets]).astype(np.float64))
        out.append(np.nan_to_num(v.gpu_util, nan=-1.0))
    return out


# --- the simulator ----------------------------------------------------------------------------


def test_simulator_is_deterministic_per_seed_and_run() -> None:
    weights = [1, 5, 10, 25, 50, 50, 50, 50]
    first = intervals("errors-x2", weights)
    again = intervals("errors-x2", weights)
    other = intervals("errors-x2", weights, run=4)
    for (a, sa), (b, sb) in zip(first, again, strict=True):
        assert sa == sb
        for x, y in zip(vectors(a), vectors(b), strict=True):
            np.testing.assert_array_equal(x, y)
    assert any(sa != so for (_, sa), (_, so) in zip(first, other, strict=True))


def test_scenarios_have_their_intended_effects() -> None:
    """Measured on a long simulated run: the per-request latencies, then the counters at 50 %."""
    traffic = {name: RunTraffic(CONFIG, s, 11, 0) for name, s in SCENARIOS.items()}
    for name, tr in traffic.items():
        stable = np.concatenate([tr.draws(t).latency_ms[0] for t in range(40)])
        canary = np.concatenate([tr.draws(t).latency_ms[1] for t in range(40)])
        med = np.median(canary) / np.median(stable)
        p99 = np.quantile(canary, 0.99) / np.quantile(stable, 0.99)
        assert np.median(stable) == pytest.approx(40.0, rel=0.02)
        expected = {"latency-median+10pct": (1.1, 1.1), "latency-tail-p99+30pct": (1.0, 1.3)}.get(name, (1.0, 1.0))
        assert med == pytest.approx(expected[0], abs=0.01), name
        assert p99 == pytest.approx(expected[1], abs=0.03), name

    def rates(name: str) -> tuple[float, float, float, float]:
        totals = np.zeros((2, 4))
        for data, _ in intervals(name, [50.0] * 60, seed=11, run=0):
            for i, v in enumerate((data.stable, data.canary)):
                if not v.reset:
                    totals[i] += (v.raw.requests, v.raw.errors, v.raw.labelled, v.raw.correct)
        (sr, se, sl, sc), (cr, ce, cl, cc) = totals
        return se / sr, ce / cr, sc / sl, cc / cl

    s_err, c_err, s_acc, c_acc = rates("aa")
    assert c_err / s_err == pytest.approx(1.0, abs=0.15)
    assert c_acc - s_acc == pytest.approx(0.0, abs=0.008)
    s_err, c_err, _, _ = rates("errors-x2")
    assert s_err == pytest.approx(0.005, rel=0.1)
    assert c_err / s_err == pytest.approx(2.0, abs=0.25)
    _, _, s_acc, c_acc = rates("accuracy-minus-2pts")
    assert s_acc == pytest.approx(0.92, abs=0.006)
    assert c_acc - s_acc == pytest.approx(-0.02, abs=0.008)


def test_binned_latency_matches_the_true_bucket_probabilities() -> None:
    truth = truth_for(CONFIG, SCENARIOS["latency-tail-p99+30pct"])
    assert truth.canary.bin_probs().sum() == pytest.approx(1.0)
    assert np.all(truth.stable.bin_probs() > 0)
    buckets = np.zeros((2, len(ISTIO_BUCKETS_MS)))
    for data, _ in intervals("latency-tail-p99+30pct", [50.0] * 30):
        for i, v in enumerate((data.stable, data.canary)):
            if not v.reset:
                buckets[i] += v.raw.buckets
    for i, version in enumerate((truth.stable, truth.canary)):
        np.testing.assert_allclose(buckets[i] / buckets[i].sum(), version.bin_probs(), atol=0.005)


def test_common_random_numbers_only_the_assignment_changes() -> None:
    low = intervals("aa", [1.0] * 6)
    high = intervals("aa", [1, 5, 10, 25, 50, 50])
    for (_, a), (_, b) in zip(low, high, strict=True):
        assert a.stable + a.canary == b.stable + b.canary
        assert a.canary <= b.canary
    # and through the harness: two engines deciding differently see the same totals
    traffic = RunTraffic(CONFIG, SCENARIOS["aa"], 5, 1)
    traces: dict[str, list[Served]] = {}
    for name in ("flagger", "oracle-sprt"):
        traces[name] = []
        run_rollout(make_engine(name, traffic.truth), traffic, POLICY, traces[name])
    first, second = traces["flagger"], traces["oracle-sprt"]
    n = min(len(first), len(second))
    assert n >= 1
    assert [s.stable + s.canary for s in first[:n]] == [s.stable + s.canary for s in second[:n]]


def test_counter_resets_and_missed_scrapes_occur_at_their_rates() -> None:
    config = replace(CONFIG, rps=2.0)
    n = 2000
    resets = missed = garbled = 0
    for data, _ in intervals("aa", [50.0] * n, config=config):
        for v in (data.stable, data.canary):
            resets += v.reset
            missed += config.scrapes_per_interval - v.scrapes
            garbled += v.reset and v.raw.requests < 0
            assert v.promql.requests >= 0  # PromQL's increase() is reset-aware
    expected_resets = 2 * n * config.p_reset
    assert abs(resets - expected_resets) < 4 * math.sqrt(expected_resets)
    assert garbled >= resets * 0.8  # a reset makes the raw increase negative once counts accumulated
    expected_missed = 2 * n * config.scrapes_per_interval * config.p_missed_scrape
    assert abs(missed - expected_missed) < 4 * math.sqrt(expected_missed)


def test_a_missed_final_scrape_shifts_counts_into_the_next_interval() -> None:
    config = replace(CONFIG, p_reset=0.0, p_missed_scrape=0.3)
    traffic = RunTraffic(config, SCENARIOS["aa"], 3, 0)
    rollout = Rollout(traffic)
    served = observed = 0
    shifted = 0
    for t in range(40):
        data, truth = rollout.step(50.0)
        served += truth.canary
        observed += data.canary.raw.requests
        if traffic.draws(t).scrape_ok[1, -1]:
            assert observed == served  # the counter's samples catch up with every request served
        else:
            shifted += observed != served
    assert shifted > 0


# --- engines ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", BASELINES)
def test_each_baseline_decides_with_verdicts(name: str) -> None:
    traffic = RunTraffic(CONFIG, SCENARIOS["latency-median+10pct"], 2, 0)
    engine = make_engine(name, traffic.truth)
    engine.reset(POLICY)
    rollout = Rollout(traffic)
    for step, weight in enumerate(CONFIG.steps[:3]):
        data, _ = rollout.step(weight, step, len(CONFIG.steps))
        assert isinstance(engine.decide(data), Verdict)
    decision, n, requests = run_rollout(make_engine(name, traffic.truth), traffic, POLICY)
    assert decision in ("rollback", "promote", "undecided")
    assert 1 <= n <= POLICY.deadline_s / CONFIG.interval_s
    assert requests > 0


def test_canarist_comes_first_and_states_its_hold_in_the_policy_it_runs() -> None:
    truth = truth_for(CONFIG, SCENARIOS["aa"])
    assert next(iter(engine_factories())) == "canarist"
    engine = engine_factories(canarist_hold="0s")["canarist"](truth)
    assert isinstance(engine, canarist.CanaristEngine)
    engine.reset(POLICY)  # a new rollout keeps the engine's option
    traffic = RunTraffic(CONFIG, SCENARIOS["aa"], 0, 0)
    run_rollout(engine, traffic, POLICY)
    assert engine.rollout is not None and engine.rollout.spec.strategy.hold_on_suspicion == "0s"
    default = canarist.benchmark_rollout(POLICY, [1, 5, 10, 25, 50])
    assert default.spec.strategy.hold_on_suspicion == canarist.HOLD_ON_SUSPICION
    with pytest.raises(KeyError):
        make_engine("no-such-engine", truth)


def test_oracle_alternative_in_aa_is_the_policy_margin() -> None:
    oracle = OracleSprtEngine(truth_for(CONFIG, SCENARIOS["aa"]))
    h1 = oracle.alternative(POLICY)
    assert h1.median_ms == pytest.approx(40 * 1.05)
    assert h1.error_rate == pytest.approx(0.0075)
    assert h1.accuracy == pytest.approx(0.91)
    bad = OracleSprtEngine(truth_for(CONFIG, SCENARIOS["errors-x2"]))
    assert bad.alternative(POLICY).error_rate == pytest.approx(0.01)


# --- reference statistics ---------------------------------------------------------------------


@pytest.mark.parametrize(("k", "n"), [(0, 10), (3, 10), (10, 10), (1, 2000), (97, 2000), (500, 500)])
def test_clopper_pearson_matches_scipy(k: int, n: int) -> None:
    ci = sps.binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
    lo, hi = clopper_pearson(k, n)
    assert lo == pytest.approx(ci.low, abs=1e-9)
    assert hi == pytest.approx(ci.high, abs=1e-9)


def test_naive_pvalues_are_nan_until_both_versions_have_data() -> None:
    empty, some = Tally(), Tally()
    some.requests, some.errors, some.labelled, some.correct = 100, 1, 20, 18
    some.buckets = np.ones_like(some.buckets)
    assert all(math.isnan(p) for p in regression_pvalues(empty, some).values())
    assert not any(math.isnan(p) for p in regression_pvalues(some, some).values())


def test_histogram_quantile_follows_prometheus() -> None:
    bounds = (0.1, 0.5, 1.0, math.inf)
    assert histogram_quantile(0.5, bounds, [10, 20, 40, 40]) == pytest.approx(0.5)  # rank 20: top of bucket 2
    assert histogram_quantile(0.25, bounds, [10, 20, 40, 40]) == pytest.approx(0.1)
    assert histogram_quantile(0.125, bounds, [10, 20, 40, 40]) == pytest.approx(0.05)  # from 0 in the first
    assert histogram_quantile(0.99, bounds, [10, 20, 40, 50]) == pytest.approx(1.0)  # +Inf: largest finite bound
    assert math.isnan(histogram_quantile(0.99, bounds, [0, 0, 0, 0]))


def test_kayenta_interval_estimates_the_location_shift() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(10.5, 1.0, 60)
    y = rng.normal(10.0, 1.0, 60)
    ci = kayenta_shift_interval(x, y, 0.98)
    assert ci.lower < ci.estimate < ci.upper
    assert ci.estimate == pytest.approx(np.median(np.subtract.outer(x, y)), abs=0.05)
    assert ci.lower < 0.5 < ci.upper


# --- harness and command line -------------------------------------------------------------------


def test_summaries_have_exactly_the_record_keys() -> None:
    outcomes = [
        Outcome("fixed", "errors-x2", 0, "rollback", 5, 900),
        Outcome("fixed", "errors-x2", 1, "promote", 5, 5000),
        Outcome("oracle-sprt", "errors-x2", 0, "rollback", 3, 450),
        Outcome("oracle-sprt", "errors-x2", 1, "undecided", 120, 9000),
    ]
    records = summarise(outcomes, 60.0, ["fixed", "oracle-sprt"], ["errors-x2"])
    assert [tuple(r) for r in records] == [RECORD_KEYS, RECORD_KEYS]
    fixed = records[0]
    assert fixed["rollback_rate"] == 0.5
    assert fixed["ratio_to_oracle"] == 2.0
    assert fixed["median_harm_requests"] == 2950.0
    assert records[1]["median_minutes_to_decision"] == 3.0


def test_harm_counts_every_request_after_a_promotion_until_the_horizon() -> None:
    config, policy = SimConfig(), BenchPolicy()
    traffic = RunTraffic(config, SCENARIOS["errors-x2"], 0, 0)
    horizon = horizon_intervals(policy, config)
    assert horizon == 120
    after = served_after(traffic, policy, 5)
    assert after == round(sum(traffic.rate(t) * 60 for t in range(5, 120)))
    assert 0.7 * 100 * 60 * 115 < after < 1.3 * 100 * 60 * 115
    assert served_after(traffic, policy, horizon) == 0
    outcomes = [Outcome("fixed", "errors-x2", 0, "promote", 5, 5000, 5000 + after)]
    (record,) = summarise(outcomes, 60.0, ["fixed"], ["errors-x2"])
    assert record["median_harm_requests"] == record["mean_harm_requests"] == 5000 + after


def test_matched_runs_ask_the_baselines_question_at_their_false_rollback_rate() -> None:
    records = [
        {"engine": "kayenta", "scenario": "aa", "rollback_rate": 0.2},
        {"engine": "fixed", "scenario": "aa", "rollback_rate": 0.0},
        {"engine": "naive-mwu", "scenario": "aa", "rollback_rate": 0.3},  # not a matched baseline
        {"engine": "kayenta", "scenario": "errors-x2", "rollback_rate": 0.4},
    ]
    assert matched_alphas(records, ["canarist", "kayenta", "fixed"], ["aa", "errors-x2"]) == {"kayenta": 0.2}
    assert matched_alphas(records, ["kayenta", "fixed"], ["aa"]) == {}  # no canarist to match
    wild = [{"engine": "kayenta", "scenario": "aa", "rollback_rate": 0.6}]
    assert matched_alphas(wild, ["canarist", "kayenta"], ["aa"]) == {}  # beyond any policy's alpha
    assert matched_alphas(records, ["canarist", "kayenta"], ["errors-x2"]) == {}  # no A/A rate measured
    policy = matched_policy(BenchPolicy(), 0.2)
    assert (policy.alpha, policy.latency_margin_rel, policy.error_margin_abs, policy.accuracy_margin_abs) == (
        0.2,
        0.0,
        0.0,
        0.0,
    )
    assert policy.slo_p99_ms == BenchPolicy().slo_p99_ms


def test_command_line_writes_the_results(tmp_path: Path) -> None:
    out = tmp_path / "results"
    cmd = [sys.executable, "-m", "bench", "--runs", "3", "--quick", "--scenarios", "aa", "--jobs", "1"]
    subprocess.run([*cmd, "--out", str(out)], cwd=ROOT, check=True, capture_output=True, timeout=120)
    document = json.loads((out / "stats.json").read_text())
    assert set(document) == {"policy", "simulator", "results", "matched"}
    matched = {f"canarist@{name}" for name in document["matched"]}  # baselines that rolled back an A/A canary
    assert {r["engine"] for r in document["results"]} == set(engine_factories()) | matched
    for record in document["results"]:
        assert tuple(record) == RECORD_KEYS
        assert record["runs"] == 3
        assert record["scenario"] == "aa"
    assert (out / "stats.md").read_text().count("| aa |") == len(document["results"])
