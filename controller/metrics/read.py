"""The machinery that turns the answers to a look's queries into series. Pure.

:class:`Reader` finds a rollout's rows; :class:`Builder` collects them per window and version into
the series of a kind's shape (:class:`Counts`, :class:`Histogram`, :class:`Gauges`), each calling
the kind's own part (its events and trials, or one pod's value) from :mod:`controller.metrics.kinds`.

Rows are picked per rollout and version by exact label equality. Anything doubtful makes that
window *no data* for that version, with the reason kept in the metric's ``reason``: a missing
series (no traffic, a missed scrape, a query that was not answered), NaN or Inf, a negative
increase, a counter reset inside the window, or a ``resets()`` answer without the version's row (a
lost or stale answer: whether the counter reset is unknown). Counts come from ``increase()``, which Prometheus
extrapolates to the window's edges; they are rounded to whole events. Per-pod gauges drop only
the doubtful pod and say so.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import ClassVar, Protocol, TypeVar

from controller.api.kinds import Shape
from controller.api.metrics_spec import Metric
from controller.metrics.bounds import MAX_HISTOGRAM_EDGES, coarsen
from controller.metrics.cache import WindowCache, unpacked
from controller.metrics.catalog import Ask, MetricPlan, Planner, Role, RolloutAsks
from controller.metrics.plan import Plan, Target
from controller.metrics.samples import (
    CountSeries,
    Cumulative,
    GaugeSeries,
    HistogramSeries,
    Series,
    Window,
)
from controller.metrics.selectors import to_millis

Labelset = Mapping[str, str]
Sample = tuple[Labelset, float]
#: The answers of a look: per (PromQL text, evaluation time in ms), the instant vector found.
Results = Mapping[tuple[str, int], Sequence[Sample]]

T = TypeVar("T")
STABLE, CANARY = "stable", "canary"
Valued = tuple[T, tuple[str, ...]] | str  # a value with notes on what was dropped, or why there is none


@dataclass(frozen=True)
class Cell:
    """One family's rows for one version in one window, and the pods whose counters reset in it."""

    rows: tuple[Sample, ...]
    resets: frozenset[str]


class Reader:
    """Finds a rollout's rows in the answers. ``doubted`` turns true whenever a cell could not be read
    without doubt (not queried, not answered, a scrape gap): a value built from it must not be kept."""

    def __init__(self, plan: Plan, results: Results) -> None:
        self.plan = plan
        self.results = results
        self.doubted = False
        #: Each answer's rows by their identity values, built once: a look of N rollouts reads each
        #: rollout's rows in O(1), not by scanning every rollout's (O(N^2) for the look).
        self._indexes: dict[
            tuple[int, tuple[str, ...]], tuple[Sequence[Sample], dict[tuple[str, ...], list[Sample]]]
        ] = {}

    def _pick(self, rows: Sequence[Sample], ask: Ask, values: tuple[str, ...]) -> tuple[Sample, ...]:
        """The rows of ``rows`` whose identity labels are ``values``, in their order."""
        identity = ask.family.identity
        found = self._indexes.get((id(rows), identity))
        if found is None or found[0] is not rows:
            index: dict[tuple[str, ...], list[Sample]] = {}
            for row in rows:
                index.setdefault(_key(row[0], identity), []).append(row)
            found = self._indexes[(id(rows), identity)] = (rows, index)
        return tuple(found[1].get(values, ()))

    def cell(self, ask: Ask, side: str, window: Window) -> Cell | str:
        found = self._read(ask, side, window)
        if isinstance(found, str):
            self.doubted = True
        return found

    def _read(self, ask: Ask, side: str, window: Window) -> Cell | str:
        family = ask.family
        end = to_millis(window.end)
        length = end - to_millis(window.start)
        values = ask.stable if side == STABLE else ask.canary
        text = self.plan.text(family, length)
        rows = self.results.get((text, end)) if text is not None else None
        if rows is None:
            return f"{family.metric} not queried"
        resets: frozenset[str] = frozenset()
        if family.is_counter:
            reset_text = self.plan.text(family, length, resets=True)
            reset_rows = self.results.get((reset_text, end)) if reset_text is not None else None
            if reset_rows is None:
                return f"resets of {family.metric} not queried"
            counted = {_key(labels, family.reset_group) for labels, _ in self._pick(rows, ask, values)}
            answered = {
                _key(labels, family.reset_group): value for labels, value in self._pick(reset_rows, ask, values)
            }
            if not counted <= answered.keys():  # an answer lost, stale or cut short: unknown, not "no reset"
                return f"resets of {family.metric} not answered"
            resets = frozenset(
                labels.get(family.pod or "", "")
                for labels, value in self._pick(reset_rows, ask, values)
                if value != 0  # NaN and Inf included: doubtful
            )
            gap = self._gap(ask, values, length, end, counted)
            if gap is not None:
                return gap
        return Cell(self._pick(rows, ask, values), resets)

    def _gap(
        self, ask: Ask, values: tuple[str, ...], length: int, end: int, counted: set[tuple[str, ...]]
    ) -> str | None:
        """Why the window cannot be counted: a counted group without a sample just before its start or end."""
        family = ask.family
        text = self.plan.gap_text(family, length)
        if text is None:
            return None
        rows = self.results.get((text, end))
        if rows is None:
            return f"scrape gaps of {family.metric} not queried"
        present = {_key(labels, family.reset_group) for labels, value in self._pick(rows, ask, values) if value > 0}
        if not counted <= present:
            return f"no sample of {family.metric} in the {self.plan.gap_seconds:g}s before the window's start or end"
        return None


