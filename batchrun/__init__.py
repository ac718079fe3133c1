"""batchrun: run large batches of chat-completion requests from JSONL files, crash-safe.

Library use mirrors the CLI: build a `RunConfig`, await `run_batch(config)`; read a stored
results.jsonl line back with `Record.parse`.
"""

from typing import TYPE_CHECKING, Any

from ._version import __version__
from .config import Pace, RetryConfig, RunConfig, Timeouts
from .errors import (
    Aborted,
    AllowanceExhausted,
    AuthError,
    BadResponse,
    BatchrunError,
    ClientError,
    ConfigError,
    InputError,
    InvalidInput,
    PermanentError,
    RateLimited,
    RequestFailed,
    ResumeRefused,
    RetryableStatus,
    StreamTruncated,
    Timeout,
    TransientError,
    TransportFailure,
)
from .outcome import RunReport
from .records import Record

if TYPE_CHECKING:
    from .runner import run_batch


def __getattr__(name: str) -> Any:
    """`run_batch` on first use: the runner loads aiohttp, which commands that send
    nothing (report, diff, validate) would otherwise pay for at every start."""
    if name == "run_batch":
        from .runner import run_batch  # noqa: PLC0415

        return run_batch
    raise AttributeError(f"module 'batchrun' has no attribute {name!r}")


__all__ = [
    "Aborted",
    "AllowanceExhausted",
    "AuthError",
    "BadResponse",
    "BatchrunError",
    "ClientError",
    "ConfigError",
    "InputError",
    "InvalidInput",
    "Pace",
    "PermanentError",
    "RateLimited",
    "Record",
    "RequestFailed",
    "ResumeRefused",
    "RetryConfig",
    "RetryableStatus",
    "RunConfig",
    "RunReport",
    "StreamTruncated",
    "Timeout",
    "Timeouts",
    "TransientError",
    "TransportFailure",
    "__version__",
    "run_batch",
]
