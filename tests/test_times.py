"""The one time parser: what canarist writes it reads back exactly, and nothing else raises."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given
from hypothesis import strategies as st

from controller.api.times import MAX_TIME_LENGTH, parse_time, parse_timestamp, rfc3339, timestamp

MOMENTS = st.floats(min_value=0, max_value=4_102_444_800, allow_nan=False)  # 1970 .. 2100


@given(MOMENTS)
def test_what_is_written_is_read_back(seconds: float) -> None:
    whole = parse_time(timestamp(seconds))  # to the second (after rounding to the microsecond)
    assert whole is not None and whole == int(whole) and -1e-6 < seconds - whole < 1
    precise = parse_time(rfc3339(seconds))
    assert precise is not None and abs(precise - seconds) < 1e-6


@given(st.datetimes(timezones=st.just(UTC)), st.integers(-14 * 60, 14 * 60))
def test_an_offset_is_honoured_and_a_missing_one_is_refused_unless_asked(moment: datetime, minutes: int) -> None:
    shifted = moment.astimezone(timezone(timedelta(minutes=minutes)))
    assert parse_time(shifted.isoformat()) == moment.timestamp()
    naive = moment.replace(tzinfo=None).isoformat()
    assert parse_time(naive) is None
    assert parse_time(naive, naive_as_utc=True) == moment.timestamp()
    assert parse_time(moment.replace(tzinfo=None), naive_as_utc=True) == moment.timestamp()  # as YAML loads one


@given(st.one_of(st.text(), st.integers(), st.floats(), st.none(), st.binary(), st.lists(st.text())))
def test_anything_else_is_unreadable_never_an_exception(value: object) -> None:
    parsed = parse_time(value, naive_as_utc=True)
    assert parsed is None or isinstance(value, str)
    assert parse_timestamp(value, -1.0) == (-1.0 if parsed is None else parsed)


def test_a_time_longer_than_any_rfc3339_time_is_not_one() -> None:
    text = "2026-12-03T16:00:00" + "0" * MAX_TIME_LENGTH + "Z"
    assert parse_time(text) is None
