"""The analysis a rollout asks for: which metrics are compared, their SLOs, margins and error budget.

The ``spec.analysis`` part of the ModelRollout model. What each :class:`MetricKind` means (unit,
direction, shape) lives in :mod:`controller.api.kinds`, how it is read in :mod:`controller.metrics.kinds`;
rules across fields in :mod:`controller.api.rules`.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field, model_validator

from controller.api.fields import (
    DnsLabel,
    Fraction,
    LabelValue,
    Model,
    PromLabelName,
    PromMetricName,
    Quantity,
)

# --- analysis ---------------------------------------------------------------------------------


class MetricKind(StrEnum):
    ISTIO_LATENCY = "IstioLatency"
    ISTIO_ERROR_RATE = "IstioErrorRate"
    TRITON_LATENCY = "TritonLatency"
    TRITON_QUEUE_LATENCY = "TritonQueueLatency"
    TRITON_ERROR_RATE = "TritonErrorRate"
    TRITON_GPU_UTILIZATION = "TritonGpuUtilization"
    TRITON_GPU_MEMORY = "TritonGpuMemory"
    DCGM_GPU_UTILIZATION = "DcgmGpuUtilization"
    DCGM_GPU_MEMORY = "DcgmGpuMemory"
    GPU_SECONDS_PER_INFERENCE = "GpuSecondsPerInference"
    AGENT_GPU_MEMORY = "AgentGpuMemory"
    AGENT_GPU_UTILIZATION = "AgentGpuUtilization"
    AGENT_GPU_SECONDS_PER_INFERENCE = "AgentGpuSecondsPerInference"
    HAMI_GPU_MEMORY = "HamiGpuMemory"
    HAMI_GPU_UTILIZATION = "HamiGpuUtilization"
    CUSTOM_RATIO = "CustomRatio"
    PREDICTION_DISTRIBUTION = "PredictionDistribution"


class Slo(Model):
    """An absolute bound, checked on the canary alone: a breach rolls back at once."""

    max: Quantity | None = None
    min: Quantity | None = None


class Margin(Model):
    """How much worse than stable the canary may be (non-inferiority margin): one of the two."""

    relative: Fraction | None = None
    absolute: Quantity | None = None


# A CustomRatio is scoped to the rollout's own series, so no other tenant's counters count: every
# query selects ``namespaceLabel`` (default ``namespace``, the label Prometheus' Kubernetes service
# discovery conventionally gives pod-scraped series) equal to the rollout's namespace, and
# ``matchLabels`` (required, at least one) pick this rollout's series within its namespace (e.g.
# ``model: ranker``). Neither the namespace nor the version label may be set through ``matchLabels``.
class RatioQuery(Model):
    """Two counters whose increments form a proportion per version (e.g. correct / labelled), in one namespace."""

    success: PromMetricName
    total: PromMetricName
    version_label: PromLabelName = "version"
    namespace_label: PromLabelName = Field(
        default="namespace",
        description="The Prometheus label holding the Kubernetes namespace; it must equal the rollout's.",
    )
    match_labels: dict[PromLabelName, LabelValue] = Field(
        min_length=1,
        max_length=20,
        description="Labels (at least one) that pick this rollout's series within its namespace, e.g. model: ranker.",
    )
    split_label: PromLabelName | None = Field(
        default=None,
        description=(
            "With A/B cohorts or sticky users: the label your application sets from the x-canarist-split request "
            "header, so only the randomised split's outcomes are compared."
        ),
    )

    @model_validator(mode="after")
    def _scoped(self) -> RatioQuery:
        if self.namespace_label == self.version_label:
            raise ValueError("namespaceLabel and versionLabel must be different labels")
        if self.split_label is not None and self.split_label in (
            self.namespace_label,
            self.version_label,
            *self.match_labels,
        ):
            raise ValueError(f"splitLabel {self.split_label!r} must be a label of its own")
        if self.namespace_label in self.match_labels:
            raise ValueError(
                f"matchLabels must not name {self.namespace_label!r}: the namespace label is set from the "
                "rollout's own namespace"
            )
        if self.version_label in self.match_labels:
            raise ValueError(f"matchLabels must not name {self.version_label!r}: it is the versionLabel")
        return self


# A PredictionDistribution reads the model's outputs as the application exports them: a histogram
# of scores (``histogram``: its ``<name>_bucket`` series, one bucket per ``le``) or a counter of
# predicted classes (``counter``, the class in ``classLabel``). Like a CustomRatio it is scoped to
# the rollout's namespace and picked by ``matchLabels``.
class OutputsQuery(Model):
    """The model's outputs per version: a score histogram or a class counter, in the rollout's namespace."""

    histogram: PromMetricName | None = Field(
        default=None, description="A Prometheus histogram of the model's scores (its _bucket series are read)."
    )
    counter: PromMetricName | None = Field(
        default=None, description="A counter of the model's predicted classes, the class in classLabel."
    )
    class_label: PromLabelName = "class"
    version_label: PromLabelName = "version"
    namespace_label: PromLabelName = Field(
        default="namespace",
        description="The Prometheus label holding the Kubernetes namespace; it must equal the rollout's.",
    )
    match_labels: dict[PromLabelName, LabelValue] = Field(
        min_length=1,
        max_length=20,
        description="Labels (at least one) that pick this rollout's series within its namespace, e.g. model: fraud.",
    )
    positive_above: float | None = Field(
        default=None,
        description="Histogram only: scores above this bucket bound are positive predictions (the positive rate).",
    )
    positive_classes: list[LabelValue] | None = Field(
        default=None, max_length=50, description="Counter only: the classes that are positive predictions."
    )
    split_label: PromLabelName | None = Field(
        default=None,
        description=(
            "With A/B cohorts or sticky users: the label your application sets from the x-canarist-split request "
            "header, so only the randomised split's outputs are compared."
        ),
    )

    @model_validator(mode="after")
    def _one_source(self) -> OutputsQuery:
        if (self.histogram is None) == (self.counter is None):
            raise ValueError("needs exactly one of histogram (scores) or counter (classes)")
        if self.positive_above is not None and self.histogram is None:
            raise ValueError("positiveAbove is for a histogram of scores; a counter names positiveClasses")
        if self.positive_classes is not None and self.counter is None:
            raise ValueError("positiveClasses is for a counter of classes; a histogram names positiveAbove")
        labels = [
            self.namespace_label,
            self.version_label,
            *([self.class_label] if self.counter else []),
            *([self.split_label] if self.split_label else []),
        ]
        if len(set(labels)) != len(labels):
            raise ValueError("namespaceLabel, versionLabel, classLabel and splitLabel must be different labels")
        if set(labels) & set(self.match_labels):
            raise ValueError("matchLabels must not name the namespace, version, class or split label")
        return self


class OnDrift(StrEnum):
    """What a proven prediction drift does."""

    ROLLBACK = "Rollback"  # stable serves everyone until a human looks
    PAUSE = "Pause"  # keep the canary's weight and wait for a human


class Metric(Model):
    name: DnsLabel
    kind: MetricKind = Field(strict=False)
    weight: float = Field(default=1.0, gt=0, le=1000, description="Share of the error budget alpha.")
    quantile: float | None = Field(default=None, gt=0, lt=1, description="Latency quantile (IstioLatency).")
    slo: Slo | None = None
    margin: Margin | None = None
    higher_is_better: bool | None = Field(default=None, description="CustomRatio only (default true).")
    ratio: RatioQuery | None = None
    outputs: OutputsQuery | None = None
    on_drift: OnDrift | None = Field(
        default=None, strict=False, description="PredictionDistribution only: Rollback (default) or Pause."
    )


def split_label(metric: Metric) -> str | None:
    """The label a CustomRatio's or PredictionDistribution's series carry the randomised split in, if set."""
    if metric.ratio is not None:
        return metric.ratio.split_label
    return metric.outputs.split_label if metric.outputs is not None else None


class Analysis(Model):
    alpha: float = Field(default=0.05, gt=0, le=0.5, description="False-rollback budget for the whole rollout.")
    metrics: list[Metric] = Field(min_length=1, max_length=50)
