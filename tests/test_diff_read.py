"""diff_read.py reads decoded records directly, for speed, instead of through `Record`
and summary.py's `Totals.add`: on any records, hand-edited or hostile, its figures and
scores must equal what those give (the same rules, written once more inline)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import orjson
from hostile import ODD, RECORD
from hypothesis import example, given, settings
from hypothesis import strategies as st
from jsonl import write_jsonl

from batchrun.diff_read import RunFigures, ScoreMarks, read_lines
from batchrun.diff_scores import run_scores
from batchrun.outdir import Paths
from batchrun.prices import PriceTable
from batchrun.records import Record
from batchrun.scoreboard import ScoreBoard
from batchrun.summary import Totals, cost_section, percentiles

USUAL = {
    "index": 0,
    "status": "ok",
    "response": {
        "model": "m1",
        "choices": [{"message": {"content": "x"}}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
    },
    "latency_ms": 5.0,
    "score": {"exact": 1},
    "slice": "geo",
}


def reference(records: list[Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The figures through Totals.add and the scores through ScoreBoard.add, per record."""
    totals = Totals()
    parsed = [r for r in map(Record.from_value, records) if r is not None]
    names: dict[str, None] = {}
    for record in parsed:
        totals.add(record)
        names.update(dict.fromkeys(record.score or ()))
    board = ScoreBoard(list(names))
    for record in parsed:
        board.add(record.score if record.status == "ok" else None, record.slice)
    figures = {
        "ok": totals.ok,
        "failed": totals.failed,
        "tokens": totals.token_totals(),
        "cost_usd": cost_section(totals, PriceTable.bundled())["total_usd"],
        "latency_ms": percentiles(totals.latencies_ms),
    }
    return figures, board.result().to_json() if names else None


@settings(max_examples=150, deadline=None)
@given(records=st.lists(RECORD | ODD, max_size=8))
@example(records=[USUAL, {**USUAL, "cached": True}, {**USUAL, "score": {"exact": True}}])
@example(records=[{**USUAL, "score": {"exact": 1.0}}, USUAL, {"status": "error", "score": {}}])
def test_the_fold_gives_what_totals_and_the_score_board_give(records: list[Any]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        outdir = Path(tmp)
        write_jsonl(outdir / "results.jsonl", records)
        figures, marks = RunFigures(), ScoreMarks()
        lines = list(read_lines(Paths(outdir), figures, marks))
    shown = figures.to_json("x", PriceTable.bundled())
    expected_figures, expected_scores = reference(records)
    assert {k: shown[k] for k in expected_figures} == expected_figures
    scores = run_scores(figures, marks)
    assert (None if scores is None else scores.to_json()) == expected_scores
    parsed = [r for r in map(Record.from_value, records) if r is not None]
    assert [line[:3] for line in lines] == [
        (r.custom_id, r.index, r.status == "ok") for r in parsed
    ]
    for line, record in zip(lines, parsed, strict=True):
        passed = {k for k, v in (record.score or {}).items() if type(v) is int and v == 1}
        assert line[5] == (passed if record.status == "ok" else set())
        assert line[3] == (None if record.status == "ok" else record.error_type)


def test_a_torn_results_tail_and_the_journal_beyond_it(tmp_path: Path) -> None:
    """Lines past a gap are read from the journal; a last results line with no newline is
    no record yet, and the journal has it."""
    first = orjson.dumps({**USUAL, "index": 0, "custom_id": "a"})
    second = orjson.dumps({**USUAL, "index": 1, "custom_id": "b", "score": {"exact": 0}})
    (tmp_path / "results.jsonl").write_bytes(first + b"\n" + second[:20])
    (tmp_path / "journal.jsonl").write_bytes(first + b"\n" + second + b"\n")
    figures, marks = RunFigures(), ScoreMarks()
    lines = list(read_lines(Paths(tmp_path), figures, marks))
    assert [line[0] for line in lines] == ["a", "b"]
    assert lines[1][7] & 1  # where: in the journal
    assert figures.ok == 2
