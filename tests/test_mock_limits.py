"""The mock's provider-like limits: the windows on a fake clock (batchrun/mock/limits.py),
then over real 127.0.0.1 HTTP, through `batchrun mock-server` itself at the end."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import orjson
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from batchrun.cli import main
from batchrun.mock import MockConfig, MockServer
from batchrun.mock.limits import ADVERTISED, MONTH_S, Limiter, Window, parse_storms

CHAT = "/v1/chat/completions"
KEY = {"authorization": "Bearer k"}
Factory = Callable[..., MockServer]
RATE = "x-ratelimit-"


class FakeClock:
    """Time that moves only when a test says so; the server thread reads it."""

    def __init__(self) -> None:
        self.now = 100.0  # not 0: the server measures from its start, whatever the clock says

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def body(text: str = "hello there", **fields: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": text}], **fields}


class Reply:
    def __init__(self, status: int, headers: dict[str, str], data: bytes) -> None:
        self.status, self.headers, self.data = status, headers, data

    def json(self) -> Any:
        return orjson.loads(self.data)

    def rate(self, name: str) -> int:
        return int(self.headers[RATE + name])


async def post(server: MockServer | str, request: dict[str, Any], **headers: str) -> Reply:
    url = (server if isinstance(server, str) else server.url) + CHAT
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=orjson.dumps(request), headers=KEY | headers) as r,
    ):
        return Reply(r.status, {k.lower(): v for k, v in r.headers.items()}, await r.read())


async def tokens_of(mock_server: Factory, request: dict[str, Any]) -> int:
    """What the mock's reply to `request` says in usage.total_tokens, asked of an unlimited one."""
    total: int = (await post(mock_server(), request)).json()["usage"]["total_tokens"]
    return total


# --- the windows, on a fake clock ----------------------------------------------------------


def test_window_frees_exactly_after_its_length() -> None:
    window = Window(1.0, limit=2)
    window.add(10.0, 1)
    window.add(10.25, 1)
    window.expire(10.5)
    assert window.wait(10.5, 1) == pytest.approx(0.5)  # when the 10.0 arrival leaves
    window.expire(10.999)
    assert window.used == 2 and window.wait(10.999, 1) > 0
    assert window.expire(11.0) == 1 and window.wait(11.0, 1) == 0.0
    assert window.wait(11.0, 3) == float("inf")  # more than the limit never fits


def test_window_counts_tokens_and_waits_for_enough_room() -> None:
    window = Window(60.0, limit=100)
    for at, tokens in ((0.0, 30), (10.0, 30), (20.0, 30)):
        window.add(at, tokens)
    window.expire(30.0)
    assert window.wait(30.0, 10) == 0.0
    assert window.wait(30.0, 40) == pytest.approx(30.0)  # the first 30 must leave
    assert window.wait(30.0, 70) == pytest.approx(40.0)  # and the second
    assert window.expire(70.0) == 30


def test_limiter_refuses_over_rps_without_counting_and_reopens() -> None:
    limiter = Limiter(rps=3)
    assert all(limiter.admit(0.1 * i, 5).refused is None for i in range(3))
    refused = limiter.admit(0.35, 5)
    assert refused.refused == "rps" and refused.retry_after == pytest.approx(0.65)
    assert refused.quota.req_minute == 180 and refused.quota.req_minute_left == 177
    assert refused.quota.cost == 0 and refused.quota.tokens_minute_left == ADVERTISED[1] - 15
    assert limiter.admit(0.35 + refused.retry_after, 5).refused is None
    assert limiter.view(0.99).req_minute_left == 176  # four admitted, the refusal not counted


def test_limiter_headers_count_down_by_each_cost() -> None:
    limiter = Limiter(rpm=10, tpm=1000, tokens_month=5000)
    first, second = limiter.admit(0.0, 120).quota, limiter.admit(1.0, 80).quota
    assert first == (10, 9, 1000, 880, 5000, 4880, 120)
    assert second == (10, 8, 1000, 800, 5000, 4800, 80)
    assert limiter.view(60.0) == (10, 9, 1000, 920, 5000, 4800, 0)  # minute frees, month not
    assert limiter.view(61.0) == (10, 10, 1000, 1000, 5000, 4800, 0)


def test_limiter_tpm_refuses_what_does_not_fit() -> None:
    limiter = Limiter(tpm=100)
    assert limiter.admit(0.0, 60).refused is None
    verdict = limiter.admit(5.0, 50)
    assert verdict.refused == "tpm" and verdict.retry_after == pytest.approx(55.0)
    assert limiter.admit(5.0, 40).refused is None  # a smaller one still fits
    assert limiter.admit(6.0, 101).retry_after == 60.0  # never fits: the window's length


