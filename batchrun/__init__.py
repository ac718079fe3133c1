"""batchrun: run large batches of chat-completion requests from JSONL files, crash-safe.

Library use mirrors the CLI: build a `RunConfig`, await `run_batch(config)`.
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
