"""A run's eval scores as `report` shows them: counted from its records, per scorer,
overall and per slice value, with the bars of summary.json's `eval` section.

The records are the truth (a killed or running run has no summary.json, or a stale one);
the summary only names the row fields and the bars. Scorers are those of the summary, then
any other seen in the records' `score`, in first-seen order.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

from rich.table import Table
from rich.text import Text

from .scoreboard import Score, ScoreBoard

__all__ = ["EvalTally", "eval_table"]


class EvalTally:
    """Lines counted by what decides their scores: (slice, failed, marks as stored). An
    eval run has few such kinds (slices x scorer outcomes), so a line costs one counter
    increment; the boards are built from the kinds once, at the end. Scorers missing
    from a line's marks (one first seen later) are unscored for it, as ScoreBoard reads."""

    def __init__(self, summary_eval: Mapping[str, Any] | None) -> None:
        self._summary = summary_eval or {}
        self._kinds: Counter[tuple[str | None, bool, tuple[tuple[str, Any], ...] | None]]
        self._kinds = Counter()

    def add(self, score: object, slice_value: object, failed: bool) -> None:
        """One record's stored `score` and `slice`, as read (Record.score and
        Record.slice's rules: anything but an object, a string, is absent)."""
        marks = tuple(score.items()) if isinstance(score, dict) else None
        where = slice_value if isinstance(slice_value, str) else None
        try:
            self._kinds[where, failed, marks] += 1
        except TypeError:  # a mark no number could be (a list): unscored, like any such
            assert marks is not None
            self._kinds[where, failed, tuple((k, _hashable(v)) for k, v in marks)] += 1

    def _names(self) -> list[str]:
        """The summary's scorers, then those of the records in first-seen order."""
        scorers = self._summary.get("scorers")
        known = scorers if isinstance(scorers, dict) else ()
        names = dict.fromkeys(name for name in known if isinstance(name, str))
        for _, _, marks in self._kinds:
            names.update(dict.fromkeys(name for name, _ in marks or ()))
        return list(names)

    def section(self) -> dict[str, Any] | None:
        """The report's `eval`: summary.json's shape, figures from the records, each score
        with its `bar` and `below_bar`; `below_bar` lists the overall scores under their bar
        (what makes `run` exit 4); a slice's own `below_bar` is for reading only."""
        names = self._names()
        if not names:
            return None
        board = ScoreBoard(names)
        for (slice_value, failed, marks), lines in self._kinds.items():
            # A failed line is unscored whatever it holds (its marks are 0 by contract).
            board.add(None if failed or marks is None else dict(marks), slice_value, lines)
        bars = _bars(self._summary.get("fail_under"))
        scorers: dict[str, Any] = {}
        below: list[dict[str, Any]] = []
        for result in board.result().scorers:
            name, bar = result.scorer, bars.get(result.scorer)
            slices = {value: _score(score, bar) for value, score in result.slices}
            scorers[name] = {**_score(result.overall, bar), "slices": slices}
            if scorers[name]["below_bar"]:
                below.append({"scorer": name, "slice": None, "score": result.overall.value})
                below[-1]["bar"] = bar
        return {
            "expected": _text(self._summary.get("expected")),
            "slice": _text(self._summary.get("slice")),
            "scorers": scorers,
            "fail_under": bars or None,
            "below_bar": below,
        }


def _hashable(value: object) -> object:
    return value if value is None or isinstance(value, int | float | str) else None


def _score(score: Score, bar: float | None) -> dict[str, Any]:
    below = bar is not None and score.below(bar)
    return {**score.to_json(), "bar": bar, "below_bar": below}


def _bars(value: object) -> dict[str, float]:
    """summary.json's `fail_under` ({scorer: bar}), its entries checked: it is a file."""
    if not isinstance(value, dict):
        return {}
    return {
        name: float(bar)
        for name, bar in value.items()
        if isinstance(name, str) and type(bar) in (int, float) and 0 <= bar <= 1
    }


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def eval_table(section: Mapping[str, Any]) -> Table:
    """Per scorer its overall score, then each slice's, with interval, passed/count,
    unscored and bar (`scored` is left out: it is count - unscored)."""
    by = f" by {section['slice']}" if section["slice"] else ""
    table = Table(
        title=Text(f"eval scores{by} (from the records)"),
        caption="* under its bar (a scorer's whole score under it makes `run` exit 4)"
        if section["fail_under"]
        else None,
    )
    table.add_column("scorer", overflow="fold")
    table.add_column("slice", overflow="fold")
    for heading in ("score", "95 % CI", "passed", "unscored", "bar"):
        table.add_column(heading, justify="right", no_wrap=True)
    for name, entry in section["scorers"].items():
        table.add_row(Text(name), "(all)", *_cells(entry), style="bold")
        for value, score in entry["slices"].items():
            table.add_row("", Text(value), *_cells(score))
    return table


def _cells(entry: Mapping[str, Any]) -> tuple[str, ...]:
    score, (low, high), bar = entry["score"], entry["ci95"], entry["bar"]
    shown_bar = "" if bar is None else f"{bar:g}" + ("*" if entry["below_bar"] else "")
    return (
        "-" if score is None else f"{score:.3f}",
        f"{low:.2f}-{high:.2f}",
        f"{entry['passed']}/{entry['count']}",
        str(entry["unscored"]),
        shown_bar,
    )
