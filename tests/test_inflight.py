"""The adaptive in-flight limit's rules with a fake clock: one cut per storm, growth only
while the pool is full, always within [1, maximum]."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from batchrun.inflight import INITIAL_LIMIT, AdaptiveLimit


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def full(
    maximum: int, clock: FakeClock, *, cooldown: float = 5.0, streak: int = 3
) -> AdaptiveLimit:
    """A limit that slow start has already brought to `maximum`."""
    return AdaptiveLimit(
        maximum, clock=clock, initial=maximum, cooldown=cooldown, overload_streak=streak
    )


def test_slow_start_begins_small_and_doubles_per_round_while_busy() -> None:
    limit = AdaptiveLimit(64, clock=FakeClock())
    assert limit.limit == INITIAL_LIMIT  # a key with no allowance costs a handful
    rounds = 0
    while limit.limit < 64:
        before = limit.limit
        for _ in range(before):
            limit.on_success(in_flight=limit.limit)
        assert limit.limit == min(64, 2 * before)
        rounds += 1
    assert rounds == 4  # 4 -> 8 -> 16 -> 32 -> 64
    assert AdaptiveLimit(2, clock=FakeClock()).limit == 2  # never above the maximum


def test_a_storm_halves_the_limit_each_cooldown_and_recovery_is_fast() -> None:
    clock = FakeClock()
    limit = full(64, clock, cooldown=5.0)
    for _ in range(200):  # one storm of 20 s: 429s only, no success between them
        limit.on_rate_limited()
        clock.now += 0.1
    assert (limit.limit, limit.cuts, limit.threshold) == (4, 4, 32)
    clock.now += 5.0
    rounds = 0
    while limit.limit < 64:  # the storm is over: slow start back to 32, then +1 a round
        for _ in range(limit.limit):
            limit.on_success(in_flight=limit.limit)
        rounds += 1
    assert rounds <= 3 + 33  # 3 rounds of slow start, then one slot per round
    assert limit.lowest == 4


def test_cuts_are_at_least_a_cooldown_apart() -> None:
    clock = FakeClock()
    limit = full(64, clock, cooldown=5.0)
    limit.on_rate_limited()
    clock.now += 4.9
    limit.on_success(in_flight=1)
    limit.on_rate_limited()
    assert (limit.limit, limit.cuts) == (32, 1)
    clock.now += 0.1
    limit.on_rate_limited()
    assert (limit.limit, limit.cuts, limit.threshold) == (16, 2, 16)


def test_503s_and_timeouts_cut_only_as_a_streak() -> None:
    clock = FakeClock()
    limit = full(8, clock, streak=3)
    limit.on_overload()
    limit.on_overload()
    limit.on_success(in_flight=1)  # a success breaks the streak
    limit.on_overload()
    limit.on_overload()
    assert limit.limit == 8
    limit.on_overload()
    assert limit.limit == 4


def test_growth_only_while_the_pool_is_full() -> None:
    clock = FakeClock()
    limit = full(16, clock, cooldown=5.0)
    limit.on_rate_limited()
    assert limit.limit == 8
    clock.now += 5.0
    for _ in range(100):
        limit.on_success(in_flight=7)  # idle slots: no evidence more would fit
    assert limit.limit == 8
    for _ in range(8):  # one full round at the limit: one more slot
        limit.on_success(in_flight=limit.limit)
    assert limit.limit == 9


def test_no_growth_while_requests_sent_before_the_cut_return() -> None:
    clock = FakeClock()
    limit = full(16, clock, cooldown=5.0)
    limit.on_rate_limited()
    for _ in range(100):
        limit.on_success(in_flight=16)
    assert limit.limit == 8


@given(
    st.integers(1, 256),
    st.lists(
        st.tuples(st.sampled_from(["429", "503", "ok"]), st.integers(0, 300), st.floats(0, 3)),
        max_size=300,
    ),
)
def test_the_limit_stays_between_one_and_the_maximum_and_cuts_respect_the_cooldown(
    maximum: int, events: list[tuple[str, int, float]]
) -> None:
    clock = FakeClock()
    cooldown = 5.0
    start = clock.now
    limit = AdaptiveLimit(maximum, clock=clock, cooldown=cooldown)
    for kind, in_flight, gap in events:
        clock.now += gap
        if kind == "429":
            limit.on_rate_limited()
        elif kind == "503":
            limit.on_overload()
        else:
            limit.on_success(in_flight)
        assert 1 <= limit.limit <= maximum
    assert limit.cuts <= 1 + (clock.now - start) / cooldown


def test_adaptive_limit_needs_a_positive_maximum() -> None:
    with pytest.raises(ValueError, match="maximum"):
        AdaptiveLimit(0)
