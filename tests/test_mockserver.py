"""The built-in mock server over real 127.0.0.1 HTTP: replies, faults, streams, connections."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import orjson
import pytest

from batchrun.mock import FAULT_KINDS, MockConfig, MockServer, serve

KEY = {"authorization": "Bearer k"}
CHAT = "/v1/chat/completions"
STATUS_KINDS = [kind for kind in FAULT_KINDS if kind.isdigit()]
TOOL = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}
Factory = Callable[..., MockServer]


def chat(text: str = "hello there", **fields: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": text}], **fields}


def mocked(fault: str, text: str = "hello there", **options: Any) -> dict[str, Any]:
    return chat(text, metadata={"mock": {"fault": fault, **options}})


async def post(
    server: MockServer, body: Any, headers: dict[str, str] | None = None, timeout: float = 5
) -> httpx.Response:
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    async with httpx.AsyncClient(timeout=timeout) as client:
        return await client.post(server.url + CHAT, content=content, headers=headers or KEY)


def content_of(response: httpx.Response) -> str:
    text: str = response.json()["choices"][0]["message"]["content"]
    return text


def sse(raw: bytes) -> tuple[list[str], list[str]]:
    """(data payloads, comment lines) of a whole event stream."""
    data, comments = [], []
    for event in raw.decode().split("\n\n"):
        for line in event.splitlines():
            if line.startswith(":"):
                comments.append(line)
            elif line.startswith("data: "):
                data.append(line[len("data: ") :])
    return data, comments


def reassemble(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """One choice's content, tool calls (by index) and finish_reason, as a client builds them."""
    content, finish = "", None
    calls: dict[int, dict[str, Any]] = {}
    for chunk in chunks:
        (choice,) = chunk["choices"]
        delta = choice["delta"]
        content += delta.get("content") or ""
        for piece in delta.get("tool_calls") or ():
            call = calls.setdefault(piece["index"], {"function": {"arguments": ""}})
            call.update({k: piece[k] for k in ("id", "type") if k in piece})
            call["function"].setdefault("name", piece["function"].get("name"))
            call["function"]["arguments"] += piece["function"].get("arguments", "")
        finish = choice["finish_reason"] or finish
    return {"content": content, "tool_calls": list(calls.values()), "finish_reason": finish}


# --- raw HTTP, for what a client library would hide ------------------------------------------


def request_bytes(body: Any, headers: dict[str, str] | None = None, path: str = CHAT) -> bytes:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    lines = [f"POST {path} HTTP/1.1", "host: mock", f"content-length: {len(data)}"]
    lines += [f"{name}: {value}" for name, value in {**KEY, **(headers or {})}.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + data


def connect(server: MockServer, timeout: float = 5) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=timeout)


