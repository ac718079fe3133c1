"""`batchrun report`: the figures of one OUTDIR, read without changing anything in it.

A run may be finished, partial, killed or still being written by another process, so
nothing here takes the lock or repairs a file: files are opened for reading only, and a
last line with no newline (a write torn by a kill, or one still under way) is skipped.

Memory is bounded by the run's figures, not its records: each record is counted and
dropped, the journal's records beyond results.jsonl are found by offset, and only the
first FAILED_LINES failed lines are kept whole (for the HTML page's table).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table
from rich.text import Text

from .errors import ConfigError
from .journal import latest_lines
from .outdir import Paths
from .prices import PriceTable, format_usd
from .records import Record
from .report_eval import EvalTally, eval_table
from .report_timeline import Timeline
from .summary import Totals, cost_section, percentiles

__all__ = ["FAILED_LINES", "OutdirReport", "read_report", "render_report"]

FAILED_LINES = 200  # failed lines kept with their error, in index order
MESSAGE_CHARS = 1000  # of each kept error message


@dataclass(frozen=True)
class OutdirReport:
    """What `report` shows, as plain data: `to_dict` is the `--json` document."""

    outdir: Path
    summary_status: str | None  # summary.json's status; None when no session wrote one
    summary_reason: str | None
    requests: int
    totals: Totals
    error_examples: dict[str, str]  # one message per error type, the first one read
    unreadable_lines: int  # skipped: torn tails and lines that are not records
    cost: dict[str, Any]
    flow: dict[str, Any] | None
    eval: dict[str, Any] | None  # report_eval.EvalTally.section: scores from the records
    timeline: dict[str, Any] | None  # report_timeline.Timeline.to_json
    failed_lines: list[dict[str, Any]]  # the first FAILED_LINES, by index

    @property
    def done(self) -> int:
        return self.totals.ok + self.totals.failed

    @property
    def state(self) -> str:
        """From the records, whatever summary.json says: it may be a previous session's."""
        return "complete" if self.done >= self.requests else "partial"

    def to_dict(self) -> dict[str, Any]:
        totals = self.totals
        return {
            "outdir": str(self.outdir),
            "state": self.state,
            "summary_status": self.summary_status,
            "summary_reason": self.summary_reason,
            "counts": {
                "requests": self.requests,
                "done": self.done,
                "ok": totals.ok,
                "failed": totals.failed,
                "not_done": self.requests - self.done,
                "unreadable_lines": self.unreadable_lines,
            },
            "errors_by_type": {
                kind: {"count": count, "example": self.error_examples.get(kind)}
                for kind, count in sorted(totals.error_types.items())
            },
            "tokens": totals.token_totals(),
            "tokens_by_model": totals.tokens_by_model,
            "cost": self.cost,
            "latency_ms": percentiles(totals.latencies_ms),
            "ttft_ms": percentiles(totals.ttfts_ms),
            "flow": self.flow,
            "eval": self.eval,
            "timeline": self.timeline,
            "failed_lines": self.failed_lines,
        }


def read_report(outdir: Path, prices: PriceTable | None = None) -> OutdirReport:
    """The report of `outdir`; ConfigError when it is not a batchrun output directory."""
    paths = Paths(outdir)
    requests = _requests(paths)
    summary = _summary(paths)
    summary_eval = summary.get("eval")
    reading = _Reading(requests, summary_eval if isinstance(summary_eval, dict) else None)
    done_in_results = reading.add_results(paths.results)
    reading.add_journal(paths.journal, after=done_in_results)
    flow = summary.get("flow")
    status, reason = summary.get("status"), summary.get("reason")
    return OutdirReport(
        outdir=outdir,
        summary_status=status if isinstance(status, str) else None,
        summary_reason=reason if isinstance(reason, str) else None,
        requests=requests,
        totals=reading.totals,
        error_examples=reading.examples,
        unreadable_lines=reading.unreadable,
        cost=cost_section(reading.totals, prices or PriceTable.bundled()),
        flow=flow if isinstance(flow, dict) else None,
        eval=reading.eval.section(),
        timeline=reading.timeline.to_json(),
        failed_lines=reading.failed_lines,
    )


def _requests(paths: Paths) -> int:
    if not paths.outdir.is_dir():
        raise ConfigError(f"{paths.outdir} is not a directory")
    try:
        manifest = orjson.loads(paths.manifest.read_bytes())
    except FileNotFoundError:
        raise ConfigError(
            f"{paths.outdir} is not a batchrun output directory (no manifest.json)"
        ) from None
    except (OSError, orjson.JSONDecodeError) as exc:
        raise ConfigError(f"{paths.manifest} is unreadable ({exc})") from None
    requests = manifest.get("requests") if isinstance(manifest, dict) else None
    if not isinstance(requests, int) or isinstance(requests, bool) or requests < 0:
        raise ConfigError(f"{paths.manifest} has no request count: not a batchrun manifest")
    return requests


