"""The building blocks of validation: value descriptions for error reasons, leaf
checkers, and `Field` tables walked over the keys an object has. Used by validate.py and
validate_messages.py."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from .errors import InvalidInput

Check = Callable[[Any, list[str]], None]  # (non-null value, warnings); raises _Invalid
CrossCheck = Callable[[Mapping[str, Any], list[str]], None]  # runs after every field passed

MISSING_REASON = "required field is missing"
NULL_REASON = "must not be null"
HIGH_TEMPERATURE = 1.5
# Beyond this orjson cannot re-encode an int, and no server field is wider.
INT_MAX = 2**63 - 1
CLIP = 40
_ABSENT = object()


class _Invalid(Exception):
    """A hard error below the top level. Its path is collected while the stack unwinds, so a
    valid body never pays for formatting field names."""

    def __init__(self, reason: str, *inner: str | int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.path: list[str | int] = list(reversed(inner))  # innermost segment first

    def under(self, segment: str | int) -> _Invalid:
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


def _clip(text: str) -> str:
    return text if len(text) <= CLIP else text[: CLIP - 1] + "…"


def _quote(text: str) -> str:
    return json.dumps(_clip(text), ensure_ascii=False)


def _render(value: object) -> str:
    """The offending value as the user wrote it in JSON, e.g. `"0.5" (string)`."""
    if value is None:
        return "null"
    kind = next((name for cls, name in _KINDS if isinstance(value, cls)), None)
    if kind is None:
        return f"a {type(value).__name__}"  # not JSON at all: a library caller's object
    if kind in ("array", "object"):
        return f"an {kind}"
    if isinstance(value, str):
        return f"{_quote(value)} (string)"
    if isinstance(value, int) and value.bit_length() > 64:
        return "an integer wider than 64 bits"  # str() of a huge int can itself raise
    return f"{json.dumps(value)} ({kind})"  # NaN and Infinity come out as JSON spells them


def _listing(values: tuple[str, ...] | frozenset[str]) -> str:
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


def _number(low: float = -math.inf, high: float = math.inf) -> Check:
    def check(value: Any, warnings: list[str]) -> None:
        if not (_is_number(value) and low <= value <= high):
            finite = "finite " if isinstance(value, float) and not math.isfinite(value) else ""
            raise _Invalid(f"must be a {finite}number{_bounds(low, high)}, got {_render(value)}")

    return check


def _integer(low: int) -> Check:
    def check(value: Any, warnings: list[str]) -> None:
        if not (isinstance(value, int) and not isinstance(value, bool) and low <= value <= INT_MAX):
            raise _Invalid(_integer_reason(value, low))

    return check


def _integer_reason(value: object, low: int) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and value > INT_MAX:
        return f"must be at most {INT_MAX} (a 64-bit integer), got {_render(value)}"
    return f"must be an integer >= {low}, got {_render(value)}"


def _boolean(value: Any, warnings: list[str]) -> None:
    if value is not True and value is not False:
        raise _Invalid(f"must be a boolean (true or false), got {_render(value)}")


def _text(value: Any, warnings: list[str]) -> None:
    if not isinstance(value, str):
        raise _Invalid(f"must be a string, got {_render(value)}")


def _name(value: Any, warnings: list[str]) -> None:
    if not isinstance(value, str) or not value:
        raise _Invalid(f"must be a non-empty string, got {_render(value)}")


def _object(value: Any, warnings: list[str]) -> None:
    if not isinstance(value, dict):
        raise _Invalid(f"must be an object, got {_render(value)}")


def _one_of(*allowed: str) -> Check:
    def check(value: Any, warnings: list[str]) -> None:
        if not (isinstance(value, str) and value in allowed):
            raise _Invalid(f"must be one of {_listing(allowed)}; got {_render(value)}")

    return check


def _documented(field: str, *known: str) -> Check:
    """An open enum: the SDK passes unknown strings through, so a new value is a warning."""

    def check(value: Any, warnings: list[str]) -> None:
        if not isinstance(value, str):
            raise _Invalid(f"must be a string such as {_listing(known)}; got {_render(value)}")
        if value not in known:
            warnings.append(f"{field}: {_quote(value)} is not a documented value, sent as is")

    return check


def _array_of(item: Check, what: str) -> Check:
    def check(value: Any, warnings: list[str]) -> None:
        if not isinstance(value, list):
            raise _Invalid(f"must be an array of {what}, got {_render(value)}")
        for i, element in enumerate(value):
            try:
                item(element, warnings)
            except _Invalid as exc:
                raise exc.under(i) from None

    return check


def _id(value: Any, warnings: list[str]) -> None:
    if not (isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))):
        raise _Invalid(f"must be an integer or a string, got {_render(value)}")


def _arguments(value: Any, warnings: list[str]) -> None:
    if not isinstance(value, str | dict):
        raise _Invalid(f"must be a string of JSON or an object, got {_render(value)}")


def _flat_map(value: Any, warnings: list[str]) -> None:
    _object(value, warnings)
    for key, item in value.items():
        if not (isinstance(item, str | bool) or _is_number(item)):
            raise _Invalid(f"must be a string, number or boolean, got {_render(item)}", key)


_NON_NEGATIVE = _number(0)
_STRINGS = _array_of(_text, "strings")


def _temperature(value: Any, warnings: list[str]) -> None:
    _NON_NEGATIVE(value, warnings)
    if value > HIGH_TEMPERATURE:
        warnings.append("temperature: above 1.5, output may be erratic (0-0.7 is recommended)")


def _stop(value: Any, warnings: list[str]) -> None:
    if not isinstance(value, str):
        _STRINGS(value, warnings)


# ---- objects: a tuple of fields walked by one function -------------------------------


class Field(NamedTuple):
    name: str
    check: Check
    required: bool = False  # the key must be present
    nullable: bool = True  # an explicit null is accepted (and not checked further)


def _optional(name: str, check: Check) -> Field:
    return Field(name, check)


def _not_null(name: str, check: Check) -> Field:
    return Field(name, check, nullable=False)


def _required(name: str, check: Check) -> Field:
    return Field(name, check, required=True, nullable=False)


def _key_required(name: str, check: Check) -> Field:
    """The SDK makes the key mandatory but lets it be null (user and tool `content`)."""
    return Field(name, check, required=True)


def _check_fields(obj: Mapping[str, Any], fields: tuple[Field, ...], warnings: list[str]) -> None:
    for name, check, required, nullable in fields:
        value = obj.get(name, _ABSENT)
        if value is None:
            if not nullable:
                raise _Invalid(NULL_REASON, name)
        elif value is _ABSENT:
            if required:
                raise _Invalid(MISSING_REASON, name)
        else:
            try:
                check(value, warnings)
            except _Invalid as exc:
                raise exc.under(name) from None


def _shape(*fields: Field) -> Check:
    def check(value: Any, warnings: list[str]) -> None:
        _object(value, warnings)
        _check_fields(value, fields, warnings)

    return check
