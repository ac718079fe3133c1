"""Prices: the bundled table, overrides and their checks, costs against hand-computed figures."""

from __future__ import annotations

import re
import tomllib
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from batchrun.errors import ConfigError
from batchrun.prices import (
    CostRange,
    ModelCost,
    PriceTable,
    Tokens,
    actual_cost,
    estimate_cost,
    no_price_note,
)

EMPTY = PriceTable({}, {})
# Prices chosen for the arithmetic, not read from the bundled table (which will change).
TABLE = EMPTY.with_overrides(
    {
        "small": {"input": 0.15, "output": 0.60},
        "big": {"input": 2, "output": 6, "source": "https://example.test/p", "date": "2026-01-02"},
        "code": {"input": Decimal("0.30"), "output": Decimal("0.90")},
    },
    source="test",
)


def bundled_file() -> dict[str, Any]:
    text = resources.files("batchrun").joinpath("data", "prices.toml").read_text("utf-8")
    return tomllib.loads(text)


# --- the arithmetic ---------------------------------------------------------------------


def test_cost_is_exact_where_floats_drift() -> None:
    small = TABLE.price("small")
    assert small is not None
    # 100 x 0.15 + 100 x 0.60 = 75 USD per million tokens -> 0.000075 USD.
    assert small.cost_usd(100, 100) == Decimal("0.000075")
    assert small.cost(100, 100) == 0.000075
    assert 100 * 0.15 / 1e6 + 100 * 0.60 / 1e6 != 0.000075  # what plain floats give


def test_cost_of_whole_millions() -> None:
    # 2M prompt x $2 + 1M completion x $6 = 4 + 6 = 10 USD.
    assert TABLE.cost("big", 2_000_000, 1_000_000) == 10.0
    assert TABLE.cost("big", 0, 0) == 0.0


def test_unknown_model_costs_none() -> None:
    assert TABLE.price("nobody") is None
    assert TABLE.cost("nobody", 10, 10) is None


def test_estimate_is_a_range_from_prompt_only_to_every_max_token() -> None:
    estimate = estimate_cost(
        TABLE,
        {
            "small": Tokens(prompt=12_000, completion=40_000),
            "code": Tokens(prompt=1_000_000, completion=500_000),
            "mystery": Tokens(prompt=10, completion=10),
        },
    )
    # small: low 12,000 x 0.15 = 1,800 -> 0.0018; high + 40,000 x 0.60 = 24,000 -> 0.0258.
    # code:  low 1,000,000 x 0.30 -> 0.30;       high + 500,000 x 0.90 -> 0.30 + 0.45 = 0.75.
    assert estimate.models == (
        CostRange("code", 0.30, 0.75),
        CostRange("mystery", None, None, no_price_note("mystery")),
        CostRange("small", 0.0018, 0.0258),
    )
    assert (estimate.low_usd, estimate.high_usd) == (0.3018, 0.7758)
    assert estimate.unpriced == ("mystery",)
    assert estimate.to_dict()["models"]["mystery"] == {
        "low_usd": None,
        "high_usd": None,
        "note": no_price_note("mystery"),
    }
    assert "--prices" in no_price_note("mystery")


def test_actual_cost_totals_tokens_then_prices_once() -> None:
    tenth = EMPTY.with_overrides({"m": {"input": 0.1, "output": 0.1}}, source="test")
    # Ten requests of 1,000 prompt tokens: per-request floats sum to 0.0010000000000000002.
    per_request = 0.0
    for _ in range(10):
        per_request += tenth.cost("m", 1_000, 0) or 0.0
    assert per_request != 0.001
    report = actual_cost(tenth, {"m": Tokens(prompt=10_000, completion=0), "x": Tokens(1, 1)})
    assert report.models == (ModelCost("m", 0.001), ModelCost("x", None, no_price_note("x")))
    assert report.total_usd == 0.001
    assert report.to_dict() == {
        "models": {
            "m": {"usd": 0.001, "note": None},
            "x": {"usd": None, "note": no_price_note("x")},
        },
        "total_usd": 0.001,
        "unpriced": ["x"],
    }


