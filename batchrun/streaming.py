"""Streamed replies: CompletionChunk events reassembled into one ChatCompletionResponse.

A streamed line must end in a record shaped exactly like a non-streamed one, or in a
retryable `StreamTruncated`: never in a half-written success.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import orjson

from .errors import StreamTruncated
from .sse import SSEDecoder, SSEEvent

__all__ = ["StreamAssembler", "read_completion_stream"]

DONE = "[DONE]"
EXCERPT = 300


class _Choice:
    """The accumulator of one `choices[].index`."""

    __slots__ = ("finish_reason", "index", "logprobs", "role", "text", "thinking", "tool_calls")

    def __init__(self, index: int) -> None:
        self.index = index
        self.role: str | None = None
        self.text: list[str] = []
        self.thinking: list[Any] = []
        self.tool_calls: dict[int, dict[str, Any]] = {}
        self.finish_reason: str | None = None
        self.logprobs: list[Any] | None = None

    def add(self, choice: Mapping[str, Any]) -> bool:
        output = False
        delta = choice.get("delta")
        if isinstance(delta, dict):
            output = self._add_delta(delta)
        if choice.get("finish_reason") is not None:
            self.finish_reason = choice["finish_reason"]
        logprobs = choice.get("logprobs")
        if isinstance(logprobs, dict) and isinstance(logprobs.get("content"), list):
            self.logprobs = (self.logprobs or []) + logprobs["content"]
        return output

    def _add_delta(self, delta: Mapping[str, Any]) -> bool:
        if self.role is None and isinstance(delta.get("role"), str):
            self.role = delta["role"]
        output = self._add_content(delta.get("content"))
        tool_calls = delta.get("tool_calls")
        if isinstance(tool_calls, list):
            for position, call in enumerate(tool_calls):
                if isinstance(call, dict):
                    self._add_tool_call(call, position)
                    output = True
        return output

    def _add_content(self, content: object) -> bool:
        if isinstance(content, str):
            if content:
                self.text.append(content)
            return bool(content)
        output = False
        for part in content if isinstance(content, list) else ():
            if not isinstance(part, dict):
                continue
            if part.get("type") == "text" and isinstance(part.get("text"), str):
                self.text.append(part["text"])
                output = output or bool(part["text"])
            elif part.get("type") == "thinking":
                inner = part.get("thinking")
                self.thinking.extend(inner if isinstance(inner, list) else [inner])
                output = True
        return output

    def _add_tool_call(self, call: Mapping[str, Any], position: int) -> None:
        key = call["index"] if isinstance(call.get("index"), int) else position
        function = call.get("function") if isinstance(call.get("function"), dict) else {}
        assert isinstance(function, dict)
        slot = self.tool_calls.get(key)
        if slot is None:
            slot = self.tool_calls[key] = {
                "id": call.get("id"),
                "type": call.get("type") or "function",
                "name": function.get("name"),
                "arguments": [],
            }
        else:
            slot["id"] = slot["id"] or call.get("id")
            slot["name"] = slot["name"] or function.get("name")
        arguments = function.get("arguments")
        if isinstance(arguments, str):
            slot["arguments"].append(arguments)
        elif isinstance(arguments, dict):
            slot["arguments"] = arguments  # sent whole as an object: keep it as is

    def message(self) -> dict[str, Any]:
        text = "".join(self.text)
        content: Any = text
        if self.thinking:
            content = [
                {"type": "thinking", "thinking": self.thinking},
                {"type": "text", "text": text},
            ]
        elif not text and self.tool_calls:
            content = None
        message: dict[str, Any] = {"role": self.role or "assistant", "content": content}
        if self.tool_calls:
            message["tool_calls"] = [_tool_call(i, s) for i, s in sorted(self.tool_calls.items())]
        return message


def _tool_call(index: int, slot: dict[str, Any]) -> dict[str, Any]:
    arguments = slot["arguments"]
    return {
        "id": slot["id"],
        "type": slot["type"],
        "index": index,
        "function": {
            "name": slot["name"],
            "arguments": "".join(arguments) if isinstance(arguments, list) else arguments,
        },
    }


class StreamAssembler:
    """Accumulates CompletionChunk dicts (already JSON-decoded) into one response dict."""

    def __init__(self) -> None:
        self._choices: dict[int, _Choice] = {}
        self._head: dict[str, Any] | None = None
        self._usage: Any = None

    def add(self, chunk: Mapping[str, Any]) -> bool:
        """Take one chunk; True if it carried generated output (for time-to-first-token)."""
        if self._head is None:
            self._head = {k: chunk.get(k) for k in ("id", "created", "model")}
        if chunk.get("usage") is not None:
            self._usage = chunk["usage"]
        output = False
        for choice in chunk.get("choices") or ():
            if isinstance(choice, dict):
                index = choice.get("index", 0)
                key = index if isinstance(index, int) else 0
                accumulator = self._choices.get(key) or self._choices.setdefault(key, _Choice(key))
                output = accumulator.add(choice) or output
        return output

    def finish(self) -> dict[str, Any]:
        """The reassembled response; StreamTruncated if no choice ever finished."""
        if self._head is None:
            raise StreamTruncated("stream carried no completion chunks")
        if not any(c.finish_reason is not None for c in self._choices.values()):
            raise StreamTruncated("stream ended without a finish_reason")
        return {
            "id": self._head["id"],
            "object": "chat.completion",
            "created": self._head["created"],
            "model": self._head["model"],
            "choices": [self._choice(c) for _, c in sorted(self._choices.items())],
            "usage": self._usage,
        }

    @staticmethod
    def _choice(choice: _Choice) -> dict[str, Any]:
        result: dict[str, Any] = {
            "index": choice.index,
            "message": choice.message(),
            "finish_reason": choice.finish_reason,
        }
        if choice.logprobs is not None:
            result["logprobs"] = {"content": choice.logprobs}
        return result


async def read_completion_stream(
    chunks: AsyncIterator[bytes], on_first_output: Callable[[], None]
) -> dict[str, Any]:
    """Consume a text/event-stream body up to `data: [DONE]` and return the response.

    Raises StreamTruncated for a body that ends before [DONE], a malformed or error event,
    or a stream with no finish_reason; the caller retries the whole request."""
    decoder = SSEDecoder()
    assembler = StreamAssembler()
    seen_output = False
    async for piece in chunks:
        for event in decoder.feed(piece):
            if event.data == DONE:
                return assembler.finish()
            if assembler.add(_decode(event)) and not seen_output:
                seen_output = True
                on_first_output()
    raise StreamTruncated("stream ended before data: [DONE]")


def _decode(event: SSEEvent) -> dict[str, Any]:
    if event.event == "error":
        raise StreamTruncated(f"server sent an error event: {event.data[:EXCERPT]}")
    try:
        chunk = orjson.loads(event.data)
    except orjson.JSONDecodeError:
        raise StreamTruncated(f"malformed event: {event.data[:EXCERPT]!r}") from None
    if not isinstance(chunk, dict):
        raise StreamTruncated(f"malformed event: {event.data[:EXCERPT]!r}")
    if "error" in chunk:
        raise StreamTruncated(f"server error mid-stream: {str(chunk['error'])[:EXCERPT]}")
    return chunk
