"""HTTP: one shared AsyncClient, one request sent, its outcome classified.

Every foreign exception and every non-200 status is translated here, at one boundary,
into the batchrun error tree, so the retry policy only has to ask "transient or not".
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from types import TracebackType
from typing import Any

import httpx
import orjson
from httpx_aiohttp import AiohttpTransport

from ._version import __version__
from .config import Timeouts
from .errors import (
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
AUTH_STATUSES = frozenset({401, 403})


@dataclass(frozen=True, slots=True)
class Reply:
    response: dict[str, Any]
    ttft_s: float | None = None  # streamed replies: request sent -> first generated output


class ChatClient:
    """Sends chat-completion bodies to one endpoint over a pool sized to the concurrency.

    The transport is httpx-aiohttp: httpx's own pool re-scans every connection per
    request, which costs ~15x more CPU at 64+ connections (docs/architecture.md)."""

    def __init__(self, endpoint: str, api_key: str, *, concurrency: int, timeouts: Timeouts):
        self._endpoint = endpoint
        authorization = api_key if api_key.startswith("Bearer ") else f"Bearer {api_key}"
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        self._client = httpx.AsyncClient(
            transport=AiohttpTransport(limits=limits, trust_env=False),
            headers={
                "authorization": authorization,
                "content-type": "application/json",
                "user-agent": f"batchrun/{__version__}",
            },
            # The pool never waits (it is as large as the worker count), so the pool
            # timeout only guards against a bug, not against load.
            timeout=httpx.Timeout(
                connect=timeouts.connect,
                read=timeouts.read,
                write=timeouts.write,
                pool=timeouts.connect,
            ),
            follow_redirects=False,
            trust_env=False,
        )
        self._stream_timeout = httpx.Timeout(
            connect=timeouts.connect,
            read=timeouts.stream_idle,
            write=timeouts.write,
            pool=timeouts.connect,
        )

    async def __aenter__(self) -> ChatClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._client.aclose()

    async def complete(self, payload: bytes, *, stream: bool = False) -> Reply:
        """Send one request; return the parsed reply or raise a `RequestFailed`."""
        if stream:
            return await self._complete_streamed(payload)
        try:
            response = await self._client.post(
                self._endpoint, content=payload, headers={"accept": "application/json"}
            )
        except httpx.HTTPError as exc:
            raise _transport_failure(exc) from exc
        if response.status_code != 200:
            raise classify_status(response.status_code, response.content, response.headers)
        return Reply(parse_completion(response.content))

    async def _complete_streamed(self, payload: bytes) -> Reply:
        started = time.perf_counter()
        first_output: list[float] = []

        def on_first_output() -> None:
            first_output.append(time.perf_counter() - started)

        request = self._client.build_request(
            "POST",
            self._endpoint,
            content=payload,
            headers={"accept": "text/event-stream"},
            timeout=self._stream_timeout,
        )
        try:
            response = await self._client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise _transport_failure(exc) from exc
        try:
            if response.status_code != 200:
                body = await _read_error_body(response)
                raise classify_status(response.status_code, body, response.headers)
            completion = await read_completion_stream(response.aiter_raw(), on_first_output)
        except httpx.TimeoutException as exc:
            raise Timeout(f"stream idle: {_describe(exc)}") from exc
        except httpx.HTTPError as exc:
            raise StreamTruncated(f"connection lost mid-stream: {_describe(exc)}") from exc
        finally:
            await response.aclose()
        _check_finish(completion)
        return Reply(completion, first_output[0] if first_output else None)


async def _read_error_body(response: httpx.Response) -> bytes:
    try:
        return await response.aread()
    except httpx.HTTPError:
        return b""


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _transport_failure(exc: httpx.HTTPError) -> RequestFailed:
    if isinstance(exc, httpx.TimeoutException):
        return Timeout(_describe(exc))
    return TransportFailure(_describe(exc))


def classify_status(status: int, body: bytes, headers: httpx.Headers) -> RequestFailed:
    """Map a non-200 reply onto the error tree (3xx included: redirects are not followed)."""
    if status == 429:
        return RateLimited(body, parse_retry_after(headers))
    if status in RETRYABLE_STATUSES:
        return RetryableStatus(status, body)
    if status in AUTH_STATUSES:
        return AuthError(status, body)
    return ClientError(status, body)


def parse_retry_after(headers: httpx.Headers, now: float | None = None) -> float | None:
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
