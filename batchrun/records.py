"""Records: the typed home of what a line is and what becomes of it.

`Request` and `BadLine` are what the reader makes of an input line; `ok_record` and
`error_record` serialise a finished line (`Completed`) into the bytes every output file
holds. Nothing else builds a record.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from .errors import InvalidInput, RequestFailed

__all__ = [
    "BadLine",
    "Completed",
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
