"""Why a run stops early: failure streaks after which no other line can succeed either,
and the guards of unattended runs. Each returns a typed `Stop`; the runner stops
sending (resumably) instead of recording every remaining line as failed.

Streaks (`StopRules`), in completion order (lines complete concurrently):
- auth: `auth_failure_limit` lines in a row rejected with 401/403. Only a success ends
  the streak: a 5xx in between says nothing about the key.
- connection: `connect_failure_limit` lines in a row that ended in a refused, reset or
  dropped connection (`TransportFailure`; a `Timeout` is a slow reply, not an absent
  server, and neither counts nor ends the streak). Any reply from the server ends it,
  whether or not a line succeeded earlier: a server that dies mid-run is as unreachable
  as one that never started.
- allowance: one 429 whose headers say an allowance is zero or spent (a monthly token
  budget): no wait cures it, so the first one stops the run.
The lines these failed are re-sent on resume (see `resume.needs_redo`).

Guards (`GuardRules`, see `config.Guards`): max tokens, max error rate; the deadline is a
timer the runner keeps.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass

from .config import Guards, RunConfig
from .errors import AllowanceExhausted, AuthError, RequestFailed, Timeout, TransportFailure

__all__ = ["GuardRules", "Stop", "StopKind", "StopRules"]


class StopKind(enum.Enum):
    AUTH = "auth"
    CONNECTION = "connection"
    ALLOWANCE = "allowance"
    WRITE_FAILED = "write_failed"
    DEADLINE = "deadline"
    MAX_TOKENS_TOTAL = "max_tokens_total"
    MAX_ERROR_RATE = "max_error_rate"

    @property
    def is_guard(self) -> bool:
        return self in _GUARDS


_GUARDS = frozenset({StopKind.DEADLINE, StopKind.MAX_TOKENS_TOTAL, StopKind.MAX_ERROR_RATE})


@dataclass(frozen=True, slots=True)
class Stop:
    """Why the run stopped early; `message` tells the user what to do next."""

    kind: StopKind
    message: str


class StopRules:
    """Fed every line's outcome; `failed` returns the Stop it calls for, or None."""

    def __init__(self, config: RunConfig) -> None:
        self._config = config
        self._auth_streak = 0
        self._connect_streak = 0

    def succeeded(self) -> None:
        self._auth_streak = self._connect_streak = 0

    def failed(self, error: RequestFailed) -> Stop | None:
        if isinstance(error, AllowanceExhausted):
            # One is enough: every other line would meet the same empty allowance.
            message = f"{error.reason}; rerun the same command to resume once it is back"
            return Stop(StopKind.ALLOWANCE, message)
        if isinstance(error, AuthError):
            self._auth_streak += 1
        if isinstance(error, TransportFailure):
            if not isinstance(error, Timeout):
                self._connect_streak += 1
        else:
            self._connect_streak = 0
        retry = self._config.retry
        if isinstance(error, AuthError) and self._auth_streak >= retry.auth_failure_limit:
            streak = f"{self._auth_streak} consecutive HTTP {error.status_code} replies"
            return Stop(StopKind.AUTH, f"{streak}: {self._fix_auth()}")
        if self._connect_streak >= retry.connect_failure_limit:
            return Stop(
                StopKind.CONNECTION,
                f"cannot connect to {self._config.base_url}: is the server running? "
                f"({self._connect_streak} lines in a row failed with {error.message}); "
                "rerun the same command to resume",
            )
        return None

    def _fix_auth(self) -> str:
        if self._config.no_api_key:
            return "the server wants a key: set one and rerun without --no-api-key to resume"
        return f"check the key in ${self._config.api_key_env}; rerun the same command to resume"


class GuardRules:
    """The token and error-rate guards. Tokens are committed when a line is handed to a
    worker (its estimate) and settled with the real usage when it completes, so lines
    in flight count: the guard stops before the limit, not after it."""

    def __init__(self, guards: Guards, *, tokens_before: int = 0) -> None:
        self._guards = guards
        self.tokens = tokens_before  # used by earlier sessions and completed lines
        self._committed = 0  # estimates of lines handed out and not completed
        self._recent: deque[bool] = deque(maxlen=guards.error_window)
        self._recent_failed = 0

    @property
    def counts_tokens(self) -> bool:
        return self._guards.max_tokens_total is not None

    def admit(self, estimate: int) -> Stop | None:
        """Whether a line estimated at `estimate` tokens may be sent; commits it if so."""
        limit = self._guards.max_tokens_total
        if limit is None:
            return None
        if self.tokens + self._committed + estimate > limit:
            return Stop(
                StopKind.MAX_TOKENS_TOTAL,
                f"--max-tokens-total {limit:,} reached: {self.tokens:,} tokens used, "
                f"{self._committed:,} more estimated for the lines in flight, and the next "
                f"line may cost {estimate:,}; rerun with a higher limit to resume",
            )
        self._committed += estimate
        return None

    def released(self, estimate: int) -> None:
        """A line answered without being sent (a cache hit): its estimate is given back,
        it used no token, and the error rate (of lines sent) does not count it."""
        if self.counts_tokens:
            self._committed -= estimate

    def completed(self, estimate: int, tokens: int, *, failed: bool) -> Stop | None:
        """A line sent (not an invalid one) completed, having used `tokens`."""
        if self.counts_tokens:
            self._committed -= estimate
            self.tokens += tokens
        rate = self._guards.max_error_rate
        if rate is None:
            return None
        recent = self._recent
        if len(recent) == recent.maxlen:
            self._recent_failed -= recent[0]
        recent.append(failed)
        self._recent_failed += failed
        share = self._recent_failed / len(recent)
        if len(recent) >= self._guards.error_min_count and share > rate:
            return Stop(
                StopKind.MAX_ERROR_RATE,
                f"--max-error-rate {rate:g} passed: {self._recent_failed} of the last "
                f"{len(recent)} lines sent failed; see errors.jsonl, then rerun to resume",
            )
        return None