def _key(labels: Mapping[str, str], names: Sequence[str]) -> tuple[str, ...]:
    return tuple(labels.get(name, "") for name in names)


def _bad(value: float) -> str | None:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Inf"
    if value < 0:
        return "negative increase"
    return None


def total(cell: Cell | str, metric: str, *, absent_is_zero: bool = False) -> int | str:
    """The whole-event count of a counter cell, or why there is none."""
    if isinstance(cell, str):
        return cell
    if cell.resets:
        return f"counter reset of {metric}"
    if not cell.rows:
        return 0 if absent_is_zero else f"no {metric} series"
    for _, value in cell.rows:
        if (bad := _bad(value)) is not None:
            return f"{bad} in {metric}"
    return round(sum(v for _, v in cell.rows))


def _per_pod(cell: Cell | str, pod: str | None, metric: str) -> dict[str, float] | str:
    """Per-pod values of a cell (pods with a reset, NaN, Inf or a negative value dropped)."""
    if isinstance(cell, str):
        return cell
    if not cell.rows:
        return f"no {metric} series"
    return {
        labels.get(pod or "", ""): value
        for labels, value in cell.rows
        if _bad(value) is None and labels.get(pod or "", "") not in cell.resets
    }


class Builder:
    """Builds one rollout's series, window by window and version by version.

    With a ``cache`` (:class:`~controller.metrics.cache.WindowCache`), a settled window's value is
    taken from it when kept, and kept when built without doubt; :meth:`finish` then marks the windows
    whose every series was kept, which the next look need not ask for.
    """

    def __init__(
        self, reader: Reader, target: Target, cache: WindowCache | None = None, signature: int = 0, at: float = 0.0
    ) -> None:
        self.reader = reader
        self.target = target
        self.cache = cache
        self.signature = signature
        self.at = at
        self._unkept: set[int] = set()  # windows with a series not kept (doubtful, or not settled)
        #: The windows the look did not ask for: read from the cache. Any other is read afresh from
        #: the answers, every series of it, so a look reads a window either wholly kept or wholly new.
        self._covered = reader.plan.covered.get(target.key, frozenset())
        #: The covered windows' kept values, by window index: taken from the cache once per look.
        self._kept = {i: cache.kept(signature, target.windows[i]) for i in self._covered} if cache is not None else {}

    def collect(
        self, fn: Callable[[Window, str], Valued[T]], tag: str
    ) -> tuple[list[T | None], list[T | None], list[str]]:
        """``fn`` per window and version: the stable and canary columns, and what was dropped. ``tag``
        names the series among the rollout's (the metric's name, and a role where it has several)."""
        columns: dict[str, list[T | None]] = {STABLE: [], CANARY: []}
        drops: dict[tuple[str, str], list[int]] = {}
        for i, window in enumerate(self.target.windows):
            for side in (STABLE, CANARY):
                got: Valued[T] = (
                    "window ends after the look" if i in self.target.future else self._value(fn, tag, i, window, side)
                )
                if isinstance(got, str):
                    columns[side].append(None)
                    drops.setdefault((side, got), []).append(i)
                    continue
                columns[side].append(got[0])
                for note in got[1]:
                    drops.setdefault((side, note), []).append(i)
        reasons = [f"{side}: {why} ({_windows(idx)})" for (side, why), idx in drops.items()]
        return columns[STABLE], columns[CANARY], reasons

    def _value(self, fn: Callable[[Window, str], Valued[T]], tag: str, i: int, window: Window, side: str) -> Valued[T]:
        cache = self.cache
        if cache is None:
            return fn(window, side)
        kept = self._kept.get(i)
        if kept is not None and (tag, side) in kept:
            cache.hits += 1
            return unpacked(kept[tag, side])  # type: ignore[no-any-return]
        settled = cache.settled(window, self.at)
        self.reader.doubted = False
        got = fn(window, side)
        if settled and not self.reader.doubted:
            cache.put(self.signature, window, (tag, side), got)
        else:
            self._unkept.add(i)
        return got

    def finish(self) -> None:
        """Mark each settled window complete (every series kept) or not, for the next look's plan."""
        if self.cache is None:
            return
        for i, window in enumerate(self.target.windows):
            if i not in self.target.future and self.cache.settled(window, self.at):
                self.cache.complete(self.signature, window, i not in self._unkept)

    def cell(self, plan: MetricPlan | Mapping[Role, Ask], role: Role, window: Window, side: str) -> Cell | str:
        asks = plan.asks if isinstance(plan, MetricPlan) else plan
        return self.reader.cell(asks[role], side, window)

    # --- shapes ---------------------------------------------------------------------------

    def counts(self, plan: MetricPlan, events_trials: EventsTrials) -> Built:
        def fn(window: Window, side: str) -> Valued[tuple[int, int]]:
            got = events_trials(self, plan, window, side, Role.REQUESTS)
            return got if isinstance(got, str) else (got, ())

        stable, canary, reasons = self.collect(fn, plan.name)
        every: list[tuple[int, int] | None] | None = None
        if Role.REQUESTS_ALL in plan.asks:  # the SLO guard's: cohort and sticky requests too

            def all_requests(window: Window, side: str) -> Valued[tuple[int, int]]:
                got = events_trials(self, plan, window, side, Role.REQUESTS_ALL)
                return got if isinstance(got, str) else (got, ())

            # before any early return: a window is kept only with every series of it kept
            _, every, _ = self.collect(all_requests, f"{plan.name}/all")
        if all(v is None for v in (*stable, *canary)):
            return None, reasons or ["no windows"]
        series = CountSeries(
            tuple(v[0] if v else None for v in stable),
            tuple(v[1] if v else None for v in stable),
            tuple(v[0] if v else None for v in canary),
            tuple(v[1] if v else None for v in canary),
            tuple(v[0] if v else None for v in every) if every is not None else None,
            tuple(v[1] if v else None for v in every) if every is not None else None,
        )
        return series, reasons

    def histogram(self, plan: MetricPlan) -> Built:
        def fn(window: Window, side: str) -> Valued[dict[float, int]]:
            cell = self.cell(plan, Role.BUCKETS, window, side)
            got = _buckets(cell, plan.asks[Role.BUCKETS].family.metric)
            return got if isinstance(got, str) else (got, ())

        stable, canary, reasons = self.collect(fn, plan.name)
        every_buckets: list[dict[float, int] | None] | None = None
        if Role.BUCKETS_ALL in plan.asks:  # the SLO guard's: cohort and sticky requests too

            def all_buckets(window: Window, side: str) -> Valued[dict[float, int]]:
                got = _buckets(
                    self.cell(plan, Role.BUCKETS_ALL, window, side), plan.asks[Role.BUCKETS_ALL].family.metric
                )
                return got if isinstance(got, str) else (got, ())

            # before any early return: a window is kept only with every series of it kept
            every_buckets = self.collect(all_buckets, f"{plan.name}/all")[1]
        present = [b for b in (*stable, *canary) if b is not None]
        if not present:
            return None, reasons or ["no windows"]
        shared = tuple(sorted(set.intersection(*(set(b) for b in present))))
        if not shared or not math.isinf(shared[-1]):
            return None, [*reasons, "the versions' histograms share no bucket bounds ending with +Inf"]
        edges = coarsen(shared, plan.keep)
        if len(edges) < len(shared):
            reasons.append(
                f"{len(shared)} bucket bounds coarsened to {len(edges)} (at most {MAX_HISTOGRAM_EDGES}; "
                "the SLO's bounds kept)"
            )

        def cumulative(column: list[dict[float, int] | None]) -> tuple[Cumulative | None, ...]:
            return tuple(
                tuple(float(b[e]) for e in edges) if b is not None and all(e in b for e in edges) else None
                for b in column
            )

        every = cumulative(every_buckets) if every_buckets is not None else None
        return HistogramSeries(edges, cumulative(stable), cumulative(canary), every), reasons

    def gauges(self, plan: MetricPlan, pod_value: PodValue) -> Built:
        def fn(window: Window, side: str) -> Valued[tuple[float, ...]]:
            got = self.pod_values(plan, pod_value, window, side)
            if isinstance(got, str):
                return got
            values, dropped = got
            notes = (f"{dropped} pod(s) dropped (counter reset, NaN, Inf or no inferences)",) if dropped else ()
            if Role.DEVICES in plan.asks:
                shared = self.shared_gpus(plan, window)  # read for each version: its doubt is that value's too
                if isinstance(shared, str):
                    return shared
                if shared & values.keys():
                    values = {p: v for p, v in values.items() if p not in shared}
                    why = (
                        "not attributable: pods sharing a GPU with another of the rollout's pods dropped "
                        f"({plan.asks[Role.DEVICES].family.metric} is the whole GPU's)"
                    )
                    if not values:
                        return why
                    notes = (*notes, why)
            if not values:
                return f"no pod with usable {plan.kind.value} data"
            return tuple(values[p] for p in sorted(values)), notes

        stable, canary, reasons = self.collect(fn, plan.name)
        if all(v is None for v in (*stable, *canary)):
            return None, reasons or ["no windows"]
        return GaugeSeries(tuple(stable), tuple(canary)), reasons

    def pod_values(
        self, plan: MetricPlan, pod_value: PodValue, window: Window, side: str
    ) -> tuple[dict[str, float], int] | str:
        """Per-pod values of a pod-scraped kind, and how many pods were dropped."""
        parts: dict[Role, dict[str, float]] = {}
        for role, ask in plan.asks.items():
            if role is Role.DEVICES:
                continue
            got = _per_pod(self.cell(plan, role, window, side), ask.family.pod, ask.family.metric)
            if isinstance(got, str):
                return got
            parts[role] = got
        pods = set.union(*(set(p) for p in parts.values()))
        values = {p: v for p in pods if (v := _pod_value(pod_value, parts, p, window)) is not None}
        return values, len(pods) - len(values)

    def shared_gpus(self, plan: MetricPlan, window: Window) -> set[str] | str:
        """The pods (of either version) whose GPU another of the rollout's pods also uses.

        Device-wide series (DCGM's before per-process support, Triton's ``nv_gpu_*``) give every
        pod on a GPU the whole GPU's value: those pods' values are not theirs. Read from the
        :attr:`Role.DEVICES` ask, whose family is also grouped by the GPU's uuid label.
        """
        ask = plan.asks[Role.DEVICES]
        device = ask.family.split or ""
        users: dict[str, set[str]] = {}
        for side in (STABLE, CANARY):
            cell = self.cell(plan, Role.DEVICES, window, side)
            if isinstance(cell, str):
                return cell
            for labels, _ in cell.rows:
                if gpu := labels.get(device, ""):
                    users.setdefault(gpu, set()).add(labels.get(ask.family.pod or "", ""))
        return {pod for pods in users.values() if len(pods) > 1 for pod in pods}


