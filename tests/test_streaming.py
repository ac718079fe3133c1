"""Reassembling streamed chunks into one ChatCompletionResponse."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import orjson
import pytest

from batchrun.errors import StreamTruncated, Timeout
from batchrun.streaming import StreamAssembler, StreamDeadlines, read_completion_stream

HEAD = {"id": "cmpl-1", "object": "chat.completion.chunk", "created": 5, "model": "m"}
USAGE = {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}


def chunk(
    delta: dict[str, Any], finish: str | None = None, index: int = 0, **extra: Any
) -> dict[str, Any]:
    return {**HEAD, "choices": [{"index": index, "delta": delta, "finish_reason": finish}], **extra}


def assemble(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    assembler = StreamAssembler()
    for item in chunks:
        assembler.add(item)
    return assembler.finish()


def message(response: dict[str, Any], choice: int = 0) -> dict[str, Any]:
    result: dict[str, Any] = response["choices"][choice]["message"]
    return result


def tool_piece(**call: Any) -> dict[str, Any]:
    return chunk({"tool_calls": [call]})


def test_content_is_concatenated_and_shaped_like_a_plain_reply() -> None:
    pieces = [f"w{i} " for i in range(50)]
    response = assemble(
        [chunk({"role": "assistant", "content": ""})]
        + [chunk({"content": p}) for p in pieces]
        + [chunk({"content": ""}, "stop", usage=USAGE)]
    )
    assert response == {
        "id": "cmpl-1",
        "object": "chat.completion",
        "created": 5,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "".join(pieces)},
                "finish_reason": "stop",
            }
        ],
        "usage": USAGE,
    }


def test_head_comes_from_the_first_chunk_and_role_defaults_to_assistant() -> None:
    later = {**chunk({"content": "b"}, "stop"), "id": "other", "model": "other"}
    response = assemble([chunk({"content": "a"}), later])
    assert (response["id"], response["model"], response["created"]) == ("cmpl-1", "m", 5)
    assert message(response) == {"role": "assistant", "content": "ab"}


def test_first_non_null_role_wins() -> None:
    response = assemble(
        [chunk({"role": None}), chunk({"role": "tool"}), chunk({"role": "x"}, "stop")]
    )
    assert message(response)["role"] == "tool"


def test_nothing_generated_is_an_empty_string() -> None:
    assert message(assemble([chunk({"role": "assistant"}, "stop")]))["content"] == ""


def test_parallel_tool_calls_interleaved_with_split_arguments() -> None:
    response = assemble(
        [
            chunk({"role": "assistant", "content": ""}),
            tool_piece(
                index=0, id="call_a", type="function", function={"name": "search", "arguments": ""}
            ),
            tool_piece(index=1, id="call_b", function={"name": "fetch", "arguments": '{"url"'}),
            tool_piece(index=0, function={"arguments": '{"q": "cats", '}),
            tool_piece(index=1, function={"arguments": ': "x"}'}),
            tool_piece(index=0, function={"arguments": '"n": 2'}),
            tool_piece(index=0, function={"arguments": "}"}),
            chunk({}, "tool_calls"),
        ]
    )
    assert message(response) == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_a",
                "type": "function",
                "index": 0,
                "function": {"name": "search", "arguments": '{"q": "cats", "n": 2}'},
            },
            {
                "id": "call_b",
                "type": "function",
                "index": 1,
                "function": {"name": "fetch", "arguments": '{"url": "x"}'},
            },
        ],
    }
    assert response["choices"][0]["finish_reason"] == "tool_calls"


def test_tool_calls_without_index_are_keyed_by_position() -> None:
    calls = [
        {"id": "a", "function": {"name": "f", "arguments": "{}"}},
        {"id": "b", "function": {"name": "g", "arguments": "[]"}},
    ]
    response = assemble([chunk({"tool_calls": calls}, "tool_calls")])
    assert [c["id"] for c in message(response)["tool_calls"]] == ["a", "b"]
    assert [c["index"] for c in message(response)["tool_calls"]] == [0, 1]


def test_text_next_to_tool_calls_is_kept() -> None:
    response = assemble(
        [
            chunk({"content": "Let me look."}),
            tool_piece(id="c", function={"name": "f"}),
            chunk({}, "tool_calls"),
        ]
    )
    assert message(response)["content"] == "Let me look."
    assert message(response)["tool_calls"][0]["function"] == {"name": "f", "arguments": ""}


def test_object_arguments_are_kept_whole() -> None:
    response = assemble(
        [
            tool_piece(id="c", function={"name": "f", "arguments": {"a": 1}}),
            tool_piece(index=0, function={"arguments": ""}),
            chunk({}, "tool_calls"),
        ]
    )
    assert message(response)["tool_calls"][0]["function"] == {"name": "f", "arguments": {"a": 1}}


def test_interleaved_choices_and_last_usage() -> None:
    response = assemble(
        [
            chunk({"role": "assistant", "content": "a"}, index=0),
            chunk({"role": "assistant", "content": "x"}, index=1),
            chunk({"content": "b"}, index=0),
            chunk({"content": "y"}, index=1, usage={"total_tokens": 1}),
            chunk({}, "stop", index=1),
            chunk({}, "length", index=0, usage=USAGE),
        ]
    )
    assert [c["index"] for c in response["choices"]] == [0, 1]
    assert [c["message"]["content"] for c in response["choices"]] == ["ab", "xy"]
    assert [c["finish_reason"] for c in response["choices"]] == ["length", "stop"]
    assert response["usage"] == USAGE


def test_choices_are_sorted_by_index() -> None:
    response = assemble([chunk({"content": "x"}, "stop", index=1), chunk({}, "stop", index=0)])
    assert [c["index"] for c in response["choices"]] == [0, 1]


def test_thinking_chunks_are_kept_in_order_before_the_text() -> None:
    def think(text: str) -> dict[str, Any]:
        return {"type": "thinking", "thinking": [{"type": "text", "text": text}]}

    reference = {"type": "reference", "reference_ids": [1]}
    response = assemble(
        [
            chunk({"role": "assistant", "content": [think("Let ")]}),
            chunk({"content": [think("me "), {"type": "thinking", "thinking": [reference]}]}),
            chunk({"content": [think("see."), {"type": "text", "text": "The "}]}),
            chunk({"content": "answer"}),
            chunk({"content": [{"type": "text", "text": "."}]}, "stop"),
        ]
    )
    assert message(response)["content"] == [
        {
            "type": "thinking",
            "thinking": [
                {"type": "text", "text": "Let me "},
                reference,
                {"type": "text", "text": "see."},
            ],
        },
        {"type": "text", "text": "The answer."},
    ]


def test_thinking_signature_is_kept() -> None:
    thinking = {"type": "thinking", "thinking": [{"type": "text", "text": "hm"}], "signature": "s"}
    response = assemble([chunk({"content": [thinking]}, "stop")])
    assert message(response)["content"][0] == {
        "type": "thinking",
        "thinking": [{"type": "text", "text": "hm"}],
        "signature": "s",
    }


def test_logprobs_are_concatenated() -> None:
    def logprob(token: str) -> dict[str, Any]:
        return {"token": token, "logprob": -0.1, "bytes": [], "token_id": 1}

    first = chunk({"content": "a"})
    first["choices"][0]["logprobs"] = {"content": [logprob("a")]}
    last = chunk({"content": "b"}, "stop")
    last["choices"][0]["logprobs"] = {"content": [logprob("b")]}
    response = assemble([first, last])
    assert response["choices"][0]["logprobs"] == {"content": [logprob("a"), logprob("b")]}
    assert "logprobs" not in assemble([chunk({}, "stop")])["choices"][0]


def test_no_usage_is_null_not_zero() -> None:
    assert assemble([chunk({"content": "a"}, "stop")])["usage"] is None


def test_missing_finish_reason_is_truncated() -> None:
    with pytest.raises(StreamTruncated, match="finish_reason"):
        assemble([chunk({"content": "a"}), chunk({"content": "b"})])


def test_a_choice_without_finish_reason_is_truncated() -> None:
    with pytest.raises(StreamTruncated, match=r"finish_reason for choices \[1\]"):
        assemble([chunk({"content": "a"}, "stop"), chunk({"content": "b"}, index=1)])


def test_no_chunks_or_no_choices_is_truncated() -> None:
    with pytest.raises(StreamTruncated):
        assemble([])
    with pytest.raises(StreamTruncated):
        assemble([{**HEAD, "choices": [], "usage": USAGE}])


def test_output_is_reported_only_for_generated_content() -> None:
    assembler = StreamAssembler()
    assert not assembler.add(chunk({"role": "assistant", "content": ""}))
    assert not assembler.add(chunk({"content": None}))
    assert not assembler.add(chunk({"content": [{"type": "text", "text": ""}]}))
    assert not assembler.add({**HEAD, "choices": [], "usage": USAGE})
    assert assembler.add(chunk({"content": "x"}))
    assert StreamAssembler().add(chunk({"content": [{"type": "thinking", "thinking": []}]}))
    assert StreamAssembler().add(tool_piece(id="c", function={"name": "f"}))


# --- read_completion_stream over a byte stream ----------------------------------------------


def sse(*events: dict[str, Any] | str) -> bytes:
    return b"".join(
        b"data: " + (e.encode() if isinstance(e, str) else orjson.dumps(e)) + b"\n\n"
        for e in events
    )


async def pieces(data: bytes, size: int = 7) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


async def read(data: bytes, size: int = 7) -> tuple[dict[str, Any], int]:
    calls: list[None] = []
    response = await read_completion_stream(pieces(data, size), lambda: calls.append(None))
    return response, len(calls)


NORMAL = sse(
    chunk({"role": "assistant", "content": ""}),
    chunk({"content": "hé"}),
    chunk({"content": "llo 世界"}),
    chunk({}, "stop", usage=USAGE),
    "[DONE]",
)


@pytest.mark.anyio
@pytest.mark.parametrize("size", [1, 7, 64, len(NORMAL)])
async def test_read_stream_until_done(size: int) -> None:
    with anyio.fail_after(5):
        response, first_output_calls = await read(NORMAL, size)
    assert message(response) == {"role": "assistant", "content": "héllo 世界"}
    assert response["usage"] == USAGE
    assert first_output_calls == 1


@pytest.mark.anyio
async def test_read_stream_with_crlf_comments_and_one_read_per_event() -> None:
    body = b": keep-alive\r\n\r\n" + NORMAL.replace(b"\n", b"\r\n")
    events = [event + b"\r\n\r\n" for event in body.split(b"\r\n\r\n") if event]

    async def per_event() -> AsyncIterator[bytes]:
        for event in events:
            yield event

    with anyio.fail_after(5):
        response = await read_completion_stream(per_event(), lambda: None)
    assert message(response)["content"] == "héllo 世界"


@pytest.mark.anyio
async def test_only_events_with_data_count_as_progress() -> None:
    """Comments, blank lines and half events never call on_event: the idle deadline
    (StreamDeadlines) must not be reset by a server that only says it is alive."""
    pieces = [b": keep-alive\n\n", b"\n\n", b"data: ", b'{"id": 1', b"}\n\n", b": x\n\n"]
    pieces += [sse(chunk({"content": "a"}, "stop"), "[DONE]")]
    progress: list[int] = []

    async def body() -> AsyncIterator[bytes]:
        for position, piece in enumerate(pieces):
            progress.append(-position)  # a read happened
            yield piece

    calls: list[int] = []
    with anyio.fail_after(5):
        await read_completion_stream(body(), lambda: None, lambda: calls.append(len(progress)))
    assert calls == [5, 7, 7]  # the chunk completed by the 5th read, then the last read's two


@pytest.mark.anyio
async def test_stream_deadlines_fire_once_data_stops() -> None:
    deadlines = StreamDeadlines(idle_s=0.1, total_s=5)
    with anyio.fail_after(5):
        with deadlines.scope:
            for _ in range(6):  # 0.3 s of steady data: never idle
                deadlines.data_arrived()
                await anyio.sleep(0.05)
            await anyio.sleep(5)
    with pytest.raises(Timeout, match="idle"):
        deadlines.raise_if_expired()
    whole = StreamDeadlines(idle_s=5, total_s=0.15)
    with anyio.fail_after(5):
        with whole.scope:
            while True:
                whole.data_arrived()
                await anyio.sleep(0.05)
    with pytest.raises(Timeout, match="--stream-timeout"):
        whole.raise_if_expired()
    StreamDeadlines(1, 1).raise_if_expired()  # not expired: nothing to raise


@pytest.mark.anyio
async def test_first_output_fires_when_the_first_output_arrives() -> None:
    role_only = sse(chunk({"role": "assistant", "content": ""}))
    text = sse(chunk({"content": "a"}))
    rest = sse(chunk({"content": "b"}), chunk({}, "stop"), "[DONE]")
    seen_at: list[int] = []
    reads = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal reads
        for piece in (role_only, text, rest):
            reads += 1
            yield piece

    with anyio.fail_after(5):
        await read_completion_stream(body(), lambda: seen_at.append(reads))
    assert seen_at == [2]


@pytest.mark.anyio
async def test_nothing_after_done_is_read() -> None:
    async def body() -> AsyncIterator[bytes]:
        yield sse(chunk({"content": "a"}, "stop"), "[DONE]") + b"data: {broken\n\n"
        raise AssertionError("read past [DONE]")

    with anyio.fail_after(5):
        response = await read_completion_stream(body(), lambda: None)
    assert message(response)["content"] == "a"


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (sse(chunk({"content": "a"}), chunk({}, "stop")), r"before data: \[DONE\]$"),
        (sse(chunk({}, "stop")) + b"data: [DO", r"before data: \[DONE\] \(cut inside"),
        (sse(chunk({}, "stop")) + b"data: [DONE]\n", r"before data: \[DONE\] \(cut inside"),
        (b"", r"before data: \[DONE\]"),
        (sse(chunk({"content": "a"}), "[DONE]"), "finish_reason"),
        (sse("[DONE]"), "no completion choices"),
        (sse(chunk({"content": "a"}), "{not json", "[DONE]"), "malformed event: '{not json'"),
        (sse(chunk({"content": "a"}), "[1, 2]", "[DONE]"), "malformed event"),
        (sse(chunk({"content": "a"}), '"text"', "[DONE]"), "malformed event"),
        (sse(chunk({"content": "a"}), {"error": {"message": "overloaded"}}), "overloaded"),
        (b"event: error\ndata: boom\n\n", "error event: boom"),
        (b"event: error\ndata: [DONE]\n\n", "error event"),
    ],
)
async def test_broken_streams_raise_truncated(data: bytes, reason: str) -> None:
    with anyio.fail_after(5), pytest.raises(StreamTruncated, match=reason):
        await read(data)


@pytest.mark.anyio
async def test_error_text_is_bounded() -> None:
    data = sse(chunk({"content": "a"}), {"error": {"message": "x" * 5000}})
    with anyio.fail_after(5), pytest.raises(StreamTruncated) as caught:
        await read(data)
    assert "xxx" in caught.value.message
    assert len(caught.value.message) < 400
