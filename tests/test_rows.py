"""Dataset rows in and labelled rows out: CSV and JSONL rows through real job runs
against the mock (round trip, bad rows as records naming line and field, ids,
duplicates), and the CSV reader's line numbers as a property."""

from __future__ import annotations

import csv
import io
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from click.testing import CliRunner, Result
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonl import read_jsonl, write_jsonl

from batchrun.cli import main
from batchrun.jobs import load_job
from batchrun.mock import MockServer
from batchrun.outdir import Paths
from batchrun.rows import RowFormat, iter_rows, write_rows

ENV = {"MISTRAL_API_KEY": "sk-test-rows-7a1f3e"}


def job_text(path: str, *, content: str = "{subject}: {body}", extra: str = "") -> str:
    return f"""\
[input]
path = "{path}"
{extra}
[request]
model = "mistral-small-latest"

[[messages]]
role = "user"
content = "{content}"
"""


def run(job: Path, server: MockServer, out: Path, *args: str) -> Result:
    command = ["run", str(job), "--base-url", server.url, "-o", str(out), "-q", *args]
    return CliRunner().invoke(main, command, env=ENV)


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="", encoding="utf-8-sig") as stream:
        reader = csv.DictReader(stream)
        return list(reader.fieldnames or ()), list(reader)


CSV_IN = (
    "\ufeffticket,subject,body\r\n"
    'T-1,"Invoice, VAT","Add ""FR12"" to it"\r\n'
    'T-2,Two lines,"first\nsecond"\r\n'
    "T-3,Unicode,Ça marche ✓ 日本\r\n"
    "T-4,Short row\r\n"
    "T-5,Long row,body,extra\r\n"
    "T-6,Last,{braces} stay\r\n"
)


def test_csv_rows_round_trip_with_their_outputs(
    mock_server: Callable[..., MockServer], tmp_path: Path
) -> None:
    (tmp_path / "tickets.csv").write_bytes(CSV_IN.encode())
    job = tmp_path / "job.toml"
    job.write_text(job_text("tickets.csv", extra='id = "ticket"'), encoding="utf-8")
    out = tmp_path / "out"
    result = run(job, mock_server(), out)
    assert result.exit_code == 2, result.output  # two rows are invalid
    records = read_jsonl(out / "results.jsonl")
    assert [r["custom_id"] for r in records] == [f"T-{i}" for i in range(1, 7)]
    # A quoted value over two lines: the next record starts one line later.
    assert [r["line"] for r in records] == [2, 3, 5, 6, 7, 8]
    assert not (out / "rows.jsonl").exists()

    columns, rows = read_csv(out / "rows.csv")
    _, original = read_csv(tmp_path / "tickets.csv")
    assert columns == ["ticket", "subject", "body", "output", "error"]
    assert len(rows) == len(original) == 6
    for row, before, record in zip(rows, original, records, strict=True):
        if record["status"] == "ok":
            assert {k: row[k] for k in ("ticket", "subject", "body")} == before
            content = record["response"]["choices"][0]["message"]["content"]
            assert row["output"] == content
            assert content.startswith(f"Echo: {before['subject']}: {before['body']}"[:40])
            assert row["error"] == ""
    assert rows[3]["error"].startswith("invalid_input: line 6: body: missing from the row")
    assert rows[4]["error"].startswith(
        "invalid_input: line 7: has 1 more value(s) than the header's 3 columns"
    )
    assert rows[4]["output"] == ""
    assert rows[4]["ticket"] == "T-5"  # its columns are kept


def test_an_output_key_that_is_an_input_column_is_replaced_in_place(
    mock_server: Callable[..., MockServer], tmp_path: Path
) -> None:
    (tmp_path / "in.csv").write_text("subject,body,label\na,b,old\n", encoding="utf-8")
    job = tmp_path / "job.toml"
    job.write_text(job_text("in.csv") + '\n[output]\nfield = "label"\n', encoding="utf-8")
    out = tmp_path / "out"
    assert run(job, mock_server(), out).exit_code == 0
    columns, rows = read_csv(out / "rows.csv")
    assert columns == ["subject", "body", "label", "error"]
    assert rows[0]["label"].startswith("Echo: a: b")


def test_bad_jsonl_rows_are_records_naming_their_line(
    mock_server: Callable[..., MockServer], tmp_path: Path
) -> None:
    write_jsonl(
        tmp_path / "rows.jsonl",
        [
            {"subject": "ok", "body": "one"},
            b"",  # blank: not a row
            b"[1, 2]",
            b'{"subject": broken',
            {"subject": "long", "body": "x" * 500},
            {"subject": 5, "body": None},
        ],
    )
    job = tmp_path / "job.toml"
    job.write_text(job_text("rows.jsonl"), encoding="utf-8")
    out = tmp_path / "out"
    result = run(job, mock_server(), out, "--max-line-bytes", "300")
    assert result.exit_code == 2, result.output
    records = read_jsonl(out / "results.jsonl")
    assert [r["line"] for r in records] == [1, 3, 4, 5, 6]
    assert [r["status"] for r in records] == ["ok", "error", "error", "error", "ok"]
    # Without [input] id, custom_id is the row's line number.
    assert [r["custom_id"] for r in records] == ["1", "3", "4", "5", "6"]
    messages = [r["error"]["message"] for r in records[1:4]]
    assert messages[0] == "line 3: expected a JSON object, got an array"
    assert messages[1].startswith("line 4: invalid JSON")
    assert messages[2].startswith("line 5: line is ")
    labelled = read_jsonl(out / "rows.jsonl")
    assert len(labelled) == 5
    assert labelled[1] == {"output": None, "error": "invalid_input: " + messages[0]}
    assert labelled[4]["subject"] == 5
    assert labelled[4]["output"].startswith("Echo: 5: null")


