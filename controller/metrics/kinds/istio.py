"""Istio's kinds, read from the sidecars' ``istio_*`` series (``reporter="destination"``). Pure.

IstioLatency compares a latency quantile from the request duration histogram, IstioErrorRate the
share of 5xx responses among the requests. Istio names a version by the service's namespace and
name and ``destination_version`` (:meth:`~controller.metrics.catalog.RolloutAsks.istio`); with A/B
cohorts or sticky users its series are tagged with the split, so a comparison keeps to the
randomised requests while the SLO guard also reads every request. Istio's request counts are also
every rollout's traffic counts outside routing mode TritonVersion.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from controller.api.kinds import slo_max
from controller.api.metrics_spec import Metric, MetricKind
from controller.api.schedule import split_tagged
from controller.metrics.catalog import Ask, Family, MetricPlan, Reduce, Role, RolloutAsks
from controller.metrics.read import Builder, Cell, Counts, Histogram, KindReading, total
from controller.metrics.samples import Window

IDENTITY = ("destination_service_namespace", "destination_service_name", "destination_version")
_FIXED = (("reporter", "destination"),)
REQUESTS = Family("istio_requests_total", Reduce.INCREASE, IDENTITY, split="response_code", fixed=_FIXED)
BUCKETS = Family("istio_request_duration_milliseconds_bucket", Reduce.INCREASE, IDENTITY, split="le", fixed=_FIXED)
_SERVER_ERROR = re.compile(r"^5[0-9][0-9]$")


def request_asks(asks: RolloutAsks) -> tuple[dict[Role, Ask], str]:
    """The ask of a rollout's request counts, or why there is none."""
    ask = asks.istio(REQUESTS)
    return ({Role.REQUESTS: ask}, "") if isinstance(ask, Ask) else ({}, ask)


def count_requests(builder: Builder, asks: Mapping[Role, Ask], window: Window, side: str) -> int | str:
    """One version's requests in one window, or why there is no count."""
    return total(builder.cell(asks, Role.REQUESTS, window, side), asks[Role.REQUESTS].family.metric)


def _asks(asks: RolloutAsks, metric: Metric, role: Role, every: Role, family: Family) -> tuple[dict[Role, Ask], str]:
    """The split's series under ``role``; with an SLO on a tagged split, every request's under ``every``."""
    ask = asks.istio(family)
    found, why = ({role: ask}, "") if isinstance(ask, Ask) else ({}, ask)
    if found and metric.slo is not None and split_tagged(asks.rollout):  # the guard sees every request
        everything = asks.istio(family, randomised=False)
        if isinstance(everything, Ask):
            found[every] = everything
    return found, why


def _plan_latency(asks: RolloutAsks, metric: Metric) -> MetricPlan:
    found, why = _asks(asks, metric, Role.BUCKETS, Role.BUCKETS_ALL, BUCKETS)
    bound = slo_max(metric)
    return MetricPlan(metric.name, metric.kind, found, why, keep=(bound,) if bound is not None else ())


def _plan_error_rate(asks: RolloutAsks, metric: Metric) -> MetricPlan:
    found, why = _asks(asks, metric, Role.REQUESTS, Role.REQUESTS_ALL, REQUESTS)
    return MetricPlan(metric.name, metric.kind, found, why)


def _server_errors(builder: Builder, plan: MetricPlan, window: Window, side: str, role: Role) -> tuple[int, int] | str:
    """(5xx responses, requests): the requests' rows whose ``response_code`` is a server error."""
    cell = builder.cell(plan, role, window, side)
    metric = plan.asks[role].family.metric
    trials = total(cell, metric)
    if isinstance(trials, str) or isinstance(cell, str):
        return str(trials)
    code = plan.asks[role].family.split or ""
    errors = Cell(tuple(r for r in cell.rows if _SERVER_ERROR.match(r[0].get(code, ""))), cell.resets)
    events = total(errors, metric, absent_is_zero=True)
    return events if isinstance(events, str) else (min(events, trials), trials)


READINGS: dict[MetricKind, KindReading] = {
    MetricKind.ISTIO_LATENCY: Histogram(_plan_latency),
    MetricKind.ISTIO_ERROR_RATE: Counts(_plan_error_rate, _server_errors),
}
