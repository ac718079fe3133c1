"""HTTP: one shared aiohttp session, one request sent, its outcome classified.

Every foreign exception and every non-200 status is translated here, at one boundary
(`ChatClient.complete`), into the batchrun error tree, so the retry policy only has to
ask "transient or not". Every byte a server sends is untrusted: a reply that is not a
usable completion is a BadResponse, an unusable header is ignored.
Why aiohttp and not httpx: see docs/architecture.md ("Transport choice", measured).
aiohttp is loaded with the session, on the first request: a run answered whole from the
request cache never pays its import (about a third of a second).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import orjson

from ._version import __version__
from .config import Timeouts, is_loopback
from .errors import (
    AUTH_STATUSES,
    BODY_EXCERPT_BYTES,
    AllowanceExhausted,
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
from .ratelimit_headers import zero_allowance
from .streaming import StreamDeadlines, read_completion_stream

if TYPE_CHECKING:
    import aiohttp

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
        self._timeouts = timeouts
        self._headers = {
            "content-type": "application/json",
            "user-agent": f"batchrun/{__version__}",
        }
        if api_key:  # None or empty: a server without authentication gets no header
            bearer = api_key if api_key.startswith("Bearer ") else f"Bearer {api_key}"
            self._headers["authorization"] = bearer
        self._session: aiohttp.ClientSession | None = None
        self._stream_timeout: aiohttp.ClientTimeout | None = None  # made with the session
        self._entered = False
        # The headers of the latest reply, whatever its status: flow control reads the
        # rate-limit headers from it now and then (parsing every reply would cost CPU).
        self.last_headers: Mapping[str, str] | None = None

    async def __aenter__(self) -> ChatClient:
        self._entered = True
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._entered = False
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _open(self) -> aiohttp.ClientSession:
        """The session, made by the first request (no await: the workers that start
        together cannot make two)."""
        assert self._entered, "use ChatClient as an async context manager"
        import aiohttp  # noqa: PLC0415 (see the module docstring)

        connect = self._timeouts.connect
        host = urlsplit(self._endpoint).hostname or ""
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self._concurrency, limit_per_host=0),
            headers=self._headers,
            # `total` bounds a whole non-streamed attempt, connect to last byte: a server
            # dripping one byte at a time must not hold a worker past --timeout. `connect`
            # includes the wait for a pooled connection, which never happens: the pool is
            # as large as the worker count.
            timeout=aiohttp.ClientTimeout(
                total=self._timeouts.read, connect=connect, sock_connect=connect
            ),
            # Proxies from the environment apply to remote APIs, never to this machine.
            trust_env=not is_loopback(host),
            # Nothing a server sets may come back in later requests.
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        # A stream's deadlines count events, not bytes (a keep-alive comment is not
        # progress): StreamDeadlines enforces them, aiohttp only the connect bound.
        self._stream_timeout = aiohttp.ClientTimeout(
            total=None, connect=connect, sock_connect=connect
        )
        return self._session

    async def complete(self, payload: bytes, *, stream: bool = False) -> Reply:
        """Send one request; return the parsed reply or raise a `RequestFailed`.

        The one exception boundary: whatever the transport or a hostile reply raises
        becomes a `RequestFailed` here (see `_translated`); cancellation passes."""
        session = self._session or self._open()
        try:
            if stream:
                return await self._complete_streamed(session, payload)
            async with session.post(
                self._endpoint, data=payload, headers=ACCEPT_JSON, allow_redirects=False
            ) as response:
                self.last_headers = response.headers
                if response.status != 200:
                    raise await _status_error(response)
                body = await response.read()
            return Reply(parse_completion(body))
        except RequestFailed:
            raise
        except Exception as exc:
            raise self._translated(exc, stream) from exc

    async def _complete_streamed(self, session: aiohttp.ClientSession, payload: bytes) -> Reply:
        started = time.perf_counter()
        first_output: list[float] = []

        def on_first_output() -> None:
            first_output.append(time.perf_counter() - started)

        deadlines = StreamDeadlines(self._timeouts.stream_idle, self._timeouts.stream_total)
        assert self._stream_timeout is not None  # made with the session
        with deadlines.scope:
            async with session.post(
                self._endpoint,
                data=payload,
                headers=ACCEPT_EVENTS,
                allow_redirects=False,
                timeout=self._stream_timeout,
            ) as response:
                self.last_headers = response.headers
                if response.status != 200:
                    raise await _status_error(response)
                completion = await read_completion_stream(
                    response.content.iter_any(), on_first_output, deadlines.data_arrived
                )
        deadlines.raise_if_expired()
        _check_finish(completion)
        return Reply(completion, first_output[0] if first_output else None)

    def _translated(self, exc: Exception, stream: bool) -> RequestFailed:
        """Map anything the transport or a hostile reply raised onto the error tree."""
        import aiohttp  # noqa: PLC0415 (loaded already: a request was made)

        if isinstance(exc, TimeoutError):
            # aiohttp's `total` deadline raises a bare TimeoutError; connect timeouts say so.
            return Timeout(str(exc) or f"no complete reply within {self._timeouts.read:g} s")
        if stream and isinstance(exc, aiohttp.ClientPayloadError):
            return StreamTruncated(f"connection lost mid-stream: {_describe(exc)}")
        if isinstance(exc, aiohttp.ClientError | OSError):
            return TransportFailure(_describe(exc))
        # Parser, decoding and arithmetic errors a malformed reply can provoke.
        return BadResponse(f"unusable reply: {_describe(exc)}")


async def _status_error(response: aiohttp.ClientResponse) -> RequestFailed:
    """The error for a non-200 reply, reading no more of its body than a record keeps."""
    excerpt = b""
    while len(excerpt) < BODY_EXCERPT_BYTES:
        piece = await response.content.read(BODY_EXCERPT_BYTES - len(excerpt))
        if not piece:
            break
        excerpt += piece
    return classify_status(response.status, excerpt, response.headers)


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def classify_status(status: int, body: bytes, headers: Mapping[str, str]) -> RequestFailed:
    """Map a non-200 reply onto the error tree (3xx included: redirects are not followed)."""
    if status == 429:
        empty = zero_allowance(status, headers)
        if empty is not None:
            return AllowanceExhausted(body, empty.allowance.value, empty.message)
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
    from email.utils import parsedate_to_datetime  # noqa: PLC0415 (rare: an HTTP date)

    try:
        return parsedate_to_datetime(http_date).timestamp() - now
    except (TypeError, ValueError, IndexError, OverflowError):  # e.g. year 10**20
        return None


def parse_completion(body: bytes) -> dict[str, Any]:
    """A 200 body is usable when it is a JSON object whose `choices` is a non-empty list
    of objects, each carrying a `message` object. That is all a record reader may rely
    on; every other field is kept verbatim, whatever its type. Anything less is a
    BadResponse, retried like a 5xx."""
    try:
        completion = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadResponse(f"200 reply is not valid JSON ({exc.msg})") from None
    if not isinstance(completion, dict):
        raise BadResponse("200 reply is not a chat completion (not a JSON object)")
    choices = completion.get("choices")
    if not isinstance(choices, list) or not choices:
        raise BadResponse("200 reply is not a chat completion (no choices list)")
    for choice in choices:
        if not isinstance(choice, dict) or not isinstance(choice.get("message"), dict):
            raise BadResponse("200 reply is not a chat completion (a choice has no message)")
    _check_finish(completion)
    return completion


def _check_finish(completion: dict[str, Any]) -> None:
    for choice in completion["choices"]:
        if choice.get("finish_reason") == "error":
            raise BadResponse("the server reported finish_reason 'error' mid-generation")
