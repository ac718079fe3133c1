"""What the mock server says: request checks, deterministic completions, stream events,
error bodies and the HTTP bytes around them.

Pure functions of the request (no sockets, state, or clock beyond `created`), so the same
body always gets the same reply and tests can predict it; faults.py decides which reply
a request gets, server.py sends it.
"""

from __future__ import annotations

import hashlib
import itertools
import time
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import orjson

from .limits import Quota
from .schemas import conforming, violating

WORDS = (
    *("alpha", "bravo", "calm", "delta", "echo", "fjord", "gamma", "harbor", "iris", "jade"),
    *("kilo", "lumen", "maple", "nova", "opal", "prism", "quartz", "river", "sierra", "tango"),
    *("umber", "velvet", "willow", "xenon", "yarrow", "zephyr", "émigré", "naïve"),
)  # two non-ASCII words, so some replies exercise multi-byte UTF-8 in streams
ROLES = frozenset({"system", "user", "assistant", "tool"})
ECHO_CHARS = 60
MAX_CHOICES = 64  # a huge `n` must not turn one request into a denial of service
MODELS = ("mistral-small-latest", "mistral-medium-latest", "mistral-large-latest")
MODELS_BODY = orjson.dumps(
    {
        "object": "list",
        "data": [{"id": m, "object": "model", "owned_by": "mistralai"} for m in MODELS],
    }
)
HEALTH_BODY = b'{"status":"ok"}'
BROKEN_JSON = b'{"id": "cmpl-broken", "object": "chat.completion", "choices": [{"index": 0, "mes'
ERROR_TYPES = {429: "rate_limited", 401: "unauthorized", 403: "forbidden", 404: "not_found"}
STATUS_LINES = {s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode()) for s in HTTPStatus}
JSON_TYPE, EVENTS_TYPE = b"application/json", b"text/event-stream"

Problem = tuple[list[str | int], str, str]  # (loc, msg, type) of one 422 detail entry


def digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=8).digest()


def reply_key(request: dict[str, Any]) -> bytes:
    """What the reply depends on: every field but `stream`, canonically ordered, so a
    streamed and a plain request for the same line get the same text and ids."""
    fields = {name: value for name, value in request.items() if name != "stream"}
    return digest(orjson.dumps(fields, option=orjson.OPT_SORT_KEYS))


# --- request checks -----------------------------------------------------------------------


def parse_chat(raw: bytes) -> tuple[dict[str, Any] | None, bytes | None]:
    """(the request, None) when the mock can answer it, else (what parsed, a 422 body).
    Only the few checks a reply needs; full validation lives in validate.py."""
    try:
        request = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None, _unprocessable((["body"], "JSON decode error", "json_invalid"))
    if not isinstance(request, dict):
        return None, _unprocessable((["body"], "Input should be a valid dictionary", "dict_type"))
    problem = _model_problem(request.get("model", ...))
    problem = problem or _messages_problem(request.get("messages", ...))
    return request, None if problem is None else _unprocessable(problem)


def _model_problem(model: object) -> Problem | None:
    if model is ...:
        return ["body", "model"], "Field required", "missing"
    if not isinstance(model, str):
        return ["body", "model"], "Input should be a valid string", "string_type"
    if not model:
        return ["body", "model"], "String should have at least 1 character", "string_too_short"
    return None


def _messages_problem(messages: object) -> Problem | None:
    if messages is ...:
        return ["body", "messages"], "Field required", "missing"
    if not isinstance(messages, list):
        return ["body", "messages"], "Input should be a valid list", "list_type"
    if not messages:
        return ["body", "messages"], "List should have at least 1 item", "too_short"
    for index, message in enumerate(messages):
        loc: list[str | int] = ["body", "messages", index]
        if not isinstance(message, dict):
            return loc, "Input should be a valid dictionary", "dict_type"
        role = message.get("role")
        if role is None:
            return loc, "Unable to extract tag using discriminator 'role'", "union_tag_not_found"
        if not isinstance(role, str) or role not in ROLES:
            return loc, f"Input tag {role!r} does not match any expected role", "union_tag_invalid"
    return None


def _unprocessable(problem: Problem) -> bytes:
    loc, msg, kind = problem
    message = f"{'.'.join(map(str, loc))}: {msg}"
    detail = [{"loc": loc, "msg": msg, "type": kind}]
    return orjson.dumps({"object": "error", "message": message, "detail": detail})