def read_response(reader: Any) -> tuple[int, dict[str, str], bytes]:
    """One Content-Length response from a socket file: (status, headers, body)."""
    status = int(reader.readline().split()[1])
    headers = {}
    while (line := reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, reader.read(int(headers.get("content-length", 0)))


def read_until_quiet(sock: socket.socket, quiet: float) -> tuple[bytes, bool]:
    """Everything sent until EOF (True) or until nothing arrives for `quiet` s (False)."""
    sock.settimeout(quiet)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except TimeoutError:
        return received, False
    except ConnectionResetError:
        pass
    return received, True


@pytest.fixture
def asyncio_errors(caplog: pytest.LogCaptureFixture) -> Iterator[list[logging.LogRecord]]:
    """asyncio's own error log (unretrieved task exceptions, destroyed pending tasks)."""
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        yield caplog.records


# --- replies ---------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_reply_shape_determinism_and_headers(mock_server: Factory) -> None:
    server, twin = mock_server(), mock_server()
    with anyio.fail_after(10):
        first, again = await post(server, chat()), await post(twin, chat())
        other = await post(server, chat("bye now"))
        tweaked = await post(server, chat(temperature=0.3))
    reply = first.json()
    assert first.status_code == 200 and first.headers["content-type"] == "application/json"
    assert set(reply) == {"id", "object", "created", "model", "choices", "usage"}
    assert reply["id"].startswith("cmpl-") and reply["object"] == "chat.completion"
    assert reply["model"] == "m" and abs(reply["created"] - time.time()) < 60
    (choice,) = reply["choices"]
    assert choice["index"] == 0 and choice["finish_reason"] == "stop"
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"].startswith("Echo: hello there ")
    assert content_of(again) == content_of(first) and again.json()["id"] == reply["id"]
    assert content_of(other).startswith("Echo: bye now")
    assert content_of(other) != content_of(first) != content_of(tweaked)
    for name in ("limit-req", "remaining-req", "limit-tokens", "remaining-tokens"):
        assert int(first.headers[f"x-ratelimit-{name}-minute"]) >= 0
    assert int(first.headers["x-ratelimit-tokens-query-cost"]) == reply["usage"]["total_tokens"]


@pytest.mark.anyio
async def test_usage_is_plausible(mock_server: Factory) -> None:
    server = mock_server()
    messages = [{"role": "system", "content": "abcd" * 5}, {"role": "user", "content": "hi you"}]
    with anyio.fail_after(10):
        reply = (await post(server, {"model": "m", "messages": messages})).json()
    usage, text = reply["usage"], reply["choices"][0]["message"]["content"]
    assert usage["prompt_tokens"] == (20 + 6) // 4 + 1
    assert usage["completion_tokens"] == len(text.split())
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert text.startswith("Echo: hi you")  # the last *user* message, not the system one


@pytest.mark.anyio
async def test_max_tokens_n_and_json_modes(mock_server: Factory) -> None:
    server = mock_server()
    schema = {"name": "a", "schema": {"type": "object"}}
    with anyio.fail_after(10):
        full = (await post(server, chat(max_tokens=500))).json()
        short = (await post(server, chat(max_tokens=2))).json()
        many = (await post(server, chat(n=3))).json()
        as_object = await post(server, chat(response_format={"type": "json_object"}))
        as_schema = await post(
            server, chat(response_format={"type": "json_schema", "json_schema": schema})
        )
    assert full["choices"][0]["finish_reason"] == "stop"
    assert short["choices"][0] == {
        "index": 0,
        "message": {"role": "assistant", "content": "Echo: hello"},
        "finish_reason": "length",
    }
    assert short["usage"]["completion_tokens"] == 2
    assert [c["index"] for c in many["choices"]] == [0, 1, 2]
    words = len(many["choices"][0]["message"]["content"].split())
    assert many["usage"]["completion_tokens"] == 3 * words
    for reply in (as_object, as_schema):
        assert isinstance(orjson.loads(content_of(reply)), dict)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("choice", "name"),
    [
        ("any", "lookup"),
        ("required", "lookup"),
        ({"type": "function", "function": {"name": "other"}}, "other"),
        ("auto", None),
        ("none", None),
    ],
)
async def test_tool_calls(mock_server: Factory, choice: object, name: str | None) -> None:
    server = mock_server()
    other = {"type": "function", "function": {"name": "other", "parameters": {}}}
    with anyio.fail_after(10):
        reply = (await post(server, chat(tools=[TOOL, other], tool_choice=choice))).json()
    (result,) = reply["choices"]
    if name is None:
        assert "tool_calls" not in result["message"] and result["finish_reason"] == "stop"
        return
    assert result["finish_reason"] == "tool_calls" and result["message"]["content"] == ""
    (call,) = result["message"]["tool_calls"]
    assert call["id"].startswith("call_") and call["type"] == "function"
    assert call["function"]["name"] == name
    assert isinstance(orjson.loads(call["function"]["arguments"]), dict)


# --- auth, validation, routes ----------------------------------------------------------------


@pytest.mark.anyio
async def test_auth(mock_server: Factory) -> None:
    server, open_server = mock_server(), mock_server(require_auth=False)
    with anyio.fail_after(10):
        missing = await post(server, chat(), headers={"x-other": "1"})
        empty = await post(server, chat(), headers={"authorization": "Bearer"})
        wrong_scheme = await post(server, chat(), headers={"authorization": "Basic abc"})
        anything = await post(server, chat(), headers={"authorization": "Bearer sk-secret"})
        no_key_needed = await post(open_server, chat(), headers={"x-other": "1"})
    assert [r.status_code for r in (missing, empty, wrong_scheme)] == [401, 401, 401]
    assert set(missing.json()) == {"message", "request_id"}
    assert missing.json()["message"] == "Unauthorized"
    assert anything.status_code == no_key_needed.status_code == 200
    assert b"sk-secret" not in anything.content + str(anything.headers).encode()


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("body", "loc", "kind"),
    [
        (b"{not json", ["body"], "json_invalid"),
        ([1, 2], ["body"], "dict_type"),
        ({"messages": [{"role": "user", "content": "x"}]}, ["body", "model"], "missing"),
        ({"model": "", "messages": [{"role": "user"}]}, ["body", "model"], "string_too_short"),
        ({"model": 7, "messages": [{"role": "user"}]}, ["body", "model"], "string_type"),
        ({"model": "m"}, ["body", "messages"], "missing"),
        ({"model": "m", "messages": []}, ["body", "messages"], "too_short"),
        ({"model": "m", "messages": "hi"}, ["body", "messages"], "list_type"),
        ({"model": "m", "messages": ["hi"]}, ["body", "messages", 0], "dict_type"),
        (
            {"model": "m", "messages": [{"content": "x"}]},
            ["body", "messages", 0],
            "union_tag_not_found",
        ),
        (
            chat(messages=[{"role": "user"}, {"role": "bot"}]),
            ["body", "messages", 1],
            "union_tag_invalid",
        ),
        (chat(messages=[{"role": ["user"]}]), ["body", "messages", 0], "union_tag_invalid"),
    ],
)
async def test_validation_errors(
    mock_server: Factory, body: Any, loc: list[Any], kind: str
) -> None:
    server = mock_server()
    with anyio.fail_after(10):
        response = await post(server, body)
    assert response.status_code == 422
    error = response.json()
    assert error["object"] == "error" and isinstance(error["message"], str)
    (detail,) = error["detail"]
    assert (detail["loc"], detail["type"]) == (loc, kind) and detail["msg"]


