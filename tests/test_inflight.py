"""The adaptive in-flight limit's rules with a fake clock: slow start, one cut per round
of congestion, growth only while the pool is full, always within [1, maximum]."""

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


def full(maximum: int, clock: FakeClock, *, streak: int = 3) -> AdaptiveLimit:
    """A limit that slow start has already brought to `maximum`."""
    return AdaptiveLimit(maximum, clock=clock, initial=maximum, overload_streak=streak)


def round_of_successes(limit: AdaptiveLimit, clock: FakeClock) -> None:
    """Every slot's request, sent now, comes back: one round trip at a full pool."""
    sent = clock.now
    clock.now += 0.05
    for _ in range(limit.limit):
        limit.on_success(in_flight=limit.limit, sent_at=sent)


def test_slow_start_begins_small_and_doubles_per_round_while_busy() -> None:
    clock = FakeClock()
    limit = AdaptiveLimit(64, clock=clock)
    assert limit.limit == INITIAL_LIMIT  # a key with no allowance costs a handful
    rounds = 0
    while limit.limit < 64:
        before = limit.limit
        round_of_successes(limit, clock)
        assert limit.limit == min(64, 2 * before)
        rounds += 1
    assert rounds == 4  # 4 -> 8 -> 16 -> 32 -> 64
    assert AdaptiveLimit(2, clock=clock).limit == 2  # never above the maximum


def test_a_burst_of_429s_from_one_round_is_one_cut() -> None:
    clock = FakeClock()
    limit = full(64, clock)
    sent = clock.now
    clock.now += 0.05
    for _ in range(64):  # the whole round comes back 429
        limit.on_refused(sent_at=sent)
    assert (limit.limit, limit.cuts, limit.threshold) == (32, 1, 32)


def test_a_storm_halves_the_limit_each_round_and_recovery_is_fast() -> None:
    clock = FakeClock()
    limit = full(64, clock)
    for _ in range(20):  # 20 probes after 20 shared pauses: all refused
        sent = clock.now
        clock.now += 1.0
        limit.on_refused(sent_at=sent)
    assert (limit.limit, limit.threshold, limit.lowest) == (1, 32, 1)
    rounds = 0
    while limit.limit < 64:  # the storm is over: slow start back to 32, then +1 a round
        round_of_successes(limit, clock)
        rounds += 1
    assert rounds <= 5 + 33  # 1 -> 32 in five rounds, then one slot per round


def test_replies_to_requests_sent_before_a_cut_neither_grow_nor_cut() -> None:
    clock = FakeClock()
    limit = full(16, clock)
    old = clock.now
    clock.now += 1
    limit.on_refused(sent_at=old)
    assert limit.limit == 8
    for _ in range(100):
        limit.on_success(in_flight=16, sent_at=old)
    limit.on_refused(sent_at=old)
    assert (limit.limit, limit.cuts) == (8, 1)


def test_503s_and_timeouts_cut_only_as_a_streak() -> None:
    clock = FakeClock()
    limit = full(8, clock, streak=3)
    limit.on_overload(clock.now)
    limit.on_overload(clock.now)
    limit.on_success(in_flight=1, sent_at=clock.now)  # a success breaks the streak
    limit.on_overload(clock.now)
    limit.on_overload(clock.now)
    assert limit.limit == 8
    limit.on_overload(clock.now)
    assert limit.limit == 4


def test_growth_only_while_the_pool_is_full() -> None:
    clock = FakeClock()
    limit = full(16, clock)
    limit.on_refused(sent_at=clock.now)
    clock.now += 1
    assert limit.limit == 8
    for _ in range(100):
        limit.on_success(in_flight=7, sent_at=clock.now)  # idle slots: no evidence
    assert limit.limit == 8
    round_of_successes(limit, clock)  # one full round at the limit: one more slot
    assert limit.limit == 9


@given(
    st.integers(1, 256),
    st.lists(
        st.tuples(st.sampled_from(["429", "503", "ok"]), st.integers(0, 300), st.floats(0, 3)),
        max_size=300,
    ),
)
def test_the_limit_stays_between_one_and_the_maximum(
    maximum: int, events: list[tuple[str, int, float]]
) -> None:
    clock = FakeClock()
    limit = AdaptiveLimit(maximum, clock=clock)
    for kind, in_flight, age in events:
        clock.now += 0.01
        sent = clock.now - age
        if kind == "429":
            limit.on_refused(sent)
        elif kind == "503":
            limit.on_overload(sent)
        else:
            limit.on_success(in_flight, sent)
        assert 1 <= limit.lowest <= limit.limit <= maximum


def test_adaptive_limit_needs_a_positive_maximum() -> None:
    with pytest.raises(ValueError, match="maximum"):
        AdaptiveLimit(0)
