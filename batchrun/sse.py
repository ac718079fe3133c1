"""Incremental server-sent-events decoding: raw bytes in, complete events out.

Our own decoder rather than httpx-sse: that one parses over httpx's `aiter_lines()`,
while we read raw transport chunks and need byte-level correctness wherever a network
read splits (inside a UTF-8 character, between CR and LF) at thousands of events/s.
Follows the WHATWG rules: CRLF/LF/CR line ends, `:` comments, multi-line `data`.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SSEDecoder", "SSEEvent"]

UTF8_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True, slots=True)
class SSEEvent:
    data: str
    event: str = "message"
    id: str | None = None


class SSEDecoder:
    """Feed it byte chunks as they arrive; it returns the events each chunk completes."""

    def __init__(self) -> None:
        self._buffer = b""  # the unfinished last line
        self._data: list[str] = []
        self._event = ""
        self._last_id: str | None = None
        self._at_start = True  # a BOM may only appear at the very start
        self._after_cr = False  # the previous chunk ended in CR: a leading LF is its pair

    @property
    def pending(self) -> bool:
        """True when bytes of an event that was never terminated are held."""
        return bool(self._buffer) or bool(self._data)

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        if self._is_one_plain_event(chunk):
            # The common case on the wire: one read = one `data: ...\n\n` event. Same
            # result as the general path below, at a fraction of its cost.
            return [SSEEvent(chunk[6:-2].decode("utf-8", "replace"), "message", self._last_id)]
        if self._after_cr and chunk[:1] == b"\n":
            chunk = chunk[1:]
        if chunk:
            self._after_cr = False
        data = self._buffer + chunk
        if self._at_start:
            if len(data) < len(UTF8_BOM) and UTF8_BOM.startswith(data):
                self._buffer = data  # maybe a BOM split across reads: wait for more
                return []
            data = data.removeprefix(UTF8_BOM)
            self._at_start = False
        if b"\r" in data:
            self._after_cr = data.endswith(b"\r")
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = data.split(b"\n")
        self._buffer = lines.pop()
        events: list[SSEEvent] = []
        for line in lines:
            self._line(line, events)
        return events

    def _is_one_plain_event(self, chunk: bytes) -> bool:
        return (
            not self._at_start
            and not self._buffer
            and not self._data
            and not self._event
            and not self._after_cr
            and chunk.startswith(b"data: ")
            and chunk.endswith(b"\n\n")
            and chunk.count(b"\n") == 2
            and b"\r" not in chunk
        )

    def close(self) -> list[SSEEvent]:
        """End of stream: an event without its blank line is discarded, per the spec."""
        return []

    def _line(self, line: bytes, events: list[SSEEvent]) -> None:
        if not line:
            self._dispatch(events)
            return
        if line[:1] == b":":
            return  # comment / keep-alive
        text = line.decode("utf-8", "replace")
        name, colon, value = text.partition(":")
        if colon and value[:1] == " ":
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._last_id = value

    def _dispatch(self, events: list[SSEEvent]) -> None:
        if self._data:
            data = self._data[0] if len(self._data) == 1 else "\n".join(self._data)
            events.append(SSEEvent(data, self._event or "message", self._last_id))
        self._data = []
        self._event = ""
