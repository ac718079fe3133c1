"""Streaming vs non-streaming: client CPU per request, and streamed wall time vs its floor.

    python benchmarks/streaming.py [--requests 2000] [--concurrency 128] [--chunks 20]
                                   [--latency-ms 100] [--chunk-delay-ms 5]

Same lines, same mock server (its own process), both runs in this one benchmark run.
The floor of the streamed run is requests x (one streamed request's duration, measured
alone) / concurrency. Targets: CPU per request within 2x of non-streaming;
wall time within 1.2x of the floor.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import orjson
from harness import batchrun_args, mock_server, per_request_ms, run_measured, write_requests


async def one_stream_seconds(url: str) -> float:
    """The duration of a single streamed request with nothing else running (best of 3)."""
    body = orjson.dumps(
        {"model": "m", "stream": True, "messages": [{"role": "user", "content": "floor probe"}]}
    )
    best = float("inf")
    async with aiohttp.ClientSession() as session:
        for _ in range(3):
            started = time.perf_counter()
            async with session.post(
                url + "/v1/chat/completions",
                data=body,
                headers={"content-type": "application/json"},
            ) as response:
                await response.read()
            best = min(best, time.perf_counter() - started)
    return best


def check(outdir: Path, requests: int, streamed: bool) -> None:
    records = [orjson.loads(line) for line in (outdir / "results.jsonl").read_bytes().splitlines()]
    ok = [r for r in records if r["status"] == "ok" and (("ttft_ms" in r) == streamed)]
    if len(ok) != requests or [r["index"] for r in records] != list(range(requests)):
        sys.exit(f"{outdir.name}: {len(ok)}/{requests} correct records")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=2_000)
    parser.add_argument("--concurrency", type=int, default=128)
    parser.add_argument("--chunks", type=int, default=20)
    parser.add_argument("--latency-ms", type=float, default=100)
    parser.add_argument("--chunk-delay-ms", type=float, default=5)
    args = parser.parse_args()
    flags = (
        "--latency-ms",
        str(args.latency_ms),
        "--stream-chunks",
        str(args.chunks),
        "--stream-delay-ms",
        str(args.chunk_delay_ms),
    )
    env = {"MISTRAL_API_KEY": "bench"}
    with tempfile.TemporaryDirectory() as tmp, mock_server(*flags) as url:
        work = Path(tmp)
        inputs = write_requests(work / "in.jsonl", args.requests)
        floor_one = asyncio.run(one_stream_seconds(url))
        c = ("-c", str(args.concurrency))
        plain = run_measured(batchrun_args(inputs, work / "plain", url, *c), env=env)
        streamed = run_measured(
            batchrun_args(inputs, work / "streamed", url, *c, "--stream"), env=env
        )
        check(work / "plain", args.requests, streamed=False)
        check(work / "streamed", args.requests, streamed=True)
    floor = args.requests * floor_one / args.concurrency
    plain_ms = per_request_ms(plain, args.requests)
    stream_ms = per_request_ms(streamed, args.requests)
    print(f"non-streamed: {plain_ms:.3f} ms CPU/request · wall {plain.wall_s:.2f} s")
    print(
        f"streamed ({args.chunks} chunks): {stream_ms:.3f} ms CPU/request · wall {streamed.wall_s:.2f} s"
    )
    print(f"CPU per request, streamed / non-streamed: {stream_ms / plain_ms:.2f}x (target <= 2x)")
    print(
        f"one streamed request alone: {floor_one * 1000:.1f} ms · floor {floor:.2f} s · "
        f"streamed wall / floor: {streamed.wall_s / floor:.3f}x (target <= 1.2x)"
    )


if __name__ == "__main__":
    main()
