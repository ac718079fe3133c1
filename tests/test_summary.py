"""summary.json figures mean what they say: no rate for what did not happen, no decode
rate from output that arrived all at once."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from click.testing import CliRunner
from hostile import ODD, RECORD
from hypothesis import given
from hypothesis import strategies as st
from jsonl import write_jsonl

from batchrun import RetryConfig, RunConfig, RunReport, run_batch
from batchrun.cli import main
from batchrun.mock import MockServer
from batchrun.records import Record
from batchrun.scoreboard import ScoreBoard
from batchrun.summary import MIN_DECODE_MS, TOKEN_KEYS, Totals

Factory = Callable[..., MockServer]


def line(i: int, **fields: Any) -> dict[str, Any]:
    messages = [{"role": "user", "content": f"summary line {i} " + "word " * 20}]
    return {"model": "mistral-small-latest", "messages": messages, **fields}


async def run_lines(server: MockServer, tmp_path: Path, lines: list[Any]) -> RunReport:
    tmp_path.mkdir(exist_ok=True)
    path = tmp_path / "in.jsonl"
    write_jsonl(path, lines)
    config = RunConfig(
        input_path=path,
        outdir=tmp_path / "out",
        base_url=server.url,
        retry=RetryConfig(max_attempts=1),
        fsync=False,
    )
    with anyio.fail_after(30):
        return await run_batch(config, api_key="k")


@pytest.mark.anyio
async def test_a_session_that_sent_nothing_has_no_request_rate(
    mock_server: Factory, tmp_path: Path
) -> None:
    server = mock_server()
    invalid = await run_lines(server, tmp_path, [{"model": "m"}] * 50)  # no messages: never sent
    session = invalid.summary["session"]
    assert session["requests_sent"] == 0 and session["completed"] == 50
    assert session["requests_per_s"] is None and session["tokens_per_s"] is None
    assert session["completion_tokens_per_s"] is None
    assert session["lines_per_s"] is not None and session["lines_per_s"] > 0


@pytest.mark.anyio
async def test_rates_of_a_session_and_of_a_resume_with_nothing_to_do(
    mock_server: Factory, tmp_path: Path
) -> None:
    server = mock_server()
    first = await run_lines(server, tmp_path, [line(i) for i in range(20)])
    session = first.summary["session"]
    assert session["requests_per_s"] == pytest.approx(20 / session["wall_time_s"], rel=0.05)
    assert session["tokens_per_s"] > 0
    resumed = await run_lines(server, tmp_path, [line(i) for i in range(20)])
    assert resumed.summary["session"]["requests_per_s"] is None
    assert resumed.summary["session"]["lines_per_s"] is None  # nothing completed either


def test_the_closing_table_of_a_session_that_sent_nothing(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"not json\n" * 3)
    result = CliRunner().invoke(main, ["run", str(path), "--mock"])
    assert result.exit_code == 2, result.output
    assert "3 lines in" in result.output and "req/s" not in result.output


@pytest.mark.anyio
async def test_decode_rate_needs_output_spread_over_time(
    mock_server: Factory, tmp_path: Path
) -> None:
    server = mock_server()
    at_once = await run_lines(server, tmp_path / "a", [line(i, stream=True) for i in range(10)])
    assert at_once.summary["ttft_ms"] is not None
    assert at_once.summary["decode_tokens_per_s"] is None  # every chunk in one burst
    spread = [line(i, stream=True, metadata={"mock": {"chunk_delay_ms": 15}}) for i in range(4)]
    paced = await run_lines(server, tmp_path / "b", spread)
    records = [
        orjson.loads(x)
        for x in (tmp_path / "b" / "out" / "results.jsonl").read_bytes().splitlines()
    ]
    decode = paced.summary["decode_tokens_per_s"]
    assert decode is not None
    # 8 content chunks 15 ms apart: the output after the first token took >= 105 ms.
    most = max(r["response"]["usage"]["completion_tokens"] for r in records)
    assert decode["max"] <= most / 0.105


def test_decode_rule_and_any_record_shape() -> None:
    totals = Totals()
    base = {"status": "ok", "response": {"usage": {"completion_tokens": 11}}}
    totals.add(Record.from_value({**base, "latency_ms": 20 + MIN_DECODE_MS - 1, "ttft_ms": 20}))
    totals.add(Record.from_value({**base, "latency_ms": 1020, "ttft_ms": 20}))
    odd: tuple[object, ...] = (
        5,
        None,
        [],
        "x",
        {"status": ["ok"]},
        {"status": "ok", "response": 5},
    )
    for record in odd:
        totals.add(Record.from_value(record))
    assert totals.decode_tokens_per_s == [10.0]  # ten tokens after the first, in one second
    assert (totals.ok, totals.failed) == (3, 1)


EXTRA = st.fixed_dictionaries(
    {},
    optional={
        "attempts": st.integers(-1, 4) | ODD,
        "schema_attempts": st.integers(-1, 3) | ODD,
        "ttft_ms": st.floats(0, 1e3) | st.integers(0, 10) | ODD,
        "discarded_usage": st.fixed_dictionaries({"total_tokens": st.integers(-1, 9) | ODD}) | ODD,
    },
)


def reference_add(totals: Totals, record: Record) -> None:
    """What Totals.add must do, written with Record's properties (its type rules)."""
    attempts = record.attempts or 0
    totals.attempts += attempts
    totals.retries += max(0, attempts - 1)
    if record.schema_attempts is not None:
        totals._add_structured(record, record.schema_attempts)
    ok = record.status == "ok"
    if ok:
        totals.ok += 1
        model = record.model or "unknown"
        tokens = totals.tokens_by_model.setdefault(model, dict.fromkeys(TOKEN_KEYS, 0))
        tokens["requests"] += 1
        tokens["prompt_tokens"] += record.prompt_tokens or 0
        tokens["completion_tokens"] += record.completion_tokens or 0
        tokens["total_tokens"] += record.total_tokens or 0
        if record.cached:
            totals._add_cached(model, record.prompt_tokens or 0, record.completion_tokens or 0)
        elif record.latency_ms is not None:
            totals.latencies_ms.append(record.latency_ms)
            if record.ttft_ms is not None:
                totals._add_stream_timing(
                    record.latency_ms, record.ttft_ms, record.completion_tokens or 0
                )
    else:
        totals.failed += 1
        kind = record.error_type
        totals.error_types[kind if kind is not None else "unknown"] += 1
    assert totals.board is not None
    totals.board.add(record.score if ok else None, record.slice)


@given(records=st.lists(st.tuples(RECORD, EXTRA).map(lambda t: {**t[0], **t[1]}), max_size=8))
def test_totals_add_reads_records_by_the_rules_of_their_properties(
    records: list[dict[str, Any]],
) -> None:
    fast, slow = (Totals(board=ScoreBoard(["exact", "contains"])) for _ in range(2))
    for data in records:
        fast.add(Record(data))
        reference_add(slow, Record(data))
    assert fast.board is not None and slow.board is not None
    assert fast.board.result() == slow.board.result()
    fast.board = slow.board = None
    assert fast == slow
