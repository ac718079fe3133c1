"""`batchrun validate`: every line checked without sending, through the CLI; token and
cost estimates against hand-computed figures, exit codes 0/2/1, the --json shape, and
agreement with what a real run against the mock records."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result
from jsonl import read_jsonl, write_jsonl

from batchrun.checkfile import MAX_SHOWN
from batchrun.cli import main
from batchrun.limits import DEFAULT_MAX_TOKENS
from batchrun.prices import no_price_note

SMALL, LOCAL = "mistral-small-latest", "my-local-model"
PROMPT = "x" * 40  # estimated: ceil(40 / 4) = 10 tokens + 4 for the message = 14


def line(model: str = SMALL, max_tokens: int | None = 5, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": PROMPT}]}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    return {**body, **extra}


def prices_file(tmp_path: Path) -> Path:
    path = tmp_path / "prices.toml"
    path.write_text(f"[{SMALL}]\ninput = 2\noutput = 4\n[{LOCAL}]\ninput = 1\noutput = 3\n")
    return path


def validate(*args: str) -> Result:
    return CliRunner().invoke(main, ["validate", *args])


def as_json(result: Result) -> dict[str, Any]:
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def test_valid_file_exits_0_with_estimates_computed_by_hand(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "in.jsonl", [line(SMALL)] * 3 + [line(LOCAL, max_tokens=None)] * 2
    )
    result = validate(str(path), "--prices", str(prices_file(tmp_path)), "--json")
    assert result.exit_code == 0, result.output
    report = as_json(result)
    assert (report["lines"], report["valid"], report["invalid"]) == (5, 5, 0)
    assert report["invalid_lines"] == [] and report["invalid_not_listed"] == 0
    # SMALL: 3 x 14 prompt, 3 x 5 completion. LOCAL: 2 x 14, and no max_tokens: 1024 each.
    assert report["models"] == {
        LOCAL: {"requests": 2, "prompt_tokens": 28, "max_completion_tokens": 2 * 1024},
        SMALL: {"requests": 3, "prompt_tokens": 42, "max_completion_tokens": 15},
    }
    assert DEFAULT_MAX_TOKENS == 1024
    assert report["tokens"] == {"prompt_tokens": 70, "max_completion_tokens": 2063}
    cost = report["cost"]
    # SMALL at 2/4: low 42 x 2 = 84, high 84 + 15 x 4 = 144 (USD per million).
    # LOCAL at 1/3: low 28 x 1 = 28, high 28 + 2048 x 3 = 6172.
    assert cost["models"][SMALL] == {"low_usd": 0.000084, "high_usd": 0.000144, "note": None}
    assert cost["models"][LOCAL] == {"low_usd": 0.000028, "high_usd": 0.006172, "note": None}
    assert (cost["low_usd"], cost["high_usd"]) == (0.000112, 0.006316)
    assert cost["prices"][SMALL]["source"] == str(tmp_path / "prices.toml")
    text = validate(str(path), "--prices", str(prices_file(tmp_path)))
    assert text.exit_code == 0
    assert f"{SMALL}: 3 requests · ~42 prompt tokens · 15 max completion tokens" in text.stdout
    assert "5 requests · $0.000112 to $0.006316" in text.stdout


def test_invalid_lines_exit_2_listing_the_first_20_and_counting_the_rest(tmp_path: Path) -> None:
    bad = [b"{not json", line(messages=[]), line(temperature="hot")] * 9  # 27 bad lines
    path = write_jsonl(tmp_path / "in.jsonl", [line(), *bad, line()])
    result = validate(str(path), "--json")
    assert result.exit_code == 2, result.output
    report = as_json(result)
    assert (report["lines"], report["valid"], report["invalid"]) == (29, 2, 27)
    listed = report["invalid_lines"]
    assert len(listed) == MAX_SHOWN and report["invalid_not_listed"] == 27 - MAX_SHOWN
    assert [b["line"] for b in listed] == list(range(2, 2 + MAX_SHOWN))
    assert listed[0]["reason"].startswith("invalid JSON")
    assert listed[1]["field"] == "messages"
    assert listed[2]["field"] == "temperature"
    assert listed[2]["message"].startswith("line 4: temperature: ")
    assert report["models"][SMALL]["requests"] == 2  # only valid lines are estimated
    text = validate(str(path))
    assert text.exit_code == 2
    assert "line 2: invalid JSON" in text.stdout
    assert f"... and {27 - MAX_SHOWN} more" in text.stdout


def test_a_file_no_run_could_use_exits_1(tmp_path: Path) -> None:
    missing = validate(str(tmp_path / "missing.jsonl"))
    assert missing.exit_code == 1 and "cannot read" in missing.stderr
    dupes = write_jsonl(
        tmp_path / "dupes.jsonl",
        [{"custom_id": "a", "body": line()}, {"custom_id": "a", "body": line()}],
    )
    result = validate(str(dupes), "--json")
    assert result.exit_code == 1 and "duplicate custom_id" in result.stderr
    assert result.stdout == ""
    no_model = write_jsonl(
        tmp_path / "batch.jsonl", [{"custom_id": "a", "body": {"messages": line()["messages"]}}]
    )
    refused = validate(str(no_model))
    assert refused.exit_code == 1 and "pass -m MODEL" in refused.stderr
    # With -m, as `run -m`, the same file is fine and its lines take that model.
    given = validate(str(no_model), "-m", SMALL, "--json")
    assert given.exit_code == 0 and list(as_json(given)["models"]) == [SMALL]
    bad_prices = tmp_path / "p.toml"
    bad_prices.write_text("[x]\ninput = 1\n")
    priced = validate(str(no_model), "-m", SMALL, "--prices", str(bad_prices))
    assert priced.exit_code == 1 and "missing 'output'" in priced.stderr


def test_an_unpriced_model_gets_a_note_and_stays_out_of_the_totals(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [line(LOCAL), line(SMALL)])
    report = as_json(validate(str(path), "--json"))
    cost = report["cost"]
    assert cost["models"][LOCAL] == {
        "low_usd": None,
        "high_usd": None,
        "note": no_price_note(LOCAL),
    }
    assert cost["unpriced"] == [LOCAL]
    assert cost["low_usd"] == cost["models"][SMALL]["low_usd"]
    text = validate(str(path)).stdout
    assert (
        f"{LOCAL}: 1 request · ~14 prompt tokens · 5 max completion tokens · cost unknown" in text
    )
    assert f"for the priced models (no price for '{LOCAL}')" in text


def test_override_model_checks_every_line_as_sent_to_it(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [line(LOCAL), line(SMALL)])
    report = as_json(validate(str(path), "--override-model", SMALL, "--json"))
    assert report["models"] == {
        SMALL: {"requests": 2, "prompt_tokens": 28, "max_completion_tokens": 10}
    }


def test_validate_flags_exactly_the_lines_a_run_records_as_invalid(tmp_path: Path) -> None:
    lines: list[object] = [
        line(),
        b"\xff\xfe not utf-8",
        line(messages=[{"role": "robot", "content": "x"}]),
        b"[1, 2]",
        line(max_tokens=0),
        line(),
    ]
    path = write_jsonl(tmp_path / "in.jsonl", lines)
    report = as_json(validate(str(path), "--json"))
    run = CliRunner().invoke(
        main, ["run", str(path), "--mock", "--mock-latency-ms", "1", "--mock-fail-rate", "0", "-q"]
    )
    assert run.exit_code == 2, run.output
    records = read_jsonl(tmp_path / "in.batchrun" / "results.jsonl")
    invalid = [r for r in records if r["status"] == "error"]
    assert {r["error"]["type"] for r in invalid} == {"invalid_input"}
    assert [(r["line"], r["error"]["message"]) for r in invalid] == [
        (b["line"], b["message"]) for b in report["invalid_lines"]
    ]
