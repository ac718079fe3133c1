"""`batchrun report` on a 200,000-line eval run, against a bare orjson parse of its
results.jsonl: wall time ratio and peak memory.

    python benchmarks/report_speed.py [--lines 200000] [--rounds 3]

The finished OUTDIR is written directly (manifest, results, journal, errors, summary):
records shaped as a run writes them (mock-like replies, two scorers, a slice, 429s
waited out on some lines, every 20th line failed), because 200,000 real requests would
take most of an hour here. Each measured command is its own process (interpreter start
included, for the baseline too), run in interleaved rounds so the shared machine's drift
hits all alike; wall time, CPU time and peak RSS come from wait4, and each ratio is the
median of the rounds' own ratios. Targets (issue 10): report within 3x of the baseline,
under 300 MB peak.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import orjson
from harness import PYTHON, Measured, compile_batchrun, run_measured

# The baseline: decode every line of results.jsonl, nothing else.
BASELINE = """
import sys, orjson
with open(sys.argv[1], "rb") as stream:
    for line in stream:
        orjson.loads(line)
"""
TOPICS = ("geography", "arithmetic", "language", "science")
STARTED = 1_795_000_000.0


def record(i: int) -> dict[str, Any]:
    failed = i % 20 == 19
    base: dict[str, Any] = {"index": i, "line": i + 1, "custom_id": f"q-{i:07d}"}
    if failed:
        error = {"type": "http_status", "message": "HTTP 422", "retryable": False}
        base |= {"status": "error", "error": error | {"status_code": 422, "body": "{}"}}
        base |= {"attempts": 1}
    else:
        content = f"The answer to question {i} is {i % 97}, as computed above."
        base |= {
            "status": "ok",
            "response": {
                "id": f"cmpl-{i:016x}",
                "object": "chat.completion",
                "created": int(STARTED),
                "model": "mistral-small-latest",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 41, "completion_tokens": 14, "total_tokens": 55},
            },
            "attempts": 1,
            "latency_ms": round(180 + (i * 7919) % 400 + (i % 13) * 0.37, 2),
        }
    base["finished_at"] = round(STARTED + i / 400, 3)
    if i % 50 == 7:
        base["throttled"] = 1
    passed = int(not failed and i % 3 != 0)
    base["score"] = {"normalized": 0 if failed else passed, "contains": 0 if failed else 1}
    base["slice"] = TOPICS[i % len(TOPICS)]
    return base


def build_outdir(outdir: Path, lines: int) -> None:
    outdir.mkdir()
    with (
        (outdir / "results.jsonl").open("wb") as results,
        (outdir / "journal.jsonl").open("wb") as journal,
        (outdir / "errors.jsonl").open("wb") as errors,
    ):
        for i in range(lines):
            data = orjson.dumps(record(i)) + b"\n"
            results.write(data)
            journal.write(data)
            if i % 20 == 19:
                errors.write(data)
    manifest = {"requests": lines, "input_sha256": "0" * 64, "config_hash": "0" * 16}
    (outdir / "manifest.json").write_bytes(orjson.dumps(manifest))
    section = {"expected": "answer", "slice": "topic", "fail_under": {"normalized": 0.6}}
    section["scorers"] = {"normalized": {}, "contains": {}}
    summary = {"status": "complete", "eval": section}
    (outdir / "summary.json").write_bytes(orjson.dumps(summary))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    compile_batchrun()  # as an installed wheel is (see harness.compile_batchrun)
    with tempfile.TemporaryDirectory(prefix="report-speed-") as tmp:
        outdir = Path(tmp) / "run"
        build_outdir(outdir, args.lines)
        results = outdir / "results.jsonl"
        size_mb = results.stat().st_size / 1e6
        print(f"{args.lines} lines, results.jsonl {size_mb:.0f} MB (the journal as much again)")
        report = [PYTHON, "-m", "batchrun", "report", str(outdir)]
        commands = {
            "orjson parse of results.jsonl": [PYTHON, "-c", BASELINE, str(results)],
            # What any batchrun command pays before reading a line (for the breakdown).
            "import batchrun.cli (no work)": [PYTHON, "-c", "import batchrun.cli"],
            "batchrun report": report,
            "batchrun report --json": [*report, "--json"],
            "batchrun report --html": [*report, "--html", str(Path(tmp) / "page.html")],
        }
        measured: dict[str, list[Measured]] = {name: [] for name in commands}
        for round_ in range(args.rounds):
            for name, command in commands.items():
                found = run_measured(command, timeout=600)
                assert found.returncode == 0, f"{name} exited {found.returncode}"
                measured[name].append(found)
            print(f"round {round_ + 1}/{args.rounds} done", file=sys.stderr)
    baseline = measured["orjson parse of results.jsonl"]
    # Each round's ratio is taken against the same round's baseline (the machine's load
    # drifts between rounds); the median of those is the figure.
    print(f"{'command':32} {'wall s':>7} {'ratio':>7} {'CPU s':>6} {'CPU ratio':>9} {'peak MB':>8}")
    for name, runs in measured.items():
        wall = statistics.median(m.wall_s for m in runs)
        cpu = statistics.median(m.cpu_s for m in runs)
        ratio = statistics.median(m.wall_s / b.wall_s for m, b in zip(runs, baseline, strict=True))
        cpu_ratio = statistics.median(
            m.cpu_s / b.cpu_s for m, b in zip(runs, baseline, strict=True)
        )
        peak = max(m.peak_rss_mb for m in runs)
        print(f"{name:32} {wall:7.2f} {ratio:6.2f}x {cpu:6.2f} {cpu_ratio:8.2f}x {peak:8.1f}")
    print("targets: report and report --json within 3x of the parse, under 300 MB peak")


if __name__ == "__main__":
    main()
