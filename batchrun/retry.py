"""The retry policy as tenacity objects, plus the two things shared by all workers:
the 429 pause and the retry budget.

Retry `TransientError` (the error tree decides what is transient), up to max_attempts,
with capped full-jitter backoff; a 429's Retry-After becomes one pause every worker
honours instead of each sleeping on its own. A 429 means the request was not processed:
it counts against neither max_attempts nor the budget (the shared pause and the
in-flight limit bound that load); a line gives up on 429s only after waiting them out
for `rate_limit_wait` seconds.

The stop and wait rules only read state. What changes shared state (spending budget,
setting the pause) runs in the before-sleep hook: tenacity runs retry -> wait -> stop ->
before_sleep without yielding to the event loop, so "has credit" checked by the stop rule
still holds when the hook spends it, whatever the other workers do.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import NoReturn, TypeVar

import anyio
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    wait_random_exponential,
)

from .config import RetryConfig
from .errors import RateLimited, TransientError

__all__ = ["LineRetries", "RetryBudget", "RetryPolicy", "SharedPause"]

T = TypeVar("T")
Sleep = Callable[[float], Awaitable[None]]
Clock = Callable[[], float]


class SharedPause:
    """A pause all workers wait out before their next attempt (set by a 429)."""

    def __init__(self, clock: Clock = time.monotonic, sleep: Sleep = anyio.sleep) -> None:
        self._clock = clock
        self._sleep = sleep
        self._until = 0.0
        self.pauses = 0
        self.paused_s = 0.0  # wall time covered by pauses, overlaps counted once

    def pause_for(self, seconds: float) -> None:
        now = self._clock()
        until = now + seconds
        if until > self._until:
            self.paused_s += until - max(now, self._until)
            self._until = until
            self.pauses += 1

    def remaining(self) -> float:
        return max(0.0, self._until - self._clock())

    async def wait(self) -> None:
        while (remaining := self.remaining()) > 0:
            await self._sleep(remaining)


class RetryBudget:
    """Caps retries at `ratio` per line sent (plus a reserve), so a failing server sees
    retry traffic bounded instead of multiplied by max_attempts: over any run,
    retries <= reserve + ratio * lines."""

    def __init__(self, ratio: float, reserve: int) -> None:
        self._ratio = ratio
        self._cap = float(max(reserve, 1))
        self._tokens = self._cap
        self.denied = 0

    def deposit(self) -> None:
        self._tokens = min(self._cap, self._tokens + self._ratio)

    def has_credit(self) -> bool:
        return self._tokens >= 1

    def spend(self) -> None:
        self._tokens -= 1


@dataclass(slots=True)
class LineRetries:
    """One line's 429s so far: they are counted apart from its attempts."""

    rate_limited: int = 0
    limited_since: float = 0.0  # when the first 429 came


class RetryPolicy:
    """Builds one tenacity loop per line from a `RetryConfig` and the shared state."""

    def __init__(
        self,
        config: RetryConfig,
        *,
        pause: SharedPause | None = None,
        budget: RetryBudget | None = None,
        sleep: Sleep = anyio.sleep,
        clock: Clock = time.monotonic,
    ) -> None:
        self.config = config
        self.pause = pause or SharedPause(clock=clock, sleep=sleep)
        self.budget = budget or RetryBudget(config.budget_ratio, config.budget_reserve)
        self.retries_by_cause: Counter[str] = Counter()
        self._clock = clock
        self._backoff = wait_random_exponential(
            multiplier=config.backoff_base, max=config.backoff_cap
        )
        self._template = AsyncRetrying(
            retry=retry_if_exception_type(TransientError),
            wait=self.wait_seconds,
            before_sleep=self.before_sleep,
            sleep=sleep,
        )

    async def call(self, attempt: Callable[[], Awaitable[T]]) -> T:
        """Run one line's `attempt` under the policy; the line earns its retry credit
        here, whether or not it needs it. The first attempt runs outside tenacity's
        bookkeeping, which costs more CPU than a whole request; most lines never need
        a second one."""
        self.budget.deposit()
        await self.pause.wait()
        line = LineRetries()
        try:
            return await attempt()
        except TransientError as exc:
            first: TransientError | None = exc
            self._count_429(exc, line)
        retrying = self._template.copy(
            stop=lambda state: self.should_stop(state, line),
            retry_error_callback=lambda state: self._give_up(state, line),
        )
        async for state in retrying:
            with state:
                if first is not None:
                    # Replay the first failure so tenacity counts it and waits as usual.
                    error, first = first, None
                    raise error
                await self.pause.wait()
                try:
                    return await attempt()
                except RateLimited as exc:
                    self._count_429(exc, line)
                    raise
        raise AssertionError("unreachable: tenacity re-raises the last failure")

    def _count_429(self, error: TransientError, line: LineRetries) -> None:
        if isinstance(error, RateLimited):
            if not line.rate_limited:
                line.limited_since = self._clock()
            line.rate_limited += 1

    def should_stop(self, retry_state: RetryCallState, line: LineRetries) -> bool:
        """Give up after max_attempts processed attempts, when the budget has no credit
        for another, or when the line has waited out 429s for `rate_limit_wait`."""
        if isinstance(_error(retry_state), RateLimited):
            return self._clock() - line.limited_since >= self.config.rate_limit_wait
        attempts = retry_state.attempt_number - line.rate_limited
        return attempts >= self.config.max_attempts or not self.budget.has_credit()

    def wait_seconds(self, retry_state: RetryCallState) -> float:
        """Backoff before the next attempt; none after a 429 with Retry-After, whose
        wait is the shared pause `before_sleep` sets (every attempt waits it out)."""
        if _retry_after(retry_state) is not None:
            return 0.0
        return float(self._backoff(retry_state))

    def before_sleep(self, retry_state: RetryCallState) -> None:
        """The retry is decided: pay for it (a 429 costs nothing), count its cause, and
        turn a Retry-After into the pause."""
        error = _error(retry_state)
        if not isinstance(error, RateLimited):
            self.budget.spend()
        elif error.retry_after is not None:
            self.pause.pause_for(min(error.retry_after, self.config.retry_after_cap))
        if isinstance(error, TransientError):
            self.retries_by_cause[error.error_type] += 1

    def _give_up(self, retry_state: RetryCallState, line: LineRetries) -> NoReturn:
        """Re-raise the last failure; count it as denied if attempts were left."""
        attempts = retry_state.attempt_number - line.rate_limited
        if not isinstance(_error(retry_state), RateLimited) and attempts < self.config.max_attempts:
            self.budget.denied += 1
        assert retry_state.outcome is not None
        retry_state.outcome.result()
        raise AssertionError("unreachable: the outcome of a retried attempt is a failure")


def _error(retry_state: RetryCallState) -> BaseException | None:
    outcome = retry_state.outcome
    return outcome.exception() if outcome is not None else None


def _retry_after(retry_state: RetryCallState) -> float | None:
    error = _error(retry_state)
    return error.retry_after if isinstance(error, RateLimited) else None
