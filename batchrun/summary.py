"""summary.json: counts, tokens and cost per model, latency and TTFT percentiles, throughput.

Built from results.jsonl, plus the journal records of lines done beyond a gap (a run
stopped early), at the end of every session, so it always describes the whole batch
(all sessions), never just the part this process happened to run. A record may
hold any JSON shape (a server's reply is kept verbatim, old files may be edited): it is
read as a `Record`, where a field of the wrong type counts as absent, never as an error.

Rates mean what they say:
* `session.requests_per_s` is requests sent by this session (retries included) per
  second of wall time, and `session.lines_per_s` lines it completed per second; each is
  null when there is nothing to count (a session that sent nothing has no request rate).
* `decode_tokens_per_s` is per streamed record: (completion_tokens - 1) / (latency -
  ttft), the pace of the tokens after the first. A record counts only when that output
  took at least MIN_DECODE_MS to arrive: a shorter span measures how fast this process
  read its socket (a server that sends every chunk at once), not how fast the model
  generated, and would show absurd figures.

The `cache` section (null when no session used the request cache): `hits` are the
records answered from the cache (every session, like the counts), with the `tokens_saved`
their usage reports and what those tokens would have cost (`cost_saved_usd`, priced
models only); `misses` and `stored` are this session's lookups that found nothing and
replies written to the cache. A hit is not a request: it adds to no latency or TTFT
percentile, to no retry count, and to no `cost` (what was paid; `tokens` still counts
every reply's usage).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from .evals import EvalSpec, eval_section
from .outdir import Paths, write_atomic
from .prices import PriceTable, Tokens, actual_cost
from .records import Record, usage_count
from .scoreboard import FailUnder, ScoreBoard

__all__ = [
    "CacheSession",
    "SessionInfo",
    "Totals",
    "build_summary",
    "cost_section",
    "percentiles",
    "read_totals",
    "write_summary",
]

Span = tuple[int, int]  # (offset, length) of one record in journal.jsonl

PERCENTILES = (50, 90, 99)
TOKEN_KEYS = ("requests", "prompt_tokens", "completion_tokens", "total_tokens")
MIN_DECODE_MS = 50.0
STRUCTURED_KEYS = (
    *("lines_checked", "parsed_ok", "violations_reasked", "violations_recorded"),
    "discarded_tokens",  # usage of the refused replies: paid for, in no `tokens` figure
)
NO_TOKENS = Tokens(0, 0)


@dataclass
class Totals:
    """Figures accumulated over every record of results.jsonl."""

    ok: int = 0
    failed: int = 0
    attempts: int = 0
    retries: int = 0  # attempts past each line's first (a line never sent has none)
    error_types: Counter[str] = field(default_factory=Counter)
    tokens_by_model: dict[str, dict[str, int]] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)
    ttfts_ms: list[float] = field(default_factory=list)
    decode_tokens_per_s: list[float] = field(default_factory=list)
    structured: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STRUCTURED_KEYS, 0))
    cached: int = 0  # ok records answered from the request cache
    cached_tokens_by_model: dict[str, Tokens] = field(default_factory=dict)
    board: ScoreBoard | None = None  # an eval run's scores (a failed line is unscored)

    def add(self, record: Record | None) -> None:
        if record is None:
            return  # not a record at all: nothing in it can be counted
        attempts = record.attempts or 0
        self.attempts += attempts
        self.retries += attempts - 1 if attempts > 1 else 0
        schema_attempts = record.schema_attempts
        if schema_attempts is not None:
            self._add_structured(record, schema_attempts)
        ok = record.status == "ok"
        if ok:
            self._add_ok(record)
        else:
            self.failed += 1
            kind = record.error_type
            self.error_types[kind if kind is not None else "unknown"] += 1
        if self.board is not None:
            self.board.add(record.score if ok else None, record.slice)

    def _add_structured(self, record: Record, schema_attempts: int) -> None:
        """A line that asked for structured output: every reply after the first was a
        re-ask for a violation; the line ended parsed, as a violation, or otherwise."""
        counts = self.structured
        counts["lines_checked"] += 1
        counts["violations_reasked"] += max(0, schema_attempts - 1)
        counts["discarded_tokens"] += record.discarded_tokens or 0
        if record.status == "ok":
            counts["parsed_ok"] += 1
        elif record.error_type == "schema_violation":
            counts["violations_recorded"] += 1

    def _add_ok(self, record: Record) -> None:
        self.ok += 1
        model = record.model or "unknown"
        tokens = self.tokens_by_model.get(model)
        if tokens is None:  # not setdefault: that would build a dict for every record
            tokens = self.tokens_by_model[model] = dict.fromkeys(TOKEN_KEYS, 0)
        tokens["requests"] += 1
        usage = record.usage  # read once: every record of a run passes here
        prompt = usage_count(usage, "prompt_tokens") or 0
        completion = usage_count(usage, "completion_tokens") or 0
        tokens["prompt_tokens"] += prompt
        tokens["completion_tokens"] += completion
        tokens["total_tokens"] += usage_count(usage, "total_tokens") or 0
        if record.cached:
            self._add_cached(model, prompt, completion)
            return  # no request was made: nothing to time
        latency = record.latency_ms
        if latency is not None:
            self.latencies_ms.append(latency)
            ttft = record.ttft_ms
            if ttft is not None:
                self._add_stream_timing(latency, ttft, completion)

    def _add_cached(self, model: str, prompt: int, completion: int) -> None:
        self.cached += 1
        saved = self.cached_tokens_by_model.get(model)
        if saved is not None:
            prompt, completion = saved.prompt + prompt, saved.completion + completion
        self.cached_tokens_by_model[model] = Tokens(prompt, completion)

    def _add_stream_timing(self, latency: float, ttft: float, completion: int) -> None:
        self.ttfts_ms.append(ttft)
        decode_ms = latency - ttft
        if decode_ms >= MIN_DECODE_MS and completion > 1:
            self.decode_tokens_per_s.append((completion - 1) / (decode_ms / 1000))

    def token_totals(self) -> dict[str, int]:
        keys = ("prompt_tokens", "completion_tokens", "total_tokens")
        return {k: sum(m[k] for m in self.tokens_by_model.values()) for k in keys}

    def cached_tokens(self) -> int:
        """Tokens of the replies that came from the request cache: in the records, not paid."""
        return sum(t.prompt + t.completion for t in self.cached_tokens_by_model.values())

    def tokens_used(self) -> dict[str, Tokens]:
        """Prompt and completion tokens per model that were paid for, as
        prices.actual_cost takes them: replies from the request cache are left out."""
        used = {}
        for model, tokens in self.tokens_by_model.items():
            saved = self.cached_tokens_by_model.get(model, NO_TOKENS)
            prompt = tokens["prompt_tokens"] - saved.prompt
            used[model] = Tokens(prompt, tokens["completion_tokens"] - saved.completion)
        return used


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
    cache: CacheSession | None = None  # this session ran with --cache


@dataclass(frozen=True)
class CacheSession:
    """The request cache as this session used it."""

    directory: Path
    misses: int
    stored: int


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


def read_totals(
    results: Path,
    journal: Path | None = None,
    spans: Iterable[Span] = (),
    board: ScoreBoard | None = None,
) -> Totals:
    """Totals over results.jsonl plus the journal records at `spans`: lines done but not
    yet in the ordered results (a run stopped with gaps below them) still count. `board`
    adds up the records' eval scores."""
    totals = Totals(board=board)
    if results.exists():
        with results.open("rb") as stream:
            for line in stream:
                totals.add(Record.parse(line))
    if journal is not None and journal.exists():
        with journal.open("rb") as stream:
            for offset, length in spans:
                stream.seek(offset)
                totals.add(Record.parse(stream.read(length)))
    return totals