@pytest.mark.parametrize(
    ("options", "allowance", "header"),
    [
        ({"rps": 0}, "rps", 0),
        ({"rpm": 0}, "rpm", 0),
        ({"tpm": 0}, "tpm", 2),
        ({"tokens_month": 0}, "tokens_month", 4),
    ],
)
def test_limiter_zero_allowance_refuses_everything(
    options: dict[str, Any], allowance: str, header: int
) -> None:
    limiter = Limiter(**options)
    for at in (0.0, 100.0, 10_000.0):
        verdict = limiter.admit(at, 0)
        assert verdict.refused == allowance and verdict.retry_after > 0
        assert verdict.quota[header] == 0


def test_limiter_month_budget_is_spent_then_every_request_refused() -> None:
    limiter = Limiter(tokens_month=100)
    assert limiter.admit(0.0, 60).quota.tokens_month_left == 40
    assert limiter.admit(1.0, 60).quota.tokens_month_left == 0  # the last one may overdraw
    for at in (2.0, 3600.0):
        verdict = limiter.admit(at, 1)
        assert verdict.refused == "tokens_month" and verdict.quota.tokens_month_left == 0
        assert verdict.retry_after == pytest.approx(MONTH_S - at)


def test_limiter_storm_spans_are_half_open() -> None:
    limiter = Limiter(storms=((2.0, 4.0), (10.0, 11.0)), storm_retry_after=0.5)
    outcomes = {at: limiter.admit(at, 1) for at in (1.999, 2.0, 3.999, 4.0, 10.5, 11.0)}
    assert {at: v.refused for at, v in outcomes.items()} == {
        1.999: None,
        2.0: "storm",
        3.999: "storm",
        4.0: None,
        10.5: "storm",
        11.0: None,
    }
    assert outcomes[2.0].retry_after == 0.5


ARRIVALS = st.lists(
    st.tuples(st.floats(0.0, 0.4, allow_nan=False), st.integers(0, 40)), max_size=120
)


@settings(max_examples=150, deadline=None)
@given(arrivals=ARRIVALS, rps=st.integers(1, 6), tpm=st.integers(40, 200))
def test_no_window_ever_holds_more_than_its_limit(
    arrivals: list[tuple[float, int]], rps: int, tpm: int
) -> None:
    """Admitted requests never exceed the limit in any window, and a refusal's Retry-After
    is honest: the same request, retried then (and nothing else meanwhile), is admitted."""
    limiter, now, admitted = Limiter(rps=rps, tpm=tpm), 0.0, []
    for gap, cost in arrivals:
        now += gap
        verdict = limiter.admit(now, cost)
        if verdict.refused is None:
            admitted.append((now, cost))
            continue
        later = copy.deepcopy(limiter)
        assert later.admit(now + verdict.retry_after + 0.002, cost).refused is None
    for at, _ in admitted:
        assert sum(1 for t, _ in admitted if at - 1.0 < t <= at) <= rps
        assert sum(c for t, c in admitted if at - 60.0 < t <= at) <= tpm


def test_parse_storms() -> None:
    assert parse_storms(["5:10", "20:25.5, 30:31"]) == ((5.0, 10.0), (20.0, 25.5), (30.0, 31.0))
    assert parse_storms([]) == ()
    for bad in ("5", "10:5", "5:5", "-1:2", "a:b", "1:inf", "nan:2"):
        with pytest.raises(ValueError, match="START:END"):
            parse_storms([bad])


# --- over real HTTP ------------------------------------------------------------------------


@pytest.mark.anyio
async def test_over_rps_is_a_429_with_retry_after_and_true_headers(
    mock_server: Factory, clock: FakeClock
) -> None:
    server = mock_server(limit_rps=2, limit_tokens_month=10_000, clock=clock)
    with anyio.fail_after(10):
        cost = await tokens_of(mock_server, body())
        first, second = await post(server, body()), await post(server, body())
        clock.now += 0.25
        refused = await post(server, body())
    assert first.status == second.status == 200
    assert first.json()["usage"]["total_tokens"] == first.rate("tokens-query-cost") == cost
    assert first.rate("limit-req-minute") == 120  # 2 per second, as a minute
    assert [r.rate("remaining-req-minute") for r in (first, second, refused)] == [119, 118, 118]
    left = [r.rate("remaining-tokens-minute") for r in (first, second, refused)]
    assert left == [ADVERTISED[1] - cost, ADVERTISED[1] - 2 * cost, ADVERTISED[1] - 2 * cost]
    month = [r.rate("remaining-tokens-month") for r in (first, second, refused)]
    assert month == [10_000 - cost, 10_000 - 2 * cost, 10_000 - 2 * cost]
    assert refused.status == 429 and refused.rate("tokens-query-cost") == 0
    assert refused.headers["retry-after"] == "0.75" and refused.headers["retry-after-ms"] == "750"
    error = refused.json()
    assert error["object"] == "error" and error["type"] == "rate_limited"
    assert "per second" in error["message"]


