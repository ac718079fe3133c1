"""The retry policy as tenacity objects, plus the two things shared by all workers:
the 429 pause and the retry budget.

Retry `TransientError` (the error tree decides what is transient), up to max_attempts,
with capped full-jitter backoff; a 429's Retry-After becomes one pause every worker
honours instead of each sleeping on its own.

The stop and wait rules only read state. What changes shared state (spending budget,
setting the pause) runs in the before-sleep hook: tenacity runs retry -> wait -> stop ->
before_sleep without yielding to the event loop, so "has credit" checked by the stop rule
still holds when the hook spends it, whatever the other workers do.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import NoReturn, TypeVar

import anyio
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)
from tenacity.stop import stop_base

from .config import RetryConfig
from .errors import RateLimited, TransientError

__all__ = ["RetryBudget", "RetryPolicy", "SharedPause"]

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

    def pause_for(self, seconds: float) -> None:
        until = self._clock() + seconds
        if until > self._until:
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


class _stop_when_budget_empty(stop_base):
    def __init__(self, budget: RetryBudget) -> None:
        self._budget = budget

    def __call__(self, retry_state: RetryCallState) -> bool:
        return not self._budget.has_credit()


class RetryPolicy:
    """Builds one tenacity loop per line from a `RetryConfig` and the shared state."""

    def __init__(
        self,
        config: RetryConfig,
        *,
        pause: SharedPause | None = None,
        budget: RetryBudget | None = None,
        sleep: Sleep = anyio.sleep,
    ) -> None:
        self.config = config
        self.pause = pause or SharedPause(sleep=sleep)
        self.budget = budget or RetryBudget(config.budget_ratio, config.budget_reserve)
        self._backoff = wait_random_exponential(
            multiplier=config.backoff_base, max=config.backoff_cap
        )
        # stop_after_attempt comes first: `|` short-circuits, so giving up on the last
        # attempt is not counted as a budget denial.
        self.stop = stop_after_attempt(config.max_attempts) | _stop_when_budget_empty(self.budget)
        self._template = AsyncRetrying(
            retry=retry_if_exception_type(TransientError),
            stop=self.stop,
            wait=self.wait_seconds,
            before_sleep=self.before_sleep,
            retry_error_callback=self._give_up,
            sleep=sleep,
        )

    async def call(self, attempt: Callable[[], Awaitable[T]]) -> T:
        """Run one line's `attempt` under the policy; the line earns its retry credit
        here, whether or not it needs it. The first attempt runs outside tenacity's
        bookkeeping, which costs more CPU than a whole request; most lines never need
        a second one."""
        self.budget.deposit()
        await self.pause.wait()
        try:
            return await attempt()
        except TransientError as exc:
            first: TransientError | None = exc
        async for state in self._template.copy():
            with state:
                if first is not None:
                    # Replay the first failure so tenacity counts it and waits as usual.
                    error, first = first, None
                    raise error
                await self.pause.wait()
                return await attempt()
        raise AssertionError("unreachable: tenacity re-raises the last failure")

    def wait_seconds(self, retry_state: RetryCallState) -> float:
        """Backoff before the next attempt; none after a 429 with Retry-After, whose
        wait is the shared pause `before_sleep` sets (every attempt waits it out)."""
        if _retry_after(retry_state) is not None:
            return 0.0
        return float(self._backoff(retry_state))

    def before_sleep(self, retry_state: RetryCallState) -> None:
        """The retry is decided: pay for it, and turn a Retry-After into the pause."""
        self.budget.spend()
        retry_after = _retry_after(retry_state)
        if retry_after is not None:
            self.pause.pause_for(min(retry_after, self.config.retry_after_cap))

    def _give_up(self, retry_state: RetryCallState) -> NoReturn:
        """Re-raise the last failure; count it as denied if attempts were left."""
        if retry_state.attempt_number < self.config.max_attempts:
            self.budget.denied += 1
        assert retry_state.outcome is not None
        retry_state.outcome.result()
        raise AssertionError("unreachable: the outcome of a retried attempt is a failure")


def _retry_after(retry_state: RetryCallState) -> float | None:
    outcome = retry_state.outcome
    error = outcome.exception() if outcome is not None else None
    return error.retry_after if isinstance(error, RateLimited) else None
