"""Latency-bound run: batchrun's whole-process wall time against the Little's-law floor.

    python benchmarks/latency_bound.py [--requests 2000] [--concurrency 64] [--latency-ms 200]

Floor = requests x latency / concurrency (6.25 s with the defaults). Target:
within 1.25x, every line correct.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import orjson
from harness import batchrun_args, mock_server, run_measured, write_requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=2_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--latency-ms", type=float, default=200)
    args = parser.parse_args()
    floor = args.requests * args.latency_ms / 1000 / args.concurrency
    with (
        tempfile.TemporaryDirectory() as tmp,
        mock_server("--latency-ms", str(args.latency_ms)) as url,
    ):
        work = Path(tmp)
        inputs = write_requests(work / "in.jsonl", args.requests)
        flags = ("-c", str(args.concurrency))
        m = run_measured(
            batchrun_args(inputs, work / "out", url, *flags), env={"MISTRAL_API_KEY": "b"}
        )
        results = (work / "out" / "results.jsonl").read_bytes().splitlines()
        ok = sum(1 for r in results if orjson.loads(r)["status"] == "ok")
        indices = [orjson.loads(r)["index"] for r in results]
    print(
        f"floor {floor:.2f} s · batchrun wall {m.wall_s:.2f} s · ratio {m.wall_s / floor:.3f}x "
        f"(target <= 1.25x) · {ok}/{args.requests} ok · in order: {indices == list(range(args.requests))}"
    )
    if ok != args.requests:
        sys.exit("not every line succeeded")


if __name__ == "__main__":
    main()
