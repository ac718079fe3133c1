"""Cost: summary.json's `cost` section and the closing table's cost line from real runs
against the mock, priced by the bundled table, a job's [prices] and --prices FILE; and
the --max-cost guard. Every figure is worked out by hand from the mock's usage: a prompt
of `len(text) // 4 + 1` tokens, and one completion token under `max_tokens: 1`."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonl import read_jsonl, write_jsonl

from batchrun import RunConfig, RunReport, run_batch
from batchrun.cli import main
from batchrun.config import Guards
from batchrun.errors import ConfigError
from batchrun.mock import MockServer
from batchrun.prices import PriceTable, Tokens, format_usd, no_price_note
from batchrun.records import Completed, Request
from batchrun.stops import CostLedger

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
    assert re.search(r"^cost +\$0\.000185$", result.stderr, re.M)  # the closing table
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


# --- the --max-cost guard -------------------------------------------------------------------

# Dear prices, so a few lines reach a limit: a line is estimated at 14 prompt tokens
# (ceil(40 / 4) + 4 for its message) + 1 max completion token = 15 x 1,000 = 0.015 USD,
# and costs 11 + 1 = 12 x 1,000 = 0.012 USD once its usage is known.
DEAR = {SMALL: {"input": 1000, "output": 1000}}
ESTIMATE_USD, ACTUAL_USD = 0.015, 0.012


def dear_prices(tmp_path: Path) -> Path:
    path = tmp_path / "dear.toml"
    path.write_text(f"[{SMALL}]\ninput = 1000\noutput = 1000\n")
    return path


@pytest.mark.anyio
async def test_max_cost_stops_before_the_limit_counts_every_session_and_resumes(
    mock_server: Factory, tmp_path: Path
) -> None:
    server = mock_server()
    path = inputs(tmp_path, [SMALL] * 40)

    def guarded(limit: float) -> RunConfig:
        return config(
            path, server, concurrency=2, price_overrides=DEAR, guards=Guards(max_cost=limit)
        )

    report = await run(guarded(0.1))
    assert report.exit_code == 3
    assert report.summary["reason"].startswith("--max-cost 0.1 USD reached")
    assert report.summary["flow"]["guard"] == "max_cost"
    assert_usage_as_computed(report)
    ok = report.summary["counts"]["ok"]
    # Stopped before the limit: what completed costs no more than it; and the lines it
    # let go, each at its estimate, plus one more, would have passed it.
    assert ok > 0 and ok * ACTUAL_USD <= 0.1 < (ok + 1) * ESTIMATE_USD
    assert report.summary["cost"]["total_usd"] == pytest.approx(ok * ACTUAL_USD)
    sent = server.requests_received
    # The same limit again: the first session's spending counts, so at most one more
    # line fits under it.
    again = await run(guarded(0.1))
    assert again.exit_code == 3 and server.requests_received - sent <= 1
    assert again.summary["cost"]["total_usd"] <= 0.1
    done = await run(guarded(10))
    assert done.exit_code == 0 and done.summary["counts"]["ok"] == 40
    assert server.requests_received == 40  # nothing sent twice
    assert done.summary["cost"]["total_usd"] == pytest.approx(40 * ACTUAL_USD)


def test_max_cost_flag_exits_3_naming_the_guard_and_a_raised_limit_finishes(
    tmp_path: Path,
) -> None:
    path = inputs(tmp_path, [SMALL] * 20)
    prices = ["--prices", str(dear_prices(tmp_path))]
    result = CliRunner().invoke(main, [*mock_run(path), *prices, "--max-cost", "0.05"])
    assert result.exit_code == 3, result.output
    assert "--max-cost 0.05 USD reached" in result.stderr
    summary = json.loads(result.stdout)
    assert summary["status"] == "aborted" and summary["cost"]["total_usd"] <= 0.05
    assert "to resume: batchrun run" in result.stderr
    raised = CliRunner().invoke(main, [*mock_run(path), *prices, "--max-cost", "1"])
    assert raised.exit_code == 0, raised.output
    assert json.loads(raised.stdout)["cost"]["total_usd"] == pytest.approx(20 * ACTUAL_USD)


@pytest.mark.anyio
async def test_max_cost_refuses_to_start_with_a_model_it_cannot_price(
    mock_server: Factory, tmp_path: Path
) -> None:
    server = mock_server()
    path = inputs(tmp_path, [SMALL, LOCAL, SMALL])
    with pytest.raises(ConfigError, match=f"'{LOCAL}' has none") as refused:
        await run(config(path, server, guards=Guards(max_cost=1.0)))
    assert refused.value.exit_code == 1
    assert server.requests_received == 0
    # Priced by the job (or --prices), it runs.
    priced = {LOCAL: {"input": 1, "output": 1}}
    report = await run(config(path, server, guards=Guards(max_cost=1.0), price_overrides=priced))
    assert report.exit_code == 0 and server.requests_received == 3


def test_max_cost_refusal_through_the_cli_names_the_model(tmp_path: Path) -> None:
    path = inputs(tmp_path, [LOCAL])
    result = CliRunner().invoke(main, [*mock_run(path), "--max-cost", "1"])
    assert result.exit_code == 1
    assert f"--max-cost needs a price for every model, and '{LOCAL}' has none" in result.stderr
    for nonsense in ("0", "-1", "nan", "inf", "cheap"):
        bad = CliRunner().invoke(main, [*mock_run(path), "--max-cost", nonsense])
        assert bad.exit_code == 1 and "Invalid value for '--max-cost'" in bad.stderr
    with pytest.raises(ConfigError):
        Guards(max_cost=float("nan"))


@pytest.mark.anyio
async def test_max_cost_counts_earlier_unguarded_sessions(
    mock_server: Factory, tmp_path: Path
) -> None:
    server = mock_server()
    path = inputs(tmp_path, [SMALL] * 20)
    first = await run(config(path, server, limit=5, price_overrides=DEAR))
    assert first.summary["cost"]["total_usd"] == pytest.approx(5 * ACTUAL_USD)  # 0.06
    # 0.06 spent: with 0.1 USD, only lines whose estimates fit in 0.04 go (two at most).
    guarded = config(path, server, price_overrides=DEAR, guards=Guards(max_cost=0.1))
    report = await run(guarded)
    assert report.exit_code == 3
    assert 1 <= server.requests_received - 5 <= 2
    assert report.summary["cost"]["total_usd"] <= 0.1


@pytest.mark.parametrize(
    ("usd", "shown"),
    [
        (0.0, "$0"),
        (0.000075, "$0.000075"),  # a fraction of a cent stays visible
        (0.015, "$0.015"),
        (0.1, "$0.10"),
        (0.123456, "$0.1235"),  # four significant digits under a dollar
        (1234.5, "$1,234.50"),
    ],
)
def test_costs_are_shown_to_the_digit_that_matters(usd: float, shown: str) -> None:
    assert format_usd(usd) == shown


# --- the guard's books, directly ------------------------------------------------------------

LEDGER_PRICES = PriceTable({}, {}).with_overrides(
    {SMALL: {"input": 0.15, "output": 0.60}, LARGE: {"input": 2, "output": 6}}, source="test"
)


def request(index: int, model: str, prompt: int, completion: int) -> Request:
    return Request(index, index + 1, None, b"{}", False, prompt + completion, model, completion)


def reply(index: int, model: str | None, usage: dict[str, int] | None) -> Completed:
    response: dict[str, Any] = {"model": model, "choices": []}
    if usage is not None:
        response["usage"] = usage
    data = {"index": index, "status": "ok", "response": response}
    return Completed(index, json.dumps(data).encode(), failed=False)


def failure(index: int, error_type: str) -> Completed:
    data = {"index": index, "status": "error", "error": {"type": error_type}}
    return Completed(index, json.dumps(data).encode(), failed=True)


def exact(model: str, prompt: int, completion: int) -> Decimal:
    price = LEDGER_PRICES.price(model)
    assert price is not None
    return price.cost_usd(prompt, completion)


def test_settling_prices_what_the_record_says() -> None:
    ledger = CostLedger(1.0, LEDGER_PRICES, None)
    for i in range(6):
        assert ledger.admit(request(i, SMALL, 100, 50)) is None
    assert ledger.committed == 6 * exact(SMALL, 100, 50)
    ledger.settle(
        [
            reply(0, SMALL, {"prompt_tokens": 80, "completion_tokens": 10}),
            reply(1, LARGE, {"prompt_tokens": 80, "completion_tokens": 10}),  # answered by
            reply(2, LOCAL, {"prompt_tokens": 80, "completion_tokens": 10}),  # unpriced: SMALL
            reply(3, SMALL, None),  # no usage: the estimate stands
            failure(4, "http_status"),  # a 5xx or 4xx is not paid for
            failure(5, "timeout"),  # may have been generated: the estimate stands
            Completed(99, b"{}", failed=True),  # never admitted (an invalid line)
        ]
    )
    assert ledger.committed == 0
    assert ledger.spent == (
        exact(SMALL, 80, 10)
        + exact(LARGE, 80, 10)
        + exact(SMALL, 80, 10)
        + 2 * exact(SMALL, 100, 50)
    )


def test_earlier_sessions_count_and_an_unpriced_one_refuses() -> None:
    before = {SMALL: Tokens(1000, 100), LARGE: Tokens(10, 1)}
    ledger = CostLedger(1.0, LEDGER_PRICES, before)
    assert ledger.spent == exact(SMALL, 1000, 100) + exact(LARGE, 10, 1)
    with pytest.raises(ConfigError, match=f"used model '{LOCAL}', which has no price"):
        CostLedger(1.0, LEDGER_PRICES, {LOCAL: Tokens(1, 1)})


@settings(max_examples=200, deadline=None)
@given(
    limit=st.floats(0.0001, 0.05),
    lines=st.lists(
        st.tuples(
            st.sampled_from([SMALL, LARGE]),
            st.integers(0, 2000),  # estimated prompt tokens
            st.integers(0, 2000),  # max completion tokens
            st.floats(0, 1),  # share of the estimate the reply really used
            st.booleans(),  # settle the lines admitted so far after this one
        ),
        max_size=60,
    ),
)
def test_the_guard_never_lets_spending_pass_the_limit(
    limit: float, lines: list[tuple[str, int, int, float, bool]]
) -> None:
    """Whatever the order of admissions and settlements, as long as replies use no more
    than estimated: committed + spent never passes the limit, every admitted line is
    settled to its exact cost, and nothing stays committed."""
    ledger = CostLedger(limit, LEDGER_PRICES, None)
    pending: list[Completed] = []
    paid = Decimal(0)
    for index, (model, prompt, completion, used, settle_now) in enumerate(lines):
        if ledger.admit(request(index, model, prompt, completion)) is None:
            usage = {
                "prompt_tokens": int(prompt * used),
                "completion_tokens": int(completion * used),
            }
            pending.append(reply(index, model, usage))
            paid += exact(model, usage["prompt_tokens"], usage["completion_tokens"])
        assert ledger.spent + ledger.committed <= ledger.limit
        if settle_now:
            ledger.settle(pending)
            pending.clear()
    ledger.settle(pending)
    assert ledger.committed == 0 and ledger.spent == paid <= ledger.limit
