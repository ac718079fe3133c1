"""Validation of `messages`: content chunks (§2.2), each role's shape (§2.1), and the
order rules (tool results answer tool calls, prefix last, user or tool last)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from .checks import (
    MISSING_REASON,
    Check,
    Field,
    Invalid,
    arguments,
    array_of,
    boolean,
    check_fields,
    flat_map,
    integer,
    key_required,
    listing,
    nonempty_text,
    not_null,
    one_of,
    optional,
    quote,
    render,
    required,
    shape,
    string_or_integer,
    text,
)

__all__ = ["check_messages"]

# ---- content chunks (§2.2) -------------------------------------------------------------

MESSAGE_PARTS = frozenset(
    {"text", "image_url", "document_url", "reference", "file", "thinking", "input_audio"}
    | {"resource", "resource_link"}
)
SYSTEM_PARTS = frozenset({"text", "thinking"})
THINKING_PARTS = frozenset({"text", "reference", "tool_reference"})
RESOURCE_PARTS = frozenset({"text", "image_url"})
UNKNOWN_CHUNK = "messages[*].content[*].type: unknown chunk type {}, sent as is"


def _chunk(chunk: Any, allowed: frozenset[str], lenient: bool, warnings: list[str]) -> None:
    if not isinstance(chunk, dict):
        raise Invalid(f"must be a content chunk object, got {render(chunk)}")
    kind = chunk.get("type")
    if not isinstance(kind, str):
        reason = MISSING_REASON if "type" not in chunk else f"must be a string, got {render(kind)}"
        raise Invalid(reason, "type")
    if kind not in allowed:
        # The SDK keeps message chunks it does not know, so the server has the last word.
        if lenient:
            warnings.append(UNKNOWN_CHUNK.format(quote(kind)))
            return
        reason = f"chunk type {quote(kind)} is not allowed here; use {listing(allowed)}"
        raise Invalid(reason, "type")
    check_fields(chunk, CHUNK_FIELDS[kind], warnings)


def _chunks(allowed: frozenset[str], lenient: bool = False) -> Check:
    def check(value: Any, warnings: list[str]) -> None:
        if not isinstance(value, list):
            raise Invalid(f"must be an array of content chunks, got {render(value)}")
        for i, chunk in enumerate(value):
            try:
                _chunk(chunk, allowed, lenient, warnings)
            except Invalid as exc:
                raise exc.under(i) from None

    return check


def _content(allowed: frozenset[str], lenient: bool = False) -> Check:
    chunks = _chunks(allowed, lenient)

    def check(value: Any, warnings: list[str]) -> None:
        if isinstance(value, str):
            return  # the common case, kept first
        if not isinstance(value, list):
            raise Invalid(f"must be a string or an array of content chunks, got {render(value)}")
        chunks(value, warnings)

    return check


def _single_chunk(allowed: frozenset[str]) -> Check:
    def check(value: Any, warnings: list[str]) -> None:
        _chunk(value, allowed, False, warnings)

    return check


_IMAGE_URL_FIELDS = (required("url", text), optional("detail", one_of("low", "auto", "high")))


def _image_url(value: Any, warnings: list[str]) -> None:
    if isinstance(value, str):
        return
    if not isinstance(value, dict):
        raise Invalid(
            f'must be a URL string or {{"url": ..., "detail"?: ...}}, got {render(value)}'
        )
    check_fields(value, _IMAGE_URL_FIELDS, warnings)


# Nesting stops here: thinking and resource take only flat chunks, so no recursion is unbounded.
CHUNK_FIELDS: dict[str, tuple[Field, ...]] = {
    "text": (required("text", text),),
    "image_url": (required("image_url", _image_url),),
    "document_url": (required("document_url", text), optional("document_name", text)),
    "reference": (required("reference_ids", array_of(string_or_integer, "integers or strings")),),
    "file": (required("file_id", text),),
    "thinking": (
        required("thinking", _chunks(THINKING_PARTS)),
        optional("signature", text),
        optional("closed", boolean),
    ),
    "input_audio": (required("input_audio", text),),
    "resource": (required("uri", text), required("content", _single_chunk(RESOURCE_PARTS))),
    "resource_link": (required("uri", text), optional("metadata", flat_map)),
    # Only inside thinking; fields from the SDK's ToolReferenceChunk.
    "tool_reference": (required("tool", text), required("title", text)),
}


# ---- messages (§2.1) and their order --------------------------------------------------

OpenCalls = frozenset[str] | None  # ids of the tool calls a tool message may answer
Turn = Callable[[dict[str, Any], OpenCalls, bool], OpenCalls]
ENDING_ROLES = ("user", "tool")

_TOOL_CALL = shape(
    optional("id", text),
    optional("type", text),
    optional("index", integer(0)),
    required("function", shape(required("name", nonempty_text), required("arguments", arguments))),
)


def _ends_tool_round(message: dict[str, Any], open_calls: OpenCalls, is_last: bool) -> OpenCalls:
    return None


def _assistant_turn(message: dict[str, Any], open_calls: OpenCalls, is_last: bool) -> OpenCalls:
    calls = message.get("tool_calls")
    if not message.get("content") and not calls:
        raise Invalid("an assistant message needs non-empty content or tool_calls")
    if message.get("prefix") is True and not is_last:
        raise Invalid("an assistant prefix must be the last message", "prefix")
    if not calls:
        return None
    # Calls without an id get "null" from the SDK; only the ids given can be matched.
    return frozenset(call["id"] for call in calls if isinstance(call.get("id"), str))


def _tool_turn(message: dict[str, Any], open_calls: OpenCalls, is_last: bool) -> OpenCalls:
    if open_calls is None:
        raise Invalid("a tool message must follow an assistant message with tool_calls")
    call_id = message.get("tool_call_id")
    if call_id is not None and open_calls and call_id not in open_calls:
        reason = f"{quote(call_id)} matches none of the preceding assistant's tool_calls ids"
        raise Invalid(reason, "tool_call_id")
    return open_calls  # several tool results may answer one assistant turn


class Role(NamedTuple):
    fields: tuple[Field, ...]
    turn: Turn


ROLES: dict[str, Role] = {
    "system": Role((required("content", _content(SYSTEM_PARTS)),), _ends_tool_round),
    "user": Role((key_required("content", _content(MESSAGE_PARTS, True)),), _ends_tool_round),
    "assistant": Role(
        (
            optional("content", _content(MESSAGE_PARTS, True)),
            optional("tool_calls", array_of(_TOOL_CALL, "tool calls")),
            not_null("prefix", boolean),
        ),
        _assistant_turn,
    ),
    "tool": Role(
        (
            key_required("content", _content(MESSAGE_PARTS, True)),
            optional("tool_call_id", text),
            optional("name", text),
        ),
        _tool_turn,
    ),
}
ROLE_NAMES = tuple(ROLES)


def _message(message: Any, open_calls: OpenCalls, is_last: bool, warnings: list[str]) -> OpenCalls:
    if not isinstance(message, dict):
        raise Invalid(f"must be a message object, got {render(message)}")
    role = message.get("role")
    rule = ROLES.get(role) if isinstance(role, str) else None
    if rule is None:
        reason = f"must be one of {listing(ROLE_NAMES)}; got {render(role)}"
        raise Invalid(MISSING_REASON if "role" not in message else reason, "role")
    check_fields(message, rule.fields, warnings)
    return rule.turn(message, open_calls, is_last)


def check_messages(value: Any, warnings: list[str]) -> None:
    if not isinstance(value, list):
        raise Invalid(f"must be a non-empty array of messages, got {render(value)}")
    if not value:
        raise Invalid("must not be empty: the request needs at least one message")
    last = len(value) - 1
    open_calls: OpenCalls = None
    for i, message in enumerate(value):
        try:
            open_calls = _message(message, open_calls, i == last, warnings)
        except Invalid as exc:
            raise exc.under(i) from None
    final = value[last]
    is_prefix = final["role"] == "assistant" and final.get("prefix") is True
    if not (final["role"] in ENDING_ROLES or is_prefix):
        reason = "the last message must be user or tool (or an assistant with prefix: true)"
        raise Invalid(reason, last, "role")
