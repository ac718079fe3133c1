"""The request cache in real runs against the mock: a rerun answered without a request,
errors never stored, streamed and non-streamed requests sharing entries, the summary's
`cache` section, the token guard, the CLI (`--cache [DIR]`, `batchrun cache info|clear`),
two processes sharing one cache, and kill -9 then rerun."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from click.testing import CliRunner
from jsonl import MODEL, chat_request, read_jsonl, write_jsonl
from processes import finish

from batchrun import ConfigError, RetryConfig, RunConfig, RunReport, run_batch
from batchrun.cache import RequestCache, cache_key
from batchrun.cache_cli import cache as cache_group
from batchrun.cache_run import RunCache
from batchrun.cli import main
from batchrun.config import Guards
from batchrun.mock import MockServer
from batchrun.prices import PriceTable

REPO = Path(__file__).resolve().parent.parent
KEY = "sk-test-cache-run-5e1a"


async def run(config: RunConfig) -> RunReport:
    with anyio.fail_after(60):
        return await run_batch(config, api_key=KEY)


def config_for(server: MockServer, path: Path, out: Path, cache: Path, **options: Any) -> RunConfig:
    options.setdefault("retry", RetryConfig(max_attempts=1))
    options.setdefault("concurrency", 8)
    return RunConfig(input_path=path, outdir=out, base_url=server.url, cache_dir=cache, **options)


def answer(record: dict[str, Any]) -> dict[str, Any]:
    """A reply as the mock derives it from the request (`created` is the clock)."""
    return {k: v for k, v in record["response"].items() if k != "created"}


def summary_of(out: Path) -> dict[str, Any]:
    summary: dict[str, Any] = orjson.loads((out / "summary.json").read_bytes())
    return summary


def requests(count: int, **extra: Any) -> list[dict[str, Any]]:
    return [chat_request(i, max_tokens=20, **extra) for i in range(count)]


def failing_once(i: int) -> dict[str, Any]:
    """Request `i`, answered 500 on its first arrival only."""
    return {**chat_request(i, max_tokens=20), "metadata": {"mock": {"fault": "500", "times": 1}}}


# --- in-process runs ------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_rerun_into_a_fresh_outdir_sends_nothing_and_repeats_the_replies(
    mock_server: Callable[..., MockServer], tmp_path: Path
) -> None:
    server = mock_server()
    path = write_jsonl(tmp_path / "in.jsonl", requests(40))
    cache = tmp_path / "cache"
    first = await run(config_for(server, path, tmp_path / "a", cache))
    assert first.exit_code == 0
    assert first.summary["cache"]["misses"] == 40
    assert first.summary["cache"]["stored"] == 40
    assert first.summary["cache"]["hits"] == 0
    sent = server.requests_received

    second = await run(config_for(server, path, tmp_path / "b", cache))
    assert second.exit_code == 0
    assert server.requests_received == sent
    before, after = (
        read_jsonl(tmp_path / "a/results.jsonl"),
        read_jsonl(tmp_path / "b/results.jsonl"),
    )
    assert [r["response"] for r in after] == [r["response"] for r in before]
    assert all(r["cached"] is True and r["attempts"] == 0 for r in after)
    assert not any("cached" in r for r in before)
    assert not any((tmp_path / "b/sent.log").read_bytes())  # nothing sent, nothing marked


@pytest.mark.anyio
async def test_the_summary_counts_hits_and_what_they_saved(
    mock_server: Callable[..., MockServer], tmp_path: Path
) -> None:
    server = mock_server()
    path = write_jsonl(tmp_path / "in.jsonl", requests(30))
    cache = tmp_path / "cache"
    await run(config_for(server, path, tmp_path / "a", cache))
    # The same 30 lines and 10 new ones, each answered 500 once, then retried.
    more = [*requests(30), *[failing_once(100 + i) for i in range(10)]]
    path2 = write_jsonl(tmp_path / "more.jsonl", more)
    report = await run(config_for(server, path2, tmp_path / "b", cache, retry=RetryConfig()))
    assert report.exit_code == 0
    summary = report.summary
    records = read_jsonl(tmp_path / "b/results.jsonl")
    hits = [r for r in records if r.get("cached")]
    assert len(hits) == 30
    prompt = sum(r["response"]["usage"]["prompt_tokens"] for r in hits)
    completion = sum(r["response"]["usage"]["completion_tokens"] for r in hits)
    price = PriceTable.bundled().price(MODEL)
    assert price is not None
    cost = (price.input * prompt + price.output * completion) / Decimal(1_000_000)
    assert summary["cache"] == {
        "directory": str(cache),
        "hits": 30,
        "misses": 10,
        "stored": 10,
        "tokens_saved": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        },
        "cost_saved_usd": float(cost),
        "cost_saved_by_model": {MODEL: float(cost)},
        "unpriced": [],
    }
    # A hit is not a request: no retry is counted for it, no latency figure comes from it.
    assert summary["attempts"] == {"total": 20, "retries": 10}
    paid = [r["response"]["usage"] for r in records if not r.get("cached")]
    paid_cost = (
        price.input * sum(u["prompt_tokens"] for u in paid)
        + price.output * sum(u["completion_tokens"] for u in paid)
    ) / Decimal(1_000_000)
    assert summary["cost"]["total_usd"] == float(paid_cost)  # hits were not paid for
    assert summary["session"]["requests_sent"] == 20
    assert len([r for r in records if not r.get("cached")]) == 10


@pytest.mark.anyio
async def test_errors_are_never_stored_and_a_later_success_is(
    mock_server: Callable[..., MockServer], tmp_path: Path
) -> None:
    server = mock_server()
    lines = [*requests(5), failing_once(99)]
    path = write_jsonl(tmp_path / "in.jsonl", lines)
    cache = tmp_path / "cache"
    first = await run(config_for(server, path, tmp_path / "a", cache))
    assert first.exit_code == 2  # one attempt: the 500 is the line's record
    assert first.summary["cache"]["stored"] == 5
    assert RequestCache(cache).info().entries == 5

    sent = server.requests_received
    second = await run(config_for(server, path, tmp_path / "b", cache))
    assert server.requests_received == sent + 1  # only the failed line was sent again
    assert second.exit_code == 0  # the mock's fault was for its first arrival only
    records = read_jsonl(tmp_path / "b/results.jsonl")
    assert [r.get("cached", False) for r in records] == [True] * 5 + [False]

    third = await run(config_for(server, path, tmp_path / "c", cache))
    assert server.requests_received == sent + 1
    assert third.summary["cache"]["hits"] == 6
    assert answer(read_jsonl(tmp_path / "c/results.jsonl")[5]) == answer(records[5])


@pytest.mark.anyio
async def test_streamed_and_plain_requests_answer_each_other(
    mock_server: Callable[..., MockServer], tmp_path: Path
) -> None:
    """The key ignores `stream`: a reply stored from a stream answers a plain request and
    the other way round; a cached answer to a streamed request has no ttft_ms."""
    server = mock_server()
    path = write_jsonl(tmp_path / "in.jsonl", requests(12))
    cache = tmp_path / "cache"
    streamed = await run(config_for(server, path, tmp_path / "a", cache, stream=True))
    assert streamed.exit_code == 0
    sent = server.requests_received
    plain = await run(config_for(server, path, tmp_path / "b", cache))
    assert plain.summary["cache"]["hits"] == 12
    assert server.requests_received == sent
    first = read_jsonl(tmp_path / "a/results.jsonl")
    assert all("ttft_ms" in r for r in first)
    again = await run(config_for(server, path, tmp_path / "c", cache, stream=True))
    assert again.summary["cache"]["hits"] == 12
    assert again.summary["ttft_ms"] is None
    records = read_jsonl(tmp_path / "c/results.jsonl")
    assert not any("ttft_ms" in r for r in records)
    assert [r["response"] for r in records] == [r["response"] for r in first]


SCHEMA = {
    "type": "json_schema",
    "json_schema": {
        "name": "labels",
        "schema": {
            "type": "object",
            "properties": {"label": {"enum": ["pos", "neg"]}},
            "required": ["label"],
            "additionalProperties": False,
        },
    },
}


def labelled(i: int, fault: str | None = None, times: int | None = None) -> dict[str, Any]:
    body = chat_request(i, max_tokens=20, response_format=SCHEMA)
    if fault is not None:
        body["metadata"] = {"mock": {"fault": fault, **({"times": times} if times else {})}}
    return body


@pytest.mark.anyio
async def test_structured_hits_carry_parsed_and_off_schema_replies_are_never_stored(
    mock_server: Callable[..., MockServer], tmp_path: Path
) -> None:
    server = mock_server()
    lines = [*[labelled(i) for i in range(4)], labelled(7, "schema_violation", times=1)]
    lines.append(labelled(9, "schema_violation"))  # off-schema every time: recorded as such
    path = write_jsonl(tmp_path / "in.jsonl", lines)
    cache = tmp_path / "cache"
    first = await run(config_for(server, path, tmp_path / "a", cache))
    assert first.summary["counts"]["errors_by_type"] == {"schema_violation": 1}
    assert first.summary["cache"]["stored"] == 5  # the re-asked line stored its good reply
    sent = server.requests_received
    second = await run(config_for(server, path, tmp_path / "b", cache))
    assert server.requests_received == sent + 3  # only the off-schema line, asked 3 times
    before, after = (
        read_jsonl(tmp_path / "a/results.jsonl"),
        read_jsonl(tmp_path / "b/results.jsonl"),
    )
    for old, new in zip(before[:5], after[:5], strict=True):
        assert new["cached"] is True and new["response"] == old["response"]
        assert new["parsed"] == old["parsed"] and isinstance(new["parsed"], dict)
        assert new["schema_attempts"] == 1
    assert after[5]["status"] == "error" and "cached" not in after[5]
    assert second.summary["structured"]["parsed_ok"] == 5


@pytest.mark.anyio
async def test_a_stored_reply_that_does_not_fit_the_schema_is_no_answer(
    mock_server: Callable[..., MockServer], tmp_path: Path
) -> None:
    """The schema is in the key, so only a changed checker could find a stored reply
    off-schema; then the line is sent, and its good reply replaces the entry."""
    server = mock_server()
    body = labelled(0)
    path = write_jsonl(tmp_path / "in.jsonl", [body])
    store = RequestCache.open(tmp_path / "cache")
    off_schema = {"choices": [{"message": {"role": "assistant", "content": "{}"}}]}
    key = cache_key(body, server.url + "/v1/chat/completions")
    assert store.put(key, off_schema)
    report = await run(config_for(server, path, tmp_path / "out", tmp_path / "cache"))
    assert report.exit_code == 0
    assert server.requests_received == 1
    record = read_jsonl(tmp_path / "out/results.jsonl")[0]
    assert "cached" not in record and record["parsed"] == orjson.loads(
        record["response"]["choices"][0]["message"]["content"]
    )
    assert store.get(key) == record["response"]


@pytest.mark.anyio
async def test_another_server_is_another_key(
    mock_server: Callable[..., MockServer], tmp_path: Path
) -> None:
    one, other = mock_server(), mock_server(seed=1)
    path = write_jsonl(tmp_path / "in.jsonl", requests(6))
    cache = tmp_path / "cache"
    await run(config_for(one, path, tmp_path / "a", cache))
    report = await run(config_for(other, path, tmp_path / "b", cache))
    assert report.summary["cache"]["hits"] == 0
    assert other.requests_received == 6


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["max_tokens_total", "max_cost"])
async def test_hits_spend_nothing_under_the_token_and_cost_guards(
    mock_server: Callable[..., MockServer], tmp_path: Path, kind: str
) -> None:
    """--max-tokens-total and --max-cost count what was used and paid; a hit used
    nothing, in this session (its estimate is given back) and when a later session
    counts the earlier ones."""
    server = mock_server()
    path = write_jsonl(tmp_path / "in.jsonl", requests(20))
    cache = tmp_path / "cache"
    await run(config_for(server, path, tmp_path / "warm", cache))
    warm = summary_of(tmp_path / "warm")
    if kind == "max_tokens_total":
        guard = Guards(max_tokens_total=warm["tokens"]["total_tokens"] // 2)
    else:
        guard = Guards(max_cost=warm["cost"]["total_usd"] / 2)
    sent = server.requests_received
    out = tmp_path / "out"
    half = await run(config_for(server, path, out, cache, guards=guard, limit=10, concurrency=1))
    assert half.summary["counts"]["done"] == 10
    rest = await run(config_for(server, path, out, cache, guards=guard, concurrency=1))
    assert rest.exit_code == 0, rest.summary["reason"]
    assert rest.summary["counts"]["ok"] == 20
    assert server.requests_received == sent
    assert rest.summary["cost"]["total_usd"] == 0  # what was paid: nothing
    assert rest.summary["cache"]["cost_saved_usd"] == pytest.approx(warm["cost"]["total_usd"])
    # Without the cache the same guard stops the run: the limit is real.
    cold = config_for(server, path, tmp_path / "cold", tmp_path / "empty", guards=guard)
    assert (await run(cold)).exit_code == 3


@pytest.mark.anyio
async def test_an_unusable_cache_directory_is_a_config_error_before_outdir_is_touched(
    mock_server: Callable[..., MockServer], tmp_path: Path
) -> None:
    server = mock_server()
    path = write_jsonl(tmp_path / "in.jsonl", requests(2))
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ConfigError, match="cannot use cache directory"):
        await run(config_for(server, path, tmp_path / "out", blocker / "cache"))
    assert not (tmp_path / "out").exists()
    assert server.requests_received == 0


class SlowStore(RequestCache):
    """A cache whose puts take a while and count how many run at once."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.lock = threading.Lock()
        self.active = self.most = 0

    def put(self, key: str, reply: Mapping[str, Any] | bytes) -> bool:
        with self.lock:
            self.active += 1
            self.most = max(self.most, self.active)
        time.sleep(0.01)
        with self.lock:
            self.active -= 1
        return super().put(key, reply)


