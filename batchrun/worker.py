"""One worker's job: take lines, send each under the retry policy and flow control, and
turn the outcome into a record for the writer. Stop rules and guards hear every outcome."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .cache_run import RunCache
from .client import ChatClient, Reply
from .errors import RequestFailed
from .flow import FlowControl
from .journal import SentLog
from .progress import LiveStats
from .records import Completed, Request, error_record, ok_record
from .retry import RetryPolicy
from .stops import GuardRules, Stop, StopRules

__all__ = ["Worker"]


class Worker:
    """Shared by every worker task of a run (it holds no per-task state)."""

    def __init__(
        self,
        client: ChatClient,
        policy: RetryPolicy,
        flow: FlowControl,
        stats: LiveStats,
        *,
        stops: StopRules,
        guards: GuardRules,
        on_stop: Callable[[Stop], None],
        sent_log: SentLog,
        cache: RunCache | None = None,
    ) -> None:
        self.client = client
        self.policy = policy
        self.flow = flow
        self.stats = stats
        self.stops = stops
        self.guards = guards
        self.on_stop = on_stop
        self.sent_log = sent_log
        self.cache = cache

    async def run(
        self,
        work_recv: MemoryObjectReceiveStream[Request],
        done_send: MemoryObjectSendStream[Completed],
    ) -> None:
        """Process lines until the dispatcher closes the channel."""
        async with work_recv, done_send:
            async for request in work_recv:
                completed = await self.process(request)
                try:
                    done_send.send_nowait(completed)
                except anyio.WouldBlock:
                    # A reply we paid for must reach the journal even if we are being
                    # cancelled; the writer always drains, so this cannot hang.
                    with anyio.CancelScope(shield=True):
                        await done_send.send(completed)

    async def process(self, request: Request) -> Completed:
        # The request cache: a hit is the record, nothing is sent (see _answered).
        key = None
        if self.cache is not None:
            looked_up = time.perf_counter()
            key, cached = self.cache.lookup(request)
            if cached is not None:
                return self._answered(request, cached, looked_up)
        self.sent_log.mark(request.index)
        stats, flow, client = self.stats, self.flow, self.client
        attempts = 0
        started = 0.0

        async def attempt() -> Reply:
            nonlocal attempts, started
            reservation = await flow.admit(request.tokens)
            attempts += 1
            stats.sent += 1
            stats.retries += attempts > 1
            started = time.perf_counter()
            try:
                reply = await client.complete(request.payload, stream=request.stream)
            except RequestFailed as exc:
                flow.failed(reservation, exc)
                raise
            except BaseException:
                flow.release()
                raise
            flow.succeeded(reservation, reply)
            return reply

        stats.in_flight += 1
        try:
            reply = await self.policy.call(attempt)
        except RequestFailed as exc:
            return self._failed(request, exc, attempts, started)
        finally:
            stats.in_flight -= 1
        completed = self._succeeded(request, reply, attempts, started)
        # Stored only once it made an ok record: errors are never cached.
        if key is not None and not completed.failed:
            assert self.cache is not None
            await self.cache.keep(key, reply.response)
        return completed

    def _answered(self, request: Request, response: dict[str, Any], started: float) -> Completed:
        """A cache hit: an ok record without a request, so flow control, the retry
        policy and the stop rules never hear of it; the guards get its estimates back.
        A streamed request may be answered by a non-streamed reply (the key ignores
        `stream`): its record has no ttft_ms."""
        self.guards.released(request)
        self.stats.ok += 1
        self.stats.cached += 1
        latency = (time.perf_counter() - started) * 1000
        return ok_record(request, response, attempts=0, latency_ms=latency, cached=True)

    def _succeeded(
        self, request: Request, reply: Reply, attempts: int, started: float
    ) -> Completed:
        self.stops.succeeded()
        stats = self.stats
        stats.ok += 1
        usage = reply.response.get("usage")
        tokens = 0
        if isinstance(usage, dict):
            stats.completion_tokens += _count(usage.get("completion_tokens"))
            tokens = _count(usage.get("total_tokens"))
            stats.total_tokens += tokens
        self._guard(self.guards.completed(request.tokens, tokens, failed=False))
        ttft = None if reply.ttft_s is None else reply.ttft_s * 1000
        latency = (time.perf_counter() - started) * 1000
        return ok_record(
            request, reply.response, attempts=attempts, latency_ms=latency, ttft_ms=ttft
        )

    def _failed(
        self, request: Request, error: RequestFailed, attempts: int, started: float
    ) -> Completed:
        self.stats.failed += 1
        self._guard(self.stops.failed(error))
        self._guard(self.guards.completed(request.tokens, 0, failed=True))
        latency = (time.perf_counter() - started) * 1000 if started else None
        return error_record(request, error, attempts=attempts, latency_ms=latency)

    def _guard(self, stop: Stop | None) -> None:
        if stop is not None:
            self.on_stop(stop)


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0
