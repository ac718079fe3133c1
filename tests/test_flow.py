"""Flow control through the real run against the mock's provider-like limits: limits
learned from headers, the adaptive in-flight limit, 429s outside max_attempts, storms,
the guards, and summary.json's `flow` section. Rates at full scale: benchmarks/flow.py."""

from __future__ import annotations

import io
import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from click.testing import CliRunner
from jsonl import chat_request, read_jsonl, write_jsonl
from rich.console import Console
from windows import arrivals, most_in_any_window

from batchrun import RetryConfig, RunConfig, RunReport, run_batch
from batchrun.cli import main
from batchrun.config import Guards, Pace
from batchrun.flow import LEARNED_SHARE, FlowControl
from batchrun.inflight import INITIAL_LIMIT
from batchrun.mock import MockServer

Factory = Callable[..., MockServer]
FAST = RetryConfig(max_attempts=3, backoff_base=0.01, backoff_cap=0.05, rate_limit_wait=30)


async def run(config: RunConfig, seconds: float = 60) -> RunReport:
    with anyio.fail_after(seconds):
        return await run_batch(config, api_key="k")


def config(path: Path, server: MockServer, **options: Any) -> RunConfig:
    return RunConfig(
        input_path=path,
        outdir=path.with_suffix(".out"),
        base_url=server.url,
        retry=options.pop("retry", FAST),
        fsync=False,
        **options,
    )


def lines(tmp_path: Path, count: int, **extra: Any) -> Path:
    return write_jsonl(tmp_path / "in.jsonl", [chat_request(i, **extra) for i in range(count)])


def statuses(report: RunReport) -> list[str]:
    return [r["status"] for r in read_jsonl(report.outdir / "results.jsonl")]


@pytest.mark.anyio
async def test_limits_are_learned_from_headers_and_429s_stay_rare(
    mock_server: Factory, tmp_path: Path
) -> None:
    log = tmp_path / "requests.log"
    server = mock_server(limit_rps=20, limit_rpm=1200, request_log=log)
    report = await run(config(lines(tmp_path, 90), server, concurrency=32))
    assert report.exit_code == 0 and statuses(report) == ["ok"] * 90
    flow = report.summary["flow"]
    learned = {"unit": "requests", "per": "minute", "amount": 1200 * LEARNED_SHARE}
    assert {**learned, "source": "headers"} in flow["limits"]
    assert flow["headers"]["requests_limit"] == 1200
    times = arrivals(log)
    # Told nothing, batchrun paced itself: no second held more than the server allows,
    # but for the first INITIAL_LIMIT requests, which go out before any reply has named
    # the limit (on a loaded machine a late event loop can crowd them into the paced
    # second that follows), and hardly anything was refused.
    assert most_in_any_window(times, 1.0) <= 20 + INITIAL_LIMIT
    assert flow["rate_limited"] <= INITIAL_LIMIT
    assert times[-1] - times[0] >= 3.5  # 90 requests at 19/s, not all at once


@pytest.mark.anyio
@pytest.mark.parametrize("concurrency", [8, 64])
async def test_an_empty_allowance_costs_a_handful_of_requests_at_any_concurrency(
    mock_server: Factory, tmp_path: Path, concurrency: int
) -> None:
    server = mock_server(limit_rpm=0)
    report = await run(config(lines(tmp_path, 200), server, concurrency=concurrency))
    assert report.exit_code == 3
    assert "requests per minute allowance is empty" in report.summary["reason"]
    assert server.requests_received <= 5


@pytest.mark.anyio
async def test_429s_use_no_attempt_and_a_line_outlasts_them(
    mock_server: Factory, tmp_path: Path
) -> None:
    server = mock_server(retry_after_s=0.01)
    flaky = chat_request(0, metadata={"mock": {"fault": "429", "times": 6}})
    path = write_jsonl(tmp_path / "in.jsonl", [flaky, *(chat_request(i) for i in range(1, 5))])
    report = await run(config(path, server, retry=RetryConfig(max_attempts=2)))
    assert report.exit_code == 0
    first = read_jsonl(report.outdir / "results.jsonl")[0]
    assert first["status"] == "ok" and first["attempts"] == 7
    flow = report.summary["flow"]
    assert flow["rate_limited"] == 6
    assert flow["retries_by_cause"] == {"rate_limited": 6}
    assert flow["pauses"] >= 1


