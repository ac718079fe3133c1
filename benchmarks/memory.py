"""Memory flat in input size: peak RSS at 200,000 lines vs 10,000 lines, zero-latency mock.

    python benchmarks/memory.py [--small 10000] [--large 200000]

Target (issue 3): large/small within 1.3x, and under 200 MB.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from harness import batchrun_args, mock_server, run_measured, write_requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--large", type=int, default=200_000)
    parser.add_argument("--concurrency", type=int, default=128)
    args = parser.parse_args()
    env = {"MISTRAL_API_KEY": "bench"}
    peaks = {}
    with tempfile.TemporaryDirectory() as tmp, mock_server() as url:
        work = Path(tmp)
        for n in (args.small, args.large):
            inputs = write_requests(work / f"in-{n}.jsonl", n)
            m = run_measured(
                batchrun_args(inputs, work / f"out-{n}", url, "-c", str(args.concurrency)), env=env
            )
            peaks[n] = m.peak_rss_mb
            print(
                f"{n:>8} lines: peak RSS {m.peak_rss_mb:.1f} MB · wall {m.wall_s:.1f} s · exit {m.returncode}"
            )
    ratio = peaks[args.large] / peaks[args.small]
    print(
        f"peak RSS {args.large} / {args.small} lines: {ratio:.3f}x (target <= 1.3x, and < 200 MB: "
        f"{peaks[args.large]:.1f} MB)"
    )


if __name__ == "__main__":
    main()
