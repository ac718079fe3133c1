"""What a server's rate-limit headers say: limits and remaining budgets (Mistral and
OpenAI names), and whether a 429 means an allowance is empty. Header values are untrusted."""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from .limits import Rate

__all__ = ["Allowance", "RateObservation", "ZeroAllowance", "parse_rate_headers", "zero_allowance"]

PREFIX = "x-ratelimit-"
MAX_COUNT = 10**15  # more tokens than any plan sells: a value past it is garbage
MAX_RESET_S = 31 * 24 * 3600.0
MAX_VALUE_CHARS = 64  # also keeps float() away from numbers too long to be meant

_DURATION = re.compile(r"\s*((?:[0-9]{1,12}(?:\.[0-9]{1,9})?(?:h|ms|us|µs|ns|m|s))+)\s*")
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(h|ms|us|µs|ns|m|s)")
_SECONDS = re.compile(r"\s*([0-9]{1,12}(?:\.[0-9]{1,9})?)\s*", re.ASCII)
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


def _count(value: str) -> int | None:
    digits = value.strip()
    # isdigit() alone would take other scripts' digits and superscripts: ASCII only.
    if not (0 < len(digits) <= 16 and digits.isascii() and digits.isdigit()):
        return None
    count = int(digits)
    return count if count <= MAX_COUNT else None


def _duration(value: str) -> float | None:
    """Seconds in `1s`, `6m0s`, `20ms`, `1h2m3.5s` (Go's duration format) or a bare number."""
    if len(value) > MAX_VALUE_CHARS:
        return None
    if match := _SECONDS.fullmatch(value):
        seconds = float(match[1])
    elif match := _DURATION.fullmatch(value):
        seconds = sum(
            float(number) * _UNIT_SECONDS[unit] for number, unit in _DURATION_PART.findall(match[1])
        )
    else:
        return None
    return seconds if seconds <= MAX_RESET_S else None


# header -> (field, parser, rank). Mistral's names rank first, then OpenAI's (whose
# request and token limits are per minute too); the best-ranked usable value wins.
_FIELDS: dict[str, tuple[str, Callable[[str], float | None], int]] = {
    "x-ratelimit-limit-req-minute": ("requests_limit", _count, 0),
    "x-ratelimit-limit-requests": ("requests_limit", _count, 1),
    "x-ratelimit-remaining-req-minute": ("requests_remaining", _count, 0),
    "x-ratelimit-remaining-requests": ("requests_remaining", _count, 1),
    "x-ratelimit-limit-tokens-minute": ("tokens_limit", _count, 0),
    "x-ratelimit-limit-tokens": ("tokens_limit", _count, 1),
    "x-ratelimit-remaining-tokens-minute": ("tokens_remaining", _count, 0),
    "x-ratelimit-remaining-tokens": ("tokens_remaining", _count, 1),
    "x-ratelimit-limit-tokens-month": ("month_limit", _count, 0),
    "x-ratelimit-remaining-tokens-month": ("month_remaining", _count, 0),
    "x-ratelimit-tokens-query-cost": ("query_cost", _count, 0),
    "x-ratelimit-reset-requests": ("requests_reset_s", _duration, 0),
    "x-ratelimit-reset-tokens": ("tokens_reset_s", _duration, 0),
}


@dataclass(frozen=True, slots=True)
class RateObservation:
    """One reply's view of the organisation's limits; None where it said nothing usable."""

    requests_limit: int | None = None  # per minute
    requests_remaining: int | None = None
    tokens_limit: int | None = None  # per minute
    tokens_remaining: int | None = None
    month_limit: int | None = None
    month_remaining: int | None = None
    query_cost: int | None = None  # tokens this request was charged
    requests_reset_s: float | None = None
    tokens_reset_s: float | None = None

    def rates(self) -> tuple[Rate, ...]:
        """The per-minute limits to pace by (`Pacer.set_rate`); a zero limit is not a
        rate but an empty allowance (`zero_allowance`)."""
        rates = []
        if self.requests_limit:
            rates.append(Rate("requests", self.requests_limit, 60.0))
        if self.tokens_limit:
            rates.append(Rate("tokens", self.tokens_limit, 60.0))
        return tuple(rates)


def parse_rate_headers(headers: Mapping[str, str]) -> RateObservation | None:
    """The observation in `headers`, or None when there is no rate-limit header at all
    (the common case for local servers, kept cheap). Never raises: a value that is not
    a plain count or duration, or is out of bounds, is ignored."""
    found = _rate_headers(headers)
    if not found:
        return None
    values: dict[str, float] = {}
    ranks: dict[str, int] = {}
    for name, raw in found.items():
        spec = _FIELDS.get(name)
        if spec is None:
            continue
        field, parse, rank = spec
        value = parse(raw)
        if value is not None and rank < ranks.get(field, rank + 1):
            values[field] = value
            ranks[field] = rank
    return RateObservation(**values)  # type: ignore[arg-type]


class Allowance(enum.Enum):
    REQUESTS_PER_MINUTE = "requests per minute"
    TOKENS_PER_MINUTE = "tokens per minute"
    TOKENS_PER_MONTH = "tokens per month"


@dataclass(frozen=True, slots=True)
class ZeroAllowance:
    """A 429 that no waiting will cure: the allowance named is zero or used up."""

    allowance: Allowance
    header: str

    @property
    def message(self) -> str:
        return f"the {self.allowance.value} allowance is empty ({self.header}: 0)"


# A remaining count of zero per minute is ordinary rate limiting (it refills); a zero
# limit, or a spent monthly budget, is not.
_ZERO_RULES = (
    (Allowance.REQUESTS_PER_MINUTE, "x-ratelimit-limit-req-minute"),
    (Allowance.REQUESTS_PER_MINUTE, "x-ratelimit-limit-requests"),
    (Allowance.TOKENS_PER_MINUTE, "x-ratelimit-limit-tokens-minute"),
    (Allowance.TOKENS_PER_MINUTE, "x-ratelimit-limit-tokens"),
    (Allowance.TOKENS_PER_MONTH, "x-ratelimit-limit-tokens-month"),
    (Allowance.TOKENS_PER_MONTH, "x-ratelimit-remaining-tokens-month"),
)


def zero_allowance(status: int, headers: Mapping[str, str]) -> ZeroAllowance | None:
    """Whether a reply says an allowance is empty. Decided on the status and headers
    only: the error body's shape has changed more than once."""
    if status != 429:
        return None
    found = _rate_headers(headers)
    for allowance, header in _ZERO_RULES:
        value = found.get(header)
        if value is not None and _count(value) == 0:
            return ZeroAllowance(allowance, header)
    return None


def _rate_headers(headers: Mapping[str, str]) -> dict[str, str]:
    # Names are matched case-insensitively whatever the mapping; the last duplicate wins.
    found = {}
    for name, value in headers.items():
        if isinstance(name, str) and isinstance(value, str) and name[:12].lower() == PREFIX:
            found[name.lower()] = value
    return found
