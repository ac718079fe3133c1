"""Flow control of one run: every attempt passes the adaptive in-flight gate and the
pacer (rates given by flags, or learned from the server's rate-limit headers), and
reports back how it went; the figures end in summary.json's `flow` section."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import anyio

from .client import Reply
from .config import Pace
from .errors import (
    AllowanceExhausted,
    AuthError,
    RateLimited,
    RequestFailed,
    RetryableStatus,
    Timeout,
)
from .inflight import AdaptiveLimit
from .limits import Pacer, Rate, Reservation, Unit
from .progress import LiveStats
from .ratelimit_headers import RateObservation, parse_rate_headers
from .records import usage_count
from .retry import RetryPolicy
from .stops import StopKind

__all__ = ["FlowControl", "FlowFigures", "LimitInForce"]

Clock = Callable[[], float]
Headers = Callable[[], Mapping[str, str] | None]

# A tenth of a second's budget at most at once: requests paced at a window's exact
# edge would land in one server-side window after network jitter.
PACE_BURST_S = 0.1
# Learned limits are paced a little under what the server allows: the server counts
# arrivals, which network jitter bunches up, and other clients of the same key may
# send too. Measured by benchmarks/flow.py: 429s stay under 2 % at 10 req/s.
LEARNED_SHARE = 0.95
LEARN_EVERY_S = 1.0  # headers are re-read at most this often, and on every 429
OVERLOAD_STATUSES = frozenset({502, 503, 504})
_WINDOW_NAMES = {1.0: "second", 60.0: "minute"}


@dataclass(frozen=True, slots=True)
class LimitInForce:
    """One rate the pacer enforces, and where it came from."""

    rate: Rate
    source: str  # "flag" (--rps/--rpm/--tpm) or "headers" (learned)

    @property
    def per(self) -> str:
        return _WINDOW_NAMES.get(self.rate.window, f"{self.rate.window:g} s")

    def describe(self) -> str:
        unit = "req" if self.rate.unit == "requests" else "tok"
        return f"{self.rate.amount:,.0f} {unit}/{self.per}"

    def to_json(self) -> dict[str, Any]:
        rate = self.rate
        return {"unit": rate.unit, "per": self.per, "amount": rate.amount, "source": self.source}


@dataclass(frozen=True, slots=True)
class FlowFigures:
    """summary.json's `flow` section: how the run met the server's limits."""

    limits: tuple[LimitInForce, ...]
    observed: RateObservation | None
    rate_limited: int  # 429 replies received
    paused_s: float  # time every worker waited out a shared Retry-After pause
    pauses: int
    retries_by_cause: Mapping[str, int]
    budget_denied: int
    in_flight_limit: int
    in_flight_lowest: int
    in_flight_cuts: int
    concurrency: int
    achieved: Mapping[str, float | None]
    guard: str | None  # the guard that stopped the run, if one did

    def to_json(self) -> dict[str, Any]:
        observed = self.observed
        return {
            "limits": [limit.to_json() for limit in self.limits],
            "headers": None if observed is None else _observation_json(observed),
            "rate_limited": self.rate_limited,
            "paused_s": round(self.paused_s, 3),
            "pauses": self.pauses,
            "retries_by_cause": dict(self.retries_by_cause),
            "budget_denied": self.budget_denied,
            "in_flight": {
                "concurrency": self.concurrency,
                "final_limit": self.in_flight_limit,
                "lowest_limit": self.in_flight_lowest,
                "cuts": self.in_flight_cuts,
            },
            "achieved": dict(self.achieved),
            "guard": self.guard,
        }


def _observation_json(observed: RateObservation) -> dict[str, Any]:
    fields = (
        "requests_limit",
        "requests_remaining",
        "tokens_limit",
        "tokens_remaining",
        "month_limit",
        "month_remaining",
    )
    return {name: getattr(observed, name) for name in fields}


class FlowControl:
    """Admits attempts: at most the adaptive in-flight limit out at once, each at a
    time the pacer grants. Call `admit` before an attempt and exactly one of
    `succeeded`, `failed` or `release` after it."""

    def __init__(
        self,
        pace: Pace,
        concurrency: int,
        headers: Headers,
        *,
        on_token_limit: Callable[[], None] = lambda: None,
        clock: Clock = time.monotonic,
    ) -> None:
        self._clock = clock
        self._headers = headers
        self._on_token_limit = on_token_limit
        self.given = {(r.unit, r.window): r for r in _given_rates(pace)}
        self.learned: dict[tuple[Unit, float], Rate] = {}
        self._sources = dict.fromkeys(self.given, "flag")
        self.pacer = Pacer(self.given.values(), clock=clock, burst_seconds=PACE_BURST_S)
        self.limit = AdaptiveLimit(concurrency, clock=clock)
        self.in_flight = 0
        self._waiters: deque[anyio.Event] = deque()
        self.observed: RateObservation | None = None
        self.rate_limited = 0
        self._next_learn = 0.0
        if any(unit == "tokens" for unit, _ in self.given):
            on_token_limit()

    async def admit(self, tokens: int) -> Reservation:
        """Wait for a free slot under the in-flight limit, then for the send time."""
        if self.in_flight < self.limit.limit and not self._waiters:
            self.in_flight += 1
        else:
            await self._queue()
        try:
            reservation = self.pacer.reserve(tokens)
            if reservation.delay > 0:
                await anyio.sleep(reservation.delay)
        except BaseException:
            self.release()
            raise
        return reservation

    async def _queue(self) -> None:
        event = anyio.Event()
        self._waiters.append(event)
        try:
            await event.wait()
        except BaseException:
            if event.is_set():
                self.release()  # granted as we were cancelled: hand the slot on
            else:
                self._waiters.remove(event)
            raise

    def release(self) -> None:
        """The attempt is over (or never happened): its slot goes to the next waiter."""
        self.in_flight -= 1
        self._wake()

    def _wake(self) -> None:
        waiters, limit = self._waiters, self.limit.limit
        while waiters and self.in_flight < limit:
            self.in_flight += 1
            waiters.popleft().set()

    def succeeded(self, reservation: Reservation, reply: Reply) -> None:
        total = usage_count(reply.response.get("usage"), "total_tokens")
        if total is not None:
            self.pacer.settle(reservation, total)
        self.limit.on_success(self.in_flight, reservation.at)
        now = self._clock()
        if now >= self._next_learn:
            self._next_learn = now + LEARN_EVERY_S
            self.learn(self._headers())
        self.release()

    def failed(self, reservation: Reservation, error: RequestFailed) -> None:
        if isinstance(error, RateLimited | AllowanceExhausted):
            self.rate_limited += 1
            self.pacer.settle(reservation, 0)  # a 429 was not processed: no tokens
            self.limit.on_refused(reservation.at)
            self.learn(self._headers())
        elif isinstance(error, AuthError):
            self.limit.on_refused(reservation.at)
        elif isinstance(error, Timeout) or (
            isinstance(error, RetryableStatus) and error.status_code in OVERLOAD_STATUSES
        ):
            self.limit.on_overload(reservation.at)
        self.release()

    def learn(self, headers: Mapping[str, str] | None) -> None:
        """Pace by the per-minute limits `headers` name (a flag given lower wins)."""
        observed = parse_rate_headers(headers) if headers is not None else None
        if observed is None:
            return
        self.observed = observed
        for rate in observed.rates():
            key = (rate.unit, rate.window)
            if self.learned.get(key) == rate:
                continue
            self.learned[key] = rate
            paced = Rate(rate.unit, rate.amount * LEARNED_SHARE, rate.window)
            given = self.given.get(key)
            if given is None or paced.amount < given.amount:
                self.pacer.set_rate(paced)
                self._sources[key] = "headers"
            else:
                self.pacer.set_rate(given)
                self._sources[key] = "flag"
            if rate.unit == "tokens":
                self._on_token_limit()

    def limits(self) -> tuple[LimitInForce, ...]:
        return tuple(
            LimitInForce(rate, self._sources[rate.unit, rate.window]) for rate in self.pacer.rates
        )

    def figures(self, policy: RetryPolicy, stats: LiveStats, stop: StopKind | None) -> FlowFigures:
        """summary.json's `flow` section for the session that ran under this control."""
        elapsed, sent, limit = stats.elapsed, stats.sent, self.limit
        return FlowFigures(
            limits=self.limits(),
            observed=self.observed,
            rate_limited=self.rate_limited,
            paused_s=policy.pause.paused_s,
            pauses=policy.pause.pauses,
            retries_by_cause=policy.retries_by_cause,
            budget_denied=policy.budget.denied,
            in_flight_limit=limit.limit,
            in_flight_lowest=limit.lowest,
            in_flight_cuts=limit.cuts,
            concurrency=limit.maximum,
            achieved={
                "requests_per_s": sent / elapsed if sent else None,
                "requests_per_min": 60 * sent / elapsed if sent else None,
                "tokens_per_min": 60 * stats.total_tokens / elapsed if sent else None,
            },
            guard=stop.value if stop is not None and stop.is_guard else None,
        )

    def describe(self) -> str:
        """For the progress line: the limits in force, and whether learned."""
        return " · ".join(
            f"{limit.describe()}{' (learned)' if limit.source == 'headers' else ''}"
            for limit in self.limits()
        )


def _given_rates(pace: Pace) -> list[Rate]:
    given: tuple[tuple[Unit, float | None, float], ...] = (
        ("requests", pace.rps, 1.0),
        ("requests", pace.rpm, 60.0),
        ("tokens", pace.tpm, 60.0),
    )
    return [Rate(unit, amount, window) for unit, amount, window in given if amount is not None]
