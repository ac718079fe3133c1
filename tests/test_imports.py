"""What a command loads: `batchrun run` without --mock never imports the mock server, and
a rerun answered whole from the request cache never imports aiohttp."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import orjson
from jsonl import chat_request, read_jsonl, write_jsonl

from batchrun.mock import MockServer

# Only the fault names, which `mock-server --help` is built from, may load with the CLI.
ALLOWED_MOCK_MODULES = ["batchrun.mock", "batchrun.mock.kinds"]

# Runs in a fresh interpreter, so nothing the test process imported can hide a load.
CHILD = """
import sys

import orjson

from batchrun.cli import main

try:
    main(sys.argv[1:], standalone_mode=False)
except SystemExit as exc:
    code = exc.code
print(orjson.dumps({"exit": code, "modules": sorted(sys.modules)}).decode())
"""


def _run_child(*args: str) -> list[str]:
    """`batchrun` with `args` in a fresh interpreter: the modules it had loaded at exit."""
    child = subprocess.run(
        [sys.executable, "-c", CHILD, *args],
        capture_output=True,
        env={**os.environ, "MISTRAL_API_KEY": "test-key"},
        timeout=60,
        check=True,
    )
    report = orjson.loads(child.stdout.splitlines()[-1])
    assert report["exit"] == 0, child.stderr.decode()
    modules: list[str] = report["modules"]
    return modules


def test_run_without_mock_never_imports_the_mock_server(
    tmp_path: Path, mock_server: Callable[..., MockServer]
) -> None:
    server = mock_server()
    path = write_jsonl(tmp_path / "in.jsonl", [chat_request(i) for i in range(3)])
    out = tmp_path / "out"
    modules = _run_child("run", str(path), "-o", str(out), "-q", "--base-url", server.url)
    assert [r["status"] for r in read_jsonl(out / "results.jsonl")] == ["ok"] * 3
    loaded = [m for m in modules if m.startswith("batchrun.mock")]
    assert loaded == ALLOWED_MOCK_MODULES


def test_a_fully_cached_rerun_never_imports_aiohttp(
    tmp_path: Path, mock_server: Callable[..., MockServer]
) -> None:
    server = mock_server()
    path = write_jsonl(tmp_path / "in.jsonl", [chat_request(i) for i in range(4)])
    flags = ["-q", "--base-url", server.url, f"--cache={tmp_path / 'cache'}"]
    first = _run_child("run", str(path), "-o", str(tmp_path / "first"), *flags)
    assert "aiohttp" in first  # the first run sent every line
    rerun = _run_child("run", str(path), "-o", str(tmp_path / "rerun"), *flags)
    assert server.requests_received == 4
    records = read_jsonl(tmp_path / "rerun" / "results.jsonl")
    assert [(r["status"], r["cached"]) for r in records] == [("ok", True)] * 4
    assert [m for m in rerun if m.split(".")[0] == "aiohttp"] == []
