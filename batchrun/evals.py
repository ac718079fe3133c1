"""An eval job: its `[eval]` table (`EvalSpec`), what each row adds to its line (the
expected answer and slice, an `Expectation` that scores the reply into the record's
`score`), and the summary's `eval` section with the `fail_under` verdict.

Scores are made when the record is made, so they are in the journal with it: a killed and
resumed run scores every line once, and a report of a running run reads them as they come.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError, InvalidInput
from .scoreboard import EvalResult, FailUnder, ScoreBoard, slice_key
from .scoring import Scorer, parse_scorers, score_output

__all__ = ["EVAL_KEYS", "EvalSpec", "EvalTableError", "Expectation", "eval_section", "parse_eval"]

EVAL_KEYS = ("expected", "scorers", "slice", "fail_under")


@dataclass(frozen=True, slots=True)
class Expectation:
    """One line's side of the eval: what its row expects, and its slice value."""

    scorers: tuple[Scorer, ...]
    expected: object
    slice: str | None

    def score(self, output: str | None, parsed: object) -> dict[str, int]:
        """The record's `score` for a reply whose text is `output` (None: no reply)."""
        return score_output(self.scorers, output, parsed, self.expected)

    def zeros(self) -> dict[str, int]:
        """A failed line's `score`: 0 for every scorer (the summary counts it unscored)."""
        return dict.fromkeys((scorer.name for scorer in self.scorers), 0)


@dataclass(frozen=True)
class EvalSpec:
    """A checked `[eval]` table."""

    expected: str  # the row field holding the expected answer
    scorers: tuple[Scorer, ...]
    slice: str | None  # the row field whose values are reported apart
    fail_under: FailUnder | None

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(scorer.name for scorer in self.scorers)

    def identity(self) -> dict[str, Any]:
        """What decides the records' scores (the resume manifest holds it): not the bar,
        which only judges them, so raising it and rerunning resumes."""
        return {"expected": self.expected, "scorers": self.names, "slice": self.slice}

    def expectation(self, row: Mapping[str, Any]) -> Expectation:
        """The row's expected answer and slice (a row without its slice field is in the
        slice `null`); `check` says whether it has an expected answer at all."""
        value = None if self.slice is None else slice_key(row.get(self.slice))
        return Expectation(self.scorers, row.get(self.expected), value)

    def check(self, row: Mapping[str, Any]) -> None:
        """InvalidInput when the row has no expected answer: nothing could score it, so
        it is not sent (null is an answer; a missing field is not)."""
        if self.expected not in row:
            reason = "missing from the row ([eval] expected names it)"
            raise InvalidInput(reason, field=self.expected)

    def unreadable(self) -> Expectation:
        """The eval side of a row that is not even an object: no answer, no slice."""
        return Expectation(self.scorers, None, None)

    def board(self) -> ScoreBoard:
        return ScoreBoard(self.names)


def parse_eval(table: Mapping[str, Any]) -> EvalSpec:
    """An `[eval]` table's values, checked; ConfigError naming the key otherwise. Unknown
    keys are the caller's to report (it knows their lines)."""
    expected = table.get("expected")
    if not isinstance(expected, str) or not expected:
        raise EvalTableError("expected", "must name the row field holding the expected answer")
    try:
        scorers = parse_scorers(table.get("scorers", ["exact"]))
    except ConfigError as exc:
        raise EvalTableError("scorers", str(exc)) from None
    where = table.get("slice")
    if where is not None and (not isinstance(where, str) or not where):
        raise EvalTableError("slice", f"must name a row field, got {where!r}")
    bar = None
    if "fail_under" in table:
        try:
            bar = FailUnder.parse(table["fail_under"], [s.name for s in scorers])
        except ConfigError as exc:
            raise EvalTableError("fail_under", str(exc)) from None
    return EvalSpec(expected, scorers, where, bar)


class EvalTableError(ConfigError):
    """A problem with one `[eval]` key."""

    def __init__(self, key: str, problem: str) -> None:
        self.key, self.problem = key, problem
        super().__init__(f"[eval] {key}: {problem}")


def eval_section(spec: EvalSpec, board: ScoreBoard, bar: FailUnder | None) -> dict[str, Any]:
    """summary.json's `eval`: the fields it reads, the scores per scorer and slice, the
    bar in force (`--fail-under` or the job's) and every overall score below it."""
    result: EvalResult = board.result()
    shortfalls = () if bar is None else result.shortfalls(bar)
    return {
        "expected": spec.expected,
        "slice": spec.slice,
        "scorers": result.to_json(),
        "fail_under": None if bar is None else _bars(bar, spec.names),
        "below_bar": [shortfall.to_json() for shortfall in shortfalls],
    }


def _bars(bar: FailUnder, names: Sequence[str]) -> dict[str, float]:
    return {name: limit for name in names if (limit := bar.bar(name)) is not None}
