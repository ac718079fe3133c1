"""Deadlines bound a whole attempt: a server that drips bytes, sends only keep-alive
comments, or streams slowly forever cannot hold a worker past the configured times.

Every case runs through `run_batch` against the mock server's deadline modes; the time
bounds asserted are generous (the suite may share a busy machine), but far below how
long each server would hold the worker without the deadline.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from click.testing import CliRunner
from jsonl import write_jsonl

from batchrun import ConfigError, RetryConfig, RunConfig, RunReport, Timeouts, run_batch
from batchrun.cli import main
from batchrun.mock import MockServer

Factory = Callable[..., MockServer]
ONE_ATTEMPT = RetryConfig(max_attempts=1)


def line(i: int, stream: bool = False, **mock: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "mistral-small-latest",
        "messages": [{"role": "user", "content": f"line {i}"}],
        "metadata": {"mock": mock},
    }
    return {**body, "stream": True} if stream else body


async def run_lines(
    server: MockServer,
    tmp_path: Path,
    lines: list[dict[str, Any]],
    timeouts: Timeouts,
    retry: RetryConfig = ONE_ATTEMPT,
) -> tuple[RunReport, list[dict[str, Any]], float]:
    path = tmp_path / "in.jsonl"
    write_jsonl(path, lines)
    config = RunConfig(
        input_path=path,
        outdir=tmp_path / "out",
        base_url=server.url,
        timeouts=timeouts,
        retry=retry,
        fsync=False,
    )
    started = anyio.current_time()
    with anyio.fail_after(20):
        report = await run_batch(config, api_key="k")
    elapsed = anyio.current_time() - started
    records = [
        orjson.loads(x) for x in (tmp_path / "out" / "results.jsonl").read_bytes().splitlines()
    ]
    return report, records, elapsed


@pytest.mark.anyio
async def test_timeout_bounds_a_whole_dripped_reply(mock_server: Factory, tmp_path: Path) -> None:
    """The issue's case: one byte every 100 ms would take ~40 s; --timeout 0.5 ends it."""
    server = mock_server()
    _, records, elapsed = await run_lines(
        server, tmp_path, [line(0, drip_ms=100)], Timeouts(read=0.5)
    )
    assert records[0]["status"] == "error"
    assert records[0]["error"]["type"] == "timeout" and records[0]["error"]["retryable"]
    assert "0.5 s" in records[0]["error"]["message"]
    assert elapsed < 8


@pytest.mark.anyio
async def test_a_dripped_reply_inside_the_deadline_succeeds(
    mock_server: Factory, tmp_path: Path
) -> None:
    """~130 bytes 2 ms apart: the deadline is on the whole attempt, not on the pace."""
    server = mock_server()
    small = {"body": '{"choices": [{"message": {"content": "ok"}}]}'}
    _, records, _ = await run_lines(
        server, tmp_path, [line(0, drip_ms=2, raw=small)], Timeouts(read=15)
    )
    assert records[0]["status"] == "ok" and records[0]["latency_ms"] > 200


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("mock", "timeouts", "message"),
    [
        ({"fault": "keepalive", "chunk_delay_ms": 20}, Timeouts(stream_idle=0.3), "idle"),
        ({"drip_ms": 20}, Timeouts(stream_idle=0.3), "idle"),  # bytes, never a whole event
        ({"fault": "trickle", "chunk_delay_ms": 20}, Timeouts(stream_total=0.5), "within 0.5 s"),
    ],
)
async def test_stream_deadlines_count_data_events_and_the_whole_stream(
    mock_server: Factory, tmp_path: Path, mock: dict[str, Any], timeouts: Timeouts, message: str
) -> None:
    server = mock_server()
    _, records, elapsed = await run_lines(server, tmp_path, [line(0, True, **mock)], timeouts)
    assert records[0]["status"] == "error"
    assert records[0]["error"]["type"] == "timeout" and message in records[0]["error"]["message"]
    assert elapsed < 8


@pytest.mark.anyio
async def test_a_slow_stream_that_keeps_sending_data_is_not_idle(
    mock_server: Factory, tmp_path: Path
) -> None:
    """Events 80 ms apart under a 250 ms idle deadline: 400 ms of stream is fine."""
    server = mock_server()
    slow = line(0, True, chunks=6, chunk_delay_ms=80)
    _, records, _ = await run_lines(server, tmp_path, [slow], Timeouts(stream_idle=0.25))
    assert records[0]["status"] == "ok"
    assert records[0]["latency_ms"] > 400


@pytest.mark.anyio
async def test_timeouts_are_retried_per_policy(mock_server: Factory, tmp_path: Path) -> None:
    server = mock_server()
    lines = [
        line(0, True, fault="keepalive", times=1),
        line(1, True, fault="trickle", times=2),
        line(2, True, fault="keepalive"),
    ]
    retry = RetryConfig(max_attempts=3, backoff_base=0.01, backoff_cap=0.02)
    timeouts = Timeouts(stream_idle=0.2, stream_total=0.4)
    report, records, _ = await run_lines(server, tmp_path, lines, timeouts, retry)
    assert [(r["status"], r["attempts"]) for r in records] == [("ok", 2), ("ok", 3), ("error", 3)]
    assert report.summary["counts"]["errors_by_type"] == {"timeout": 1}


@pytest.mark.parametrize("field", ["connect", "read", "stream_idle", "stream_total"])
@pytest.mark.parametrize("value", [0, -1, math.nan, math.inf, True, "5"])
def test_library_timeouts_are_validated(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match="finite number of seconds"):
        Timeouts(**{field: value})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "flag", ["--timeout", "--connect-timeout", "--stream-idle-timeout", "--stream-timeout"]
)
@pytest.mark.parametrize("value", ["-1", "nan", "inf", "0", "soon"])
def test_nonsensical_timeout_flags_are_refused_at_parse_time(
    tmp_path: Path, flag: str, value: str
) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"{}\n")
    result = CliRunner().invoke(main, ["run", str(path), "--mock", "-q", f"{flag}={value}"])
    assert result.exit_code != 0
    assert f"Invalid value for '{flag}'" in result.output
    assert not (tmp_path / "in.batchrun").exists()  # refused before anything ran
