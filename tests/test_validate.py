"""Pre-send validation: each checklist rule, and no input can raise anything but InvalidInput."""

from __future__ import annotations

import contextlib
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batchrun.errors import InvalidInput
from batchrun.validate import validate_body

USER = {"role": "user", "content": "hi"}
TOOL = {"type": "function", "function": {"name": "search", "parameters": {"type": "object"}}}
CALL = {"id": "c1", "type": "function", "function": {"name": "search", "arguments": "{}"}}


def body(**fields: Any) -> dict[str, Any]:
    return {"model": "mistral-small-latest", "messages": [USER], **fields}


VALID = [
    body(),
    body(temperature=0.3, max_tokens=100, stop=["\n"], random_seed=1, n=2, stream=True),
    body(top_p=0.9, presence_penalty=-2, frequency_penalty=2, min_tokens=1, safe_prompt=True),
    body(messages=[{"role": "system", "content": [{"type": "text", "text": "be brief"}]}, USER]),
    body(
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "look"},
                    {"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "low"}},
                    {"type": "document_url", "document_url": "https://x/d.pdf"},
                    {"type": "file", "file_id": "f"},
                    {"type": "input_audio", "input_audio": "b64"},
                    {"type": "reference", "reference_ids": [1]},
                ],
            }
        ]
    ),
    body(tools=[TOOL], tool_choice="any"),
    body(tools=[TOOL], tool_choice={"type": "function", "function": {"name": "search"}}),
    body(
        tools=[TOOL],
        messages=[
            USER,
            {"role": "assistant", "tool_calls": [CALL]},
            {"role": "tool", "tool_call_id": "c1", "content": "42"},
        ],
    ),
    body(messages=[USER, {"role": "assistant", "content": "Sure,", "prefix": True}]),
    body(
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "x", "schema": {"type": "object"}},
        }
    ),
    body(prediction={"type": "content", "content": "draft"}, logprobs=True, top_logprobs=2),
    body(service_tier="auto", reasoning_effort="high", prompt_mode="reasoning", metadata={}),
    body(temperature=None, max_tokens=None, tools=None),
]


@pytest.mark.parametrize("request_body", VALID)
def test_valid_bodies_pass_without_warnings(request_body: dict[str, Any]) -> None:
    assert validate_body(request_body) == []


INVALID = [
    ({"messages": [USER]}, "model", "missing"),
    (body(model=""), "model", "non-empty string"),
    ({"model": "m"}, "messages", "missing"),
    (body(messages=[]), "messages", "non-empty array"),
    (body(messages=["hi"]), "messages[0]", "object"),
    (body(messages=[{"role": "wizard", "content": "x"}]), "messages[0].role", "one of"),
    (body(messages=[{"role": "system", "content": None}, USER]), "messages[0].content", "null"),
    (
        body(
            messages=[
                {"role": "system", "content": [{"type": "image_url", "image_url": "u"}]},
                USER,
            ]
        ),
        "messages[0].content[0]",
        "not allowed",
    ),
    (body(messages=[{"role": "user"}]), "messages[0].content", "required"),
    (
        body(messages=[{"role": "user", "content": [{"type": "text"}]}]),
        "messages[0].content[0].text",
        "required",
    ),
    (body(messages=[{"role": "user", "content": 5}]), "messages[0].content", "string or an array"),
    (body(messages=[USER, {"role": "assistant", "content": ""}]), "messages[1]", "non-empty"),
    (
        body(messages=[USER, {"role": "assistant", "content": "a", "prefix": "yes"}]),
        "messages[1].prefix",
        "boolean",
    ),
    (
        body(messages=[{"role": "assistant", "content": "a", "prefix": True}, USER]),
        "messages[0].prefix",
        "last message",
    ),
    (body(messages=[USER, {"role": "assistant", "content": "a"}]), "messages[1].role", "last"),
    (body(messages=[USER, {"role": "tool", "content": "x"}]), "messages[1]", "follow"),
    (
        body(
            tools=[TOOL],
            messages=[
                USER,
                {"role": "assistant", "tool_calls": [CALL]},
                {"role": "tool", "tool_call_id": "zz", "content": "x"},
            ],
        ),
        "messages[2].tool_call_id",
        "matches none",
    ),
    (
        body(
            messages=[
                USER,
                {"role": "assistant", "tool_calls": [{"function": {"name": "f"}}]},
                {"role": "tool", "content": "x"},
            ]
        ),
        "messages[1].tool_calls[0].function.arguments",
        "string or an object",
    ),
    (body(temperature=-0.1), "temperature", ">= 0"),
    (body(temperature="0.5"), "temperature", "string"),
    (body(temperature=math.nan), "temperature", "number"),
    (body(temperature=math.inf), "temperature", "number"),
    (body(top_p=1.5), "top_p", "[0, 1]"),
    (body(max_tokens=0), "max_tokens", ">= 1"),
    (body(max_tokens=True), "max_tokens", "integer"),
    (body(max_tokens=10.0), "max_tokens", "integer"),
    (body(min_tokens=5, max_tokens=2), "min_tokens", "<= max_tokens"),
    (body(n=0), "n", ">= 1"),
    (body(presence_penalty=3), "presence_penalty", "[-2, 2]"),
    (body(random_seed=-1), "random_seed", ">= 0"),
    (body(top_k=1.5), "top_k", "integer"),
    (body(top_logprobs=2), "top_logprobs", "logprobs"),
    (body(stop=[1]), "stop", "strings"),
    (body(stream="yes"), "stream", "boolean"),
    (body(stream=None), "stream", "null"),
    (body(metadata=[]), "metadata", "object"),
    (body(response_format={"type": "xml"}), "response_format.type", "one of"),
    (body(response_format={"type": "json_schema"}), "response_format.json_schema", "required"),
    (
        body(response_format={"type": "json_schema", "json_schema": {"name": "x"}}),
        "response_format.json_schema.schema",
        "JSON Schema",
    ),
    (body(tool_choice="sometimes"), "tool_choice", "one of"),
    (body(tool_choice="any"), "tool_choice", "non-empty tools"),
    (
        body(tools=[TOOL], tool_choice={"type": "function", "function": {"name": "nope"}}),
        "tool_choice.function.name",
        "not one of the tools",
    ),
    (
        body(tools=[{"type": "function", "function": {"name": "f"}}]),
        "tools[0].function.parameters",
        "JSON Schema",
    ),
    (body(tools=[TOOL, TOOL]), "tools[1].function.name", "duplicate"),
    (body(prediction={"type": "content"}), "prediction.content", "string"),
    (body(parallel_tool_calls=1), "parallel_tool_calls", "boolean"),
    (body(service_tier="fast"), "service_tier", "one of"),
    (body(guardrails={}), "guardrails", "array"),
]