@pytest.mark.anyio
async def test_stores_are_bounded_and_all_finish_when_the_run_is_cancelled(
    tmp_path: Path,
) -> None:
    """At most `pending` stores wait for the disk; leaving waits for every one, even when
    the run is being cancelled (each holds a reply that was paid for)."""
    store = SlowStore(tmp_path / "cache")
    reply = {"choices": [{"message": {"role": "assistant", "content": "x"}}], "usage": {}}
    keys = [f"{i:064x}" for i in range(20)]
    with anyio.fail_after(30), anyio.CancelScope() as outer:
        async with RunCache(store, "http://127.0.0.1:1", pending=3) as cache:
            for key in keys:
                await cache.keep(key, reply)
            outer.cancel()
            await anyio.sleep(5)  # cancelled at once: the stores still pending finish
    assert store.most == 3
    assert cache.stored == 20
    assert all(store.get(key) == reply for key in keys)


# --- the command line -----------------------------------------------------------------


def cli(args: list[str], env: dict[str, str]) -> Any:
    return CliRunner().invoke(main, args, env={"MISTRAL_API_KEY": KEY, **env})


def test_cache_alone_uses_the_default_directory_and_the_table_says_so(
    mock_server: Callable[..., MockServer], tmp_path: Path
) -> None:
    server = mock_server()
    path = write_jsonl(tmp_path / "in.jsonl", requests(8))
    env = {"XDG_CACHE_HOME": str(tmp_path / "xdg")}
    base = ["run", str(path), "--base-url", server.url]
    first = cli([*base, "-o", str(tmp_path / "a"), "--cache"], env)
    assert first.exit_code == 0, first.output
    assert RequestCache(tmp_path / "xdg/batchrun").info().entries == 8
    second = cli([*base, "-o", str(tmp_path / "b"), "--cache"], env)
    assert second.exit_code == 0, second.output
    assert "cache     8 hits · 0 misses · 0 stored · saved" in second.output
    assert server.requests_received == 8
    # Without --cache nothing is looked up, and the table has no cache line.
    third = cli([*base, "-o", str(tmp_path / "c")], env)
    assert "hits" not in third.output
    assert summary_of(tmp_path / "c")["cache"] is None
    assert server.requests_received == 16