def _summary(paths: Paths) -> dict[str, Any]:
    """summary.json, or {} when there is none yet (a first session still running or killed)."""
    try:
        found = orjson.loads(paths.summary.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return {}
    return found if isinstance(found, dict) else {}


class _Reading:
    """Totals over results.jsonl, then over the journal records not yet in it."""

    def __init__(self, requests: int, summary_eval: dict[str, Any] | None) -> None:
        self.requests = requests
        self.totals = Totals()
        self.eval = EvalTally(summary_eval)
        self.timeline = Timeline()
        self.examples: dict[str, str] = {}
        self.failed_lines: list[dict[str, Any]] = []
        self.unreadable = 0

    def add_results(self, path: Path) -> int:
        """Count results.jsonl; returns how many records it holds (indices 0..n-1)."""
        count = 0
        try:
            stream = path.open("rb")
        except FileNotFoundError:
            return 0
        with stream:
            for line in stream:
                if line.endswith(b"\n"):  # else torn by a kill, or still being written
                    self._add(Record.parse(line))
                    count += 1
        return count

    def add_journal(self, path: Path, *, after: int) -> None:
        """Journal records of indices from `after` on: done, not yet in results.jsonl. A
        line journaled twice (sent again on resume) counts as its latest record. Only
        their offsets are kept, and only their lines decoded."""
        if after >= self.requests:
            return  # every line is in results.jsonl: the journal holds nothing else
        try:
            stream = path.open("rb")
        except FileNotFoundError:
            return
        with stream:
            spans, unreadable = latest_lines(stream, after, self.requests)
            self.unreadable += unreadable
            for _, offset in spans:
                stream.seek(offset)
                self._add(Record.parse(stream.readline()))

    def _add(self, record: Record | None) -> None:
        if record is None:
            self.unreadable += 1
            return
        self.totals.add(record)
        # Raw fields, each checked by the one that counts it: a property call per field
        # per record would cost about a third of the bare decode (report's 3x bar).
        data = record.data
        failed = data.get("status") != "ok"
        self.eval.add(data.get("score"), data.get("slice"), failed)
        self.timeline.add(data.get("finished_at"), failed, data.get("throttled"))
        if failed:
            self._add_failed(record)

    def _add_failed(self, record: Record) -> None:
        kind = record.error_type or "unknown"
        message = record.error_message or ""
        if kind not in self.examples:
            self.examples[kind] = message
        if len(self.failed_lines) < FAILED_LINES:
            self.failed_lines.append(
                {
                    "index": record.index,
                    "line": record.line,
                    "custom_id": record.custom_id,
                    "error_type": kind,
                    "message": message[:MESSAGE_CHARS],
                }
            )


def render_report(report: OutdirReport, console: Console) -> None:
    """The report as rich tables."""
    data = report.to_dict()  # once: its percentiles sort every latency
    console.print(_status_table(report, data["counts"]))
    if data["errors_by_type"]:
        console.print(_errors_table(data["errors_by_type"]))
    if report.totals.tokens_by_model:
        console.print(_models_table(report.totals.tokens_by_model, report.cost))
    timing = {"latency (ms)": data["latency_ms"], "TTFT (ms)": data["ttft_ms"]}
    if any(timing.values()):
        console.print(_timing_table(timing))
    if report.flow is not None:
        console.print(_flow_table(report.flow))
    if report.eval is not None:
        console.print(eval_table(report.eval))


def _status_table(report: OutdirReport, counts: dict[str, int]) -> Table:
    # Every string read from OUTDIR goes in as Text: a record's `[/x]` is no rich markup.
    table = Table(title=Text(f"batchrun report: {report.outdir}"), show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("state (from the records)", report.state)
    last = report.summary_status or "no summary.json (first session running or killed)"
    if report.summary_reason:
        last += f" ({report.summary_reason})"
    table.add_row("last summary", Text(last))
    table.add_row("done / requests", f"{report.done} / {report.requests}")
    for key in ("ok", "failed", "not_done", "unreadable_lines"):
        table.add_row(key.replace("_", " "), str(counts[key]))
    return table


def _errors_table(errors: dict[str, dict[str, Any]]) -> Table:
    table = Table(title="errors by type")
    table.add_column("type")
    table.add_column("count", justify="right")
    table.add_column("example", overflow="fold")
    for kind, entry in errors.items():
        table.add_row(Text(kind), str(entry["count"]), Text(entry["example"] or ""))
    return table


def _models_table(tokens: dict[str, dict[str, int]], cost: dict[str, Any]) -> Table:
    usd = {model: entry["usd"] for model, entry in cost["models"].items()}
    table = Table(title="tokens and cost per model")
    table.add_column("model")
    for heading in ("requests", "prompt", "completion", "total", "cost (USD)"):
        table.add_column(heading, justify="right")
    for model, figures in sorted(tokens.items()):
        price = usd.get(model)
        table.add_row(
            Text(model),
            *(str(figures[k]) for k in ("requests", "prompt_tokens", "completion_tokens")),
            str(figures["total_tokens"]),
            "no price" if price is None else format_usd(price),
        )
    return table


def _timing_table(timing: dict[str, dict[str, float] | None]) -> Table:
    keys = ("p50", "p90", "p99", "max", "mean")
    table = Table(title="latency and time to first token")
    table.add_column("")
    for key in keys:
        table.add_column(key, justify="right")
    for name, figures in timing.items():
        if figures is not None:
            table.add_row(name, *(f"{figures[k]:.1f}" for k in keys))
    return table


def _flow_table(flow: dict[str, Any]) -> Table:
    table = Table(title="flow (last session, from summary.json)", show_header=False)
    table.add_column("what")
    table.add_column("value", overflow="fold")
    for key, value in flow.items():
        shown = value if isinstance(value, str) else orjson.dumps(value).decode()
        table.add_row(Text(key.replace("_", " ")), Text(shown))
    return table