@pytest.mark.anyio
async def test_routes(mock_server: Factory) -> None:
    server = mock_server()
    with anyio.fail_after(10):
        async with httpx.AsyncClient(base_url=server.url, headers=KEY) as client:
            health = await client.get("/health")
            models = await client.get("/v1/models")
            with_query = await client.post(CHAT + "?beta=1", json=chat())
            unknown = await client.post("/v1/other", json=chat())
            wrong_method = await client.get(CHAT)
            post_health = await client.post("/health")
    assert (health.status_code, health.json()) == (200, {"status": "ok"})
    assert models.json()["object"] == "list"
    assert all(m["object"] == "model" and m["id"] for m in models.json()["data"])
    assert with_query.status_code == 200
    assert unknown.status_code == 404 and unknown.json()["object"] == "error"
    assert (wrong_method.status_code, wrong_method.headers["allow"]) == (405, "POST")
    assert post_health.status_code == 405
    assert server.requests_received == 1  # only POSTs to the chat path count


# --- faults ----------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("kind", STATUS_KINDS)
async def test_status_faults_by_header_and_by_body(mock_server: Factory, kind: str) -> None:
    server = mock_server()
    with anyio.fail_after(10):
        by_header = await post(server, chat(), {**KEY, "x-mock-fault": kind})
        by_body = await post(server, mocked(kind))
    assert by_header.status_code == by_body.status_code == int(kind)
    error = by_body.json()
    assert error["object"] == "error" and error["code"] == kind and error["message"]
    assert "type" in error
    assert ("retry-after" in by_body.headers) == (kind == "429")


@pytest.mark.anyio
async def test_fault_priority_header_body_config(mock_server: Factory) -> None:
    server = mock_server(fault="503")
    with anyio.fail_after(10):
        from_config = await post(server, chat())
        from_body = await post(server, mocked("500"))
        from_header = await post(server, mocked("500"), {**KEY, "x-mock-fault": "429"})
        unknown = await post(server, chat(), {**KEY, "x-mock-fault": "meteor"})
    statuses = [r.status_code for r in (from_config, from_body, from_header)]
    assert statuses == [503, 500, 429]
    assert unknown.status_code == 400 and "meteor" in unknown.json()["message"]


@pytest.mark.anyio
async def test_times_counts_arrivals_of_the_same_body(mock_server: Factory) -> None:
    server = mock_server()
    by_header = {**KEY, "x-mock-fault": "503", "x-mock-fault-times": "1"}
    with anyio.fail_after(10):
        from_body = [(await post(server, mocked("500", times=2))).status_code for _ in range(4)]
        other_body = (await post(server, mocked("500", "another line", times=2))).status_code
        from_header = [(await post(server, chat("h"), by_header)).status_code for _ in range(3)]
    assert from_body == [500, 500, 200, 200]
    assert other_body == 500  # counted per exact body
    assert from_header == [503, 200, 200]


@pytest.mark.anyio
async def test_retry_after_values(mock_server: Factory) -> None:
    server, default = mock_server(retry_after_s=0.05), mock_server()
    with anyio.fail_after(10):
        configured = await post(server, mocked("429"))
        plain = await post(default, mocked("429"))
        custom = await post(server, mocked("429", retry_after=3, retry_after_ms=1500))
        fractional = await post(server, mocked("429", retry_after=0.25))
    assert (
        configured.headers["retry-after"] == "0.05" and "retry-after-ms" not in configured.headers
    )
    assert plain.headers["retry-after"] == "1"
    assert (custom.headers["retry-after"], custom.headers["retry-after-ms"]) == ("3", "1500")
    assert fractional.headers["retry-after"] == "0.25"


