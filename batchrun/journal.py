"""OUTDIR state: the manifest, the lock, and the resume scan over journal and results.

The journal is the durable truth (one record per completed line, completion order); the
results and errors files are views of it. Opening an OUTDIR checks it belongs to this
input and settings, repairs torn tails, and says which lines are already done.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from ._version import __version__
from .config import RunConfig
from .errors import AUTH_STATUSES, ConfigError, ResumeRefused
from .reader import InputScan

__all__ = [
    "OutdirLock",
    "Paths",
    "ResumeState",
    "check_input_outside_outputs",
    "load_state",
    "lock_outdir",
    "open_outdir",
    "write_atomic",
]

FILE_MODE = 0o600
DIR_MODE = 0o700
SCAN_CHUNK = 1 << 22


@dataclass(frozen=True)
class Paths:
    """Every file batchrun keeps in OUTDIR; nothing else there is ever touched."""

    outdir: Path

    @property
    def manifest(self) -> Path:
        return self.outdir / "manifest.json"

    @property
    def journal(self) -> Path:
        return self.outdir / "journal.jsonl"

    @property
    def results(self) -> Path:
        return self.outdir / "results.jsonl"

    @property
    def errors(self) -> Path:
        return self.outdir / "errors.jsonl"

    @property
    def summary(self) -> Path:
        return self.outdir / "summary.json"

    @property
    def sent(self) -> Path:
        return self.outdir / "sent.log"

    @property
    def lock(self) -> Path:
        return self.outdir / ".lock"

    @property
    def starting_over(self) -> Path:
        """Present from the first deletion of a --fresh until the new manifest is in
        place: a run that finds it finishes the interrupted start-over first."""
        return self.outdir / ".starting-over"

    @property
    def spooled_input(self) -> Path:
        """Where standard input or a pipe is copied, so a run can resume from it."""
        return self.outdir / "input.jsonl"

    def state_files(self) -> tuple[Path, ...]:
        return (self.manifest, self.journal, self.results, self.errors, self.summary, self.sent)

    def outputs(self) -> tuple[Path, ...]:
        """Files a run writes into; an input must never be one of them."""
        return (*self.state_files(), self.lock, self.starting_over)


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


class OutdirLock:
    """An exclusive lock on OUTDIR so two runs never write the same files."""

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise ResumeRefused(
                f"{path.parent} is in use by another batchrun process; wait for it or use -o"
            ) from None

    def release(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)


def lock_outdir(outdir: Path) -> OutdirLock:
    """Create OUTDIR if needed and take its lock."""
    outdir.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    return OutdirLock(Paths(outdir).lock)


def open_outdir(config: RunConfig, scan: InputScan) -> tuple[OutdirLock, ResumeState]:
    """Lock OUTDIR, check it belongs to this input and settings, and scan what is done."""
    lock = lock_outdir(config.outdir)
    try:
        state = load_state(config, scan)
    except BaseException:
        lock.release()
        raise
    return lock, state


def load_state(config: RunConfig, scan: InputScan) -> ResumeState:
    """With OUTDIR locked: start over if asked (or if a start-over was interrupted),
    else resume what the manifest accounts for."""
    paths = Paths(config.outdir)
    if config.fresh or paths.starting_over.exists():
        return _start_over(paths, config, scan)
    if not paths.manifest.exists():
        _refuse_orphans(paths)
        return _create(paths, config, scan)
    _check_manifest(paths.manifest, _manifest(config, scan))
    return _scan_state(paths, scan.requests, retry_failed=config.retry_failed)


def _start_over(paths: Paths, config: RunConfig, scan: InputScan) -> ResumeState:
    """Delete the old state as one step: the marker, durable before the first deletion
    and removed only once the new manifest is in place, makes a start-over killed
    half-way finish on the next run instead of leaving output no manifest accounts for."""
    write_atomic(paths.starting_over, b"")
    _sync_dir(paths.outdir)
    for path in paths.state_files():
        path.unlink(missing_ok=True)
    state = _create(paths, config, scan)
    paths.starting_over.unlink()
    _sync_dir(paths.outdir)
    return state


def _refuse_orphans(paths: Paths) -> None:
    """Without a manifest nothing says what these files belong to; appending to them
    would mix two runs, and deleting them could destroy the user's only copy."""
    found = [p.name for p in paths.state_files() if p.exists()]
    if found:
        raise ResumeRefused(
            f"{paths.outdir} holds {', '.join(found)} without manifest.json, so they belong "
            "to no run batchrun can resume; refusing to append to them. Use --fresh to "
            "discard them, or another -o."
        )


