"""No interruption may duplicate or lose a line: a start-over killed half-way, a full
disk, an input that is a pipe or that changes under the run, an input that is an output."""

from __future__ import annotations

import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from jsonl import read_jsonl
from processes import finish

from batchrun import ConfigError, ResumeRefused, RetryConfig, RunConfig, RunReport, run_batch
from batchrun.mock import MockServer
from batchrun.outdir import Paths

REPO = Path(__file__).resolve().parent.parent
KEY = "sk-test-interruptions-0c4d"

# Test-only hooks, installed in a real batchrun process before its CLI starts.
SLOW_UNLINK = """
import pathlib, time
_unlink = pathlib.Path.unlink
def _slow_unlink(self, *args, **kwargs):
    _unlink(self, *args, **kwargs)
    time.sleep(0.15)
pathlib.Path.unlink = _slow_unlink
"""
FILE_SIZE_LIMIT = """
import resource, signal
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
"""
CLI = "\nfrom batchrun.cli import main\nmain()\n"


def request(i: int, **extra: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": f"line-{i}"}], **extra}


def write_input(path: Path, count: int, *, failing: int = 0, pad: int = 0) -> Path:
    """`count` requests; every `failing`-th one is answered 422 (a failed line)."""
    lines = []
    for i in range(count):
        extra: dict[str, Any] = {}
        if failing and i % failing == 0:
            extra["metadata"] = {"mock": {"fault": "422"}}
        body = request(i, **extra)
        if pad:
            body["messages"][0]["content"] += " " + "x" * pad
        lines.append(orjson.dumps(body))
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def assert_complete(outdir: Path, count: int) -> None:
    """Each line exactly once, in order, in results and journal; errors the failed subset."""
    records = read_jsonl(outdir / "results.jsonl")
    assert [r["index"] for r in records] == list(range(count))
    assert sorted(r["index"] for r in read_jsonl(outdir / "journal.jsonl")) == list(range(count))
    assert read_jsonl(outdir / "errors.jsonl") == [r for r in records if r["status"] == "error"]
    summary = orjson.loads((outdir / "summary.json").read_bytes())
    assert summary["counts"]["done"] == count
    assert summary["counts"]["not_done"] == 0
    assert not Paths(outdir).starting_over.exists()


def batchrun(
    *args: str, setup: str = "", stdin: Any = subprocess.DEVNULL
) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-c", setup + CLI] if setup else [sys.executable, "-m", "batchrun"]
    return subprocess.Popen(
        [*command, *args],
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "MISTRAL_API_KEY": KEY},
        cwd=REPO,
    )


def one_line(text: str) -> str:
    return " ".join(text.split())  # the console wraps long lines


async def run(config: RunConfig) -> RunReport:
    with anyio.fail_after(60):
        return await run_batch(config, api_key=KEY)


def config_for(server: MockServer, input_path: Path, outdir: Path, **options: Any) -> RunConfig:
    return RunConfig(
        input_path=input_path,
        outdir=outdir,
        base_url=server.url,
        concurrency=8,
        retry=RetryConfig(max_attempts=1),
        **options,
    )


# --- starting over ---------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("deleted", range(len(Paths(Path()).state_files()) + 2))
async def test_a_start_over_killed_at_any_step_is_finished_by_the_next_run(
    mock_server: Callable[..., MockServer], tmp_path: Path, deleted: int
) -> None:
    """The files as a kill -9 leaves them after `deleted` steps of --fresh (the last
    step: the new manifest written, the marker not yet removed); the next run, without
    --fresh, completes the start-over: each line once, no stale errors."""
    server = mock_server()
    path = write_input(tmp_path / "in.jsonl", 60, failing=7)
    out = tmp_path / "out"
    assert (await run(config_for(server, path, out))).exit_code == 2
    paths = Paths(out)
    manifest = paths.manifest.read_bytes()
    paths.starting_over.touch()
    files = paths.state_files()
    for file in files[:deleted]:
        file.unlink(missing_ok=True)  # batch_output.jsonl, rows.jsonl/rows.csv: not every run
    if deleted > len(files):  # the new manifest is in place, the marker not yet gone
        paths.manifest.write_bytes(manifest)
    before = server.requests_received
    report = await run(config_for(server, path, out))
    assert report.exit_code == 2
    assert report.summary["counts"]["requests"] == 60
    assert server.requests_received - before == 60  # started over: every line sent again
    assert_complete(out, 60)


