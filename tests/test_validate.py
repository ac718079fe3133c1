"""Pre-send validation: each §7 checklist rule, the warnings, and that no input whatsoever can
make the validator raise anything but InvalidInput."""

from __future__ import annotations

import contextlib
import copy
import math
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batchrun.errors import InvalidInput
from batchrun.validate import FIELDS, validate_body

USER: dict[str, Any] = {"role": "user", "content": "hi"}
SYSTEM: dict[str, Any] = {"role": "system", "content": "be brief"}
TOOL: dict[str, Any] = {
    "type": "function",
    "function": {"name": "search", "parameters": {"type": "object"}},
}
CALL: dict[str, Any] = {
    "id": "c1",
    "type": "function",
    "function": {"name": "search", "arguments": "{}"},
}
NAMED: dict[str, Any] = {"type": "function", "function": {"name": "search"}}
SCHEMA: dict[str, Any] = {"name": "answer", "schema": {"type": "object"}}


def body(**fields: Any) -> dict[str, Any]:
    return {"model": "mistral-small-latest", "messages": [USER], **fields}


def user(*chunks: Any) -> dict[str, Any]:
    """A body whose only message is a user message made of these chunks."""
    return body(messages=[{"role": "user", "content": list(chunks)}])


def round_trip(*tool_messages: dict[str, Any], calls: list[Any] | None = None) -> dict[str, Any]:
    assistant = {"role": "assistant", "tool_calls": [CALL] if calls is None else calls}
    return body(tools=[TOOL], messages=[USER, assistant, *tool_messages])


def thinking(*parts: Any) -> dict[str, Any]:
    return {"type": "thinking", "thinking": list(parts)}


TEXT: dict[str, Any] = {"type": "text", "text": "look"}

# ---- valid bodies of every shape --------------------------------------------------------

VALID = {
    "minimal": body(),
    "sampling": body(temperature=0.3, max_tokens=100, min_tokens=100, n=2, random_seed=0),
    "penalties": body(top_p=0.9, presence_penalty=-2, frequency_penalty=2, repetition_penalty=1.1),
    "stream true": body(stream=True, stop="\n"),
    "stop array": body(stop=["\n", "END"], safe_prompt=True, parallel_tool_calls=False),
    "integral floats in number fields": body(temperature=1, top_p=1, presence_penalty=0),
    "system chunks": body(messages=[{"role": "system", "content": [TEXT, thinking(TEXT)]}, USER]),
    "every user chunk": user(
        TEXT,
        {"type": "image_url", "image_url": "data:image/png;base64,AAAA"},
        {"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "low"}},
        {"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": None}},
        {"type": "document_url", "document_url": "https://x/d.pdf", "document_name": "d"},
        {"type": "document_url", "document_url": "https://x/d.pdf", "document_name": None},
        {"type": "reference", "reference_ids": [1, "two"]},
        {"type": "file", "file_id": "f-1"},
        {"type": "input_audio", "input_audio": "UklGRg=="},
        {"type": "resource", "uri": "file:///a", "content": TEXT},
        {
            "type": "resource",
            "uri": "file:///b",
            "content": {"type": "image_url", "image_url": "u"},
        },
        {"type": "resource_link", "uri": "file:///c", "metadata": {"a": 1, "b": "x", "c": True}},
        {"type": "resource_link", "uri": "file:///d"},
    ),
    "thinking with every part": user(
        {
            "type": "thinking",
            "thinking": [
                TEXT,
                {"type": "reference", "reference_ids": [3]},
                {"type": "tool_reference", "tool": "web_search", "title": "t"},
            ],
            "signature": "sig",
            "closed": True,
        }
    ),
    "user content null": body(messages=[{"role": "user", "content": None}]),
    "empty string content": body(messages=[{"role": "user", "content": ""}]),
    "tools + auto": body(tools=[TOOL], tool_choice="auto"),
    "tools + any": body(tools=[TOOL], tool_choice="any"),
    "tools + required": body(tools=[TOOL], tool_choice="required"),
    "tool_choice none without tools": body(tool_choice="none"),
    "named tool_choice": body(tools=[TOOL], tool_choice=NAMED),
    "named tool_choice without type": body(
        tools=[TOOL], tool_choice={"function": {"name": "search"}}
    ),
    "tool type defaults to function": body(tools=[{"function": TOOL["function"]}]),
    "full function tool": body(
        tools=[
            {
                "type": "function",
                "function": {**TOOL["function"], "description": "find", "strict": True},
            },
            {"type": "function", "function": {"name": "other", "parameters": {}}},
        ]
    ),
    "tool round trip": round_trip({"role": "tool", "tool_call_id": "c1", "content": "42"}),
    "tool round trip, two results": round_trip(
        {"role": "tool", "tool_call_id": "a", "name": "search", "content": "1"},
        {"role": "tool", "tool_call_id": "b", "content": [TEXT]},
        calls=[{**CALL, "id": "a"}, {**CALL, "id": "b", "index": 1}],
    ),
    "tool call without ids": round_trip(
        {"role": "tool", "tool_call_id": "anything", "content": None},
        calls=[{"function": {"name": "search", "arguments": {"q": 1}}}],
    ),
    "tool round then user": body(
        messages=[
            USER,
            {"role": "assistant", "content": "", "tool_calls": [CALL]},
            {"role": "tool", "content": "42"},
            {"role": "assistant", "content": [TEXT]},
            USER,
        ]
    ),
    "assistant prefix": body(
        messages=[USER, {"role": "assistant", "content": "Sure,", "prefix": True}]
    ),
    "prefix false mid-conversation": body(
        messages=[SYSTEM, USER, {"role": "assistant", "content": "a", "prefix": False}, USER]
    ),
    "json_schema": body(response_format={"type": "json_schema", "json_schema": SCHEMA}),
    "json_schema in full": body(
        response_format={
            "type": "json_schema",
            "json_schema": {**SCHEMA, "description": None, "strict": True},
        }
    ),
    "json_object asked for": body(
        messages=[{"role": "system", "content": "Reply in JSON."}, USER],
        response_format={"type": "json_object"},
    ),
    "json_object asked for in a chunk": body(
        messages=[{"role": "user", "content": [{"type": "text", "text": "give json"}]}],
        response_format={"type": "json_object"},
    ),
    "response_format text": body(response_format={"type": "text"}),
    "response_format empty": body(response_format={}),
    "prediction": body(prediction={"type": "content", "content": "draft"}),
    "prediction without type": body(prediction={"content": ""}),
    "logprobs": body(logprobs=True, top_logprobs=2, prompt_logprobs=True, top_prompt_logprobs=0),
    "open and closed enums": body(
        service_tier="standard_only", reasoning_effort="max", prompt_mode="reasoning"
    ),
    "metadata and cache key": body(metadata={"any": [1, {"x": None}]}, prompt_cache_key=""),
    "guardrails": body(guardrails=[{"block_on_error": True, "moderation_llm_v1": {}}, {}]),
    "every nullable field null": body(**{n: None for n, f in FIELDS.items() if f.nullable}),
    "top_k zero": body(top_k=0),
    "64-bit seed": body(random_seed=2**63 - 1),
}


