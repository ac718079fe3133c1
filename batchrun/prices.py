"""What a model costs: the bundled price table, user overrides, and the cost arithmetic.

Prices are USD per million tokens, kept as exact decimals; floats appear only in results.
"""

from __future__ import annotations

import functools
import json
import math
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any

from .errors import ConfigError

__all__ = [
    "CostEstimate",
    "CostRange",
    "CostReport",
    "ModelCost",
    "Price",
    "PriceTable",
    "Tokens",
    "actual_cost",
    "estimate_cost",
    "format_usd",
    "load_prices",
    "no_price_note",
    "read_price_file",
]

ENTRY_KEYS = ("input", "output", "source", "date")
MAX_DECIMALS = 10  # format_usd: a billionth of a cent is nothing anyone pays
BUNDLED = "batchrun/data/prices.toml"


@dataclass(frozen=True, slots=True)
class Price:
    """One model's price: USD per million prompt (`input`) and completion (`output`) tokens."""

    model: str
    input: Decimal
    output: Decimal
    source: str
    date: str | None = None

    def cost_usd(self, prompt_tokens: int, completion_tokens: int) -> Decimal:
        """The exact cost. Decimal, because 0.15 and 0.60 are not binary fractions: in
        floats, 100 prompt + 100 completion tokens at 0.15/0.60 come to 7.500000000000001e-05."""
        dollars_per_million = self.input * prompt_tokens + self.output * completion_tokens
        return dollars_per_million.scaleb(-6)  # exact: a shift of the exponent

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        """The cost in USD, the nearest float to the exact figure."""
        return float(self.cost_usd(prompt_tokens, completion_tokens))

    def to_dict(self) -> dict[str, Any]:
        """What a report records of a price it used: the figures and where they come from."""
        return {
            "model": self.model,
            "input_usd_per_million": float(self.input),
            "output_usd_per_million": float(self.output),
            "source": self.source,
            "date": self.date,
        }


