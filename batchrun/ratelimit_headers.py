"""What a server's rate-limit headers say: limits and remaining budgets (Mistral and
OpenAI names), and whether a 429 means an allowance is empty. Header values are untrusted."""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from .limits import Rate

__all__ = ["Allowance", "RateObservation", "ZeroAllowance", "parse_rate_headers", "zero_allowance"]

T = TypeVar("T")
PREFIX = "x-ratelimit-"
MAX_COUNT = 10**15  # more tokens than any plan sells: a value past it is garbage
MAX_RESET_S = 31 * 24 * 3600.0
MAX_VALUE_CHARS = 64  # also keeps float() away from numbers too long to be meant

_COUNT = re.compile(r"\s*([0-9]{1,16})\s*", re.ASCII)
_DURATION = re.compile(r"\s*((?:[0-9]{1,12}(?:\.[0-9]{1,9})?(?:h|ms|us|µs|ns|m|s))+)\s*")
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(h|ms|us|µs|ns|m|s)")
_SECONDS = re.compile(r"\s*([0-9]{1,12}(?:\.[0-9]{1,9})?)\s*", re.ASCII)
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}

# Each field, with the headers that carry it, first found wins: Mistral's names, then
# OpenAI's (whose request and token limits are per minute too).
_COUNTS = {
    "requests_limit": ("x-ratelimit-limit-req-minute", "x-ratelimit-limit-requests"),
    "requests_remaining": ("x-ratelimit-remaining-req-minute", "x-ratelimit-remaining-requests"),
    "tokens_limit": ("x-ratelimit-limit-tokens-minute", "x-ratelimit-limit-tokens"),
    "tokens_remaining": ("x-ratelimit-remaining-tokens-minute", "x-ratelimit-remaining-tokens"),
    "month_limit": ("x-ratelimit-limit-tokens-month",),
    "month_remaining": ("x-ratelimit-remaining-tokens-month",),
    "query_cost": ("x-ratelimit-tokens-query-cost",),
}
_DURATIONS = {
    "requests_reset_s": ("x-ratelimit-reset-requests",),
    "tokens_reset_s": ("x-ratelimit-reset-tokens",),
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
    values: dict[str, int | float] = {}
    for field, names in _COUNTS.items():
        count = _first(found, names, _count)
        if count is not None:
            values[field] = count
    for field, names in _DURATIONS.items():
        seconds = _first(found, names, _duration)
        if seconds is not None:
            values[field] = seconds
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
        if _count(found.get(header)) == 0:
            return ZeroAllowance(allowance, header)
    return None


def _rate_headers(headers: Mapping[str, str]) -> dict[str, str]:
    # Names are matched case-insensitively whatever the mapping; the last duplicate wins.
    found = {}
    for name, value in headers.items():
        if isinstance(name, str) and isinstance(value, str) and name[:12].lower() == PREFIX:
            found[name.lower()] = value
    return found


def _first(
    found: dict[str, str], names: tuple[str, ...], parse: Callable[[str | None], T | None]
) -> T | None:
    for name in names:
        value = parse(found.get(name))
        if value is not None:
            return value
    return None


def _count(value: str | None) -> int | None:
    if value is None or len(value) > MAX_VALUE_CHARS:
        return None
    match = _COUNT.fullmatch(value)
    if match is None:
        return None
    count = int(match[1])
    return count if count <= MAX_COUNT else None


def _duration(value: str | None) -> float | None:
    """Seconds in `1s`, `6m0s`, `20ms`, `1h2m3.5s` (Go's duration format) or a bare number."""
    if value is None or len(value) > MAX_VALUE_CHARS:
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
