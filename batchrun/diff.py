"""`batchrun diff`: what changed between two runs of (about) the same lines.

Memory is bounded by one run, compactly: run A is read (diff_read.py) into a small tuple
per line (status, error type, a 64-bit hash of the output, the scorers it passed, where
its record lies on disk) by join key, then run B is streamed against that index; each
matched key is marked joined, so what is left unjoined at the end is only in A, and a
key B repeats is told from a line A lacks. The text of an output shown as an example is
read back from its file, never kept. Counts, tokens, cost and latency are summed as
summary.py sums them; eval scores per scorer and slice are compared by diff_scores.py.

Lines join by `custom_id` when every record of both runs has one (A's unique), else by
index. Neither is known before reading: A is indexed by id until a record says
otherwise, and B is joined by id until one of its records has none, when the join starts
over by index (only a run mixing records with and without ids pays for that).

Both OUTDIRs are only read, and a run still being written is read as far as it got.
"""

from __future__ import annotations

import contextlib
import gc
import heapq
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from .diff_read import Key, Line, RunFigures, ScoreMarks, read_lines, reread_output
from .diff_render import render_diff, render_verdict
from .diff_scores import Drop, FlipCounter, ScoreDiff, common_scorers, run_scores
from .errors import ConfigError
from .outdir import Paths
from .prices import PriceTable
from .summary import PERCENTILES

__all__ = ["Changes", "RunDiff", "diff_runs", "render_diff", "render_verdict"]

EXAMPLES = 5  # changed outputs shown side by side
LISTED = 20  # keys listed per kind of change
PREVIEW = 200  # characters of an output shown in an example


@dataclass
class Changes:
    """Lines that differ between the runs: a count per kind and the first keys of each."""

    common: int = 0
    # Records that cannot be joined: no index (joining by index), or a key A already had.
    unjoined_a: int = 0
    unjoined_b: int = 0
    only_in_a: list[Key] = field(default_factory=list)
    only_in_b: list[Key] = field(default_factory=list)
    only_in_a_count: int = 0
    only_in_b_count: int = 0
    changed_outputs: int = 0
    examples: list[dict[str, Any]] = field(default_factory=list)
    new_failures: list[dict[str, Any]] = field(default_factory=list)
    new_failures_count: int = 0
    fixed_failures: list[dict[str, Any]] = field(default_factory=list)
    fixed_failures_count: int = 0
    error_type_changes: list[dict[str, Any]] = field(default_factory=list)
    error_type_changes_count: int = 0
    flips: FlipCounter = field(default_factory=FlipCounter)
    # changed outputs to show, as (key, where in A, where in B) until they are read
    changed_first: list[tuple[Key, int, int]] = field(default_factory=list)


@dataclass
class RunDiff:
    a: Path
    b: Path
    joined_by: str  # custom_id | index
    changes: Changes
    figures_a: RunFigures
    figures_b: RunFigures
    scores: ScoreDiff
    prices: PriceTable

    def regressions(self, tolerance: float = 0.0) -> tuple[list[Drop], list[dict[str, Any]]]:
        """Scores that dropped by more than `tolerance`, and what was not compared."""
        return self.scores.regressions(tolerance)

    def to_dict(self, tolerance: float = 0.0) -> dict[str, Any]:
        """The `--json` shape; `regressions` are drops beyond `tolerance`."""
        c = self.changes
        drops, skipped = self.regressions(tolerance)
        run_a = self.figures_a.to_json(str(self.a), self.prices)
        run_b = self.figures_b.to_json(str(self.b), self.prices)
        return {
            "a": run_a,
            "b": run_b,
            "joined_by": self.joined_by,
            "common": c.common,
            "unjoined": {"a": c.unjoined_a, "b": c.unjoined_b},
            "only_in_a": {"count": c.only_in_a_count, "keys": c.only_in_a},
            "only_in_b": {"count": c.only_in_b_count, "keys": c.only_in_b},
            "changed_outputs": {"count": c.changed_outputs, "examples": c.examples},
            "new_failures": {"count": c.new_failures_count, "lines": c.new_failures},
            "fixed_failures": {"count": c.fixed_failures_count, "lines": c.fixed_failures},
            "error_type_changes": {
                "count": c.error_type_changes_count,
                "lines": c.error_type_changes,
            },
            "delta": _deltas(run_a, run_b),
            "scores": self.scores.to_json(),
            "regressions": {
                "tolerance": tolerance,
                "drops": [drop.to_json() for drop in drops],
                "not_compared": skipped,
            },
        }


