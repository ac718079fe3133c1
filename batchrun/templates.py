"""The `[[messages]]` template language of job files: `{field}` and `{a.b}` take a row's
value, `{{` and `}}` are literal braces, and nothing else is evaluated.

A template is compiled once (`compile_template`, errors name the template and column)
into literal parts and field paths, then rendered per row with a few dict lookups and one
join. A string value is inserted as it is, any other value as compact JSON (orjson).

Dots: `{a.b}` reads the row's key `a.b` when the row has one (a CSV column named so),
else `row["a"]["b"]`. Only objects are reached into: a list is inserted whole, and
`{a.0}` on a list is a missing field, not an index.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from .errors import ConfigError, InvalidInput

__all__ = [
    "MessageTemplates",
    "Template",
    "TemplateError",
    "ValueTemplate",
    "compile_messages",
    "compile_template",
    "compile_value",
]

# One token at a time: an escaped brace, a whole `{...}` field, or a brace left alone.
_TOKENS = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")
# Segments of identifier characters (any script's letters, digits, `_`) joined by dots.
_FIELD = re.compile(r"\w+(?:\.\w+)*")
_MISSING = object()


class TemplateError(ConfigError):
    """A template that cannot be compiled; `column` is 1-based within the template."""

    def __init__(self, where: str, column: int, reason: str) -> None:
        self.where, self.column, self.reason = where, column, reason
        super().__init__(f"{where}: column {column}: {reason}")


@dataclass(frozen=True, slots=True)
class _Field:
    name: str  # as written: `a.b`
    path: tuple[str, ...]  # ("a", "b"); empty for a plain name


class Template:
    """A compiled template: `head`, then each field's value followed by its literal."""

    __slots__ = ("_fields", "_head", "_steps", "source", "where")

    def __init__(self, source: str, where: str, literals: list[str], fields: list[_Field]):
        self.source, self.where = source, where
        self._head = literals[0]
        self._fields = tuple(fields)
        self._steps = tuple(zip(fields, literals[1:], strict=True))

    @property
    def fields(self) -> tuple[str, ...]:
        """The row fields this template reads, as written, each once, in order."""
        return tuple(dict.fromkeys(f.name for f in self._fields))

    def render(self, row: Mapping[str, Any]) -> str:
        """The template filled from `row`; InvalidInput (field = the row field) when the
        row lacks a field or a value cannot be written as JSON."""
        out = [self._head]
        for field, literal in self._steps:  # inlined: this runs for every row
            value = row.get(field.name, _MISSING)
            if value is _MISSING and field.path:
                value = _nested(row, field.path)
            if value is _MISSING:
                reason = f"missing from the row ({self.where} uses it)"
                raise InvalidInput(reason, field=field.name)
            out.append(value if isinstance(value, str) else _json(value, field.name, self.where))
            out.append(literal)
        return "".join(out)

    def value(self, row: Mapping[str, Any]) -> Any:
        """A template that is one field and nothing else gives the row's value as it is
        (any JSON: an object stays an object); any other renders as text."""
        if self._head or len(self._steps) != 1 or self._steps[0][1]:
            return self.render(row)
        field = self._fields[0]
        value = row.get(field.name, _MISSING)
        if value is _MISSING and field.path:
            value = _nested(row, field.path)
        if value is _MISSING:
            raise InvalidInput(f"missing from the row ({self.where} uses it)", field=field.name)
        return value

    def absent_fields(self, rows: Iterable[Mapping[str, Any]]) -> tuple[str, ...]:
        """The fields none of `rows` has: a typo in the template, if the rows are a fair
        sample (a job checks its first rows before sending anything)."""
        absent = {field.name: field for field in self._fields}
        for row in rows:
            for name, field in list(absent.items()):
                if name in row or (field.path and _nested(row, field.path) is not _MISSING):
                    del absent[name]
        return tuple(absent)

    def __repr__(self) -> str:
        return f"Template({self.source!r}, where={self.where!r})"


_Item = tuple[str, Any, Template | None]  # (key, constant, template with fields)


