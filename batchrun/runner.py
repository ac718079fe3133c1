"""The run: one task group holding the dispatcher, N workers and the writer.

reader -> dispatcher -(unbuffered channel)-> workers -(bounded channel)-> writer.
Ctrl-C cancels the dispatcher and gives in-flight requests a grace period; an auth
failure streak cancels the workers; either way the writer drains what completed.
"""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import orjson
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from rich.console import Console
from rich.text import Text

from .client import ChatClient, Reply
from .config import Pace, RunConfig
from .errors import Aborted, InputError, RateLimited, RequestFailed
from .journal import ResumeState, SentLog
from .limits import Pacer, Rate, Reservation, Unit
from .outdir import Paths, write_failed
from .prepare import api_key_for, open_run
from .progress import LiveStats, ProgressDisplay, error_digest, stderr_console
from .reader import InputFormat, InputScan, LineParser, iter_requests, unused_model_warning
from .records import BadLine, Completed, Request, error_record, ok_record
from .results import ResultWriter
from .retry import RetryPolicy
from .stops import StopRules
from .summary import SessionInfo, build_summary, write_summary

__all__ = ["RunReport", "run_batch"]

EXIT_OK, EXIT_FAILED_LINES, EXIT_ABORTED, EXIT_INTERRUPTED = 0, 2, 3, 130
TICK_S = 0.25
MAX_BATCH = 4096
PACE_BURST_S = 0.1


@dataclass(frozen=True)
class RunReport:
    exit_code: int
    summary: dict[str, Any]
    outdir: Path
    repairs: tuple[str, ...] = ()


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
    config, scan, lock, state = await open_run(config, console)
    try:
        async with ChatClient(
            config.endpoint, key, concurrency=config.concurrency, timeouts=config.timeouts
        ) as client:
            run = _Run(config, scan, state, client)
            return await run.execute(console, show_progress, secret=key)
    finally:
        lock.release()


