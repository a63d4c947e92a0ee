"""Input validation: every refusal is a StatsInputError naming the field and the reason."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.stats import StatsInputError, count_regression_test, proportion_test, sample_ratio_test
from controller.stats.validation import as_counts, check_cumulative, check_edges, check_split, check_value_groups

counts = st.lists(st.integers(0, 10**6), min_size=1, max_size=10)


def test_error_carries_field_and_reason() -> None:
    with pytest.raises(StatsInputError) as info:
        as_counts([1, -3], name="errors")
    assert isinstance(info.value, ValueError)
    assert info.value.field == "errors"
    assert "counter reset" in info.value.reason
    assert str(info.value) == "errors: negative increment (counter reset?)"


@pytest.mark.parametrize(
    ("values", "reason"),
    [
        ([1, float("nan")], "NaN"),
        ([1, math.inf], "NaN or infinite"),
        ([1, -1], "counter reset"),
        ([1, 2.5], "integer"),
        ([], "no intervals"),
        ([[1, 2]], "1-dimensional"),
        (["a"], "numeric"),
        ([[1], [1, 2]], "numeric"),
        ([2.0**60], "too large"),
    ],
)
def test_counts_are_refused(values: object, reason: str) -> None:
    with pytest.raises(StatsInputError, match=reason):
        as_counts(values, name="x")


def test_integral_floats_are_counts() -> None:
    assert as_counts([1.0, 2.0, 0.0], name="x").tolist() == [1, 2, 0]


@settings(max_examples=200, deadline=None)
@given(trials=counts, data=st.data())
def test_any_valid_counts_give_finite_nonnegative_evidence(trials: list[int], data: st.DataObject) -> None:
    k = len(trials)
    succ = [data.draw(st.integers(0, n)) for n in trials]
    other = data.draw(st.lists(st.integers(0, 10**6), min_size=k, max_size=k))
    other_succ = [data.draw(st.integers(0, n)) for n in other]
    for res in (
        proportion_test(succ, trials, other_succ, other, margin=0.01),
        count_regression_test(succ, trials, other_succ, other),
    ):
        assert res.e_value >= 0 and res.e_value_noninferior >= 0
        assert not math.isnan(res.e_value) and not math.isnan(res.e_value_noninferior)


@settings(max_examples=200, deadline=None)
@given(trials=counts, j=st.integers(0, 9), extra=st.integers(1, 100))
def test_more_successes_than_trials_is_refused(trials: list[int], j: int, extra: int) -> None:
    j %= len(trials)
    succ = list(trials)
    succ[j] += extra
    with pytest.raises(StatsInputError, match="more successes than trials"):
        proportion_test(succ, trials, [0] * len(trials), trials, margin=0.0)


@settings(max_examples=200, deadline=None)
@given(values=st.lists(st.integers(-5, 5), min_size=1, max_size=10))
def test_a_negative_increment_anywhere_is_refused(values: list[int]) -> None:
    if min(values) >= 0:
        return
    with pytest.raises(StatsInputError, match="counter reset"):
        as_counts(values, name="x")


@settings(max_examples=200, deadline=None)
@given(bins=st.lists(st.integers(0, 1000), min_size=2, max_size=8), i=st.integers(0, 7), drop=st.integers(1, 50))
def test_decreasing_cumulative_buckets_are_refused(bins: list[int], i: int, drop: int) -> None:
    edges = check_edges([*range(1, len(bins)), math.inf])
    cum = np.cumsum(bins)
    check_cumulative(edges, [cum], name="h")  # the real thing passes
    i %= len(bins) - 1
    broken = cum.copy()
    broken[i] = broken[i + 1] + drop
    with pytest.raises(StatsInputError, match="decrease"):
        check_cumulative(edges, [broken], name="h")


@pytest.mark.parametrize(
    ("edges", "reason"),
    [
        ([1.0], "at least one finite"),
        ([1.0, 2.0], "must be \\+Inf"),
        ([1.0, 1.0, math.inf], "strictly increasing"),
        ([1.0, math.inf, math.inf], "finite except the last"),
        ([-math.inf, 1.0, math.inf], "finite except the last"),
    ],
)
def test_bucket_bounds(edges: list[float], reason: str) -> None:
    with pytest.raises(StatsInputError, match=reason):
        check_edges(edges)


def test_splits_and_groups() -> None:
    assert check_split([[95, 5]], name="s", intervals=1, arms=2).tolist() == [[0.95, 0.05]]
    with pytest.raises(StatsInputError, match="share > 0"):
        check_split([[100, 0]], name="s", intervals=1, arms=2)
    with pytest.raises(StatsInputError, match="shape"):
        sample_ratio_test([[1, 2]], [[1, 2, 3]])
    assert [g.tolist() for g in check_value_groups(np.array([[0.1, 0.2]]), name="g", lower=0, upper=1)] == [[0.1, 0.2]]
    with pytest.raises(StatsInputError, match="sequence"):
        check_value_groups("0.5", name="g", lower=0, upper=1)  # type: ignore[arg-type]


@pytest.mark.parametrize("alpha", [0, 1, -0.1, float("nan"), True, "0.05"])
def test_alpha_is_checked(alpha: object) -> None:
    with pytest.raises(StatsInputError) as info:
        proportion_test([1], [10], [1], [10], margin=0.0, alpha=alpha)  # type: ignore[arg-type]
    assert info.value.field == "alpha"
