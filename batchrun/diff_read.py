"""One run as `diff` reads it: every record in index order, decoded once and folded, in
that same pass, into the run's figures (`RunFigures`) and one compact `Line` tuple per
line for the join to compare.

Speed is this module's reason to exist: `diff` of two 200,000-line runs must stay within
3x of merely decoding both results.jsonl (benchmarks/diff_speed.py). Reading each record
through `Record`'s properties into summary.py's `Totals.add` costs about 2.5x the decode
on its own, so the fold reads the decoded object directly, by the same type rules as
`Record` (a field of the wrong type is absent, a bool is no number), into the figures
`Totals.add` would give for what diff shows; tests/test_diff_read.py checks the two agree
on any record. Plain tuples and one loop with local names, not a class per line, for the
same reason.

Records are those summary.py counts: results.jsonl, then the last journal record of each
index beyond it (lines done past a gap; only their offsets are kept while looking). A
run still being written is read as far as it got; nothing is written.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from .journal import latest_lines
from .outdir import Paths
from .prices import PriceTable, Tokens
from .records import Record
from .summary import Totals, cost_section, percentiles

__all__ = ["Key", "Line", "RunFigures", "ScoreMarks", "read_lines", "reread_output"]

Key = str | int
# One line: (custom_id, index, ok, error type, output digest (None when failed), the
# scorers it passed, its slice, where its record lies: offset * 2 + 1 in the journal,
# offset * 2 in results.jsonl).
Line = tuple[str | None, int | None, bool, str | None, int | None, frozenset[str], str | None, int]
Combo = tuple[tuple[str, object], ...]  # a record's `score`, as hashable items

NO_PASS: frozenset[str] = frozenset()
NO_SCORE = b""  # a record without a `score` object, as a tally's key
_USAGE = operator.itemgetter("prompt_tokens", "completion_tokens", "total_tokens")
_NO_OBJECT: dict[str, Any] = {}


class ScoreMarks:
    """Every distinct `score` object seen in either run, once, by its JSON bytes (exact:
    1, 1.0 and true differ there, not as dict keys): as hashable items, and the scorers
    it passes. Shared by both runs, so lines scored alike hold the very same frozenset.
    A scorer passes only on the integer 1, as scoreboard.py counts it."""

    def __init__(self) -> None:
        self.known: dict[bytes, tuple[Combo, frozenset[str]]] = {}

    def add(self, score: dict[str, Any], key: bytes) -> tuple[Combo, frozenset[str]]:
        """A `score` not seen before, stored under `key` (its JSON bytes)."""
        # Only an int can be a mark: anything else becomes None, which also keeps the
        # items hashable whatever the record holds (a list).
        items = tuple((k, v if type(v) is int else None) for k, v in score.items())
        entry = self.known[key] = (items, frozenset(k for k, v in items if v == 1))
        return entry


@dataclass
class RunFigures:
    """What diff shows of one run: counts, tokens and latency (as `Totals` sums them),
    and the score tallies, (slice, combo or None) -> lines, for scoreboard.ScoreBoard."""

    ok: int = 0
    failed: int = 0
    # model -> [requests, prompt, completion, total]; cached: model -> [prompt, completion]
    tokens: dict[str, list[int]] = field(default_factory=dict)
    cached_tokens: dict[str, list[int]] = field(default_factory=dict)
    cached: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    # (slice, the record's `score` as JSON (ScoreMarks) or NO_SCORE, ok) -> lines
    scores: dict[tuple[str | None, bytes, bool], int] = field(default_factory=dict)

    def scorer_names(self, marks: ScoreMarks) -> list[str]:
        """Every scorer named in a record's `score`, in first-seen order."""
        names: dict[str, None] = {}
        for _, key, _ in self.scores:
            if key != NO_SCORE:
                names.update(dict.fromkeys(name for name, _ in marks.known[key][0]))
        return list(names)

    def totals(self) -> Totals:
        """These figures as a `Totals`, for summary.py's token and cost arithmetic. Only
        the fields diff reads are filled: counts, tokens, cache and latencies."""
        keys = ("requests", "prompt_tokens", "completion_tokens", "total_tokens")
        return Totals(
            ok=self.ok,
            failed=self.failed,
            tokens_by_model={m: dict(zip(keys, c, strict=True)) for m, c in self.tokens.items()},
            latencies_ms=self.latencies_ms,
            cached=self.cached,
            cached_tokens_by_model={m: Tokens(*c) for m, c in self.cached_tokens.items()},
        )

    def to_json(self, outdir: str, prices: PriceTable) -> dict[str, Any]:
        totals = self.totals()
        return {
            "outdir": outdir,
            "lines": self.ok + self.failed,
            "ok": self.ok,
            "failed": self.failed,
            "tokens": totals.token_totals(),
            "cost_usd": cost_section(totals, prices)["total_usd"],
            "latency_ms": percentiles(self.latencies_ms),
        }


