"""Structured output: a request's `response_format` (`json_object`, or `json_schema` with
its JSON Schema) turned once into a checker that parses a reply's content as JSON and
checks it, raising SchemaViolation naming the first violation and its JSON path.

Decisions, for replies the API reference leaves open:
- Only choice 0 is checked (and parsed); with `n` > 1 the other choices are kept in the
  response as they came.
- Content may be a string or a list of chunks (reasoning models send `thinking` chunks
  before `text` ones): the `text` chunks, joined, are the content. Anything else
  (null, a number) is a violation.
- A reply that holds tool calls and no content is a violation: the request asked for
  structured content and got none.
- The content must be JSON as it stands: no code fences or prose around it are
  stripped. `format` keywords are annotations (jsonschema's default), not asserted.
- Only local `$ref`s (`#/...`) are accepted: batchrun fetches nothing.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import unquote

import orjson
from jsonschema.exceptions import SchemaError, ValidationError, best_match
from jsonschema.protocols import Validator
from jsonschema.validators import Draft7Validator, Draft202012Validator, validator_for
from referencing.exceptions import Unresolvable

from .errors import ConfigError, InvalidInput, SchemaViolation

__all__ = ["CheckerCache", "OutputChecker", "output_checker"]

MESSAGE_CHARS = 300  # a violation quotes the value; a 1 MB value must not fill the record
# Keywords whose values are data, not subschemas: a `$ref` key inside them is no reference.
DATA_KEYWORDS = frozenset({"const", "default", "enum", "examples"})


class OutputChecker:
    """Checks reply content against one `response_format`; built once per job."""

    __slots__ = ("_validator", "kind")

    def __init__(self, kind: str, validator: Validator | None) -> None:
        self.kind = kind  # "json_object" | "json_schema"
        self._validator = validator

    def check(self, content: object) -> Any:
        """The content parsed, or SchemaViolation. Never raises anything else."""
        text = _text_of(content)
        try:
            value = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise SchemaViolation(f"content is not JSON: {exc}", content=text) from None
        if self._validator is None:
            if not isinstance(value, dict):
                reason = f"content is JSON but not an object: {_excerpt(text)}"
                raise SchemaViolation(reason, path="$", content=text)
            return value
        error = _first_violation(self._validator, value, text)
        if error is not None:
            raise SchemaViolation(_excerpt(error.message), path=error.json_path, content=text)
        return value

    def check_reply(self, reply: Mapping[str, Any]) -> Any:
        """`check` on the content of choice 0 of a completion (any shape: it is untrusted);
        a reply cut by `max_tokens` says so when its content is not JSON."""
        message = _message_of(reply)
        content = message.get("content")
        if message.get("tool_calls") and content in (None, "", []):
            raise SchemaViolation("the reply holds tool calls, not content")
        try:
            return self.check(content)
        except SchemaViolation as exc:
            if exc.path is None and _finish_reason(reply) == "length":
                reason = f"{exc.reason} (finish_reason length: max_tokens cut the reply)"
                raise SchemaViolation(reason, content=exc.content) from None
            raise

    def __repr__(self) -> str:
        return f"OutputChecker({self.kind!r})"


def output_checker(response_format: object) -> OutputChecker | None:
    """The checker for a request body's `response_format`; None when there is nothing
    to check (absent, `text`, or a type batchrun does not know). A malformed format or
    an invalid schema is a ConfigError, raised before anything is sent."""
    if response_format is None:
        return None
    if not isinstance(response_format, dict):
        raise ConfigError("response_format must be an object")
    kind = response_format.get("type")
    if kind == "json_object":
        return OutputChecker(kind, None)
    if kind != "json_schema":
        return None
    spec = response_format.get("json_schema")
    schema = spec.get("schema") if isinstance(spec, dict) else None
    if not isinstance(schema, dict):
        raise ConfigError("response_format.json_schema.schema must be an object (a JSON Schema)")
    return OutputChecker(kind, _compile(schema))


class CheckerCache:
    """`output_checker` once per distinct `response_format` of a request file: 20,000
    lines sharing one schema compile it once. Keyed by the format's canonical JSON
    (sorted keys), bounded (least recently used goes first), and a format that cannot
    be compiled is remembered too, so each of its lines is refused without recompiling.

    A request file may give each line its own format, so a bad one is that line's
    `InvalidInput` (the run goes on), not a ConfigError for the whole run."""

    __slots__ = ("_entries", "_size", "compiled")

    def __init__(self, size: int = 64) -> None:
        # A bad format is kept as its (reason, field), not as an exception: a raised
        # instance would hold the traceback of the line that first met it.
        self._entries: OrderedDict[bytes, OutputChecker | tuple[str, str] | None] = OrderedDict()
        self._size = size
        self.compiled = 0  # output_checker calls: what the cache saves is countable

    def get(self, response_format: object) -> OutputChecker | None:
        """The checker for this format (None: nothing to check); InvalidInput naming
        the problem when the format cannot be compiled."""
        key = orjson.dumps(response_format, option=orjson.OPT_SORT_KEYS)
        if key in self._entries:
            self._entries.move_to_end(key)
            entry = self._entries[key]
        else:
            entry = self._entries[key] = self._compile(response_format)
            if len(self._entries) > self._size:
                self._entries.popitem(last=False)
        if isinstance(entry, tuple):
            reason, field = entry
            raise InvalidInput(reason, field=field)
        return entry

    def _compile(self, response_format: object) -> OutputChecker | tuple[str, str] | None:
        self.compiled += 1
        try:
            return output_checker(response_format)
        except ConfigError as exc:
            return _invalid_format(str(exc))


def _invalid_format(message: str) -> tuple[str, str]:
    """A ConfigError's message as a line's (reason, field): its leading field path, if
    it has one, becomes the field."""
    head, sep, reason = message.partition(": ")
    if sep and head.startswith("response_format"):
        return reason, head
    return message, "response_format.json_schema.schema"


def _compile(schema: dict[str, Any]) -> Validator:
    cls = _draft_of(schema)
    try:
        cls.check_schema(schema)
        for ref in _refs(schema):
            _check_ref(schema, ref)
    except SchemaError as exc:
        where = exc.json_path.replace("$", "response_format.json_schema.schema", 1)
        raise ConfigError(f"{where}: invalid JSON Schema: {_excerpt(exc.message)}") from None
    except RecursionError:
        raise ConfigError("response_format.json_schema.schema nests too deeply") from None
    return cls(schema)


def _draft_of(schema: dict[str, Any]) -> type[Validator]:
    """The draft `$schema` names, 2020-12 without one. An unknown one is an error rather
    than jsonschema's fallback to the latest draft (it asks two defaults to tell)."""
    if "$schema" not in schema:
        return Draft202012Validator
    declared = schema["$schema"]
    if isinstance(declared, str):
        cls = validator_for(schema, default=Draft202012Validator)
        if cls is validator_for(schema, default=Draft7Validator):
            return cls
    raise ConfigError(f"response_format.json_schema.schema: unknown $schema {declared!r}")


