"""The building blocks of validation: value descriptions for error reasons, leaf
checkers, and `Field` tables walked over the keys an object has. Used by body.py and
messages.py; every name they share is public here, nothing else is."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from ..errors import InvalidInput

__all__ = [
    "CLIP",
    "HIGH_TEMPERATURE",
    "INT_MAX",
    "MISSING_REASON",
    "NULL_REASON",
    "STRINGS",
    "Check",
    "CrossCheck",
    "Field",
    "Invalid",
    "arguments",
    "array_of",
    "boolean",
    "check_fields",
    "clip",
    "documented",
    "flat_map",
    "integer",
    "json_object",
    "key_required",
    "listing",
    "nonempty_text",
    "not_null",
    "number",
    "one_of",
    "optional",
    "quote",
    "render",
    "required",
    "shape",
    "stop",
    "string_or_integer",
    "temperature",
    "text",
]

Check = Callable[[Any, list[str]], None]  # (non-null value, warnings); raises Invalid
CrossCheck = Callable[[Mapping[str, Any], list[str]], None]  # runs after every field passed

MISSING_REASON = "required field is missing"
NULL_REASON = "must not be null"
HIGH_TEMPERATURE = 1.5
# Beyond this orjson cannot re-encode an int, and no server field is wider.
INT_MAX = 2**63 - 1
CLIP = 40
_ABSENT = object()


class Invalid(Exception):
    """A hard error below the top level. Its path is collected while the stack unwinds, so a
    valid body never pays for formatting field names."""

    def __init__(self, reason: str, *inner: str | int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.path: list[str | int] = list(reversed(inner))  # innermost segment first

    def under(self, segment: str | int) -> Invalid:
        self.path.append(segment)
        return self

    def at(self, key: str) -> InvalidInput:
        inner = "".join(f"[{s}]" if isinstance(s, int) else f".{s}" for s in reversed(self.path))
        return InvalidInput(self.reason, field=f"{key}{inner}")


# ---- how values are described in reasons (error path only) --------------------------

_KINDS: tuple[tuple[type, str], ...] = (
    (bool, "boolean"),  # before int: bool is an int subclass but never a JSON number
    (str, "string"),
    (int, "integer"),
    (float, "number"),
    (list, "array"),
    (dict, "object"),
)


def clip(string: str) -> str:
    return string if len(string) <= CLIP else string[: CLIP - 1] + "…"


def quote(string: str) -> str:
    return json.dumps(clip(string), ensure_ascii=False)


def render(value: object) -> str:
    """The offending value as the user wrote it in JSON, e.g. `"0.5" (string)`."""
    if value is None:
        return "null"
    kind = next((name for cls, name in _KINDS if isinstance(value, cls)), None)
    if kind is None:
        return f"a {type(value).__name__}"  # not JSON at all: a library caller's object
    if kind in ("array", "object"):
        return f"an {kind}"
    if isinstance(value, str):
        return f"{quote(value)} (string)"
    if isinstance(value, int) and value.bit_length() > 64:
        return "an integer wider than 64 bits"  # str() of a huge int can itself raise
    return f"{json.dumps(value)} ({kind})"  # NaN and Infinity come out as JSON spells them


def listing(values: tuple[str, ...] | frozenset[str]) -> str:
    return ", ".join(sorted(values) if isinstance(values, frozenset) else values)


# ---- leaf checkers --------------------------------------------------------------------


def _is_number(value: object) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, int) and not isinstance(value, bool)


def _bounds(low: float, high: float) -> str:
    if low > -math.inf and high < math.inf:
        return f" in [{low:g}, {high:g}]"
    return f" >= {low:g}" if low > -math.inf else ""


def number(low: float = -math.inf, high: float = math.inf) -> Check:
    def check(value: Any, warnings: list[str]) -> None:
        if not (_is_number(value) and low <= value <= high):
            finite = "finite " if isinstance(value, float) and not math.isfinite(value) else ""
            raise Invalid(f"must be a {finite}number{_bounds(low, high)}, got {render(value)}")

    return check


def integer(low: int) -> Check:
    def check(value: Any, warnings: list[str]) -> None:
        if not (isinstance(value, int) and not isinstance(value, bool) and low <= value <= INT_MAX):
            raise Invalid(_integer_reason(value, low))

    return check


def _integer_reason(value: object, low: int) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and value > INT_MAX:
        return f"must be at most {INT_MAX} (a 64-bit integer), got {render(value)}"
    return f"must be an integer >= {low}, got {render(value)}"


def boolean(value: Any, warnings: list[str]) -> None:
    if value is not True and value is not False:
        raise Invalid(f"must be a boolean (true or false), got {render(value)}")


def text(value: Any, warnings: list[str]) -> None:
    if not isinstance(value, str):
        raise Invalid(f"must be a string, got {render(value)}")


def nonempty_text(value: Any, warnings: list[str]) -> None:
    if not isinstance(value, str) or not value:
        raise Invalid(f"must be a non-empty string, got {render(value)}")


def json_object(value: Any, warnings: list[str]) -> None:
    if not isinstance(value, dict):
        raise Invalid(f"must be an object, got {render(value)}")


def one_of(*allowed: str) -> Check:
    def check(value: Any, warnings: list[str]) -> None:
        if not (isinstance(value, str) and value in allowed):
            raise Invalid(f"must be one of {listing(allowed)}; got {render(value)}")

    return check


def documented(field: str, *known: str) -> Check:
    """An open enum: the SDK passes unknown strings through, so a new value is a warning."""

    def check(value: Any, warnings: list[str]) -> None:
        if not isinstance(value, str):
            raise Invalid(f"must be a string such as {listing(known)}; got {render(value)}")
        if value not in known:
            warnings.append(f"{field}: {quote(value)} is not a documented value, sent as is")

    return check


def array_of(item: Check, what: str) -> Check:
    def check(value: Any, warnings: list[str]) -> None:
        if not isinstance(value, list):
            raise Invalid(f"must be an array of {what}, got {render(value)}")
        for i, element in enumerate(value):
            try:
                item(element, warnings)
            except Invalid as exc:
                raise exc.under(i) from None

    return check


def string_or_integer(value: Any, warnings: list[str]) -> None:
    if not (isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))):
        raise Invalid(f"must be an integer or a string, got {render(value)}")


def arguments(value: Any, warnings: list[str]) -> None:
    if not isinstance(value, str | dict):
        raise Invalid(f"must be a string of JSON or an object, got {render(value)}")


def flat_map(value: Any, warnings: list[str]) -> None:
    json_object(value, warnings)
    for key, item in value.items():
        if not (isinstance(item, str | bool) or _is_number(item)):
            raise Invalid(f"must be a string, number or boolean, got {render(item)}", key)


_NON_NEGATIVE = number(0)
STRINGS = array_of(text, "strings")


def temperature(value: Any, warnings: list[str]) -> None:
    _NON_NEGATIVE(value, warnings)
    if value > HIGH_TEMPERATURE:
        warnings.append("temperature: above 1.5, output may be erratic (0-0.7 is recommended)")


def stop(value: Any, warnings: list[str]) -> None:
    if not isinstance(value, str):
        STRINGS(value, warnings)


# ---- objects: a tuple of fields walked by one function -------------------------------


class Field(NamedTuple):
    name: str
    check: Check
    required: bool = False  # the key must be present
    nullable: bool = True  # an explicit null is accepted (and not checked further)


def optional(name: str, check: Check) -> Field:
    return Field(name, check)


def not_null(name: str, check: Check) -> Field:
    return Field(name, check, nullable=False)


def required(name: str, check: Check) -> Field:
    return Field(name, check, required=True, nullable=False)


def key_required(name: str, check: Check) -> Field:
    """The SDK makes the key mandatory but lets it be null (user and tool `content`)."""
    return Field(name, check, required=True)


def check_fields(obj: Mapping[str, Any], fields: tuple[Field, ...], warnings: list[str]) -> None:
    for name, check, must_exist, nullable in fields:
        value = obj.get(name, _ABSENT)
        if value is None:
            if not nullable:
                raise Invalid(NULL_REASON, name)
        elif value is _ABSENT:
            if must_exist:
                raise Invalid(MISSING_REASON, name)
        else:
            try:
                check(value, warnings)
            except Invalid as exc:
                raise exc.under(name) from None


def shape(*fields: Field) -> Check:
    def check(value: Any, warnings: list[str]) -> None:
        json_object(value, warnings)
        check_fields(value, fields, warnings)

    return check
