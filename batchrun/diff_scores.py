"""Eval scores compared between two runs: each run's score per scorer and per slice value
(scoreboard.ScoreBoard over its records, never its summary.json, which a killed run may
lack), B - A with both intervals, the lines that went from pass to fail and back, and
which drops count as regressions.

What is compared: the scorers both runs have (the others are listed, with their score in
the run that has them). A line passes a scorer when its request succeeded and its record
marks that scorer with the integer 1; a failed line, or a missing or malformed mark,
counts as a fail, as the score counts it. So over the lines both runs have, B's passes
minus A's are exactly fail->pass minus pass->fail.

A regression is an overall score or a slice's score of a scorer both runs have that is
lower in B than in A by more than the tolerance, compared exactly (8/10 -> 7/10 is a drop
of exactly 0.1). A score can only drop from one to another: a scorer or a slice value one
run lacks, or has no line of, is listed as not compared and never a regression (the lines
that vanished show in the diff's only-in-A count).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from .diff_read import NO_SCORE, Key, Line, RunFigures, ScoreMarks
from .errors import ConfigError
from .scoreboard import EvalResult, Score, ScoreBoard, ScorerResult

__all__ = [
    "Drop",
    "FlipCounter",
    "Flips",
    "ScoreDiff",
    "check_tolerance",
    "common_scorers",
    "run_scores",
]

EXAMPLES = 5  # lines shown per scorer and direction


def run_scores(
    figures: RunFigures, marks: ScoreMarks, summary_names: Sequence[str] = ()
) -> EvalResult | None:
    """The run's scores from its records' tallies; None when nothing names a scorer.
    `summary_names` (from summary.json) adds scorers no record shows yet (a run killed
    before its first line)."""
    names = figures.scorer_names(marks)
    names += [name for name in summary_names if name not in names]
    if not names:
        return None
    board = ScoreBoard(names)
    for (slice_value, key, ok), lines in figures.scores.items():
        # A failed request is unscored, whatever its record says (every scorer at 0).
        scores = dict(marks.known[key][0]) if ok and key != NO_SCORE else None
        board.add(scores, slice_value, lines=lines)
    return board.result()


@dataclass
class Flips:
    """Lines of one scorer that went one way (pass -> fail or fail -> pass): how many, and
    the first few, as (key, slice, where in A, where in B) until their outputs are read."""

    count: int = 0
    first: list[tuple[Key, str | None, int, int]] = field(default_factory=list)

    def add(self, key: Key, a: Line, b: Line) -> None:
        self.count += 1
        if len(self.first) < EXAMPLES:
            self.first.append((key, b[6] if b[6] is not None else a[6], a[7], b[7]))


@dataclass
class FlipCounter:
    """Every scorer's flips, noted while the join runs; scorers only one run has are
    dropped when the diff is made."""

    pass_to_fail: dict[str, Flips] = field(default_factory=dict)
    fail_to_pass: dict[str, Flips] = field(default_factory=dict)

    def add(self, key: Key, a: Line, b: Line) -> None:
        for name in a[5] - b[5]:
            _flips(self.pass_to_fail, name).add(key, a, b)
        for name in b[5] - a[5]:
            _flips(self.fail_to_pass, name).add(key, a, b)


def _flips(found: dict[str, Flips], name: str) -> Flips:
    flips = found.get(name)
    if flips is None:
        flips = found[name] = Flips()
    return flips


@dataclass(frozen=True)
class Drop:
    """A score lower in B than in A by more than the tolerance."""

    scorer: str
    slice: str | None  # None: the scorer's overall score
    a: float
    b: float

    def to_json(self) -> dict[str, Any]:
        drop = self.a - self.b
        return {"scorer": self.scorer, "slice": self.slice, "a": self.a, "b": self.b, "drop": drop}


def check_tolerance(tolerance: float) -> Fraction:
    """The tolerance as an exact fraction; ConfigError outside [0, 1] (NaN included)."""
    if not 0 <= tolerance <= 1:
        raise ConfigError(f"the tolerance must be a number from 0 to 1, not {tolerance!r}")
    return Fraction(repr(float(tolerance)))


def common_scorers(a: EvalResult | None, b: EvalResult | None) -> list[str]:
    """The scorers both runs have, in A's order."""
    if a is None or b is None:
        return []
    names_b = {result.scorer for result in b.scorers}
    return [result.scorer for result in a.scorers if result.scorer in names_b]


