"""Memory flat in input size, for every input format: peak RSS at 200,000 lines vs 10,000.

    python benchmarks/memory.py [--small 10000] [--large 200000]

Each format (plain, Mistral batch, OpenAI batch) is run through `batchrun run` against
the zero-latency mock. Then the pre-pass alone (`scan_input` on the Mistral-batch files)
is measured against the same pass keeping every custom_id in a dict, as it did before
duplicates were found in bounded memory (batchrun/dupes.py).
Target (issues 3 and 7): large/small within 1.3x for each format, and under 200 MB.
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import tempfile
from collections.abc import Callable
from pathlib import Path

import orjson
from harness import PYTHON, batchrun_args, mock_server, run_measured, write_requests

FORMATS: dict[str, Callable[[int, bytes], bytes]] = {
    "plain": lambda i, line: line,
    "mistral-batch": lambda i, line: b'{"custom_id":"req-%d","body":%s}' % (i, line),
    "openai-batch": lambda i, line: (
        b'{"custom_id":"req-%d","method":"POST","url":"/v1/chat/completions","body":%s}' % (i, line)
    ),
}

SCAN = "import sys, pathlib; from batchrun import reader; "
PREPASS = {
    "imports only (the floor)": SCAN + "pass",
    "scan_input, bounded": SCAN + "reader.scan_input(pathlib.Path(sys.argv[1]), 1 << 24)",
    # The same pass, the finder swapped for a dict of every id, as reader.py had it.
    "ids kept in a dict (before)": SCAN
    + """
class DictIds:
    def __init__(self): self.seen = {}
    def __enter__(self): return self
    def __exit__(self, *exc): pass
    def add(self, custom_id): self.seen.setdefault(custom_id, len(self.seen))
    def find(self, reread, keep): return None
reader.DuplicateFinder = DictIds
reader.scan_input(pathlib.Path(sys.argv[1]), 1 << 24)
""",
}


def write_inputs(work: Path, sizes: tuple[int, ...]) -> None:
    """Every input file, written in a forked child: a child's ru_maxrss can never read
    below its parent's peak RSS (the exec'd image inherits the high-water mark), and
    write_requests alone takes this process to about 60 MB."""
    child = multiprocessing.get_context("fork").Process(target=_write_inputs, args=(work, sizes))
    child.start()
    child.join()
    if child.exitcode != 0:
        raise RuntimeError(f"writing the inputs failed: exit {child.exitcode}")


def _write_inputs(work: Path, sizes: tuple[int, ...]) -> None:
    for n in sizes:
        source = write_requests(work / f"source-{n}.jsonl", n)
        for name, wrap in FORMATS.items():
            with source.open("rb") as lines, (work / f"{name}-{n}.jsonl").open("wb") as out:
                out.writelines(wrap(i, line.rstrip(b"\n")) + b"\n" for i, line in enumerate(lines))


def run_formats(args: argparse.Namespace, work: Path) -> dict[str, dict[int, float]]:
    env = {"MISTRAL_API_KEY": "bench"}
    peaks: dict[str, dict[int, float]] = {name: {} for name in FORMATS}
    with mock_server() as url:
        for n in (args.small, args.large):
            for name in FORMATS:
                inputs = work / f"{name}-{n}.jsonl"
                outdir = work / f"out-{name}-{n}"
                flags = ("-c", str(args.concurrency))
                m = run_measured(batchrun_args(inputs, outdir, url, *flags), env=env)
                peaks[name][n] = m.peak_rss_mb
                ok = orjson.loads((outdir / "summary.json").read_bytes())["counts"]["ok"]
                print(
                    f"{name:>14} {n:>8} lines: peak RSS {m.peak_rss_mb:.1f} MB · "
                    f"wall {m.wall_s:.1f} s · {ok} ok · exit {m.returncode}"
                )
    return peaks


def run_prepass(args: argparse.Namespace, work: Path) -> None:
    print("pre-pass alone (scan_input, Mistral batch; child process incl. interpreter start):")
    for n in (args.small, args.large):
        for name, code in PREPASS.items():
            m = run_measured([PYTHON, "-c", code, str(work / f"mistral-batch-{n}.jsonl")])
            print(
                f"{name:>28} {n:>8} ids: peak RSS {m.peak_rss_mb:.1f} MB · "
                f"CPU {m.cpu_s:.2f} s · exit {m.returncode}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--large", type=int, default=200_000)
    parser.add_argument("--concurrency", type=int, default=128)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        write_inputs(work, (args.small, args.large))
        peaks = run_formats(args, work)
        for name, by_size in peaks.items():
            large, small = by_size[args.large], by_size[args.small]
            print(
                f"{name:>14}: peak RSS {args.large} / {args.small} lines: {large / small:.3f}x "
                f"(target <= 1.3x, and < 200 MB: {large:.1f} MB)"
            )
        run_prepass(args, work)
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"(no figure above can read below this script's own peak RSS: {own:.1f} MB)")


if __name__ == "__main__":
    main()
