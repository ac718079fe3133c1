"""What the user watches: live counters, the progress line, notices, and the closing summary.

The runner only bumps integers in `LiveStats`; the display reads them on a timer, so
the per-request path never formats a string. Nothing printed here may stop a run: a
closed stderr (`2>&1 | head -1`, a dead log collector) silences the output, no more.
"""

from __future__ import annotations

import os
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from .prices import format_usd
from .records import Record

__all__ = [
    "LiveStats",
    "ProgressDisplay",
    "error_digest",
    "render_summary",
    "stderr_console",
]

PLAIN_INTERVAL_S = 10.0
# Logs and pipes are read by grep and by people scrolling, not by an 80-column tty.
UNWRAPPED_WIDTH = 10_000
TOP_ERRORS = 3
MAX_ERROR_KINDS = 10_000  # distinct messages counted; bounds memory on unique messages
LINE_PREFIX = re.compile(r"^line \d+: ")


class _StderrConsole(Console):
    """A console whose broken pipe silences it instead of exiting the program."""

    def on_broken_pipe(self) -> None:
        self.quiet = True
        # Later writes by anyone (click, the interpreter's exit flush) must not fail either.
        try:
            fd = self.file.fileno()
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, fd)
            os.close(devnull)
        except (OSError, ValueError, AttributeError):
            pass


def stderr_console() -> Console:
    """The console every human-facing line goes to: stderr, never wrapped off a terminal."""
    console = _StderrConsole(stderr=True, soft_wrap=True)
    if not console.is_terminal:
        console.width = UNWRAPPED_WIDTH
    return console


@dataclass
class LiveStats:
    total: int
    done_before: int = 0
    ok: int = 0
    failed: int = 0
    in_flight: int = 0
    sent: int = 0
    retries: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached: int = 0  # lines answered from the request cache (counted in `ok` too)
    in_flight_limit: int | None = None  # the adaptive limit on requests out at once
    started: float = field(default_factory=time.monotonic)

    @property
    def done(self) -> int:
        return self.done_before + self.ok + self.failed

    @property
    def elapsed(self) -> float:
        return max(time.monotonic() - self.started, 1e-9)

    def detail(self) -> str:
        limit = "" if self.in_flight_limit is None else f" (limit {self.in_flight_limit})"
        text = (
            f"ok {self.ok + self.done_before:,} · failed {self.failed:,} · "
            f"in flight {self.in_flight}{limit} · retries {self.retries:,}"
        )
        if self.cached:
            text += f" · cached {self.cached:,}"
        if not self.sent:
            return text  # a rate of lines never sent (invalid, or resumed) means nothing
        elapsed = self.elapsed
        return (
            f"{text} · {self.sent / elapsed:,.1f} req/s · {self.total_tokens / elapsed:,.0f} tok/s"
        )