def test_cache_dir_from_the_flag_and_from_the_environment(
    mock_server: Callable[..., MockServer], tmp_path: Path
) -> None:
    server = mock_server()
    path = write_jsonl(tmp_path / "in.jsonl", requests(4))
    base = ["run", str(path), "--base-url", server.url, "-q"]
    assert cli([*base, "-o", str(tmp_path / "a"), f"--cache={tmp_path / 'c1'}"], {}).exit_code == 0
    env = {"BATCHRUN_RUN_CACHE": str(tmp_path / "c2")}
    assert cli([*base, "-o", str(tmp_path / "b")], env).exit_code == 0
    assert RequestCache(tmp_path / "c1").info().entries == 4
    assert RequestCache(tmp_path / "c2").info().entries == 4


def test_mock_runs_share_entries_though_each_mock_has_its_own_port(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", requests(6))
    cache = f"--cache={tmp_path / 'cache'}"
    args = ["run", str(path), "--mock", "--mock-fail-rate", "0", "--mock-latency-ms", "1", "-q"]
    assert cli([*args, "-o", str(tmp_path / "a"), cache], {}).exit_code == 0
    assert cli([*args, "-o", str(tmp_path / "b"), cache], {}).exit_code == 0
    assert summary_of(tmp_path / "b")["cache"]["hits"] == 6
    assert summary_of(tmp_path / "b")["session"]["requests_sent"] == 0


def test_cache_info_and_clear_from_the_main_cli(
    mock_server: Callable[..., MockServer], tmp_path: Path
) -> None:
    server = mock_server()
    path = write_jsonl(tmp_path / "in.jsonl", requests(5))
    store = str(tmp_path / "cache")
    run_args = ["run", str(path), "-o", str(tmp_path / "a"), "--base-url", server.url, "-q"]
    assert cli([*run_args, f"--cache={store}"], {}).exit_code == 0
    info = cli(["cache", "info", "--dir", store, "--json"], {})
    assert orjson.loads(info.output)["entries"] == 5
    cleared = cli(["cache", "clear", "--json"], {"BATCHRUN_CACHE_DIR": store})
    assert orjson.loads(cleared.output)["removed"] == 5
    assert RequestCache(Path(store)).info().entries == 0


@pytest.mark.parametrize("args", [["info", "--bogus"], ["clear", "extra"], ["nope"]])
def test_cache_usage_errors_exit_1_like_every_command(args: list[str]) -> None:
    through_main = CliRunner().invoke(main, ["cache", *args])
    alone = CliRunner().invoke(cache_group, args)
    assert (through_main.exit_code, alone.exit_code) == (1, 1), through_main.output
    assert "Usage:" in alone.output


# --- real processes ---------------------------------------------------------------------


def batchrun(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "batchrun", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "MISTRAL_API_KEY": KEY},
        cwd=REPO,
    )