def _pod_value(
    pod_value: PodValue, parts: Mapping[Role, Mapping[str, float]], pod: str, window: Window
) -> float | None:
    """One pod's value in canonical units, or None when it has none (a part missing, zero, NaN or negative)."""
    try:
        value = pod_value(parts, pod, window)
    except (KeyError, ZeroDivisionError):
        return None
    return value if math.isfinite(value) and value >= 0 else None


def _buckets(cell: Cell | str, metric: str) -> dict[float, int] | str:
    """Cumulative counts by upper bound in seconds (Istio's ``le`` is in milliseconds)."""
    count = total(cell, metric)
    if isinstance(count, str) or isinstance(cell, str):
        return str(count)
    out: dict[float, int] = {}
    for labels, value in cell.rows:
        try:
            edge = float(labels.get("le", ""))
        except ValueError:
            return f"{metric} has a bucket without a numeric le label"
        edge = edge / 1000.0 + 0.0  # -0 is 0: one bound, however written
        out[edge] = out.get(edge, 0) + round(value)  # '1' and '1.0' are one bound
    counts = [out[e] for e in sorted(out)]
    if any(b < a for a, b in pairwise(counts)):
        return f"{metric} buckets are not cumulative"
    if math.inf not in out:
        return f"{metric} has no +Inf bucket"
    return out


