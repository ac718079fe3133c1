"""No secret in any file: a server that echoes the request headers back cannot put the
API key on disk, on stdout or on stderr; a key no HTTP header can carry is refused."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import anyio
import orjson
import pytest
from jsonl import chat_request, write_jsonl

from batchrun import ConfigError, RetryConfig, RunConfig, run_batch
from batchrun.mock import MockServer

REPO = Path(__file__).resolve().parent.parent
CANARY = "sk-canary-echo-7d31a9c2e5"
# Quote and backslash: JSON escapes them, once in a reply, twice in a kept error body.
ESCAPED_CANARY = 'sk-"canary\\echo-4b8e'


def forms(key: str) -> list[bytes]:
    """The key as sent and as it reads once or twice JSON-escaped."""
    once = orjson.dumps(key)[1:-1]
    return [key.encode(), once, orjson.dumps(once.decode())[1:-1]]


def assert_absent(key: str, *blobs: bytes) -> None:
    for blob in blobs:
        for form in forms(key):
            assert form not in blob


def batchrun_run(key: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "batchrun", "run", *args],
        check=False,
        capture_output=True,
        env={**os.environ, "MISTRAL_API_KEY": key},
        cwd=REPO,
        timeout=60,
    )


def outdir_bytes(outdir: Path) -> list[bytes]:
    return [file.read_bytes() for file in sorted(outdir.iterdir()) if file.is_file()]


@pytest.mark.anyio
@pytest.mark.parametrize("key", [CANARY, ESCAPED_CANARY, f"Bearer {CANARY}"])
async def test_echoed_headers_never_reach_a_file(
    mock_server: Callable[..., MockServer], tmp_path: Path, key: str
) -> None:
    server = mock_server()
    lines = [
        chat_request(0),
        chat_request(1, "echo_headers"),
        chat_request(2, "echo_headers", stream=True),
    ]
    path = write_jsonl(tmp_path / "in.jsonl", [*lines, chat_request(3)])
    config = RunConfig(
        input_path=path,
        outdir=tmp_path / "out",
        base_url=server.url,
        retry=RetryConfig(max_attempts=1),
    )
    with anyio.fail_after(30):
        report = await run_batch(config, api_key=key)
    assert report.exit_code == 2
    errors = [
        orjson.loads(x) for x in (tmp_path / "out" / "errors.jsonl").read_bytes().splitlines()
    ]
    assert [e["index"] for e in errors] == [1, 2]
    # The server did echo the header; what it echoed was redacted before any write.
    assert all("Bearer [REDACTED]" in e["error"]["body"] for e in errors)
    secret = key.removeprefix("Bearer ")
    assert_absent(secret, *outdir_bytes(tmp_path / "out"), orjson.dumps(report.summary))


def test_echoed_key_is_absent_from_files_stdout_and_stderr(
    mock_server: Callable[..., MockServer], tmp_path: Path
) -> None:
    server = mock_server()
    path = write_jsonl(
        tmp_path / "in.jsonl",
        [chat_request(i, "echo_headers" if i % 3 else None) for i in range(30)],
    )
    out = tmp_path / "out"
    proc = batchrun_run(
        CANARY, str(path), "-o", str(out), "--base-url", server.url, "--max-attempts", "1", "--json"
    )
    assert proc.returncode == 2, proc.stderr.decode()
    assert orjson.loads(proc.stdout)["counts"]["failed"] == 20
    assert b"[REDACTED]" in (out / "journal.jsonl").read_bytes()
    assert_absent(CANARY, proc.stdout, proc.stderr, *outdir_bytes(out))


@pytest.mark.parametrize("key", ["sk-abc\ndef-123456", "sk-abc\x00def", "sk-clé-123456"])
def test_a_key_no_header_can_carry_is_a_config_error(tmp_path: Path, key: str) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [chat_request(0)])
    env_key = key.replace("\x00", "\x01")  # the environment cannot hold a NUL
    out = str(tmp_path / "out")
    proc = batchrun_run(env_key, str(path), "-o", out, "-q", "--base-url", "http://127.0.0.1:9")
    assert proc.returncode == 1, proc.stderr.decode()
    assert b"Traceback" not in proc.stderr
    assert b"$MISTRAL_API_KEY holds a control or non-ASCII character" in b" ".join(
        proc.stderr.split()
    )
    assert b"sk-abc" not in proc.stderr  # the message never echoes the key


@pytest.mark.anyio
async def test_run_batch_refuses_a_key_with_a_newline(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [chat_request(0)])
    config = RunConfig(input_path=path, outdir=tmp_path / "out", base_url="http://127.0.0.1:9")
    with anyio.fail_after(10), pytest.raises(ConfigError, match="control or non-ASCII"):
        await run_batch(config, api_key="sk-line-one\nline-two")
    assert not (tmp_path / "out").exists()
