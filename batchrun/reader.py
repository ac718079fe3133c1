"""Reading the input: bounded line streaming, format detection, and turning lines into requests.

Nothing in the input can crash a run: every line becomes either a `Request` ready to send
or a `BadLine` carrying an `InvalidInput` that names the line and the field.
"""

from __future__ import annotations

import hashlib
import os
import stat
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import orjson

from .dupes import DuplicateFinder, Duplicates
from .errors import ConfigError, InputError, InvalidInput
from .limits import estimate_prompt_tokens, max_completion_tokens
from .records import BadLine, Request
from .validate import validate_body

if TYPE_CHECKING:
    from .evals import Expectation
    from .structured import CheckerCache, OutputChecker

__all__ = [
    "InputFormat",
    "InputScan",
    "LineParser",
    "RawLine",
    "check_models",
    "detect_format",
    "iter_raw_lines",
    "iter_requests",
    "needs_spool",
    "parse_json_object",
    "refuse_duplicates",
    "scan_input",
    "spool_input",
    "unused_model_warning",
]

READ_CHUNK = 1 << 20
UTF8_BOM = b"\xef\xbb\xbf"
CHAT_URL = "/v1/chat/completions"
MAX_DUPLICATES_SHOWN = 5
MAX_WARNING_KINDS = 50


class InputFormat(StrEnum):
    PLAIN = "plain"
    MISTRAL_BATCH = "mistral_batch"
    OPENAI_BATCH = "openai_batch"
    # A job's dataset rows (rows.py), turned into requests by its templates.
    ROWS_JSONL = "rows_jsonl"
    ROWS_CSV = "rows_csv"


@dataclass(frozen=True, slots=True)
class RawLine:
    """One non-blank physical line. `data` is None when it exceeded the length bound."""

    number: int  # 1-based line number in the file, blank lines included
    data: bytes | None
    length: int


@dataclass(frozen=True)
class InputScan:
    """What one pass over the whole input tells before anything is sent."""

    sha256: str
    requests: int  # non-blank lines; each becomes exactly one result record
    format: InputFormat
    missing_model: int = 0  # batch lines whose body names no model
    # Bytes hashed: the run reads exactly these, so data appended later is not part
    # of this batch. None: read to the end (callers that built a scan by hand).
    size: int | None = None


def iter_raw_lines(stream: BinaryIO, max_bytes: int) -> Iterator[RawLine]:
    """Yield non-blank lines without ever holding more than `max_bytes` of one line.

    Accepts LF or CRLF endings, a UTF-8 BOM, and a last line without a newline.
    """
    number = 0
    pending = bytearray()
    pending_len = 0  # true length of the current partial line, even once dropped
    first = True
    while chunk := stream.read(READ_CHUNK):
        if first:
            chunk = chunk.removeprefix(UTF8_BOM)
            first = False
        pieces = chunk.split(b"\n")
        for piece in pieces[:-1]:
            number += 1
            line = _finish_line(number, pending, pending_len, piece, max_bytes)
            pending.clear()
            pending_len = 0
            if line is not None:
                yield line
        tail = pieces[-1]
        pending_len += len(tail)
        if pending_len <= max_bytes:
            pending += tail
        else:
            pending.clear()  # over the bound: keep counting, stop keeping
    if pending_len:
        line = _finish_line(number + 1, pending, pending_len, b"", max_bytes)
        if line is not None:
            yield line


def _finish_line(
    number: int, pending: bytearray, pending_len: int, piece: bytes, max_bytes: int
) -> RawLine | None:
    length = pending_len + len(piece)
    if length > max_bytes:
        return RawLine(number, None, length)
    data = bytes(pending) + piece if pending else piece
    if data.endswith(b"\r"):
        data = data[:-1]
    if not data.strip():
        return None
    return RawLine(number, data, length)


