"""`batchrun report` over stored records of any shape: every value in a record is
untrusted (hand-edited files, a foreign tool, a server's verbatim reply), so the tables,
`--json` and `--html` must come out whatever the records hold, and count each line once."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import orjson
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batchrun.cli import main

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
JSON = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
TEXT = st.text(alphabet=st.sampled_from("<>&\"'[]/ ascript\u2028\U0001f600"), max_size=16)
NUMBERS = st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(2**40), 2**40)


@st.composite
def records(draw: st.DrawFn, index: int) -> dict[str, Any]:
    """A record as a run writes it, each field possibly replaced by anything."""

    def field(usual: st.SearchStrategy[Any]) -> Any:
        return draw(usual | JSON)

    return {
        "index": index,
        "custom_id": field(TEXT),
        "status": field(st.sampled_from(["ok", "error"])),
        "response": field(
            st.fixed_dictionaries(
                {
                    "model": TEXT,
                    "usage": st.dictionaries(
                        st.sampled_from(["prompt_tokens", "completion_tokens", "total_tokens"]),
                        JSON | st.integers(0, 2**40),
                    ),
                }
            )
        ),
        "error": field(st.fixed_dictionaries({"type": TEXT, "message": TEXT})),
        "latency_ms": field(NUMBERS),
        "ttft_ms": field(NUMBERS),
        "finished_at": field(NUMBERS | st.floats(0, 2**34)),
        "throttled": field(st.integers(0, 2**40)),
        "score": field(st.dictionaries(TEXT, st.sampled_from([0, 1]) | JSON, max_size=3)),
        "slice": field(TEXT),
    }


@st.composite
def outdirs(draw: st.DrawFn) -> tuple[list[dict[str, Any]], Any]:
    count = draw(st.integers(1, 8))
    lines = [draw(records(i)) for i in range(count)]
    summary = draw(
        st.fixed_dictionaries({"eval": st.fixed_dictionaries({"fail_under": JSON, "slice": JSON})})
        | JSON
    )
    return lines, summary


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(outdirs())
def test_any_stored_records_make_a_report_a_json_document_and_a_page(
    found: tuple[list[dict[str, Any]], Any],
) -> None:
    lines, summary = found
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        out.mkdir()
        (out / "manifest.json").write_bytes(orjson.dumps({"requests": len(lines)}))
        (out / "summary.json").write_bytes(orjson.dumps(summary))
        (out / "results.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in lines))
        page = Path(tmp) / "page.html"
        runner = CliRunner()
        for flags in ([], ["--json"], ["--html", str(page)]):
            result = runner.invoke(main, ["report", str(out), *flags])
            assert result.exit_code == 0, (flags, result.output, result.exception)
        document = orjson.loads(runner.invoke(main, ["report", str(out), "--json"]).output)
        counts = document["counts"]
        assert counts["done"] == counts["ok"] + counts["failed"] == len(lines)
        timeline = document["timeline"]
        if timeline is not None:
            timed = sum(timeline["ok"]) + sum(timeline["failed"])
            assert timed + timeline["untimed"] == len(lines)
        if document["eval"] is not None:
            for entry in document["eval"]["scorers"].values():
                assert entry["count"] == len(lines)
        text = page.read_text(encoding="utf-8")
        assert text.count("<script") == 2