# --- the completion -----------------------------------------------------------------------


def completion(
    request: dict[str, Any], key: bytes, content_fault: str | None = None, reply: str | None = None
) -> dict[str, Any]:
    """The non-streamed reply to a request `parse_chat` accepted; every varying detail
    is drawn from `key`, its `reply_key`. A `content_fault` (kinds.CONTENT_FAULTS)
    replaces the content with what a structured-output request must refuse; else a
    `reply` (`metadata.mock.reply`) is the content as it is: no tool call, no
    `max_tokens` cut, finish_reason "stop", and usage counted from it."""
    messages: list[dict[str, Any]] = request["messages"]
    echo = _last_user_text(messages)[:ECHO_CHARS]
    words = [WORDS[byte % len(WORDS)] for byte in key[: 3 + key[0] % 5]]
    if content_fault is not None:
        content = _faulty_content(request, words, key, content_fault)
        message, finish = {"role": "assistant", "content": content}, "stop"
    elif reply is not None:
        message, finish = {"role": "assistant", "content": reply}, "stop"
    else:
        message, finish = _message(request, echo, words, key)
    n = request.get("n")
    choices = min(n, MAX_CHOICES) if isinstance(n, int) and n >= 1 else 1
    prompt_tokens = sum(len(_text_of(m.get("content"))) for m in messages) // 4 + 1
    completion_tokens = choices * _word_count(message)
    return {
        "id": "cmpl-" + key.hex(),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": request["model"],
        "choices": [
            {"index": i, "message": message, "finish_reason": finish} for i in range(choices)
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def _message(
    request: dict[str, Any], echo: str, words: list[str], key: bytes
) -> tuple[dict[str, Any], str]:
    """(assistant message, finish_reason): a forced tool call, a JSON object, or text."""
    name = _forced_tool(request.get("tools"), request.get("tool_choice"))
    if name is not None:
        arguments = orjson.dumps({"query": echo, "limit": 1 + key[1] % 9}).decode()
        function = {"name": name, "arguments": arguments}
        call = {"id": "call_" + key.hex()[:9], "type": "function", "function": function}
        return {"role": "assistant", "content": "", "tool_calls": [call]}, "tool_calls"
    response_format = request.get("response_format")
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    schema = _schema_of(response_format)
    if schema is not None:
        content = orjson.dumps(conforming(schema, key, WORDS)).decode()
        return {"role": "assistant", "content": content}, "stop"
    if kind in ("json_object", "json_schema"):
        content = orjson.dumps({"answer": " ".join(words), "line": echo}).decode()
        return {"role": "assistant", "content": content}, "stop"
    content, finish = _cut(f"Echo: {echo} {' '.join(words)}", request.get("max_tokens"))
    return {"role": "assistant", "content": content}, finish


def _schema_of(response_format: object) -> object:
    """The JSON Schema of a `json_schema` response format, None when there is none."""
    if not isinstance(response_format, dict) or response_format.get("type") != "json_schema":
        return None
    spec = response_format.get("json_schema")
    schema = spec.get("schema") if isinstance(spec, dict) else None
    return schema if isinstance(schema, dict | bool) else None


def _faulty_content(request: dict[str, Any], words: list[str], key: bytes, fault: str) -> str:
    """not_json: prose. schema_violation: JSON the request's schema refuses, or an array
    where JSON mode wants an object."""
    if fault == "not_json":
        return f"Sure! Here is what I think: {' '.join(words)}."
    schema = _schema_of(request.get("response_format"))
    wrong = ["not", "an", "object"] if schema is None else violating(schema, key, WORDS)
    return orjson.dumps(wrong).decode()


def _cut(text: str, max_tokens: object) -> tuple[str, str]:
    """At most `max_tokens` words (a word stands for a token), original spacing kept."""
    if not isinstance(max_tokens, int) or max_tokens < 1 or len(text.split()) <= max_tokens:
        return text, "stop"
    end = 0
    for _ in range(max_tokens):
        while text[end].isspace():
            end += 1
        while end < len(text) and not text[end].isspace():
            end += 1
    return text[:end], "length"


def _forced_tool(tools: object, choice: object) -> str | None:
    """The function a `tool_choice` of any/required/{function} forces: named, else first."""
    if not isinstance(tools, list) or not tools or choice in (None, "auto", "none"):
        return None
    first = _function_of(tools[0]).get("name")
    named = _function_of(choice).get("name")
    if isinstance(named, str) and named:
        return named
    forced = isinstance(choice, dict) or choice in ("any", "required")
    return (first if isinstance(first, str) else "tool") if forced else None


def _function_of(holder: object) -> dict[str, Any]:
    function = holder.get("function") if isinstance(holder, dict) else None
    return function if isinstance(function, dict) else {}


def _last_user_text(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            return _text_of(message.get("content"))
    return _text_of(messages[-1].get("content"))


def _text_of(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


def _word_count(message: dict[str, Any]) -> int:
    calls = message.get("tool_calls") or ()
    return len(" ".join([message["content"], *(c["function"]["arguments"] for c in calls)]).split())


# --- streaming ----------------------------------------------------------------------------


def stream_events(reply: dict[str, Any], chunks: int) -> list[bytes]:
    """`reply` as server-sent events: a role chunk, the content in `chunks` pieces (split
    anywhere, even mid-word), tool-call arguments in two pieces, a finish chunk per
    choice (usage on the last), then [DONE]; one keep-alive comment rides along."""
    head = {"id": reply["id"], "object": "chat.completion.chunk"}
    head.update(created=reply["created"], model=reply["model"])
    events = []
    for choice in reply["choices"]:
        index, message = choice["index"], choice["message"]
        deltas: list[dict[str, Any]] = [{"role": "assistant", "content": ""}]
        deltas += [{"content": piece} for piece in _split(message["content"], chunks)]
        for position, call in enumerate(message.get("tool_calls") or ()):
            deltas += _tool_call_deltas(position, call)
        events += [_event(head, index, delta, None) for delta in deltas]
        usage = reply["usage"] if choice is reply["choices"][-1] else None
        events.append(_event(head, index, {}, choice["finish_reason"], usage))
    events.insert(1, b": keep-alive\n\n")
    events.append(b"data: [DONE]\n\n")
    return events


def _event(
    head: dict[str, Any], index: int, delta: dict[str, Any], finish: str | None, usage: Any = None
) -> bytes:
    chunk = {**head, "choices": [{"index": index, "delta": delta, "finish_reason": finish}]}
    if usage is not None:
        chunk["usage"] = usage
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


def _split(text: str, parts: int) -> list[str]:
    """`parts` nearly equal pieces (fewer only for shorter text), cut between characters
    so each event stays valid UTF-8 JSON; byte-level splits are the network's job."""
    parts = max(1, min(parts, len(text)))
    bounds = [len(text) * i // parts for i in range(parts + 1)]
    return [text[start:end] for start, end in itertools.pairwise(bounds) if end > start]


def _tool_call_deltas(position: int, call: dict[str, Any]) -> list[dict[str, Any]]:
    """The first piece names the call; the second only extends `function.arguments`."""
    arguments, half = call["function"]["arguments"], len(call["function"]["arguments"]) // 2
    first: dict[str, Any] = {"index": position, "id": call["id"], "type": "function"}
    first["function"] = {"name": call["function"]["name"], "arguments": arguments[:half]}
    rest = {"index": position, "function": {"arguments": arguments[half:]}}
    return [{"tool_calls": [first]}, {"tool_calls": [rest]}]


# --- errors and HTTP framing --------------------------------------------------------------


def error_body(status: int, message: str) -> bytes:
    """The Mistral error object; a 422 also carries the `detail` list clients look for."""
    kind = ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    error: dict[str, Any] = {"object": "error", "message": message, "type": kind, "param": None}
    error["code"] = str(status)
    if status == 422:
        error["detail"] = [{"loc": ["body"], "msg": message, "type": "value_error"}]
    return orjson.dumps(error)


# What a 429 from an allowance says; clients must classify on status and headers, not this.
REFUSALS = {
    "storm": "Service tier capacity exceeded for this model.",
    "rps": "Requests rate limit exceeded (requests per second)",
    "rpm": "Requests rate limit exceeded (requests per minute)",
    "tpm": "Tokens rate limit exceeded (tokens per minute)",
    "tokens_month": "Monthly tokens limit exceeded",
}


def refusal_body(allowance: str) -> bytes:
    return error_body(429, REFUSALS[allowance])


def unauthorized_body(request_id: str) -> bytes:
    return orjson.dumps({"message": "Unauthorized", "request_id": request_id})


def response(status: int, body: bytes, extra: bytes, keep_alive: bool) -> bytes:
    """A whole JSON reply; `extra` is already-framed header lines."""
    return b"%scontent-type: %s\r\ncontent-length: %d\r\n%sconnection: %s\r\n\r\n%s" % (
        STATUS_LINES[status],
        JSON_TYPE,
        len(body),
        extra,
        b"keep-alive" if keep_alive else b"close",
        body,
    )


def stream_head(extra: bytes, keep_alive: bool) -> bytes:
    """The head of a 200 event stream in chunked encoding, so the connection stays reusable."""
    connection = b"keep-alive" if keep_alive else b"close"
    return b"%scontent-type: %s\r\ntransfer-encoding: chunked\r\n%sconnection: %s\r\n\r\n" % (
        STATUS_LINES[200],
        EVENTS_TYPE,
        extra,
        connection,
    )


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


# --- scripted raw replies -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RawReply:
    """A reply a test scripted byte for byte (`metadata.mock.raw`), already checked by
    faults.py to keep the HTTP framing intact: the mock still writes the framing
    headers (content-length or chunked, connection) itself."""

    status: int
    headers: bytes  # framed header lines, each ending in CRLF
    body: bytes = b""
    events: tuple[bytes, ...] | None = None  # wire text of each event, one HTTP chunk each


def raw_response(raw: RawReply, keep_alive: bool) -> bytes:
    """The whole reply: a Content-Length body, or an event stream in chunked encoding."""
    connection = b"keep-alive" if keep_alive else b"close"
    status_line = STATUS_LINES.get(raw.status) or b"HTTP/1.1 %d Scripted\r\n" % raw.status
    if raw.events is None:
        length = b"content-length: %d\r\n" % len(raw.body)
        default_type = JSON_TYPE
    else:
        length = b"transfer-encoding: chunked\r\n"
        default_type = EVENTS_TYPE
    has_type = b"\ncontent-type:" in b"\n" + raw.headers.lower()
    content_type = b"" if has_type else b"content-type: %s\r\n" % default_type
    head = b"%s%s%s%sconnection: %s\r\n\r\n" % (
        status_line,
        content_type,
        raw.headers,
        length,
        connection,
    )
    if raw.events is None:
        return head + raw.body
    return head + b"".join(chunk(event) for event in raw.events if event) + b"0\r\n\r\n"


def keep_alive_event() -> bytes:
    return chunk(b": keep-alive\n\n")


def trickle_event(reply: dict[str, Any], position: int) -> bytes:
    """The `position`-th piece of a stream that never ends: one word, no finish_reason."""
    head = {"id": reply["id"], "object": "chat.completion.chunk", "model": reply["model"]}
    delta = {"content": WORDS[position % len(WORDS)] + " "}
    return chunk(_event(head, 0, delta, None))


RATE_HEADERS = (
    b"x-ratelimit-limit-req-minute: %d\r\nx-ratelimit-remaining-req-minute: %d\r\n"
    b"x-ratelimit-limit-tokens-minute: %d\r\nx-ratelimit-remaining-tokens-minute: %d\r\n"
    b"x-ratelimit-limit-tokens-month: %d\r\nx-ratelimit-remaining-tokens-month: %d\r\n"
    b"x-ratelimit-tokens-query-cost: %d\r\n"
)


def rate_limit_headers(quota: Quota) -> bytes:
    """Mistral's x-ratelimit-* lines, in the order of `Quota`'s fields."""
    return RATE_HEADERS % quota


def retry_headers(retry_after: float, retry_after_ms: float | None) -> bytes:
    """Retry-After in seconds, fractional when it is (e.g. "0.05"), and retry-after-ms."""
    lines = b"retry-after: %s\r\n" % _decimal(retry_after)
    if retry_after_ms is not None:
        lines += b"retry-after-ms: %s\r\n" % _decimal(retry_after_ms)
    return lines


def _decimal(value: float) -> bytes:
    return b"%d" % value if value == int(value) else f"{value:.6f}".rstrip("0").rstrip(".").encode()
