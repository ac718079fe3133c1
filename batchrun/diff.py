"""`batchrun diff`: what changed between two runs of (about) the same lines.

Memory is bounded by one run, compactly: run A is indexed by its join key into a small
tuple per line (status, error type, a 64-bit hash of the output, where its record
lies on disk), then run B is streamed against that index; each matched key is marked
taken, so what is left untaken at the end is only in A, and a key B repeats is told from a
line A lacks. The text of a changed output is read back from
A's file for the few examples shown, never kept. Tokens, cost and latency are summed per
run by summary.py's `Totals`, the same figures summary.json shows.

Lines join by `custom_id` when every record of both runs has one (A's unique), else by
index. A line's fingerprint (`_Line`) is what the comparison sees: per-line eval scores
become one more field there and one more counter in `Changes` when runs carry them.

Records are read like summary.py reads them: results.jsonl, plus the journal records of
lines done beyond a gap (the last record of an index wins). Both OUTDIRs are only read,
and a run still being written is read as far as it got.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import orjson
from rich.console import Console
from rich.table import Table
from rich.text import Text

from .errors import ConfigError
from .outdir import Paths
from .prices import PriceTable
from .records import Record
from .summary import PERCENTILES, Totals, cost_section, percentiles

__all__ = ["Changes", "RunDiff", "diff_runs", "render_diff"]

EXAMPLES = 5  # changed outputs shown side by side
LISTED = 20  # keys listed per kind of change
PREVIEW = 200  # characters of an output shown in an example

Key = str | int


class _Line(NamedTuple):
    """What run A keeps of one line: enough to compare, and where to read it again."""

    ok: bool
    error_type: str | None
    digest: int | None  # of the output; None for a failed line
    where: int  # offset * 2 + 1 in the journal, + 0 in results.jsonl


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


@dataclass
class RunDiff:
    a: Path
    b: Path
    joined_by: str  # custom_id | index
    changes: Changes
    totals_a: Totals
    totals_b: Totals
    prices: PriceTable

    def to_dict(self) -> dict[str, Any]:
        """The `--json` shape."""
        c = self.changes
        return {
            "a": _run_figures(self.a, self.totals_a, self.prices),
            "b": _run_figures(self.b, self.totals_b, self.prices),
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
            "delta": self._deltas(),
        }

    def _deltas(self) -> dict[str, Any]:
        """B minus A, for every figure both runs have."""
        a, b = self.totals_a, self.totals_b
        tokens_a, tokens_b = a.token_totals(), b.token_totals()
        cost_a = cost_section(a, self.prices)["total_usd"]
        cost_b = cost_section(b, self.prices)["total_usd"]
        latency_a, latency_b = percentiles(a.latencies_ms), percentiles(b.latencies_ms)
        latency = None
        if latency_a is not None and latency_b is not None:
            latency = {
                f"p{p}": round(latency_b[f"p{p}"] - latency_a[f"p{p}"], 2) for p in PERCENTILES
            }
        return {
            "ok": b.ok - a.ok,
            "failed": b.failed - a.failed,
            "tokens": {k: tokens_b[k] - tokens_a[k] for k in tokens_a},
            "cost_usd": round(cost_b - cost_a, 6),
            "latency_ms": latency,
        }


def diff_runs(a: Path, b: Path, prices: PriceTable | None = None) -> RunDiff:
    """Compare the records of OUTDIRs `a` and `b` (neither is written to)."""
    paths_a, paths_b = _run_paths(a), _run_paths(b)
    totals_a, totals_b = Totals(), Totals()
    by_id = _all_have_ids(paths_a) and _all_have_ids(paths_b)
    changes = Changes()
    index = _index(paths_a, totals_a, changes, by_id=by_id)
    if index is None:  # a custom_id repeats in A: it cannot say which line is which
        by_id, totals_a, changes = False, Totals(), Changes()
        index = _index(paths_a, totals_a, changes, by_id=False)
    assert index is not None
    _join(paths_b, totals_b, index, changes, paths_a, by_id=by_id)
    left = [key for key, line in index.items() if line is not None]
    changes.only_in_a_count = len(left)
    changes.only_in_a = heapq.nsmallest(LISTED, left, key=_order)
    joined_by = "custom_id" if by_id else "index"
    prices = prices or PriceTable.bundled()
    return RunDiff(a, b, joined_by, changes, totals_a, totals_b, prices)


def _run_paths(outdir: Path) -> Paths:
    paths = Paths(outdir)
    if not outdir.is_dir():
        raise ConfigError(f"{outdir} is not a directory")
    if not paths.results.exists() and not paths.journal.exists():
        raise ConfigError(f"{outdir} holds no run (no results.jsonl or journal.jsonl)")
    return paths


def _records(paths: Paths) -> Iterator[tuple[Record, int]]:
    """Every record of a run in index order, with where it lies (see `_Line.where`)."""
    for raw, where in _stored(paths):
        record = Record.parse(raw)
        if record is not None:  # not a torn last line of a run being written
            yield record, where


def _stored(paths: Paths) -> Iterator[tuple[bytes, int]]:
    """The lines of a run's records, undecoded: results.jsonl, then the last journal
    record of each index beyond it (only their offsets are kept meanwhile)."""
    written = 0
    if paths.results.exists():
        with paths.results.open("rb") as stream:
            offset = 0
            for raw in stream:
                written += raw.endswith(b"\n")  # a torn last line is no record yet
                yield raw, offset * 2
                offset += len(raw)
    if not paths.journal.exists():
        return
    beyond: dict[int, int] = {}
    with paths.journal.open("rb") as stream:
        offset = 0
        for raw in stream:
            index = _index_of(raw)
            if index is not None and index >= written:
                beyond[index] = offset
            offset += len(raw)
        for index in sorted(beyond):
            stream.seek(beyond[index])
            yield stream.readline(), beyond[index] * 2 + 1


def _index_of(raw: bytes) -> int | None:
    """A journal line's index, read from the bytes batchrun writes first (`{"index":N,`)
    without decoding the reply after it; any other line is decoded."""
    if raw.startswith(b'{"index":'):
        end = raw.find(b",", 9, 40)
        if end > 9 and raw[9:end].isdigit():
            return int(raw[9:end])
    record = Record.parse(raw)
    return None if record is None else record.index


def _all_have_ids(paths: Paths) -> bool:
    """Whether every record of the run has a custom_id. Only a line without the bytes
    batchrun writes for one (`"custom_id":"`) is decoded: a hand-edited file may space it."""
    for raw, _ in _stored(paths):
        if b'"custom_id":"' in raw:
            continue
        record = Record.parse(raw)
        if record is not None and record.custom_id is None:
            return False
    return True


def _index(
    paths: Paths, totals: Totals, changes: Changes, *, by_id: bool
) -> dict[Key, _Line | None] | None:
    """Run A by join key; None when joining by id and an id repeats. A record with no
    key, or with an index seen before (a hand-edited file), is counted, not joined."""
    index: dict[Key, _Line | None] = {}
    for record, where in _records(paths):
        totals.add(record)
        key = _key(record, by_id=by_id)
        if by_id and key in index:
            return None
        if key is None or key in index:
            changes.unjoined_a += 1
            continue
        ok = record.status == "ok"
        index[key] = _Line(ok, record.error_type, _digest(record) if ok else None, where)
    return index


def _join(
    paths: Paths,
    totals: Totals,
    index: dict[Key, _Line | None],
    changes: Changes,
    paths_a: Paths,
    *,
    by_id: bool,
) -> None:
    """Stream run B's records against run A's `index`, marking each line it joins."""
    for record, _ in _records(paths):
        totals.add(record)
        key = _key(record, by_id=by_id)
        if key is None:
            changes.unjoined_b += 1
            continue
        if key not in index:
            changes.only_in_b_count += 1
            _note(changes.only_in_b, key)
            continue
        line = index[key]
        if line is None:  # B repeats a key: joined already
            changes.unjoined_b += 1
            continue
        index[key] = None  # not popped: a repeat must still be told from a new line
        _compare(changes, paths_a, key, line, record)


def _key(record: Record, *, by_id: bool) -> Key | None:
    return record.custom_id if by_id else record.index


def _digest(record: Record) -> int:
    """64 bits of the output: its text, or the whole first choice when it has none (tool
    calls). Python's own string hash: both runs are hashed in this one process, so its
    per-process seed does not matter, and it costs a fraction of a cryptographic digest."""
    content = record.content
    if content is not None:
        return hash(content)
    choices = (record.response or {}).get("choices")
    return hash(orjson.dumps(choices, option=orjson.OPT_SORT_KEYS, default=repr))


def _compare(changes: Changes, paths_a: Paths, key: Key, a: _Line, b: Record) -> None:
    changes.common += 1
    b_ok, b_type = b.status == "ok", b.error_type
    if a.ok and b_ok:
        if a.digest != _digest(b):
            changes.changed_outputs += 1
            if len(changes.examples) < EXAMPLES:
                before = _reread(paths_a, a.where)
                changes.examples.append(
                    {"key": key, "a": _preview(before), "b": _preview(b.content)}
                )
    elif a.ok:
        changes.new_failures_count += 1
        _note(changes.new_failures, {"key": key, "error_type": b_type})
    elif b_ok:
        changes.fixed_failures_count += 1
        _note(changes.fixed_failures, {"key": key, "error_type": a.error_type})
    elif a.error_type != b_type:
        changes.error_type_changes_count += 1
        _note(changes.error_type_changes, {"key": key, "a": a.error_type, "b": b_type})


def _reread(paths: Paths, where: int) -> str | None:
    """The output of the record of run A at `where`."""
    file = paths.journal if where & 1 else paths.results
    with file.open("rb") as stream:
        stream.seek(where >> 1)
        record = Record.parse(stream.readline())
    return None if record is None else record.content


def _preview(text: str | None) -> str | None:
    if text is None or len(text) <= PREVIEW:
        return text
    return text[: PREVIEW - 1] + "…"


def _note(listed: list[Any], item: object) -> None:
    if len(listed) < LISTED:
        listed.append(item)


def _order(key: Key) -> tuple[int, int, str]:
    """Indexes in number order, ids in text order (a mixed index never compares them)."""
    return (0, key, "") if isinstance(key, int) else (1, 0, key)


def _run_figures(outdir: Path, totals: Totals, prices: PriceTable) -> dict[str, Any]:
    return {
        "outdir": str(outdir),
        "lines": totals.ok + totals.failed,
        "ok": totals.ok,
        "failed": totals.failed,
        "tokens": totals.token_totals(),
        "cost_usd": cost_section(totals, prices)["total_usd"],
        "latency_ms": percentiles(totals.latencies_ms),
    }


def render_diff(diff: dict[str, Any], console: Console) -> None:
    """`diff` (RunDiff.to_dict) as rich tables: figures side by side, then the changes."""
    a, b, delta = diff["a"], diff["b"], diff["delta"]
    # Text, never markup: paths, ids and outputs are not ours ("[B]" is an answer).
    console.print(Text(f"A: {a['outdir']}\nB: {b['outdir']}"))
    figures = Table()
    for column in ("", "A", "B", "B - A"):
        figures.add_column(column, justify="right" if column else "left")
    figures.add_row("lines", str(a["lines"]), str(b["lines"]), "")
    figures.add_row("ok", str(a["ok"]), str(b["ok"]), _signed(delta["ok"]))
    figures.add_row("failed", str(a["failed"]), str(b["failed"]), _signed(delta["failed"]))
    for kind, change in delta["tokens"].items():
        figures.add_row(kind, str(a["tokens"][kind]), str(b["tokens"][kind]), _signed(change))
    figures.add_row(
        "cost (USD)", f"{a['cost_usd']:.6f}", f"{b['cost_usd']:.6f}", _signed(delta["cost_usd"])
    )
    for p in PERCENTILES:
        name = f"p{p}"
        change = None if delta["latency_ms"] is None else delta["latency_ms"][name]
        figures.add_row(
            f"latency {name} (ms)",
            _ms(a["latency_ms"], name),
            _ms(b["latency_ms"], name),
            _signed(change),
        )
    console.print(figures)

    changes = Table(title=f"changes (joined by {diff['joined_by']})", title_justify="left")
    changes.add_column("")
    changes.add_column("lines", justify="right")
    changes.add_column(f"first {LISTED}")
    changes.add_row("in both", str(diff["common"]), "")
    for name in ("only_in_a", "only_in_b"):
        part = diff[name]
        what = name.replace("_", " ").replace(" a", " A").replace(" b", " B")
        changes.add_row(what, str(part["count"]), _keys(part["keys"]))
    unjoined = diff["unjoined"]
    if unjoined["a"] or unjoined["b"]:
        counts = f"{unjoined['a']} / {unjoined['b']}"
        changes.add_row("unjoined (A / B)", counts, "no key, or a repeated one")
    changes.add_row("changed outputs", str(diff["changed_outputs"]["count"]), "")
    for name in ("new_failures", "fixed_failures", "error_type_changes"):
        part = diff[name]
        keys = [line["key"] for line in part["lines"]]
        changes.add_row(name.replace("_", " "), str(part["count"]), _keys(keys))
    console.print(changes)

    examples = diff["changed_outputs"]["examples"]
    if examples:
        side = Table(title="changed outputs", title_justify="left", show_lines=True)
        side.add_column("line")
        side.add_column("A", overflow="fold")
        side.add_column("B", overflow="fold")
        for example in examples:
            side.add_row(Text(str(example["key"])), _text(example["a"]), _text(example["b"]))
        console.print(side)


def _signed(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:+}" if isinstance(value, int) else f"{value:+.6g}"


def _ms(figures: dict[str, float] | None, name: str) -> str:
    return "-" if figures is None else f"{figures[name]:.1f}"


def _keys(keys: list[Key]) -> Text:
    return Text(", ".join(str(k) for k in keys))


def _text(value: str | None) -> Text:
    return Text("(no text)", style="dim") if value is None else Text(value)
