"""`batchrun report` on eval runs: scores per scorer and slice counted from the records of
real `[eval]` job runs on the mock, finished, killed with -9 and still running, checked
against the run's own summary.json and against a count by hand; the timeline of
completions and 429s; stored scores that cannot be trusted."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner
from evaljob import SCORERS, marks, reported, row, tally, write_job
from jsonl import read_jsonl, write_jsonl
from processes import finish
from test_report import journaled, latest_by_index, report, report_json, snapshot, wait_for

from batchrun.cli import main
from batchrun.mock import MockServer
from batchrun.outcome import EXIT_BELOW_BAR

Factory = Callable[..., MockServer]
ENV = {"MISTRAL_API_KEY": "sk-test-report-eval-77d2"}


def run_job(job: Path, server: MockServer, out: Path, *args: str) -> int:
    argv = ["run", str(job), "--base-url", server.url, "-o", str(out), "-q", *args]
    result = CliRunner().invoke(main, argv, env=ENV)
    return result.exit_code


def start_job(job: Path, server: MockServer, out: Path, *args: str) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "batchrun", "run", str(job), "-o", str(out), "-q"]
    return subprocess.Popen(
        [*command, "--base-url", server.url, *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, **ENV},
    )


def without_bars(entry: dict[str, Any]) -> dict[str, Any]:
    kept = {k: v for k, v in entry.items() if k not in ("bar", "below_bar", "slices")}
    if "slices" in entry:
        kept["slices"] = {value: without_bars(s) for value, s in entry["slices"].items()}
    return kept


def test_a_finished_eval_run_reports_its_summary_scores_from_the_records(
    mock_server: Factory, tmp_path: Path
) -> None:
    rows = [row(i) for i in range(30)]
    job = write_job(tmp_path, rows, "fail_under = { contains = 0.9 }")
    out = tmp_path / "out"
    assert run_job(job, mock_server(), out) == EXIT_BELOW_BAR
    summary = orjson.loads((out / "summary.json").read_bytes())["eval"]

    found = report_json(out)["eval"]

    assert list(found["scorers"]) == SCORERS
    for name in SCORERS:
        assert without_bars(found["scorers"][name]) == summary["scorers"][name]
    by_qid = {r["qid"]: r for r in rows}
    assert reported(found) == tally(by_qid, by_qid)
    assert (found["expected"], found["slice"]) == ("answer", "topic")
    assert found["fail_under"] == summary["fail_under"] == {"contains": 0.9}
    assert found["below_bar"] == summary["below_bar"]
    assert [b["scorer"] for b in found["below_bar"]] == ["contains"]
    contains = found["scorers"]["contains"]
    assert contains["bar"] == 0.9 and contains["below_bar"] is True
    assert found["scorers"]["exact"]["bar"] is None
    assert all(s["bar"] == 0.9 for s in contains["slices"].values())

    code, text = report(out)
    assert code == 0, text
    assert "eval scores by topic (from the records)" in text
    assert f"{contains['passed']}/{contains['count']}" in text
    assert "0.9*" in text  # under its bar


def killed_eval_run(server: MockServer, tmp_path: Path) -> Path:
    """The OUTDIR of a 300-line eval job killed -9 once 20 lines are journaled."""
    out = tmp_path / "out"
    proc = start_job(write_job(tmp_path, [row(i) for i in range(300)]), server, out, "-c", "4")
    wait_for(lambda: journaled(out) >= 20)
    proc.send_signal(signal.SIGKILL)
    finish(proc)
    return out


def test_a_killed_eval_run_reports_the_scores_of_the_lines_it_finished(
    mock_server: Factory, tmp_path: Path
) -> None:
    out = killed_eval_run(mock_server(latency_ms=30), tmp_path)
    assert not (out / "summary.json").exists(), "the kill missed the run"
    before = snapshot(out)

    found = report_json(out)

    assert snapshot(out) == before
    done = [r["custom_id"] for r in latest_by_index(out).values()]
    assert 20 <= len(done) < 300
    by_qid = {r["qid"]: r for r in (row(i) for i in range(300))}
    assert found["counts"]["done"] == len(done)
    assert reported(found["eval"]) == tally(by_qid, done)
    # No summary.json: the scorers come from the records, and there is no bar to tell.
    assert list(found["eval"]["scorers"]) == SCORERS
    assert found["eval"]["fail_under"] is None and found["eval"]["below_bar"] == []


def test_a_report_while_the_eval_run_writes_counts_what_is_done(
    mock_server: Factory, tmp_path: Path
) -> None:
    rows = [row(i) for i in range(60)]
    out = tmp_path / "out"
    proc = start_job(write_job(tmp_path, rows), mock_server(latency_ms=100), out, "-c", "2")
    try:
        wait_for(lambda: journaled(out) >= 6)
        during = report_json(out)
        assert proc.poll() is None, "the run ended before the report"
    finally:
        code, stderr = finish(proc)
    assert code == 2, stderr  # some lines failed, no bar
    assert during["state"] == "partial"
    done = during["counts"]["done"]
    assert 6 <= done < 60
    for entry in during["eval"]["scorers"].values():
        assert entry["count"] == done
        assert sum(s["count"] for s in entry["slices"].values()) == done
    by_qid = {r["qid"]: r for r in rows}
    assert reported(report_json(out)["eval"]) == tally(by_qid, by_qid)


def test_the_timeline_counts_every_line_and_every_429_at_its_finish(
    mock_server: Factory, tmp_path: Path
) -> None:
    rows = [row(i) for i in range(24)]
    out = tmp_path / "out"
    assert run_job(write_job(tmp_path, rows), mock_server(), out) == 2
    records = read_jsonl(out / "results.jsonl")

    timeline = report_json(out)["timeline"]

    waited = sum(1 for r in rows if r["mock"].get("fault") == "429")
    assert waited > 0
    assert sum(timeline["throttled"]) == sum(r.get("throttled", 0) for r in records) == waited
    failed = sum(1 for r in records if r["status"] == "error")
    assert (sum(timeline["ok"]), sum(timeline["failed"])) == (len(records) - failed, failed)
    assert timeline["untimed"] == 0
    assert timeline["bucket_s"] == 1
    first = min(r["finished_at"] for r in records)
    last = max(r["finished_at"] for r in records)
    assert timeline["start"] == int(first)
    assert len(timeline["ok"]) == int(last) - int(first) + 1


def test_stored_scores_are_read_as_untrusted_and_a_late_scorer_starts_unscored(
    mock_server: Factory, tmp_path: Path
) -> None:
    rows = [row(i) for i in range(12)]
    finished = tmp_path / "finished"
    assert run_job(write_job(tmp_path, rows), mock_server(), finished) == 2
    out = tmp_path / "edited"
    shutil.copytree(finished, out)
    (out / "summary.json").unlink()  # the scorer names then come from the records alone
    records = read_jsonl(out / "results.jsonl")
    assert records[0]["status"] == "ok" and records[4]["status"] == "ok"
    records[0]["score"] = {"exact": True, "contains": 2}  # neither is the integer 0 or 1
    records[2]["score"] = "full marks"  # not an object: no score at all
    records[4]["score"]["regex:ans"] = 1  # a scorer no earlier line has
    write_jsonl(out / "results.jsonl", records)

    found = report_json(out)["eval"]

    assert list(found["scorers"]) == [*SCORERS, "regex:ans"]
    by_qid = {r["qid"]: r for r in rows}
    expected = tally(by_qid, by_qid)
    for name in SCORERS:
        lost = 0  # the marks records 0 and 2 held, now unscored
        for i in (0, 2):
            held = marks(rows[i])
            assert held is not None
            lost += held[name]
        passed, count, unscored = expected[name]["all"]
        entry = found["scorers"][name]
        assert [entry["passed"], entry["count"], entry["unscored"]] == [
            passed - lost,
            count,
            unscored + 2,
        ]
    late = found["scorers"]["regex:ans"]
    assert (late["passed"], late["count"], late["unscored"]) == (1, 12, 11)
    assert sum(s["count"] for s in late["slices"].values()) == 12


@pytest.mark.parametrize("fail_under", [{"contains": 1.5}, {"exact": True}, "x", 0.5])
def test_a_bar_that_is_no_number_from_0_to_1_per_scorer_is_ignored(
    mock_server: Factory, tmp_path: Path, fail_under: object
) -> None:
    out = tmp_path / "out"
    assert run_job(write_job(tmp_path, [row(i) for i in range(4)]), mock_server(), out) == 0
    path = out / "summary.json"
    summary = orjson.loads(path.read_bytes())
    summary["eval"]["fail_under"] = fail_under
    path.write_bytes(orjson.dumps(summary))
    found = report_json(out)["eval"]
    assert found["fail_under"] is None and found["below_bar"] == []
    assert all(entry["bar"] is None for entry in found["scorers"].values())
