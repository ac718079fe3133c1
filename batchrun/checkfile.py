"""Checking an input without sending anything (`batchrun validate`): every line parsed as
a run parses it, the invalid ones with their reasons, and per model the requests, the
estimated prompt tokens, the completion tokens they allow and what that may cost.

The core, `tally`, takes the lines a run would send (`Request | BadLine`, whatever made
them), so request files and job files are checked alike; `check_file` feeds it a request
file the way the runner reads one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import RunConfig
from .errors import ConfigError
from .jobs import Job, check_model
from .limits import CHARS_PER_TOKEN, DEFAULT_MAX_TOKENS, TOKENS_PER_MESSAGE
from .outcome import EXIT_FAILED_LINES, EXIT_OK
from .prices import CostEstimate, CostRange, PriceTable, Tokens, estimate_cost, format_usd
from .reader import InputScan, LineParser, check_models, iter_requests, scan_input
from .records import BadLine, Request
from .rows import RowParser, iter_lines, make_parser, row_requests, scan_rows

__all__ = [
    "MAX_SHOWN",
    "InputCheck",
    "ModelTally",
    "check_file",
    "check_job",
    "refuse_unpriced",
    "tally",
]

MAX_SHOWN = 20  # invalid lines listed with their reasons; the rest are counted

ESTIMATE_NOTE = (
    f"prompt tokens are estimated ({CHARS_PER_TOKEN:g} characters a token, "
    f"{TOKENS_PER_MESSAGE} a message); completion tokens are each line's max_tokens "
    f"({DEFAULT_MAX_TOKENS:,} where a line sets none). The cost runs from the prompt alone "
    "to every max_tokens used."
)


@dataclass
class ModelTally:
    """The valid lines of one model: how many, their estimated prompt tokens and the
    completion tokens they allow."""

    requests: int = 0
    prompt_tokens: int = 0
    max_completion_tokens: int = 0


@dataclass(frozen=True)
class InputCheck:
    """What a check found. `invalid` holds the first MAX_SHOWN bad lines in input order,
    `invalid_count` all of them."""

    lines: int
    invalid: tuple[BadLine, ...]
    invalid_count: int
    models: Mapping[str, ModelTally]
    cost: CostEstimate
    prices: Mapping[str, dict[str, Any]]  # the price of each priced model, with its source
    warnings: Mapping[str, list[int]] = field(default_factory=dict)  # warning -> [count, line]
    input: str | None = None
    format: str | None = None

    @property
    def exit_code(self) -> int:
        """0 when every line is valid, 2 when some are not (as a run with failed lines)."""
        return EXIT_FAILED_LINES if self.invalid_count else EXIT_OK

    def to_dict(self) -> dict[str, Any]:
        """The `--json` shape."""
        return {
            "input": self.input,
            "format": self.format,
            "lines": self.lines,
            "valid": self.lines - self.invalid_count,
            "invalid": self.invalid_count,
            "invalid_lines": [_bad_line(bad) for bad in self.invalid],
            "invalid_not_listed": self.invalid_count - len(self.invalid),
            "models": {
                model: {
                    "requests": t.requests,
                    "prompt_tokens": t.prompt_tokens,
                    "max_completion_tokens": t.max_completion_tokens,
                }
                for model, t in sorted(self.models.items())
            },
            "tokens": {
                "prompt_tokens": sum(t.prompt_tokens for t in self.models.values()),
                "max_completion_tokens": sum(t.max_completion_tokens for t in self.models.values()),
            },
            "cost": {**self.cost.to_dict(), "prices": dict(self.prices)},
            "warnings": [
                {"warning": w, "lines": n, "first_line": first}
                for w, (n, first) in self.warnings.items()
            ],
        }

    def report(self) -> list[str]:
        """The plain-text report, one string a line."""
        rows = [("lines", self._lines_row())]
        rows += _labelled("invalid", [str(bad.error) for bad in self.invalid])
        if self.invalid_count > len(self.invalid):
            rows.append(("", f"... and {self.invalid_count - len(self.invalid):,} more"))
        costs = {c.model: c for c in self.cost.models}
        rows += _labelled("models", [_model_row(m, t, costs[m]) for m, t in self.models.items()])
        if self.models:
            rows.append(("total", self._total_row()))
        rows += _labelled("warnings", [f"{w} ({n:,} lines)" for w, (n, _) in self.warnings.items()])
        width = max(len(label) for label, _ in rows)
        lines = [f"{label:<{width}}  {text}" for label, text in rows]
        return [*lines, ESTIMATE_NOTE] if self.models else lines

    def _lines_row(self) -> str:
        where = f"{self.input} ({self.format}): " if self.input else ""
        valid = self.lines - self.invalid_count
        return f"{where}{self.lines:,} lines · {valid:,} valid · {self.invalid_count:,} invalid"

    def _total_row(self) -> str:
        cost = self.cost
        money = f"{format_usd(cost.low_usd)} to {format_usd(cost.high_usd)}"
        if cost.unpriced:
            unpriced = ", ".join(map(repr, cost.unpriced))
            money = f"{money} for the priced models (no price for {unpriced})"
        return f"{_requests(sum(t.requests for t in self.models.values()))} · {money}"


def _model_row(model: str, t: ModelTally, cost: CostRange) -> str:
    if cost.low_usd is None or cost.high_usd is None:
        money = f"cost unknown: {cost.note}"
    else:
        money = f"{format_usd(cost.low_usd)} to {format_usd(cost.high_usd)}"
    return (
        f"{model}: {_requests(t.requests)} · ~{t.prompt_tokens:,} prompt tokens · "
        f"{t.max_completion_tokens:,} max completion tokens · {money}"
    )


def _requests(count: int) -> str:
    return f"{count:,} request" + ("" if count == 1 else "s")


def _labelled(label: str, texts: list[str]) -> list[tuple[str, str]]:
    """Rows under one label, written on the first only."""
    return [(label if i == 0 else "", text) for i, text in enumerate(texts)]


def _bad_line(bad: BadLine) -> dict[str, Any]:
    error = bad.error
    return {
        "line": bad.line,
        "index": bad.index,
        "custom_id": bad.custom_id,
        "field": error.field,
        "reason": error.reason,
        "message": str(error),
    }


def tally(
    items: Iterable[Request | BadLine],
    prices: PriceTable,
    *,
    warnings: Mapping[str, list[int]] | None = None,
    input_name: str | None = None,
    input_format: str | None = None,
) -> InputCheck:
    """Check the lines a run would send: each Request must carry its model and token
    estimate (a LineParser with `estimate=True`). `warnings`: the parser's, read once
    every line was parsed."""
    lines = invalid_count = 0
    invalid: list[BadLine] = []
    models: dict[str, ModelTally] = {}
    for item in items:
        lines += 1
        if isinstance(item, BadLine):
            invalid_count += 1
            if len(invalid) < MAX_SHOWN:
                invalid.append(item)
            continue
        model = item.model or "unknown"
        counts = models.get(model)
        if counts is None:
            counts = models[model] = ModelTally()
        counts.requests += 1
        counts.prompt_tokens += item.tokens - item.max_completion
        counts.max_completion_tokens += item.max_completion
    estimated = {m: Tokens(t.prompt_tokens, t.max_completion_tokens) for m, t in models.items()}
    return InputCheck(
        lines=lines,
        invalid=tuple(invalid),
        invalid_count=invalid_count,
        models=dict(sorted(models.items())),
        cost=estimate_cost(prices, estimated),
        prices=prices.used(models),
        warnings=dict(warnings or {}),
        input=input_name,
        format=input_format,
    )


def check_file(
    path: Path,
    prices: PriceTable,
    *,
    max_line_bytes: int,
    model: str | None = None,
    override_model: str | None = None,
) -> InputCheck:
    """Check a request file as `batchrun run` would read it. A file no run could use
    (missing, unreadable, duplicate custom_ids, batch lines without a model and no
    `model`) raises the InputError or ConfigError the run would (exit 1)."""
    scan = scan_input(path, max_line_bytes)
    check_models(scan, model, override_model)
    parser = LineParser(
        scan.format, default_model=model, override_model=override_model, estimate=True
    )
    items = iter_requests(path, parser, max_line_bytes, skip=_nothing_done, size=scan.size)
    return tally(
        items,
        prices,
        warnings=parser.warnings,  # filled as `items` is consumed; tally copies it after
        input_name=str(path),
        input_format=scan.format.value,
    )


def check_job(
    job: Job,
    prices: PriceTable,
    *,
    max_line_bytes: int,
    model: str | None = None,
    override_model: str | None = None,
) -> InputCheck:
    """Check a job's rows as `batchrun run JOB` would turn them into requests (its
    [input] limit included). A job or rows file no run could use raises as the run would."""
    check_model(job, model, override_model)
    scan = scan_rows(job, max_line_bytes)
    parser = RowParser(
        job, scan.format, default_model=model, override_model=override_model, estimate=True
    )
    count = scan.requests if job.input.limit is None else min(scan.requests, job.input.limit)
    return tally(
        row_requests(parser, count, max_line_bytes, skip=_nothing_done),
        prices,
        warnings=parser.warnings,
        input_name=str(job.path),
        input_format=scan.format.value,
    )


def _nothing_done(_index: int) -> bool:
    return False


def refuse_unpriced(
    config: RunConfig, scan: InputScan, prices: PriceTable, skip: Callable[[int], bool]
) -> None:
    """--max-cost guards only what it can price: a line to a model without a price
    would be sent unguarded, so the run refuses to start (ConfigError, exit 1) naming
    the models. Reads the lines still to send (not `skip`ped) as the run will."""
    models: set[str | None] = {config.override_model}
    if config.override_model is None:
        parser = make_parser(config, scan.format, estimate=False)
        lines = iter_lines(config, scan, parser, skip=skip)
        models = {line.model for line in lines if isinstance(line, Request)}
    unpriced = sorted(str(m) for m in models if m is None or prices.price(m) is None)
    if unpriced:
        names = ", ".join(map(repr, unpriced))
        has = "has" if len(unpriced) == 1 else "have"
        raise ConfigError(
            f"--max-cost needs a price for every model, and {names} {has} none: add it "
            "with --prices FILE (or [prices] in the job); nothing was sent"
        )