def test_nothing_priced_totals_zero_and_lists_every_model() -> None:
    estimate = estimate_cost(EMPTY, {"a": Tokens(1, 1), "b": Tokens(2, 2)})
    assert (estimate.low_usd, estimate.high_usd, estimate.unpriced) == (0.0, 0.0, ("a", "b"))


# --- the bundled table ------------------------------------------------------------------


def test_bundled_table_is_the_shipped_file_with_a_citation_per_entry() -> None:
    raw = bundled_file()
    table = PriceTable.bundled()
    assert set(table.entries) == set(raw["models"])
    assert len(table.entries) >= 10
    for model, entry in raw["models"].items():
        price = table.price(model)
        assert price is not None
        assert price.input == Decimal(repr(entry["input"]))
        assert price.output == Decimal(repr(entry["output"]))
        assert price.source == entry["source"]
        assert re.fullmatch(r"https://\S+", price.source), model
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", price.date or ""), model
        assert price.input >= 0 and price.output >= 0


def test_the_shared_bundled_table_is_read_only() -> None:
    table = PriceTable.bundled()
    assert PriceTable.bundled() is table  # parsed once
    with pytest.raises(TypeError):
        table.entries["x"] = table.entries["mistral-small-latest"]  # type: ignore[index]
    with pytest.raises(TypeError):
        table.aliases["x"] = "y"  # type: ignore[index]


def test_bundled_names_the_public_models() -> None:
    table = PriceTable.bundled()
    for model in ("mistral-large-latest", "mistral-small-latest", "codestral-latest"):
        assert table.price(model) is not None, model


def test_aliases_only_where_the_source_says_so() -> None:
    raw = bundled_file()
    table = PriceTable.bundled()
    for alias, entry in raw["aliases"].items():
        assert alias not in table.entries
        assert table.price(alias) == table.price(entry["model"]) is not None
        assert entry["source"].startswith("https://") and entry["date"]
    # A dated id or a -latest name the table does not list is unknown, never guessed from
    # a neighbour (magistral-small is listed; its -latest and a dated id are not).
    assert table.price("magistral-small") is not None
    for unknown in ("mistral-small-2503", "magistral-small-latest", "magistral-small-2509"):
        assert unknown not in table.entries and unknown not in table.aliases
        assert table.price(unknown) is None


# --- overrides --------------------------------------------------------------------------


def test_overrides_replace_and_extend_without_touching_the_original() -> None:
    bundled = PriceTable.bundled()
    before = bundled.price("mistral-small-latest")
    table = bundled.with_overrides(
        {
            "mistral-small-latest": {"input": 1, "output": 2},
            "my-vllm-model": {"input": 0, "output": 0.5},
        },
        source="[prices] in job.toml",
    )
    replaced = table.price("mistral-small-latest")
    assert replaced is not None
    assert (replaced.input, replaced.output) == (Decimal(1), Decimal(2))
    assert replaced.source == "[prices] in job.toml"
    assert table.cost("my-vllm-model", 1_000_000, 2_000_000) == 1.0
    assert bundled.price("mistral-small-latest") == before
    assert bundled.price("my-vllm-model") is None


def test_an_override_of_an_alias_name_wins_and_the_alias_follows_its_target() -> None:
    bundled = PriceTable.bundled()
    alias, target = next(iter(bundled.aliases.items()))
    shadowed = bundled.with_overrides({alias: {"input": 9, "output": 9}}, source="s")
    assert shadowed.cost(alias, 1_000_000, 0) == 9.0
    moved = bundled.with_overrides({target: {"input": 7, "output": 7}}, source="s")
    assert moved.cost(alias, 1_000_000, 0) == 7.0