@pytest.mark.anyio
async def test_connection_faults(mock_server: Factory) -> None:
    server = mock_server()
    with anyio.fail_after(10):
        with pytest.raises(httpx.RemoteProtocolError):
            await post(server, mocked("drop"))
        with pytest.raises(httpx.ReadTimeout):
            await post(server, mocked("hang"), timeout=0.3)
        broken = await post(server, mocked("invalid_json"))
        moved = await post(server, mocked("redirect"))
    assert broken.status_code == 200 and broken.headers["content-type"] == "application/json"
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(broken.content)
    assert moved.status_code == 307 and moved.content == b""
    assert moved.headers["location"] == server.url + CHAT


def test_drop_sends_no_bytes(mock_server: Factory) -> None:
    server = mock_server()
    with connect(server) as sock:
        sock.sendall(request_bytes(mocked("drop")))
        received, closed = read_until_quiet(sock, quiet=3)
    assert (received, closed) == (b"", True)


@pytest.mark.anyio
async def test_stream_only_faults_on_a_plain_request_fall_back(mock_server: Factory) -> None:
    server = mock_server()
    with anyio.fail_after(10):
        with pytest.raises(httpx.RemoteProtocolError):
            await post(server, mocked("cut"))
        with pytest.raises(httpx.ReadTimeout):
            await post(server, mocked("stall"), timeout=0.3)
        malformed = await post(server, mocked("malformed"))
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(malformed.content)


@pytest.mark.anyio
async def test_fail_rate_is_seeded_and_transient(mock_server: Factory) -> None:
    async def outcomes(server: MockServer) -> list[object]:
        seen: list[object] = []
        for i in range(30):
            try:
                seen.append((await post(server, chat(f"r{i}"))).status_code)
            except httpx.RemoteProtocolError:
                seen.append("drop")
        return seen

    with anyio.fail_after(30):  # 60 requests, each on a new connection: slow on a busy machine
        first = await outcomes(mock_server(fail_rate=0.5, seed=7))
        second = await outcomes(mock_server(fail_rate=0.5, seed=7))
    assert first == second
    assert 200 in first and set(first) - {200} and set(first) <= {200, 500, 503, 429, "drop"}


@pytest.mark.anyio
async def test_latency_is_applied(mock_server: Factory) -> None:
    server, fast = mock_server(latency_ms=150), mock_server()
    with anyio.fail_after(10):
        started = time.perf_counter()
        await post(server, chat())
        configured = time.perf_counter() - started
        started = time.perf_counter()
        await post(fast, chat(metadata={"mock": {"latency_ms": 120}}))
        per_request = time.perf_counter() - started
        started = time.perf_counter()
        faulted = await post(server, mocked("500"))
        before_fault = time.perf_counter() - started
    assert configured >= 0.14 and per_request >= 0.11 and before_fault >= 0.14
    assert faulted.status_code == 500


# --- streaming -------------------------------------------------------------------------------


async def stream(server: MockServer, body: dict[str, Any]) -> tuple[httpx.Response, bytes]:
    async with httpx.AsyncClient(timeout=5) as client:
        response = await client.post(server.url + CHAT, json={**body, "stream": True}, headers=KEY)
        return response, response.content


@pytest.mark.anyio
async def test_stream_reassembles_to_the_plain_reply(mock_server: Factory) -> None:
    server = mock_server(stream_chunks=5)
    with anyio.fail_after(10):
        plain = (await post(server, chat())).json()
        response, raw = await stream(server, chat())
    assert response.headers["content-type"] == "text/event-stream"
    assert response.headers["transfer-encoding"] == "chunked"
    data, comments = sse(raw)
    assert comments == [": keep-alive"] and data[-1] == "[DONE]"
    chunks = [orjson.loads(d) for d in data[:-1]]
    for chunk in chunks:
        assert chunk["object"] == "chat.completion.chunk" and chunk["id"] == plain["id"]
        assert chunk["model"] == "m" and isinstance(chunk["created"], int)
        assert [c["index"] for c in chunk["choices"]] == [0]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    pieces = [c["choices"][0]["delta"].get("content") for c in chunks[1:-1]]
    assert len(pieces) == 5 and all(pieces)
    assert reassemble(chunks)["content"] == plain["choices"][0]["message"]["content"]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["usage"] == plain["usage"]


