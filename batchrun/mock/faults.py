"""The mock server's config and shared state: which fault and delay each request gets
(header, body, config, fail_rate), whether its allowances admit it (limits.py), the rate-limit
headers it carries and the request log.

Besides faults, a request may script its whole reply (`metadata.mock.raw`: status,
headers, body or events, checked here so the HTTP framing stays intact), name the
assistant content of its completion (`metadata.mock.reply`, for evals whose scores a test
must know) and have any reply dripped one byte at a time (`metadata.mock.drip_ms`).

No sockets here: server.py owns HTTP, replies.py what replies say, kinds.py the fault names.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import itertools
import math
import random
import string
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson

from .kinds import CONTENT_FAULTS, FAULT_KINDS, STREAM_FAULTS
from .limits import Limiter, Quota, Verdict
from .replies import (
    RawReply,
    completion,
    error_body,
    rate_limit_headers,
    refusal_body,
    reply_key,
    retry_headers,
    unauthorized_body,
)

__all__ = ["MockConfig", "MockState", "Plan"]

RANDOM_FAULTS = ("500", "503", "429", "drop")  # what `fail_rate` draws from: all transient
NON_STREAM_TWIN = {
    "cut": "drop",
    "stall": "hang",
    "malformed": "invalid_json",
    "keepalive": "hang",
    "trickle": "hang",
}
# Non-status kinds that are still answered; drop and hang get no status at all.
ANSWERED = {"invalid_json": 200, "redirect": 307, "echo_headers": 400}


@dataclass(frozen=True)
class MockConfig:
    latency_ms: float = 0.0  # added before every chat reply
    jitter_ms: float = 0.0  # + uniform(0, jitter_ms), from the seeded RNG
    fail_rate: float = 0.0  # share of requests given a random transient fault, seeded
    fault: str | None = None  # apply this fault kind to every request
    seed: int = 0
    stream_chunks: int = 8  # content pieces in a streamed reply
    stream_delay_ms: float = 0.0  # delay between streamed chunks
    retry_after_s: float = 1.0  # Retry-After on injected 429s
    require_auth: bool = True  # 401 without "Authorization: Bearer <non-empty>"
    request_log: Path | None = None  # one JSON line per chat request received
    # Provider-like allowances (limits.py), None for none; 0 is an account with no allowance.
    limit_rps: int | None = None
    limit_rpm: int | None = None
    limit_tpm: int | None = None
    limit_tokens_month: int | None = None
    storms: tuple[tuple[float, float], ...] = ()  # (start, end) s after start: every chat 429
    # False: no x-ratelimit-* headers, like a self-hosted server (vLLM, llama.cpp).
    rate_headers: bool = True
    # Read once per chat request; tests pass a fake one to move the windows without waiting.
    clock: Callable[[], float] = field(default=time.monotonic, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.fault is not None and self.fault not in FAULT_KINDS:
            raise ValueError(f"unknown fault {self.fault!r}; one of {', '.join(FAULT_KINDS)}")
        if not 0.0 <= self.fail_rate <= 1.0 or self.stream_chunks < 1:
            raise ValueError("fail_rate must be within [0, 1] and stream_chunks at least 1")
        if min(self.latency_ms, self.jitter_ms, self.stream_delay_ms, self.retry_after_s) < 0:
            raise ValueError("latencies, delays and retry_after_s must not be negative")
        limits = (self.limit_rps, self.limit_rpm, self.limit_tpm, self.limit_tokens_month)
        if any(limit is not None and limit < 0 for limit in limits):
            raise ValueError("limits must not be negative (0 means no allowance)")
        if not all(0 <= start < end for start, end in self.storms):
            raise ValueError("a storm is (start, end) seconds with 0 <= start < end")


@dataclass(slots=True)
class Plan:
    """How to answer one chat request, decided on arrival, before any waiting. Not frozen
    though never changed: one is built per request, and a frozen one costs 2 µs more."""

    delay_s: float
    fault: str | None = None
    error: tuple[int, bytes] | None = None  # a 401/422/400 found before any fault applies
    stream: bool = False  # answer with an event stream (maybe a broken one)
    chunks: int = 8
    chunk_delay_s: float = 0.0
    retry_after: float = 1.0
    retry_after_ms: float | None = None
    raw: RawReply | None = None  # a scripted reply, sent as it is
    drip_s: float = 0.0  # write the reply one byte at a time, this far apart
    headers: bytes = b""  # x-ratelimit-* lines (+ Retry-After on a refusal), as of arrival
    reply: dict[str, Any] | None = None  # the completion, when the answer carries one
    content_fault: str | None = None  # a CONTENT_FAULTS kind, already in `reply`
    refused: str | None = None  # the allowance that answered 429 (limits.Verdict.refused)
    arrived_s: float = 0.0  # seconds after the server started


class MockState:
    """Shared by every connection of one server: config, RNG, counters, allowances, the
    request log. The allowances are lock-free: only the server's loop thread plans."""

    def __init__(self, config: MockConfig) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self.received = 0  # POSTs to the chat path
        self._lock = threading.Lock()  # arrivals and the log are read from other threads
        self._arrivals: dict[bytes, int] = {}
        self._request_ids = itertools.count(1)
        self._clock, self._started = config.clock, config.clock()
        self.limits = Limiter(
            rps=config.limit_rps,
            rpm=config.limit_rpm,
            tpm=config.limit_tpm,
            tokens_month=config.limit_tokens_month,
            storms=config.storms,
            storm_retry_after=config.retry_after_s,
        )
        self._log: IO[bytes] | None = None
        if config.request_log is not None:
            self._log = config.request_log.open("ab")

    def close(self) -> None:
        with self._lock:
            if self._log is not None:
                self._log.close()
                self._log = None

    def record(self, request: dict[str, Any] | None, plan: Plan) -> None:
        """Count a chat request on arrival and log it, flushed: tests read the log right
        after killing the client. `t` is its arrival (s after the start), `status` what
        it is answered (null: dropped or hung), `limit` the allowance that refused it."""
        self.received += 1
        if self._log is None:
            return
        messages = request.get("messages") if request is not None else None
        last = messages[-1] if isinstance(messages, list) and messages else None
        content = last.get("content") if isinstance(last, dict) else None
        stream = request is not None and request.get("stream") is True
        line = {
            "content": content if isinstance(content, str) else None,
            "fault": plan.fault or plan.content_fault,
            "stream": stream,
            "t": round(plan.arrived_s, 6),
            "status": _status(plan),
            "limit": plan.refused,
        }
        data = orjson.dumps(line) + b"\n"
        with self._lock:
            if self._log is not None:
                self._log.write(data)
                self._log.flush()

    def plan(
        self,
        headers: dict[str, str],
        raw: bytes,
        body: dict[str, Any] | None,
        invalid: bytes | None,
    ) -> Plan:
        """Auth, the 422 from `replies.parse_chat`, a bad directive, a scripted reply; then
        fault, the allowances (a refusal is a 429 at once), delay and stream shape."""
        config = self.config
        now = self._clock() - self._started
        delay_ms = config.latency_ms
        if config.jitter_ms:
            delay_ms += self.rng.uniform(0, config.jitter_ms)
        if config.require_auth and not _has_bearer(headers):
            request_id = f"mock-{next(self._request_ids):08x}"
            return self._unmetered(now, delay_ms, 401, unauthorized_body(request_id))
        if body is None or invalid is not None:
            return self._unmetered(now, delay_ms, 422, invalid or b"{}")
        try:
            wish = read_directives(body, headers)
        except BadDirective as exc:
            return self._unmetered(now, delay_ms, 400, error_body(400, str(exc)))
        if wish.raw is not None and self._applies(wish, raw):
            return Plan(
                (delay_ms + wish.latency_ms) / 1000,
                raw=wish.raw,
                chunk_delay_s=(wish.chunk_delay_ms or 0.0) / 1000,
                drip_s=(wish.drip_ms or 0.0) / 1000,
                arrived_s=now,
            )
        stream = body.get("stream") is True
        fault = self._fault(wish, raw) if wish.raw is None else None
        # A content fault is an ordinary 200 (streamed or not) with the wrong content.
        content_fault, fault = (fault, None) if fault in CONTENT_FAULTS else (None, fault)
        if not stream:
            fault = NON_STREAM_TWIN.get(fault or "", fault)
        stream = stream and (fault is None or fault in STREAM_FAULTS)
        # Computed now, not when answering: its usage is what the token windows charge.
        reply = (
            completion(body, reply_key(body), content_fault, wish.reply)
            if fault is None or stream
            else None
        )
        verdict = self._verdict(now, fault, reply)
        if verdict.refused is not None:
            return self._refusal(now, verdict)
        chunk_delay_ms = wish.chunk_delay_ms
        if chunk_delay_ms is None:
            chunk_delay_ms = config.stream_delay_ms
        return Plan(
            (delay_ms + wish.latency_ms) / 1000,
            fault=fault,
            stream=stream,
            chunks=wish.chunks or config.stream_chunks,
            chunk_delay_s=chunk_delay_ms / 1000,
            retry_after=config.retry_after_s if wish.retry_after is None else wish.retry_after,
            retry_after_ms=wish.retry_after_ms,
            drip_s=(wish.drip_ms or 0.0) / 1000,
            headers=self._quota_headers(verdict.quota),
            reply=reply,
            content_fault=content_fault,
            arrived_s=now,
        )

    def _verdict(self, now: float, fault: str | None, reply: dict[str, Any] | None) -> Verdict:
        """Admit and charge the request, or refuse it. An injected 429 is a refusal the
        allowances did not make: like theirs, it counts against nothing."""
        if fault == "429":
            return Verdict(self.limits.view(now))
        return self.limits.admit(now, reply["usage"]["total_tokens"] if reply else 0)

    def _refusal(self, now: float, verdict: Verdict) -> Plan:
        """A 429 sent at once, as a provider's gateway does; Retry-After rounded up to ms."""
        assert verdict.refused is not None
        wait_ms = math.ceil(verdict.retry_after * 1000)
        headers = self._quota_headers(verdict.quota) + retry_headers(wait_ms / 1000, wait_ms)
        body = refusal_body(verdict.refused)
        return Plan(0.0, error=(429, body), headers=headers, refused=verdict.refused, arrived_s=now)

    def _unmetered(self, now: float, delay_ms: float, status: int, body: bytes) -> Plan:
        """A request the allowances never see (401, 422, 400), answered with their headers."""
        headers = self._quota_headers(self.limits.view(now))
        return Plan(delay_ms / 1000, error=(status, body), headers=headers, arrived_s=now)

    def _quota_headers(self, quota: Quota) -> bytes:
        return rate_limit_headers(quota) if self.config.rate_headers else b""

    def _applies(self, wish: Directives, raw: bytes) -> bool:
        """A request's own fault or raw reply holds for its first `times` arrivals."""
        return wish.times is None or self._arrival(raw) <= wish.times

    def _fault(self, wish: Directives, raw: bytes) -> str | None:
        """The request's own fault (within its `times`), else the config's, else `fail_rate`."""
        if wish.fault is not None:
            return wish.fault if self._applies(wish, raw) else None
        if self.config.fault is not None:
            return self.config.fault
        if self.config.fail_rate and self.rng.random() < self.config.fail_rate:
            return self.rng.choice(RANDOM_FAULTS)
        return None

    def _arrival(self, raw: bytes) -> int:
        """How many times this exact body has now arrived (1 on its first arrival)."""
        key = hashlib.sha256(raw).digest()
        with self._lock:
            seen = self._arrivals[key] = self._arrivals.get(key, 0) + 1
        return seen


