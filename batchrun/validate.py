"""Pre-send validation of one chat-completion body (the API reference's §7 checklist).

A table maps each known top-level field to its checker; only the fields present are
visited, so a typical body costs a few microseconds. Hard errors raise InvalidInput
naming the field path; soft problems come back as warnings and the body is sent as is.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from .errors import InvalidInput

__all__ = ["validate_body"]

Checker = Callable[[Any, str], None]

ROLES = ("system", "user", "assistant", "tool")
TOOL_CHOICES = ("auto", "none", "any", "required")
FORMAT_TYPES = ("text", "json_object", "json_schema")
REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh", "max")
PROMPT_MODES = ("reasoning",)
SERVICE_TIERS = ("auto", "standard_only")
HIGH_TEMPERATURE = 1.5


def _fail(field: str, reason: str) -> InvalidInput:
    return InvalidInput(reason, field=field)


def _describe(value: object) -> str:
    if value is None:
        return "null"
    kind = {
        bool: "boolean",
        str: "string",
        list: "array",
        dict: "object",
        int: "integer",
        float: "number",
    }.get(type(value), type(value).__name__)
    text = repr(value) if not isinstance(value, dict | list) else kind
    return f"{text[:40]} ({kind})" if kind not in ("object", "array") else kind


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(low: float | None = None, high: float | None = None) -> Checker:
    def check(value: Any, field: str) -> None:
        in_range = (
            _is_number(value) and (low is None or value >= low) and (high is None or value <= high)
        )
        if not in_range:
            raise _fail(field, f"must be a number{_bounds(low, high)}, got {_describe(value)}")

    return check


def _integer(low: int) -> Checker:
    def check(value: Any, field: str) -> None:
        if not _is_int(value) or value < low:
            raise _fail(field, f"must be an integer >= {low}, got {_describe(value)}")

    return check


def _bounds(low: float | None, high: float | None) -> str:
    if low is not None and high is not None:
        return f" in [{low:g}, {high:g}]"
    return f" >= {low:g}" if low is not None else ""


def _of_type(kind: type, name: str) -> Checker:
    def check(value: Any, field: str) -> None:
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise _fail(field, f"must be {name}, got {_describe(value)}")

    return check


def _one_of(allowed: tuple[str, ...]) -> Checker:
    def check(value: Any, field: str) -> None:
        if value not in allowed:
            raise _fail(field, f"must be one of {', '.join(allowed)}; got {_describe(value)}")

    return check


def _string(value: Any, field: str) -> None:
    if not isinstance(value, str) or not value:
        raise _fail(field, f"must be a non-empty string, got {_describe(value)}")


def _stop(value: Any, field: str) -> None:
    if isinstance(value, str):
        return
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise _fail(field, f"must be a string or an array of strings, got {_describe(value)}")


def _prediction(value: Any, field: str) -> None:
    if not isinstance(value, dict) or value.get("type", "content") != "content":
        raise _fail(field, 'must be {"type": "content", "content": "..."}')
    if not isinstance(value.get("content"), str):
        raise _fail(f"{field}.content", f"must be a string, got {_describe(value.get('content'))}")


def _response_format(value: Any, field: str) -> None:
    if not isinstance(value, dict):
        raise _fail(field, f"must be an object, got {_describe(value)}")
    kind = value.get("type", "text")
    _one_of(FORMAT_TYPES)(kind, f"{field}.type")
    if kind != "json_schema":
        return
    schema = value.get("json_schema")
    if not isinstance(schema, dict):
        raise _fail(f"{field}.json_schema", "is required for type json_schema (an object)")
    _string(schema.get("name"), f"{field}.json_schema.name")
    if not isinstance(schema.get("schema"), dict):
        raise _fail(f"{field}.json_schema.schema", "must be a JSON Schema object")


def _tools(value: Any, field: str) -> None:
    if not isinstance(value, list):
        raise _fail(field, f"must be an array, got {_describe(value)}")
    names: set[str] = set()
    for i, tool in enumerate(value):
        path = f"{field}[{i}]"
        if not isinstance(tool, dict):
            raise _fail(path, f"must be an object, got {_describe(tool)}")
        if tool.get("type", "function") != "function":
            continue  # built-in tools are passed through (warned about in _cross_checks)
        function = tool.get("function")
        if not isinstance(function, dict):
            raise _fail(f"{path}.function", "is required: {name, parameters}")
        _string(function.get("name"), f"{path}.function.name")
        if not isinstance(function.get("parameters"), dict):
            raise _fail(f"{path}.function.parameters", "must be a JSON Schema object")
        if function["name"] in names:
            raise _fail(f"{path}.function.name", f"duplicate tool name {function['name']!r}")
        names.add(function["name"])


def _tool_choice(value: Any, field: str) -> None:
    if isinstance(value, str):
        _one_of(TOOL_CHOICES)(value, field)
        return
    function = value.get("function") if isinstance(value, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise _fail(
            field,
            f"must be one of {', '.join(TOOL_CHOICES)} or "
            '{"type": "function", "function": {"name": ...}}',
        )


def _guardrails(value: Any, field: str) -> None:
    if not isinstance(value, list) or not all(isinstance(g, dict) for g in value):
        raise _fail(field, f"must be an array of objects, got {_describe(value)}")


# ---- messages ---------------------------------------------------------------

CHUNK_FIELDS: dict[str, tuple[str, ...]] = {
    "text": ("text",),
    "image_url": ("image_url",),
    "document_url": ("document_url",),
    "reference": ("reference_ids",),
    "file": ("file_id",),
    "thinking": ("thinking",),
    "input_audio": ("input_audio",),
    "resource": ("uri", "content"),
    "resource_link": ("uri",),
}
SYSTEM_CHUNKS = ("text", "thinking")


def _content(value: Any, field: str, warnings: list[str], allowed: tuple[str, ...] | None) -> None:
    if isinstance(value, str):
        return
    if not isinstance(value, list):
        raise _fail(
            field, f"must be a string or an array of content chunks, got {_describe(value)}"
        )
    for i, chunk in enumerate(value):
        path = f"{field}[{i}]"
        kind = chunk.get("type") if isinstance(chunk, dict) else None
        if not isinstance(kind, str):
            raise _fail(path, "must be an object with a string 'type'")
        if allowed is not None and kind not in allowed:
            raise _fail(path, f"type {kind!r} is not allowed here (only {', '.join(allowed)})")
        required = CHUNK_FIELDS.get(kind)
        if required is None:
            warnings.append(f"{path}: unknown content chunk type {kind!r}, sent as is")
            continue
        for name in required:
            if chunk.get(name) is None:
                raise _fail(f"{path}.{name}", f"is required for a {kind} chunk")


def _system(message: dict[str, Any], path: str, warnings: list[str]) -> None:
    if message.get("content") is None:
        raise _fail(f"{path}.content", "is required and cannot be null for a system message")
    _content(message["content"], f"{path}.content", warnings, SYSTEM_CHUNKS)


def _user_or_tool(message: dict[str, Any], path: str, warnings: list[str]) -> None:
    if "content" not in message:
        raise _fail(f"{path}.content", "is required (null is allowed)")
    if message["content"] is not None:
        _content(message["content"], f"{path}.content", warnings, None)


def _assistant(message: dict[str, Any], path: str, warnings: list[str]) -> None:
    content, calls = message.get("content"), message.get("tool_calls")
    if content is not None:
        _content(content, f"{path}.content", warnings, None)
    if calls is not None:
        _tool_calls(calls, f"{path}.tool_calls")
    if "prefix" in message and not isinstance(message["prefix"], bool):
        raise _fail(f"{path}.prefix", f"must be a boolean, got {_describe(message['prefix'])}")
    if not content and not calls:
        raise _fail(path, "an assistant message needs non-empty content or tool_calls")


def _tool_calls(calls: Any, field: str) -> None:
    if not isinstance(calls, list):
        raise _fail(field, f"must be an array, got {_describe(calls)}")
    for i, call in enumerate(calls):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            raise _fail(f"{field}[{i}].function", "is required: {name, arguments}")
        _string(function.get("name"), f"{field}[{i}].function.name")
        if not isinstance(function.get("arguments"), str | dict):
            raise _fail(f"{field}[{i}].function.arguments", "must be a string or an object")


ROLE_CHECKS = {
    "system": _system,
    "user": _user_or_tool,
    "tool": _user_or_tool,
    "assistant": _assistant,
}


def _messages(value: Any, warnings: list[str]) -> None:
    if not isinstance(value, list) or not value:
        raise _fail("messages", f"must be a non-empty array, got {_describe(value)}")
    open_calls: set[str] | None = None  # ids of the last assistant turn's tool calls
    for i, message in enumerate(value):
        path = f"messages[{i}]"
        if not isinstance(message, dict):
            raise _fail(path, f"must be an object, got {_describe(message)}")
        role = message.get("role")
        if not isinstance(role, str) or role not in ROLE_CHECKS:
            raise _fail(f"{path}.role", f"must be one of {', '.join(ROLES)}; got {_describe(role)}")
        ROLE_CHECKS[role](message, path, warnings)
        if message.get("prefix") is True and i != len(value) - 1:
            raise _fail(f"{path}.prefix", "a prefix assistant message must be the last message")
        open_calls = _tool_sequence(message, path, open_calls)
    last = value[-1]
    if not (last["role"] in ("user", "tool") or last.get("prefix") is True):
        raise _fail(
            f"messages[{len(value) - 1}].role",
            "the last message must be user or tool (or an assistant with prefix: true)",
        )


def _tool_sequence(
    message: dict[str, Any], path: str, open_calls: set[str] | None
) -> set[str] | None:
    role = message["role"]
    if role == "assistant":
        calls = message.get("tool_calls") or []
        return {c["id"] for c in calls if isinstance(c.get("id"), str)} if calls else None
    if role != "tool":
        return None
    if open_calls is None:
        raise _fail(path, "a tool message must follow an assistant message with tool_calls")
    call_id = message.get("tool_call_id")
    if isinstance(call_id, str) and open_calls and call_id not in open_calls:
        raise _fail(f"{path}.tool_call_id", f"{call_id!r} matches none of the preceding tool_calls")
    return open_calls


# ---- the field table ------------------------------------------------------------

FIELDS: dict[str, Checker] = {
    "model": _string,
    "temperature": _number(0),
    "top_p": _number(0, 1),
    "max_tokens": _integer(1),
    "min_tokens": _integer(0),
    "stream": _of_type(bool, "a boolean"),
    "stop": _stop,
    "random_seed": _integer(0),
    "metadata": _of_type(dict, "an object"),
    "response_format": _response_format,
    "tools": _tools,
    "tool_choice": _tool_choice,
    "presence_penalty": _number(-2, 2),
    "frequency_penalty": _number(-2, 2),
    "n": _integer(1),
    "prediction": _prediction,
    "parallel_tool_calls": _of_type(bool, "a boolean"),
    "prompt_mode": _of_type(str, "a string"),
    "safe_prompt": _of_type(bool, "a boolean"),
    "repetition_penalty": _number(),
    "top_k": _integer(0),
    "logprobs": _of_type(bool, "a boolean"),
    "top_logprobs": _integer(0),
    "prompt_logprobs": _of_type(bool, "a boolean"),
    "top_prompt_logprobs": _integer(0),
    "reasoning_effort": _of_type(str, "a string"),
    "guardrails": _guardrails,
    "prompt_cache_key": _of_type(str, "a string"),
    "service_tier": _one_of(SERVICE_TIERS),
}
NOT_NULLABLE = frozenset(
    {
        "model",
        "messages",
        "stream",
        "response_format",
        "tool_choice",
        "prediction",
        "parallel_tool_calls",
        "safe_prompt",
    }
)
OPEN_ENUMS = {"prompt_mode": PROMPT_MODES, "reasoning_effort": REASONING_EFFORTS}


def validate_body(body: Mapping[str, Any], *, model_required: bool = True) -> list[str]:
    """Check one chat-completion request body before it is sent.

    Raises InvalidInput on the first hard error; returns warnings for soft ones."""
    if model_required and "model" not in body:
        raise _fail("model", "required field is missing")
    if "messages" not in body:
        raise _fail("messages", "required field is missing")
    warnings: list[str] = []
    for key, value in body.items():
        if key == "messages":
            _messages(value, warnings)
            continue
        checker = FIELDS.get(key)
        if checker is None:
            warnings.append(f"{key}: unknown field, sent as is")
        elif value is None:
            if key in NOT_NULLABLE:
                raise _fail(key, "cannot be null")
        else:
            checker(value, key)
    _cross_checks(body, warnings)
    return warnings


CROSS_FIELDS = frozenset(
    {
        "tool_choice",
        "tools",
        "min_tokens",
        "top_logprobs",
        "temperature",
        "response_format",
        *OPEN_ENUMS,
    }
)


def _cross_checks(body: Mapping[str, Any], warnings: list[str]) -> None:
    if CROSS_FIELDS.isdisjoint(body):
        return  # the common case: nothing that depends on another field
    _tool_choice_needs_tools(body)
    max_tokens, min_tokens = body.get("max_tokens"), body.get("min_tokens")
    if isinstance(max_tokens, int) and isinstance(min_tokens, int) and min_tokens > max_tokens:
        raise _fail("min_tokens", f"must be <= max_tokens ({max_tokens}), got {min_tokens}")
    if body.get("top_logprobs") is not None and body.get("logprobs") is not True:
        raise _fail("top_logprobs", "needs logprobs: true")
    for key, allowed in OPEN_ENUMS.items():
        if isinstance(body.get(key), str) and body[key] not in allowed:
            warnings.append(f"{key}: {body[key]!r} is not a documented value, sent as is")
    temperature, top_p = body.get("temperature"), body.get("top_p")
    if isinstance(temperature, int | float) and temperature > HIGH_TEMPERATURE:
        warnings.append(
            f"temperature: {temperature} is above {HIGH_TEMPERATURE}; output may be erratic"
        )
    if temperature is not None and top_p not in (None, 1):
        warnings.append("temperature and top_p: both set; the API advises changing only one")
    tools = body.get("tools")
    if isinstance(tools, list) and any(t.get("type", "function") != "function" for t in tools):
        warnings.append("tools: built-in (non-function) tools are sent as is")
    format_type = (body.get("response_format") or {}).get("type")
    if format_type == "json_object" and not _mentions_json(body["messages"]):
        warnings.append("response_format: json_object, but no system/user message asks for JSON")


def _tool_choice_needs_tools(body: Mapping[str, Any]) -> None:
    choice, tools = body.get("tool_choice"), body.get("tools")
    names = {t["function"]["name"] for t in tools or () if isinstance(t.get("function"), dict)}
    if isinstance(choice, dict):
        name = choice["function"]["name"]
        if name not in names:
            raise _fail("tool_choice.function.name", f"{name!r} is not one of the tools")
    elif choice in ("any", "required") and not tools:
        raise _fail("tool_choice", f"{choice!r} needs a non-empty tools list")


def _mentions_json(messages: list[dict[str, Any]]) -> bool:
    for message in messages:
        if message.get("role") in ("system", "user"):
            content = message.get("content")
            text = content if isinstance(content, str) else str(content)
            if "json" in text.lower():
                return True
    return False