@pytest.mark.parametrize(("request_body", "field", "reason"), INVALID)
def test_each_rule_names_the_field(request_body: dict[str, Any], field: str, reason: str) -> None:
    with pytest.raises(InvalidInput) as info:
        validate_body(request_body)
    assert info.value.field == field
    assert reason in info.value.reason


@pytest.mark.parametrize(
    ("request_body", "warning"),
    [
        (body(seed=3), "seed: unknown field"),
        (body(temperature=0.2, top_p=0.5), "only one"),
        (body(temperature=1.8), "above 1.5"),
        (body(response_format={"type": "json_object"}), "asks for JSON"),
        (body(reasoning_effort="extreme"), "not a documented value"),
        (
            body(messages=[{"role": "user", "content": [{"type": "hologram"}]}]),
            "unknown content chunk",
        ),
    ],
)
def test_soft_problems_are_warnings(request_body: dict[str, Any], warning: str) -> None:
    warnings = validate_body(request_body)
    assert any(warning in w for w in warnings), warnings


def test_model_may_come_from_elsewhere() -> None:
    assert validate_body({"messages": [USER]}, model_required=False) == []


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=10,
)
fields = st.sampled_from(
    [
        "model",
        "messages",
        "temperature",
        "top_p",
        "max_tokens",
        "stop",
        "tools",
        "tool_choice",
        "response_format",
        "n",
        "prediction",
        "metadata",
        "stream",
        "logprobs",
        "top_logprobs",
        "guardrails",
        "x",
    ]
)


@settings(max_examples=300, deadline=None)
@given(field=fields, value=json_values)
def test_any_value_in_any_field_is_accepted_or_invalid_input(field: str, value: Any) -> None:
    with contextlib.suppress(InvalidInput):
        validate_body(body(**{field: value}))


@settings(max_examples=200, deadline=None)
@given(
    obj=st.dictionaries(st.text(max_size=8), json_values, max_size=5),
    messages=st.lists(json_values, max_size=3),
)
def test_any_object_is_accepted_or_invalid_input(obj: dict[str, Any], messages: list[Any]) -> None:
    for candidate in (
        obj,
        {**obj, "messages": messages},
        {**obj, "model": "m", "messages": messages},
    ):
        with contextlib.suppress(InvalidInput):
            validate_body(candidate)


def _conversation(texts: list[str]) -> list[dict[str, str]]:
    """system, then user/assistant turns, ending on a user message."""
    turns = [
        m
        for t in texts
        for m in ({"role": "user", "content": t}, {"role": "assistant", "content": t or "x"})
    ]
    return [{"role": "system", "content": "s"}, *turns[:-1]]


valid_messages = st.lists(st.text(max_size=20), min_size=1, max_size=4).map(_conversation)


@settings(max_examples=200, deadline=None)
@given(
    messages=valid_messages,
    optional=st.fixed_dictionaries(
        {},
        optional={
            "temperature": st.floats(0, 1.5),
            "max_tokens": st.integers(1, 10_000),
            "random_seed": st.integers(0, 2**31),
            "n": st.integers(1, 4),
            "stop": st.lists(st.text(max_size=3), max_size=2),
            "stream": st.booleans(),
            "presence_penalty": st.floats(-2, 2),
            "safe_prompt": st.booleans(),
        },
    ),
)
def test_generated_valid_bodies_always_pass(messages: list[Any], optional: dict[str, Any]) -> None:
    validate_body({"model": "m", "messages": messages, **optional})
