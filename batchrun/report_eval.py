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

from .records import Record
from .scoreboard import Score, ScoreBoard

__all__ = ["EvalTally", "eval_table"]


class EvalTally:
    """One `ScoreBoard` per scorer, fed record by record. A scorer first seen after some
    lines starts with those lines unscored, as `ScoreBoard.add` counts a missing mark."""

    def __init__(self, summary_eval: Mapping[str, Any] | None) -> None:
        self._summary = summary_eval or {}
        self._boards: dict[str, ScoreBoard] = {}
        self._lines: Counter[str | None] = Counter()  # lines so far, by slice value
        scorers = self._summary.get("scorers")
        for name in scorers if isinstance(scorers, dict) else ():
            if isinstance(name, str):
                self._boards[name] = ScoreBoard([name])

    def add(self, record: Record) -> None:
        scores, slice_value = record.score, record.slice
        if scores is not None:
            for name in scores:
                if name not in self._boards:
                    self._start(name)
        # A failed line is unscored whatever it holds (its marks are 0 by contract); a
        # record with no valid status is failed, as summary.Totals counts it.
        marks = scores if record.status == "ok" else None
        for board in self._boards.values():
            board.add(marks, slice_value)
        self._lines[slice_value] += 1

    def _start(self, name: str) -> None:
        board = self._boards[name] = ScoreBoard([name])
        for slice_value, lines in self._lines.items():
            for _ in range(lines):
                board.add(None, slice_value)

    def section(self) -> dict[str, Any] | None:
        """The report's `eval`: summary.json's shape, figures from the records, each score
        with its `bar` and `below_bar`; `below_bar` lists the overall scores under their bar
        (what makes `run` exit 4); a slice's own `below_bar` is for reading only."""
        if not self._boards:
            return None
        bars = _bars(self._summary.get("fail_under"))
        scorers: dict[str, Any] = {}
        below: list[dict[str, Any]] = []
        for name, board in self._boards.items():
            (result,) = board.result().scorers
            bar = bars.get(name)
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
