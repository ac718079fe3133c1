"""The public API changes only on purpose."""

from __future__ import annotations

import batchrun

PUBLIC = [
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


def test_public_names() -> None:
    assert sorted(batchrun.__all__) == sorted(PUBLIC)
    for name in PUBLIC:
        assert hasattr(batchrun, name), name


def test_error_tree_drives_the_retry_rule() -> None:
    transient = [
        batchrun.RateLimited,
        batchrun.RetryableStatus,
        batchrun.TransportFailure,
        batchrun.Timeout,
        batchrun.StreamTruncated,
        batchrun.BadResponse,
    ]
    permanent = [batchrun.ClientError, batchrun.AuthError, batchrun.InvalidInput]
    assert all(issubclass(e, batchrun.TransientError) for e in transient)
    assert all(issubclass(e, batchrun.PermanentError) for e in permanent)
    assert batchrun.Aborted.exit_code == 3
    assert batchrun.ResumeRefused.exit_code == batchrun.ConfigError.exit_code == 1
