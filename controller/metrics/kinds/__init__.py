"""The metric kinds, one module per source: the package's public face is :data:`READINGS`. Pure.

Each kind's knowledge lives in the module of the exporter it is read from (:mod:`.istio`,
:mod:`.triton`, :mod:`.dcgm`, :mod:`.agent`, :mod:`.hami`,
:mod:`.custom`, :mod:`.outputs`): its families, how it plans its asks for one
rollout, the shape of its series (counts, histogram or gauges, built by
:mod:`controller.metrics.read`) and its own part of reading them (events and trials, or one pod's
value). :data:`READINGS` gathers them, and :func:`request_asks` / :func:`count_requests` read a
rollout's request counts (Istio's, or Triton's in routing mode TritonVersion);
:mod:`controller.metrics.measure` uses nothing else of this package. What a kind *means* (unit,
direction, shape) is its row in :data:`controller.api.kinds.TRAITS`.

A new kind is its ``MetricKind`` value and its traits row in ``controller.api``, and its reading in
the module of its source here (a new source: one new module, and one line below).
"""

from __future__ import annotations

from collections.abc import Mapping

from controller.api.metrics_spec import MetricKind
from controller.metrics.catalog import Ask, Role, RolloutAsks
from controller.metrics.kinds import agent, custom, dcgm, hami, istio, outputs, triton
from controller.metrics.read import Builder, KindReading
from controller.metrics.samples import Window

__all__ = ["READINGS", "KindReading", "count_requests", "request_asks"]


#: Every kind's reading (:class:`~controller.metrics.read.KindReading`: plan, build, shape).
READINGS: Mapping[MetricKind, KindReading] = {
    **istio.READINGS,
    **triton.READINGS,
    **dcgm.READINGS,
    **agent.READINGS,
    **hami.READINGS,
    **custom.READINGS,
    **outputs.READINGS,
}


def request_asks(asks: RolloutAsks) -> tuple[dict[Role, Ask], str]:
    """The asks of a rollout's request counts, or why there are none."""
    return triton.request_asks(asks) if asks.triton is not None else istio.request_asks(asks)


def count_requests(builder: Builder, asks: Mapping[Role, Ask], window: Window, side: str) -> int | str:
    """One version's requests in one window, as asked: Istio's count, or Triton's successes and failures."""
    if Role.REQUESTS in asks:
        return istio.count_requests(builder, asks, window, side)
    counts = triton.counts(builder, asks, window, side)
    return counts if isinstance(counts, str) else counts[1]
