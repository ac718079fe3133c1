"""RunConfig: every knob of a run in one frozen object, validated once.

The CLI builds it from flags; library users build it directly. Nothing here reads the
API key: the config names the environment variable, the client reads it at the last
moment, so a config can be printed or hashed without leaking anything.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import orjson

from .errors import ConfigError
from .scoreboard import FailUnder

if TYPE_CHECKING:
    from .jobs import Job

__all__ = [
    "DEFAULT_BASE_URL",
    "OUTPUT_FORMATS",
    "Guards",
    "Pace",
    "RetryConfig",
    "RunConfig",
    "Timeouts",
    "default_outdir",
]

DEFAULT_BASE_URL = "https://api.mistral.ai"
DEFAULT_API_KEY_ENV = "MISTRAL_API_KEY"
CHAT_PATH = "/v1/chat/completions"
MIB = 1024 * 1024
# Provider batch output shapes a run can also write (batch_output.py).
OUTPUT_FORMATS = ("openai-batch", "mistral-batch")


@dataclass(frozen=True)
class Timeouts:
    """Seconds, each finite and > 0 (ConfigError otherwise).

    `read` bounds a whole non-streamed attempt, connect to last byte (--timeout). For a
    stream, `stream_idle` bounds the time since the last event that carried data
    (keep-alive comments do not count) and `stream_total` the whole stream. `connect`
    bounds opening a connection, in both."""

    connect: float = 10.0
    read: float = 300.0
    stream_idle: float = 60.0
    stream_total: float = 600.0

    def __post_init__(self) -> None:
        for name, flag in TIMEOUT_FLAGS.items():
            value = getattr(self, name)
            if not is_duration(value):
                raise ConfigError(f"{flag} must be a finite number of seconds > 0, got {value!r}")


# The CLI flag of each Timeouts field, for messages that name what the user typed.
TIMEOUT_FLAGS = {
    "connect": "--connect-timeout",
    "read": "--timeout",
    "stream_idle": "--stream-idle-timeout",
    "stream_total": "--stream-timeout",
}


def is_duration(value: object) -> bool:
    """A usable timeout: a real number of seconds, finite and > 0 (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return math.isfinite(value) and value > 0


@dataclass(frozen=True)
class RetryConfig:
    """The retry policy as data (see retry.py for how it is applied)."""

    max_attempts: int = 5
    backoff_base: float = 0.5  # seconds; attempt k waits U(0, min(cap, base * 2**k))
    backoff_cap: float = 30.0
    retry_after_cap: float = 120.0  # never honour a Retry-After longer than this
    # How long one line may wait out 429s (which use no attempt) before it is recorded
    # as rate_limited; a resume sends it again.
    rate_limit_wait: float = 600.0
    # Retries may add at most this fraction of first attempts (plus a small reserve),
    # so a failing server sees load shrink instead of multiply.
    budget_ratio: float = 0.5
    budget_reserve: int = 50
    auth_failure_limit: int = 3  # consecutive 401/403 before the run stops
    connect_failure_limit: int = 10  # consecutive lines that could not connect, likewise


@dataclass(frozen=True)
class Pace:
    """Rates the run must stay under (None: no limit of that kind), as `--rps`, `--rpm`
    and `--tpm` give them; see limits.py for the guarantees."""

    rps: float | None = None
    rpm: float | None = None
    tpm: float | None = None

    def __post_init__(self) -> None:
        for name in ("rps", "rpm", "tpm"):
            value = getattr(self, name)
            if value is not None and not (value > 0 and math.isfinite(value)):
                raise ConfigError(f"--{name} must be a finite number > 0, got {value!r}")


@dataclass(frozen=True)
class Guards:
    """Guards for unattended runs. One that fires stops sending, lets the requests in
    flight finish, writes everything and exits 3; a rerun with a raised limit resumes.

    `deadline`: seconds after the start of this invocation. `max_tokens_total`: tokens
    (prompt + completion, as `usage` reports them) of this OUTDIR, every session
    counted; a line is not sent when its estimate would pass it. `max_error_rate`: the
    share of failed lines among the last `error_window` lines sent, judged once
    `error_min_count` lines completed. `max_cost`: USD this OUTDIR may spend, every
    session counted, like `max_tokens_total` (a line's estimate priced for its model)."""

    deadline: float | None = None
    max_tokens_total: int | None = None
    max_error_rate: float | None = None
    error_window: int = 100
    error_min_count: int = 20
    max_cost: float | None = None

    def __post_init__(self) -> None:
        if self.deadline is not None and not is_duration(self.deadline):
            raise ConfigError(f"--deadline must be a finite duration > 0, got {self.deadline!r}")
        if self.max_tokens_total is not None and self.max_tokens_total < 1:
            raise ConfigError(f"--max-tokens-total must be >= 1, got {self.max_tokens_total}")
        if self.max_cost is not None and not is_duration(self.max_cost):  # finite, > 0
            raise ConfigError(f"--max-cost must be a finite USD amount > 0, got {self.max_cost!r}")
        rate = self.max_error_rate
        if rate is not None and not (0 < rate <= 1):
            raise ConfigError(f"--max-error-rate must be a fraction in (0, 1], got {rate!r}")
        if not 1 <= self.error_min_count <= self.error_window:
            raise ConfigError(
                f"error_min_count must be in [1, error_window], got {self.error_min_count}"
            )


@dataclass(frozen=True)
class RunConfig:
    """One batch run: where the input is, where outputs go, and how to send."""

    input_path: Path
    outdir: Path
    base_url: str = DEFAULT_BASE_URL
    api_key_env: str = DEFAULT_API_KEY_ENV
    model: str | None = None  # for lines that name none
    override_model: str | None = None  # for every line, replacing the line's own
    no_api_key: bool = False  # a server without authentication: no key read or sent
    concurrency: int = 32
    stream: bool = False
    limit: int | None = None
    fresh: bool = False
    retry_failed: bool = False
    allow_insecure_http: bool = False
    max_line_bytes: int = 10 * MIB
    grace_period: float = 30.0
    fsync: bool = True
    timeouts: Timeouts = field(default_factory=Timeouts)
    retry: RetryConfig = field(default_factory=RetryConfig)
    pace: Pace = field(default_factory=Pace)
    guards: Guards = field(default_factory=Guards)
    # Prices for costs and --max-cost, over the bundled table: a job's [prices], then
    # --prices FILE (prices.load_prices). Not request settings: a resume may change them.
    prices_file: Path | None = None
    price_overrides: Mapping[str, Any] | None = None
    # A reply that does not fit the line's response_format is asked again this many
    # times before the line is recorded as schema_violation (not transport retries).
    schema_retries: int = 2
    output_format: str | None = None  # also write OUTDIR/batch_output.jsonl in this shape
    # A job file (jobs.py): `input_path` is then its rows file, turned into requests by
    # its templates. Its content is a request setting: an edited prompt cannot resume.
    job: Job | None = None
    # The request cache's directory (cache.py), None: no cache. Not a request setting:
    # a resume may turn it on or off, what is sent stays the same.
    cache_dir: Path | None = None
    # The server as cache keys name it (None: `endpoint`). The built-in mock gets a fixed
    # name: it answers the same on any port, and --mock picks a new port every run.
    cache_server: str | None = None
    # --fail-under: one bar for every scorer of an eval job, over the job's own.
    fail_under: float | None = None

    def __post_init__(self) -> None:
        _check_positive("concurrency", self.concurrency)
        _check_positive("max_attempts", self.retry.max_attempts)
        _check_positive("max_line_bytes", self.max_line_bytes)
        if self.limit is not None and self.limit < 0:
            raise ConfigError(f"--limit must be >= 0, got {self.limit}")
        check_base_url(self.base_url, allow_insecure_http=self.allow_insecure_http)
        if self.schema_retries < 0:
            raise ConfigError(f"--schema-retries must be >= 0, got {self.schema_retries}")
        if self.output_format is not None and self.output_format not in OUTPUT_FORMATS:
            raise ConfigError(
                f"--output-format must be one of {', '.join(OUTPUT_FORMATS)}, "
                f"got {self.output_format!r}"
            )

    def eval_bar(self) -> FailUnder | None:
        """The bar an eval run's scores are judged against: --fail-under, else the job's
        [eval] fail_under. ConfigError when --fail-under has no eval to judge."""
        evaluation = None if self.job is None else self.job.eval
        if self.fail_under is None:
            return None if evaluation is None else evaluation.fail_under
        if evaluation is None:
            raise ConfigError(
                "--fail-under judges eval scores: INPUT must be a job file with an [eval] "
                "table (docs/jobs.md); nothing was sent"
            )
        return FailUnder.parse(self.fail_under, evaluation.names)

    @property
    def endpoint(self) -> str:
        return self.base_url.rstrip("/") + CHAT_PATH

    def request_settings(self) -> dict[str, Any]:
        """The settings that change what is sent; a resume must not mix two of them."""
        settings: dict[str, Any] = {"model": self.model, "stream": self.stream}
        if self.override_model is not None:  # absent when unused: older OUTDIRs still resume
            settings["override_model"] = self.override_model
        if self.job is not None:
            settings["job"] = self.job.sha256
        return settings

    def settings_hash(self) -> str:
        encoded = orjson.dumps(self.request_settings(), option=orjson.OPT_SORT_KEYS)
        return hashlib.sha256(encoded).hexdigest()


def default_outdir(input_path: Path) -> Path:
    """`data/labels.jsonl` -> `data/labels.batchrun/`, next to the input."""
    return input_path.with_name(input_path.stem + ".batchrun")


def check_base_url(base_url: str, *, allow_insecure_http: bool) -> None:
    """Refuse URLs we cannot use, and plain http to anything but this machine: the API
    key would cross the network in clear text."""
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"--base-url must be an http(s) URL, got {base_url!r}")
    if parts.scheme == "http" and not allow_insecure_http and not is_loopback(parts.hostname):
        raise ConfigError(
            f"refusing plain http to {parts.hostname}: the API key would travel unencrypted. "
            "Use https, or pass --allow-insecure-http if you really mean it."
        )


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_positive(name: str, value: int) -> None:
    if value < 1:
        raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
