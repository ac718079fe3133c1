"""Pre-send validation of one chat-completion body: the API reference's §7 checklist.

Owns what a request body must look like before it is sent. Hard errors raise InvalidInput
naming the JSON path of the field; soft problems come back as warnings and the body is sent
as it is. The rules are tables (field -> checker) walked over the keys present, so a typical
body costs a couple of microseconds and builds no strings unless something is wrong.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import InvalidInput
from .checks import (
    MISSING_REASON,
    NULL_REASON,
    STRINGS,
    CrossCheck,
    Field,
    Invalid,
    array_of,
    boolean,
    check_fields,
    clip,
    documented,
    integer,
    json_object,
    listing,
    nonempty_text,
    not_null,
    number,
    one_of,
    optional,
    quote,
    render,
    required,
    shape,
    stop,
    temperature,
    text,
)
from .messages import check_messages

__all__ = ["FIELDS", "validate_body"]

# ---- tools and tool_choice (§2.4) ------------------------------------------------------

TOOL_CHOICES = ("auto", "none", "any", "required")
FORCING_CHOICES = ("any", "required")
_FUNCTION = shape(
    required("name", nonempty_text),
    required("parameters", json_object),
    optional("description", text),
    optional("strict", boolean),
)
_CONFIGURATION = optional("tool_configuration", json_object)
TOOL_FIELDS: dict[str, tuple[Field, ...]] = {
    "function": (required("function", _FUNCTION),),
    "image_generation": (_CONFIGURATION,),
    "document_library": (required("library_ids", STRINGS), _CONFIGURATION),
    "connector": (required("connector_id", text), _CONFIGURATION),
}
TOOL_TYPES = tuple(TOOL_FIELDS)
BUILT_IN_TOOL = "tools[*].type: built-in tool {} sent as is; the reference advises function tools"


def _tool(tool: Any, warnings: list[str]) -> str | None:
    """Check one tool; its function name, or None for a built-in tool."""
    json_object(tool, warnings)
    kind = tool.get("type", "function")  # the SDK's default
    fields = TOOL_FIELDS.get(kind) if isinstance(kind, str) else None
    if fields is None:
        raise Invalid(f"must be one of {listing(TOOL_TYPES)}; got {render(kind)}", "type")
    check_fields(tool, fields, warnings)
    if kind != "function":
        warnings.append(BUILT_IN_TOOL.format(quote(kind)))
        return None
    name: str = tool["function"]["name"]
    return name


def _tools(value: Any, warnings: list[str]) -> None:
    if not isinstance(value, list):
        raise Invalid(f"must be an array of tools, got {render(value)}")
    names: set[str] = set()
    for i, tool in enumerate(value):
        try:
            name = _tool(tool, warnings)
        except Invalid as exc:
            raise exc.under(i) from None
        if name in names:
            reason = f"duplicate function name {quote(name)}; tool names must be unique"
            raise Invalid(reason, i, "function", "name")
        if name is not None:
            names.add(name)


_NAMED_CHOICE = (
    optional("type", text),  # a free string in the SDK
    required("function", shape(required("name", nonempty_text))),
)


def _tool_choice(value: Any, warnings: list[str]) -> None:
    if isinstance(value, dict):
        check_fields(value, _NAMED_CHOICE, warnings)
    elif not (isinstance(value, str) and value in TOOL_CHOICES):
        raise Invalid(
            f'must be one of {listing(TOOL_CHOICES)} or {{"type": "function", "function": '
            f'{{"name": ...}}}}; got {render(value)}'
        )


# ---- response_format (§2.3), prediction, guardrails -------------------------------------

FORMAT_TYPES = ("text", "json_object", "json_schema")
_FORMAT_FIELDS = (
    not_null("type", documented("response_format.type", *FORMAT_TYPES)),
    optional(
        "json_schema",
        shape(
            required("name", nonempty_text),
            required("schema", json_object),  # `schema_definition` in the SDK, `schema` on the wire
            optional("description", text),
            optional("strict", boolean),
        ),
    ),
)


def _response_format(value: Any, warnings: list[str]) -> None:
    json_object(value, warnings)
    check_fields(value, _FORMAT_FIELDS, warnings)
    if value.get("type") == "json_schema" and value.get("json_schema") is None:
        raise Invalid(f"{MISSING_REASON} (type json_schema needs name and schema)", "json_schema")


_PREDICTION = shape(not_null("type", one_of("content")), required("content", text))
_GUARDRAILS = array_of(
    shape(
        optional("block_on_error", boolean),
        optional("moderation_llm_v1", json_object),
        optional("moderation_llm_v2", json_object),
    ),
    "guardrail objects",
)


# ---- the top level ----------------------------------------------------------------------

REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh", "max")

FIELDS: dict[str, Field] = {
    field.name: field
    for field in (
        not_null("model", nonempty_text),
        not_null("messages", check_messages),
        optional("temperature", temperature),
        optional("top_p", number(0, 1)),
        optional("max_tokens", integer(1)),
        not_null("stream", boolean),  # true is fine: the runner reassembles the stream
        optional("stop", stop),
        optional("random_seed", integer(0)),
        optional("metadata", json_object),
        not_null("response_format", _response_format),
        optional("tools", _tools),
        not_null("tool_choice", _tool_choice),
        optional("presence_penalty", number(-2, 2)),
        optional("frequency_penalty", number(-2, 2)),
        optional("n", integer(1)),
        not_null("prediction", _PREDICTION),
        not_null("parallel_tool_calls", boolean),
        optional("prompt_mode", documented("prompt_mode", "reasoning")),
        not_null("safe_prompt", boolean),
        optional("min_tokens", integer(0)),
        optional("repetition_penalty", number()),
        optional("top_k", integer(0)),
        optional("logprobs", boolean),
        optional("top_logprobs", integer(0)),
        optional("prompt_logprobs", boolean),
        optional("top_prompt_logprobs", integer(0)),
        optional("reasoning_effort", documented("reasoning_effort", *REASONING_EFFORTS)),
        optional("guardrails", _GUARDRAILS),
        optional("prompt_cache_key", text),
        optional("service_tier", one_of("auto", "standard_only")),
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
            reason = f"{quote(name)} is not the name of a function in tools"
            raise InvalidInput(reason, field="tool_choice.function.name")
    elif choice in FORCING_CHOICES and not tools:
        reason = f"{quote(choice)} forces a tool call, so tools must be a non-empty array"
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
        raise InvalidInput(f"the request body must be a JSON object, got {render(body)}")
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
        warnings.append(UNKNOWN_FIELD.format(clip(str(key))))
    elif value is None:
        if not rule.nullable:
            raise InvalidInput(NULL_REASON, field=key)
    else:
        try:
            rule.check(value, warnings)
        except Invalid as exc:
            raise exc.at(key) from None
