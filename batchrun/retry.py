"""The retry policy as tenacity objects, plus the two things shared by all workers:
the 429 pause and the retry budget.

Retry `TransientError` (the error tree decides what is transient), up to max_attempts,
with capped full-jitter backoff; a 429's Retry-After becomes one pause every worker
honours instead of each sleeping on its own.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

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
    """Caps retries at `ratio` per first attempt (plus a reserve), so a failing server
    sees retry traffic bounded instead of multiplied by max_attempts."""

    def __init__(self, ratio: float, reserve: int) -> None:
        self._ratio = ratio
        self._cap = float(max(reserve, 1))
        self._tokens = self._cap
        self.denied = 0

    def deposit(self) -> None:
        self._tokens = min(self._cap, self._tokens + self._ratio)

    def try_spend(self) -> bool:
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        self.denied += 1
        return False


class _stop_when_budget_empty(stop_base):
    def __init__(self, budget: RetryBudget) -> None:
        self._budget = budget

    def __call__(self, retry_state: RetryCallState) -> bool:
        return not self._budget.try_spend()


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
        # stop_after_attempt comes first: `|` short-circuits, so the last attempt never
        # spends budget it would not use.
        self._template = AsyncRetrying(
            retry=retry_if_exception_type(TransientError),
            stop=stop_after_attempt(config.max_attempts) | _stop_when_budget_empty(self.budget),
            wait=self.wait_seconds,
            sleep=sleep,
            reraise=True,
        )

    def retrying(self) -> AsyncRetrying:
        """A fresh retry loop for one line (`async for attempt in policy.retrying()`)."""
        self.budget.deposit()
        return self._template.copy()

    async def call(self, attempt: Callable[[], Awaitable[T]]) -> T:
        """Run `attempt` under the policy: the same as `retrying()`, but the first
        attempt runs outside tenacity's bookkeeping, which costs more CPU than a whole
        request; most lines never need a second one."""
        await self.pause.wait()
        try:
            return await attempt()
        except TransientError as exc:
            first: TransientError | None = exc
        async for state in self.retrying():
            with state:
                if first is not None:
                    # Replay the first failure so tenacity counts it and waits as usual.
                    error, first = first, None
                    raise error
                await self.pause.wait()
                return await attempt()
        raise AssertionError("unreachable: tenacity re-raises the last failure")

    def wait_seconds(self, retry_state: RetryCallState) -> float:
        """Backoff before the next attempt. A Retry-After is applied as the shared pause
        (every attempt waits it out first), so this worker adds no sleep of its own."""
        outcome = retry_state.outcome
        error = outcome.exception() if outcome is not None else None
        if isinstance(error, RateLimited) and error.retry_after is not None:
            self.pause.pause_for(min(error.retry_after, self.config.retry_after_cap))
            return 0.0
        return float(self._backoff(retry_state))