def build_summary(
    paths: Paths,
    manifest: dict[str, Any],
    session: SessionInfo,
    extra: dict[str, Any],
    pending: Iterable[Span] = (),
    *,
    prices: PriceTable | None = None,
    evaluation: EvalSpec | None = None,
    bar: FailUnder | None = None,
) -> dict[str, Any]:
    """`pending`: journal spans of records done but not yet in results.jsonl.
    `prices`: the table costs are computed with (the bundled one if None).
    `evaluation`: an eval job's [eval], whose scores make the `eval` section, judged
    against `bar`."""
    board = None if evaluation is None else evaluation.board()
    totals = read_totals(paths.results, paths.journal, pending, board)
    prices = prices or PriceTable.bundled()
    requests = int(manifest["requests"])
    done = totals.ok + totals.failed
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
        # Schema re-asks are attempts too, but no transport retries: counted apart.
        "attempts": {
            "total": totals.attempts,
            "retries": max(0, totals.retries - totals.structured["violations_reasked"]),
        },
        "tokens": totals.token_totals(),
        "tokens_by_model": totals.tokens_by_model,
        "cost": cost_section(totals, prices),
        "latency_ms": percentiles(totals.latencies_ms),
        "ttft_ms": percentiles(totals.ttfts_ms),
        "decode_tokens_per_s": percentiles(totals.decode_tokens_per_s),
        "structured": totals.structured,
        "session": {
            "started_at": session.started_at,
            "finished_at": session.finished_at,
            "wall_time_s": round(session.wall_time_s, 3),
            "completed": session.completed,
            "requests_sent": session.sent,
            "retries": session.retries,
            "resent_after_interrupt": session.resent_after_interrupt,
            **_session_rates(session),
        },
        "cache": _cache_section(totals, session.cache, prices),
        "eval": _eval_section(evaluation, board, bar),
        **extra,
    }