@pytest.mark.anyio
async def test_stream_splits_anywhere_and_keeps_utf8(mock_server: Factory) -> None:
    server = mock_server(stream_chunks=64)
    text = "héllo wörld ✓ 日本語 ok"
    with anyio.fail_after(10):
        plain = (await post(server, chat(text))).json()
        _, raw = await stream(server, chat(text))
    assert "語".encode() in raw  # multi-byte characters travel as raw UTF-8, not \u escapes
    data, _ = sse(raw)
    chunks = [orjson.loads(d) for d in data[:-1]]
    pieces = [c["choices"][0]["delta"].get("content") for c in chunks[1:-1]]
    assert any(len(p) == 1 and p not in " " for p in pieces)  # mid-word splits
    assert "".join(pieces) == plain["choices"][0]["message"]["content"]


@pytest.mark.anyio
async def test_streamed_tool_call_arguments_come_in_pieces(mock_server: Factory) -> None:
    server = mock_server()
    body = chat(tools=[TOOL], tool_choice="any")
    with anyio.fail_after(10):
        plain = (await post(server, body)).json()
        _, raw = await stream(server, body)
    chunks = [orjson.loads(d) for d in sse(raw)[0][:-1]]
    pieces = [p for c in chunks for p in c["choices"][0]["delta"].get("tool_calls") or ()]
    assert len(pieces) >= 2 and {p["index"] for p in pieces} == {0}
    assert {"id", "type"} <= set(pieces[0]) and pieces[0]["function"]["name"] == "lookup"
    assert all(set(p) == {"index", "function"} for p in pieces[1:])
    assert all(set(p["function"]) == {"arguments"} for p in pieces[1:])
    built = reassemble(chunks)
    assert built["tool_calls"] == plain["choices"][0]["message"]["tool_calls"]
    assert built["finish_reason"] == "tool_calls"


@pytest.mark.anyio
async def test_stream_options_from_metadata(mock_server: Factory) -> None:
    server = mock_server()
    body = chat(metadata={"mock": {"chunks": 3, "chunk_delay_ms": 30}})
    with anyio.fail_after(10):
        started = time.perf_counter()
        _, raw = await stream(server, body)
        elapsed = time.perf_counter() - started
    chunks = [orjson.loads(d) for d in sse(raw)[0][:-1]]
    assert len(chunks) == 1 + 3 + 1  # role, three pieces, finish
    assert elapsed >= 4 * 0.03 * 0.9


def test_cut_stream_ends_abruptly(mock_server: Factory) -> None:
    server = mock_server(stream_chunks=8)
    with connect(server) as sock:
        sock.sendall(request_bytes({**mocked("cut"), "stream": True}))
        received, closed = read_until_quiet(sock, quiet=3)
    assert closed and b"200 OK" in received and b"chat.completion.chunk" in received
    assert b"[DONE]" not in received and not received.endswith(b"0\r\n\r\n")


def test_stalled_stream_stays_open_and_silent(mock_server: Factory) -> None:
    server = mock_server(stream_chunks=8)
    with connect(server) as sock:
        sock.sendall(request_bytes({**mocked("stall"), "stream": True}))
        received, closed = read_until_quiet(sock, quiet=0.4)
    assert not closed and b"chat.completion.chunk" in received and b"[DONE]" not in received


@pytest.mark.anyio
async def test_malformed_stream(mock_server: Factory) -> None:
    server = mock_server()
    with anyio.fail_after(10):
        response, raw = await stream(server, mocked("malformed"))
    data, _ = sse(raw)
    assert response.status_code == 200 and data[-2:] == ["{not json", "[DONE]"]
    assert all(orjson.loads(d)["object"] == "chat.completion.chunk" for d in data[:-2])
    assert all(orjson.loads(d)["choices"][0]["finish_reason"] is None for d in data[:-2])


@pytest.mark.anyio
async def test_stream_status_faults_come_before_any_event(mock_server: Factory) -> None:
    server = mock_server()
    with anyio.fail_after(10):
        response, _ = await stream(server, mocked("503"))
    assert response.status_code == 503 and response.json()["code"] == "503"


# --- scripted raw replies and deadline modes ------------------------------------------------


def scripted(raw: dict[str, Any], text: str = "hello there", **options: Any) -> dict[str, Any]:
    return chat(text, metadata={"mock": {"raw": raw, **options}})


def test_raw_body_reply_is_sent_as_scripted(mock_server: Factory) -> None:
    server = mock_server()
    raw = {"status": 200, "headers": [["Retry-After", "soon"], ["x-a", "\t1 é"]], "body": "[5]"}
    with connect(server) as sock, sock.makefile("rb") as reader:
        sock.sendall(request_bytes(scripted(raw)))
        status, headers, body = read_response(reader)
        sock.sendall(request_bytes(chat()))  # the connection stays usable
        after, _, _ = read_response(reader)
    assert (status, body, after) == (200, b"[5]", 200)
    assert headers["retry-after"] == "soon" and headers["content-type"] == "application/json"
    assert headers["x-a"] == "1 é"  # sent as UTF-8, tab kept (stripped by the reader)