def _windows(indices: Sequence[int]) -> str:
    """``window 3`` or ``windows 0-4, 7``."""
    runs: list[list[int]] = []
    for i in sorted(indices):
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    text = ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in runs)
    return f"window{'s' if len(indices) > 1 else ''} {text}"


# --- the shapes a kind is read into -----------------------------------------------------

#: A series and the reasons for what it lacks.
Built = tuple[Series | None, list[str]]
#: A counts kind's (events, trials) for one version in one window, or why there are none; the role
#: is that of the trials: REQUESTS, or REQUESTS_ALL for the SLO guard of a kind that plans one.
EventsTrials = Callable[[Builder, MetricPlan, Window, str, Role], tuple[int, int] | str]
#: A gauges kind's value for one pod from its parts by role (KeyError, ZeroDivisionError: none).
PodValue = Callable[[Mapping[Role, Mapping[str, float]], str, Window], float]


class KindReading(Protocol):
    """How one kind is measured: its asks for one rollout, and the series built from the answers."""

    @property
    def shape(self) -> Shape: ...

    def plan(self, asks: RolloutAsks, metric: Metric) -> MetricPlan: ...

    def build(self, builder: Builder, plan: MetricPlan) -> Built: ...


@dataclass(frozen=True)
class Counts:
    """A kind read as events out of trials per window (a rate): a :class:`CountSeries`."""

    planner: Planner
    events_trials: EventsTrials
    shape: ClassVar[Shape] = Shape.COUNTS

    def plan(self, asks: RolloutAsks, metric: Metric) -> MetricPlan:
        return self.planner(asks, metric)

    def build(self, builder: Builder, plan: MetricPlan) -> Built:
        return builder.counts(plan, self.events_trials)


@dataclass(frozen=True)
class Histogram:
    """A kind read as cumulative bucket counts per window: a :class:`HistogramSeries`."""

    planner: Planner
    shape: ClassVar[Shape] = Shape.HISTOGRAM

    def plan(self, asks: RolloutAsks, metric: Metric) -> MetricPlan:
        return self.planner(asks, metric)

    def build(self, builder: Builder, plan: MetricPlan) -> Built:
        return builder.histogram(plan)


@dataclass(frozen=True)
class Gauges:
    """A kind read as one value per pod per window: a :class:`GaugeSeries`."""

    planner: Planner
    pod_value: PodValue
    shape: ClassVar[Shape] = Shape.GAUGES

    def plan(self, asks: RolloutAsks, metric: Metric) -> MetricPlan:
        return self.planner(asks, metric)

    def build(self, builder: Builder, plan: MetricPlan) -> Built:
        return builder.gauges(plan, self.pod_value)
