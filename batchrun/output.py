"""The writer: sole owner of journal.jsonl, results.jsonl and errors.jsonl during a run.

Completions arrive in any order. Each is appended to the journal first (group-committed
fsync), then the contiguous done prefix is copied to results.jsonl in input order. Only
the journal offsets of out-of-order records are held, never their bodies, so memory
does not depend on how far out of order replies arrive.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from .errors import Aborted, RequestFailed
from .journal import FILE_MODE, Paths, ResumeState, write_all
from .reader import BadLine, Request

__all__ = [
    "REDACTED",
    "Completed",
    "Redactor",
    "ResultWriter",
    "SentLog",
    "error_record",
    "ok_record",
    "write_failed",
]

APPEND_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT
FLUSH_BYTES = 1 << 20  # results written in chunks of about this much
REDACTED = b"[REDACTED]"
MIN_SECRET_CHARS = 8


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


def write_failed(path: Path, exc: OSError) -> Aborted:
    """Disk full, a file size limit, an I/O error: the run stops, resumably."""
    cause = exc.strerror or str(exc)
    return Aborted(f"cannot write {path}: {cause}; free space and rerun to resume")


class Redactor:
    """Replaces the API key in serialised records with a fixed placeholder.

    A server can echo the Authorization header in an error body; records reach disk
    only through the journal append, so redacting there keeps the key out of every file.
    The key is looked for as sent and as it reads JSON-escaped once (a string in a
    record) or twice (a JSON body kept as a string). Keys shorter than
    `MIN_SECRET_CHARS` are not redacted: they are not secrets, and replacing a short
    common string would corrupt the records themselves."""

    def __init__(self, key: str) -> None:
        key = key.removeprefix("Bearer ").strip()
        once = orjson.dumps(key)[1:-1]
        twice = orjson.dumps(once.decode())[1:-1]
        forms = {key.encode(), once, twice} if len(key) >= MIN_SECRET_CHARS else set()
        self._forms = sorted(forms, key=len, reverse=True)

    def found_in(self, data: bytes) -> bool:
        return any(form in data for form in self._forms)

    def __call__(self, data: bytes) -> bytes:
        for form in self._forms:
            data = data.replace(form, REDACTED)
        return data


class ResultWriter:
    """Appends to the journal and keeps results/errors equal to its ordered prefix.

    Every OSError comes out as `Aborted` naming the file: the caller stops the run and
    what is on disk stays resumable (a torn tail is cut on the next start)."""

    def __init__(self, paths: Paths, state: ResumeState, *, secret: str | None = None) -> None:
        self._paths = paths
        self._redact = Redactor(secret) if secret else None
        self._journal = self._results = self._errors = -1
        with self._writing(paths.journal):
            self._journal = os.open(paths.journal, os.O_RDWR | os.O_APPEND | os.O_CREAT, FILE_MODE)
        with self._writing(paths.results):
            self._results = _open_append(paths.results)
        with self._writing(paths.errors):
            self._errors = _open_append(paths.errors)
        self._journal_end = state.journal_size
        self._next = state.next_index
        self._pending = state.pending  # index -> (journal offset, length incl. newline, failed)
        self._last = b""  # the latest appended batch, so emit need not read it back
        self._last_offset = 0
        # Catch up: lines journaled before an interruption but not yet in results.
        self.emit()

    @property
    def next_index(self) -> int:
        return self._next

    def append(self, batch: list[Completed]) -> None:
        """Write a batch to the journal (durable once `sync` returns)."""
        data = b"".join(item.data + b"\n" for item in batch)
        if self._redact is not None and self._redact.found_in(data):
            batch = [Completed(i.index, self._redact(i.data), i.failed) for i in batch]
            data = b"".join(item.data + b"\n" for item in batch)
        with self._writing(self._paths.journal):
            write_all(self._journal, data)
        offset = self._last_offset = self._journal_end
        for item in batch:
            length = len(item.data) + 1
            self._pending[item.index] = (offset, length, item.failed)
            offset += length
        self._journal_end = offset
        self._last = data

    def sync(self) -> None:
        with self._writing(self._paths.journal):
            os.fdatasync(self._journal)

    def emit(self) -> None:
        """Copy every record that now extends the contiguous prefix to results (and the
        failed ones to errors). The latest batch is sliced from memory; older
        out-of-order records are read back from the journal."""
        results, errors = bytearray(), bytearray()
        while (span := self._pending.pop(self._next, None)) is not None:
            offset, length, failed = span
            line = self._line(offset, length)
            results += line
            if failed:
                errors += line
            self._next += 1
            if len(results) >= FLUSH_BYTES:
                self._flush(results, errors)
        self._flush(results, errors)

    def _line(self, offset: int, length: int) -> bytes:
        start = offset - self._last_offset
        if start >= 0 and start + length <= len(self._last):
            return self._last[start : start + length]
        with self._writing(self._paths.journal):
            line = os.pread(self._journal, length, offset)
        if len(line) != length:
            raise Aborted(f"{self._paths.journal} is shorter than its records; rerun to resume")
        return line

    def _flush(self, results: bytearray, errors: bytearray) -> None:
        with self._writing(self._paths.results):
            write_all(self._results, results)
        with self._writing(self._paths.errors):
            write_all(self._errors, errors)
        results.clear()
        errors.clear()

    def close(self) -> None:
        for fd in (self._journal, self._results, self._errors):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)

    @staticmethod
    @contextlib.contextmanager
    def _writing(path: Path) -> Iterator[None]:
        try:
            yield
        except OSError as exc:
            raise write_failed(path, exc) from exc


class SentLog:
    """Marks each line before its first send, so a resume can count re-sent lines.

    One small O_APPEND write per line; written by the worker itself so the mark always
    precedes the request on the wire. A failed write is handed to `on_error` once (the
    run stops); the worker itself never sees it."""

    def __init__(self, paths: Paths, on_error: Callable[[Aborted], None]) -> None:
        self._path = paths.sent
        self._on_error: Callable[[Aborted], None] | None = on_error
        try:
            self._fd = _open_append(paths.sent)
        except OSError as exc:
            raise write_failed(paths.sent, exc) from exc

    def mark(self, index: int) -> None:
        if self._on_error is None:
            return  # already failed: the run is stopping
        try:
            write_all(self._fd, b"%d\n" % index)
        except OSError as exc:
            on_error, self._on_error = self._on_error, None
            on_error(write_failed(self._path, exc))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)
