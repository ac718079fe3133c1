"""The CLI through click's runner and through real subprocesses (signals, kill -9, canary key)."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from batchrun.cli import main
from batchrun.mock import MockServer

REPO = Path(__file__).resolve().parent.parent
CANARY = "sk-canary-0b7e4f93aa21"


def write_input(path: Path, count: int, **extra: Any) -> Path:
    lines = [
        orjson.dumps(
            {"model": "m", "messages": [{"role": "user", "content": f"line-{i}"}], **extra}
        )
        for i in range(count)
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def complete_lines(path: Path) -> list[bytes]:
    """Lines that were written whole: after a kill -9 (or while a server is still
    logging) the last line may be torn, and the product itself ignores it too."""
    if not path.exists():
        return []
    return path.read_bytes().split(b"\n")[:-1]


def indices(path: Path) -> list[int]:
    return [orjson.loads(line)["index"] for line in complete_lines(path)]


def requested(log: Path) -> list[str]:
    return [orjson.loads(line)["content"] for line in complete_lines(log)]


def batchrun(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "batchrun", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "MISTRAL_API_KEY": CANARY, **(env or {})},
        cwd=REPO,
    )


@pytest.mark.parametrize("command", [[], ["run"], ["mock-server"]])
def test_help_has_examples(command: list[str]) -> None:
    result = CliRunner().invoke(main, [*command, "--help"])
    assert result.exit_code == 0
    assert "Examples" in result.output or "batchrun run" in result.output


def test_mock_run_through_click(tmp_path: Path) -> None:
    path = write_input(tmp_path / "in.jsonl", 30)
    result = CliRunner().invoke(
        main,
        [
            "run",
            str(path),
            "--mock",
            "--mock-latency-ms",
            "1",
            "--mock-fail-rate",
            "0",
            "--quiet",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    summary = orjson.loads(result.stdout)
    assert summary["counts"]["ok"] == 30
    assert indices(tmp_path / "in.batchrun" / "results.jsonl") == list(range(30))


def test_bad_lines_exit_2_and_usage_errors_exit_1(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"model": "m", "messages": [{"role": "user", "content": "x"}]}\n{oops\n')
    result = CliRunner().invoke(main, ["run", str(path), "--mock", "--quiet"])
    assert result.exit_code == 2
    missing_key = CliRunner(env={"MISTRAL_API_KEY": ""}).invoke(
        main, ["run", str(path), "--quiet", "-o", str(tmp_path / "o2")]
    )
    assert missing_key.exit_code == 1
    assert "MISTRAL_API_KEY is not set" in missing_key.output
    insecure = CliRunner().invoke(main, ["run", str(path), "--base-url", "http://example.com"])
    assert insecure.exit_code == 1
    assert "unencrypted" in insecure.output


def test_unusable_outdir_is_a_clear_error(tmp_path: Path) -> None:
    path = write_input(tmp_path / "in.jsonl", 1)
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = CliRunner().invoke(main, ["run", str(path), "--mock", "-q", "-o", str(blocker / "x")])
    assert result.exit_code == 1
    assert "cannot use" in result.output
    missing = CliRunner().invoke(main, ["run", str(tmp_path / "nope.jsonl"), "--mock", "-q"])
    assert missing.exit_code == 1
    assert "cannot read" in missing.output


def test_canary_key_never_appears_anywhere(tmp_path: Path) -> None:
    path = write_input(tmp_path / "in.jsonl", 20)
    path.write_bytes(path.read_bytes() + b"{broken\n")
    out = tmp_path / "out"
    proc = batchrun("run", str(path), "-o", str(out), "--mock", "--mock-fail-rate", "0.3", "--json")
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 2, stderr.decode()
    assert CANARY.encode() not in stdout + stderr
    for file in out.iterdir():
        assert CANARY.encode() not in file.read_bytes(), file


def wait_for_lines(path: Path, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while len(indices(path)) < count and time.monotonic() < deadline:
        time.sleep(0.02)


def test_sigint_finishes_in_flight_then_exits_130_and_resumes(
    mock_server: Callable[..., MockServer], tmp_path: Path
) -> None:
    log = tmp_path / "requests.log"
    server = mock_server(latency_ms=300, request_log=log)
    path = write_input(tmp_path / "in.jsonl", 120)
    out = tmp_path / "out"
    args = ("run", str(path), "-o", str(out), "--base-url", server.url, "-c", "8", "--quiet")
    proc = batchrun(*args)
    wait_for_lines(out / "journal.jsonl", 10, timeout=30)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr.decode()
    journal = indices(out / "journal.jsonl")
    assert 10 <= len(journal) < 120
    # Everything that was on the wire at Ctrl-C was allowed to finish and was kept.
    assert sorted(requested(log)) == sorted(f"line-{i}" for i in journal)
    assert indices(out / "results.jsonl") == list(range(len(journal)))
    resumed = batchrun(*args, "--json")
    _, stderr = resumed.communicate(timeout=60)
    assert resumed.returncode == 0, stderr.decode()
    assert indices(out / "results.jsonl") == list(range(120))
    assert sorted(requested(log)) == sorted(f"line-{i}" for i in range(120))


def kill_trials(
    server: MockServer, log: Path, tmp_path: Path, *, lines: int, trials: int, seed: int
) -> None:
    """Per trial: start fresh, kill -9 at a random instant, rerun the same command, check."""
    rng = random.Random(seed)
    path = write_input(tmp_path / "in.jsonl", lines)
    out = tmp_path / "out"
    args = ("run", str(path), "-o", str(out), "--base-url", server.url, "-c", "16", "--quiet")
    for _ in range(trials):
        base = len(requested(log)) if log.exists() else 0
        proc = batchrun(*args, "--fresh")
        time.sleep(rng.uniform(0.3, 1.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        held = set(indices(out / "journal.jsonl"))
        written = indices(out / "results.jsonl")
        assert written == list(range(len(written)))  # an ordered prefix, even mid-kill
        assert written == sorted(held)[: len(written)]
        if (out / ".starting-over").exists():
            # Killed inside --fresh's start-over: the journal still holds the last trial's
            # lines, which the rerun finishes discarding (as asked), so it sends them again.
            held = set()
        before_resume = len(requested(log)) if log.exists() else 0

        resumed = batchrun(*args, "--json")
        stdout, stderr = resumed.communicate(timeout=120)
        assert resumed.returncode == 0, stderr.decode()
        summary = orjson.loads(stdout)
        assert summary["counts"]["ok"] == lines
        assert indices(out / "results.jsonl") == list(range(lines))
        assert sorted(indices(out / "journal.jsonl")) == list(range(lines))
        after = requested(log)[before_resume:]
        assert not set(after) & {f"line-{i}" for i in held}, "a journaled line was re-sent"
        # Lines the server saw twice were in flight at the kill, and the summary counts them.
        trial = requested(log)[base:]
        twice = [c for c, n in Counter(trial).items() if n > 1]
        assert len(twice) <= summary["session"]["resent_after_interrupt"]
        assert summary["session"]["requests_sent"] == len(after)


def test_kill_9_at_random_points_then_resume(
    mock_server: Callable[..., MockServer], tmp_path: Path
) -> None:
    log = tmp_path / "requests.log"
    server = mock_server(latency_ms=5, jitter_ms=40, request_log=log)
    kill_trials(server, log, tmp_path, lines=600, trials=3, seed=1234)


@pytest.mark.slow
def test_kill_9_soak(mock_server: Callable[..., MockServer], tmp_path: Path) -> None:
    log = tmp_path / "requests.log"
    server = mock_server(latency_ms=2, jitter_ms=20, request_log=log)
    kill_trials(server, log, tmp_path, lines=3000, trials=15, seed=99)


def test_readme_command_reference_matches_the_cli() -> None:
    sys.path.insert(0, str(REPO / "docs"))
    import cli_help

    readme = cli_help.README.read_text()
    assert "<!-- help:run -->" in readme and "<!-- help:mock-server -->" in readme
    assert cli_help.updated(readme) == readme, "run: python docs/cli_help.py"


def test_readme_starts_with_the_two_commands() -> None:
    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)\n```", readme, re.S)
    assert "batchrun run jobs/demo.jsonl --mock" in blocks[0]
    assert blocks[1] == "bash .ci/run"
    assert len((REPO / "jobs" / "demo.jsonl").read_bytes().splitlines()) >= 200
