"""Hostile servers: whatever a reply holds, each line ends in one record and nothing raises.

Every reply here comes from the mock server's scripted raw mode (`metadata.mock.raw`)
over a real 127.0.0.1 round trip through `run_batch`; the resume after each run proves
the stored records cannot poison later sessions either.
"""

from __future__ import annotations

import base64
import dataclasses
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonl import write_jsonl

from batchrun import RetryConfig, RunConfig, RunReport, Timeouts, run_batch
from batchrun.mock import MockConfig, MockServer

Factory = Callable[..., MockServer]
MODEL = "mistral-small-latest"
USAGE = {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
# A line answered 429 for ever waits them out for rate_limit_wait, not max_attempts.
FAST_RETRY = RetryConfig(
    max_attempts=2,
    backoff_base=0.001,
    backoff_cap=0.002,
    retry_after_cap=0.01,
    rate_limit_wait=0.05,
)


def line(i: int, raw: dict[str, Any] | None = None, **mock: Any) -> dict[str, Any]:
    """Request line `i`; with `raw`, the mock answers it with that scripted reply."""
    body: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": f"l{i}"}]}
    if raw is not None:
        mock["raw"] = raw
    if mock:
        body["metadata"] = {"mock": mock}
    return body


def completion(**fields: Any) -> dict[str, Any]:
    message = {"role": "assistant", "content": "hi"}
    choice = {"index": 0, "message": message, "finish_reason": "stop"}
    return {"id": "c", "object": "chat.completion", "created": 1, "model": MODEL} | {
        "choices": [choice],
        "usage": USAGE,
        **fields,
    }


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, **fields: Any) -> str:
    choice = {"index": 0, "delta": delta or {}, "finish_reason": finish}
    head = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": MODEL}
    return orjson.dumps({**head, "choices": [choice], **fields}).decode()


def body(value: Any) -> dict[str, Any]:
    return {"body": orjson.dumps(value).decode()}


def config_for(
    server: MockServer, outdir: Path, lines: list[dict[str, Any]], **options: Any
) -> RunConfig:
    path = outdir.with_suffix(".jsonl")
    write_jsonl(path, lines)
    return RunConfig(
        input_path=path,
        outdir=outdir,
        base_url=server.url,
        concurrency=options.pop("concurrency", 4),
        retry=options.pop("retry", FAST_RETRY),
        timeouts=options.pop("timeouts", Timeouts(read=5, stream_idle=2, stream_total=10)),
        fsync=False,
        **options,
    )


def records_of(outdir: Path, name: str = "results.jsonl") -> list[dict[str, Any]]:
    return [orjson.loads(x) for x in (outdir / name).read_bytes().splitlines()]


async def run_and_resume(config: RunConfig) -> tuple[RunReport, list[dict[str, Any]]]:
    """Run, check one ordered record per line and a readable summary, then resume (with
    --retry-failed, so failed lines meet the hostile server again) and check again."""
    with anyio.fail_after(60):
        report = await run_batch(config, api_key="k")
        records = check_outdir(config, report)
        again = await run_batch(dataclasses.replace(config, retry_failed=True), api_key="k")
        check_outdir(config, again)
    return report, records


def check_outdir(config: RunConfig, report: RunReport) -> list[dict[str, Any]]:
    records = records_of(config.outdir)
    count = len(config.input_path.read_bytes().splitlines())
    assert [r["index"] for r in records] == list(range(count))
    assert report.exit_code in (0, 2)
    summary = orjson.loads((config.outdir / "summary.json").read_bytes())
    assert summary == report.summary
    assert summary["counts"]["done"] == count and summary["counts"]["not_done"] == 0
    for record in records:
        if record["status"] == "ok":
            assert_usable(record["response"])
    return records


def assert_usable(response: Any) -> None:
    """The structural minimum every ok record's response meets (client.parse_completion)."""
    assert isinstance(response, dict)
    choices = response["choices"]
    assert isinstance(choices, list) and choices
    assert all(isinstance(c, dict) and isinstance(c.get("message"), dict) for c in choices)


# --- one regression test per defect named in the issue -------------------------------------


@pytest.mark.anyio
async def test_usage_that_is_not_an_object_is_kept_and_the_summary_copes(
    mock_server: Factory, tmp_path: Path
) -> None:
    server = mock_server()
    odd_usage = [5, "many", [1, 2], {"prompt_tokens": "3", "completion_tokens": [1]}, None]
    lines = [line(i, body(completion(usage=u))) for i, u in enumerate(odd_usage)]
    lines.append(line(9))
    report, records = await run_and_resume(config_for(server, tmp_path / "out", lines))
    assert [r["status"] for r in records] == ["ok"] * 6
    assert [r["response"]["usage"] for r in records[:5]] == odd_usage  # kept verbatim
    assert report.summary["tokens_by_model"][MODEL]["requests"] == 6
    assert (
        report.summary["tokens"]["total_tokens"] == records[5]["response"]["usage"]["total_tokens"]
    )


