"""summary.json: counts, tokens per model, latency and TTFT percentiles, throughput.

Built from results.jsonl at the end of every session, so it always describes the whole
batch (all sessions), never just the part this process happened to run.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from .journal import Paths, write_atomic

__all__ = ["SessionInfo", "Totals", "build_summary", "percentiles", "write_summary"]

PERCENTILES = (50, 90, 99)
TOKEN_KEYS = ("requests", "prompt_tokens", "completion_tokens", "total_tokens")


def _count(value: object) -> int:
    return value if isinstance(value, int) else 0


@dataclass
class Totals:
    """Figures accumulated over every record of results.jsonl."""

    ok: int = 0
    failed: int = 0
    attempts: int = 0
    error_types: Counter[str] = field(default_factory=Counter)
    tokens_by_model: dict[str, dict[str, int]] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)
    ttfts_ms: list[float] = field(default_factory=list)
    decode_tokens_per_s: list[float] = field(default_factory=list)

    def add(self, record: dict[str, Any]) -> None:
        self.attempts += int(record.get("attempts") or 0)
        if record.get("status") == "ok":
            self._add_ok(record)
        else:
            self.failed += 1
            error = record.get("error") or {}
            self.error_types[str(error.get("type"))] += 1

    def _add_ok(self, record: dict[str, Any]) -> None:
        self.ok += 1
        response = record.get("response") or {}
        usage = response.get("usage") or {}
        model = str(response.get("model") or "unknown")
        tokens = self.tokens_by_model.get(model)
        if tokens is None:  # not setdefault: that would build a dict for every record
            tokens = self.tokens_by_model[model] = dict.fromkeys(TOKEN_KEYS, 0)
        tokens["requests"] += 1
        prompt = _count(usage.get("prompt_tokens"))
        completion = _count(usage.get("completion_tokens"))
        tokens["prompt_tokens"] += prompt
        tokens["completion_tokens"] += completion
        tokens["total_tokens"] += _count(usage.get("total_tokens"))
        latency = record.get("latency_ms")
        if isinstance(latency, int | float):
            self.latencies_ms.append(latency)
        ttft = record.get("ttft_ms")
        if isinstance(ttft, int | float) and isinstance(latency, int | float):
            self.ttfts_ms.append(ttft)
            generating_s = (latency - ttft) / 1000
            if generating_s > 0 and completion:
                self.decode_tokens_per_s.append(completion / generating_s)

    def token_totals(self) -> dict[str, int]:
        keys = ("prompt_tokens", "completion_tokens", "total_tokens")
        return {k: sum(m[k] for m in self.tokens_by_model.values()) for k in keys}


@dataclass(frozen=True)
class SessionInfo:
    """What only the running process knows: timing and what it sent."""

    status: str  # complete | interrupted | aborted
    started_at: str
    finished_at: str
    wall_time_s: float
    sent: int
    retries: int
    resent_after_interrupt: int
    completed: int
    completion_tokens: int
    total_tokens: int
    reason: str | None = None


def percentiles(values: list[float]) -> dict[str, float] | None:
    """Nearest-rank p50/p90/p99 plus max and mean; None when there is nothing to rank."""
    if not values:
        return None
    ranked = sorted(values)
    last = len(ranked) - 1
    result = {
        f"p{p}": round(ranked[min(last, (p * len(ranked) - 1) // 100)], 2) for p in PERCENTILES
    }
    result["max"] = round(ranked[-1], 2)
    result["mean"] = round(sum(ranked) / len(ranked), 2)
    return result


def read_totals(results: Path) -> Totals:
    totals = Totals()
    if results.exists():
        with results.open("rb") as stream:
            for line in stream:
                totals.add(orjson.loads(line))
    return totals


def build_summary(
    paths: Paths, manifest: dict[str, Any], session: SessionInfo, extra: dict[str, Any]
) -> dict[str, Any]:
    totals = read_totals(paths.results)
    requests = int(manifest["requests"])
    done = totals.ok + totals.failed
    elapsed = session.wall_time_s or 1e-9
    return {
        "batchrun_version": manifest["batchrun_version"],
        "status": session.status,
        "reason": session.reason,
        "input": manifest["input"],
        "input_sha256": manifest["input_sha256"],
        "input_format": manifest["input_format"],
        "counts": {
            "requests": requests,
            "done": done,
            "ok": totals.ok,
            "failed": totals.failed,
            "not_done": requests - done,
            "errors_by_type": dict(sorted(totals.error_types.items())),
        },
        "attempts": {"total": totals.attempts, "retries": max(0, totals.attempts - done)},
        "tokens": totals.token_totals(),
        "tokens_by_model": totals.tokens_by_model,
        "latency_ms": percentiles(totals.latencies_ms),
        "ttft_ms": percentiles(totals.ttfts_ms),
        "decode_tokens_per_s": percentiles(totals.decode_tokens_per_s),
        "session": {
            "started_at": session.started_at,
            "finished_at": session.finished_at,
            "wall_time_s": round(session.wall_time_s, 3),
            "completed": session.completed,
            "requests_sent": session.sent,
            "retries": session.retries,
            "resent_after_interrupt": session.resent_after_interrupt,
            "requests_per_s": round(session.completed / elapsed, 2),
            "tokens_per_s": round(session.total_tokens / elapsed, 2),
            "completion_tokens_per_s": round(session.completion_tokens / elapsed, 2),
        },
        **extra,
    }


def write_summary(paths: Paths, summary: dict[str, Any]) -> None:
    write_atomic(paths.summary, orjson.dumps(summary, option=orjson.OPT_INDENT_2) + b"\n")
