"""batchrun: run large batches of chat-completion requests from JSONL files, crash-safe.

Library use mirrors the CLI: build a `RunConfig`, await `run_batch(config)`; read a stored
results.jsonl line back with `Record.parse`.
"""

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
from .records import Record
from .runner import RunReport, run_batch

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
