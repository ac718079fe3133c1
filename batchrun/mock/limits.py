"""The mock's provider-like allowances: sliding request and token windows, a monthly token
budget and storm spans, judged at times the caller passes in (pure: no clock, no sockets)."""

from __future__ import annotations

import math
from collections import deque
from typing import NamedTuple

__all__ = ["ADVERTISED", "Limiter", "Quota", "Verdict", "Window", "parse_storms"]

# Shown when no limit is configured, so an unlimited mock still looks like a real account
# (requests/minute, tokens/minute, tokens/month); shown, never enforced. Far above what
# any client reaches on loopback, so a client that paces by them (batchrun does) is
# never slowed by an account that is meant to be unlimited.
ADVERTISED = (10_000_000, 10_000_000_000, 1_000_000_000_000_000)
MONTH_S = 30 * 24 * 3600.0  # the month starts with the server
SLOT_S = 0.001  # arrivals in one slot share an entry, so a window holds at most length/SLOT_S


class Window:
    """What was admitted in the last `length` seconds; `limit` None only counts.

    Arrival times round up to the next slot: an entry may leave up to one slot late, never
    early, so no window of `length` seconds ever holds more than `limit`."""

    __slots__ = ("_slots", "length", "limit", "used")

    def __init__(self, length: float, limit: int | None = None) -> None:
        self.length, self.limit = length, limit
        self.used = 0
        self._slots: deque[tuple[float, int]] = deque()  # (slot time, amount), oldest first

    def expire(self, now: float) -> int:
        """Drop what has left the window at `now`; the amount still inside."""
        slots, horizon = self._slots, now - self.length
        while slots and slots[0][0] <= horizon:
            self.used -= slots.popleft()[1]
        return self.used

    def wait(self, now: float, amount: int) -> float:
        """Seconds from `now` until `amount` more fits (call `expire` first): 0 if it fits
        now, inf if it never will (a zero limit, or more than the limit)."""
        limit = self.limit
        if limit is None:
            return 0.0
        excess = self.used + amount - limit
        if excess <= 0 < limit:
            return 0.0
        if limit == 0 or amount > limit:
            return math.inf
        for at, amount_held in self._slots:
            excess -= amount_held
            if excess <= 0:
                return at + self.length - now
        return math.inf  # not reached: what the window holds is more than the excess

    def add(self, now: float, amount: int) -> None:
        if amount <= 0:
            return
        at = math.ceil(now / SLOT_S) * SLOT_S
        slots = self._slots
        if slots and slots[-1][0] == at:
            slots[-1] = (at, slots[-1][1] + amount)
        else:
            slots.append((at, amount))
        self.used += amount


class Quota(NamedTuple):
    """What the x-ratelimit-* headers of one reply say."""

    req_minute: int
    req_minute_left: int
    tokens_minute: int
    tokens_minute_left: int
    tokens_month: int
    tokens_month_left: int
    cost: int  # tokens this request was charged: 0 when refused or not metered


class Verdict(NamedTuple):
    quota: Quota
    refused: str | None = None  # which allowance said no: storm, rps, rpm, tpm, tokens_month
    retry_after: float = 0.0  # seconds until it has room again


class Limiter:
    """Every allowance of one server, at times in seconds since the server started.

    A refused request counts against nothing, as at a real provider; an admitted one counts
    in full, its tokens being what its reply's `usage.total_tokens` will say. Not
    thread-safe: only the server's loop thread calls it."""

    def __init__(
        self,
        *,
        rps: int | None = None,
        rpm: int | None = None,
        tpm: int | None = None,
        tokens_month: int | None = None,
        storms: tuple[tuple[float, float], ...] = (),
        storm_retry_after: float = 1.0,
    ) -> None:
        self._second = Window(1.0, rps) if rps is not None else None
        self._minute = Window(60.0, rpm)
        self._tokens = Window(60.0, tpm)
        windows = (("rps", self._second), ("rpm", self._minute), ("tpm", self._tokens))
        self._limited = tuple((n, w) for n, w in windows if w is not None and w.limit is not None)
        self._month = tokens_month
        self.month_used = 0
        self._storms, self._storm_retry_after = storms, storm_retry_after
        per_minute = [n for n in (rpm, None if rps is None else rps * 60) if n is not None]
        self._limits = (
            min(per_minute, default=ADVERTISED[0]),
            ADVERTISED[1] if tpm is None else tpm,
            ADVERTISED[2] if tokens_month is None else tokens_month,
        )

    def view(self, now: float) -> Quota:
        """The headers of a reply that is not metered (401, 422, a refusal)."""
        return self._quota(now, 0)

    def admit(self, now: float, cost: int) -> Verdict:
        """Count a request costing `cost` tokens arriving at `now`, or refuse it and count
        nothing. Storms first, then the monthly budget, then the windows."""
        if self._storms and any(start <= now < end for start, end in self._storms):
            return Verdict(self.view(now), "storm", self._storm_retry_after)
        if self._month is not None and self.month_used >= self._month:
            # Exhausted, not "too small for this one": a real provider cannot know a
            # reply's size before generating it, so the last request may overdraw.
            return Verdict(self.view(now), "tokens_month", MONTH_S - now)
        refused, retry_after = None, 0.0
        for name, window in self._limited:
            window.expire(now)
            wait = window.wait(now, cost if window is self._tokens else 1)
            if wait > 0:
                refused = refused or name
                retry_after = max(retry_after, window.length if wait == math.inf else wait)
        if refused is not None:
            return Verdict(self.view(now), refused, retry_after)
        if self._second is not None:
            self._second.add(now, 1)
        self._minute.add(now, 1)
        self._tokens.add(now, cost)
        self.month_used += cost
        return Verdict(self._quota(now, cost))

    def _quota(self, now: float, cost: int) -> Quota:
        requests, tokens, month = self._limits
        requests_left = requests - self._minute.expire(now)
        tokens_left = tokens - self._tokens.expire(now)
        month_left = month - self.month_used
        return Quota(  # clamped: unlimited use may pass what is only advertised
            requests,
            requests_left if requests_left > 0 else 0,
            tokens,
            tokens_left if tokens_left > 0 else 0,
            month,
            month_left if month_left > 0 else 0,
            cost,
        )


def parse_storms(specs: tuple[str, ...] | list[str]) -> tuple[tuple[float, float], ...]:
    """`START:END` spans in seconds after the start, each item maybe comma-separated.
    Raises ValueError on anything else, an empty span or a negative start."""
    spans = []
    for spec in specs:
        for item in filter(None, (part.strip() for part in spec.split(","))):
            start_text, colon, end_text = item.partition(":")
            try:
                start, end = float(start_text), float(end_text)
            except ValueError:
                start = end = math.nan
            if not colon or not 0 <= start < end < math.inf:
                raise ValueError(f"storm {item!r} is not START:END seconds with START < END")
            spans.append((start, end))
    return tuple(spans)
