"""The one window grid: what the reconcile and `analyze` each built by hand, now from one function."""

from __future__ import annotations

import itertools
import math

from hypothesis import given
from hypothesis import strategies as st

from controller.metrics.samples import window_ends

INTERVALS = st.integers(1, 3600).map(float)  # durations are whole seconds or more
MOMENTS = st.integers(0, 4_102_444_800).map(float) | st.floats(0, 4_102_444_800, allow_nan=False)


def reconcile_before(interval: float, now: float, start: float, most: int) -> list[float]:
    """The reconcile's grid as it was written before (the reference)."""
    last_end = math.floor(now / interval) * interval
    end = max(math.floor(start / interval) * interval + interval, last_end - (most - 1) * interval)
    ends = []
    while end <= last_end:
        ends.append(end)
        end += interval
    return ends


def analyze_before(interval: float, at: float, since: float) -> list[float]:
    """`canarist analyze`'s grid as it was written before (the reference)."""
    last_end = math.floor(at / interval) * interval
    count = max(1, math.floor(since / interval))
    return [last_end - (count - i - 1) * interval for i in range(count)]


@given(INTERVALS, MOMENTS, st.floats(0, 86_400 * 3), st.integers(1, 240))
def test_the_reconcile_grid_is_unchanged(interval: float, now: float, back: float, most: int) -> None:
    assert list(window_ends(interval, now, most=most, since=now - back)) == reconcile_before(
        interval, now, now - back, most
    )


@given(INTERVALS, MOMENTS, st.floats(0, 86_400))
def test_the_analyze_grid_is_unchanged(interval: float, at: float, since: float) -> None:
    most = max(1, math.floor(since / interval))
    assert list(window_ends(interval, at, most=most)) == analyze_before(interval, at, since)


@given(INTERVALS, MOMENTS, st.integers(1, 240))
def test_ends_are_on_the_grid_consecutive_and_never_in_the_future(interval: float, until: float, most: int) -> None:
    ends = window_ends(interval, until, most=most)
    assert 1 <= len(ends) <= most and ends[-1] <= until < ends[-1] + interval
    assert all(end % interval == 0 for end in ends)
    assert all(b - a == interval for a, b in itertools.pairwise(ends))
