"""Flow control against the mock's provider-like limits, the figures of issue 8.

Each scenario runs `batchrun run` as a real process against `batchrun mock-server` (its
own process, with a request log), then reads the log (when each request arrived, what
it was answered) and summary.json:

  learned     mock limited to 10 req/s and 600 req/min, batchrun told nothing: achieved
              rate after a 10 s warm-up within 10 % of 10/s, 429s under 2 % of requests
  storm       20 s of 100 % 429 in the middle of a 2,000-line run: every line ok, under
              1.5 requests per line, concurrency back to its value within 30 s
  failing     persistent 500 on 30 % of lines (by custom_id): those fail, the others
              succeed, requests stay within the retry budget
  rps         --rps 5 against an unlimited mock: no 1 s window holds more than 5 (+1)
  zero        an account with no allowance at -c 64: at most 5 requests, exit 3, the
              message names the allowance
  cpu         CPU per request with limits in force (far above the load) against none,
              interleaved rounds in this run: target within 1.15x

    python benchmarks/flow.py                 # every scenario at the issue's scale (~8 min)
    python benchmarks/flow.py --quick         # smaller, ~2 min
    python benchmarks/flow.py storm rps       # some of them
"""

from __future__ import annotations

import argparse
import bisect
import statistics
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from harness import (
    batchrun_args,
    mock_server,
    per_request_ms,
    read_summary,
    run_measured,
    write_jsonl,
    write_requests,
)

ENV = {"MISTRAL_API_KEY": "bench"}


@dataclass(frozen=True)
class Check:
    figure: str
    target: str
    passed: bool


def log_entries(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line]


def most_in_any_window(times: list[float], window: float) -> int:
    most, start = 0, 0
    for end, t in enumerate(times):
        while times[start] <= t - window:
            start += 1
        most = max(most, end - start + 1)
    return most


def learned(work: Path, quick: bool) -> list[Check]:
    lines = 400 if quick else 1500
    log = work / "learned.log"
    inputs = write_requests(work / "learned.jsonl", lines)
    with mock_server("--limit-rps", "10", "--limit-rpm", "600", "--request-log", str(log)) as url:
        run = run_measured(batchrun_args(inputs, work / "learned", url, "-c", "32"), env=ENV)
    entries = log_entries(log)
    start = entries[0]["t"]
    ok = sorted(e["t"] for e in entries if e["status"] == 200 and e["t"] >= start + 10)
    rate = (len(ok) - 1) / (ok[-1] - ok[0])
    refused = sum(e["status"] == 429 for e in entries) / len(entries)
    return [
        Check(f"exit {run.returncode}", "exit 0", run.returncode == 0),
        Check(f"{rate:.2f} req/s after 10 s", "within 10 % of 10", abs(rate - 10) <= 1),
        Check(f"{refused:.2%} of requests got 429", "< 2 %", refused < 0.02),
    ]


def storm(work: Path, quick: bool) -> list[Check]:
    lines, concurrency, latency = (800, 16, 0.5) if quick else (2000, 32, 0.5)
    begin, end = (5.0, 15.0) if quick else (10.0, 30.0)
    log = work / "storm.log"
    inputs = write_requests(work / "storm.jsonl", lines)
    flags = ["--latency-ms", str(latency * 1000), "--storm", f"{begin}:{end}", "--retry-after", "1"]
    with mock_server(*flags, "--request-log", str(log)) as url:
        args = batchrun_args(inputs, work / "storm", url, "-c", str(concurrency))
        run = run_measured(args, env=ENV)
    summary = read_summary(work / "storm")
    entries = log_entries(log)
    per_line = len(entries) / lines
    # With a fixed latency, what arrived in the last `latency` seconds is what is in
    # flight at the server: the first moment after the storm it reaches the configured
    # concurrency is when concurrency has recovered.
    times = sorted(e["t"] for e in entries)
    recovered = next(
        (
            t - end
            for i, t in enumerate(times)
            if t > end and i - bisect.bisect_right(times, t - latency) + 1 >= concurrency
        ),
        None,
    )
    shown = "never" if recovered is None else f"{recovered:.1f} s"
    return [
        Check(f"{summary['counts']['ok']} of {lines} ok", "all", summary["counts"]["ok"] == lines),
        Check(f"{per_line:.2f} requests per line", "< 1.5", per_line < 1.5),
        Check(
            f"concurrency {concurrency} again after {shown}",
            "<= 30 s",
            recovered is not None and recovered <= 30,
        ),
        Check(f"exit {run.returncode}", "exit 0", run.returncode == 0),
    ]


