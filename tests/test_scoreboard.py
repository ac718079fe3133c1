"""Eval aggregation (scoreboard.py): Wilson intervals against hand-computed figures, scores
per scorer and slice with failed requests counted apart, and the `fail_under` bar."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batchrun import ConfigError
from batchrun.scoreboard import (
    EvalResult,
    FailUnder,
    Interval,
    Score,
    ScoreBoard,
    Shortfall,
    slice_key,
    wilson,
)

Z2 = 1.959963984540054**2  # z squared, 3.8415: the closed forms below are in it


def rounded(interval: Interval, places: int = 4) -> tuple[float, float]:
    return round(interval.low, places), round(interval.high, places)


# --- Wilson intervals -------------------------------------------------------------------------


def test_wilson_8_of_10_by_hand() -> None:
    # p = 0.8, n = 10, z^2 = 3.8415: centre (0.8 + 0.19207) / 1.38415 = 0.71674,
    # half 1.96 * sqrt(0.016 + 0.0096037) / 1.38415 = 0.22658.
    assert rounded(wilson(8, 10)) == (0.4902, 0.9433)


@pytest.mark.parametrize(
    ("passed", "count", "low", "high"),
    [
        (0, 10, 0.0, round(Z2 / (10 + Z2), 4)),  # 0/n: [0, z^2 / (n + z^2)] = [0, 0.2775]
        (10, 10, round(10 / (10 + Z2), 4), 1.0),  # n/n: [n / (n + z^2), 1] = [0.7225, 1]
        (1, 1, 0.2065, 1.0),  # 1 / 4.8415
        (0, 1, 0.0, 0.7935),
        (5, 10, 0.2366, 0.7634),  # symmetric around 1/2
        (50, 100, 0.4038, 0.5962),
        (1, 3, 0.0615, 0.7923),
    ],
)
def test_wilson_against_hand_computed_figures(
    passed: int, count: int, low: float, high: float
) -> None:
    assert rounded(wilson(passed, count)) == (low, high)


def test_wilson_edges_are_exact() -> None:
    assert wilson(0, 0) == Interval(0.0, 1.0)  # no lines: anything is possible
    assert wilson(0, 7).low == 0.0
    assert wilson(7, 7).high == 1.0
    assert wilson(0, 10**9).high > 0.0
    assert wilson(10**9, 10**9).low < 1.0


@settings(max_examples=500, deadline=None)
@given(st.integers(0, 10**12).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))))
def test_wilson_holds_the_estimate_within_0_and_1(case: tuple[int, int]) -> None:
    passed, count = case
    interval = wilson(passed, count)
    assert 0.0 <= interval.low <= interval.high <= 1.0
    if count:
        assert interval.low <= passed / count <= interval.high


# --- the board --------------------------------------------------------------------------------


def test_a_failed_request_counts_as_zero_and_is_reported_apart() -> None:
    board = ScoreBoard(["exact"])
    for _ in range(8):
        board.add({"exact": 1})
    board.add({"exact": 0})
    board.add(None)  # the failed request
    (result,) = board.result().scorers
    assert result.overall == Score(passed=8, scored=9, unscored=1)
    assert result.overall.count == 10
    assert result.overall.value == 0.8
    assert rounded(result.overall.interval) == (0.4902, 0.9433)


def test_scores_per_scorer_and_per_slice_by_hand() -> None:
    board = ScoreBoard(["exact", "numeric:0.5"])
    lines: list[tuple[dict[str, Any] | None, str | None]] = [
        ({"exact": 1, "numeric:0.5": 1}, "easy"),
        ({"exact": 1, "numeric:0.5": 0}, "easy"),
        ({"exact": 0, "numeric:0.5": 1}, "hard"),
        (None, "hard"),
        ({"exact": 1, "numeric:0.5": 1}, None),  # a line without a slice value
    ]
    for scores, value in lines:
        board.add(scores, value)
    summary = board.result().to_json()
    assert list(summary) == ["exact", "numeric:0.5"]
    exact = summary["exact"]
    assert {k: exact[k] for k in ("score", "passed", "count", "scored", "unscored")} == {
        "score": 3 / 5,
        "passed": 3,
        "count": 5,
        "scored": 4,
        "unscored": 1,
    }
    assert exact["ci95"] == pytest.approx([0.2307, 0.8824], abs=1e-4)
    assert list(exact["slices"]) == ["easy", "hard"]  # sorted
    assert exact["slices"]["easy"] == {
        "score": 1.0,
        "ci95": [pytest.approx(2 / (2 + Z2)), 1.0],
        "passed": 2,
        "count": 2,
        "scored": 2,
        "unscored": 0,
    }
    assert exact["slices"]["hard"]["score"] == 0.0
    assert exact["slices"]["hard"]["unscored"] == 1
    numeric = summary["numeric:0.5"]
    assert (numeric["passed"], numeric["count"]) == (3, 5)
    assert numeric["slices"]["easy"]["score"] == 0.5
    assert numeric["slices"]["hard"]["score"] == 0.5


def test_a_scorer_missing_or_scored_wrongly_is_unscored_for_that_line() -> None:
    board = ScoreBoard(["exact", "contains"])
    board.add({"exact": 1})  # contains missing
    board.add({"exact": True, "contains": 2})  # a boolean, an out-of-range integer
    board.add({"exact": "1", "contains": 1.0})  # a string, a float
    board.add({"exact": 0, "contains": 1, "unknown": 1})  # extra names are ignored
    exact, contains = board.result().scorers
    assert exact.overall == Score(passed=1, scored=2, unscored=2)
    assert contains.overall == Score(passed=1, scored=1, unscored=3)


def test_an_empty_board() -> None:
    result = ScoreBoard(["exact"]).result()
    assert result.to_json() == {
        "exact": {
            "score": None,
            "ci95": [0.0, 1.0],
            "passed": 0,
            "count": 0,
            "scored": 0,
            "unscored": 0,
            "slices": {},
        }
    }
    assert result.shortfalls(FailUnder(default=1.0)) == ()  # nothing to judge


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.none()
            | st.dictionaries(st.sampled_from(["a", "b"]), st.integers(-1, 2) | st.booleans()),
            st.sampled_from(["x", "y", "z"]),
        ),
        max_size=40,
    )
)
def test_slices_add_up_to_the_whole(lines: list[tuple[dict[str, Any] | None, str]]) -> None:
    board = ScoreBoard(["a", "b"])
    for scores, value in lines:
        board.add(scores, value)
    for result in board.result().scorers:
        overall = result.overall
        assert overall.count == len(lines)
        assert 0 <= overall.passed <= overall.scored
        parts = [score for _, score in result.slices]
        assert sum(s.passed for s in parts) == overall.passed
        assert sum(s.scored for s in parts) == overall.scored
        assert sum(s.unscored for s in parts) == overall.unscored


def test_slice_key() -> None:
    assert slice_key("geography") == "geography"
    assert slice_key(3) == "3"
    assert slice_key(None) == "null"
    assert slice_key(True) == "true"
    assert slice_key(["a", 1]) == '["a",1]'


# --- fail_under -------------------------------------------------------------------------------


def board_of(lines: dict[str, list[tuple[int, str]]]) -> EvalResult:
    """{scorer: [(0 or 1, slice value), ...]}, every scorer over the same lines."""
    names = list(lines)
    board = ScoreBoard(names)
    for marks in zip(*lines.values(), strict=True):
        board.add({name: mark for name, (mark, _) in zip(names, marks, strict=True)}, marks[0][1])
    return board.result()


EIGHT_OF_TEN = [(1, "easy")] * 6 + [(1, "hard")] * 2 + [(0, "hard")] * 2
SIX_OF_TEN = [(1, "easy")] * 6 + [(0, "hard")] * 4


def test_at_the_bar_passes_and_under_it_fails() -> None:
    result = board_of({"exact": EIGHT_OF_TEN, "contains": SIX_OF_TEN})
    assert result.shortfalls(FailUnder(default=0.6)) == ()
    assert result.shortfalls(FailUnder(default=0.8)) == (Shortfall("contains", None, 0.6, 0.8),)
    assert result.shortfalls(FailUnder(default=0.81)) == (
        Shortfall("exact", None, 0.8, 0.81),
        Shortfall("contains", None, 0.6, 0.81),
    )
    assert result.shortfalls(FailUnder(default=0.7))[0].to_json() == {
        "scorer": "contains",
        "slice": None,
        "score": 0.6,
        "bar": 0.7,
    }


def test_at_the_bar_is_exact_for_fractions_floats_cannot_hold() -> None:
    result = board_of({"exact": [(1, "s")] * 7 + [(0, "s")] * 3})  # 7/10
    assert result.shortfalls(FailUnder(default=0.7)) == ()
    assert len(result.shortfalls(FailUnder(default=0.7000001))) == 1
    thirds = board_of({"exact": [(1, "s"), (0, "s"), (0, "s")]})  # 1/3
    assert thirds.shortfalls(FailUnder(default=0.3333)) == ()
    assert len(thirds.shortfalls(FailUnder(default=0.33334))) == 1


def test_a_bar_per_scorer() -> None:
    result = board_of({"exact": EIGHT_OF_TEN, "contains": SIX_OF_TEN})
    bar = FailUnder.parse({"exact": 0.9}, ["exact", "contains"])
    assert bar.bar("exact") == 0.9 and bar.bar("contains") is None
    assert result.shortfalls(bar) == (Shortfall("exact", None, 0.8, 0.9),)


def test_slices_under_the_bar_are_listed_on_request() -> None:
    result = board_of({"exact": EIGHT_OF_TEN})
    bar = FailUnder(default=0.8)
    assert result.shortfalls(bar) == ()  # overall 0.8 is at the bar
    assert result.shortfalls(bar, slices=True) == (Shortfall("exact", "hard", 0.5, 0.8),)


def test_fail_under_from_a_flag_or_a_job_file() -> None:
    scorers = ["exact", "numeric:0.5"]
    assert FailUnder.parse(0.8, scorers) == FailUnder(default=0.8)
    assert FailUnder.parse(1, scorers) == FailUnder(default=1.0)
    per = FailUnder.parse({"numeric:0.5": 0, "exact": 0.5}, scorers)
    assert per.bar("numeric:0.5") == 0.0 and per.bar("exact") == 0.5


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (1.5, "fail_under must be a number from 0 to 1, not 1.5"),
        (-0.1, "fail_under must be a number from 0 to 1"),
        (float("nan"), "fail_under must be a number from 0 to 1"),
        (True, "fail_under must be a number from 0 to 1, not True"),
        ("0.8", "fail_under must be a number from 0 to 1, not '0.8'"),
        (None, "fail_under must be a number"),
        ({"exact": 2}, "fail_under.exact must be a number from 0 to 1, not 2"),
        ({"exakt": 0.5}, "fail_under names no scorer: exakt (exact, contains)"),
    ],
)
def test_bad_fail_under_is_a_config_error(value: object, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        FailUnder.parse(value, ["exact", "contains"])
    assert message in str(caught.value)
