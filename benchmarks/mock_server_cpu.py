"""Server CPU per request of the built-in mock server, so other benchmarks can trust it.

    python benchmarks/mock_server_cpu.py [--requests 5000] [--concurrency 64] [--stream]

`serve` runs alone in a child process (plain asyncio, auth on, zero latency); this process
drives it over 127.0.0.1 with aiohttp and reads the child's user+sys CPU from
/proc/<pid>/stat before and after the measured requests, after a short warm-up.
Target: well under 100 us of server CPU per non-streamed request. Linux only (procfs).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import aiohttp
import orjson

SERVER = """
import asyncio, sys
from batchrun.mock import MockConfig, serve
config = MockConfig(stream_chunks=int(sys.argv[1]))
asyncio.run(serve(config, "127.0.0.1", 0, ready=lambda port: print(port, flush=True)))
"""
WARMUP = 500
TIME_LIMIT_S = 120.0
TICKS_PER_S = os.sysconf("SC_CLK_TCK")
HEADERS = {"authorization": "Bearer bench", "content-type": "application/json"}


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process; fields 14 and 15 of /proc/PID/stat, after the
    parenthesised command name (which may itself contain spaces)."""
    with open(f"/proc/{pid}/stat", "rb") as stat:
        fields = stat.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS_PER_S


@contextmanager
def server_process(stream_chunks: int) -> Iterator[tuple[int, str]]:
    """The mock server in its own process; yields (pid, url) and always stops it."""
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(stream_chunks)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        yield proc.pid, f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def bodies(count: int, stream: bool) -> list[bytes]:
    """Distinct, realistic request bodies: a system prompt and a short user line."""
    return [
        orjson.dumps(
            {
                "model": "mistral-small-latest",
                "messages": [
                    {"role": "system", "content": "You are terse. Answer in one sentence."},
                    {"role": "user", "content": f"Summarise item {i} of the benchmark batch."},
                ],
                "max_tokens": 64,
                "stream": stream,
            }
        )
        for i in range(count)
    ]


async def drive(url: str, payloads: list[bytes], concurrency: int) -> None:
    """Send every payload over `concurrency` keep-alive connections; fail on a non-200."""
    queue = iter(payloads)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(url, connector=connector, headers=HEADERS) as session:

        async def worker() -> None:
            for payload in queue:
                async with session.post("/v1/chat/completions", data=payload) as response:
                    await response.read()
                    if response.status != 200:
                        raise RuntimeError(f"mock server answered {response.status}")

        await asyncio.gather(*(worker() for _ in range(concurrency)))


async def measure(pid: int, url: str, args: argparse.Namespace) -> tuple[float, float]:
    """(server CPU seconds, wall seconds) for the measured requests only."""
    await drive(url, bodies(WARMUP, args.stream), args.concurrency)
    payloads = bodies(args.requests, args.stream)
    cpu_before, started = cpu_seconds(pid), time.perf_counter()
    await drive(url, payloads, args.concurrency)
    return cpu_seconds(pid) - cpu_before, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--stream", action="store_true", help="streamed replies instead")
    parser.add_argument("--stream-chunks", type=int, default=8)
    args = parser.parse_args()
    with server_process(args.stream_chunks) as (pid, url):
        cpu_s, wall_s = asyncio.run(asyncio.wait_for(measure(pid, url, args), TIME_LIMIT_S))
    kind = "streamed" if args.stream else "non-streamed"
    print(f"mock server, {args.requests} {kind} requests, concurrency {args.concurrency}:")
    print(f"  server CPU {cpu_s * 1e6 / args.requests:.1f} us/request")
    print(f"  throughput {args.requests / wall_s:.0f} requests/s (client-bound: one aiohttp loop)")


if __name__ == "__main__":
    main()
