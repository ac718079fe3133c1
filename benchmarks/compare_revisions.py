"""CPU per request of two revisions of batchrun, interleaved in the same run.

    python benchmarks/compare_revisions.py BASE_REV [NEW_REV] [--requests 20000] [--rounds 3]

Answers "did this change make the client slower?" on a shared, noisy machine: each
revision is checked out (git worktree, detached) into a temporary directory and run as
`python -m batchrun run` against the same zero-latency mock server, alternating
BASE, NEW, BASE, NEW, ... so drift in the machine's load hits both alike. NEW_REV
defaults to the working tree as it is (uncommitted changes included). Prints the median
CPU ms per request of each and NEW / BASE.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from harness import PYTHON, mock_process, per_request_ms, run_measured, write_requests

ROOT = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def checkout(rev: str | None, parent: Path) -> Iterator[Path]:
    """A source tree of `rev` (None: the working tree itself)."""
    if rev is None:
        yield ROOT
        return
    tree = parent / f"rev-{rev.replace('/', '_')}"
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(tree), rev],
        check=True,
    )
    try:
        yield tree
    finally:
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False
        )


def run_tree(tree: Path, inputs: Path, outdir: Path, url: str, concurrency: int) -> float:
    args = [PYTHON, "-m", "batchrun", "run", str(inputs), "-o", str(outdir)]
    args += ["--base-url", url, "--quiet", "--fresh", "-c", str(concurrency)]
    env = {"MISTRAL_API_KEY": "bench", "PYTHONPATH": str(tree)}
    measured = run_measured(args, env=env, cwd=tree)
    if measured.returncode != 0:
        sys.exit(f"batchrun from {tree} exited {measured.returncode}")
    return per_request_ms(measured, sum(1 for _ in inputs.open("rb")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("base")
    parser.add_argument("new", nargs="?", default=None, help="default: the working tree")
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        base = stack.enter_context(checkout(args.base, work))
        new = stack.enter_context(checkout(args.new, work))
        mock = stack.enter_context(mock_process())
        inputs = write_requests(work / "in.jsonl", args.requests)
        figures: dict[str, list[float]] = {"base": [], "new": []}
        for round_number in range(args.rounds):
            for name, tree in (("base", base), ("new", new)):
                ms = run_tree(tree, inputs, work / f"out-{name}", mock.url, args.concurrency)
                figures[name].append(ms)
                print(f"round {round_number + 1} {name:4} {ms:.3f} ms CPU/request", flush=True)
        base_ms, new_ms = (statistics.median(figures[k]) for k in ("base", "new"))
        print(f"base {args.base}: median {base_ms:.3f} ms CPU/request")
        print(f"new  {args.new or 'working tree'}: median {new_ms:.3f} ms CPU/request")
        print(f"new / base: {new_ms / base_ms:.3f}x")


if __name__ == "__main__":
    main()
