"""The ModelRollout's status subresource, typed: what the controller writes and every reader reads.

One model for both directions. :meth:`RolloutStatus.read` takes whatever the cluster holds (a status
edited by hand, or written by an older or newer controller) and never raises: a top-level field it
cannot read becomes None (a log, empty); a log entry is kept when it is a mapping, its unreadable
fields None (a decision, only with its phases, steps and action), and dropped on its own otherwise.
:meth:`RolloutStatus.dump` gives the stored JSON: camelCase keys in a fixed order, times as RFC 3339
(:mod:`controller.api.times`), a top-level None left out. The phases, actions and verdicts are wire
values of the status, so they live here; the state machine (:mod:`controller.judge.machine`) uses them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from enum import StrEnum
from typing import Annotated, Any

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
    """One look's numbers (the report's e-value and estimate paths)."""

    at: Moment | None = None
    step: Index | None = None
    canary_weight: Weight | None = None
    metrics: Annotated[list[MetricStatus], EACH] = Field(default_factory=list)


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
    analyses: Annotated[list[AnalysisEntry], EACH] = Field(default_factory=list)
    distributions: Annotated[list[DistributionEntry], EACH] = Field(default_factory=list)
    conditions: Annotated[list[Condition], EACH] = Field(default_factory=list)

    @classmethod
    def read(cls, raw: object) -> RolloutStatus:
        """The status as stored, read leniently: never raises, keeps what it can read (see the module)."""
        if not isinstance(raw, Mapping):
            return cls()
        known = {key: raw[key] for key in _WIRE_NAMES if key in raw}
        try:
            return cls.model_validate(known, context=_READING)
        except ValidationError as error:  # a field that is not of its type is left out: None
            return cls.model_validate(_readable(known, error, 0) or {}, context=_READING)


_WIRE_NAMES = tuple(field.alias or name for name, field in RolloutStatus.model_fields.items())


_METRICS = TypeAdapter(Annotated[list[MetricStatus], EACH])


def read_metrics(raw: object) -> list[MetricStatus]:
    """Stored metric entries (a status's, or ``canarist analyze``'s document's), read as the status reads them."""
    return _METRICS.validate_python(raw, context=_READING)
