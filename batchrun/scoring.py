"""Eval scorers: a spec string (`exact`, `numeric:0.5`, ...) parsed once into a scorer that
turns one line's output and expected answer into 0 or 1. Pure: no I/O, nothing raises.

What each scorer compares (a failed request, output None, scores 0 for every scorer):
- The expected value is a row field, so any JSON value. Text scorers compare with its
  text: a string as it is, anything else its compact JSON text (42 -> "42", null -> "null").
- `exact`: the output equals that text, character for character (no stripping).
- `normalized`: both equal after `normalize`: NFKC, casefold, every Unicode punctuation
  character (categories P*) deleted, whitespace runs made one space, ends stripped.
  Symbols (`$`, `+`, `=`) are not punctuation and stay.
- `contains`: that text occurs in the output, case-sensitively; an empty expected text
  never passes (it would pass every output).
- `regex:PATTERN`: `re.search(PATTERN, output)` finds a match; the expected value is not
  used (a format check). Compiled once; inline flags such as `(?i)` work.
- `json_field:PATH`: the output parsed as JSON (as it stands: no code fences stripped;
  the record's `parsed` value when the run already parsed it), then PATH followed: dot
  separated, a segment of ASCII digits indexes a list, any segment is a key of an object
  (`label`, `a.b.0`); a key holding a dot cannot be named. The value found equals the
  expected one as JSON (1 == 1.0, true != 1, key order ignored), or, when either is a
  string, as text ("3" matches 3). Output that does not parse, or a missing PATH, is 0.
- `numeric[:TOLERANCE]`: the first number in the output (see `first_number`) is within
  TOLERANCE (default 0, inclusive) of the expected number, compared exactly in decimal
  (so 1.01 is within 0.01 of 1). An expected string must be one number in that syntax.
- `choice[:LABEL,LABEL,...]`: see `Choice`.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import MAX_EMAX, MIN_EMIN, Context, Decimal, DecimalException, localcontext
from typing import Protocol

import orjson

from .errors import ConfigError

__all__ = [
    "Choice",
    "Contains",
    "Exact",
    "JsonField",
    "Normalized",
    "Numeric",
    "Regex",
    "Scorer",
    "expected_text",
    "first_number",
    "normalize",
    "parse_scorer",
    "parse_scorers",
    "score_output",
]

# Unbounded exponents: a "1e999999999" in a reply must compare, not overflow.
DECIMAL = Context(prec=50, Emax=MAX_EMAX, Emin=MIN_EMIN)
# A sign belongs to a number only when not glued to a word ("GPT-4" is 4, "x = -4" is -4).
# Commas group thousands only in threes ("1,234,567.5"); any other comma ends the number.
# A leading point makes a fraction (".5") unless glued to a word ("No.12" is 12).
NUMBER = re.compile(
    r"(?:(?<![\w.,])([-+\u2212]))?"
    r"(\d{1,3}(?:,\d{3})+(?!\d)(?:\.\d+)?|\d+(?:\.\d+)?|(?<![\w.])\.\d+)"
    r"(?:[eE]([-+]?\d+))?"
)
# A standalone capital letter, or a lowercase one in brackets: "(B)", "B.", "**B**", "(b)".
LETTER = re.compile(r"(?<![\w'\u2019])([A-Z])(?![\w'\u2019])|[(\[]([a-z])[)\]]")
WORD = re.compile(r"\w+")
# "I" and "A" are words before they are options: they count only when marked like one.
MARK_BEFORE, MARK_AFTER = frozenset("([*:"), frozenset(")]*.:")
CACHED_CHARACTERS = 65_536  # bounds the punctuation table below: 64 K entries, ~5 MB
ONE_LETTER = re.compile(r"\W*([A-Za-z])\W*")


class PunctuationTable(dict[int, int | None]):
    """A `str.translate` table deleting Unicode punctuation (categories P*), filled as
    characters are met: once warm, a lookup runs at C dict speed, where asking
    `unicodedata.category` per character costs ten times more. Past CACHED_CHARACTERS
    entries a character is answered without being kept."""

    def __missing__(self, code: int) -> int | None:
        kept = None if unicodedata.category(chr(code))[0] == "P" else code
        if len(self) < CACHED_CHARACTERS:
            self[code] = kept
        return kept


PUNCTUATION = PunctuationTable()


class Scorer(Protocol):
    """One scorer: `name` is its spec as written, the key of the record's `score`."""

    @property
    def name(self) -> str: ...

    def score(self, output: str | None, parsed: object, expected: object) -> int:
        """1 when `output` passes against `expected`, else 0; never raises. `parsed` is
        the record's parsed output (structured output) or None; only json_field reads it."""
        ...


