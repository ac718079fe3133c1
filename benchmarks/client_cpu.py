"""CPU per request: batchrun vs a plain aiohttp loop (and httpx's transports), same run.

    python benchmarks/client_cpu.py [--requests 20000] [--concurrency 128] [--rounds N]

Zero-latency mock server in its own process; every client is a separate process whose
own CPU time (user+sys, from wait4) is divided by the request count. batchrun's figure
includes everything it does: start-up, validation, journal + fsync, ordering, summary.
With --rounds N (N > 1) the plain aiohttp loop and batchrun run N times, alternating,
and the ratio of each pair is reported as a median and range (httpx runs once).
Targets: batchrun within 3x of plain aiohttp; issue 8's bar: 1.2x.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from harness import (
    PYTHON,
    Measured,
    batchrun_args,
    compile_batchrun,
    load_average,
    mock_process,
    per_request_ms,
    run_measured,
    spread,
    write_requests,
)

BASELINES = Path(__file__).with_name("baselines.py")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=128)
    parser.add_argument(
        "--httpx-requests",
        type=int,
        default=2_000,
        help="httpx's default transport is slow; give it fewer requests",
    )
    parser.add_argument("--stream", action="store_true", help="batchrun with --stream too")
    parser.add_argument("--rounds", type=int, default=1, help="aiohttp/batchrun pairs")
    parser.add_argument("--no-httpx", action="store_true", help="skip the httpx baselines")
    args = parser.parse_args()
    c = str(args.concurrency)
    compile_batchrun()
    print(f"load average at the start: {load_average()}")
    with tempfile.TemporaryDirectory() as tmp, mock_process() as mock:
        url = mock.url
        work = Path(tmp)
        inputs = write_requests(work / "in.jsonl", args.requests)
        small = write_requests(work / "small.jsonl", args.httpx_requests)
        env = {"MISTRAL_API_KEY": "bench"}
        rows = []
        server_before = mock.cpu_s()
        aio = run_measured([PYTHON, str(BASELINES), "aiohttp", url, str(inputs), c])
        server_ms = (mock.cpu_s() - server_before) * 1000 / args.requests
        ours = run_measured(batchrun_args(inputs, work / "out", url, "-c", c), env=env)
        pairs: list[tuple[Measured, Measured]] = [(aio, ours)]
        for _ in range(args.rounds - 1):
            pairs.append(
                (
                    run_measured([PYTHON, str(BASELINES), "aiohttp", url, str(inputs), c]),
                    run_measured(batchrun_args(inputs, work / "out", url, "-c", c), env=env),
                )
            )
        rows.append(("plain aiohttp loop", aio, args.requests))
        rows.append(("batchrun run", ours, args.requests))
        aio_uv = run_measured([PYTHON, str(BASELINES), "aiohttp-uvloop", url, str(inputs), c])
        rows.append(("plain aiohttp loop on uvloop", aio_uv, args.requests))
        if not args.no_httpx:
            hx_aio = run_measured([PYTHON, str(BASELINES), "httpx-aiohttp", url, str(inputs), c])
            rows.append(("httpx + httpx-aiohttp loop", hx_aio, args.requests))
            hx = run_measured([PYTHON, str(BASELINES), "httpx", url, str(small), c])
            rows.append(("httpx default transport loop", hx, args.httpx_requests))
        print(f"{'client':32} {'requests':>9} {'wall s':>8} {'CPU s':>8} {'CPU ms/req':>11}")
        for name, m, n in rows:
            print(f"{name:32} {n:9d} {m.wall_s:8.2f} {m.cpu_s:8.2f} {per_request_ms(m, n):11.3f}")
        ratio = per_request_ms(ours, args.requests) / per_request_ms(aio, args.requests)
        print(f"batchrun / plain aiohttp CPU per request: {ratio:.2f}x (target <= 3x)")
        print(f"mock server CPU per request (during the aiohttp run): {server_ms:.3f} ms")
        same_loop = per_request_ms(ours, args.requests) / per_request_ms(aio_uv, args.requests)
        print(f"batchrun / plain aiohttp on the same event loop (uvloop): {same_loop:.2f}x")
        if args.rounds > 1:
            n = args.requests
            print(
                f"interleaved pairs: plain aiohttp {spread([per_request_ms(a, n) for a, _ in pairs])}"
                f" ms, batchrun {spread([per_request_ms(b, n) for _, b in pairs])} ms;\n"
                f"ratio per pair {spread([b.cpu_s / a.cpu_s for a, b in pairs])} "
                "(issue 8's bar: 1.2)"
            )
        print(f"load average at the end: {load_average()}")
        ours = max((b for _, b in pairs), key=lambda m: m.returncode)
        if ours.returncode != 0:
            sys.exit(f"batchrun exited {ours.returncode}")


if __name__ == "__main__":
    main()
