"""The retry policy as pure functions: no real sleeping."""

from __future__ import annotations

import anyio
import pytest

from batchrun.config import RetryConfig
from batchrun.errors import ClientError, RateLimited, RetryableStatus, Timeout
from batchrun.retry import RetryBudget, RetryPolicy, SharedPause


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


async def attempts_until_done(policy: RetryPolicy, failures: list[Exception]) -> int:
    """Run one line whose first attempts raise `failures`; return attempts made."""
    attempts = 0
    async for attempt in policy.retrying():
        with attempt:
            attempts += 1
            if failures:
                raise failures.pop(0)
    return attempts


@pytest.mark.anyio
async def test_transient_errors_are_retried_until_success() -> None:
    clock = FakeClock()
    policy = RetryPolicy(RetryConfig(max_attempts=5), sleep=clock.sleep)
    with anyio.fail_after(2):
        failures: list[Exception] = [RetryableStatus(503, b""), Timeout("read")]
        assert await attempts_until_done(policy, failures) == 3
    assert len(clock.slept) == 2


@pytest.mark.anyio
async def test_permanent_errors_are_not_retried() -> None:
    clock = FakeClock()
    policy = RetryPolicy(RetryConfig(max_attempts=5), sleep=clock.sleep)
    with anyio.fail_after(2), pytest.raises(ClientError):
        await attempts_until_done(policy, [ClientError(422, b"bad")])
    assert clock.slept == []


@pytest.mark.anyio
async def test_attempts_are_capped_and_the_last_error_is_raised() -> None:
    clock = FakeClock()
    policy = RetryPolicy(RetryConfig(max_attempts=3), sleep=clock.sleep)
    failures: list[Exception] = [RetryableStatus(500, b"x") for _ in range(10)]
    with anyio.fail_after(2), pytest.raises(RetryableStatus):
        await attempts_until_done(policy, failures)
    assert len(failures) == 7


def test_backoff_is_full_jitter_and_capped() -> None:
    config = RetryConfig(backoff_base=0.5, backoff_cap=4.0)
    policy = RetryPolicy(config)
    loop = policy.retrying()
    for attempt in range(1, 12):
        loop.statistics.clear()
        state = _state(loop, attempt, RetryableStatus(500, b""))
        waits = [policy.wait_seconds(state) for _ in range(200)]
        ceiling = min(4.0, 0.5 * 2 ** (attempt - 1))
        assert all(0 <= w <= ceiling for w in waits)
        assert max(waits) > ceiling / 3  # spread over the range, not a constant


def _state(loop: object, attempt: int, error: Exception):  # type: ignore[no-untyped-def]
    from tenacity import Future, RetryCallState

    state = RetryCallState(loop, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
    state.attempt_number = attempt
    future = Future(attempt)
    future.set_exception(error)
    state.outcome = future
    return state


def test_retry_after_becomes_one_shared_pause_capped() -> None:
    clock = FakeClock()
    pause = SharedPause(clock=clock, sleep=clock.sleep)
    policy = RetryPolicy(RetryConfig(retry_after_cap=10.0), pause=pause)
    state = _state(policy.retrying(), 1, RateLimited(b"", retry_after=3.0))
    assert policy.wait_seconds(state) == 0.0
    assert pause.remaining() == pytest.approx(3.0)
    huge = _state(policy.retrying(), 1, RateLimited(b"", retry_after=3600.0))
    policy.wait_seconds(huge)
    assert pause.remaining() == pytest.approx(10.0)


@pytest.mark.anyio
async def test_shared_pause_holds_every_waiter() -> None:
    clock = FakeClock()
    pause = SharedPause(clock=clock, sleep=clock.sleep)
    pause.pause_for(2.0)
    with anyio.fail_after(2):
        await pause.wait()
        await pause.wait()
    assert clock.slept == [2.0]
    assert pause.remaining() == 0


def test_429_without_retry_after_uses_backoff() -> None:
    policy = RetryPolicy(RetryConfig(backoff_base=1.0, backoff_cap=8.0))
    state = _state(policy.retrying(), 2, RateLimited(b"", retry_after=None))
    assert 0 <= policy.wait_seconds(state) <= 2.0
    assert policy.pause.remaining() == 0


def test_budget_bounds_retries_by_first_attempts() -> None:
    budget = RetryBudget(ratio=0.5, reserve=2)
    assert budget.try_spend()
    assert budget.try_spend()
    assert not budget.try_spend()
    for _ in range(4):
        budget.deposit()
    assert budget.try_spend()
    assert budget.try_spend()
    assert not budget.try_spend()
    assert budget.denied == 2


@pytest.mark.anyio
async def test_empty_budget_stops_retrying() -> None:
    clock = FakeClock()
    budget = RetryBudget(ratio=0.0, reserve=1)
    policy = RetryPolicy(RetryConfig(max_attempts=10), budget=budget, sleep=clock.sleep)
    failures: list[Exception] = [RetryableStatus(500, b"") for _ in range(10)]
    with anyio.fail_after(2), pytest.raises(RetryableStatus):
        await attempts_until_done(policy, failures)
    assert len(failures) == 8  # one first attempt + the one retry the reserve allowed
