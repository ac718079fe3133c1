"""Eval jobs end to end: `batchrun run JOB` with an `[eval]` table against the mock over
127.0.0.1, whose replies the rows script (`metadata.mock`), so every line's score is
known by hand: per-record `score` and `slice`, summary.json's `eval` per scorer and slice
with Wilson intervals, the closing table, `--fail-under` / `fail_under` and exit 4 with
its precedence, failed and unreadable rows scored 0 and counted apart, a resume that
scores every line once, and each `[eval]` mistake named with its key and line."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import evaljob
import orjson
import pytest
from click.testing import CliRunner, Result
from jsonl import read_jsonl, write_jsonl

from batchrun.cli import main
from batchrun.mock import MockServer
from batchrun.outcome import EXIT_BELOW_BAR, Outcome

Factory = Callable[..., MockServer]
ENV = {"MISTRAL_API_KEY": "sk-test-evals-31c9"}
REPO = Path(__file__).resolve().parent.parent


def row(qid: str, topic: Any, answer: Any, mock: dict[str, Any]) -> dict[str, Any]:
    return {"qid": qid, "topic": topic, "q": f"question {qid}", "answer": answer, "mock": mock}


# Each row's reply is scripted; the comment says which scorers pass (n = normalized,
# c = contains, x = exact, u = numeric:0.5).
ROWS = [
    row("a", "geo", "Paris", {"reply": "Paris"}),  # x n c
    row("b", "geo", "Paris", {"reply": "paris."}),  # n
    row("c", "geo", "Tokyo", {"reply": "It is Tokyo, I think"}),  # c
    row("d", "math", 42, {"reply": "The answer is 42.3"}),  # c u
    row("e", "math", 42, {"reply": "42"}),  # x n c u
    row("f", "math", "12", {"reply": "", "fault": "400"}),  # failed request: all 0
    row("g", 3, "Ω", {"reply": "ω"}),  # n (NFKC + casefold), slice "3"
]
SCORERS = ["exact", "normalized", "contains", "numeric:0.5"]
EXPECTED = {
    "a": {"exact": 1, "normalized": 1, "contains": 1, "numeric:0.5": 0},
    "b": {"exact": 0, "normalized": 1, "contains": 0, "numeric:0.5": 0},
    "c": {"exact": 0, "normalized": 0, "contains": 1, "numeric:0.5": 0},
    "d": {"exact": 0, "normalized": 0, "contains": 1, "numeric:0.5": 1},
    "e": {"exact": 1, "normalized": 1, "contains": 1, "numeric:0.5": 1},
    "f": {"exact": 0, "normalized": 0, "contains": 0, "numeric:0.5": 0},
    "g": {"exact": 0, "normalized": 1, "contains": 0, "numeric:0.5": 0},
}


def job_text(scorers: list[str] = SCORERS, extra: str = "") -> str:
    return evaljob.job_text(scorers, extra)


def write_job(folder: Path, text: str | None = None, rows: list[Any] | None = None) -> Path:
    write_jsonl(folder / "rows.jsonl", ROWS if rows is None else rows)
    job = folder / "job.toml"
    job.write_text(job_text() if text is None else text, encoding="utf-8")
    return job


def run(job: Path, server: MockServer, out: Path, *args: str) -> Result:
    argv = ["run", str(job), "--base-url", server.url, "-o", str(out), *args]
    return CliRunner().invoke(main, argv, env=ENV)


def summary(out: Path) -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads((out / "summary.json").read_bytes())
    return data


def wilson(passed: int, count: int) -> tuple[float, float]:
    """The textbook formula, written out again here to check the summary against."""
    z = 1.959963984540054
    p = passed / count
    centre = p + z * z / (2 * count)
    spread = z * math.sqrt(p * (1 - p) / count + z * z / (4 * count * count))
    return (centre - spread) / (1 + z * z / count), (centre + spread) / (1 + z * z / count)


def test_every_record_is_scored_and_the_summary_adds_up_per_scorer_and_slice(
    mock_server: Factory, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    result = run(write_job(tmp_path), mock_server(), out, "-q")
    assert result.exit_code == 2, result.output  # one line failed, no bar
    records = {r["custom_id"]: r for r in read_jsonl(out / "results.jsonl")}
    assert {k: r["score"] for k, r in records.items()} == EXPECTED
    assert {k: r["slice"] for k, r in records.items()} == {
        **dict.fromkeys("abc", "geo"),
        **dict.fromkeys("def", "math"),
        "g": "3",
    }
    assert records["f"]["status"] == "error"
    section = summary(out)["eval"]
    assert section["expected"] == "answer" and section["slice"] == "topic"
    assert list(section["scorers"]) == SCORERS
    assert section["fail_under"] is None and section["below_bar"] == []
    for name in SCORERS:
        figures = section["scorers"][name]
        passed = sum(EXPECTED[k][name] for k in EXPECTED)
        assert (figures["passed"], figures["count"]) == (passed, 7)
        assert (figures["scored"], figures["unscored"]) == (6, 1)  # f failed: 0, apart
        assert figures["score"] == pytest.approx(passed / 7)
        assert figures["ci95"] == pytest.approx(wilson(passed, 7))
        for value, keys in {"geo": "abc", "math": "def", "3": "g"}.items():
            sliced = figures["slices"][value]
            passed = sum(EXPECTED[k][name] for k in keys)
            assert (sliced["passed"], sliced["count"]) == (passed, len(keys))
            assert sliced["ci95"] == pytest.approx(wilson(passed, len(keys)))
        assert figures["slices"]["math"]["unscored"] == 1


def test_closing_table_shows_each_score_and_the_lowest_slices_first(
    mock_server: Factory, tmp_path: Path
) -> None:
    result = run(write_job(tmp_path), mock_server(), tmp_path / "out")
    lines = result.stderr.splitlines()
    exact = next(line for line in lines if line.startswith("score exact"))
    assert "0.286 (2/7, 95% CI" in exact and "1 failed (scored 0)" in exact
    after = lines[lines.index(exact) + 1 : lines.index(exact) + 4]
    # exact: geo 1/3, math 1/3, "3" 0/1 -> the slice at 0 first.
    assert after[0].split()[:2] == ["topic=3", "0.000"]


@pytest.mark.parametrize(
    ("args", "extra", "code"),
    [
        # normalized is 4/7 = 0.571...: below 0.6, exactly at 4/7 is no drop.
        (["--fail-under", "0.6"], "", EXIT_BELOW_BAR),
        ([], "fail_under = { normalized = 0.6 }", EXIT_BELOW_BAR),
        ([], "fail_under = { normalized = 0.5 }", 2),  # above the bar: the failed line says 2
        (["--fail-under", "0.25"], "fail_under = 0.9", 2),  # the flag wins over the job
        (["--fail-under", "0"], "", 2),
    ],
)
def test_fail_under_exits_4_below_the_bar_and_4_ranks_over_2(
    mock_server: Factory, tmp_path: Path, args: list[str], extra: str, code: int
) -> None:
    out = tmp_path / "out"
    result = run(write_job(tmp_path, job_text(extra=extra)), mock_server(), out, "-q", *args)
    assert result.exit_code == code, result.output
    section = summary(out)["eval"]
    assert (section["below_bar"] != []) == (code == EXIT_BELOW_BAR)
    assert (out / "results.jsonl").exists() and len(read_jsonl(out / "results.jsonl")) == 7


def test_at_the_bar_passes_exactly(mock_server: Factory, tmp_path: Path) -> None:
    # exact and numeric 2/5 = 0.4, the others above; no failed line.
    rows = [r for r in ROWS if r["qid"] in "abcde"]
    out = tmp_path / "out"
    result = run(write_job(tmp_path, rows=rows), mock_server(), out, "-q", "--fail-under", "0.4")
    assert result.exit_code == 0, result.output
    result = run(write_job(tmp_path, rows=rows), mock_server(), out, "-q", "--fail-under", "0.41")
    assert result.exit_code == EXIT_BELOW_BAR
    assert summary(out)["eval"]["below_bar"] == [
        {"scorer": "exact", "slice": None, "score": 0.4, "bar": 0.41},
        {"scorer": "numeric:0.5", "slice": None, "score": 0.4, "bar": 0.41},
    ]


def test_an_aborted_run_exits_3_even_below_the_bar(mock_server: Factory, tmp_path: Path) -> None:
    rows = [row(f"r{i}", "t", "x", {"fault": "401"}) for i in range(8)]
    out = tmp_path / "out"
    result = run(write_job(tmp_path, rows=rows), mock_server(), out, "-q", "--fail-under", "1")
    assert result.exit_code == 3, result.output
    assert summary(out)["eval"]["below_bar"]  # below it, and still 3: stopped runs say so


def test_outcome_precedence() -> None:
    for outcome, code in ((Outcome.ABORTED, 3), (Outcome.INTERRUPTED, 130)):
        assert outcome.exit_code(5, below_bar=True) == code
    assert Outcome.COMPLETE.exit_code(5, below_bar=True) == EXIT_BELOW_BAR
    assert Outcome.COMPLETE.exit_code(5) == 2
    assert Outcome.PARTIAL.exit_code(0, below_bar=True) == EXIT_BELOW_BAR


def test_fail_under_without_an_eval_is_a_usage_error(mock_server: Factory, tmp_path: Path) -> None:
    server = mock_server()
    path = tmp_path / "in.jsonl"
    write_jsonl(path, [{"model": "m", "messages": [{"role": "user", "content": "x"}]}])
    result = CliRunner().invoke(
        main, ["run", str(path), "--base-url", server.url, "--fail-under", "0.5"], env=ENV
    )
    assert result.exit_code == 1
    assert "--fail-under judges eval scores" in result.stderr
    assert server.requests_received == 0


def test_a_row_without_its_expected_answer_is_invalid_and_scored_0(
    mock_server: Factory, tmp_path: Path
) -> None:
    rows = [*ROWS[:2], {"qid": "z", "topic": "geo", "q": "?", "mock": {"reply": "x"}}, "not a row"]
    out = tmp_path / "out"
    result = run(write_job(tmp_path, rows=rows), mock_server(), out, "-q")
    assert result.exit_code == 2, result.output
    records = read_jsonl(out / "results.jsonl")
    missing, unreadable = records[2], records[3]
    assert missing["error"]["type"] == "invalid_input"
    assert "answer" in missing["error"]["message"] and missing["line"] == 3
    assert missing["score"] == dict.fromkeys(SCORERS, 0) and missing["slice"] == "geo"
    assert unreadable["score"] == dict.fromkeys(SCORERS, 0) and "slice" not in unreadable
    figures = summary(out)["eval"]["scorers"]["normalized"]
    assert (figures["passed"], figures["scored"], figures["unscored"]) == (2, 2, 2)


def test_a_resumed_eval_scores_every_line_once(mock_server: Factory, tmp_path: Path) -> None:
    out = tmp_path / "out"
    job = write_job(tmp_path)
    server = mock_server()
    first = run(job, server, out, "-q", "--limit", "3")
    assert first.exit_code == 0, first.output
    assert summary(out)["eval"]["scorers"]["exact"]["count"] == 3
    second = run(job, server, out, "-q")
    assert second.exit_code == 2, second.output
    figures = summary(out)["eval"]["scorers"]["exact"]
    assert (figures["passed"], figures["count"]) == (2, 7)
    assert server.requests_received == 7


def test_changing_the_scorers_refuses_a_resume_but_the_bar_may_change(
    mock_server: Factory, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    server = mock_server()
    assert run(write_job(tmp_path), server, out, "-q", "--limit", "2").exit_code == 0
    bar = job_text(extra="fail_under = 0.1")  # resumed, and judged: numeric is 0/3
    resumed = run(write_job(tmp_path, bar), server, out, "-q", "--limit", "3")
    assert resumed.exit_code == EXIT_BELOW_BAR, resumed.output
    assert summary(out)["eval"]["scorers"]["exact"]["count"] == 3
    assert server.requests_received == 3
    other = run(write_job(tmp_path, job_text(scorers=["exact"])), server, out, "-q")
    assert other.exit_code == 1
    assert "--fresh" in other.stderr


@pytest.mark.parametrize(
    ("extra", "table", "message"),
    [
        ("bogus = 1", "", "eval.bogus: unknown key"),
        ("", 'scorers = ["exactly"]', "eval.scorers: unknown scorer 'exactly'"),
        ("", 'expected = "nope"', "eval.expected: none of the first 7 rows has a field 'nope'"),
        ("", 'slice = "nope"', "eval.slice: none of the first 7 rows has a field 'nope'"),
        ("fail_under = { fuzzy = 0.5 }", "", "eval.fail_under: fail_under names no scorer: fuzzy"),
        ("fail_under = 2", "", "eval.fail_under: fail_under must be a number from 0 to 1"),
        ("", "expected = 3", "eval.expected: must name the row field"),
    ],
)
def test_eval_mistakes_are_named_with_key_and_line_and_nothing_is_sent(
    mock_server: Factory, tmp_path: Path, extra: str, table: str, message: str
) -> None:
    text = job_text(extra=extra)
    if table:
        key = table.split(" =", maxsplit=1)[0]
        text = "\n".join(
            table if line.startswith(f"{key} =") else line for line in text.split("\n")
        )
    server = mock_server()
    result = run(write_job(tmp_path, text), server, tmp_path / "out")
    assert result.exit_code == 1
    assert message in result.stderr, result.stderr
    assert "job.toml:" in result.stderr  # the line is named
    assert server.requests_received == 0


def test_metadata_templates_take_row_values_whole_or_as_text(
    mock_server: Factory, tmp_path: Path
) -> None:
    """`"{mock}"` alone passes the row's object through (the replies above); a string
    with more in it is text, `{{` a literal brace, nested in arrays too."""
    text = job_text().replace(
        'metadata = { mock = "{mock}" }',
        'metadata = { mock = { reply = ["{{lit}} {qid}-{topic}", "{answer}"] } }',
    )
    out = tmp_path / "out"
    rows = [ROWS[0], ROWS[3]]
    result = run(write_job(tmp_path, text, rows=rows), mock_server(), out, "-q")
    assert result.exit_code == 0, result.output
    replies = [
        r["response"]["choices"][0]["message"]["content"] for r in read_jsonl(out / "results.jsonl")
    ]
    assert replies == ['["{lit} a-geo","Paris"]', '["{lit} d-math",42]']


def test_the_nightly_example_runs_offline_and_reports_its_scores(tmp_path: Path) -> None:
    out = tmp_path / "nightly"
    job = REPO / "jobs" / "nightly-eval.toml"
    result = CliRunner().invoke(main, ["run", str(job), "--mock", "-o", str(out)], env=ENV)
    assert result.exit_code == 0, result.output
    section = summary(out)["eval"]
    assert set(section["scorers"]) == {"normalized", "contains"}
    rows = read_jsonl(REPO / "jobs" / "data" / "nightly-eval.jsonl")
    assert set(section["scorers"]["normalized"]["slices"]) == {r["topic"] for r in rows}
    assert "score normalized" in result.stderr
    labelled = read_jsonl(out / "rows.jsonl")  # the rows back, each with its scores
    assert [r["qid"] for r in labelled] == [r["qid"] for r in rows]
    records = read_jsonl(out / "results.jsonl")
    assert [r["score"] for r in labelled] == [r["score"] for r in records]
    strict = CliRunner().invoke(
        main, ["run", str(job), "--mock", "-o", str(out), "--fail-under", "0.99"], env=ENV
    )
    assert strict.exit_code == EXIT_BELOW_BAR
    assert "below bar" in strict.stderr


def test_json_field_regex_and_choice_scorers_through_a_structured_run(
    mock_server: Factory, tmp_path: Path
) -> None:
    """json_field reads the record's `parsed` (response_format json_object), a reply that
    is not JSON is a schema_violation (failed: 0); regex and choice read the content."""
    rows = [
        row("p", "t", "B", {"reply": {"label": "B", "why": "(B) fits"}}),  # j r c
        row("q", "t", "C", {"reply": {"label": "c"}}),  # nothing: case matters to all three
        row("r", "t", "A", {"reply": {"label": ["A"]}}),  # nothing: a list is not "A"
        row("s", "t", "D", {"reply": "Answer: D", "times": 9}),  # not JSON: failed
    ]
    text = job_text(scorers=["json_field:label", 'regex:"label": ?"[A-D]"', "choice"])
    text = text.replace(
        'model = "mistral-small-latest"',
        'model = "mistral-small-latest"\nresponse_format = { type = "json_object" }',
    ).replace("max_attempts = 1", "max_attempts = 1\nschema_retries = 0")
    out = tmp_path / "out"
    result = run(write_job(tmp_path, text, rows=rows), mock_server(), out, "-q")
    assert result.exit_code == 2, result.output
    records = {r["custom_id"]: r for r in read_jsonl(out / "results.jsonl")}
    assert records["p"]["parsed"] == {"label": "B", "why": "(B) fits"}
    assert records["s"]["error"]["type"] == "schema_violation"
    names = ["json_field:label", 'regex:"label": ?"[A-D]"', "choice"]
    assert {k: [r["score"][n] for n in names] for k, r in records.items()} == {
        "p": [1, 1, 1],
        "q": [0, 0, 0],
        "r": [0, 0, 0],
        "s": [0, 0, 0],
    }
