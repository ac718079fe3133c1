"""Duplicate custom_ids in bounded memory: spilled runs, confirmed candidates, the refusal."""

from __future__ import annotations

import os
import threading
import tracemalloc
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from batchrun import reader
from batchrun.cli import main
from batchrun.dupes import DEFAULT_BUFFER_IDS, Duplicate, DuplicateFinder, Duplicates, id_hash
from batchrun.errors import InputError
from batchrun.mock import MockServer
from batchrun.reader import scan_input

BODY = {"messages": [{"role": "user", "content": "hi"}]}
SHOWN = 5


def reference(ids: list[str], keep: int = SHOWN) -> Duplicates | None:
    """What the reader did before: every id in a dict, in input order."""
    first_lines: dict[str, int] = {}
    examples: list[Duplicate] = []
    count = 0
    for line, custom_id in enumerate(ids, start=1):
        first = first_lines.setdefault(custom_id, line)
        if first != line:
            count += 1
            if len(examples) < keep:
                examples.append(Duplicate(custom_id, first, line))
    return Duplicates(count, tuple(examples)) if count else None


class Input:
    """The ids of one input, and how many confirming passes read them again."""

    def __init__(self, ids: list[str]) -> None:
        self.ids = ids
        self.rereads = 0

    def reread(self) -> Iterator[tuple[str, int]]:
        self.rereads += 1
        return ((custom_id, line) for line, custom_id in enumerate(self.ids, start=1))

    def find(
        self,
        buffer_ids: int,
        hash_id: Callable[[str], int] = id_hash,
        keep: int = SHOWN,
    ) -> Duplicates | None:
        with DuplicateFinder(buffer_ids=buffer_ids, hash_id=hash_id) as finder:
            for custom_id in self.ids:
                finder.add(custom_id)
            return finder.find(self.reread, keep)


def open_files_in(directory: Path) -> list[str]:
    """Targets of this process's open descriptors inside `directory` (an unnamed temp
    file shows as `<dir>/#<inode> (deleted)`)."""
    targets = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # the descriptor listdir itself used
        if target.startswith(str(directory)):
            targets.append(target)
    return targets


def test_no_duplicates_across_many_runs_reads_the_input_once() -> None:
    source = Input([f"id-{i}" for i in range(1000)])
    assert source.find(buffer_ids=7) is None
    assert source.rereads == 0


def test_duplicate_inside_one_run() -> None:
    source = Input(["a", "b", "a", "c"])
    assert source.find(buffer_ids=100) == Duplicates(1, (Duplicate("a", 1, 3),))
    assert source.rereads == 1


def test_duplicate_across_runs() -> None:
    source = Input(["a", "b", "c", "d", "e", "f", "a"])
    assert source.find(buffer_ids=2) == Duplicates(1, (Duplicate("a", 1, 7),))


def test_id_repeated_three_times_counts_twice_from_its_first_line() -> None:
    source = Input(["a", "x", "a", "y", "z", "a"])
    expected = Duplicates(2, (Duplicate("a", 1, 3), Duplicate("a", 1, 6)))
    assert source.find(buffer_ids=2) == expected == reference(source.ids)


def test_many_duplicates_over_several_confirming_passes() -> None:
    # 400 distinct repeated ids with a buffer of 16 hashes: the candidates are confirmed
    # 16 at a time, so memory stays bounded even for an input full of repeats.
    ids = [f"id-{i % 1400}" for i in range(1800)]
    source = Input(ids)
    found = source.find(buffer_ids=16)
    assert found == reference(ids)
    assert found is not None
    assert found.count == 400
    assert source.rereads == 400 // 16


def test_examples_are_the_earliest_repeats_whichever_pass_finds_them() -> None:
    ids = [f"id-{i}" for i in range(50)] + [f"id-{i}" for i in reversed(range(50))]
    source = Input(ids)
    assert source.find(buffer_ids=4, keep=3) == reference(ids, keep=3)


def test_hash_collisions_between_different_ids_are_not_duplicates() -> None:
    source = Input([f"id-{i}" for i in range(30)])
    assert source.find(buffer_ids=4, hash_id=lambda _: 0) is None
    assert source.rereads == 1  # every hash repeated: the ids themselves were compared


def test_true_duplicates_among_colliding_ids() -> None:
    ids = ["ab", "cd", "ef", "ab", "gh", "cd", "ab"]
    found = Input(ids).find(buffer_ids=2, hash_id=len)
    assert found == reference(ids)
    assert found == Duplicates(
        3, (Duplicate("ab", 1, 4), Duplicate("cd", 2, 6), Duplicate("ab", 1, 7))
    )


@settings(max_examples=300, deadline=None)
@given(
    ids=st.lists(st.text(alphabet="abcd", max_size=3) | st.text(max_size=4), max_size=120),
    buffer_ids=st.integers(min_value=2, max_value=40),
    keep=st.integers(min_value=1, max_value=6),
    weak_hash=st.booleans(),
)
def test_same_answer_as_a_dict_for_any_ids_and_buffer(
    ids: list[str], buffer_ids: int, keep: int, weak_hash: bool
) -> None:
    hash_id: Callable[[str], int] = len if weak_hash else id_hash
    source = Input(ids)
    assert source.find(buffer_ids, hash_id=hash_id, keep=keep) == reference(ids, keep)
    if len(set(ids)) == len(ids) and not weak_hash:
        assert source.rereads == 0


