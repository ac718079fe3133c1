"""The display: rates only from sent requests, notes, the error digest, a broken stderr."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console

from batchrun.progress import LiveStats, ProgressDisplay, error_digest, stderr_console


class BrokenPipe(io.StringIO):
    """A stderr whose reader has gone away."""

    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    def fileno(self) -> int:
        raise io.UnsupportedOperation("no descriptor")


def test_no_rate_without_sent_requests() -> None:
    stats = LiveStats(total=10, done_before=4, failed=3)
    assert "req/s" not in stats.detail() and "tok/s" not in stats.detail()
    stats.sent, stats.ok, stats.total_tokens = 2, 2, 50
    assert "req/s" in stats.detail() and "tok/s" in stats.detail()


def test_a_note_is_printed_off_a_terminal_as_soon_as_it_appears() -> None:
    console = stderr_console()
    console.file = out = io.StringIO()
    with ProgressDisplay(LiveStats(total=5), console) as display:
        display.tick()
        display.tick("paused 3 s")
        display.tick("paused 2 s")  # the same state going on: not repeated
    lines = out.getvalue().splitlines()
    assert [line for line in lines if "paused" in line] == [lines[0]]
    assert lines[0].startswith("batchrun 0/5 · ")


def test_a_broken_pipe_silences_the_console_and_never_raises() -> None:
    console = stderr_console()
    console.file = BrokenPipe()
    with ProgressDisplay(LiveStats(total=5), console) as display:
        display.tick("paused 1 s")
    console.print("after")
    assert console.quiet


def test_error_digest_counts_causes_not_lines(tmp_path: Path) -> None:
    errors = tmp_path / "errors.jsonl"
    records: list[dict[str, Any]] = [
        {"error": {"type": "invalid_input", "message": f"line {n}: model: missing"}}
        for n in (3, 9, 12)
    ]
    records += [{"error": {"type": "http_status", "message": "HTTP 503", "retryable": True}}] * 2
    records += [{"error": 5}, {"error": {"type": "timeout", "message": "t", "retryable": True}}]
    records = [{"status": "error", **r} for r in records]
    records.append({"status": "ok", "error": {"type": "timeout", "retryable": True}})
    errors.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records) + b"{torn")
    digest = error_digest(errors)
    assert digest["retryable_failed"] == 3
    assert digest["top_errors"][:2] == [
        {"type": "invalid_input", "message": "model: missing", "count": 3},
        {"type": "http_status", "message": "HTTP 503", "count": 2},
    ]
    assert digest["top_errors"][2] == {"type": "timeout", "message": "t", "count": 1}
    assert error_digest(tmp_path / "missing.jsonl") == {"top_errors": [], "retryable_failed": 0}


def test_a_note_joins_the_bar_on_a_terminal() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=200, color_system=None)
    stats = LiveStats(total=5, sent=1, ok=1)
    with ProgressDisplay(stats, console) as display:
        display.tick("paused 3 s: HTTP 429 (shared Retry-After)")
    assert "paused 3 s: HTTP 429 (shared Retry-After)" in out.getvalue()
    assert "1/5" in out.getvalue()
