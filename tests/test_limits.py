"""Pacing with fake time: the window and burst guarantees for any arrivals, limits learned
mid-run, settling token reservations; and the token estimate."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from windows import most_in_any_window

from batchrun.limits import (
    CHARS_PER_TOKEN,
    DEFAULT_MAX_TOKENS,
    TOKENS_PER_MESSAGE,
    Pacer,
    Rate,
    Unit,
    estimate_tokens,
)

EPS = 1e-9  # float slack when an entry sits exactly on a window's edge


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def most_in_any_span(events: list[tuple[float, float]], per_second: float) -> float:
    """The largest of (cost inside [t_i, t_j]) - per_second * (t_j - t_i): the burst."""
    events = sorted(events)
    best = 0.0
    for i, (start, _) in enumerate(events):
        total = 0.0
        for at, cost in events[i:]:
            total += cost
            best = max(best, total - per_second * (at - start))
    return best


rate_sets = st.fixed_dictionaries(
    {},
    optional={
        "rps": st.integers(1, 20),
        "rpm": st.integers(1, 600),
        "tpm": st.integers(50, 5000),
    },
)
arrivals = st.lists(
    st.tuples(st.floats(0, 5, allow_nan=False), st.integers(0, 50), st.floats(0, 1)),
    max_size=120,
)


def build_rates(chosen: dict[str, int]) -> list[Rate]:
    rates = []
    if "rps" in chosen:
        rates.append(Rate("requests", chosen["rps"], 1.0))
    if "rpm" in chosen:
        rates.append(Rate("requests", chosen["rpm"], 60.0))
    if "tpm" in chosen:
        rates.append(Rate("tokens", chosen["tpm"], 60.0))
    return rates


@settings(max_examples=300, deadline=None)
@given(rate_sets, arrivals)
def test_no_window_ever_holds_more_than_its_limit_and_bursts_stay_about_a_second(
    chosen: dict[str, int], pattern: list[tuple[float, int, float]]
) -> None:
    """Any arrival pattern (gaps, simultaneous callers), any costs, estimates settled
    down to the real usage: every 1 s / 60 s window holds at most its limit, and beyond
    the steady rate no stretch of time gets more than one second's budget."""
    clock = FakeClock()
    rates = build_rates(chosen)
    pacer = Pacer(rates, clock=clock)
    sent: list[tuple[float, int]] = []
    for gap, wanted, used in pattern:
        clock.now += gap
        estimate = min(wanted, chosen.get("tpm", wanted))
        reservation = pacer.reserve(estimate)
        assert reservation.delay >= 0
        assert reservation.at == clock.now + reservation.delay
        actual = math.floor(estimate * used)
        pacer.settle(reservation, actual)
        sent.append((reservation.at, actual))
    for rate in rates:
        events = [(at, 1.0 if rate.unit == "requests" else float(cost)) for at, cost in sent]
        assert most_in_any_window(events, rate.window) <= rate.amount + EPS
        # Beyond the steady rate: one second's budget, or one request bigger than that.
        per_second = rate.amount / rate.window
        burst = max([1.0, per_second] + [cost for _, cost in events])
        assert most_in_any_span(events, per_second) <= burst * (1 + 1e-9)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.floats(0, 3, allow_nan=False),
            st.sampled_from([("requests", 1.0), ("requests", 60.0), ("tokens", 60.0)]),
            st.integers(1, 300),
            st.integers(0, 40),
        ),
        max_size=150,
    )
)
def test_limits_learned_mid_run_hold_for_every_request_sent_after_them(
    steps: list[tuple[float, tuple[Unit, float], int, int]],
) -> None:
    """Each step may change one limit (as a reply's headers would) before a request.
    Every request is checked against the limits in force when it was booked, over a
    window that includes what was sent before the change."""
    clock = FakeClock()
    pacer = Pacer(clock=clock)
    sent: list[tuple[float, int]] = []
    for gap, (unit, window), amount, tokens in steps:
        clock.now += gap
        if amount % 7 == 0:
            pacer.remove_rate(unit, window)
        else:
            pacer.set_rate(Rate(unit, amount, window))
        reservation = pacer.reserve(tokens)
        sent.append((reservation.at, tokens))
        for rate in pacer.rates:
            in_window = [
                1.0 if rate.unit == "requests" else min(float(cost), rate.amount)
                for at, cost in sent
                if at > reservation.at - rate.window + EPS
            ]
            assert sum(in_window) <= rate.amount + EPS