def test_spill_file_is_unnamed_and_closed_after_success(tmp_path: Path) -> None:
    source = Input(["a", "b", "c", "d", "a"])
    with DuplicateFinder(buffer_ids=2, spill_dir=str(tmp_path)) as finder:
        for custom_id in source.ids:
            finder.add(custom_id)
        assert len(open_files_in(tmp_path)) == 1  # the runs were spilled here
        assert finder.find(source.reread, SHOWN) == reference(source.ids)
    assert open_files_in(tmp_path) == []
    assert list(tmp_path.iterdir()) == []


def test_spill_file_is_closed_after_an_error(tmp_path: Path) -> None:
    def failing_reread() -> Iterator[tuple[str, int]]:
        raise OSError("input vanished")

    finder = DuplicateFinder(buffer_ids=2, spill_dir=str(tmp_path))
    with pytest.raises(OSError, match="vanished"), finder:
        for custom_id in ["a", "b", "c", "a"]:
            finder.add(custom_id)
        assert open_files_in(tmp_path)
        finder.find(failing_reread, SHOWN)
    assert open_files_in(tmp_path) == []
    assert list(tmp_path.iterdir()) == []


def test_unusable_temp_dir_is_an_input_error(tmp_path: Path) -> None:
    finder = DuplicateFinder(buffer_ids=2, spill_dir=str(tmp_path / "missing"))
    with pytest.raises(InputError, match="temporary file"):
        for custom_id in ["a", "b", "c"]:
            finder.add(custom_id)


def write_batch(path: Path, ids: list[str], openai: bool = False) -> Path:
    envelope = {"method": "POST", "url": "/v1/chat/completions"} if openai else {}
    with path.open("wb") as out:
        for custom_id in ids:
            out.write(orjson.dumps({"custom_id": custom_id, **envelope, "body": BODY}) + b"\n")
    return path


def test_scan_input_finds_duplicates_across_spilled_runs(tmp_path: Path) -> None:
    # More ids than one buffer holds: the production path spills, merges and confirms.
    ids = [f"req-{i}" for i in range(DEFAULT_BUFFER_IDS + 1000)]
    ids[-1] = ids[2]
    path = write_batch(tmp_path / "in.jsonl", ids)
    with pytest.raises(InputError) as info:
        scan_input(path, 1 << 20)
    assert f"'req-2' on lines 3 and {len(ids)}" in str(info.value)
    assert "(1 in all)" in str(info.value)


@pytest.mark.timeout(30)
def test_repeated_ids_in_a_pipe_are_refused_not_waited_for(tmp_path: Path) -> None:
    # Confirming reads the input again; a FIFO cannot be, and reopening it would block.
    fifo = tmp_path / "in.fifo"
    os.mkfifo(fifo)
    lines = write_batch(tmp_path / "lines.jsonl", ["a", "b", "a"]).read_bytes()
    writer = threading.Thread(target=fifo.write_bytes, args=(lines,))
    writer.start()
    try:
        with pytest.raises(InputError):
            scan_input(fifo, 1 << 20)
    finally:
        writer.join(timeout=10)


def scan_peak_bytes(path: Path) -> int:
    tracemalloc.start()
    try:
        scan_input(path, 1 << 20)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_scan_memory_does_not_grow_with_the_number_of_ids(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before: every id was kept in a dict (about 145 bytes a line), so 60,000 more ids
    # took about 8 MB more. Now the peak is the buffer's, here a small one so
    # that both inputs spill many runs (and the larger one merges in two levels).
    small_buffer = partial(DuplicateFinder, buffer_ids=1024)
    monkeypatch.setattr(reader, "DuplicateFinder", small_buffer, raising=False)
    small = write_batch(tmp_path / "small.jsonl", [f"r{i}" for i in range(40_000)])
    large = write_batch(tmp_path / "large.jsonl", [f"r{i}" for i in range(100_000)])
    assert scan_peak_bytes(large) < 1.1 * scan_peak_bytes(small)


@pytest.mark.parametrize("openai", [False, True], ids=["mistral-batch", "openai-batch"])
def test_run_with_duplicate_ids_is_refused_before_sending(
    mock_server: Callable[..., MockServer], tmp_path: Path, openai: bool
) -> None:
    server = mock_server()
    ids = ["a", "b", "a", "c", "b", "d", "a"]
    path = write_batch(tmp_path / "in.jsonl", ids, openai=openai)
    result = CliRunner(env={"MISTRAL_API_KEY": "k"}).invoke(
        main,
        ["run", str(path), "-m", "m", "--base-url", server.url, "-q", "-o", str(tmp_path / "o")],
    )
    assert result.exit_code == 1, result.output
    message = " ".join(result.output.split())  # the error line may be wrapped
    assert "duplicate custom_id values (3 in all)" in message
    assert "'a' on lines 1 and 3; 'b' on lines 2 and 5; 'a' on lines 1 and 7" in message
    assert "nothing was sent" in message
    assert server.requests_received == 0