def assert_correct(out: Path, expected: list[dict[str, Any]]) -> None:
    """Every line exactly once, in order, ok, with the reply the mock gives that request."""
    records = read_jsonl(out / "results.jsonl")
    assert [r["index"] for r in records] == list(range(len(expected)))
    assert all(r["status"] == "ok" for r in records)
    assert [answer(r) for r in records] == [answer(r) for r in expected]
    journal = sorted(r["index"] for r in read_jsonl(out / "journal.jsonl"))
    assert journal == list(range(len(expected)))


def reference(server: MockServer, path: Path, out: Path) -> list[dict[str, Any]]:
    code, stderr = finish(batchrun("run", str(path), "-o", str(out), "--base-url", server.url))
    assert code == 0, stderr
    return read_jsonl(out / "results.jsonl")


def test_two_processes_share_one_cache_at_once(
    mock_server: Callable[..., MockServer], tmp_path: Path
) -> None:
    server = mock_server(latency_ms=5, jitter_ms=10)
    path = write_jsonl(tmp_path / "in.jsonl", requests(300))
    expected = reference(server, path, tmp_path / "ref")
    cache = f"--cache={tmp_path / 'cache'}"
    procs = [
        batchrun(
            "run", str(path), "-o", str(tmp_path / name), "--base-url", server.url, "-c", "8", cache
        )
        for name in ("a", "b")
    ]
    for proc in procs:
        code, stderr = finish(proc)
        assert code == 0, stderr
    for name in ("a", "b"):
        assert_correct(tmp_path / name, expected)
    sections = [summary_of(tmp_path / name)["cache"] for name in ("a", "b")]
    assert sum(s["hits"] + s["misses"] for s in sections) == 600
    info = RequestCache(tmp_path / "cache").info()
    assert (info.entries, info.partial) == (300, 0)
    # And a third run is answered whole from what the two left.
    code, stderr = finish(
        batchrun("run", str(path), "-o", str(tmp_path / "c"), "--base-url", server.url, cache)
    )
    assert code == 0, stderr
    assert summary_of(tmp_path / "c")["cache"]["hits"] == 300
    assert_correct(tmp_path / "c", expected)