@pytest.mark.anyio
async def test_window_frees_after_its_length_over_http(
    mock_server: Factory, clock: FakeClock
) -> None:
    server = mock_server(limit_rpm=2, clock=clock)
    with anyio.fail_after(10):
        statuses = [(await post(server, body())).status for _ in range(3)]
        clock.now += 59.9
        still = await post(server, body())
        clock.now += 0.1
        freed = await post(server, body())
    assert statuses == [200, 200, 429] and still.status == 429
    assert still.headers["retry-after-ms"] == "100"
    assert freed.status == 200 and freed.rate("remaining-req-minute") == 1
    assert freed.rate("limit-req-minute") == 2


@pytest.mark.anyio
async def test_tpm_charges_what_the_reply_says_streamed_or_not(
    mock_server: Factory, clock: FakeClock
) -> None:
    with anyio.fail_after(10):
        cost = await tokens_of(mock_server, body())
        server = mock_server(limit_tpm=2 * cost, clock=clock)
        streamed = await post(server, body(stream=True))
        plain = await post(server, body())
        refused = await post(server, body())
    events = [e for e in streamed.data.split(b"\n\n") if e.startswith(b"data: {")]
    assert orjson.loads(events[-1][6:])["usage"]["total_tokens"] == cost
    assert streamed.rate("remaining-tokens-minute") == cost
    assert plain.rate("remaining-tokens-minute") == 0
    assert refused.status == 429 and refused.json()["message"].startswith("Tokens")
    assert refused.headers["retry-after"] == "60"


@pytest.mark.anyio
async def test_injected_faults_and_refusals_are_metered_as_a_provider_would(
    mock_server: Factory, clock: FakeClock
) -> None:
    server = mock_server(limit_rpm=5, clock=clock)
    with anyio.fail_after(10):
        injected = await post(server, body(), **{"x-mock-fault": "429"})
        failed = await post(server, body(), **{"x-mock-fault": "500"})
        unauthorized = await post(server, body(), authorization="")
    assert injected.status == 429 and injected.rate("remaining-req-minute") == 5
    assert failed.status == 500 and failed.rate("remaining-req-minute") == 4
    assert failed.rate("tokens-query-cost") == 0  # no completion, no tokens
    assert unauthorized.status == 401 and unauthorized.rate("remaining-req-minute") == 4


@pytest.mark.anyio
async def test_tokens_month_exhaustion(mock_server: Factory, clock: FakeClock) -> None:
    with anyio.fail_after(10):
        cost = await tokens_of(mock_server, body())
        server = mock_server(limit_tokens_month=cost + 1, clock=clock)
        replies = [await post(server, body()) for _ in range(3)]
        clock.now += 3600
        replies.append(await post(server, body()))
    assert [r.status for r in replies] == [200, 200, 429, 429]
    assert [r.rate("remaining-tokens-month") for r in replies] == [1, 0, 0, 0]
    assert all(r.rate("limit-tokens-month") == cost + 1 for r in replies)
    assert replies[-1].json()["message"] == "Monthly tokens limit exceeded"


@pytest.mark.anyio
async def test_storm_span_is_429_and_not_outside_it(mock_server: Factory, clock: FakeClock) -> None:
    server = mock_server(storms=((5.0, 7.0),), retry_after_s=0.25, clock=clock)
    statuses = {}
    with anyio.fail_after(10):
        for at in (0.0, 4.99, 5.0, 6.99, 7.0, 30.0):
            clock.now = 100.0 + at
            reply = await post(server, body(stream=True))
            statuses[at] = reply.status
            if reply.status == 429:
                assert reply.headers["retry-after"] == "0.25"
                assert reply.rate("remaining-req-minute") == ADVERTISED[0] - 2
    assert statuses == {0.0: 200, 4.99: 200, 5.0: 429, 6.99: 429, 7.0: 200, 30.0: 200}


