"""`batchrun diff` in the terminal: the JSON document (`RunDiff.to_dict`) as rich tables.

Paths, ids, slice values and outputs are not ours ("[B]" is an answer), so every one of
them goes into a table as `Text`, never as markup.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from .outcome import EXIT_BELOW_BAR, EXIT_OK
from .summary import PERCENTILES

__all__ = ["render_diff", "render_verdict"]

LISTED = 20  # keys listed per kind of change (diff.py lists no more)
DIRECTIONS = (("pass_to_fail", "pass -> fail"), ("fail_to_pass", "fail -> pass"))


def render_diff(diff: dict[str, Any], console: Console) -> None:
    """Figures side by side, the changes, changed outputs, then scores when there are."""
    a, b = diff["a"], diff["b"]
    console.print(Text(f"A: {a['outdir']}\nB: {b['outdir']}"))
    console.print(_figures(diff))
    console.print(_changes(diff))
    examples = diff["changed_outputs"]["examples"]
    if examples:
        side = Table(title="changed outputs", title_justify="left", show_lines=True)
        side.add_column("line")
        side.add_column("A", overflow="fold")
        side.add_column("B", overflow="fold")
        for example in examples:
            side.add_row(Text(str(example["key"])), _text(example["a"]), _text(example["b"]))
        console.print(side)
    scores = diff["scores"]
    if scores is not None:
        _render_scores(scores, diff["regressions"]["not_compared"], console)


def _figures(diff: dict[str, Any]) -> Table:
    a, b, delta = diff["a"], diff["b"], diff["delta"]
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
    return figures


def _changes(diff: dict[str, Any]) -> Table:
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
    return changes


def _render_scores(
    scores: dict[str, Any], not_compared: list[dict[str, Any]], console: Console
) -> None:
    table = Table(title="scores (95 % intervals)", title_justify="left")
    for column in ("scorer", "slice", "A", "B", "B - A", "pass -> fail", "fail -> pass"):
        table.add_column(column, justify="right" if column[0] in "ABpf" else "left")
    for name, found in scores["by_scorer"].items():
        flips = (str(found[direction]["count"]) for direction, _ in DIRECTIONS)
        table.add_row(Text(name), "all", *_score_cells(found), *flips)
        for value, part in found["slices"].items():
            table.add_row("", Text(value), *_score_cells(part), "", "")
    if scores["by_scorer"]:
        console.print(table)
    flipped = Table(title="lines whose score changed", title_justify="left", show_lines=True)
    for column in ("scorer", "change", "line", "slice"):
        flipped.add_column(column)
    flipped.add_column("A", overflow="fold")
    flipped.add_column("B", overflow="fold")
    for name, found in scores["by_scorer"].items():
        for direction, label in DIRECTIONS:
            for line in found[direction]["lines"]:
                cells = (Text(str(line["key"])), _text(line["slice"], "-"))
                flipped.add_row(Text(name), label, *cells, _text(line["a"]), _text(line["b"]))
    if flipped.row_count:
        console.print(flipped)
    if not scores["by_scorer"]:
        console.print(Text("no scorer in both runs: scores not compared"))
    if not_compared:
        console.print(Text(f"not compared: {', '.join(map(_not_compared, not_compared))}"))


def _not_compared(item: dict[str, Any]) -> str:
    where = "" if item["slice"] is None else f" slice {item['slice']!r}"
    return f"{item['scorer']}{where} ({item['reason']})"


def _score_cells(pair: dict[str, Any]) -> tuple[Text, Text, Text]:
    delta = pair["delta"]
    style = "" if delta is None or delta == 0 else "red" if delta < 0 else "green"
    shown = "-" if delta is None else f"{delta:+.3f}"
    return _score(pair["a"]), _score(pair["b"]), Text(shown, style=style)


def _score(score: dict[str, Any] | None) -> Text:
    if score is None or score["score"] is None:
        return Text("-")
    low, high = score["ci95"]
    return Text(f"{score['score']:.3f} [{low:.3f}, {high:.3f}] {score['passed']}/{score['count']}")


def _signed(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:+}" if isinstance(value, int) else f"{value:+.6g}"


def _ms(figures: dict[str, float] | None, name: str) -> str:
    return "-" if figures is None else f"{figures[name]:.1f}"


def _keys(keys: list[Any]) -> Text:
    return Text(", ".join(str(k) for k in keys))


def _text(value: str | None, missing: str = "(no text)") -> Text:
    return Text(missing, style="dim") if value is None else Text(value)


def render_verdict(diff: dict[str, Any], console: Console) -> int:
    """`--fail-on-regression`: each drop beyond the tolerance, or why nothing could drop;
    returns the exit code (4 on a drop, else 0)."""
    regressions = diff["regressions"]
    tolerance, drops = regressions["tolerance"], regressions["drops"]
    scores = diff["scores"]
    if scores is None or not scores["scorers"]:
        console.print(Text("no eval scorer in both runs: no score to regress, exit 0"))
        return EXIT_OK
    for drop in drops:
        where = "overall" if drop["slice"] is None else f"slice {drop['slice']!r}"
        console.print(
            Text.assemble(
                ("regression", "red"),
                f": {drop['scorer']} {where} {drop['a']:.4f} -> {drop['b']:.4f}"
                f" (dropped {drop['drop']:.4f}, tolerance {tolerance:g})",
            )
        )
    if drops:
        return EXIT_BELOW_BAR
    console.print(Text(f"no score dropped by more than {tolerance:g}"))
    return EXIT_OK
