"""Records: the typed home of what a line is and what becomes of it.

`Request` and `BadLine` are what the reader makes of an input line; `ok_record` and
`error_record` serialise a finished line (`Completed`) into the bytes every output file
holds; `Record.parse` reads such a line back, tolerantly. Nothing else builds or reads
a record.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import orjson

from .errors import InvalidInput, RequestFailed

if TYPE_CHECKING:  # structured.py loads jsonschema; a plain run never needs it
    from .evals import Expectation
    from .structured import OutputChecker

Status = Literal["ok", "error"]

__all__ = [
    "BadLine",
    "Completed",
    "Record",
    "Request",
    "error_record",
    "ok_record",
    "reply_content",
    "stored_index",
    "usage_count",
]


def usage_count(usage: object, key: str) -> int | None:
    """A token count in a `usage` object, from a reply or a stored record alike: an int
    >= 0 (not a bool), else None (the server's bytes are untrusted)."""
    value = usage.get(key) if isinstance(usage, dict) else None
    return value if type(value) is int and value >= 0 else None


@dataclass(frozen=True, slots=True)
class Request:
    index: int
    line: int
    custom_id: str | None
    payload: bytes  # the JSON body exactly as it will be sent
    stream: bool
    tokens: int = 0  # estimated cost, for a tokens-per-minute pace (0 when none is set)
    model: str | None = None  # the model it is sent to (for prices)
    max_completion: int = 0  # the completion tokens `tokens` counts (0 when not estimated)
    # The body's response_format as a checker of the reply (None: nothing to check).
    checker: OutputChecker | None = None
    # An eval job's expected answer and slice for this line (None: not an eval).
    expectation: Expectation | None = None


@dataclass(frozen=True, slots=True)
class BadLine:
    index: int
    line: int
    custom_id: str | None
    error: InvalidInput
    expectation: Expectation | None = None  # when the row's eval side could be read


@dataclass(frozen=True, slots=True)
class Completed:
    """One finished line: its index and its record, serialised once, without newline."""

    index: int
    data: bytes
    failed: bool


def ok_record(
    request: Request,
    response: dict[str, Any],
    *,
    attempts: int,
    latency_ms: float,
    ttft_ms: float | None = None,
    parsed: Any = None,
    schema_attempts: int | None = None,
    discarded_usage: dict[str, int] | None = None,
    cached: bool = False,
    throttled: int = 0,
) -> Completed:
    """`parsed` (the content as JSON, which may be null) and `schema_attempts` (replies
    checked) are kept only for a line that asked for structured output, which is what
    a `schema_attempts` tells; `discarded_usage` sums the usage of replies refused for
    not fitting its response_format (paid for, not kept). `cached`: the reply came from
    the request cache, not from a request (`"cached": true`; absent otherwise).
    `throttled`: the 429s the line waited out (kept when there were any)."""
    record: dict[str, Any] = {
        "index": request.index,
        "line": request.line,
        "custom_id": request.custom_id,
        "status": "ok",
        "response": response,
        "attempts": attempts,
        "latency_ms": round(latency_ms, 2),
        "finished_at": round(time.time(), 3),
    }
    if ttft_ms is not None:
        record["ttft_ms"] = round(ttft_ms, 2)
    if schema_attempts is not None:
        record["parsed"] = parsed
        record["schema_attempts"] = schema_attempts
    if discarded_usage is not None:
        record["discarded_usage"] = discarded_usage
    if cached:
        record["cached"] = True
    if throttled:
        record["throttled"] = throttled
    expectation = request.expectation
    if expectation is not None:
        record["score"] = expectation.score(reply_content(response), parsed)
        if expectation.slice is not None:
            record["slice"] = expectation.slice
    return Completed(request.index, orjson.dumps(record), failed=False)


def error_record(
    line: Request | BadLine,
    error: RequestFailed,
    *,
    attempts: int,
    latency_ms: float | None = None,
    schema_attempts: int | None = None,
    discarded_usage: dict[str, int] | None = None,
    throttled: int = 0,
) -> Completed:
    record: dict[str, Any] = {
        "index": line.index,
        "line": line.line,
        "custom_id": line.custom_id,
        "status": "error",
        "error": error.to_record(),
        "attempts": attempts,
        "finished_at": round(time.time(), 3),
    }
    if latency_ms is not None:
        record["latency_ms"] = round(latency_ms, 2)
    if schema_attempts is not None:
        record["schema_attempts"] = schema_attempts
    if discarded_usage is not None:
        record["discarded_usage"] = discarded_usage
    if throttled:
        record["throttled"] = throttled
    expectation = line.expectation
    if expectation is not None:
        record["score"] = expectation.zeros()
        if expectation.slice is not None:
            record["slice"] = expectation.slice
    return Completed(line.index, orjson.dumps(record), failed=True)


def stored_index(raw: bytes) -> int | None:
    """A stored record's index, read from the bytes batchrun writes first (`{"index":N,`)
    without decoding the reply after it; any other line is decoded (None: no index)."""
    if raw.startswith(b'{"index":'):
        end = raw.find(b",", 9, 40)
        if end > 9 and raw[9:end].isdigit():
            return int(raw[9:end])
    record = Record.parse(raw)
    return None if record is None else record.index


def reply_content(response: object) -> str | None:
    """A reply's text: choice 0's message content, its `text` chunks joined when the
    content is a list of chunks (reasoning models); None when there is none."""
    choices = response.get("choices") if isinstance(response, dict) else None
    choice = choices[0] if isinstance(choices, list) and choices else None
    message = choice.get("message") if isinstance(choice, dict) else None
    value = message.get("content") if isinstance(message, dict) else None
    if isinstance(value, list):
        chunks = (c for c in value if isinstance(c, dict) and c.get("type") == "text")
        return "".join(t for c in chunks if isinstance(t := c.get("text"), str))
    return value if isinstance(value, str) else None


@dataclass(frozen=True, slots=True)
class Record:
    """One stored record (a line of results.jsonl, errors.jsonl or journal.jsonl) read
    back. Stored records come from disk, may be hand-edited or foreign, and hold a
    server's reply verbatim, so `data` (the object as decoded) is untrusted and the
    properties are its typed reading: a field of the wrong type reads as None, never
    as an error. A bool is never a number; counts (attempts, tokens) are ints >= 0;
    the timings are kept as stored (an int stays an int). `model` and the token counts
    are read from `response`; the error fields from `error`.

    Each property reads `data` when asked: a resume reads a million records and looks
    at a few fields of each, so building every field up front would cost more than
    decoding the line."""

    data: dict[str, Any]

    @classmethod
    def parse(cls, raw: bytes) -> Record | None:
        """The record stored in `raw` (one line, newline or not); None when `raw` is not
        a JSON object at all."""
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None
        return cls(value) if isinstance(value, dict) else None

    @classmethod
    def from_value(cls, value: object) -> Record | None:
        """The record in a decoded JSON value; None when it is not an object."""
        return cls(value) if isinstance(value, dict) else None

    # The properties repeat their type tests inline rather than call shared helpers:
    # a resume reads a few fields of every record, and a call costs about as much as
    # the test itself.

    @property
    def index(self) -> int | None:
        value = self.data.get("index")
        return value if type(value) is int else None

    @property
    def line(self) -> int | None:
        value = self.data.get("line")
        return value if type(value) is int else None

    @property
    def custom_id(self) -> str | None:
        value = self.data.get("custom_id")
        return value if isinstance(value, str) else None

    @property
    def status(self) -> Status | None:
        value = self.data.get("status")
        return "ok" if value == "ok" else "error" if value == "error" else None

    @property
    def failed(self) -> bool:
        """Failed because its status says so, never because of what else it holds."""
        return self.data.get("status") == "error"

    @property
    def response(self) -> dict[str, Any] | None:
        value = self.data.get("response")
        return value if isinstance(value, dict) else None

    @property
    def attempts(self) -> int | None:
        value = self.data.get("attempts")
        return value if type(value) is int and value >= 0 else None

    @property
    def schema_attempts(self) -> int | None:
        """Replies checked against the line's response_format; None: it asked for none."""
        value = self.data.get("schema_attempts")
        return value if type(value) is int and value >= 0 else None

    @property
    def latency_ms(self) -> float | None:
        value = self.data.get("latency_ms")
        return value if type(value) is float or type(value) is int else None

    @property
    def ttft_ms(self) -> float | None:
        value = self.data.get("ttft_ms")
        return value if type(value) is float or type(value) is int else None

    @property
    def cached(self) -> bool:
        """Answered from the request cache (only a literal `true` says so)."""
        return self.data.get("cached") is True

    @property
    def score(self) -> dict[str, Any] | None:
        """An eval run's per-scorer marks ({scorer: 0 or 1}); a failed line's are all 0.
        The values are as stored: a reader checks each (see scoreboard.ScoreBoard.add)."""
        value = self.data.get("score")
        return value if isinstance(value, dict) else None

    @property
    def slice(self) -> str | None:
        """The line's value of the eval's `slice` row field, as a key (scoreboard.slice_key)."""
        value = self.data.get("slice")
        return value if isinstance(value, str) else None

    @property
    def finished_at(self) -> float | None:
        """When the record was made, in seconds since the Unix epoch (this machine's clock)."""
        value = self.data.get("finished_at")
        return value if type(value) is float or type(value) is int else None

    @property
    def throttled(self) -> int:
        """The 429 replies this line waited out before its record (0 when absent)."""
        value = self.data.get("throttled")
        return value if type(value) is int and value >= 0 else 0

    @property
    def error_type(self) -> str | None:
        value = self._error().get("type")
        return value if isinstance(value, str) else None

    @property
    def error_message(self) -> str | None:
        value = self._error().get("message")
        return value if isinstance(value, str) else None

    @property
    def retryable(self) -> bool | None:
        value = self._error().get("retryable")
        return value if isinstance(value, bool) else None

    @property
    def error_body(self) -> str | None:
        """The first 2 KB of an HTTP error's body, as text."""
        value = self._error().get("body")
        return value if isinstance(value, str) else None

    @property
    def status_code(self) -> int | None:
        value = self._error().get("status_code")
        return value if type(value) is int else None

    @property
    def allowance(self) -> str | None:
        value = self._error().get("allowance")
        return value if isinstance(value, str) else None

    @property
    def content(self) -> str | None:
        return reply_content(self.data.get("response"))

    @property
    def model(self) -> str | None:
        response = self.data.get("response")
        value = response.get("model") if isinstance(response, dict) else None
        return value if isinstance(value, str) else None

    @property
    def prompt_tokens(self) -> int | None:
        return usage_count(self.usage, "prompt_tokens")

    @property
    def completion_tokens(self) -> int | None:
        return usage_count(self.usage, "completion_tokens")

    @property
    def total_tokens(self) -> int | None:
        return usage_count(self.usage, "total_tokens")

    @property
    def discarded_tokens(self) -> int | None:
        """Total tokens of the replies refused for not fitting the response_format."""
        return usage_count(self.data.get("discarded_usage"), "total_tokens")

    def _error(self) -> dict[str, Any]:
        error = self.data.get("error")
        return error if isinstance(error, dict) else _NO_OBJECT

    @property
    def usage(self) -> dict[str, Any]:
        """The reply's `usage` object ({} when there is none): read it once to take
        several counts from it with `usage_count`."""
        response = self.data.get("response")
        usage = response.get("usage") if isinstance(response, dict) else None
        return usage if isinstance(usage, dict) else _NO_OBJECT


_NO_OBJECT: dict[str, Any] = {}  # read-only stand-in for a field that is not an object
