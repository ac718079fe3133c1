"""The built-in Mistral-compatible HTTP server: real 127.0.0.1 sockets, keep-alive, streams.

Owns the HTTP/1.1 connections (Content-Length bodies, keep-alive, pipelining, chunked
streamed replies), their shutdown and the background-thread wrapper. faults.py decides
what each request gets, replies.py what the reply says. It sits on a raw asyncio.Protocol,
not a framework, so a request costs a few tens of microseconds and benchmarks measure the
client.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Any

import orjson

from .faults import MockConfig, MockState, Plan
from .replies import (
    BROKEN_JSON,
    HEALTH_BODY,
    MODELS_BODY,
    chunk,
    error_body,
    keep_alive_event,
    parse_chat,
    raw_response,
    response,
    retry_headers,
    stream_events,
    stream_head,
    trickle_event,
)

__all__ = ["MockServer", "serve"]

CHAT_PATH = "/v1/chat/completions"
ROUTES = {"/health": "GET", "/v1/models": "GET", CHAT_PATH: "POST"}
DEFAULT_CONFIG = MockConfig()
MAX_HEAD, MAX_BODY = 64 * 1024, 64 * 1024 * 1024
BACKLOG = 2048  # a burst of >= 1000 new connections must not be refused
START_TIMEOUT_S = STOP_TIMEOUT_S = 10.0
ENDLESS_INTERVAL_S = 0.1  # keepalive/trickle streams without a chunk delay of their own


@dataclass(slots=True)
class _Request:
    method: str
    path: str
    headers: dict[str, str]
    keep_alive: bool
    head_size: int  # request line and headers, blank line included
    length: int  # Content-Length
    body: bytes = b""
    continued: bool = False  # "100 Continue" already sent
    drip_s: float = 0.0  # the reply goes out one byte at a time, this far apart


class _Unreadable(Exception):
    """A request that cannot be parsed; answered with `status`, then the connection
    closes, since where the next request starts is lost."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _Connection(asyncio.Protocol):
    """One client connection: requests parsed in order and each answered (maybe later)
    before the next is read, so keep-alive and pipelining both hold."""

    def __init__(self, state: MockState, open_connections: set[_Connection]) -> None:
        self._state = state
        self._open = open_connections
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None
        self._pending: _Request | None = None  # head parsed, body still arriving
        self._current: _Request | None = None  # being answered
        self._draining = False
        self.task: asyncio.Task[None] | None = None  # a delayed or streamed answer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._open.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._open.discard(self)
        if self.task is not None:
            self.task.cancel()  # a client that gives up must not leave a task behind

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        self._drain()

    def _drain(self) -> None:
        """Answer the complete requests buffered; a loop, not recursion through
        `_finished`, so a long pipeline of instant replies cannot exhaust the stack."""
        if self._draining:
            return
        self._draining = True
        try:
            while self._current is None and not self._closing():
                request = self._take()
                if request is None:
                    break
                self._current = request
                self._safely(self._route, request)
        finally:
            self._draining = False

    def _closing(self) -> bool:
        return self._transport is None or self._transport.is_closing()

    def _take(self) -> _Request | None:
        try:
            request = self._pending = self._pending or self._parse_head()
        except _Unreadable as exc:
            self._current = _Request("", "", {}, False, 0, 0)  # answered, then closed
            self._buffer.clear()
            self._respond(exc.status, error_body(exc.status, str(exc)))
            return None
        if request is None:
            return None
        end = request.head_size + request.length
        if len(self._buffer) < end:
            if request.headers.get("expect", "").lower() == "100-continue":
                self._write(b"" if request.continued else b"HTTP/1.1 100 Continue\r\n\r\n")
                request.continued = True
            return None
        request.body = bytes(self._buffer[request.head_size : end])
        del self._buffer[:end]
        self._pending = None
        return request

    def _parse_head(self) -> _Request | None:
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > MAX_HEAD:
                raise _Unreadable(431, "request head too large")
            return None
        lines = self._buffer[:end].decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise _Unreadable(400, "malformed request line")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if "chunked" in headers.get("transfer-encoding", "").lower():
            raise _Unreadable(411, "send the body with a Content-Length, not chunked")
        length = headers.get("content-length", "0")
        if not (length.isascii() and length.isdigit()):
            raise _Unreadable(400, "bad content-length")
        if int(length) > MAX_BODY:
            raise _Unreadable(413, "request body too large")
        method, target, version = parts
        connection = headers.get("connection", "").lower()
        keep_alive = "close" not in connection and (
            version == "HTTP/1.1" or "keep-alive" in connection
        )
        path = target.partition("?")[0]
        return _Request(method, path, headers, keep_alive, end + 4, int(length))

    def _safely(self, answer: Callable[[_Request], None], request: _Request) -> None:
        # A bug in reply building must reach the client as a 500, not vanish into
        # asyncio's exception log while the client waits forever.
        try:
            answer(request)
        except Exception as exc:
            self._current = request
            request.keep_alive = False
            self._respond(500, error_body(500, f"mock server error: {exc!r}"))

    def _route(self, request: _Request) -> None:
        allowed = ROUTES.get(request.path)
        if allowed is None:
            return self._respond(404, error_body(404, f"no route for {request.path}"))
        if request.method != allowed:
            body = error_body(405, f"{request.path} takes {allowed}")
            return self._respond(405, body, b"allow: %s\r\n" % allowed.encode())
        if request.path == CHAT_PATH:
            return self._chat(request)
        return self._respond(200, HEALTH_BODY if request.path == "/health" else MODELS_BODY)

    def _chat(self, request: _Request) -> None:
        body, invalid = parse_chat(request.body)
        plan = self._state.plan(request.headers, request.body, body, invalid)
        self._state.record(body, plan)
        request.drip_s = plan.drip_s
        if plan.raw is not None and plan.raw.events is not None and plan.chunk_delay_s:
            self.task = asyncio.get_running_loop().create_task(self._raw_stream(plan))
            return None
        if plan.delay_s > 0 or plan.stream:
            self.task = asyncio.get_running_loop().create_task(self._later(request, plan))
            return None
        return self._answer(request, plan)

    async def _later(self, request: _Request, plan: Plan) -> None:
        if plan.delay_s > 0:
            await asyncio.sleep(plan.delay_s)
        if not plan.stream or plan.reply is None:
            return self._safely(lambda r: self._answer(r, plan), request)
        try:
            await self._stream(plan.reply, plan)
        except Exception:
            self.abort()  # the 200 head may be out already: a cut stream is the honest answer

    def _answer(self, request: _Request, plan: Plan) -> None:
        """Every reply but a scripted one carries the rate-limit headers fixed on arrival."""
        fault, headers = plan.fault, plan.headers
        if plan.error is not None:
            return self._respond(plan.error[0], plan.error[1], headers)
        if plan.raw is not None:
            return self._send(raw_response(plan.raw, self._keep_alive()))
        if fault is None and plan.reply is not None:
            return self._respond(200, orjson.dumps(plan.reply), headers)
        if fault == "hang":
            return None  # never answered: the connection stays busy until it closes
        if fault == "drop":
            return self.abort()
        if fault == "invalid_json":
            return self._respond(200, BROKEN_JSON, headers)
        if fault == "redirect":
            location = b"location: %s\r\n" % self._own_url(request)
            return self._respond(307, b"", headers + location)
        if fault == "echo_headers":
            echo = orjson.dumps({"error": "bad", "headers": request.headers})
            return self._respond(400, echo, headers)
        status = int(str(fault))
        if status == 429:
            headers += retry_headers(plan.retry_after, plan.retry_after_ms)
        return self._respond(status, error_body(status, f"mock fault {status}"), headers)

    def _own_url(self, request: _Request) -> bytes:
        host = request.headers.get("host")
        if not host and self._transport is not None:
            address, port = self._transport.get_extra_info("sockname")[:2]
            host = f"{address}:{port}"
        return f"http://{host}{request.path}".encode("latin-1")

    async def _stream(self, reply: dict[str, Any], plan: Plan) -> None:
        events = stream_events(reply, plan.chunks)
        head = stream_head(plan.headers, self._keep_alive())
        if plan.fault in ("keepalive", "trickle"):
            return await self._endless(head, reply, plan)
        if plan.drip_s > 0:  # chunk delays and stream faults give way to the drip
            return self._send(head + b"".join(map(chunk, events)) + b"0\r\n\r\n")
        self._write(head)
        broken_at = max(2, len(events) // 2)
        for position, event in enumerate(events):
            if position == broken_at and plan.fault is not None:
                return self._break_stream(plan.fault)
            if position and plan.chunk_delay_s:
                await asyncio.sleep(plan.chunk_delay_s)
            self._write(chunk(event))
        self._write(b"0\r\n\r\n")
        return self._finished()

    async def _endless(self, head: bytes, reply: dict[str, Any], plan: Plan) -> None:
        """A 200 stream that never ends: comments only, or one word at a time. It stops
        when the client hangs up (connection_lost cancels this task)."""
        self._write(head)
        interval = plan.chunk_delay_s or ENDLESS_INTERVAL_S
        for position in itertools.count():
            keepalive = plan.fault == "keepalive"
            self._write(keep_alive_event() if keepalive else trickle_event(reply, position))
            await asyncio.sleep(interval)

    async def _raw_stream(self, plan: Plan) -> None:
        """A scripted event stream with `chunk_delay_ms` between its events."""
        assert plan.raw is not None and plan.raw.events is not None
        if plan.delay_s > 0:
            await asyncio.sleep(plan.delay_s)
        head = raw_response(replace(plan.raw, events=()), self._keep_alive())
        self._write(head.removesuffix(b"0\r\n\r\n"))
        for position, event in enumerate(plan.raw.events):
            if position:
                await asyncio.sleep(plan.chunk_delay_s)
            self._write(chunk(event) if event else b"")
        self._write(b"0\r\n\r\n")
        self._finished()

    def _break_stream(self, fault: str) -> None:
        if fault == "cut":
            return self.abort()  # no [DONE], no terminating chunk: a truncated body
        if fault == "malformed":
            self._write(chunk(b"data: {not json\n\n") + chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
            return self._finished()
        return None  # "stall": stop sending but keep the connection open

    def _respond(self, status: int, body: bytes, extra: bytes = b"") -> None:
        self._send(response(status, body, extra, self._keep_alive()))

    def _send(self, data: bytes) -> None:
        """Send a whole reply and finish the request, dripped if the request asked."""
        drip_s = self._current.drip_s if self._current is not None else 0.0
        if drip_s <= 0:
            self._write(data)
            return self._finished()
        self.task = asyncio.get_running_loop().create_task(self._drip(data, drip_s))
        return None

    async def _drip(self, data: bytes, interval: float) -> None:
        for position in range(len(data)):
            if position:
                await asyncio.sleep(interval)
            self._write(data[position : position + 1])
        self._finished()

    def _keep_alive(self) -> bool:
        return self._current is not None and self._current.keep_alive

    def _write(self, data: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    def _finished(self) -> None:
        """The current request is answered: close, or go on to the next one."""
        keep_alive = self._keep_alive()
        self._current, self.task = None, None
        if keep_alive:
            self._drain()
        elif self._transport is not None:
            self._transport.close()


async def serve(
    config: MockConfig,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    ready: Callable[[int], None] | None = None,
) -> None:
    """Serve in the current asyncio loop until cancelled; `ready(port)` once listening."""
    await _serve(MockState(config), host, port, ready)


async def _serve(
    state: MockState, host: str, port: int, ready: Callable[[int], None] | None
) -> None:
    loop = asyncio.get_running_loop()
    connections: set[_Connection] = set()
    server = await loop.create_server(
        lambda: _Connection(state, connections), host, port, backlog=BACKLOG
    )
    try:
        if ready is not None:
            ready(server.sockets[0].getsockname()[1])
        await loop.create_future()  # never set: runs until cancelled
    finally:
        server.close()
        state.close()
        await _close_all(connections)


async def _close_all(connections: set[_Connection]) -> None:
    """Abort every connection, hung and stalled ones included, and let their tasks end."""
    tasks = [c.task for c in connections if c.task is not None]
    for connection in list(connections):
        connection.abort()
    for task in tasks:
        task.cancel()
    # Give the tasks and the aborted transports (which close their sockets in
    # connection_lost) a turn. anyio re-delivers its cancellation at every await during
    # shutdown; that must not skip the rest of the caller's cleanup.
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.sleep(0)


class MockServer:
    """Runs the server on a background thread with its own event loop."""

    def __init__(
        self, config: MockConfig = DEFAULT_CONFIG, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.config = config
        self._host, self._port = host, port
        self._state: MockState | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self._port}"

    @property
    def requests_received(self) -> int:
        """POSTs to /v1/chat/completions received, however they were answered."""
        return self._state.received if self._state is not None else 0

    def start(self) -> None:
        """Return once listening (port 0 becomes a free port); raise if it cannot listen."""
        if self._thread is not None:
            raise RuntimeError("mock server already started")
        started = threading.Event()
        failures: list[BaseException] = []
        self._state = MockState(self.config)
        self._thread = threading.Thread(
            target=self._run, args=(self._state, started, failures), name="batchrun-mock"
        )
        self._thread.daemon = True  # a test that forgets stop() must not hang the interpreter
        self._thread.start()
        if not started.wait(START_TIMEOUT_S) or failures:
            self.stop()
            raise failures[0] if failures else RuntimeError("mock server did not start")

    def _run(
        self, state: MockState, started: threading.Event, failures: list[BaseException]
    ) -> None:
        def ready(port: int) -> None:
            self._port = port
            started.set()

        loop = self._loop = asyncio.new_event_loop()
        self._task = loop.create_task(_serve(state, self._host, self._port, ready))
        try:
            loop.run_until_complete(self._task)
        except asyncio.CancelledError:
            pass  # stop() cancelled it: the normal way out
        except Exception as exc:
            failures.append(exc)
        finally:
            loop.close()
            started.set()

    def stop(self) -> None:
        """Idempotent: close every connection, hung ones included, and join the thread."""
        thread, loop, task = self._thread, self._loop, self._task
        if thread is None:
            return
        self._thread = None
        if loop is not None and task is not None:
            with contextlib.suppress(RuntimeError):  # the loop has already closed
                loop.call_soon_threadsafe(task.cancel)
        thread.join(STOP_TIMEOUT_S)

    def __enter__(self) -> MockServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