@pytest.mark.anyio
async def test_after_rate_limit_wait_a_line_is_rate_limited_and_a_rerun_sends_it(
    mock_server: Factory, tmp_path: Path
) -> None:
    server = mock_server(retry_after_s=0.05)
    stuck = chat_request(0, metadata={"mock": {"fault": "429"}})
    path = write_jsonl(tmp_path / "in.jsonl", [stuck, *(chat_request(i) for i in range(1, 4))])
    retry = RetryConfig(max_attempts=2, rate_limit_wait=0.4)
    report = await run(config(path, server, retry=retry))
    assert report.exit_code == 2
    record = read_jsonl(report.outdir / "results.jsonl")[0]
    assert record["error"]["type"] == "rate_limited" and record["error"]["retryable"] is True
    assert record["attempts"] > 2  # 429s are not attempts: it waited them out
    before = server.requests_received
    again = await run(config(path, server, retry=retry))  # no --retry-failed needed
    assert server.requests_received > before
    assert again.summary["counts"]["ok"] == 3


@pytest.mark.anyio
async def test_a_storm_is_waited_out_with_little_extra_load_and_concurrency_recovers(
    mock_server: Factory, tmp_path: Path
) -> None:
    server = mock_server(latency_ms=20, storms=((0.5, 2.0),), retry_after_s=0.25)
    report = await run(config(lines(tmp_path, 600), server, concurrency=16))
    assert report.exit_code == 0 and statuses(report) == ["ok"] * 600
    flow = report.summary["flow"]
    assert flow["rate_limited"] > 0
    assert server.requests_received < 1.5 * 600
    assert flow["in_flight"]["lowest_limit"] < 16
    assert flow["in_flight"]["final_limit"] == 16


@pytest.mark.anyio
async def test_max_tokens_total_stops_before_the_limit_and_counts_every_session(
    mock_server: Factory, tmp_path: Path
) -> None:
    server = mock_server()
    path = lines(tmp_path, 100, max_tokens=20)
    limit = 600
    report = await run(config(path, server, concurrency=4, guards=Guards(max_tokens_total=limit)))
    assert report.exit_code == 3
    assert report.summary["flow"]["guard"] == "max_tokens_total"
    assert "--max-tokens-total 600 reached" in report.summary["reason"]
    used = report.summary["tokens"]["total_tokens"]
    assert 0 < used <= limit
    assert 0 < report.summary["counts"]["ok"] < 100
    sent = server.requests_received
    # The same limit again: the first session's tokens count, so only what still fits
    # under the limit (a line or two, by estimate) is sent.
    again = await run(config(path, server, concurrency=4, guards=Guards(max_tokens_total=limit)))
    assert again.exit_code == 3 and server.requests_received - sent <= 3
    assert again.summary["tokens"]["total_tokens"] <= limit
    done = await run(config(path, server, guards=Guards(max_tokens_total=10**6)))
    assert done.exit_code == 0 and statuses(done) == ["ok"] * 100


@pytest.mark.anyio
async def test_max_error_rate_stops_a_failing_run_early(
    mock_server: Factory, tmp_path: Path
) -> None:
    server = mock_server(fault="500")
    guards = Guards(max_error_rate=0.5, error_window=40, error_min_count=10)
    retry = RetryConfig(max_attempts=1)
    report = await run(
        config(lines(tmp_path, 400), server, concurrency=4, guards=guards, retry=retry)
    )
    assert report.exit_code == 3
    assert report.summary["flow"]["guard"] == "max_error_rate"
    assert "--max-error-rate 0.5 passed" in report.summary["reason"]
    assert server.requests_received < 40
    healthy = mock_server()
    again = await run(config(lines(tmp_path, 400), healthy, guards=guards, retry_failed=True))
    assert again.exit_code == 0 and statuses(again) == ["ok"] * 400