def test_kill_9_during_a_cached_run_then_rerun(
    mock_server: Callable[..., MockServer], tmp_path: Path
) -> None:
    """Kills land while replies are being stored; the rerun into the same OUTDIR and a
    run into a fresh one both end with every record correct, none served torn."""
    server = mock_server(latency_ms=2, jitter_ms=4)
    lines = 400
    path = write_jsonl(tmp_path / "in.jsonl", requests(lines))
    expected = reference(server, path, tmp_path / "ref")
    out, store = tmp_path / "out", tmp_path / "cache"
    args = (
        "run",
        str(path),
        "-o",
        str(out),
        "--base-url",
        server.url,
        "-c",
        "16",
        f"--cache={store}",
    )
    rng = random.Random(9)
    journal = out / "journal.jsonl"
    killed = 0
    for _ in range(3):
        start = journal.stat().st_size if journal.exists() else 0
        proc = batchrun(*args)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:
            if journal.exists() and journal.stat().st_size > start + 4_000:
                break
            time.sleep(0.002)
        time.sleep(rng.uniform(0, 0.03))
        proc.send_signal(signal.SIGKILL)
        killed += proc.wait(timeout=30) == -signal.SIGKILL
    assert killed, "every run finished before its kill"
    code, stderr = finish(batchrun(*args))
    assert code == 0, stderr
    assert_correct(out, expected)
    fresh = tmp_path / "fresh"
    code, stderr = finish(batchrun(*args[:3], str(fresh), *args[4:]))
    assert code == 0, stderr
    assert_correct(fresh, expected)
    assert summary_of(fresh)["cache"]["hits"] + summary_of(fresh)["cache"]["misses"] == lines


