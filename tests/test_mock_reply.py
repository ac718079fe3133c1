"""The mock answers from the request: `metadata.mock.reply` is the assistant content, so an
eval test knows exactly which rows pass each scorer. Real 127.0.0.1 HTTP throughout, and
one dataset through `run_batch` whose records carry exactly those contents."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import orjson
import pytest
from jsonl import MODEL, read_jsonl, write_jsonl

from batchrun import RetryConfig, RunConfig, Timeouts, run_batch
from batchrun.mock import MockServer
from batchrun.scoreboard import ScoreBoard
from batchrun.scoring import parse_scorers, score_output

Factory = Callable[..., MockServer]
KEY = {"authorization": "Bearer k"}
CHAT = "/v1/chat/completions"


def asking(reply: object, text: str = "question", **mock: Any) -> dict[str, Any]:
    """A request whose completion content is `reply`, with any other mock wishes."""
    body: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": text}]}
    body["metadata"] = {"mock": {"reply": reply, **mock}}
    return body


async def post(server: MockServer, body: dict[str, Any]) -> httpx.Response:
    async with httpx.AsyncClient(timeout=5) as client:
        return await client.post(server.url + CHAT, content=orjson.dumps(body), headers=KEY)


def content_of(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    text: str = response.json()["choices"][0]["message"]["content"]
    return text


def streamed_content(response: httpx.Response) -> tuple[str, list[str | None]]:
    """(the content the deltas join into, each chunk's finish_reason) of an event stream."""
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/event-stream"
    payloads = [
        line.removeprefix(b"data: ")
        for line in response.content.split(b"\n")
        if line.startswith(b"data: ")
    ]
    assert payloads[-1] == b"[DONE]"
    chunks = [orjson.loads(p)["choices"][0] for p in payloads[:-1]]
    return "".join(c["delta"].get("content") or "" for c in chunks), [
        c["finish_reason"] for c in chunks
    ]


REPLIES: list[tuple[object, str]] = [
    ("The answer is (B).", "The answer is (B)."),  # a string is the content as it is
    ("  Paris\n", "  Paris\n"),  # whitespace kept
    ("", ""),
    ('naïve 日本語 🙂 \u2212 \\ "', 'naïve 日本語 🙂 \u2212 \\ "'),
    ({"label": "B", "score": 0.5}, '{"label":"B","score":0.5}'),  # other JSON: compact text
    ({"é": ["ü", None]}, '{"é":["ü",null]}'),
    (42, "42"),
    (-1.5, "-1.5"),
    (True, "true"),
    (None, "null"),
    ([1, "two"], '[1,"two"]'),
]


@pytest.mark.anyio
@pytest.mark.parametrize(("reply", "content"), REPLIES)
async def test_the_reply_is_the_completions_content(
    mock_server: Factory, reply: object, content: str
) -> None:
    server = mock_server()
    with anyio.fail_after(10):
        response = await post(server, asking(reply))
    assert content_of(response) == content
    body = response.json()
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert body["usage"]["completion_tokens"] == len(content.split())


@pytest.mark.anyio
@pytest.mark.parametrize(("reply", "content"), REPLIES)
async def test_a_streamed_reply_joins_into_the_same_content(
    mock_server: Factory, reply: object, content: str
) -> None:
    server = mock_server(stream_chunks=3)
    with anyio.fail_after(10):
        response = await post(server, {**asking(reply), "stream": True})
    joined, finishes = streamed_content(response)
    assert joined == content
    assert finishes[-1] == "stop" and not any(finishes[:-1])


@pytest.mark.anyio
async def test_the_reply_wins_over_what_the_request_would_get(mock_server: Factory) -> None:
    """No tool call, no JSON-mode object, no max_tokens cut: the content, every choice."""
    server = mock_server()
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    body = asking("one two three four", tools=tools, tool_choice="any")
    body |= {"max_tokens": 2, "response_format": {"type": "json_object"}, "n": 2}
    with anyio.fail_after(10):
        response = await post(server, body)
    choices = response.json()["choices"]
    assert [c["message"]["content"] for c in choices] == ["one two three four"] * 2
    assert all("tool_calls" not in c["message"] and c["finish_reason"] == "stop" for c in choices)


@pytest.mark.anyio
async def test_a_fault_comes_first_for_its_times_then_the_reply(mock_server: Factory) -> None:
    server = mock_server()
    body = asking("B", fault="500", times=2)
    with anyio.fail_after(10):
        statuses = [(await post(server, body)).status_code for _ in range(2)]
        third = await post(server, body)
    assert statuses == [500, 500]
    assert content_of(third) == "B"


@pytest.mark.anyio
async def test_a_content_fault_comes_first_for_its_times_then_the_reply(
    mock_server: Factory,
) -> None:
    server = mock_server()
    body = asking({"label": "B"}, fault="not_json", times=1)
    with anyio.fail_after(10):
        first, second = [content_of(await post(server, body)) for _ in range(2)]
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(first)
    assert second == '{"label":"B"}'


@pytest.mark.anyio
async def test_a_raw_reply_comes_first_for_its_times_then_the_reply(mock_server: Factory) -> None:
    server = mock_server()
    body = asking("B", raw={"status": 503, "body": "busy"}, times=1)
    with anyio.fail_after(10):
        first = await post(server, body)
        second = await post(server, body)
    assert (first.status_code, first.text) == (503, "busy")
    assert content_of(second) == "B"


async def cut_stream(server: MockServer, body: dict[str, Any]) -> bytes:
    """What arrives of a stream the mock cuts, up to the dropped connection."""
    received = b""
    async with (
        httpx.AsyncClient(timeout=5) as client,
        client.stream("POST", server.url + CHAT, content=orjson.dumps(body), headers=KEY) as reply,
    ):
        with pytest.raises(httpx.RemoteProtocolError):
            async for piece in reply.aiter_bytes():
                received += piece
    return received


@pytest.mark.anyio
async def test_a_stream_fault_cuts_the_reply(mock_server: Factory) -> None:
    server = mock_server(stream_chunks=4)
    content = "alpha bravo charlie delta"
    with anyio.fail_after(10):
        received = await cut_stream(server, {**asking(content, fault="cut"), "stream": True})
    deltas = [
        orjson.loads(line.removeprefix(b"data: "))["choices"][0]["delta"]
        for line in received.split(b"\n")
        if line.startswith(b"data: {")
    ]
    text = "".join(delta.get("content", "") for delta in deltas)
    assert b"[DONE]" not in received
    assert content.startswith(text) and text != content


@pytest.mark.anyio
async def test_a_reply_too_deep_to_encode_is_answered_400(mock_server: Factory) -> None:
    server = mock_server()
    head = orjson.dumps(asking("x"))[: -len(b'"x"}}}')]
    raw = head + b"[" * 300 + b"]" * 300 + b"}}}"  # orjson parses 1,024 levels, writes 255
    with anyio.fail_after(10):
        async with httpx.AsyncClient(timeout=5) as client:
            response = await client.post(server.url + CHAT, content=raw, headers=KEY)
    assert response.status_code == 400
    assert "mock reply is nested too deep" in response.json()["message"]


# --- an eval dataset through run_batch -------------------------------------------------------

SCORERS = [
    "exact",
    "normalized",
    "contains",
    r"regex:^\s*Answer:",
    "json_field:label",
    "numeric:0.5",
    "choice",
]
# (mock reply, expected answer, slice, rows' scorers that pass); None: the request fails.
ROWS: list[tuple[object, object, str, set[str]]] = [
    ("Paris", "Paris", "geo", {"exact", "normalized", "contains", "choice"}),
    (" paris. ", "Paris", "geo", {"normalized", "choice"}),
    ("Answer: The answer is (B).", "B", "mc", {"contains", r"regex:^\s*Answer:", "choice"}),
    ({"label": "B", "n": 3}, "B", "mc", {"contains", "json_field:label", "choice"}),
    (42, 42.3, "math", {"numeric:0.5"}),
    (None, 7, "math", set()),
    ("", "", "math", {"exact", "normalized"}),
]


def dataset_line(i: int, reply: object) -> dict[str, Any]:
    if reply is None:  # a request that fails on every attempt
        return asking("never sent", text=f"row {i}", fault="500")
    return asking(reply, text=f"row {i}")


@pytest.mark.anyio
@pytest.mark.parametrize("stream", [False, True])
async def test_an_eval_dataset_scores_exactly_the_rows_built_to_pass(
    mock_server: Factory, tmp_path: Path, stream: bool
) -> None:
    server = mock_server(stream_chunks=3)
    path = write_jsonl(
        tmp_path / "evals.jsonl", [dataset_line(i, r[0]) for i, r in enumerate(ROWS)]
    )
    config = RunConfig(
        input_path=path,
        outdir=tmp_path / "out",
        base_url=server.url,
        concurrency=4,
        stream=stream,
        fsync=False,
        retry=RetryConfig(max_attempts=2, backoff_base=0.001, backoff_cap=0.002),
        timeouts=Timeouts(read=5, stream_idle=2, stream_total=10),
    )
    with anyio.fail_after(60):
        report = await run_batch(config, api_key="k")
    assert report.exit_code == 2  # the one failed request
    records = read_jsonl(config.outdir / "results.jsonl")
    outputs = [
        r["response"]["choices"][0]["message"]["content"] if r["status"] == "ok" else None
        for r in records
    ]
    assert outputs == [
        "Paris",
        " paris. ",
        "Answer: The answer is (B).",
        '{"label":"B","n":3}',
        "42",
        None,
        "",
    ]

    scorers = parse_scorers(SCORERS)
    board = ScoreBoard(SCORERS)
    for (_, expected, slice_value, passing), output in zip(ROWS, outputs, strict=True):
        scores = score_output(scorers, output, None, expected)
        assert {name for name, mark in scores.items() if mark} == passing
        board.add(None if output is None else scores, slice_value)
    summary = board.result().to_json()
    assert summary["normalized"]["passed"] == 3 and summary["normalized"]["count"] == 7
    assert summary["normalized"]["unscored"] == 1
    assert summary["choice"]["slices"]["mc"]["score"] == 1.0
    assert summary["numeric:0.5"]["slices"]["math"]["score"] == 1 / 3
