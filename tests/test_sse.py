"""The SSE decoder: each parsing rule, and any split of the byte stream."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batchrun.sse import SSEDecoder, SSEEvent


def decode(*pieces: bytes) -> list[SSEEvent]:
    decoder = SSEDecoder()
    events = [event for piece in pieces for event in decoder.feed(piece)]
    return events + decoder.close()


def bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def test_data_line_and_blank_line_dispatch() -> None:
    assert decode(b"data: one\n\ndata: two\n\n") == [SSEEvent("one"), SSEEvent("two")]


def test_multiple_data_lines_are_joined_with_lf() -> None:
    assert decode(b"data: a\ndata: b\ndata:\ndata: c\n\n") == [SSEEvent("a\nb\n\nc")]


def test_only_one_space_after_the_colon_is_removed() -> None:
    assert decode(b"data:x\n\ndata:  x\n\ndata:\tx\n\n") == [
        SSEEvent("x"),
        SSEEvent(" x"),
        SSEEvent("\tx"),
    ]


def test_value_keeps_later_colons() -> None:
    assert decode(b'data: {"a": "b:c"}\n\n') == [SSEEvent('{"a": "b:c"}')]


def test_comments_are_ignored() -> None:
    assert decode(b": keep-alive\ndata: a\n:\n: more\ndata: b\n\n: trailing\n\n") == [
        SSEEvent("a\nb")
    ]


def test_event_sets_the_type_for_one_event_only() -> None:
    assert decode(b"event: update\ndata: a\n\ndata: b\n\nevent:\ndata: c\n\n") == [
        SSEEvent("a", "update"),
        SSEEvent("b"),
        SSEEvent("c"),
    ]


def test_id_sets_and_persists_and_nul_is_ignored() -> None:
    assert decode(b"id: 7\ndata: a\n\ndata: b\n\nid: x\0y\ndata: c\n\nid\ndata: d\n\n") == [
        SSEEvent("a", id="7"),
        SSEEvent("b", id="7"),
        SSEEvent("c", id="7"),
        SSEEvent("d", id=""),
    ]


def test_retry_and_unknown_fields_are_ignored() -> None:
    assert decode(b"retry: 10\nunknown: x\nDATA: no\ndata:four\n\n") == [SSEEvent("four")]


def test_a_line_without_colon_is_a_field_with_empty_value() -> None:
    assert decode(b"data\n\ndata\ndata\n\n") == [SSEEvent(""), SSEEvent("\n")]


def test_event_without_data_is_not_dispatched() -> None:
    assert decode(b"event: ping\n\n: comment\n\nid: 3\n\n\n\n") == []


@pytest.mark.parametrize("ending", [b"\n", b"\r\n", b"\r"])
def test_each_line_ending(ending: bytes) -> None:
    stream = ending.join([b"event: e", b"data: a", b"data: b", b"", b"data: c", b"", b""])
    assert decode(stream) == [SSEEvent("a\nb", "e"), SSEEvent("c")]
    assert decode(*bytewise(stream)) == [SSEEvent("a\nb", "e"), SSEEvent("c")]


def test_mixed_line_endings_in_one_stream() -> None:
    assert decode(b"data: a\r\n\r\ndata: b\r\rdata: c\n\ndata: d\n\r\n") == [
        SSEEvent("a"),
        SSEEvent("b"),
        SSEEvent("c"),
        SSEEvent("d"),
    ]


def test_cr_and_lf_split_across_reads_is_one_line_end() -> None:
    assert decode(b"data: a\r", b"\n\r", b"\ndata: b\r\n", b"\r\n") == [
        SSEEvent("a"),
        SSEEvent("b"),
    ]


def test_lone_lf_read_after_cr_does_not_swallow_the_next_lf() -> None:
    # data: a CR | LF | LF: the first LF pairs with the CR, the second is the blank line.
    assert decode(b"data: a\r", b"\n", b"\n", b"data: b\r\n\r\n") == [
        SSEEvent("a"),
        SSEEvent("b"),
    ]


def test_cr_then_empty_read_then_lf() -> None:
    assert decode(b"data: a\r", b"", b"\n\r", b"", b"\n") == [SSEEvent("a")]


def test_bom_is_stripped_at_the_start_even_when_split() -> None:
    assert decode(b"\xef\xbb\xbfdata: x\n\n") == [SSEEvent("x")]
    assert decode(b"\xef", b"", b"\xbb", b"\xbfdata: x\n\n") == [SSEEvent("x")]


def test_bom_later_in_the_stream_is_content() -> None:
    assert decode(b"data: x\n\n\xef\xbb\xbfdata: y\n\ndata: \xef\xbb\xbfz\n\n") == [
        SSEEvent("x"),
        SSEEvent("\ufeffz"),
    ]


def test_only_one_bom_is_stripped() -> None:
    assert decode(b"\xef\xbb\xbf\xef\xbb\xbfdata: x\n\n") == []


def test_utf8_split_inside_a_character() -> None:
    data = "data: héllo 世界 🎉\n\n".encode()
    for cut in range(len(data)):
        assert decode(data[:cut], data[cut:]) == [SSEEvent("héllo 世界 🎉")]
    assert decode(*bytewise(data)) == [SSEEvent("héllo 世界 🎉")]


def test_invalid_utf8_becomes_replacement_characters() -> None:
    assert decode(b"data: \xff\xfe\n\n") == [SSEEvent("\ufffd\ufffd")]
    assert decode(b"data: a\xff", b"b\n\n") == [SSEEvent("a\ufffdb")]


def test_one_event_per_read_after_other_state() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"id: 1\n") == []
    assert decoder.feed(b"data: a\n\n") == [SSEEvent("a", id="1")]
    assert decoder.feed(b"event: e\n") == []
    assert decoder.feed(b"data: b\n\n") == [SSEEvent("b", "e", "1")]
    assert decoder.feed(b"data: c\n\n") == [SSEEvent("c", id="1")]
    assert decoder.feed(b"data: d\r") == []
    assert decoder.feed(b"\ndata: e\n\n") == [SSEEvent("d\ne", id="1")]


def test_long_line_in_many_reads() -> None:
    line = b"data: " + b"x" * 10_000 + b"\n\n"
    assert decode(*[line[i : i + 7] for i in range(0, len(line), 7)]) == [SSEEvent("x" * 10_000)]


def test_unterminated_event_is_pending_not_emitted() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: complete\n\ndata: cut off") == [SSEEvent("complete")]
    assert decoder.pending
    assert decoder.close() == []


@pytest.mark.parametrize("tail", [b"data: x", b"data: x\n", b"event: e\n", b"dat"])
def test_pending_after_any_part_of_an_event(tail: bytes) -> None:
    decoder = SSEDecoder()
    decoder.feed(b"data: a\n\n" + tail)
    assert decoder.pending
    assert decoder.close() == []


def test_not_pending_between_events() -> None:
    decoder = SSEDecoder()
    assert not decoder.pending
    decoder.feed(b"data: a\n\n: keep-alive\n")
    assert not decoder.pending


# --- property: any stream, any line ending, any split --------------------------------------

text = st.text(alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\r\n"))
name = text.filter(lambda t: "\0" not in t)


@dataclass
class Block:
    data: list[str]  # no lines: an event that must not be dispatched
    event: str | None
    id: str | None
    comments: list[int]  # a `:` comment goes before each of these line positions


blocks = st.builds(
    Block,
    data=st.lists(text.map(lambda t: t[:20]), max_size=3),
    event=st.one_of(st.none(), name.map(lambda t: t[:10])),
    id=st.one_of(st.none(), name.map(lambda t: t[:5])),
    comments=st.lists(st.integers(0, 6), max_size=2),
)


def serialise(items: list[Block], endings: list[str], bom: bool) -> tuple[bytes, list[SSEEvent]]:
    """The stream's bytes, line i ending in endings[i % len(endings)], and its events."""
    lines: list[str] = []
    expected: list[SSEEvent] = []
    last_id: str | None = None
    for block in items:
        fields = [f"data: {line}" for line in block.data]
        if block.event is not None:
            fields.insert(0, f"event: {block.event}")
        if block.id is not None:
            fields.append(f"id: {block.id}")
            last_id = block.id
        for position in sorted(block.comments, reverse=True):
            fields.insert(min(position, len(fields)), ": comment 🎉")
        lines += [*fields, ""]
        if block.data:
            expected.append(SSEEvent("\n".join(block.data), block.event or "message", last_id))
    body = "".join(with_endings(lines, endings)).encode()
    return (b"\xef\xbb\xbf" if bom else b"") + body, expected


def with_endings(lines: list[str], endings: list[str]) -> list[str]:
    out: list[str] = []
    previous = ""
    for number, line in enumerate(lines):
        ending = endings[number % len(endings)]
        if previous == "\r" and not line and ending == "\n":
            ending = "\r"  # CR, then an empty line ended by LF, would be one CRLF
        out.append(line + ending)
        previous = ending
    return out


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({cut % (len(data) + 1) for cut in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


@settings(max_examples=200, deadline=None)
@given(
    items=st.lists(blocks, max_size=6),
    # One ending for the whole stream, or a mix line by line.
    endings=st.lists(st.sampled_from(["\n", "\r\n", "\r"]), min_size=1, max_size=3),
    bom=st.booleans(),
    cuts=st.lists(st.integers(0, 10_000), max_size=40),
)
def test_any_split_of_any_stream_gives_the_same_events(
    items: list[Block], endings: list[str], bom: bool, cuts: list[int]
) -> None:
    stream, expected = serialise(items, endings, bom)
    assert decode(*split(stream, cuts)) == expected
    assert decode(*bytewise(stream)) == expected
