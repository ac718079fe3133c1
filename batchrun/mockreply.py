"""What the mock server says: deterministic completions, stream chunks and error bodies.

Pure functions of the request, so the same body always gets the same content and tests
can predict it; the HTTP side lives in mockserver.py.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

import orjson

__all__ = ["completion", "error_body", "stream_events", "validation_error"]

WORDS = [
    "alpha",
    "bravo",
    "calm",
    "delta",
    "echo",
    "fjord",
    "gamma",
    "harbor",
    "iris",
    "jade",
    "kilo",
    "lumen",
    "maple",
    "nova",
    "opal",
    "prism",
    "quartz",
    "river",
    "sierra",
    "tango",
    "umber",
    "velvet",
    "willow",
    "xenon",
    "yarrow",
    "zephyr",
]
ROLES = frozenset({"system", "user", "assistant", "tool"})
ECHO_CHARS = 60


def digest(body: bytes) -> bytes:
    return hashlib.blake2b(body, digest_size=8).digest()


def content_key(request: dict[str, Any]) -> bytes:
    """What the reply content depends on: the conversation and model, not `stream`,
    so a streamed and a plain request for the same line get the same text."""
    return digest(orjson.dumps([request.get("model"), request.get("messages")]))


def text_of(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def validation_error(request: object) -> dict[str, Any] | None:
    """A Mistral-style 422 body for the few problems the mock checks, else None."""
    if not isinstance(request, dict):
        return _detail(["body"], "Input should be a valid dictionary", "dict_type")
    model = request.get("model")
    if not isinstance(model, str) or not model:
        return _detail(["body", "model"], "Field required", "missing")
    messages = request.get("messages")
    if not isinstance(messages, list) or not messages:
        return _detail(["body", "messages"], "Field required", "missing")
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if not isinstance(role, str) or role not in ROLES:
            return _detail(["body", "messages", i, "role"], "Input tag does not match", "union_tag")
    return None


def _detail(loc: list[str | int], msg: str, kind: str) -> dict[str, Any]:
    return {
        "object": "error",
        "message": f"{'.'.join(map(str, loc))}: {msg}",
        "detail": [{"loc": loc, "msg": msg, "type": kind}],
    }


def error_body(status: int, message: str) -> bytes:
    kind = "rate_limited" if status == 429 else "invalid_request_error"
    return orjson.dumps(
        {"object": "error", "message": message, "type": kind, "param": None, "code": str(status)}
    )


def completion(request: dict[str, Any], key: bytes) -> dict[str, Any]:
    """The full non-streamed reply for `request`; `key` is the body digest."""
    messages = request["messages"]
    last = text_of(messages[-1].get("content"))
    words = [WORDS[b % len(WORDS)] for b in key[: 4 + key[0] % 5]]
    content = f"Echo: {last[:ECHO_CHARS]} {' '.join(words)}"
    finish = "stop"
    max_tokens = request.get("max_tokens")
    pieces = content.split(" ")
    if isinstance(max_tokens, int) and 0 < max_tokens < len(pieces):
        pieces, finish = pieces[:max_tokens], "length"
        content = " ".join(pieces)
    message: dict[str, Any] = {"role": "assistant", "content": content}
    call = _tool_call(request, last, key)
    if call is not None:
        message, finish = {"role": "assistant", "content": "", "tool_calls": [call]}, "tool_calls"
    elif _wants_json(request):
        message["content"] = orjson.dumps({"answer": " ".join(words), "echo": last[:40]}).decode()
    n = request.get("n")
    n = n if isinstance(n, int) else 1
    prompt_chars = sum(len(text_of(m.get("content"))) for m in messages)
    completion_tokens = len(str(message["content"]).split()) + (8 if call else 0)
    return {
        "id": "cmpl-" + key.hex(),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": request["model"],
        "choices": [
            {"index": i, "message": message, "finish_reason": finish} for i in range(max(1, n))
        ],
        "usage": {
            "prompt_tokens": prompt_chars // 4 + 1,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_chars // 4 + 1 + completion_tokens,
        },
    }


def _wants_json(request: dict[str, Any]) -> bool:
    response_format = request.get("response_format")
    return isinstance(response_format, dict) and response_format.get("type") in (
        "json_object",
        "json_schema",
    )


def _tool_call(request: dict[str, Any], last: str, key: bytes) -> dict[str, Any] | None:
    tools, choice = request.get("tools"), request.get("tool_choice")
    if not isinstance(tools, list) or not tools:
        return None
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
    elif choice in ("any", "required"):
        name = (tools[0].get("function") or {}).get("name")
    else:
        return None
    arguments = orjson.dumps({"query": last[:40], "limit": 1 + key[1] % 9}).decode()
    return {
        "id": "call_" + key.hex()[:9],
        "type": "function",
        "function": {"name": name, "arguments": arguments},
    }


def stream_events(reply: dict[str, Any], chunks: int) -> list[bytes]:
    """`reply` as server-sent events: role chunk, content in `chunks` pieces (split
    anywhere, even mid-word), tool-call arguments in pieces, finish+usage, [DONE]."""
    events = []
    head = {
        "id": reply["id"],
        "object": "chat.completion.chunk",
        "created": reply["created"],
        "model": reply["model"],
    }
    for choice in reply["choices"]:
        index, message = choice["index"], choice["message"]
        deltas: list[dict[str, Any]] = [{"role": "assistant", "content": ""}]
        deltas += [{"content": piece} for piece in _split(message.get("content") or "", chunks)]
        for call in message.get("tool_calls") or ():
            deltas += _tool_call_deltas(call)
        for delta in deltas:
            events.append(_event(head, index, delta, None))
        last = choice is reply["choices"][-1]
        events.append(
            _event(head, index, {}, choice["finish_reason"], reply["usage"] if last else None)
        )
    events.insert(1, b": keep-alive\n\n")
    events.append(b"data: [DONE]\n\n")
    return events


def _event(
    head: dict[str, Any],
    index: int,
    delta: dict[str, Any],
    finish: str | None,
    usage: dict[str, Any] | None = None,
) -> bytes:
    chunk: dict[str, Any] = {
        **head,
        "choices": [{"index": index, "delta": delta, "finish_reason": finish}],
    }
    if usage is not None:
        chunk["usage"] = usage
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


def _split(text: str, parts: int) -> list[str]:
    if not text:
        return []
    parts = max(1, min(parts, len(text)))
    step = -(-len(text) // parts)
    return [text[i : i + step] for i in range(0, len(text), step)]


def _tool_call_deltas(call: dict[str, Any]) -> list[dict[str, Any]]:
    arguments = call["function"]["arguments"]
    half = len(arguments) // 2
    first = {
        "index": 0,
        "id": call["id"],
        "type": "function",
        "function": {"name": call["function"]["name"], "arguments": arguments[:half]},
    }
    rest = {"index": 0, "function": {"arguments": arguments[half:]}}
    return [{"tool_calls": [first]}, {"tool_calls": [rest]}]