def _status(plan: Plan) -> int | None:
    """The status a plan answers with; None when the request gets no answer (drop, hang)."""
    if plan.error is not None:
        return plan.error[0]
    if plan.raw is not None:
        return plan.raw.status
    fault = plan.fault
    if fault is None or plan.stream:
        return 200
    return int(fault) if fault.isdigit() else ANSWERED.get(fault)


def _has_bearer(headers: dict[str, str]) -> bool:
    scheme, _, token = headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and bool(token.strip())


# --- what a request asks for ------------------------------------------------------------------


class BadDirective(ValueError):
    """A fault request the mock cannot honour: an unknown kind or a bad count."""


@dataclass(frozen=True, slots=True)
class Directives:
    """What one request asks of the mock; None means "use the server's configuration"."""

    fault: str | None = None
    times: int | None = None  # the fault applies to the first `times` arrivals of the body
    latency_ms: float = 0.0
    chunks: int | None = None
    chunk_delay_ms: float | None = None
    retry_after: float | None = None
    retry_after_ms: float | None = None
    raw: RawReply | None = None
    drip_ms: float | None = None
    reply: str | None = None  # the completion's content, whenever one is sent


def read_directives(request: dict[str, Any], headers: dict[str, str]) -> Directives:
    """`x-mock-fault` (+ `x-mock-fault-times`) headers win over `metadata.mock`, whose
    timing keys apply with or without a fault. Raises BadDirective.

    `metadata.mock.raw` scripts the whole reply instead (see `read_raw`); `times` then
    counts it like a fault, and a normal completion follows.

    `metadata.mock.reply` is the content of every completion the request is answered
    with, streamed or not (see `read_reply`); like the timing keys it holds on every
    arrival, so `{"fault": "500", "times": 2, "reply": "B"}` is two 500s, then "B"."""
    metadata = request.get("metadata")
    mock = metadata.get("mock") if isinstance(metadata, dict) else None
    mock = mock if isinstance(mock, dict) else {}
    if "x-mock-fault" in headers:
        fault: object = headers["x-mock-fault"]
        times: object = _header_int(headers.get("x-mock-fault-times"))
    else:
        fault, times = mock.get("fault"), mock.get("times")
    if fault is not None and fault not in FAULT_KINDS:
        raise BadDirective(f"unknown mock fault {fault!r}; one of {', '.join(FAULT_KINDS)}")
    raw = read_raw(mock["raw"]) if "raw" in mock else None
    if raw is not None and fault is not None:
        raise BadDirective("a mock request takes a fault or a raw reply, not both")
    chunks = _number(mock.get("chunks"))
    scripted = fault is not None or raw is not None
    return Directives(
        fault=str(fault) if fault is not None else None,
        times=_count(times) if scripted and times is not None else None,
        latency_ms=_number(mock.get("latency_ms")) or 0.0,
        chunks=max(1, int(chunks)) if chunks is not None else None,
        chunk_delay_ms=_number(mock.get("chunk_delay_ms")),
        retry_after=_number(mock.get("retry_after")),
        retry_after_ms=_number(mock.get("retry_after_ms")),
        raw=raw,
        drip_ms=_number(mock.get("drip_ms")),
        reply=read_reply(mock["reply"]) if "reply" in mock else None,
    )


