"""Journal, ordered writer and resume scan: properties over completion orders and crashes."""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import anyio
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batchrun import run_batch
from batchrun.config import RunConfig
from batchrun.errors import ResumeRefused
from batchrun.journal import ResumeState, SentLog, count_resent
from batchrun.mock import MockServer
from batchrun.outdir import OutdirLock, Paths
from batchrun.reader import InputFormat, InputScan
from batchrun.records import Completed
from batchrun.results import ResultWriter
from batchrun.resume import open_outdir


def record(index: int, failed: bool = False) -> Completed:
    status = "error" if failed else "ok"
    body: dict[str, object] = {"index": index, "status": status}
    if failed:
        body["error"] = {"type": "http_status", "status_code": 500, "retryable": True}
    return Completed(index, orjson.dumps(body), failed)


def open_state(outdir: Path, requests: int, **options: bool) -> tuple[OutdirLock, ResumeState]:
    config = RunConfig(input_path=outdir / "in.jsonl", outdir=outdir, **options)  # type: ignore[arg-type]
    scan = InputScan(sha256="0" * 64, requests=requests, format=InputFormat.PLAIN)
    return open_outdir(config, scan)


def write(outdir: Path, state: ResumeState, batches: list[list[int]], failed: set[int]) -> None:
    writer = ResultWriter(Paths(outdir), state)
    for batch in batches:
        items = [record(i, i in failed) for i in batch]
        writer.append(items)
        writer.sync()
        writer.emit()
    writer.close()


def indices(path: Path) -> list[int]:
    return [orjson.loads(line)["index"] for line in path.read_bytes().splitlines()]


def batches_of(order: list[int], cuts: list[int]) -> list[list[int]]:
    edges = sorted({0, len(order), *[c % (len(order) + 1) for c in cuts]})
    return [order[a:b] for a, b in itertools.pairwise(edges) if b > a]


