"""`batchrun diff` of two large eval runs against a bare orjson parse of both results.jsonl.

    python benchmarks/diff_speed.py [--lines 200000] [--rounds 3]

Two OUTDIRs are written directly (synthetic records shaped like an eval run's: a mock
reply, usage, latency, `score` for two scorers and a `slice`), with known differences:
changed outputs, new and fixed failures, scores flipped both ways. Each round times the
baseline (every line of both results.jsonl through `orjson.loads`, in this process) and
then `batchrun diff A B --fail-on-regression` as a subprocess, tables and `--json` in
turn, interleaved so load on the shared machine hits both alike; the child's peak RSS
comes from wait4. Target (issue 10): the median diff within 3x the median baseline,
under 300 MB. The start-up alone (`batchrun diff --help`) is printed too: interpreter
and imports, a fixed part of every diff the in-process baseline does not pay.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson
from harness import compile_batchrun

PYTHON = sys.executable
SLICES = ("arithmetic", "geography", "history", "science", "spelling")
SCORERS = ("exact", "numeric:0.5")
WORDS = [
    "the",
    "answer",
    "to",
    "this",
    "question",
    "follows",
    "from",
    "the",
    "facts",
    "given",
    "in",
    "the",
    "prompt",
]


def record(i: int, run: str) -> dict[str, object]:
    """Line `i` of run `run` ("a" or "b"). B changes every 20th output, fails every 97th
    line A answered, answers every 89th line A failed, and flips a score every 31st line."""
    failed = (i % 89 == 0) if run == "a" else (i % 97 == 0 and i % 89 != 0)
    base: dict[str, object] = {
        "index": i,
        "line": i + 1,
        "custom_id": f"q{i:06d}",
        "attempts": 1,
        "finished_at": 1795600000.0 + i / 1000,
        "slice": SLICES[i % len(SLICES)],
    }
    if failed:
        base["status"] = "error"
        base["error"] = {"type": "http_status", "status_code": 500, "message": "server error"}
        base["score"] = dict.fromkeys(SCORERS, 0)
        return base
    changed = run == "b" and i % 20 == 0
    words = " ".join(WORDS[(i + k) % len(WORDS)] for k in range(30))
    content = f"{'Revised: ' if changed else ''}{words}. The answer is {i % 100}."
    exact = int(i % 3 != 0)
    if run == "b" and i % 31 == 0:
        exact = 1 - exact
    latency = 180.0 + (i * 7919 % 1000) / 10 + (5.0 if run == "b" else 0.0)
    base.update(
        status="ok",
        response={
            "id": f"cmpl-{i:016x}",
            "object": "chat.completion",
            "created": 1795600000,
            "model": "mistral-small-latest",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 42, "completion_tokens": 38, "total_tokens": 80},
        },
        latency_ms=round(latency, 2),
        score={"exact": exact, "numeric:0.5": int(i % 5 != 0)},
    )
    return base


def write_run(outdir: Path, run: str, lines: int) -> None:
    outdir.mkdir()
    with (outdir / "results.jsonl").open("wb") as out:
        for start in range(0, lines, 10_000):
            chunk = range(start, min(lines, start + 10_000))
            out.write(b"".join(orjson.dumps(record(i, run)) + b"\n" for i in chunk))
    manifest = {"requests": lines}
    (outdir / "manifest.json").write_bytes(orjson.dumps(manifest))


def write_runs(work: Path, lines: int) -> None:
    """Both runs, written in a forked child: an exec'd child's ru_maxrss starts from its
    parent's peak, so this process stays small."""
    context = multiprocessing.get_context("fork")
    children = [context.Process(target=write_run, args=(work / r, r, lines)) for r in "ab"]
    for child in children:
        child.start()
    for child in children:
        child.join()
        if child.exitcode != 0:
            raise RuntimeError(f"writing a run failed: exit {child.exitcode}")


def bare_parse(outdirs: list[Path]) -> tuple[float, float]:
    """Wall and CPU seconds of decoding every line of both results.jsonl."""
    started, cpu = time.perf_counter(), time.process_time()
    for outdir in outdirs:
        with (outdir / "results.jsonl").open("rb") as stream:
            for line in stream:
                orjson.loads(line)
    return time.perf_counter() - started, time.process_time() - cpu


def timed_diff(args: list[str]) -> tuple[float, float, float, int]:
    """Wall and CPU seconds, peak RSS in MB and exit code of one `batchrun diff` child."""
    started = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    cpu = usage.ru_utime + usage.ru_stime
    return wall, cpu, usage.ru_maxrss / 1024, os.waitstatus_to_exitcode(status)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    options = parser.parse_args()
    compile_batchrun()  # as an installed wheel is (see harness.compile_batchrun)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        write_runs(work, options.lines)
        outdirs = [work / "a", work / "b"]
        size = sum((o / "results.jsonl").stat().st_size for o in outdirs) / 1e6
        print(f"two runs of {options.lines} lines, {size:.0f} MB of results.jsonl")
        command = [PYTHON, "-m", "batchrun", "diff", *map(str, outdirs), "--fail-on-regression"]
        variants = {"tables": command, "--json": [*command, "--json"]}
        baselines: list[tuple[float, float]] = []
        # The interpreter and batchrun's imports alone: the fixed part of every diff.
        startup = [timed_diff([PYTHON, "-m", "batchrun", "diff", "--help"])[1] for _ in range(3)]
        print(f"start-up alone (diff --help): CPU {statistics.median(startup):.2f} s")
        diffs: dict[str, list[tuple[float, float, float]]] = {name: [] for name in variants}
        for round_ in range(options.rounds):
            for name, args in variants.items():
                base_wall, base_cpu = bare_parse(outdirs)
                baselines.append((base_wall, base_cpu))
                wall, cpu, peak, code = timed_diff(args)
                diffs[name].append((wall, cpu, peak))
                print(
                    f"round {round_ + 1} {name:7}: baseline {base_wall:.2f} s "
                    f"(CPU {base_cpu:.2f} s), diff {wall:.2f} s ({wall / base_wall:.2f}x; "
                    f"CPU {cpu:.2f} s, {cpu / base_cpu:.2f}x), peak {peak:.0f} MB, exit {code}"
                )
        base_wall = statistics.median(wall for wall, _ in baselines)
        base_cpu = statistics.median(cpu for _, cpu in baselines)
        print(f"bare orjson parse of both: median {base_wall:.2f} s (CPU {base_cpu:.2f} s)")
        for name, found in diffs.items():
            wall = statistics.median(w for w, _, _ in found)
            cpu = statistics.median(c for _, c, _ in found)
            print(
                f"batchrun diff {name:7}: median {wall:.2f} s = {wall / base_wall:.2f}x "
                f"(CPU {cpu:.2f} s = {cpu / base_cpu:.2f}x), peak RSS "
                f"{max(p for _, _, p in found):.0f} MB (target: <= 3x, < 300 MB)"
            )


if __name__ == "__main__":
    main()