class _Run:
    _write_error: Aborted | None = None  # the first failed write to OUTDIR

    def __init__(
        self, config: RunConfig, scan: InputScan, state: ResumeState, client: ChatClient
    ) -> None:
        self.config = config
        self.scan = scan
        self.state = state
        self.client = client
        self.paths = Paths(config.outdir)
        total = scan.requests if config.limit is None else min(scan.requests, config.limit)
        self.stats = LiveStats(total=total, done_before=state.done[:total].count(1))
        self.policy = RetryPolicy(config.retry)
        self.pacer = _pacer(config.pace)
        self.parser = LineParser(
            scan.format,
            default_model=config.model,
            override_model=config.override_model,
            force_stream=config.stream,
            estimate=config.pace.tpm is not None,
        )
        self.interrupted = False
        self.abort_reason: str | None = None
        self.stops = StopRules(config)
        self._dispatch_scope = anyio.CancelScope()
        self._work_scope = anyio.CancelScope()
        self._started_at = datetime.now(UTC)
        self._console: Console | None = None

    async def execute(
        self, console: Console | None, show_progress: bool, *, secret: str | None = None
    ) -> RunReport:
        """Run every task; a write to OUTDIR that fails stops the run as `Aborted`
        (exit 3) naming the file, after everything that could be written was."""
        writer = ResultWriter(self.paths, self.state, secret=secret)
        try:
            sent_log = SentLog(self.paths, on_error=self._stop_writing)
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

    def _stop_writing(self, error: Aborted) -> None:
        if self._write_error is None:
            self._write_error = error
            self._abort(str(error))

    def _check_snapshot_read(self, written: int) -> None:
        """A run that was not stopped wrote every request line it read; fewer than the
        scan counted means the input shrank or was replaced while we read it."""
        expected = self.stats.total
        if self.abort_reason is None and not self.interrupted and written < expected:
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
                side.start_soon(self._watch_signals, side)
                if self.config.deadline is not None:
                    side.start_soon(self._enforce_deadline, self.config.deadline)
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
        with self._work_scope:
            async with anyio.create_task_group() as work, work_recv:
                work.start_soon(self._dispatch, work_send, done_send.clone())
                for _ in range(self.config.concurrency):
                    work.start_soon(self._worker, work_recv.clone(), done_send.clone(), sent_log)

    async def _dispatch(
        self,
        work_send: MemoryObjectSendStream[Request],
        done_send: MemoryObjectSendStream[Completed],
    ) -> None:
        lines = iter_requests(
            self.config.input_path,
            self.parser,
            self.config.max_line_bytes,
            skip=self.state.is_done,
            limit=self.config.limit,
            size=self.scan.size,
        )
        async with work_send, done_send:
            if self.stats.done_before >= self.stats.total:
                return  # a finished run resumed: nothing to read, nothing to send
            with self._dispatch_scope:
                for item in lines:
                    if isinstance(item, BadLine):
                        self.stats.failed += 1
                        await done_send.send(error_record(item, item.error, attempts=0))
                    else:
                        # Hand the line straight to a waiting worker: awaiting send()
                        # would yield to the loop once per line, so lines would go out
                        # one per loop turn. Only when no worker waits do we block (and
                        # yield), so the loop still runs at least every `concurrency` lines.
                        try:
                            work_send.send_nowait(item)
                        except anyio.WouldBlock:
                            await work_send.send(item)

    async def _worker(
        self,
        work_recv: MemoryObjectReceiveStream[Request],
        done_send: MemoryObjectSendStream[Completed],
        sent_log: SentLog,
    ) -> None:
        async with work_recv, done_send:
            async for request in work_recv:
                sent_log.mark(request.index)
                completed = await self._process(request)
                try:
                    done_send.send_nowait(completed)
                except anyio.WouldBlock:
                    # A reply we paid for must reach the journal even if we are being
                    # cancelled; the writer always drains, so this cannot hang.
                    with anyio.CancelScope(shield=True):
                        await done_send.send(completed)

    async def _process(self, request: Request) -> Completed:
        stats = self.stats
        attempts = 0
        started = 0.0

        async def attempt() -> Reply:
            nonlocal attempts, started
            pacer = self.pacer
            reservation = None if pacer is None else await _reserve(pacer, request.tokens)
            attempts += 1
            stats.sent += 1
            stats.retries += attempts > 1
            started = time.perf_counter()
            sending = self.client.complete(request.payload, stream=request.stream)
            if pacer is None or reservation is None:
                return await sending
            return await _settled(pacer, reservation, sending)

        stats.in_flight += 1
        try:
            reply = await self.policy.call(attempt)
        except RequestFailed as exc:
            return self._failed(request, exc, attempts, started)
        finally:
            stats.in_flight -= 1
        return self._succeeded(request, reply, attempts, started)

    def _succeeded(
        self, request: Request, reply: Reply, attempts: int, started: float
    ) -> Completed:
        self.stops.succeeded()
        self.stats.ok += 1
        usage = reply.response.get("usage")
        if isinstance(usage, dict):
            self.stats.completion_tokens += _int(usage.get("completion_tokens"))
            self.stats.total_tokens += _int(usage.get("total_tokens"))
        ttft = None if reply.ttft_s is None else reply.ttft_s * 1000
        latency = (time.perf_counter() - started) * 1000
        return ok_record(
            request, reply.response, attempts=attempts, latency_ms=latency, ttft_ms=ttft
        )

    def _failed(
        self, request: Request, error: RequestFailed, attempts: int, started: float
    ) -> Completed:
        self.stats.failed += 1
        reason = self.stops.failed(error)
        if reason is not None:
            self._abort(reason)
        latency = (time.perf_counter() - started) * 1000 if started else None
        return error_record(request, error, attempts=attempts, latency_ms=latency)

    async def _enforce_deadline(self, seconds: float) -> None:
        """The --deadline guard: stop dispatching, let in-flight requests finish (their
        replies are paid for), so the run ends soon after with everything written."""
        await anyio.sleep(seconds)
        if self.abort_reason is None:
            self.abort_reason = (
                f"--deadline {seconds:g} s reached: no new line was sent after it; "
                "rerun the same command (with a later deadline) to resume"
            )
        self._dispatch_scope.cancel()

    def _abort(self, reason: str) -> None:
        if self.abort_reason is None:
            self.abort_reason = reason
        self._dispatch_scope.cancel()
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

    async def _watch_signals(self, side: TaskGroup) -> None:
        """First Ctrl-C/SIGTERM: stop dispatching, give in-flight requests a grace
        period. A second one (or the end of the grace period) cancels them."""
        try:
            receiver = anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM)
            signals = receiver.__enter__()
        except (ValueError, RuntimeError, NotImplementedError):
            return  # not the main thread: the embedding program owns signals
        try:
            async for _ in signals:
                if self.interrupted:
                    self._say(f"stopping now: {self.stats.in_flight} in flight, cancelled")
                    self._work_scope.cancel()
                    continue
                self.interrupted = True
                self._dispatch_scope.cancel()
                self._say(self._interrupt_notice())
                side.start_soon(self._expire_grace)
        finally:
            receiver.__exit__(None, None, None)

    def _interrupt_notice(self) -> str:
        in_flight = self.stats.in_flight
        if not in_flight:
            return "stopping: no request in flight"
        requests = "request" if in_flight == 1 else "requests"
        return (
            f"finishing {in_flight} in-flight {requests} (up to {self.config.grace_period:g} s); "
            "Ctrl-C again to stop now"
        )

    async def _expire_grace(self) -> None:
        await anyio.sleep(self.config.grace_period)
        if self.stats.in_flight:
            self._say(f"grace period over: {self.stats.in_flight} in flight, cancelled")
        self._work_scope.cancel()

    async def _tick(self, display: ProgressDisplay) -> None:
        while True:
            paused = math.ceil(self.policy.pause.remaining())
            display.tick(f"paused {paused} s: HTTP 429 (shared Retry-After)" if paused else "")
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
        status, code, reason = self._outcome()
        session = SessionInfo(
            status=status,
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
        )
        manifest = orjson.loads(self.paths.manifest.read_bytes())
        # Lines done beyond a gap are in the journal only: they count all the same.
        pending = sorted((offset, length) for offset, length, _ in self.state.pending.values())
        summary = build_summary(self.paths, manifest, session, self._extra(), pending)
        if code == EXIT_OK and summary["counts"]["failed"]:
            code = EXIT_FAILED_LINES
        write_summary(self.paths, summary)
        return RunReport(code, summary, self.paths.outdir, tuple(self.state.repairs))

    def _outcome(self) -> tuple[str, int, str | None]:
        if self.abort_reason is not None:
            return "aborted", EXIT_ABORTED, self.abort_reason
        if self.interrupted:
            return "interrupted", EXIT_INTERRUPTED, "interrupted by signal; rerun to resume"
        # Done counts the whole input, not the --limit window: a limited rerun of a
        # finished run is complete.
        stats = self.stats
        if self.state.done_count + stats.ok + stats.failed < self.scan.requests:
            limited = self.config.limit is not None
            return "partial", EXIT_OK, f"--limit {self.config.limit}" if limited else None
        return "complete", EXIT_OK, None

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
            **error_digest(self.paths.errors),
        }


