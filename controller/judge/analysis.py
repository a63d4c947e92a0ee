"""Per-metric verdicts from the rollout's observations: which test, at which threshold, and why.

**Across metrics**, the error budget ``alpha`` is split by the metrics' weights (e-Bonferroni:
alpha_j = alpha * w_j / sum w, so sum alpha_j = alpha); metric j reports the threshold 1 / alpha_j.

**Within a metric** that has both an SLO guard and a comparison with stable, the two are tested by
closed testing (Marcus, Peritz & Gabriel 1976; with e-values, Vovk & Wang 2021): the intersection
e-value E_both = s * E_slo + (1 - s) * E_comparison with s = :data:`SLO_SHARE`, and check i is
rejected when both E_i and E_both reach 1 / alpha_j. A false rejection needs the intersection of the
true nulls to reach 1 / alpha_j, so the metric's false-rollback probability stays at most alpha_j
however often the controller looks (every e-process here is anytime-valid, and Ville's inequality
applies to each). Closed testing is never less powerful than splitting alpha_j into s and 1 - s:

- a comparison with no SLO evidence (the usual regression) rolls back when (1 - s) E_comparison
  reaches 1 / alpha_j, exactly as with the split;
- once either check is far past its share, the other is judged at the metric's whole budget: a
  blatant breach that is also a regression is reported as an *SLO breach* as soon as E_slo reaches
  1 / alpha_j, not 1 / (s alpha_j).

The metric's ``e_regression`` is max_i min(E_i, E_both), so it fails exactly when e_regression >=
1 / alpha_j (for a metric with one check, simply its e-value). Why the SLO guard gets the small
share: a breach of an absolute SLO is usually blatant (many times the allowed exceedance, measured
on the canary alone, with no stable noise), so its e-value explodes within a few hundred requests
and the smaller share costs it little (log 5 ~ 1.6 nats more than an even split: at 4x the allowed
p99 exceedance, ~60 more canary requests), and less than that when the comparison fails as well.
The comparison is the slow test, hunting an effect of about the margin through both versions' noise;
from half the budget to 90 % lowers what it must gather by log(1.8) ~ 0.6 of 5-6 nats: some 5-10 %
fewer canary requests to a rollback.

**Passing** needs every check *proven* (SLO met, and non-inferior within the margin), each at
1 / alpha_j: an intersection-union test (Berger 1982), whose error is at most the largest of its
parts', so the proofs need no split. ``e_noninferiority`` is the smallest proof e-value. Missing or
broken data is NoData with its reason: never a pass, never a failure.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from controller import stats
from controller.api.kinds import (
    TRAITS,
    Unit,
    absolute_margin,
    lower_is_better,
    quantile,
    relative_margin,
    slo_max,
    slo_min,
)
from controller.api.metrics_spec import Metric
from controller.api.model import ModelRollout
from controller.api.status import Verdict
from controller.judge.machine import Distribution, Evidence, MetricEvidence
from controller.metrics.samples import (
    CountSeries,
    DistributionSeries,
    GaugeSeries,
    HistogramSeries,
    MetricData,
    Observation,
)

#: Budget of the sample-ratio guard: a broken split holds the rollout, it never rolls back.
SAMPLE_RATIO_ALPHA = 0.001
#: Share of a metric's budget given to its SLO guard when the metric also compares with stable.
SLO_SHARE = 0.1
#: Latency gauges (Triton means) have no natural ceiling; bounded at this multiple of the SLO.
GAUGE_CEILING_FACTOR = 20.0
SAMPLE_RATIO_NAME = "traffic-split"


@dataclass(frozen=True)
class Check:
    """One test's two e-values: evidence against the canary, and evidence for it."""

    harm: float
    proof: float
    summary: str
    slo: bool = False


def check_shares(metric: Metric) -> tuple[float, float]:
    """(SLO guard, comparison) shares of the metric's budget; 0 for a check the metric lacks."""
    has_slo = metric.slo is not None
    has_margin = metric.margin is not None
    if has_slo and has_margin:
        return SLO_SHARE, 1.0 - SLO_SHARE
    return (1.0, 0.0) if has_slo else (0.0, 1.0)