@pytest.mark.anyio
async def test_raw_events_are_one_chunk_each_in_order(mock_server: Factory) -> None:
    server = mock_server()
    events = ['{"choices": 5}', {"raw": ": hi\n\nevent: error\n"}, {"raw": "data: x\n\n"}]
    raw = {"status": 503, "headers": [["content-type", "text/plain"]], "events": events}
    with anyio.fail_after(10):
        response = await post(server, scripted(raw))
    assert response.status_code == 503 and response.headers["content-type"] == "text/plain"
    assert response.headers["transfer-encoding"] == "chunked"
    assert response.content == b'data: {"choices": 5}\n\n: hi\n\nevent: error\ndata: x\n\n'


@pytest.mark.anyio
async def test_raw_body_bytes_times_and_delays(mock_server: Factory) -> None:
    server = mock_server()
    binary = scripted({"body_base64": "/wAB"}, times=1)
    slow = scripted({"events": ["a", "b"]}, "slow", chunk_delay_ms=150)
    with anyio.fail_after(10):
        first, second = await post(server, binary), await post(server, binary)
        started = time.perf_counter()
        spread = await post(server, slow)
        elapsed = time.perf_counter() - started
    assert first.content == b"\xff\x00\x01"
    assert second.json()["object"] == "chat.completion"  # `times` used up: a real reply
    assert spread.content == b"data: a\n\ndata: b\n\n" and elapsed >= 0.14


UNFRAMEABLE: list[Any] = [
    {"headers": [["x-a", "1\r\nx-b: 2"]]},
    {"headers": [["x-a", "1\n"]]},
    {"headers": [["x-a", "nul\u0000"]]},
    {"headers": [["content-length", "5"]]},
    {"headers": [["Transfer-Encoding", "chunked"]]},
    {"headers": [["bad name", "1"]]},
    {"headers": [["x-a"]]},
    {"status": 204},
    {"status": 101},
    {"status": "200"},
    {"body": "a", "events": []},
    {"events": [5]},
    {"body_base64": "***"},
    [],
]


def test_raw_replies_that_would_break_framing_are_refused(mock_server: Factory) -> None:
    server = mock_server()
    with connect(server) as sock, sock.makefile("rb") as reader:
        for raw in UNFRAMEABLE:  # one keep-alive connection: each 400 leaves it usable
            sock.sendall(request_bytes(scripted(raw)))
            status, _, body = read_response(reader)
            assert status == 400 and "raw" in orjson.loads(body)["message"], raw
        sock.sendall(request_bytes(chat()))
        assert read_response(reader)[0] == 200


def test_drip_sends_one_byte_at_a_time(mock_server: Factory) -> None:
    server = mock_server()
    with connect(server) as sock, sock.makefile("rb") as reader:
        sock.sendall(request_bytes(scripted({"body": "{}"}, drip_ms=5)))
        first = sock.recv(100)
        status, _, body = read_response(reader)
    assert len(first) == 1 and (status, body) == (200, b"{}")


@pytest.mark.parametrize("fault", ["keepalive", "trickle"])
def test_endless_streams_never_finish(mock_server: Factory, fault: str) -> None:
    server = mock_server()
    body = {**mocked(fault, chunk_delay_ms=20), "stream": True}
    with connect(server) as sock:
        sock.sendall(request_bytes(body))
        deadline, received = time.monotonic() + 0.5, b""
        while time.monotonic() < deadline:
            received += sock.recv(65536)
    head, _, framed = received.partition(b"\r\n\r\n")
    events = whole_chunks(framed)
    assert head.startswith(b"HTTP/1.1 200 OK") and len(events) > 5
    if fault == "keepalive":
        assert set(events) == {b": keep-alive\n\n"}
    else:
        chunks = [orjson.loads(event.removeprefix(b"data: ")) for event in events]
        assert all(c["choices"][0]["finish_reason"] is None for c in chunks)
        assert all(c["choices"][0]["delta"]["content"].strip() for c in chunks)


def whole_chunks(framed: bytes) -> list[bytes]:
    """The complete chunks of a chunked body read so far (the last may be partial)."""
    chunks = []
    while b"\r\n" in framed:
        size, _, rest = framed.partition(b"\r\n")
        length = int(size, 16)
        if len(rest) < length + 2:
            break
        chunks.append(rest[:length])
        framed = rest[length + 2 :]
    return chunks


# --- connections -----------------------------------------------------------------------------


