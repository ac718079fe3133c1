"""Cost: summary.json's `cost` section and the closing table's cost line from real runs
against the mock, priced by the bundled table, a job's [prices] and --prices FILE; and
the --max-cost guard. Every figure is worked out by hand from the mock's usage: a prompt
of `len(text) // 4 + 1` tokens, and one completion token under `max_tokens: 1`."""

from __future__ import annotations

import json
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import pytest
from click.testing import CliRunner
from jsonl import read_jsonl, write_jsonl

from batchrun import RunConfig, RunReport, run_batch
from batchrun.cli import main
from batchrun.mock import MockServer
from batchrun.prices import PriceTable, no_price_note

Factory = Callable[..., MockServer]
SMALL, LARGE, LOCAL = "mistral-small-latest", "mistral-large-latest", "my-local-model"
PROMPT = "x" * 40  # the mock counts 40 // 4 + 1 = 11 prompt tokens
PROMPT_TOKENS, COMPLETION_TOKENS = 11, 1  # max_tokens 1: the reply is cut to one word


def line(model: str, i: int = 0) -> dict[str, Any]:
    # The index goes in metadata, which the mock does not count as prompt text.
    return {
        "model": model,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": 1,
        "metadata": {"i": i},
    }


def inputs(tmp_path: Path, models: list[str]) -> Path:
    return write_jsonl(tmp_path / "in.jsonl", [line(m, i) for i, m in enumerate(models)])


async def run(config: RunConfig) -> RunReport:
    with anyio.fail_after(60):
        return await run_batch(config, api_key="k")


def config(path: Path, server: MockServer, **options: Any) -> RunConfig:
    return RunConfig(
        input_path=path, outdir=tmp_out(path), base_url=server.url, fsync=False, **options
    )


def tmp_out(path: Path) -> Path:
    return path.with_suffix(".out")


def usd(per_million: Decimal) -> float:
    """USD for a figure in USD-per-million x tokens, as the summary rounds it (once)."""
    return float(per_million.scaleb(-6))


def bundled_cost(model: str, lines: int) -> Decimal:
    price = PriceTable.bundled().price(model)
    assert price is not None, model
    return lines * (PROMPT_TOKENS * price.input + COMPLETION_TOKENS * price.output)


def assert_usage_as_computed(report: RunReport) -> None:
    """The hand computation's premise: every reply used 11 prompt and 1 completion token."""
    for record in read_jsonl(report.outdir / "results.jsonl"):
        usage = record["response"]["usage"]
        assert (usage["prompt_tokens"], usage["completion_tokens"]) == (11, 1)


# --- cost after a run -----------------------------------------------------------------------


@pytest.mark.anyio
async def test_summary_costs_each_model_and_the_total_from_usage(
    mock_server: Factory, tmp_path: Path
) -> None:
    path = inputs(tmp_path, [SMALL] * 6 + [LARGE] * 4)
    report = await run(config(path, mock_server()))
    assert report.exit_code == 0
    assert_usage_as_computed(report)
    small, large = bundled_cost(SMALL, 6), bundled_cost(LARGE, 4)
    cost = report.summary["cost"]
    assert cost["models"] == {
        SMALL: {"usd": usd(small), "note": None},
        LARGE: {"usd": usd(large), "note": None},
    }
    assert cost["total_usd"] == usd(small + large)  # summed exactly, rounded once
    assert cost["unpriced"] == []
    # The prices used, each with its source.
    for model in (SMALL, LARGE):
        price = PriceTable.bundled().price(model)
        assert price is not None
        assert cost["prices"][model] == price.to_dict()
        assert cost["prices"][model]["source"].startswith("https://")
    on_disk = json.loads((report.outdir / "summary.json").read_text())
    assert on_disk["cost"] == cost


def test_prices_file_overrides_the_cost_and_the_closing_table_shows_it(tmp_path: Path) -> None:
    path = inputs(tmp_path, [SMALL] * 10)
    prices = tmp_path / "prices.toml"
    prices.write_text(f'[{SMALL}]\ninput = 1.5\noutput = 2\nsource = "our contract"\n')
    result = CliRunner().invoke(
        main,
        [*mock_run(path), "--prices", str(prices)],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    # 10 x (11 x 1.5 + 1 x 2) = 185 USD per million tokens.
    assert summary["cost"]["total_usd"] == 0.000185
    assert summary["cost"]["models"][SMALL] == {"usd": 0.000185, "note": None}
    assert summary["cost"]["prices"][SMALL]["source"] == "our contract"
    assert "cost      $0.000185\n" in result.stderr
    # Without the file: the bundled price, another figure.
    plain = CliRunner().invoke(main, [*mock_run(path), "--fresh"])
    assert json.loads(plain.stdout)["cost"]["total_usd"] == usd(bundled_cost(SMALL, 10))


def mock_run(path: Path) -> list[str]:
    return [
        "run",
        str(path),
        "--mock",
        "--mock-latency-ms",
        "1",
        "--mock-fail-rate",
        "0",
        "--json",
    ]


def test_an_unpriced_model_costs_null_with_a_note_never_a_guess(tmp_path: Path) -> None:
    path = inputs(tmp_path, [LOCAL] * 3 + [SMALL])
    result = CliRunner().invoke(main, mock_run(path))
    assert result.exit_code == 0, result.output
    cost = json.loads(result.stdout)["cost"]
    assert cost["models"][LOCAL] == {"usd": None, "note": no_price_note(LOCAL)}
    assert cost["unpriced"] == [LOCAL]
    assert cost["total_usd"] == usd(bundled_cost(SMALL, 1))  # the priced model only
    assert LOCAL not in cost["prices"]
    assert f"for the priced models · no price for '{LOCAL}'" in result.stderr


@pytest.mark.anyio
async def test_job_prices_apply_and_a_prices_file_wins_over_them(
    mock_server: Factory, tmp_path: Path
) -> None:
    server = mock_server()
    path = inputs(tmp_path, [LOCAL, SMALL])
    job_prices = {LOCAL: {"input": 3, "output": 5}, SMALL: {"input": 0.5, "output": 0.5}}
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({SMALL: {"input": 1, "output": 7}}))
    report = await run(config(path, server, price_overrides=job_prices, prices_file=prices))
    cost = report.summary["cost"]
    # LOCAL from the job: 11 x 3 + 1 x 5 = 38; SMALL from the file: 11 x 1 + 1 x 7 = 18.
    assert cost["models"][LOCAL]["usd"] == 0.000038
    assert cost["models"][SMALL]["usd"] == 0.000018
    assert cost["total_usd"] == 0.000056
    assert cost["prices"][LOCAL]["source"] == "[prices]"
    assert cost["prices"][SMALL]["source"] == str(prices)


def test_an_unusable_prices_file_stops_the_run_before_it_sends(tmp_path: Path) -> None:
    path = inputs(tmp_path, [SMALL])
    prices = tmp_path / "prices.toml"
    prices.write_text(f"[{SMALL}]\ninput = -1\noutput = 2\n")
    result = CliRunner().invoke(main, [*mock_run(path), "--prices", str(prices)])
    assert result.exit_code == 1
    assert f"model '{SMALL}': 'input' must be a finite number >= 0" in result.stderr
    assert not tmp_out(path).exists() and not (tmp_path / "in.batchrun").exists()
    missing = CliRunner().invoke(main, [*mock_run(path), "--prices", str(tmp_path / "nope")])
    assert missing.exit_code == 1 and "cannot read prices file" in missing.stderr