def test_the_resume_hint_keeps_the_cache(
    mock_server: Callable[..., MockServer], tmp_path: Path
) -> None:
    server = mock_server()
    path = write_jsonl(tmp_path / "in.jsonl", requests(3))
    base = ["run", str(path), "-o", str(tmp_path / "out"), "--base-url", server.url]
    stopped = cli([*base, "--max-tokens-total", "1", "--cache"], {"XDG_CACHE_HOME": str(tmp_path)})
    assert stopped.exit_code == 3, stopped.output
    hint = " ".join(stopped.output.split()).split("to resume: ")[1].split(" results: ")[0]
    assert hint.startswith(f"batchrun run {path} -o {tmp_path / 'out'} --base-url {server.url}")
    assert hint.split()[-1] == "--cache"
    other = cli([*base, "--max-tokens-total", "1", f"--cache={tmp_path / 'c'}"], {})
    assert f"--cache={tmp_path / 'c'}" in " ".join(other.output.split())


JOB = """\
[input]
path = "rows.jsonl"

[request]
model = "mistral-small-latest"
max_tokens = 20

[[messages]]
role = "user"
content = "Label: {text}"

[run]
"""


@pytest.mark.parametrize(
    ("setting", "where"),
    [('cache = "store"', "job/store"), ("cache = true", "xdg/batchrun")],
)
def test_a_job_file_turns_the_cache_on(
    mock_server: Callable[..., MockServer], tmp_path: Path, setting: str, where: str
) -> None:
    server = mock_server()
    folder = tmp_path / "job"
    folder.mkdir()
    write_jsonl(folder / "rows.jsonl", [{"text": f"row {i}"} for i in range(5)])
    job = folder / "job.toml"
    job.write_text(JOB + setting + "\n", encoding="utf-8")
    env = {"XDG_CACHE_HOME": str(tmp_path / "xdg")}
    base = ["run", str(job), "--base-url", server.url, "-q"]
    assert cli([*base, "-o", str(tmp_path / "a")], env).exit_code == 0
    assert RequestCache(tmp_path / where).info().entries == 5
    assert cli([*base, "-o", str(tmp_path / "b")], env).exit_code == 0
    assert summary_of(tmp_path / "b")["cache"]["hits"] == 5
    assert server.requests_received == 5
    # A flag wins over the job: another directory, empty, so every row is sent.
    flag = ["-o", str(tmp_path / "c"), f"--cache={tmp_path / 'other'}"]
    assert cli([*base, *flag], env).exit_code == 0
    assert server.requests_received == 10


def test_a_job_cache_value_of_the_wrong_type_names_the_key(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "rows.jsonl", [{"text": "x"}])
    job = tmp_path / "job.toml"
    job.write_text(JOB + "cache = 1\n", encoding="utf-8")
    result = cli(["run", str(job), "-o", str(tmp_path / "out")], {})
    assert result.exit_code == 1
    assert "run.cache: must be true, false or a directory, got 1" in " ".join(result.output.split())
