"""One look over every kind: plan its queries, then build observations from the answers. Pure.

The entry points the Prometheus edge calls. :func:`plan` asks each policy metric's kind
(:data:`controller.metrics.kinds.READINGS`) for its asks and unions them into one look
(:mod:`controller.metrics.plan`); :func:`build_observations` has each kind build its series from
the answers (:mod:`controller.metrics.read`), beside each rollout's request counts.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import replace

from controller.api.model import ModelRollout
from controller.metrics.cache import WindowCache
from controller.metrics.catalog import Ask, Labels, MetricPlan, Role, RolloutAsks
from controller.metrics.kinds import READINGS, count_requests, request_asks
from controller.metrics.plan import Plan, Target, look_plan
from controller.metrics.read import Builder, Reader, Results, Valued
from controller.metrics.samples import MetricData, Observation, Window
from controller.metrics.selectors import to_millis

REQUESTS_KEY = "(requests)"


def plan(
    rollouts: Sequence[ModelRollout],
    windows_by_rollout: Mapping[str, Sequence[Window]],
    at: float,
    labels: Labels | None = None,
    *,
    gap_seconds: float | None = None,
    cache: WindowCache | None = None,
    trim: bool = True,
) -> Plan:
    """Every query one look needs for all ``rollouts`` together (:func:`controller.metrics.plan.look_plan`).

    Windows ending after ``at`` are not asked for (their data is incomplete). ``gap_seconds``: check
    that each counter has a sample that close before each window (a store without Prometheus' ranges).
    With a ``cache``, the windows whose every series it keeps are not asked for again; it is trimmed
    to its bound first, unless ``trim`` is False (a later round of the same look: what the earlier
    rounds kept stays until the next look).
    """
    labels = labels or Labels()
    if cache is not None and trim:
        cache.trim()
    targets: list[Target] = []
    at_ms = to_millis(at)
    for rollout in rollouts:
        windows = tuple(windows_by_rollout.get(rollout.key, ()))
        asks = RolloutAsks(rollout, labels)
        requests, requests_why = request_asks(asks)
        metrics = tuple(READINGS[m.kind].plan(asks, m) for m in rollout.spec.analysis.metrics)
        future = frozenset(i for i, w in enumerate(windows) if to_millis(w.end) > at_ms)
        targets.append(Target(rollout.key, windows, requests, requests_why, metrics, future))
    if cache is None:
        return look_plan(targets, gap_seconds)
    signatures = {t.key: signature(cache, t) for t in targets}
    made = look_plan(targets, gap_seconds, lambda target, window: cache.covers(signatures[target.key], window))
    return replace(made, signatures=signatures)


def signature(cache: WindowCache, target: Target) -> int:
    """The cache's id for ``target``: its key and everything its queries ask for (an edit reads afresh)."""
    identity = repr((target.key, target.requests, target.requests_unsupported, target.metrics))
    return cache.signature(hashlib.blake2b(identity.encode(), digest_size=16).digest())


def metric_queries(rollout: ModelRollout, window: float, labels: Labels | None = None) -> dict[str, tuple[str, ...]]:
    """The PromQL each metric of ``rollout`` reads over one ``window`` (seconds), for docs and reports.

    Keyed by metric name, with the request counts under :data:`REQUESTS_KEY` (not a valid metric
    name, so it cannot collide); counters come with their ``resets()`` query.
    """
    the_plan = plan([rollout], {rollout.key: [Window(0.0, window, 0.0)]}, window, labels)
    (target,) = the_plan.targets
    length = to_millis(window)
    named = [(REQUESTS_KEY, target.requests), *((m.name, m.asks) for m in target.metrics)]
    out: dict[str, tuple[str, ...]] = {}
    for name, asks in named:
        texts = [the_plan.text(a.family, length, resets) for a in asks.values() for resets in (False, True)]
        out[name] = tuple(dict.fromkeys(t for t in texts if t is not None))
    return out


def build_observations(
    plan: Plan, results: Results, cache: WindowCache | None = None, at: float = 0.0
) -> dict[str, Observation]:
    """One observation per rollout of the plan (keyed ``namespace/name``) from the answers, and from
    the ``cache``'s settled windows (which the windows this look at ``at`` read without doubt add to)."""
    reader = Reader(plan, results)
    observations: dict[str, Observation] = {}
    for target in plan.targets:
        number = plan.signatures.get(target.key, 0)  # computed once, when the plan was made with the cache
        if cache is not None and target.key not in plan.signatures:  # a plan made without it
            number = signature(cache, target)
        builder = Builder(reader, target, cache, number, at)
        observations[target.key] = _observation(builder)
        builder.finish()
    return observations


def _observation(builder: Builder) -> Observation:
    target = builder.target
    if target.requests:
        stable, canary, _ = builder.collect(
            lambda window, side: _requests(builder, target.requests, window, side), REQUESTS_KEY
        )
    else:
        stable = canary = [None] * len(target.windows)
    metrics = tuple(_metric(builder, m) for m in target.metrics)
    return Observation(target.windows, tuple(stable), tuple(canary), metrics)


def _requests(builder: Builder, asks: Mapping[Role, Ask], window: Window, side: str) -> Valued[int]:
    got = count_requests(builder, asks, window, side)
    return got if isinstance(got, str) else (got, ())


def _metric(builder: Builder, plan: MetricPlan) -> MetricData:
    if plan.unsupported:
        return MetricData(plan.name, None, plan.unsupported)
    series, reasons = READINGS[plan.kind].build(builder, plan)
    return MetricData(plan.name, series, "; ".join(reasons))


def no_data(rollout: ModelRollout, windows: Sequence[Window], reason: str) -> Observation:
    """An observation with no data at all, every metric saying why (e.g. Prometheus unavailable)."""
    empty: tuple[int | None, ...] = (None,) * len(windows)
    metrics = tuple(MetricData(m.name, None, reason) for m in rollout.spec.analysis.metrics)
    return Observation(tuple(windows), empty, empty, metrics)
