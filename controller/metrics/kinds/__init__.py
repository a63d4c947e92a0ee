"""The metric kinds, one module per source: the package's public face is :data:`READINGS`. Pure.

Each kind's knowledge lives in the module of the exporter it is read from (:mod:`.istio`,
:mod:`.triton`, :mod:`.dcgm`, :mod:`.custom`): its families, how it plans its asks for one
rollout, the shape of its series (counts, histogram or gauges, built by
:mod:`controller.metrics.read`) and its own part of reading them (events and trials, or one pod's
value). :data:`READINGS` gathers them; :mod:`controller.metrics.measure` looks each policy metric's
kind up here. What a kind *means* (unit, direction, shape) is its row in
:data:`controller.api.kinds.TRAITS`.

A new kind is its ``MetricKind`` value and its traits row in ``controller.api``, and its reading in
the module of its source here (a new source: one new module, and one line below).
"""

from __future__ import annotations

from collections.abc import Mapping

from controller.api.metrics_spec import MetricKind
from controller.metrics.kinds import custom, dcgm, istio, triton
from controller.metrics.read import KindReading

__all__ = ["READINGS", "KindReading"]


#: Every kind's reading (:class:`~controller.metrics.read.KindReading`: plan, build, shape).
READINGS: Mapping[MetricKind, KindReading] = {
    **istio.READINGS,
    **triton.READINGS,
    **dcgm.READINGS,
    **custom.READINGS,
}
