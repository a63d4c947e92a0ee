"""The plan of one look: every query it needs for all rollouts together, deduplicated. Pure.

The values that pick each rollout's versions are unioned into one selector per family, so one look
asks Prometheus one query per (family, window length), however many rollouts there are; the
results are split back per rollout by exact label equality (:mod:`controller.metrics.read`), so a
wide regex can never leak one rollout's series into another's. Every counter family is paired with
a ``resets()`` query: a window in which a counter restarted is *no data*, never a wrong count. Each
rollout's :class:`Target` comes from its kinds (:func:`controller.metrics.measure.plan`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from controller.metrics.catalog import Ask, Family, MetricPlan, Role
from controller.metrics.samples import Window
from controller.metrics.selectors import to_millis


@dataclass(frozen=True)
class Target:
    """One rollout's part of a look: its windows, the request count asks and its metrics."""

    key: str
    windows: tuple[Window, ...]
    requests: Mapping[Role, Ask]
    requests_unsupported: str
    metrics: tuple[MetricPlan, ...]
    future: frozenset[int]  # indices of windows that end after the look's time


@dataclass(frozen=True)
class Query:
    """One PromQL text to evaluate at each of ``times`` (window ends, seconds)."""

    promql: str
    times: tuple[float, ...]


@dataclass(frozen=True)
class Plan:
    """Every query a look runs, and how to find each rollout's rows in the answers."""

    targets: tuple[Target, ...]
    queries: tuple[Query, ...]
    texts: Mapping[tuple[Family, int, bool], str]  # (family, window ms, resets?) -> PromQL
    gaps: Mapping[tuple[Family, int], str] = field(default_factory=dict)  # counters' gap checks, if asked
    gap_seconds: float | None = None
    #: Per target key, the indices of its windows not asked for: kept from earlier looks.
    covered: Mapping[str, frozenset[int]] = field(default_factory=dict)
    #: Per target key, its id in the window cache the plan was made with (none without one).
    signatures: Mapping[str, int] = field(default_factory=dict)

    def text(self, family: Family, window_ms: int, resets: bool = False) -> str | None:
        return self.texts.get((family, window_ms, resets))

    def gap_text(self, family: Family, window_ms: int) -> str | None:
        return self.gaps.get((family, window_ms))


def look_plan(
    targets: Sequence[Target],
    gap_seconds: float | None = None,
    covered: Callable[[Target, Window], bool] | None = None,
) -> Plan:
    """Every query the ``targets`` need together, deduplicated and grouped.

    One PromQL text per (family, window length) with the identity values of every rollout unioned,
    evaluated at the union of the window ends; one ``resets()`` text beside each counter's, and with
    ``gap_seconds`` one gap check (:meth:`~controller.metrics.catalog.Family.gap_promql`). Windows
    ending after the look (a target's ``future``) are not asked for (their data is incomplete), nor
    those ``covered`` says are already known (settled windows kept from earlier looks).
    """
    values: dict[tuple[Family, int], list[set[str]]] = {}
    times: dict[tuple[Family, int], set[int]] = {}
    skipped: dict[str, frozenset[int]] = {}
    for target in targets:
        asks = [*target.requests.values(), *(a for m in target.metrics for a in m.asks.values())]
        if covered is not None:
            skipped[target.key] = frozenset(
                i for i, w in enumerate(target.windows) if i not in target.future and covered(target, w)
            )
        for i, window in enumerate(target.windows):
            if i in target.future or i in skipped.get(target.key, ()):
                continue
            length = to_millis(window.end) - to_millis(window.start)
            for ask in asks:
                key = (ask.family, length)
                slots = values.setdefault(key, [set() for _ in ask.family.identity])
                for slot, s, c in zip(slots, ask.stable, ask.canary, strict=True):
                    slot.update((s, c))
                times.setdefault(key, set()).add(to_millis(window.end))
    texts: dict[tuple[Family, int, bool], str] = {}
    gaps: dict[tuple[Family, int], str] = {}
    queries: list[Query] = []
    for (family, length), slots in sorted(values.items(), key=lambda kv: (kv[0][0].metric, repr(kv[0]))):
        ends = tuple(t / 1000 for t in sorted(times[(family, length)]))
        texts[(family, length, False)] = family.promql(slots, length / 1000)
        queries.append(Query(texts[(family, length, False)], ends))
        if family.is_counter:
            texts[(family, length, True)] = family.resets_promql(slots, length / 1000)
            queries.append(Query(texts[(family, length, True)], ends))
            if gap_seconds is not None:
                gaps[(family, length)] = family.gap_promql(slots, length / 1000, gap_seconds)
                queries.append(Query(gaps[(family, length)], ends))
    return Plan(tuple(targets), _merge(queries), texts, gaps, gap_seconds, skipped)


def _merge(queries: Sequence[Query]) -> tuple[Query, ...]:
    """One query per PromQL text (families shared by several kinds), with the union of their times."""
    merged: dict[str, set[float]] = {}
    for q in queries:
        merged.setdefault(q.promql, set()).update(q.times)
    return tuple(Query(text, tuple(sorted(ts))) for text, ts in merged.items())
