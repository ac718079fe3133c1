"""journal.jsonl, the durable truth, and sent.log beside it.

The journal holds one record per finished line in completion order: appended one
write per batch with the API key redacted, made durable by a group-commit fsync, and
read back by offset. On resume it is scanned record by record; a corrupt line that is
not a torn tail is refused. sent.log marks each line right before its first send.
"""

from __future__ import annotations

import contextlib
import mmap
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import orjson

from .errors import Aborted, ResumeRefused
from .outdir import FILE_MODE, Paths, write_all, write_failed, writing
from .records import Completed, Record, stored_index

__all__ = [
    "REDACTED",
    "Journal",
    "Redactor",
    "ResumeState",
    "SentLog",
    "count_resent",
    "journal_records",
    "latest_lines",
]

REDACTED = b"[REDACTED]"
MIN_SECRET_CHARS = 8


@dataclass
class ResumeState:
    """What a previous session left, as the new session needs it."""

    requests: int
    next_index: int = 0  # results.jsonl holds exactly the records [0, next_index)
    # Done records at or after next_index: journal offset, length, and whether it failed
    # (kept so errors.jsonl is chosen by status, never by sniffing the bytes).
    pending: dict[int, tuple[int, int, bool]] = field(default_factory=dict)
    redo: set[int] = field(default_factory=set)  # journaled but to be sent again
    done: bytearray = field(default_factory=bytearray)  # 1 per index that needs no request
    journal_size: int = 0
    repairs: list[str] = field(default_factory=list)
    resent: int = 0  # lines sent by an earlier session whose reply never landed
    resumed: bool = False

    def is_done(self, index: int) -> bool:
        return index < len(self.done) and self.done[index] == 1

    @property
    def done_count(self) -> int:
        return self.done.count(1)


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


class Journal:
    """journal.jsonl open for appending from `size` on. Any OSError comes out as
    `Aborted` naming the file."""

    def __init__(self, path: Path, size: int, *, secret: str | None = None) -> None:
        self._path = path
        self._redact = Redactor(secret) if secret else None
        with writing(path):
            self._fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, FILE_MODE)
        self.end = size  # where the next batch starts
        self._last = b""  # the latest appended batch, so a read of it needs no I/O
        self._last_offset = 0

    def append(self, batch: list[Completed]) -> list[Completed]:
        """Write a batch in one write (durable once `sync` returns); returns the
        records as written, the key redacted, so callers count their real lengths."""
        data = b"".join(item.data + b"\n" for item in batch)
        if self._redact is not None and self._redact.found_in(data):
            batch = [Completed(i.index, self._redact(i.data), i.failed) for i in batch]
            data = b"".join(item.data + b"\n" for item in batch)
        with writing(self._path):
            write_all(self._fd, data)
        self._last_offset = self.end
        self.end += len(data)
        self._last = data
        return batch

    def sync(self) -> None:
        with writing(self._path):
            os.fdatasync(self._fd)

    def read(self, offset: int, length: int) -> bytes:
        """The journal line at `offset`, newline included: sliced from the latest batch
        when it is there, else read back from the file."""
        start = offset - self._last_offset
        if start >= 0 and start + length <= len(self._last):
            return self._last[start : start + length]
        with writing(self._path):
            line = os.pread(self._fd, length, offset)
        if len(line) != length:
            raise Aborted(f"{self._path} is shorter than its records; rerun to resume")
        return line

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)


def journal_records(path: Path, requests: int) -> Iterator[tuple[int, int, int, Record]]:
    """Yield (index, offset, length, record) for every journal line; refuse corruption."""
    if not path.exists():
        return
    offset = 0
    size = path.stat().st_size
    with path.open("rb") as stream:
        for number, line in enumerate(stream, start=1):
            record = _parse_record(line, number, path, last=offset + len(line) == size)
            index = record.index
            if index is None or not 0 <= index < requests:
                what = "no integer index" if index is None else f"index {index}"
                raise ResumeRefused(
                    f"{path} line {number} has {what}, outside this input's "
                    f"{requests} requests; use --fresh to start over"
                )
            yield index, offset, len(line), record
            offset += len(line)


def latest_lines(
    stream: BinaryIO, first: int, end: int | None = None
) -> tuple[list[tuple[int, int]], int]:
    """For readers that never refuse (report, diff): where the latest journal line of
    each index in [first, end) starts, as (index, offset) in index order, and how many
    lines name no index (no record at all). A resent line counts as its latest record;
    the last line without a newline (torn by a kill, or still being written) is none.
    Only each line's leading index bytes are read (`stored_index`)."""
    latest: dict[int, int] = {}
    unreadable = offset = 0
    for line in stream:
        if not line.endswith(b"\n"):
            break
        index = stored_index(line)
        if index is None:
            unreadable += 1
        elif index >= first and (end is None or index < end):
            latest[index] = offset
        offset += len(line)
    return sorted(latest.items()), unreadable


def _parse_record(line: bytes, number: int, path: Path, *, last: bool) -> Record:
    record = Record.parse(line)
    if record is None:
        # A torn write never ends in a newline (the tail repair already cut those).
        why = (
            "is the last line but ends in a newline, so it is not a torn write"
            if last
            else "is not the last line, so it is not a torn write"
        )
        raise ResumeRefused(
            f"{path} line {number} is corrupt (not a JSON record) and {why}; refusing to "
            "resume over lost data. Inspect the file, or use --fresh to start over."
        )
    return record


class SentLog:
    """sent.log: one byte per request line, set to 1 right before the line's first send,
    so a resume can count the lines that were in flight at an interruption.

    The file is mapped shared and its blocks allocated up front: a mark is a store to
    the page cache (it survives kill -9 like a write would, without a system call per
    line), and a full disk is found when the run starts, never as SIGBUS mid-run. A
    file in the format of earlier versions (line numbers as text) is started anew."""

    def __init__(self, paths: Paths, requests: int) -> None:
        size = max(requests, 1)
        try:
            self._fd = os.open(paths.sent, os.O_RDWR | os.O_CREAT, FILE_MODE)
            try:
                if not _is_bitmap(_read_prefix(self._fd, os.fstat(self._fd).st_size)):
                    os.ftruncate(self._fd, 0)
                if os.fstat(self._fd).st_size < size:
                    os.posix_fallocate(self._fd, 0, size)
                self._map = mmap.mmap(self._fd, size)
            except BaseException:
                os.close(self._fd)
                raise
        except OSError as exc:
            raise write_failed(paths.sent, exc) from exc

    def mark(self, index: int) -> None:
        self._map[index] = 1

    def close(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self._map.close()
        with contextlib.suppress(OSError):
            os.close(self._fd)


def _read_prefix(fd: int, size: int) -> bytes:
    return os.pread(fd, min(size, 1 << 16), 0) if size else b""


def _is_bitmap(data: bytes) -> bool:
    return not data.translate(None, b"\x00\x01")


def count_resent(path: Path, state: ResumeState) -> int:
    """Lines an earlier session sent whose reply never reached the journal: in flight
    at the interruption, so this session sends them again (at-least-once sending)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return 0
    if _is_bitmap(data):
        sent: Iterable[int] = (i for i, byte in enumerate(data[: state.requests]) if byte)
    else:  # the text format of earlier versions: one line number per line
        sent = {int(line) for line in data.split() if line.isdigit()}
    return sum(1 for i in sent if i < state.requests and not state.done[i] and i not in state.redo)