@pytest.mark.anyio
async def test_outputs_without_a_manifest_are_never_appended_to(
    mock_server: Callable[..., MockServer], tmp_path: Path
) -> None:
    """Deleting manifest.json and journal.jsonl by hand used to make the next run append
    a second copy to results.jsonl (400 lines for 200, exit 0)."""
    server = mock_server()
    path = write_input(tmp_path / "in.jsonl", 200)
    out = tmp_path / "out"
    assert (await run(config_for(server, path, out))).exit_code == 0
    (out / "manifest.json").unlink()
    (out / "journal.jsonl").unlink()
    kept = (out / "results.jsonl").read_bytes()
    with pytest.raises(ResumeRefused, match=r"without manifest.json.*--fresh.*another -o"):
        await run(config_for(server, path, out))
    assert (out / "results.jsonl").read_bytes() == kept
    assert not (out / "journal.jsonl").exists()
    assert (await run(config_for(server, path, out, fresh=True))).exit_code == 0
    assert_complete(out, 200)


def test_a_real_process_killed_during_fresh_then_rerun(
    mock_server: Callable[..., MockServer], tmp_path: Path
) -> None:
    """kill -9 while --fresh deletes the old state (each deletion slowed by a test hook so
    the kill lands inside it), then the same command without --fresh."""
    server = mock_server(latency_ms=1)
    path = write_input(tmp_path / "in.jsonl", 120, failing=9)
    out = tmp_path / "out"
    args = ("run", str(path), "-o", str(out), "--base-url", server.url, "-c", "16", "-q")
    code, stderr = finish(batchrun(*args, "--max-attempts", "1"))
    assert code == 2, stderr
    rng = random.Random(7)
    for _ in range(4):
        proc = batchrun(*args, "--max-attempts", "1", "--fresh", setup=SLOW_UNLINK)
        deadline = time.monotonic() + 30
        while not Paths(out).starting_over.exists() and time.monotonic() < deadline:
            time.sleep(0.002)
        time.sleep(rng.uniform(0, 0.8))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        assert Paths(out).starting_over.exists(), "the kill missed the start-over"
        code, stderr = finish(batchrun(*args, "--max-attempts", "1"))
        assert code == 2, stderr
        assert_complete(out, 120)


# --- a full disk ---------------------------------------------------------------------


def assert_aborted_on_write(proc: subprocess.Popen[bytes], out: Path, cause: str) -> None:
    """Exit 3 with one clear line naming the file and the cause, no traceback; what the
    disk allowed is kept, in order."""
    code, stderr = finish(proc)
    assert code == 3, stderr
    assert "Traceback" not in stderr and "ExceptionGroup" not in stderr
    message = one_line(stderr)
    assert f"error: cannot write {out}/" in message
    assert f"{cause}; free space and rerun to resume" in message
    if (out / "results.jsonl").exists():
        whole = (out / "results.jsonl").read_bytes().split(b"\n")[:-1]  # the tail may be torn
        kept = [orjson.loads(line)["index"] for line in whole]
        assert kept == list(range(len(kept)))