def parse_scorer(spec: str) -> Scorer:
    """The scorer a spec names; ConfigError naming the spec when it names none."""
    if not isinstance(spec, str):  # a job file's list may hold anything
        raise ConfigError(f"a scorer is a string such as 'exact', not {spec!r}")
    kind, colon, argument = spec.partition(":")
    build = KINDS.get(kind)
    if build is None:
        raise ConfigError(f"unknown scorer {spec!r}; one of {', '.join(SPECS)}")
    if colon and kind in NO_ARGUMENT:
        raise ConfigError(f"scorer {kind!r} takes no argument, not {spec!r}")
    if colon and not argument:
        raise ConfigError(f"scorer {spec!r}: nothing after the colon")
    if not colon and kind in NEEDS_ARGUMENT:
        raise ConfigError(f"scorer {kind!r} needs an argument: {kind}:{NEEDS_ARGUMENT[kind]}")
    return build(spec, argument)


def parse_scorers(specs: Sequence[str]) -> tuple[Scorer, ...]:
    """Every spec of an `[eval]` table's `scorers`, at least one, none twice."""
    if isinstance(specs, str):
        raise ConfigError(f"scorers is a list of scorers: [{specs!r}], not {specs!r}")
    if not specs:
        raise ConfigError("an eval needs at least one scorer")
    repeated = sorted({spec for spec in specs if specs.count(spec) > 1})
    if repeated:
        raise ConfigError(f"scorer listed twice: {', '.join(repeated)}")
    return tuple(map(parse_scorer, specs))


def score_output(
    scorers: Sequence[Scorer], output: str | None, parsed: object, expected: object
) -> dict[str, int]:
    """A record's `score`: {scorer name: 0 or 1}."""
    return {scorer.name: scorer.score(output, parsed, expected) for scorer in scorers}


def expected_text(expected: object) -> str | None:
    """What text scorers compare with: a string as it is, another JSON value its compact
    JSON text; None for a value orjson cannot write (nested past 255 levels, not JSON)."""
    if isinstance(expected, str):
        return expected
    try:
        return orjson.dumps(expected).decode()
    except orjson.JSONEncodeError:
        return None


def normalize(text: str) -> str:
    """Case, width, whitespace and punctuation folded; idempotent. NFKC runs again after
    the punctuation goes, since a mark can then meet its base and compose."""
    text = unicodedata.normalize("NFKC", text).casefold().translate(PUNCTUATION)
    if not text.isascii():
        text = unicodedata.normalize("NFKC", text)
    return " ".join(text.split())


def first_number(text: str) -> Decimal | None:
    """The first number in `text`: an optional sign (+, -, U+2212), digits (any script;
    commas only as thousands separators in groups of three), an optional `.` fraction
    and exponent: "about -1,234.5e2 units" -> -123450. None when there is none."""
    match = NUMBER.search(text if text.isascii() else unicodedata.normalize("NFKC", text))
    return None if match is None else _decimal(match)


def _decimal(match: re.Match[str]) -> Decimal | None:
    sign, digits, exponent = match.groups()
    text = digits.replace(",", "") + ("" if exponent is None else "e" + exponent)
    try:
        number = Decimal(text)
    except DecimalException:  # an exponent past what Decimal holds
        return None
    return number.copy_negate() if sign in ("-", "\u2212") else number


# --- the text scorers -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Exact:
    name: str = "exact"

    def score(self, output: str | None, parsed: object, expected: object) -> int:
        return int(output is not None and output == expected_text(expected))


@dataclass(frozen=True, slots=True)
class Normalized:
    name: str = "normalized"

    def score(self, output: str | None, parsed: object, expected: object) -> int:
        want = expected_text(expected)
        return int(output is not None and want is not None and normalize(output) == normalize(want))


