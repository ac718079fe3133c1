"""Request cache I/O: time per key, get and put of a ~2 KB reply, against orjson.loads.

    python benchmarks/cache_io.py [--ops 2000] [--dir DIR]

The baseline is orjson.loads of the same reply bytes, measured in this run: the least
any cache read must do. `put` fsyncs every entry, so its figure is mostly the disk's.
Whether the runner can call get/put inline or needs a worker thread
(anyio.to_thread.run_sync, ~50-100 us per hop) follows from these numbers.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import orjson

from batchrun.cache import RequestCache, cache_key

URL = "https://api.mistral.ai"


def body(i: int) -> dict[str, Any]:
    return {
        "model": "mistral-small-latest",
        "messages": [
            {"role": "system", "content": "Label the sentiment of the review as JSON."},
            {
                "role": "user",
                "content": f"Review {i}: the battery lasts two days, the case is fine.",
            },
        ],
        "temperature": 0.0,
        "max_tokens": 200,
        "response_format": {"type": "json_object"},
    }


def reply(i: int) -> dict[str, Any]:
    """A completion of about 2 KB."""
    content = orjson.dumps({"label": "positive", "reason": "battery " * 220, "row": i}).decode()
    return {
        "id": f"cmpl-{i:08d}",
        "object": "chat.completion",
        "created": 1_780_000_000,
        "model": "mistral-small-2603",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, "tool_calls": None},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 41, "completion_tokens": 420, "total_tokens": 461},
    }


def per_op_us(run: Callable[[int], object], ops: int, repeats: int = 3) -> float:
    """Best of `repeats` passes, microseconds per call."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for i in range(ops):
            run(i)
        best = min(best, time.perf_counter() - started)
    return best / ops * 1e6


def thread_hop_us(ops: int) -> float:
    """What handing one call to a worker thread costs (anyio.to_thread.run_sync of a no-op)."""

    async def hops() -> float:
        started = time.perf_counter()
        for _ in range(ops):
            await anyio.to_thread.run_sync(int)
        return time.perf_counter() - started

    return anyio.run(hops) / ops * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=2000)
    parser.add_argument("--dir", type=Path, default=None, help="where to put the test cache")
    args = parser.parse_args()
    ops: int = args.ops

    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        store = RequestCache.open(Path(folder))
        bodies = [body(i) for i in range(ops)]
        replies = [orjson.dumps(reply(i)) for i in range(ops)]
        keys = [cache_key(b, URL) for b in bodies]
        missing = [cache_key({**b, "max_tokens": 1}, URL) for b in bodies]

        baseline = per_op_us(lambda i: orjson.loads(replies[i]), ops)
        rows = [
            ("orjson.loads (baseline)", baseline),
            ("cache_key", per_op_us(lambda i: cache_key(bodies[i], URL), ops)),
            ("put (fsync)", per_op_us(lambda i: store.put(keys[i], replies[i]), ops, repeats=1)),
            ("get, hit", per_op_us(lambda i: store.get(keys[i]), ops)),
            ("get, miss", per_op_us(lambda i: store.get(missing[i]), ops)),
            ("to_thread hop (no-op)", thread_hop_us(ops)),
        ]
        assert all(store.get(k) is not None for k in keys[:10])
        print(f"reply size: {len(replies[0])} bytes, {ops} ops, cache in {folder}")
        for name, us in rows:
            print(f"{name:26} {us:9.1f} us/op   {us / baseline:7.1f}x baseline")


if __name__ == "__main__":
    main()
