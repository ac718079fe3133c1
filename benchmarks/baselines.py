"""Baseline clients the benchmarks compare batchrun against, each run as its own process.

    python benchmarks/baselines.py aiohttp|aiohttp-uvloop|httpx|httpx-aiohttp URL INPUT CONCURRENCY

Each sends every line of INPUT as a POST /v1/chat/completions with CONCURRENCY workers
and parses the JSON reply: the floor a Python client can reach, with nothing else.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import orjson

Send = Callable[[bytes], Awaitable[None]]


async def drive(lines: list[bytes], concurrency: int, send: Send) -> None:
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for line in lines:
        queue.put_nowait(line)

    async def worker() -> None:
        while not queue.empty():
            await send(queue.get_nowait())

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def with_aiohttp(url: str, lines: list[bytes], concurrency: int) -> None:
    import aiohttp

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def send(body: bytes) -> None:
            async with session.post(url, data=body, headers=HEADERS) as response:
                orjson.loads(await response.read())

        await drive(lines, concurrency, send)


async def with_httpx(
    url: str, lines: list[bytes], concurrency: int, aiohttp_transport: bool
) -> None:
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    transport = None
    if aiohttp_transport:
        from httpx_aiohttp import AiohttpTransport

        transport = AiohttpTransport(limits=limits)
    async with httpx.AsyncClient(limits=limits, transport=transport, timeout=60) as client:

        async def send(body: bytes) -> None:
            response = await client.post(url, content=body, headers=HEADERS)
            orjson.loads(response.content)

        await drive(lines, concurrency, send)


HEADERS = {"content-type": "application/json", "authorization": "Bearer bench"}


def main() -> None:
    kind, base_url, input_path, concurrency = sys.argv[1:5]
    url = base_url.rstrip("/") + "/v1/chat/completions"
    lines = [line for line in Path(input_path).read_bytes().splitlines() if line.strip()]
    if kind == "aiohttp":
        asyncio.run(with_aiohttp(url, lines, int(concurrency)))
    elif kind == "aiohttp-uvloop":
        import uvloop

        uvloop.run(with_aiohttp(url, lines, int(concurrency)))
    else:
        asyncio.run(with_httpx(url, lines, int(concurrency), kind == "httpx-aiohttp"))


if __name__ == "__main__":
    main()
