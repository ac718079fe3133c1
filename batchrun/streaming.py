"""Streamed replies: CompletionChunk events reassembled into one ChatCompletionResponse,
and the deadlines of a streamed attempt.

A streamed line must end in a record shaped exactly like a non-streamed one, or in a
retryable `StreamTruncated` or `Timeout`: never in a half-written success. Chunks are
untrusted: a field of the wrong type is skipped, never raised on.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import anyio
import orjson

from .errors import StreamTruncated, Timeout
from .sse import SSEDecoder, SSEEvent

__all__ = ["StreamAssembler", "StreamDeadlines", "read_completion_stream"]

DONE = "[DONE]"
EXCERPT_CHARS = 300  # of a server's error text in our message: enough to act on, bounded


class _ToolCall:
    """One tool call, pieced together from every delta that carries its index."""

    __slots__ = ("id", "name", "parts", "type", "whole")

    def __init__(self, call: Mapping[str, Any], function: Mapping[str, Any]) -> None:
        self.id: Any = call.get("id")
        self.type: Any = call.get("type") or "function"
        self.name: Any = function.get("name")
        self.parts: list[str] = []
        self.whole: Any = None  # arguments sent as a JSON object rather than text

    def add(self, call: Mapping[str, Any], function: Mapping[str, Any]) -> None:
        if self.id is None:
            self.id = call.get("id")
        if self.name is None:
            self.name = function.get("name")
        arguments = function.get("arguments")
        if isinstance(arguments, str):
            self.parts.append(arguments)
        elif arguments is not None:
            self.whole = arguments

    def build(self, index: int) -> dict[str, Any]:
        # An object is the whole call; string pieces next to one can only be noise.
        arguments = self.whole if self.whole is not None else "".join(self.parts)
        function = {"name": self.name, "arguments": arguments}
        return {"id": self.id, "type": self.type, "index": index, "function": function}


class _Choice:
    """The accumulator of one `choices[].index`: appends only, joins once in `build`."""

    __slots__ = (
        "finish_reason",
        "index",
        "logprobs",
        "role",
        "signature",
        "text",
        "thinking",
        "tool_calls",
    )

    def __init__(self, index: int) -> None:
        self.index = index
        self.role: str | None = None
        self.text: list[str] = []
        self.thinking: list[Any] = []  # the inner parts of every thinking chunk, in order
        self.signature: Any = None
        self.tool_calls: dict[int, _ToolCall] = {}
        self.finish_reason: Any = None
        self.logprobs: list[Any] | None = None

    def add(self, choice: Mapping[str, Any]) -> bool:
        """Take one StreamChoice; True if it carried generated output."""
        delta = choice.get("delta")
        output = isinstance(delta, dict) and self._add_delta(delta)
        if choice.get("finish_reason") is not None:
            self.finish_reason = choice["finish_reason"]
        logprobs = choice.get("logprobs")
        if isinstance(logprobs, dict) and isinstance(logprobs.get("content"), list):
            self.logprobs = self.logprobs or []
            self.logprobs.extend(logprobs["content"])
        return output

    def _add_delta(self, delta: Mapping[str, Any]) -> bool:
        if self.role is None and isinstance(delta.get("role"), str):
            self.role = delta["role"]
        content = delta.get("content")
        output = False
        if isinstance(content, str):
            output = bool(content)
            if output:
                self.text.append(content)
        elif isinstance(content, list):
            output = self._add_parts(content)
        tool_calls = delta.get("tool_calls")
        if isinstance(tool_calls, list) and tool_calls:
            self._add_tool_calls(tool_calls)
            output = True
        return output

    def _add_parts(self, parts: list[Any]) -> bool:
        # Only text and thinking make up a reply's content; other chunk types are dropped.
        output = False
        for part in parts:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" and isinstance(part.get("text"), str):
                self.text.append(part["text"])
                output = output or bool(part["text"])
            elif kind == "thinking":
                self._add_thinking(part)
                output = True
        return output

    def _add_thinking(self, part: Mapping[str, Any]) -> None:
        inner = part.get("thinking")
        if isinstance(inner, list):
            self.thinking.extend(inner)
        if part.get("signature") is not None:
            self.signature = part["signature"]

    def _add_tool_calls(self, calls: list[Any]) -> None:
        for position, call in enumerate(calls):
            if not isinstance(call, dict):
                continue
            function = call.get("function")
            function = function if isinstance(function, dict) else {}
            index = call.get("index")
            key = index if isinstance(index, int) else position
            slot = self.tool_calls.get(key)
            if slot is None:
                self.tool_calls[key] = slot = _ToolCall(call, function)
            slot.add(call, function)

    def build(self) -> dict[str, Any]:
        """This choice as it appears in a non-streamed ChatCompletionResponse."""
        result: dict[str, Any] = {
            "index": self.index,
            "message": self._message(),
            "finish_reason": self.finish_reason,
        }
        if self.logprobs is not None:
            result["logprobs"] = {"content": self.logprobs}
        return result

    def _message(self) -> dict[str, Any]:
        message: dict[str, Any] = {"role": self.role or "assistant", "content": self._content()}
        if self.tool_calls:
            calls = sorted(self.tool_calls.items())
            message["tool_calls"] = [call.build(index) for index, call in calls]
        return message

    def _content(self) -> Any:
        text = "".join(self.text)
        if self.thinking or self.signature is not None:
            thinking: dict[str, Any] = {"type": "thinking", "thinking": _merged(self.thinking)}
            if self.signature is not None:
                thinking["signature"] = self.signature
            return [thinking, {"type": "text", "text": text}]
        if not text and self.tool_calls:
            return None  # what the API itself sends for a reply that is only tool calls
        return text


def _merged(parts: list[Any]) -> list[Any]:
    """Adjacent plain text parts joined: a streamed thought arrives one token per part,
    a non-streamed one as a single text part."""
    merged: list[Any] = []
    run: list[str] = []
    for part in parts:
        if _is_plain_text(part):
            run.append(part["text"])
            continue
        if run:
            merged.append({"type": "text", "text": "".join(run)})
            run = []
        merged.append(part)
    if run:
        merged.append({"type": "text", "text": "".join(run)})
    return merged


def _is_plain_text(part: Any) -> bool:
    return (
        isinstance(part, dict)
        and part.keys() == {"type", "text"}
        and part["type"] == "text"
        and isinstance(part["text"], str)
    )


class StreamAssembler:
    """Accumulates CompletionChunk dicts (already JSON-decoded) into one response dict."""

    def __init__(self) -> None:
        self._choices: dict[int, _Choice] = {}
        self._head: tuple[Any, Any, Any] | None = None  # id, created, model
        self._usage: Any = None

    def add(self, chunk: Mapping[str, Any]) -> bool:
        """Take one chunk; True if it carried generated output (for time-to-first-token)."""
        if self._head is None:
            self._head = (chunk.get("id"), chunk.get("created"), chunk.get("model"))
        if chunk.get("usage") is not None:
            self._usage = chunk["usage"]
        choices = chunk.get("choices")
        output = False
        for choice in choices if isinstance(choices, list) else ():
            if isinstance(choice, dict) and self._choice(choice.get("index")).add(choice):
                output = True
        return output

    def _choice(self, index: object) -> _Choice:
        key = index if isinstance(index, int) else 0
        choice = self._choices.get(key)
        if choice is None:
            self._choices[key] = choice = _Choice(key)
        return choice

    def finish(self) -> dict[str, Any]:
        """The reassembled response; StreamTruncated unless every choice finished."""
        if self._head is None or not self._choices:
            raise StreamTruncated("stream carried no completion choices")
        unfinished = [i for i, c in self._choices.items() if c.finish_reason is None]
        if unfinished:
            raise StreamTruncated(f"stream ended without a finish_reason for choices {unfinished}")
        response_id, created, model = self._head
        return {
            "id": response_id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [choice.build() for _, choice in sorted(self._choices.items())],
            # null, not zeros, when the server sent none: zeros would read as real counts
            "usage": self._usage,
        }


class StreamDeadlines:
    """A streamed attempt's two deadlines on one cancel scope: `idle_s` since the last
    event that carried data (keep-alive comments and half-received events are not
    progress) and `total_s` for the whole attempt, connect included.

    Enter `scope` around the attempt, call `data_arrived()` per event, then
    `raise_if_expired()`. The idle deadline is moved at most every `idle_s / 10`, so it
    may fire up to that much late, and costs no timer per event."""

    __slots__ = ("_due", "_end", "_idle_s", "_slack_s", "_total_s", "scope")

    def __init__(self, idle_s: float, total_s: float) -> None:
        now = anyio.current_time()
        self._idle_s, self._total_s, self._slack_s = idle_s, total_s, idle_s / 10
        self._end = now + total_s
        self._due = min(self._end, now + idle_s)
        self.scope = anyio.CancelScope(deadline=self._due)

    def data_arrived(self) -> None:
        due = self._due
        if due < self._end and due < anyio.current_time() + self._idle_s:
            self._due = min(self._end, anyio.current_time() + self._idle_s + self._slack_s)
            self.scope.deadline = self._due

    def raise_if_expired(self) -> None:
        """Timeout if the scope was cancelled by one of the deadlines."""
        if not self.scope.cancelled_caught:
            return
        if anyio.current_time() >= self._end:
            raise Timeout(f"stream not finished within {self._total_s:g} s (--stream-timeout)")
        raise Timeout(f"stream idle: no data for {self._idle_s:g} s (--stream-idle-timeout)")


def _nothing() -> None:
    pass


async def read_completion_stream(
    chunks: AsyncIterator[bytes],
    on_first_output: Callable[[], None],
    on_event: Callable[[], None] = _nothing,
) -> dict[str, Any]:
    """Consume a text/event-stream body up to `data: [DONE]` and return the response.

    Calls `on_first_output()` once, when the first generated output arrives, and
    `on_event()` for every event that carries data (comments carry none). Raises
    StreamTruncated for a body that ends before [DONE], a malformed or error event, or a
    stream with no finish_reason; the caller retries the whole request. Nothing after
    [DONE] is read."""
    decoder = SSEDecoder()
    assembler = StreamAssembler()
    waiting_for_output = True
    async for piece in chunks:
        for event in decoder.feed(piece):
            on_event()
            if event.data == DONE and event.event != "error":
                return assembler.finish()
            if assembler.add(_chunk_of(event)) and waiting_for_output:
                waiting_for_output = False
                on_first_output()
    where = " (cut inside an event)" if decoder.pending else ""
    raise StreamTruncated(f"stream ended before data: [DONE]{where}")


def _chunk_of(event: SSEEvent) -> dict[str, Any]:
    """The CompletionChunk an event carries; StreamTruncated for anything else."""
    if event.event == "error":
        raise StreamTruncated(f"server sent an error event: {_excerpt(event.data)}")
    try:
        chunk = orjson.loads(event.data)
    except orjson.JSONDecodeError:
        raise StreamTruncated(f"malformed event: {_excerpt(event.data)!r}") from None
    if not isinstance(chunk, dict):
        raise StreamTruncated(f"malformed event, not a JSON object: {_excerpt(event.data)!r}")
    error = chunk.get("error")
    if error is not None:
        text = error if isinstance(error, str) else orjson.dumps(error).decode()
        raise StreamTruncated(f"server error mid-stream: {_excerpt(text)}")
    return chunk


def _excerpt(text: str) -> str:
    return text if len(text) <= EXCERPT_CHARS else text[:EXCERPT_CHARS] + "..."
