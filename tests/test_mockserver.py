"""The built-in mock server over real 127.0.0.1 HTTP: replies, faults, streams, logs."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import orjson
import pytest

from batchrun.mockserver import FAULT_KINDS, MockConfig, MockServer
from batchrun.sse import SSEDecoder

KEY = {"authorization": "Bearer k"}


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": "hello there"}], **fields}


async def post(
    server: MockServer, body: Any, headers: dict[str, str] | None = None, timeout: float = 5
) -> httpx.Response:
    async with httpx.AsyncClient(timeout=timeout) as client:
        return await client.post(
            server.url + "/v1/chat/completions",
            content=orjson.dumps(body),
            headers={**KEY, **(headers or {})},
        )


@pytest.mark.anyio
async def test_reply_shape_determinism_and_headers(mock_server: Callable[..., MockServer]) -> None:
    server = mock_server()
    with anyio.fail_after(10):
        a, b = await post(server, chat()), await post(server, chat())
        other = await post(server, chat(messages=[{"role": "user", "content": "bye"}]))
    reply = a.json()
    assert a.status_code == 200
    assert reply["object"] == "chat.completion" and reply["model"] == "m"
    message = reply["choices"][0]["message"]
    assert message["content"].startswith("Echo: hello there")
    assert message["content"] == b.json()["choices"][0]["message"]["content"]
    assert other.json()["choices"][0]["message"]["content"] != message["content"]
    usage = reply["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0
    assert int(a.headers["x-ratelimit-tokens-query-cost"]) == usage["total_tokens"]
    assert "x-ratelimit-remaining-req-minute" in a.headers


@pytest.mark.anyio
async def test_max_tokens_n_json_and_tools(mock_server: Callable[..., MockServer]) -> None:
    server = mock_server()
    tool = {"type": "function", "function": {"name": "lookup", "parameters": {}}}
    with anyio.fail_after(10):
        short = (await post(server, chat(max_tokens=2))).json()
        many = (await post(server, chat(n=3))).json()
        as_json = (await post(server, chat(response_format={"type": "json_object"}))).json()
        called = (await post(server, chat(tools=[tool], tool_choice="any"))).json()
    assert short["choices"][0]["finish_reason"] == "length"
    assert short["usage"]["completion_tokens"] == 2
    assert [c["index"] for c in many["choices"]] == [0, 1, 2]
    assert isinstance(orjson.loads(as_json["choices"][0]["message"]["content"]), dict)
    call = called["choices"][0]["message"]["tool_calls"][0]
    assert call["function"]["name"] == "lookup"
    assert isinstance(orjson.loads(call["function"]["arguments"]), dict)
    assert called["choices"][0]["finish_reason"] == "tool_calls"


@pytest.mark.anyio
async def test_auth_validation_and_routes(mock_server: Callable[..., MockServer]) -> None:
    server = mock_server()
    with anyio.fail_after(10):
        async with httpx.AsyncClient() as client:
            no_key = await client.post(server.url + "/v1/chat/completions", json=chat())
            wrong_path = await client.post(server.url + "/v1/other", json=chat(), headers=KEY)
            wrong_method = await client.get(server.url + "/v1/chat/completions", headers=KEY)
            health = await client.get(server.url + "/health")
        missing = await post(server, {"model": "m"})
        bad_role = await post(server, chat(messages=[{"role": "x", "content": "y"}]))
    assert no_key.status_code == 401
    assert (wrong_path.status_code, wrong_method.status_code, health.status_code) == (404, 405, 200)
    assert missing.status_code == 422
    assert missing.json()["detail"][0] == {
        "loc": ["body", "messages"],
        "msg": "Field required",
        "type": "missing",
    }
    assert bad_role.json()["detail"][0]["loc"] == ["body", "messages", 0, "role"]


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["429", "408", "500", "503", "400", "403", "422"])
async def test_status_faults_by_header_and_by_body(
    mock_server: Callable[..., MockServer], kind: str
) -> None:
    server = mock_server()
    with anyio.fail_after(10):
        by_header = await post(server, chat(), {"x-mock-fault": kind})
        by_body = await post(server, chat(metadata={"mock": {"fault": kind}}))
    assert by_header.status_code == by_body.status_code == int(kind)
    if kind == "429":
        assert by_header.headers["retry-after"] == "1"


@pytest.mark.anyio
async def test_times_counts_arrivals_of_the_same_body(
    mock_server: Callable[..., MockServer],
) -> None:
    server = mock_server()
    body = chat(metadata={"mock": {"fault": "500", "times": 2, "retry_after_ms": 5}})
    with anyio.fail_after(10):
        statuses = [(await post(server, body)).status_code for _ in range(4)]
    assert statuses == [500, 500, 200, 200]


@pytest.mark.anyio
async def test_retry_after_values(mock_server: Callable[..., MockServer]) -> None:
    server = mock_server(retry_after_s=0.25)
    with anyio.fail_after(10):
        default = await post(server, chat(), {"x-mock-fault": "429"})
        custom = await post(
            server,
            chat(metadata={"mock": {"fault": "429", "retry_after": 3, "retry_after_ms": 1500}}),
        )
    assert default.headers["retry-after"] == "0.25"
    assert (custom.headers["retry-after"], custom.headers["retry-after-ms"]) == ("3", "1500")


@pytest.mark.anyio
async def test_connection_faults(mock_server: Callable[..., MockServer]) -> None:
    server = mock_server()
    with anyio.fail_after(10):
        with pytest.raises(httpx.RemoteProtocolError):
            await post(server, chat(), {"x-mock-fault": "drop"})
        with pytest.raises(httpx.ReadTimeout):
            await post(server, chat(), {"x-mock-fault": "hang"}, timeout=0.3)
        broken = await post(server, chat(), {"x-mock-fault": "invalid_json"})
        moved = await post(server, chat(), {"x-mock-fault": "redirect"})
    assert broken.status_code == 200
    with pytest.raises(ValueError):
        orjson.loads(broken.content)
    assert moved.status_code == 307 and moved.headers["location"].endswith("/v1/chat/completions")


@pytest.mark.anyio
async def test_latency_is_applied(mock_server: Callable[..., MockServer]) -> None:
    server = mock_server(latency_ms=150)
    started = time.perf_counter()
    with anyio.fail_after(10):
        await post(server, chat())
    assert time.perf_counter() - started >= 0.15


def events_of(raw: bytes) -> list[str]:
    return [event.data for event in SSEDecoder().feed(raw)]


@pytest.mark.anyio
async def test_stream_reassembles_to_the_plain_reply(
    mock_server: Callable[..., MockServer],
) -> None:
    server = mock_server(stream_chunks=5)
    with anyio.fail_after(10):
        plain = (await post(server, chat())).json()
        streamed = await post(server, chat(stream=True))
    assert streamed.headers["content-type"] == "text/event-stream"
    assert b": keep-alive" in streamed.content
    data = events_of(streamed.content)
    assert data[-1] == "[DONE]"
    chunks = [orjson.loads(d) for d in data[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text == plain["choices"][0]["message"]["content"]
    assert len(chunks) >= 5
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["usage"] == plain["usage"]


@pytest.mark.anyio
async def test_broken_streams(mock_server: Callable[..., MockServer]) -> None:
    server = mock_server(stream_chunks=8)
    with anyio.fail_after(10):
        with pytest.raises(httpx.RemoteProtocolError):
            await post(server, chat(stream=True), {"x-mock-fault": "cut"})
        with pytest.raises(httpx.ReadTimeout):
            await post(server, chat(stream=True), {"x-mock-fault": "stall"}, timeout=0.3)
        malformed = await post(server, chat(stream=True), {"x-mock-fault": "malformed"})
    assert "{not json" in events_of(malformed.content)


@pytest.mark.anyio
async def test_keep_alive_reuse_and_concurrency(mock_server: Callable[..., MockServer]) -> None:
    server = mock_server(latency_ms=20)
    limits = httpx.Limits(max_connections=200)
    with anyio.fail_after(20):
        async with httpx.AsyncClient(limits=limits, headers=KEY) as client:
            results: list[int] = []

            async def one(i: int) -> None:
                body = chat(messages=[{"role": "user", "content": f"n{i}"}])
                response = await client.post(server.url + "/v1/chat/completions", json=body)
                results.append(response.status_code)

            async with anyio.create_task_group() as group:
                for i in range(200):
                    group.start_soon(one, i)
            for i in range(50):  # sequential: one connection, reused
                await one(i)
    assert results == [200] * 250
    assert server.requests_received == 250


@pytest.mark.anyio
async def test_request_log_lines(mock_server: Callable[..., MockServer], tmp_path: Path) -> None:
    log = tmp_path / "requests.log"
    server = mock_server(request_log=log)
    with anyio.fail_after(10):
        await post(server, chat())
        await post(server, chat(stream=True), {"x-mock-fault": "500"})
    lines = [orjson.loads(line) for line in log.read_bytes().splitlines()]
    assert lines == [
        {"content": "hello there", "fault": None, "stream": False},
        {"content": "hello there", "fault": "500", "stream": True},
    ]


def test_stop_returns_promptly_with_a_hung_request() -> None:
    server = MockServer(MockConfig())
    server.start()
    sock = socket.create_connection(("127.0.0.1", server.port))
    body = orjson.dumps(chat())
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer k\r\n"
        b"x-mock-fault: hang\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
    )
    time.sleep(0.1)
    started = time.perf_counter()
    server.stop()
    assert time.perf_counter() - started < 3
    sock.close()


def test_fault_kinds_are_validated() -> None:
    assert "cut" in FAULT_KINDS
    with pytest.raises(ValueError, match="unknown fault"):
        MockConfig(fault="meteor")
