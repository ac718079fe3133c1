"""Job files: one TOML file that makes a labelling run a reviewable command.

`load_job` reads and checks the whole file before anything is sent: every unknown key,
wrong type, bad template, template field that none of the first rows has and request
field the validator refuses is reported at once, each naming its key and line.
`apply_job` lays the job's `[input]` and `[run]` over the RunConfig built from the
flags; a flag the user gave (on the command line or through its environment variable)
wins over the job.
"""

from __future__ import annotations

import difflib
import hashlib
import re
import tomllib
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import orjson

from .cache import default_cache_dir
from .config import RunConfig, check_base_url, is_duration
from .errors import ConfigError, InvalidInput
from .evals import EVAL_KEYS, EvalSpec, EvalTableError, parse_eval
from .prices import PriceTable
from .rows import RowFormat, row_format, sample_rows
from .templates import (
    MessageTemplates,
    TemplateError,
    ValueTemplate,
    compile_messages,
    compile_value,
)
from .validate import FIELDS, validate_body

__all__ = [
    "JOB_SUFFIX",
    "Job",
    "JobInput",
    "OutputKeys",
    "apply_job",
    "check_model",
    "is_job",
    "load_job",
]

JOB_SUFFIX = ".toml"
SAMPLE_ROWS = 100  # the rows a template's fields are checked against before sending
MAX_LINE_BYTES = 10 * 1024 * 1024
TOP_KEYS = ("input", "request", "messages", "run", "output", "prices", "eval")
INPUT_KEYS = ("path", "id", "limit")
OUTPUT_KEYS = ("field", "error_field", "score_field")
# Body fields a job may not set in [request]: each has its own place in the job.
REQUEST_ELSEWHERE = {
    "messages": "write them as [[messages]] tables",
    "stream": "set [run] stream = true",
}
UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}

Key = tuple[str | int, ...]  # a key's path in the file: ("run", "rps"), ("messages", 0, "role")


@dataclass(frozen=True)
class JobInput:
    path: Path  # resolved against the job file's folder
    format: RowFormat
    id: str | None = None  # the row field used as custom_id (else the row's line number)
    limit: int | None = None


@dataclass(frozen=True)
class OutputKeys:
    """Where rows.jsonl / rows.csv put each row's output and error."""

    field: str = "output"
    error_field: str = "error"
    score_field: str = "score"  # an eval job's per-row scores


@dataclass(frozen=True, eq=False)  # identity: its tables are dicts, and RunConfig hashes it
class Job:
    """A loaded, checked job file."""

    path: Path
    input: JobInput
    request: Mapping[str, Any]  # chat-completion body fields, messages excepted
    messages: MessageTemplates
    run: Mapping[str, Any]  # checked [run] values by key (RUN_KEYS)
    output: OutputKeys
    prices: Mapping[str, Any] | None  # [prices], checked like a --prices file
    # What decides what is sent and what comes back: [request], [[messages]], [input] id,
    # [output] and what [eval] scores. Not the path, nor [run] (how fast, where to) nor
    # the eval's bar: a resume may change those.
    sha256: str
    eval: EvalSpec | None = None
    # [request] metadata with {field} templates, filled per row (None: none to fill).
    metadata: ValueTemplate | None = None


def is_job(path: Path) -> bool:
    return path.suffix.lower() == JOB_SUFFIX


# --- [run] keys: how each is checked and where it goes in RunConfig ----------------------


class _Bad(Exception):
    """A value's problem, said in words; the caller adds the key and line."""


def _positive_int(value: Any) -> int:
    if type(value) is not int or value < 1:
        raise _Bad(f"must be an integer >= 1, got {_show(value)}")
    return value


def _count(value: Any) -> int:
    if type(value) is not int or value < 0:
        raise _Bad(f"must be an integer >= 0, got {_show(value)}")
    return value


def _number(value: Any) -> float:
    if not is_duration(value):
        raise _Bad(f"must be a finite number > 0, got {_show(value)}")
    return float(value)


def _duration(value: Any) -> float:
    """Seconds, or a string with a unit: "90s", "45m", "2h"."""
    if isinstance(value, str) and value[-1:] in UNITS:
        try:
            number = float(value[:-1]) * UNITS[value[-1]]
        except ValueError:
            number = 0.0
        if is_duration(number):
            return number
    if is_duration(value):
        return float(value)
    raise _Bad(f'must be a duration > 0 (seconds, or "90s", "45m", "2h"), got {_show(value)}')


