"""analyse() and evaluate() on synthetic observations: every verdict for every series type, the budget.

The observations are built by hand from :mod:`controller.metrics.samples`, with deterministic counts (expected
values, no sampling), so each case says exactly what the data look like.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from scipy import stats as sps

from controller import stats
from controller.api.metrics_spec import Metric
from controller.api.model import ModelRollout
from controller.api.status import Verdict
from controller.judge.analysis import SAMPLE_RATIO_NAME, SLO_SHARE, analyse, check_shares, evaluate
from controller.metrics.samples import (
    CountSeries,
    DistributionSeries,
    GaugeSeries,
    HistogramSeries,
    MetricData,
    Observation,
    Window,
)
from controller.stats.shift import MAX_WATCHED

ALPHA = 0.05
#: Istio's default buckets in seconds, +Inf last.
EDGES = (*(b / 1000 for b in (0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000)), math.inf)
P, F, U, N = Verdict.PASS, Verdict.FAIL, Verdict.INCONCLUSIVE, Verdict.NODATA

LATENCY: dict[str, Any] = {
    "name": "latency",
    "kind": "IstioLatency",
    "quantile": 0.99,
    "slo": {"max": "250ms"},
    "margin": {"relative": 0.05},
}
ERRORS: dict[str, Any] = {
    "name": "errors",
    "kind": "IstioErrorRate",
    "slo": {"max": 0.02},
    "margin": {"absolute": 0.0025},
}
ERRORS_RELATIVE: dict[str, Any] = {"name": "errors", "kind": "IstioErrorRate", "margin": {"relative": 0.5}}
ACCURACY: dict[str, Any] = {
    "name": "accuracy",
    "kind": "CustomRatio",
    "ratio": {"success": "model_correct_total", "total": "model_labelled_total", "matchLabels": {"model": "m"}},
    "slo": {"min": 0.8},
    "margin": {"absolute": 0.01},
}
GPU_UTIL: dict[str, Any] = {"name": "gpu-util", "kind": "DcgmGpuUtilization", "slo": {"max": 0.95}}
GPU_COST: dict[str, Any] = {"name": "gpu-cost", "kind": "GpuSecondsPerInference", "margin": {"relative": 0.15}}
PREDICTIONS: dict[str, Any] = {
    "name": "predictions",
    "kind": "PredictionDistribution",
    "outputs": {"histogram": "model_score", "matchLabels": {"model": "m"}, "positiveAbove": 0.5},
    "margin": {"absolute": 0.05},
}


def rollout(*metrics: dict[str, Any], routing: dict[str, Any] | None = None) -> ModelRollout:
    spec: dict[str, Any] = {
        "service": {"name": "model", "port": 8080},
        "stable": {"name": "stable", "labels": {"version": "stable"}},
        "canary": {"name": "canary", "labels": {"version": "canary"}},
        "strategy": {"steps": [5, 25, 50], "interval": "1m", "minRequests": 100},
        "analysis": {"alpha": ALPHA, "metrics": list(metrics)},
    }
    if routing is not None:
        spec["routing"] = routing
    document = {
        "apiVersion": "canarist.io/v1alpha1",
        "kind": "ModelRollout",
        "metadata": {"name": "m", "namespace": "n"},
    }
    return ModelRollout.model_validate({**document, "spec": spec})


def metric(raw: dict[str, Any]) -> Metric:
    return rollout(raw).spec.analysis.metrics[0]


def windows(count: int, share: float = 0.5, *, start: float = 0.0) -> tuple[Window, ...]:
    return tuple(Window(start + 60.0 * i, start + 60.0 * (i + 1), share) for i in range(count))


def observation(series: Sequence[MetricData], count: int, *, share: float = 0.5, per_window: int = 3000) -> Observation:
    canary = round(per_window * share)
    return Observation(
        windows=windows(count, share),
        stable_requests=(per_window - canary,) * count,
        canary_requests=(canary,) * count,
        metrics=tuple(series),
    )


# --- synthetic series -------------------------------------------------------------------------------


def cumulative(n: int, median_ms: float = 40.0, sigma: float = 0.5) -> tuple[float, ...]:
    """Expected cumulative Istio bucket counts of n lognormal latencies."""
    cdf = sps.lognorm(s=sigma, scale=median_ms / 1000).cdf(np.asarray(EDGES[:-1]))
    return (*(float(round(n * c)) for c in cdf), float(n))


def histogram(count: int, *, canary_median: float = 40.0, n: int = 1500) -> HistogramSeries:
    return HistogramSeries(EDGES, (cumulative(n),) * count, (cumulative(n, canary_median),) * count)


def rates(count: int, stable: float, canary: float, *, n: int = 1500) -> CountSeries:
    return CountSeries((round(n * stable),) * count, (n,) * count, (round(n * canary),) * count, (n,) * count)


def gauges(count: int, stable: float, canary: float, *, jitter: float = 0.02) -> GaugeSeries:
    """Two pods per version, with a deterministic wobble so the variance bounds are finite."""
    wobble = [jitter * math.sin(1.7 * i + k) for i in range(count) for k in range(2)]
    s = tuple((stable * (1 + wobble[2 * i]), stable * (1 + wobble[2 * i + 1])) for i in range(count))
    c = tuple((canary * (1 - wobble[2 * i]), canary * (1 - wobble[2 * i + 1])) for i in range(count))
    return GaugeSeries(s, c)


def outputs(count: int, canary: Sequence[float], *, n: int = 1000) -> DistributionSeries:
    """Score counts in 4 buckets per window: stable (0.4, 0.3, 0.2, 0.1), the canary's shares as given."""
    stable = tuple(round(n * p) for p in (0.4, 0.3, 0.2, 0.1))
    buckets = ("<= 0.25", "(0.25, 0.5]", "(0.5, 0.75]", "(0.75, inf]")
    return DistributionSeries(buckets, (stable,) * count, (tuple(round(n * p) for p in canary),) * count, 2)