def test_float_overrides_are_read_as_their_decimal_text() -> None:
    table = EMPTY.with_overrides({"m": {"input": 0.1, "output": 1e-7}}, source="s")
    price = table.price("m")
    assert price is not None
    assert (price.input, price.output) == (Decimal("0.1"), Decimal("1e-7"))


@pytest.mark.parametrize(
    ("entry", "says"),
    [
        ({"input": 1, "output": 1, "inptu": 2}, "unknown key 'inptu'"),
        ({"input": -0.01, "output": 1}, "'input' must be a finite number >= 0"),
        ({"input": 1, "output": float("nan")}, "'output' must be a finite number >= 0"),
        ({"input": float("inf"), "output": 1}, "'input' must be a finite number >= 0"),
        ({"input": Decimal("-Infinity"), "output": 1}, "'input' must be a finite number"),
        ({"input": True, "output": 1}, "'input' must be a number"),
        ({"input": "0.1", "output": 1}, "'input' must be a number"),
        ({"input": 1}, "missing 'output'"),
        ({"input": 1, "output": 1, "source": 3}, "'source' must be a string"),
        ({"input": 1, "output": 1, "date": 20260101}, "'date' must be a string"),
        (0.5, "must be a table with input and output"),
    ],
)
def test_bad_override_names_the_model_and_the_key(entry: Any, says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        EMPTY.with_overrides({"my-model": entry}, source="job.toml [prices]")
    message = str(caught.value)
    assert message.startswith("job.toml [prices]: model 'my-model'")
    assert says in message


def test_overrides_must_be_a_table_of_models() -> None:
    with pytest.raises(ConfigError, match="prices must be a table of models"):
        EMPTY.with_overrides([1, 2], source="s")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="model id must be a non-empty string"):
        EMPTY.with_overrides({"": {"input": 1, "output": 1}}, source="s")


# --- --prices FILE ----------------------------------------------------------------------


def test_prices_file_toml(tmp_path: Path) -> None:
    path = tmp_path / "prices.toml"
    path.write_text('[my-model]\ninput = 0.1\noutput = 0.3\nsource = "https://x.test"\n')
    table = EMPTY.with_file(path)
    price = table.price("my-model")
    assert price is not None
    assert (price.input, price.output, price.source) == (
        Decimal("0.1"),
        Decimal("0.3"),
        "https://x.test",
    )
    # 3 x 0.1 + 0 -> 0.3 per million -> 3e-7 USD, exactly.
    assert price.cost_usd(3, 0) == Decimal("3e-7")


def test_prices_file_json(tmp_path: Path) -> None:
    path = tmp_path / "prices.json"
    path.write_text('{"my-model": {"input": 0.1, "output": 0.3}}')
    price = EMPTY.with_file(path).price("my-model")
    assert price is not None
    assert (price.input, price.output, price.source) == (Decimal("0.1"), Decimal("0.3"), str(path))


def test_prices_file_json_nan_names_the_model_and_key(tmp_path: Path) -> None:
    path = tmp_path / "prices.json"
    path.write_text('{"m": {"input": NaN, "output": 1}}')
    with pytest.raises(ConfigError, match=r"model 'm': 'input' must be a finite number"):
        EMPTY.with_file(path)


@pytest.mark.parametrize(
    ("name", "text", "says"),
    [
        ("p.toml", "[m\ninput = 1", "not a valid prices file"),
        ("p.json", '{"m": ', "not a valid prices file"),
        ("p.json", "[1, 2]", "prices must be a JSON object"),
        ("p.toml", "m = 3", "model 'm': must be a table"),
        ("p.toml", "[m]\ninput = inf\noutput = 1", "model 'm': 'input' must be a finite"),
    ],
)
def test_bad_prices_file(tmp_path: Path, name: str, text: str, says: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(says)) as caught:
        EMPTY.with_file(path)
    assert str(path) in str(caught.value)


def test_missing_prices_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read prices file"):
        EMPTY.with_file(tmp_path / "nope.toml")