class ProgressDisplay:
    """A rich bar on a terminal; a plain line every few seconds anywhere else (CI logs)."""

    def __init__(self, stats: LiveStats, console: Console | None = None) -> None:
        self._stats = stats
        self._console = console or stderr_console()
        self._live = self._console.is_terminal
        self._last_plain = time.monotonic()  # first plain line after an interval, not at 0
        self._note = ""
        # Loaded here: only a run that shows progress draws a bar (~15 ms of start-up).
        from rich.progress import (  # noqa: PLC0415
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(
            TextColumn("[bold]batchrun"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[detail]}"),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self._console,
            auto_refresh=False,
            transient=False,
        )
        self._task = self._progress.add_task(
            "run", total=stats.total, completed=stats.done, detail=""
        )

    def __enter__(self) -> ProgressDisplay:
        if self._live:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.tick()
        if self._live:
            self._progress.stop()

    def tick(self, note: str = "", status: str = "") -> None:
        """Redraw; `note` is a passing state the user should know of at once (a 429
        pause: a plain log gets a line when one starts), `status` lasting facts (the
        limits in force)."""
        stats = self._stats
        detail = " · ".join(part for part in (stats.detail(), status, note) if part)
        noted, self._note = note and not self._note, note
        if self._live:
            self._progress.update(self._task, completed=stats.done, detail=detail)
            self._progress.refresh()
        elif noted or time.monotonic() - self._last_plain >= PLAIN_INTERVAL_S:
            self._last_plain = time.monotonic()
            self._console.print(
                f"batchrun {stats.done:,}/{stats.total:,} · {detail}", markup=False, highlight=False
            )


def error_digest(errors: Path) -> dict[str, Any]:
    """The most common error messages in errors.jsonl, and how many failures
    `--retry-failed` would re-send. Line numbers are dropped so one cause counts once."""
    kinds: Counter[tuple[str, str]] = Counter()
    retryable = 0
    try:
        with errors.open("rb") as stream:
            for line in stream:
                record = Record.parse(line)
                if record is None or not record.failed or record.error_type is None:
                    continue
                retryable += record.retryable is True
                message = LINE_PREFIX.sub("", str(record.error_message))
                key = (str(record.error_type), message)
                if key in kinds or len(kinds) < MAX_ERROR_KINDS:
                    kinds[key] += 1
    except OSError:
        pass  # no errors.jsonl, no digest: the summary still stands
    top = [
        {"type": kind, "message": message, "count": count}
        for (kind, message), count in kinds.most_common(TOP_ERRORS)
    ]
    return {"top_errors": top, "retryable_failed": retryable}


def render_summary(summary: dict[str, Any], console: Console, command: str | None = None) -> None:
    """The short human summary printed at the end of `batchrun run`; `command` is the
    shortest command that resumes this OUTDIR, for the next-step hint. Plain aligned
    lines, not a rich table: a table pads every row to its widest, which fills CI logs
    with trailing blanks, and every cell is text, never markup (error messages quote
    input lines and server bodies)."""
    rows = _rows(summary)
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        console.print(f"{label:<{width}}  {value}", highlight=False, markup=False)
    for line in next_steps(summary, command):
        console.print(line, highlight=False, markup=False)


def _rows(summary: dict[str, Any]) -> list[tuple[str, str]]:
    counts, session = summary["counts"], summary["session"]
    reason = f" ({summary['reason']})" if summary["reason"] else ""
    rows = [
        ("status", summary["status"] + reason),
        (
            "lines",
            f"{counts['ok']:,} ok · {counts['failed']:,} failed · {counts['not_done']:,} "
            f"not done (of {counts['requests']:,})",
        ),
    ]
    if counts["errors_by_type"]:
        rows.append(
            ("errors", ", ".join(f"{k} {v:,}" for k, v in counts["errors_by_type"].items()))
        )
    for rank, top in enumerate(summary.get("top_errors") or ()):
        message = f"{top['count']:,} {_lines(top['count'])}: {top['message']} ({top['type']})"
        rows.append(("most common" if rank == 0 else "", message))
    tokens = summary["tokens"]
    rows.append(
        (
            "tokens",
            f"{tokens['prompt_tokens']:,} prompt · {tokens['completion_tokens']:,} completion",
        )
    )
    if cost := summary.get("cost"):
        rows.append(("cost", _cost_line(cost)))
    if cache := summary.get("cache"):
        rows.append(("cache", _cache_line(cache)))
    for name, key in (("latency", "latency_ms"), ("ttft", "ttft_ms")):
        if figures := summary[key]:
            rows.append(
                (
                    name,
                    f"p50 {figures['p50']} ms · p90 {figures['p90']} ms · p99 {figures['p99']} ms",
                )
            )
    if evaluation := summary.get("eval"):
        rows += _eval_rows(evaluation)
    rows.append(("this run", _session_line(session)))
    return rows


MAX_SLICE_ROWS = 12  # per scorer; summary.json has them all


def _eval_rows(evaluation: dict[str, Any]) -> list[tuple[str, str]]:
    """Per scorer its score with interval, then its slices (the lowest first: that is
    where a regression hides), then the verdict against the bar."""
    rows = []
    bars = evaluation["fail_under"] or {}
    for name, figures in evaluation["scorers"].items():
        bar = bars.get(name)
        note = "" if bar is None else f" · bar {bar:g}"
        rows.append((f"score {name}", score_text(figures) + note))
        slices = sorted(figures["slices"].items(), key=lambda item: item[1]["score"] or 0.0)
        for value, sliced in slices[:MAX_SLICE_ROWS]:
            rows.append((f"  {evaluation['slice']}={value}", score_text(sliced)))
        if len(slices) > MAX_SLICE_ROWS:
            rows.append(("", f"  {len(slices) - MAX_SLICE_ROWS} more slices in summary.json"))
    for shortfall in evaluation["below_bar"]:
        rows.append(
            (
                "below bar",
                f"{shortfall['scorer']} {shortfall['score']:.3f} < {shortfall['bar']:g} (exit 4)",
            )
        )
    return rows


def score_text(figures: dict[str, Any]) -> str:
    """`0.800 (8/10, 95% CI 0.490-0.943) · 1 unscored`; `-` for no lines."""
    if figures["score"] is None:
        return "- (no lines)"
    low, high = figures["ci95"]
    text = (
        f"{figures['score']:.3f} ({figures['passed']:,}/{figures['count']:,}, "
        f"95% CI {low:.3f}-{high:.3f})"
    )
    failed = figures["unscored"]
    return text + (f" · {failed:,} failed (scored 0)" if failed else "")


def _cost_line(cost: dict[str, Any]) -> str:
    """The total, and which models it leaves out for want of a price (never priced at 0)."""
    unpriced = cost["unpriced"]
    if not unpriced:
        return format_usd(cost["total_usd"])
    missing = f"no price for {', '.join(map(repr, unpriced))} (add it with --prices FILE)"
    if len(unpriced) == len(cost["models"]):
        return f"unknown: {missing}"
    return f"{format_usd(cost['total_usd'])} for the priced models · {missing}"


def _cache_line(cache: dict[str, Any]) -> str:
    """Hits of the whole batch; misses and stores of this run; what the hits saved."""
    unpriced = f" + {', '.join(cache['unpriced'])} (no price)" if cache["unpriced"] else ""
    return (
        f"{cache['hits']:,} hits · {cache['misses']:,} misses · {cache['stored']:,} stored · "
        f"saved {cache['tokens_saved']['total_tokens']:,} tokens, "
        f"{format_usd(cache['cost_saved_usd'])}{unpriced}"
    )


def _session_line(session: dict[str, Any]) -> str:
    sent, wall = session["requests_sent"], session["wall_time_s"]
    rate = f" · {sent / wall:,.1f} req/s" if sent and wall > 0 else ""
    return (
        f"{session['completed']:,} lines in {wall:.1f} s{rate} · {sent:,} requests sent · "
        f"{session['retries']:,} retries · {session['resent_after_interrupt']:,} re-sent"
    )


def next_steps(summary: dict[str, Any], command: str | None) -> list[str]:
    """Where the failures are, and the command that helps next, if one does."""
    lines = []
    if summary["counts"]["failed"] and summary.get("outdir"):
        lines.append(f"failed lines: {Path(summary['outdir']) / 'errors.jsonl'}")
    if command is None:
        return lines
    if summary["status"] in ("aborted", "interrupted"):
        lines.append(f"to resume: {command}")
    elif retryable := summary.get("retryable_failed"):
        lines.append(
            f"{retryable:,} failed {_lines(retryable)} can be re-sent: {command} --retry-failed"
        )
    return lines


def _lines(count: int) -> str:
    return "line" if count == 1 else "lines"