def _refs(schema: object) -> Iterator[str]:
    if isinstance(schema, dict):
        for key, value in schema.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            elif key not in DATA_KEYWORDS:
                yield from _refs(value)
    elif isinstance(schema, list):
        for item in schema:
            yield from _refs(item)


def _check_ref(schema: dict[str, Any], ref: str) -> None:
    """A `$ref` must point inside the schema: `#`, `#/json/pointer`, or `#anchor` (left
    to jsonschema). Anything else would need a fetch."""
    if not ref.startswith("#"):
        raise ConfigError(f"$ref {ref!r}: only references inside the schema (#/...) work")
    if ref != "#" and not ref.startswith("#/"):
        return
    target: object = schema
    for token in ref[2:].split("/") if ref != "#" else ():
        key = unquote(token).replace("~1", "/").replace("~0", "~")
        if isinstance(target, dict) and key in target:
            target = target[key]
        elif isinstance(target, list) and key.isdigit() and int(key) < len(target):
            target = target[int(key)]
        else:
            raise ConfigError(f"$ref {ref!r} points to nothing in the schema")


def _first_violation(validator: Validator, value: Any, text: str) -> ValidationError | None:
    """The most relevant violation (jsonschema's `best_match`), or None."""
    try:
        error: ValidationError | None = best_match(validator.iter_errors(value))
        return error
    except RecursionError:  # a recursive schema over deeply nested content
        raise SchemaViolation("content nests too deeply to check", content=text) from None
    except Unresolvable as exc:  # an anchor `$ref` the up-front check let through
        raise SchemaViolation(f"the schema's {exc} cannot be resolved", content=text) from None


def _text_of(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [c.get("text") for c in content if isinstance(c, dict) and c.get("type") == "text"]
        texts = [part for part in parts if isinstance(part, str)]
        if texts and len(texts) == len(parts):
            return "".join(texts)
    raise SchemaViolation(f"content is not text but {_json_type(content)}")


def _message_of(reply: Mapping[str, Any]) -> Mapping[str, Any]:
    choices = reply.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices else None
    message = choice.get("message") if isinstance(choice, dict) else None
    if not isinstance(message, dict):
        raise SchemaViolation("the reply has no message to check")
    return message


def _finish_reason(reply: Mapping[str, Any]) -> object:
    choice = reply["choices"][0]  # _message_of found it
    return choice.get("finish_reason")


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return "an object" if isinstance(value, dict) else "a list without text chunks"


def _excerpt(text: str) -> str:
    return text if len(text) <= MESSAGE_CHARS else text[: MESSAGE_CHARS - 1] + "…"
