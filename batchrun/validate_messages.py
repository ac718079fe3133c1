"""Validation of `messages`: content chunks (§2.2), each role's shape (§2.1), and the
order rules (tool results answer tool calls, prefix last, user or tool last)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from .validate_checks import (
    MISSING_REASON,
    Check,
    Field,
    _arguments,
    _array_of,
    _boolean,
    _check_fields,
    _flat_map,
    _id,
    _integer,
    _Invalid,
    _key_required,
    _listing,
    _name,
    _not_null,
    _one_of,
    _optional,
    _quote,
    _render,
    _required,
    _shape,
    _text,
)

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
        raise _Invalid(f"must be a content chunk object, got {_render(chunk)}")
    kind = chunk.get("type")
    if not isinstance(kind, str):
        reason = MISSING_REASON if "type" not in chunk else f"must be a string, got {_render(kind)}"
        raise _Invalid(reason, "type")
    if kind not in allowed:
        # The SDK keeps message chunks it does not know, so the server has the last word.
        if lenient:
            warnings.append(UNKNOWN_CHUNK.format(_quote(kind)))
            return
        reason = f"chunk type {_quote(kind)} is not allowed here; use {_listing(allowed)}"
        raise _Invalid(reason, "type")
    _check_fields(chunk, CHUNK_FIELDS[kind], warnings)


def _chunks(allowed: frozenset[str], lenient: bool = False) -> Check:
    def check(value: Any, warnings: list[str]) -> None:
        if not isinstance(value, list):
            raise _Invalid(f"must be an array of content chunks, got {_render(value)}")
        for i, chunk in enumerate(value):
            try:
                _chunk(chunk, allowed, lenient, warnings)
            except _Invalid as exc:
                raise exc.under(i) from None

    return check


def _content(allowed: frozenset[str], lenient: bool = False) -> Check:
    chunks = _chunks(allowed, lenient)

    def check(value: Any, warnings: list[str]) -> None:
        if isinstance(value, str):
            return  # the common case, kept first
        if not isinstance(value, list):
            raise _Invalid(f"must be a string or an array of content chunks, got {_render(value)}")
        chunks(value, warnings)

    return check


def _single_chunk(allowed: frozenset[str]) -> Check:
    def check(value: Any, warnings: list[str]) -> None:
        _chunk(value, allowed, False, warnings)

    return check


_IMAGE_URL_FIELDS = (_required("url", _text), _optional("detail", _one_of("low", "auto", "high")))


def _image_url(value: Any, warnings: list[str]) -> None:
    if isinstance(value, str):
        return
    if not isinstance(value, dict):
        raise _Invalid(
            f'must be a URL string or {{"url": ..., "detail"?: ...}}, got {_render(value)}'
        )
    _check_fields(value, _IMAGE_URL_FIELDS, warnings)


# Nesting stops here: thinking and resource take only flat chunks, so no recursion is unbounded.
CHUNK_FIELDS: dict[str, tuple[Field, ...]] = {
    "text": (_required("text", _text),),
    "image_url": (_required("image_url", _image_url),),
    "document_url": (_required("document_url", _text), _optional("document_name", _text)),
    "reference": (_required("reference_ids", _array_of(_id, "integers or strings")),),
    "file": (_required("file_id", _text),),
    "thinking": (
        _required("thinking", _chunks(THINKING_PARTS)),
        _optional("signature", _text),
        _optional("closed", _boolean),
    ),
    "input_audio": (_required("input_audio", _text),),
    "resource": (_required("uri", _text), _required("content", _single_chunk(RESOURCE_PARTS))),
    "resource_link": (_required("uri", _text), _optional("metadata", _flat_map)),
    # Only inside thinking; fields from the SDK's ToolReferenceChunk.
    "tool_reference": (_required("tool", _text), _required("title", _text)),
}


# ---- messages (§2.1) and their order --------------------------------------------------

OpenCalls = frozenset[str] | None  # ids of the tool calls a tool message may answer
Turn = Callable[[dict[str, Any], OpenCalls, bool], OpenCalls]
ENDING_ROLES = ("user", "tool")

_TOOL_CALL = _shape(
    _optional("id", _text),
    _optional("type", _text),
    _optional("index", _integer(0)),
    _required("function", _shape(_required("name", _name), _required("arguments", _arguments))),
)


def _ends_tool_round(message: dict[str, Any], open_calls: OpenCalls, is_last: bool) -> OpenCalls:
    return None


def _assistant_turn(message: dict[str, Any], open_calls: OpenCalls, is_last: bool) -> OpenCalls:
    calls = message.get("tool_calls")
    if not message.get("content") and not calls:
        raise _Invalid("an assistant message needs non-empty content or tool_calls")
    if message.get("prefix") is True and not is_last:
        raise _Invalid("an assistant prefix must be the last message", "prefix")
    if not calls:
        return None
    # Calls without an id get "null" from the SDK; only the ids given can be matched.
    return frozenset(call["id"] for call in calls if isinstance(call.get("id"), str))


def _tool_turn(message: dict[str, Any], open_calls: OpenCalls, is_last: bool) -> OpenCalls:
    if open_calls is None:
        raise _Invalid("a tool message must follow an assistant message with tool_calls")
    call_id = message.get("tool_call_id")
    if call_id is not None and open_calls and call_id not in open_calls:
        reason = f"{_quote(call_id)} matches none of the preceding assistant's tool_calls ids"
        raise _Invalid(reason, "tool_call_id")
    return open_calls  # several tool results may answer one assistant turn


class Role(NamedTuple):
    fields: tuple[Field, ...]
    turn: Turn


ROLES: dict[str, Role] = {
    "system": Role((_required("content", _content(SYSTEM_PARTS)),), _ends_tool_round),
    "user": Role((_key_required("content", _content(MESSAGE_PARTS, True)),), _ends_tool_round),
    "assistant": Role(
        (
            _optional("content", _content(MESSAGE_PARTS, True)),
            _optional("tool_calls", _array_of(_TOOL_CALL, "tool calls")),
            _not_null("prefix", _boolean),
        ),
        _assistant_turn,
    ),
    "tool": Role(
        (
            _key_required("content", _content(MESSAGE_PARTS, True)),
            _optional("tool_call_id", _text),
            _optional("name", _text),
        ),
        _tool_turn,
    ),
}
ROLE_NAMES = tuple(ROLES)


def _message(message: Any, open_calls: OpenCalls, is_last: bool, warnings: list[str]) -> OpenCalls:
    if not isinstance(message, dict):
        raise _Invalid(f"must be a message object, got {_render(message)}")
    role = message.get("role")
    rule = ROLES.get(role) if isinstance(role, str) else None
    if rule is None:
        reason = f"must be one of {_listing(ROLE_NAMES)}; got {_render(role)}"
        raise _Invalid(MISSING_REASON if "role" not in message else reason, "role")
    _check_fields(message, rule.fields, warnings)
    return rule.turn(message, open_calls, is_last)


def _messages(value: Any, warnings: list[str]) -> None:
    if not isinstance(value, list):
        raise _Invalid(f"must be a non-empty array of messages, got {_render(value)}")
    if not value:
        raise _Invalid("must not be empty: the request needs at least one message")
    last = len(value) - 1
    open_calls: OpenCalls = None
    for i, message in enumerate(value):
        try:
            open_calls = _message(message, open_calls, i == last, warnings)
        except _Invalid as exc:
            raise exc.under(i) from None
    final = value[last]
    is_prefix = final["role"] == "assistant" and final.get("prefix") is True
    if not (final["role"] in ENDING_ROLES or is_prefix):
        reason = "the last message must be user or tool (or an assistant with prefix: true)"
        raise _Invalid(reason, last, "role")