def read_reply(value: object) -> str:
    """The assistant content a `metadata.mock.reply` asks for: a string as it is, any
    other JSON value as its compact JSON text (`{"label": "B"}`, `42`, `null`)."""
    if isinstance(value, str):
        return value
    try:
        return orjson.dumps(value).decode()
    except orjson.JSONEncodeError:  # parsed JSON always encodes, but past 255 levels
        raise BadDirective("mock reply is nested too deep to encode") from None


# --- scripted raw replies ---------------------------------------------------------------------

# Header names the mock frames the reply with: a scripted one would break the framing.
FRAMING_HEADERS = frozenset({"content-length", "transfer-encoding", "connection"})
TOKEN_CHARS = frozenset((string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~").encode())
CONTROL_BYTES = frozenset({*range(32), 127}) - {9}  # tab is allowed in a value
NO_BODY_STATUSES = frozenset({204, 205, 304})


def read_raw(spec: object) -> RawReply:
    """`{"status": 200, "headers": [[name, value], ...], "body": "text" | "body_base64":
    "...", "events": ["data payload" | {"raw": "event text"}, ...]}`, every key optional.

    `body` is sent with a Content-Length (UTF-8; `body_base64` for any bytes); `events`
    makes a chunked event stream instead, each item one HTTP chunk: a string is sent as
    `data: <it>\n\n`, `{"raw": text}` verbatim (comments, `event:` lines, half events).
    Content-Type defaults to application/json or text/event-stream. Anything that would
    break HTTP/1.1 framing (CR/LF/NUL in a header, a framing header, a status without a
    body) is a BadDirective, answered 400."""
    if not isinstance(spec, dict):
        raise BadDirective("mock raw must be an object")
    status = spec.get("status", 200)
    if isinstance(status, bool) or not isinstance(status, int) or not 200 <= status <= 599:
        raise BadDirective(f"mock raw status must be an integer in 200..599, not {status!r}")
    if status in NO_BODY_STATUSES:
        raise BadDirective(f"mock raw status {status} cannot carry a body")
    if "body" in spec and "events" in spec:
        raise BadDirective("mock raw takes a body or events, not both")
    events = spec.get("events")
    return RawReply(
        status=status,
        headers=_raw_headers(spec.get("headers", [])),
        body=_raw_body(spec),
        events=None if events is None else tuple(_raw_event(e) for e in _list(events, "events")),
    )


def _list(value: object, name: str) -> list[Any]:
    if not isinstance(value, list):
        raise BadDirective(f"mock raw {name} must be a list")
    return value


def _raw_headers(pairs: object) -> bytes:
    return b"".join(map(_raw_header, _list(pairs, "headers")))


def _raw_header(pair: object) -> bytes:
    if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(p, str) for p in pair)):
        raise BadDirective(f"mock raw header must be [name, value] strings, not {pair!r}")
    name, value = pair[0].lower().encode(), pair[1].encode("utf-8", "surrogatepass")
    if not name or not set(name) <= TOKEN_CHARS or name.decode() in FRAMING_HEADERS:
        raise BadDirective(f"mock raw header name {pair[0]!r} is not allowed")
    if not CONTROL_BYTES.isdisjoint(value):  # CR/LF would end the head early
        raise BadDirective(f"mock raw header {pair[0]!r} has a control character in its value")
    return b"%s: %s\r\n" % (name, value)


