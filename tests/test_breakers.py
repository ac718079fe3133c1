"""How a run ends: the stop rules (connection and auth breakers) and the outcome it
reports, end to end against real sockets on 127.0.0.1."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from click.testing import CliRunner
from jsonl import chat_request, write_jsonl

from batchrun import RetryConfig, RunConfig, RunReport, Timeouts, run_batch
from batchrun.cli import main
from batchrun.mock import MockServer
from batchrun.records import Record
from batchrun.resume import needs_redo

KEY = "sk-test-breakers"
FAST = RetryConfig(max_attempts=3, backoff_base=0.01, backoff_cap=0.05)


def config(input_path: Path, tmp_path: Path, base_url: str, **options: Any) -> RunConfig:
    return RunConfig(
        input_path=input_path,
        outdir=tmp_path / "out",
        base_url=base_url,
        concurrency=options.pop("concurrency", 8),
        retry=options.pop("retry", FAST),
        timeouts=options.pop("timeouts", Timeouts(connect=2, read=5, stream_idle=2)),
        **options,
    )


async def run(run_config: RunConfig) -> RunReport:
    with anyio.fail_after(60):
        return await run_batch(run_config, api_key=KEY)


def records(outdir: Path, name: str) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in (outdir / name).read_bytes().splitlines()]


@pytest.fixture
def refusing_url() -> Iterator[str]:
    """A port bound but not listening: every connection is refused, and no other
    process can take the port while the test runs."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.mark.anyio
async def test_an_unreachable_server_stops_the_run_and_resume_sends_those_lines(
    mock_server: Callable[..., MockServer], tmp_path: Path, refusing_url: str
) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [chat_request(i) for i in range(240)])
    report = await run(config(path, tmp_path, refusing_url))
    assert report.exit_code == 3
    assert report.summary["status"] == "aborted"
    assert report.summary["reason"].startswith(
        f"cannot connect to {refusing_url}: is the server running?"
    )
    failed = records(tmp_path / "out", "journal.jsonl")
    assert 10 <= len(failed) < 10 + 8  # the streak, and lines that were in flight
    assert {r["error"]["type"] for r in failed} == {"connection"}
    # Counted whether or not a gap below them kept them out of results.jsonl so far.
    counts = report.summary["counts"]
    assert (counts["failed"], counts["done"]) == (len(failed), len(failed))
    assert counts["errors_by_type"] == {"connection": len(failed)}
    server = mock_server()
    again = await run(config(path, tmp_path, server.url))  # no flag needed
    assert again.exit_code == 0
    done = records(tmp_path / "out", "results.jsonl")
    assert [r["index"] for r in done] == list(range(240))
    assert all(r["status"] == "ok" for r in done)
    assert server.requests_received == 240


def test_the_cli_says_to_start_the_server_and_exits_3(tmp_path: Path, refusing_url: str) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [chat_request(i) for i in range(240)])
    result = CliRunner(env={"MISTRAL_API_KEY": KEY}).invoke(
        main, ["run", str(path), "-o", str(tmp_path / "out"), "--base-url", refusing_url]
    )
    assert result.exit_code == 3, result.output
    assert "is the server running?" in " ".join(result.output.split())  # may be wrapped


@pytest.mark.anyio
async def test_a_server_that_dies_mid_run_stops_it(
    mock_server: Callable[..., MockServer], tmp_path: Path
) -> None:
    server = mock_server(latency_ms=5)
    path = write_jsonl(tmp_path / "in.jsonl", [chat_request(i) for i in range(2000)])
    journal = tmp_path / "out" / "journal.jsonl"
    reports: list[RunReport] = []

    async def run_it() -> None:
        reports.append(await run(config(path, tmp_path, server.url, concurrency=4)))

    with anyio.fail_after(60):
        async with anyio.create_task_group() as group:
            group.start_soon(run_it)
            while not journal.exists() or journal.stat().st_size < 2000:
                await anyio.sleep(0.01)
            await anyio.to_thread.run_sync(server.stop)
    assert reports[0].exit_code == 3
    assert "is the server running?" in reports[0].summary["reason"]
    assert reports[0].summary["counts"]["not_done"] > 1000  # stopped early


@pytest.mark.anyio
async def test_timeouts_do_not_count_as_an_absent_server(
    mock_server: Callable[..., MockServer], tmp_path: Path
) -> None:
    server = mock_server(fault="hang")
    path = write_jsonl(tmp_path / "in.jsonl", [chat_request(i) for i in range(16)])
    retry = RetryConfig(max_attempts=1)
    report = await run(config(path, tmp_path, server.url, retry=retry, timeouts=Timeouts(read=0.2)))
    assert report.exit_code == 2
    assert report.summary["status"] == "complete"
    assert {r["error"]["type"] for r in records(tmp_path / "out", "results.jsonl")} == {"timeout"}


