"""Shared pieces of the benchmarks: a mock server subprocess, input files, measured children.

Everything talks to 127.0.0.1 only, and every child is bounded by a timeout.
"""

from __future__ import annotations

import compileall
import contextlib
import importlib.util
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

PYTHON = sys.executable
LISTENING = re.compile(rb"listening on (http://127\.0\.0\.1:\d+)")


@dataclass(frozen=True)
class Measured:
    """One child process: wall seconds, CPU seconds (user+sys), peak RSS in MB, exit code."""

    wall_s: float
    cpu_s: float
    peak_rss_mb: float
    returncode: int


def run_measured(
    args: list[str],
    timeout: float = 900,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> Measured:
    """Run a child and read its own rusage via wait4 (not the whole process tree's)."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        args,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, **(env or {})},
        cwd=cwd,
    )
    deadline = started + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.perf_counter() > deadline:
            proc.kill()
            raise TimeoutError(f"{args[:4]} ran over {timeout} s")
        time.sleep(0.005)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode not in (0, 2):
        assert proc.stderr is not None
        sys.stderr.write(proc.stderr.read().decode(errors="replace")[-3000:])
    return Measured(wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, proc.returncode)


def process_cpu_s(pid: int) -> float:
    """User+system CPU seconds a live process has used so far (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class MockProcess:
    url: str
    pid: int

    def cpu_s(self) -> float:
        return process_cpu_s(self.pid)


@contextlib.contextmanager
def mock_process(*flags: str) -> Iterator[MockProcess]:
    """`batchrun mock-server` in its own process (its CPU is not the client's)."""
    proc = subprocess.Popen(
        [PYTHON, "-m", "batchrun", "mock-server", "--port", "0", "--no-auth", *flags],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        found = LISTENING.search(line)
        if not found:
            raise RuntimeError(f"mock server did not start: {line!r}")
        yield MockProcess(found.group(1).decode(), proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@contextlib.contextmanager
def mock_server(*flags: str) -> Iterator[str]:
    """The mock server in its own process; yields its URL."""
    with mock_process(*flags) as mock:
        yield mock.url


def write_requests(path: Path, count: int, **extra: object) -> Path:
    """`count` distinct plain-format requests, written in streamed chunks."""
    with path.open("wb") as out:
        chunk: list[bytes] = []
        for i in range(count):
            body = {
                "model": "mistral-small-latest",
                "messages": [
                    {
                        "role": "system",
                        "content": "Label the sentiment: positive, negative or mixed.",
                    },
                    {
                        "role": "user",
                        "content": f"Review {i}: the product arrived on time and works.",
                    },
                ],
                "max_tokens": 32,
                **extra,
            }
            chunk.append(orjson.dumps(body))
            if len(chunk) == 10_000:
                out.write(b"\n".join(chunk) + b"\n")
                chunk.clear()
        if chunk:
            out.write(b"\n".join(chunk) + b"\n")
    return path


def batchrun_args(input_path: Path, outdir: Path, url: str, *flags: str) -> list[str]:
    return [
        PYTHON,
        "-m",
        "batchrun",
        "run",
        str(input_path),
        "-o",
        str(outdir),
        "--base-url",
        url,
        "--quiet",
        "--fresh",
        *flags,
    ]


def compile_batchrun() -> None:
    """Byte-compile batchrun's modules first, as installing a wheel does. An editable
    checkout under PYTHONDONTWRITEBYTECODE (set on this machine) would otherwise compile
    ~50 modules from source in every measured batchrun process (~0.2 s of CPU, which no
    installed copy pays and no baseline script pays)."""
    spec = importlib.util.find_spec("batchrun")
    assert spec is not None and spec.submodule_search_locations is not None
    for folder in spec.submodule_search_locations:
        compileall.compile_dir(folder, quiet=1)


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, for the record (the machine is shared)."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def spread(values: list[float]) -> str:
    """Median and range of per-round figures: `1.23 (1.10-1.40, 5 rounds)`."""
    rounds = f"{len(values)} round{'s' if len(values) > 1 else ''}"
    return f"{statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f}, {rounds})"


def per_request_ms(measured: Measured, requests: int) -> float:
    return measured.cpu_s * 1000 / requests


def write_jsonl(path: Path, lines: Iterable[object]) -> Path:
    """One JSON value per line (inputs whose lines differ in more than their text)."""
    with path.open("wb") as out:
        for line in lines:
            out.write(orjson.dumps(line) + b"\n")
    return path


def read_summary(outdir: Path) -> dict[str, Any]:
    summary: dict[str, Any] = orjson.loads((outdir / "summary.json").read_bytes())
    return summary