def _raw_body(spec: dict[str, Any]) -> bytes:
    body, encoded = spec.get("body"), spec.get("body_base64")
    if body is not None and encoded is not None:
        raise BadDirective("mock raw takes body or body_base64, not both")
    if encoded is not None:
        try:
            return base64.b64decode(str(encoded), validate=True)
        except binascii.Error:
            raise BadDirective("mock raw body_base64 is not base64") from None
    if body is None:
        return b""
    if not isinstance(body, str):
        raise BadDirective("mock raw body must be a string")
    return body.encode("utf-8", "surrogatepass")


def _raw_event(item: object) -> bytes:
    if isinstance(item, str):
        return b"data: %s\n\n" % item.encode("utf-8", "surrogatepass")
    text = item.get("raw") if isinstance(item, dict) else None
    if isinstance(text, str):
        return text.encode("utf-8", "surrogatepass")
    raise BadDirective(f'mock raw event must be a string or {{"raw": text}}, not {item!r}')


def _number(value: object) -> float | None:
    """A usable non-negative option value, else None: a typo must not crash a reply."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) and value >= 0 else None


def _count(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise BadDirective(f"mock fault times must be a non-negative integer, not {value!r}")


def _header_int(value: str | None) -> int | None:
    try:
        return None if value is None else int(value)
    except ValueError:
        raise BadDirective(f"x-mock-fault-times must be an integer, not {value!r}") from None
