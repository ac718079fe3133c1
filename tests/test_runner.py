"""run_batch end to end against the real mock server on 127.0.0.1."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from jsonl import chat_request, write_jsonl

from batchrun import ResumeRefused, RetryConfig, RunConfig, RunReport, Timeouts, run_batch
from batchrun.mock import MockServer

CANARY = "sk-canary-5f2b9c1d7e"
OUTPUT_FILES = ("journal.jsonl", "results.jsonl", "errors.jsonl", "summary.json", "manifest.json")


def faulty(i: int, fault: str, **mock: Any) -> dict[str, Any]:
    return chat_request(i, metadata={"mock": {"fault": fault, **mock}})


def config_for(server: MockServer, tmp_path: Path, input_path: Path, **options: Any) -> RunConfig:
    retry = options.pop("retry", RetryConfig(max_attempts=4, backoff_base=0.01, backoff_cap=0.05))
    return RunConfig(
        input_path=input_path,
        outdir=tmp_path / "out",
        base_url=server.url,
        concurrency=options.pop("concurrency", 8),
        retry=retry,
        timeouts=options.pop("timeouts", Timeouts(read=5, stream_idle=2)),
        **options,
    )


async def run(config: RunConfig, key: str = CANARY) -> RunReport:
    with anyio.fail_after(60):
        return await run_batch(config, api_key=key)


def results(outdir: Path, name: str = "results.jsonl") -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in (outdir / name).read_bytes().splitlines()]


def assert_complete(outdir: Path, count: int, redone: int = 0) -> list[dict[str, Any]]:
    """results.jsonl is complete and ordered; the journal holds each line once, plus
    `redone` superseded records of lines that were sent again on purpose."""
    records = results(outdir)
    assert [r["index"] for r in records] == list(range(count))
    journal = results(outdir, "journal.jsonl")
    assert sorted({r["index"] for r in journal}) == list(range(count))
    assert len(journal) == count + redone
    errors = results(outdir, "errors.jsonl")
    assert errors == [r for r in records if r["status"] == "error"]
    return records


@pytest.mark.anyio
async def test_results_are_in_input_order_under_random_latency(
    mock_server: Callable[..., MockServer], tmp_path: Path
) -> None:
    server = mock_server(latency_ms=1, jitter_ms=30, seed=3)
    path = write_jsonl(tmp_path / "in.jsonl", [chat_request(i) for i in range(300)])
    report = await run(config_for(server, tmp_path, path, concurrency=32))
    assert report.exit_code == 0
    records = assert_complete(tmp_path / "out", 300)
    for i, record in enumerate(records):
        assert record["status"] == "ok"
        assert record["line"] == i + 1
        assert f"line-{i}" in record["response"]["choices"][0]["message"]["content"]
        assert record["attempts"] == 1
    assert server.requests_received == 300
    summary = report.summary
    assert summary["counts"] == {
        "requests": 300,
        "done": 300,
        "ok": 300,
        "failed": 0,
        "not_done": 0,
        "errors_by_type": {},
    }
    usage_total = sum(r["response"]["usage"]["total_tokens"] for r in records)
    assert summary["tokens"]["total_tokens"] == usage_total
    assert summary["tokens_by_model"]["mistral-small-latest"]["requests"] == 300
    assert summary["latency_ms"]["p50"] <= summary["latency_ms"]["p99"]
    assert orjson.loads((tmp_path / "out" / "summary.json").read_bytes()) == summary


@pytest.mark.anyio
async def test_each_fault_is_retried_or_recorded_per_policy(
    mock_server: Callable[..., MockServer], tmp_path: Path
) -> None:
    server = mock_server()
    lines = [
        faulty(0, "500", times=2),  # retried: 3 attempts, ok
        faulty(1, "503", times=1),
        faulty(2, "429", times=1, retry_after=0.05),
        faulty(3, "drop", times=2),
        faulty(4, "invalid_json", times=1),
        faulty(5, "408", times=1),
        faulty(6, "422"),  # never retried
        faulty(7, "404"),
        faulty(8, "502"),  # always failing: max_attempts, then recorded
        faulty(9, "redirect"),
        chat_request(10),
    ]
    path = write_jsonl(tmp_path / "in.jsonl", lines)
    report = await run(config_for(server, tmp_path, path))
    assert report.exit_code == 2
    records = assert_complete(tmp_path / "out", len(lines))
    outcome = [(r["status"], r["attempts"]) for r in records]
    assert outcome == [
        ("ok", 3),
        ("ok", 2),
        ("ok", 2),
        ("ok", 3),
        ("ok", 2),
        ("ok", 2),
        ("error", 1),
        ("error", 1),
        ("error", 4),
        ("error", 1),
        ("ok", 1),
    ]
    assert records[6]["error"]["type"] == "http_status"
    assert records[6]["error"]["status_code"] == 422
    assert records[6]["error"]["retryable"] is False
    assert records[8]["error"] == {
        **records[8]["error"],
        "type": "http_status",
        "status_code": 502,
        "retryable": True,
    }
    assert records[9]["error"]["status_code"] == 307
    assert report.summary["counts"]["errors_by_type"] == {"http_status": 4}
    assert report.summary["attempts"]["total"] == sum(r["attempts"] for r in records)


@pytest.mark.anyio
async def test_retry_after_pauses_every_worker(
    mock_server: Callable[..., MockServer], tmp_path: Path
) -> None:
    server = mock_server()
    lines = [faulty(0, "429", times=1, retry_after=0.6)] + [chat_request(i) for i in range(1, 40)]
    path = write_jsonl(tmp_path / "in.jsonl", lines)
    started = anyio.current_time()
    report = await run(config_for(server, tmp_path, path, concurrency=2))
    elapsed = anyio.current_time() - started
    assert report.exit_code == 0
    assert elapsed >= 0.6
    assert report.summary["rate_limit_pauses"] == 1
    records = assert_complete(tmp_path / "out", 40)
    assert records[0]["attempts"] == 2


@pytest.mark.anyio
async def test_bad_input_lines_are_recorded_and_the_run_goes_on(
    mock_server: Callable[..., MockServer], tmp_path: Path
) -> None:
    server = mock_server()
    lines: list[Any] = [
        chat_request(0),
        b'{"model": "m", "messages": [}',
        b"\xff\xfe not utf-8",
        b"[1, 2, 3]",
        {"messages": [{"role": "user", "content": "x"}]},
        chat_request(5, temperature="hot"),
        chat_request(6, max_tokens=0),
        b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "top_p": NaN}',
        b"[" * 3000 + b"]" * 3000,
        b"",
        chat_request(9),
    ]
    path = write_jsonl(tmp_path / "in.jsonl", lines)
    report = await run(config_for(server, tmp_path, path))
    assert report.exit_code == 2
    records = assert_complete(tmp_path / "out", 10)
    assert records[0]["status"] == "ok" and records[9]["status"] == "ok"
    bad = records[1:9]
    assert all(r["status"] == "error" and r["error"]["type"] == "invalid_input" for r in bad)
    assert all(r["attempts"] == 0 for r in bad)
    assert [r["line"] for r in bad] == [2, 3, 4, 5, 6, 7, 8, 9]
    assert bad[3]["error"]["field"] == "model"
    assert bad[4]["error"]["field"] == "temperature"
    assert bad[5]["error"]["field"] == "max_tokens"
    assert server.requests_received == 2  # invalid lines cost no request


@pytest.mark.anyio
async def test_resume_sends_only_what_is_missing(
    mock_server: Callable[..., MockServer], tmp_path: Path
) -> None:
    log = tmp_path / "requests.log"
    server = mock_server(request_log=log)
    path = write_jsonl(tmp_path / "in.jsonl", [chat_request(i) for i in range(50)])
    first = await run(config_for(server, tmp_path, path, limit=20))
    assert first.exit_code == 0
    assert first.summary["status"] == "partial"
    assert first.summary["counts"]["not_done"] == 30
    second = await run(config_for(server, tmp_path, path))
    assert second.exit_code == 0
    assert_complete(tmp_path / "out", 50)
    sent = [orjson.loads(line)["content"] for line in log.read_bytes().splitlines()]
    assert sorted(sent) == sorted(f"line-{i}" for i in range(50))  # nothing twice
    third = await run(config_for(server, tmp_path, path))
    assert third.summary["session"]["requests_sent"] == 0
    assert server.requests_received == 50


@pytest.mark.anyio
async def test_resume_is_refused_for_another_input_or_settings(
    mock_server: Callable[..., MockServer], tmp_path: Path
) -> None:
    server = mock_server()
    path = write_jsonl(tmp_path / "in.jsonl", [chat_request(i) for i in range(5)])
    await run(config_for(server, tmp_path, path))
    write_jsonl(path, [chat_request(i) for i in range(6)])
    with pytest.raises(ResumeRefused, match="different input"):
        await run(config_for(server, tmp_path, path))
    write_jsonl(path, [chat_request(i) for i in range(5)])
    with pytest.raises(ResumeRefused, match="stream"):
        await run(config_for(server, tmp_path, path, stream=True))
    fresh = await run(config_for(server, tmp_path, path, stream=True, fresh=True))
    assert fresh.exit_code == 0
    assert all("ttft_ms" in r for r in assert_complete(tmp_path / "out", 5))


@pytest.mark.anyio
async def test_torn_journal_tail_is_repaired_and_reported(
    mock_server: Callable[..., MockServer], tmp_path: Path
) -> None:
    server = mock_server()
    path = write_jsonl(tmp_path / "in.jsonl", [chat_request(i) for i in range(10)])
    # One at a time, so the journal is in index order and its first lines are the
    # results' prefix, as the crash below needs.
    await run(config_for(server, tmp_path, path, limit=6, concurrency=1))
    out = tmp_path / "out"
    journal = out / "journal.jsonl"
    lines = journal.read_bytes().splitlines(keepends=True)
    # Simulate a crash mid-write: the last record lost its end, results never saw it.
    journal.write_bytes(b"".join(lines[:5]) + lines[5][:30])
    (out / "results.jsonl").write_bytes(b"".join(lines[:5])[:-10])
    report = await run(config_for(server, tmp_path, path))
    assert any("journal.jsonl: dropped a torn last line" in r for r in report.repairs)
    assert any("results.jsonl: dropped a torn last line" in r for r in report.repairs)
    assert report.exit_code == 0
    assert_complete(out, 10)


@pytest.mark.anyio
async def test_corruption_before_the_tail_is_refused(
    mock_server: Callable[..., MockServer], tmp_path: Path
) -> None:
    server = mock_server()
    path = write_jsonl(tmp_path / "in.jsonl", [chat_request(i) for i in range(6)])
    await run(config_for(server, tmp_path, path, limit=4))
    journal = tmp_path / "out" / "journal.jsonl"
    lines = journal.read_bytes().splitlines(keepends=True)
    journal.write_bytes(lines[0] + b"garbage\n" + b"".join(lines[2:]))
    with pytest.raises(ResumeRefused, match="line 2 is corrupt"):
        await run(config_for(server, tmp_path, path))


@pytest.mark.anyio
async def test_retry_failed_resends_only_retryable_failures(
    mock_server: Callable[..., MockServer], tmp_path: Path
) -> None:
    server = mock_server()
    lines = [chat_request(0), faulty(1, "500", times=2), faulty(2, "422"), chat_request(3)]
    path = write_jsonl(tmp_path / "in.jsonl", lines)
    retry = RetryConfig(max_attempts=2, backoff_base=0.01, backoff_cap=0.02)
    first = await run(config_for(server, tmp_path, path, retry=retry))
    assert first.exit_code == 2
    plain_resume = await run(config_for(server, tmp_path, path, retry=retry))
    assert plain_resume.summary["session"]["requests_sent"] == 0
    second = await run(config_for(server, tmp_path, path, retry=retry, retry_failed=True))
    records = assert_complete(tmp_path / "out", 4, redone=1)
    assert [r["status"] for r in records] == ["ok", "ok", "error", "ok"]
    assert second.summary["session"]["requests_sent"] == 1
    assert second.exit_code == 2  # the 422 is still there


@pytest.mark.anyio
async def test_auth_failures_stop_the_run_and_resume_resends_them(
    mock_server: Callable[..., MockServer], tmp_path: Path
) -> None:
    denying = mock_server(fault="401")
    path = write_jsonl(tmp_path / "in.jsonl", [chat_request(i) for i in range(200)])
    report = await run(config_for(denying, tmp_path, path, concurrency=2))
    assert report.exit_code == 3
    assert report.summary["status"] == "aborted"
    assert "consecutive HTTP 401" in report.summary["reason"]
    assert denying.requests_received < 20  # stopped early, not 200 failures
    recorded = len(results(tmp_path / "out", "journal.jsonl"))  # the streak, and any in flight
    assert 3 <= recorded <= 4
    healthy = mock_server()
    again = await run(config_for(healthy, tmp_path, path, concurrency=2))
    assert again.exit_code == 0
    records = assert_complete(tmp_path / "out", 200, redone=recorded)  # the 401s, sent again
    assert all(r["status"] == "ok" for r in records)


@pytest.mark.anyio
async def test_files_are_private_and_never_hold_the_key(
    mock_server: Callable[..., MockServer], tmp_path: Path
) -> None:
    server = mock_server()
    lines = [chat_request(0), faulty(1, "401"), faulty(2, "500"), b"not json"]
    path = write_jsonl(tmp_path / "in.jsonl", lines)
    await run(config_for(server, tmp_path, path))
    out = tmp_path / "out"
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    for name in OUTPUT_FILES:
        file = out / name
        assert stat.S_IMODE(file.stat().st_mode) == 0o600, name
        assert CANARY.encode() not in file.read_bytes(), name
    assert all(CANARY.encode() not in (out / f).read_bytes() for f in os.listdir(out))


@pytest.mark.anyio
async def test_mixed_streamed_and_plain_lines(
    mock_server: Callable[..., MockServer], tmp_path: Path
) -> None:
    server = mock_server(stream_chunks=6)
    lines = [chat_request(i, stream=(i % 2 == 0)) for i in range(20)]
    lines[4] = chat_request(4, stream=True, metadata={"mock": {"fault": "cut", "times": 1}})
    path = write_jsonl(tmp_path / "in.jsonl", lines)
    report = await run(config_for(server, tmp_path, path))
    assert report.exit_code == 0
    records = assert_complete(tmp_path / "out", 20)
    plain = {r["index"]: r for r in records if "ttft_ms" not in r}
    streamed = {r["index"]: r for r in records if "ttft_ms" in r}
    assert sorted(streamed) == list(range(0, 20, 2))
    assert sorted(plain) == list(range(1, 20, 2))
    text = records[4]["response"]["choices"][0]["message"]["content"]
    assert text.count("line-4") == 1  # the cut attempt left no partial text behind
    assert records[4]["attempts"] == 2
    assert report.summary["ttft_ms"]["p50"] > 0


@pytest.mark.anyio
async def test_streamed_tool_calls_match_the_plain_reply(
    mock_server: Callable[..., MockServer], tmp_path: Path
) -> None:
    server = mock_server(stream_chunks=7)
    tool = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}
    lines = [
        chat_request(0, tools=[tool], tool_choice="any"),
        chat_request(0, tools=[tool], tool_choice="any", stream=True),
    ]
    path = write_jsonl(tmp_path / "in.jsonl", lines)
    report = await run(config_for(server, tmp_path, path))
    assert report.exit_code == 0
    plain, streamed = (r["response"]["choices"][0] for r in assert_complete(tmp_path / "out", 2))
    assert streamed["finish_reason"] == plain["finish_reason"] == "tool_calls"
    (plain_call,) = plain["message"]["tool_calls"]
    (streamed_call,) = streamed["message"]["tool_calls"]
    assert streamed_call["id"] == plain_call["id"]
    assert streamed_call["function"] == plain_call["function"]  # arguments joined from pieces


@pytest.mark.anyio
async def test_streamed_runs_resume_like_plain_ones(
    mock_server: Callable[..., MockServer], tmp_path: Path
) -> None:
    log = tmp_path / "requests.log"
    server = mock_server(request_log=log)
    path = write_jsonl(tmp_path / "in.jsonl", [chat_request(i) for i in range(30)])
    first = await run(config_for(server, tmp_path, path, stream=True, limit=12))
    assert first.summary["counts"]["done"] == 12
    second = await run(config_for(server, tmp_path, path, stream=True))
    assert second.exit_code == 0
    records = assert_complete(tmp_path / "out", 30)
    assert all(r["ttft_ms"] > 0 for r in records)
    sent = [orjson.loads(line)["content"] for line in log.read_bytes().splitlines()]
    assert sorted(sent) == sorted(f"line-{i}" for i in range(30))
    assert second.summary["ttft_ms"]["p99"] >= second.summary["ttft_ms"]["p50"] > 0
