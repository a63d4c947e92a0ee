"""The ModelRollout's status subresource, typed: what the controller writes and every reader reads.

One model for both directions. :meth:`RolloutStatus.read` takes whatever the cluster holds (a status
edited by hand, or written by an older or newer controller) and never raises: a top-level field it
cannot read becomes None (a log, empty); a log entry is kept when it is a mapping, its unreadable
fields None (a decision, only with its phases, steps and action), and dropped on its own otherwise;
an unreadable cell of the look log's columns is None. :meth:`RolloutStatus.dump` gives the stored
JSON: camelCase keys in a fixed order, times as RFC 3339 (:mod:`controller.api.times`), a top-level
None left out. The phases, actions and verdicts are wire values of the status, so they live here;
the state machine (:mod:`controller.judge.machine`) uses them.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import Annotated, Any, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    WrapValidator,
)
from pydantic.alias_generators import to_camel

from controller.api.times import stored_time, timestamp


class Phase(StrEnum):
    INITIALIZING = "Initializing"
    PROGRESSING = "Progressing"
    PAUSED = "Paused"
    PROMOTING = "Promoting"
    SUCCEEDED = "Succeeded"
    ROLLING_BACK = "RollingBack"
    FAILED = "Failed"


class Verdict(StrEnum):
    PASS = "Pass"  # non-inferiority proven
    FAIL = "Fail"  # SLO breached or regression proven
    INCONCLUSIVE = "Inconclusive"  # data, but not yet enough to prove either way
    NODATA = "NoData"  # no usable data: never a pass, never a failure


class Action(StrEnum):
    NONE = "None"
    START = "Start"
    HOLD = "Hold"
    ADVANCE = "Advance"
    PROMOTE = "Promote"
    COMPLETE = "Complete"
    ROLLBACK = "Rollback"
    PAUSE = "Pause"
    RESUME = "Resume"
    RETRY = "Retry"
    RESTART = "Restart"
    RESCHEDULE = "Reschedule"  # the policy's steps changed mid-rollout


#: Set while reading a stored status: a time must then be stored text, never a bare number.
_READING = {"reading": True}


#: The times :func:`controller.api.times.timestamp` writes: years 1 to 9999.
EARLIEST, LATEST = -62_135_596_800.0, 253_402_300_799.0


def _moment(value: object, info: ValidationInfo) -> float:
    """Unix seconds of a stored time (RFC 3339 text, read as UTC without an offset), or of seconds
    given in Python; refused when it is neither, or when it could not be written back."""
    seconds: float | None
    if info.context is None and isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        seconds = stored_time(value)
    if seconds is None:
        raise ValueError("not a stored time")
    if not EARLIEST <= seconds <= LATEST:
        raise ValueError("a time out of the writable range")
    return seconds


def _readable(data: object, error: ValidationError, depth: int) -> dict[str, Any] | None:
    """``data`` without the fields that ``error`` found unreadable (the key at ``depth`` of each
    error's location), or None when it has none of them to leave out."""
    if not isinstance(data, Mapping):
        return None
    unreadable = {problem["loc"][depth] for problem in error.errors() if len(problem["loc"]) > depth}
    readable = {key: value for key, value in data.items() if key not in unreadable}
    return readable if len(readable) < len(data) else None


def _entries(value: object, handler: ValidatorFunctionWrapHandler) -> object:
    """A stored list read entry by entry: an entry's unreadable fields are left out (None), and an
    entry that is still not one (not a mapping, or without a field it needs) is dropped, not the list.
    The whole list is read at once first: what the controller wrote reads in one pass."""
    try:
        return handler(value)
    except ValidationError:
        kept: list[Any] = []
        for item in value if isinstance(value, list) else []:
            try:
                kept += handler([item])
            except ValidationError as error:
                readable = _readable(item, error, 1)
                if readable is not None:
                    with contextlib.suppress(ValidationError):
                        kept += handler([readable])
        return kept


def _missing(value: object) -> bool:
    return value is None


#: A log: its entries read one by one (see :func:`_entries`).
EACH = WrapValidator(_entries)
#: A time: Unix seconds in Python, RFC 3339 in UTC with a Z, to the second, on the wire.
Moment = Annotated[float, BeforeValidator(_moment), PlainSerializer(timestamp, return_type=str)]
#: A step's index, and a canary weight in percent: integers, never booleans.
Index = Annotated[int, Field(ge=0)]
Weight = Annotated[int, Field(ge=0, le=100)]
#: A number as given: an integer stays one on the wire (the stored JSON is kept byte for byte).
Real = int | float


class Part(BaseModel):
    """Base of the status and its parts: camelCase on the wire, no loose types, unknown keys ignored."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        frozen=True,
        extra="ignore",
        strict=True,
        allow_inf_nan=False,
    )

    def dump(self) -> dict[str, Any]:
        """The stored JSON: wire names in order, times as RFC 3339."""
        return self.model_dump(mode="json", by_alias=True)


class Requests(Part):
    stable: int | None = None
    canary: int | None = None


class MetricStatus(Part):
    """One metric's verdict and numbers at a look; ``reason`` is left out of the looks' log."""

    model_config = ConfigDict(allow_inf_nan=True)  # an e-value may be NaN: kept as written

    name: str | None = None
    verdict: Annotated[Verdict, Field(strict=False)] | None = None
    reason: str | None = Field(default=None, exclude_if=_missing)
    slo_breached: bool | None = None
    e_value: Real | None = None
    e_value_non_inferiority: Real | None = None
    threshold: Real | None = None
    estimate: Real | None = None
    interval: Annotated[list[Real | None], Field(min_length=2, max_length=2)] | None = None
    requests: Requests | None = None


class StoredTransition(Part):
    """One recorded decision: kept only with its phases, steps and action. Read as the state machine
    always has: an unreadable time or weight is None (a weight, as in records from before it was
    kept), any reason is text."""

    at: Moment | None = None
    from_phase: Annotated[Phase, Field(strict=False)]
    to_phase: Annotated[Phase, Field(strict=False)]
    from_step: Index
    to_step: Index
    action: Annotated[Action, Field(strict=False)]
    reason: Annotated[str, BeforeValidator(str)] = ""
    canary_weight: Weight | None = Field(default=None, exclude_if=_missing)
    #: When the decision's routes were confirmed in force (absent: not yet, or recorded before it was kept).
    routed_at: Moment | None = Field(default=None, exclude_if=_missing)


class WeightEntry(Part):
    """The canary weight in force from ``at`` on."""

    at: Moment | None = None
    canary_weight: Weight | None = None


class AnalysisEntry(Part):
    """One look's numbers (the report's e-value and estimate paths): a row of :class:`LookLog`, and
    the stored form of the look log before it was kept as columns (``status.analyses``, still read)."""

    at: Moment | None = None
    step: Index | None = None
    canary_weight: Weight | None = None
    metrics: Annotated[list[MetricStatus], EACH] = Field(default_factory=list)


def _lenient(value: object, handler: ValidatorFunctionWrapHandler) -> object:
    """A part read with its unreadable fields left out (their defaults), not refused whole."""
    try:
        return handler(value)
    except ValidationError as error:
        readable = _readable(value, error, 0)
        if readable is None:
            raise
        return handler(readable)


#: A part whose unreadable fields are left out (see :func:`_lenient`).
LENIENT = WrapValidator(_lenient)


def _cells(value: object, handler: ValidatorFunctionWrapHandler) -> object:
    """A column read cell by cell: an unreadable value is None (that look's, alone), as a field of
    one look in the list form was. The whole column is read at once first."""
    try:
        return handler(value)
    except ValidationError:
        if not isinstance(value, list):
            raise
        cells: list[Any] = []
        for item in value:
            try:
                cells += handler([item])
            except ValidationError:
                cells.append(None)
        return cells


#: A column of the look log, read cell by cell (see :func:`_cells`).
CELLS = WrapValidator(_cells)
#: The look log's numbers keep this many significant digits: a plot's resolution is far coarser, and
#: the digits past it are a third of the log's bytes. The latest look (``metrics``) keeps every digit.
LOOK_DIGITS = 6


def _nth(column: list[Any], i: int) -> Any:
    """Look ``i``'s value of a column (None past its end: a column shorter than the log, as read)."""
    return column[i] if i < len(column) else None


def _compact(value: Any) -> Any:
    """A real to :data:`LOOK_DIGITS` significant digits; an integer, a flag or None as it is."""
    if isinstance(value, float) and math.isfinite(value):
        return float(f"{value:.{LOOK_DIGITS}g}")
    return value


class MetricLooks(Part):
    """One metric's numbers at every look of the log, a column per field of :class:`MetricStatus`
    (the interval's ends and the request counts each a column of their own)."""

    model_config = ConfigDict(allow_inf_nan=True)

    name: str
    verdict: Annotated[list[Annotated[Verdict, Field(strict=False)] | None], CELLS] = Field(default_factory=list)
    slo_breached: Annotated[list[bool | None], CELLS] = Field(default_factory=list)
    e_value: Annotated[list[Real | None], CELLS] = Field(default_factory=list)
    e_value_non_inferiority: Annotated[list[Real | None], CELLS] = Field(default_factory=list)
    threshold: Annotated[list[Real | None], CELLS] = Field(default_factory=list)
    estimate: Annotated[list[Real | None], CELLS] = Field(default_factory=list)
    low: Annotated[list[Real | None], CELLS] = Field(default_factory=list)
    high: Annotated[list[Real | None], CELLS] = Field(default_factory=list)
    stable: Annotated[list[int | None], CELLS] = Field(default_factory=list)
    canary: Annotated[list[int | None], CELLS] = Field(default_factory=list)

    def row(self, i: int) -> MetricStatus | None:
        """The metric at look ``i``; None when that look did not have it (every value None)."""
        low, high = _nth(self.low, i), _nth(self.high, i)
        stable, canary = _nth(self.stable, i), _nth(self.canary, i)
        values = {field: _nth(getattr(self, field), i) for field in _METRIC_COLUMNS}
        if all(v is None for v in (*values.values(), low, high, stable, canary)):
            return None
        return MetricStatus.model_construct(
            name=self.name,
            **values,
            interval=[low, high] if (low, high) != (None, None) else None,
            requests=Requests.model_construct(stable=stable, canary=canary)
            if (stable, canary) != (None, None)
            else None,
        )


M = TypeVar("M", MetricStatus, MetricLooks)

#: The columns of :class:`MetricLooks` that are :class:`MetricStatus` fields of the same name, and all.
_METRIC_COLUMNS = ("verdict", "slo_breached", "e_value", "e_value_non_inferiority", "threshold", "estimate")
_ALL_COLUMNS = (*_METRIC_COLUMNS, "low", "high", "stable", "canary")


def _columns(metric: MetricStatus | None) -> dict[str, Any]:
    """A look's metric as one value per column of :class:`MetricLooks` (all None: the look lacks it)."""
    if metric is None:
        return dict.fromkeys(_ALL_COLUMNS)
    values = {field: _compact(getattr(metric, field)) for field in _METRIC_COLUMNS}
    low, high = metric.interval if metric.interval is not None else (None, None)
    requests = metric.requests or Requests()
    return {
        **values,
        "low": _compact(low),
        "high": _compact(high),
        "stable": requests.stable,
        "canary": requests.canary,
    }


def _first_of_each_name(metrics: Sequence[M]) -> dict[str, M]:
    """Metrics by name, the first of a name (a name twice, or none: as a status may be read)."""
    found: dict[str, M] = {}
    for metric in metrics:
        if metric.name is not None:
            found.setdefault(metric.name, metric)
    return found


class LookLog(Part):
    """Every look's numbers (the report's e-value and estimate paths), kept as columns: a list per
    field, a value per look. A column shorter than ``at`` (as read) is None past its end.

    Columns, not a list of looks: the field names are written once, not once a look; with numbers to
    :data:`LOOK_DIGITS` digits the log of a two-hour analysis is a third of the bytes, and every
    reconcile writes and reads it whole.
    """

    at: Annotated[list[Moment | None], CELLS] = Field(default_factory=list)
    step: Annotated[list[Index | None], CELLS] = Field(default_factory=list)
    canary_weight: Annotated[list[Weight | None], CELLS] = Field(default_factory=list)
    metrics: Annotated[list[MetricLooks], EACH] = Field(default_factory=list)

    def __len__(self) -> int:
        return len(self.at)

    def entries(self) -> list[AnalysisEntry]:
        """The looks as rows, oldest first: a metric is in a look's row when the look had it."""
        return [
            AnalysisEntry.model_construct(
                at=at,
                step=_nth(self.step, i),
                canary_weight=_nth(self.canary_weight, i),
                metrics=[row for metric in self.metrics if (row := metric.row(i)) is not None],
            )
            for i, at in enumerate(self.at)
        ]

    def appended(self, entry: AnalysisEntry, limit: int) -> LookLog:
        """The log with ``entry`` added (its numbers to :data:`LOOK_DIGITS` digits), the oldest beyond
        ``limit`` looks dropped, and a metric none of the kept looks had left out."""
        if limit <= 0:
            return LookLog()
        n = len(self.at)
        start = max(n - (limit - 1), 0)

        def kept(column: list[Any], value: Any) -> list[Any]:
            return [*(column + [None] * n)[start:n], value]

        looked = _first_of_each_name(entry.metrics)
        before = _first_of_each_name(self.metrics)
        metrics = []
        for name in dict.fromkeys([*before, *looked]):
            old, now = before.get(name), _columns(looked.get(name))
            columns = {field: kept(getattr(old, field) if old else [], value) for field, value in now.items()}
            if any(v is not None for column in columns.values() for v in column):
                metrics.append(MetricLooks.model_construct(None, name=name, **columns))
        return LookLog.model_construct(
            at=kept(self.at, entry.at),
            step=kept(self.step, entry.step),
            canary_weight=kept(self.canary_weight, entry.canary_weight),
            metrics=metrics,
        )

    def within(self, limit: int) -> LookLog:
        """The log itself when it has at most ``limit`` looks and no column longer than ``at``; else
        its last ``limit`` looks (a status edited by hand)."""
        n = len(self.at)
        columns = [self.step, self.canary_weight, *(getattr(m, f) for m in self.metrics for f in _ALL_COLUMNS)]
        return self if n <= limit and all(len(c) <= n for c in columns) else LookLog.of(self.entries(), limit)

    @classmethod
    def of(cls, entries: list[AnalysisEntry], limit: int) -> LookLog:
        """The log of the last ``limit`` looks given as rows (the list form of a status stored before
        the columns): each metric (the first of a name in a look) a column per field."""
        rows = entries[-limit:] if limit > 0 else []
        named = [_first_of_each_name(row.metrics) for row in rows]
        kept = []
        for name in dict.fromkeys(name for metrics in named for name in metrics):
            values = [_columns(metrics.get(name)) for metrics in named]
            columns = {field: [v[field] for v in values] for field in _ALL_COLUMNS}
            if any(v is not None for column in columns.values() for v in column):
                kept.append(MetricLooks.model_construct(None, name=name, **columns))
        return cls.model_construct(
            at=[row.at for row in rows],
            step=[row.step for row in rows],
            canary_weight=[row.canary_weight for row in rows],
            metrics=kept,
        )


class DistributionEntry(Part):
    """Both versions' bucket counts at a decision: a latency metric's cumulative counts at ``edges``
    (without the +Inf bucket), or a prediction distribution's counts per bucket named in ``buckets``."""

    at: Moment | None = None
    step: Index | None = None
    action: Annotated[Action, Field(strict=False)] | None = None
    metric: str | None = None
    edges: list[Real] | None = Field(default=None, exclude_if=_missing)
    buckets: list[str] | None = Field(default=None, exclude_if=_missing)  # only where it applies
    stable: list[int] | None = None
    canary: list[int] | None = None


class Condition(Part):
    """A Kubernetes-style condition (Progressing, Paused, Succeeded, Failed)."""

    type: str | None = None
    status: str | None = None
    reason: str | None = None
    message: str | None = None
    last_transition_time: Moment | None = None


class RolloutStatus(Part):
    """The status subresource as stored: where the rollout is, the latest evidence and its logs.

    A top-level None is left out of the stored JSON; in an entry it is written as null.
    """

    phase: Annotated[Phase, Field(strict=False)] | None = Field(default=None, exclude_if=_missing)
    current_step: Index | None = Field(default=None, exclude_if=_missing)
    canary_weight: Weight | None = Field(default=None, exclude_if=_missing)
    mirror_percent: Real | None = Field(default=None, exclude_if=_missing)
    step_started_at: Moment | None = Field(default=None, exclude_if=_missing)
    canary_revision: str | None = Field(default=None, exclude_if=_missing)
    exposure_revision: str | None = Field(default=None, exclude_if=_missing)
    message: str | None = Field(default=None, exclude_if=_missing)
    observed_generation: int | None = Field(default=None, exclude_if=_missing)
    last_analysis_at: Moment | None = Field(default=None, exclude_if=_missing)
    last_command_id: str | None = Field(default=None, exclude_if=_missing)
    metrics: Annotated[list[MetricStatus], EACH] = Field(default_factory=list)
    history: Annotated[list[StoredTransition], EACH] = Field(default_factory=list)
    weights: Annotated[list[WeightEntry], EACH] = Field(default_factory=list)
    looks: Annotated[LookLog, LENIENT] = Field(default_factory=LookLog)
    distributions: Annotated[list[DistributionEntry], EACH] = Field(default_factory=list)
    conditions: Annotated[list[Condition], EACH] = Field(default_factory=list)

    @classmethod
    def read(cls, raw: object) -> RolloutStatus:
        """The status as stored, read leniently: never raises, keeps what it can read (see the module)."""
        if not isinstance(raw, Mapping):
            return cls()
        known = {key: raw[key] for key in _WIRE_NAMES if key in raw}
        if not isinstance(raw.get("looks"), Mapping) and "analyses" in raw:  # the list form, from before the columns
            entries = (
                _ANALYSES.validate_python(raw["analyses"], context=_READING)
                if isinstance(raw["analyses"], list)
                else []
            )
            known["looks"] = LookLog.of(entries, len(entries))
        try:
            return cls.model_validate(known, context=_READING)
        except ValidationError as error:  # a field that is not of its type is left out: None
            return cls.model_validate(_readable(known, error, 0) or {}, context=_READING)


_WIRE_NAMES = tuple(field.alias or name for name, field in RolloutStatus.model_fields.items())


_ANALYSES = TypeAdapter(Annotated[list[AnalysisEntry], EACH])
_METRICS = TypeAdapter(Annotated[list[MetricStatus], EACH])


def read_metrics(raw: object) -> list[MetricStatus]:
    """Stored metric entries (a status's, or ``canarist analyze``'s document's), read as the status reads them."""
    return _METRICS.validate_python(raw, context=_READING)
