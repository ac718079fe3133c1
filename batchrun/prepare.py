"""Before the first request: the API key checked, the input scanned (one-shot inputs
spooled into OUTDIR first), and OUTDIR locked and opened for this input and settings.

Every failure here is one of ours (ConfigError, InputError, ResumeRefused, Aborted for
a full disk), raised before anything is sent.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

import anyio
from rich.console import Console
from rich.text import Text

from .config import RunConfig
from .errors import ConfigError
from .journal import ResumeState
from .outdir import OutdirLock, Paths, check_input_outside_outputs, lock_outdir, write_failed
from .reader import InputScan, check_models, needs_spool, scan_input, spool_input
from .resume import load_state, open_outdir
from .rows import scan_rows

__all__ = ["api_key_for", "open_run"]

SPOOL_POLL_S = 0.05
FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
T = TypeVar("T")


def api_key_for(config: RunConfig, api_key: str | None) -> str | None:
    """The key to send (`api_key` wins over the environment); None with --no-api-key."""
    if config.no_api_key:
        return None
    return _checked_key(api_key, config.api_key_env)


async def open_run(
    config: RunConfig, console: Console | None
) -> tuple[RunConfig, InputScan, OutdirLock, ResumeState]:
    """Scan the input and open OUTDIR for it. The config comes back changed when the
    input was spooled (it then names OUTDIR/input.jsonl); the caller releases the lock."""
    check_input_outside_outputs(config.input_path, config.outdir)
    if needs_spool(config.input_path):
        return await _open_spooled(config, console)
    scan = await _scan(config, config.input_path, console)
    with _outdir_errors(config.outdir):
        lock, state = open_outdir(config, scan)
    return config, scan, lock, state


async def _scan(config: RunConfig, path: Path, console: Console | None) -> InputScan:
    """The input's pre-pass, and the model check it allows before OUTDIR is touched
    (a manifest written for a run that cannot start would refuse the corrected rerun)."""
    if config.job is not None:
        scan = await anyio.to_thread.run_sync(scan_rows, config.job, config.max_line_bytes)
    else:
        scan = await anyio.to_thread.run_sync(scan_input, path, config.max_line_bytes)
    warning = check_models(scan, config.model, config.override_model)
    if warning and console is not None:
        console.print(Text.assemble(("warning", "yellow"), f": {warning}"), highlight=False)
    return scan


async def _open_spooled(
    config: RunConfig, console: Console | None
) -> tuple[RunConfig, InputScan, OutdirLock, ResumeState]:
    """Copy a one-shot input into OUTDIR, then open OUTDIR for it. The copy replaces
    OUTDIR/input.jsonl only once the manifest check passed, so a refused resume (other
    data on stdin) leaves the input the old results belong to in place."""
    with _outdir_errors(config.outdir):
        lock = lock_outdir(config.outdir)
    try:
        with _outdir_errors(config.outdir):
            part = await _in_daemon_thread(lambda: spool_input(config.input_path, config.outdir))
        try:
            scan = await _scan(config, part, console)
            config = replace(config, input_path=Paths(config.outdir).spooled_input)
            with _outdir_errors(config.outdir):
                state = load_state(config, scan)
                os.replace(part, config.input_path)
        finally:
            part.unlink(missing_ok=True)
    except BaseException:
        lock.release()
        raise
    return config, scan, lock, state


async def _in_daemon_thread(func: Callable[[], T]) -> T:
    """Run a blocking call that may never return (open() on a FIFO nobody writes to)
    in a daemon thread, polled: Ctrl-C then stops the run at once, and the stuck
    thread does not hold the process at exit as a worker thread would."""
    outcome: list[T] = []
    failure: list[BaseException] = []

    def target() -> None:
        try:
            outcome.append(func())
        except BaseException as exc:  # handed to the waiting task below
            failure.append(exc)

    thread = threading.Thread(target=target, name="batchrun-spool", daemon=True)
    thread.start()
    while thread.is_alive():
        await anyio.sleep(SPOOL_POLL_S)
    if failure:
        raise failure[0]
    return outcome[0]


@contextlib.contextmanager
def _outdir_errors(outdir: Path) -> Iterator[None]:
    """OSError while setting OUTDIR up: a full disk is resumable (exit 3), anything
    else (permissions, a file where the directory should be) is a usage error."""
    try:
        yield
    except OSError as exc:
        if exc.errno in FULL_ERRNOS:
            where = Path(exc.filename) if exc.filename else outdir
            raise write_failed(where, exc) from exc
        raise ConfigError(f"cannot use {outdir} as OUTDIR: {exc.strerror or exc}") from exc


def _checked_key(api_key: str | None, env_name: str) -> str:
    key = api_key if api_key is not None else _read_key(env_name)
    if not (key.isascii() and key.isprintable()):
        # Never echo it: the message itself would leak the key.
        source = "the API key given" if api_key is not None else f"${env_name}"
        raise ConfigError(
            f"{source} holds a control or non-ASCII character (a pasted newline?), which "
            "no HTTP header can carry; set the key again"
        )
    return key


def _read_key(env_name: str) -> str:
    key = os.environ.get(env_name, "").strip()
    if not key:
        raise ConfigError(
            f"the API key variable {env_name} is not set: export {env_name}=... "
            "(or name another variable with --api-key-env, --no-api-key for a server "
            "without authentication, or try --mock)"
        )
    return key