def failing(work: Path, quick: bool) -> list[Check]:
    lines = 400 if quick else 2000
    log = work / "failing.log"
    rows = []
    for i in range(lines):
        body: dict[str, Any] = {
            "model": "mistral-small-latest",
            "messages": [{"role": "user", "content": f"question {i}"}],
        }
        if i % 10 < 3:  # 30 % of the custom_ids always get a 500
            body["metadata"] = {"mock": {"fault": "500"}}
        rows.append({"custom_id": f"row-{i}", "body": body})
    inputs = write_jsonl(work / "failing.jsonl", rows)
    with mock_server("--request-log", str(log)) as url:
        args = batchrun_args(
            inputs, work / "failing", url, "-c", "32", "-m", "mistral-small-latest"
        )
        run = run_measured(args, env=ENV)
    results = [
        orjson.loads(x) for x in (work / "failing" / "results.jsonl").read_bytes().splitlines()
    ]
    bad = [r["status"] for r in results if int(r["custom_id"].split("-")[1]) % 10 < 3]
    good = [r["status"] for r in results if int(r["custom_id"].split("-")[1]) % 10 >= 3]
    sent = len(log_entries(log))
    budget = lines + 50 + 0.5 * lines  # first attempts + reserve + ratio per line
    return [
        Check(
            f"{bad.count('error')} of {len(bad)} failing lines failed",
            "all",
            bad.count("error") == len(bad),
        ),
        Check(
            f"{good.count('ok')} of {len(good)} other lines ok",
            "all",
            good.count("ok") == len(good),
        ),
        Check(f"{sent} requests for {lines} lines", f"<= {budget:.0f} (budget)", sent <= budget),
        Check(f"exit {run.returncode}", "exit 2", run.returncode == 2),
    ]


def rps(work: Path, quick: bool) -> list[Check]:
    lines = 40 if quick else 100
    log = work / "rps.log"
    inputs = write_requests(work / "rps.jsonl", lines)
    with mock_server("--request-log", str(log)) as url:
        args = batchrun_args(inputs, work / "rps", url, "-c", "64", "--rps", "5")
        run = run_measured(args, env=ENV)
    times = sorted(e["t"] for e in log_entries(log))
    most = most_in_any_window(times, 1.0)
    return [
        Check(f"at most {most} requests in any 1 s", "<= 5 (+1)", most <= 6),
        Check(f"exit {run.returncode}", "exit 0", run.returncode == 0),
    ]


def zero(work: Path, quick: bool) -> list[Check]:
    log = work / "zero.log"
    inputs = write_requests(work / "zero.jsonl", 1000)
    with mock_server("--limit-rpm", "0", "--request-log", str(log)) as url:
        args = batchrun_args(inputs, work / "zero", url, "-c", "64")
        run = run_measured(args, env=ENV)
    sent = len(log_entries(log))
    reason = read_summary(work / "zero")["reason"] or ""
    named = "requests per minute allowance is empty" in reason
    return [
        Check(f"{sent} requests sent", "<= 5", sent <= 5),
        Check(f"exit {run.returncode}", "exit 3", run.returncode == 3),
        Check(f"reason: {reason[:60]}", "names the allowance", named),
    ]


def cpu(work: Path, quick: bool) -> list[Check]:
    lines, rounds = (5_000, 3) if quick else (20_000, 5)
    inputs = write_requests(work / "cpu.jsonl", lines)
    far = ["--rps", "1000000", "--rpm", "100000000", "--tpm", "1000000000000"]
    off: list[float] = []
    on: list[float] = []
    with mock_server("--no-rate-headers") as plain_url, mock_server() as limits_url:
        for _ in range(rounds):
            args = batchrun_args(inputs, work / "cpu-off", plain_url, "-c", "128")
            off.append(per_request_ms(run_measured(args, env=ENV), lines))
            args = batchrun_args(inputs, work / "cpu-on", limits_url, "-c", "128", *far)
            on.append(per_request_ms(run_measured(args, env=ENV), lines))
    ratio = statistics.median(on) / statistics.median(off)
    return [
        Check(
            f"{statistics.median(on):.3f} vs {statistics.median(off):.3f} ms/request: {ratio:.2f}x",
            "<= 1.15x",
            ratio <= 1.15,
        )
    ]


SCENARIOS: dict[str, Callable[[Path, bool], list[Check]]] = {
    "learned": learned,
    "storm": storm,
    "failing": failing,
    "rps": rps,
    "zero": zero,
    "cpu": cpu,
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("scenarios", nargs="*", metavar="SCENARIO", help=", ".join(SCENARIOS))
    parser.add_argument("--quick", action="store_true", help="smaller runs (about 2 minutes)")
    args = parser.parse_args()
    if unknown := set(args.scenarios) - set(SCENARIOS):
        parser.error(f"unknown scenario {', '.join(sorted(unknown))}")
    failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.scenarios or SCENARIOS:
            work = Path(tmp) / name
            work.mkdir()
            for check in SCENARIOS[name](work, args.quick):
                mark = "ok  " if check.passed else "MISS"
                print(f"{mark} {name:8} {check.figure:58} target {check.target}", flush=True)
                failed += not check.passed
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