@pytest.mark.parametrize("limit", [6_000, 25_000, 70_000, 140_000])
def test_a_file_size_limit_ends_in_exit_3_and_resumes(
    mock_server: Callable[..., MockServer], tmp_path: Path, limit: int
) -> None:
    """EFBIG (RLIMIT_FSIZE, SIGXFSZ ignored) is what a full disk looks like to a writer."""
    server = mock_server(jitter_ms=5)
    lines = 1000
    path = write_input(tmp_path / "in.jsonl", lines)
    out = tmp_path / "out"
    args = ("run", str(path), "-o", str(out), "--base-url", server.url, "-c", "64", "-q")
    for _ in range(2):  # hit the limit, and hit it again on a resume
        proc = batchrun(*args, setup=FILE_SIZE_LIMIT.format(limit=limit))
        assert_aborted_on_write(proc, out, "File too large")
        limit += limit // 4
    code, stderr = finish(batchrun(*args))
    assert code == 0, stderr
    assert_complete(out, lines)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """Mount a tmpfs of a given size (root only); remount it bigger to free space."""
    mount = tmp_path / "disk"
    mount.mkdir()
    mounted = False

    def make(size: str) -> Path:
        nonlocal mounted
        options = f"remount,size={size}" if mounted else f"size={size}"
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount)],
            check=False,
            capture_output=True,
            timeout=10,
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
        mounted = True
        return mount

    if shutil.which("mount") is None:
        pytest.skip("no mount command here")
    yield make
    if mounted:
        subprocess.run(["umount", str(mount)], check=False, capture_output=True, timeout=10)


@pytest.mark.parametrize("size", ["48k", "96k", "192k"])
def test_a_full_disk_ends_in_exit_3_and_resumes_after_freeing_space(
    mock_server: Callable[..., MockServer],
    tmp_path: Path,
    small_disk: Callable[[str], Path],
    size: str,
) -> None:
    server = mock_server(jitter_ms=5)
    lines = 1000
    path = write_input(tmp_path / "in.jsonl", lines)
    out = small_disk(size) / "out"
    args = ("run", str(path), "-o", str(out), "--base-url", server.url, "-c", "64", "-q")
    assert_aborted_on_write(batchrun(*args), out, "No space left on device")
    small_disk("16m")
    code, stderr = finish(batchrun(*args))
    assert code == 0, stderr
    assert_complete(out, lines)


# --- inputs that cannot be read twice, or change while read --------------------------


def feed(fifo: Path, data: bytes) -> threading.Thread:
    def write() -> None:
        with fifo.open("wb") as pipe:
            pipe.write(data)

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    return thread


def test_a_fifo_is_spooled_once_and_resumes_from_the_copy(
    mock_server: Callable[..., MockServer], tmp_path: Path
) -> None:
    server = mock_server()
    data = write_input(tmp_path / "in.jsonl", 50).read_bytes()
    fifo = tmp_path / "in.fifo"
    os.mkfifo(fifo)
    out = tmp_path / "out"
    args = ("run", str(fifo), "-o", str(out), "--base-url", server.url, "-q")
    for _ in range(2):  # the second run resumes: nothing is sent again
        writer = feed(fifo, data)
        code, stderr = finish(batchrun(*args))
        writer.join(timeout=5)
        assert code == 0, stderr
        assert_complete(out, 50)
        assert server.requests_received == 50
    spooled = out / "input.jsonl"
    assert spooled.read_bytes() == data
    assert stat.S_IMODE(spooled.stat().st_mode) == 0o600
    assert [p.name for p in out.iterdir() if p.name.endswith(".part")] == []