def test_ids_are_strings_or_integers_and_duplicates_stop_the_run_before_sending(
    mock_server: Callable[..., MockServer], tmp_path: Path
) -> None:
    log = tmp_path / "requests.log"
    server = mock_server(request_log=log)
    rows: list[Any] = [
        {"k": 7, "subject": "a", "body": "b"},
        {"k": "x", "subject": "a", "body": "b"},
        {"k": 1.5, "subject": "a", "body": "b"},
        {"subject": "a", "body": "b"},
    ]
    write_jsonl(tmp_path / "rows.jsonl", rows)
    job = tmp_path / "job.toml"
    job.write_text(job_text("rows.jsonl", extra='id = "k"'), encoding="utf-8")
    out = tmp_path / "out"
    assert run(job, server, out).exit_code == 2
    records = read_jsonl(out / "results.jsonl")
    assert [r["custom_id"] for r in records] == ["7", "x", None, None]
    assert [r["error"]["field"] for r in records[2:]] == ["k", "k"]

    write_jsonl(tmp_path / "rows.jsonl", [*rows, {"k": "7", "subject": "a", "body": "c"}])
    sent = log.read_bytes().count(b"\n")
    result = run(job, server, tmp_path / "again")
    assert result.exit_code == 1
    assert "duplicate custom_id values (1 in all): '7' on lines 1 and 5" in " ".join(
        result.output.split()
    )
    assert log.read_bytes().count(b"\n") == sent


def test_a_csv_that_is_not_utf8_is_refused_before_sending(
    mock_server: Callable[..., MockServer], tmp_path: Path
) -> None:
    log = tmp_path / "requests.log"
    server = mock_server(request_log=log)
    job = tmp_path / "job.toml"
    job.write_text(job_text("in.csv"), encoding="utf-8")
    # Among the rows the job is checked on: the job check says so.
    (tmp_path / "in.csv").write_bytes(b"subject,body\na,b\nc,\xe9t\xe9\n")
    result = run(job, server, tmp_path / "out")
    assert result.exit_code == 1
    assert "input.path: cannot read" in result.output
    # Further on: the scan refuses the file whole.
    (tmp_path / "in.csv").write_bytes(b"subject,body\n" + b"a,b\n" * 5000 + b"c,\xe9t\xe9\n")
    result = run(job, server, tmp_path / "out")
    assert result.exit_code == 1
    assert "is not a UTF-8 CSV file" in result.output
    assert log.read_bytes() == b""  # nothing was sent


def test_rows_hold_the_parsed_value_when_a_record_has_one(tmp_path: Path) -> None:
    """Structured output puts `parsed` on ok records; the labelled row takes it over the
    reply's text (records written here by hand: this module reads, the worker writes)."""
    write_jsonl(tmp_path / "rows.jsonl", [{"subject": "a", "body": "b"}] * 3)
    job_path = tmp_path / "job.toml"
    job_path.write_text(job_text("rows.jsonl"), encoding="utf-8")
    job = load_job(job_path)
    reply = {"choices": [{"message": {"role": "assistant", "content": '{"label": "x"}'}}]}
    paths = Paths(tmp_path / "out")
    paths.outdir.mkdir()
    write_jsonl(
        paths.results,
        [
            {"index": 0, "status": "ok", "response": reply, "parsed": {"label": "x"}},
            {"index": 1, "status": "ok", "response": reply, "parsed": None},
            {"index": 2, "status": "ok", "response": reply},
        ],
    )
    write_rows(paths, job, 1 << 20)
    assert [r["output"] for r in read_jsonl(paths.rows_jsonl)] == [
        {"label": "x"},
        None,
        '{"label": "x"}',
    ]


# Cells: any text a CSV can hold (quotes, commas, newlines, unicode), never a lone \r.
CELL = st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\r\x00"))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(CELL, CELL), max_size=8), st.sampled_from(["\n", "\r\n"]))
def test_csv_rows_come_back_equal_with_the_line_they_start_on(
    cells: list[tuple[str, str]], newline: str
) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator=newline)
    writer.writerow(["a", "b"])
    starts = []
    for a, b in cells:
        starts.append(buffer.getvalue().count("\n") + 1)
        writer.writerow([a, b])
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "rows.csv"
        path.write_bytes(buffer.getvalue().encode())
        rows = [(row.line, row.value) for row in iter_rows(path, RowFormat.CSV, 1 << 20)]
    expected = [(line, {"a": a, "b": b}) for line, (a, b) in zip(starts, cells, strict=True)]
    assert rows == expected


def test_jsonl_rows_keep_unicode_and_nested_values(tmp_path: Path) -> None:
    value = {"t": "日本 ✓", "n": {"deep": [1, {"x": None}]}}
    path = write_jsonl(tmp_path / "rows.jsonl", [value])
    (row,) = iter_rows(path, RowFormat.JSONL, 1 << 20)
    assert row.read() == value
    assert orjson.loads(orjson.dumps(row.read())) == value
