"""Pre-send validation of one chat-completion body: the API reference's §7 checklist.

Owns what a request body must look like before it is sent. Hard errors raise InvalidInput
naming the JSON path of the field; soft problems come back as warnings and the body is sent
as it is. The rules are tables (field -> checker) walked over the keys present, so a typical
body costs a couple of microseconds and builds no strings unless something is wrong.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .errors import InvalidInput
from .validate_checks import (
    _STRINGS,
    MISSING_REASON,
    NULL_REASON,
    CrossCheck,
    Field,
    _array_of,
    _boolean,
    _check_fields,
    _clip,
    _documented,
    _integer,
    _Invalid,
    _listing,
    _name,
    _not_null,
    _number,
    _object,
    _one_of,
    _optional,
    _quote,
    _render,
    _required,
    _shape,
    _stop,
    _temperature,
    _text,
)
from .validate_messages import _messages

__all__ = ["validate_body"]

# ---- tools and tool_choice (§2.4) ------------------------------------------------------

TOOL_CHOICES = ("auto", "none", "any", "required")
FORCING_CHOICES = ("any", "required")
_FUNCTION = _shape(
    _required("name", _name),
    _required("parameters", _object),
    _optional("description", _text),
    _optional("strict", _boolean),
)
_CONFIGURATION = _optional("tool_configuration", _object)
TOOL_FIELDS: dict[str, tuple[Field, ...]] = {
    "function": (_required("function", _FUNCTION),),
    "image_generation": (_CONFIGURATION,),
    "document_library": (_required("library_ids", _STRINGS), _CONFIGURATION),
    "connector": (_required("connector_id", _text), _CONFIGURATION),
}
TOOL_TYPES = tuple(TOOL_FIELDS)
BUILT_IN_TOOL = "tools[*].type: built-in tool {} sent as is; the reference advises function tools"


def _tool(tool: Any, warnings: list[str]) -> str | None:
    """Check one tool; its function name, or None for a built-in tool."""
    _object(tool, warnings)
    kind = tool.get("type", "function")  # the SDK's default
    fields = TOOL_FIELDS.get(kind) if isinstance(kind, str) else None
    if fields is None:
        raise _Invalid(f"must be one of {_listing(TOOL_TYPES)}; got {_render(kind)}", "type")
    _check_fields(tool, fields, warnings)
    if kind != "function":
        warnings.append(BUILT_IN_TOOL.format(_quote(kind)))
        return None
    name: str = tool["function"]["name"]
    return name


def _tools(value: Any, warnings: list[str]) -> None:
    if not isinstance(value, list):
        raise _Invalid(f"must be an array of tools, got {_render(value)}")
    names: set[str] = set()
    for i, tool in enumerate(value):
        try:
            name = _tool(tool, warnings)
        except _Invalid as exc:
            raise exc.under(i) from None
        if name in names:
            reason = f"duplicate function name {_quote(name)}; tool names must be unique"
            raise _Invalid(reason, i, "function", "name")
        if name is not None:
            names.add(name)


_NAMED_CHOICE = (
    _optional("type", _text),  # a free string in the SDK
    _required("function", _shape(_required("name", _name))),
)


def _tool_choice(value: Any, warnings: list[str]) -> None:
    if isinstance(value, dict):
        _check_fields(value, _NAMED_CHOICE, warnings)
    elif not (isinstance(value, str) and value in TOOL_CHOICES):
        raise _Invalid(
            f'must be one of {_listing(TOOL_CHOICES)} or {{"type": "function", "function": '
            f'{{"name": ...}}}}; got {_render(value)}'
        )


# ---- response_format (§2.3), prediction, guardrails -------------------------------------

FORMAT_TYPES = ("text", "json_object", "json_schema")
_FORMAT_FIELDS = (
    _not_null("type", _documented("response_format.type", *FORMAT_TYPES)),
    _optional(
        "json_schema",
        _shape(
            _required("name", _name),
            _required("schema", _object),  # `schema_definition` in the SDK, `schema` on the wire
            _optional("description", _text),
            _optional("strict", _boolean),
        ),
    ),
)


def _response_format(value: Any, warnings: list[str]) -> None:
    _object(value, warnings)
    _check_fields(value, _FORMAT_FIELDS, warnings)
    if value.get("type") == "json_schema" and value.get("json_schema") is None:
        raise _Invalid(f"{MISSING_REASON} (type json_schema needs name and schema)", "json_schema")


_PREDICTION = _shape(_not_null("type", _one_of("content")), _required("content", _text))
_GUARDRAILS = _array_of(
    _shape(
        _optional("block_on_error", _boolean),
        _optional("moderation_llm_v1", _object),
        _optional("moderation_llm_v2", _object),
    ),
    "guardrail objects",
)


# ---- the top level ----------------------------------------------------------------------

REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh", "max")

FIELDS: dict[str, Field] = {
    field.name: field
    for field in (
        _not_null("model", _name),
        _not_null("messages", _messages),
        _optional("temperature", _temperature),
        _optional("top_p", _number(0, 1)),
        _optional("max_tokens", _integer(1)),
        _not_null("stream", _boolean),  # true is fine: the runner reassembles the stream
        _optional("stop", _stop),
        _optional("random_seed", _integer(0)),
        _optional("metadata", _object),
        _not_null("response_format", _response_format),
        _optional("tools", _tools),
        _not_null("tool_choice", _tool_choice),
        _optional("presence_penalty", _number(-2, 2)),
        _optional("frequency_penalty", _number(-2, 2)),
        _optional("n", _integer(1)),
        _not_null("prediction", _PREDICTION),
        _not_null("parallel_tool_calls", _boolean),
        _optional("prompt_mode", _documented("prompt_mode", "reasoning")),
        _not_null("safe_prompt", _boolean),
        _optional("min_tokens", _integer(0)),
        _optional("repetition_penalty", _number()),
        _optional("top_k", _integer(0)),
        _optional("logprobs", _boolean),
        _optional("top_logprobs", _integer(0)),
        _optional("prompt_logprobs", _boolean),
        _optional("top_prompt_logprobs", _integer(0)),
        _optional("reasoning_effort", _documented("reasoning_effort", *REASONING_EFFORTS)),
        _optional("guardrails", _GUARDRAILS),
        _optional("prompt_cache_key", _text),
        _optional("service_tier", _one_of("auto", "standard_only")),
    )
}


def _min_within_max(body: Mapping[str, Any], warnings: list[str]) -> None:
    max_tokens = body.get("max_tokens")
    if max_tokens is not None and body["min_tokens"] > max_tokens:
        raise InvalidInput(f"must be <= max_tokens ({max_tokens})", field="min_tokens")


def _needs_logprobs(body: Mapping[str, Any], warnings: list[str]) -> None:
    if body.get("logprobs") is not True:
        raise InvalidInput("needs logprobs: true in the same request", field="top_logprobs")


def _one_sampling_knob(body: Mapping[str, Any], warnings: list[str]) -> None:
    # temperature's default varies by model, so any explicit value counts as "changed".
    if body["top_p"] != 1 and body.get("temperature") is not None:
        warnings.append("temperature, top_p: both set; the API advises changing only one")


def _function_names(tools: list[dict[str, Any]]) -> set[str]:
    return {t["function"]["name"] for t in tools if t.get("type", "function") == "function"}


def _tool_choice_has_tools(body: Mapping[str, Any], warnings: list[str]) -> None:
    choice, tools = body["tool_choice"], body.get("tools") or []
    if isinstance(choice, dict):
        name = choice["function"]["name"]
        if name not in _function_names(tools):
            reason = f"{_quote(name)} is not the name of a function in tools"
            raise InvalidInput(reason, field="tool_choice.function.name")
    elif choice in FORCING_CHOICES and not tools:
        reason = f"{_quote(choice)} forces a tool call, so tools must be a non-empty array"
        raise InvalidInput(reason, field="tool_choice")


def _mentions_json(content: str | list[Any] | None) -> bool:
    if isinstance(content, str):
        return "json" in content.lower()
    parts = content or ()
    return any(p.get("type") == "text" and "json" in p["text"].lower() for p in parts)


def _json_mode_is_asked_for(body: Mapping[str, Any], warnings: list[str]) -> None:
    if body["response_format"].get("type") != "json_object":
        return
    prompts = (m["content"] for m in body["messages"] if m["role"] in ("system", "user"))
    if not any(_mentions_json(content) for content in prompts):
        warnings.append("response_format: json_object, but no system or user message asks for JSON")


# Rules that relate two fields; each runs only when its key is present and not null.
CROSS_CHECKS: tuple[tuple[str, CrossCheck], ...] = (
    ("min_tokens", _min_within_max),
    ("top_logprobs", _needs_logprobs),
    ("top_p", _one_sampling_knob),
    ("tool_choice", _tool_choice_has_tools),
    ("response_format", _json_mode_is_asked_for),
)
UNKNOWN_FIELD = "{}: unknown field, sent as is (the server may know newer fields)"


def validate_body(body: Mapping[str, Any], *, model_required: bool = True) -> list[str]:
    """Check one chat-completion request body before it is sent.

    Raises InvalidInput on the first hard error; returns warnings (strings naming the field)
    for soft ones. Warnings inside arrays name the field as `messages[*]...` so the same
    problem on many lines reads as one warning."""
    if not isinstance(body, Mapping):
        raise InvalidInput(f"the request body must be a JSON object, got {_render(body)}")
    if model_required and "model" not in body:
        raise InvalidInput(MISSING_REASON, field="model")
    if "messages" not in body:
        raise InvalidInput(MISSING_REASON, field="messages")
    warnings: list[str] = []
    for key, value in body.items():
        _check_top(key, value, warnings)
    for key, check in CROSS_CHECKS:
        if body.get(key) is not None:
            check(body, warnings)
    return warnings


def _check_top(key: str, value: Any, warnings: list[str]) -> None:
    rule = FIELDS.get(key)
    if rule is None:
        warnings.append(UNKNOWN_FIELD.format(_clip(str(key))))
    elif value is None:
        if not rule.nullable:
            raise InvalidInput(NULL_REASON, field=key)
    else:
        try:
            rule.check(value, warnings)
        except _Invalid as exc:
            raise exc.at(key) from None