@pytest.mark.anyio
async def test_given_rates_win_over_higher_learned_ones(
    mock_server: Factory, tmp_path: Path
) -> None:
    server = mock_server(limit_rpm=6000)
    report = await run(config(lines(tmp_path, 20), server, pace=Pace(rpm=3000)))
    limits = report.summary["flow"]["limits"]
    assert {"unit": "requests", "per": "minute", "amount": 3000, "source": "flag"} in limits


@pytest.mark.anyio
async def test_the_gate_never_lets_more_out_than_the_limit_and_cancellation_frees_slots() -> None:
    flow = FlowControl(Pace(), 8, lambda: None)
    out = most = 0
    rng = random.Random(7)

    async def one(delay: float) -> None:
        nonlocal out, most
        reservation = await flow.admit(0)
        out += 1
        most = max(most, out)
        try:
            await anyio.sleep(delay)
        finally:
            out -= 1
            flow.release()
        del reservation

    with anyio.fail_after(10):
        async with anyio.create_task_group() as group:
            for _ in range(200):
                group.start_soon(one, rng.uniform(0, 0.003))
        assert most <= 8 and flow.in_flight == 0
        with anyio.move_on_after(0.01):  # cancelled while waiting and while holding slots
            async with anyio.create_task_group() as group:
                for _ in range(50):
                    group.start_soon(one, 1.0)
        assert flow.in_flight == 0


def test_flow_flags(tmp_path: Path, mock_server: Factory) -> None:
    path = lines(tmp_path, 3)
    server = mock_server()
    ok = CliRunner().invoke(
        main,
        [
            "run", str(path), "--base-url", server.url, "-q", "--max-rate-limit-wait", "10m",
            "--max-error-rate", "0.5", "--max-tokens-total", "100000",
        ],
        env={"MISTRAL_API_KEY": "k"},
    )  # fmt: skip
    assert ok.exit_code == 0, ok.output
    for flag, value in [("--max-error-rate", "0"), ("--max-error-rate", "1.5"),
                        ("--max-tokens-total", "0"), ("--max-rate-limit-wait", "-1")]:  # fmt: skip
        bad = CliRunner().invoke(main, ["run", str(path), "--mock", flag, value])
        assert bad.exit_code == 1 and f"Invalid value for '{flag}'" in bad.output


@pytest.mark.anyio
async def test_a_server_without_rate_headers_leaves_only_the_given_limits(
    mock_server: Factory, tmp_path: Path
) -> None:
    server = mock_server(rate_headers=False)
    report = await run(config(lines(tmp_path, 30), server, pace=Pace(rps=1000)))
    flow = report.summary["flow"]
    assert flow["headers"] is None
    assert flow["limits"] == [
        {"unit": "requests", "per": "second", "amount": 1000, "source": "flag"}
    ]
    assert flow["in_flight"]["concurrency"] == 32 and flow["guard"] is None
    assert flow["achieved"]["requests_per_s"] > 0


@pytest.mark.anyio
async def test_the_progress_line_shows_limits_in_flight_limit_and_pauses(
    mock_server: Factory, tmp_path: Path
) -> None:
    server = mock_server(limit_rpm=3000, latency_ms=30, retry_after_s=1.2)
    flaky = chat_request(0, metadata={"mock": {"fault": "429", "times": 1}})
    path = write_jsonl(tmp_path / "in.jsonl", [flaky, *(chat_request(i) for i in range(1, 80))])
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=400)
    with anyio.fail_after(60):
        report = await run_batch(
            config(path, server, concurrency=8), api_key="k", console=console, show_progress=True
        )
    assert report.exit_code == 0
    shown = out.getvalue()
    assert "2,850 req/minute (learned)" in shown
    assert re.search(r"in flight \d+ \(limit \d+\)", shown)
    assert "paused 1 s in all" in shown or "paused 2 s: HTTP 429" in shown


@pytest.mark.anyio
async def test_a_rejected_key_costs_a_handful_of_requests_at_any_concurrency(
    mock_server: Factory, tmp_path: Path
) -> None:
    server = mock_server(fault="401")
    report = await run(config(lines(tmp_path, 300), server, concurrency=64))
    assert report.exit_code == 3 and "consecutive HTTP 401" in report.summary["reason"]
    assert server.requests_received <= 5