def _deltas(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """B minus A (RunFigures.to_json of each), for every figure both runs have."""
    latency_a, latency_b = a["latency_ms"], b["latency_ms"]
    latency = None
    if latency_a is not None and latency_b is not None:
        latency = {f"p{p}": round(latency_b[f"p{p}"] - latency_a[f"p{p}"], 2) for p in PERCENTILES}
    return {
        "ok": b["ok"] - a["ok"],
        "failed": b["failed"] - a["failed"],
        "tokens": {k: b["tokens"][k] - a["tokens"][k] for k in a["tokens"]},
        "cost_usd": round(b["cost_usd"] - a["cost_usd"], 6),
        "latency_ms": latency,
    }


def diff_runs(a: Path, b: Path, prices: PriceTable | None = None) -> RunDiff:
    """Compare the records of OUTDIRs `a` and `b` (neither is written to)."""
    paths_a, paths_b = _run_paths(a), _run_paths(b)
    with _no_cycle_collection():
        for by_id in (True, False):
            marks = ScoreMarks()  # both runs': lines scored alike share their marks
            figures_a, figures_b, changes = RunFigures(), RunFigures(), Changes()
            lines_a = read_lines(paths_a, figures_a, marks)
            lines_b = read_lines(paths_b, figures_b, marks)
            if _join(lines_a, lines_b, changes, by_id=by_id):
                break
    changes.examples = [
        {"key": key, "a": _output(paths_a, where_a), "b": _output(paths_b, where_b)}
        for key, where_a, where_b in changes.changed_first
    ]
    scores = _score_diff((paths_a, paths_b), (figures_a, figures_b), marks, changes.flips)
    joined_by = "custom_id" if by_id else "index"
    prices = prices or PriceTable.bundled()
    return RunDiff(a, b, joined_by, changes, figures_a, figures_b, scores, prices)


@contextlib.contextmanager
def _no_cycle_collection() -> Iterator[None]:
    """The cyclic garbage collector off while both runs are read: decoded records hold no
    cycles, so reference counting frees every one, and the collector's passes over the
    millions of short-lived dicts cost about 15 % of a diff (benchmarks/diff_speed.py)."""
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.enable()


def _run_paths(outdir: Path) -> Paths:
    paths = Paths(outdir)
    if not outdir.is_dir():
        raise ConfigError(f"{outdir} is not a directory")
    if not paths.results.exists() and not paths.journal.exists():
        raise ConfigError(f"{outdir} holds no run (no results.jsonl or journal.jsonl)")
    return paths


def _join(
    lines_a: Iterator[Line], lines_b: Iterator[Line], changes: Changes, *, by_id: bool
) -> bool:
    """Read both runs side by side, comparing the lines that share a key. Two runs of the
    same input list their lines in the same order, so a line usually meets its match at
    once; one that does not waits (`_Waiting`) until the other run reaches it, and what
    still waits at the end is only in its run. False when joining by id and a line has
    none or repeats one (then the join starts over by index)."""
    waiting = _Waiting(changes, by_id=by_id)
    joined, pending_a, pending_b = waiting.joined, waiting.pending[0], waiting.pending[1]
    for a, b in itertools.zip_longest(lines_a, lines_b):
        if a is not None and b is not None:
            key = a[0] if by_id else a[1]
            if (
                key is not None
                and key == (b[0] if by_id else b[1])
                and key not in joined
                and (not pending_a or key not in pending_a)
                and (not pending_b or key not in pending_b)
            ):
                joined.add(key)
                # Output, passes, status, error type: most lines are alike.
                if a[4] != b[4] or a[5] is not b[5] or a[2] != b[2] or a[3] != b[3]:
                    _compare(changes, key, a, b)
                continue
        if (a is not None and not waiting.place(0, a)) or (
            b is not None and not waiting.place(1, b)
        ):
            return False
    changes.common = len(joined)
    changes.only_in_a_count, changes.only_in_b_count = len(pending_a), len(pending_b)
    changes.only_in_a = heapq.nsmallest(LISTED, pending_a, key=_order)
    changes.only_in_b = heapq.nsmallest(LISTED, pending_b, key=_order)
    return True


class _Waiting:
    """The keys joined so far, and each run's lines still waiting for their match."""

    def __init__(self, changes: Changes, *, by_id: bool) -> None:
        self.changes = changes
        self.by_id = by_id
        self.joined: set[Key] = set()
        self.pending: tuple[dict[Key, Line], dict[Key, Line]] = ({}, {})

    def place(self, side: int, line: Line) -> bool:
        """A line of run A (`side` 0) or B (1) that did not meet its match at once: joined
        with the other run's line waiting for it, else left waiting. A line with no key,
        or a key its run had before (a hand-edited file), is counted as unjoined, never
        guessed at; joining by id, it stops the join instead (False)."""
        key = line[0] if self.by_id else line[1]
        own, other = self.pending[side], self.pending[1 - side]
        if key is None or key in own or key in self.joined:
            if self.by_id:
                return False
            if side == 0:
                self.changes.unjoined_a += 1
            else:
                self.changes.unjoined_b += 1
            return True
        match = other.pop(key, None)
        if match is None:
            own[key] = line
            return True
        self.joined.add(key)
        a, b = (line, match) if side == 0 else (match, line)
        if a[2:6] != b[2:6]:
            _compare(self.changes, key, a, b)
        return True


def _compare(changes: Changes, key: Key, a: Line, b: Line) -> None:
    a_ok, a_type, a_digest = a[2:5]
    b_ok, b_type, b_digest = b[2:5]
    if a_ok and b_ok:
        if a_digest != b_digest:
            changes.changed_outputs += 1
            if len(changes.changed_first) < EXAMPLES:
                changes.changed_first.append((key, a[7], b[7]))
    elif a_ok:
        changes.new_failures_count += 1
        _note(changes.new_failures, {"key": key, "error_type": b_type})
    elif b_ok:
        changes.fixed_failures_count += 1
        _note(changes.fixed_failures, {"key": key, "error_type": a_type})
    elif a_type != b_type:
        changes.error_type_changes_count += 1
        _note(changes.error_type_changes, {"key": key, "a": a_type, "b": b_type})
    if a[5] != b[5]:
        changes.flips.add(key, a, b)


def _score_diff(
    paths: tuple[Paths, Paths],
    figures: tuple[RunFigures, RunFigures],
    marks: ScoreMarks,
    flips: FlipCounter,
) -> ScoreDiff:
    """Both runs' scores, with the first flipped lines of each scorer both have."""
    paths_a, paths_b = paths
    a = run_scores(figures[0], marks, _summary_scorers(paths_a))
    b = run_scores(figures[1], marks, _summary_scorers(paths_b))
    examples = {}
    for name in common_scorers(a, b):
        for direction in ("pass_to_fail", "fail_to_pass"):
            found = getattr(flips, direction).get(name)
            lines = [] if found is None else found.first
            examples[name, direction] = [
                {
                    "key": key,
                    "slice": slice_value,
                    "a": _output(paths_a, where_a),
                    "b": _output(paths_b, where_b),
                }
                for key, slice_value, where_a, where_b in lines
            ]
    return ScoreDiff(a, b, flips, examples)


def _summary_scorers(paths: Paths) -> list[str]:
    """The scorers summary.json's `eval` names ([] without one: killed, or no eval)."""
    try:
        summary = orjson.loads(paths.summary.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return []
    section = summary.get("eval") if isinstance(summary, dict) else None
    scorers = section.get("scorers") if isinstance(section, dict) else None
    return list(scorers) if isinstance(scorers, dict) else []


def _output(paths: Paths, where: int) -> str | None:
    """A line's output, cut to PREVIEW characters."""
    text = reread_output(paths, where)
    if text is None or len(text) <= PREVIEW:
        return text
    return text[: PREVIEW - 1] + "…"


def _note(listed: list[Any], item: object) -> None:
    if len(listed) < LISTED:
        listed.append(item)


def _order(key: Key) -> tuple[int, int, str]:
    """Indexes in number order, ids in text order (a mixed index never compares them)."""
    return (0, key, "") if isinstance(key, int) else (1, 0, key)
