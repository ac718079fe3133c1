"""The retry policy: `call()` itself with fake time, and its rules called directly."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import orjson
import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st
from tenacity import AsyncRetrying, Future, RetryCallState

from batchrun import RunConfig, run_batch
from batchrun.cli import main
from batchrun.config import RetryConfig
from batchrun.errors import ClientError, RateLimited, RetryableStatus, Timeout
from batchrun.mock import MockServer
from batchrun.retry import LineRetries, RetryBudget, RetryPolicy, SharedPause

DEMO = Path(__file__).resolve().parent.parent / "jobs" / "demo.jsonl"


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def fake_policy(config: RetryConfig, budget: RetryBudget | None = None) -> RetryPolicy:
    clock = FakeClock()
    pause = SharedPause(clock=clock, sleep=clock.sleep)
    return RetryPolicy(config, pause=pause, budget=budget, sleep=clock.sleep, clock=clock)


def failing(failures: list[Exception]) -> tuple[Callable[[], Awaitable[str]], list[int]]:
    """An attempt that raises `failures` one by one, then succeeds; and its call count."""
    calls = [0]

    async def attempt() -> str:
        calls[0] += 1
        if failures:
            raise failures.pop(0)
        return "ok"

    return attempt, calls


async def attempts_until_done(policy: RetryPolicy, failures: list[Exception]) -> int:
    """Run one line whose first attempts raise `failures`; return attempts made."""
    attempt, calls = failing(failures)
    with anyio.fail_after(5):
        await policy.call(attempt)
    return calls[0]


def _state(attempt: int, error: Exception) -> RetryCallState:
    """What tenacity hands its rules after attempt number `attempt` raised `error`."""
    state = RetryCallState(AsyncRetrying(), fn=None, args=(), kwargs={})
    state.attempt_number = attempt
    future = Future(attempt)
    future.set_exception(error)
    state.outcome = future
    return state


@pytest.mark.anyio
async def test_transient_errors_are_retried_until_success() -> None:
    clock = FakeClock()
    policy = RetryPolicy(RetryConfig(max_attempts=5), sleep=clock.sleep)
    failures: list[Exception] = [RetryableStatus(503, b""), Timeout("read")]
    assert await attempts_until_done(policy, failures) == 3
    assert len(clock.slept) == 2


@pytest.mark.anyio
async def test_permanent_errors_are_not_retried() -> None:
    clock = FakeClock()
    policy = RetryPolicy(RetryConfig(max_attempts=5), sleep=clock.sleep)
    with pytest.raises(ClientError):
        await attempts_until_done(policy, [ClientError(422, b"bad")])
    assert clock.slept == []


@pytest.mark.anyio
async def test_attempts_are_capped_and_the_last_error_is_raised() -> None:
    policy = fake_policy(RetryConfig(max_attempts=3))
    failures: list[Exception] = [RetryableStatus(500, str(i).encode()) for i in range(10)]
    with pytest.raises(RetryableStatus) as raised:
        await attempts_until_done(policy, failures)
    assert len(failures) == 7
    assert raised.value.body == "2"  # the third attempt's error, not the first
    assert policy.budget.denied == 0  # attempts ran out; the budget denied nothing


def test_backoff_is_full_jitter_and_capped() -> None:
    policy = RetryPolicy(RetryConfig(backoff_base=0.5, backoff_cap=4.0))
    for attempt in range(1, 12):
        state = _state(attempt, RetryableStatus(500, b""))
        waits = [policy.wait_seconds(state) for _ in range(200)]
        ceiling = min(4.0, 0.5 * 2 ** (attempt - 1))
        assert all(0 <= w <= ceiling for w in waits)
        assert max(waits) > ceiling / 3  # spread over the range, not a constant


def test_stop_and_wait_rules_only_read_state() -> None:
    budget = RetryBudget(ratio=0.5, reserve=2)
    policy = fake_policy(RetryConfig(max_attempts=5), budget)
    state = _state(1, RateLimited(b"", retry_after=3.0))
    for _ in range(20):
        line = LineRetries(rate_limited=1, limited_since=100.0)  # now, on the fake clock
        assert not policy.should_stop(state, line)  # asking again and again spends nothing
        assert policy.wait_seconds(state) == 0.0
    assert policy.pause.remaining() == 0  # the pause is set when the retry is decided
    assert budget.has_credit()


def test_retry_after_becomes_one_shared_pause_capped() -> None:
    policy = fake_policy(RetryConfig(retry_after_cap=10.0))
    policy.before_sleep(_state(1, RateLimited(b"", retry_after=3.0)))
    assert policy.pause.remaining() == pytest.approx(3.0)
    policy.before_sleep(_state(1, RateLimited(b"", retry_after=3600.0)))
    assert policy.pause.remaining() == pytest.approx(10.0)


@pytest.mark.anyio
async def test_a_429_pauses_the_next_attempt_by_its_retry_after() -> None:
    policy = fake_policy(RetryConfig(max_attempts=3, retry_after_cap=10.0))
    attempt, calls = failing([RateLimited(b"", retry_after=3.0)])
    with anyio.fail_after(5):
        assert await policy.call(attempt) == "ok"
    assert calls[0] == 2
    assert policy.pause.pauses == 1
    assert policy.pause.remaining() == 0  # waited out, in fake time


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
    policy = fake_policy(RetryConfig(backoff_base=1.0, backoff_cap=8.0))
    state = _state(2, RateLimited(b"", retry_after=None))
    assert 0 <= policy.wait_seconds(state) <= 2.0
    policy.before_sleep(state)
    assert policy.pause.remaining() == 0


def test_budget_bounds_retries_by_lines_sent() -> None:
    budget = RetryBudget(ratio=0.5, reserve=2)
    budget.spend()
    budget.spend()
    assert not budget.has_credit()
    budget.deposit()
    assert not budget.has_credit()
    budget.deposit()
    assert budget.has_credit()


@given(st.lists(st.booleans(), max_size=300), st.floats(0, 2), st.integers(0, 20))
def test_budget_never_allows_more_than_ratio_per_line_plus_reserve(
    lines_fail: list[bool], ratio: float, reserve: int
) -> None:
    budget = RetryBudget(ratio, reserve)
    retries = 0
    for fails in lines_fail:
        budget.deposit()
        while fails and budget.has_credit():  # a line that never succeeds
            budget.spend()
            retries += 1
    assert retries <= max(reserve, 1) + ratio * len(lines_fail) + 1e-9


@pytest.mark.anyio
async def test_lines_that_succeed_first_time_earn_retry_credit() -> None:
    budget = RetryBudget(ratio=0.5, reserve=1)
    policy = fake_policy(RetryConfig(max_attempts=3), budget)
    assert await attempts_until_done(policy, [RetryableStatus(503, b"")]) == 2  # the reserve
    for _ in range(2):
        assert await attempts_until_done(policy, []) == 1  # two lines: one credit
    assert await attempts_until_done(policy, [RetryableStatus(503, b"")]) == 2
    assert budget.denied == 0


def flaky(fault_rate: float, seed: int) -> Callable[[], Awaitable[None]]:
    """An attempt that fails with probability `fault_rate`, from a seeded RNG."""
    rng = random.Random(seed)

    async def attempt() -> None:
        if rng.random() < fault_rate:
            raise RetryableStatus(503, b"")

    return attempt


async def lines_lost(
    policy: RetryPolicy, lines: int, attempt: Callable[[], Awaitable[None]]
) -> int:
    """Send `lines` lines through `call()`; how many ended failed."""
    lost = 0
    for _ in range(lines):
        try:
            await policy.call(attempt)
        except RetryableStatus:
            lost += 1
    return lost


@pytest.mark.anyio
@pytest.mark.parametrize(("fault_rate", "max_attempts"), [(0.3, 5), (0.2, 4), (0.1, 3)])
async def test_lines_lost_stay_near_fault_rate_to_the_attempts(
    fault_rate: float, max_attempts: int
) -> None:
    """A fault rate the budget can afford: a line is lost only when all its attempts
    fail, about f**k of lines, not when the budget runs dry."""
    lines = 20_000
    policy = fake_policy(RetryConfig(max_attempts=max_attempts))
    with anyio.fail_after(60):
        lost = await lines_lost(policy, lines, flaky(fault_rate, seed=7))
    expected = lines * fault_rate**max_attempts
    assert lost <= 3 * expected + 10
    assert policy.budget.denied <= 5


@pytest.mark.anyio
async def test_a_persistent_failure_stays_within_the_budget() -> None:
    lines, config = 2_000, RetryConfig(max_attempts=5, budget_ratio=0.5, budget_reserve=50)
    policy = fake_policy(config)
    sent = 0

    async def attempt() -> None:
        nonlocal sent
        sent += 1
        raise RetryableStatus(503, b"")

    with anyio.fail_after(60):
        assert await lines_lost(policy, lines, attempt) == lines
    retries = sent - lines
    assert config.budget_ratio * lines <= retries  # the budget is spent, not starved
    assert retries <= config.budget_reserve + config.budget_ratio * lines


@pytest.mark.anyio
async def test_concurrent_lines_never_overspend_the_budget() -> None:
    """Workers interleave at every sleep; the check-then-spend must still hold."""
    config = RetryConfig(max_attempts=5, budget_ratio=0.5, budget_reserve=5)

    async def yield_only(seconds: float) -> None:
        await anyio.sleep(0)

    policy = RetryPolicy(config, sleep=yield_only)
    sent = 0

    async def attempt() -> None:
        nonlocal sent
        sent += 1
        await anyio.sleep(0)
        raise RetryableStatus(503, b"")

    async def line() -> None:
        with pytest.raises(RetryableStatus):
            await policy.call(attempt)

    with anyio.fail_after(30):
        async with anyio.create_task_group() as group:
            for _ in range(200):
                group.start_soon(line)
    assert sent - 200 <= config.budget_reserve + config.budget_ratio * 200
    assert policy.budget.denied > 0


@pytest.mark.anyio
async def test_a_run_at_30_percent_faults_loses_about_f_to_the_k_of_lines(
    mock_server: Callable[..., MockServer], tmp_path: Path
) -> None:
    """End to end: before every line earned credit, about 17 % of lines were lost here."""
    server = mock_server(fail_rate=0.3, retry_after_s=0.01, seed=3)
    lines = 1000
    path = tmp_path / "in.jsonl"
    path.write_bytes(
        b"".join(
            orjson.dumps({"model": "m", "messages": [{"role": "user", "content": f"{i}"}]}) + b"\n"
            for i in range(lines)
        )
    )
    config = RunConfig(
        input_path=path,
        outdir=tmp_path / "out",
        base_url=server.url,
        retry=RetryConfig(max_attempts=5, backoff_base=0.01, backoff_cap=0.05),
    )
    with anyio.fail_after(90):
        report = await run_batch(config, api_key="sk-test")
    assert report.summary["counts"]["failed"] <= lines // 100  # expected 0.3**5: 0.24 %
    assert server.requests_received <= 1.6 * lines  # expected 1.43 per line


def run_demo(input_path: Path, outdir: Path) -> dict[str, int]:
    """The README's first command (`batchrun run jobs/demo.jsonl --mock`), mock defaults
    and all (3 % transient faults), writing to `outdir`; its summary's counts."""
    result = CliRunner(env={"MISTRAL_API_KEY": None}).invoke(
        main, ["run", str(input_path), "--mock", "-o", str(outdir), "--quiet", "--json"]
    )
    assert result.exit_code == 0, result.output
    counts: dict[str, int] = orjson.loads(result.stdout)["counts"]
    return counts


