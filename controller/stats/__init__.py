"""canarist's statistics: pure, anytime-valid tests of a canary against its stable version.

No I/O and no clock: every function takes the per-interval increments Prometheus returned (counts,
cumulative buckets, per-pod gauge means) and returns a frozen result. Sequential tests return
e-values: the evidence is a nonnegative (super)martingale under the null, so by Ville's inequality
rejecting when ``e_value >= 1 / alpha_j`` keeps the false-rollback rate below alpha_j however often
the controller looks and however the traffic split moves. Bad input raises
:class:`StatsInputError`, which callers treat as *no data*.

Which test for which policy margin:

- error rate / accuracy with an absolute margin: :func:`proportion_test`;
- error counts with a relative margin (or none): :func:`count_regression_test`;
- routing sanity (does each version get its configured share?): :func:`sample_ratio_test`;
- error-rate / accuracy SLO on the canary: :func:`rate_slo_test`;
- latency SLO on the canary: :func:`latency_slo_test`; relative margin on the latency distribution
  (powerful on coarse buckets): :func:`latency_shift_test`; quantile-only comparison at bucket
  resolution: :func:`latency_regression_test`;
- GPU utilisation / memory guardrails: :func:`gauge_guardrail`; canary vs stable on GPU
  utilisation / memory share (exact, bounded): :func:`bounded_comparison_test`; GPU-seconds per
  inference (approximate, unbounded): :func:`gauge_comparison_test`; a seconds mean against its
  SLO (approximate): :func:`normal_guardrail`;
- how differently the versions predict (total variation distance of their outputs, and the
  positive rate's shift): :func:`distribution_shift_test`;
- fixed-horizon references for reports and benchmarks: :mod:`controller.stats.fixed`.
"""

from controller.stats.drift import DistributionShiftResult, distribution_shift_test
from controller.stats.fixed import (
    FisherResult,
    MannWhitneyResult,
    TwoProportionResult,
    binned_mannwhitneyu,
    fisher_exact_test,
    two_proportion_ztest,
)
from controller.stats.gauges import (
    GaugeComparisonResult,
    GuardrailResult,
    bounded_comparison_test,
    gauge_comparison_test,
    gauge_guardrail,
    normal_guardrail,
)
from controller.stats.histograms import QuantileEstimate, histogram_quantile
from controller.stats.latency import (
    LatencyComparisonResult,
    SloResult,
    latency_regression_test,
    latency_slo_test,
)
from controller.stats.multinomial import (
    CountRegressionResult,
    SampleRatioResult,
    count_regression_test,
    sample_ratio_test,
)
from controller.stats.proportions import ProportionResult, proportion_test
from controller.stats.rates import RateSloResult, rate_slo_test
from controller.stats.shift import LatencyShiftResult, latency_shift_test
from controller.stats.validation import StatsInputError

__all__ = [
    "CountRegressionResult",
    "DistributionShiftResult",
    "FisherResult",
    "GaugeComparisonResult",
    "GuardrailResult",
    "LatencyComparisonResult",
    "LatencyShiftResult",
    "MannWhitneyResult",
    "ProportionResult",
    "QuantileEstimate",
    "RateSloResult",
    "SampleRatioResult",
    "SloResult",
    "StatsInputError",
    "TwoProportionResult",
    "binned_mannwhitneyu",
    "bounded_comparison_test",
    "count_regression_test",
    "distribution_shift_test",
    "fisher_exact_test",
    "gauge_comparison_test",
    "gauge_guardrail",
    "histogram_quantile",
    "latency_regression_test",
    "latency_shift_test",
    "latency_slo_test",
    "normal_guardrail",
    "proportion_test",
    "rate_slo_test",
    "sample_ratio_test",
    "two_proportion_ztest",
]
