"""--rps / --rpm / --tpm through the real run: the mock's request log says when each
request arrived, so every window is checked where the provider would count it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import anyio
import orjson
import pytest
from click.testing import CliRunner
from jsonl import chat_request, read_jsonl, write_jsonl
from windows import arrivals, most_in_any_window

from batchrun import Pace, RetryConfig, RunConfig, run_batch
from batchrun.cli import main
from batchrun.mock import MockServer

Factory = Callable[..., MockServer]


@pytest.mark.anyio
async def test_rps_is_never_exceeded_in_any_second_and_starts_smoothly(
    mock_server: Factory, tmp_path: Path
) -> None:
    log = tmp_path / "requests.log"
    server = mock_server(request_log=log)
    path = write_jsonl(tmp_path / "in.jsonl", [chat_request(i) for i in range(40)])
    config = RunConfig(
        input_path=path,
        outdir=tmp_path / "out",
        base_url=server.url,
        concurrency=32,
        pace=Pace(rps=10),
        retry=RetryConfig(max_attempts=2, backoff_base=0.01),
    )
    with anyio.fail_after(30):
        report = await run_batch(config, api_key="k")
    assert report.exit_code == 0
    times = arrivals(log)
    assert len(times) == 40
    # The server's clock, not ours: one request of slack for the two clocks' jitter.
    assert most_in_any_window(times, 1.0) <= 10 + 1
    # Not a burst of 32 then silence: 40 requests at 10/s span about 3 s or more.
    assert times[-1] - times[0] >= 2.5


def test_rpm_from_the_cli_spreads_a_minutes_budget(mock_server: Factory, tmp_path: Path) -> None:
    log = tmp_path / "requests.log"
    server = mock_server(request_log=log)
    path = write_jsonl(tmp_path / "in.jsonl", [chat_request(i) for i in range(12)])
    args = ["run", str(path), "-o", str(tmp_path / "out"), "--base-url", server.url, "-q"]
    result = CliRunner().invoke(main, [*args, "--rpm", "600"], env={"MISTRAL_API_KEY": "k"})
    assert result.exit_code == 0, result.output
    times = arrivals(log)
    # 600 per minute is 10 per second: never a minute's budget at t = 0.
    assert most_in_any_window(times, 1.0) <= 10 + 1
    assert times[-1] - times[0] >= 0.15


def test_pacing_flags_refuse_nonsense(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [chat_request(0)])
    for flag, value in (("--rps", "0"), ("--rpm", "-5"), ("--tpm", "nan"), ("--rps", "inf")):
        result = CliRunner().invoke(main, ["run", str(path), flag, value, "--mock"])
        assert result.exit_code == 1, (flag, result.output)
        assert f"Invalid value for '{flag}'" in result.output


@pytest.mark.anyio
async def test_tpm_paces_by_estimated_tokens_and_settles_with_usage(
    mock_server: Factory, tmp_path: Path
) -> None:
    log = tmp_path / "requests.log"
    server = mock_server(request_log=log)
    lines = [chat_request(i, max_tokens=16) for i in range(12)]
    path = write_jsonl(tmp_path / "in.jsonl", lines)
    config = RunConfig(
        input_path=path,
        outdir=tmp_path / "out",
        base_url=server.url,
        concurrency=12,
        pace=Pace(tpm=6000),  # 100 tokens a second: a line's ~21-token estimate is 0.2 s
    )
    with anyio.fail_after(30):
        report = await run_batch(config, api_key="k")
    assert report.exit_code == 0
    times = arrivals(log)
    assert len(times) == 12
    assert times[-1] - times[0] >= 0.5  # unpaced, all 12 would arrive at once
    records = read_jsonl(tmp_path / "out" / "results.jsonl")
    assert all(orjson.dumps(r["response"]["usage"]) for r in records)