def analyse(rollout: ModelRollout, observation: Observation, *, step_started_at: float) -> Evidence:
    """Every metric's verdict, plus the sample-ratio guard, for one look at the data."""
    metrics = rollout.spec.analysis.metrics
    total_weight = sum(m.weight for m in metrics)
    out: list[MetricEvidence] = []
    for metric in metrics:
        budget = rollout.spec.analysis.alpha * metric.weight / total_weight
        data = observation.metric(metric.name)
        out.append(evaluate(metric, data, budget))
    guard = sample_ratio_guard(rollout, observation)
    if guard is not None:
        out.append(guard)
    in_step = [
        c for w, c in zip(observation.windows, observation.canary_requests, strict=True) if w.end > step_started_at
    ]
    return Evidence(metrics=tuple(out), canary_requests_in_step=sum(c for c in in_step if c is not None))


def evaluate(metric: Metric, data: MetricData | None, budget: float) -> MetricEvidence:
    """One metric's verdict with the numbers behind it."""
    if data is None or data.series is None:
        reason = data.reason if data is not None and data.reason else "no series returned"
        return MetricEvidence(name=metric.name, verdict=Verdict.NODATA, reason=reason)
    slo_share, comparison_share = check_shares(metric)
    threshold = 1.0 / budget
    try:
        result = _run(metric, data, budget * (comparison_share or slo_share))
    except stats.StatsInputError as exc:
        return MetricEvidence(name=metric.name, verdict=Verdict.NODATA, reason=f"unusable data: {exc}")
    if result is None:
        return MetricEvidence(name=metric.name, verdict=Verdict.NODATA, reason=data.reason or "no canary traffic")
    found, numbers = result
    shares = [slo_share if c.slo else comparison_share for c in found]
    both = sum(share * c.harm for share, c in zip(shares, found, strict=True))
    rejected = [min(c.harm, both) for c in found]  # closed testing: the check and the intersection
    harm = max(rejected)
    proof = min(c.proof for c in found)
    breached = any(c.slo and e >= threshold for c, e in zip(found, rejected, strict=True))
    summary = "; ".join(c.summary for c in found)
    if data.reason:
        summary += f" ({data.reason})"
    if harm >= threshold:
        verdict = Verdict.FAIL
    elif proof >= threshold:
        verdict = Verdict.PASS
    else:
        verdict = Verdict.INCONCLUSIVE
    return MetricEvidence(
        name=metric.name,
        verdict=verdict,
        reason=summary,
        slo_breached=breached,
        e_regression=harm,
        e_noninferiority=proof,
        threshold=threshold,
        estimate=numbers.estimate,
        interval=numbers.interval,
        n_stable=numbers.n_stable,
        n_canary=numbers.n_canary,
        distribution=numbers.distribution,
    )


@dataclass(frozen=True)
class Numbers:
    estimate: float | None
    interval: tuple[float, float] | None
    n_stable: int
    n_canary: int
    distribution: Distribution | None = None


def _run(metric: Metric, data: MetricData, alpha: float) -> tuple[list[Check], Numbers] | None:
    series = data.series
    if isinstance(series, HistogramSeries):
        return _latency(metric, series, alpha)
    if isinstance(series, CountSeries):
        return _rate(metric, series, alpha)
    if isinstance(series, GaugeSeries):
        return _gauge(metric, series, alpha)
    if isinstance(series, DistributionSeries):
        return _outputs(metric, series, alpha)
    return None


def _paired(*columns: Sequence[object | None]) -> list[int]:
    """Indices of the windows where every column has data."""
    return [i for i in range(len(columns[0])) if all(c[i] is not None for c in columns)]


