"""`batchrun report`: real runs on the mock, finished, killed with -9 and still running;
the report matches the records and never changes OUTDIR."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from click.testing import CliRunner
from jsonl import chat_request, read_jsonl, write_jsonl
from processes import finish

from batchrun.cli import main
from batchrun.mock import MockServer

KEY = "sk-test-report-5e1a"
FAILING = 4  # every 4th line is answered 422


def write_input(path: Path, count: int) -> Path:
    return write_jsonl(
        path, [chat_request(i, "422" if i % FAILING == 0 else None) for i in range(count)]
    )


def start_run(server: MockServer, path: Path, out: Path, *flags: str) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "batchrun", "run", str(path), "-o", str(out)]
    return subprocess.Popen(
        [*command, "--base-url", server.url, "--max-attempts", "1", "-q", *flags],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "MISTRAL_API_KEY": KEY},
    )


def journaled(out: Path) -> int:
    journal = out / "journal.jsonl"
    return journal.read_bytes().count(b"\n") if journal.exists() else 0


def wait_for(condition: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the run"
        time.sleep(0.01)


def report(out: Path, *flags: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["report", str(out), *flags], terminal_width=200)
    return result.exit_code, result.output


def report_json(out: Path) -> dict[str, Any]:
    code, output = report(out, "--json")
    assert code == 0, output
    document: dict[str, Any] = orjson.loads(output)
    return document


def snapshot(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def latest_by_index(out: Path) -> dict[int, dict[str, Any]]:
    """Every done line as the journal holds it (a later record of an index wins); a last
    line the kill tore (no newline) is no record."""
    lines = (out / "journal.jsonl").read_bytes().split(b"\n")[:-1]
    return {r["index"]: r for r in map(orjson.loads, lines)}


def test_a_finished_run_reports_what_its_summary_says(
    mock_server: Callable[..., MockServer], tmp_path: Path
) -> None:
    server = mock_server(latency_ms=2)
    out = tmp_path / "out"
    code, stderr = finish(start_run(server, write_input(tmp_path / "in.jsonl", 30), out))
    assert code == 2, stderr
    summary = orjson.loads((out / "summary.json").read_bytes())
    found = report_json(out)
    assert found["state"] == "complete"
    assert found["summary_status"] == "complete"
    expected_counts = {k: v for k, v in summary["counts"].items() if k != "errors_by_type"}
    assert found["counts"] == {**expected_counts, "unreadable_lines": 0}
    assert {k: v["count"] for k, v in found["errors_by_type"].items()} == summary["counts"][
        "errors_by_type"
    ]
    assert found["errors_by_type"]["http_status"]["example"] == "HTTP 422"
    for key in ("tokens", "tokens_by_model", "latency_ms", "ttft_ms", "flow"):
        assert found[key] == summary[key], key
    assert found["cost"] == summary["cost"]
    assert found["eval"] is None

    code, text = report(out)
    assert code == 0, text
    for heading in ("errors by type", "tokens and cost per model", "latency", "flow"):
        assert heading in text
    assert f"{summary['counts']['done']} / {summary['counts']['requests']}" in text


def test_a_run_killed_with_9_reports_its_partial_counts_and_stays_unchanged(
    mock_server: Callable[..., MockServer], tmp_path: Path
) -> None:
    server = mock_server(latency_ms=30)
    out = tmp_path / "out"
    proc = start_run(server, write_input(tmp_path / "in.jsonl", 400), out, "-c", "4")
    wait_for(lambda: journaled(out) >= 12)
    proc.send_signal(signal.SIGKILL)
    finish(proc)
    assert not (out / "summary.json").exists(), "the kill missed the run"
    before = snapshot(out)

    found = report_json(out)
    code, text = report(out)

    assert snapshot(out) == before
    assert code == 0, text
    done = latest_by_index(out)
    statuses = Counter(r["status"] for r in done.values())
    assert 0 < len(done) < 400
    assert found["state"] == "partial"
    assert found["summary_status"] is None
    assert found["counts"] == {
        "requests": 400,
        "done": len(done),
        "ok": statuses["ok"],
        "failed": statuses["error"],
        "not_done": 400 - len(done),
        "unreadable_lines": 0,
    }
    assert "no summary.json" in text
    assert f"{len(done)} / 400" in text


def test_torn_last_lines_are_skipped_and_left_as_they_are(
    mock_server: Callable[..., MockServer], tmp_path: Path
) -> None:
    server = mock_server(latency_ms=1)
    finished = tmp_path / "finished"
    code, stderr = finish(start_run(server, write_input(tmp_path / "in.jsonl", 12), finished))
    assert code == 2, stderr
    out = tmp_path / "torn"
    shutil.copytree(finished, out)
    for name in ("results.jsonl", "journal.jsonl"):
        with (out / name).open("ab") as stream:
            stream.write(b'{"index": 3, "status": "ok", "resp')
    before = snapshot(out)

    found = report_json(out)

    assert snapshot(out) == before
    assert found["counts"] == {**report_json(finished)["counts"], "unreadable_lines": 0}


def test_a_report_while_the_run_is_writing_shows_it_in_progress(
    mock_server: Callable[..., MockServer], tmp_path: Path
) -> None:
    server = mock_server(latency_ms=150)
    out = tmp_path / "out"
    proc = start_run(server, write_input(tmp_path / "in.jsonl", 40), out, "-c", "2")
    try:
        wait_for(lambda: journaled(out) >= 4)
        during = report_json(out)
        assert proc.poll() is None, "the run ended before the report"
    finally:
        code, stderr = finish(proc)
    assert code == 2, stderr
    assert during["state"] == "partial"
    assert 4 <= during["counts"]["done"] < 40
    assert during["counts"]["done"] + during["counts"]["not_done"] == 40
    after = report_json(out)
    assert after["state"] == "complete"
    assert after["counts"]["done"] == 40


def test_the_json_document_has_every_section(
    mock_server: Callable[..., MockServer], tmp_path: Path
) -> None:
    server = mock_server(latency_ms=1)
    out = tmp_path / "out"
    lines = [chat_request(i, stream=True) for i in range(6)]
    code, stderr = finish(start_run(server, write_jsonl(tmp_path / "in.jsonl", lines), out))
    assert code == 0, stderr
    found = report_json(out)
    assert list(found) == [
        *("outdir", "state", "summary_status", "summary_reason", "counts", "errors_by_type"),
        *("tokens", "tokens_by_model", "cost", "latency_ms", "ttft_ms", "flow", "eval"),
        *("timeline", "failed_lines"),
    ]
    assert found["errors_by_type"] == {}
    ttft = found["ttft_ms"]
    assert ttft is not None and set(ttft) == {"p50", "p90", "p99", "max", "mean"}
    records = read_jsonl(out / "results.jsonl")
    assert ttft["max"] == max(r["ttft_ms"] for r in records)


def test_a_missing_or_foreign_directory_exits_1_with_a_clear_message(tmp_path: Path) -> None:
    code, output = report(tmp_path / "nowhere")
    assert code == 1
    assert "nowhere" in output
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "results.jsonl").write_bytes(b"{}\n")
    code, output = report(foreign)
    assert code == 1
    assert "is not a batchrun output directory (no manifest.json)" in output
    (foreign / "manifest.json").write_bytes(b'{"hello": 1}')
    code, output = report(foreign)
    assert code == 1
    assert "has no request count" in output
    assert sorted(p.name for p in foreign.iterdir()) == ["manifest.json", "results.jsonl"]