def test_a_minutes_budget_is_spread_over_the_minute_not_spent_at_zero() -> None:
    clock = FakeClock()
    rpm = 600
    pacer = Pacer([Rate("requests", rpm, 60.0)], clock=clock)
    delays = [pacer.reserve().delay for _ in range(rpm)]
    assert sum(1 for d in delays if d == 0) == rpm // 60  # one second's budget at once
    assert delays == sorted(delays)
    assert delays[-1] == pytest.approx((rpm - rpm // 60) / (rpm / 60))


def test_concurrent_callers_are_spread_out_not_released_together() -> None:
    clock = FakeClock()
    pacer = Pacer([Rate("requests", 1, 1.0)], clock=clock)
    assert [pacer.reserve().delay for _ in range(4)] == [0.0, 1.0, 2.0, 3.0]


def test_no_limits_means_no_wait() -> None:
    pacer = Pacer(clock=FakeClock())
    assert all(pacer.reserve(10**6).delay == 0 for _ in range(1000))


def test_settling_below_the_estimate_gives_tokens_back() -> None:
    clock = FakeClock()
    tpm = 1000
    unsettled = Pacer([Rate("tokens", tpm, 60.0)], clock=clock)
    unsettled.reserve(tpm)
    pacer = Pacer([Rate("tokens", tpm, 60.0)], clock=clock)
    pacer.settle(pacer.reserve(tpm), 200)
    # The next large request waits only for what was really used to drain.
    assert pacer.reserve(500).delay == pytest.approx(200 / (tpm / 60))
    assert unsettled.reserve(500).delay == pytest.approx(60.0)


def test_settling_above_the_estimate_holds_the_next_requests_back() -> None:
    clock = FakeClock()
    tpm = 1000
    pacer = Pacer([Rate("tokens", tpm, 60.0)], clock=clock)
    pacer.settle(pacer.reserve(100), 900)
    clock.now += 30
    # 900 used + 500 wanted > 1000: wait until the first leaves its 60 s window.
    assert pacer.reserve(500).delay == pytest.approx(30.0)


def test_settling_a_reservation_that_left_the_window_changes_nothing() -> None:
    clock = FakeClock()
    tpm = 1000
    pacer = Pacer([Rate("tokens", tpm, 60.0)], clock=clock)
    old = pacer.reserve(10)
    clock.now += 120
    pacer.reserve(10)  # drops `old` from the window
    pacer.settle(old, tpm)
    clock.now += 1
    assert pacer.reserve(10).delay == 0


def test_a_request_larger_than_the_whole_window_is_sent_alone() -> None:
    clock = FakeClock()
    pacer = Pacer([Rate("tokens", 100, 60.0)], clock=clock)
    assert pacer.reserve(10**6).delay == 0
    assert pacer.reserve(1).delay == pytest.approx(60.0)


def test_a_lowered_limit_counts_what_was_already_sent() -> None:
    clock = FakeClock()
    pacer = Pacer([Rate("requests", 600, 60.0)], clock=clock)
    for _ in range(10):
        pacer.reserve()
    pacer.set_rate(Rate("requests", 10, 60.0))  # learned from headers mid-run
    assert pacer.rates == (Rate("requests", 10, 60.0),)
    assert pacer.reserve().delay == pytest.approx(60.0)
    pacer.remove_rate("requests", 60.0)
    assert pacer.reserve().delay == pytest.approx(60.0)  # first come, first served


def test_a_limit_learned_after_requests_were_sent_counts_them() -> None:
    clock = FakeClock()
    pacer = Pacer(clock=clock)  # nothing known yet: the first replies bring the headers
    for _ in range(10):
        pacer.reserve()
    clock.now += 1
    pacer.set_rate(Rate("requests", 10, 60.0))
    assert pacer.reserve().delay == pytest.approx(59.0)


@pytest.mark.parametrize(("amount", "window"), [(0, 1.0), (-1, 1.0), (math.inf, 1.0), (1, 0.0)])
def test_a_rate_must_be_positive_and_finite(amount: float, window: float) -> None:
    with pytest.raises(ValueError, match="rate"):
        Rate("requests", amount, window)


# --- the token estimate ---------------------------------------------------------------


def test_estimate_is_prompt_characters_per_token_plus_max_tokens() -> None:
    text = "x" * 400
    body = {"messages": [{"role": "user", "content": text}], "max_tokens": 16}
    assert estimate_tokens(body) == math.ceil(400 / CHARS_PER_TOKEN) + TOKENS_PER_MESSAGE + 16


def test_estimate_counts_text_chunks_tools_and_tool_calls() -> None:
    plain = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 1}
    chunks = {
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hello" * 40}]}],
        "max_tokens": 1,
    }
    tools = {**plain, "tools": [{"type": "function", "function": {"name": "f" * 200}}]}
    calls = {
        "messages": [
            {"role": "user", "content": "hello"},
            {"role": "assistant", "tool_calls": [{"function": {"arguments": "{}" * 200}}]},
        ],
        "max_tokens": 1,
    }
    base = estimate_tokens(plain)
    assert estimate_tokens(chunks) > base
    assert estimate_tokens(tools) > base + 200 / CHARS_PER_TOKEN
    assert estimate_tokens(calls) > base + 400 / CHARS_PER_TOKEN


def test_estimate_without_max_tokens_reserves_the_default() -> None:
    body: dict[str, Any] = {"messages": []}
    assert estimate_tokens(body) == DEFAULT_MAX_TOKENS
    assert estimate_tokens({**body, "max_completion_tokens": 7}) == 7
    assert estimate_tokens({**body, "max_tokens": True}) == DEFAULT_MAX_TOKENS


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
    max_leaves=20,
)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(["messages", "tools", "max_tokens", "x"]), json_values))
def test_estimate_never_raises_and_is_never_negative(body: dict[str, Any]) -> None:
    assert estimate_tokens(body) >= 0