def _create(paths: Paths, config: RunConfig, scan: InputScan) -> ResumeState:
    manifest = _manifest(config, scan)
    write_atomic(paths.manifest, orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
    return ResumeState(requests=scan.requests, done=bytearray(scan.requests))


def check_input_outside_outputs(input_path: Path, outdir: Path) -> None:
    """Refuse an input that is one of the files a run writes: it would grow under
    the run's own appends (or be deleted by --fresh)."""
    target = input_path.resolve()
    for output in Paths(outdir).outputs():
        if output.resolve() == target or _same_file(output, input_path):
            raise ConfigError(
                f"the input {input_path} is {output.name} of OUTDIR {outdir}, a file batchrun "
                "writes; copy it elsewhere first, or choose another -o"
            )


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _manifest(config: RunConfig, scan: InputScan) -> dict[str, Any]:
    return {
        "batchrun_version": __version__,
        "input": str(config.input_path),
        "input_sha256": scan.sha256,
        "input_format": scan.format.value,
        "requests": scan.requests,
        "settings": config.request_settings(),
        "settings_sha256": config.settings_hash(),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _check_manifest(path: Path, expected: dict[str, Any]) -> None:
    try:
        found = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise ResumeRefused(f"{path} is unreadable ({exc}); use --fresh to start over") from None
    if found.get("input_sha256") != expected["input_sha256"]:
        raise ResumeRefused(
            f"{path.parent} holds results for a different input ({found.get('input')}, "
            f"sha256 {str(found.get('input_sha256'))[:12]}…); this input's sha256 is "
            f"{expected['input_sha256'][:12]}…. Use --fresh to discard it, or another -o."
        )
    if found.get("settings_sha256") != expected["settings_sha256"]:
        before, now = found.get("settings"), expected["settings"]
        before = before if isinstance(before, dict) else {}
        # Both sides' keys: a setting stored only when used (--override-model) is in
        # just one of them.
        keys = sorted({*before, *now})
        changed = [
            f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in keys if before.get(k) != now.get(k)
        ]
        raise ResumeRefused(
            f"{path.parent} was started with other request settings ({'; '.join(changed)}); "
            "resuming would mix two configurations. Use the same flags, or --fresh."
        )


def _scan_state(paths: Paths, requests: int, *, retry_failed: bool) -> ResumeState:
    state = ResumeState(requests=requests, done=bytearray(requests), resumed=True)
    written = _repair_tail(paths.results, "results.jsonl", state)
    state.journal_size = _repair_tail(paths.journal, "journal.jsonl", state)
    results_lines = _count_lines(paths.results) if written else 0
    # Records already in results.jsonl need no offset: keeping them all would make
    # memory grow with the input.
    for index, offset, length, record in _journal_records(paths.journal, requests):
        state.done[index] = 1
        if _needs_redo(record, retry_failed):
            state.redo.add(index)
            state.pending.pop(index, None)
        else:
            state.redo.discard(index)
            if index >= results_lines:
                state.pending[index] = (offset, length, _failed(record))
    for index in state.redo:
        state.done[index] = 0
    state.next_index = _first_gap(state.done, results_lines)
    if state.next_index < results_lines:
        # A redone line (or results ahead of the journal) cuts the written prefix
        # short: re-read the offsets of the done records after the cut.
        _truncate_lines(paths.results, state.next_index)
        for index, offset, length, record in _journal_records(paths.journal, requests):
            if state.next_index <= index < results_lines and state.done[index]:
                state.pending[index] = (offset, length, _failed(record))
    _rebuild_errors(paths)
    state.resent = _count_resent(paths.sent, state)
    return state


def _failed(record: dict[str, Any]) -> bool:
    return record.get("status") == "error"


# Error types of lines the server never processed: a rerun sends them without asking.
NEVER_PROCESSED = frozenset({"connection", "rate_limited"})


def _needs_redo(record: dict[str, Any], retry_failed: bool) -> bool:
    """Lines whose failure says nothing about the line itself are always re-sent: auth
    failures and connection failures (refused, reset, dropped: `error.type` "connection",
    not "timeout") are what stop a run early (stops.py), and the next run is the resume
    the stop message promises; so are lines refused for an empty allowance (a record
    with `error.allowance`). Every connection failure counts, not only those of an
    aborted run: a record cannot tell whether it was part of the streak (the breaker
    fires after the streak is written), and such a line has no result either way, so
    sending it again is what the user would ask for. A `rate_limited` line waited out
    429s until --max-rate-limit-wait and was never processed: likewise. Other
    retryable failures only with --retry-failed."""
    error = record.get("error")
    if record.get("status") != "error" or not isinstance(error, dict):
        return False
    # A hand-edited or foreign record may hold anything: only an int can be a status.
    status = error.get("status_code")
    kind = error.get("type")
    if isinstance(status, int) and status in AUTH_STATUSES:
        return True
    if (isinstance(kind, str) and kind in NEVER_PROCESSED) or isinstance(
        error.get("allowance"),
        str,  # an empty allowance stopped the run
    ):
        return True
    return retry_failed and error.get("retryable") is True


def _first_gap(done: bytearray, upto: int) -> int:
    gap = done.find(0, 0, upto)
    return upto if gap < 0 else gap


def _journal_records(path: Path, requests: int) -> Iterator[tuple[int, int, int, dict[str, Any]]]:
    """Yield (index, offset, length, record) for every journal line; refuse corruption."""
    if not path.exists():
        return
    offset = 0
    size = path.stat().st_size
    with path.open("rb") as stream:
        for number, line in enumerate(stream, start=1):
            record = _parse_record(line, number, path, last=offset + len(line) == size)
            index = record.get("index")
            if not isinstance(index, int) or not 0 <= index < requests:
                raise ResumeRefused(
                    f"{path} line {number} has index {index!r}, outside this input's "
                    f"{requests} requests; use --fresh to start over"
                )
            yield index, offset, len(line), record
            offset += len(line)


def _parse_record(line: bytes, number: int, path: Path, *, last: bool) -> dict[str, Any]:
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        record = None
    if not isinstance(record, dict):
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


def _repair_tail(path: Path, name: str, state: ResumeState) -> int:
    """Cut a torn last line (no newline: the process died mid-write); return the size."""
    if not path.exists():
        return 0
    size = path.stat().st_size
    end = _last_newline_end(path, size)
    if end < size:
        os.truncate(path, end)
        state.repairs.append(f"{name}: dropped a torn last line ({size - end} bytes)")
    return end


def _last_newline_end(path: Path, size: int) -> int:
    with path.open("rb") as stream:
        position = size
        while position > 0:
            start = max(0, position - SCAN_CHUNK)
            stream.seek(start)
            block = stream.read(position - start)
            found = block.rfind(b"\n")
            if found >= 0:
                return start + found + 1
            position = start
    return 0


def _count_lines(path: Path) -> int:
    count = 0
    with path.open("rb") as stream:
        while block := stream.read(SCAN_CHUNK):
            count += block.count(b"\n")
    return count


def _truncate_lines(path: Path, keep: int) -> None:
    """Keep the first `keep` lines of `path`."""
    end = 0
    with path.open("rb") as stream:
        for _ in range(keep):
            end += len(stream.readline())
    os.truncate(path, end)


def _rebuild_errors(paths: Paths) -> None:
    """errors.jsonl is the failed subset of results.jsonl; rewrite it to match exactly.

    The byte test only skips lines that cannot be failures; the status decides."""
    tmp = paths.errors.with_name(paths.errors.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    try:
        with open(fd, "wb") as out:
            if paths.results.exists():
                with paths.results.open("rb") as results:
                    for line in results:
                        if b'"status":"error"' in line and _line_failed(line):
                            out.write(line)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(paths.errors)


def _line_failed(line: bytes) -> bool:
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        return False
    return isinstance(record, dict) and _failed(record)


def _count_resent(path: Path, state: ResumeState) -> int:
    """Lines an earlier session sent whose reply never reached the journal: in flight
    at the interruption, so this session sends them again (at-least-once sending)."""
    if not path.exists():
        return 0
    with path.open("rb") as stream:
        sent = {int(line) for line in stream if line.strip().isdigit()}
    return sum(1 for i in sent if i < state.requests and not state.done[i] and i not in state.redo)


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data` whole or not at all (a failed write leaves no temp file)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    try:
        write_all(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    tmp.replace(path)


def write_all(fd: int, data: bytes | bytearray) -> None:
    """os.write until every byte is written: a write may be short (disk nearly full,
    a file size limit, a signal) and then the next one reports why."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