class _HashingReader:
    """A binary reader that hashes and counts what passes through it, so one pass does both."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self.digest = hashlib.sha256()
        self.size = 0

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        self.digest.update(data)
        self.size += len(data)
        return data


class _BoundedReader:
    """Reads at most `limit` bytes: the snapshot that was hashed, however the file grew."""

    def __init__(self, stream: BinaryIO, limit: int) -> None:
        self._stream = stream
        self._left = limit

    def read(self, size: int = -1) -> bytes:
        if self._left <= 0:
            return b""
        data = self._stream.read(self._left if size < 0 else min(size, self._left))
        self._left -= len(data)
        return data


def scan_input(path: Path, max_line_bytes: int) -> InputScan:
    """Hash the input, count its requests, detect its format and refuse duplicate ids."""
    try:
        with path.open("rb") as raw, DuplicateFinder() as ids:
            reader = _HashingReader(raw)
            count, fmt, no_model = _scan_lines(iter_raw_lines(reader, max_line_bytes), ids)  # type: ignore[arg-type]
            found = ids.find(lambda: _custom_ids(path, max_line_bytes), MAX_DUPLICATES_SHOWN)
            refuse_duplicates(found)
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from exc
    digest = reader.digest.hexdigest()
    return InputScan(
        sha256=digest, requests=count, format=fmt, missing_model=no_model, size=reader.size
    )


def _scan_lines(lines: Iterator[RawLine], ids: DuplicateFinder) -> tuple[int, InputFormat, int]:
    count = no_model = 0
    fmt: InputFormat | None = None
    for line in lines:
        count += 1
        if line.data is None or (fmt is InputFormat.PLAIN):
            continue
        obj = _loads_object(line.data)
        if obj is None:
            continue
        if fmt is None:
            fmt = detect_format(obj)
        if fmt is not InputFormat.PLAIN:
            custom_id = obj.get("custom_id")
            if isinstance(custom_id, str):
                ids.add(custom_id)  # other ids are reported per line by the parser
            body = obj.get("body")
            no_model += isinstance(body, dict) and "model" not in body
    return count, fmt or InputFormat.PLAIN, no_model


def check_models(scan: InputScan, model: str | None, override_model: str | None) -> str | None:
    """Refuse a batch file whose lines lack a model when the run supplies none (each
    would fail, and the fix, -m, would change the settings); return a warning when -m
    can only be ignored. Plain files are not parsed by the scan, so they are not checked."""
    if override_model is not None or scan.format is InputFormat.PLAIN:
        return None
    if scan.missing_model and model is None:
        raise ConfigError(
            f"{scan.missing_model:,} of {scan.requests:,} lines name no model in their body: "
            "pass -m MODEL (used for the lines without one), or --override-model MODEL "
            "(used for every line); nothing was sent"
        )
    if model is not None and not scan.missing_model and scan.requests:
        return unused_model_warning(model)
    return None


def unused_model_warning(model: str) -> str:
    return (
        f"-m {model} is ignored: every line names its own model "
        f"(--override-model {model} runs them all against it)"
    )


def _custom_ids(path: Path, max_line_bytes: int) -> Iterator[tuple[str, int]]:
    """The ids `_scan_lines` added, with their lines, read again to confirm duplicates."""
    if not path.is_file():  # a pipe was drained by the first pass; reopening it would block
        raise InputError(
            f"cannot confirm repeated custom_ids: {path} is not a regular file and cannot "
            "be read twice; save it to a file first. Nothing was sent."
        )
    with path.open("rb") as stream:
        for line in iter_raw_lines(stream, max_line_bytes):
            obj = _loads_object(line.data) if line.data is not None else None
            custom_id = obj.get("custom_id") if obj is not None else None
            if isinstance(custom_id, str):
                yield custom_id, line.number


def refuse_duplicates(duplicates: Duplicates | None) -> None:
    if duplicates is not None:
        raise InputError(
            f"duplicate custom_id values ({duplicates.count} in all): "
            + "; ".join(
                f"{d.custom_id!r} on lines {d.first_line} and {d.line}" for d in duplicates.examples
            )
            + ". Every custom_id must be unique so results can be matched; nothing was sent."
        )


def _loads_object(data: bytes) -> dict[str, Any] | None:
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None


def detect_format(obj: dict[str, Any]) -> InputFormat:
    """A batch line wraps its request in `body`; OpenAI's also names method and url."""
    if "body" in obj and "messages" not in obj:
        if "method" in obj or "url" in obj:
            return InputFormat.OPENAI_BATCH
        return InputFormat.MISTRAL_BATCH
    return InputFormat.PLAIN


