"""The built-in Mistral-compatible HTTP server: real sockets, deterministic replies, faults.

A raw asyncio.Protocol HTTP/1.1 server (keep-alive, Content-Length bodies, chunked
replies for streams) rather than a framework: it must cost a small fraction of the
client's CPU per request so benchmarks measure the client. Faults are chosen per
request by header (`x-mock-fault`), by body (`metadata.mock`), or for all by config.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any

import orjson

from .mockfaults import FAULT_KINDS, NON_STREAM_TWIN, MockConfig, MockRequest, MockState, Plan
from .mockreply import completion, content_key, error_body, stream_events, validation_error

__all__ = ["FAULT_KINDS", "MockConfig", "MockServer", "serve"]

REASONS = {
    200: "OK",
    307: "Temporary Redirect",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    409: "Conflict",
    411: "Length Required",
    422: "Unprocessable Entity",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}
CHAT_PATH = "/v1/chat/completions"
MAX_HEAD = 64 * 1024


class _Connection(asyncio.Protocol):
    """One client connection: parse requests in order, answer each (maybe later)."""

    def __init__(self, state: MockState) -> None:
        self._state = state
        self._buffer = bytearray()
        self._busy = False
        self._transport: asyncio.Transport | None = None
        self._task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._state.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._state.connections.discard(self)
        if self._task is not None:
            self._task.cancel()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        self._next()

    def _next(self) -> None:
        while not self._busy and self._transport is not None and not self._transport.is_closing():
            request = self._parse()
            if request is None:
                return
            self._busy = True
            self._handle(request)

    def _parse(self) -> MockRequest | None:
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > MAX_HEAD:
                self.abort()
            return None
        lines = bytes(self._buffer[:end]).decode("latin-1").split("\r\n")
        method, target, version = [*lines[0].split(" "), "", ""][:3]
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if "chunked" in headers.get("transfer-encoding", ""):
            self._reply(411, b"", keep_alive=False)
            return None
        length = int(headers.get("content-length") or 0)
        if len(self._buffer) < end + 4 + length:
            return None
        body = bytes(self._buffer[end + 4 : end + 4 + length])
        del self._buffer[: end + 4 + length]
        connection = headers.get("connection", "").lower()
        keep_alive = connection != "close" and (version == "HTTP/1.1" or connection == "keep-alive")
        return MockRequest(method, target.split("?")[0], headers, body, keep_alive)

    def _handle(self, request: MockRequest) -> None:
        if request.path == "/health" and request.method == "GET":
            return self._json(request, 200, b'{"status":"ok"}')
        if request.path == "/v1/models" and request.method == "GET":
            models = {"object": "list", "data": [{"id": "mistral-small-latest", "object": "model"}]}
            return self._json(request, 200, orjson.dumps(models))
        if request.path != CHAT_PATH:
            return self._json(request, 404, error_body(404, f"no route {request.path}"))
        if request.method != "POST":
            return self._json(request, 405, error_body(405, "use POST"))
        return self._chat(request)

    def _chat(self, request: MockRequest) -> None:
        state = self._state
        try:
            body = orjson.loads(request.body)
        except orjson.JSONDecodeError:
            body = None
        if not isinstance(body, dict) or validation_error(body) is not None:
            state.record(body if isinstance(body, dict) else None, None, False)
            return self._json(request, 422, orjson.dumps(validation_error(body)))
        plan = state.plan(request, body)
        state.record(body, plan.fault, plan.stream)
        if state.config.require_auth and not _has_bearer(request.headers):
            return self._json(request, 401, b'{"message":"Unauthorized","request_id":"mock"}')
        if plan.delay_s > 0 or plan.stream or plan.fault in ("hang", "stall"):
            self._task = asyncio.get_running_loop().create_task(self._later(request, body, plan))
            return None
        return self._answer(request, body, plan)

    async def _later(self, request: MockRequest, body: dict[str, Any], plan: Plan) -> None:
        if plan.delay_s > 0:
            await asyncio.sleep(plan.delay_s)
        if plan.fault == "hang":
            return  # never answer; the connection stays busy until closed
        if plan.stream and (plan.fault is None or plan.fault in NON_STREAM_TWIN):
            await self._stream(request, body, plan)
        else:
            self._answer(request, body, plan)

    def _answer(self, request: MockRequest, body: dict[str, Any], plan: Plan) -> None:
        fault = plan.fault
        if fault is None:
            reply = completion(body, content_key(body))
            headers = self._state.rate_headers(reply["usage"]["total_tokens"])
            return self._json(request, 200, orjson.dumps(reply), headers)
        if fault == "drop":
            return self.abort()
        if fault == "invalid_json":
            return self._json(request, 200, b'{"id": "cmpl-broken", "choices": [')
        if fault == "redirect":
            location = [("location", f"http://{request.headers.get('host', '')}{CHAT_PATH}")]
            return self._json(request, 307, b"", location)
        status = int(fault)
        headers = []
        if status == 429:
            headers.append(("retry-after", f"{plan.retry_after:g}"))
            if plan.retry_after_ms is not None:
                headers.append(("retry-after-ms", f"{plan.retry_after_ms:g}"))
        return self._json(request, status, error_body(status, f"mock fault {fault}"), headers)

    async def _stream(self, request: MockRequest, body: dict[str, Any], plan: Plan) -> None:
        reply = completion(body, content_key(body))
        events = stream_events(reply, plan.chunks)
        transport = self._transport
        assert transport is not None
        head = [
            ("content-type", "text/event-stream"),
            ("transfer-encoding", "chunked"),
            ("cache-control", "no-cache"),
            *self._state.rate_headers(reply["usage"]["total_tokens"]),
        ]
        transport.write(_head(200, head, keep_alive=request.keep_alive))
        cut_at = max(2, len(events) // 2)
        for position, event in enumerate(events):
            if plan.fault is not None and position == cut_at:
                if plan.fault == "cut":
                    return self.abort()
                if plan.fault == "stall":
                    await asyncio.Event().wait()  # until the client gives up and closes
                if plan.fault == "malformed":
                    transport.write(_chunk(b"data: {not json\n\n"))
            if plan.chunk_delay_s and position:
                await asyncio.sleep(plan.chunk_delay_s)
            transport.write(_chunk(event))
        transport.write(b"0\r\n\r\n")
        self._finished(request.keep_alive)
        return None

    def _json(
        self,
        request: MockRequest,
        status: int,
        body: bytes,
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        self._reply(status, body, keep_alive=request.keep_alive, headers=headers)

    def _reply(
        self,
        status: int,
        body: bytes,
        *,
        keep_alive: bool,
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        assert self._transport is not None
        head = [
            ("content-type", "application/json"),
            ("content-length", str(len(body))),
            *(headers or ()),
        ]
        self._transport.write(_head(status, head, keep_alive=keep_alive) + body)
        self._finished(keep_alive)

    def _finished(self, keep_alive: bool) -> None:
        self._busy = False
        self._task = None
        if not keep_alive and self._transport is not None:
            self._transport.close()
            return
        self._next()


def _has_bearer(headers: dict[str, str]) -> bool:
    scheme, _, token = headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and bool(token.strip())


def _head(status: int, headers: list[tuple[str, str]], *, keep_alive: bool) -> bytes:
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}"]
    lines += [f"{name}: {value}" for name, value in headers]
    lines.append("connection: keep-alive" if keep_alive else "connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


async def serve(
    config: MockConfig,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    ready: Callable[[int], None] | None = None,
) -> None:
    """Serve in the current asyncio loop until cancelled; `ready(port)` once listening."""
    state = MockState(config)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Connection(state), host, port, backlog=1024)
    try:
        if ready is not None:
            ready(server.sockets[0].getsockname()[1])
        await asyncio.Event().wait()
    finally:
        server.close()
        state.close()


class MockServer:
    """The server on a background thread with its own loop: for tests and `run --mock`."""

    def __init__(self, config: MockConfig | None = None, host: str = "127.0.0.1", port: int = 0):
        self.config = config or MockConfig()
        self._host = host
        self._port = port
        self._state = MockState(self.config)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopped: asyncio.Event | None = None

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self._port}"

    @property
    def requests_received(self) -> int:
        return self._state.received

    def start(self) -> None:
        ready = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(ready,), daemon=True, name="batchrun-mock"
        )
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("mock server did not start")

    def _run(self, ready: threading.Event) -> None:
        self._loop = asyncio.new_event_loop()
        self._loop.run_until_complete(self._main(ready))
        self._loop.close()

    async def _main(self, ready: threading.Event) -> None:
        loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        server = await loop.create_server(
            lambda: _Connection(self._state), self._host, self._port, backlog=1024
        )
        self._port = server.sockets[0].getsockname()[1]
        ready.set()
        await self._stopped.wait()
        server.close()
        self._state.close()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(server.wait_closed(), 2)

    def stop(self) -> None:
        if self._loop is None or self._thread is None or self._stopped is None:
            return
        with contextlib.suppress(RuntimeError):  # loop already closed
            self._loop.call_soon_threadsafe(self._stopped.set)
        self._thread.join(10)
        self._thread = None

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