@dataclass(frozen=True, slots=True)
class Contains:
    name: str = "contains"

    def score(self, output: str | None, parsed: object, expected: object) -> int:
        want = expected_text(expected)
        return int(output is not None and want is not None and want != "" and want in output)


@dataclass(frozen=True, slots=True)
class Regex:
    name: str
    pattern: re.Pattern[str]

    def score(self, output: str | None, parsed: object, expected: object) -> int:
        return int(output is not None and self.pattern.search(output) is not None)


def _regex(spec: str, pattern: str) -> Regex:
    try:
        return Regex(spec, re.compile(pattern))
    except (re.error, RecursionError, OverflowError) as exc:
        raise ConfigError(f"scorer {spec!r}: bad regular expression {pattern!r}: {exc}") from None


# --- json_field -------------------------------------------------------------------------------

NOT_FOUND = object()


@dataclass(frozen=True, slots=True)
class JsonField:
    name: str
    path: tuple[str, ...]

    def score(self, output: str | None, parsed: object, expected: object) -> int:
        if output is None:
            return 0
        if parsed is None:
            try:
                parsed = orjson.loads(output)
            except orjson.JSONDecodeError:
                return 0
        value = self.lookup(parsed)
        return int(value is not NOT_FOUND and _same(value, expected))

    def lookup(self, document: object) -> object:
        """The value at the path, or NOT_FOUND."""
        for segment in self.path:
            if isinstance(document, dict):
                document = document.get(segment, NOT_FOUND)
            elif isinstance(document, list) and segment.isascii() and segment.isdigit():
                position = int(segment)
                document = document[position] if position < len(document) else NOT_FOUND
            else:
                return NOT_FOUND
        return document


def _json_field(spec: str, path: str) -> JsonField:
    segments = tuple(path.split("."))
    if not all(segments):
        raise ConfigError(f"scorer {spec!r}: PATH is dot-separated keys or indices, like a.b.0")
    return JsonField(spec, segments)


def _same(value: object, expected: object) -> bool:
    if _json_equal(value, expected):
        return True
    if not (isinstance(value, str) or isinstance(expected, str)):
        return False
    text = expected_text(value)
    return text is not None and text == expected_text(expected)


def _json_equal(left: object, right: object) -> bool:
    """Equality of JSON values: numbers by value, booleans apart from numbers. A loop, not
    recursion: a reply nested 1,000 deep must not reach the recursion limit."""
    pending = [(left, right)]
    while pending:
        a, b = pending.pop()
        if isinstance(a, dict) and isinstance(b, dict):
            if a.keys() != b.keys():
                return False
            pending += [(a[key], b[key]) for key in a]
        elif isinstance(a, list) and isinstance(b, list):
            if len(a) != len(b):
                return False
            pending += zip(a, b, strict=True)
        elif not _scalar_equal(a, b):
            return False
    return True


def _scalar_equal(a: object, b: object) -> bool:
    numbers = (int, float)
    if isinstance(a, numbers) and isinstance(b, numbers):
        return isinstance(a, bool) == isinstance(b, bool) and a == b
    return type(a) is type(b) and a == b


# --- numeric ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Numeric:
    name: str
    tolerance: Decimal

    def score(self, output: str | None, parsed: object, expected: object) -> int:
        want = _expected_number(expected)
        got = None if output is None or want is None else first_number(output)
        if got is None or want is None:
            return 0
        try:
            with localcontext(DECIMAL):
                return int(abs(got - want) <= self.tolerance)
        except DecimalException:  # infinities from a huge exponent
            return 0


def _expected_number(expected: object) -> Decimal | None:
    if isinstance(expected, bool):
        return None
    if isinstance(expected, int):
        return Decimal(expected)
    if isinstance(expected, float):
        return Decimal(repr(expected)) if expected - expected == 0 else None  # finite
    if isinstance(expected, str):
        match = NUMBER.fullmatch(expected.strip())
        return None if match is None else _decimal(match)
    return None


def _numeric(spec: str, tolerance: str) -> Numeric:
    try:
        value = Decimal(tolerance or "0")
    except DecimalException:
        value = Decimal("NaN")
    if not value.is_finite() or value < 0:
        raise ConfigError(f"scorer {spec!r}: TOLERANCE must be a number >= 0, like numeric:0.5")
    return Numeric(spec, value)


