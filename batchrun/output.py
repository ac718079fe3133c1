"""The writer: sole owner of journal.jsonl, results.jsonl and errors.jsonl during a run.

Completions arrive in any order. Each is appended to the journal first (group-committed
fsync), then the contiguous done prefix is copied to results.jsonl in input order. Only
the journal offsets of out-of-order records are held, never their bodies, so memory
does not depend on how far out of order replies arrive.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import orjson

from .errors import RequestFailed
from .journal import FILE_MODE, Paths, ResumeState
from .reader import BadLine, Request

__all__ = ["Completed", "ResultWriter", "SentLog", "error_record", "ok_record"]

APPEND_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT


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


def _open_append(path: os.PathLike[str]) -> int:
    return os.open(path, APPEND_FLAGS, FILE_MODE)


class ResultWriter:
    """Appends to the journal and keeps results/errors equal to its ordered prefix."""

    def __init__(self, paths: Paths, state: ResumeState) -> None:
        self._journal = os.open(paths.journal, os.O_RDWR | os.O_APPEND | os.O_CREAT, FILE_MODE)
        self._results = open(_open_append(paths.results), "ab")  # noqa: SIM115 - closed in close()
        self._errors = open(_open_append(paths.errors), "ab")  # noqa: SIM115
        self._journal_end = state.journal_size
        self._next = state.next_index
        self._pending = state.pending  # index -> (journal offset, length incl. newline)
        # Catch up: lines journaled before an interruption but not yet in results.
        self.emit([])

    @property
    def next_index(self) -> int:
        return self._next

    def append(self, batch: list[Completed]) -> None:
        """Write a batch to the journal with one system call (durable once `sync` returns)."""
        data = b"".join(item.data + b"\n" for item in batch)
        os.write(self._journal, data)
        offset = self._journal_end
        for item in batch:
            length = len(item.data) + 1
            self._pending[item.index] = (offset, length)
            offset += length
        self._journal_end = offset

    def sync(self) -> None:
        os.fdatasync(self._journal)

    def emit(self, batch: list[Completed]) -> None:
        """Copy every record that now extends the contiguous prefix to results (and errors).

        Records of `batch` (just appended) are taken from memory; older out-of-order
        ones are read back from the journal."""
        fresh = {item.index: item.data for item in batch}
        while (span := self._pending.pop(self._next, None)) is not None:
            data = fresh.get(self._next)
            line = data + b"\n" if data is not None else os.pread(self._journal, span[1], span[0])
            self._results.write(line)
            if b'"status":"error"' in line:
                self._errors.write(line)
            self._next += 1
        self._results.flush()
        self._errors.flush()

    def close(self) -> None:
        self._results.close()
        self._errors.close()
        os.close(self._journal)


class SentLog:
    """Marks each line before its first send, so a resume can count re-sent lines.

    One small O_APPEND write per line; written by the worker itself so the mark always
    precedes the request on the wire."""

    def __init__(self, paths: Paths) -> None:
        self._fd = _open_append(paths.sent)

    def mark(self, index: int) -> None:
        os.write(self._fd, b"%d\n" % index)

    def close(self) -> None:
        os.close(self._fd)