@pytest.mark.anyio
@pytest.mark.parametrize("limit", ["limit_rps", "limit_rpm", "limit_tpm"])
async def test_zero_allowance_refuses_every_request(
    mock_server: Factory, clock: FakeClock, limit: str
) -> None:
    server = mock_server(**{limit: 0}, clock=clock)
    with anyio.fail_after(10):
        replies = [await post(server, body(f"line {i}")) for i in range(3)]
        clock.now += 120
        replies.append(await post(server, body()))
    assert all(r.status == 429 and "retry-after" in r.headers for r in replies)
    header = "limit-tokens-minute" if limit == "limit_tpm" else "limit-req-minute"
    assert all(r.rate(header) == 0 for r in replies)


@pytest.mark.anyio
async def test_request_log_carries_arrival_time_and_status(
    mock_server: Factory, clock: FakeClock, tmp_path: Path
) -> None:
    log = tmp_path / "requests.jsonl"
    server = mock_server(limit_rps=1, request_log=log, clock=clock)
    with anyio.fail_after(10):
        for step in (0.25, 0.5, 0.5, 0.25):
            clock.now += step
            await post(server, body())
        await post(server, body(), **{"x-mock-fault": "503"})
    lines = [orjson.loads(line) for line in log.read_bytes().splitlines()]
    assert [(line["t"], line["status"], line["limit"]) for line in lines] == [
        (0.25, 200, None),
        (0.75, 429, "rps"),
        (1.25, 200, None),
        (1.5, 429, "rps"),
        (1.5, 429, "rps"),  # the fault was decided, then the window refused it
    ]


def test_unlimited_server_advertises_a_generous_account(clock: FakeClock) -> None:
    with MockServer(MockConfig(clock=clock)) as server:
        reply = anyio.run(post, server, body())
    assert reply.rate("limit-req-minute") == ADVERTISED[0]
    assert reply.rate("remaining-req-minute") == ADVERTISED[0] - 1
    assert reply.rate("limit-tokens-month") == ADVERTISED[2]


# --- through `batchrun mock-server` --------------------------------------------------------


@pytest.fixture
def mock_process(tmp_path: Path) -> Iterator[Callable[..., tuple[str, Path]]]:
    """Starts `batchrun mock-server --port 0 ...`; gives its URL and request log."""
    processes: list[subprocess.Popen[bytes]] = []

    def start(*args: str, env: dict[str, str] | None = None) -> tuple[str, Path]:
        log = tmp_path / f"log{len(processes)}.jsonl"
        command = [sys.executable, "-m", "batchrun", "mock-server", "--port", "0"]
        process = subprocess.Popen(
            [*command, "--request-log", str(log), *args],
            stderr=subprocess.PIPE,
            env={**os.environ, **(env or {})},
        )
        processes.append(process)
        assert process.stderr is not None
        banner = process.stderr.readline().decode()  # "mock server listening on URL"
        return banner.split()[-1], log

    yield start
    for process in processes:
        process.terminate()
        process.wait(10)


def test_mock_server_command_enforces_its_limits(
    mock_process: Callable[..., tuple[str, Path]],
) -> None:
    url, log = mock_process(
        "--limit-rpm", "2", "--limit-tokens-month", "1000000", "--storm", "3600:3601"
    )

    async def three() -> list[Reply]:
        with anyio.fail_after(20):
            return [await post(url, body()) for _ in range(3)]

    replies = anyio.run(three)
    assert [r.status for r in replies] == [200, 200, 429]
    assert replies[2].rate("limit-req-minute") == 2
    cost = replies[0].json()["usage"]["total_tokens"]
    assert replies[2].rate("remaining-tokens-month") == 1_000_000 - 2 * cost
    assert 58 < float(replies[2].headers["retry-after"]) <= 60
    lines = [orjson.loads(line) for line in log.read_bytes().splitlines()]
    assert [line["status"] for line in lines] == [200, 200, 429]
    times = [line["t"] for line in lines]
    assert 0 < times[0] <= times[1] <= times[2] < 20


def test_mock_server_zero_allowance_from_the_environment(
    mock_process: Callable[..., tuple[str, Path]],
) -> None:
    url, _ = mock_process(env={"BATCHRUN_MOCK_SERVER_LIMIT_RPM": "0"})
    reply = anyio.run(post, url, body())
    assert reply.status == 429 and reply.rate("limit-req-minute") == 0


@pytest.mark.parametrize("storm", ["5", "10:5", "-1:3", "x:y"])
def test_mock_server_refuses_a_bad_storm(storm: str) -> None:
    result = CliRunner().invoke(main, ["mock-server", "--storm", storm])
    assert result.exit_code == 1 and "START:END" in result.output