@pytest.mark.anyio
async def test_ok_replies_that_contain_status_error_stay_out_of_errors_jsonl(
    mock_server: Factory, tmp_path: Path
) -> None:
    """errors.jsonl is chosen by each record's status, not by `"status":"error"` bytes
    (which a reply can hold as a key of its own, e.g. tool-call style objects)."""
    server = mock_server()
    lines = [line(0, body(completion(result={"status": "error"}))), line(1), line(2, fault="422")]
    report, records = await run_and_resume(config_for(server, tmp_path / "out", lines))
    assert b'"status":"error"' in (tmp_path / "out" / "results.jsonl").read_bytes().split(b"\n")[0]
    assert [r["status"] for r in records] == ["ok", "ok", "error"]
    assert [r["index"] for r in records_of(tmp_path / "out", "errors.jsonl")] == [2]
    assert report.summary["counts"]["failed"] == 1


@pytest.mark.anyio
async def test_streamed_choices_that_are_not_a_list(mock_server: Factory, tmp_path: Path) -> None:
    server = mock_server()
    good = [chunk({"role": "assistant", "content": "a"}), chunk({}, "stop", usage=USAGE), "[DONE]"]
    odd = orjson.dumps({"id": "c", "model": MODEL, "choices": 5}).decode()
    lines = [
        line(0, {"events": [odd, *good]}),
        line(1, {"events": [odd, odd, "[DONE]"]}),
        line(
            2,
            {
                "events": [
                    chunk(usage=5, choices=[{"index": 0, "delta": 5, "finish_reason": "stop"}]),
                    "[DONE]",
                ]
            },
        ),
    ]
    config = config_for(server, tmp_path / "out", [{**x, "stream": True} for x in lines])
    _, records = await run_and_resume(config)
    assert [r["status"] for r in records] == ["ok", "error", "ok"]
    assert records[0]["response"]["choices"][0]["message"]["content"] == "a"
    assert records[1]["error"]["type"] == "stream_truncated"
    assert records[2]["response"]["usage"] == 5


@pytest.mark.anyio
async def test_streamed_tool_arguments_object_then_text(
    mock_server: Factory, tmp_path: Path
) -> None:
    server = mock_server()
    first = {
        "index": 0,
        "id": "t",
        "type": "function",
        "function": {"name": "f", "arguments": {"a": 1}},
    }
    rest = {"index": 0, "function": {"arguments": '{"b": 2}'}}
    events = [
        chunk({"tool_calls": [first]}),
        chunk({"tool_calls": [rest]}),
        chunk({}, "tool_calls"),
        "[DONE]",
    ]
    config = config_for(server, tmp_path / "out", [{**line(0, {"events": events}), "stream": True}])
    _, records = await run_and_resume(config)
    assert records[0]["status"] == "ok"
    call = records[0]["response"]["choices"][0]["message"]["tool_calls"][0]
    assert call["function"] == {"name": "f", "arguments": {"a": 1}}


@pytest.mark.anyio
@pytest.mark.parametrize(
    "value",
    [
        "Mon, 01 Jan 99999999999999999999 00:00:00 GMT",
        "Mon, 01 Jan 0000 00:00:00 GMT",
        "Tue, 31 Feb 2026 25:61:61 +9999",
        "1e999",
        "-5",
        "\t",
    ],
)
async def test_unusable_retry_after_is_ignored(
    mock_server: Factory, tmp_path: Path, value: str
) -> None:
    server = mock_server()
    raw = {"status": 429, "headers": [["retry-after", value], ["retry-after-ms", value]]}
    lines = [line(0, raw, times=1), line(1, raw)]
    _, records = await run_and_resume(config_for(server, tmp_path / "out", lines))
    assert records[0]["status"] == "ok" and records[0]["attempts"] == 2
    assert records[1]["error"]["type"] == "rate_limited"


NOT_COMPLETIONS = [
    {"body": ""},
    {"body": "{not json"},
    {"body_base64": "/w=="},  # not UTF-8
    body([]),
    body(5),
    body({"id": "x"}),
    body(completion(choices=5)),
    body(completion(choices=[])),
    body(completion(choices=[5])),
    body(completion(choices=[{"index": 0, "finish_reason": "stop"}])),
    body(completion(choices=[{"index": 0, "message": "hi", "finish_reason": "stop"}])),
    body(completion(choices=[{"message": {}, "finish_reason": "error"}])),
    {"body": "[" * 5000},  # deeper than any JSON parser nests
    {"body": "{}", "headers": [["content-encoding", "gzip"]]},
]


