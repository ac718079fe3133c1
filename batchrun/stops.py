"""Stop rules: failure streaks after which no other line can succeed either, so the run
stops early (resumably) instead of recording every remaining line as failed.

- auth: `auth_failure_limit` lines in a row rejected with 401/403. Only a success ends
  the streak: a 5xx in between says nothing about the key.
- connection: `connect_failure_limit` lines in a row that ended in a refused, reset or
  dropped connection (`TransportFailure`; a `Timeout` is a slow reply, not an absent
  server, and neither counts nor ends the streak). Any reply from the server ends it.
  It fires whether or not a line succeeded earlier in the session: a server that dies
  mid-run is as unreachable as one that never started, and the lines it failed are
  re-sent on resume either way (see `journal._needs_redo`).

- allowance: one 429 whose headers say an allowance is zero or spent (a monthly token
  budget): no wait cures it, so the first one stops the run; those lines are re-sent
  on resume (`journal._needs_redo`).

Lines complete concurrently, so "in a row" is in completion order.
"""

from __future__ import annotations

from .config import RunConfig
from .errors import AllowanceExhausted, AuthError, RequestFailed, Timeout, TransportFailure

__all__ = ["StopRules"]


class StopRules:
    """Fed every line's outcome; `failed` returns why the run must stop, or None."""

    def __init__(self, config: RunConfig) -> None:
        self._config = config
        self._auth_streak = 0
        self._connect_streak = 0

    def succeeded(self) -> None:
        self._auth_streak = self._connect_streak = 0

    def failed(self, error: RequestFailed) -> str | None:
        if isinstance(error, AllowanceExhausted):
            # One is enough: every other line would meet the same empty allowance.
            return f"{error.reason}; rerun the same command to resume once it is back"
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
            return f"{streak}: {self._fix_auth()}"
        if self._connect_streak >= retry.connect_failure_limit:
            return (
                f"cannot connect to {self._config.base_url}: is the server running? "
                f"({self._connect_streak} lines in a row failed with {error.message}); "
                "rerun the same command to resume"
            )
        return None

    def _fix_auth(self) -> str:
        if self._config.no_api_key:
            return "the server wants a key: set one and rerun without --no-api-key to resume"
        return f"check the key in ${self._config.api_key_env}; rerun the same command to resume"
