"""Records: what the writer builds, `Record.parse` reads back, whatever the bytes hold."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from jsonl import chat_request, read_jsonl, write_jsonl

from batchrun import ResumeRefused, RetryConfig, RunConfig, run_batch
from batchrun.errors import (
    AllowanceExhausted,
    AuthError,
    BadResponse,
    ClientError,
    InvalidInput,
    RateLimited,
    RequestFailed,
    RetryableStatus,
    StreamTruncated,
    Timeout,
    TransportFailure,
)
from batchrun.mock import MockServer
from batchrun.records import BadLine, Record, Request, error_record, ok_record

# What orjson reads and writes: 64-bit integers, finite floats.
INTEGERS = st.integers(-(2**63), 2**63 - 1)
FLOATS = st.floats(allow_nan=False, allow_infinity=False)
SCALARS = st.none() | st.booleans() | INTEGERS | FLOATS | st.text()
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)
FIELD_NAMES = ["index", "line", "custom_id", "status", "response", "error", "attempts"]
FIELD_NAMES += ["latency_ms", "ttft_ms", "type", "message", "body", "retryable", "status_code"]
FIELD_NAMES += ["allowance", "usage", "model", "prompt_tokens", "completion_tokens"]
FIELD_NAMES += [
    "total_tokens",
    "ok",
    "schema_attempts",
    "discarded_usage",
    "choices",
    "content",
    "text",
    "cached",
]
# Objects keyed by record field names, so wrong types reach every field, nested ones too.
RECORDISH = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(FIELD_NAMES), inner, max_size=8)
    ),
    max_leaves=30,
)
FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "index": (int,),
    "line": (int,),
    "custom_id": (str,),
    "status": (str,),
    "response": (dict,),
    "error_type": (str,),
    "error_message": (str,),
    "error_body": (str,),
    "retryable": (bool,),
    "status_code": (int,),
    "allowance": (str,),
    "attempts": (int,),
    "schema_attempts": (int,),
    "discarded_tokens": (int,),
    "latency_ms": (int, float),
    "ttft_ms": (int, float),
    "model": (str,),
    "content": (str,),
    "prompt_tokens": (int,),
    "completion_tokens": (int,),
    "total_tokens": (int,),
    "score": (dict,),
    "slice": (str,),
    "finished_at": (int, float),
    "throttled": (int,),
    "usage": (dict,),
}
COUNTS = {
    "throttled",
    "attempts",
    "schema_attempts",
    "discarded_tokens",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
}


def assert_well_typed(record: Record) -> None:
    """Every field is None or of its declared type: no wrong type slips through."""
    fields = {name for name, value in vars(Record).items() if isinstance(value, property)}
    assert fields == {*FIELD_TYPES, "failed", "cached"}  # a new field gets a type here too
    for name, types in FIELD_TYPES.items():
        value = getattr(record, name)
        if value is None:
            continue
        assert type(value) in types, (name, value)
        if name in COUNTS:
            assert value >= 0, (name, value)
    assert record.status in (None, "ok", "error")
    assert record.cached is (record.data.get("cached") is True)  # only a literal true


@given(st.binary())
def test_any_bytes_parse_or_are_refused_without_raising(raw: bytes) -> None:
    record = Record.parse(raw)
    if record is not None:
        assert_well_typed(record)


@given(JSON)
def test_any_json_value_is_a_record_exactly_when_it_is_an_object(value: object) -> None:
    record = Record.parse(orjson.dumps(value))
    assert (record is None) == (not isinstance(value, dict))
    assert record == Record.from_value(value)
    if record is not None:
        assert_well_typed(record)


@given(st.dictionaries(st.sampled_from(FIELD_NAMES), RECORDISH, max_size=12))
def test_a_field_of_the_wrong_type_reads_as_absent(value: dict[str, Any]) -> None:
    record = Record.from_value(value)
    assert record is not None
    assert_well_typed(record)
    for name in ("index", "line", "custom_id", "attempts", "latency_ms", "ttft_ms"):
        raw, kept = value.get(name), getattr(record, name)
        if kept is not None:
            assert kept == raw and type(kept) is type(raw)
        else:
            wrong_type = type(raw) not in FIELD_TYPES[name]
            assert wrong_type or (name in COUNTS and isinstance(raw, int) and raw < 0), raw


def test_a_bool_is_never_a_number_and_a_count_is_never_negative() -> None:
    record = Record.from_value(
        {
            "index": True,
            "attempts": -1,
            "latency_ms": False,
            "status": "ok",
            "response": {"model": "", "usage": {"prompt_tokens": True, "total_tokens": -3}},
            "error": {"status_code": True, "retryable": 1, "allowance": 0},
        }
    )
    assert record is not None and record.status == "ok" and record.model == ""
    assert (record.index, record.attempts, record.latency_ms) == (None, None, None)
    assert (record.prompt_tokens, record.total_tokens) == (None, None)
    assert (record.status_code, record.retryable, record.allowance) == (None, None, None)


REQUEST_IDS = st.none() | st.text(max_size=20)
TIMES = st.floats(min_value=0, max_value=1e7, allow_nan=False)


def requests() -> st.SearchStrategy[Request]:
    return st.builds(
        Request,
        index=st.integers(0, 10**9),
        line=st.integers(1, 10**9),
        custom_id=REQUEST_IDS,
        payload=st.just(b"{}"),
        stream=st.booleans(),
    )


def failures() -> st.SearchStrategy[RequestFailed]:
    body = st.binary(max_size=50)
    return st.one_of(
        st.builds(RetryableStatus, st.sampled_from([408, 409, 500, 503]), body),
        st.builds(RateLimited, body, st.none() | TIMES),
        st.builds(AllowanceExhausted, body, st.text(), st.text()),
        st.builds(AuthError, st.sampled_from([401, 403]), body),
        st.builds(ClientError, st.sampled_from([400, 404, 422]), body),
        st.builds(Timeout, st.text()),
        st.builds(TransportFailure, st.text()),
        st.builds(StreamTruncated, st.text()),
        st.builds(BadResponse, st.text()),
        st.builds(InvalidInput, st.text(), field=st.none() | st.text()),
    )


@given(
    requests(),
    st.dictionaries(st.text(), JSON, max_size=5),
    st.integers(1, 100),
    TIMES,
    st.none() | TIMES,
)
def test_every_ok_record_the_writer_builds_reads_back(
    request: Request,
    response: dict[str, Any],
    attempts: int,
    latency_ms: float,
    ttft_ms: float | None,
) -> None:
    written = ok_record(
        request, response, attempts=attempts, latency_ms=latency_ms, ttft_ms=ttft_ms
    )
    record = Record.parse(written.data)
    assert record is not None and not record.failed and not written.failed
    assert (record.index, record.line, record.custom_id) == (
        request.index,
        request.line,
        request.custom_id,
    )
    assert (record.status, record.response, record.attempts) == ("ok", response, attempts)
    assert record.latency_ms == round(latency_ms, 2)
    assert record.ttft_ms == (None if ttft_ms is None else round(ttft_ms, 2))
    assert record.error_type is None and record.error_message is None


def bad_lines() -> st.SearchStrategy[tuple[BadLine, RequestFailed]]:
    def bad(index: int, number: int, custom_id: str | None, reason: str) -> BadLine:
        return BadLine(index, number, custom_id, InvalidInput(reason, line=number))

    lines = st.builds(bad, st.integers(0, 10**9), st.integers(1, 10**9), REQUEST_IDS, st.text())
    return lines.map(lambda line: (line, line.error))


@given(
    st.tuples(requests(), failures()) | bad_lines(),
    st.integers(0, 100),
    st.none() | TIMES,
)
def test_every_error_record_the_writer_builds_reads_back(
    failed: tuple[Request | BadLine, RequestFailed], attempts: int, latency_ms: float | None
) -> None:
    line, error = failed
    written = error_record(line, error, attempts=attempts, latency_ms=latency_ms)
    record = Record.parse(written.data)
    assert record is not None and record.failed and written.failed
    assert (record.index, record.line, record.custom_id) == (line.index, line.line, line.custom_id)
    assert (record.status, record.response, record.attempts) == ("error", None, attempts)
    assert record.latency_ms == (None if latency_ms is None else round(latency_ms, 2))
    assert (record.error_type, record.error_message) == (error.error_type, error.message)
    assert record.retryable is error.retryable
    assert record.status_code == getattr(error, "status_code", None)
    assert record.allowance == getattr(error, "allowance", None)


@pytest.mark.anyio
async def test_every_record_of_a_real_run_reads_back_as_written(
    mock_server: Callable[..., MockServer], tmp_path: Path
) -> None:
    """Through run_batch and the mock: ok, HTTP errors, invalid input, with and without
    custom_id, streamed (ttft_ms) and not."""
    server = mock_server()
    plain = [
        chat_request(0),
        chat_request(1, fault="500"),
        {"model": "m"},  # no messages: invalid_input
        chat_request(3, stream=True),
        chat_request(4, fault="401"),
        b"not json",
    ]
    batch = [{"custom_id": f"id-{i}", "body": chat_request(i)} for i in range(3)]
    batch.append({"custom_id": "id-bad", "body": {"model": "m"}})
    seen: list[Record] = []
    for name, lines in (("plain", plain), ("batch", batch)):
        path = write_jsonl(tmp_path / f"{name}.jsonl", lines)
        config = RunConfig(
            input_path=path,
            outdir=tmp_path / name,
            base_url=server.url,
            retry=RetryConfig(max_attempts=2, backoff_base=0.01, backoff_cap=0.02),
        )
        with anyio.fail_after(30):
            await run_batch(config, api_key="k")
        raw_lines = (tmp_path / name / "results.jsonl").read_bytes().splitlines()
        assert len(raw_lines) == len(lines)
        for raw, stored in zip(
            raw_lines, read_jsonl(tmp_path / name / "results.jsonl"), strict=True
        ):
            record = Record.parse(raw)
            assert record is not None
            assert_reads_back(record, stored)
            seen.append(record)
    assert {r.error_type for r in seen} == {None, "http_status", "invalid_input"}
    assert any(r.ttft_ms is not None for r in seen) and any(r.status_code == 401 for r in seen)
    assert {r.custom_id for r in seen if r.failed} >= {None, "id-bad"}


def assert_reads_back(record: Record, stored: dict[str, Any]) -> None:
    for name in ("index", "line", "custom_id", "status", "response", "attempts"):
        assert getattr(record, name) == stored.get(name), name
    assert (record.latency_ms, record.ttft_ms) == (stored.get("latency_ms"), stored.get("ttft_ms"))
    error = stored.get("error", {})
    assert (record.error_type, record.error_message) == (error.get("type"), error.get("message"))
    assert (record.retryable, record.status_code) == (
        error.get("retryable"),
        error.get("status_code"),
    )
    usage = stored.get("response", {}).get("usage", {})
    assert record.completion_tokens == usage.get("completion_tokens")
    assert record.model == stored.get("response", {}).get("model")


@pytest.mark.anyio
@pytest.mark.parametrize("index", ["0", True, 0.0, None])
async def test_a_journal_record_without_an_integer_index_refuses_the_resume(
    mock_server: Callable[..., MockServer], tmp_path: Path, index: object
) -> None:
    server = mock_server()
    path = write_jsonl(tmp_path / "in.jsonl", [chat_request(i) for i in range(3)])
    config = RunConfig(input_path=path, outdir=tmp_path / "out", base_url=server.url)
    with anyio.fail_after(30):
        await run_batch(config, api_key="k")
    journal = tmp_path / "out" / "journal.jsonl"
    first, *rest = journal.read_bytes().splitlines(keepends=True)
    journal.write_bytes(
        b"".join([orjson.dumps({**orjson.loads(first), "index": index}) + b"\n", *rest])
    )
    with anyio.fail_after(30), pytest.raises(ResumeRefused, match="line 1 has no integer index"):
        await run_batch(config, api_key="k")


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("plain", "plain"),
        ([{"type": "thinking", "thinking": "hm"}, {"type": "text", "text": "a"}, "x"], "a"),
        ([{"type": "text", "text": "a"}, {"type": "text", "text": 5}, {"type": "text"}], "a"),
        (None, None),
        (7, None),
    ],
)
def test_content_is_the_text_of_choice_0(content: object, expected: str | None) -> None:
    reply = {"choices": [{"message": {"content": content}}, {"message": {"content": "other"}}]}
    record = Record.from_value({"status": "ok", "response": reply})
    assert record is not None
    assert record.content == expected