@pytest.mark.anyio
async def test_200_replies_that_are_not_completions_are_invalid_responses(
    mock_server: Factory, tmp_path: Path
) -> None:
    server = mock_server()
    lines = [line(i, raw, times=1) for i, raw in enumerate(NOT_COMPLETIONS)]
    lines += [line(100 + i, raw) for i, raw in enumerate(NOT_COMPLETIONS)]
    report, records = await run_and_resume(config_for(server, tmp_path / "out", lines))
    count = len(NOT_COMPLETIONS)
    assert [(r["status"], r["attempts"]) for r in records[:count]] == [("ok", 2)] * count
    failed = records[count:]
    assert all(r["status"] == "error" and r["attempts"] == 2 for r in failed)
    assert {r["error"]["type"] for r in failed} <= {"invalid_response", "connection"}
    assert [r["error"]["type"] for r in failed][:-1] == ["invalid_response"] * (count - 1)
    assert all(r["error"]["retryable"] for r in failed)
    assert report.exit_code == 2


@pytest.mark.anyio
async def test_a_stored_record_of_any_shape_does_not_stop_a_resume(
    mock_server: Factory, tmp_path: Path
) -> None:
    """Records written by an older version, or edited by hand, with wrong types anywhere."""
    server = mock_server()
    config = config_for(server, tmp_path / "out", [line(i) for i in range(4)])
    with anyio.fail_after(30):
        await run_batch(config, api_key="k")
    odd: list[dict[str, Any]] = [
        {
            "attempts": "2",
            "latency_ms": "fast",
            "ttft_ms": [1],
            "response": {"model": {"a": 1}, "usage": {"total_tokens": True}},
        },
        {"attempts": [1], "response": [], "latency_ms": True},
        {"status": "error", "error": ["timeout"], "attempts": None},
        {"status": "error", "error": {"type": {"nested": 1}}, "attempts": 1.5},
    ]
    lines = []
    for record, changes in zip(records_of(config.outdir), odd, strict=True):
        lines.append(orjson.dumps({**record, **changes}) + b"\n")
    for name in ("results.jsonl", "journal.jsonl"):
        (config.outdir / name).write_bytes(b"".join(lines))
    with anyio.fail_after(30):
        report = await run_batch(config, api_key="k")
    assert report.summary["counts"]["ok"] == 2 and report.summary["counts"]["failed"] == 2
    assert report.summary["session"]["requests_sent"] == 0


# --- the property: any reply, any number of them, one record per line --------------------

JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)
TOOL_CALL = {
    "id": "t1",
    "type": "function",
    "index": 0,
    "function": {"name": "f", "arguments": '{"a": 1}'},
}
COMPLETION = completion(
    choices=[
        {
            "index": 0,
            "message": {"role": "assistant", "content": "hi", "tool_calls": [TOOL_CALL]},
            "finish_reason": "tool_calls",
            "logprobs": {"content": [{"token": "hi", "logprob": -0.1}]},
        }
    ]
)
THINKING = [
    {"type": "thinking", "thinking": [{"type": "text", "text": "hm"}]},
    {"type": "text", "text": "a"},
]
CHUNKS = [
    orjson.loads(chunk({"role": "assistant", "content": ""})),
    orjson.loads(chunk({"content": THINKING})),
    orjson.loads(chunk({"tool_calls": [TOOL_CALL]})),
    orjson.loads(chunk({}, "stop", usage=USAGE)),
]
ODD_HEADER_VALUES = [
    "Mon, 01 Jan 99999999999999999999 00:00:00 GMT",
    "Mon, 01 Jan 0000 00:00:00 GMT",
    "1e999",
    "-1",
    "nan",
    "0",
    "",
    "99999999999999999999999999",
    "text/event-stream; charset=utf-16",
    "application/json; charset=nope",
    "multipart/mixed; boundary=",
    "gzip",
    "br",
    "deflate, x",
]
HEADER_NAMES = [
    "retry-after",
    "retry-after-ms",
    "content-type",
    "content-encoding",
    "set-cookie",
    "x-ratelimit-remaining-tokens-minute",
    "x-extra",
]
HEADER_TEXT = st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=30)
HEADERS = st.lists(
    st.tuples(st.sampled_from(HEADER_NAMES), st.sampled_from(ODD_HEADER_VALUES) | HEADER_TEXT),
    max_size=3,
)
STATUSES = st.sampled_from([200] * 6 + [400, 404, 422, 429, 500, 503, 299, 599])


