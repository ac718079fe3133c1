"""Retries under faults, and the README's demo: what share of lines a run loses.

    python benchmarks/faults.py [--requests 2000] [--fault-rate 0.3] [--demo-lines 5000]

1. `--requests` lines, each attempt failing with probability `--fault-rate` with a
   500, 503 or dropped connection, max attempts 5, concurrency 32, default backoff,
   mock latency 5 ms. Each line's fate is drawn here (seeded) and sent as a per-line
   mock directive (`"fault": KIND, "times": N`: the first N attempts fail), which is
   the same distribution as an independent draw per attempt. A line is lost only if
   all 5 attempts fail: 0.3**5 = 0.24 %. Targets: at most 0.5 % of lines
   failed, at most 1.6 requests sent per line.
2. The same through the mock's own `--fail-rate` (its draw includes 429s, whose
   Retry-After pauses every worker; `--retry-after 0.05` keeps the run short).
3. The README's first command, `batchrun run jobs/demo.jsonl --mock` (mock defaults:
   250 ms latency, 3 % faults), and the same demo at `--demo-lines` lines: every line
   ok, exit 0.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
from harness import (
    PYTHON,
    batchrun_args,
    mock_server,
    read_summary,
    run_measured,
    write_jsonl,
    write_requests,
)

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "jobs" / "demo.jsonl"
KINDS = ("500", "503", "drop")
MAX_ATTEMPTS = 5
MAX_FAILED_SHARE = 0.005
MAX_REQUESTS_PER_LINE = 1.6


def faulty_lines(count: int, fault_rate: float, seed: int = 7) -> Iterator[dict[str, Any]]:
    rng = random.Random(seed)
    for i in range(count):
        failures = 0
        while rng.random() < fault_rate and failures < MAX_ATTEMPTS:
            failures += 1
        line: dict[str, Any] = {
            "model": "mistral-small-latest",
            "messages": [{"role": "user", "content": f"Review {i}: works as described."}],
            "max_tokens": 32,
        }
        if failures:
            line["metadata"] = {"mock": {"fault": rng.choice(KINDS), "times": failures}}
        yield line


def _fails(line: dict[str, Any]) -> int:
    times: int = line.get("metadata", {}).get("mock", {}).get("times", 0)
    return times


def demo_lines(count: int) -> Iterator[dict[str, Any]]:
    """`count` distinct lines shaped like jobs/demo.jsonl's."""
    shapes = [orjson.loads(line) for line in DEMO.read_bytes().splitlines()]
    for i in range(count):
        shape = shapes[i % len(shapes)]
        *context, last = shape["messages"]
        question = {**last, "content": f"{last['content']} (copy {i})"}
        yield {**shape, "messages": [*context, question]}


def report_faults(label: str, work: Path, url: str, lines: int) -> bool:
    args = batchrun_args(
        work / "in.jsonl", work / "out", url, "-c", "32", "--max-attempts", str(MAX_ATTEMPTS)
    )
    measured = run_measured(args, env={"MISTRAL_API_KEY": "b"})
    summary = read_summary(work / "out")
    failed = summary["counts"]["failed"] / lines
    per_line = summary["session"]["requests_sent"] / lines
    print(
        f"{label}: {lines:,} lines · failed {failed:.2%} "
        f"({failed / MAX_FAILED_SHARE:.2f}x of the {MAX_FAILED_SHARE:.1%} target) · "
        f"requests per line {per_line:.3f} "
        f"({per_line / MAX_REQUESTS_PER_LINE:.2f}x of the {MAX_REQUESTS_PER_LINE}x target) · "
        f"exit {measured.returncode} · {measured.wall_s:.1f} s"
    )
    return bool(failed <= MAX_FAILED_SHARE and per_line <= MAX_REQUESTS_PER_LINE)


def report_demo(label: str, input_path: Path, outdir: Path, lines: int) -> bool:
    args = [PYTHON, "-m", "batchrun", "run", str(input_path), "--mock", "-o", str(outdir)]
    measured = run_measured([*args, "--quiet"], env={"MISTRAL_API_KEY": ""})
    counts = read_summary(outdir)["counts"]
    print(
        f"{label}: {counts['ok']:,}/{lines:,} ok · {counts['failed']} failed · "
        f"exit {measured.returncode} (target: all ok, exit 0) · {measured.wall_s:.1f} s"
    )
    return counts["ok"] == lines and measured.returncode == 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=2_000)
    parser.add_argument("--fault-rate", type=float, default=0.3)
    parser.add_argument("--demo-lines", type=int, default=5_000)
    args = parser.parse_args()
    rate = str(args.fault_rate)
    held: list[bool] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        lines = list(faulty_lines(args.requests, args.fault_rate))
        doomed = sum(_fails(line) >= MAX_ATTEMPTS for line in lines)
        write_jsonl(work / "in.jsonl", lines)
        print(
            f"the seeded draw dooms {doomed} lines ({doomed / args.requests:.2%}): all attempts fail"
        )
        with mock_server("--latency-ms", "5") as url:
            label = f"{args.fault_rate:.0%} faults (500/503/drop)"
            held.append(report_faults(label, work, url, args.requests))
        write_requests(work / "in.jsonl", args.requests)
        with mock_server("--latency-ms", "5", "--fail-rate", rate, "--retry-after", "0.05") as url:
            label = f"mock --fail-rate {rate} (500/503/429/drop)"
            held.append(report_faults(label, work, url, args.requests))
        demo = len(DEMO.read_bytes().splitlines())
        held.append(report_demo("README demo", DEMO, work / "demo", demo))
        big = write_jsonl(work / "demo-big.jsonl", demo_lines(args.demo_lines))
        held.append(
            report_demo(
                f"demo at {args.demo_lines:,} lines", big, work / "demo-big", args.demo_lines
            )
        )
    if not all(held):
        sys.exit("a target was missed")


if __name__ == "__main__":
    main()