def _pacer(pace: Pace) -> Pacer | None:
    """The shared pacer for the rates given; None (no per-request cost) without any."""
    given: tuple[tuple[Unit, float | None, float], ...] = (
        ("requests", pace.rps, 1.0),
        ("requests", pace.rpm, 60.0),
        ("tokens", pace.tpm, 60.0),
    )
    rates = [Rate(unit, amount, window) for unit, amount, window in given if amount is not None]
    # A tenth of a second's budget at most at once: requests paced at a window's exact
    # edge would land in one server-side window after network jitter.
    return Pacer(rates, burst_seconds=PACE_BURST_S) if rates else None


async def _reserve(pacer: Pacer, tokens: int) -> Reservation:
    """Book this attempt's slot and wait for it: every attempt, retries included, is a
    request the server counts."""
    reservation = pacer.reserve(tokens)
    if reservation.delay > 0:
        await anyio.sleep(reservation.delay)
    return reservation


async def _settled(pacer: Pacer, reservation: Reservation, sending: Awaitable[Reply]) -> Reply:
    """The reply, with the reservation's token estimate replaced by the real usage."""
    try:
        reply = await sending
    except RateLimited:
        pacer.settle(reservation, 0)  # a 429 was not processed: it cost no tokens
        raise
    usage = reply.response.get("usage")
    total = usage.get("total_tokens") if isinstance(usage, dict) else None
    if isinstance(total, int) and not isinstance(total, bool) and total >= 0:
        pacer.settle(reservation, total)
    return reply


def _int(value: object) -> int:
    return value if isinstance(value, int) else 0
