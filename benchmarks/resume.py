"""Resuming a finished run: time to verify 1,000,000 done lines and send nothing.

    python benchmarks/resume.py [--requests 1000000]

A finished OUTDIR is built with batchrun's own writer (open_outdir + ResultWriter, the
code a run uses) and mock-shaped responses, because producing it through 10^6 real
requests would take most of an hour here. Then `batchrun run` is timed on it, pointed
at a closed port so any request would fail loudly, next to `wc -l journal.jsonl` as the
baseline for "reading the journal once".
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson
from harness import PYTHON, run_measured, write_requests

from batchrun.config import RunConfig
from batchrun.outdir import Paths
from batchrun.reader import InputFormat, LineParser, iter_requests, scan_input
from batchrun.records import ok_record
from batchrun.results import ResultWriter
from batchrun.resume import open_outdir

BATCH = 4096


def finished_outdir(inputs: Path, outdir: Path) -> None:
    config = RunConfig(input_path=inputs, outdir=outdir, base_url="http://127.0.0.1:9")
    scan = scan_input(inputs, config.max_line_bytes)
    lock, state = open_outdir(config, scan)
    writer = ResultWriter(Paths(outdir), state)
    batch = []
    for request in iter_requests(
        inputs, LineParser(InputFormat.PLAIN), config.max_line_bytes, skip=lambda i: False
    ):
        response = {
            "id": f"cmpl-{request.index:08x}",
            "object": "chat.completion",
            "created": 1764000000,
            "model": "mistral-small-latest",
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "message": {
                        "role": "assistant",
                        "content": f"Echo: Review {request.index} positive",
                    },
                }
            ],
            "usage": {"prompt_tokens": 31, "completion_tokens": 4, "total_tokens": 35},
        }
        batch.append(ok_record(request, response, attempts=1, latency_ms=12.5))  # type: ignore[arg-type]
        if len(batch) == BATCH:
            writer.append(batch)
            writer.emit()
            batch = []
    writer.append(batch)
    writer.emit()
    writer.sync()
    writer.close()
    lock.release()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        inputs = write_requests(work / "in.jsonl", args.requests)
        outdir = work / "out"
        started = time.perf_counter()
        finished_outdir(inputs, outdir)
        print(
            f"built a finished OUTDIR of {args.requests:,} lines in {time.perf_counter() - started:.1f} s"
        )
        started = time.perf_counter()
        subprocess.run(
            ["wc", "-l", str(outdir / "journal.jsonl")], check=True, stdout=subprocess.DEVNULL
        )
        wc_s = time.perf_counter() - started
        m = run_measured(
            [
                PYTHON,
                "-m",
                "batchrun",
                "run",
                str(inputs),
                "-o",
                str(outdir),
                "--quiet",
                "--json",
                "--base-url",
                "http://127.0.0.1:9",
            ],
            env={"MISTRAL_API_KEY": "x"},
        )
        summary = orjson.loads((outdir / "summary.json").read_bytes())
    sent = summary["session"]["requests_sent"]
    print(
        f"resume of a finished {args.requests:,}-line run: {m.wall_s:.2f} s wall, {m.cpu_s:.2f} s CPU, "
        f"peak RSS {m.peak_rss_mb:.0f} MB, requests sent {sent}, exit {m.returncode}"
    )
    print(f"baseline wc -l journal.jsonl: {wc_s:.2f} s · ratio {m.wall_s / wc_s:.1f}x")
    if sent or m.returncode:
        sys.exit("the resume sent requests or failed")


if __name__ == "__main__":
    main()
