"""A fully cached rerun against the first run that filled the cache, whole-process wall time.

    python benchmarks/cache_rerun.py [--requests 5000] [--concurrency 64] [--latency-ms 200]
                                     [--rounds N]

Both runs are `batchrun run --cache=DIR` on the same input into fresh OUTDIRs against
`batchrun mock-server --latency-ms 200` in its own process: the first sends every request
and stores every reply, the second should send none. Target: the rerun takes under a
tenth of the first run's wall time, every record correct (`cached: true`, the same
reply as the first run's), and the mock received nothing more (its request log).
With --rounds N each round starts from an empty cache; ratios are given as a median and
range. batchrun's modules are byte-compiled first (harness.compile_batchrun).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import orjson
from harness import (
    Measured,
    batchrun_args,
    compile_batchrun,
    load_average,
    mock_server,
    read_summary,
    run_measured,
    spread,
    write_requests,
)

TARGET = 0.1


def run(inputs: Path, outdir: Path, url: str, cache: Path, concurrency: int) -> Measured:
    flags = ("-c", str(concurrency), f"--cache={cache}")
    measured = run_measured(
        batchrun_args(inputs, outdir, url, *flags), env={"MISTRAL_API_KEY": "b"}
    )
    if measured.returncode != 0:
        sys.exit(f"batchrun exited {measured.returncode}")
    return measured


def replies(outdir: Path) -> list[bytes]:
    return [
        orjson.dumps(orjson.loads(line)["response"])
        for line in (outdir / "results.jsonl").read_bytes().splitlines()
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=5_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--latency-ms", type=float, default=200)
    parser.add_argument("--rounds", type=int, default=1, help="first run + rerun pairs")
    args = parser.parse_args()
    compile_batchrun()
    print(f"load average at the start: {load_average()}")
    ratios, inside_ratios = [], []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        log = work / "requests.log"
        with mock_server("--latency-ms", str(args.latency_ms), "--request-log", str(log)) as url:
            inputs = write_requests(work / "in.jsonl", args.requests)
            for number in range(args.rounds):
                ratio, inside = one_round(work / f"round{number}", inputs, url, log, args)
                ratios.append(ratio)
                inside_ratios.append(inside)
    print(
        f"whole process, rerun / first run: {spread(ratios)} (target < {TARGET}); "
        f"inside the runs: {spread(inside_ratios)}\n"
        f"load average at the end: {load_average()}"
    )
    if max(ratios) >= TARGET:
        sys.exit("over target")


def one_round(
    work: Path, inputs: Path, url: str, log: Path, args: argparse.Namespace
) -> tuple[float, float]:
    """A first run into an empty cache, then the rerun; checks the rerun, prints both."""
    cache = work / "cache"
    received_before = len(log.read_bytes().splitlines())
    first = run(inputs, work / "first", url, cache, args.concurrency)
    received = len(log.read_bytes().splitlines()) - received_before
    rerun = run(inputs, work / "rerun", url, cache, args.concurrency)
    received_again = len(log.read_bytes().splitlines()) - received_before - received
    section = read_summary(work / "rerun")["cache"]
    # The runs' own wall time, without interpreter start and imports.
    inside = [read_summary(work / d)["session"]["wall_time_s"] for d in ("first", "rerun")]
    records = [
        orjson.loads(line) for line in (work / "rerun/results.jsonl").read_bytes().splitlines()
    ]
    correct = (
        replies(work / "first") == replies(work / "rerun")
        and all(r["cached"] is True for r in records)
        and [r["index"] for r in records] == list(range(args.requests))
    )
    ratio = rerun.wall_s / first.wall_s
    print(
        f"first run {first.wall_s:.2f} s ({received} requests received) · cached rerun "
        f"{rerun.wall_s:.2f} s ({received_again} received, {section['hits']} hits) · "
        f"ratio {ratio:.3f} (target < {TARGET}) · every record correct: {correct}\n"
        f"  inside the runs (summary session.wall_time_s): {inside[0]:.2f} s and "
        f"{inside[1]:.2f} s, ratio {inside[1] / inside[0]:.3f}",
        flush=True,
    )
    if not correct or received_again or section["hits"] != args.requests:
        sys.exit("the rerun was not answered whole from the cache")
    return ratio, inside[1] / inside[0]


if __name__ == "__main__":
    main()
