"""What the user watches: live counters, the rich progress bar, and the closing summary.

The runner only bumps integers in `LiveStats`; the display reads them on a timer, so
the per-request path never formats a string.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

__all__ = ["LiveStats", "ProgressDisplay", "render_summary"]

PLAIN_INTERVAL_S = 10.0


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
    started: float = field(default_factory=time.monotonic)

    @property
    def done(self) -> int:
        return self.done_before + self.ok + self.failed

    @property
    def elapsed(self) -> float:
        return max(time.monotonic() - self.started, 1e-9)

    def detail(self) -> str:
        rate = (self.ok + self.failed) / self.elapsed
        tokens = self.total_tokens / self.elapsed
        return (
            f"ok {self.ok + self.done_before:,} · failed {self.failed:,} · "
            f"in flight {self.in_flight} · retries {self.retries:,} · "
            f"{rate:,.0f} req/s · {tokens:,.0f} tok/s"
        )


class ProgressDisplay:
    """A rich bar on a terminal; a plain line every few seconds anywhere else (CI logs)."""

    def __init__(self, stats: LiveStats, console: Console | None = None) -> None:
        self._stats = stats
        self._console = console or Console(stderr=True)
        self._live = self._console.is_terminal
        self._last_plain = time.monotonic()  # first plain line after an interval, not at 0
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

    def tick(self) -> None:
        stats = self._stats
        if self._live:
            self._progress.update(self._task, completed=stats.done, detail=stats.detail())
            self._progress.refresh()
        elif time.monotonic() - self._last_plain >= PLAIN_INTERVAL_S:
            self._last_plain = time.monotonic()
            self._console.print(f"batchrun {stats.done:,}/{stats.total:,} · {stats.detail()}")


def render_summary(summary: dict[str, Any], console: Console) -> None:
    """The short human summary printed at the end of `batchrun run`."""
    counts, session = summary["counts"], summary["session"]
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_row(
        "status", summary["status"] + (f" ({summary['reason']})" if summary["reason"] else "")
    )
    table.add_row(
        "lines",
        f"{counts['ok']:,} ok · {counts['failed']:,} failed · {counts['not_done']:,} not done"
        f" (of {counts['requests']:,})",
    )
    if counts["errors_by_type"]:
        table.add_row(
            "errors", ", ".join(f"{k} {v:,}" for k, v in counts["errors_by_type"].items())
        )
    tokens = summary["tokens"]
    table.add_row(
        "tokens",
        f"{tokens['prompt_tokens']:,} prompt · {tokens['completion_tokens']:,} completion",
    )
    if summary["latency_ms"]:
        lat = summary["latency_ms"]
        table.add_row("latency", f"p50 {lat['p50']} ms · p90 {lat['p90']} ms · p99 {lat['p99']} ms")
    if summary["ttft_ms"]:
        ttft = summary["ttft_ms"]
        table.add_row("ttft", f"p50 {ttft['p50']} ms · p90 {ttft['p90']} ms · p99 {ttft['p99']} ms")
    rate = session["requests_per_s"]  # null when this session sent nothing
    table.add_row(
        "this run",
        f"{session['completed']:,} lines in {session['wall_time_s']:.1f} s · "
        + (f"{rate:,.1f} req/s · " if rate is not None else "")
        + f"{session['requests_sent']:,} requests sent · "
        f"{session['retries']:,} retries · {session['resent_after_interrupt']:,} re-sent",
    )
    console.print(table)
