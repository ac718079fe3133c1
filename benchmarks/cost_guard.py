"""What --max-cost adds per line, against what every run already spends reading one.

    python benchmarks/cost_guard.py [--lines 20000]

Baseline (measured in this run): LineParser.parse of a typical request line, the
reader's work for every line of every run. Against it: the guard's admit + settle (a ~1 KB record parsed back to price its usage), and
the pre-pass that refuses unpriced models (one more parse of every line still to send).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import orjson

from batchrun.checkfile import refuse_unpriced
from batchrun.config import RunConfig
from batchrun.prices import PriceTable
from batchrun.reader import InputFormat, LineParser, RawLine, scan_input
from batchrun.records import Completed, Request, ok_record
from batchrun.stops import CostLedger

MODEL = "mistral-small-latest"


def line(i: int) -> bytes:
    return orjson.dumps(
        {
            "model": MODEL,
            "messages": [
                {"role": "system", "content": "Label the sentiment of the review as JSON."},
                {"role": "user", "content": f"Review {i}: the battery lasts two days, fine."},
            ],
            "max_tokens": 200,
        }
    )


def record(request: Request) -> Completed:
    response = {
        "id": f"cmpl-{request.index}",
        "model": MODEL,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok " * 250}}],
        "usage": {"prompt_tokens": 40, "completion_tokens": 120, "total_tokens": 160},
    }
    return ok_record(request, response, attempts=1, latency_ms=100.0)


def per_line_us(count: int, work: Callable[[], object], repeats: int = 5) -> float:
    """The best of `repeats`: the machine is shared, and noise only ever adds time."""
    best = float("inf")
    for _ in range(repeats):
        started = time.process_time()
        work()
        best = min(best, time.process_time() - started)
    return best / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=20_000)
    count = parser.parse_args().lines
    raws = [RawLine(i + 1, line(i), 0) for i in range(count)]

    def parse(estimate: bool) -> list[Request]:
        lines = LineParser(InputFormat.PLAIN, estimate=estimate)
        return [r for i, raw in enumerate(raws) if isinstance(r := lines.parse(raw, i), Request)]

    baseline = per_line_us(count, lambda: parse(False))
    requests = parse(True)
    done = [record(r) for r in requests]

    def guard() -> None:
        ledger = CostLedger(1e9, PriceTable.bundled(), None)
        for request in requests:
            ledger.admit(request)
        ledger.settle(done)

    guarded = per_line_us(count, guard)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "in.jsonl"
        path.write_bytes(b"\n".join(raw.data or b"" for raw in raws) + b"\n")
        config = RunConfig(input_path=path, outdir=Path(folder) / "out")
        scan = scan_input(path, config.max_line_bytes)
        prepass = per_line_us(
            count, lambda: refuse_unpriced(config, scan, PriceTable.bundled(), lambda _: False)
        )
    print(f"{count:,} lines; CPU per line, and as a share of parsing the line")
    print(f"  parse (every run, baseline)   {baseline:6.2f} us")
    for name, figure in (
        ("guard admit + settle", guarded),
        ("unpriced-model pre-pass", prepass),
    ):
        print(f"  {name:<29} {figure:6.2f} us  {figure / baseline:5.2f}x")


if __name__ == "__main__":
    main()
