"""What each built-in metric kind measures: its unit, which direction is worse, where it comes from.

The validation, the analysis and the report read these traits from one table. A new kind is its
:class:`~controller.api.metrics_spec.MetricKind` value and one row here, plus its reading (families,
asks, series) in one module of :mod:`controller.metrics.kinds`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from controller.api.fields import parse_fraction
from controller.api.metrics_spec import Metric, MetricKind
from controller.api.units import parse_duration


class Unit(StrEnum):
    SECONDS = "seconds"  # written as durations: '250ms', '2s'
    FRACTION = "fraction"  # written as 0.02 or '2%'


class Shape(StrEnum):
    """The series a kind is read into, and so how its versions are compared."""

    COUNTS = "counts"  # events out of trials per window: a rate (error rates, ratios)
    HISTOGRAM = "histogram"  # bucket counts per window: a latency quantile
    GAUGES = "gauges"  # one value per pod per window: a mean
    DISTRIBUTION = "distribution"  # counts per output bucket per window: a distribution of predictions


@dataclass(frozen=True)
class KindTraits:
    unit: Unit
    lower_is_better: bool
    shape: Shape
    source: str  # which exporter provides it, for docs and messages
    statistic: str  # what is compared between versions
    istio_split: bool = False  # Istio tags its series with the randomised split, so a comparison can keep to it

    @property
    def has_quantile(self) -> bool:
        """Whether the kind tracks a quantile: a histogram's."""
        return self.shape is Shape.HISTOGRAM


TRAITS: dict[MetricKind, KindTraits] = {
    MetricKind.ISTIO_LATENCY: KindTraits(
        Unit.SECONDS, True, Shape.HISTOGRAM, "Istio", "latency quantile from histogram buckets", istio_split=True
    ),
    MetricKind.ISTIO_ERROR_RATE: KindTraits(
        Unit.FRACTION, True, Shape.COUNTS, "Istio", "share of 5xx responses", istio_split=True
    ),
    MetricKind.TRITON_LATENCY: KindTraits(Unit.SECONDS, True, Shape.GAUGES, "Triton", "mean request latency"),
    MetricKind.TRITON_QUEUE_LATENCY: KindTraits(Unit.SECONDS, True, Shape.GAUGES, "Triton", "mean queueing time"),
    MetricKind.TRITON_ERROR_RATE: KindTraits(Unit.FRACTION, True, Shape.COUNTS, "Triton", "share of failed inferences"),
    MetricKind.TRITON_GPU_UTILIZATION: KindTraits(
        Unit.FRACTION, True, Shape.GAUGES, "Triton", "mean GPU utilisation per pod"
    ),
    MetricKind.TRITON_GPU_MEMORY: KindTraits(
        Unit.FRACTION, True, Shape.GAUGES, "Triton", "GPU memory used / total per pod"
    ),
    MetricKind.DCGM_GPU_UTILIZATION: KindTraits(
        Unit.FRACTION, True, Shape.GAUGES, "DCGM", "mean GPU utilisation per pod"
    ),
    MetricKind.DCGM_GPU_MEMORY: KindTraits(
        Unit.FRACTION, True, Shape.GAUGES, "DCGM", "framebuffer used / total per pod"
    ),
    MetricKind.GPU_SECONDS_PER_INFERENCE: KindTraits(
        Unit.SECONDS, True, Shape.GAUGES, "DCGM + Triton", "GPU-seconds per inference"
    ),
    MetricKind.AGENT_GPU_MEMORY: KindTraits(
        Unit.FRACTION, True, Shape.GAUGES, "canarist gpu-agent", "GPU memory used / total per pod"
    ),
    MetricKind.AGENT_GPU_UTILIZATION: KindTraits(
        Unit.FRACTION, True, Shape.GAUGES, "canarist gpu-agent", "SM share of its GPUs per pod"
    ),
    MetricKind.AGENT_GPU_SECONDS_PER_INFERENCE: KindTraits(
        Unit.SECONDS, True, Shape.GAUGES, "canarist gpu-agent + Istio", "GPU-seconds per request"
    ),
    MetricKind.HAMI_GPU_MEMORY: KindTraits(
        Unit.FRACTION, True, Shape.GAUGES, "HAMi", "vGPU memory used / its limit per pod"
    ),
    MetricKind.HAMI_GPU_UTILIZATION: KindTraits(
        Unit.FRACTION, True, Shape.GAUGES, "HAMi", "SM share of the device per pod"
    ),
    MetricKind.CUSTOM_RATIO: KindTraits(Unit.FRACTION, False, Shape.COUNTS, "custom counters", "success / total"),
    MetricKind.PREDICTION_DISTRIBUTION: KindTraits(
        Unit.FRACTION, True, Shape.DISTRIBUTION, "the model's outputs", "total variation distance of the outputs"
    ),
}

DEFAULT_QUANTILE = 0.99


def lower_is_better(metric: Metric) -> bool:
    """Whether a larger value of this metric is a regression."""
    if metric.kind is MetricKind.CUSTOM_RATIO:
        return metric.higher_is_better is False
    return TRAITS[metric.kind].lower_is_better


def parse_value(kind: MetricKind, value: float | str) -> float:
    """Read an SLO bound or absolute margin in the kind's canonical unit (seconds or fraction)."""
    if TRAITS[kind].unit is Unit.SECONDS:
        if not isinstance(value, str):
            raise ValueError(f"expected a duration such as '250ms' for {kind.value}, got {value!r}")
        return parse_duration(value)
    if isinstance(value, bool):
        raise ValueError(f"expected a number or a percentage, got {value!r}")
    return parse_fraction(value)


def slo_max(metric: Metric) -> float | None:
    """The metric's SLO upper bound in its kind's unit (seconds or fraction); None without one."""
    return parse_value(metric.kind, metric.slo.max) if metric.slo is not None and metric.slo.max is not None else None


def slo_min(metric: Metric) -> float | None:
    """The metric's SLO lower bound in its kind's unit; None without one."""
    return parse_value(metric.kind, metric.slo.min) if metric.slo is not None and metric.slo.min is not None else None


def relative_margin(metric: Metric) -> float | None:
    """The relative non-inferiority margin as a fraction ('5%' is 0.05); None without one."""
    margin = metric.margin
    return parse_fraction(margin.relative) if margin is not None and margin.relative is not None else None


def absolute_margin(metric: Metric) -> float | None:
    """The absolute non-inferiority margin in the kind's unit; None without one."""
    margin = metric.margin
    return parse_value(metric.kind, margin.absolute) if margin is not None and margin.absolute is not None else None


def quantile(metric: Metric) -> float | None:
    """The latency quantile a metric tracks, defaulted for kinds that have one."""
    if not TRAITS[metric.kind].has_quantile:
        return None
    return metric.quantile if metric.quantile is not None else DEFAULT_QUANTILE