def read_lines(paths: Paths, figures: RunFigures, marks: ScoreMarks) -> Iterator[Line]:  # noqa: PLR0915
    """Every line of the run at `paths`, its record folded into `figures` on the way.
    One function on purpose: a call per field would cost more than the decode."""
    loads, dumps, decode_error = orjson.loads, orjson.dumps, orjson.JSONDecodeError
    tokens, cached_tokens, latencies = figures.tokens, figures.cached_tokens, figures.latencies_ms
    tally, known, usage_of = figures.scores, marks.known, _USAGE
    complete = [0]  # newline-ended lines of results.jsonl, for `_sources` once read
    for lines, start, in_journal in _sources(paths, complete):
        offset, count, raw = start, 0, b""
        for count, raw in enumerate(lines, 1):  # noqa: B007 (read after the loop)
            where = offset * 2 + in_journal
            offset += len(raw)
            try:
                data = loads(raw)
            except decode_error:
                continue  # a torn last line of a run being written, or no JSON at all
            if type(data) is not dict:
                continue
            custom_id = data.get("custom_id")
            if type(custom_id) is not str:
                custom_id = None
            index = data.get("index")
            if type(index) is not int:
                index = None
            slice_ = data.get("slice")
            if type(slice_) is not str:
                slice_ = None
            ok = data.get("status") == "ok"
            score = data.get("score")
            score_key, passed = NO_SCORE, NO_PASS
            if type(score) is dict:
                score_key = dumps(score)  # its hash, once made here, is kept by the bytes
                entry = known.get(score_key)
                passed = (entry if entry is not None else marks.add(score, score_key))[1]
            if ok:
                figures.ok += 1
                try:  # the usual shape in one go; a subscript of any other shape raises
                    response = data["response"]
                    content = response["choices"][0]["message"]["content"]
                except (KeyError, TypeError, IndexError):
                    response = data.get("response")
                    if type(response) is not dict:
                        response = _NO_OBJECT
                    content = None
                model = response.get("model")
                if type(model) is not str:
                    model = "unknown"
                try:
                    prompt, completion, total = usage_of(response["usage"])
                except (KeyError, TypeError):
                    prompt = completion = total = None
                if type(prompt) is not int or prompt < 0:
                    prompt = 0
                if type(completion) is not int or completion < 0:
                    completion = 0
                if type(total) is not int or total < 0:
                    total = 0
                counts = tokens.get(model)
                if counts is None:
                    counts = tokens[model] = [0, 0, 0, 0]
                counts[0] += 1
                counts[1] += prompt
                counts[2] += completion
                counts[3] += total
                if data.get("cached") is True:  # no request was made: nothing to time
                    figures.cached += 1
                    saved = cached_tokens.get(model)
                    if saved is None:
                        saved = cached_tokens[model] = [0, 0]
                    saved[0] += prompt
                    saved[1] += completion
                else:
                    latency = data.get("latency_ms")
                    if type(latency) is float or type(latency) is int:
                        latencies.append(latency)
                digest = hash(content) if type(content) is str else _other_digest(data)
                error_type = None
            else:
                figures.failed += 1
                error = data.get("error")
                error_type = error.get("type") if type(error) is dict else None
                if type(error_type) is not str:
                    error_type = None
                digest, passed = None, NO_PASS  # a failed request is unscored: it passes none
            key = (slice_, score_key, ok)
            tally[key] = tally.get(key, 0) + 1
            yield (custom_id, index, ok, error_type, digest, passed, slice_, where)
        if not in_journal:
            complete[0] = count - (count > 0 and not raw.endswith(b"\n"))


def _other_digest(data: dict[str, Any]) -> int:
    """64 bits of an output that is not one plain string: its text chunks joined, else the
    whole first choice (tool calls). Python's own hash: both runs are hashed in this one
    process, so its per-process seed does not matter."""
    record = Record(data)
    content = record.content
    if content is not None:
        return hash(content)
    choices = (record.response or _NO_OBJECT).get("choices")
    return hash(orjson.dumps(choices, option=orjson.OPT_SORT_KEYS, default=repr))


def _sources(paths: Paths, complete: list[int]) -> Iterator[tuple[Iterable[bytes], int, int]]:
    """Where a run's records lie, as (lines, offset of the first, 1 if in the journal):
    results.jsonl, then the last journal record of each index beyond it, which is
    `complete[0]` once results.jsonl is read (its torn last line is no record yet)."""
    if paths.results.exists():
        with paths.results.open("rb") as stream:
            yield stream, 0, 0
    if not paths.journal.exists():
        return
    with paths.journal.open("rb") as stream:
        for _, offset in latest_lines(stream, complete[0])[0]:
            stream.seek(offset)
            yield [stream.readline()], offset, 1


def reread_output(paths: Paths, where: int) -> str | None:
    """The output text of the record at `where` (see `Line`), for an example shown."""
    file = paths.journal if where & 1 else paths.results
    with file.open("rb") as stream:
        stream.seek(where >> 1)
        record = Record.parse(stream.readline())
    return None if record is None else record.content
