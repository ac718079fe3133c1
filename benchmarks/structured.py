"""CPU per request of structured output against the same requests without it.

    python benchmarks/structured.py [--requests 20000] [--rounds 3]

The same N requests three ways, each a real `batchrun run` against one zero-latency mock
server in its own process: plain, with a json_schema `response_format` (one schema
shared by every line: compiled once, every reply parsed and checked), and with
`json_object`. One round runs each once, so drift in the machine's load hits all alike;
prints the median CPU ms per request of each and its ratio to plain. The issue's bar
for a templated job with a schema is 1.3x plain.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
from pathlib import Path

from harness import batchrun_args, mock_process, per_request_ms, run_measured, write_requests

LABELS = {
    "type": "object",
    "properties": {
        "label": {"enum": ["positive", "negative", "mixed"]},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        "reason": {"type": "string", "maxLength": 200},
    },
    "required": ["label", "confidence"],
    "additionalProperties": False,
}
FORMATS: dict[str, dict[str, object] | None] = {
    "plain": None,
    "json_schema": {"type": "json_schema", "json_schema": {"name": "labels", "schema": LABELS}},
    "json_object": {"type": "json_object"},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        mock = stack.enter_context(mock_process())
        inputs = {
            name: write_requests(work / f"{name}.jsonl", args.requests)
            if response_format is None
            else write_requests(
                work / f"{name}.jsonl", args.requests, response_format=response_format
            )
            for name, response_format in FORMATS.items()
        }
        figures: dict[str, list[float]] = {name: [] for name in inputs}
        for round_number in range(args.rounds):
            for name, path in inputs.items():
                command = batchrun_args(
                    path, work / f"out-{name}", mock.url, "-c", str(args.concurrency)
                )
                measured = run_measured(command, env={"MISTRAL_API_KEY": "bench"})
                if measured.returncode != 0:
                    sys.exit(f"{name}: batchrun exited {measured.returncode}")
                ms = per_request_ms(measured, args.requests)
                figures[name].append(ms)
                print(f"round {round_number + 1} {name}: {ms:.3f} ms CPU/request", flush=True)
        base = statistics.median(figures["plain"])
        for name, values in figures.items():
            median = statistics.median(values)
            print(f"{name}: median {median:.3f} ms CPU/request, {median / base:.3f}x plain")


if __name__ == "__main__":
    main()
