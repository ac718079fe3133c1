"""The mock under structured output: answers that conform to the request's json_schema
(checked with jsonschema over generated schemas), and the schema_violation / not_json
faults, over real 127.0.0.1 HTTP and through run_batch."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from jsonl import chat_request, read_jsonl, write_jsonl
from jsonschema.validators import validator_for

from batchrun import RetryConfig, RunConfig, Timeouts, run_batch
from batchrun.errors import SchemaViolation
from batchrun.mock import MockServer
from batchrun.mock.kinds import CONTENT_FAULTS, FAULT_HELP, FAULT_KINDS
from batchrun.mock.replies import WORDS
from batchrun.mock.schemas import conforming, violating
from batchrun.structured import OutputChecker, output_checker

Factory = Callable[..., MockServer]
KEY = {"authorization": "Bearer k"}
LABELS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "label": {"enum": ["pos", "neg", "neutral"]},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        "reason": {"type": "string", "minLength": 12, "maxLength": 80},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2, "uniqueItems": True},
        "source": {"type": "object", "properties": {"page": {"type": "integer", "minimum": 1}}},
    },
    "required": ["label", "confidence", "reason", "tags"],
    "additionalProperties": False,
}


def schema_format(schema: object) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "labels", "schema": schema}}


def labelled(text: str, fault: str | None = None, **mock: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "m",
        "messages": [{"role": "user", "content": text}],
        "response_format": schema_format(LABELS),
    }
    if fault is not None:
        body["metadata"] = {"mock": {"fault": fault, **mock}}
    return body


def checker(schema: dict[str, Any] = LABELS) -> OutputChecker:
    built = output_checker(schema_format(schema))
    assert built is not None
    return built


def is_valid(schema: Any, value: Any) -> bool:
    valid: bool = validator_for(schema)(schema).is_valid(value)
    return valid


def key(n: int) -> bytes:
    return hashlib.blake2b(str(n).encode(), digest_size=8).digest()


async def post(
    server: MockServer, body: dict[str, Any], headers: dict[str, str] | None = None
) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=5) as client:
        response = await client.post(
            server.url + "/v1/chat/completions", content=orjson.dumps(body), headers=headers or KEY
        )
    assert response.status_code == 200
    reply: dict[str, Any] = response.json()
    return reply


async def post_streamed(server: MockServer, body: dict[str, Any]) -> str:
    """The content of a streamed reply, reassembled from its events."""
    async with httpx.AsyncClient(timeout=5) as client:
        response = await client.post(
            server.url + "/v1/chat/completions",
            content=orjson.dumps({**body, "stream": True}),
            headers=KEY,
        )
    assert response.status_code == 200
    content = ""
    for line in response.text.splitlines():
        if line.startswith("data: {"):
            for choice in orjson.loads(line[6:])["choices"]:
                content += choice["delta"].get("content") or ""
    return content


# --- the instance builder, over generated schemas ----------------------------------------------


@st.composite
def strings(draw: st.DrawFn) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    if draw(st.booleans()):
        schema["minLength"] = draw(st.integers(0, 40))
    if draw(st.booleans()):
        schema["maxLength"] = draw(st.integers(schema.get("minLength", 0), 60))
    if draw(st.booleans()):
        schema["format"] = draw(st.sampled_from(["date", "date-time", "email", "uuid", "other"]))
    return schema


@st.composite
def integers(draw: st.DrawFn) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "integer"}
    low = draw(st.integers(-1000, 1000))
    step = draw(st.sampled_from([None, 2, 3, 7]))
    width = draw(st.integers(2 * (step or 1) + 2, 500))
    if draw(st.booleans()):
        schema["exclusiveMinimum" if draw(st.booleans()) else "minimum"] = low
    if draw(st.booleans()):
        schema["exclusiveMaximum" if draw(st.booleans()) else "maximum"] = low + width
    if step is not None:
        schema["multipleOf"] = step
    return schema


@st.composite
def numbers(draw: st.DrawFn) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "number"}
    low = draw(st.floats(-1e6, 1e6))
    step = draw(st.sampled_from([None, 0.5, 0.25, 0.1]))
    width = draw(st.floats(max(0.01, 3 * (step or 0)), 1e4))
    if draw(st.booleans()):
        schema["exclusiveMinimum" if draw(st.booleans()) else "minimum"] = low
    if draw(st.booleans()):
        schema["exclusiveMaximum" if draw(st.booleans()) else "maximum"] = low + width
    if step is not None:
        schema["multipleOf"] = step
    return schema


scalars = st.none() | st.booleans() | st.integers(-5, 5) | st.sampled_from(["a", "b", "é"])
leaves = st.one_of(
    strings(),
    integers(),
    numbers(),
    st.just({"type": "boolean"}),
    st.just({"type": "null"}),
    st.just({}),
    st.just(True),
    st.lists(scalars, min_size=1, max_size=4, unique=True).map(lambda values: {"enum": values}),
    scalars.map(lambda value: {"const": value}),
    st.just({"type": ["string", "null"]}),
)


@st.composite
def objects(draw: st.DrawFn, children: st.SearchStrategy[Any]) -> dict[str, Any]:
    properties = draw(st.dictionaries(st.sampled_from(["a", "b", "c", "é"]), children, max_size=4))
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    schema["required"] = [name for name in properties if draw(st.booleans())]
    closed = draw(st.booleans())
    if closed:
        schema["additionalProperties"] = False
    if draw(st.booleans()):
        schema["minProperties"] = draw(st.integers(0, len(properties) if closed else 6))
    return schema


@st.composite
def arrays(draw: st.DrawFn, children: st.SearchStrategy[Any]) -> dict[str, Any]:
    low = draw(st.integers(0, 4))
    schema: dict[str, Any] = {"type": "array", "minItems": low}
    if draw(st.booleans()):
        schema["maxItems"] = draw(st.integers(low, 6))
    if draw(st.booleans()):
        schema["items"] = {"type": draw(st.sampled_from(["string", "integer"]))}
        schema["uniqueItems"] = True
    else:
        schema["items"] = draw(children)
    return schema


nested = st.recursive(
    leaves,
    lambda children: st.one_of(
        objects(children),
        arrays(children),
        st.tuples(children, children).map(lambda pair: {"anyOf": list(pair)}),
        strings().map(lambda s: {"oneOf": [s, {"type": "null"}]}),
        children.map(lambda child: {"allOf": [child]}),
    ),
    max_leaves=10,
)
with_refs = st.tuples(nested, nested).map(
    lambda pair: {
        "$defs": {"item": pair[0]},
        "type": "object",
        "properties": {"x": {"$ref": "#/$defs/item"}, "y": {"items": {"$ref": "#/$defs/item"}}},
        "required": ["x", "y"],
        **({"additionalProperties": pair[1]} if isinstance(pair[1], dict) else {}),
    }
)
schemas = nested | with_refs


@settings(max_examples=300, deadline=None)
@given(schemas, st.integers(0, 2**32))
@example(LABELS, 0)
@example({"type": "integer", "exclusiveMinimum": 0, "exclusiveMaximum": 2}, 5)
@example({"type": "number", "minimum": 0.25, "maximum": 0.65, "multipleOf": 0.1}, 1)
def test_answers_conform_to_any_simple_schema(schema: object, n: int) -> None:
    value = conforming(schema, key(n), WORDS)
    assert is_valid(schema, value), value
    assert conforming(schema, key(n), WORDS) == value  # the same request, the same answer


@settings(max_examples=300, deadline=None)
@given(schemas, st.integers(0, 2**32))
def test_violations_break_any_schema_that_pins_its_top(schema: Any, n: int) -> None:
    pinned = isinstance(schema, dict) and any(
        word in schema for word in ("type", "enum", "const", "required")
    )
    if pinned and not ({"anyOf", "oneOf"} & set(schema)):
        assert not is_valid(schema, violating(schema, key(n), WORDS))


def test_a_violation_has_a_path_when_the_schema_allows() -> None:
    value = violating(LABELS, key(1), WORDS)
    assert value["label"] == "unlisted" and set(value) == set(LABELS["required"])
    with pytest.raises(SchemaViolation) as caught:
        checker().check(orjson.dumps(value).decode())
    assert caught.value.message == "$.label: 'unlisted' is not one of ['pos', 'neg', 'neutral']"


def test_rows_get_different_answers_and_each_label_comes_up() -> None:
    answers = [conforming(LABELS, key(n), WORDS) for n in range(60)]
    assert {a["label"] for a in answers} == {"pos", "neg", "neutral"}
    assert len({a["reason"] for a in answers}) > 30
    assert all(is_valid(LABELS, a) for a in answers)


def test_a_schema_asking_for_a_huge_answer_gets_a_bounded_one() -> None:
    huge: dict[str, Any] = {"type": "string", "minLength": 3}
    for _ in range(6):
        huge = {"type": "array", "items": huge, "minItems": 64}
    assert len(orjson.dumps(conforming(huge, key(0), WORDS))) < 1_000_000
    endless: dict[str, Any] = {"type": "object", "required": ["next"]}
    endless["properties"] = {"next": {"$ref": "#"}}
    assert orjson.dumps(conforming(endless, key(0), WORDS)).count(b"next") > 10


# --- over HTTP -----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_json_schema_replies_conform_and_are_stable(mock_server: Factory) -> None:
    server, twin = mock_server(), mock_server()
    with anyio.fail_after(20):
        first = await post(server, labelled("a great film"))
        again = await post(twin, labelled("a great film"))
        others = [await post(server, labelled(f"review {n}")) for n in range(12)]
        streamed = await post_streamed(server, labelled("a great film"))
    parsed = checker().check_reply(first)
    assert parsed == checker().check_reply(again) and is_valid(LABELS, parsed)
    assert first["choices"][0]["finish_reason"] == "stop"
    assert streamed == first["choices"][0]["message"]["content"]
    reasons = {checker().check_reply(reply)["reason"] for reply in others}
    assert len(reasons) > 6  # rows differ where the schema lets them


@pytest.mark.anyio
async def test_json_object_replies_are_objects(mock_server: Factory) -> None:
    server = mock_server()
    body = {**labelled("x"), "response_format": {"type": "json_object"}}
    json_mode = output_checker({"type": "json_object"})
    assert json_mode is not None
    with anyio.fail_after(10):
        reply = await post(server, body)
        broken = await post(server, body, {**KEY, "x-mock-fault": "schema_violation"})
    assert isinstance(json_mode.check_reply(reply), dict)
    with pytest.raises(SchemaViolation, match="not an object"):
        json_mode.check_reply(broken)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ("schema_violation", "$.label: 'unlisted' is not one of"),
        ("not_json", "content is not JSON"),
    ],
)
async def test_content_faults_by_header_body_and_config(
    mock_server: Factory, fault: str, message: str
) -> None:
    server, faulty = mock_server(), mock_server(fault=fault)
    with anyio.fail_after(10):
        by_header = await post(server, labelled("h"), {**KEY, "x-mock-fault": fault})
        by_body = await post(server, labelled("b", fault))
        by_config = await post(faulty, labelled("c"))
        streamed = await post_streamed(server, labelled("s", fault))
    for reply in (by_header, by_body, by_config):
        with pytest.raises(SchemaViolation) as caught:
            checker().check_reply(reply)
        assert caught.value.message.startswith(message)
        assert reply["choices"][0]["finish_reason"] == "stop"
    with pytest.raises(SchemaViolation) as from_stream:
        checker().check(streamed)
    assert from_stream.value.message.startswith(message)


@pytest.mark.anyio
async def test_content_faults_recover_after_times(mock_server: Factory, tmp_path: Path) -> None:
    log = tmp_path / "requests.jsonl"
    server = mock_server(request_log=log)
    body = labelled("flaky", "schema_violation", times=2)
    with anyio.fail_after(10):
        replies = [await post(server, body) for _ in range(4)]
    outcomes = []
    for reply in replies:
        try:
            checker().check_reply(reply)
            outcomes.append("ok")
        except SchemaViolation:
            outcomes.append("violation")
    assert outcomes == ["violation", "violation", "ok", "ok"]
    assert [line["fault"] for line in read_jsonl(log)] == ["schema_violation"] * 2 + [None] * 2
    assert [line["status"] for line in read_jsonl(log)] == [200] * 4


def test_content_faults_are_listed_with_help() -> None:
    assert set(CONTENT_FAULTS) <= set(FAULT_KINDS)
    assert all(FAULT_HELP[kind].startswith("200 ") for kind in CONTENT_FAULTS)


# --- through run_batch -------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_batch_gets_conforming_and_scripted_bad_answers(
    mock_server: Factory, tmp_path: Path
) -> None:
    """Every line's content conforms to the schema (the run parses it) unless the line
    asked for a content fault, which the run records as schema_violation."""
    server = mock_server(latency_ms=1, jitter_ms=10)
    faults = {3: "schema_violation", 7: "not_json", 11: "schema_violation"}
    lines = [
        chat_request(
            i, response_format=schema_format(LABELS), metadata={"mock": {"fault": faults[i]}}
        )
        if i in faults
        else chat_request(i, response_format=schema_format(LABELS))
        for i in range(40)
    ]
    path = write_jsonl(tmp_path / "in.jsonl", lines)
    config = RunConfig(
        input_path=path,
        outdir=tmp_path / "out",
        base_url=server.url,
        concurrency=8,
        retry=RetryConfig(max_attempts=2, backoff_base=0.01, backoff_cap=0.05),
        timeouts=Timeouts(read=5),
        schema_retries=0,
    )
    with anyio.fail_after(60):
        report = await run_batch(config, api_key="k")
    assert report.exit_code == 2
    records = read_jsonl(tmp_path / "out" / "results.jsonl")
    failed = {}
    for record in records:
        if record["status"] == "ok":
            assert is_valid(LABELS, checker().check_reply(record["response"]))
            assert record["parsed"] == checker().check_reply(record["response"])
        else:
            error = record["error"]
            failed[record["index"]] = error["type"] if "path" in error else "not_json"
    assert failed == {3: "schema_violation", 7: "not_json", 11: "schema_violation"}


keywords = st.sampled_from(
    [
        *("type", "enum", "const", "properties", "required", "items", "prefixItems", "contains"),
        *("minItems", "maxItems", "uniqueItems", "minLength", "maxLength", "format", "minimum"),
        *("maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf", "allOf", "anyOf"),
        *("oneOf", "$ref", "$defs", "additionalProperties", "patternProperties", "minProperties"),
    ]
)
odd_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(["string", "integer", "number", "object", "array", "#", "#/$defs/a", "(", ""]),
)
any_schemas = st.recursive(
    odd_values,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keywords, inner, max_size=5),
    max_leaves=15,
)


@settings(max_examples=300, deadline=None)
@given(any_schemas, st.integers(0, 2**32))
@example({"type": "integer", "minimum": 1e300}, 0)
@example({"type": "number", "minimum": 1e308, "multipleOf": 1e-308}, 0)
@example({"type": "number", "minimum": -1.7e308, "maximum": 1.7e308}, 0)
@example({"$defs": {"a": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"}, 0)
@example({"type": "array", "minItems": 2**62, "items": {"type": "string", "minLength": 2**62}}, 0)
def test_any_schema_gets_an_answer_json_can_hold(schema: Any, n: int) -> None:
    """Whatever a request calls its schema, the mock answers with writable JSON."""
    orjson.dumps(conforming(schema, key(n), WORDS))
    orjson.dumps(violating(schema, key(n), WORDS))
