"""The mock server's state and choices: its config, which fault each request gets,
the request log and rate-limit headers. The HTTP side is mockserver.py.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

import orjson

from .mockreply import digest

__all__ = ["FAULT_KINDS", "MockConfig", "MockRequest", "MockState", "Plan"]

STATUS_FAULTS = ("429", "408", "409", "500", "502", "503", "504", "400", "401", "403", "404", "422")
FAULT_KINDS: tuple[str, ...] = (
    *STATUS_FAULTS,
    "drop",
    "hang",
    "invalid_json",
    "redirect",
    "cut",
    "stall",
    "malformed",
)
RANDOM_FAULTS = ("500", "503", "429", "drop")
# For a request that is not streamed, the stream-only faults fall back to their twin.
NON_STREAM_TWIN = {"cut": "drop", "stall": "hang", "malformed": "invalid_json"}
RPM_LIMIT, TPM_LIMIT = 100_000, 50_000_000


class Abortable(Protocol):
    def abort(self) -> None: ...


@dataclass(frozen=True)
class MockConfig:
    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    fail_rate: float = 0.0
    fault: str | None = None
    seed: int = 0
    stream_chunks: int = 8
    stream_delay_ms: float = 0.0
    retry_after_s: float = 1.0
    require_auth: bool = True
    request_log: Path | None = None

    def __post_init__(self) -> None:
        if self.fault is not None and self.fault not in FAULT_KINDS:
            raise ValueError(f"unknown fault {self.fault!r}; one of {', '.join(FAULT_KINDS)}")


@dataclass(frozen=True, slots=True)
class MockRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    keep_alive: bool


@dataclass(frozen=True, slots=True)
class Plan:
    """What to do with one chat request, decided before any waiting."""

    fault: str | None
    delay_s: float
    stream: bool
    chunks: int
    chunk_delay_s: float
    retry_after: float
    retry_after_ms: float | None


class MockState:
    """Shared by every connection of one server: config, counters, the request log."""

    def __init__(self, config: MockConfig) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self.arrivals: dict[bytes, int] = {}
        self.received = 0
        self.window = (0, 0)  # (minute, requests in it), for rate-limit headers
        self.connections: set[Abortable] = set()
        self.log: IO[bytes] | None = None
        if config.request_log is not None:
            self.log = config.request_log.open("ab")

    def close(self) -> None:
        for connection in list(self.connections):
            connection.abort()
        if self.log is not None:
            self.log.close()

    def record(self, request: dict[str, Any] | None, fault: str | None, stream: bool) -> None:
        self.received += 1
        if self.log is None:
            return
        content = None
        if request and isinstance(request.get("messages"), list) and request["messages"]:
            last = request["messages"][-1]
            content = last.get("content") if isinstance(last, dict) else None
        line = {
            "content": content if isinstance(content, str) else None,
            "fault": fault,
            "stream": stream,
        }
        self.log.write(orjson.dumps(line) + b"\n")
        self.log.flush()

    def rate_headers(self, tokens: int) -> list[tuple[str, str]]:
        minute = int(time.time() // 60)
        count = self.window[1] + 1 if self.window[0] == minute else 1
        self.window = (minute, count)
        return [
            ("x-ratelimit-limit-req-minute", str(RPM_LIMIT)),
            ("x-ratelimit-remaining-req-minute", str(max(0, RPM_LIMIT - count))),
            ("x-ratelimit-limit-tokens-minute", str(TPM_LIMIT)),
            ("x-ratelimit-remaining-tokens-minute", str(max(0, TPM_LIMIT - count * tokens))),
            ("x-ratelimit-tokens-query-cost", str(tokens)),
        ]

    def plan(self, request: MockRequest, body: dict[str, Any]) -> Plan:
        mock = (
            (body.get("metadata") or {}).get("mock")
            if isinstance(body.get("metadata"), dict)
            else None
        )
        mock = mock if isinstance(mock, dict) else {}
        config = self.config
        fault, times = self._choose_fault(request.headers, mock)
        if fault is not None and times is not None:
            key = digest(request.body)
            self.arrivals[key] = seen = self.arrivals.get(key, 0) + 1
            if seen > times:
                fault = None
        stream = body.get("stream") is True
        if fault in NON_STREAM_TWIN and not stream:
            fault = NON_STREAM_TWIN[fault]
        delay = config.latency_ms + float(mock.get("latency_ms", 0))
        if config.jitter_ms:
            delay += self.rng.uniform(0, config.jitter_ms)
        return Plan(
            fault=fault,
            delay_s=delay / 1000,
            stream=stream,
            chunks=int(mock.get("chunks", config.stream_chunks)),
            chunk_delay_s=float(mock.get("chunk_delay_ms", config.stream_delay_ms)) / 1000,
            retry_after=float(mock.get("retry_after", config.retry_after_s)),
            retry_after_ms=mock.get("retry_after_ms"),
        )

    def _choose_fault(
        self, headers: dict[str, str], mock: dict[str, Any]
    ) -> tuple[str | None, int | None]:
        if "x-mock-fault" in headers:
            times = headers.get("x-mock-fault-times")
            return headers["x-mock-fault"], int(times) if times else None
        if isinstance(mock.get("fault"), str):
            times = mock.get("times")
            return mock["fault"], times if isinstance(times, int) else None
        if self.config.fault is not None:
            return self.config.fault, None
        if self.config.fail_rate and self.rng.random() < self.config.fail_rate:
            return self.rng.choice(RANDOM_FAULTS), None
        return None, None