class MessageTemplates:
    """A job's `[[messages]]`: every string value of a message is a template (`role`,
    `content`, `name`...), anything else is copied as it is; keys keep their order."""

    __slots__ = ("_messages",)

    def __init__(self, messages: list[tuple[_Item, ...]]):
        self._messages = messages

    @property
    def fields(self) -> tuple[str, ...]:
        """The row fields any message reads, each once, in order."""
        names = (name for template in self._templates() for name in template.fields)
        return tuple(dict.fromkeys(names))

    def render(self, row: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The messages for `row`; InvalidInput as `Template.render`."""
        return [
            {key: value if template is None else template.render(row) for key, value, template in m}
            for m in self._messages
        ]

    def absent_fields(self, rows: Iterable[Mapping[str, Any]]) -> tuple[str, ...]:
        """The fields none of `rows` has, over every message."""
        sample = list(rows)
        names = (name for t in self._templates() for name in t.absent_fields(sample))
        return tuple(dict.fromkeys(names))

    def _templates(self) -> Iterable[Template]:
        return (template for m in self._messages for _, _, template in m if template is not None)


def compile_messages(messages: Sequence[Mapping[str, Any]]) -> MessageTemplates:
    """Compile each message's string values once, named `messages[i].key` in errors. A
    value without fields is kept as a constant, so a fixed system prompt costs nothing."""
    compiled: list[tuple[_Item, ...]] = []
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise ConfigError(f"messages[{index}] must be a table, not {type(message).__name__}")
        items: list[_Item] = []
        for key, value in message.items():
            if not isinstance(value, str):
                items.append((key, value, None))
                continue
            template = compile_template(value, f"messages[{index}].{key}")
            items.append(
                (key, template.render({}), None) if not template.fields else (key, None, template)
            )
        compiled.append(tuple(items))
    return MessageTemplates(compiled)


Path = tuple[str | int, ...]  # where a string sits inside a JSON value


class ValueTemplate:
    """A JSON value whose strings are templates (a job's `[request] metadata`): rendered
    per row into a new value, its constant parts shared, its strings filled in. A string
    that is one field and nothing else (`"{meta}"`) takes the row's value as it is."""

    __slots__ = ("_strings", "_value")

    def __init__(self, value: Any, strings: list[tuple[Path, Template]]):
        self._value = value
        self._strings = strings

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(name for _, t in self._strings for name in t.fields))

    def render(self, row: Mapping[str, Any]) -> Any:
        """The value for `row`; InvalidInput as `Template.render`."""
        if not self._strings:
            return self._value
        value = orjson.loads(orjson.dumps(self._value))  # a fresh copy per row
        for path, template in self._strings:
            if not path:
                return template.value(row)
            *parents, last = path
            holder = value
            for key in parents:
                holder = holder[key]
            holder[last] = template.value(row)
        return value

    def absent_fields(self, rows: Iterable[Mapping[str, Any]]) -> tuple[str, ...]:
        sample = list(rows)
        names = (name for _, t in self._strings for name in t.absent_fields(sample))
        return tuple(dict.fromkeys(names))


def compile_value(value: Any, where: str) -> ValueTemplate:
    """Compile every string inside `value` (objects and arrays walked), named
    `where.key[i]` in errors; a string without fields stays a constant."""
    strings: list[tuple[Path, Template]] = []

    def walk(item: Any, path: Path, name: str) -> None:
        if isinstance(item, str):
            template = compile_template(item, name)
            if template.fields:
                strings.append((path, template))
        elif isinstance(item, Mapping):
            for key, child in item.items():
                walk(child, (*path, key), f"{name}.{key}")
        elif isinstance(item, list):
            for index, child in enumerate(item):
                walk(child, (*path, index), f"{name}[{index}]")

    walk(value, (), where)
    # `{{` in a constant string means one brace, as in a template with fields.
    constant = _constants(value)
    return ValueTemplate(constant, strings)


def _constants(value: Any) -> Any:
    """`value` with every string rendered as a template without fields ({{ -> {)."""
    if isinstance(value, str):
        template = compile_template(value)
        return value if template.fields else template.render({})
    if isinstance(value, Mapping):
        return {key: _constants(child) for key, child in value.items()}
    if isinstance(value, list):
        return [_constants(child) for child in value]
    return value


def compile_template(source: str, where: str = "template") -> Template:
    """Compile `source` once; `where` names it in errors (e.g. `messages[0].content`).
    Raises TemplateError for a lone `{` or `}`, an empty `{}` or a field name with
    anything but identifier characters and dots."""
    literals: list[str] = []
    fields: list[_Field] = []
    pending: list[str] = []
    end = 0
    for token in _TOKENS.finditer(source):
        pending.append(source[end : token.start()])
        end = token.end()
        text = token.group()
        if text in ("{{", "}}"):
            pending.append(text[0])
            continue
        name = token.group(1)
        if name is None:
            raise TemplateError(where, token.start() + 1, _lone_brace(text))
        if not _FIELD.fullmatch(name):
            raise TemplateError(where, token.start() + 1, _bad_name(name))
        literals.append("".join(pending))
        pending = []
        path = tuple(name.split("."))
        fields.append(_Field(name, path if len(path) > 1 else ()))
    pending.append(source[end:])
    literals.append("".join(pending))
    return Template(source, where, literals, fields)


def _lone_brace(brace: str) -> str:
    if brace == "{":
        return "'{' is never closed (write '{{' for a literal brace)"
    return "'}' was never opened (write '}}' for a literal brace)"


def _bad_name(name: str) -> str:
    if not name:
        return "empty field name '{}': name the row field, e.g. {text}"
    return (
        f"field name {name!r} may hold only letters, digits, '_' and dots between them "
        "(nothing is evaluated: no spaces, indexes, attributes or format specs)"
    )


def _nested(row: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    """`row[a][b]...` through objects only, or _MISSING."""
    value = row.get(path[0], _MISSING)
    for key in path[1:]:
        if not isinstance(value, dict):
            return _MISSING
        value = value.get(key, _MISSING)
        if value is _MISSING:
            return _MISSING
    return value


def _json(value: Any, name: str, where: str) -> str:
    try:
        return orjson.dumps(value).decode()
    except TypeError as exc:  # orjson.JSONEncodeError: a 65-bit int, a non-str key, ...
        reason = f"cannot be written as JSON: {exc} ({where} uses it)"
        raise InvalidInput(reason, field=name) from None
