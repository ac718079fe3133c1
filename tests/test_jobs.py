"""Job files end to end: `batchrun run JOB` against the mock over 127.0.0.1, the example
jobs offline, templating edge cases, every validation error naming its key and line,
flags over job values, a refused resume after a prompt edit, and kill -9 + resume."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner, Result
from jsonl import read_jsonl, write_jsonl

from batchrun.cli import main
from batchrun.mock import MockServer

REPO = Path(__file__).resolve().parent.parent
KEY = "sk-test-jobs-5e1d2c"
ENV = {"MISTRAL_API_KEY": KEY}

ROWS = [
    {"id": "a", "text": "plain"},
    {"id": "b", "text": "héllo ✓ 日本", "meta": {"lang": "ja", "tags": ["x", "y"]}},
]
JOB = """\
[input]
path = "rows.jsonl"
id = "id"

[request]
model = "mistral-small-latest"

[[messages]]
role = "user"
content = "Say: {text}"
"""


def write_job(folder: Path, text: str = JOB, rows: list[Any] | None = None) -> Path:
    write_jsonl(folder / "rows.jsonl", ROWS if rows is None else rows)
    job = folder / "job.toml"
    job.write_text(text, encoding="utf-8")
    return job


def run_job(job: Path, server: MockServer | None, *args: str) -> Result:
    target = ["--base-url", server.url] if server is not None else []
    return CliRunner().invoke(main, ["run", str(job), *target, "-q", *args], env=ENV)


def logged(log: Path) -> list[Any]:
    if not log.exists():
        return []
    return [orjson.loads(line)["content"] for line in log.read_bytes().splitlines()]


def one_line(text: str) -> str:
    return " ".join(text.split())


# --- the example jobs ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "rows_file", "field"),
    [
        ("label-sentiment", "rows.jsonl", "sentiment"),
        ("label-topics", "rows.csv", "topic"),
        ("passthrough", "rows.jsonl", "output"),
    ],
)
def test_the_example_jobs_run_offline_end_to_end(
    tmp_path: Path, name: str, rows_file: str, field: str
) -> None:
    out = tmp_path / "out"
    job = REPO / "jobs" / f"{name}.toml"
    args = ["--mock", "--mock-latency-ms", "1", "--mock-fail-rate", "0", "-o", str(out)]
    result = run_job(job, None, *args)
    assert result.exit_code == 0, result.output
    results = read_jsonl(out / "results.jsonl")
    assert results and all(r["status"] == "ok" for r in results)
    text = (out / rows_file).read_text(encoding="utf-8")
    if rows_file == "rows.csv":
        labelled = list(csv.DictReader(text.splitlines(keepends=True)))
    else:
        labelled = [orjson.loads(line) for line in text.splitlines()]
    assert len(labelled) == len(results)
    for row, record in zip(labelled, results, strict=True):
        # The parsed JSON of a structured reply when the record has it, else the text.
        output = record.get("parsed", record["response"]["choices"][0]["message"]["content"])
        if rows_file == "rows.csv" and not isinstance(output, str):
            output = orjson.dumps(output).decode()
        assert row[field] == output
        assert row["error"] in (None, "")
    if name == "label-sentiment":
        # The mock answers JSON that fits the job's schema; custom_id is the review id.
        assert [r["custom_id"] for r in results] == [r["review_id"] for r in labelled]
        answers = [r["sentiment"] for r in labelled]
        labels = [(orjson.loads(a) if isinstance(a, str) else a)["label"] for a in answers]
        assert set(labels) <= {"positive", "negative", "neutral"}


# --- templating through real runs ----------------------------------------------------------


def test_templates_fill_nested_non_string_brace_and_unicode_values(
    mock_server: Callable[..., MockServer], tmp_path: Path
) -> None:
    log = tmp_path / "requests.log"
    server = mock_server(request_log=log)
    rows: list[Any] = [
        {"id": "1", "text": "héllo ✓ 日本", "n": 3, "meta": {"lang": "ja", "tags": ["x", 2]}},
        {"id": "2", "text": "{not a field}", "n": 2.5, "meta": {"lang": None, "tags": []}},
        {"id": "3", "text": True, "n": {"k": "v"}, "meta": {"lang": "fr", "tags": None}},
    ]
    job = write_job(
        tmp_path,
        JOB.replace(
            'content = "Say: {text}"',
            'content = "{{{text}}} n={n} lang={meta.lang} tags={meta.tags} {{literal}}"',
        ),
        rows,
    )
    result = run_job(job, server, "-o", str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    assert sorted(logged(log)) == sorted(
        [
            '{héllo ✓ 日本} n=3 lang=ja tags=["x",2] {literal}',
            "{{not a field}} n=2.5 lang=null tags=[] {literal}",
            '{true} n={"k":"v"} lang=fr tags=null {literal}',
        ]
    )


def test_a_row_missing_a_field_is_an_invalid_input_record_and_the_run_goes_on(
    mock_server: Callable[..., MockServer], tmp_path: Path
) -> None:
    log = tmp_path / "requests.log"
    server = mock_server(request_log=log)
    rows: list[Any] = [
        {"id": "a", "text": "one", "meta": {"lang": "en"}},
        {"id": "b", "text": "two", "meta": {}},  # no meta.lang
        {"id": "c", "meta": {"lang": "de"}},  # no text
        {"id": "d", "text": "four", "meta": {"lang": "it"}},
    ]
    job = write_job(tmp_path, JOB.replace("{text}", "{text} in {meta.lang}"), rows)
    out = tmp_path / "out"
    result = run_job(job, server, "-o", str(out))
    assert result.exit_code == 2, result.output  # finished, some rows failed
    records = read_jsonl(out / "results.jsonl")
    assert [r["status"] for r in records] == ["ok", "error", "error", "ok"]
    assert [r["custom_id"] for r in records] == ["a", "b", "c", "d"]
    missing = [(r["line"], r["error"]["field"], r["error"]["type"]) for r in records[1:3]]
    assert missing == [(2, "meta.lang", "invalid_input"), (3, "text", "invalid_input")]
    assert "line 2: meta.lang: missing from the row" in records[1]["error"]["message"]
    assert sorted(logged(log)) == ["Say: four in it", "Say: one in en"]
    labelled = read_jsonl(out / "rows.jsonl")
    assert [r["id"] for r in labelled] == ["a", "b", "c", "d"]
    assert labelled[2]["error"].startswith("invalid_input: line 3: text: missing from the row")
    assert labelled[2]["output"] is None
    assert labelled[3]["output"].startswith("Echo: Say: four in it")


# --- validation: each problem names its key and line, nothing is sent ----------------------


END = 'content = "Say: {text}"\n'  # JOB's last line: appending after it adds tables
BROKEN: list[tuple[str, str, str]] = [
    # (text of JOB to replace, its replacement, what the message must say)
    ("[request]", "[requests]", "job.toml:5: requests: unknown key (did you mean request?)"),
    (
        'model = "mistral-small-latest"',
        'model = "mistral-small-latest"\ntemprature = 0.2',
        "job.toml:7: request.temprature: unknown chat-completions body field "
        "(did you mean temperature?)",
    ),
    (
        'model = "mistral-small-latest"',
        'model = "mistral-small-latest"\ntemperature = "hot"',
        "job.toml:7: request.temperature: must be a number",
    ),
    (END, END.replace("{text}", "{txt}"), "job.toml:10: messages[0].content: {txt}: none of"),
    (END, END.replace("{text}", "{text"), "job.toml:10: messages[0].content: column 6"),
    ('path = "rows.jsonl"', 'path = "rows.txt"', "job.toml:2: input.path: must end in .jsonl"),
    ('id = "id"', 'id = "key"', "job.toml:3: input.id: none of the first 2 rows has a field"),
    ('id = "id"', "limit = -1", "job.toml:3: input.limit: must be an integer >= 0, got -1"),
    (END, END + "[run]\nconcurency = 4\n", "job.toml:12: run.concurency: unknown key (did you"),
    (END, END + '[run]\nconcurrency = "8"\n', "job.toml:12: run.concurrency: must be an integer"),
    (END, END + '[run]\ndeadline = "2x"\n', "job.toml:12: run.deadline: must be a duration"),
    (END, END + "[eval]\nbar = 1\n", "job.toml:12: eval.bar: unknown key"),
    (END, END + "[evals]\n", "job.toml:11: evals: unknown key (did you mean eval?)"),
    (
        'model = "mistral-small-latest"',
        'model = "m"\nmessages = []',
        "job.toml:7: request.messages: not a [request] key: write them as [[messages]] tables",
    ),
    (
        'model = "mistral-small-latest"',
        'model = "m"\n[request.response_format]\ntype = "json_schema"\n'
        'json_schema = { name = "x", schema = { type = "nonsense" } }',
        "job.toml:7: request.response_format: response_format.json_schema.schema",
    ),
    (END, END + '[[messages]]\nrol = "user"\ncontent = "hi"\n', "job.toml:11: messages[1]"),
    (
        END,
        END + '[output]\nfield = "x"\nerror_field = "x"\n',
        "job.toml:11: output: field, error_field and score_field must differ",
    ),
    ("[input]", "[input\n", "not valid TOML"),
    ('path = "rows.jsonl"\nid = "id"', "", "job.toml:1: input: missing key path"),
    ('[input]\npath = "rows.jsonl"\nid = "id"', "", "job.toml: input: missing: the job needs an"),
]


@pytest.mark.parametrize(("old", "new", "expected"), BROKEN)
def test_a_broken_job_names_the_key_and_line_and_sends_nothing(
    mock_server: Callable[..., MockServer], tmp_path: Path, old: str, new: str, expected: str
) -> None:
    log = tmp_path / "requests.log"
    server = mock_server(request_log=log)
    assert old in JOB
    job = write_job(tmp_path, JOB.replace(old, new, 1))
    result = run_job(job, server, "-o", str(tmp_path / "out"))
    assert result.exit_code == 1, result.output
    assert expected in one_line(result.output)
    assert "Traceback" not in result.output
    assert logged(log) == []
    assert not (tmp_path / "out").exists()


def test_every_problem_of_a_job_is_reported_at_once(
    mock_server: Callable[..., MockServer], tmp_path: Path
) -> None:
    text = JOB.replace("[request]", "[request]\nbest_of = 3") + '[run]\nrps = 0\ncache_dir = "x"\n'
    job = write_job(tmp_path, text)
    result = run_job(job, mock_server(), "-o", str(tmp_path / "out"))
    assert result.exit_code == 1
    output = one_line(result.output)
    assert "has 3 problems; nothing was sent" in output
    assert "job.toml:6: request.best_of: unknown chat-completions body field" in output
    assert "job.toml:13: run.rps: must be a finite number > 0, got 0" in output
    assert "job.toml:14: run.cache_dir: unknown key" in output


def test_a_job_without_a_model_needs_m(
    mock_server: Callable[..., MockServer], tmp_path: Path
) -> None:
    server = mock_server()
    job = write_job(tmp_path, JOB.replace('model = "mistral-small-latest"', "temperature = 0.1"))
    result = run_job(job, server, "-o", str(tmp_path / "out"))
    assert result.exit_code == 1
    assert "[request] names no model" in one_line(result.output)
    result = run_job(job, server, "-o", str(tmp_path / "out"), "-m", "mistral-tiny")
    assert result.exit_code == 0, result.output
    assert {r["response"]["model"] for r in read_jsonl(tmp_path / "out" / "results.jsonl")} == {
        "mistral-tiny"
    }


# --- [run] values and the flags over them -----------------------------------------------------


def test_run_values_apply_and_a_given_flag_wins(
    mock_server: Callable[..., MockServer], tmp_path: Path
) -> None:
    server = mock_server()
    text = JOB + f'\n[run]\noutput = "labelled"\nconcurrency = 3\nbase_url = "{server.url}"\n'
    job = write_job(tmp_path, text)
    result = CliRunner().invoke(main, ["run", str(job), "-q", "--json"], env=ENV)
    assert result.exit_code == 0, result.output
    summary = orjson.loads((tmp_path / "labelled" / "summary.json").read_bytes())
    assert summary["concurrency"] == 3
    out = tmp_path / "flags"
    result = CliRunner().invoke(main, ["run", str(job), "-q", "-o", str(out), "-c", "5"], env=ENV)
    assert result.exit_code == 0, result.output
    assert orjson.loads((out / "summary.json").read_bytes())["concurrency"] == 5
    env = {**ENV, "BATCHRUN_RUN_CONCURRENCY": "4"}
    result = CliRunner().invoke(main, ["run", str(job), "-q", "-o", str(out), "--fresh"], env=env)
    assert result.exit_code == 0, result.output
    assert orjson.loads((out / "summary.json").read_bytes())["concurrency"] == 4


def test_the_default_outdir_is_named_after_the_job(
    mock_server: Callable[..., MockServer], tmp_path: Path
) -> None:
    job = write_job(tmp_path)
    result = run_job(job, mock_server())
    assert result.exit_code == 0, result.output
    assert len(read_jsonl(tmp_path / "job.batchrun" / "rows.jsonl")) == len(ROWS)


def test_input_limit_and_the_limit_flag(
    mock_server: Callable[..., MockServer], tmp_path: Path
) -> None:
    server = mock_server()
    rows = [{"id": str(i), "text": f"t{i}"} for i in range(6)]
    job = write_job(tmp_path, JOB.replace('id = "id"', 'id = "id"\nlimit = 2'), rows)
    out = tmp_path / "out"
    assert run_job(job, server, "-o", str(out)).exit_code == 0
    assert [r["id"] for r in read_jsonl(out / "rows.jsonl")] == ["0", "1"]
    assert run_job(job, server, "-o", str(out), "--limit", "4").exit_code == 0
    assert [r["id"] for r in read_jsonl(out / "rows.jsonl")] == ["0", "1", "2", "3"]


# --- resume -----------------------------------------------------------------------------------


def test_editing_the_prompt_refuses_to_resume_and_fresh_starts_over(
    mock_server: Callable[..., MockServer], tmp_path: Path
) -> None:
    log = tmp_path / "requests.log"
    server = mock_server(request_log=log)
    job = write_job(tmp_path)
    out = tmp_path / "out"
    assert run_job(job, server, "-o", str(out)).exit_code == 0
    sent = len(logged(log))
    # How the run goes may change between sessions: [run] is not part of the job's hash.
    job.write_text(JOB + "\n[run]\nconcurrency = 2\n", encoding="utf-8")
    assert run_job(job, server, "-o", str(out)).exit_code == 0
    assert len(logged(log)) == sent
    job.write_text(JOB.replace("Say: {text}", "Repeat: {text}"), encoding="utf-8")
    result = run_job(job, server, "-o", str(out))
    assert result.exit_code == 1
    message = one_line(result.output)
    assert "another version of this job" in message
    assert "--fresh" in message
    assert len(logged(log)) == sent
    result = run_job(job, server, "-o", str(out), "--fresh")
    assert result.exit_code == 0, result.output
    assert all(r["output"].startswith("Echo: Repeat: ") for r in read_jsonl(out / "rows.jsonl"))


def test_a_request_file_run_and_a_job_run_never_share_an_outdir(
    mock_server: Callable[..., MockServer], tmp_path: Path
) -> None:
    server = mock_server()
    job = write_job(tmp_path)
    out = tmp_path / "out"
    requests = tmp_path / "rows.jsonl"  # the job's rows, run as request lines
    assert run_job(job, server, "-o", str(out)).exit_code == 0
    result = CliRunner().invoke(
        main, ["run", str(requests), "--base-url", server.url, "-o", str(out), "-q"], env=ENV
    )
    assert result.exit_code == 1
    assert "another kind of run" in one_line(result.output)


def batchrun(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "batchrun", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, **ENV},
        cwd=REPO,
    )


def journal_lines(out: Path) -> int:
    path = out / "journal.jsonl"
    return path.read_bytes().count(b"\n") if path.exists() else 0


def test_rows_after_kill_9_and_resume_equal_an_uninterrupted_run(
    mock_server: Callable[..., MockServer], tmp_path: Path
) -> None:
    server = mock_server(latency_ms=5, jitter_ms=30)
    count = 300
    rows: list[Any] = [{"id": f"r{i}", "text": f"row {i}", "n": i} for i in range(count)]
    for i in range(7, count, 37):
        del rows[i]["text"]  # failed rows too: an invalid_input record each
    job = write_job(tmp_path, JOB, rows)
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    args = ("run", str(job), "--base-url", server.url, "-q", "-c", "8", "--max-attempts", "1")
    done = batchrun(*args, "-o", str(whole))
    _, stderr = done.communicate(timeout=120)
    assert done.returncode == 2, stderr.decode()

    proc = batchrun(*args, "-o", str(killed))
    deadline = time.monotonic() + 60
    while journal_lines(killed) < 40 and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert 40 <= journal_lines(killed) < count, "the kill did not land mid-run"
    resumed = batchrun(*args, "-o", str(killed))
    _, stderr = resumed.communicate(timeout=120)
    assert resumed.returncode == 2, stderr.decode()
    assert (killed / "rows.jsonl").read_bytes() == (whole / "rows.jsonl").read_bytes()
    labelled = read_jsonl(killed / "rows.jsonl")
    assert [r["id"] for r in labelled] == [r["id"] for r in rows]
    assert sum(r["error"] is not None for r in labelled) == len(range(7, count, 37))


def test_a_moved_job_resumes_since_its_content_not_its_path_is_what_counts(
    mock_server: Callable[..., MockServer], tmp_path: Path
) -> None:
    log = tmp_path / "requests.log"
    server = mock_server(request_log=log)
    first, moved = tmp_path / "first", tmp_path / "moved"
    first.mkdir()
    moved.mkdir()
    out = tmp_path / "out"
    assert run_job(write_job(first), server, "-o", str(out)).exit_code == 0
    sent = len(logged(log))
    result = run_job(write_job(moved), server, "-o", str(out))
    assert result.exit_code == 0, result.output
    assert len(logged(log)) == sent


def test_rows_that_are_not_a_regular_file_are_refused(tmp_path: Path) -> None:
    job = write_job(tmp_path)
    (tmp_path / "rows.jsonl").unlink()
    os.mkfifo(tmp_path / "rows.jsonl")
    result = run_job(job, None, "--mock", "-o", str(tmp_path / "out"))
    assert result.exit_code == 1
    assert "job.toml:2: input.path:" in result.output
    assert "must be a regular file" in one_line(result.output)


# --- cost: [prices], [run] max_cost and `batchrun validate JOB` -------------------------------

PRICED = JOB.replace('model = "mistral-small-latest"', 'model = "house-model"')
PRICES = '\n[prices]\n"house-model" = { input = 2.0, output = 3.0, source = "our contract" }\n'


def test_job_prices_price_the_summary(
    mock_server: Callable[..., MockServer], tmp_path: Path
) -> None:
    job = write_job(tmp_path, PRICED + PRICES)
    out = tmp_path / "out"
    assert run_job(job, mock_server(), "-o", str(out)).exit_code == 0
    usage = [r["response"]["usage"] for r in read_jsonl(out / "results.jsonl")]
    prompt = sum(u["prompt_tokens"] for u in usage)
    completion = sum(u["completion_tokens"] for u in usage)
    cost = orjson.loads((out / "summary.json").read_bytes())["cost"]
    assert cost["models"]["house-model"]["usd"] == pytest.approx(
        (2.0 * prompt + 3.0 * completion) / 1e6
    )
    assert cost["unpriced"] == []


def test_run_max_cost_needs_a_price_which_job_prices_give(
    mock_server: Callable[..., MockServer], tmp_path: Path
) -> None:
    log = tmp_path / "requests.log"
    server = mock_server(request_log=log)
    job = write_job(tmp_path, PRICED + "\n[run]\nmax_cost = 5\n")
    result = run_job(job, server, "-o", str(tmp_path / "a"))
    assert result.exit_code == 1
    assert "--max-cost needs a price for every model" in one_line(result.output)
    assert logged(log) == []
    job.write_text(PRICED + "\n[run]\nmax_cost = 5\n" + PRICES, encoding="utf-8")
    result = run_job(job, server, "-o", str(tmp_path / "b"))
    assert result.exit_code == 0, result.output
    assert len(logged(log)) == len(ROWS)


def test_validate_checks_a_jobs_rows_without_sending(tmp_path: Path) -> None:
    rows: list[Any] = [{"id": "a", "text": "hello"}, {"id": "b"}, {"id": "c", "text": "x" * 40}]
    job = write_job(tmp_path, PRICED + PRICES, rows)
    result = CliRunner().invoke(main, ["validate", str(job), "--json"])
    assert result.exit_code == 2, result.output  # one row lacks `text`
    report = orjson.loads(result.output)
    assert (report["lines"], report["valid"], report["invalid"]) == (3, 2, 1)
    invalid = report["invalid_lines"][0]
    assert (invalid["line"], invalid["field"]) == (2, "text")
    assert invalid["reason"].startswith("missing from the row")
    assert report["models"]["house-model"]["requests"] == 2
    assert report["cost"]["unpriced"] == []
    broken = write_job(tmp_path, PRICED.replace("{text}", "{txt}"), rows)
    result = CliRunner().invoke(main, ["validate", str(broken)])
    assert result.exit_code == 1
    assert "messages[0].content: {txt}" in one_line(result.output)


def test_run_schema_retries_bounds_the_re_asks(
    mock_server: Callable[..., MockServer], tmp_path: Path
) -> None:
    schema = '{type = "object", properties = {label = {type = "string"}}, required = ["label"]}'
    text = JOB.replace(
        'model = "mistral-small-latest"\n',
        'model = "mistral-small-latest"\n'
        'response_format = {type = "json_schema", '
        f'json_schema = {{name = "l", schema = {schema}}}}}\n'
        'metadata = {mock = {fault = "schema_violation"}}\n',
    )
    job = write_job(tmp_path, text + "\n[run]\nschema_retries = 1\n")
    result = run_job(job, mock_server())
    assert result.exit_code == 2, result.output
    records = read_jsonl(tmp_path / "job.batchrun" / "results.jsonl")
    assert {r["error"]["type"] for r in records} == {"schema_violation"}
    assert {r["schema_attempts"] for r in records} == {2}  # the first reply and one re-ask