def test_keep_alive_connection_is_reused(mock_server: Factory) -> None:
    server = mock_server()
    with connect(server) as sock, sock.makefile("rb") as reader:
        for i in range(60):  # plain and streamed replies alternate on one connection
            sock.sendall(request_bytes(chat(f"n{i}", stream=i % 3 == 0)))
            if i % 3 == 0:
                status, headers, _ = read_response(reader)
                assert headers["transfer-encoding"] == "chunked"
                while reader.readline() != b"0\r\n":
                    pass
                assert reader.readline() == b"\r\n"
            else:
                status, headers, body = read_response(reader)
                assert f"Echo: n{i}" in orjson.loads(body)["choices"][0]["message"]["content"]
            assert status == 200 and headers["connection"] == "keep-alive"
    assert server.requests_received == 60


def test_pipelined_requests_are_answered_in_order(mock_server: Factory) -> None:
    server = mock_server()
    with connect(server) as sock, sock.makefile("rb") as reader:
        sock.sendall(b"".join(request_bytes(chat(f"p{i}")) for i in range(300)))
        replies = [read_response(reader) for _ in range(300)]
    texts = [orjson.loads(body)["choices"][0]["message"]["content"] for _, _, body in replies]
    assert all(text.startswith(f"Echo: p{i} ") for i, text in enumerate(texts))


def test_connection_close_and_http_1_0(mock_server: Factory) -> None:
    server = mock_server()
    for request in (
        request_bytes(chat(), {"connection": "close"}),
        request_bytes(chat()).replace(b"HTTP/1.1", b"HTTP/1.0", 1),
    ):
        with connect(server) as sock:
            sock.sendall(request)
            received, closed = read_until_quiet(sock, quiet=3)
        assert closed and received.startswith(b"HTTP/1.1 200 OK")
        assert b"connection: close" in received


def test_unreadable_requests(mock_server: Factory) -> None:
    server = mock_server()
    chunked = (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: m\r\ntransfer-encoding: chunked\r\n\r\n"
        b"2\r\n{}\r\n0\r\n\r\n"
    )
    bad_length = request_bytes(chat()).replace(b"content-length: ", b"content-length: x", 1)
    for request, status in ((chunked, 411), (b"NONSENSE\r\n\r\n", 400), (bad_length, 400)):
        with connect(server) as sock:
            sock.sendall(request)
            received, closed = read_until_quiet(sock, quiet=3)
        assert closed and received.startswith(b"HTTP/1.1 %d " % status)


def test_expect_100_continue(mock_server: Factory) -> None:
    server = mock_server()
    request = request_bytes(chat(), {"expect": "100-continue"})
    head, body = request.split(b"\r\n\r\n", 1)
    with connect(server) as sock, sock.makefile("rb") as reader:
        sock.sendall(head + b"\r\n\r\n")
        assert reader.readline() == b"HTTP/1.1 100 Continue\r\n"
        assert reader.readline() == b"\r\n"
        sock.sendall(body)
        assert read_response(reader)[0] == 200


@pytest.mark.anyio
async def test_200_concurrent_requests(mock_server: Factory) -> None:
    server = mock_server(latency_ms=20)
    limits = httpx.Limits(max_connections=200)
    statuses: list[int] = []
    with anyio.fail_after(10):
        async with httpx.AsyncClient(limits=limits, headers=KEY, timeout=8) as client:

            async def one(i: int) -> None:
                response = await client.post(server.url + CHAT, json=chat(f"c{i}"))
                assert content_of(response).startswith(f"Echo: c{i} ")
                statuses.append(response.status_code)

            async with anyio.create_task_group() as group:
                for i in range(200):
                    group.start_soon(one, i)
    assert statuses == [200] * 200 and server.requests_received == 200


@pytest.mark.anyio
async def test_a_thousand_open_connections(mock_server: Factory) -> None:
    server = mock_server()
    with anyio.fail_after(10):
        connections = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(1000)]
        for i, (_, writer) in enumerate(connections):
            writer.write(request_bytes(chat(f"k{i}"), {"connection": "close"}))
        replies = await asyncio.gather(*(reader.read() for reader, _ in connections))
        for _, writer in connections:
            writer.close()
    assert all(reply.startswith(b"HTTP/1.1 200 OK") for reply in replies)
    assert server.requests_received == 1000


def test_clients_vanishing_mid_request(mock_server: Factory, asyncio_errors: list[Any]) -> None:
    server = mock_server(latency_ms=100)
    whole = request_bytes(chat())
    for partial in (whole[:20], whole[: len(whole) - 5], whole):  # head, body, waiting
        with connect(server) as sock:
            sock.sendall(partial)
            time.sleep(0.02)
    with connect(server) as sock, sock.makefile("rb") as reader:
        sock.sendall(whole)
        assert read_response(reader)[0] == 200
    assert not asyncio_errors


