"""OUTDIR as a directory: which files live there, the lock, the manifest, start-over.

Also the low-level writes every file in it goes through: whole-or-nothing replacement,
appends that survive short writes, and the one `Aborted` a failed write becomes.
The journal (journal.py) and the ordered outputs (results.py) own their files' contents.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from ._version import __version__
from .config import RunConfig
from .errors import Aborted, ConfigError, ResumeRefused
from .reader import InputScan

__all__ = [
    "DIR_MODE",
    "FILE_MODE",
    "OutdirLock",
    "Paths",
    "check_input_outside_outputs",
    "check_manifest",
    "claim",
    "cut_torn_tail",
    "lock_outdir",
    "open_append",
    "write_all",
    "write_atomic",
    "write_failed",
    "writing",
]

FILE_MODE = 0o600
DIR_MODE = 0o700
APPEND_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT
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
    def batch_output(self) -> Path:
        """results.jsonl in a provider's batch output shape (--output-format)."""
        return self.outdir / "batch_output.jsonl"

    @property
    def sent(self) -> Path:
        return self.outdir / "sent.log"

    @property
    def rows_jsonl(self) -> Path:
        """A job's input rows with their outputs merged in (rows.py)."""
        return self.outdir / "rows.jsonl"

    @property
    def rows_csv(self) -> Path:
        """The same for a job whose rows came from a CSV file."""
        return self.outdir / "rows.csv"

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
        return (
            *(self.manifest, self.journal, self.results, self.errors, self.summary, self.sent),
            self.batch_output,
            *(self.rows_jsonl, self.rows_csv),
        )

    def outputs(self) -> tuple[Path, ...]:
        """Files a run writes into; an input must never be one of them."""
        return (*self.state_files(), self.lock, self.starting_over)


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


def claim(paths: Paths, config: RunConfig, scan: InputScan) -> bool:
    """With OUTDIR locked, make it this run's: start over if asked (or if a start-over
    was interrupted), write the manifest of a new run, or check the old one belongs to
    this input and settings. True when there is an earlier run to resume."""
    if config.fresh or paths.starting_over.exists():
        _start_over(paths, config, scan)
        return False
    if not paths.manifest.exists():
        _refuse_orphans(paths)
        _create(paths, config, scan)
        return False
    check_manifest(paths.manifest, _manifest(config, scan))
    return True


def _start_over(paths: Paths, config: RunConfig, scan: InputScan) -> None:
    """Delete the old state as one step: the marker, durable before the first deletion
    and removed only once the new manifest is in place, makes a start-over killed
    half-way finish on the next run instead of leaving output no manifest accounts for."""
    write_atomic(paths.starting_over, b"")
    _sync_dir(paths.outdir)
    for path in paths.state_files():
        path.unlink(missing_ok=True)
    _create(paths, config, scan)
    paths.starting_over.unlink()
    _sync_dir(paths.outdir)


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


def _create(paths: Paths, config: RunConfig, scan: InputScan) -> None:
    manifest = _manifest(config, scan)
    write_atomic(paths.manifest, orjson.dumps(manifest, option=orjson.OPT_INDENT_2))


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


def check_manifest(path: Path, expected: dict[str, Any]) -> None:
    """Refuse an OUTDIR started for another input or other request settings."""
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
        if before.get("job") != now.get("job"):
            raise ResumeRefused(_job_changed(path.parent, before.get("job"), now.get("job")))
        changed = [
            f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in keys if before.get(k) != now.get(k)
        ]
        raise ResumeRefused(
            f"{path.parent} was started with other request settings ({'; '.join(changed)}); "
            "resuming would mix two configurations. Use the same flags, or --fresh."
        )


def _job_changed(outdir: Path, before: object, now: object) -> str:
    if before is None or now is None:
        what = "a job file" if now is not None else "a request file"
        return (
            f"{outdir} was started by another kind of run; this one is {what}. "
            "Use another -o, or --fresh to discard it."
        )
    return (
        f"{outdir} was started with another version of this job: its [request], "
        "[[messages]], [input] id or [output] changed since, and resuming would mix "
        "two prompts in one result set. Restore the job file to resume, or rerun with "
        "--fresh to start over (or give another -o)."
    )


WRITE_CHUNK_BYTES = 1 << 20  # pieces gathered per write when streaming a file out


def write_atomic(path: Path, data: bytes | Iterable[bytes]) -> None:
    """Replace `path` with `data` (bytes, or pieces written in chunks as they come) whole
    or not at all: a temp file beside it, synced, then swapped in; a failed write
    leaves no temp file."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    try:
        if isinstance(data, bytes):
            write_all(fd, data)
        else:
            _write_chunked(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    tmp.replace(path)


def _write_chunked(fd: int, pieces: Iterable[bytes]) -> None:
    chunk = bytearray()
    for piece in pieces:
        chunk += piece
        if len(chunk) >= WRITE_CHUNK_BYTES:
            write_all(fd, chunk)
            chunk.clear()
    write_all(fd, chunk)


def open_append(path: os.PathLike[str]) -> int:
    return os.open(path, APPEND_FLAGS, FILE_MODE)


def write_all(fd: int, data: bytes | bytearray) -> None:
    """os.write until every byte is written: a write may be short (disk nearly full,
    a file size limit, a signal) and then the next one reports why."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def write_failed(path: Path, exc: OSError) -> Aborted:
    """Disk full, a file size limit, an I/O error: the run stops, resumably."""
    cause = exc.strerror or str(exc)
    return Aborted(f"cannot write {path}: {cause}; free space and rerun to resume")


@contextlib.contextmanager
def writing(path: Path) -> Iterator[None]:
    """Every OSError inside comes out as `Aborted` naming `path`."""
    try:
        yield
    except OSError as exc:
        raise write_failed(path, exc) from exc


def cut_torn_tail(path: Path) -> tuple[int, int]:
    """Cut a torn last line (no newline: the process died mid-write) off a JSONL file;
    return its size after the cut and how many bytes were dropped."""
    if not path.exists():
        return 0, 0
    size = path.stat().st_size
    end = _last_newline_end(path, size)
    if end < size:
        os.truncate(path, end)
    return end, size - end


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


def _sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
