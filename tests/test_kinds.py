"""A metric kind is one traits row (controller.api.kinds) and one reading in its source's module (metrics/kinds)."""

from __future__ import annotations

import ast
from pathlib import Path
from types import ModuleType

import pytest

from controller.api.kinds import TRAITS, Shape
from controller.api.metrics_spec import MetricKind
from controller.metrics.kinds import READINGS, agent, custom, dcgm, hami, istio, outputs, triton

SOURCES: dict[str, ModuleType] = {
    "istio": istio,
    "triton": triton,
    "dcgm": dcgm,
    "agent": agent,
    "hami": hami,
    "custom": custom,
    "outputs": outputs,
}
#: Where each kind lives: kinds/<source>.py.
HOME = {
    MetricKind.ISTIO_LATENCY: "istio",
    MetricKind.ISTIO_ERROR_RATE: "istio",
    MetricKind.TRITON_LATENCY: "triton",
    MetricKind.TRITON_QUEUE_LATENCY: "triton",
    MetricKind.TRITON_ERROR_RATE: "triton",
    MetricKind.TRITON_GPU_UTILIZATION: "triton",
    MetricKind.TRITON_GPU_MEMORY: "triton",
    MetricKind.DCGM_GPU_UTILIZATION: "dcgm",
    MetricKind.DCGM_GPU_MEMORY: "dcgm",
    MetricKind.GPU_SECONDS_PER_INFERENCE: "dcgm",
    MetricKind.AGENT_GPU_MEMORY: "agent",
    MetricKind.AGENT_GPU_UTILIZATION: "agent",
    MetricKind.AGENT_GPU_SECONDS_PER_INFERENCE: "agent",
    MetricKind.HAMI_GPU_MEMORY: "hami",
    MetricKind.HAMI_GPU_UTILIZATION: "hami",
    MetricKind.CUSTOM_RATIO: "custom",
    MetricKind.PREDICTION_DISTRIBUTION: "outputs",
}
#: The series each kind is read into: the report shows a counts kind's relative margin as a rate's.
SHAPES = {
    MetricKind.ISTIO_LATENCY: Shape.HISTOGRAM,
    MetricKind.ISTIO_ERROR_RATE: Shape.COUNTS,
    MetricKind.TRITON_ERROR_RATE: Shape.COUNTS,
    MetricKind.CUSTOM_RATIO: Shape.COUNTS,
    MetricKind.PREDICTION_DISTRIBUTION: Shape.DISTRIBUTION,
    **{
        k: Shape.GAUGES
        for k in (
            MetricKind.TRITON_LATENCY,
            MetricKind.TRITON_QUEUE_LATENCY,
            MetricKind.TRITON_GPU_UTILIZATION,
            MetricKind.TRITON_GPU_MEMORY,
            MetricKind.DCGM_GPU_UTILIZATION,
            MetricKind.DCGM_GPU_MEMORY,
            MetricKind.GPU_SECONDS_PER_INFERENCE,
            MetricKind.AGENT_GPU_MEMORY,
            MetricKind.AGENT_GPU_UTILIZATION,
            MetricKind.AGENT_GPU_SECONDS_PER_INFERENCE,
            MetricKind.HAMI_GPU_MEMORY,
            MetricKind.HAMI_GPU_UTILIZATION,
        )
    },
}
METRICS = Path(__file__).resolve().parent.parent / "controller" / "metrics"


def test_every_kind_has_one_traits_row_and_one_reading() -> None:
    kinds = set(MetricKind)
    assert set(TRAITS) == kinds
    assert set(READINGS) == kinds
    per_source = [k for module in SOURCES.values() for k in module.READINGS]
    assert sorted(per_source) == sorted(kinds), "a kind read in two modules, or in none"


def test_every_source_module_is_in_the_registry() -> None:
    modules = {p.stem for p in (METRICS / "kinds").glob("*.py")} - {"__init__"}
    assert modules == set(SOURCES)


@pytest.mark.parametrize("kind", list(MetricKind))
def test_each_kind_lives_in_the_module_of_its_source(kind: MetricKind) -> None:
    module = SOURCES[HOME[kind]]
    assert module.__name__ == f"controller.metrics.kinds.{HOME[kind]}"
    assert READINGS[kind] is module.READINGS[kind]


@pytest.mark.parametrize("kind", list(MetricKind))
def test_a_kinds_reading_builds_the_shape_its_traits_row_names(kind: MetricKind) -> None:
    assert TRAITS[kind].shape is SHAPES[kind]
    assert READINGS[kind].shape is TRAITS[kind].shape
    assert TRAITS[kind].has_quantile is (kind is MetricKind.ISTIO_LATENCY)


def test_only_istio_kinds_tell_the_randomised_split_apart() -> None:
    assert {k for k, t in TRAITS.items() if t.istio_split} == {MetricKind.ISTIO_LATENCY, MetricKind.ISTIO_ERROR_RATE}


def test_the_generic_metrics_machinery_names_no_kind() -> None:
    """Only metrics/kinds/ knows a kind by name: catalog, plan, read and measure dispatch through READINGS."""
    named = {
        f"{p.name}:{node.lineno}"
        for p in sorted(METRICS.glob("*.py"))
        for node in ast.walk(ast.parse(p.read_text()))
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "MetricKind"
    }
    assert not named, f"move kind knowledge into controller/metrics/kinds: {named}"