@pytest.mark.parametrize("request_body", VALID.values(), ids=VALID.keys())
def test_valid_bodies_pass_without_warnings(request_body: dict[str, Any]) -> None:
    assert validate_body(request_body) == []


def test_model_may_come_from_the_cli_in_batch_lines() -> None:
    assert validate_body({"messages": [USER]}, model_required=False) == []
    assert validate_body({"model": "m", "messages": [USER]}, model_required=False) == []


def test_any_mapping_is_accepted() -> None:
    assert validate_body(MappingProxyType(body(temperature=0.1))) == []


# ---- one invalid body per rule (at least), with the exact field --------------------------

TOOL_ROUND = [USER, {"role": "assistant", "tool_calls": [CALL]}]

INVALID: list[tuple[str, dict[str, Any], str, str]] = [
    # 1: model and messages
    ("model missing", {"messages": [USER]}, "model", "required field is missing"),
    ("model empty", body(model=""), "model", "non-empty string"),
    ("model null", body(model=None), "model", "null"),
    ("model number", body(model=5), "model", "got 5 (integer)"),
    ("messages missing", {"model": "m"}, "messages", "required field is missing"),
    ("messages empty", body(messages=[]), "messages", "must not be empty"),
    ("messages object", body(messages={"role": "user"}), "messages", "array of messages"),
    ("messages null", body(messages=None), "messages", "null"),
    # 2: role
    ("message not object", body(messages=["hi"]), "messages[0]", "message object"),
    ("role missing", body(messages=[{"content": "x"}]), "messages[0].role", "missing"),
    (
        "role unknown",
        body(messages=[{"role": "wizard", "content": "x"}]),
        "messages[0].role",
        "one of",
    ),
    (
        "role unhashable",
        body(messages=[{"role": ["user"], "content": "x"}]),
        "messages[0].role",
        "array",
    ),
    # 3: system
    (
        "system null",
        body(messages=[{"role": "system", "content": None}, USER]),
        "messages[0].content",
        "must not be null",
    ),
    (
        "system without content",
        body(messages=[{"role": "system"}, USER]),
        "messages[0].content",
        "missing",
    ),
    (
        "system image",
        body(
            messages=[
                {"role": "system", "content": [{"type": "image_url", "image_url": "u"}]},
                USER,
            ]
        ),
        "messages[0].content[0].type",
        "not allowed here",
    ),
    (
        "system unknown chunk",
        body(messages=[{"role": "system", "content": [{"type": "hologram"}]}, USER]),
        "messages[0].content[0].type",
        "not allowed here",
    ),
    # 4: user and tool content key
    ("user without content", body(messages=[{"role": "user"}]), "messages[0].content", "missing"),
    (
        "tool without content",
        body(messages=[*TOOL_ROUND, {"role": "tool", "tool_call_id": "c1"}]),
        "messages[2].content",
        "missing",
    ),
    (
        "content number",
        body(messages=[{"role": "user", "content": 5}]),
        "messages[0].content",
        "string or an array",
    ),
    # 5: chunks
    ("chunk not object", user("hi"), "messages[0].content[0]", "chunk object"),
    ("chunk without type", user({"text": "x"}), "messages[0].content[0].type", "missing"),
    ("chunk type number", user({"type": 1}), "messages[0].content[0].type", "must be a string"),
    ("text missing", user({"type": "text"}), "messages[0].content[0].text", "missing"),
    ("text not string", user({"type": "text", "text": 1}), "messages[0].content[0].text", "string"),
    (
        "image_url missing",
        user({"type": "image_url"}),
        "messages[0].content[0].image_url",
        "missing",
    ),
    (
        "image_url number",
        user({"type": "image_url", "image_url": 3}),
        "messages[0].content[0].image_url",
        "URL string",
    ),
    (
        "image_url without url",
        user({"type": "image_url", "image_url": {"detail": "low"}}),
        "messages[0].content[0].image_url.url",
        "missing",
    ),
    (
        "image detail",
        user({"type": "image_url", "image_url": {"url": "u", "detail": "ultra"}}),
        "messages[0].content[0].image_url.detail",
        "one of low, auto, high",
    ),
    (
        "document_url",
        user(TEXT, {"type": "document_url", "document_url": None}),
        "messages[0].content[1].document_url",
        "null",
    ),
    (
        "document_name",
        user({"type": "document_url", "document_url": "d", "document_name": 3}),
        "messages[0].content[0].document_name",
        "string",
    ),
    (
        "reference ids not array",
        user({"type": "reference", "reference_ids": 1}),
        "messages[0].content[0].reference_ids",
        "array",
    ),
    (
        "reference id bool",
        user({"type": "reference", "reference_ids": [1, True]}),
        "messages[0].content[0].reference_ids[1]",
        "integer or a string",
    ),
    ("file_id", user({"type": "file"}), "messages[0].content[0].file_id", "missing"),
    (
        "input_audio",
        user({"type": "input_audio", "input_audio": []}),
        "messages[0].content[0].input_audio",
        "string",
    ),
    (
        "thinking not array",
        user({"type": "thinking", "thinking": "hmm"}),
        "messages[0].content[0].thinking",
        "array of content chunks",
    ),
    (
        "thinking holds an image",
        user(thinking({"type": "image_url", "image_url": "u"})),
        "messages[0].content[0].thinking[0].type",
        "not allowed here",
    ),
    (
        "thinking text missing",
        user(thinking(TEXT, {"type": "text"})),
        "messages[0].content[0].thinking[1].text",
        "missing",
    ),
    (
        "tool_reference title",
        user(thinking({"type": "tool_reference", "tool": "web_search"})),
        "messages[0].content[0].thinking[0].title",
        "missing",
    ),
    (
        "thinking signature",
        user({"type": "thinking", "thinking": [], "signature": 5}),
        "messages[0].content[0].signature",
        "string",
    ),
    (
        "resource uri",
        user({"type": "resource", "content": TEXT}),
        "messages[0].content[0].uri",
        "missing",
    ),
    (
        "resource content type",
        user({"type": "resource", "uri": "u", "content": {"type": "file", "file_id": "f"}}),
        "messages[0].content[0].content.type",
        "not allowed here",
    ),
    (
        "resource_link metadata",
        user({"type": "resource_link", "uri": "u", "metadata": {"k": [1]}}),
        "messages[0].content[0].metadata.k",
        "string, number or boolean",
    ),
    # 6: assistant fields and tool calls
    (
        "prefix string",
        body(messages=[USER, {"role": "assistant", "content": "a", "prefix": "yes"}]),
        "messages[1].prefix",
        "boolean",
    ),
    (
        "prefix null",
        body(messages=[USER, {"role": "assistant", "content": "a", "prefix": None}]),
        "messages[1].prefix",
        "null",
    ),
    (
        "tool_calls object",
        body(messages=[USER, {"role": "assistant", "tool_calls": CALL}]),
        "messages[1].tool_calls",
        "array of tool calls",
    ),
    (
        "tool call without function",
        body(messages=[USER, {"role": "assistant", "tool_calls": [{"id": "x"}]}]),
        "messages[1].tool_calls[0].function",
        "missing",
    ),
    (
        "tool call without name",
        body(
            messages=[
                USER,
                {"role": "assistant", "tool_calls": [{"function": {"arguments": "{}"}}]},
            ]
        ),
        "messages[1].tool_calls[0].function.name",
        "missing",
    ),
    (
        "tool call arguments",
        body(messages=[USER, {"role": "assistant", "tool_calls": [{"function": {"name": "f"}}]}]),
        "messages[1].tool_calls[0].function.arguments",
        "missing",
    ),
    (
        "tool call arguments number",
        body(
            messages=[
                USER,
                {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": 1}}]},
            ]
        ),
        "messages[1].tool_calls[0].function.arguments",
        "string of JSON or an object",
    ),
    (
        "tool call id",
        body(messages=[USER, {"role": "assistant", "tool_calls": [{**CALL, "id": 7}]}]),
        "messages[1].tool_calls[0].id",
        "string",
    ),
    (
        "tool call index",
        body(messages=[USER, {"role": "assistant", "tool_calls": [{**CALL, "index": -1}]}]),
        "messages[1].tool_calls[0].index",
        "integer >= 0",
    ),
    # 7: empty assistant
    (
        "assistant empty",
        body(messages=[USER, {"role": "assistant", "content": ""}, USER]),
        "messages[1]",
        "non-empty content or tool_calls",
    ),
    (
        "assistant empty calls",
        body(messages=[USER, {"role": "assistant", "content": [], "tool_calls": []}, USER]),
        "messages[1]",
        "non-empty content or tool_calls",
    ),
    # 8: prefix position and the last message
    (
        "prefix not last",
        body(messages=[USER, {"role": "assistant", "content": "a", "prefix": True}, USER]),
        "messages[1].prefix",
        "last message",
    ),
    (
        "last assistant",
        body(messages=[USER, {"role": "assistant", "content": "a"}]),
        "messages[1].role",
        "last",
    ),
    ("last system", body(messages=[SYSTEM]), "messages[0].role", "last"),
    (
        "prefix on a system message counts for nothing",
        body(messages=[USER, {**SYSTEM, "prefix": True}]),
        "messages[1].role",
        "last",
    ),
    # 9: tool messages
    (
        "tool after user",
        body(messages=[USER, {"role": "tool", "content": "x"}]),
        "messages[1]",
        "follow",
    ),
    (
        "tool after plain assistant",
        body(
            messages=[USER, {"role": "assistant", "content": "a"}, {"role": "tool", "content": "x"}]
        ),
        "messages[2]",
        "follow",
    ),
    (
        "tool id mismatch",
        round_trip({"role": "tool", "tool_call_id": "zz", "content": "x"}),
        "messages[2].tool_call_id",
        "matches none",
    ),
    (
        "tool id number",
        round_trip({"role": "tool", "tool_call_id": 1, "content": "x"}),
        "messages[2].tool_call_id",
        "string",
    ),
    (
        "tool name number",
        round_trip({"role": "tool", "name": 1, "content": "x"}),
        "messages[2].name",
        "string",
    ),
    # 10, 27: temperature and JSON numbers
    ("temperature negative", body(temperature=-0.1), "temperature", "number >= 0"),
    ("temperature string", body(temperature="0.5"), "temperature", 'got "0.5" (string)'),
    ("temperature NaN", body(temperature=math.nan), "temperature", "finite number"),
    ("temperature inf", body(temperature=math.inf), "temperature", "got Infinity"),
    ("temperature bool", body(temperature=True), "temperature", "boolean"),
    # 11
    ("top_p high", body(top_p=1.5), "top_p", "in [0, 1]"),
    ("top_p negative", body(top_p=-0.1), "top_p", "in [0, 1]"),
    # 12
    ("max_tokens zero", body(max_tokens=0), "max_tokens", "integer >= 1"),
    ("max_tokens bool", body(max_tokens=True), "max_tokens", "got true (boolean)"),
    ("max_tokens float", body(max_tokens=10.0), "max_tokens", "got 10.0 (number)"),
    ("max_tokens huge", body(max_tokens=2**64), "max_tokens", "64-bit integer"),
    ("max_tokens enormous", body(max_tokens=10**5000), "max_tokens", "wider than 64 bits"),
    ("min_tokens negative", body(min_tokens=-1), "min_tokens", "integer >= 0"),
    ("min over max", body(min_tokens=5, max_tokens=2), "min_tokens", "<= max_tokens (2)"),
    # 13
    ("n zero", body(n=0), "n", "integer >= 1"),
    ("n float", body(n=1.5), "n", "integer"),
    # 14
    ("presence_penalty", body(presence_penalty=3), "presence_penalty", "in [-2, 2]"),
    ("frequency_penalty", body(frequency_penalty=-2.5), "frequency_penalty", "in [-2, 2]"),
    ("penalty string", body(frequency_penalty="1"), "frequency_penalty", "string"),
    ("repetition_penalty NaN", body(repetition_penalty=math.nan), "repetition_penalty", "finite"),
    # 15
    ("random_seed negative", body(random_seed=-1), "random_seed", "integer >= 0"),
    ("random_seed float", body(random_seed=1.5), "random_seed", "integer"),
    ("top_k negative", body(top_k=-1), "top_k", "integer >= 0"),
    ("top_k float", body(top_k=1.5), "top_k", "integer"),
    ("top_logprobs negative", body(logprobs=True, top_logprobs=-1), "top_logprobs", ">= 0"),
    ("top_logprobs alone", body(top_logprobs=2), "top_logprobs", "logprobs: true"),
    (
        "top_logprobs, logprobs off",
        body(logprobs=False, top_logprobs=2),
        "top_logprobs",
        "logprobs",
    ),
    ("top_prompt_logprobs float", body(top_prompt_logprobs=1.0), "top_prompt_logprobs", "integer"),
    # 16
    ("stop number", body(stop=5), "stop", "array of strings"),
    ("stop item number", body(stop=["a", 1]), "stop[1]", "string"),
    ("stop item null", body(stop=[None]), "stop[0]", "string"),
    # 17
    ("response_format string", body(response_format="json"), "response_format", "object"),
    ("response_format null", body(response_format=None), "response_format", "null"),
    (
        "response_format type number",
        body(response_format={"type": 1}),
        "response_format.type",
        "string",
    ),
    (
        "json_schema missing",
        body(response_format={"type": "json_schema"}),
        "response_format.json_schema",
        "missing",
    ),
    (
        "json_schema name",
        body(response_format={"type": "json_schema", "json_schema": {"schema": {}}}),
        "response_format.json_schema.name",
        "missing",
    ),
    (
        "json_schema schema",
        body(response_format={"type": "json_schema", "json_schema": {"name": "x"}}),
        "response_format.json_schema.schema",
        "missing",
    ),
    (
        "json_schema schema not object",
        body(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": "{}"}}),
        "response_format.json_schema.schema",
        "object",
    ),
    # 19
    ("tool_choice unknown", body(tool_choice="sometimes"), "tool_choice", "one of auto, none"),
    ("tool_choice number", body(tool_choice=1), "tool_choice", "one of"),
    ("tool_choice null", body(tool_choice=None), "tool_choice", "null"),
    (
        "tool_choice without name",
        body(tools=[TOOL], tool_choice={"type": "function", "function": {}}),
        "tool_choice.function.name",
        "missing",
    ),
    (
        "tool_choice names no tool",
        body(tools=[TOOL], tool_choice={"type": "function", "function": {"name": "nope"}}),
        "tool_choice.function.name",
        "not the name of a function in tools",
    ),
    # 20
    ("any without tools", body(tool_choice="any"), "tool_choice", "non-empty array"),
    ("required, tools empty", body(tools=[], tool_choice="required"), "tool_choice", "non-empty"),
    ("required, tools null", body(tools=None, tool_choice="required"), "tool_choice", "non-empty"),
    ("named without tools", body(tool_choice=NAMED), "tool_choice.function.name", "not the name"),
    # 21
    ("tools object", body(tools=TOOL), "tools", "array of tools"),
    ("tool not object", body(tools=["search"]), "tools[0]", "object"),
    (
        "tool type unknown",
        body(tools=[{**TOOL, "type": "banana"}]),
        "tools[0].type",
        "one of function",
    ),
    ("tool type null", body(tools=[{**TOOL, "type": None}]), "tools[0].type", "one of function"),
    ("tool without function", body(tools=[{"type": "function"}]), "tools[0].function", "missing"),
    (
        "tool without name",
        body(tools=[{"type": "function", "function": {"parameters": {}}}]),
        "tools[0].function.name",
        "missing",
    ),
    (
        "tool without parameters",
        body(tools=[TOOL, {"type": "function", "function": {"name": "f"}}]),
        "tools[1].function.parameters",
        "missing",
    ),
    (
        "tool parameters array",
        body(tools=[{"type": "function", "function": {"name": "f", "parameters": []}}]),
        "tools[0].function.parameters",
        "object",
    ),
    (
        "tool description number",
        body(tools=[{"function": {**TOOL["function"], "description": 1}}]),
        "tools[0].function.description",
        "string",
    ),
    ("duplicate tool names", body(tools=[TOOL, TOOL]), "tools[1].function.name", "duplicate"),
    (
        "document_library without ids",
        body(tools=[{"type": "document_library"}]),
        "tools[0].library_ids",
        "missing",
    ),
    # 22
    ("prediction string", body(prediction="draft"), "prediction", "object"),
    (
        "prediction type",
        body(prediction={"type": "diff", "content": "x"}),
        "prediction.type",
        "one of content",
    ),
    ("prediction content", body(prediction={"type": "content"}), "prediction.content", "missing"),
    # 23
    ("prompt_mode number", body(prompt_mode=1), "prompt_mode", "string such as reasoning"),
    ("reasoning_effort number", body(reasoning_effort=3), "reasoning_effort", "string such as"),
    (
        "service_tier unknown",
        body(service_tier="fast"),
        "service_tier",
        "one of auto, standard_only",
    ),
    # 24
    ("parallel_tool_calls int", body(parallel_tool_calls=1), "parallel_tool_calls", "boolean"),
    ("safe_prompt string", body(safe_prompt="true"), "safe_prompt", "boolean"),
    ("safe_prompt null", body(safe_prompt=None), "safe_prompt", "null"),
    ("logprobs int", body(logprobs=1), "logprobs", "boolean"),
    ("prompt_logprobs string", body(prompt_logprobs="no"), "prompt_logprobs", "boolean"),
    ("metadata array", body(metadata=[]), "metadata", "object"),
    # 25: stream (true is fine, see VALID)
    ("stream string", body(stream="yes"), "stream", "boolean"),
    ("stream null", body(stream=None), "stream", "null"),
    # other SDK fields
    ("guardrails object", body(guardrails={}), "guardrails", "array"),
    (
        "guardrail flag",
        body(guardrails=[{"block_on_error": "yes"}]),
        "guardrails[0].block_on_error",
        "boolean",
    ),
    ("prompt_cache_key number", body(prompt_cache_key=1), "prompt_cache_key", "string"),
]


@pytest.mark.parametrize(
    ("request_body", "field", "reason"),
    [case[1:] for case in INVALID],
    ids=[case[0] for case in INVALID],
)
def test_each_rule_names_the_field(request_body: dict[str, Any], field: str, reason: str) -> None:
    with pytest.raises(InvalidInput) as info:
        validate_body(request_body)
    assert info.value.field == field
    assert reason in info.value.reason
    assert info.value.line is None  # the reader knows the line, not the validator


@pytest.mark.parametrize("not_an_object", [[], "body", None, 1])
def test_body_must_be_an_object(not_an_object: Any) -> None:
    with pytest.raises(InvalidInput, match="JSON object"):
        validate_body(not_an_object)


@pytest.mark.parametrize(
    ("request_body", "field"),
    [({"model": "", "messages": [USER]}, "model"), ({"model": None, "messages": [USER]}, "model")],
)
def test_a_given_model_must_still_be_valid(request_body: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidInput) as info:
        validate_body(request_body, model_required=False)
    assert info.value.field == field


# ---- warnings ---------------------------------------------------------------------------

WARNINGS = {
    "unknown field": (body(seed=3), "seed: unknown field"),
    "temperature and top_p": (body(temperature=0.2, top_p=0.5), "temperature, top_p: both set"),
    "temperature high": (body(temperature=1.8), "temperature: above 1.5"),
    "json_object not asked for": (
        body(response_format={"type": "json_object"}),
        "response_format: json_object, but no system or user message asks for JSON",
    ),
    "json only mentioned by the assistant": (
        body(
            messages=[USER, {"role": "assistant", "content": "json"}, USER],
            response_format={"type": "json_object"},
        ),
        "asks for JSON",
    ),
    "unknown chunk": (
        user({"type": "hologram"}),
        'messages[*].content[*].type: unknown chunk type "hologram"',
    ),
    "tool_reference outside thinking": (
        user({"type": "tool_reference", "tool": "t", "title": "t"}),
        "unknown chunk type",
    ),
    "reasoning_effort open enum": (
        body(reasoning_effort="extreme"),
        'reasoning_effort: "extreme" is not',
    ),
    "prompt_mode open enum": (body(prompt_mode="fast"), 'prompt_mode: "fast" is not a documented'),
    "response_format.type open enum": (
        body(response_format={"type": "xml"}),
        'response_format.type: "xml" is not a documented value',
    ),
    "built-in tool": (
        body(tools=[{"type": "image_generation"}]),
        'tools[*].type: built-in tool "image',
    ),
}


@pytest.mark.parametrize(("request_body", "warning"), WARNINGS.values(), ids=WARNINGS.keys())
def test_soft_problems_are_warnings(request_body: dict[str, Any], warning: str) -> None:
    warnings = validate_body(request_body)
    assert len(warnings) == 1
    assert warning in warnings[0]


def test_top_p_at_its_default_does_not_warn() -> None:
    assert validate_body(body(temperature=0.2, top_p=1)) == []


def test_the_same_problem_reads_as_one_warning_wherever_it_is() -> None:
    """The reader counts warnings by their text, so positions must not split them."""
    odd = {"type": "hologram"}
    first = validate_body(user(odd))
    later = validate_body(body(messages=[SYSTEM, USER, {"role": "user", "content": [TEXT, odd]}]))
    assert first == later


def test_deep_values_do_not_recurse() -> None:
    """orjson allows 1024 levels; nothing here walks into free-form values at all."""
    deep: list[Any] = []
    for _ in range(100_000):
        deep = [deep]
    messages = [
        {
            "role": "user",
            "content": [{"type": "hologram", "x": deep}, {"type": "text", "text": "json"}],
        }
    ]
    request_body = body(
        messages=messages, metadata={"d": deep}, response_format={"type": "json_object"}
    )
    assert validate_body(request_body) == [
        'messages[*].content[*].type: unknown chunk type "hologram", sent as is'
    ]


# ---- hypothesis: valid bodies always pass; nothing raises but InvalidInput --------------

WORDS = [*FIELDS, "role", "content", "type", "text", "function", "name", "parameters", "arguments"]
WORDS += ["tool_calls", "prefix", "tool_call_id", "json_schema", "schema", "url", "image_url"]
WORDS += ["thinking", "uri", "system", "user", "assistant", "tool", "auto", "any", "json_object"]
words = st.sampled_from(WORDS)
scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5) | words
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(words | st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=12,
)

texts = st.text(max_size=12)
text_chunks = st.builds(lambda t: {"type": "text", "text": t}, texts)
thinking_chunks = st.builds(
    lambda parts, closed: {"type": "thinking", "thinking": parts, "closed": closed},
    st.lists(text_chunks, max_size=2),
    st.booleans(),
)
any_chunks = st.one_of(
    text_chunks,
    thinking_chunks,
    st.builds(lambda u: {"type": "image_url", "image_url": u}, texts),
    st.builds(
        lambda u, d: {"type": "image_url", "image_url": {"url": u, "detail": d}},
        texts,
        st.sampled_from(["low", "auto", "high"]),
    ),
    st.builds(lambda u: {"type": "document_url", "document_url": u}, texts),
    st.builds(
        lambda ids: {"type": "reference", "reference_ids": ids}, st.lists(st.integers() | texts)
    ),
    st.builds(lambda f: {"type": "file", "file_id": f}, texts),
    st.builds(lambda a: {"type": "input_audio", "input_audio": a}, texts),
    st.builds(lambda u, c: {"type": "resource", "uri": u, "content": c}, texts, text_chunks),
    st.builds(lambda u: {"type": "resource_link", "uri": u, "metadata": {"n": 1}}, texts),
)
nonempty = st.text(min_size=1, max_size=12)
system_messages = st.builds(
    lambda c: {"role": "system", "content": c},
    texts | st.lists(text_chunks | thinking_chunks, max_size=2),
)
user_messages = st.builds(
    lambda c: {"role": "user", "content": c}, st.none() | texts | st.lists(any_chunks, max_size=3)
)
assistant_messages = st.builds(
    lambda c: {"role": "assistant", "content": c},
    nonempty | st.lists(any_chunks, min_size=1, max_size=2),
)
prefix_messages = st.builds(lambda c: {"role": "assistant", "content": c, "prefix": True}, nonempty)


@st.composite
def tool_rounds(draw: st.DrawFn, size: int) -> list[dict[str, Any]]:
    """An assistant turn with tool calls and `size - 1` tool results answering them."""
    ids = [f"call{i}" for i in range(size - 1)]
    calls = [{"id": i, "function": {"name": "f", "arguments": draw(texts)}} for i in ids]
    results = [{"role": "tool", "tool_call_id": i, "content": draw(texts | st.none())} for i in ids]
    return [{"role": "assistant", "tool_calls": calls}, *results]


@st.composite
def conversations(draw: st.DrawFn) -> list[dict[str, Any]]:
    """1-5 messages in a valid role order."""
    size = draw(st.integers(1, 5))
    messages = [draw(system_messages)] if size > 1 and draw(st.booleans()) else []
    while len(messages) < size - 1:
        room = size - 1 - len(messages)
        kind = draw(
            st.sampled_from(["user", "assistant", "tools"] if room >= 2 else ["user", "assistant"])
        )
        if kind == "tools":
            messages += draw(tool_rounds(draw(st.integers(2, room))))
        else:
            messages.append(draw(user_messages if kind == "user" else assistant_messages))
    ending = draw(
        st.sampled_from(
            ["user", "prefix", "tools"] if size - len(messages) >= 2 else ["user", "prefix"]
        )
    )
    if ending == "tools":
        return messages + draw(tool_rounds(size - len(messages)))
    return [*messages, draw(user_messages if ending == "user" else prefix_messages)]


def nullable(values: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return values | st.none()


unit = st.floats(0, 1)
penalty = st.floats(-2, 2)
OPTIONAL_FIELDS = {
    "temperature": nullable(st.floats(0, 2)),
    "top_p": nullable(unit),
    "max_tokens": nullable(st.integers(1, 2**31)),
    "min_tokens": nullable(st.integers(0, 100)),
    "stream": st.booleans(),
    "stop": nullable(texts | st.lists(texts, max_size=3)),
    "random_seed": nullable(st.integers(0, 2**63 - 1)),
    "metadata": nullable(st.dictionaries(texts, json_values, max_size=3)),
    "response_format": st.sampled_from(
        [{"type": "text"}, {"type": "json_object"}, {"type": "json_schema", "json_schema": SCHEMA}]
    ).map(copy.deepcopy),
    "presence_penalty": nullable(penalty),
    "frequency_penalty": nullable(penalty),
    "n": nullable(st.integers(1, 4)),
    "prediction": st.builds(lambda c: {"type": "content", "content": c}, texts),
    "parallel_tool_calls": st.booleans(),
    "prompt_mode": st.sampled_from(["reasoning", None]),
    "safe_prompt": st.booleans(),
    "repetition_penalty": nullable(st.floats(allow_nan=False, allow_infinity=False)),
    "top_k": nullable(st.integers(0, 100)),
    "logprobs": nullable(st.booleans()),
    "top_logprobs": nullable(st.integers(0, 20)),
    "prompt_logprobs": nullable(st.booleans()),
    "top_prompt_logprobs": nullable(st.integers(0, 20)),
    "reasoning_effort": st.sampled_from(
        ["none", "minimal", "low", "medium", "high", "xhigh", "max"]
    ),
    "guardrails": st.lists(
        st.fixed_dictionaries({}, optional={"block_on_error": st.booleans()}), max_size=2
    ),
    "prompt_cache_key": texts,
    "service_tier": st.sampled_from(["auto", "standard_only", None]),
}
TOOL_CHOICES = ["auto", "none", "any", "required"]
function_tools = st.lists(
    st.from_regex(r"[a-z_]{1,8}", fullmatch=True), min_size=1, max_size=3, unique=True
).map(
    lambda names: [{"type": "function", "function": {"name": n, "parameters": {}}} for n in names]
)


@st.composite
def valid_bodies(draw: st.DrawFn) -> dict[str, Any]:
    request_body: dict[str, Any] = {"model": draw(nonempty), "messages": draw(conversations())}
    request_body |= draw(st.fixed_dictionaries({}, optional=OPTIONAL_FIELDS))
    if request_body.get("min_tokens") is not None and request_body.get("max_tokens") is not None:
        request_body["min_tokens"] = min(request_body["min_tokens"], request_body["max_tokens"])
    if request_body.get("top_logprobs") is not None:
        request_body["logprobs"] = True
    if draw(st.booleans()):
        tools: list[dict[str, Any]] = draw(function_tools)
        request_body["tools"] = tools
        name = draw(st.sampled_from(tools))["function"]["name"]
        named = {"type": "function", "function": {"name": name}}
        request_body["tool_choice"] = draw(st.sampled_from([*TOOL_CHOICES, named]))
    return request_body


@settings(max_examples=300, deadline=None)
@given(request_body=valid_bodies())
def test_generated_valid_bodies_always_pass(request_body: dict[str, Any]) -> None:
    for warning in validate_body(request_body):
        assert isinstance(warning, str)


def containers(value: Any) -> list[dict[str, Any] | list[Any]]:
    """Every object and array inside `value`, found without recursion."""
    found: list[dict[str, Any] | list[Any]] = []
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, dict | list):
            found.append(item)
            pending.extend(item.values() if isinstance(item, dict) else item)
    return found


def must_pass_or_be_invalid_input(request_body: Any, *, model_required: bool = True) -> None:
    try:
        warnings = validate_body(request_body, model_required=model_required)
    except InvalidInput as exc:
        assert exc.reason
        assert exc.field or not isinstance(request_body, dict)
    else:
        assert all(isinstance(w, str) for w in warnings)


@settings(max_examples=400, deadline=None)
@given(data=st.data(), request_body=valid_bodies(), value=json_values)
def test_any_value_anywhere_in_a_valid_body_is_accepted_or_invalid_input(
    data: st.DataObject, request_body: dict[str, Any], value: Any
) -> None:
    target = data.draw(st.sampled_from(containers(request_body)))
    if isinstance(target, dict):
        target[data.draw(st.sampled_from([*target, *WORDS]))] = value
    elif target and data.draw(st.booleans()):
        target[data.draw(st.integers(0, len(target) - 1))] = value
    else:
        target.append(value)
    must_pass_or_be_invalid_input(request_body)


@settings(max_examples=300, deadline=None)
@given(
    request_body=st.dictionaries(words | st.text(max_size=8), json_values, max_size=8),
    model_required=st.booleans(),
)
def test_any_object_is_accepted_or_invalid_input(
    request_body: dict[str, Any], model_required: bool
) -> None:
    must_pass_or_be_invalid_input(request_body, model_required=model_required)


@settings(max_examples=200, deadline=None)
@given(messages=st.lists(json_values, min_size=1, max_size=4))
def test_any_message_list_is_accepted_or_invalid_input(messages: list[Any]) -> None:
    must_pass_or_be_invalid_input({"model": "m", "messages": messages})


def test_bodies_are_not_modified() -> None:
    request_body = round_trip({"role": "tool", "tool_call_id": "c1", "content": "42"})
    before = copy.deepcopy(request_body)
    with contextlib.suppress(InvalidInput):
        validate_body(request_body)
    assert request_body == before