class LineParser:
    """Turns raw lines into requests for one file format; collects validation warnings."""

    def __init__(
        self,
        fmt: InputFormat,
        *,
        default_model: str | None = None,
        override_model: str | None = None,
        force_stream: bool = False,
        estimate: bool = False,
    ) -> None:
        self.format = fmt
        self.estimate = estimate  # estimate each request's tokens (only a token pace reads it)
        self.default_model = default_model
        self.override_model = override_model
        self.defaulted = 0  # lines that took default_model
        self.force_stream = force_stream
        self.warnings: dict[str, list[int]] = {}  # warning -> [count, first line]
        self.checkers: CheckerCache | None = None  # made for the first response_format

    def parse(self, raw: RawLine, index: int) -> Request | BadLine:
        custom_id: str | None = None
        try:
            if raw.data is None:
                raise InvalidInput(f"line is {raw.length} bytes, over the --max-line-bytes limit")
            obj = parse_json_object(raw.data)
            # Taken before validation, so a rejected line still says whose it is.
            found = obj.get("custom_id")
            custom_id = found if isinstance(found, str) else None
            custom_id, body = self._unwrap(obj)
            changed = self._complete(body)
            for warning in validate_body(body):
                self._warn(warning, raw.number)
            checker = self._checker(body)  # a bad schema is this line's invalid_input
        except InvalidInput as exc:
            return BadLine(index, raw.number, custom_id, exc.at_line(raw.number))
        payload = raw.data if self.format is InputFormat.PLAIN and not changed else _dumps(body)
        return self._request(index, raw.number, custom_id, payload, body, checker=checker)

    def _request(
        self,
        index: int,
        line: int,
        custom_id: str | None,
        payload: bytes,
        body: dict[str, Any],
        *,
        checker: OutputChecker | None,
        expectation: Expectation | None = None,
    ) -> Request:
        """The request of a validated, completed `body` sent as `payload`."""
        stream = body.get("stream") is True
        model = body["model"]  # validated: a non-empty string
        tokens = completion = 0
        if self.estimate:
            completion = max_completion_tokens(body)
            tokens = estimate_prompt_tokens(body) + completion
        return Request(
            index, line, custom_id, payload, stream, tokens, model, completion, checker, expectation
        )

    def _checker(self, body: dict[str, Any]) -> OutputChecker | None:
        """The checker of the body's response_format, compiled once per distinct format;
        one dict lookup for a body without one. A bad schema raises InvalidInput."""
        response_format = body.get("response_format")
        if response_format is None:
            return None
        if self.checkers is None:
            # Imported here: structured.py loads jsonschema, which a run without
            # structured output never needs.
            from .structured import CheckerCache  # noqa: PLC0415

            self.checkers = CheckerCache()
        return self.checkers.get(response_format)

    def _unwrap(self, obj: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
        found = detect_format(obj)
        if found is not self.format:
            raise InvalidInput(
                f"line is in {found.value} format but the file is {self.format.value} "
                "(detected from its first valid line); one format per file"
            )
        if self.format is InputFormat.PLAIN:
            return None, obj
        custom_id = obj.get("custom_id")
        if not isinstance(custom_id, str) or not custom_id:
            raise InvalidInput("must be a non-empty string", field="custom_id")
        if self.format is InputFormat.OPENAI_BATCH:
            _check_openai_envelope(obj)
        body = obj.get("body")
        if not isinstance(body, dict):
            raise InvalidInput("must be a JSON object holding the request", field="body")
        return custom_id, body

    def _complete(self, body: dict[str, Any]) -> bool:
        """Fill in what the run supplies (model, stream); True if the body changed."""
        changed = False
        if self.override_model is not None:
            body["model"] = self.override_model
            changed = True
        elif "model" not in body and self.default_model is not None:
            body["model"] = self.default_model
            self.defaulted += 1
            changed = True
        elif "model" not in body:
            raise InvalidInput("is missing and no --model was given", field="model")
        if self.force_stream and body.get("stream") is not True:
            body["stream"] = True
            changed = True
        return changed

    def _warn(self, warning: str, line: int) -> None:
        seen = self.warnings.get(warning)
        if seen is not None:
            seen[0] += 1
        elif len(self.warnings) < MAX_WARNING_KINDS:
            self.warnings[warning] = [1, line]


def _check_openai_envelope(obj: dict[str, Any]) -> None:
    if obj.get("method", "POST") != "POST":
        raise InvalidInput(f"must be POST, got {obj.get('method')!r}", field="method")
    url = obj.get("url", CHAT_URL)
    if not isinstance(url, str) or not url.endswith(CHAT_URL):
        raise InvalidInput(f"must be {CHAT_URL}, got {url!r}", field="url")


def parse_json_object(data: bytes) -> dict[str, Any]:
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"invalid JSON: {_json_reason(exc)}") from None
    if not isinstance(obj, dict):
        raise InvalidInput(f"expected a JSON object, got {_json_type(obj)}")
    return obj