# --- choice -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Choice:
    """The output's first option equals the expected one.

    Without labels (`choice`), an expected value that is one letter (after dropping
    punctuation: "B", "b", "(B)") is an option letter A-Z. The output's option is then its
    only letter when it holds just one ("b", "(b)."), else the first standalone capital
    letter (no letter, digit or apostrophe either side) or bracketed lowercase one: "The
    answer is (B)." -> B. "I" and "A" are words first, so they count only when marked:
    after `(`, `[`, `*` or `:`, or before `)`, `]`, `*`, `.`, `:` or the end ("Answer: A",
    "A)"), never in "I think it is B" or "A fair guess: C". Any other expected value is a
    label, passing when the output starts with it.

    With labels (`choice:positive,negative,neutral`), the output's option is the label
    found first anywhere in it (the longest one when two start at the same word), and
    must be the expected label. Labels and output are compared as sequences of words
    (runs of letters, digits and `_`, after NFKC and casefold), so "Positive!" matches
    `positive`; the expected value must be one of the labels to pass."""

    name: str = "choice"
    labels: tuple[tuple[str, ...], ...] = ()

    def score(self, output: str | None, parsed: object, expected: object) -> int:
        want = expected_text(expected)
        if output is None or want is None:
            return 0
        target = _words(want)
        if self.labels:
            return int(
                target in self.labels and _first_label(_words(output), self.labels) == target
            )
        if len(target) == 1 and len(target[0]) == 1 and "a" <= target[0] <= "z":
            return int(_first_letter(output) == target[0].upper())
        return int(bool(target) and _words(output)[: len(target)] == target)


def _choice(spec: str, labels: str) -> Choice:
    if not labels:
        return Choice(spec)
    words = [_words(label) for label in labels.split(",")]
    if not all(words) or len(set(words)) < len(words):
        raise ConfigError(f"scorer {spec!r}: labels must be distinct and not empty: choice:a,b,c")
    return Choice(spec, tuple(sorted(words, key=len, reverse=True)))


def _words(text: str) -> tuple[str, ...]:
    return tuple(WORD.findall(unicodedata.normalize("NFKC", text).casefold()))


def _first_label(
    words: tuple[str, ...], labels: tuple[tuple[str, ...], ...]
) -> tuple[str, ...] | None:
    """The label starting earliest in `words`; `labels` come longest first."""
    for start in range(len(words)):
        for label in labels:
            if words[start : start + len(label)] == label:
                return label
    return None


def _first_letter(output: str) -> str | None:
    text = unicodedata.normalize("NFKC", output)
    only = ONE_LETTER.fullmatch(text)
    if only is not None:
        return only[1].upper()
    for match in LETTER.finditer(text):
        capital, bracketed = match.groups()
        if bracketed is not None:
            return bracketed.upper()
        if capital not in "AI" or _marked(text, match.start(), match.end()):
            return capital
    return None


def _marked(text: str, start: int, end: int) -> bool:
    """Walks only the whitespace next to the letter: slicing the rest of a long output for
    each "A" in it would make one reply cost quadratic time."""
    while start > 0 and text[start - 1].isspace():
        start -= 1
    while end < len(text) and text[end].isspace():
        end += 1
    return (
        (start > 0 and text[start - 1] in MARK_BEFORE)
        or end == len(text)
        or (text[end] in MARK_AFTER)
    )


# --- the spec table ---------------------------------------------------------------------------

KINDS: dict[str, Callable[[str, str], Scorer]] = {
    "exact": lambda spec, _: Exact(spec),
    "normalized": lambda spec, _: Normalized(spec),
    "contains": lambda spec, _: Contains(spec),
    "regex": _regex,
    "json_field": _json_field,
    "numeric": _numeric,
    "choice": _choice,
}
SPECS = (
    *("exact", "normalized", "contains", "regex:PATTERN", "json_field:PATH"),
    *("numeric[:TOLERANCE]", "choice[:LABEL,...]"),
)
NO_ARGUMENT = frozenset({"exact", "normalized", "contains"})
NEEDS_ARGUMENT = {"regex": "PATTERN", "json_field": "PATH"}
