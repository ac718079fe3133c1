"""The request cache as a run uses it: a line looked up before it is sent, a successful
reply stored after it (in the background, bounded), and the session's counts.

The store itself (key, entry format, atomic verified files) is cache.py; this module only
decides when to call it and how. A run without --cache builds none of this.
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import Any

import anyio
import orjson
from anyio.abc import TaskGroup

from .cache import RequestCache, cache_key
from .records import Request

__all__ = ["Lookup", "RunCache"]

# Stores waiting for the disk at once, at most; one more makes its worker wait. An entry
# fsyncs in ~3 ms (benchmarks/cache_io.py), so this bounds a burst, never a steady rate.
PENDING_STORES = 64

Lookup = tuple[str | None, dict[str, Any] | None]  # (key or None: uncachable, stored reply)


class RunCache:
    """One run's use of a `RequestCache`, shared by every worker.

    Lookups run inline: a verified read costs ~65 us, less than handing it to a thread
    (~165 us, benchmarks/cache_io.py). Stores fsync, so they run in worker threads in the
    background: a record goes to the writer without waiting for its store. Leaving the
    `async with` waits for every store started; a kill -9 loses the stores in progress
    (later misses), never serves half of one (cache.py writes entries atomically).
    """

    def __init__(self, store: RequestCache, endpoint: str, *, pending: int = PENDING_STORES):
        self.store = store
        self.endpoint = endpoint
        self.hits = 0
        self.misses = 0
        self.stored = 0
        self._slots = anyio.Semaphore(pending)
        self._group: TaskGroup | None = None

    @classmethod
    def open(cls, directory: Path, endpoint: str) -> RunCache:
        """The cache at `directory`, created if missing; unusable -> ConfigError."""
        return cls(RequestCache.open(directory), endpoint)

    @property
    def directory(self) -> Path:
        return self.store.directory

    async def __aenter__(self) -> RunCache:
        self._group = anyio.create_task_group()
        await self._group.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._group is not None
        return await self._group.__aexit__(exc_type, exc, tb)

    def lookup(self, request: Request) -> Lookup:
        """The key of `request` and the reply stored under it, if any. The key needs the
        parsed body (key order, whole floats and `stream` do not matter), parsed here
        only: a run without a cache does no work per line for it."""
        try:
            key = cache_key(orjson.loads(request.payload), self.endpoint)
        except (orjson.JSONDecodeError, TypeError):  # not expected: the reader built it
            return None, None
        reply = self.store.get(key)
        if reply is None:
            self.misses += 1
        else:
            self.hits += 1
        return key, reply

    async def keep(self, key: str, response: dict[str, Any]) -> None:
        """Store a successful reply in the background. Waits only when PENDING_STORES
        are already under way, shielded: the caller holds a paid-for record, and a slot
        frees within one fsync."""
        try:
            self._slots.acquire_nowait()
        except anyio.WouldBlock:
            with anyio.CancelScope(shield=True):
                await self._slots.acquire()
        assert self._group is not None, "use RunCache as an async context manager"
        self._group.start_soon(self._put, key, response)

    async def _put(self, key: str, response: dict[str, Any]) -> None:
        try:
            # Shielded: one fsync, and the count must say what reached the disk.
            with anyio.CancelScope(shield=True):
                stored = await anyio.to_thread.run_sync(self.store.put, key, response)
            self.stored += stored  # not `+= await`: that reads the count before the wait
        finally:
            self._slots.release()
