"""Reassembling streamed chunks into one ChatCompletionResponse."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import orjson
import pytest

from batchrun.errors import StreamTruncated
from batchrun.streaming import StreamAssembler, read_completion_stream

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


def test_content_is_concatenated_and_shaped_like_a_plain_reply() -> None:
    pieces = ["Hel", "lo, ", "wor", "ld"]
    response = assemble(
        [chunk({"role": "assistant", "content": ""})]
        + [chunk({"content": p}) for p in pieces]
        + [chunk({}, "stop", usage=USAGE)]
    )
    assert response == {
        "id": "cmpl-1",
        "object": "chat.completion",
        "created": 5,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "finish_reason": "stop",
                "message": {"role": "assistant", "content": "Hello, world"},
            }
        ],
        "usage": USAGE,
    }


def test_tool_calls_are_assembled_by_index() -> None:
    response = assemble(
        [
            chunk(
                {
                    "role": "assistant",
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": "call_a",
                            "type": "function",
                            "function": {"name": "search", "arguments": '{"q": '},
                        }
                    ],
                }
            ),
            chunk(
                {
                    "tool_calls": [
                        {
                            "index": 1,
                            "id": "call_b",
                            "function": {"name": "fetch", "arguments": '{"url"'},
                        }
                    ]
                }
            ),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"cats", '}}]}),
            chunk({"tool_calls": [{"index": 1, "function": {"arguments": ': "x"}'}}]}),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"n": 2}'}}]}),
            chunk({}, "tool_calls"),
        ]
    )
    message = response["choices"][0]["message"]
    assert message["content"] is None
    calls = message["tool_calls"]
    assert [c["id"] for c in calls] == ["call_a", "call_b"]
    assert [c["function"]["name"] for c in calls] == ["search", "fetch"]
    assert orjson.loads(calls[0]["function"]["arguments"]) == {"q": "cats", "n": 2}
    assert orjson.loads(calls[1]["function"]["arguments"]) == {"url": "x"}
    assert response["choices"][0]["finish_reason"] == "tool_calls"


def test_object_arguments_are_kept_whole() -> None:
    response = assemble(
        [
            chunk({"tool_calls": [{"id": "c", "function": {"name": "f", "arguments": {"a": 1}}}]}),
            chunk({}, "tool_calls"),
        ]
    )
    assert response["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] == {"a": 1}


def test_interleaved_choices_and_last_usage() -> None:
    response = assemble(
        [
            chunk({"content": "a"}, index=0),
            chunk({"content": "x"}, index=1),
            chunk({"content": "b"}, index=0),
            chunk({"content": "y"}, index=1, usage={"total_tokens": 1}),
            chunk({}, "stop", index=1),
            chunk({}, "length", index=0, usage=USAGE),
        ]
    )
    assert [c["message"]["content"] for c in response["choices"]] == ["ab", "xy"]
    assert [c["finish_reason"] for c in response["choices"]] == ["length", "stop"]
    assert response["usage"] == USAGE


def test_thinking_chunks_are_kept_in_order() -> None:
    think = {"type": "thinking", "thinking": [{"type": "text", "text": "hmm"}]}
    response = assemble(
        [
            chunk({"content": [think]}),
            chunk({"content": [{"type": "text", "text": "answer"}]}),
            chunk({}, "stop"),
        ]
    )
    assert response["choices"][0]["message"]["content"] == [
        {"type": "thinking", "thinking": [{"type": "text", "text": "hmm"}]},
        {"type": "text", "text": "answer"},
    ]


def test_no_usage_is_null_not_zero() -> None:
    assert assemble([chunk({"content": "a"}, "stop")])["usage"] is None


def test_missing_finish_reason_or_chunks_is_truncated() -> None:
    with pytest.raises(StreamTruncated, match="finish_reason"):
        assemble([chunk({"content": "a"})])
    with pytest.raises(StreamTruncated):
        assemble([])


def test_first_output_ignores_the_role_only_chunk() -> None:
    assembler = StreamAssembler()
    assert not assembler.add(chunk({"role": "assistant", "content": ""}))
    assert assembler.add(chunk({"content": "x"}))


def sse(*chunks: dict[str, Any] | str) -> bytes:
    return b"".join(
        b"data: " + (c.encode() if isinstance(c, str) else orjson.dumps(c)) + b"\n\n"
        for c in chunks
    )


async def pieces(data: bytes, size: int = 7) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


async def read(data: bytes) -> tuple[dict[str, Any], int]:
    calls = []
    with anyio.fail_after(5):
        response = await read_completion_stream(pieces(data), lambda: calls.append(1))
    return response, len(calls)


@pytest.mark.anyio
async def test_read_stream_until_done() -> None:
    data = sse(
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "hé"}),
        chunk({"content": "llo"}),
        chunk({}, "stop", usage=USAGE),
        "[DONE]",
    )
    data += b"data: ignored after done\n\n"
    response, first_output_calls = await read(data)
    assert response["choices"][0]["message"]["content"] == "héllo"
    assert first_output_calls == 1


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (sse(chunk({"content": "a"}), chunk({}, "stop")), "before data: \\[DONE\\]"),
        (sse(chunk({"content": "a"}), "[DONE]"), "finish_reason"),
        (sse(chunk({"content": "a"}), "{not json", "[DONE]"), "malformed event"),
        (sse(chunk({"content": "a"}), "[1, 2]", "[DONE]"), "malformed event"),
        (sse(chunk({"content": "a"}), {"error": {"message": "overloaded"}}), "overloaded"),
        (b"event: error\ndata: boom\n\n", "error event: boom"),
    ],
)
async def test_broken_streams_raise_truncated(data: bytes, reason: str) -> None:
    with pytest.raises(StreamTruncated, match=reason):
        await read(data)