def _latency(metric: Metric, series: HistogramSeries, alpha: float) -> tuple[list[Check], Numbers] | None:
    q = quantile(metric)
    assert q is not None
    edges = np.asarray(series.edges)
    guarded = series.canary_all if series.canary_all is not None else series.canary  # cohorts too
    canary_only = [series.canary[i] for i in _paired(series.canary)]
    every_request = [guarded[i] for i in _paired(guarded)]
    both = _paired(series.canary, series.stable)
    canary = np.asarray([series.canary[i] for i in both], dtype=np.float64)
    stable = np.asarray([series.stable[i] for i in both], dtype=np.float64)
    n_canary = int(sum(c[-1] for c in canary_only if c is not None))
    if n_canary == 0:
        return None
    checks: list[Check] = []
    label = f"p{q * 100:g}"
    if (bound := slo_max(metric)) is not None:
        slo = stats.latency_slo_test(edges, np.asarray(every_request, dtype=np.float64), quantile=q, bound=bound)
        checks.append(
            Check(
                slo.e_value,
                slo.e_value_compliant,
                f"SLO {label} <= {_seconds(bound)}: {slo.exceedance:.2%} of canary requests above "
                f"{_seconds(slo.exceedance_edge)} (allowed {slo.target:.2%})",
                slo=True,
            )
        )
    estimate: float | None = None
    n_stable = int(stable[:, -1].sum()) if stable.size else 0
    if metric.margin is not None and both:
        stable_q = stats.histogram_quantile(q, edges, stable.sum(axis=0))
        canary_q = stats.histogram_quantile(q, edges, canary.sum(axis=0))
        relative = _relative_margin(metric, stable_q.value)
        test = stats.latency_shift_test(edges, canary, stable, quantile=q, relative_margin=relative, alpha=alpha)
        if stable_q.value > 0 and math.isfinite(canary_q.value):
            estimate = canary_q.value / stable_q.value - 1.0
        checks.append(
            Check(
                test.e_value,
                test.e_value_noninferior,
                f"{label} {_seconds(canary_q.value)} vs stable {_seconds(stable_q.value)} (margin +{relative:.0%}; "
                f"worst exceedance ratio {test.worst_ratio:.2f} at {', '.join(_seconds(b) for b in test.bounds)})",
            )
        )
    elif metric.margin is not None:
        checks.append(Check(1.0, 1.0, "no window with both versions"))
    distribution = Distribution(
        tuple(float(e) for e in edges),
        tuple(float(v) for v in stable.sum(axis=0)) if stable.size else (0.0,) * len(edges),
        tuple(float(v) for v in np.asarray(canary_only, dtype=np.float64).sum(axis=0)),
    )
    return checks, Numbers(estimate, None, n_stable, n_canary, distribution)


def _relative_margin(metric: Metric, stable_level: float) -> float:
    """A relative margin as given, or an absolute one divided by the stable's level (a plug-in)."""
    assert metric.margin is not None
    relative = relative_margin(metric)
    if relative is not None:
        return relative
    absolute = absolute_margin(metric)
    assert absolute is not None
    return absolute / stable_level if stable_level > 0 else math.inf


def _rate(metric: Metric, series: CountSeries, alpha: float) -> tuple[list[Check], Numbers] | None:
    lower = lower_is_better(metric)
    canary_idx = _paired(series.canary_events, series.canary_trials)
    ce = np.asarray([series.canary_events[i] for i in canary_idx], dtype=np.int64)
    ct = np.asarray([series.canary_trials[i] for i in canary_idx], dtype=np.int64)
    if int(ct.sum()) == 0:
        return None
    bad_canary = ce if lower else ct - ce  # the harmful event: an error, or a wrong answer
    checks: list[Check] = []
    if metric.slo is not None:
        bound = slo_max(metric) if lower else slo_min(metric)
        assert bound is not None
        harmful_bound = bound if lower else 1.0 - bound
        guard_bad, guard_trials = bad_canary, ct
        if series.canary_all_events is not None and series.canary_all_trials is not None:  # cohorts too
            every = _paired(series.canary_all_events, series.canary_all_trials)
            all_events = np.asarray([series.canary_all_events[i] for i in every], dtype=np.int64)
            guard_trials = np.asarray([series.canary_all_trials[i] for i in every], dtype=np.int64)
            guard_bad = all_events if lower else guard_trials - all_events
        bounded = min(max(harmful_bound, 1e-9), 1 - 1e-9)
        slo = stats.rate_slo_test(guard_bad, guard_trials, bound=bounded, alpha=alpha)
        shown = slo.rate if lower else 1.0 - slo.rate
        sign = "<=" if lower else ">="
        checks.append(
            Check(slo.e_value, slo.e_value_compliant, f"SLO {sign} {bound:.2%}: canary {shown:.3%}", slo=True)
        )
    both = _paired(series.canary_events, series.canary_trials, series.stable_events, series.stable_trials)
    estimate: float | None = None
    interval: tuple[float, float] | None = None
    n_stable = int(sum(series.stable_trials[i] or 0 for i in both))
    if metric.margin is not None and both:
        cols = [np.asarray([col[i] for i in both], dtype=np.int64) for col in (
            series.canary_events, series.canary_trials, series.stable_events, series.stable_trials)]  # fmt: skip
        result = _rate_comparison(metric, cols, alpha, lower)
        checks.append(result[0])
        estimate, interval = result[1], result[2]
    elif metric.margin is not None:
        checks.append(Check(1.0, 1.0, "no window with both versions"))
    return checks, Numbers(estimate, interval, n_stable, int(ct.sum()))


