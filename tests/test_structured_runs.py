"""Structured output in real runs: a line whose body has a json_schema or json_object
response_format gets its reply parsed and checked, a violation is asked again up to
`schema_retries` times (counted apart from transport retries) and then recorded as
schema_violation; lines without one are untouched. Every run goes to the mock over
127.0.0.1."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from click.testing import CliRunner
from jsonl import chat_request, read_jsonl, write_jsonl
from jsonschema.validators import Draft202012Validator

from batchrun import RetryConfig, RunConfig, Timeouts, run_batch
from batchrun.cli import main
from batchrun.mock import MockServer
from batchrun.reader import InputFormat, LineParser, RawLine
from batchrun.records import BadLine, Request
from batchrun.runner import RunReport

Factory = Callable[..., MockServer]
LABELS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "label": {"enum": ["pos", "neg", "neutral"]},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
    },
    "required": ["label", "confidence"],
    "additionalProperties": False,
}
SCHEMA_FORMAT = {"type": "json_schema", "json_schema": {"name": "labels", "schema": LABELS}}
JSON_MODE = {"type": "json_object"}


def labelled(i: int, fault: str | None = None, times: int | None = None) -> dict[str, Any]:
    body = chat_request(i, response_format=SCHEMA_FORMAT)
    if fault is not None:
        mock: dict[str, Any] = {"fault": fault}
        if times is not None:
            mock["times"] = times
        body["metadata"] = {"mock": mock}
    return body


async def run(
    server: MockServer, tmp_path: Path, lines: list[Any], **options: Any
) -> tuple[RunReport, list[dict[str, Any]]]:
    config = RunConfig(
        input_path=write_jsonl(tmp_path / "in.jsonl", lines),
        outdir=tmp_path / "out",
        base_url=server.url,
        concurrency=4,
        retry=RetryConfig(max_attempts=3, backoff_base=0.01, backoff_cap=0.05),
        timeouts=Timeouts(read=5),
        **options,
    )
    with anyio.fail_after(60):
        report = await run_batch(config, api_key="k")
    return report, read_jsonl(tmp_path / "out" / "results.jsonl")


@pytest.mark.anyio
async def test_conforming_replies_carry_parsed(mock_server: Factory, tmp_path: Path) -> None:
    report, records = await run(mock_server(), tmp_path, [labelled(i) for i in range(6)])
    assert report.exit_code == 0
    for record in records:
        content = record["response"]["choices"][0]["message"]["content"]
        assert record["parsed"] == orjson.loads(content)
        assert Draft202012Validator(LABELS).is_valid(record["parsed"])
        assert (record["schema_attempts"], record["attempts"]) == (1, 1)
    structured = report.summary["structured"]
    assert structured == {
        "lines_checked": 6,
        "parsed_ok": 6,
        "violations_reasked": 0,
        "violations_recorded": 0,
        "discarded_tokens": 0,
    }
    assert not any("discarded_usage" in record for record in records)


@pytest.mark.anyio
@pytest.mark.parametrize("fault", ["schema_violation", "not_json"])
async def test_a_violation_is_asked_again_then_ok(
    mock_server: Factory, tmp_path: Path, fault: str
) -> None:
    log = tmp_path / "requests.jsonl"
    lines = [labelled(0), labelled(1, fault, times=2), labelled(2)]
    report, records = await run(mock_server(request_log=log), tmp_path, lines)
    assert report.exit_code == 0
    flaky = records[1]
    assert flaky["status"] == "ok" and Draft202012Validator(LABELS).is_valid(flaky["parsed"])
    # Two replies refused, the third kept: three transport attempts, none a retry.
    assert (flaky["schema_attempts"], flaky["attempts"]) == (3, 3)
    assert [r["schema_attempts"] for r in (records[0], records[2])] == [1, 1]
    assert len(read_jsonl(log)) == 5
    # The two refused replies were paid for: their usage is kept apart from `tokens`,
    # which sums the kept replies.
    discarded = flaky["discarded_usage"]
    assert discarded["total_tokens"] > 0
    assert discarded["total_tokens"] == discarded["prompt_tokens"] + discarded["completion_tokens"]
    summary = report.summary
    assert summary["structured"]["discarded_tokens"] == discarded["total_tokens"]
    kept = summary["tokens"]["total_tokens"]
    assert kept == sum(r["response"]["usage"]["total_tokens"] for r in records)
    assert summary["structured"]["violations_reasked"] == 2
    assert summary["structured"]["violations_recorded"] == 0
    assert summary["attempts"] == {"total": 5, "retries": 0}
    assert summary["session"]["retries"] == 0  # re-asks are not transport retries
    assert summary["session"]["requests_sent"] == 5


@pytest.mark.anyio
async def test_streamed_replies_are_checked_too(mock_server: Factory, tmp_path: Path) -> None:
    lines = [labelled(0), labelled(1, "not_json", times=1)]
    report, records = await run(mock_server(), tmp_path, lines, stream=True)
    assert report.exit_code == 0
    assert [r["schema_attempts"] for r in records] == [1, 2]
    assert all(
        "ttft_ms" in r and Draft202012Validator(LABELS).is_valid(r["parsed"]) for r in records
    )


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("fault", "message", "path"),
    [
        (
            "schema_violation",
            "$.label: 'unlisted' is not one of ['pos', 'neg', 'neutral']",
            "$.label",
        ),
        ("not_json", "content is not JSON", None),
    ],
)
async def test_a_violation_is_recorded_after_schema_retries(
    mock_server: Factory, tmp_path: Path, fault: str, message: str, path: str | None
) -> None:
    lines = [labelled(0), labelled(1, fault)]
    report, records = await run(mock_server(), tmp_path, lines, schema_retries=1)
    assert report.exit_code == 2
    failed = records[1]
    assert failed["status"] == "error"
    assert failed["error"]["type"] == "schema_violation"
    assert failed["error"]["message"].startswith(message)
    assert failed["error"].get("path") == path
    assert failed["error"]["retryable"] is True
    assert (failed["schema_attempts"], failed["attempts"]) == (2, 2)
    assert "parsed" not in failed
    errors = read_jsonl(tmp_path / "out" / "errors.jsonl")
    assert [e["index"] for e in errors] == [1]
    assert failed["discarded_usage"]["total_tokens"] > 0  # both refused replies
    structured = report.summary["structured"]
    assert structured == {
        "lines_checked": 2,
        "parsed_ok": 1,
        "violations_reasked": 1,
        "violations_recorded": 1,
        "discarded_tokens": failed["discarded_usage"]["total_tokens"],
    }
    assert report.summary["counts"]["errors_by_type"] == {"schema_violation": 1}


@pytest.mark.anyio
async def test_json_object_mode(mock_server: Factory, tmp_path: Path) -> None:
    ask = chat_request(0, response_format=JSON_MODE)
    broken = {
        **chat_request(1, response_format=JSON_MODE),
        "metadata": {"mock": {"fault": "schema_violation"}},
    }
    report, records = await run(mock_server(), tmp_path, [ask, broken], schema_retries=0)
    assert report.exit_code == 2
    assert isinstance(records[0]["parsed"], dict) and records[0]["schema_attempts"] == 1
    assert records[1]["error"]["type"] == "schema_violation"
    assert "not an object" in records[1]["error"]["message"]
    assert records[1]["schema_attempts"] == 1


@pytest.mark.anyio
async def test_lines_without_response_format_are_untouched(
    mock_server: Factory, tmp_path: Path
) -> None:
    text_mode = chat_request(2, response_format={"type": "text"})
    lines = [chat_request(0), chat_request(1), text_mode, labelled(3)]
    report, records = await run(mock_server(), tmp_path, lines)
    assert report.exit_code == 0
    plain = {
        "index",
        "line",
        "custom_id",
        "status",
        "response",
        "attempts",
        "latency_ms",
        "finished_at",
    }
    assert [set(r) for r in records[:3]] == [plain] * 3
    assert set(records[3]) == plain | {"parsed", "schema_attempts"}
    assert report.summary["structured"]["lines_checked"] == 1


@pytest.mark.anyio
async def test_a_bad_schema_is_the_lines_invalid_input(
    mock_server: Factory, tmp_path: Path
) -> None:
    log = tmp_path / "requests.jsonl"
    bad = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nope"}}}
    dangling = {
        "type": "json_schema",
        "json_schema": {"name": "x", "schema": {"$ref": "#/$defs/missing"}},
    }
    lines = [
        labelled(0),
        chat_request(1, response_format=bad),
        chat_request(2, response_format=dangling),
        labelled(3),
    ]
    report, records = await run(mock_server(request_log=log), tmp_path, lines)
    assert report.exit_code == 2
    assert [r["status"] for r in records] == ["ok", "error", "error", "ok"]
    first, second = records[1]["error"], records[2]["error"]
    assert first["type"] == second["type"] == "invalid_input"
    assert first["field"] == "response_format.json_schema.schema.type"
    assert first["message"].startswith("line 2: response_format.json_schema.schema.type: ")
    assert "invalid JSON Schema" in first["message"]
    assert second["field"] == "response_format.json_schema.schema"
    assert "points to nothing" in second["message"]
    assert records[1]["attempts"] == 0
    assert len(read_jsonl(log)) == 2  # the bad lines were never sent


def parse_all(parser: LineParser, bodies: list[dict[str, Any]]) -> list[Request | BadLine]:
    return [parser.parse(RawLine(i + 1, orjson.dumps(body), 0), i) for i, body in enumerate(bodies)]


def test_a_schema_shared_by_many_lines_is_compiled_once() -> None:
    parser = LineParser(InputFormat.PLAIN)
    # The same format, keys in another order on odd lines: one canonical key.
    reordered = {"json_schema": {"schema": LABELS, "name": "labels"}, "type": "json_schema"}
    bodies = [
        chat_request(i, response_format=reordered if i % 2 else SCHEMA_FORMAT) for i in range(2000)
    ]
    requests = parse_all(parser, bodies)
    assert all(isinstance(r, Request) and r.checker is not None for r in requests)
    assert parser.checkers is not None and parser.checkers.compiled == 1
    bad = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"minimum": "0"}}}
    refused = parse_all(parser, [chat_request(i, response_format=bad) for i in range(50)])
    assert all(isinstance(r, BadLine) for r in refused)
    assert parser.checkers.compiled == 2


def test_plain_lines_never_load_a_checker() -> None:
    parser = LineParser(InputFormat.PLAIN)
    requests = parse_all(parser, [chat_request(i) for i in range(10)])
    assert all(isinstance(r, Request) and r.checker is None for r in requests)
    assert parser.checkers is None


def test_the_checker_cache_is_bounded() -> None:
    parser = LineParser(InputFormat.PLAIN)
    formats = [
        {"type": "json_schema", "json_schema": {"name": "n", "schema": {"const": n}}}
        for n in range(200)
    ]
    parse_all(parser, [chat_request(n, response_format=f) for n, f in enumerate(formats)])
    assert parser.checkers is not None
    assert len(parser.checkers._entries) == 64
    parse_all(parser, [chat_request(0, response_format=formats[-1])])
    assert parser.checkers.compiled == 200  # the most recent one was still held


def test_schema_retries_flag(mock_server: Factory, tmp_path: Path) -> None:
    server = mock_server()
    path = write_jsonl(tmp_path / "in.jsonl", [labelled(0, "schema_violation", times=1)])
    args = ["run", str(path), "-o", str(tmp_path / "out"), "-q", "--base-url", server.url]
    env = {"MISTRAL_API_KEY": "k"}
    refused = CliRunner(env=env).invoke(main, [*args, "--schema-retries", "0"])
    assert refused.exit_code == 2, refused.output
    (record,) = read_jsonl(tmp_path / "out" / "results.jsonl")
    assert record["error"]["type"] == "schema_violation" and record["schema_attempts"] == 1
    # The rerun with --retry-failed asks again (the mock recovered after one arrival).
    env["BATCHRUN_RUN_SCHEMA_RETRIES"] = "0"
    again = CliRunner(env=env).invoke(main, [*args, "--retry-failed"])
    assert again.exit_code == 0, again.output
    (record,) = read_jsonl(tmp_path / "out" / "results.jsonl")
    assert record["status"] == "ok" and record["schema_attempts"] == 1
    negative = CliRunner(env=env).invoke(main, [*args, "--schema-retries", "-1"])
    assert negative.exit_code == 1
