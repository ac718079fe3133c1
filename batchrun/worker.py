"""One worker's job: take lines, send each under the retry policy and flow control, and
turn the outcome into a record for the writer. Stop rules and guards hear every outcome."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .cache_run import RunCache
from .client import ChatClient, Reply
from .errors import RateLimited, RequestFailed, SchemaViolation
from .flow import FlowControl
from .journal import SentLog
from .progress import LiveStats
from .records import Completed, Request, error_record, ok_record, usage_count
from .retry import RetryPolicy
from .stops import GuardRules, Stop, StopRules

if TYPE_CHECKING:  # structured.py loads jsonschema, which plain runs never need
    from .structured import OutputChecker

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
        schema_retries: int = 2,
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
        self.schema_retries = schema_retries
        self.cache = cache
        self._keys: dict[int, str] = {}  # index -> cache key of a line answer() missed

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

    def answer(self, request: Request) -> Completed | None:
        """The line's record from the request cache, or None when it must be sent. The
        dispatcher asks before handing a line out, so a hit never goes through a worker
        (the hand-off costs more than the lookup); a miss's key waits for its store."""
        assert self.cache is not None
        looked_up = time.perf_counter()
        key, cached = self.cache.lookup(request)
        if cached is not None and (hit := self._answered(request, cached, looked_up)):
            return hit
        if key is not None:
            self._keys[request.index] = key
        return None

    async def process(self, request: Request) -> Completed:
        # The key under which a miss's reply is stored (see answer).
        key = self._keys.pop(request.index, None) if self._keys else None
        self.sent_log.mark(request.index)
        stats, flow, client = self.stats, self.flow, self.client
        attempts = throttled = 0
        first = 1  # this ask's first attempt: a schema re-ask is no transport retry
        started = 0.0

        async def attempt() -> Reply:
            nonlocal attempts, started, throttled
            reservation = await flow.admit(request.tokens)
            attempts += 1
            stats.sent += 1
            stats.retries += attempts > first
            started = time.perf_counter()
            try:
                reply = await client.complete(request.payload, stream=request.stream)
            except RequestFailed as exc:
                flow.failed(reservation, exc)
                throttled += isinstance(exc, RateLimited)
                raise
            except BaseException:
                flow.release()
                raise
            flow.succeeded(reservation, reply)
            return reply

        schema = None if request.checker is None else _Conformance(request.checker)
        stats.in_flight += 1
        try:
            reply = await self.policy.call(attempt)
            while schema is not None and not self._conforms(schema, reply):
                first = attempts + 1
                reply = await self.policy.call(attempt)
        except RequestFailed as exc:
            return self._failed(request, exc, attempts, started, schema=schema, throttled=throttled)
        finally:
            stats.in_flight -= 1
        completed = self._succeeded(
            request, reply, attempts, started, schema=schema, throttled=throttled
        )
        # Stored only once it made an ok record: errors (off-schema replies too) never are.
        if key is not None and not completed.failed:
            assert self.cache is not None
            await self.cache.keep(key, reply.response)
        return completed

    def _answered(
        self, request: Request, response: dict[str, Any], started: float
    ) -> Completed | None:
        """A cache hit: an ok record without a request, so flow control, the retry
        policy and the stop rules never hear of it; the guards get its estimates back.
        A streamed request may be answered by a non-streamed reply (the key ignores
        `stream`): its record has no ttft_ms. A line with a response_format gets
        `parsed` like a fresh reply (one reply checked); a stored reply that no longer
        fits it (its schema is in the key, so only a changed checker could do that) is
        no answer: None, and the line is sent."""
        parsed, checked = None, None
        if request.checker is not None:
            try:
                parsed, checked = request.checker.check_reply(response), 1
            except SchemaViolation:
                return None
        self.guards.released(request)
        self.stats.ok += 1
        self.stats.cached += 1
        latency = (time.perf_counter() - started) * 1000
        return ok_record(
            request,
            response,
            attempts=0,
            latency_ms=latency,
            parsed=parsed,
            schema_attempts=checked,
            cached=True,
        )

    def _conforms(self, schema: _Conformance, reply: Reply) -> bool:
        """Check a reply against the line's response_format: True when it conforms,
        False when it is worth asking again; the last violation is raised."""
        try:
            schema.check(reply)
        except SchemaViolation:
            self.stops.succeeded()  # the server answered: no auth or connection streak
            self._count_usage(reply)
            schema.discard(reply.response.get("usage"))
            if schema.asks > self.schema_retries:
                raise
            return False
        return True

    def _succeeded(
        self,
        request: Request,
        reply: Reply,
        attempts: int,
        started: float,
        *,
        schema: _Conformance | None = None,
        throttled: int = 0,
    ) -> Completed:
        self.stops.succeeded()
        self.stats.ok += 1
        tokens = self._count_usage(reply)
        spent = tokens if schema is None else tokens + schema.discarded["total_tokens"]
        self._guard(self.guards.completed(request.tokens, spent, failed=False))
        ttft = None if reply.ttft_s is None else reply.ttft_s * 1000
        latency = (time.perf_counter() - started) * 1000
        return ok_record(
            request,
            reply.response,
            attempts=attempts,
            latency_ms=latency,
            ttft_ms=ttft,
            parsed=None if schema is None else schema.parsed,
            schema_attempts=None if schema is None else schema.asks,
            discarded_usage=None if schema is None else schema.discarded_usage(),
            throttled=throttled,
        )

    def _count_usage(self, reply: Reply) -> int:
        """Add a reply's usage to the live counters; its total tokens."""
        usage = reply.response.get("usage")
        stats = self.stats
        stats.completion_tokens += usage_count(usage, "completion_tokens") or 0
        tokens = usage_count(usage, "total_tokens") or 0
        stats.total_tokens += tokens
        return tokens

    def _failed(
        self,
        request: Request,
        error: RequestFailed,
        attempts: int,
        started: float,
        *,
        schema: _Conformance | None = None,
        throttled: int = 0,
    ) -> Completed:
        self.stats.failed += 1
        self._guard(self.stops.failed(error))
        spent = 0 if schema is None else schema.discarded["total_tokens"]
        self._guard(self.guards.completed(request.tokens, spent, failed=True))
        latency = (time.perf_counter() - started) * 1000 if started else None
        return error_record(
            request,
            error,
            attempts=attempts,
            latency_ms=latency,
            schema_attempts=None if schema is None else schema.asks,
            discarded_usage=None if schema is None else schema.discarded_usage(),
            throttled=throttled,
        )

    def _guard(self, stop: Stop | None) -> None:
        if stop is not None:
            self.on_stop(stop)


USAGE_KEYS = ("prompt_tokens", "completion_tokens", "total_tokens")


class _Conformance:
    """One line's structured-output checks: replies checked, the parsed content of the
    one that conformed, the usage of those that did not (paid for all the same)."""

    __slots__ = ("asks", "checker", "discarded", "parsed", "refused")

    def __init__(self, checker: OutputChecker) -> None:
        self.checker = checker
        self.asks = 0
        self.parsed: Any = None
        self.discarded = dict.fromkeys(USAGE_KEYS, 0)
        self.refused = 0

    def check(self, reply: Reply) -> None:
        self.asks += 1
        self.parsed = self.checker.check_reply(reply.response)

    def discard(self, usage: object) -> None:
        self.refused += 1
        for key in USAGE_KEYS:
            self.discarded[key] += usage_count(usage, key) or 0

    def discarded_usage(self) -> dict[str, int] | None:
        """The refused replies' usage, for the record; None when none was refused."""
        return self.discarded if self.refused else None