def _rate_comparison(
    metric: Metric, cols: list[np.ndarray], alpha: float, lower: bool
) -> tuple[Check, float | None, tuple[float, float] | None]:
    assert metric.margin is not None
    ce, ct, se, st = cols
    stable_rate = float(se.sum() / st.sum()) if st.sum() else 0.0
    absolute = absolute_margin(metric)
    if absolute is not None:
        margin = absolute
    elif lower:  # relative margin on an error rate: the count test compares rates directly
        relative = relative_margin(metric) or 0.0
        counts = stats.count_regression_test(ce, ct, se, st, relative_margin=relative)
        summary = f"canary/stable rate ratio {counts.rate_ratio:.2f} (margin x{1 + relative:.2f})"
        return Check(counts.e_value, counts.e_value_noninferior, summary), counts.rate_ratio - 1.0, None
    else:  # relative margin on accuracy: a plug-in of the stable's rate
        margin = (relative_margin(metric) or 0.0) * stable_rate
    result = stats.proportion_test(ce, ct, se, st, margin=margin, higher_is_better=not lower, alpha=alpha)
    summary = (
        f"canary {result.canary_rate:.3%} vs stable {result.stable_rate:.3%} "
        f"(difference {result.estimate:+.3%}, allowed {'+' if lower else '-'}{margin:.3%})"
    )
    return Check(result.e_value, result.e_value_noninferior, summary), result.estimate, (result.ci_low, result.ci_high)


def _gauge(metric: Metric, series: GaugeSeries, alpha: float) -> tuple[list[Check], Numbers] | None:
    canary_only = [list(series.canary[i] or ()) for i in _paired(series.canary)]
    canary_only = [g for g in canary_only if g]
    if not canary_only:
        return None
    seconds = TRAITS[metric.kind].unit is Unit.SECONDS
    checks: list[Check] = []
    if (limit := slo_max(metric)) is not None:
        upper = limit * GAUGE_CEILING_FACTOR if seconds else 1.0
        clipped = [[min(v, upper) for v in g] for g in canary_only]
        guardrail = stats.normal_guardrail if seconds else stats.gauge_guardrail  # shares: exact betting
        guard = guardrail(clipped, limit=limit, lower=0.0, upper=upper, alpha=alpha)
        shown = _seconds(guard.mean) if seconds else f"{guard.mean:.1%}"
        bound = _seconds(limit) if seconds else f"{limit:.0%}"
        checks.append(Check(guard.e_value, guard.e_value_within, f"SLO <= {bound}: canary mean {shown}", slo=True))
    both = _paired(series.canary, series.stable)
    estimate: float | None = None
    interval: tuple[float, float] | None = None
    if metric.margin is not None and both:
        canary = [list(series.canary[i] or ()) for i in both]
        stable = [list(series.stable[i] or ()) for i in both]
        relative = absolute = 0.0
        if metric.margin.relative is not None:
            relative = relative_margin(metric) or 0.0
        else:
            absolute = absolute_margin(metric) or 0.0
        if TRAITS[metric.kind].unit is Unit.FRACTION:  # shares in [0, 1]: the exact betting test
            canary, stable = ([[min(v, 1.0) for v in g] for g in version] for version in (canary, stable))
            test = stats.bounded_comparison_test(
                canary, stable, relative_margin=relative, absolute_margin=absolute, alpha=alpha
            )
        else:  # seconds have no bound to bet against: the approximate normal mixture
            test = stats.gauge_comparison_test(
                canary, stable, relative_margin=relative, absolute_margin=absolute, alpha=alpha
            )
        estimate, interval = test.estimate, (test.ci_low, test.ci_high)
        margin = f"+{relative:.0%}" if relative else f"+{_seconds(absolute) if seconds else f'{absolute:.2%}'}"
        checks.append(
            Check(test.e_value, test.e_value_noninferior, f"canary - stable {test.estimate:+.4g} (margin {margin})")
        )
    elif metric.margin is not None:
        checks.append(Check(1.0, 1.0, "no window with both versions"))
    n_canary = sum(len(g) for g in canary_only)
    n_stable = sum(len(series.stable[i] or ()) for i in both)
    return checks, Numbers(estimate, interval, n_stable, n_canary)


