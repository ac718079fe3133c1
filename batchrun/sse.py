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
DATA_PREFIX = b"data: "
# Byte values, not b"\r": `13 in chunk` is a memchr, `b"\r" in chunk` a substring search
# (~8x slower on a typical event), and every chunk is scanned for both.
LF = 10
CR = 13


@dataclass(frozen=True, slots=True)
class SSEEvent:
    data: str
    event: str = "message"
    id: str | None = None


def _is_one_data_line_event(chunk: bytes) -> bool:
    # The first LF is the one before the last byte, and the last byte is LF.
    return (
        chunk[:6] == DATA_PREFIX
        and chunk.find(LF) == len(chunk) - 2
        and chunk[-1] == LF
        and CR not in chunk
    )


class SSEDecoder:
    """Feed it byte chunks as they arrive; it returns the events each chunk completes."""

    def __init__(self) -> None:
        # Pieces of the unfinished last line, joined only once its line end arrives, so a
        # long line read in many small chunks costs linear time, not quadratic.
        self._tail: list[bytes] = []
        self._data: list[str] = []
        self._event = ""
        self._last_id: str | None = None
        self._started = False  # a BOM may only appear before the first byte of content
        self._after_cr = False  # the last chunk ended in CR: an LF opening the next is its pair

    @property
    def pending(self) -> bool:
        """True when bytes of an event that was never terminated are held."""
        return bool(self._tail or self._data or self._event)

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """The events completed by `chunk`, in order."""
        if self._after_cr and chunk:
            self._after_cr = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        if self._idle() and _is_one_data_line_event(chunk):
            # The common case on the wire: one read = one `data: ...\n\n` event. Same
            # result as the general path below, without splitting it into lines.
            return [SSEEvent(chunk[6:-2].decode("utf-8", "replace"), "message", self._last_id)]
        if not self._started:
            chunk = self._without_bom(chunk)
        if LF not in chunk and CR not in chunk:
            if chunk:
                self._tail.append(chunk)
            return []
        return self._lines(self._take_tail(chunk))

    def close(self) -> list[SSEEvent]:
        """End of stream: an event without its blank line is discarded, per the spec.
        `pending` still tells the caller whether the stream was cut inside one."""
        return []

    def _idle(self) -> bool:
        """Between events, with nothing held: a chunk can be parsed on its own."""
        return self._started and not (self._tail or self._data or self._event)

    def _without_bom(self, chunk: bytes) -> bytes:
        data = self._take_tail(chunk)
        if len(data) < len(UTF8_BOM) and UTF8_BOM.startswith(data):
            self._tail = [data] if data else []  # maybe a BOM split across reads: wait
            return b""
        self._started = True
        return data.removeprefix(UTF8_BOM)

    def _take_tail(self, chunk: bytes) -> bytes:
        if not self._tail:
            return chunk
        self._tail.append(chunk)
        data = b"".join(self._tail)
        self._tail = []
        return data

    def _lines(self, data: bytes) -> list[SSEEvent]:
        if CR in data:
            # A CR ending this read may be the first half of a CRLF split across reads.
            self._after_cr = data.endswith(b"\r")
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = data.split(b"\n")
        last = lines.pop()
        if last:
            self._tail.append(last)
        events: list[SSEEvent] = []
        for line in lines:
            self._line(line, events)
        return events

    def _line(self, line: bytes, events: list[SSEEvent]) -> None:
        if not line:
            self._dispatch(events)
        elif line.startswith(DATA_PREFIX):  # nearly every line: skip the general parse
            self._data.append(line[6:].decode("utf-8", "replace"))
        elif line[:1] != b":":  # a leading colon is a comment, e.g. `: keep-alive`
            self._field(line.decode("utf-8", "replace"))

    def _field(self, text: str) -> None:
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
