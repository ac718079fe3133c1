"""Pacing under request and token rates (exact windows, smooth bursts) and a request's
token estimate: flow control's pure core, with time passed in as a clock."""

from __future__ import annotations

import bisect
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "CHARS_PER_TOKEN",
    "DEFAULT_MAX_TOKENS",
    "TOKENS_PER_MESSAGE",
    "Pacer",
    "Rate",
    "Reservation",
    "Unit",
    "estimate_prompt_tokens",
    "estimate_tokens",
    "max_completion_tokens",
]

Clock = Callable[[], float]
Unit = Literal["requests", "tokens"]

# Measured against mistral-common's tekken tokenizer on jobs/demo*.jsonl (290 bodies):
# chars/4 + 4 per message is within -9 %..+34 % of the exact count (+17 % in total).
# Over-estimating is the safe side: settle() gives the surplus back when usage arrives.
CHARS_PER_TOKEN = 4.0
TOKENS_PER_MESSAGE = 4  # role and control tokens around each message
# A body without max_tokens may generate up to the model's context; reserving that would
# stall the token window, and the reservation is corrected on reply anyway.
DEFAULT_MAX_TOKENS = 1024
# The bucket's time sums float steps (0.1 s ten times is not 1.0 s); without slack the
# tenth request of a ten-per-second burst would wait 1e-16 s.
_ROUNDING = 1e-9
HISTORY_S = 60.0  # bookings kept for limits learned later: the longest window named


def estimate_tokens(body: Mapping[str, Any]) -> int:
    """Tokens a request may cost, before sending: its prompt (message text, tool calls,
    tool definitions) at CHARS_PER_TOKEN, plus the completion it may generate."""
    return estimate_prompt_tokens(body) + max_completion_tokens(body)


def estimate_prompt_tokens(body: Mapping[str, Any]) -> int:
    """The prompt's tokens, estimated: text at CHARS_PER_TOKEN, TOKENS_PER_MESSAGE each."""
    chars = 0
    messages = body.get("messages")
    count = 0
    if isinstance(messages, list):
        count = len(messages)
        for message in messages:
            if isinstance(message, dict):
                chars += _content_chars(message.get("content"))
                chars += _text_chars(message.get("tool_calls"))
    chars += _text_chars(body.get("tools"))
    return math.ceil(chars / CHARS_PER_TOKEN) + TOKENS_PER_MESSAGE * count


def max_completion_tokens(body: Mapping[str, Any]) -> int:
    """The completion tokens a request allows (`max_tokens`), DEFAULT_MAX_TOKENS if none."""
    completion = body.get("max_tokens", body.get("max_completion_tokens"))
    if not isinstance(completion, int) or isinstance(completion, bool) or completion < 0:
        return DEFAULT_MAX_TOKENS
    return completion


def _content_chars(content: object) -> int:
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):  # chunks: only text costs tokens we can count here
        return sum(
            len(chunk["text"])
            for chunk in content
            if isinstance(chunk, dict) and isinstance(chunk.get("text"), str)
        )
    return 0


def _text_chars(value: object) -> int:
    """Characters of the strings (keys too) in a JSON value: what a tokenizer sees of a
    tool definition or call, give or take punctuation. A loop, not recursion, and no
    serialiser: the value is untrusted (any depth, integers of any size)."""
    chars = 0
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            chars += len(item)
        elif isinstance(item, dict):
            chars += sum(len(key) for key in item if isinstance(key, str))
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return chars


@dataclass(frozen=True, slots=True)
class Rate:
    """At most `amount` requests (or tokens) in any window of `window` seconds."""

    unit: Unit
    amount: float
    window: float

    def __post_init__(self) -> None:
        if not (self.amount > 0 and math.isfinite(self.amount)):
            raise ValueError(f"rate amount must be positive and finite, not {self.amount!r}")
        if not (self.window > 0 and math.isfinite(self.window)):
            raise ValueError(f"rate window must be positive and finite, not {self.window!r}")


