"""The exception hierarchy: how every failure is named, classified and serialised.

Program-level errors carry their exit code; per-line failures carry the `error.type`
written to results.jsonl. The retry rule is one line because of this tree:
retry `TransientError`, record `PermanentError`.
"""

from __future__ import annotations

from typing import Any, ClassVar

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
    "PermanentError",
    "RateLimited",
    "RequestFailed",
    "ResumeRefused",
    "RetryableStatus",
    "SchemaViolation",
    "StreamTruncated",
    "Timeout",
    "TransientError",
    "TransportFailure",
]

# Statuses that mean "this key is not allowed in": every other line would fail too.
AUTH_STATUSES = frozenset({401, 403})

# Error bodies are kept for diagnosis but bounded: a 50 MB HTML error page must not
# end up in results.jsonl.
BODY_EXCERPT_BYTES = 2048


class BatchrunError(Exception):
    """Base of every error batchrun raises on purpose; `exit_code` is what the CLI returns."""

    exit_code: ClassVar[int] = 1


class ConfigError(BatchrunError):
    """Bad flags, a missing API key, an unusable base URL or job file."""


class InputError(BatchrunError):
    """A problem with the input file as a whole (unreadable, duplicate custom_ids)."""


class ResumeRefused(BatchrunError):
    """OUTDIR holds state that does not belong to this input/config, or is corrupt."""


class Aborted(BatchrunError):
    """The run stopped early but everything completed is safe; rerun to resume."""

    exit_code = 3


class RequestFailed(Exception):
    """One line failed. The runner records it; it never ends the program by itself."""

    error_type: ClassVar[str] = "request_failed"
    retryable: ClassVar[bool] = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_record(self) -> dict[str, Any]:
        """The `error` object of a results.jsonl record."""
        return {"type": self.error_type, "message": self.message, "retryable": self.retryable}


class TransientError(RequestFailed):
    """Worth another attempt: the same request may succeed later."""

    retryable = True


class PermanentError(RequestFailed):
    """Sending the same request again would fail the same way."""


def body_excerpt(body: bytes) -> str:
    """The first `BODY_EXCERPT_BYTES` of a response body as text, for error records."""
    return body[:BODY_EXCERPT_BYTES].decode("utf-8", errors="replace")


class _WithStatus(RequestFailed):
    """Shared shape of failures that come with an HTTP status and a body excerpt."""

    def __init__(self, status_code: int, body: bytes, message: str | None = None) -> None:
        self.status_code = status_code
        self.body = body_excerpt(body)
        super().__init__(message or f"HTTP {status_code}")

    def to_record(self) -> dict[str, Any]:
        return {**super().to_record(), "status_code": self.status_code, "body": self.body}


class RetryableStatus(_WithStatus, TransientError):
    """408, 409, 5xx: the server may answer differently next time."""

    error_type = "http_status"


class RateLimited(_WithStatus, TransientError):
    """429. `retry_after` (seconds) is the server's hint, None if it gave none."""

    error_type = "rate_limited"

    def __init__(self, body: bytes, retry_after: float | None) -> None:
        super().__init__(429, body, "HTTP 429 rate limited")
        self.retry_after = retry_after


class AllowanceExhausted(_WithStatus, PermanentError):
    """A 429 whose headers say an allowance is zero or spent (a monthly budget): no
    wait cures it, so it is not retried and the run stops (resumably, exit 3). Kept as
    `rate_limited` and re-sent on resume, once the allowance is back."""

    error_type = "rate_limited"
    retryable = True

    def __init__(self, body: bytes, allowance: str, message: str) -> None:
        super().__init__(429, body, f"HTTP 429: {message}")
        self.allowance = allowance
        self.reason = message

    def to_record(self) -> dict[str, Any]:
        return {**super().to_record(), "allowance": self.allowance}


class TransportFailure(TransientError):
    """Connection refused/reset/dropped, or a connect/read/write/pool timeout."""

    error_type = "connection"


class Timeout(TransportFailure):
    """Connect, read, write or pool timeout, or a stream idle longer than allowed."""

    error_type = "timeout"


class StreamTruncated(TransientError):
    """A streamed reply ended before `[DONE]`/finish_reason, or carried a broken event."""

    error_type = "stream_truncated"


class BadResponse(TransientError):
    """A 200 whose body is not a usable completion (not JSON, not an object, or
    `finish_reason: "error"`): retried per the design, recorded when attempts run out."""

    error_type = "invalid_response"


class ClientError(_WithStatus, PermanentError):
    """A 4xx other than 401/403/408/409/429, or a 3xx we refused to follow."""

    error_type = "http_status"


class AuthError(ClientError):
    """401/403: every other line would fail too, so the run stops (resumably)."""


class InvalidInput(PermanentError):
    """An input line that is not a valid request; it is recorded and never sent."""

    error_type = "invalid_input"

    def __init__(self, reason: str, *, field: str | None = None, line: int | None = None) -> None:
        self.reason = reason
        self.field = field
        self.line = line
        where = f"line {line}: " if line is not None else ""
        what = f"{field}: " if field else ""
        super().__init__(f"{where}{what}{reason}")

    def at_line(self, line: int) -> InvalidInput:
        """The same error, located at `line` (validators don't know where they are)."""
        return InvalidInput(self.reason, field=self.field, line=line)

    def to_record(self) -> dict[str, Any]:
        record = super().to_record()
        if self.field:
            record["field"] = self.field
        return record


class SchemaViolation(RequestFailed):
    """A reply whose content is not JSON, or not JSON that fits the request's
    `response_format` (structured.py). Retryable, since the model may answer otherwise,
    but deliberately not a TransientError: schema re-asks are counted apart from
    transport retries, so the transport retry policy must never catch it. `path` is the
    JSON path of the first violation (`$.label`), None when the content is not JSON."""

    error_type = "schema_violation"
    retryable = True

    def __init__(self, reason: str, *, path: str | None = None, content: str | None = None):
        self.reason = reason
        self.path = path
        # Bounded like an error body; a lone surrogate would make the record unwritable.
        excerpt = None if content is None else content[:BODY_EXCERPT_BYTES]
        self.content = None if excerpt is None else excerpt.encode(errors="replace").decode()
        super().__init__(f"{path}: {reason}" if path is not None else reason)

    def to_record(self) -> dict[str, Any]:
        record = super().to_record()
        if self.path is not None:
            record["path"] = self.path
        if self.content is not None:
            record["content"] = self.content
        return record