def _fraction(value: Any) -> float:
    if not is_duration(value) or value > 1:
        raise _Bad(f"must be a fraction in (0, 1], got {_show(value)}")
    return float(value)


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _Bad(f"must be true or false, got {_show(value)}")
    return value


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise _Bad(f"must be a non-empty string, got {_show(value)}")
    return value


def _cache(value: Any) -> bool | str:
    if isinstance(value, bool) or (isinstance(value, str) and value):
        return value
    raise _Bad(f"must be true, false or a directory, got {_show(value)}")


def _url(value: Any) -> str:
    url = _text(value)
    try:  # plain http to a remote host is judged later, with --allow-insecure-http known
        check_base_url(url, allow_insecure_http=True)
    except ConfigError:
        raise _Bad(f"must be an http(s) URL, got {url!r}") from None
    return url


Apply = Callable[[RunConfig, Any], RunConfig]


@dataclass(frozen=True)
class _RunKey:
    check: Callable[[Any], Any]
    apply: Apply
    flag: str  # the `run` command's parameter that overrides it


def _timeouts(name: str) -> Apply:
    return lambda c, v: replace(c, timeouts=replace(c.timeouts, **{name: v}))


def _pace(name: str) -> Apply:
    return lambda c, v: replace(c, pace=replace(c.pace, **{name: v}))


def _guards(name: str) -> Apply:
    return lambda c, v: replace(c, guards=replace(c.guards, **{name: v}))


def _retry(name: str) -> Apply:
    return lambda c, v: replace(c, retry=replace(c.retry, **{name: v}))


def _top(name: str) -> Apply:
    return lambda c, v: replace(c, **{name: v})


def _cache_dir(config: RunConfig, value: bool | Path) -> RunConfig:
    """`cache = true`: the default directory, as `--cache` alone; a path: that one."""
    directory = default_cache_dir() if value is True else value or None
    return replace(config, cache_dir=directory)


RUN_KEYS: dict[str, _RunKey] = {
    "output": _RunKey(_text, _top("outdir"), "outdir"),
    "concurrency": _RunKey(_positive_int, _top("concurrency"), "concurrency"),
    "rps": _RunKey(_number, _pace("rps"), "rps"),
    "rpm": _RunKey(_number, _pace("rpm"), "rpm"),
    "tpm": _RunKey(_number, _pace("tpm"), "tpm"),
    "max_attempts": _RunKey(_positive_int, _retry("max_attempts"), "max_attempts"),
    "timeout": _RunKey(_number, _timeouts("read"), "timeout"),
    "connect_timeout": _RunKey(_number, _timeouts("connect"), "connect_timeout"),
    "stream_idle_timeout": _RunKey(_number, _timeouts("stream_idle"), "stream_idle_timeout"),
    "stream_timeout": _RunKey(_number, _timeouts("stream_total"), "stream_timeout"),
    "stream": _RunKey(_flag, _top("stream"), "stream"),
    "base_url": _RunKey(_url, _top("base_url"), "base_url"),
    "api_key_env": _RunKey(_text, _top("api_key_env"), "api_key_env"),
    "deadline": _RunKey(_duration, _guards("deadline"), "deadline"),
    "max_tokens_total": _RunKey(_positive_int, _guards("max_tokens_total"), "max_tokens_total"),
    "max_error_rate": _RunKey(_fraction, _guards("max_error_rate"), "max_error_rate"),
    "max_rate_limit_wait": _RunKey(_duration, _retry("rate_limit_wait"), "max_rate_limit_wait"),
    "max_cost": _RunKey(_number, _guards("max_cost"), "max_cost"),
    "schema_retries": _RunKey(_count, _top("schema_retries"), "schema_retries"),
    "cache": _RunKey(_cache, _cache_dir, "cache_dir"),
}


def apply_job(job: Job, flags: RunConfig, explicit: Collection[str]) -> RunConfig:
    """`flags` with the job laid over it: its rows as the input, its [input] limit and
    [run] values, except where `explicit` names the `run` parameter the user gave."""
    config = replace(flags, input_path=job.input.path, job=job)
    if job.input.limit is not None and "limit" not in explicit:
        config = replace(config, limit=job.input.limit)
    for key, value in job.run.items():
        setting = RUN_KEYS[key]
        if setting.flag not in explicit:
            config = setting.apply(config, value)
    if job.prices is not None:  # under --prices FILE, which prices.load_prices lays on top
        config = replace(config, price_overrides=job.prices)
    check_model(job, config.model, config.override_model)
    return config


