"""Input reading: bounded lines, formats, per-line errors with the right line number."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import anyio
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonl import write_jsonl

from batchrun import RunConfig, run_batch
from batchrun.errors import InputError
from batchrun.mock import MockServer
from batchrun.reader import InputFormat, LineParser, iter_raw_lines, iter_requests, scan_input
from batchrun.records import BadLine, Request

GOOD = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def raw_lines(data: bytes, max_bytes: int = 1000) -> list[tuple[int, bytes | None]]:
    return [(line.number, line.data) for line in iter_raw_lines(io.BytesIO(data), max_bytes)]


def test_lf_crlf_bom_blank_lines_and_missing_final_newline() -> None:
    data = b"\xef\xbb\xbfa\r\n\nb\n  \r\nc"
    assert raw_lines(data) == [(1, b"a"), (3, b"b"), (5, b"c")]


def test_over_long_line_is_reported_not_kept() -> None:
    data = b"short\n" + b"x" * 5000 + b"\nafter\n"
    lines = list(iter_raw_lines(io.BytesIO(data), max_bytes=100))
    assert [(line.number, line.data) for line in lines] == [(1, b"short"), (2, None), (3, b"after")]
    assert lines[1].length == 5000


def test_huge_line_is_never_held_whole(tmp_path: Path) -> None:
    # 50 MB on one line: the reader must skip it in bounded memory and go on.
    path = tmp_path / "huge.jsonl"
    with path.open("wb") as out:
        out.write(orjson.dumps(GOOD) + b"\n")
        out.write(b'{"model": "' + b"a" * (50 * 1024 * 1024) + b'"}\n')
        out.write(orjson.dumps(GOOD) + b"\n")
    parser = LineParser(InputFormat.PLAIN)
    items = list(iter_requests(path, parser, 1024 * 1024, skip=lambda i: False))
    assert isinstance(items[0], Request)
    assert isinstance(items[1], BadLine)
    assert items[1].line == 2
    assert "max-line-bytes" in str(items[1].error)
    assert isinstance(items[2], Request)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b'{"model": "m", "messages": [}', "invalid JSON"),
        (b"\xff\xfe{}", "not valid UTF-8"),
        (b"[1, 2]", "expected a JSON object, got an array"),
        (b'"text"', "expected a JSON object, got a string"),
        (b"null", "expected a JSON object, got null"),
        (b'{"model": "m", "messages": [], "temperature": NaN}', "invalid JSON"),
        (b"[" * 5000 + b"]" * 5000, "invalid JSON"),
        (b'{"messages": [{"role": "user", "content": "x"}]}', "model"),
        (b'{"model": "m"}', "messages"),
        (
            b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": "1"}',
            "temperature",
        ),
        (b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "top_p": 3}', "top_p"),
    ],
)
def test_bad_lines_become_invalid_input(line: bytes, expected: str) -> None:
    parser = LineParser(InputFormat.PLAIN)
    raw = next(iter_raw_lines(io.BytesIO(line), 1 << 20))
    item = parser.parse(raw, 0)
    assert isinstance(item, BadLine), item
    assert expected in str(item.error)
    assert item.error.line == 1
    assert item.error.to_record()["type"] == "invalid_input"


def test_formats_are_detected(tmp_path: Path) -> None:
    mistral = {"custom_id": "a", "body": {"messages": GOOD["messages"]}}
    openai = {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": GOOD}
    cases = [
        (GOOD, InputFormat.PLAIN),
        (mistral, InputFormat.MISTRAL_BATCH),
        (openai, InputFormat.OPENAI_BATCH),
    ]
    for obj, fmt in cases:
        path = write_jsonl(tmp_path / f"{fmt}.jsonl", [obj])
        assert scan_input(path, 1 << 20).format is fmt


def test_mistral_batch_takes_model_from_cli(tmp_path: Path) -> None:
    line = {"custom_id": "a", "body": {"messages": GOOD["messages"]}}
    path = write_jsonl(tmp_path / "in.jsonl", [line])
    without = list(
        iter_requests(path, LineParser(InputFormat.MISTRAL_BATCH), 1 << 20, skip=lambda i: False)
    )
    assert isinstance(without[0], BadLine)
    assert without[0].error.field == "model"
    parser = LineParser(InputFormat.MISTRAL_BATCH, default_model="mistral-small-latest")
    (item,) = iter_requests(path, parser, 1 << 20, skip=lambda i: False)
    assert isinstance(item, Request)
    assert item.custom_id == "a"
    assert orjson.loads(item.payload)["model"] == "mistral-small-latest"


def test_openai_envelope_is_checked(tmp_path: Path) -> None:
    bad = {"custom_id": "a", "method": "GET", "url": "/v1/chat/completions", "body": GOOD}
    parser = LineParser(InputFormat.OPENAI_BATCH)
    path = write_jsonl(tmp_path / "in.jsonl", [bad])
    (item,) = iter_requests(path, parser, 1 << 20, skip=lambda i: False)
    assert isinstance(item, BadLine)
    assert item.error.field == "method"


def test_mixed_formats_are_per_line_errors(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [GOOD, {"custom_id": "x", "body": GOOD}])
    items = list(iter_requests(path, LineParser(InputFormat.PLAIN), 1 << 20, skip=lambda i: False))
    assert isinstance(items[1], BadLine)
    assert "one format per file" in str(items[1].error)


def test_duplicate_custom_ids_are_refused_with_lines(tmp_path: Path) -> None:
    lines = [{"custom_id": cid, "body": GOOD} for cid in ["a", "b", "a", "c", "b"]]
    path = write_jsonl(tmp_path / "in.jsonl", lines)
    with pytest.raises(InputError) as info:
        scan_input(path, 1 << 20)
    message = str(info.value)
    assert "'a' on lines 1 and 3" in message
    assert "'b' on lines 2 and 5" in message
    assert "2 in all" in message


def test_scan_hashes_and_counts(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [GOOD, GOOD])
    path.write_bytes(path.read_bytes() + b"\n\n")
    scan = scan_input(path, 1 << 20)
    assert scan.requests == 2
    import hashlib

    assert scan.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_skip_avoids_parsing_and_limit_stops(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [GOOD] * 5)
    parser = LineParser(InputFormat.PLAIN)
    items = list(iter_requests(path, parser, 1 << 20, skip=lambda i: i % 2 == 0, limit=4))
    assert [item.index for item in items] == [1, 3]


def test_plain_lines_are_sent_byte_for_byte_when_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{ "model": "m",  "messages": [{"role": "user", "content": "hi"}] }\n')
    (item,) = iter_requests(path, LineParser(InputFormat.PLAIN), 1 << 20, skip=lambda i: False)
    assert isinstance(item, Request)
    assert item.payload == path.read_bytes().rstrip(b"\n")


def test_force_stream_sets_the_flag(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [GOOD])
    parser = LineParser(InputFormat.PLAIN, force_stream=True)
    (item,) = iter_requests(path, parser, 1 << 20, skip=lambda i: False)
    assert isinstance(item, Request)
    assert item.stream
    assert orjson.loads(item.payload)["stream"] is True


junk = st.binary(max_size=40).filter(lambda b: b"\n" not in b)


@settings(max_examples=60, deadline=None)
@given(
    before=st.lists(st.sampled_from([orjson.dumps(GOOD), b"", b"  ", b"\r"]), max_size=6),
    bad=junk,
    after=st.lists(st.sampled_from([orjson.dumps(GOOD), b""]), max_size=4),
    crlf=st.booleans(),
)
def test_a_bad_line_is_reported_at_its_line_number(
    before: list[bytes], bad: bytes, after: list[bytes], crlf: bool
) -> None:
    sep = b"\r\n" if crlf else b"\n"
    bad_line = b"{" + bad  # never a valid object
    data = sep.join([*before, bad_line, *after]) + sep
    parser = LineParser(InputFormat.PLAIN)
    items = [
        parser.parse(raw, i) for i, raw in enumerate(iter_raw_lines(io.BytesIO(data), 1 << 20))
    ]
    bad_items = [item for item in items if isinstance(item, BadLine)]
    assert len(bad_items) == 1
    assert bad_items[0].line == len(before) + 1
    assert bad_items[0].error.line == len(before) + 1
    good = sum(1 for b in [*before, *after] if b.strip())
    assert len(items) == good + 1


@pytest.mark.parametrize(
    ("line", "fmt", "custom_id"),
    [
        (
            {"custom_id": "o-1", "url": "/v1/embeddings", "body": GOOD},
            InputFormat.OPENAI_BATCH,
            "o-1",
        ),
        ({"custom_id": "m-1", "body": "not an object"}, InputFormat.MISTRAL_BATCH, "m-1"),
        ({"custom_id": "m-2", "body": {"messages": []}}, InputFormat.MISTRAL_BATCH, "m-2"),
        ({"custom_id": "p-1", "body": GOOD}, InputFormat.PLAIN, "p-1"),  # wrong format
        ({"custom_id": 7, "body": GOOD}, InputFormat.MISTRAL_BATCH, None),
    ],
)
def test_a_parsed_line_that_fails_validation_keeps_its_custom_id(
    tmp_path: Path, line: dict[str, object], fmt: InputFormat, custom_id: str | None
) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [line])
    parser = LineParser(fmt, default_model="m")
    (item,) = iter_requests(path, parser, 1 << 20, skip=lambda i: False)
    assert isinstance(item, BadLine)
    assert item.custom_id == custom_id


def test_only_the_scanned_bytes_are_read(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [GOOD, GOOD])
    scan = scan_input(path, 1 << 20)
    assert scan.size == len(path.read_bytes())
    with path.open("ab") as more:
        more.write(orjson.dumps(GOOD) + b"\n")
    parser = LineParser(InputFormat.PLAIN)
    items = list(iter_requests(path, parser, 1 << 20, skip=lambda i: False, size=scan.size))
    assert len(items) == 2


@pytest.mark.anyio
async def test_invalid_input_records_carry_the_custom_id_end_to_end(
    mock_server: Callable[..., MockServer], tmp_path: Path
) -> None:
    good = {"custom_id": "a-1", "method": "POST", "url": "/v1/chat/completions", "body": GOOD}
    bad_url = {**good, "custom_id": "a-2", "url": "/v1/embeddings"}
    bad_body = {**good, "custom_id": "a-3", "body": {"model": "m"}}
    path = write_jsonl(tmp_path / "in.jsonl", [good, bad_url, bad_body])
    server = mock_server()
    config = RunConfig(input_path=path, outdir=tmp_path / "out", base_url=server.url)
    with anyio.fail_after(30):
        report = await run_batch(config, api_key="sk-reader-test-key")
    assert report.exit_code == 2
    records = [
        orjson.loads(x) for x in (tmp_path / "out" / "results.jsonl").read_bytes().splitlines()
    ]
    assert [(r["custom_id"], r["status"]) for r in records] == [
        ("a-1", "ok"),
        ("a-2", "error"),
        ("a-3", "error"),
    ]
    assert records[1]["error"]["field"] == "url"