class _History:
    """Every request booked in the last `horizon` seconds: its time and its tokens, in
    time order. Shared by all limits, so a limit learned mid-run (from headers) counts
    what was sent before it was known. Absolute positions (`base` + list index) stay
    valid while old entries are dropped."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.tokens: list[float] = []
        self.base = 0
        self.horizon = HISTORY_S

    def append(self, at: float, tokens: float) -> int:
        self.times.append(at)
        self.tokens.append(tokens)
        return self.base + len(self.times) - 1

    def first_after(self, t: float) -> int:
        return self.base + bisect.bisect_right(self.times, t)

    def forget_before(self, t: float) -> None:
        # Compact only once half the list is stale: amortised O(1) per request.
        stale = bisect.bisect_right(self.times, t)
        if stale >= 64 and 2 * stale >= len(self.times):
            del self.times[:stale], self.tokens[:stale]
            self.base += stale


class _Limit:
    """One Rate enforced two ways. Its window over the shared history makes the rule
    exact: a token bucket alone lets bucket + rate * window through in one window. The
    bucket (GCRA form: a theoretical arrival time) keeps pacing smooth, so a minute's
    budget is spread over the minute instead of spent at t = 0."""

    def __init__(self, rate: Rate, burst_seconds: float, history: _History, now: float) -> None:
        self.set_rate(rate, burst_seconds)
        self.start = history.first_after(now - rate.window)  # first entry in the window
        offset = self.start - history.base
        in_window = history.tokens[offset:]
        self.total = float(len(in_window) if self.counts_requests else sum(in_window))
        self.tat = -math.inf  # when the bucket is empty again
        # A limit learned mid-run starts with the bucket those sends would have left,
        # not a full one: else its first second could add a burst to what just went.
        for at, tokens in zip(history.times[offset:], in_window, strict=True):
            self._drain_bucket(at, tokens)

    def set_rate(self, rate: Rate, burst_seconds: float) -> None:
        # The window is kept: what was sent still counts against a lowered limit.
        self.rate = rate
        self.counts_requests = rate.unit == "requests"
        self.per_second = rate.amount / rate.window
        self.burst = min(rate.amount, max(1.0, self.per_second * burst_seconds))

    def earliest(self, tokens: float, t: float, history: _History) -> float:
        """The earliest time >= t at which the request fits the bucket and the window.
        Bookings are first come, first served (t never goes back), so entries that have
        left the window at t are left behind for good."""
        # Larger than a whole window: it waits for an empty window and goes alone.
        cost = 1.0 if self.counts_requests else min(tokens, self.rate.amount)
        ready = self.tat + (min(cost, self.burst) - self.burst) / self.per_second
        if ready > t + _ROUNDING:
            t = ready
        window = self.rate.window
        excess = self.total + cost - self.rate.amount
        times, costs, base = history.times, history.tokens, history.base
        start, end = self.start, base + len(times)
        while start < end:
            sent = times[start - base]
            if sent > t - window and excess <= 0:
                break
            gone = 1.0 if self.counts_requests else costs[start - base]
            self.total -= gone
            excess -= gone
            t = max(t, sent + window)
            start += 1
        self.start = start
        return t

    def admit(self, at: float, tokens: float) -> None:
        self.total += 1.0 if self.counts_requests else tokens
        self._drain_bucket(at, tokens)

    def _drain_bucket(self, at: float, tokens: float) -> None:
        cost = 1.0 if self.counts_requests else min(tokens, self.rate.amount)
        self.tat = max(self.tat, at) + cost / self.per_second

    def settle(self, estimated: float, actual: float) -> None:
        amount = self.rate.amount
        self.total += actual - estimated
        # The bucket is corrected too; it never grants more than `burst` however far
        # back this moves it, since admit() starts from max(tat, now).
        self.tat += (min(actual, amount) - min(estimated, amount)) / self.per_second


@dataclass(slots=True)  # not frozen: built once per request, and frozen costs ~1 us
class Reservation:
    """A slot granted by `Pacer.reserve`: send at `at` (on the pacer's clock), that is
    after sleeping `delay` seconds; keep it to `settle` the token count later."""

    at: float
    delay: float
    tokens: int
    position: int  # in the pacer's history


class Pacer:
    """Grants send times under every configured Rate, first come first served.

    A reservation is booked at once (in the future if need be), so concurrent callers are
    spread out instead of all passing when capacity returns. Token costs are estimates;
    `settle` books the real usage when the reply arrives. The last minute of bookings is
    kept even with no rate set, for the rates learned later."""

    def __init__(
        self,
        rates: Iterable[Rate] = (),
        *,
        clock: Clock = time.monotonic,
        burst_seconds: float = 1.0,
    ) -> None:
        self._clock = clock
        self._burst_seconds = burst_seconds
        self._limits: dict[tuple[Unit, float], _Limit] = {}
        self._history = _History()
        self._last = -math.inf  # latest time booked: first come, first served
        for rate in rates:
            self.set_rate(rate)

    @property
    def rates(self) -> tuple[Rate, ...]:
        return tuple(limit.rate for limit in self._limits.values())

    def set_rate(self, rate: Rate) -> None:
        """Add or change the limit for rate's (unit, window), e.g. learned from headers."""
        limit = self._limits.get((rate.unit, rate.window))
        if limit is None:
            self._history.horizon = max(self._history.horizon, rate.window)
            limit = _Limit(rate, self._burst_seconds, self._history, self._clock())
            self._limits[rate.unit, rate.window] = limit
        else:
            limit.set_rate(rate, self._burst_seconds)

    def remove_rate(self, unit: Unit, window: float) -> None:
        self._limits.pop((unit, window), None)

    def reserve(self, tokens: int = 0) -> Reservation:
        """Book the earliest send time for one request costing `tokens`."""
        now = self._clock()
        at = max(now, self._last)
        limits = self._limits.values()
        history = self._history
        # Each limit can only push the time later; repeat until every one agrees.
        while True:
            later = at
            for limit in limits:
                later = limit.earliest(tokens, later, history)
            if later == at:
                break
            at = later
        self._last = at
        for limit in limits:
            limit.admit(at, tokens)
        position = history.append(at, tokens)
        history.forget_before(at - history.horizon)
        return Reservation(at, at - now, tokens, position)

    def settle(self, reservation: Reservation, tokens: int) -> None:
        """Replace a reservation's estimated tokens with the real count (either way)."""
        history = self._history
        index = reservation.position - history.base
        if index < 0:
            return  # long gone from every window
        estimated = history.tokens[index]
        history.tokens[index] = tokens
        for limit in self._limits.values():
            # A booking that has left a limit's window constrains it no more.
            if not limit.counts_requests and reservation.position >= limit.start:
                limit.settle(estimated, tokens)
