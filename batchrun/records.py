"""Records: the typed home of what a line is and what becomes of it.

`Request` and `BadLine` are what the reader makes of an input line; `ok_record` and
`error_record` serialise a finished line (`Completed`) into the bytes every output file
holds; `Record.parse` reads such a line back, tolerantly. Nothing else builds or reads
a record.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import orjson

from .errors import InvalidInput, RequestFailed

Status = Literal["ok", "error"]

__all__ = [
    "BadLine",
    "Completed",
    "Record",
    "Request",
    "error_record",
    "ok_record",
]


@dataclass(frozen=True, slots=True)
class Request:
    index: int
    line: int
    custom_id: str | None
    payload: bytes  # the JSON body exactly as it will be sent
    stream: bool
    tokens: int = 0  # estimated cost, for a tokens-per-minute pace (0 when none is set)


@dataclass(frozen=True, slots=True)
class BadLine:
    index: int
    line: int
    custom_id: str | None
    error: InvalidInput


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
) -> Completed:
    record: dict[str, Any] = {
        "index": request.index,
        "line": request.line,
        "custom_id": request.custom_id,
        "status": "ok",
        "response": response,
        "attempts": attempts,
        "latency_ms": round(latency_ms, 2),
    }
    if ttft_ms is not None:
        record["ttft_ms"] = round(ttft_ms, 2)
    return Completed(request.index, orjson.dumps(record), failed=False)


def error_record(
    line: Request | BadLine,
    error: RequestFailed,
    *,
    attempts: int,
    latency_ms: float | None = None,
) -> Completed:
    record: dict[str, Any] = {
        "index": line.index,
        "line": line.line,
        "custom_id": line.custom_id,
        "status": "error",
        "error": error.to_record(),
        "attempts": attempts,
    }
    if latency_ms is not None:
        record["latency_ms"] = round(latency_ms, 2)
    return Completed(line.index, orjson.dumps(record), failed=True)


@dataclass(frozen=True, slots=True)
class Record:
    """One stored record (a line of results.jsonl, errors.jsonl or journal.jsonl) read
    back. Stored records come from disk, may be hand-edited or foreign, and hold a
    server's reply verbatim: any field of the wrong type reads as None, never as an
    error. A bool is never a number; counts (attempts, tokens) are ints >= 0; the
    timings are kept as stored (an int stays an int). `model` and the token counts are
    read from `response`; the error fields from `error`."""

    index: int | None = None
    line: int | None = None
    custom_id: str | None = None
    status: Status | None = None
    response: dict[str, Any] | None = None
    error_type: str | None = None
    error_message: str | None = None
    retryable: bool | None = None
    status_code: int | None = None
    allowance: str | None = None
    attempts: int | None = None
    latency_ms: float | None = None
    ttft_ms: float | None = None
    model: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None

    @property
    def failed(self) -> bool:
        """Failed because its status says so, never because of what else it holds."""
        return self.status == "error"

    @classmethod
    def parse(cls, raw: bytes) -> Record | None:
        """The record stored in `raw` (one line, newline or not); None when `raw` is not
        a JSON object at all."""
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None
        return cls.from_value(value)

    @classmethod
    def from_value(cls, value: object) -> Record | None:
        """The record in a decoded JSON value; None when it is not an object."""
        if not isinstance(value, dict):
            return None
        response = _object(value.get("response"))
        reply = response or _NO_OBJECT
        usage = _object(reply.get("usage")) or _NO_OBJECT
        error = _object(value.get("error")) or _NO_OBJECT
        return cls(
            index=_int(value.get("index")),
            line=_int(value.get("line")),
            custom_id=_str(value.get("custom_id")),
            status=_status(value.get("status")),
            response=response,
            error_type=_str(error.get("type")),
            error_message=_str(error.get("message")),
            retryable=_bool(error.get("retryable")),
            status_code=_int(error.get("status_code")),
            allowance=_str(error.get("allowance")),
            attempts=_count(value.get("attempts")),
            latency_ms=_number(value.get("latency_ms")),
            ttft_ms=_number(value.get("ttft_ms")),
            model=_str(reply.get("model")),
            prompt_tokens=_count(usage.get("prompt_tokens")),
            completion_tokens=_count(usage.get("completion_tokens")),
            total_tokens=_count(usage.get("total_tokens")),
        )


_NO_OBJECT: dict[str, Any] = {}  # read-only stand-in for a field that is not an object


def _object(value: object) -> dict[str, Any] | None:
    return value if isinstance(value, dict) else None


def _status(value: object) -> Status | None:
    if value == "ok":
        return "ok"
    if value == "error":
        return "error"
    return None


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _bool(value: object) -> bool | None:
    return value if isinstance(value, bool) else None


def _int(value: object) -> int | None:
    return value if type(value) is int else None


def _count(value: object) -> int | None:
    return value if type(value) is int and value >= 0 else None


def _number(value: object) -> float | None:
    return value if type(value) is float or type(value) is int else None
