"""Dataset rows in and labelled rows out: a job's input (JSONL objects or CSV with a
header row) read with each row's file line, the pre-pass over it, rows turned into
requests by the job's templates, and `rows.jsonl` / `rows.csv` written from results.

A row is never a reason to stop: one that is not an object, lacks a template field or
has more CSV values than columns becomes an `invalid_input` record naming its line and
the field, and the run goes on. Only a file that cannot be read at all (or whose CSV is
not UTF-8) is refused, by the scan, before anything is sent.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import orjson

from .config import RunConfig
from .dupes import DuplicateFinder
from .errors import InputError, InvalidInput
from .outdir import Paths, write_atomic, writing
from .reader import (
    InputFormat,
    InputScan,
    LineParser,
    iter_raw_lines,
    iter_requests,
    parse_json_object,
    refuse_duplicates,
)
from .records import BadLine, Record, Request
from .validate import validate_body

if TYPE_CHECKING:
    from .jobs import Job

__all__ = [
    "Row",
    "RowFormat",
    "RowParser",
    "iter_lines",
    "iter_rows",
    "make_parser",
    "row_format",
    "row_requests",
    "sample_rows",
    "scan_rows",
    "write_rows",
]

MAX_DUPLICATES_SHOWN = 5
# One CSV field may be as long as a JSONL line may be; csv's own default is 128 KiB.
csv.field_size_limit(sys.maxsize)


class RowFormat(StrEnum):
    JSONL = "jsonl"
    CSV = "csv"

    @property
    def input_format(self) -> InputFormat:
        return InputFormat.ROWS_CSV if self is RowFormat.CSV else InputFormat.ROWS_JSONL


ROW_SUFFIXES = {".jsonl": RowFormat.JSONL, ".ndjson": RowFormat.JSONL, ".csv": RowFormat.CSV}


def row_format(path: Path) -> RowFormat | None:
    """The format a rows file's name says, None for a name that says neither."""
    return ROW_SUFFIXES.get(path.suffix.lower())


@dataclass(frozen=True, slots=True)
class Row:
    """One input row and its 1-based line in the file (a CSV record's first line)."""

    line: int
    value: dict[str, Any] | None = None  # a CSV row (strings, its extra values dropped)
    raw: bytes | None = None  # a JSONL row, parsed only when needed (a resume skips most)
    problem: str | None = None  # why the row cannot be read at all

    def read(self) -> dict[str, Any]:
        """The row as an object; InvalidInput when it is not one."""
        if self.problem is not None:
            raise InvalidInput(self.problem)
        if self.value is not None:
            return self.value
        return parse_json_object(self.raw or b"")


def iter_rows(path: Path, fmt: RowFormat, max_line_bytes: int) -> Iterator[Row]:
    """Every row of the file, in order. Blank lines are not rows."""
    with path.open("rb") as stream:
        if fmt is RowFormat.CSV:
            yield from _csv_rows(stream)
            return
        for raw in iter_raw_lines(stream, max_line_bytes):
            if raw.data is None:
                problem = f"line is {raw.length} bytes, over the --max-line-bytes limit"
                yield Row(raw.number, problem=problem)
            else:
                yield Row(raw.number, raw=raw.data)


def _csv_rows(stream: BinaryIO) -> Iterator[Row]:
    text = io.TextIOWrapper(stream, encoding="utf-8-sig", newline="")
    reader = csv.DictReader(text)
    for record in reader:
        # A quoted value may span lines: the record starts that many lines earlier.
        values = [v for v in record.values() if isinstance(v, str)]
        line = reader.line_num - sum(v.count("\n") for v in values)
        extra = record.pop(None, None)
        if extra:
            columns = len(reader.fieldnames or ())
            problem = f"has {len(extra)} more value(s) than the header's {columns} columns"
            yield Row(line, value=record, problem=problem)
            continue
        # A short record leaves its last columns None: those fields are missing.
        yield Row(line, value={k: v for k, v in record.items() if v is not None})


def csv_columns(path: Path) -> list[str]:
    """A CSV file's header row."""
    with path.open("rb") as stream:
        text = io.TextIOWrapper(stream, encoding="utf-8-sig", newline="")
        return list(csv.DictReader(text).fieldnames or ())


