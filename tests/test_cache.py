"""The request cache: the canonical key, verified entries, errors never stored, two real
processes sharing one directory, and writers killed with SIGKILL mid-write."""

from __future__ import annotations

import os
import random
import selectors
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from batchrun.cache import (
    IGNORED_FIELDS,
    READ_BYTES,
    RequestCache,
    cache_key,
    canonical_body,
    default_cache_dir,
    normalize_endpoint,
)
from batchrun.cache_cli import cache as cache_group
from batchrun.errors import ConfigError
from batchrun.mock import MockServer

URL = "https://api.mistral.ai"
BODY: dict[str, Any] = {
    "model": "mistral-small-latest",
    "messages": [{"role": "user", "content": "Label: great product"}],
    "temperature": 0.0,
    "max_tokens": 20,
}


def reply(content: str = "positive", **extra: Any) -> dict[str, Any]:
    return {
        "id": "cmpl-1",
        "object": "chat.completion",
        "model": "mistral-small-latest",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 9, "completion_tokens": 1, "total_tokens": 10},
        **extra,
    }


@pytest.fixture
def store(tmp_path: Path) -> RequestCache:
    return RequestCache.open(tmp_path / "cache")


# --- the key ----------------------------------------------------------------------------


def test_key_ignores_order_integral_floats_and_delivery() -> None:
    base = cache_key(BODY, URL)
    same = {
        "max_tokens": 20.0,
        "temperature": 0,
        "messages": [{"content": "Label: great product", "role": "user"}],
        "model": "mistral-small-latest",
        "stream": True,
        "stream_options": {"include_usage": True},
        "metadata": {"row": 17},
    }
    assert cache_key(same, URL) == base
    assert len(base) == 64 and int(base, 16) >= 0


@pytest.mark.parametrize(
    "change",
    [
        {"temperature": 0.5},
        {"max_tokens": 21},
        {"model": "mistral-large-latest"},
        {"messages": [{"role": "user", "content": "Label: great product "}]},
        {"random_seed": 1},
        {"response_format": {"type": "json_object"}},
        {"prompt_cache_key": "k"},
    ],
)
def test_key_changes_with_anything_else(change: dict[str, Any]) -> None:
    assert cache_key({**BODY, **change}, URL) != cache_key(BODY, URL)


def test_key_tells_true_from_one_and_strings_from_numbers() -> None:
    assert cache_key({**BODY, "safe_prompt": True}, URL) != cache_key(
        {**BODY, "safe_prompt": 1}, URL
    )
    assert cache_key({**BODY, "n": "1"}, URL) != cache_key({**BODY, "n": 1}, URL)
    assert canonical_body({"a": 1.5, "b": [2.0, -0.0]}) == b'{"a":1.5,"b":[2,0]}'


def test_key_names_the_server_not_its_spelling() -> None:
    base = cache_key(BODY, "https://api.mistral.ai")
    for same in (
        "https://API.mistral.ai/",
        "HTTPS://api.mistral.ai:443",
        "https://u:p@api.mistral.ai",
    ):
        assert cache_key(BODY, same) == base, same
    for other in ("http://api.mistral.ai", "https://api.eu.mistral.ai", "http://127.0.0.1:8000"):
        assert cache_key(BODY, other) != base, other
    assert normalize_endpoint("http://[::1]:8000/v1/") == "http://[::1]:8000/v1"
    assert normalize_endpoint("http://localhost:80/x?a=1") == "http://localhost/x?a=1"


def test_huge_integers_still_have_a_key() -> None:
    assert cache_key({**BODY, "random_seed": 10**30}, URL) != cache_key(BODY, URL)
    assert cache_key({**BODY, "random_seed": 1e30}, URL) == cache_key(
        {**BODY, "random_seed": int(1e30)}, URL
    )


_leaf = (
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=6)
)
_json = st.recursive(
    _leaf,
    lambda kids: (
        st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=5), kids, max_size=3)
    ),
    max_leaves=12,
)
_names = st.text(max_size=8).filter(lambda name: name not in IGNORED_FIELDS)
_bodies = st.dictionaries(_names, _json, max_size=5)


def _reversed_order(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _reversed_order(value[k]) for k in reversed(list(value))}
    if isinstance(value, list):
        return [_reversed_order(v) for v in value]
    return value