def check_model(job: Job, model: str | None, override_model: str | None) -> None:
    """A job whose [request] names no model needs -m (or --override-model)."""
    if "model" not in job.request and model is None and override_model is None:
        raise ConfigError(
            f'{job.path}: [request] names no model: add model = "..." to it, or pass '
            "-m MODEL; nothing was sent"
        )


# --- loading -----------------------------------------------------------------------------


def load_job(path: Path) -> Job:
    """Read and check the job file at `path`; ConfigError (exit 1) listing every problem."""
    text = _read(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    check = _Checker(path, text)
    job = check.job(data)
    if job is not None:
        check.against_rows(job)
    if job is None or check.problems:
        raise ConfigError(check.report())
    return job


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else str(exc)
        raise ConfigError(f"cannot read job file {path}: {reason or exc}") from None


class _Checker:
    """Collects a job file's problems, each with its key and line."""

    def __init__(self, path: Path, text: str) -> None:
        self.path = path
        self.folder = path.parent
        self.lines = _KeyLines(text)
        self.problems: list[tuple[int, str]] = []

    def fail(self, key: Key, problem: str, *, line: int | None = None) -> None:
        line = line or self.lines.find(key)
        where = f"{self.path}:{line}" if line else str(self.path)
        self.problems.append((line or 0, f"{where}: {_dotted(key)}: {problem}"))

    def report(self) -> str:
        found = sorted(self.problems)
        count = f"{len(found)} problems" if len(found) > 1 else "a problem"
        lines = "\n".join(f"  {message}" for _, message in found)
        return f"job file {self.path} has {count}; nothing was sent:\n{lines}"

    def job(self, data: dict[str, Any]) -> Job | None:
        for key in data:
            if key not in TOP_KEYS:
                self.fail((key,), _unknown(key, TOP_KEYS))
        job_input = self._input(self._table(data, "input", required=True))
        request = self._request(self._table(data, "request"))
        messages = self._messages(data.get("messages"))
        run = self._run(self._table(data, "run"))
        output = self._output(self._table(data, "output"))
        prices = self._prices(data.get("prices"))
        evaluation = self._eval(data)
        metadata = self._metadata(request.get("metadata"))
        if job_input is None or messages is None:
            return None
        hashed = {
            "request": request,
            "messages": data.get("messages"),
            "id": job_input.id,
            "output": [output.field, output.error_field],
            **({} if output.score_field == "score" else {"score_field": output.score_field}),
            **({} if evaluation is None else {"eval": evaluation.identity()}),
        }
        digest = hashlib.sha256(orjson.dumps(hashed, option=orjson.OPT_SORT_KEYS)).hexdigest()
        return Job(
            self.path,
            job_input,
            MappingProxyType(request),
            messages,
            MappingProxyType(run),
            output,
            prices,
            digest,
            evaluation,
            metadata,
        )

    def _table(self, data: dict[str, Any], name: str, *, required: bool = False) -> dict[str, Any]:
        value = data.get(name)
        if value is None:
            if required:
                self.fail((name,), f"missing: the job needs an [{name}] table")
            return {}
        if not isinstance(value, dict):
            self.fail((name,), f"must be a table ([{name}]), got {_show(value)}")
            return {}
        return value

    def _keys(self, table: dict[str, Any], name: str, known: Collection[str]) -> None:
        for key in table:
            if key not in known:
                self.fail((name, key), _unknown(key, known))

    def _input(self, table: dict[str, Any]) -> JobInput | None:
        self._keys(table, "input", INPUT_KEYS)
        if "path" not in table:
            if table or self.lines.find(("input",)):  # a missing [input] is reported already
                self.fail(("input",), "missing key path: the JSONL or CSV file of rows")
            return None
        path = self._checked(("input", "path"), table.get("path"), _text)
        row_id = self._checked(("input", "id"), table.get("id"), _text)
        limit = self._checked(("input", "limit"), table.get("limit"), _count)
        if path is None:
            return None
        rows = self.folder / path
        fmt = row_format(rows)
        if fmt is None:
            self.fail(("input", "path"), f"must end in .jsonl or .csv, got {path!r}")
            return None
        return JobInput(rows, fmt, row_id, limit)

    def _request(self, table: dict[str, Any]) -> dict[str, Any]:
        for key in table:
            if key in REQUEST_ELSEWHERE:
                self.fail(("request", key), f"not a [request] key: {REQUEST_ELSEWHERE[key]}")
            elif key not in FIELDS:
                self.fail(("request", key), _unknown(key, FIELDS, "chat-completions body field"))
        # Imported here: jsonschema takes a fifth of a second to load, and only a job
        # file needs it before the run (`batchrun --help` must not wait for it).
        from .structured import output_checker  # noqa: PLC0415

        try:
            output_checker(table.get("response_format"))
        except ConfigError as exc:
            self.fail(("request", "response_format"), str(exc))
        return {k: v for k, v in table.items() if k not in REQUEST_ELSEWHERE}

    def _messages(self, value: Any) -> MessageTemplates | None:
        if value is None:
            self.fail(("messages",), "missing: the job needs at least one [[messages]] table")
            return None
        if not isinstance(value, list) or not value:
            self.fail(("messages",), "must be one or more [[messages]] tables")
            return None
        for index, message in enumerate(value):
            if not isinstance(message, dict):
                self.fail(("messages", index), f"must be a table, got {_show(message)}")
                return None
        try:
            return compile_messages(value)
        except TemplateError as exc:
            key = _key_of(exc.where)
            self.fail(key, f"column {exc.column}: {exc.reason}")
        return None

    def _run(self, table: dict[str, Any]) -> dict[str, Any]:
        checked: dict[str, Any] = {}
        for key, value in table.items():
            setting = RUN_KEYS.get(key)
            if setting is None:
                self.fail(("run", key), _unknown(key, RUN_KEYS))
                continue
            result = self._checked(("run", key), value, setting.check)
            if result is not None:
                checked[key] = result
        if "output" in checked:
            checked["output"] = self.folder / checked["output"]
        if isinstance(checked.get("cache"), str):
            checked["cache"] = self.folder / checked["cache"]
        return checked

    def _output(self, table: dict[str, Any]) -> OutputKeys:
        self._keys(table, "output", OUTPUT_KEYS)
        default = OutputKeys()
        field = self._checked(("output", "field"), table.get("field"), _text)
        error = self._checked(("output", "error_field"), table.get("error_field"), _text)
        score = self._checked(("output", "score_field"), table.get("score_field"), _text)
        keys = OutputKeys(
            field or default.field, error or default.error_field, score or default.score_field
        )
        if len({keys.field, keys.error_field, keys.score_field}) < len(OUTPUT_KEYS):
            names = f"{keys.field!r}, {keys.error_field!r}, {keys.score_field!r}"
            self.fail(("output",), f"field, error_field and score_field must differ: {names}")
        return keys

    def _eval(self, data: dict[str, Any]) -> EvalSpec | None:
        if "eval" not in data:
            return None
        table = self._table(data, "eval")
        if not isinstance(data["eval"], dict):
            return None  # reported by _table
        self._keys(table, "eval", EVAL_KEYS)
        try:
            return parse_eval(table)
        except EvalTableError as exc:
            self.fail(("eval", exc.key), exc.problem)
            return None

    def _metadata(self, value: Any) -> ValueTemplate | None:
        """[request] metadata's strings are templates (to carry row values along)."""
        if not isinstance(value, dict):
            return None  # absent, or refused by the body validator with the rest
        try:
            template = compile_value(value, "metadata")
        except TemplateError as exc:
            self.fail(("request", *_key_of(exc.where)), f"column {exc.column}: {exc.reason}")
            return None
        return template if template.fields else None

    def _prices(self, value: Any) -> Mapping[str, Any] | None:
        if value is None:
            return None
        try:
            PriceTable.bundled().with_overrides(value, source="[prices]")
        except ConfigError as exc:
            self.fail(("prices",), str(exc).removeprefix("[prices]: "))
            return None
        return MappingProxyType(value)

    def _checked(self, key: Key, value: Any, check: Callable[[Any], Any]) -> Any:
        if value is None:
            return None
        try:
            return check(value)
        except _Bad as exc:
            self.fail(key, str(exc))
            return None

    def against_rows(self, job: Job) -> None:
        """What only the rows can tell: fields that none of the first rows has, and the
        [request] body as a row makes it, through the request-line validator."""
        if job.input.path.exists() and not job.input.path.is_file():
            # A pipe would be drained here, and the run must read the rows twice.
            self.fail(("input", "path"), f"{job.input.path} must be a regular file")
            return
        try:
            rows = sample_rows(job.input.path, job.input.format, SAMPLE_ROWS, MAX_LINE_BYTES)
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else str(exc)
            self.fail(("input", "path"), f"cannot read {job.input.path}: {reason or exc}")
            return
        if rows:
            for name in job.messages.absent_fields(rows):
                problem = f"{{{name}}}: {_no_row_has(rows, name)}"
                key, line = self.lines.find_text(f"{{{name}}}")
                self.fail(key, problem, line=line)
            if job.input.id is not None and not any(job.input.id in row for row in rows):
                problem = _no_row_has(rows, job.input.id)
                self.fail(("input", "id"), problem)
            if job.metadata is not None:
                for name in job.metadata.absent_fields(rows):
                    key, line = self.lines.find_text(f"{{{name}}}")
                    self.fail(key, f"{{{name}}}: {_no_row_has(rows, name)}", line=line)
            if job.eval is not None:
                self._eval_fields(job.eval, rows)
        self._body(job, rows)

    def _eval_fields(self, spec: EvalSpec, rows: list[dict[str, Any]]) -> None:
        for key, name in (("expected", spec.expected), ("slice", spec.slice)):
            if name is not None and not any(name in row for row in rows):
                self.fail(("eval", key), _no_row_has(rows, name))

    def _body(self, job: Job, rows: list[dict[str, Any]]) -> None:
        messages: list[dict[str, Any]] = [{"role": "user", "content": "-"}]
        for row in rows:
            try:
                messages = job.messages.render(row)
                break
            except InvalidInput:
                continue
        body = {**job.request, "messages": messages}
        try:
            validate_body(body, model_required=False)
        except InvalidInput as exc:
            field = _key_of(exc.field or "")
            key = field if field[:1] == ("messages",) else ("request", *field)
            self.fail(key, exc.reason)


# --- finding a key's line ------------------------------------------------------------------

_HEADER = re.compile(r"\s*(\[\[?)\s*([^\[\]]+?)\s*\]\]?\s*(?:#.*)?")
_PART_RE = r"[\w-]+|\"[^\"]*\"|'[^']*'"  # a bare or quoted key part
_ASSIGN = re.compile(rf"\s*((?:{_PART_RE})(?:\s*\.\s*(?:{_PART_RE}))*)\s*=")
_PART = re.compile(_PART_RE)


class _KeyLines:
    """Where each table and key of a TOML text starts: tomllib gives no positions, so
    the text is scanned for table headers and `key =` lines (outside multi-line strings).
    A key not found (inside an inline table) is placed at its nearest enclosing key."""

    def __init__(self, text: str) -> None:
        self.text_lines = text.splitlines()
        self.found: dict[Key, int] = {}
        arrays: dict[Key, int] = {}
        table: Key = ()
        in_string = False
        for number, line in enumerate(self.text_lines, start=1):
            quotes = line.count('"""') + line.count("'''")
            if in_string:
                in_string = quotes % 2 == 0
                continue
            if header := _HEADER.fullmatch(line):
                table = _parts(header.group(2))
                if header.group(1) == "[[":
                    arrays[table] = arrays.get(table, -1) + 1
                    table = (*table, arrays[table])
                self.found.setdefault(table, number)
            elif assign := _ASSIGN.match(line):
                self.found.setdefault((*table, *_parts(assign.group(1))), number)
            in_string = quotes % 2 == 1

    def find(self, key: Key) -> int | None:
        for end in range(len(key), 0, -1):
            if (line := self.found.get(key[:end])) is not None:
                return line
        return None

    def find_text(self, text: str) -> tuple[Key, int | None]:
        """The first line holding `text` (a template's field) and the key it belongs
        to (the last key that starts at or before it)."""
        for number, line in enumerate(self.text_lines, start=1):
            if text in line:
                before = [(n, k) for k, n in self.found.items() if n <= number]
                key = max(before, key=lambda item: item[0])[1] if before else ("messages",)
                return key, number
        return ("messages",), None


def _parts(dotted: str) -> Key:
    return tuple(part.strip("\"'") for part in _PART.findall(dotted))


def _key_of(where: str) -> Key:
    """`messages[2].content` -> ("messages", 2, "content")."""
    parts: list[str | int] = []
    for name, index in re.findall(r"(\w+)|\[(\d+)\]", where):
        parts.append(int(index) if index else name)
    return tuple(parts)


def _dotted(key: Key) -> str:
    text = ""
    for part in key:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def _unknown(key: str, known: Collection[str], what: str = "key") -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"unknown {what}{hint}"


def _no_row_has(rows: list[dict[str, Any]], name: str) -> str:
    if len(rows) == 1:
        return f"the first row has no field {name!r}"
    return f"none of the first {len(rows)} rows has a field {name!r}"


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return repr(value)