@pytest.mark.anyio
@pytest.mark.parametrize(("streak", "aborted"), [(9, False), (10, True)])
async def test_any_reply_from_the_server_ends_a_connection_streak(
    mock_server: Callable[..., MockServer], tmp_path: Path, streak: int, aborted: bool
) -> None:
    """Dropped connections in a row, then a 500 (a reply): only a full streak stops."""
    server = mock_server()
    lines = [chat_request(i, "drop" if i % (streak + 1) < streak else "500") for i in range(40)]
    path = write_jsonl(tmp_path / "in.jsonl", lines)
    retry = RetryConfig(max_attempts=1)
    report = await run(config(path, tmp_path, server.url, retry=retry, concurrency=1))
    assert (report.summary["status"] == "aborted") is aborted
    assert report.exit_code == (3 if aborted else 2)


@pytest.mark.anyio
async def test_auth_breaker_still_fires_before_the_connection_one(
    mock_server: Callable[..., MockServer], tmp_path: Path
) -> None:
    server = mock_server(fault="401")
    path = write_jsonl(tmp_path / "in.jsonl", [chat_request(i) for i in range(50)])
    report = await run(config(path, tmp_path, server.url, concurrency=1))
    assert report.exit_code == 3
    assert "3 consecutive HTTP 401" in report.summary["reason"]


@pytest.mark.parametrize(
    ("error", "retry_failed", "redo"),
    [
        ({"type": "connection", "retryable": True}, False, True),
        ({"type": "timeout", "retryable": True}, False, False),
        ({"type": "rate_limited", "status_code": 429, "retryable": True}, False, True),
        ({"type": "timeout", "retryable": True}, True, True),
        ({"type": "http_status", "status_code": 401, "retryable": False}, False, True),
        ({"type": "http_status", "status_code": 500, "retryable": True}, False, False),
        ({"type": "http_status", "status_code": 422, "retryable": False}, True, False),
        # Hand-edited or foreign records: any shape is a plain "no", never a crash.
        ({"type": "http_status", "status_code": [401], "retryable": False}, False, False),
        ({"type": ["connection"], "status_code": {"a": 1}}, True, False),
    ],
)
def test_which_failures_a_plain_resume_sends_again(
    error: dict[str, Any], retry_failed: bool, redo: bool
) -> None:
    record = Record.parse(orjson.dumps({"status": "error", "error": error}))
    assert record is not None and needs_redo(record, retry_failed) is redo


@pytest.mark.anyio
async def test_a_limited_rerun_of_a_finished_run_is_complete(
    mock_server: Callable[..., MockServer], tmp_path: Path
) -> None:
    server = mock_server()
    path = write_jsonl(tmp_path / "in.jsonl", [chat_request(i) for i in range(30)])
    first = await run(config(path, tmp_path, server.url, limit=10))
    assert (first.summary["status"], first.summary["reason"]) == ("partial", "--limit 10")
    await run(config(path, tmp_path, server.url))
    again = await run(config(path, tmp_path, server.url, limit=10))
    assert again.exit_code == 0
    assert (again.summary["status"], again.summary["reason"]) == ("complete", None)
    wider = await run(config(path, tmp_path, server.url, limit=100))
    assert wider.summary["status"] == "complete"


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("limits", "allowance"),
    [({"limit_rpm": 0}, "requests per minute"), ({"limit_tokens_month": 60}, "tokens per month")],
)
async def test_an_empty_allowance_stops_the_run_and_resume_sends_those_lines(
    mock_server: Callable[..., MockServer],
    tmp_path: Path,
    limits: dict[str, int],
    allowance: str,
) -> None:
    server = mock_server(**limits)
    path = write_jsonl(tmp_path / "in.jsonl", [chat_request(i) for i in range(60)])
    report = await run(config(path, tmp_path, server.url, concurrency=4))
    assert report.exit_code == 3
    assert report.summary["reason"].startswith(f"the {allowance} allowance is empty")
    refused = [r for r in records(tmp_path / "out", "journal.jsonl") if r["status"] == "error"]
    assert refused and {r["error"]["allowance"] for r in refused} == {allowance}
    assert {r["error"]["type"] for r in refused} == {"rate_limited"}
    # Not retried: one request per refused line, and only the lines already in flight.
    assert server.requests_received <= 4 + len(records(tmp_path / "out", "journal.jsonl"))
    assert server.requests_received < 12
    again = await run(config(path, tmp_path, mock_server().url))  # allowance back, no flag
    assert again.exit_code == 0
    assert [r["status"] for r in records(tmp_path / "out", "results.jsonl")] == ["ok"] * 60