def paths_of(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(value, dict):
        for key, inner in value.items():
            found += paths_of(inner, (*prefix, key))
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            found += paths_of(inner, (*prefix, index))
    return found


def mutated_at(doc: Any, path: tuple[Any, ...], action: str, value: Any, name: str) -> Any:
    """`doc` with the node at `path` replaced by `value`, deleted, or given an extra field."""
    if not path:
        if action == "extra" and isinstance(doc, dict):
            return {**doc, name: value}
        return value
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    if action == "delete":
        del parent[path[-1]]
    elif action == "extra" and isinstance(parent[path[-1]], dict):
        parent[path[-1]][name] = value
    else:
        parent[path[-1]] = value
    return doc


@st.composite
def malformed(draw: st.DrawFn, template: Any) -> Any:
    """`template` with 0-3 nodes, anywhere, given a wrong type, removed or extended."""
    doc = orjson.loads(orjson.dumps(template))
    for _ in range(draw(st.integers(0, 3))):
        path = draw(st.sampled_from(paths_of(doc)))
        action = draw(st.sampled_from(["replace", "delete", "extra"]))
        doc = mutated_at(doc, path, action, draw(JSON_VALUES), draw(st.text(max_size=4)))
    return doc


RAW_EVENTS = st.sampled_from(
    [
        {"raw": ": keep-alive\n\n"},
        {"raw": "event: error\ndata: {}\n\n"},
        {"raw": 'data: {"a\n\n'},
        {"raw": "\r\n\r\n"},
        {"raw": "data: [DONE]"},
        {"raw": "id: \u0000\nretry: x\n\n"},
        "[DONE]",
        "",
        "null",
    ]
)
EVENT = malformed(CHUNKS[1]).map(lambda c: orjson.dumps(c).decode()) | RAW_EVENTS
EVENTS = st.builds(
    lambda chunks, extra, done: [*(orjson.dumps(c).decode() for c in chunks), *extra, *done],
    st.tuples(*(malformed(c) for c in CHUNKS)),
    st.lists(EVENT, max_size=3),
    st.sampled_from([["[DONE]"], [], ["[DONE]", "junk after done"]]),
)
BODIES = (
    malformed(COMPLETION).map(lambda c: {"body": orjson.dumps(c).decode()})
    | st.text(max_size=40).map(lambda t: {"body": t})
    | st.binary(max_size=40).map(lambda b: {"body_base64": base64.b64encode(b).decode()})
    | st.just({"body": orjson.dumps(COMPLETION).decode()[:-7]})
)


@st.composite
def scripted_lines(draw: st.DrawFn) -> list[dict[str, Any]]:
    """2-6 request lines, each answered by its own scripted reply (or a real one)."""
    lines = []
    for i in range(draw(st.integers(2, 6))):
        stream = draw(st.booleans())
        if draw(st.integers(0, 9)) == 0:
            lines.append({**line(i), "stream": stream})  # the mock's own reply
            continue
        raw: dict[str, Any] = dict(draw(BODIES)) if draw(st.integers(0, 4)) == 0 else {}
        if not raw:
            raw = {"events": draw(EVENTS)} if stream else draw(BODIES)
        raw["status"] = draw(STATUSES)
        raw["headers"] = [list(pair) for pair in draw(HEADERS)]
        lines.append({**line(i, raw), "stream": stream})
    return lines


PROPERTY_TIMEOUTS = Timeouts(read=5, stream_idle=5, stream_total=10)


def check_hostile_lines(server: MockServer, lines: list[dict[str, Any]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        config = config_for(server, Path(tmp) / "out", lines, timeouts=PROPERTY_TIMEOUTS)
        records = anyio.run(run_and_resume, config)[1]
    kinds = {r["error"]["type"] for r in records if r["status"] == "error"}
    assert kinds <= {
        "invalid_response",
        "stream_truncated",
        "connection",
        "timeout",
        "http_status",
        "rate_limited",
    }


@pytest.fixture(scope="module")
def hostile_server() -> Iterator[MockServer]:
    """One server for every hypothesis example (scripted replies keep no state)."""
    with MockServer(MockConfig()) as server:
        yield server


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=scripted_lines())
def test_any_reply_ends_in_one_record_per_line(
    hostile_server: MockServer, lines: list[dict[str, Any]]
) -> None:
    check_hostile_lines(hostile_server, lines)


@pytest.mark.slow
@pytest.mark.timeout(1800)
@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=scripted_lines())
def test_any_reply_soak(hostile_server: MockServer, lines: list[dict[str, Any]]) -> None:
    check_hostile_lines(hostile_server, lines)
