"""`batchrun diff` of eval runs, through the CLI, on real `[eval]` job runs against the
mock: each row's reply is scripted (`metadata.mock` templated from the row), so every
line's score in each run, and so each pass -> fail and fail -> pass, is known by hand.
Then `--fail-on-regression` and `--tolerance`: exit 4 on a drop beyond the tolerance,
0 at or within it, and 0 (said so) when the runs share no scorer."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner, Result
from evaljob import job_text
from jsonl import MODEL, write_jsonl

from batchrun.cli import main
from batchrun.mock import MockServer
from batchrun.outcome import EXIT_BELOW_BAR

Factory = Callable[..., MockServer]
ENV = {"MISTRAL_API_KEY": "sk-test-diff-eval"}


def row(qid: str, topic: str, answer: str, reply: str, fault: str | None = None) -> dict[str, Any]:
    mock: dict[str, Any] = {"reply": reply}
    if fault is not None:
        mock["fault"] = fault
    return {"qid": qid, "topic": topic, "q": f"question {qid}", "answer": answer, "mock": mock}


# exact / contains per line, A then B:
LAST_NIGHT = [
    row("q1", "geo", "Paris", "Paris"),  # 1 1
    row("q2", "geo", "Tokyo", "Tokyo"),  # 1 1
    row("q3", "math", "42", "41"),  # 0 0
    row("q4", "math", "7", "7"),  # 1 1
    row("q5", "hist", "1066", "In 1066"),  # 0 1
]
TONIGHT = [
    row("q1", "geo", "Paris", "London"),  # 0 0: pass -> fail (both)
    row("q2", "geo", "Tokyo", "Tokyo"),  # 1 1
    row("q3", "math", "42", "42"),  # 1 1: fail -> pass (both)
    row("q4", "math", "7", "", fault="500"),  # failed, 0 0: pass -> fail (both)
    row("q5", "hist", "1066", "1066"),  # 1 1: fail -> pass (exact)
]


def eval_run(
    server: MockServer,
    tmp_path: Path,
    name: str,
    rows: list[dict[str, Any]],
    scorers: list[str] | None = None,
) -> Path:
    folder = tmp_path / f"{name}-job"
    folder.mkdir()
    write_jsonl(folder / "rows.jsonl", rows)
    (folder / "job.toml").write_text(
        job_text(scorers or ["exact", "contains"], model=MODEL), encoding="utf-8"
    )
    out = tmp_path / name
    argv = ["run", str(folder / "job.toml"), "--base-url", server.url, "-o", str(out), "-q"]
    result = CliRunner().invoke(main, argv, env=ENV)
    assert result.exit_code in (0, 2), result.output
    return out


def plain_run(server: MockServer, tmp_path: Path, name: str, ids: list[str]) -> Path:
    """A run without [eval]: the same custom_ids, no scores."""
    lines = [
        {"custom_id": i, "body": {"model": MODEL, "messages": [{"role": "user", "content": i}]}}
        for i in ids
    ]
    source = write_jsonl(tmp_path / f"{name}.jsonl", lines)
    out = tmp_path / name
    argv = ["run", str(source), "-o", str(out), "-q", "--base-url", server.url]
    result = CliRunner(env=ENV).invoke(main, argv)
    assert result.exit_code == 0, result.output
    return out


def diff(a: Path, b: Path, *args: str) -> Result:
    argv = ["diff", str(a), str(b), *args]
    return CliRunner().invoke(main, argv, env={"COLUMNS": "200"})


def diff_json(a: Path, b: Path, *args: str) -> dict[str, Any]:
    result = diff(a, b, "--json", *args)
    assert result.exit_code == 0, result.output
    found: dict[str, Any] = orjson.loads(result.stdout)
    return found


def keys(part: dict[str, Any]) -> list[Any]:
    return [line["key"] for line in part["lines"]]


@pytest.fixture
def runs(mock_server: Factory, tmp_path: Path) -> tuple[Path, Path]:
    server = mock_server()
    return (
        eval_run(server, tmp_path, "last-night", LAST_NIGHT),
        eval_run(server, tmp_path, "tonight", TONIGHT),
    )


def test_scores_per_scorer_and_slice_with_the_lines_that_flipped(runs: tuple[Path, Path]) -> None:
    a, b = runs
    found = diff_json(a, b)
    scores = found["scores"]
    assert scores["scorers"] == ["exact", "contains"]
    assert scores["only_in_a"] == {} and scores["only_in_b"] == {}
    exact = scores["by_scorer"]["exact"]
    assert (exact["a"]["passed"], exact["a"]["count"]) == (3, 5)  # q1 q2 q4
    assert (exact["b"]["passed"], exact["b"]["count"]) == (3, 5)  # q2 q3 q5
    assert exact["b"]["unscored"] == 1  # q4 failed: counted, as 0
    assert exact["delta"] == pytest.approx(0.0)
    assert (exact["pass_to_fail"]["count"], keys(exact["pass_to_fail"])) == (2, ["q1", "q4"])
    assert (exact["fail_to_pass"]["count"], keys(exact["fail_to_pass"])) == (2, ["q3", "q5"])
    first = exact["pass_to_fail"]["lines"][0]
    assert first == {"key": "q1", "slice": "geo", "a": "Paris", "b": "London"}
    assert exact["pass_to_fail"]["lines"][1]["b"] is None  # a failed line has no output
    # Both intervals, the same figures summary.json has for each run.
    for run, side in ((a, "a"), (b, "b")):
        summary = orjson.loads((run / "summary.json").read_bytes())["eval"]["scorers"]
        assert exact[side]["ci95"] == summary["exact"]["ci95"]
        assert exact["slices"]["geo"][side] == {
            k: v for k, v in summary["exact"]["slices"]["geo"].items() if k != "slices"
        }
    geo = exact["slices"]["geo"]
    assert (geo["a"]["score"], geo["b"]["score"], geo["delta"]) == (1.0, 0.5, -0.5)
    assert exact["slices"]["math"]["delta"] == 0.0  # q3 gained what q4 lost
    contains = scores["by_scorer"]["contains"]
    assert (contains["a"]["passed"], contains["b"]["passed"]) == (4, 3)
    assert contains["delta"] == pytest.approx(-0.2)
    assert keys(contains["pass_to_fail"]) == ["q1", "q4"]
    assert keys(contains["fail_to_pass"]) == ["q3"]
    # Over the same lines, B's passes minus A's are fail -> pass minus pass -> fail.
    for part in scores["by_scorer"].values():
        gained = part["fail_to_pass"]["count"] - part["pass_to_fail"]["count"]
        assert part["b"]["passed"] - part["a"]["passed"] == gained
    # The rest of the diff still holds: a new failure, changed outputs.
    assert found["new_failures"]["lines"] == [{"key": "q4", "error_type": "http_status"}]
    assert found["changed_outputs"]["count"] == 3  # q1, q3, q5


def test_tables_show_scores_and_flipped_lines(runs: tuple[Path, Path]) -> None:
    a, b = runs
    result = diff(a, b)
    assert result.exit_code == 0, result.output
    out = result.stdout
    for shown in ("scores (95 % intervals)", "lines whose score changed", "pass -> fail"):
        assert shown in out
    assert "0.600 [0.231, 0.882] 3/5" in out  # exact in both runs, with its interval
    assert "London" in out and "-0.500" in out  # geo's drop


@pytest.mark.parametrize(
    ("tolerance", "code", "dropped"),
    [
        ("0", EXIT_BELOW_BAR, ["contains overall", "contains slice 'geo'", "exact slice 'geo'"]),
        ("0.2", EXIT_BELOW_BAR, ["contains slice 'geo'", "exact slice 'geo'"]),  # 0.2: at it
        ("0.49", EXIT_BELOW_BAR, ["contains slice 'geo'", "exact slice 'geo'"]),
        ("0.5", 0, []),  # geo dropped by exactly 0.5: within
        ("1", 0, []),
    ],
)
def test_fail_on_regression_exits_4_beyond_the_tolerance_only(
    runs: tuple[Path, Path], tolerance: str, code: int, dropped: list[str]
) -> None:
    a, b = runs
    result = diff(a, b, "--fail-on-regression", "--tolerance", tolerance)
    assert result.exit_code == code, result.output
    said = re.findall(r"^regression: (.+?) \d", result.stderr, re.MULTILINE)
    assert sorted(said) == dropped
    if code:
        assert "contains slice 'geo' 1.0000 -> 0.5000 (dropped 0.5000" in result.stderr
    else:
        assert f"no score dropped by more than {float(tolerance):g}" in result.stderr
    # Without the flag, the same drops are listed in --json and the exit is 0.
    drops = diff_json(a, b, "--tolerance", tolerance)["regressions"]["drops"]
    assert len(drops) == len(dropped)


def test_only_drops_count_not_gains(runs: tuple[Path, Path]) -> None:
    a, b = runs
    result = diff(b, a, "--fail-on-regression", "--json")  # tonight -> last night
    drops = orjson.loads(result.stdout)["regressions"]["drops"]
    assert [(d["scorer"], d["slice"]) for d in drops] == [("exact", "hist")]  # 1 -> 0
    assert result.exit_code == EXIT_BELOW_BAR
    same = diff(a, a, "--fail-on-regression")
    assert same.exit_code == 0, same.output


def test_different_line_sets_compare_the_lines_in_both(
    mock_server: Factory, tmp_path: Path
) -> None:
    server = mock_server()
    a = eval_run(server, tmp_path, "a", LAST_NIGHT)
    # q5 (the only "hist" line) is gone, q6 (a new "art" slice) is new; q1 went wrong.
    b_rows = [*TONIGHT[:1], *LAST_NIGHT[1:4], row("q6", "art", "Monet", "Monet")]
    b = eval_run(server, tmp_path, "b", b_rows)
    found = diff_json(a, b, "--tolerance", "0.3")
    assert found["only_in_a"] == {"count": 1, "keys": ["q5"]}
    assert found["only_in_b"] == {"count": 1, "keys": ["q6"]}
    exact = found["scores"]["by_scorer"]["exact"]
    assert keys(exact["pass_to_fail"]) == ["q1"] and exact["fail_to_pass"]["count"] == 0
    assert (exact["a"]["count"], exact["b"]["count"]) == (5, 5)  # each run's own lines
    assert exact["slices"]["hist"]["b"] is None and exact["slices"]["hist"]["delta"] is None
    assert exact["slices"]["art"]["a"] is None and exact["slices"]["art"]["b"]["score"] == 1.0
    not_compared = found["regressions"]["not_compared"]
    assert {"scorer": "exact", "slice": "hist", "reason": "only in A"} in not_compared
    assert {"scorer": "exact", "slice": "art", "reason": "only in B"} in not_compared
    drops = [(d["scorer"], d["slice"]) for d in found["regressions"]["drops"]]
    assert drops == [("exact", "geo"), ("contains", "geo")]  # 0.5 > 0.3; overall 0.0, -0.2
    result = diff(a, b, "--fail-on-regression", "--tolerance", "0.5")
    assert result.exit_code == 0, result.output
    assert "exact slice 'hist' (only in A)" in result.stdout  # listed as not compared


def test_different_scorer_lists_compare_the_scorers_both_have(
    mock_server: Factory, tmp_path: Path
) -> None:
    server = mock_server()
    a = eval_run(server, tmp_path, "a", LAST_NIGHT, ["exact", "contains"])
    b = eval_run(server, tmp_path, "b", TONIGHT, ["normalized", "exact"])
    found = diff_json(a, b)
    scores = found["scores"]
    assert scores["scorers"] == ["exact"]
    assert list(scores["by_scorer"]) == ["exact"]
    assert scores["only_in_a"]["contains"]["passed"] == 4
    assert scores["only_in_b"]["normalized"]["passed"] == 3  # q2 q3 q5
    assert keys(scores["by_scorer"]["exact"]["pass_to_fail"]) == ["q1", "q4"]
    not_compared = found["regressions"]["not_compared"]
    assert {"scorer": "contains", "slice": None, "reason": "only in A"} in not_compared
    assert {"scorer": "normalized", "slice": None, "reason": "only in B"} in not_compared
    result = diff(a, b, "--fail-on-regression")
    assert result.exit_code == EXIT_BELOW_BAR  # exact's geo dropped
    assert "normalized (only in B)" in result.stdout


def test_only_one_side_an_eval_run(mock_server: Factory, tmp_path: Path) -> None:
    server = mock_server()
    a = eval_run(server, tmp_path, "a", LAST_NIGHT)
    b = plain_run(server, tmp_path, "b", [r["qid"] for r in LAST_NIGHT])
    found = diff_json(a, b)
    assert found["joined_by"] == "custom_id" and found["common"] == 5
    assert found["scores"]["scorers"] == []
    assert set(found["scores"]["only_in_a"]) == {"exact", "contains"}
    for first, second in ((a, b), (b, a)):
        result = diff(first, second, "--fail-on-regression")
        assert result.exit_code == 0, result.output
        assert "no eval scorer in both runs" in result.stderr
        assert "no scorer in both runs: scores not compared" in result.stdout


def test_runs_without_scores_do_not_regress(mock_server: Factory, tmp_path: Path) -> None:
    server = mock_server()
    a = plain_run(server, tmp_path, "a", ["x", "y"])
    b = plain_run(server, tmp_path, "b", ["x", "z"])
    assert diff_json(a, b)["scores"] is None
    result = diff(a, b, "--fail-on-regression")
    assert result.exit_code == 0, result.output
    assert "no eval scorer in both runs: no score to regress, exit 0" in result.stderr
    assert "scores (95 %" not in result.stdout and "scorer" not in result.stdout


def test_a_killed_run_without_summary_is_scored_from_its_records(
    runs: tuple[Path, Path],
) -> None:
    a, b = runs
    (b / "summary.json").unlink()
    exact = diff_json(a, b)["scores"]["by_scorer"]["exact"]
    assert (exact["b"]["passed"], exact["b"]["count"]) == (3, 5)


@pytest.mark.parametrize("tolerance", ["-0.1", "1.5", "nan", "inf", "a lot"])
def test_a_tolerance_outside_0_to_1_is_a_usage_error(
    runs: tuple[Path, Path], tolerance: str
) -> None:
    a, b = runs
    result = diff(a, b, "--fail-on-regression", "--tolerance", tolerance)
    assert result.exit_code == 1
    assert "--tolerance" in result.output
