"""One look: the catalog's plan run through a :class:`PromQL` source under the look's deadline.

:func:`observe` asks Prometheus every query of :func:`controller.metrics.measure.plan` for all rollouts
together (one range query per query when its times lie on a cheap grid), and
:func:`observe_or_explain` turns a failed look into *no data* for every rollout, saying why.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from functools import reduce
from itertools import pairwise
from math import gcd

from controller.api.model import ModelRollout
from controller.edges.prometheus.client import PrometheusClient, PromQL
from controller.edges.prometheus.errors import PrometheusError, PrometheusTimeout
from controller.metrics.cache import WindowCache
from controller.metrics.catalog import Labels
from controller.metrics.measure import build_observations, no_data, plan
from controller.metrics.plan import Plan, Query
from controller.metrics.read import Results
from controller.metrics.samples import Observation, Window
from controller.metrics.selectors import to_millis

#: Prometheus refuses range queries of more than 11,000 points per series.
MAX_POINTS = 11_000
#: Most rollout windows one round of a look reads. A steady look reads a window or two per rollout
#: (the rest are kept): one round. The first look after a restart reads every window of every
#: analysis (2,000 rollouts two hours in: 240,000); in rounds, no answer holds them all at once.
MAX_LOOK_WINDOWS = 20_000


def grid_step(times_ms: Sequence[int]) -> int | None:
    """The step of a range query that hits every time in ``times_ms``, if one is cheap enough."""
    if len(times_ms) < 2:
        return None
    step = reduce(gcd, (b - a for a, b in pairwise(times_ms)))
    points = (times_ms[-1] - times_ms[0]) // step + 1
    return step if points <= min(MAX_POINTS, 16 * len(times_ms)) else None


def fetch(
    source: PromQL, queries: Sequence[Query], *, deadline: float | None = None, look_timeout: float | None = None
) -> Results:
    """Run every query: one range query when its times lie on a cheap grid, else one instant query per time.

    Stops at the first failure (raising it): when Prometheus is down, one timeout is enough. With a
    ``deadline`` (``time.monotonic()``), no query starts after it (:class:`PrometheusTimeout`, scope
    ``look``); a :class:`PrometheusClient` also cuts the query running at the deadline short.
    ``look_timeout`` (seconds) is only for the message.
    """
    results: dict[tuple[str, int], list[tuple[Mapping[str, str], float]]] = {}
    for done, query in enumerate(queries):
        if deadline is not None and time.monotonic() >= deadline:
            after = f" after {look_timeout:g}s" if look_timeout is not None else ""
            raise PrometheusTimeout(
                f"Prometheus unavailable: timed out{after} (the look's deadline passed, "
                f"{done} of {len(queries)} queries answered)",
                retry_after=0.0,
                scope="look",
                seconds=look_timeout or 0.0,
                query=query.promql,
            )
        times = sorted({to_millis(t) for t in query.times})
        step = grid_step(times)
        if step is None:
            for t in times:
                results[(query.promql, t)] = list(source.vector(query.promql, t / 1000))
            continue
        wanted = set(times)
        for t in times:
            results[(query.promql, t)] = []
        for labels, points in source.matrix(query.promql, times[0] / 1000, times[-1] / 1000, step / 1000):
            for at, value in points:
                if (t := to_millis(at)) in wanted:
                    results[(query.promql, t)].append((labels, value))
    return results


def _bounded(source: PromQL, deadline: float | None) -> AbstractContextManager[None]:
    """The source's own deadline context, when it has one (a :class:`PrometheusClient` does)."""
    if deadline is not None and isinstance(source, PrometheusClient):
        return source.deadline(deadline)
    return nullcontext()


def _look_deadline(source: PromQL, look_timeout: float | None) -> tuple[float | None, float | None]:
    """(seconds, monotonic deadline) of a look: ``look_timeout``, else the client's ``look_timeout`` setting."""
    seconds = look_timeout
    if seconds is None and isinstance(source, PrometheusClient):
        seconds = source.settings.look_timeout
    return seconds, (time.monotonic() + seconds if seconds is not None else None)


def observe(
    source: PromQL,
    rollouts: Sequence[ModelRollout],
    windows_by_rollout: Mapping[str, Sequence[Window]],
    at: float,
    *,
    labels: Labels | None = None,
    look_timeout: float | None = None,
    cache: WindowCache | None = None,
    max_windows: int = MAX_LOOK_WINDOWS,
) -> dict[str, Observation]:
    """One look for all ``rollouts`` together: O(metric kinds x window lengths) requests, not O(rollouts).

    Windows of the same length share one range query when their ends lie on a common grid, so a
    caller that aligns window ends to the clock (``end = k x interval``) keeps one request per family.
    The whole look takes at most ``look_timeout`` seconds (default: the client's setting). With a
    ``cache``, windows seen settled in earlier looks are not asked for again (:mod:`controller.metrics.cache`),
    and a look with more than ``max_windows`` windows to read reads them in rounds (:func:`look_rounds`).

    Raises :class:`PrometheusError` (see the module docs); :func:`observe_or_explain` turns it into no data.
    """
    gap_seconds = source.settings.gap_seconds if isinstance(source, PrometheusClient) else None
    the_plan = plan(rollouts, windows_by_rollout, at, labels, gap_seconds=gap_seconds, cache=cache)
    rounds = look_rounds(the_plan, rollouts, max_windows)
    seconds, deadline = _look_deadline(source, look_timeout)
    found: dict[str, Observation] = {}
    for group in rounds:
        if len(rounds) > 1:
            the_plan = plan(group, windows_by_rollout, at, labels, gap_seconds=gap_seconds, cache=cache, trim=False)
        with _bounded(source, deadline):
            results = fetch(source, the_plan.queries, deadline=deadline, look_timeout=seconds)
        found.update(build_observations(the_plan, results, cache, at))
        del results  # a round's answers go before the next round's come
    return found


def look_rounds(
    the_plan: Plan, rollouts: Sequence[ModelRollout], max_windows: int = MAX_LOOK_WINDOWS
) -> list[list[ModelRollout]]:
    """The rollouts in rounds of at most ``max_windows`` windows to read (not kept, not in the future)
    each, in order; a rollout with more reads them in a round without another that reads any. One
    round when all fit."""
    rounds: list[list[ModelRollout]] = [[]]
    reading = 0
    for rollout, target in zip(rollouts, the_plan.targets, strict=True):
        windows = len(target.windows) - len(target.future) - len(the_plan.covered.get(target.key, ()))
        if reading and reading + windows > max_windows:
            rounds.append([])
            reading = 0
        rounds[-1].append(rollout)
        reading += windows
    return rounds


def observe_or_explain(
    source: PromQL,
    rollouts: Sequence[ModelRollout],
    windows_by_rollout: Mapping[str, Sequence[Window]],
    at: float,
    *,
    labels: Labels | None = None,
    look_timeout: float | None = None,
    cache: WindowCache | None = None,
) -> tuple[dict[str, Observation], PrometheusError | None]:
    """:func:`observe`, with a failed look turned into *no data* for every rollout, saying why."""
    try:
        found = observe(source, rollouts, windows_by_rollout, at, labels=labels, look_timeout=look_timeout, cache=cache)
        return found, None
    except PrometheusError as exc:
        return {r.key: no_data(r, windows_by_rollout.get(r.key, ()), exc.explained) for r in rollouts}, exc
