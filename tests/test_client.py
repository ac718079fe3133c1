"""The HTTP boundary: status classification, Retry-After parsing, real round trips."""

from __future__ import annotations

from collections.abc import Callable
from email.utils import formatdate

import anyio
import orjson
import pytest

from batchrun.client import ChatClient, classify_status, parse_completion, parse_retry_after
from batchrun.config import Timeouts
from batchrun.errors import (
    AuthError,
    BadResponse,
    ClientError,
    RateLimited,
    RetryableStatus,
    StreamTruncated,
    Timeout,
    TransientError,
    TransportFailure,
)
from batchrun.mock import MockServer

BODY = {"model": "m", "messages": [{"role": "user", "content": "hello"}]}


@pytest.mark.parametrize(
    ("status", "kind", "transient"),
    [
        (429, RateLimited, True),
        (408, RetryableStatus, True),
        (409, RetryableStatus, True),
        (500, RetryableStatus, True),
        (502, RetryableStatus, True),
        (503, RetryableStatus, True),
        (504, RetryableStatus, True),
        (400, ClientError, False),
        (404, ClientError, False),
        (422, ClientError, False),
        (501, ClientError, False),
        (307, ClientError, False),
        (401, AuthError, False),
        (403, AuthError, False),
    ],
)
def test_statuses_map_to_the_error_tree(status: int, kind: type, transient: bool) -> None:
    error = classify_status(status, b"x" * 5000, {})
    assert type(error) is kind
    assert isinstance(error, TransientError) is transient
    record = error.to_record()
    assert record["status_code"] == status
    assert len(record["body"]) == 2048  # bounded excerpt
    assert record["retryable"] is transient


def test_retry_after_forms() -> None:
    assert parse_retry_after({"retry-after": "2"}) == 2.0
    assert parse_retry_after({"retry-after": "0.25"}) == 0.25
    both = {"retry-after": "9", "retry-after-ms": "150"}
    assert parse_retry_after(both) == 0.15
    date = {"retry-after": formatdate(1_000_030, usegmt=True)}
    assert parse_retry_after(date, now=1_000_000) == pytest.approx(30, abs=1)
    for junk in ("soon", "-1", "0", "nan", "inf", "Mon, 01 Jan 99999999999999999999 00:00:00 GMT"):
        assert parse_retry_after({"retry-after": junk}) is None
    assert parse_retry_after({"retry-after-ms": "1e999", "retry-after": "x"}) is None
    assert parse_retry_after({}) is None


def test_200_bodies_that_are_not_completions_are_bad_responses() -> None:
    not_usable = [[], {"id": "x"}, {"choices": []}, {"choices": [5]}, {"choices": [{}]}]
    not_usable += [{"choices": {"0": {"message": {}}}}, {"choices": [{"message": "hi"}]}]
    for body in (b"{not json", b"\xff", *map(orjson.dumps, not_usable)):
        with pytest.raises(BadResponse):
            parse_completion(body)
    odd_but_usable = {"choices": [{"message": {"content": 5}}], "usage": 5, "model": []}
    assert parse_completion(orjson.dumps(odd_but_usable)) == odd_but_usable
    error_finish = {"choices": [{"index": 0, "finish_reason": "error", "message": {}}]}
    with pytest.raises(BadResponse, match="finish_reason"):
        parse_completion(orjson.dumps(error_finish))


def client_for(server: MockServer, **timeouts: float) -> ChatClient:
    return ChatClient(
        server.url + "/v1/chat/completions",
        "test-key",
        concurrency=8,
        timeouts=Timeouts(**timeouts),
    )


def with_fault(kind: str, **extra: object) -> bytes:
    return orjson.dumps({**BODY, "metadata": {"mock": {"fault": kind, **extra}}})


