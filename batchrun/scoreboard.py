"""Eval scores added up: per scorer, overall and per slice value, the share of lines that
passed with its 95 % Wilson interval, and the `fail_under` bar. Pure, fed one line at a
time; memory grows with scorers x slice values, never with lines.

A failed request (no output) counts as 0 and is reported apart: `count` = `scored` (lines
with an output, each 0 or 1) + `unscored` (failed requests). The score is passed / count.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import orjson

from .errors import ConfigError

__all__ = [
    "EvalResult",
    "FailUnder",
    "Interval",
    "Score",
    "ScoreBoard",
    "ScorerResult",
    "Shortfall",
    "slice_key",
    "wilson",
]

Z95 = 1.959963984540054  # the standard normal's 97.5th percentile


@dataclass(frozen=True, slots=True)
class Interval:
    low: float
    high: float


def wilson(passed: int, count: int, z: float = Z95) -> Interval:
    """The Wilson score interval of `passed` out of `count`; [0, 1] for no lines. Unlike
    p +- z*sqrt(p(1-p)/n), it stays inside [0, 1] and is not zero-width at 0/n or n/n."""
    if count <= 0:
        return Interval(0.0, 1.0)
    share, z2 = passed / count, z * z
    centre = (share + z2 / (2 * count)) / (1 + z2 / count)
    half = z * math.sqrt(share * (1 - share) / count + z2 / (4 * count * count)) / (1 + z2 / count)
    # Exact at the ends, and never past the share through rounding.
    low = 0.0 if passed <= 0 else min(centre - half, share)
    high = 1.0 if passed >= count else max(centre + half, share)
    return Interval(max(0.0, low), min(1.0, high))


@dataclass(frozen=True, slots=True)
class Score:
    """One scorer over a set of lines (all of them, or one slice value's)."""

    passed: int
    scored: int  # lines with an output, each scored 0 or 1
    unscored: int  # failed requests, counted as 0

    @property
    def count(self) -> int:
        return self.scored + self.unscored

    @property
    def value(self) -> float | None:
        """passed / count; None when there are no lines."""
        return self.passed / self.count if self.count else None

    @property
    def interval(self) -> Interval:
        return wilson(self.passed, self.count)

    def below(self, bar: float) -> bool:
        """Under the bar, compared exactly (8/10 is not under 0.8); no lines never are."""
        return self.count > 0 and Fraction(self.passed, self.count) < Fraction(repr(bar))

    def to_json(self) -> dict[str, Any]:
        interval = self.interval
        return {
            "score": self.value,
            "ci95": [interval.low, interval.high],
            "passed": self.passed,
            "count": self.count,
            "scored": self.scored,
            "unscored": self.unscored,
        }


@dataclass(frozen=True, slots=True)
class ScorerResult:
    scorer: str
    overall: Score
    slices: tuple[tuple[str, Score], ...]  # by slice value, sorted

    def to_json(self) -> dict[str, Any]:
        slices = {value: score.to_json() for value, score in self.slices}
        return {**self.overall.to_json(), "slices": slices}


@dataclass(frozen=True, slots=True)
class Shortfall:
    """A score under its bar: overall (`slice` None) or for one slice value."""

    scorer: str
    slice: str | None
    score: float
    bar: float

    def to_json(self) -> dict[str, Any]:
        return {"scorer": self.scorer, "slice": self.slice, "score": self.score, "bar": self.bar}


@dataclass(frozen=True, slots=True)
class FailUnder:
    """The `fail_under` bar: one number for every scorer, or one per scorer named."""

    default: float | None = None
    per_scorer: tuple[tuple[str, float], ...] = ()

    @classmethod
    def parse(cls, value: object, scorers: Sequence[str]) -> FailUnder:
        """From `--fail-under` or a job's `fail_under` (a number, or a table of scorer
        name -> number); ConfigError for a bar outside [0, 1] or an unknown scorer."""
        if isinstance(value, Mapping):
            unknown = sorted(str(name) for name in value if name not in scorers)
            if unknown:
                known = ", ".join(scorers)
                raise ConfigError(f"fail_under names no scorer: {', '.join(unknown)} ({known})")
            return cls(
                per_scorer=tuple((str(k), _bar(v, f"fail_under.{k}")) for k, v in value.items())
            )
        return cls(default=_bar(value, "fail_under"))

    def bar(self, scorer: str) -> float | None:
        return dict(self.per_scorer).get(scorer, self.default)


def _bar(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ConfigError(f"{where} must be a number from 0 to 1, not {value!r}")
    return float(value)


@dataclass(frozen=True, slots=True)
class EvalResult:
    scorers: tuple[ScorerResult, ...]

    def to_json(self) -> dict[str, Any]:
        """summary.json's `eval`: {scorer: {score, ci95, passed, count, scored, unscored,
        slices: {value: the same}}}."""
        return {result.scorer: result.to_json() for result in self.scorers}

    def shortfalls(self, bar: FailUnder, *, slices: bool = False) -> tuple[Shortfall, ...]:
        """Every overall score under its bar (at the bar passes), then, with `slices`,
        every slice under it too. Slices are off by default: a small hard slice under the
        run's bar would fail every night."""
        found = []
        for result in self.scorers:
            limit = bar.bar(result.scorer)
            if limit is None:
                continue
            scores = [(None, result.overall), *(result.slices if slices else ())]
            found += [
                Shortfall(result.scorer, value, score.value or 0.0, limit)
                for value, score in scores
                if score.below(limit)
            ]
        return tuple(found)


def slice_key(value: object) -> str:
    """A row's slice field as a summary key: a string as it is, any other JSON value its
    compact JSON text (3 -> "3", null -> "null")."""
    if isinstance(value, str):
        return value
    try:
        return orjson.dumps(value).decode()
    except orjson.JSONEncodeError:
        return repr(value)


class ScoreBoard:
    """Adds up lines' scores for a fixed list of scorers. `add` per line; `result` at any
    time (a running report reads a partial board)."""

    def __init__(self, scorers: Sequence[str]) -> None:
        self._scorers = tuple(scorers)
        # [passed, scored, unscored] per scorer, overall and per slice value.
        self._overall = {name: [0, 0, 0] for name in self._scorers}
        self._slices: dict[str, dict[str, list[int]]] = {}

    def add(
        self, scores: Mapping[str, object] | None, slice_value: str | None = None, lines: int = 1
    ) -> None:
        """One line (or `lines` lines scored alike): `scores` is its record's `score`
        ({scorer: 0 or 1}), None for a failed request. A scorer missing from it, or scored
        anything but the integer 0 or 1 (a stored record is read back, never trusted), is
        unscored for that line."""
        tallies = [self._overall]
        if slice_value is not None:
            tallies.append(self._slice(slice_value))
        for name in self._scorers:
            mark = _mark(scores.get(name) if scores is not None else None)
            for tally in tallies:
                counts = tally[name]
                if mark is None:
                    counts[2] += lines
                else:
                    counts[0] += mark * lines
                    counts[1] += lines

    def _slice(self, value: str) -> dict[str, list[int]]:
        tally = self._slices.get(value)
        if tally is None:
            tally = self._slices[value] = {name: [0, 0, 0] for name in self._scorers}
        return tally

    def result(self) -> EvalResult:
        return EvalResult(tuple(map(self._result, self._scorers)))

    def _result(self, name: str) -> ScorerResult:
        slices = tuple((value, _score(self._slices[value][name])) for value in sorted(self._slices))
        return ScorerResult(name, _score(self._overall[name]), slices)


def _mark(value: object) -> int | None:
    """0 or 1; None for anything else, booleans included (JSON true is no score)."""
    return value if type(value) is int and 0 <= value <= 1 else None


def _score(counts: list[int]) -> Score:
    passed, scored, unscored = counts
    return Score(passed, scored, unscored)