def test_process_substitution_is_read_once(
    mock_server: Callable[..., MockServer], tmp_path: Path
) -> None:
    server = mock_server()
    path = write_input(tmp_path / "in.jsonl", 30)
    out = tmp_path / "out"
    script = (
        f'exec "{sys.executable}" -m batchrun run <(cat "{path}") -o "{out}" '
        f"--base-url {server.url} -q --json"
    )
    done = subprocess.run(
        ["bash", "-c", script],
        check=False,
        capture_output=True,
        env={**os.environ, "MISTRAL_API_KEY": KEY},
        cwd=REPO,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr.decode()
    assert orjson.loads(done.stdout)["counts"]["ok"] == 30
    assert_complete(out, 30)


def test_stdin_is_spooled_and_a_rerun_with_other_data_is_refused(
    mock_server: Callable[..., MockServer], tmp_path: Path
) -> None:
    server = mock_server()
    path = write_input(tmp_path / "in.jsonl", 40)
    out = tmp_path / "out"
    args = ("run", "-", "-o", str(out), "--base-url", server.url, "-q")
    for _ in range(2):
        with path.open("rb") as stdin:
            code, stderr = finish(batchrun(*args, stdin=stdin))
        assert code == 0, stderr
        assert_complete(out, 40)
    assert server.requests_received == 40
    other = write_input(tmp_path / "other.jsonl", 41)
    with other.open("rb") as stdin:
        code, stderr = finish(batchrun(*args, stdin=stdin))
    assert code == 1, stderr
    assert "different input" in one_line(stderr)
    assert (out / "input.jsonl").read_bytes() == path.read_bytes()  # the old input kept


def test_stdin_without_an_outdir_is_a_usage_error(tmp_path: Path) -> None:
    code, stderr = finish(batchrun("run", "-", "--mock", "-q", stdin=subprocess.DEVNULL))
    assert code == 1
    assert "standard input" in stderr and "-o" in stderr
    assert not Path(REPO / "-.batchrun").exists()


def test_ctrl_c_while_waiting_on_a_fifo_stops_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "in.fifo"
    os.mkfifo(fifo)
    out = tmp_path / "out"
    proc = batchrun("run", str(fifo), "-o", str(out), "--mock", "-q")
    wait_for(Paths(out).lock.exists)  # OUTDIR taken, now copying the FIFO
    time.sleep(0.5)  # blocked on a FIFO nobody writes to
    assert proc.poll() is None
    proc.send_signal(signal.SIGINT)
    code, stderr = finish(proc, timeout=15)
    assert code == 130, stderr
    assert "Traceback" not in stderr


def wait_for(condition: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def sent_count(out: Path) -> int:
    sent = out / "sent.log"
    return sent.read_bytes().count(1) if sent.exists() else 0


def test_lines_appended_during_the_run_are_not_part_of_it(
    mock_server: Callable[..., MockServer], tmp_path: Path
) -> None:
    server = mock_server(latency_ms=40)
    path = write_input(tmp_path / "in.jsonl", 40)
    out = tmp_path / "out"
    proc = batchrun("run", str(path), "-o", str(out), "--base-url", server.url, "-c", "4", "-q")
    wait_for(lambda: sent_count(out) >= 4)
    with path.open("ab") as more:
        more.write(b"".join(orjson.dumps(request(40 + i)) + b"\n" for i in range(5)))
    code, stderr = finish(proc)
    assert code == 0, stderr
    assert_complete(out, 40)
    assert server.requests_received == 40


def test_an_input_cut_short_during_the_run_is_never_exit_0(
    mock_server: Callable[..., MockServer], tmp_path: Path
) -> None:
    """The reader holds 1 MiB at a time: cut the file beyond that while the run reads."""
    server = mock_server(latency_ms=100)
    path = write_input(tmp_path / "in.jsonl", 40, pad=60_000)
    line_bytes = len(path.read_bytes()) // 40
    out = tmp_path / "out"
    proc = batchrun("run", str(path), "-o", str(out), "--base-url", server.url, "-c", "2", "-q")
    wait_for(lambda: sent_count(out) >= 2)
    os.truncate(path, 25 * line_bytes)
    code, stderr = finish(proc)
    assert code == 1, stderr
    assert "changed while the run read it: 40 request lines" in one_line(stderr)
    assert [r["index"] for r in read_jsonl(out / "results.jsonl")] == list(range(25))


@pytest.mark.anyio
@pytest.mark.parametrize("name", ["results.jsonl", "journal.jsonl", "errors.jsonl"])
async def test_an_input_that_is_an_output_file_is_refused(
    mock_server: Callable[..., MockServer], tmp_path: Path, name: str
) -> None:
    server = mock_server()
    out = tmp_path / "out"
    first = write_input(tmp_path / "in.jsonl", 5)
    assert (await run(config_for(server, first, out))).exit_code == 0
    inside = out / name
    kept = inside.read_bytes()
    with pytest.raises(ConfigError, match=f"is {name} of OUTDIR"):
        await run(config_for(server, inside, out))
    link = tmp_path / "link.jsonl"
    link.symlink_to(inside)
    with pytest.raises(ConfigError, match=f"is {name} of OUTDIR"):
        await run(config_for(server, link, out))
    assert inside.read_bytes() == kept
