"""--output-format openai-batch|mistral-batch: OUTDIR/batch_output.jsonl holds every
record in a hosted batch API's output line shape, in input order, complete after kill -9
and resume. Real runs against the mock over 127.0.0.1."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st
from jsonl import chat_request, read_jsonl, write_jsonl

from batchrun import RetryConfig, RunConfig, Timeouts, run_batch
from batchrun.batch_output import batch_line
from batchrun.cli import main
from batchrun.mock import MockServer

Factory = Callable[..., MockServer]
SCHEMA = {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}
SCHEMA_FORMAT = {"type": "json_schema", "json_schema": {"name": "x", "schema": SCHEMA}}
SHAPE = {"id", "custom_id", "response", "error"}


async def run(server: MockServer, path: Path, out: Path, fmt: str = "openai-batch") -> int:
    config = RunConfig(
        input_path=path,
        outdir=out,
        base_url=server.url,
        concurrency=4,
        retry=RetryConfig(max_attempts=2, backoff_base=0.01, backoff_cap=0.05),
        timeouts=Timeouts(read=5),
        schema_retries=0,
        output_format=fmt,
    )
    with anyio.fail_after(60):
        report = await run_batch(config, api_key="k")
    return report.exit_code


@pytest.mark.anyio
async def test_ok_error_and_invalid_lines(mock_server: Factory, tmp_path: Path) -> None:
    lines: list[Any] = [
        chat_request(0),
        chat_request(1, fault="422"),
        b'{"model": "m", "messages": [',
        chat_request(3, fault="schema_violation", response_format=SCHEMA_FORMAT),
        chat_request(4, fault="drop"),
    ]
    path = write_jsonl(tmp_path / "in.jsonl", lines)
    assert await run(mock_server(), path, tmp_path / "out") == 2
    results = read_jsonl(tmp_path / "out" / "results.jsonl")
    ok, rejected, invalid, violation, dropped = read_jsonl(tmp_path / "out" / "batch_output.jsonl")
    assert all(set(line) == SHAPE for line in (ok, rejected, invalid, violation, dropped))
    assert [line["id"] for line in (ok, rejected, invalid, violation, dropped)] == [
        f"batch_req_{i}" for i in range(5)
    ]
    # A plain file has no custom_ids: the index stands in, as a string.
    assert [line["custom_id"] for line in (ok, rejected, invalid)] == ["0", "1", "2"]

    body = results[0]["response"]
    assert ok["response"] == {"status_code": 200, "request_id": body["id"], "body": body}
    assert ok["error"] is None

    assert rejected["response"]["status_code"] == 422
    assert rejected["response"]["request_id"] is None
    assert rejected["response"]["body"] == orjson.loads(results[1]["error"]["body"])
    assert rejected["error"] == {"code": "http_status", "message": "HTTP 422"}

    assert invalid["response"] is None
    assert invalid["error"]["code"] == "invalid_input"
    assert invalid["error"]["message"].startswith("line 3: invalid JSON")

    assert violation["response"] is None
    assert violation["error"]["code"] == "schema_violation"
    assert violation["error"]["message"] == results[3]["error"]["message"]

    assert dropped["response"] is None and dropped["error"]["code"] == "connection"


@pytest.mark.anyio
async def test_batch_lines_keep_their_custom_ids(mock_server: Factory, tmp_path: Path) -> None:
    lines = [{"custom_id": f"row-{i}", "body": chat_request(i)} for i in range(4)]
    path = write_jsonl(tmp_path / "in.jsonl", lines)
    server = mock_server()
    assert await run(server, path, tmp_path / "openai") == 0
    assert await run(server, path, tmp_path / "mistral", "mistral-batch") == 0
    openai = read_jsonl(tmp_path / "openai" / "batch_output.jsonl")
    mistral = read_jsonl(tmp_path / "mistral" / "batch_output.jsonl")
    assert [line["custom_id"] for line in openai] == [f"row-{i}" for i in range(4)]
    # The same shape under both names (Mistral documents no output line of its own).
    assert [without_created(line) for line in mistral] == [without_created(x) for x in openai]


def without_created(line: dict[str, Any]) -> dict[str, Any]:
    """The mock stamps each completion with the second it was made."""
    if line["response"] is not None:
        line["response"]["body"].pop("created", None)
    return line


@pytest.mark.anyio
async def test_asked_for_on_a_later_run_it_is_caught_up(
    mock_server: Factory, tmp_path: Path
) -> None:
    server = mock_server()
    path = write_jsonl(tmp_path / "in.jsonl", [chat_request(i) for i in range(30)])
    out = tmp_path / "out"
    config = RunConfig(input_path=path, outdir=out, base_url=server.url, limit=10)
    with anyio.fail_after(60):
        await run_batch(config, api_key="k")
    assert not (out / "batch_output.jsonl").exists()
    assert await run(server, path, out) == 0
    assert_translation_of_results(out, 30)
    # --fresh discards it with the rest of the old state.
    fresh = RunConfig(input_path=path, outdir=out, base_url=server.url, limit=5, fresh=True)
    with anyio.fail_after(60):
        await run_batch(fresh, api_key="k")
    assert not (out / "batch_output.jsonl").exists()


def assert_translation_of_results(out: Path, count: int) -> None:
    results = (out / "results.jsonl").read_bytes().splitlines(keepends=True)
    batch = (out / "batch_output.jsonl").read_bytes().splitlines(keepends=True)
    assert batch == [batch_line(line) for line in results]
    assert [orjson.loads(line)["id"] for line in batch] == [f"batch_req_{i}" for i in range(count)]


def test_a_retried_line_rewrites_its_batch_line(mock_server: Factory, tmp_path: Path) -> None:
    """--retry-failed cuts results.jsonl back to the first redone line and regrows it;
    batch_output.jsonl follows, even when the run in between did not write it."""
    server = mock_server()
    lines = [chat_request(0), chat_request(1, fault="500"), chat_request(2)]
    path = write_jsonl(tmp_path / "in.jsonl", lines)
    out = tmp_path / "out"
    base = ["run", str(path), "-o", str(out), "-q", "--base-url", server.url, "--max-attempts", "1"]
    env = {"MISTRAL_API_KEY": "k"}
    assert (
        CliRunner(env=env).invoke(main, [*base, "--output-format", "openai-batch"]).exit_code == 2
    )
    assert read_jsonl(out / "batch_output.jsonl")[1]["error"]["code"] == "http_status"
    # The retried line fails again (the fault is in its body) but with a new record.
    assert CliRunner(env=env).invoke(main, [*base, "--retry-failed"]).exit_code == 2
    assert (
        CliRunner(env=env).invoke(main, [*base, "--output-format", "openai-batch"]).exit_code == 2
    )
    assert_translation_of_results(out, 3)


def batchrun(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "batchrun", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "MISTRAL_API_KEY": "k"},
    )


def journaled(out: Path) -> int:
    journal = out / "journal.jsonl"
    return journal.read_bytes().count(b"\n") if journal.exists() else 0


def test_complete_and_ordered_after_kill_9_and_resume(mock_server: Factory, tmp_path: Path) -> None:
    server = mock_server(latency_ms=30, jitter_ms=60)
    lines: list[Any] = [
        chat_request(i, response_format=SCHEMA_FORMAT) if i % 3 == 0 else chat_request(i)
        for i in range(600)
    ]
    lines[7] = b"not json"
    path = write_jsonl(tmp_path / "in.jsonl", lines)
    flags = ["--base-url", server.url, "-c", "16", "-q", "--output-format", "openai-batch"]
    whole = batchrun("run", str(path), "-o", str(tmp_path / "whole"), *flags)
    whole.communicate(timeout=120)
    assert whole.returncode == 2  # the one invalid line

    out = tmp_path / "out"
    rng = random.Random(7)
    for trial in range(3):
        shutil.rmtree(out, ignore_errors=True)  # not --fresh: the old journal would count
        proc = batchrun("run", str(path), "-o", str(out), *flags)
        deadline = time.monotonic() + 30
        while journaled(out) < 20 + trial * 60 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(rng.uniform(0, 0.2))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        assert journaled(out) < 600, "the run finished before the kill"
        resumed = batchrun("run", str(path), "-o", str(out), *flags)
        _, stderr = resumed.communicate(timeout=120)
        assert resumed.returncode == 2, stderr.decode()
        assert_translation_of_results(out, 600)
        got = [without_created(x) for x in read_jsonl(out / "batch_output.jsonl")]
        want = [without_created(x) for x in read_jsonl(tmp_path / "whole" / "batch_output.jsonl")]
        assert got == want


ints = st.integers(-(2**63), 2**63 - 1)  # what orjson writes
records = st.fixed_dictionaries(
    {},
    optional={
        "index": st.integers(-3, 10**6) | st.text(max_size=3) | st.none(),
        "custom_id": st.text(max_size=5) | ints | st.none(),
        "status": st.sampled_from(["ok", "error", "other"]),
        "response": st.dictionaries(st.sampled_from(["id", "choices"]), st.text(max_size=3) | ints)
        | st.text(max_size=3),
        "error": st.fixed_dictionaries(
            {},
            optional={
                "type": st.text(max_size=5) | ints,
                "message": st.text(max_size=5) | st.none(),
                "status_code": st.integers(100, 599) | st.text(max_size=2),
                "body": st.text(max_size=20) | st.just('{"error": {"message": "x"}}') | ints,
            },
        )
        | ints,
    },
)


@given(records)
def test_any_stored_record_translates_to_the_shape(record: dict[str, Any]) -> None:
    line = orjson.loads(batch_line(orjson.dumps(record)))
    assert set(line) == SHAPE
    assert line["custom_id"] is None or isinstance(line["custom_id"], str)
    failed = line["error"] is not None
    assert failed == (record.get("status") != "ok" or not isinstance(record.get("response"), dict))
    if line["response"] is not None:
        assert isinstance(line["response"]["status_code"], int)
        assert isinstance(line["response"]["body"], dict)
    assert batch_line(b"[1, 2]").endswith(b"\n")


def test_the_suggested_rerun_keeps_writing_it(mock_server: Factory, tmp_path: Path) -> None:
    server = mock_server()
    path = write_jsonl(tmp_path / "in.jsonl", [chat_request(0), chat_request(1, fault="500")])
    out = tmp_path / "out"
    args = ["run", str(path), "-o", str(out), "--base-url", server.url, "--max-attempts", "1"]
    result = CliRunner(env={"MISTRAL_API_KEY": "k"}).invoke(
        main, [*args, "--output-format", "mistral-batch"]
    )
    assert result.exit_code == 2, result.output
    command = f"run {path} -o {out} --base-url {server.url} --output-format mistral-batch"
    assert f"can be re-sent: batchrun {command} --retry-failed" in result.output
