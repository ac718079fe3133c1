"""HTTP: one shared aiohttp session, one request sent, its outcome classified.

Every foreign exception and every non-200 status is translated here, at one boundary,
into the batchrun error tree, so the retry policy only has to ask "transient or not".
Why aiohttp and not httpx: see docs/architecture.md ("Transport choice", measured).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson

from ._version import __version__
from .config import Timeouts, is_loopback
from .errors import (
    AUTH_STATUSES,
    AuthError,
    BadResponse,
    ClientError,
    RateLimited,
    RequestFailed,
    RetryableStatus,
    StreamTruncated,
    Timeout,
    TransportFailure,
)
from .streaming import read_completion_stream

__all__ = ["ChatClient", "Reply", "classify_status", "parse_retry_after"]

RETRYABLE_STATUSES = frozenset({408, 409, 500, 502, 503, 504})
ACCEPT_JSON = {"accept": "application/json"}
ACCEPT_EVENTS = {"accept": "text/event-stream"}


@dataclass(frozen=True, slots=True)
class Reply:
    response: dict[str, Any]
    ttft_s: float | None = None  # streamed replies: request sent -> first generated output


class ChatClient:
    """Sends chat-completion bodies to one endpoint over a pool sized to the concurrency.

    Use as `async with ChatClient(...) as client`; the session needs a running loop."""

    def __init__(self, endpoint: str, api_key: str | None, *, concurrency: int, timeouts: Timeouts):
        self._endpoint = endpoint
        self._concurrency = concurrency
        self._headers = {
            "content-type": "application/json",
            "user-agent": f"batchrun/{__version__}",
        }
        if api_key:  # None or empty: a server without authentication gets no header
            bearer = api_key if api_key.startswith("Bearer ") else f"Bearer {api_key}"
            self._headers["authorization"] = bearer
        # sock_read bounds the silence between two reads: the whole reply for a plain
        # request, the gap between events for a stream. `connect` includes the wait
        # for a pooled connection, which never happens: the pool is as large as the
        # worker count.
        self._timeout = aiohttp.ClientTimeout(
            connect=timeouts.connect, sock_connect=timeouts.connect, sock_read=timeouts.read
        )
        self._stream_timeout = aiohttp.ClientTimeout(
            connect=timeouts.connect, sock_connect=timeouts.connect, sock_read=timeouts.stream_idle
        )
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> ChatClient:
        host = urlsplit(self._endpoint).hostname or ""
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self._concurrency, limit_per_host=0),
            headers=self._headers,
            timeout=self._timeout,
            # Proxies from the environment apply to remote APIs, never to this machine.
            trust_env=not is_loopback(host),
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()

    async def complete(self, payload: bytes, *, stream: bool = False) -> Reply:
        """Send one request; return the parsed reply or raise a `RequestFailed`."""
        session = self._session
        assert session is not None, "use ChatClient as an async context manager"
        if stream:
            return await self._complete_streamed(session, payload)
        try:
            async with session.post(
                self._endpoint, data=payload, headers=ACCEPT_JSON, allow_redirects=False
            ) as response:
                body = await response.read()
        except TimeoutError as exc:
            raise Timeout(_describe(exc)) from exc
        except aiohttp.ClientError as exc:
            raise TransportFailure(_describe(exc)) from exc
        if response.status != 200:
            raise classify_status(response.status, body, response.headers)
        return Reply(parse_completion(body))

    async def _complete_streamed(self, session: aiohttp.ClientSession, payload: bytes) -> Reply:
        started = time.perf_counter()
        first_output: list[float] = []

        def on_first_output() -> None:
            first_output.append(time.perf_counter() - started)

        try:
            async with session.post(
                self._endpoint,
                data=payload,
                headers=ACCEPT_EVENTS,
                allow_redirects=False,
                timeout=self._stream_timeout,
            ) as response:
                if response.status != 200:
                    body = await response.read()
                    raise classify_status(response.status, body, response.headers)
                completion = await self._read_stream(response, on_first_output)
        except TimeoutError as exc:
            raise Timeout(_describe(exc)) from exc
        except aiohttp.ClientError as exc:
            raise TransportFailure(_describe(exc)) from exc
        _check_finish(completion)
        return Reply(completion, first_output[0] if first_output else None)

    @staticmethod
    async def _read_stream(
        response: aiohttp.ClientResponse, on_first_output: Any
    ) -> dict[str, Any]:
        try:
            return await read_completion_stream(response.content.iter_any(), on_first_output)
        except TimeoutError as exc:
            raise Timeout(f"stream idle: {_describe(exc)}") from exc
        except aiohttp.ClientError as exc:
            raise StreamTruncated(f"connection lost mid-stream: {_describe(exc)}") from exc


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def classify_status(status: int, body: bytes, headers: Mapping[str, str]) -> RequestFailed:
    """Map a non-200 reply onto the error tree (3xx included: redirects are not followed)."""
    if status == 429:
        return RateLimited(body, parse_retry_after(headers))
    if status in RETRYABLE_STATUSES:
        return RetryableStatus(status, body)
    if status in AUTH_STATUSES:
        return AuthError(status, body)
    return ClientError(status, body)


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds to wait, from `retry-after-ms` (preferred) or `Retry-After` (seconds or an
    HTTP date); None when absent or unusable, so the caller falls back to backoff."""
    millis = _finite(headers.get("retry-after-ms"))
    if millis is not None and millis > 0:
        return millis / 1000
    value = headers.get("retry-after")
    if value is None:
        return None
    seconds = _finite(value)
    if seconds is None:
        seconds = _seconds_until(value, time.time() if now is None else now)
    return seconds if seconds is not None and seconds > 0 else None


def _finite(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _seconds_until(http_date: str, now: float) -> float | None:
    try:
        return parsedate_to_datetime(http_date).timestamp() - now
    except (TypeError, ValueError, IndexError):
        return None


def parse_completion(body: bytes) -> dict[str, Any]:
    """A 200 body must be a JSON object with choices; anything else is retried."""
    try:
        completion = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadResponse(f"200 reply is not valid JSON ({exc.msg})") from None
    if not isinstance(completion, dict) or not isinstance(completion.get("choices"), list):
        raise BadResponse("200 reply is not a chat completion (no choices list)")
    _check_finish(completion)
    return completion


def _check_finish(completion: dict[str, Any]) -> None:
    for choice in completion.get("choices") or ():
        if isinstance(choice, dict) and choice.get("finish_reason") == "error":
            raise BadResponse("the server reported finish_reason 'error' mid-generation")