def _outputs(metric: Metric, series: DistributionSeries, alpha: float) -> tuple[list[Check], Numbers] | None:
    """How differently the versions predict: the total variation distance of their outputs against the margin."""
    both = _paired(series.canary, series.stable)
    canary = np.array([series.canary[i] for i in both], dtype=np.int64).reshape(len(both), len(series.buckets))
    stable = np.array([series.stable[i] for i in both], dtype=np.int64).reshape(len(both), len(series.buckets))
    if not canary.sum() or not stable.sum():
        return None
    margin = absolute_margin(metric) or 0.0
    test = stats.distribution_shift_test(canary, stable, margin=margin, alpha=alpha, positive_from=series.positive_from)
    summary = (
        f"outputs differ by {test.distance:.1%} [{test.ci_low:.1%}, {test.ci_high:.1%}] of requests "
        f"(margin {margin:.0%})"
    )
    if test.positive_shift is not None and test.positive_ci is not None:
        low, high = test.positive_ci
        summary += f"; positive rate {test.positive_shift * 100:+.1f}pp [{low * 100:+.1f}, {high * 100:+.1f}]"
    checks = [Check(test.e_value, test.e_value_within, summary)]
    pooled = Distribution(
        (), tuple(float(x) for x in stable.sum(axis=0)), tuple(float(x) for x in canary.sum(axis=0)), series.buckets
    )
    return checks, Numbers(test.distance, (test.ci_low, test.ci_high), test.n_stable, test.n_canary, pooled)


def sample_ratio_guard(rollout: ModelRollout, observation: Observation) -> MetricEvidence | None:
    """Hold the rollout when the versions do not get their configured shares: the data is suspect.

    Skipped when A/B cohorts or sticky cookies send extra users to the canary on purpose, for
    shadow windows (no live split to check), and for windows around a step change (not steady:
    scrape lag blurs which split their requests saw).
    """
    routing = rollout.spec.routing
    if routing.match or routing.sticky is not None:
        return None
    rows, splits = [], []
    for window, s, c in zip(observation.windows, observation.stable_requests, observation.canary_requests, strict=True):
        if s is not None and c is not None and window.steady and 0.0 < window.canary_share < 1.0 and s + c > 0:
            rows.append([s, c])
            splits.append([1.0 - window.canary_share, window.canary_share])
    if not rows:
        return None
    result = stats.sample_ratio_test(rows, splits)
    threshold = 1.0 / SAMPLE_RATIO_ALPHA
    if result.e_value < threshold:
        return None
    reason = (
        f"sample ratio mismatch: canary got {result.observed_shares[1]:.2%} of requests, "
        f"expected {result.expected_shares[1]:.2%}: routing or metrics are broken"
    )
    return MetricEvidence(
        name=SAMPLE_RATIO_NAME,
        verdict=Verdict.NODATA,
        reason=reason,
        e_regression=result.e_value,
        threshold=threshold,
        n_stable=result.counts[0],
        n_canary=result.counts[1],
    )


def _seconds(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "n/a" if value is None or math.isnan(value) else "+Inf"
    return f"{value * 1000:.0f}ms" if value < 10 else f"{value:.1f}s"
