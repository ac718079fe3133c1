"""Rate-limit headers: the documented Mistral and OpenAI examples read right, hostile
values are ignored (never raised), and a 429 with an empty allowance is recognised."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from batchrun.limits import Rate
from batchrun.ratelimit_headers import (
    MAX_COUNT,
    MAX_RESET_S,
    Allowance,
    RateObservation,
    parse_rate_headers,
    zero_allowance,
)

MISTRAL = {
    "x-ratelimit-limit-req-minute": "600",
    "x-ratelimit-remaining-req-minute": "599",
    "x-ratelimit-limit-tokens-minute": "500000",
    "x-ratelimit-remaining-tokens-minute": "499990",
    "x-ratelimit-limit-tokens-month": "1000000000",
    "x-ratelimit-remaining-tokens-month": "999999990",
    "x-ratelimit-tokens-query-cost": "10",
}
OPENAI = {
    "x-ratelimit-limit-requests": "60",
    "x-ratelimit-limit-tokens": "150000",
    "x-ratelimit-remaining-requests": "59",
    "x-ratelimit-remaining-tokens": "149984",
    "x-ratelimit-reset-requests": "1s",
    "x-ratelimit-reset-tokens": "6m0s",
}


def test_mistral_headers_read_as_documented() -> None:
    assert parse_rate_headers(MISTRAL) == RateObservation(
        requests_limit=600,
        requests_remaining=599,
        tokens_limit=500000,
        tokens_remaining=499990,
        month_limit=1000000000,
        month_remaining=999999990,
        query_cost=10,
    )


def test_openai_headers_read_as_documented() -> None:
    assert parse_rate_headers(OPENAI) == RateObservation(
        requests_limit=60,
        requests_remaining=59,
        tokens_limit=150000,
        tokens_remaining=149984,
        requests_reset_s=1.0,
        tokens_reset_s=360.0,
    )


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("1s", 1.0),
        ("6m0s", 360.0),
        ("20ms", 0.02),
        ("1h2m3.5s", 3723.5),
        ("250us", 250e-6),
        ("0.5", 0.5),
        (" 17 ", 17.0),
    ],
)
def test_reset_durations(value: str, seconds: float) -> None:
    observation = parse_rate_headers({"x-ratelimit-reset-tokens": value})
    assert observation is not None
    assert observation.tokens_reset_s == pytest.approx(seconds)


@pytest.mark.parametrize(
    "value",
    ["-5", "nan", "inf", "1e3", "12abc", "", "1_000", "٣", "0x10", str(MAX_COUNT + 1), "9" * 80],
)
def test_unusable_counts_are_ignored(value: str) -> None:
    assert parse_rate_headers({"x-ratelimit-limit-req-minute": value}) == RateObservation()


@pytest.mark.parametrize("value", ["-1s", "1x", "s", "1.s", "inf", "1e9s", "999999h", "1s 2m"])
def test_unusable_durations_are_ignored(value: str) -> None:
    assert parse_rate_headers({"x-ratelimit-reset-requests": value}) == RateObservation()


def test_names_are_case_insensitive_and_mistral_names_come_first() -> None:
    observation = parse_rate_headers(
        {"X-RateLimit-Limit-Req-Minute": "120", "x-ratelimit-limit-requests": "60"}
    )
    assert observation is not None
    assert observation.requests_limit == 120


def test_an_unusable_mistral_value_falls_back_to_the_openai_one() -> None:
    observation = parse_rate_headers(
        {"x-ratelimit-limit-req-minute": "lots", "x-ratelimit-limit-requests": "60"}
    )
    assert observation is not None
    assert observation.requests_limit == 60


def test_no_rate_limit_header_at_all_is_none() -> None:
    assert parse_rate_headers({"content-type": "application/json", "retry-after": "1"}) is None


def test_observed_limits_become_per_minute_rates() -> None:
    observation = parse_rate_headers(MISTRAL)
    assert observation is not None
    assert observation.rates() == (
        Rate("requests", 600, 60.0),
        Rate("tokens", 500000, 60.0),
    )
    zero = parse_rate_headers({"x-ratelimit-limit-req-minute": "0"})
    assert zero is not None
    assert zero.rates() == ()


header_names = st.sampled_from([*MISTRAL, *OPENAI]) | st.text(max_size=30)
header_values = (
    st.text(max_size=40)
    | st.integers().map(str)
    | st.floats().map(str)
    | st.sampled_from(["1s", "6m0s", "20ms", "1h2m3.5s", "-1", "nan", "1e400", "0"])
)


@given(st.dictionaries(header_names, header_values, max_size=15), st.integers(100, 599))
def test_any_headers_parse_without_raising_into_bounded_values(
    headers: dict[str, str], status: int
) -> None:
    observation = parse_rate_headers(headers)
    zero_allowance(status, headers)
    if observation is None:
        return
    for field in RateObservation.__slots__:
        value = getattr(observation, field)
        if value is None:
            continue
        assert math.isfinite(value)
        assert 0 <= value <= (MAX_RESET_S if field.endswith("_s") else MAX_COUNT)
    for rate in observation.rates():
        assert rate.amount > 0


# --- zero allowance ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "allowance"),
    [
        ("x-ratelimit-limit-req-minute", Allowance.REQUESTS_PER_MINUTE),
        ("x-ratelimit-limit-requests", Allowance.REQUESTS_PER_MINUTE),
        ("x-ratelimit-limit-tokens-minute", Allowance.TOKENS_PER_MINUTE),
        ("x-ratelimit-limit-tokens", Allowance.TOKENS_PER_MINUTE),
        ("x-ratelimit-limit-tokens-month", Allowance.TOKENS_PER_MONTH),
        ("x-ratelimit-remaining-tokens-month", Allowance.TOKENS_PER_MONTH),
    ],
)
def test_a_429_with_an_empty_allowance_names_it(header: str, allowance: Allowance) -> None:
    found = zero_allowance(429, {**MISTRAL, header: "0"})
    assert found is not None
    assert (found.allowance, found.header) == (allowance, header)
    assert allowance.value in found.message
    assert header in found.message


def test_an_ordinary_429_is_not_an_empty_allowance() -> None:
    # Nothing left this minute refills by itself: that is pacing, not a stop.
    headers = {
        **MISTRAL,
        "x-ratelimit-remaining-req-minute": "0",
        "x-ratelimit-remaining-tokens-minute": "0",
    }
    assert zero_allowance(429, headers) is None
    assert zero_allowance(429, {}) is None


def test_only_a_429_is_classified_and_never_on_garbage() -> None:
    assert zero_allowance(200, {"x-ratelimit-limit-req-minute": "0"}) is None
    assert zero_allowance(503, {"x-ratelimit-remaining-tokens-month": "0"}) is None
    assert zero_allowance(429, {"x-ratelimit-limit-req-minute": "-0"}) is None
    assert zero_allowance(429, {"x-ratelimit-limit-req-minute": "zero"}) is None
