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

from collections.abc import Mapping
from enum import StrEnum
from typing import Annotated, Any, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    SerializerFunctionWrapHandler,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    model_serializer,
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


Entry = TypeVar("Entry", bound=BaseModel)

#: Set while reading a stored status: a time must then be stored text, never a bare number.
_READING = {"reading": True}


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
    try:
        timestamp(seconds)
    except (OverflowError, ValueError, OSError):
        raise ValueError("a time out of the writable range") from None
    return seconds


def _or_none(value: object, handler: ValidatorFunctionWrapHandler) -> object:
    """The value as its field's type, or None when it is not one (a lenient field)."""
    try:
        return handler(value)
    except ValidationError:
        return None


def _entries(model: type[Entry], value: object, context: dict[str, Any] | None) -> list[Entry]:
    """The entries of a stored list that are ``model``s: one that is not is dropped, not the list."""
    kept = []
    for item in value if isinstance(value, list) else []:
        try:
            kept.append(model.model_validate(item, context=context))
        except ValidationError:
            continue
    return kept


def _each(model: type[BaseModel]) -> BeforeValidator:
    """A list field read entry by entry (see :func:`_entries`)."""
    return BeforeValidator(lambda value, info: _entries(model, value, info.context))


#: A field read leniently: None when the stored value is not of its type.
LENIENT = WrapValidator(_or_none)
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
    stable: Annotated[int | None, LENIENT] = None
    canary: Annotated[int | None, LENIENT] = None


class MetricStatus(Part):
    """One metric's verdict and numbers at a look; ``reason`` is left out of the looks' log."""

    model_config = ConfigDict(allow_inf_nan=True)  # an e-value may be NaN: kept as written

    name: Annotated[str | None, LENIENT] = None
    verdict: Annotated[Annotated[Verdict, Field(strict=False)] | None, LENIENT] = None
    reason: Annotated[str | None, LENIENT] = None
    slo_breached: Annotated[bool | None, LENIENT] = None
    e_value: Annotated[Real | None, LENIENT] = None
    e_value_non_inferiority: Annotated[Real | None, LENIENT] = None
    threshold: Annotated[Real | None, LENIENT] = None
    estimate: Annotated[Real | None, LENIENT] = None
    interval: Annotated[Annotated[list[Real | None], Field(min_length=2, max_length=2)] | None, LENIENT] = None
    requests: Annotated[Requests | None, LENIENT] = None

    @model_serializer(mode="wrap")
    def _without_missing_reason(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        out: dict[str, Any] = handler(self)
        if self.reason is None:
            del out["reason"]
        return out


class StoredTransition(Part):
    """One recorded decision: kept only with its phases, steps and action. Read as the state machine
    always has: an unreadable time or weight is None (a weight, as in records from before it was
    kept), any reason is text."""

    at: Annotated[Moment | None, LENIENT] = None
    from_phase: Annotated[Phase, Field(strict=False)]
    to_phase: Annotated[Phase, Field(strict=False)]
    from_step: Index
    to_step: Index
    action: Annotated[Action, Field(strict=False)]
    reason: Annotated[str, BeforeValidator(str)] = ""
    canary_weight: Annotated[Weight | None, LENIENT] = None

    @model_serializer(mode="wrap")
    def _without_missing_weight(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        out: dict[str, Any] = handler(self)
        if self.canary_weight is None:
            del out["canaryWeight"]
        return out


class WeightEntry(Part):
    """The canary weight in force from ``at`` on."""

    at: Annotated[Moment | None, LENIENT] = None
    canary_weight: Annotated[Weight | None, LENIENT] = None


class AnalysisEntry(Part):
    """One look's numbers (the report's e-value and estimate paths)."""

    at: Annotated[Moment | None, LENIENT] = None
    step: Annotated[Index | None, LENIENT] = None
    canary_weight: Annotated[Weight | None, LENIENT] = None
    metrics: Annotated[list[MetricStatus], _each(MetricStatus)] = Field(default_factory=list)


class DistributionEntry(Part):
    """Both versions' cumulative latency bucket counts at a decision; ``edges`` without the +Inf bucket."""

    at: Annotated[Moment | None, LENIENT] = None
    step: Annotated[Index | None, LENIENT] = None
    action: Annotated[Annotated[Action, Field(strict=False)] | None, LENIENT] = None
    metric: Annotated[str | None, LENIENT] = None
    edges: Annotated[list[Real] | None, LENIENT] = None
    stable: Annotated[list[int] | None, LENIENT] = None
    canary: Annotated[list[int] | None, LENIENT] = None


class Condition(Part):
    """A Kubernetes-style condition (Progressing, Paused, Succeeded, Failed)."""

    type: Annotated[str | None, LENIENT] = None
    status: Annotated[str | None, LENIENT] = None
    reason: Annotated[str | None, LENIENT] = None
    message: Annotated[str | None, LENIENT] = None
    last_transition_time: Annotated[Moment | None, LENIENT] = None


class RolloutStatus(Part):
    """The status subresource as stored: where the rollout is, the latest evidence and its logs."""

    phase: Annotated[Annotated[Phase, Field(strict=False)] | None, LENIENT] = None
    current_step: Annotated[Index | None, LENIENT] = None
    canary_weight: Annotated[Weight | None, LENIENT] = None
    mirror_percent: Annotated[Real | None, LENIENT] = None
    step_started_at: Annotated[Moment | None, LENIENT] = None
    canary_revision: Annotated[str | None, LENIENT] = None
    exposure_revision: Annotated[str | None, LENIENT] = None
    message: Annotated[str | None, LENIENT] = None
    observed_generation: Annotated[int | None, LENIENT] = None
    last_analysis_at: Annotated[Moment | None, LENIENT] = None
    last_command_id: Annotated[str | None, LENIENT] = None
    metrics: Annotated[list[MetricStatus], _each(MetricStatus)] = Field(default_factory=list)
    history: Annotated[list[StoredTransition], _each(StoredTransition)] = Field(default_factory=list)
    weights: Annotated[list[WeightEntry], _each(WeightEntry)] = Field(default_factory=list)
    analyses: Annotated[list[AnalysisEntry], _each(AnalysisEntry)] = Field(default_factory=list)
    distributions: Annotated[list[DistributionEntry], _each(DistributionEntry)] = Field(default_factory=list)
    conditions: Annotated[list[Condition], _each(Condition)] = Field(default_factory=list)

    @classmethod
    def read(cls, raw: object) -> RolloutStatus:
        """The status as stored, read leniently: never raises, keeps what it can read (see the module)."""
        if not isinstance(raw, Mapping):
            return cls()
        known = {key: raw[key] for key in _WIRE_NAMES if key in raw}
        return cls.model_validate(known, context=_READING)

    @model_serializer(mode="wrap")
    def _without_none(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """A top-level None is left out of the stored JSON (a nested one is written as null)."""
        return {key: value for key, value in handler(self).items() if value is not None}


_WIRE_NAMES = tuple(field.alias or name for name, field in RolloutStatus.model_fields.items())


def read_metrics(raw: object) -> list[MetricStatus]:
    """Stored metric entries (a status's, or ``canarist analyze``'s document's), read as the status reads them."""
    return _entries(MetricStatus, raw, _READING)