# Every verdict for every series type: (policy metric, series, windows, verdict, SLO breached).
CASES = {
    "latency pass": (LATENCY, histogram(20), 20, P, False),
    "latency regression": (LATENCY, histogram(20, canary_median=52.0), 20, F, False),
    "latency SLO breach": (LATENCY, histogram(5, canary_median=100.0), 5, F, True),
    "latency inconclusive": (LATENCY, histogram(1, canary_median=41.0, n=100), 1, U, False),
    "errors (absolute margin) pass": (ERRORS, rates(20, 0.005, 0.005), 20, P, False),
    "errors (absolute margin) regression": (ERRORS, rates(20, 0.005, 0.015), 20, F, False),
    "errors (absolute margin) SLO breach": (ERRORS, rates(3, 0.005, 0.10), 3, F, True),
    "errors (absolute margin) inconclusive": (ERRORS, rates(1, 0.005, 0.005, n=100), 1, U, False),
    "errors (relative margin) pass": (ERRORS_RELATIVE, rates(40, 0.01, 0.01), 40, P, False),
    "errors (relative margin) regression": (ERRORS_RELATIVE, rates(20, 0.01, 0.03), 20, F, False),
    "errors (relative margin) inconclusive": (ERRORS_RELATIVE, rates(1, 0.01, 0.01, n=100), 1, U, False),
    "accuracy pass": (ACCURACY, rates(20, 0.92, 0.92), 20, P, False),
    "accuracy regression": (ACCURACY, rates(20, 0.92, 0.85), 20, F, False),
    "accuracy SLO breach": (ACCURACY, rates(3, 0.92, 0.60), 3, F, True),
    "accuracy inconclusive": (ACCURACY, rates(1, 0.92, 0.92, n=100), 1, U, False),
    "gpu guardrail pass": (GPU_UTIL, gauges(20, 0.5, 0.5), 20, P, False),
    # The exact (betting) guardrail can bet at most 1 / 0.95 against a mean <= 95 %, so a 99 % canary
    # earns <= log(0.99 / 0.95) ~ 0.04 nats a pod-interval: an hour of 1-minute windows on 2 pods.
    "gpu guardrail breach": (GPU_UTIL, gauges(60, 0.5, 0.99, jitter=0.005), 60, F, True),
    "gpu guardrail inconclusive": (GPU_UTIL, gauges(3, 0.5, 0.94), 3, U, False),
    "gpu cost pass": (GPU_COST, gauges(30, 0.02, 0.02), 30, P, False),
    "gpu cost regression": (GPU_COST, gauges(20, 0.02, 0.04), 20, F, False),
    "gpu cost inconclusive": (GPU_COST, gauges(3, 0.02, 0.02), 3, U, False),
    "predictions alike": (PREDICTIONS, outputs(20, (0.4, 0.3, 0.2, 0.1)), 20, P, False),
    "predictions drifted": (PREDICTIONS, outputs(10, (0.2, 0.3, 0.2, 0.3)), 10, F, False),
    "predictions inconclusive": (PREDICTIONS, outputs(1, (0.38, 0.3, 0.2, 0.12), n=100), 1, U, False),
}


