"""Everyday mistakes through the CLI: usage errors, environment variables, models, keys,
and what the user reads (notices, the closing summary, a closed stderr)."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import anyio
import click
import orjson
import pytest
from click.testing import CliRunner, Result
from jsonl import write_jsonl

from batchrun import RunConfig, run_batch
from batchrun.cli import main
from batchrun.mock import MockServer
from batchrun.mock.kinds import FAULT_HELP, FAULT_KINDS

REPO = Path(__file__).resolve().parent.parent
KEY = "sk-test-key"


def body(i: int, **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": f"line-{i}"}], **extra}


def plain(i: int, **extra: Any) -> dict[str, Any]:
    return {"model": "m", **body(i, **extra)}


def faulty(i: int, fault: str, **mock: Any) -> dict[str, Any]:
    return plain(i, metadata={"mock": {"fault": fault, **mock}})


def invoke(*args: str, env: Mapping[str, str | None] | None = None) -> Result:
    return CliRunner(env={"MISTRAL_API_KEY": KEY, **(env or {})}).invoke(main, list(args))


def sent_contents(log: Path) -> list[str]:
    if not log.exists():
        return []
    return [orjson.loads(line)["content"] for line in log.read_bytes().splitlines()]


def popen(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "batchrun", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "MISTRAL_API_KEY": KEY, **(env or {})},
        cwd=REPO,
    )


# -- usage errors -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["run"],  # missing argument
        ["run", "{input}", "--concurency", "4"],  # typo'd flag
        ["run", "{dir}"],  # a directory as input
        ["run", "{input}", "-c", "four"],  # bad value
        ["mock-server", "--fault", "nosuch"],
        ["mock-server", "--bogus"],
        ["nosuch-command"],
    ],
)
def test_usage_errors_exit_1_with_clicks_message(tmp_path: Path, args: list[str]) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [plain(0)])
    argv = [a.format(input=path, dir=tmp_path) for a in args]
    result = invoke(*argv)
    assert result.exit_code == 1, result.output
    assert "Error:" in result.output and "Usage:" in result.output


# -- environment variables -----------------------------------------------------------------


def test_documented_run_env_vars_are_read(
    mock_server: Callable[..., MockServer], tmp_path: Path
) -> None:
    server = mock_server()
    path = write_jsonl(tmp_path / "in.jsonl", [plain(i) for i in range(6)])
    out = tmp_path / "from-env"
    env = {
        "BATCHRUN_RUN_CONCURRENCY": "3",
        "BATCHRUN_CONCURRENCY": "7",  # the accidental name of old: not an option's variable
        "BATCHRUN_RUN_OUTPUT": str(out),
        "BATCHRUN_RUN_QUIET": "1",
        "BATCHRUN_RUN_JSON": "1",
    }
    result = invoke("run", str(path), "--base-url", server.url, env=env)
    assert result.exit_code == 0, result.output
    summary = orjson.loads(result.stdout)
    assert summary["concurrency"] == 3
    assert summary["counts"]["ok"] == 6
    assert (out / "summary.json").exists()
    refused = invoke("run", str(path), env={"BATCHRUN_RUN_CONCURRENCY": "0"})
    assert refused.exit_code == 1
    assert "--concurrency must be >= 1, got 0" in refused.output


def test_documented_mock_server_env_vars_are_read() -> None:
    proc = popen(
        "mock-server", env={"BATCHRUN_MOCK_SERVER_PORT": "0", "BATCHRUN_MOCK_SERVER_FAULT": "503"}
    )
    try:
        assert proc.stderr is not None
        banner = proc.stderr.readline().decode()
        url = banner.strip().rsplit(" ", 1)[-1]
        assert url.startswith("http://127.0.0.1:") and not url.endswith(":8089"), banner
        request = urllib.request.Request(
            url + "/v1/chat/completions",
            data=orjson.dumps(plain(0)),
            headers={"authorization": "Bearer x", "content-type": "application/json"},
        )
        with pytest.raises(urllib.error.HTTPError) as answer:
            urllib.request.urlopen(request, timeout=10)
        assert answer.value.code == 503
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=10)


@pytest.mark.parametrize(("command", "prefix"), [("run", "RUN"), ("mock-server", "MOCK_SERVER")])
def test_help_shows_each_options_env_var(command: str, prefix: str) -> None:
    help_text = invoke(command, "--help").output
    cmd = main.get_command(click.Context(main), command)
    assert cmd is not None
    for param in cmd.params:
        if isinstance(param, click.Option):
            flag = max(param.opts, key=len).lstrip("-").upper().replace("-", "_")
            assert f"BATCHRUN_{prefix}_{flag}" in help_text.replace("\n", "").replace(" ", "")


# -- models -----------------------------------------------------------------------------


def test_batch_lines_without_a_model_are_refused_before_sending(
    mock_server: Callable[..., MockServer], tmp_path: Path
) -> None:
    log = tmp_path / "requests.log"
    server = mock_server(request_log=log)
    lines = [{"custom_id": f"c-{i}", "body": body(i)} for i in range(50)]
    path = write_jsonl(tmp_path / "batch.jsonl", lines)
    out = tmp_path / "out"
    args = ("run", str(path), "-o", str(out), "--base-url", server.url, "-q")
    refused = invoke(*args)
    assert refused.exit_code == 1, refused.output
    assert "50 of 50 lines name no model" in refused.output
    assert "pass -m MODEL" in refused.output
    assert sent_contents(log) == [] and not out.exists()
    fixed = invoke(*args, "-m", "mistral-small-latest")
    assert fixed.exit_code == 0, fixed.output
    assert len(sent_contents(log)) == 50


def test_model_flag_that_every_line_overrides_is_warned_once(
    mock_server: Callable[..., MockServer], tmp_path: Path
) -> None:
    server = mock_server()
    lines = [{"custom_id": f"c-{i}", "body": plain(i)} for i in range(5)]
    path = write_jsonl(tmp_path / "batch.jsonl", lines)
    result = invoke("run", str(path), "--base-url", server.url, "-q", "-m", "other")
    assert result.exit_code == 0, result.output
    assert result.output.count("-m other is ignored: every line names its own model") == 1
    assert "--override-model other" in result.output


def test_override_model_replaces_every_lines_model_and_is_a_resume_setting(
    mock_server: Callable[..., MockServer], tmp_path: Path
) -> None:
    server = mock_server()
    lines = [{"custom_id": "a", "body": plain(0)}, {"custom_id": "b", "body": body(1)}]
    path = write_jsonl(tmp_path / "batch.jsonl", lines)
    args = ("run", str(path), "--base-url", server.url, "-q", "-o", str(tmp_path / "out"))
    result = invoke(*args, "--override-model", "large")
    assert result.exit_code == 0, result.output
    records = [
        orjson.loads(x) for x in (tmp_path / "out" / "results.jsonl").read_bytes().splitlines()
    ]
    assert [r["response"]["model"] for r in records] == ["large", "large"]
    other = invoke(*args, "--override-model", "small")
    assert other.exit_code == 1
    assert "other request settings" in other.output
    # A setting stored only when used still names itself when it is dropped.
    dropped = invoke(*args, "-m", "small")
    assert dropped.exit_code == 1
    assert "override_model: 'large' -> None" in " ".join(dropped.output.split())


# -- servers without authentication --------------------------------------------------------


def test_no_api_key_needs_no_key_and_sends_no_header(
    mock_server: Callable[..., MockServer], tmp_path: Path
) -> None:
    open_server = mock_server(require_auth=False)
    path = write_jsonl(tmp_path / "in.jsonl", [plain(i) for i in range(4)])
    ok = invoke(
        "run", str(path), "--base-url", open_server.url, "--no-api-key", "-q",
        env={"MISTRAL_API_KEY": None},
    )  # fmt: skip
    assert ok.exit_code == 0, ok.output
    # A server that wants a key: the key in the environment is not sent, so it says 401.
    guarded = mock_server(require_auth=True)
    refused = invoke(
        "run", str(path), "--base-url", guarded.url, "--no-api-key", "-q",
        "-o", str(tmp_path / "guarded"),
    )  # fmt: skip
    assert refused.exit_code == 3, refused.output
    summary = orjson.loads((tmp_path / "guarded" / "summary.json").read_bytes())
    assert "consecutive HTTP 401" in summary["reason"]
    assert "rerun without --no-api-key" in summary["reason"]


@pytest.mark.anyio
async def test_run_batch_without_a_key(
    mock_server: Callable[..., MockServer], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MISTRAL_API_KEY", raising=False)
    server = mock_server(require_auth=False)
    path = write_jsonl(tmp_path / "in.jsonl", [plain(i) for i in range(3)])
    config = RunConfig(
        input_path=path, outdir=tmp_path / "out", base_url=server.url, no_api_key=True
    )
    with anyio.fail_after(60):
        report = await run_batch(config)
    assert report.exit_code == 0
    assert report.summary["counts"]["ok"] == 3


# -- what the user reads ------------------------------------------------------------------


def test_ctrl_c_resume_and_nothing_to_do_are_said(
    mock_server: Callable[..., MockServer], tmp_path: Path
) -> None:
    server = mock_server(latency_ms=300)
    path = write_jsonl(tmp_path / "in.jsonl", [plain(i) for i in range(200)])
    out = tmp_path / "out"
    args = ("run", str(path), "-o", str(out), "--base-url", server.url)
    proc = popen(*args, "-c", "8", "--grace-period", "20")
    journal = out / "journal.jsonl"
    for _ in range(1500):
        if journal.exists() and journal.read_bytes().count(b"\n") >= 8:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    text = stderr.decode()
    assert proc.returncode == 130, text
    # Usually 8; a worker between two lines at the signal makes it fewer.
    notice = r"finishing [1-8] in-flight requests? \(up to 20 s\); Ctrl-C again to stop now"
    assert re.search(notice, text), text
    assert f"to resume: batchrun run {path} -o {out} --base-url {server.url}" in text
    done = journal.read_bytes().count(b"\n")
    resumed = popen(*args, "-c", "64")
    _, stderr = resumed.communicate(timeout=60)
    assert resumed.returncode == 0, stderr.decode()
    assert f"resuming: {done} of 200 done" in stderr.decode()
    again = invoke(*args)
    assert again.exit_code == 0
    assert f"nothing to do: all 200 lines already have a record in {out}" in again.output


def test_a_shared_429_pause_is_shown(
    mock_server: Callable[..., MockServer], tmp_path: Path
) -> None:
    server = mock_server()
    lines = [faulty(0, "429", times=1, retry_after=1.5), *(plain(i) for i in range(1, 4))]
    path = write_jsonl(tmp_path / "in.jsonl", lines)
    result = invoke("run", str(path), "--base-url", server.url)
    assert result.exit_code == 0, result.output
    assert re.search(r"paused [12] s: HTTP 429 \(shared Retry-After\)", result.output)


def test_closing_summary_names_errors_top_messages_and_next_command(
    mock_server: Callable[..., MockServer], tmp_path: Path
) -> None:
    log = tmp_path / "requests.log"
    server = mock_server(request_log=log)
    lines = [plain(0), faulty(1, "500"), faulty(2, "500"), faulty(3, "422"), "not an object"]
    path = write_jsonl(tmp_path / "in.jsonl", lines)
    out = tmp_path / "out"
    result = invoke(
        "run", str(path), "-o", str(out), "--base-url", server.url, "--max-attempts", "1"
    )
    assert result.exit_code == 2, result.output
    assert f"failed lines: {out / 'errors.jsonl'}" in result.output
    assert "2 lines: HTTP 500 (http_status)" in result.output
    assert "1 line: HTTP 422 (http_status)" in result.output
    assert "1 line: expected a JSON object, got a string (invalid_input)" in result.output
    command = f"batchrun run {path} -o {out} --base-url {server.url} --retry-failed"
    assert f"2 failed lines can be re-sent: {command}" in result.output
    summary = orjson.loads((out / "summary.json").read_bytes())
    assert summary["retryable_failed"] == 2
    assert summary["top_errors"][0] == {"type": "http_status", "message": "HTTP 500", "count": 2}
    before = len(sent_contents(log))
    retried = invoke(*shlex.split(command)[1:], "--max-attempts", "1")
    assert retried.exit_code == 2, retried.output
    assert sorted(sent_contents(log)[before:]) == ["line-1", "line-2"]


def test_non_terminal_output_is_not_wrapped(
    mock_server: Callable[..., MockServer], tmp_path: Path
) -> None:
    server = mock_server()
    path = write_jsonl(tmp_path / "in.jsonl", [plain(0)])
    out = tmp_path / ("a-long-output-directory-name-" * 4)
    result = invoke("run", str(path), "-o", str(out), "--base-url", server.url)
    assert result.exit_code == 0, result.output
    assert f"results: {out / 'results.jsonl'}\n" in result.output
    # A long row (here the status reason) must not pad every other row with blanks.
    assert not [line for line in result.output.splitlines() if line != line.rstrip()]


def test_no_request_rate_when_nothing_was_sent(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"{oops\n[1]\n")
    result = invoke("run", str(path), "--mock")
    assert result.exit_code == 2, result.output
    assert "0 requests sent" in result.output
    assert "req/s" not in result.output


def test_a_closed_stderr_never_stops_the_run(
    mock_server: Callable[..., MockServer], tmp_path: Path
) -> None:
    server = mock_server(latency_ms=2)
    lines = [faulty(0, "429", times=1, retry_after=0.6), *(plain(i) for i in range(1, 300))]
    path = write_jsonl(tmp_path / "in.jsonl", lines)
    out = tmp_path / "out"
    args = ("run", str(path), "-o", str(out), "--base-url", server.url, "-c", "4", "--json")
    for _ in range(2):  # the first run prints mid-run (the pause) and at the end; the
        # second one also at its start ("nothing to do")
        (out / "summary.json").unlink(missing_ok=True)
        proc = popen(*args)
        assert proc.stderr is not None
        proc.stderr.close()  # like `2>&1 | head -1` once head has exited
        stdout, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0
        assert orjson.loads(stdout)["counts"]["ok"] == 300
        assert orjson.loads((out / "summary.json").read_bytes())["counts"]["ok"] == 300
        assert (out / "results.jsonl").read_bytes().count(b"\n") == 300


def test_mock_server_help_explains_every_fault_kind_and_the_directives() -> None:
    assert sorted(FAULT_HELP) == sorted(FAULT_KINDS)
    help_lines = invoke("mock-server", "--help").output.splitlines()
    for kind in FAULT_KINDS:
        described = [line for line in help_lines if line.split()[:1] == [kind]]
        assert len(described) == 1 and len(described[0].split()) > 2, kind
    text = "\n".join(help_lines)
    for directive in ("x-mock-fault", "x-mock-fault-times", "times", "latency_ms", "retry_after"):
        assert directive in text


def test_model_flag_that_plain_lines_never_need_is_warned_once(
    mock_server: Callable[..., MockServer], tmp_path: Path
) -> None:
    server = mock_server()
    path = write_jsonl(tmp_path / "in.jsonl", [plain(i) for i in range(5)])
    args = ("run", str(path), "--base-url", server.url, "-q", "-m", "other")
    result = invoke(*args, "-o", str(tmp_path / "all-named"))
    assert result.exit_code == 0, result.output
    assert result.output.count("-m other is ignored: every line names its own model") == 1
    path = write_jsonl(tmp_path / "in.jsonl", [plain(0), body(1)])
    needed = invoke(*args, "-o", str(tmp_path / "one-unnamed"))
    assert needed.exit_code == 0, needed.output
    assert "is ignored" not in needed.output


def test_text_from_inputs_and_paths_is_printed_as_is_never_as_markup(
    mock_server: Callable[..., MockServer], tmp_path: Path
) -> None:
    server = mock_server()
    line = {"custom_id": "a", "method": "[/x]", "url": "/v1/chat/completions", "body": plain(0)}
    path = write_jsonl(tmp_path / "in.jsonl", [line, {**line, "custom_id": "b", "method": "POST"}])
    out = tmp_path / "out[/b]"
    result = invoke("run", str(path), "-o", str(out), "--base-url", server.url)
    assert result.exit_code == 2, result.output
    assert "1 line: method: must be POST, got '[/x]' (invalid_input)" in result.output
    assert f"results: {out / 'results.jsonl'}" in result.output


def test_a_second_ctrl_c_says_it_stops_now(
    mock_server: Callable[..., MockServer], tmp_path: Path
) -> None:
    log = tmp_path / "requests.log"
    server = mock_server(latency_ms=30_000, request_log=log)
    path = write_jsonl(tmp_path / "in.jsonl", [plain(i) for i in range(20)])
    proc = popen("run", str(path), "-o", str(tmp_path / "out"), "--base-url", server.url, "-c", "4")
    deadline = time.monotonic() + 30
    while len(sent_contents(log)) < 4 and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=30)
    text = stderr.decode()
    assert proc.returncode == 130, text
    assert "finishing 4 in-flight requests (up to 30 s); Ctrl-C again to stop now" in text
    assert "stopping now: 4 in flight, cancelled" in text
    assert "to resume: batchrun run" in text