def _json_reason(exc: orjson.JSONDecodeError) -> str:
    message = str(exc.msg)
    if "UTF-8" in message:
        return f"not valid UTF-8 ({message})"
    if "recursion" in message:
        return "nested too deeply"
    return f"{message} at byte {exc.pos}"


def _json_type(value: object) -> str:
    names: dict[type, str] = {list: "an array", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    return names.get(type(value), "a number")


def _dumps(body: dict[str, Any]) -> bytes:
    return orjson.dumps(body)


def iter_requests(
    path: Path,
    parser: LineParser,
    max_line_bytes: int,
    *,
    skip: Callable[[int], bool],
    limit: int | None = None,
    size: int | None = None,
) -> Iterator[Request | BadLine]:
    """Stream the input's requests in order, not parsing the ones `skip` says are done.

    `size` (the scan's byte count) bounds what is read to the snapshot that was hashed;
    a file cut shorter since then yields fewer lines, which the runner refuses to call
    complete."""
    with path.open("rb") as raw_stream:
        stream = raw_stream if size is None else _BoundedReader(raw_stream, size)
        for index, raw in enumerate(iter_raw_lines(stream, max_line_bytes)):  # type: ignore[arg-type]
            if limit is not None and index >= limit:
                return
            if not skip(index):
                yield parser.parse(raw, index)


STDIN = Path("-")


def needs_spool(path: Path) -> bool:
    """Standard input, a FIFO, a process substitution: anything that cannot be read
    twice (once to hash, once to send) or read again by a resume."""
    if path == STDIN:
        return True
    try:
        return not stat.S_ISREG(path.stat().st_mode)
    except OSError:
        return False  # scan_input reports it


def spool_input(source: Path, directory: Path) -> Path:
    """Copy `source` (or standard input for `-`) into a new mode-0600 file in
    `directory`, synced; return its path. Blocks until the writer closes the pipe."""
    fd, name = tempfile.mkstemp(prefix="input.", suffix=".part", dir=directory)
    try:
        with os.fdopen(fd, "wb") as out:
            if source == STDIN:
                _copy(sys.stdin.buffer, out)
            else:
                try:
                    with source.open("rb") as stream:
                        _copy(stream, out)
                except OSError as exc:
                    raise InputError(f"cannot read {source}: {exc.strerror or exc}") from exc
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        os.unlink(name)
        raise
    return Path(name)


def _copy(stream: BinaryIO, out: BinaryIO) -> None:
    while chunk := stream.read(READ_CHUNK):
        out.write(chunk)