def test_the_readme_demo_ends_with_every_line_ok(tmp_path: Path) -> None:
    counts = run_demo(DEMO, tmp_path / "out")
    assert (counts["ok"], counts["failed"]) == (len(DEMO.read_bytes().splitlines()), 0)


@pytest.mark.slow
def test_the_demo_at_5000_lines_ends_with_every_line_ok(tmp_path: Path) -> None:
    shapes = [orjson.loads(line) for line in DEMO.read_bytes().splitlines()]
    with (tmp_path / "demo5000.jsonl").open("wb") as out:
        for i in range(5000):
            *context, last = shapes[i % len(shapes)]["messages"]
            question = {**last, "content": f"{last['content']} (copy {i})"}
            out.write(orjson.dumps({**shapes[0], "messages": [*context, question]}) + b"\n")
    counts = run_demo(tmp_path / "demo5000.jsonl", tmp_path / "out")
    assert (counts["ok"], counts["failed"]) == (5000, 0)


@pytest.mark.anyio
async def test_429s_use_no_attempt_and_no_budget() -> None:
    budget = RetryBudget(ratio=0.5, reserve=2)
    policy = fake_policy(RetryConfig(max_attempts=2), budget)
    failures: list[Exception] = [RateLimited(b"", retry_after=1.0) for _ in range(10)]
    failures.insert(3, RetryableStatus(500, b""))  # one processed failure among them
    assert await attempts_until_done(policy, failures) == 12
    assert policy.retries_by_cause == {"rate_limited": 10, "http_status": 1}
    assert budget.denied == 0
    budget.spend()  # the 500's retry spent one credit; the 429s none: one is left
    assert not budget.has_credit()


@pytest.mark.anyio
async def test_a_line_waits_out_429s_for_rate_limit_wait_then_gives_up() -> None:
    policy = fake_policy(RetryConfig(max_attempts=2, rate_limit_wait=30.0))
    failures: list[Exception] = [RateLimited(b"", retry_after=4.0) for _ in range(100)]
    with pytest.raises(RateLimited):
        await attempts_until_done(policy, failures)
    attempts = 100 - len(failures)
    assert attempts == 9  # 429s at t = 0, 4, ..., 32: the first past 30 s is the last
    assert policy.budget.denied == 0
    assert policy.pause.paused_s == pytest.approx(32.0)
