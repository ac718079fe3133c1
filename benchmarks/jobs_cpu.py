"""CPU per request of a templated job against the same requests as a plain request file.

    python benchmarks/jobs_cpu.py [--rows 20000] [--concurrency 64]

A 20,000-row job with a json_schema response format (two templated messages, a nested
field, a custom_id) and a request file holding exactly the bodies the job renders are
each run with `batchrun run` against one mock server process (its CPU is not counted),
in the same invocation, alternating, best of `--repeat`. The job's run also writes
rows.jsonl. Prints both figures and the ratio; the bar (issue 9) is 1.3x.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

from harness import batchrun_args, mock_server, per_request_ms, run_measured, write_jsonl

from batchrun.jobs import load_job

BAR = 1.3
JOB = """\
[input]
path = "rows.jsonl"
id = "id"

[request]
model = "mistral-small-latest"
max_tokens = 32
response_format = { type = "json_schema", json_schema = { name = "sentiment", schema = { \
type = "object", properties = { label = { type = "string", enum = ["positive", "negative", \
"mixed"] } }, required = ["label"] } } }

[[messages]]
role = "system"
content = "Label the sentiment: positive, negative or mixed. Answer as JSON."

[[messages]]
role = "user"
content = "Product: {product.name}\\nReview {n}: {text}"
"""


def rows(count: int) -> list[dict[str, Any]]:
    return [
        {
            "id": f"r-{i}",
            "n": i,
            "product": {"name": "Kettle 2000", "category": "kitchen"},
            "text": "the product arrived on time and works.",
        }
        for i in range(count)
    ]


def plain_requests(job_path: Path, data: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The bodies the job sends, as request lines (custom_ids only exist in batch lines)."""
    job = load_job(job_path)
    return [{**job.request, "messages": job.messages.render(row)} for row in data]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = rows(args.rows)
        write_jsonl(work / "rows.jsonl", data)
        job = work / "job.toml"
        job.write_text(JOB, encoding="utf-8")
        plain = write_jsonl(work / "plain.jsonl", plain_requests(job, data))
        flags = ("-c", str(args.concurrency), "--no-api-key")
        best = {"plain": float("inf"), "job": float("inf")}
        with mock_server() as url:
            for _ in range(args.repeat):
                for name, source in (("plain", plain), ("job", job)):
                    measured = run_measured(batchrun_args(source, work / name, url, *flags))
                    if measured.returncode != 0:
                        sys.exit(f"{name} run exited {measured.returncode}")
                    best[name] = min(best[name], per_request_ms(measured, args.rows))
        if not (work / "job" / "rows.jsonl").exists():
            sys.exit("the job run wrote no rows.jsonl")
    ratio = best["job"] / best["plain"]
    print(
        f"{args.rows:,} requests, concurrency {args.concurrency}: plain request file "
        f"{best['plain']:.3f} ms CPU/request, templated job {best['job']:.3f} ms CPU/request, "
        f"ratio {ratio:.2f}x (bar {BAR}x)"
    )
    if ratio > BAR:
        sys.exit(f"the job costs {ratio:.2f}x the CPU per request of a plain file (bar {BAR}x)")


if __name__ == "__main__":
    main()