@dataclass(frozen=True)
class ScoreDiff:
    """Both runs' scores and the flips between them."""

    a: EvalResult | None
    b: EvalResult | None
    flips: FlipCounter
    # (scorer, direction) -> the first flipped lines with both outputs previewed
    examples: dict[tuple[str, str], list[dict[str, Any]]]

    @property
    def common(self) -> list[str]:
        return common_scorers(self.a, self.b)

    def to_json(self) -> dict[str, Any] | None:
        """None when neither run is an eval run."""
        if self.a is None and self.b is None:
            return None
        common = self.common
        return {
            "scorers": common,
            "only_in_a": _others(self.a, common),
            "only_in_b": _others(self.b, common),
            "by_scorer": {name: self._scorer(name) for name in common},
        }

    def _scorer(self, name: str) -> dict[str, Any]:
        a, b = _result(self.a, name), _result(self.b, name)
        slices_a, slices_b = dict(a.slices), dict(b.slices)
        slices = {
            value: _pair(slices_a.get(value), slices_b.get(value))
            for value in sorted(slices_a.keys() | slices_b.keys())
        }
        return {
            **_pair(a.overall, b.overall),
            "pass_to_fail": self._flipped(name, "pass_to_fail"),
            "fail_to_pass": self._flipped(name, "fail_to_pass"),
            "slices": slices,
        }

    def _flipped(self, name: str, direction: str) -> dict[str, Any]:
        found: dict[str, Flips] = getattr(self.flips, direction)
        count = found[name].count if name in found else 0
        return {"count": count, "lines": self.examples.get((name, direction), [])}

    def regressions(self, tolerance: float) -> tuple[list[Drop], list[dict[str, Any]]]:
        """The drops beyond `tolerance`, and what could not be compared (see the module's
        docstring), each as {scorer, slice, reason}."""
        bar = check_tolerance(tolerance)
        drops: list[Drop] = []
        skipped: list[dict[str, Any]] = []
        common = self.common
        for run, result in (("A", self.a), ("B", self.b)):
            for name in _others(result, common):
                skipped.append({"scorer": name, "slice": None, "reason": f"only in {run}"})
        for name in common:
            a, b = _result(self.a, name), _result(self.b, name)
            slices_a, slices_b = dict(a.slices), dict(b.slices)
            pairs: list[tuple[str | None, Score | None, Score | None]]
            pairs = [(None, a.overall, b.overall)]
            values = sorted(slices_a.keys() | slices_b.keys())
            pairs += [(v, slices_a.get(v), slices_b.get(v)) for v in values]
            for value, score_a, score_b in pairs:
                reason = _incomparable(score_a, score_b)
                if reason is not None:
                    skipped.append({"scorer": name, "slice": value, "reason": reason})
                    continue
                assert score_a is not None and score_b is not None
                drop = Fraction(score_a.passed, score_a.count) - Fraction(
                    score_b.passed, score_b.count
                )
                if drop > bar:
                    drops.append(Drop(name, value, score_a.value or 0.0, score_b.value or 0.0))
        return drops, skipped


def _incomparable(a: Score | None, b: Score | None) -> str | None:
    if a is None:
        return "only in B"
    if b is None:
        return "only in A"
    if a.count == 0 or b.count == 0:
        return f"no line in {'A' if a.count == 0 else 'B'}"
    return None


def _result(result: EvalResult | None, name: str) -> ScorerResult:
    assert result is not None
    return next(r for r in result.scorers if r.scorer == name)


def _pair(a: Score | None, b: Score | None) -> dict[str, Any]:
    """A score in both runs and B - A (None unless both have lines)."""
    delta = None
    if a is not None and b is not None and a.value is not None and b.value is not None:
        delta = b.value - a.value
    return {
        "a": None if a is None else a.to_json(),
        "b": None if b is None else b.to_json(),
        "delta": delta,
    }


def _others(result: EvalResult | None, common: list[str]) -> dict[str, Any]:
    """A run's scorers the other lacks, with their overall score."""
    if result is None:
        return {}
    return {r.scorer: r.overall.to_json() for r in result.scorers if r.scorer not in common}