def sample_rows(
    path: Path, fmt: RowFormat, count: int, max_line_bytes: int
) -> list[dict[str, Any]]:
    """The first `count` rows that are objects: what a job's templates are checked on."""
    found: list[dict[str, Any]] = []
    for row in iter_rows(path, fmt, max_line_bytes):
        with contextlib.suppress(InvalidInput):
            found.append(row.read())
        if len(found) >= count:
            break
    return found


def row_id(row: Mapping[str, Any], field: str) -> str:
    """The row's custom_id from its `field`: a string, or an integer written out."""
    value = row.get(field)
    if isinstance(value, str) and value:
        return value
    if type(value) is int:
        return str(value)
    reason = "missing from the row"
    if value is not None:
        reason = f"must be a non-empty string or an integer, got {value!r}"
    raise InvalidInput(f"{reason} ([input] id names it as the row's custom_id)", field=field)


# --- the pre-pass ----------------------------------------------------------------------


def scan_rows(job: Job, max_line_bytes: int) -> InputScan:
    """Hash the rows file, count its rows and refuse duplicate ids, before anything is
    sent. A CSV that is not UTF-8 or not CSV is refused here, whole."""
    path = job.input.path
    try:
        with path.open("rb") as stream:
            digest = hashlib.file_digest(stream, "sha256")
            size = stream.tell()
        with DuplicateFinder() as ids:
            count = 0
            for row in iter_rows(path, job.input.format, max_line_bytes):
                count += 1
                if job.input.id is not None:
                    _add_id(ids, row, job.input.id)
            refuse_duplicates(ids.find(lambda: _ids(job, max_line_bytes), MAX_DUPLICATES_SHOWN))
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except (UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{path} is not a UTF-8 CSV file: {exc}; nothing was sent") from exc
    return InputScan(
        sha256=digest.hexdigest(),
        requests=count,
        format=job.input.format.input_format,
        missing_model=0 if "model" in job.request else count,
        size=size,
    )


def _add_id(ids: DuplicateFinder, row: Row, field: str) -> None:
    with contextlib.suppress(InvalidInput):  # the parser reports such rows one by one
        ids.add(row_id(row.read(), field))


def _ids(job: Job, max_line_bytes: int) -> Iterator[tuple[str, int]]:
    field = job.input.id or ""
    for row in iter_rows(job.input.path, job.input.format, max_line_bytes):
        with contextlib.suppress(InvalidInput):
            yield row_id(row.read(), field), row.line


# --- rows into requests ----------------------------------------------------------------


class RowParser(LineParser):
    """Turns a job's rows into requests: the [request] fields, the [[messages]] filled
    from the row, the run's model and stream; validated like a request line."""

    def __init__(
        self,
        job: Job,
        fmt: InputFormat,
        *,
        default_model: str | None = None,
        override_model: str | None = None,
        force_stream: bool = False,
        estimate: bool = False,
    ) -> None:
        super().__init__(
            fmt,
            default_model=default_model,
            override_model=override_model,
            force_stream=force_stream,
            estimate=estimate,
        )
        self.job = job
        self._id = job.input.id
        self._fields = dict(job.request)  # the [request] body fields
        self._messages = job.messages
        self._metadata = job.metadata
        self._eval = job.eval

    def parse_row(self, row: Row, index: int) -> Request | BadLine:
        custom_id = str(row.line) if self._id is None else None
        expectation = None
        try:
            if self._id is not None:
                # A CSV row with extra values still says whose it is.
                custom_id = row_id(row.value if row.value is not None else row.read(), self._id)
            value = row.read()
            if self._eval is not None:
                expectation = self._eval.expectation(value)
                self._eval.check(value)
            body = {**self._fields, "messages": self._messages.render(value)}
            if self._metadata is not None:
                body["metadata"] = self._metadata.render(value)
            self._complete(body)
            for warning in validate_body(body):
                self._warn(warning, row.line)
            checker = self._checker(body)  # compiled once: every row shares the job's format
        except InvalidInput as exc:
            if expectation is None and self._eval is not None:
                expectation = self._eval.unreadable()
            return BadLine(index, row.line, custom_id, exc.at_line(row.line), expectation)
        return self._request(
            index,
            row.line,
            custom_id,
            orjson.dumps(body),
            body,
            checker=checker,
            expectation=expectation,
        )


def make_parser(config: RunConfig, fmt: InputFormat, *, estimate: bool) -> LineParser:
    """The parser of this run's input: request lines, or a job's rows."""
    if config.job is not None:
        return RowParser(
            config.job,
            fmt,
            default_model=config.model,
            override_model=config.override_model,
            force_stream=config.stream,
            estimate=estimate,
        )
    return LineParser(
        fmt,
        default_model=config.model,
        override_model=config.override_model,
        force_stream=config.stream,
        estimate=estimate,
    )


def iter_lines(
    config: RunConfig, scan: InputScan, parser: LineParser, *, skip: Callable[[int], bool]
) -> Iterator[Request | BadLine]:
    """The run's requests in input order, the ones `skip` says are done left unparsed.
    Rows past the count the scan hashed (appended since) are not part of the run."""
    if not isinstance(parser, RowParser):
        return iter_requests(
            config.input_path,
            parser,
            config.max_line_bytes,
            skip=skip,
            limit=config.limit,
            size=scan.size,
        )
    count = scan.requests if config.limit is None else min(scan.requests, config.limit)
    return row_requests(parser, count, config.max_line_bytes, skip=skip)


def row_requests(
    parser: RowParser, count: int, max_line_bytes: int, *, skip: Callable[[int], bool]
) -> Iterator[Request | BadLine]:
    """The first `count` rows of the parser's job as requests, in order, the ones `skip`
    says are done left unparsed."""
    job = parser.job
    rows = iter_rows(job.input.path, job.input.format, max_line_bytes)
    for index, row in enumerate(islice(rows, count)):
        if not skip(index):
            yield parser.parse_row(row, index)


# --- labelled rows out -----------------------------------------------------------------


def write_rows(paths: Paths, job: Job, max_line_bytes: int) -> Path:
    """rows.jsonl (rows.csv for a CSV input): every row that has a record in
    results.jsonl, in input order, with the record's output merged in under the job's
    [output] keys. Rebuilt whole from results.jsonl (itself copied from the journal)
    and swapped in atomically, so it is complete and ordered whatever interrupted an
    earlier session. Any OSError comes out as `Aborted` naming the file."""
    target = paths.rows_csv if job.input.format is RowFormat.CSV else paths.rows_jsonl
    with writing(target), paths.results.open("rb") as results:
        rows = iter_rows(job.input.path, job.input.format, max_line_bytes)
        # Results are a prefix of the rows: zip stops at the last row with a record.
        pairs = zip(rows, results, strict=False)
        labelled = (_labelled(row, Record.parse(line), job) for row, line in pairs)
        if job.input.format is RowFormat.CSV:
            write_atomic(target, _csv_lines(labelled, csv_columns(job.input.path), job))
        else:
            write_atomic(target, (orjson.dumps(row) + b"\n" for row in labelled))
    return target


def _labelled(row: Row, record: Record | None, job: Job) -> dict[str, Any]:
    """The row with its output (`parsed` when the record has it, else the reply's
    content) and its error ("type: message") merged in; both keys always present."""
    try:
        value = dict(row.read())
    except InvalidInput:
        value = dict(row.value or {})  # a CSV row with extra values keeps its columns
    output: Any = None
    error: str | None = None
    if record is None:
        error = "missing: results.jsonl holds no readable record for this row"
    elif record.failed:
        error = f"{record.error_type}: {record.error_message}"
    else:
        # `parsed` is set by structured output (a null parsed value is a value).
        output = record.data.get("parsed", record.content)
    value[job.output.field] = output
    value[job.output.error_field] = error
    if job.eval is not None:  # {scorer: 0 or 1}; a failed row's are all 0
        value[job.output.score_field] = None if record is None else record.score
    return value


def _csv_lines(rows: Iterator[dict[str, Any]], columns: list[str], job: Job) -> Iterator[bytes]:
    keys: tuple[str, ...] = (job.output.field, job.output.error_field)
    if job.eval is not None:
        keys += (job.output.score_field,)
    added = [c for c in keys if c not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, [*columns, *added], extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: _cell(value) for key, value in row.items()})
        yield buffer.getvalue().encode()
        buffer.seek(0)
        buffer.truncate()


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else orjson.dumps(value).decode()