# --- request log, lifecycle ------------------------------------------------------------------


@pytest.mark.anyio
async def test_request_log_lines(mock_server: Factory, tmp_path: Path) -> None:
    log = tmp_path / "requests.log"
    server = mock_server(request_log=log, latency_ms=50)
    parts = [{"type": "text", "text": "in parts"}]
    with anyio.fail_after(10):
        await post(server, chat())
        read_before_reply = log.read_bytes()
        await stream(server, mocked("500"))
        await post(server, chat(), headers={"x-other": "1"})
        await post(server, chat(messages=[{"role": "user", "content": parts}]))
        await post(server, b"not json")
        with pytest.raises(httpx.RemoteProtocolError):
            await post(server, mocked("cut"))
        with pytest.raises(httpx.ReadTimeout):
            await post(server, chat(), {**KEY, "x-mock-fault": "hang"}, timeout=0.2)
    lines = [orjson.loads(line) for line in log.read_bytes().splitlines()]
    assert read_before_reply.count(b"\n") == 1  # written on arrival, flushed, before latency
    arrivals = [line.pop("t") for line in lines]  # s after the start; tests in test_mock_limits
    assert arrivals == sorted(arrivals) and all(line.pop("limit") is None for line in lines)
    assert lines == [
        {"content": "hello there", "fault": None, "stream": False, "status": 200},
        {"content": "hello there", "fault": "500", "stream": True, "status": 500},
        {"content": "hello there", "fault": None, "stream": False, "status": 401},
        {"content": None, "fault": None, "stream": False, "status": 200},
        {"content": None, "fault": None, "stream": False, "status": 422},
        {"content": "hello there", "fault": "drop", "stream": False, "status": None},
        {"content": "hello there", "fault": "hang", "stream": False, "status": None},
    ]


def test_stop_with_hung_requests_returns_promptly(asyncio_errors: list[Any]) -> None:
    server = MockServer(MockConfig(stream_chunks=4))
    server.start()
    sockets = [connect(server) for _ in range(3)]
    sockets[0].sendall(request_bytes(mocked("hang")))
    sockets[1].sendall(request_bytes(chat(metadata={"mock": {"latency_ms": 5_000}})))
    sockets[2].sendall(request_bytes({**mocked("stall"), "stream": True}))
    time.sleep(0.2)
    started = time.perf_counter()
    server.stop()
    server.stop()  # idempotent
    assert time.perf_counter() - started < 2
    for sock in sockets:
        assert read_until_quiet(sock, quiet=2)[1]  # every connection was closed
        sock.close()
    assert not asyncio_errors


def test_start_reports_a_busy_port(mock_server: Factory) -> None:
    server = mock_server()
    with pytest.raises(OSError):
        MockServer(MockConfig(), port=server.port).start()
    with MockServer() as fresh:
        assert fresh.port > 0 and fresh.url == f"http://127.0.0.1:{fresh.port}"


@pytest.mark.anyio
async def test_serve_in_the_current_loop_until_cancelled(tmp_path: Path) -> None:
    ports: list[int] = []
    config = MockConfig(require_auth=False, request_log=tmp_path / "log")
    with anyio.fail_after(10):
        async with anyio.create_task_group() as group:
            group.start_soon(functools.partial(serve, config, ready=ports.append))
            while not ports:
                await anyio.sleep(0.01)
            async with httpx.AsyncClient() as client:
                reply = await client.post(f"http://127.0.0.1:{ports[0]}{CHAT}", json=chat())
            reader, writer = await asyncio.open_connection("127.0.0.1", ports[0])
            writer.write(request_bytes(mocked("hang")))
            await writer.drain()
            await anyio.sleep(0.1)  # the server shares this loop: let it take the request
            group.cancel_scope.cancel()
        with contextlib.suppress(ConnectionResetError):  # aborted: EOF or a reset
            assert await reader.read() == b""  # the hung connection closed on the way out
        writer.close()
    assert reply.status_code == 200
    assert len((tmp_path / "log").read_bytes().splitlines()) == 2


def test_config_is_validated() -> None:
    assert FAULT_KINDS[:3] == ("429", "408", "409") and "malformed" in FAULT_KINDS
    with pytest.raises(ValueError, match="unknown fault"):
        MockConfig(fault="meteor")
    for bad in ({"fail_rate": 1.5}, {"stream_chunks": 0}, {"latency_ms": -1}):
        with pytest.raises(ValueError):
            MockConfig(**bad)
