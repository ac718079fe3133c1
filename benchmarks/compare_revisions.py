"""CPU per request of revisions of batchrun, interleaved in the same run.

    python benchmarks/compare_revisions.py BASE_REV [REV ...] [--requests 20000] [--rounds 3]

Answers "did this change make the client slower?" on a shared, noisy machine: each
revision is checked out (git worktree, detached) into a temporary directory and run as
`python -m batchrun run` against the same zero-latency mock server, one round being
one run of each (BASE, REV..., working tree) so drift in the machine's load hits all
alike. The working tree as it is (uncommitted changes included) always runs last.
Prints the median CPU ms per request of each and its ratio to BASE.
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
    parser.add_argument("revs", nargs="+", help="the first is the base")
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        trees = {rev: stack.enter_context(checkout(rev, work)) for rev in args.revs}
        trees["working tree"] = stack.enter_context(checkout(None, work))
        mock = stack.enter_context(mock_process())
        inputs = write_requests(work / "in.jsonl", args.requests)
        figures: dict[str, list[float]] = {name: [] for name in trees}
        for round_number in range(args.rounds):
            for position, (name, tree) in enumerate(trees.items()):
                outdir = work / f"out-{position}"
                ms = run_tree(tree, inputs, outdir, mock.url, args.concurrency)
                figures[name].append(ms)
                print(f"round {round_number + 1} {name}: {ms:.3f} ms CPU/request", flush=True)
        base = statistics.median(figures[args.revs[0]])
        for name, values in figures.items():
            median = statistics.median(values)
            print(f"{name}: median {median:.3f} ms CPU/request, {median / base:.3f}x the base")


if __name__ == "__main__":
    main()
