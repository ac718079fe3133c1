"""Guards for unattended runs, through the real run against the mock server."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest
from click.testing import CliRunner
from jsonl import chat_request, read_jsonl, write_jsonl

from batchrun import ConfigError, RunConfig, run_batch
from batchrun.cli import main
from batchrun.config import Guards
from batchrun.mock import MockServer


@pytest.mark.anyio
async def test_deadline_stops_sending_drains_in_flight_and_resumes(
    mock_server: Callable[..., MockServer], tmp_path: Path
) -> None:
    server = mock_server(latency_ms=200)
    path = write_jsonl(tmp_path / "in.jsonl", [chat_request(i) for i in range(40)])
    config = RunConfig(
        input_path=path,
        outdir=tmp_path / "out",
        base_url=server.url,
        concurrency=4,
        guards=Guards(deadline=0.5),
    )
    with anyio.fail_after(30):
        report = await run_batch(config, api_key="k")
    assert report.exit_code == 3
    assert report.summary["reason"].startswith("--deadline 0.5 s reached")
    journal = read_jsonl(tmp_path / "out" / "journal.jsonl")
    # Every request sent was allowed to finish: each one has its (ok) record.
    assert 4 <= len(journal) < 40
    assert server.requests_received == len(journal)
    assert {r["status"] for r in journal} == {"ok"}
    with anyio.fail_after(30):
        again = await run_batch(dataclasses.replace(config, guards=Guards()), api_key="k")
    assert again.exit_code == 0
    assert [r["index"] for r in read_jsonl(tmp_path / "out" / "results.jsonl")] == list(range(40))
    assert server.requests_received == 40  # nothing sent twice


def test_deadline_flag_takes_units_and_refuses_nonsense(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [chat_request(0)])
    ok = CliRunner().invoke(
        main, ["run", str(path), "--mock", "--mock-latency-ms", "1", "--deadline", "2h", "-q"]
    )
    assert ok.exit_code == 0, ok.output
    for value in ("0", "-1s", "soon", "nanm", "infh"):
        result = CliRunner().invoke(main, ["run", str(path), "--mock", "--deadline", value])
        assert result.exit_code == 1, (value, result.output)
        assert "Invalid value for '--deadline'" in result.output
    with pytest.raises(ConfigError):
        Guards(deadline=float("nan"))