@pytest.mark.parametrize("name", list(CASES))
def test_each_verdict_for_each_series_type(name: str) -> None:
    raw, series, count, verdict, breached = CASES[name]
    result = analyse(rollout(raw), observation([MetricData(raw["name"], series)], count), step_started_at=0.0)
    (evidence,) = result.metrics
    assert (evidence.verdict, evidence.slo_breached) == (verdict, breached), evidence.reason
    assert evidence.threshold == pytest.approx(1 / ALPHA)
    if verdict is F:
        assert evidence.e_regression >= evidence.threshold
    if verdict is P:
        assert evidence.e_noninferiority >= evidence.threshold > evidence.e_regression
    if verdict is U:
        assert max(evidence.e_regression, evidence.e_noninferiority) < evidence.threshold
    assert evidence.n_canary > 0
    assert evidence.reason


def test_reasons_say_what_was_compared() -> None:
    obs = observation(
        [
            MetricData("latency", histogram(20, canary_median=52.0)),
            MetricData("errors", rates(20, 0.005, 0.015)),
            MetricData("accuracy", rates(20, 0.92, 0.85)),
        ],
        20,
    )
    found = {m.name: m for m in analyse(rollout(LATENCY, ERRORS, ACCURACY), obs, step_started_at=0.0).metrics}
    assert "SLO p99 <= 250ms" in found["latency"].reason and "margin +5%" in found["latency"].reason
    # canary p99 / stable p99 - 1, PromQL-style (linear inside the (100, 250] ms bucket): coarse, but > margin
    assert found["latency"].estimate is not None and 0.05 < found["latency"].estimate < 0.3
    assert "SLO <= 2.00%" in found["errors"].reason and "allowed +0.250%" in found["errors"].reason
    assert found["errors"].estimate == pytest.approx(0.01, abs=1e-3)
    assert found["errors"].interval is not None and found["errors"].interval[0] > 0.0025
    assert "SLO >= 80.00%" in found["accuracy"].reason and "allowed -1.000%" in found["accuracy"].reason
    relative = evaluate(metric(ERRORS_RELATIVE), MetricData("errors", rates(20, 0.01, 0.03)), ALPHA)
    assert "rate ratio 3.00" in relative.reason
    assert relative.estimate == pytest.approx(2.0)
    drift = evaluate(metric(PREDICTIONS), MetricData("predictions", outputs(10, (0.2, 0.3, 0.2, 0.3))), ALPHA)
    assert "outputs differ by 20.0%" in drift.reason and "(margin 5%)" in drift.reason
    assert "positive rate +20.0pp" in drift.reason
    assert drift.estimate == pytest.approx(0.2) and drift.interval is not None and drift.interval[0] > 0.05


# --- no data --------------------------------------------------------------------------------------


def test_no_series_is_no_data_with_the_reason() -> None:
    missing = analyse(rollout(ERRORS), observation([], 5), step_started_at=0.0)
    assert (missing.metrics[0].verdict, missing.metrics[0].reason) == (N, "no series returned")
    down = MetricData("errors", None, "prometheus: connection refused")
    (evidence,) = analyse(rollout(ERRORS), observation([down], 5), step_started_at=0.0).metrics
    assert (evidence.verdict, evidence.reason) == (N, "prometheus: connection refused")
    assert math.isinf(evidence.threshold)  # no test ran