def _eval_section(
    evaluation: EvalSpec | None, board: ScoreBoard | None, bar: FailUnder | None
) -> dict[str, Any] | None:
    if evaluation is None or board is None:
        return None
    return eval_section(evaluation, board, bar)


def cost_section(totals: Totals, prices: PriceTable) -> dict[str, Any]:
    """USD per model and in total, priced from the summed tokens (one exact product per
    model), and the price each figure used with its source. A model with no price costs
    null with a note: the total covers priced models only, `unpriced` names the rest."""
    used = totals.tokens_used()
    return {**actual_cost(prices, used).to_dict(), "prices": prices.used(used)}


def _cache_section(
    totals: Totals, session: CacheSession | None, prices: PriceTable
) -> dict[str, Any] | None:
    if session is None and not totals.cached:
        return None
    saved = totals.cached_tokens_by_model
    prompt = sum(t.prompt for t in saved.values())
    completion = sum(t.completion for t in saved.values())
    cost = actual_cost(prices, saved)
    return {
        "directory": None if session is None else str(session.directory),
        "hits": totals.cached,
        "misses": 0 if session is None else session.misses,
        "stored": 0 if session is None else session.stored,
        "tokens_saved": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        },
        "cost_saved_usd": cost.total_usd,
        "cost_saved_by_model": {c.model: c.usd for c in cost.models},
        "unpriced": list(cost.unpriced),
    }


def _session_rates(session: SessionInfo) -> dict[str, float | None]:
    """Per second of wall time; null where the session did nothing to measure."""
    elapsed = session.wall_time_s

    def rate(count: int, meaningful: bool) -> float | None:
        return round(count / elapsed, 2) if meaningful and elapsed > 0 else None

    sent = session.sent > 0
    return {
        "requests_per_s": rate(session.sent, sent),
        "lines_per_s": rate(session.completed, session.completed > 0),
        "tokens_per_s": rate(session.total_tokens, sent),
        "completion_tokens_per_s": rate(session.completion_tokens, sent),
    }


def write_summary(paths: Paths, summary: dict[str, Any]) -> None:
    write_atomic(paths.summary, orjson.dumps(summary, option=orjson.OPT_INDENT_2) + b"\n")
