"""What the mock answers under a `json_schema` response format: a small instance that
conforms (values drawn from the request's key, so different rows get different answers
and the same row the same one), and, for the `schema_violation` fault, one that does not.

Covered: `type` (first listed, `null` last), `const`, `enum` (a member drawn by key),
required properties, `minProperties`, `additionalProperties`/`patternProperties`,
`items`/`prefixItems`/`contains`, `minItems`/`maxItems`/`uniqueItems`, string lengths and a
few `format`s, numeric bounds and `multipleOf`, local `$ref`s, `allOf` (merged) and the
first branch of `anyOf`/`oneOf`. Not covered: `pattern`, `not`, `if`/`then`/`else`,
overlapping `oneOf` branches; a schema that leans on them may get a non-conforming answer.
"""

from __future__ import annotations

import hashlib
import math
import re
from typing import Any
from urllib.parse import unquote

__all__ = ["conforming", "violating"]

MAX_DEPTH = 24  # a schema that requires its own recursion has no finite instance
MAX_COUNT = 64  # minItems/minProperties past this are not worth answering in full
MAX_VALUES = 10_000  # nested minItems multiply: a schema must not make a reply huge
MERGED = ("$ref", "allOf", "anyOf", "oneOf")
BRANCHED = "$branched"  # set in a flattened schema that had anyOf/oneOf: no sure violation
FORMATS = {
    "date-time": "2024-01-01T00:00:00Z",
    "date": "2024-01-01",
    "time": "00:00:00Z",
    "email": "mock@example.com",
    "uri": "https://example.com/",
    "uuid": "00000000-0000-4000-8000-000000000000",
}
INFERRED = (  # the type a schema without `type` is answered with, by its keywords
    ("object", ("properties", "required", "additionalProperties", "minProperties")),
    ("array", ("items", "prefixItems", "contains", "minItems", "maxItems")),
    ("number", ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf")),
)
# One value of each JSON type, to answer a schema with a type it does not allow.
WRONG_TYPES: tuple[Any, ...] = (["unexpected"], "unexpected", {"unexpected": True}, 0.5, True, None)


def conforming(schema: object, key: bytes, words: tuple[str, ...]) -> Any:
    """A small instance of `schema`; strings are made of `words`, drawn by `key`."""
    return _Builder(schema, key, words).value(schema, 0)


def violating(schema: object, key: bytes, words: tuple[str, ...]) -> Any:
    """JSON that `schema` refuses: a conforming instance with its first required
    property broken (so the violation has a path), else a wrong type, an unlisted enum
    value, a missing required property. A schema that refuses nothing gets a string."""
    builder = _Builder(schema, key, words)
    broken, value = builder.broken(schema, 0)
    return value if broken else "schema_violation"


class _Builder:
    def __init__(self, root: object, key: bytes, words: tuple[str, ...]) -> None:
        self.root, self.key, self.words = root, key, words
        self.draws = 0
        self.pool = b""
        self.values = 0

    def draw(self) -> int:
        """The next number of the request's own sequence: stable per request. Two bytes
        each, from one 64-byte digest per 32 draws."""
        position = self.draws % 32
        if position == 0:
            data = self.key + (self.draws // 32).to_bytes(4, "big")
            self.pool = hashlib.blake2b(data).digest()
        self.draws += 1
        return int.from_bytes(self.pool[2 * position : 2 * position + 2], "big")

    # --- conforming ---------------------------------------------------------------------

    def value(self, schema: object, depth: int) -> Any:
        self.values += 1
        if depth > MAX_DEPTH or self.values > MAX_VALUES:
            return None
        flat = self.flatten(schema)
        if "const" in flat:
            return flat["const"]
        types = _types(flat)
        enum = flat.get("enum")
        if isinstance(enum, list) and enum:
            fitting = [v for v in enum if not types or _fits(v, types)] or enum
            return fitting[self.draw() % len(fitting)]
        kind = _chosen_type(flat, types)
        if kind == "object":
            return self.an_object(flat, depth)
        if kind == "array":
            return self.an_array(flat, depth)
        if kind in ("number", "integer"):
            return self.number(flat, kind == "integer")
        if kind == "boolean":
            return bool(self.draw() & 1)
        if kind == "null":
            return None
        return self.string(flat)

    def an_object(self, flat: dict[str, Any], depth: int) -> dict[str, Any]:
        properties = _dict(flat.get("properties"))
        required = [name for name in _list(flat.get("required")) if isinstance(name, str)]
        out: dict[str, Any] = {}
        for name in dict.fromkeys(required):
            out[name] = self.value(self.property_schema(flat, name), depth + 1)
        wanted = min(_count(flat.get("minProperties")), MAX_COUNT)
        extra = (name for name in properties if name not in out)
        while len(out) < wanted:
            name = next(extra, f"extra_{len(out)}")
            if name not in properties and flat.get("additionalProperties") is False:
                break
            out[name] = self.value(self.property_schema(flat, name), depth + 1)
        return out

    def property_schema(self, flat: dict[str, Any], name: str) -> object:
        properties = _dict(flat.get("properties"))
        if name in properties:
            return properties[name]
        for pattern, schema in _dict(flat.get("patternProperties")).items():
            if _searches(pattern, name):
                return schema
        additional = flat.get("additionalProperties", True)
        return additional if isinstance(additional, dict) else True

    def an_array(self, flat: dict[str, Any], depth: int) -> list[Any]:
        items = flat.get("items")
        prefix = _list(flat.get("prefixItems") or (items if isinstance(items, list) else []))
        rest = items if isinstance(items, dict | bool) else flat.get("additionalItems", True)
        contains = flat.get("contains")
        wanted = _count(flat.get("minItems"))
        if contains is not None:
            wanted = max(wanted, _count(flat.get("minContains"), 1))
        out: list[Any] = []
        for index in range(min(wanted, MAX_COUNT)):
            schema = prefix[index] if index < len(prefix) else rest
            if contains is not None and index >= len(prefix):
                schema = {"allOf": [schema, contains]}
            out.append(self.unique(schema, depth + 1, out, flat.get("uniqueItems") is True))
        return out

    def unique(self, schema: object, depth: int, taken: list[Any], unique: bool) -> Any:
        """An item, drawn again (a few times) while it equals one already in the array."""
        value = self.value(schema, depth)
        for _ in range(8):
            if not unique or value not in taken:
                break
            value = self.value(schema, depth)
        return value

    def string(self, flat: dict[str, Any]) -> str:
        known = flat.get("format")
        text = FORMATS.get(known, "") if isinstance(known, str) else ""
        text = text or " ".join(self.words[self.draw() % len(self.words)] for _ in range(2))
        shortest = min(_count(flat.get("minLength")), 4096)
        while len(text) < shortest:
            text += " " + self.words[self.draw() % len(self.words)]
        longest = flat.get("maxLength")
        if isinstance(longest, int) and not isinstance(longest, bool):
            text = text[: max(longest, shortest)]
        return text

    def number(self, flat: dict[str, Any], integer: bool) -> int | float:
        value = self.unclamped_number(flat, integer)
        if isinstance(value, int) and not -(2**63) <= value < 2**63:
            return float(value)  # what JSON writers can hold; jsonschema still calls it integral
        return value

    def unclamped_number(self, flat: dict[str, Any], integer: bool) -> int | float:
        low, low_open = _bound(flat, "minimum", "exclusiveMinimum")
        high, high_open = _bound(flat, "maximum", "exclusiveMaximum")
        if low is None:
            low, low_open = (high - 100 if high is not None else 0.0), False
        if high is None:
            high, high_open = low + 100, False
        step = flat.get("multipleOf")
        if isinstance(step, int | float) and not isinstance(step, bool) and step > 0:
            return _multiple((low, low_open, high, high_open), step, integer, self.draw())
        if integer:
            first = math.floor(low) + 1 if low_open else math.ceil(low)
            last = math.ceil(high) - 1 if high_open else math.floor(high)
            return first + self.draw() % (last - first + 1) if last >= first else first
        share = (self.draw() % 99 + 1) / 100  # strictly inside, whichever end is open
        value = round(low + (high - low) * share, 6)
        return value if low < value < high or low == high else (low + high) / 2

    # --- violating ----------------------------------------------------------------------

    def broken(self, schema: object, depth: int) -> tuple[bool, Any]:
        """(True, a value `schema` refuses) or (False, None) when it refuses nothing."""
        flat = self.flatten(schema)
        if depth > MAX_DEPTH or BRANCHED in flat:  # another branch may take what this refuses
            return False, None
        types = _types(flat)
        required = [name for name in _list(flat.get("required")) if isinstance(name, str)]
        if types == {"object"} and required:
            value = self.an_object(flat, depth)
            for name in required:
                broken, bad = self.broken(self.property_schema(flat, name), depth + 1)
                if broken:
                    value[name] = bad
                    return True, value
        if "const" in flat:
            return True, {"not": flat["const"]}
        enum = flat.get("enum")
        if isinstance(enum, list):
            unlisted = "unlisted"
            while unlisted in enum:
                unlisted += "!"
            return True, unlisted
        for value in WRONG_TYPES:
            if types and not _fits(value, types):
                return True, value
        if required:
            return True, {}
        return False, None

    # --- schemas ------------------------------------------------------------------------

    def flatten(self, schema: object) -> dict[str, Any]:
        """`schema` with its `$ref` targets, `allOf` members and first `anyOf`/`oneOf`
        branch merged in: one dict of keywords, the outer schema's winning. Read only."""
        if isinstance(schema, dict) and not any(word in schema for word in MERGED):
            return schema  # the common case: nothing to merge
        out: dict[str, Any] = {}
        pending, merged = [schema], 0
        while pending and merged < 64:
            part = pending.pop(0)
            merged += 1
            if not isinstance(part, dict):
                continue
            if isinstance(part.get("$ref"), str):
                pending.append(self.resolve(part["$ref"]))
            pending += _list(part.get("allOf"))
            pending += _list(part.get("anyOf"))[:1] + _list(part.get("oneOf"))[:1]
            _merge(out, part)
        return out

    def resolve(self, ref: str) -> object:
        """A local `#/json/pointer`; anything else resolves to no constraint."""
        target: object = self.root
        if ref == "#":
            return target
        if not ref.startswith("#/"):
            return True
        for token in ref[2:].split("/"):
            key = unquote(token).replace("~1", "/").replace("~0", "~")
            if isinstance(target, dict) and key in target:
                target = target[key]
            elif isinstance(target, list) and key.isdigit() and int(key) < len(target):
                target = target[int(key)]
            else:
                return True
        return target


def _merge(out: dict[str, Any], part: dict[str, Any]) -> None:
    for word, value in part.items():
        if word in ("anyOf", "oneOf"):
            out[BRANCHED] = True
        if word in MERGED:
            continue
        if word == "required":
            out["required"] = [*_list(out.get("required")), *_list(value)]
        elif word == "properties" and isinstance(value, dict):
            out["properties"] = {**value, **_dict(out.get("properties"))}
        elif word == "type" and "type" in out:
            both = _types(out) & _types(part)
            out["type"] = sorted(both) if both else out["type"]
        else:
            out.setdefault(word, value)


def _types(flat: dict[str, Any]) -> set[str]:
    kind = flat.get("type")
    if isinstance(kind, str):
        return {kind}
    return {k for k in kind if isinstance(k, str)} if isinstance(kind, list) else set()


def _chosen_type(flat: dict[str, Any], types: set[str]) -> str:
    """The declared type to answer with (any but null first), else one inferred."""
    declared = flat.get("type")
    if isinstance(declared, str):
        return declared
    order = _list(declared)
    for kind in [*(k for k in order if k != "null"), *order]:
        if isinstance(kind, str):
            return kind
    for kind, keywords in INFERRED:
        if any(word in flat for word in keywords):
            return kind
    return "string"


def _fits(value: object, types: set[str]) -> bool:
    kind = _json_type(value)
    return kind in types or (kind == "integer" and "number" in types)


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "integer" if value.is_integer() else "number"
    if isinstance(value, list):
        return "array"
    return "object" if isinstance(value, dict) else "string"


def _bound(flat: dict[str, Any], inclusive: str, exclusive: str) -> tuple[float | None, bool]:
    """(bound, open?) from `minimum` + `exclusiveMinimum`, either draft style."""
    closed, opened = flat.get(inclusive), flat.get(exclusive)
    closed = closed if _is_number(closed) else None
    if isinstance(opened, bool):  # draft 4: a flag on `minimum`
        return closed, opened and closed is not None
    if not _is_number(opened):
        return closed, False
    if closed is None or (opened >= closed if inclusive == "minimum" else opened <= closed):
        return opened, True
    return closed, False


def _multiple(
    bounds: tuple[float, bool, float, bool], step: float, integer: bool, draw: int
) -> int | float:
    """A multiple of `step` within `(low, low_open, high, high_open)`, as jsonschema
    checks it, else the first multiple past `low`."""
    low, low_open, high, high_open = bounds
    if not math.isfinite(low / step):
        return low  # no multiple a float can hold: answer something
    first = math.ceil(low / step)
    exact = [(first + offset) * step for offset in range(-1, 12)]
    candidates = [*exact, *(round(value, 12) for value in exact)]  # 0.1 * 3 is not 0.3
    fitting = [
        value
        for value in candidates
        if (low < value if low_open else low <= value)
        and (value < high if high_open else value <= high)
        and (value / step).is_integer()
        and (not integer or float(value).is_integer())
    ]
    value = fitting[draw % len(fitting)] if fitting else first * step
    return int(value) if integer or float(value).is_integer() else value


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _count(value: object, default: int = 0) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return default


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _searches(pattern: str, name: str) -> bool:
    try:
        return re.search(pattern, name) is not None
    except re.error:
        return False