@pytest.mark.parametrize(
    "series",
    [
        HistogramSeries(EDGES, (cumulative(1500),) * 4, (None,) * 4),
        CountSeries((10,) * 4, (1500,) * 4, (None,) * 4, (None,) * 4),
        GaugeSeries(((0.5, 0.5),) * 4, (None,) * 4),
        GaugeSeries(((0.5, 0.5),) * 4, ((),) * 4),
        DistributionSeries(("a", "b"), ((5, 5),) * 4, (None,) * 4),
    ],
    ids=["histogram", "counts", "gauges", "gauges-without-pods", "distribution"],
)
def test_every_canary_window_missing_is_no_data(series: Any) -> None:
    raw = {HistogramSeries: LATENCY, CountSeries: ERRORS, GaugeSeries: GPU_UTIL, DistributionSeries: PREDICTIONS}[
        type(series)
    ]
    reason = "canary: no samples (windows 0-3)"
    (evidence,) = analyse(
        rollout(raw), observation([MetricData(raw["name"], series, reason)], 4), step_started_at=0.0
    ).metrics
    assert (evidence.verdict, evidence.reason) == (N, reason)
    bare = evaluate(metric(raw), MetricData(raw["name"], series), ALPHA)
    assert (bare.verdict, bare.reason) == (N, "no canary traffic")


def test_counter_reset_windows_are_skipped_and_the_reason_kept() -> None:
    full = rates(20, 0.005, 0.015)
    reset = CountSeries(
        full.stable_events,
        full.stable_trials,
        (*full.canary_events[:3], None, *full.canary_events[4:]),
        (*full.canary_trials[:3], None, *full.canary_trials[4:]),
    )
    reason = "canary: counter reset of errors (window 3)"
    evidence = evaluate(metric(ERRORS), MetricData("errors", reset, reason), ALPHA)
    assert evidence.verdict is F
    assert evidence.reason.endswith(f"({reason})")
    assert evidence.n_canary == 19 * 1500
    assert evidence.n_stable == 19 * 1500  # the comparison pairs windows where both versions have data
    hist = histogram(6)
    garbled = HistogramSeries(EDGES, hist.stable, (*hist.canary[:2], None, *hist.canary[3:]))
    evidence = evaluate(metric(LATENCY), MetricData("latency", garbled, "canary: counter reset (window 2)"), ALPHA)
    assert evidence.verdict is not N and evidence.n_canary == 5 * 1500
    assert evidence.reason.endswith("(canary: counter reset (window 2))")


def test_unusable_data_is_no_data() -> None:
    bad = HistogramSeries(EDGES, (cumulative(100),), ((9.0, 3.0, *(9.0,) * (len(EDGES) - 2)),))  # decreasing
    evidence = evaluate(metric(LATENCY), MetricData("latency", bad), ALPHA)
    assert evidence.verdict is N and evidence.reason.startswith("unusable data:")


# --- the error budget -------------------------------------------------------------------------------


def test_budget_is_split_by_weight_then_between_slo_and_comparison() -> None:
    """e-Bonferroni: metric j gets alpha w_j / sum w; inside it, the SLO guard 10 %, the comparison 90 %."""
    policy = rollout({**LATENCY, "weight": 2}, ERRORS, {**ACCURACY, "slo": None}, GPU_UTIL)
    weights = [m.weight for m in policy.spec.analysis.metrics]
    budgets = [ALPHA * w / sum(weights) for w in weights]
    obs = observation(
        [
            MetricData("latency", histogram(3)),
            MetricData("errors", rates(3, 0.005, 0.005)),
            MetricData("accuracy", rates(3, 0.92, 0.92)),
            MetricData("gpu-util", gauges(3, 0.5, 0.5)),
        ],
        3,
    )
    found = analyse(policy, obs, step_started_at=0.0).metrics
    assert [m.threshold for m in found] == pytest.approx([1 / b for b in budgets])
    assert [check_shares(m) for m in policy.spec.analysis.metrics] == [
        (SLO_SHARE, 1 - SLO_SHARE),
        (SLO_SHARE, 1 - SLO_SHARE),
        (0.0, 1.0),
        (1.0, 0.0),
    ]
    total = sum(b * sum(check_shares(m)) for b, m in zip(budgets, policy.spec.analysis.metrics, strict=True))
    assert total == pytest.approx(ALPHA)


