"""Opening OUTDIR for a run: lock it, make it this run's, and read what an earlier
session left there.

The journal says which lines are done; the redo rule picks the failed ones to send
again; results.jsonl and errors.jsonl are cut back to the journal's contiguous prefix.
"""

from __future__ import annotations

from pathlib import Path

from .config import RunConfig
from .errors import AUTH_STATUSES
from .journal import ResumeState, count_resent, journal_records
from .outdir import OutdirLock, Paths, claim, cut_torn_tail, lock_outdir
from .reader import InputScan
from .records import Record
from .results import count_lines, rebuild_errors, truncate_lines

__all__ = ["NEVER_PROCESSED", "load_state", "needs_redo", "open_outdir"]

# Error types of lines the server never processed: a rerun sends them without asking.
NEVER_PROCESSED = frozenset({"connection", "rate_limited"})


def open_outdir(config: RunConfig, scan: InputScan) -> tuple[OutdirLock, ResumeState]:
    """Lock OUTDIR, check it belongs to this input and settings, and scan what is done."""
    lock = lock_outdir(config.outdir)
    try:
        state = load_state(config, scan)
    except BaseException:
        lock.release()
        raise
    return lock, state


def load_state(config: RunConfig, scan: InputScan) -> ResumeState:
    """With OUTDIR locked: start over if asked (or if a start-over was interrupted),
    else resume what the manifest accounts for."""
    paths = Paths(config.outdir)
    if not claim(paths, config, scan):
        return ResumeState(requests=scan.requests, done=bytearray(scan.requests))
    return _scan_state(paths, scan.requests, retry_failed=config.retry_failed)


def _scan_state(paths: Paths, requests: int, *, retry_failed: bool) -> ResumeState:
    state = ResumeState(requests=requests, done=bytearray(requests), resumed=True)
    written = _repair_tail(paths.results, state)
    state.journal_size = _repair_tail(paths.journal, state)
    results_lines = count_lines(paths.results) if written else 0
    # Records already in results.jsonl need no offset: keeping them all would make
    # memory grow with the input.
    for index, offset, length, record in journal_records(paths.journal, requests):
        state.done[index] = 1
        if needs_redo(record, retry_failed):
            state.redo.add(index)
            state.pending.pop(index, None)
        else:
            state.redo.discard(index)
            if index >= results_lines:
                state.pending[index] = (offset, length, record.failed)
    for index in state.redo:
        state.done[index] = 0
    state.next_index = _first_gap(state.done, results_lines)
    if state.next_index < results_lines:
        # A redone line (or results ahead of the journal) cuts the written prefix
        # short: re-read the offsets of the done records after the cut.
        truncate_lines(paths.results, state.next_index)
        for index, offset, length, record in journal_records(paths.journal, requests):
            if state.next_index <= index < results_lines and state.done[index]:
                state.pending[index] = (offset, length, record.failed)
    rebuild_errors(paths)
    state.resent = count_resent(paths.sent, state)
    return state


def _repair_tail(path: Path, state: ResumeState) -> int:
    end, dropped = cut_torn_tail(path)
    if dropped:
        state.repairs.append(f"{path.name}: dropped a torn last line ({dropped} bytes)")
    return end


def needs_redo(record: Record, retry_failed: bool) -> bool:
    """Lines whose failure says nothing about the line itself are always re-sent: auth
    failures and connection failures (refused, reset, dropped: `error.type` "connection",
    not "timeout") are what stop a run early (stops.py), and the next run is the resume
    the stop message promises; so are lines refused for an empty allowance (a record
    with `error.allowance`). Every connection failure counts, not only those of an
    aborted run: a record cannot tell whether it was part of the streak (the breaker
    fires after the streak is written), and such a line has no result either way, so
    sending it again is what the user would ask for. A `rate_limited` line waited out
    429s until --max-rate-limit-wait and was never processed: likewise. Other
    retryable failures only with --retry-failed."""
    if not record.failed:
        return False
    if record.status_code in AUTH_STATUSES or record.error_type in NEVER_PROCESSED:
        return True
    if record.allowance is not None:  # an empty allowance stopped the run
        return True
    return retry_failed and record.retryable is True


def _first_gap(done: bytearray, upto: int) -> int:
    gap = done.find(0, 0, upto)
    return upto if gap < 0 else gap
