"""Duplicate custom_ids in bounded memory: 8-byte id hashes in a fixed buffer, sorted runs
spilled to an unnamed temporary file, merged into candidates that one more pass confirms.

A run without duplicates reads its input once; memory stays near the buffer (about 1 MB,
plus a transient list while a full buffer is sorted) whatever the input size.
"""

from __future__ import annotations

import heapq
import tempfile
from array import array
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import IO, NamedTuple, Self

from .errors import InputError

__all__ = ["DEFAULT_BUFFER_IDS", "Duplicate", "DuplicateFinder", "Duplicates", "id_hash"]

DEFAULT_BUFFER_IDS = 1 << 17  # 1 MB of hashes per sorted run
MAX_FAN_IN = 64  # runs merged at once; more are first merged into longer runs
_U64 = (1 << 64) - 1


def id_hash(custom_id: str) -> int:
    """Python's own string hash as an unsigned 64-bit int.

    SipHash, salted per process and cached on the str: a seventh of an 8-byte blake2b's
    cost per line. Hashes never leave the process, so the salt does not matter (on a
    32-bit build it is 32 bits wide: still correct, only more false candidates)."""
    return hash(custom_id) & _U64


class Duplicate(NamedTuple):
    custom_id: str
    first_line: int
    line: int


@dataclass(frozen=True)
class Duplicates:
    """Every repeat of an id counts once; `examples` are the earliest repeats by line."""

    count: int
    examples: tuple[Duplicate, ...]

    def plus(self, other: Duplicates, keep: int) -> Duplicates:
        examples = sorted((*self.examples, *other.examples), key=lambda d: d.line)
        return Duplicates(self.count + other.count, tuple(examples[:keep]))


class DuplicateFinder:
    """Collects id hashes (`add`), then names the true duplicates (`find`).

    `hash_id` must return an int in [0, 2**64); equal hashes of different ids are
    collisions, told apart by the confirming pass. Use it as a context manager: the
    spill file is closed (and, being unnamed, gone) on success and on error alike."""

    def __init__(
        self,
        *,
        buffer_ids: int = DEFAULT_BUFFER_IDS,
        hash_id: Callable[[str], int] = id_hash,
        spill_dir: str | None = None,
    ) -> None:
        if buffer_ids < 2:
            raise ValueError(f"buffer_ids must be >= 2, got {buffer_ids}")
        self._capacity = buffer_ids
        self._hash = hash_id
        self._spill_dir = spill_dir
        self._buffer: array[int] = array("Q")
        self._file: IO[bytes] | None = None
        self._runs: list[tuple[int, int]] = []  # (first item, length) in the spill file
        self._spilled = 0

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def add(self, custom_id: str) -> None:
        self._buffer.append(self._hash(custom_id))
        if len(self._buffer) >= self._capacity:
            self._spill()

    def find(
        self, reread: Callable[[], Iterable[tuple[str, int]]], max_examples: int
    ) -> Duplicates | None:
        """The true duplicates, or None. `reread` yields every added id again with its
        line, in input order; it is called only if some hashes repeat, once per
        `buffer_ids` repeated hashes (so memory stays bounded even then)."""
        found: Duplicates | None = None
        for candidates in _batches(self._candidates(), self._capacity):
            part = _confirm(candidates, reread(), self._hash, max_examples)
            found = part if found is None else found.plus(part, max_examples)
        return found if found is not None and found.count else None

    def _candidates(self) -> Iterator[int]:
        """Each hash that occurs more than once, once, in ascending order."""
        if not self._runs:
            return _repeated(sorted(self._buffer))
        if self._buffer:
            self._spill()
        while len(self._runs) > MAX_FAN_IN:  # so the merge's read blocks fit the buffer
            self._merge_runs(MAX_FAN_IN)
        return _repeated(self._merged(self._runs))

    def _merge_runs(self, count: int) -> None:
        """Replace the first `count` runs with one merged run at the end of the file."""
        group, self._runs = self._runs[:count], self._runs[count:]
        start = self._spilled
        out: array[int] = array("Q")
        for value in self._merged(group):
            out.append(value)
            if len(out) == self._capacity:
                self._write(out)
                out = array("Q")
        self._write(out)
        self._runs.append((start, self._spilled - start))

    def _merged(self, runs: list[tuple[int, int]]) -> Iterator[int]:
        block = max(1, self._capacity // len(runs))  # all read blocks fit in one buffer
        return heapq.merge(*(self._read_run(start, length, block) for start, length in runs))

    def _spill(self) -> None:
        run = array("Q", sorted(self._buffer))
        self._buffer = array("Q")
        self._runs.append((self._spilled, len(run)))
        self._write(run)

    def _write(self, hashes: array[int]) -> None:
        try:
            if self._file is None:
                # Unnamed on POSIX: nothing is left behind even by kill -9; close() frees it.
                self._file = tempfile.TemporaryFile(dir=self._spill_dir)  # noqa: SIM115
            self._file.seek(self._spilled * hashes.itemsize)  # reads move the shared position
            hashes.tofile(self._file)
        except OSError as exc:
            raise _spill_failed(self._spill_dir, exc) from exc
        self._spilled += len(hashes)

    def _read_run(self, start: int, length: int, block: int) -> Iterator[int]:
        assert self._file is not None  # runs exist only once the file does
        end = start + length
        for offset in range(start, end, block):
            chunk: array[int] = array("Q")
            try:
                self._file.seek(offset * chunk.itemsize)
                chunk.fromfile(self._file, min(block, end - offset))
            except (OSError, EOFError) as exc:
                raise _spill_failed(self._spill_dir, exc) from exc
            yield from chunk


def _repeated(sorted_hashes: Iterable[int]) -> Iterator[int]:
    previous: int | None = None
    reported = False
    for value in sorted_hashes:
        if value != previous:
            previous, reported = value, False
        elif not reported:
            reported = True
            yield value


def _batches(items: Iterator[int], size: int) -> Iterator[set[int]]:
    while batch := set(islice(items, size)):
        yield batch


def _confirm(
    candidates: set[int],
    ids: Iterable[tuple[str, int]],
    hash_id: Callable[[str], int],
    max_examples: int,
) -> Duplicates:
    """Compare the ids themselves, for the lines whose hash is a candidate."""
    first_lines: dict[str, int] = {}
    examples: list[Duplicate] = []
    count = 0
    for custom_id, line in ids:
        if hash_id(custom_id) not in candidates:
            continue
        first = first_lines.setdefault(custom_id, line)
        if first != line:
            count += 1
            if len(examples) < max_examples:
                examples.append(Duplicate(custom_id, first, line))
    return Duplicates(count, tuple(examples))


def _spill_failed(spill_dir: str | None, exc: BaseException) -> InputError:
    where = spill_dir or tempfile.gettempdir()
    reason = getattr(exc, "strerror", None) or exc
    return InputError(
        f"cannot check custom_ids for duplicates: temporary file in {where}: {reason}"
    )