def _checks(series: CountSeries) -> tuple[Any, Any]:
    """The errors metric's two checks, computed directly: (comparison, SLO guard)."""
    cols = [
        np.asarray(c) for c in (series.canary_events, series.canary_trials, series.stable_events, series.stable_trials)
    ]
    return stats.proportion_test(*cols, margin=0.0025), stats.rate_slo_test(cols[0], cols[1], bound=0.02)


def test_closed_testing_combines_the_slo_guard_and_the_comparison() -> None:
    """Check i fails when E_i and E_both = 0.1 E_slo + 0.9 E_comparison both reach 1 / alpha_j."""
    series = rates(6, 0.005, 0.0125)
    comparison, slo = _checks(series)
    both = SLO_SHARE * slo.e_value + (1 - SLO_SHARE) * comparison.e_value
    evidence = evaluate(metric(ERRORS), MetricData("errors", series), ALPHA)
    assert evidence.e_regression == pytest.approx(max(min(slo.e_value, both), min(comparison.e_value, both)))
    assert evidence.e_noninferiority == pytest.approx(min(comparison.e_value_noninferior, slo.e_value_compliant))
    assert evidence.threshold == pytest.approx(1 / ALPHA)
    # no SLO evidence (1.25 % against a 2 % SLO): the comparison needs 0.9 E >= 1 / alpha_j, as with a split
    assert slo.e_value < 1
    e = comparison.e_value
    assert evaluate(metric(ERRORS), MetricData("errors", series), 1.01 / (0.9 * e)).verdict is F
    assert evaluate(metric(ERRORS), MetricData("errors", series), 0.99 / (0.9 * e)).verdict is not F


def test_an_slo_breach_alone_needs_the_guards_share() -> None:
    """Stable as bad as the canary (4 % errors): no regression, only the SLO guard's evidence counts."""
    series = rates(2, 0.04, 0.04, n=300)
    comparison, slo = _checks(series)
    assert comparison.e_value < 1 < slo.e_value
    budget = 1.5 / slo.e_value  # 1 / budget lies between SLO_SHARE * E_slo and E_slo
    alone = evaluate(metric({**ERRORS, "margin": None}), MetricData("errors", series), budget)
    assert alone.slo_breached and alone.verdict is F  # a metric with only the guard gives it the whole budget
    shared = evaluate(metric(ERRORS), MetricData("errors", series), budget)
    assert not shared.slo_breached and shared.verdict is not F
    later = evaluate(metric(ERRORS), MetricData("errors", series), 1.01 / (SLO_SHARE * slo.e_value))
    assert later.slo_breached


def test_a_blatant_breach_that_is_also_a_regression_is_reported_as_an_slo_breach() -> None:
    """Once the comparison carries the intersection, the guard is judged at the metric's whole budget."""
    series = rates(2, 0.005, 0.03)  # 3 % errors: over the 2 % SLO, and 2.5 points worse than stable
    comparison, slo = _checks(series)
    budget = 1.5 / slo.e_value
    assert (1 - SLO_SHARE) * comparison.e_value >= 1 / budget > SLO_SHARE * slo.e_value
    evidence = evaluate(metric(ERRORS), MetricData("errors", series), budget)
    assert evidence.slo_breached and evidence.verdict is F


# --- the sample-ratio guard -----------------------------------------------------------------------


def split_observation(canary_share_seen: float, configured: float = 0.1, count: int = 10) -> Observation:
    canary = round(3000 * canary_share_seen)
    return Observation(
        windows=windows(count, configured),
        stable_requests=(3000 - canary,) * count,
        canary_requests=(canary,) * count,
        metrics=(MetricData("errors", rates(count, 0.005, 0.005)),),
    )


def test_sample_ratio_guard_fires_on_a_broken_split() -> None:
    found = analyse(rollout(ERRORS), split_observation(0.2), step_started_at=0.0).metrics
    guard = [m for m in found if m.name == SAMPLE_RATIO_NAME]
    assert len(guard) == 1
    assert guard[0].verdict is N and "sample ratio mismatch" in guard[0].reason
    assert guard[0].e_regression >= guard[0].threshold
    assert guard[0].n_canary == 600 * 10


