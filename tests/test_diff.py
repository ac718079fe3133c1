"""`batchrun diff` through the CLI, on pairs of real runs against the mock whose
differences are known line by line: `metadata.mock.reply` sets a line's answer and
`metadata.mock.fault` fails it."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from click.testing import CliRunner
from hypothesis import example, given, settings
from hypothesis import strategies as st
from jsonl import MODEL, write_jsonl

from batchrun.cli import main
from batchrun.diff import diff_runs
from batchrun.mock import MockServer
from batchrun.outdir import Paths

Factory = Callable[..., MockServer]
ENV = {"MISTRAL_API_KEY": "k"}


def line(custom_id: str | None, reply: str = "same", fault: str | None = None) -> dict[str, Any]:
    mock: dict[str, Any] = {"reply": reply}
    if fault is not None:
        mock["fault"] = fault
    body: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": f"question {custom_id}"}],
        "metadata": {"mock": mock},
    }
    if custom_id is None:
        return body
    return {"custom_id": custom_id, "body": body}


def run(server: MockServer, tmp_path: Path, name: str, lines: list[dict[str, Any]]) -> Path:
    source = write_jsonl(tmp_path / f"{name}.jsonl", lines)
    out = tmp_path / name
    args = ["run", str(source), "-o", str(out), "-q", "--base-url", server.url]
    result = CliRunner(env=ENV).invoke(main, [*args, "--max-attempts", "1"])
    assert result.exit_code in (0, 2), result.output
    return out


def diff_json(a: Path, b: Path) -> dict[str, Any]:
    result = CliRunner().invoke(main, ["diff", str(a), str(b), "--json"])
    assert result.exit_code == 0, result.output
    found: dict[str, Any] = orjson.loads(result.stdout)
    return found


def snapshot(outdir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(outdir.iterdir()) if p.is_file()}


def test_changed_outputs_and_failures_by_custom_id(mock_server: Factory, tmp_path: Path) -> None:
    server = mock_server()
    a = run(server, tmp_path, "a", [
        line("q1"), line("q2", "old [B] answer"), line("q3"), line("q4", fault="500"),
        line("q5", fault="500"), line("q6", fault="500"),
    ])  # fmt: skip
    # B lists its lines in another order: the join is by custom_id, not position.
    b = run(server, tmp_path, "b", [
        line("q6", fault="400"), line("q5"), line("q4", fault="500"), line("q3", fault="500"),
        line("q2", "new [B] answer"), line("q1"),
    ])  # fmt: skip
    before = snapshot(a), snapshot(b)
    found = diff_json(a, b)
    assert (snapshot(a), snapshot(b)) == before  # neither OUTDIR is written to
    assert found["joined_by"] == "custom_id"
    assert found["common"] == 6
    assert found["changed_outputs"]["count"] == 1
    assert found["changed_outputs"]["examples"] == [
        {"key": "q2", "a": "old [B] answer", "b": "new [B] answer"}
    ]
    assert found["new_failures"] == {
        "count": 1,
        "lines": [{"key": "q3", "error_type": "http_status"}],
    }
    assert [x["key"] for x in found["fixed_failures"]["lines"]] == ["q5"]
    assert found["fixed_failures"]["count"] == 1
    assert found["error_type_changes"]["count"] == 0  # 500 and 400 are both http_status
    assert found["only_in_a"] == {"count": 0, "keys": []}
    assert found["only_in_b"] == {"count": 0, "keys": []}
    summary_a = orjson.loads((a / "summary.json").read_bytes())
    summary_b = orjson.loads((b / "summary.json").read_bytes())
    # The same figures summary.json has, and B - A of them.
    assert found["a"]["tokens"] == summary_a["tokens"]
    assert found["b"]["latency_ms"] == summary_b["latency_ms"]
    assert found["a"]["cost_usd"] == summary_a["cost"]["total_usd"]
    tokens_delta = {k: summary_b["tokens"][k] - summary_a["tokens"][k] for k in summary_a["tokens"]}
    assert found["delta"]["tokens"] == tokens_delta
    assert found["delta"]["ok"] == summary_b["counts"]["ok"] - summary_a["counts"]["ok"]
    p50 = summary_b["latency_ms"]["p50"] - summary_a["latency_ms"]["p50"]
    assert found["delta"]["latency_ms"]["p50"] == round(p50, 2)


def test_error_type_changes(mock_server: Factory, tmp_path: Path) -> None:
    server = mock_server()
    a = run(server, tmp_path, "a", [line("q1", fault="500"), line("q2", fault="500")])
    b = run(server, tmp_path, "b", [line("q1", fault="500"), line("q2", fault="invalid_json")])
    found = diff_json(a, b)
    changes = found["error_type_changes"]
    assert changes["count"] == 1
    assert changes["lines"][0]["key"] == "q2"
    assert changes["lines"][0]["a"] == "http_status"
    assert changes["lines"][0]["b"] not in (None, "http_status")


def test_different_line_sets(mock_server: Factory, tmp_path: Path) -> None:
    server = mock_server()
    a = run(server, tmp_path, "a", [line("gone-1"), line("kept"), line("gone-2")])
    b = run(server, tmp_path, "b", [line("kept", "changed"), line("new")])
    found = diff_json(a, b)
    assert found["only_in_a"] == {"count": 2, "keys": ["gone-1", "gone-2"]}
    assert found["only_in_b"] == {"count": 1, "keys": ["new"]}
    assert found["common"] == 1
    assert found["changed_outputs"]["count"] == 1
    assert (found["a"]["lines"], found["b"]["lines"]) == (3, 2)


def test_without_custom_ids_lines_join_by_index(mock_server: Factory, tmp_path: Path) -> None:
    server = mock_server()
    a = run(server, tmp_path, "a", [line(None, "x"), line(None, "y"), line(None, "z")])
    b = run(server, tmp_path, "b", [line(None, "x"), line(None, "Y"), line(None, fault="500")])
    # One run with ids, one without: still by index.
    c = run(server, tmp_path, "c", [line("q0", "x"), line("q1", "y"), line("q2", "z"), line("q3")])
    found = diff_json(a, b)
    assert found["joined_by"] == "index"
    assert found["changed_outputs"]["examples"] == [{"key": 1, "a": "y", "b": "Y"}]
    assert found["new_failures"]["lines"] == [{"key": 2, "error_type": "http_status"}]
    mixed = diff_json(a, c)
    assert mixed["joined_by"] == "index"
    assert mixed["changed_outputs"]["count"] == 0
    assert mixed["only_in_b"] == {"count": 1, "keys": [3]}


def test_long_outputs_are_cut_in_examples(mock_server: Factory, tmp_path: Path) -> None:
    server = mock_server()
    a = run(server, tmp_path, "a", [line(None, "a" * 5000)])
    b = run(server, tmp_path, "b", [line(None, "b" * 5000)])
    example = diff_json(a, b)["changed_outputs"]["examples"][0]
    assert example["a"].startswith("aaa") and example["b"].startswith("bbb")
    assert len(example["a"]) < 5000 and example["b"].endswith("…")


def test_journal_records_beyond_results_count(mock_server: Factory, tmp_path: Path) -> None:
    """A run stopped with a gap has lines done in the journal only: they are compared."""
    server = mock_server()
    a = run(server, tmp_path, "a", [line("q0"), line("q1"), line("q2", "old")])
    b = run(server, tmp_path, "b", [line("q0"), line("q1"), line("q2", "new")])
    # Make B look stopped before line 1 was written: results hold line 0 only.
    paths = Paths(b)
    first = paths.results.read_bytes().split(b"\n")[0] + b"\n"
    paths.results.write_bytes(first)
    found = diff_json(a, b)
    assert found["b"]["lines"] == 3
    assert found["changed_outputs"]["examples"] == [{"key": "q2", "a": "old", "b": "new"}]


def test_tables_show_untrusted_text_as_text(mock_server: Factory, tmp_path: Path) -> None:
    server = mock_server()
    a = run(server, tmp_path, "a", [line("[bold]q1[/bold]", "[red]before")])
    b = run(server, tmp_path, "b", [line("[bold]q1[/bold]", "[red]after")])
    result = CliRunner().invoke(main, ["diff", str(a), str(b)], terminal_width=200)
    assert result.exit_code == 0, result.output
    for shown in ("[bold]q1[/bold]", "[red]before", "[red]after", "changed outputs"):
        assert shown in result.stdout


def test_missing_or_empty_directory_exits_1(mock_server: Factory, tmp_path: Path) -> None:
    server = mock_server()
    a = run(server, tmp_path, "a", [line("q1")])
    missing = CliRunner().invoke(main, ["diff", str(a), str(tmp_path / "nope")])
    assert missing.exit_code == 1
    assert "does not exist" in missing.output
    (tmp_path / "empty").mkdir()
    empty = CliRunner().invoke(main, ["diff", str(tmp_path / "empty"), str(a)])
    assert empty.exit_code == 1
    assert "holds no run" in empty.output


HOSTILE = [
    b"[]",
    b"not json",
    b'{"index": "x", "status": 5, "response": {"choices": "no"}, "latency_ms": true}',
    b'{"index": 7, "custom_id": 3, "status": "ok", "response": {"choices": [{"message": '
    b'{"content": [{"type": "text", "text": "chunk"}, 4]}}], "usage": {"total_tokens": -1}}}',
    b'{"index": 8, "status": "ok", "response": {"choices": [{"message": {"tool_calls": []}}]}}',
    b'{"index": 9, "status": "error", "error": "a string"}',
    b'{"index": 10, "status": "ok"',  # a torn last line, no newline
]


def test_hostile_records_are_compared_not_raised(mock_server: Factory, tmp_path: Path) -> None:
    """Records are read back from disk, may be hand-edited or hold any reply: a field of
    the wrong type is absent, a line that is no record is skipped, nothing raises."""
    server = mock_server()
    a = run(server, tmp_path, "a", [line(None, "x"), line(None, "y")])
    b = run(server, tmp_path, "b", [line(None, "x"), line(None, "y")])
    results = Paths(b).results
    results.write_bytes(results.read_bytes() + b"\n".join(HOSTILE))
    found = diff_json(a, b)
    assert found["joined_by"] == "index"
    assert found["common"] == 2
    # Index "x" is no index: that record cannot be joined; 7, 8 and 9 are not in A.
    assert found["only_in_b"] == {"count": 3, "keys": [7, 8, 9]}
    assert found["unjoined"] == {"a": 0, "b": 1}
    shown = CliRunner().invoke(main, ["diff", str(b), str(a)], terminal_width=200)
    assert shown.exit_code == 0, shown.output
    assert "unjoined (A / B)" in shown.stdout


JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
FIELDS = st.sampled_from(["index", "custom_id", "status", "response", "error", "latency_ms"])
RECORDS = st.lists(
    st.dictionaries(FIELDS, JSON_VALUES | st.sampled_from(["ok", "error", 0, 1])), max_size=6
)


@settings(max_examples=60, deadline=None)
@given(records=RECORDS, other=RECORDS)
@example(records=[{"index": 0}, {"index": 0}, {}], other=[])
def test_any_records_diff_without_raising_and_a_run_equals_itself(
    records: list[dict[str, Any]], other: list[dict[str, Any]]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        a, b = Path(tmp, "a"), Path(tmp, "b")
        for outdir, lines in ((a, records), (b, other)):
            outdir.mkdir()
            write_jsonl(outdir / "results.jsonl", lines)
        diff_runs(a, b).to_dict()
        same = diff_runs(a, a).to_dict()
    # A record without an index, or with one seen before, is counted apart in both.
    assert same["unjoined"]["a"] == same["unjoined"]["b"]
    changed = ("changed_outputs", "new_failures", "fixed_failures", "error_type_changes")
    assert [same[name]["count"] for name in changed] == [0, 0, 0, 0]
    assert same["only_in_b"]["count"] == 0
