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

Guards (`GuardRules`, see `config.Guards`): max tokens, max cost, max error rate; the
deadline is a timer the runner keeps.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal

from .config import Guards, RunConfig
from .errors import (
    AllowanceExhausted,
    AuthError,
    ConfigError,
    RequestFailed,
    Timeout,
    TransportFailure,
)
from .prices import Price, PriceTable, Tokens, format_usd
from .records import Completed, Record, Request

__all__ = ["CostLedger", "GuardRules", "Stop", "StopKind", "StopRules"]


class StopKind(enum.Enum):
    AUTH = "auth"
    CONNECTION = "connection"
    ALLOWANCE = "allowance"
    WRITE_FAILED = "write_failed"
    DEADLINE = "deadline"
    MAX_TOKENS_TOTAL = "max_tokens_total"
    MAX_ERROR_RATE = "max_error_rate"
    MAX_COST = "max_cost"

    @property
    def is_guard(self) -> bool:
        return self in _GUARDS


_GUARDS = frozenset(
    {StopKind.DEADLINE, StopKind.MAX_TOKENS_TOTAL, StopKind.MAX_ERROR_RATE, StopKind.MAX_COST}
)


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
    """The token, cost and error-rate guards. Tokens and cost are committed when a line is
    handed to a worker (its estimate) and settled with the real usage when it completes,
    so lines in flight count: the guard stops before the limit, not after it."""

    def __init__(
        self,
        guards: Guards,
        *,
        tokens_before: int = 0,
        prices: PriceTable | None = None,
        used_before: Mapping[str, Tokens] | None = None,
    ) -> None:
        self._guards = guards
        self.tokens = tokens_before  # used by earlier sessions and completed lines
        self._committed = 0  # estimates of lines handed out and not completed
        self._recent: deque[bool] = deque(maxlen=guards.error_window)
        self._recent_failed = 0
        self.cost: CostLedger | None = None
        if guards.max_cost is not None:
            self.cost = CostLedger(guards.max_cost, prices or PriceTable.bundled(), used_before)

    @property
    def counts_tokens(self) -> bool:
        """Whether lines need their token estimate (`Request.tokens`)."""
        return self._guards.max_tokens_total is not None or self.cost is not None

    def admit(self, request: Request) -> Stop | None:
        """Whether `request` may be sent; commits its estimates if so."""
        estimate = request.tokens
        limit = self._guards.max_tokens_total
        if limit is not None and self.tokens + self._committed + estimate > limit:
            return Stop(
                StopKind.MAX_TOKENS_TOTAL,
                f"--max-tokens-total {limit:,} reached: {self.tokens:,} tokens used, "
                f"{self._committed:,} more estimated for the lines in flight, and the next "
                f"line may cost {estimate:,}; rerun with a higher limit to resume",
            )
        if self.cost is not None and (stop := self.cost.admit(request)) is not None:
            return stop
        if limit is not None:
            self._committed += estimate
        return None

    def completed(self, estimate: int, tokens: int, *, failed: bool) -> Stop | None:
        """A line sent (not an invalid one) completed, having used `tokens`."""
        if self._guards.max_tokens_total is not None:
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


# Failures after which the server may have generated, and billed, a completion we could
# not use; the others (a status other than 200, a refused connection, a 429) were not.
MAYBE_BILLED = frozenset({"timeout", "stream_truncated", "invalid_response", "schema_violation"})


class CostLedger:
    """The --max-cost guard's books, in exact USD: what this OUTDIR spent (earlier
    sessions and settled lines) and what the lines handed out may still cost (each
    line's estimated prompt tokens and its max_tokens, at its model's price).

    Lines are settled from their records (`settle`), since a record says which model
    answered and how many prompt and completion tokens it used: those are priced
    apart. A reply naming a model with no price is charged at its request's model's
    price (the one it was admitted at); a reply without usage keeps its estimate, and so
    does a line that failed after the server may have generated (MAYBE_BILLED): the
    guard errs on the side of stopping early."""

    def __init__(
        self, max_cost: float, prices: PriceTable, used_before: Mapping[str, Tokens] | None
    ) -> None:
        self.limit = Decimal(repr(max_cost))  # repr: the USD typed, not the float's binary
        self.prices = prices
        self.spent = _spent_before(prices, used_before or {})
        self.committed = Decimal(0)
        self._in_flight: dict[int, tuple[Price, Decimal]] = {}  # index -> price, estimate
        self._by_model: dict[str | None, Price | None] = {}

    def admit(self, request: Request) -> Stop | None:
        price = self._price(request.model)
        if price is None:  # the runner refuses unpriced models up front; kept for safety
            return Stop(
                StopKind.MAX_COST,
                f"--max-cost cannot price line {request.line}: no price for model "
                f"{request.model!r}; add it with --prices FILE, then rerun to resume",
            )
        prompt = request.tokens - request.max_completion
        estimate = price.cost_usd(prompt, request.max_completion)
        if self.spent + self.committed + estimate > self.limit:
            return Stop(
                StopKind.MAX_COST,
                f"--max-cost {self.limit} USD reached: {format_usd(float(self.spent))} spent, "
                f"{format_usd(float(self.committed))} more estimated for the lines in flight, "
                f"and the next line may cost {format_usd(float(estimate))}; rerun with a "
                "higher limit to resume",
            )
        self.committed += estimate
        self._in_flight[request.index] = (price, estimate)
        return None

    def settle(self, batch: Iterable[Completed]) -> None:
        """Replace the estimates of completed lines with what their records say they
        cost. Lines never admitted (invalid ones) are not in the books."""
        for done in batch:
            entry = self._in_flight.pop(done.index, None)
            if entry is None:
                continue
            price, estimate = entry
            self.committed -= estimate
            record = Record.parse(done.data)
            if not done.failed:
                self.spent += self._cost(record, price, estimate)
            elif record is not None and record.error_type in MAYBE_BILLED:
                self.spent += estimate

    def _cost(self, record: Record | None, price: Price, estimate: Decimal) -> Decimal:
        if record is None:
            return estimate
        prompt, completion = record.prompt_tokens, record.completion_tokens
        if prompt is None and completion is None:
            return estimate
        answered = self._price(record.model) or price
        return answered.cost_usd(prompt or 0, completion or 0)

    def _price(self, model: str | None) -> Price | None:
        if model not in self._by_model:
            self._by_model[model] = None if model is None else self.prices.price(model)
        return self._by_model[model]


def _spent_before(prices: PriceTable, used: Mapping[str, Tokens]) -> Decimal:
    """The exact cost of earlier sessions' usage. Spending at an unknown price cannot
    be guarded: refuse to start (exit 1) rather than count it as free."""
    spent = Decimal(0)
    for model, tokens in used.items():
        price = prices.price(model)
        if price is None:
            raise ConfigError(
                f"--max-cost: earlier sessions in this OUTDIR used model {model!r}, which "
                "has no price, so what they spent is unknown; add it with --prices FILE "
                "(or [prices] in the job); nothing was sent"
            )
        spent += price.cost_usd(tokens.prompt, tokens.completion)
    return spent