@dataclass(frozen=True, slots=True)
class PriceTable:
    """Prices by model id, plus ids the source says are another entry (`aliases`)."""

    entries: Mapping[str, Price]
    aliases: Mapping[str, str]

    @classmethod
    def bundled(cls) -> PriceTable:
        """The table shipped in batchrun/data/prices.toml (parsed once per process)."""
        return _bundled()

    def price(self, model: str) -> Price | None:
        """The price of `model`, through an alias if the source gave one; None if unknown.
        An override of an alias name wins over the alias."""
        found = self.entries.get(model)
        if found is None and model in self.aliases:
            found = self.entries.get(self.aliases[model])
        return found

    def cost(self, model: str, prompt_tokens: int, completion_tokens: int) -> float | None:
        """The cost in USD of one request or a total, None for a model with no price."""
        found = self.price(model)
        return None if found is None else found.cost(prompt_tokens, completion_tokens)

    def with_overrides(self, mapping: Mapping[str, Any], *, source: str) -> PriceTable:
        """This table with `mapping` (`{model: {input, output, source?, date?}}`, the shape
        of a job's `[prices]`) replacing or adding entries. `source` names where the
        mapping came from, for error messages and for entries that cite nothing."""
        if not isinstance(mapping, Mapping):
            raise ConfigError(f"{source}: prices must be a table of models, got {_kind(mapping)}")
        added = {model: _entry(model, entry, source) for model, entry in mapping.items()}
        return PriceTable(MappingProxyType({**self.entries, **added}), self.aliases)

    def with_file(self, path: Path) -> PriceTable:
        """This table overridden by a `--prices FILE` (TOML, or JSON if it ends in .json)."""
        return self.with_overrides(read_price_file(path), source=str(path))

    def used(self, models: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The prices `models` were costed at, by the id reports name them with (an alias
        shows the entry it resolves to in `model`); unpriced models are left out."""
        found = ((model, self.price(model)) for model in sorted(models))
        return {model: price.to_dict() for model, price in found if price is not None}


def load_prices(file: Path | None = None, overrides: Mapping[str, Any] | None = None) -> PriceTable:
    """The table a run or a check uses: the bundled one, then a job's `[prices]`, then
    `--prices FILE` (a flag overrides the job). A bad file or entry is a ConfigError."""
    table = PriceTable.bundled()
    if overrides is not None:
        table = table.with_overrides(overrides, source="[prices]")
    return table if file is None else table.with_file(file)


def read_price_file(path: Path) -> dict[str, Any]:
    """A prices file's mapping; numbers read as exact decimals. Unreadable -> ConfigError."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read prices file: {exc}") from exc
    try:
        if path.suffix.lower() == ".json":
            return _json_object(text, path)
        return tomllib.loads(text, parse_float=Decimal)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: not a valid prices file: {exc}") from exc


def _json_object(text: str, path: Path) -> dict[str, Any]:
    # NaN and Infinity reach validation as decimals, so the error names model and key.
    loaded = json.loads(text, parse_float=Decimal, parse_constant=Decimal)
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: prices must be a JSON object of models")
    return loaded


def _entry(model: object, entry: object, source: str) -> Price:
    """One validated override entry; every problem names the model and the key."""
    if not isinstance(model, str) or not model:
        raise ConfigError(f"{source}: a model id must be a non-empty string, got {model!r}")
    if not isinstance(entry, Mapping):
        raise ConfigError(
            f"{source}: model {model!r}: must be a table with input and output, got {_kind(entry)}"
        )
    for key in entry:
        if key not in ENTRY_KEYS:
            raise ConfigError(
                f"{source}: model {model!r}: unknown key {key!r} (expected {', '.join(ENTRY_KEYS)})"
            )
    cited = _text(model, entry, "source", source) or source
    return Price(
        model,
        _usd(model, entry, "input", source),
        _usd(model, entry, "output", source),
        cited,
        _text(model, entry, "date", source),
    )


def _usd(model: str, entry: Mapping[str, Any], key: str, source: str) -> Decimal:
    if key not in entry:
        raise ConfigError(f"{source}: model {model!r}: missing {key!r} (USD per million tokens)")
    value = entry[key]
    where = f"{source}: model {model!r}: {key!r}"
    # bool is an int in Python, never a price.
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        raise ConfigError(f"{where} must be a number of USD per million tokens, got {value!r}")
    # repr, not Decimal(float): the float 0.15 is 0.1499999999999999944..., its repr "0.15".
    exact = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    if not exact.is_finite() or exact < 0:
        raise ConfigError(f"{where} must be a finite number >= 0, got {value!r}")
    return exact


def _text(model: str, entry: Mapping[str, Any], key: str, source: str) -> str | None:
    value = entry.get(key)
    if value is None or isinstance(value, str):
        return value
    raise ConfigError(f"{source}: model {model!r}: {key!r} must be a string, got {value!r}")


def _kind(value: object) -> str:
    return type(value).__name__


@functools.cache
def _bundled() -> PriceTable:
    data = resources.files("batchrun").joinpath("data", "prices.toml").read_text("utf-8")
    parsed = tomllib.loads(data, parse_float=Decimal)
    table = PriceTable({}, {}).with_overrides(parsed["models"], source=BUNDLED)
    aliases = {alias: str(entry["model"]) for alias, entry in parsed["aliases"].items()}
    # Read-only: this one table is shared by every caller in the process.
    return PriceTable(table.entries, MappingProxyType(aliases))


def format_usd(usd: float) -> str:
    """A cost for people: cents from a dollar up, else four significant digits (a small
    batch costs fractions of a cent, which "$0.00" would hide)."""
    if usd >= 1:
        return f"${usd:,.2f}"
    if usd <= 0:
        return "$0"
    decimals = min(MAX_DECIMALS, max(2, 3 - math.floor(math.log10(usd))))
    text = f"{usd:.{decimals}f}".rstrip("0")
    return "$" + (text if len(text.split(".")[1]) >= 2 else f"{usd:.2f}")


def no_price_note(model: str) -> str:
    """What a report says instead of a number for a model with no price."""
    return f"no price known for {model!r}: add it with [prices] in the job or --prices FILE"


@dataclass(frozen=True, slots=True)
class Tokens:
    """Token counts of one model: prompt, and completion (the maximum, for an estimate)."""

    prompt: int
    completion: int


@dataclass(frozen=True, slots=True)
class CostRange:
    """One model's estimated cost: `low` if no completion token is generated, `high` if
    every request uses all its max_tokens. Both None (with `note`) for an unpriced model."""

    model: str
    low_usd: float | None
    high_usd: float | None
    note: str | None = None


@dataclass(frozen=True, slots=True)
class CostEstimate:
    """The cost range of a batch before sending it. Totals cover the priced models only;
    `unpriced` names the others, whose cost is unknown, not zero."""

    models: tuple[CostRange, ...]
    low_usd: float
    high_usd: float
    unpriced: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        """The `--json` shape."""
        return {
            "models": {
                c.model: {"low_usd": c.low_usd, "high_usd": c.high_usd, "note": c.note}
                for c in self.models
            },
            "low_usd": self.low_usd,
            "high_usd": self.high_usd,
            "unpriced": list(self.unpriced),
        }


@dataclass(frozen=True, slots=True)
class ModelCost:
    """One model's actual cost from its usage; None (with `note`) for an unpriced model."""

    model: str
    usd: float | None
    note: str | None = None


@dataclass(frozen=True, slots=True)
class CostReport:
    """What a run cost: per model and in total (priced models only; see `unpriced`)."""

    models: tuple[ModelCost, ...]
    total_usd: float
    unpriced: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        """The summary.json shape."""
        return {
            "models": {c.model: {"usd": c.usd, "note": c.note} for c in self.models},
            "total_usd": self.total_usd,
            "unpriced": list(self.unpriced),
        }


def estimate_cost(table: PriceTable, estimated: Mapping[str, Tokens]) -> CostEstimate:
    """The cost range of `estimated` (per model: estimated prompt tokens, maximum
    completion tokens), summed exactly before rounding to floats once."""
    ranges: list[CostRange] = []
    low = high = Decimal(0)
    for model in sorted(estimated):
        tokens, price = estimated[model], table.price(model)
        if price is None:
            ranges.append(CostRange(model, None, None, no_price_note(model)))
            continue
        floor = price.cost_usd(tokens.prompt, 0)
        ceiling = price.cost_usd(tokens.prompt, tokens.completion)
        ranges.append(CostRange(model, float(floor), float(ceiling)))
        low, high = low + floor, high + ceiling
    unpriced = tuple(r.model for r in ranges if r.note)
    return CostEstimate(tuple(ranges), float(low), float(high), unpriced)


def actual_cost(table: PriceTable, used: Mapping[str, Tokens]) -> CostReport:
    """The cost of `used` (per model: prompt and completion tokens from replies' usage).
    Pass token totals, not per-request costs: one exact product per model."""
    costs: list[ModelCost] = []
    total = Decimal(0)
    for model in sorted(used):
        tokens, price = used[model], table.price(model)
        if price is None:
            costs.append(ModelCost(model, None, no_price_note(model)))
            continue
        usd = price.cost_usd(tokens.prompt, tokens.completion)
        costs.append(ModelCost(model, float(usd)))
        total += usd
    unpriced = tuple(c.model for c in costs if c.note)
    return CostReport(tuple(costs), float(total), unpriced)
