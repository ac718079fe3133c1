"""`batchrun report --html`: the page of a real eval run on the mock, opened from a file://
URL in headless chromium (no console error, every chart drawn, with the run's figures),
on a killed run too; untrusted bytes shown as text and never run; the message when the
`report` extra is missing; the terminal tables take no markup from a record either."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from browser import CHROMIUM, visit
from evaljob import row, write_job
from jsonl import read_jsonl, write_jsonl
from test_report import report, report_json, snapshot
from test_report_eval import killed_eval_run, run_job

from batchrun.mock import MockServer
from batchrun.outcome import EXIT_BELOW_BAR

Factory = Callable[..., MockServer]
CHARTS = (
    "latency",
    "completions over time",
    "tokens per model",
    "errors by type",
    "score per slice",
)
# Evaluated in the page once its script says the charts are drawn: each chart's div has
# been turned into a plotly plot holding at least one drawn trace, and its data.
DRAWN = "document.body.dataset.chartsDrawn"
PAGE_STATE = """({
  charts: [...document.querySelectorAll("div.chart")].map(d => ({
    title: d.previousElementSibling.textContent,
    drawn: d.classList.contains("js-plotly-plot") && d.querySelectorAll("g.trace").length > 0,
    traces: d.data.map(t => ({name: t.name, x: t.x, y: t.y})),
  })),
  scripts: document.scripts.length,
  resources: performance.getEntriesByType("resource").map(e => e.name),
  title: document.title,
  injected: document.querySelectorAll("[data-pwned], img, iframe").length,
  failed: [...document.querySelectorAll("table")].at(-1).innerText,
  ticks: [...document.querySelectorAll(".xtick text")].map(t => t.textContent),
})"""
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no chromium on this machine (.ci/run installs Debian's when apt-get can)",
)


def write_page(out: Path, page: Path) -> None:
    code, output = report(out, "--html", str(page))
    assert code == 0, output
    assert f"report written to {page}" in output


def open_page(page: Path) -> dict[str, Any]:
    visited = visit(page.as_uri(), DRAWN, PAGE_STATE)
    assert visited.errors == []
    state: dict[str, Any] = visited.value
    return state


def chart(state: dict[str, Any], title: str) -> dict[str, Any]:
    found: dict[str, Any] = next(c for c in state["charts"] if c["title"] == title)
    return found


@needs_chromium
def test_the_page_of_an_eval_run_draws_every_chart_offline(
    mock_server: Factory, tmp_path: Path
) -> None:
    rows = [row(i) for i in range(40)]
    out = tmp_path / "out"
    job = write_job(tmp_path, rows, "fail_under = 0.5")
    assert run_job(job, mock_server(), out) == EXIT_BELOW_BAR  # exact: 17/40
    before = snapshot(out)
    page = tmp_path / "report.html"

    write_page(out, page)

    assert snapshot(out) == before
    state = open_page(page)
    assert state["resources"] == []  # self-contained: nothing was loaded from anywhere
    assert [c["title"] for c in state["charts"]] == list(CHARTS)
    assert all(c["drawn"] for c in state["charts"]), state["charts"]
    assert state["scripts"] == 2  # plotly.js and the page's own

    found = report_json(out)
    latency = chart(state, "latency")["traces"][0]
    # Every ok reply's latency, as summary.json's percentiles count them (none is cached).
    assert sum(latency["y"]) == found["counts"]["ok"] == 36
    timeline = {t["name"]: t["y"] for t in chart(state, "completions over time")["traces"]}
    assert timeline == {
        "ok": found["timeline"]["ok"],
        "failed": found["timeline"]["failed"],
        "429s waited out": found["timeline"]["throttled"],
    }
    assert sum(timeline["429s waited out"]) > 0
    errors = chart(state, "errors by type")["traces"][0]
    assert dict(zip(errors["x"], errors["y"], strict=True)) == {"http_status": 4}
    scores = {t["name"]: t for t in chart(state, "score per slice")["traces"]}
    assert list(scores) == ["exact", "contains"]
    for name, trace in scores.items():
        entry = found["eval"]["scorers"][name]
        assert trace["x"] == ["(all)", *entry["slices"]]
        assert trace["y"] == [entry["score"], *(s["score"] for s in entry["slices"].values())]
    assert "http_status" in state["failed"] and "HTTP 422" in state["failed"]


@needs_chromium
def test_the_page_of_a_killed_run_shows_what_it_finished(
    mock_server: Factory, tmp_path: Path
) -> None:
    out = killed_eval_run(mock_server(latency_ms=30), tmp_path)
    before = snapshot(out)
    page = tmp_path / "killed.html"

    write_page(out, page)

    assert snapshot(out) == before
    state = open_page(page)
    assert all(c["drawn"] for c in state["charts"]), state["charts"]
    done = report_json(out)["counts"]["done"]
    timeline = chart(state, "completions over time")["traces"]
    assert sum(sum(t["y"]) for t in timeline[:2]) == done


PAYLOAD = "<script>document.body.dataset.pwned = 1</script><img src=x onerror=alert(1)>&amp;"


@needs_chromium
def test_untrusted_bytes_are_shown_as_text_and_never_run(
    mock_server: Factory, tmp_path: Path
) -> None:
    # The custom_id and the slice come from the rows; the error message is edited in.
    rows = [row(i, qid=f"{PAYLOAD}{i}", topic=f"{PAYLOAD}t") for i in range(10)]
    out = tmp_path / "out"
    assert run_job(write_job(tmp_path, rows), mock_server(), out) == 2
    records = read_jsonl(out / "results.jsonl")
    failed = next(r for r in records if r["status"] == "error")
    failed["error"]["message"] = f"{PAYLOAD} </script><!-- ]]>"
    write_jsonl(out / "results.jsonl", records)
    page = tmp_path / "report.html"

    write_page(out, page)

    text = page.read_text(encoding="utf-8")
    assert "<script>document" not in text and "<img" not in text
    state = open_page(page)
    assert state["injected"] == 0 and state["scripts"] == 2
    assert all(c["drawn"] for c in state["charts"])
    assert f"{failed['custom_id']}" in state["failed"]
    assert f"{PAYLOAD} </script><!-- ]]>" in state["failed"]
    assert f"{PAYLOAD}t" in state["ticks"]  # the slice's label, shown as it is


def test_without_the_report_extra_html_exits_1_naming_it(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.json").write_bytes(orjson.dumps({"requests": 0}))
    page = tmp_path / "report.html"
    # plotly made unimportable in a fresh interpreter, as if the extra were not installed.
    child = (
        "import sys; sys.modules['plotly'] = None\n"
        "from batchrun.cli import main\n"
        "main(sys.argv[1:])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", child, "report", str(out), "--html", str(page)],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "pip install 'batchrun[report]'" in result.stderr.decode()
    assert not page.exists()


# A fresh interpreter runs one command, then names the report modules it loaded.
LOADED = """
import sys
from batchrun.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print(sorted(m for m in sys.modules if m.startswith(("plotly", "batchrun.report_html"))))
"""


def test_run_and_a_plain_report_never_import_plotly(mock_server: Factory, tmp_path: Path) -> None:
    out = tmp_path / "out"
    job = write_job(tmp_path, [row(0), row(1)])
    for command in (
        ["run", str(job), "-o", str(out), "-q", "--base-url", mock_server().url],
        ["report", str(out)],
        ["report", str(out), "--json"],
    ):
        result = subprocess.run(
            [sys.executable, "-c", LOADED, *command],
            capture_output=True,
            timeout=60,
            check=True,
            env={**os.environ, "MISTRAL_API_KEY": "sk-test-loaded"},
        )
        assert result.stdout.decode().splitlines()[-1] == "[]", command
    assert len(read_jsonl(out / "results.jsonl")) == 2


def test_the_terminal_tables_take_no_markup_from_a_record(
    mock_server: Factory, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    assert run_job(write_job(tmp_path, [row(i) for i in range(10)]), mock_server(), out) == 2
    records = read_jsonl(out / "results.jsonl")
    failed = next(r for r in records if r["status"] == "error")
    failed["error"]["message"] = "[/oops] [bold]not bold"
    write_jsonl(out / "results.jsonl", records)

    code, text = report(out)

    assert code == 0, text
    assert "[/oops] [bold]not bold" in text