@pytest.mark.anyio
async def test_round_trip_ok_and_streamed_agree(mock_server: Callable[..., MockServer]) -> None:
    server = mock_server()
    with anyio.fail_after(10):
        async with client_for(server) as client:
            plain = await client.complete(orjson.dumps(BODY))
            streamed = await client.complete(orjson.dumps({**BODY, "stream": True}), stream=True)
    assert plain.ttft_s is None
    assert streamed.ttft_s is not None and streamed.ttft_s > 0
    message = plain.response["choices"][0]["message"]
    assert streamed.response["choices"][0]["message"]["content"] == message["content"]
    assert streamed.response["usage"] == plain.response["usage"]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("fault", "error"),
    [
        ("429", RateLimited),
        ("500", RetryableStatus),
        ("503", RetryableStatus),
        ("422", ClientError),
        ("401", AuthError),
        ("redirect", ClientError),
        ("drop", TransportFailure),
        ("invalid_json", BadResponse),
    ],
)
async def test_faults_are_classified(
    mock_server: Callable[..., MockServer], fault: str, error: type
) -> None:
    server = mock_server()
    with anyio.fail_after(10):
        async with client_for(server) as client:
            with pytest.raises(error):
                await client.complete(with_fault(fault))


@pytest.mark.anyio
async def test_hang_times_out(mock_server: Callable[..., MockServer]) -> None:
    server = mock_server()
    with anyio.fail_after(10):
        async with client_for(server, read=0.3) as client:
            with pytest.raises(Timeout):
                await client.complete(with_fault("hang"))


@pytest.mark.anyio
@pytest.mark.parametrize("fault", ["cut", "malformed"])
async def test_broken_streams_are_truncated(
    mock_server: Callable[..., MockServer], fault: str
) -> None:
    server = mock_server()
    body = orjson.dumps({**BODY, "stream": True, "metadata": {"mock": {"fault": fault}}})
    with anyio.fail_after(10):
        async with client_for(server) as client:
            with pytest.raises(StreamTruncated):
                await client.complete(body, stream=True)


@pytest.mark.anyio
async def test_stalled_stream_times_out(mock_server: Callable[..., MockServer]) -> None:
    server = mock_server()
    body = orjson.dumps({**BODY, "stream": True, "metadata": {"mock": {"fault": "stall"}}})
    with anyio.fail_after(10):
        async with client_for(server, stream_idle=0.3) as client:
            with pytest.raises(Timeout):
                await client.complete(body, stream=True)


@pytest.mark.anyio
async def test_cancellation_passes_through_untranslated(
    mock_server: Callable[..., MockServer],
) -> None:
    server = mock_server()
    stream = orjson.dumps({**BODY, "stream": True, "metadata": {"mock": {"fault": "keepalive"}}})
    with anyio.fail_after(10):
        async with client_for(server) as client:
            with anyio.move_on_after(0.1) as plain:
                await client.complete(with_fault("hang"))
            with anyio.move_on_after(0.1) as streamed:
                await client.complete(stream, stream=True)
    assert plain.cancelled_caught and streamed.cancelled_caught


@pytest.mark.anyio
async def test_error_bodies_are_read_only_as_far_as_records_keep(
    mock_server: Callable[..., MockServer],
) -> None:
    server = mock_server()
    huge = {"status": 500, "body": "x" * 5_000_000}
    payload = orjson.dumps({**BODY, "metadata": {"mock": {"raw": huge}}})
    with anyio.fail_after(10):
        async with client_for(server) as client:
            with pytest.raises(RetryableStatus) as failed:
                await client.complete(payload)
            after = await client.complete(orjson.dumps(BODY))
    assert failed.value.body == "x" * 2048
    assert after.response["choices"]


@pytest.mark.anyio
async def test_missing_key_is_401(mock_server: Callable[..., MockServer]) -> None:
    server = mock_server()
    with anyio.fail_after(10):
        async with ChatClient(
            server.url + "/v1/chat/completions", "", concurrency=1, timeouts=Timeouts()
        ) as client:
            with pytest.raises(AuthError):
                await client.complete(orjson.dumps(BODY))


@pytest.mark.anyio
async def test_connection_refused_is_a_transport_failure() -> None:
    with anyio.fail_after(10):
        async with ChatClient(
            "http://127.0.0.1:9/v1/chat/completions", "k", concurrency=1, timeouts=Timeouts()
        ) as client:
            with pytest.raises(TransportFailure):
                await client.complete(orjson.dumps(BODY))
