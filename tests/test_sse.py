"""The SSE decoder: each parsing rule, and any split of the byte stream."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from batchrun.sse import SSEDecoder, SSEEvent


def decode(*pieces: bytes) -> list[SSEEvent]:
    decoder = SSEDecoder()
    events = [event for piece in pieces for event in decoder.feed(piece)]
    return events + decoder.close()


def test_data_lines_comments_and_fields() -> None:
    stream = (
        b": keep-alive\n\n"
        b"data: one\n\n"
        b"event: update\nid: 7\ndata: two\ndata:  three\n\n"
        b"data\n\n"
        b"retry: 10\nunknown: x\ndata:four\n\n"
    )
    assert decode(stream) == [
        SSEEvent("one"),
        SSEEvent("two\n three", "update", "7"),
        SSEEvent("", "message", "7"),
        SSEEvent("four", "message", "7"),
    ]


def test_crlf_and_cr_line_endings() -> None:
    assert decode(b"data: a\r\n\r\ndata: b\r\rdata: c\n\n") == [
        SSEEvent("a"),
        SSEEvent("b"),
        SSEEvent("c"),
    ]


def test_cr_and_lf_split_across_reads_is_one_line_end() -> None:
    assert decode(b"data: a\r", b"\n\r", b"\ndata: b\r\n", b"\r\n") == [
        SSEEvent("a"),
        SSEEvent("b"),
    ]


def test_event_without_data_is_not_dispatched() -> None:
    assert decode(b"event: ping\n\n: comment\n\n") == []


def test_id_with_nul_is_ignored() -> None:
    assert decode(b"id: a\0b\ndata: x\n\n") == [SSEEvent("x", "message", None)]


def test_bom_is_stripped_even_when_split() -> None:
    assert decode(b"\xef", b"\xbb\xbfdata: x\n\n") == [SSEEvent("x")]


def test_utf8_split_inside_a_character() -> None:
    data = "data: héllo 世界 🎉\n\n".encode()
    for cut in range(len(data)):
        assert decode(data[:cut], data[cut:]) == [SSEEvent("héllo 世界 🎉")]


def test_unterminated_event_is_pending_not_emitted() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: complete\n\ndata: cut off") == [SSEEvent("complete")]
    assert decoder.pending
    assert decoder.close() == []


def test_invalid_utf8_becomes_replacement_characters() -> None:
    assert decode(b"data: \xff\xfe\n\n") == [SSEEvent("\ufffd\ufffd")]


text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n\0"),
    max_size=30,
)
events = st.lists(
    st.tuples(
        st.lists(text, min_size=1, max_size=3),  # data lines
        st.one_of(st.none(), text.filter(lambda t: t and ":" not in t)),  # event name
        st.booleans(),  # a comment before it
    ),
    max_size=8,
)


@settings(max_examples=150, deadline=None)
@given(
    events=events,
    ending=st.sampled_from(["\n", "\r\n", "\r"]),
    cuts=st.lists(st.integers(0, 10_000)),
)
def test_any_split_of_any_stream_gives_the_same_events(
    events: list[tuple[list[str], str | None, bool]], ending: str, cuts: list[int]
) -> None:
    lines: list[str] = []
    expected = []
    for data_lines, name, comment in events:
        if comment:
            lines.append(": keep-alive")
        if name is not None:
            lines.append(f"event: {name}")
        lines += [f"data: {line}" for line in data_lines]
        lines.append("")
        expected.append(SSEEvent("\n".join(data_lines), name or "message"))
    stream = "".join(line + ending for line in lines).encode()
    points = sorted({c % (len(stream) + 1) for c in cuts})
    pieces = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    assert decode(*pieces) == expected