def _ints_as_floats(value: Any) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return float(value)  # exact: |value| <= 2**53
    if isinstance(value, dict):
        return {k: _ints_as_floats(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_ints_as_floats(v) for v in value]
    return value


def _leaf_paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(value, dict) and value:
        return [p for k, v in value.items() for p in _leaf_paths(v, (*path, k))]
    if isinstance(value, list) and value:
        return [p for i, v in enumerate(value) for p in _leaf_paths(v, (*path, i))]
    return [path] if path else []


def _replaced(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        return {**value, head: _replaced(value[head], rest, new)}
    return [_replaced(v, rest, new) if i == head else v for i, v in enumerate(value)]


def _get(value: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        value = value[step]
    return value


@settings(deadline=None)
@given(
    body=_bodies, delivery=st.fixed_dictionaries({}, optional=dict.fromkeys(IGNORED_FIELDS, _json))
)
def test_key_property_same_request_same_key(body: dict[str, Any], delivery: dict[str, Any]) -> None:
    key = cache_key(body, URL)
    assert cache_key(_reversed_order(body), URL) == key
    assert cache_key(_ints_as_floats(body), URL) == key
    assert cache_key({**delivery, **body}, URL) == key


@settings(deadline=None)
@given(body=_bodies, data=st.data())
def test_key_property_any_other_change_changes_it(
    body: dict[str, Any], data: st.DataObject
) -> None:
    key = cache_key(body, URL)
    # A leaf becomes a value of another JSON type (a string if it was not one, else longer).
    paths = _leaf_paths(body)
    if paths:
        path = data.draw(st.sampled_from(paths))
        old = _get(body, path)
        new = old + "x" if isinstance(old, str) else str(old)
        assert cache_key(_replaced(body, path, new), URL) != key
    # A field added or removed.
    name = data.draw(_names.filter(lambda n: n not in body))
    assert cache_key({**body, name: data.draw(_json)}, URL) != key
    if body:
        gone = data.draw(st.sampled_from(sorted(body)))
        assert cache_key({k: v for k, v in body.items() if k != gone}, URL) != key
    # Another server.
    assert cache_key(body, "http://127.0.0.1:8000") != key


# --- entries ----------------------------------------------------------------------------


def test_put_then_get_round_trips(store: RequestCache) -> None:
    key = cache_key(BODY, URL)
    assert store.get(key) is None
    assert store.put(key, reply())
    assert store.get(key) == reply()
    assert store.put(key, orjson.dumps(reply("negative")))  # bytes as received
    assert store.get(key) == reply("negative")
    assert oct(store.path(key).stat().st_mode & 0o777) == oct(0o600)


@pytest.mark.parametrize(
    "bad",
    [
        {"error": {"message": "rate limited", "type": "rate_limited"}},
        {"object": "error", "message": "HTTP 500"},
        {"choices": []},
        {"choices": [{"index": 0}]},
        {"choices": [{"message": "not an object"}]},
        reply(),  # replaced below with finish_reason "error"
        b"<html>502 Bad Gateway</html>",
        b"[1, 2]",
    ],
)
def test_errors_are_never_stored(store: RequestCache, bad: Any) -> None:
    if bad == reply():
        bad["choices"][0]["finish_reason"] = "error"
    key = cache_key(BODY, URL)
    assert not store.put(key, bad)
    assert store.get(key) is None
    assert not store.path(key).exists()


def test_a_reply_that_cannot_be_serialised_is_refused_not_raised(store: RequestCache) -> None:
    key = cache_key(BODY, URL)
    assert not store.put(key, {**reply(), "when": object()})
    assert store.get(key) is None


def _stored(store: RequestCache) -> tuple[str, bytes]:
    key = cache_key(BODY, URL)
    assert store.put(key, reply())
    return key, store.path(key).read_bytes()


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: data[: len(data) // 2],  # torn: the writer died half-way
        lambda data: data[:-1],  # one byte short
        lambda data: data + b" ",  # one byte long
        lambda data: data[:-3] + bytes([data[-3] ^ 1]) + data[-2:],  # one bit flipped
        lambda data: b"",  # empty
        lambda data: data.split(b"\n", 1)[1],  # no header
        lambda data: b"batchrun-cache-v0" + data[len(b"batchrun-cache-v1") :],  # other format
    ],
)
def test_a_damaged_entry_is_a_miss_and_is_removed(
    store: RequestCache, damage: Callable[[bytes], bytes]
) -> None:
    key, data = _stored(store)
    store.path(key).write_bytes(damage(data))
    assert store.get(key) is None
    assert not store.path(key).exists()
    assert store.put(key, reply("again"))
    assert store.get(key) == reply("again")


def _entry_size(store: RequestCache, key: str, reply: dict[str, Any]) -> int:
    assert store.put(key, reply)
    return store.path(key).stat().st_size


@pytest.mark.parametrize("extra", [-1, 0, 1, READ_BYTES + 1])
def test_entries_of_any_size_round_trip_and_a_torn_big_one_is_a_miss(
    store: RequestCache, extra: int
) -> None:
    # get() reads READ_BYTES at once and goes on only after a full read: entries just
    # under, at and over that size are read whole, and one cut short is never served.
    key = cache_key(BODY, URL)
    size = READ_BYTES + extra
    padded = {**reply(), "pad": ""}
    for _ in range(2):  # the second round corrects for the header's length digits
        padded["pad"] = "x" * (len(padded["pad"]) + size - _entry_size(store, key, padded))
    assert _entry_size(store, key, padded) == size
    assert store.get(key) == padded
    store.path(key).write_bytes(store.path(key).read_bytes()[:-1])
    assert store.get(key) is None
    assert not store.path(key).exists()


def test_an_entry_under_another_key_is_not_served(store: RequestCache) -> None:
    key, data = _stored(store)
    other = cache_key({**BODY, "temperature": 0.7}, URL)
    store.path(other).parent.mkdir(parents=True, exist_ok=True)
    store.path(other).write_bytes(data)  # a valid entry, misfiled
    assert store.get(other) is None
    assert store.get(key) == reply()


def test_a_disk_that_refuses_writes_is_a_failed_put_not_an_exception(store: RequestCache) -> None:
    key = cache_key(BODY, URL)
    store.path(key).parent.parent.mkdir(parents=True, exist_ok=True)
    store.path(key).parent.write_bytes(b"a file where the shard folder should be")
    assert not store.put(key, reply())
    assert store.get(key) is None


def test_open_refuses_an_unusable_directory(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="cannot use cache directory"):
        RequestCache.open(tmp_path / "file")


def test_keys_are_checked(store: RequestCache) -> None:
    with pytest.raises(ValueError, match="not a cache key"):
        store.get("../../etc/passwd")


# --- info, clear, default directory -----------------------------------------------------


def test_info_and_clear(store: RequestCache) -> None:
    assert (store.info().entries, store.info().bytes) == (0, 0)
    keys = [cache_key({**BODY, "max_tokens": n}, URL) for n in range(1, 6)]
    for key in keys:
        assert store.put(key, reply())
    shard = store.path(keys[0]).parent
    (shard / ".tmp-leftover").write_bytes(b"half")
    (shard / "notes.txt").write_text("not ours")
    found = store.info()
    assert found.entries == 5
    assert found.bytes == sum(store.path(k).stat().st_size for k in keys)
    assert found.partial == 1
    assert store.clear() == 5
    assert store.info().entries == store.info().partial == 0
    assert (shard / "notes.txt").exists()  # clear removes only what it wrote


def test_info_of_a_missing_directory_creates_nothing(tmp_path: Path) -> None:
    found = RequestCache(tmp_path / "none").info()
    assert (found.entries, found.bytes, found.partial) == (0, 0, 0)
    assert not (tmp_path / "none").exists()


def test_default_directory(tmp_path: Path) -> None:
    assert default_cache_dir({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "batchrun"
    home = Path.home() / ".cache" / "batchrun"
    assert default_cache_dir({"XDG_CACHE_HOME": "relative/dir"}) == home
    assert default_cache_dir({}) == home


def test_cli_info_and_clear(tmp_path: Path) -> None:
    store = RequestCache.open(tmp_path / "c")
    for n in range(3):
        store.put(cache_key({**BODY, "max_tokens": n + 1}, URL), reply())
    runner = CliRunner()
    env = {"BATCHRUN_CACHE_DIR": str(tmp_path / "c")}
    shown = runner.invoke(cache_group, ["info", "--json"], env=env)
    assert shown.exit_code == 0, shown.output
    assert orjson.loads(shown.output) == store.info().to_dict()
    assert orjson.loads(shown.output)["entries"] == 3
    text = runner.invoke(cache_group, ["info", "--dir", str(tmp_path / "c")])
    assert "entries:   3" in text.output and str(tmp_path / "c") in text.output
    cleared = runner.invoke(cache_group, ["clear"], env=env)
    assert cleared.exit_code == 0 and "removed 3 entries" in cleared.output
    assert store.info().entries == 0


def test_cli_default_directory_is_xdg(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cache_group, ["info", "--json"], env={"XDG_CACHE_HOME": str(tmp_path)}
    )
    assert orjson.loads(result.output)["directory"] == str(tmp_path / "batchrun")


# --- what a real server sends -------------------------------------------------------------


def _post(url: str, body: dict[str, Any]) -> tuple[int, bytes]:
    request = urllib.request.Request(
        url + "/v1/chat/completions",
        data=orjson.dumps(body),
        headers={"content-type": "application/json", "authorization": "Bearer k"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as failed:
        return failed.code, failed.read()


@pytest.mark.parametrize("fault", ["500", "429", "422", "invalid_json"])
def test_mock_replies_ok_are_stored_and_faults_are_not(
    store: RequestCache, mock_server: Callable[..., MockServer], fault: str
) -> None:
    ok = mock_server(latency_ms=0)
    status, body = _post(ok.url, BODY)
    key = cache_key(BODY, ok.url)
    assert status == 200 and store.put(key, body)
    assert store.get(key) == orjson.loads(body)

    broken = mock_server(latency_ms=0, fault=fault, retry_after_s=0)
    status, body = _post(broken.url, BODY)
    other = cache_key(BODY, broken.url)
    assert other != key  # another server, another entry
    assert not store.put(other, body)
    assert store.get(other) is None


# --- several processes ------------------------------------------------------------------

# Each child hammers the same keys: get (every hit must be whole and belong to its key),
# then put its own variant. Prints its counts as JSON.
SHARER = """
import sys, time, orjson
from pathlib import Path
from batchrun.cache import RequestCache, cache_key
directory, me, seconds = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3])
store = RequestCache.open(directory)
keys = [cache_key({"model": "m", "messages": [{"role": "user", "content": str(i)}]}, "x://h")
        for i in range(12)]
def reply(key, who):
    return {"choices": [{"message": {"role": "assistant", "content": key}}], "who": who,
            "pad": key * 40}
counts = {"hits": 0, "foreign": 0, "puts": 0, "bad": 0}
# At least `seconds`, and on until the other process's writes were seen (it may start
# late on a busy machine), at most 30 s.
start = time.monotonic()
while time.monotonic() < start + 30 and (
    time.monotonic() < start + seconds or counts["foreign"] < 20
):
    for key in keys:
        got = store.get(key)
        if got is not None:
            counts["hits"] += 1
            counts["foreign"] += got.get("who") != me
            counts["bad"] += got.get("who") not in ("a", "b") or got != reply(key, got["who"])
        counts["puts"] += store.put(key, reply(key, me))
print(orjson.dumps(counts).decode())
"""


def test_two_processes_share_one_cache(tmp_path: Path) -> None:
    children = [
        subprocess.Popen(
            [sys.executable, "-c", SHARER, str(tmp_path), who, "1.5"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for who in ("a", "b")
    ]
    results = []
    for child in children:
        out, err = child.communicate(timeout=60)
        assert child.returncode == 0, err.decode()
        results.append(orjson.loads(out))
    for counts in results:
        assert counts["bad"] == 0, results
        assert counts["puts"] > 0 and counts["hits"] > 0, results
    # Each read the other's writes: they really shared the entries at the same time.
    assert all(counts["foreign"] > 0 for counts in results), results


# Writes big entries to the same keys as fast as it can, until killed.
WRITER = """
import sys
from pathlib import Path
from batchrun.cache import RequestCache
store = RequestCache.open(Path(sys.argv[1]))
keys, size = sys.argv[2].split(","), int(sys.argv[3])
n = 0
while True:
    for key in keys:
        n += 1
        store.put(key, {"choices": [{"message": {"content": key}}], "n": n, "pad": "x" * size})
    if n == len(keys):
        print("ready", flush=True)  # one whole round stored: the kills come after this
"""
PAD = 256 * 1024


def _wait_ready(child: subprocess.Popen[bytes], timeout: float) -> None:
    assert child.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(child.stdout, selectors.EVENT_READ)
        assert selector.select(timeout), "writer never started"
    assert child.stdout.readline() == b"ready\n"


def _kill_rounds(tmp_path: Path, rounds: int) -> None:
    """Start a writer, let it store every key once, kill -9 it at a random moment; then
    every key must be served, whole: the version before the interrupted write, or after."""
    store = RequestCache(tmp_path)
    keys = [cache_key({**BODY, "max_tokens": n}, URL) for n in range(1, 5)]
    rng = random.Random(9)
    for _ in range(rounds):
        child = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(tmp_path), ",".join(keys), str(PAD)],
            stdout=subprocess.PIPE,
        )
        try:
            _wait_ready(child, timeout=30)
            time.sleep(rng.uniform(0.0, 0.06))
        finally:
            os.kill(child.pid, signal.SIGKILL)
            child.wait(timeout=30)
            assert child.stdout is not None
            child.stdout.close()
        for key in keys:
            got = store.get(key)
            assert got is not None, "a stored entry was lost to the kill"
            assert got["choices"][0]["message"]["content"] == key
            assert got["pad"] == "x" * PAD


def test_kill_9_of_a_writer_never_leaves_a_torn_or_lost_entry(tmp_path: Path) -> None:
    _kill_rounds(tmp_path, rounds=4)
    assert RequestCache(tmp_path).info().entries == 4


@pytest.mark.slow
def test_kill_9_soak(tmp_path: Path) -> None:
    _kill_rounds(tmp_path, rounds=80)
    # Over 80 kills some landed mid-write: their temp files are left, never served.
    assert RequestCache(tmp_path).info().partial > 0
