"""Times as the API writes them (RFC 3339, UTC, with a Z) and the one parser that reads them back.

Every stored time (status, history, command annotations) and every ``--at`` goes through here, so a
time means the same to the reconcile, the CLI, the report and the demo.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime

#: Longer than any RFC 3339 time (35 characters with nanoseconds and an offset): not one.
MAX_TIME_LENGTH = 40


#: Distinct times remembered by :func:`timestamp` and the text parser: a status is read and written
#: again on every reconcile with the same few hundred log times, each converted once, not each time.
TIMES_REMEMBERED = 8192


@functools.lru_cache(maxsize=TIMES_REMEMBERED)
def timestamp(seconds: float) -> str:
    """RFC 3339 in UTC with a Z, to the second, as Kubernetes writes times."""
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def rfc3339(seconds: float) -> str:
    """A moment in UTC as RFC 3339 with a Z, to the microsecond when it has a fraction."""
    moment = datetime.fromtimestamp(seconds, UTC)
    spec = "seconds" if moment.microsecond == 0 else "microseconds"
    return moment.isoformat(timespec=spec).replace("+00:00", "Z")


def parse_time(value: object, *, naive_as_utc: bool = False) -> float | None:
    """Unix seconds of an RFC 3339 time (or of a datetime, as YAML loads one); None when absent or
    unreadable. A time without an offset is read as UTC with ``naive_as_utc`` (stored times canarist
    wrote), else refused (a command's issue time decides whether it may act: no guessing)."""
    if isinstance(value, str):
        return _parse_text(value, naive_as_utc) if 0 < len(value) <= MAX_TIME_LENGTH else None
    return _seconds(value, naive_as_utc=naive_as_utc) if isinstance(value, datetime) else None


@functools.lru_cache(maxsize=TIMES_REMEMBERED)
def _parse_text(value: str, naive_as_utc: bool) -> float | None:
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    return _seconds(moment, naive_as_utc=naive_as_utc)


def _seconds(moment: datetime, *, naive_as_utc: bool) -> float | None:
    if moment.tzinfo is None:
        if not naive_as_utc:
            return None
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def stored_time(value: object) -> float | None:
    """A time canarist stored, as Unix seconds (without an offset: UTC); None when unreadable."""
    return parse_time(value, naive_as_utc=True)


def parse_timestamp(value: object, default: float = 0.0) -> float:
    """:func:`stored_time`, or ``default`` when unreadable."""
    found = stored_time(value)
    return default if found is None else found
