"""The ordered outputs: results.jsonl and errors.jsonl (and batch_output.jsonl when a
provider's output shape is asked for), written from the journal.

Completions arrive in any order. Each is appended to the journal first (group-committed
fsync), then the contiguous done prefix is copied to results.jsonl in input order, and
its failed records to errors.jsonl. Only the journal offsets of out-of-order records are
held, never their bodies, so memory does not depend on how far out of order replies
arrive. On resume the same files are cut back to what the journal says; batch_output.jsonl, a
line-for-line translation of results.jsonl, is cut to results' length and caught up
from it.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from .batch_output import batch_line
from .journal import Journal, ResumeState
from .outdir import (
    FILE_MODE,
    SCAN_CHUNK,
    Paths,
    cut_torn_tail,
    open_append,
    write_all,
    writing,
)
from .records import Completed, Record

__all__ = ["ResultWriter", "count_lines", "rebuild_errors", "truncate_lines"]

FLUSH_BYTES = 1 << 20  # results written in chunks of about this much


class ResultWriter:
    """Appends to the journal and keeps results/errors equal to its ordered prefix.

    Every OSError comes out as `Aborted` naming the file: the caller stops the run and
    what is on disk stays resumable (a torn tail is cut on the next start)."""

    def __init__(
        self,
        paths: Paths,
        state: ResumeState,
        *,
        secret: str | None = None,
        batch_output: bool = False,
    ) -> None:
        self._paths = paths
        self._results = self._errors = self._batch = -1
        self._journal = Journal(paths.journal, state.journal_size, secret=secret)
        with writing(paths.results):
            self._results = open_append(paths.results)
        with writing(paths.errors):
            self._errors = open_append(paths.errors)
        with writing(paths.batch_output):
            # Kept a prefix of results even by a run that does not write it: a later
            # run that does then only appends what is missing.
            written = _cut_to(paths.batch_output, state.next_index)
            if batch_output:
                self._batch = open_append(paths.batch_output)
                _catch_up(self._batch, paths.results, written)
        self._next = state.next_index
        self._pending = state.pending  # index -> (journal offset, length incl. newline, failed)
        # Catch up: lines journaled before an interruption but not yet in results.
        self.emit()

    @property
    def next_index(self) -> int:
        return self._next

    def append(self, batch: list[Completed]) -> None:
        """Write a batch to the journal (durable once `sync` returns)."""
        offset = self._journal.end
        for item in self._journal.append(batch):
            length = len(item.data) + 1
            self._pending[item.index] = (offset, length, item.failed)
            offset += length

    def sync(self) -> None:
        self._journal.sync()

    def emit(self) -> None:
        """Copy every record that now extends the contiguous prefix to results (and the
        failed ones to errors). The latest batch is sliced from memory; older
        out-of-order records are read back from the journal."""
        results, errors, batch = bytearray(), bytearray(), bytearray()
        translate = self._batch >= 0
        while (span := self._pending.pop(self._next, None)) is not None:
            offset, length, failed = span
            line = self._journal.read(offset, length)
            results += line
            if failed:
                errors += line
            if translate:
                batch += batch_line(line)
            self._next += 1
            if len(results) >= FLUSH_BYTES:
                self._flush(results, errors, batch)
        self._flush(results, errors, batch)

    def _flush(self, results: bytearray, errors: bytearray, batch: bytearray) -> None:
        # results first: batch_output is caught up from it, never the other way.
        with writing(self._paths.results):
            write_all(self._results, results)
        with writing(self._paths.errors):
            write_all(self._errors, errors)
        if batch:
            with writing(self._paths.batch_output):
                write_all(self._batch, batch)
        results.clear()
        errors.clear()
        batch.clear()

    def close(self) -> None:
        self._journal.close()
        for fd in (self._results, self._errors, self._batch):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)


def _cut_to(path: Path, lines: int) -> int:
    """Cut a torn tail, then keep at most `lines` lines; how many are left."""
    cut_torn_tail(path)
    if not path.exists():
        return 0
    count = count_lines(path)
    if count > lines:
        truncate_lines(path, lines)
    return min(count, lines)


def _catch_up(fd: int, results: Path, written: int) -> None:
    """Append the translation of results.jsonl's lines from `written` on."""
    if not results.exists():
        return
    batch = bytearray()
    with results.open("rb") as stream:
        for number, line in enumerate(stream):
            if number >= written:
                batch += batch_line(line)
                if len(batch) >= FLUSH_BYTES:
                    write_all(fd, batch)
                    batch.clear()
    write_all(fd, batch)


def count_lines(path: Path) -> int:
    count = 0
    with path.open("rb") as stream:
        while block := stream.read(SCAN_CHUNK):
            count += block.count(b"\n")
    return count


def truncate_lines(path: Path, keep: int) -> None:
    """Keep the first `keep` lines of `path`."""
    end = 0
    with path.open("rb") as stream:
        for _ in range(keep):
            end += len(stream.readline())
    os.truncate(path, end)


def rebuild_errors(paths: Paths) -> None:
    """errors.jsonl is the failed subset of results.jsonl; rewrite it to match exactly.

    The byte test only skips lines that cannot be failures; the status decides."""
    tmp = paths.errors.with_name(paths.errors.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    try:
        with open(fd, "wb") as out:
            if paths.results.exists():
                with paths.results.open("rb") as results:
                    for line in results:
                        if b'"status":"error"' in line and _failed(line):
                            out.write(line)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(paths.errors)


def _failed(line: bytes) -> bool:
    record = Record.parse(line)
    return record is not None and record.failed
