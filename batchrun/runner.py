"""The run: one task group holding the dispatcher, N workers and the writer.

reader -> dispatcher -(unbuffered channel)-> workers (worker.py) -(bounded channel)-> writer.
Ctrl-C cancels the dispatcher and gives in-flight requests a grace period; a stop rule
cancels the workers, a guard only the dispatcher; either way the writer drains what
completed. How the run ended is an `Outcome` (outcome.py), which owns the exit codes.
"""

from __future__ import annotations

import contextlib
import math
from datetime import UTC, datetime
from typing import Any

import anyio
import orjson
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from rich.console import Console
from rich.text import Text

from .cache_run import RunCache
from .checkfile import refuse_unpriced
from .client import ChatClient
from .config import RunConfig
from .errors import Aborted, InputError
from .flow import FlowControl
from .journal import ResumeState, SentLog
from .outcome import Outcome, RunReport
from .outdir import Paths, write_failed
from .prepare import api_key_for, open_run
from .prices import PriceTable, load_prices
from .progress import LiveStats, ProgressDisplay, error_digest, stderr_console
from .reader import InputFormat, InputScan, unused_model_warning
from .records import BadLine, Completed, Request, error_record
from .results import ResultWriter
from .retry import RetryPolicy
from .rows import iter_lines, make_parser, write_rows
from .scoreboard import FailUnder
from .shutdown import Shutdown
from .stops import GuardRules, Stop, StopKind, StopRules
from .summary import (
    CacheSession,
    SessionInfo,
    Totals,
    build_summary,
    read_totals,
    write_summary,
)
from .worker import Worker

__all__ = ["RunReport", "run_batch"]

TICK_S = 0.25
MAX_BATCH = 4096


async def run_batch(
    config: RunConfig,
    *,
    api_key: str | None = None,
    console: Console | None = None,
    show_progress: bool = False,
) -> RunReport:
    """Run (or resume) the batch described by `config`; never raises for a bad line.

    `api_key` overrides the environment variable named by `config.api_key_env`; with
    `config.no_api_key` no key is read or sent.
    The input is read as the snapshot that was hashed: standard input (`-`) and pipes
    are first copied into OUTDIR/input.jsonl so a rerun can resume from them. An input
    that yields fewer lines during the run than when it was scanned (cut short or
    replaced under us) raises `InputError` (exit 1) once the lines read are written."""
    key = api_key_for(config, api_key)
    bar = config.eval_bar()
    prices = load_prices(config.prices_file, config.price_overrides)
    # Opened (created) before OUTDIR is touched: an unusable cache is a config error.
    cache = None
    if config.cache_dir is not None:
        cache = RunCache.open(config.cache_dir, config.cache_server or config.endpoint)
    config, scan, lock, state = await open_run(config, console)
    try:
        if config.guards.max_cost is not None:
            await anyio.to_thread.run_sync(refuse_unpriced, config, scan, prices, state.is_done)
        async with ChatClient(
            config.endpoint, key, concurrency=config.concurrency, timeouts=config.timeouts
        ) as client:
            run = _Run(config, scan, state, client, prices, cache=cache, bar=bar)
            return await run.execute(console, show_progress, secret=key)
    finally:
        lock.release()