def test_sample_ratio_guard_is_silent_on_a_healthy_split() -> None:
    found = analyse(rollout(ERRORS), split_observation(0.1), step_started_at=0.0).metrics
    assert [m.name for m in found] == ["errors"]


@pytest.mark.parametrize(
    "routing",
    [
        {"match": [{"name": "beta", "headers": {"x-cohort": {"exact": "beta"}}}]},
        {"sticky": {"cookieName": "canary"}},
    ],
    ids=["cohorts", "sticky"],
)
def test_sample_ratio_guard_is_silent_with_cohorts_or_sticky_users(routing: dict[str, Any]) -> None:
    found = analyse(rollout(ERRORS, routing=routing), split_observation(0.2), step_started_at=0.0).metrics
    assert [m.name for m in found] == ["errors"]


def test_sample_ratio_guard_is_silent_for_shadow_windows() -> None:
    """Mirrored traffic: the canary serves copies while its live share is 0."""
    obs = Observation(
        windows=windows(10, 0.0),
        stable_requests=(3000,) * 10,
        canary_requests=(1500,) * 10,
        metrics=(MetricData("errors", rates(10, 0.005, 0.005)),),
    )
    assert [m.name for m in analyse(rollout(ERRORS), obs, step_started_at=0.0).metrics] == ["errors"]


# --- canary requests in the step -------------------------------------------------------------------


def test_canary_requests_in_step_count_only_windows_after_the_step_started() -> None:
    obs = Observation(
        windows=windows(6, 0.1),
        stable_requests=(900,) * 6,
        canary_requests=(100, 110, 120, None, 140, 150),
        metrics=(MetricData("errors", rates(6, 0.005, 0.005)),),
    )
    policy = rollout(ERRORS)
    assert analyse(policy, obs, step_started_at=0.0).canary_requests_in_step == 100 + 110 + 120 + 140 + 150
    assert analyse(policy, obs, step_started_at=120.0).canary_requests_in_step == 120 + 140 + 150  # ends > 120
    assert analyse(policy, obs, step_started_at=150.0).canary_requests_in_step == 120 + 140 + 150  # (120, 180]
    assert analyse(policy, obs, step_started_at=180.0).canary_requests_in_step == 140 + 150
    assert analyse(policy, obs, step_started_at=360.0).canary_requests_in_step == 0


def test_sample_ratio_guard_skips_windows_around_a_step_change() -> None:
    """A window whose requests straddle a step change (scrape lag) is no evidence of broken routing."""
    broken = split_observation(0.2)
    unsteady = tuple(Window(w.start, w.end, w.canary_share, steady=False) for w in broken.windows)
    obs = Observation(unsteady, broken.stable_requests, broken.canary_requests, broken.metrics)
    assert [m.name for m in analyse(rollout(ERRORS), obs, step_started_at=0.0).metrics] == ["errors"]


# --- fine histograms -------------------------------------------------------------------------------


@pytest.mark.parametrize("canary_median", [40.0, 60.0])
def test_a_ten_thousand_bucket_histogram_is_analysed_on_a_bounded_number_of_bounds(canary_median: float) -> None:
    """The shift test watches at most MAX_WATCHED bounds however fine the histogram (observe also
    coarsens to MAX_HISTOGRAM_EDGES before this); a 50 % slower canary is still caught."""
    edges = (*(i / 10_000 for i in range(1, 10_000)), math.inf)  # 0.1 ms steps up to 1 s
    finite = np.asarray(edges[:-1])

    def cum(median_ms: float) -> tuple[float, ...]:
        cdf = sps.lognorm(s=0.5, scale=median_ms / 1000).cdf(finite)
        return (*(float(round(3000 * c)) for c in cdf), 3000.0)

    series = HistogramSeries(edges, (cum(40.0),) * 10, (cum(canary_median),) * 10)
    observed = observation([MetricData("latency", series)], 10)
    (evidence,) = analyse(rollout(LATENCY), observed, step_started_at=0.0).metrics
    watched = evidence.reason.rsplit(" at ", 1)[-1].rstrip(")").split(", ")
    assert 0 < len(watched) <= MAX_WATCHED, evidence.reason
    assert evidence.verdict is (F if canary_median > 40.0 else P), evidence.reason