@settings(max_examples=60, deadline=None)
@given(
    order=st.integers(1, 60).flatmap(lambda n: st.permutations(list(range(n)))),
    cuts=st.lists(st.integers(0, 60), max_size=6),
    failed=st.sets(st.integers(0, 59), max_size=10),
)
def test_results_are_ordered_for_any_completion_order(
    order: list[int], cuts: list[int], failed: set[int]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        outdir = Path(tmp)
        lock, state = open_state(outdir, len(order))
        write(outdir, state, batches_of(order, cuts), failed)
        lock.release()
        assert indices(outdir / "results.jsonl") == list(range(len(order)))
        expected_errors = sorted(i for i in failed if i < len(order))
        assert indices(outdir / "errors.jsonl") == expected_errors


@settings(max_examples=60, deadline=None)
@given(
    order=st.integers(1, 40).flatmap(lambda n: st.permutations(list(range(n)))),
    crash_after=st.integers(0, 40),
    torn_bytes=st.integers(0, 20),
    cut_results=st.integers(0, 200),
)
def test_resume_from_any_crash_point_completes_without_duplicates(
    order: list[int], crash_after: int, torn_bytes: int, cut_results: int
) -> None:
    n = len(order)
    crash_after = min(crash_after, n)
    with tempfile.TemporaryDirectory() as tmp:
        outdir = Path(tmp)
        lock, state = open_state(outdir, n)
        write(outdir, state, [[i] for i in order[:crash_after]], set())
        lock.release()
        # The crash tore the journal's next record and lost part of results.jsonl.
        paths = Paths(outdir)
        if torn_bytes and crash_after < n:
            with paths.journal.open("ab") as journal:
                journal.write(record(order[crash_after]).data[:torn_bytes])
        results = paths.results.read_bytes()
        paths.results.write_bytes(results[: max(0, len(results) - cut_results)])

        lock, state = open_state(outdir, n)
        done = {i for i in range(n) if state.is_done(i)}
        assert done == set(order[:crash_after])
        remaining = [i for i in order if i not in done]
        write(outdir, state, [[i] for i in remaining], set())
        lock.release()
        assert indices(paths.results) == list(range(n))
        assert sorted(indices(paths.journal)) == list(range(n))


def test_retry_failed_redoes_only_retryable_failures(tmp_path: Path) -> None:
    lock, state = open_state(tmp_path, 4)
    write(tmp_path, state, [[0, 1, 2, 3]], failed={1, 3})
    lock.release()
    lock, state = open_state(tmp_path, 4)
    assert all(state.is_done(i) for i in range(4))
    lock.release()
    lock, state = open_state(tmp_path, 4, retry_failed=True)
    assert [state.is_done(i) for i in range(4)] == [True, False, True, False]
    assert state.next_index == 1
    assert indices(tmp_path / "results.jsonl") == [0]
    assert indices(tmp_path / "errors.jsonl") == []
    write(tmp_path, state, [[3], [1]], failed=set())
    lock.release()
    assert indices(tmp_path / "results.jsonl") == [0, 1, 2, 3]
    statuses = [
        orjson.loads(x)["status"] for x in (tmp_path / "results.jsonl").read_bytes().split()
    ]
    assert statuses == ["ok"] * 4


def test_a_second_process_is_locked_out(tmp_path: Path) -> None:
    lock, _ = open_state(tmp_path, 1)
    with pytest.raises(ResumeRefused, match="in use"):
        open_state(tmp_path, 1)
    lock.release()
    lock, _ = open_state(tmp_path, 1)
    lock.release()


def test_journal_without_manifest_is_refused(tmp_path: Path) -> None:
    (tmp_path / "journal.jsonl").write_bytes(record(0).data + b"\n")
    with pytest.raises(ResumeRefused, match="without manifest"):
        open_state(tmp_path, 1)


def test_journal_index_outside_the_input_is_refused(tmp_path: Path) -> None:
    lock, state = open_state(tmp_path, 3)
    write(tmp_path, state, [[0, 1, 2]], set())
    lock.release()
    with (tmp_path / "journal.jsonl").open("ab") as journal:
        journal.write(record(7).data + b"\n")
    with pytest.raises(ResumeRefused, match="outside"):
        open_state(tmp_path, 3)


def ok_with_error_text(index: int) -> Completed:
    """An ok record whose reply holds `"status":"error"` (tool-call arguments as an object)."""
    arguments = {"status": "error", "detail": {"status": "error"}}
    body = {"index": index, "status": "ok", "response": {"arguments": arguments}}
    return Completed(index, orjson.dumps(body), failed=False)


def test_errors_are_chosen_by_status_never_by_bytes(tmp_path: Path) -> None:
    lock, state = open_state(tmp_path, 6)
    writer = ResultWriter(Paths(tmp_path), state)
    # Out of order, so some records are read back from the journal before they are emitted.
    for batch in ([ok_with_error_text(3), record(4, failed=True)], [ok_with_error_text(1)]):
        writer.append(batch)
        writer.emit()
    writer.close()
    lock.release()
    assert indices(tmp_path / "results.jsonl") == []
    # A crash here: the journal holds 1, 3, 4. The resume must keep the same view.
    lock, state = open_state(tmp_path, 6)
    writer = ResultWriter(Paths(tmp_path), state)
    for batch in ([record(0)], [record(2), ok_with_error_text(5)]):
        writer.append(batch)
        writer.emit()
    writer.close()
    lock.release()
    assert indices(tmp_path / "results.jsonl") == list(range(6))
    assert indices(tmp_path / "errors.jsonl") == [4]
    lock, _ = open_state(tmp_path, 6)  # the resume scan rebuilds errors.jsonl
    lock.release()
    assert indices(tmp_path / "errors.jsonl") == [4]


def test_a_corrupt_last_line_is_described_as_the_last_line(tmp_path: Path) -> None:
    lock, state = open_state(tmp_path, 3)
    write(tmp_path, state, [[0, 1]], set())
    lock.release()
    with (tmp_path / "journal.jsonl").open("ab") as journal:
        journal.write(b"{not a record}\n")
    with pytest.raises(ResumeRefused) as info:
        open_state(tmp_path, 3)
    assert "line 3 is corrupt" in str(info.value)
    assert "is the last line but ends in a newline, so it is not a torn write" in str(info.value)
    assert "is not the last line" not in str(info.value)


def test_the_api_key_is_redacted_in_every_written_form(tmp_path: Path) -> None:
    key = 'sk-"quote\\slash-12345'
    lock, state = open_state(tmp_path, 3)
    writer = ResultWriter(Paths(tmp_path), state, secret=f"Bearer {key}")
    echoed = orjson.dumps({"headers": {"authorization": f"Bearer {key}"}}).decode()
    records = [
        Completed(0, orjson.dumps({"index": 0, "status": "ok", "response": {"k": key}}), False),
        Completed(1, orjson.dumps({"index": 1, "status": "error", "body": echoed}), True),
        record(2),
    ]
    writer.append(records)
    writer.emit()
    writer.close()
    lock.release()
    once = orjson.dumps(key)[1:-1]
    for name in ("journal.jsonl", "results.jsonl", "errors.jsonl"):
        data = (tmp_path / name).read_bytes()
        assert key.encode() not in data and once not in data
        assert b"[REDACTED]" in data
    written = [orjson.loads(x) for x in (tmp_path / "results.jsonl").read_bytes().splitlines()]
    assert [r["index"] for r in written] == [0, 1, 2]  # lengths and offsets still right
    assert written[0]["response"] == {"k": "[REDACTED]"}


@pytest.mark.anyio
async def test_a_corrupt_last_line_is_refused_truthfully_end_to_end(
    mock_server: Callable[..., MockServer], tmp_path: Path
) -> None:
    path = tmp_path / "in.jsonl"
    line = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}\n'
    path.write_bytes(line * 4)
    server = mock_server()
    config = RunConfig(input_path=path, outdir=tmp_path / "out", base_url=server.url, limit=2)
    with anyio.fail_after(30):
        assert (await run_batch(config, api_key="sk-journal-test-key")).exit_code == 0
        with (tmp_path / "out" / "journal.jsonl").open("ab") as journal:
            journal.write(b'{"index": 2, "status": "ok", "respo\n')  # whole line, bad JSON
        with pytest.raises(ResumeRefused, match="is the last line but ends in a newline"):
            await run_batch(replace(config, limit=None), api_key="sk-journal-test-key")


def test_sent_log_is_a_byte_per_line_and_reads_the_older_text_format(tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    state = ResumeState(requests=5, done=bytearray([1, 0, 0, 0, 0]))
    paths.sent.write_bytes(b"0\n1\n3\n")  # an OUTDIR of an earlier version
    assert count_resent(paths.sent, state) == 2  # 1 and 3: sent, never journaled
    sent = SentLog(paths, 5)  # the old file is started anew, in the new format
    sent.mark(2)
    sent.mark(4)
    assert paths.sent.read_bytes() == b"\x00\x00\x01\x00\x01"
    assert count_resent(paths.sent, state) == 2
    sent.close()
    again = SentLog(paths, 5)  # a resume keeps the marks already made
    again.mark(0)
    again.close()
    assert paths.sent.read_bytes() == b"\x01\x00\x01\x00\x01"