class _Run:
    _write_error: Aborted | None = None  # the first failed write to OUTDIR
    stop: Stop | None = None  # why the run stopped early, if a rule or guard said so

    def __init__(
        self,
        config: RunConfig,
        scan: InputScan,
        state: ResumeState,
        client: ChatClient,
        prices: PriceTable,
        *,
        cache: RunCache | None = None,
        bar: FailUnder | None = None,
    ) -> None:
        self.config = config
        self.prices = prices
        self.cache = cache
        self.bar = bar  # an eval's fail_under, judged once every record is in
        self.scan = scan
        self.state = state
        self.client = client
        self.paths = Paths(config.outdir)
        total = scan.requests if config.limit is None else min(scan.requests, config.limit)
        self.stats = LiveStats(total=total, done_before=state.done[:total].count(1))
        self.policy = RetryPolicy(config.retry)
        before = self._used_before()
        self.guards = GuardRules(
            config.guards,
            tokens_before=before.token_totals()["total_tokens"] - before.cached_tokens(),
            prices=prices,
            used_before=before.tokens_used(),
        )
        self.parser = make_parser(config, scan.format, estimate=self.guards.counts_tokens)
        self.flow = FlowControl(
            config.pace,
            config.concurrency,
            lambda: client.last_headers,
            on_token_limit=self._estimate_tokens,
        )
        self._dispatch_scope = anyio.CancelScope()
        self._work_scope = anyio.CancelScope()
        self.shutdown = Shutdown(
            config.grace_period,
            in_flight=lambda: self.stats.in_flight,
            stop_sending=self._dispatch_scope.cancel,
            cancel_in_flight=self._work_scope.cancel,
            say=self._say,
        )
        self._started_at = datetime.now(UTC)
        self._console: Console | None = None

    async def execute(
        self, console: Console | None, show_progress: bool, *, secret: str | None = None
    ) -> RunReport:
        """Run every task; a write to OUTDIR that fails stops the run as `Aborted`
        (exit 3) naming the file, after everything that could be written was."""
        writer = ResultWriter(
            self.paths,
            self.state,
            secret=secret,
            batch_output=self.config.output_format is not None,
        )
        try:
            sent_log = SentLog(self.paths, self.scan.requests)
        except Aborted:
            writer.close()
            raise
        self._console = console or (stderr_console() if show_progress else None)
        try:
            if show_progress:
                self._announce()
                with ProgressDisplay(self.stats, self._console) as display:
                    await self._run_tasks(writer, sent_log, display)
            else:
                await self._run_tasks(writer, sent_log, None)
        except* OSError as group:
            # Writes to OUTDIR are caught where they happen; this is any other I/O failure.
            raise Aborted(f"fatal I/O error: {group.exceptions[0]}; rerun to resume") from group
        finally:
            writer.close()
            sent_log.close()
        if self._write_error is not None:
            raise self._write_error
        try:
            report = self._finish()
        except OSError as exc:
            raise write_failed(self.paths.summary, exc) from exc
        self._check_snapshot_read(writer.next_index)
        return report

    def _used_before(self) -> Totals:
        """What the records of earlier sessions used, read only when a token or cost
        guard needs it: their limits are for the whole OUTDIR."""
        guards = self.config.guards
        if (guards.max_tokens_total is None and guards.max_cost is None) or not self.state.resumed:
            return Totals()
        return read_totals(self.paths.results, self.paths.journal, self._pending_spans())

    def _pending_spans(self) -> list[tuple[int, int]]:
        """Journal spans of lines done beyond a gap: in the journal, not in results."""
        return sorted((offset, length) for offset, length, _ in self.state.pending.values())

    def _estimate_tokens(self) -> None:
        """A token rate is in force (given or learned): lines parsed from now on carry
        their estimated cost."""
        self.parser.estimate = True

    def _stop_writing(self, error: Aborted) -> None:
        if self._write_error is None:
            self._write_error = error
            self._stop(Stop(StopKind.WRITE_FAILED, str(error)))

    def _check_snapshot_read(self, written: int) -> None:
        """A run that was not stopped wrote every request line it read; fewer than the
        scan counted means the input shrank or was replaced while we read it."""
        expected = self.stats.total
        if self.stop is None and not self.shutdown.interrupted and written < expected:
            raise InputError(
                f"{self.config.input_path} changed while the run read it: {expected} request "
                f"lines were hashed before the run but only {written} could be read back. "
                "The results so far are kept; restore the input and rerun to resume, or "
                "use --fresh."
            )

    async def _run_tasks(
        self, writer: ResultWriter, sent_log: SentLog, display: ProgressDisplay | None
    ) -> None:
        done_send, done_recv = anyio.create_memory_object_stream[Completed](
            max_buffer_size=self.config.concurrency * 4
        )
        async with anyio.create_task_group() as outer:
            outer.start_soon(self._write_all, writer, done_recv)
            async with anyio.create_task_group() as side:
                side.start_soon(self.shutdown.watch, side)
                if self.config.guards.deadline is not None:
                    side.start_soon(self._enforce_deadline, self.config.guards.deadline)
                if display is not None:
                    side.start_soon(self._tick, display)
                async with done_send:
                    await self._run_workers(sent_log, done_send)
                side.cancel_scope.cancel()

    async def _run_workers(
        self, sent_log: SentLog, done_send: MemoryObjectSendStream[Completed]
    ) -> None:
        # Unbuffered: a line leaves the dispatcher only when a worker takes it, so
        # stopping the dispatcher leaves nothing queued-but-unsent behind.
        work_send, work_recv = anyio.create_memory_object_stream[Request](0)
        worker = Worker(
            self.client,
            self.policy,
            self.flow,
            self.stats,
            stops=StopRules(self.config),
            guards=self.guards,
            on_stop=self._stop,
            sent_log=sent_log,
            schema_retries=self.config.schema_retries,
            cache=self.cache,
        )
        # Outside the work scope: the cache's stores in the background finish even when
        # the workers are cancelled (each is one fsync, and shielded anyway).
        async with self.cache or contextlib.nullcontext():
            with self._work_scope:
                async with anyio.create_task_group() as work, work_recv:
                    work.start_soon(self._dispatch, worker, work_send, done_send.clone())
                    for _ in range(self.config.concurrency):
                        work.start_soon(worker.run, work_recv.clone(), done_send.clone())

    async def _dispatch(
        self,
        worker: Worker,
        work_send: MemoryObjectSendStream[Request],
        done_send: MemoryObjectSendStream[Completed],
    ) -> None:
        lines = iter_lines(self.config, self.scan, self.parser, skip=self.state.is_done)
        answer = worker.answer if self.cache is not None else None
        async with work_send, done_send:
            if self.stats.done_before >= self.stats.total:
                return  # a finished run resumed: nothing to read, nothing to send
            with self._dispatch_scope:
                for item in lines:
                    if isinstance(item, BadLine):
                        self.stats.failed += 1
                        await done_send.send(error_record(item, item.error, attempts=0))
                        continue
                    if (stop := self.guards.admit(item)) is not None:
                        self._stop(stop)  # the line stays unsent: the rerun sends it
                        return
                    # A cache hit goes straight to the writer: no worker, no request.
                    if answer is not None and (hit := answer(item)) is not None:
                        try:
                            done_send.send_nowait(hit)
                        except anyio.WouldBlock:
                            await done_send.send(hit)
                        continue
                    # Hand the line straight to a waiting worker: awaiting send() would
                    # yield to the loop once per line, so lines would go out one per loop
                    # turn. Only when no worker waits do we block (and yield), so the loop
                    # still runs at least every `concurrency` lines.
                    try:
                        work_send.send_nowait(item)
                    except anyio.WouldBlock:
                        await work_send.send(item)

    async def _enforce_deadline(self, seconds: float) -> None:
        """The --deadline guard: stop dispatching, let in-flight requests finish (their
        replies are paid for), so the run ends soon after with everything written."""
        await anyio.sleep(seconds)
        message = (
            f"--deadline {seconds:g} s reached: no new line was sent after it; "
            "rerun the same command (with a later deadline) to resume"
        )
        self._stop(Stop(StopKind.DEADLINE, message))

    def _stop(self, stop: Stop) -> None:
        """A guard stops sending and lets the requests in flight finish (their replies
        are paid for); a stop rule also cancels them (they would fail the same way)."""
        if self.stop is None:
            self.stop = stop
        self._dispatch_scope.cancel()
        if not stop.kind.is_guard:
            self._work_scope.cancel()

    async def _write_all(
        self, writer: ResultWriter, done_recv: MemoryObjectReceiveStream[Completed]
    ) -> None:
        """Group commit: whatever arrived while the last fsync ran goes in the next one.

        After a failed write the writer keeps draining (and drops) what workers send,
        so none of them blocks or finds the channel broken while the run stops."""
        async with done_recv:
            async for first in done_recv:
                batch = [first]
                while len(batch) < MAX_BATCH:
                    try:
                        batch.append(done_recv.receive_nowait())
                    except (anyio.WouldBlock, anyio.EndOfStream):
                        break
                if self.guards.cost is not None:
                    self.guards.cost.settle(batch)
                if self._write_error is not None:
                    continue
                try:
                    writer.append(batch)
                    if self.config.fsync:
                        with anyio.CancelScope(shield=True):
                            await anyio.to_thread.run_sync(writer.sync)
                    writer.emit()
                except Aborted as error:
                    self._stop_writing(error)

    async def _tick(self, display: ProgressDisplay) -> None:
        pause, stats = self.policy.pause, self.stats
        while True:
            stats.in_flight_limit = self.flow.limit.limit
            status = [self.flow.describe()]
            if pause.paused_s >= 1:
                status.append(f"paused {pause.paused_s:,.0f} s in all")
            paused = math.ceil(pause.remaining())
            note = f"paused {paused} s: HTTP 429 (shared Retry-After)" if paused else ""
            display.tick(note, " · ".join(filter(None, status)))
            await anyio.sleep(TICK_S)

    def _announce(self) -> None:
        """Say where a rerun starts, before the bar takes over."""
        done, total = self.stats.done_before, self.stats.total
        if done >= total and self.state.resumed:
            self._say(
                f"nothing to do: all {total:,} lines already have a record in "
                f"{self.paths.outdir} (--fresh starts over)"
            )
        elif self.state.resumed:
            self._say(f"resuming: {done:,} of {total:,} done")

    def _warn_unused_model(self) -> None:
        """The scan does not parse plain lines, so an -m that no line needed is only
        known once lines were sent (batch files are checked before sending)."""
        model, parser = self.config.model, self.parser
        unknown = parser.defaulted or self.config.override_model or not self.stats.sent
        if model and parser.format is InputFormat.PLAIN and not unknown:
            self._say(Text.assemble(("warning", "yellow"), ": " + unused_model_warning(model)))

    def _say(self, text: str | Text) -> None:
        if self._console is not None:
            self._console.print(text, highlight=False, markup=False)

    def _finish(self) -> RunReport:
        self._warn_unused_model()
        if self.config.job is not None:
            write_rows(self.paths, self.config.job, self.config.max_line_bytes)
        outcome, reason = self._outcome()
        session = SessionInfo(
            status=outcome.value,
            reason=reason,
            started_at=self._started_at.isoformat(timespec="seconds"),
            finished_at=datetime.now(UTC).isoformat(timespec="seconds"),
            wall_time_s=self.stats.elapsed,
            sent=self.stats.sent,
            retries=self.stats.retries,
            resent_after_interrupt=self.state.resent,
            completed=self.stats.ok + self.stats.failed,
            completion_tokens=self.stats.completion_tokens,
            total_tokens=self.stats.total_tokens,
            cache=self._cache_session(),
        )
        manifest = orjson.loads(self.paths.manifest.read_bytes())
        # Lines done beyond a gap are in the journal only: they count all the same.
        job = self.config.job
        summary = build_summary(
            self.paths,
            manifest,
            session,
            self._extra(),
            self._pending_spans(),
            prices=self.prices,
            evaluation=None if job is None else job.eval,
            bar=self.bar,
        )
        write_summary(self.paths, summary)
        below_bar = bool(summary["eval"] and summary["eval"]["below_bar"])
        code = outcome.exit_code(summary["counts"]["failed"], below_bar)
        return RunReport(code, summary, self.paths.outdir, tuple(self.state.repairs))

    def _cache_session(self) -> CacheSession | None:
        cache = self.cache
        return None if cache is None else CacheSession(cache.directory, cache.misses, cache.stored)

    def _outcome(self) -> tuple[Outcome, str | None]:
        if self.stop is not None:
            return Outcome.ABORTED, self.stop.message
        if self.shutdown.interrupted:
            return Outcome.INTERRUPTED, "interrupted by signal; rerun to resume"
        # Done counts the whole input, not the --limit window: a limited rerun of a
        # finished run is complete.
        stats = self.stats
        if self.state.done_count + stats.ok + stats.failed < self.scan.requests:
            limited = self.config.limit is not None
            return Outcome.PARTIAL, f"--limit {self.config.limit}" if limited else None
        return Outcome.COMPLETE, None

    def _extra(self) -> dict[str, Any]:
        return {
            "outdir": str(self.paths.outdir),
            "warnings": [
                {"warning": w, "lines": n, "first_line": first}
                for w, (n, first) in self.parser.warnings.items()
            ],
            "repairs": self.state.repairs,
            "retry_budget_denied": self.policy.budget.denied,
            "rate_limit_pauses": self.policy.pause.pauses,
            "concurrency": self.config.concurrency,
            "flow": self.flow.figures(
                self.policy, self.stats, self.stop.kind if self.stop else None
            ).to_json(),
            **error_digest(self.paths.errors),
        }
