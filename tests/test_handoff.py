"""How the dispatcher hands lines to workers, observed per event-loop turn.

The dispatcher must give every waiting worker a line in the same loop turn, not one
line per turn (that cost about one extra loop turn per request). A probe task in the
run's own event loop counts the lines marked in sent.log (a byte per line; each worker
marks its line before sending it) between two of its own turns: no clock involved.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest
from jsonl import chat_request, write_jsonl

from batchrun import RunConfig, Timeouts, run_batch
from batchrun.mock import MockServer
from batchrun.outdir import Paths

CONCURRENCY = 16


def _marked(sent: Path) -> int:
    try:
        return sent.read_bytes().count(1)
    except FileNotFoundError:
        return 0


@pytest.mark.anyio
async def test_waiting_workers_all_get_a_line_in_one_loop_turn(
    mock_server: Callable[..., MockServer], tmp_path: Path
) -> None:
    # Replies are slow, so every line taken in the first burst is still in flight and
    # no reply frees a worker while the probe watches.
    server = mock_server(latency_ms=1000)
    lines = CONCURRENCY * 2
    path = write_jsonl(tmp_path / "in.jsonl", [chat_request(i) for i in range(lines)])
    config = RunConfig(
        input_path=path,
        outdir=tmp_path / "out",
        base_url=server.url,
        concurrency=CONCURRENCY,
        timeouts=Timeouts(read=10),
    )
    sent = Paths(config.outdir).sent
    steps: list[int] = []

    async def probe() -> None:
        seen = 0
        while seen < CONCURRENCY:
            await anyio.lowlevel.checkpoint()  # exactly one loop turn
            now = _marked(sent)
            steps.append(now - seen)
            seen = now

    with anyio.fail_after(30):
        async with anyio.create_task_group() as group:
            group.start_soon(probe)
            report = await run_batch(config, api_key="key")
    assert report.exit_code == 0
    assert server.requests_received == lines
    # The workers that waited while the dispatcher blocked on the first line get theirs
    # in one turn (a turn may split them between two probe steps, never more).
    assert max(steps) >= CONCURRENCY // 2
