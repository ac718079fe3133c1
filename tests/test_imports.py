"""What a command loads: `batchrun run` without --mock never imports the mock server."""

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


def test_run_without_mock_never_imports_the_mock_server(
    tmp_path: Path, mock_server: Callable[..., MockServer]
) -> None:
    server = mock_server()
    path = write_jsonl(tmp_path / "in.jsonl", [chat_request(i) for i in range(3)])
    out = tmp_path / "out"
    args = ["run", str(path), "-o", str(out), "-q", "--base-url", server.url]
    child = subprocess.run(
        [sys.executable, "-c", CHILD, *args],
        capture_output=True,
        env={**os.environ, "MISTRAL_API_KEY": "test-key"},
        timeout=60,
        check=True,
    )
    report = orjson.loads(child.stdout.splitlines()[-1])
    assert report["exit"] == 0, child.stderr.decode()
    assert [r["status"] for r in read_jsonl(out / "results.jsonl")] == ["ok"] * 3
    loaded = [m for m in report["modules"] if m.startswith("batchrun.mock")]
    assert loaded == ALLOWED_MOCK_MODULES
