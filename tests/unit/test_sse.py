"""SSEDecoder: the same events and the same bytes whatever the chunking of the stream."""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ext_proc.llm import sse
from ext_proc.llm.sse import SSEDecoder, SSEEvent

EOLS = {"LF": b"\n", "CRLF": b"\r\n", "CR": b"\r"}


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(cut, len(data)) for cut in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


def decode(chunks: list[bytes]) -> list[SSEEvent]:
    decoder = SSEDecoder()
    events = [event for part in chunks for event in decoder.feed(part)]
    return events + decoder.flush()


# -- generated streams ------------------------------------------------------------------------

value_text = st.text(st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)), max_size=12)


@dataclass(frozen=True)
class Block:
    """One generated event block: its lines (field, value) and what a client must decode."""

    lines: tuple[tuple[str, str], ...]  # field "" is a comment

    @property
    def expected(self) -> tuple[str, bytes]:
        names = [value for field, value in self.lines if field == "event"]
        data = [value for field, value in self.lines if field == "data"]
        return (names[-1] if names else "", "\n".join(data).encode())


@st.composite
def blocks(draw: st.DrawFn) -> Block:
    data = [("data", value) for value in draw(st.lists(value_text, max_size=3))]
    extra = draw(
        st.lists(
            st.tuples(st.sampled_from(["event", "id", "retry", ""]), value_text),
            max_size=3,
        )
    )
    # Data lines keep their order; the other lines fall anywhere around them.
    lines = list(data)
    for item in extra:
        lines.insert(draw(st.integers(0, len(lines))), item)
    if not lines:
        lines = [("", "keep-alive")]
    return Block(tuple(lines))


def render_line(field: str, value: str, style: int) -> bytes:
    """A field line; ``style`` picks among the spellings SSE allows for the same field."""
    if field == "":
        return b":" + value.encode()
    if style == 1 and not value.startswith(" "):
        return field.encode() + b":" + value.encode()  # no space after the colon
    if style == 2 and value == "":
        return field.encode()  # a bare field name means an empty value
    return field.encode() + b": " + value.encode()


@st.composite
def streams(draw: st.DrawFn, eol: str | None = None) -> tuple[bytes, list[Block]]:
    """A serialized stream and its blocks; ``eol`` None mixes LF, CRLF and CR line by line."""
    events = draw(st.lists(blocks(), min_size=1, max_size=5))
    out = b""
    previous = b""
    for block in events:
        for field, value in block.lines:
            ending = EOLS[eol] if eol else draw(st.sampled_from(list(EOLS.values())))
            out += render_line(field, value, draw(st.integers(0, 2))) + ending
            previous = ending
        blank = EOLS[eol] if eol else draw(st.sampled_from(list(EOLS.values())))
        if previous == b"\r" and blank == b"\n":
            blank = b"\r"  # CR then LF would read as one CRLF: not the stream we mean
        out += blank
    return out, events


cut_lists = st.lists(st.integers(0, 400), max_size=12)


@settings(max_examples=200, deadline=None)
@given(stream=streams(), cuts=cut_lists)
def test_any_split_gives_the_same_events_and_bytes(stream: tuple[bytes, list[Block]], cuts: list[int]) -> None:
    data, _ = stream
    whole = decode([data])
    pieces = decode(split(data, cuts))
    assert pieces == whole  # names, data and raw bytes of every event
    assert b"".join(event.raw for event in pieces) == data


@settings(max_examples=150, deadline=None)
@given(stream=st.sampled_from(sorted(EOLS)).flatmap(streams), cuts=cut_lists)
def test_generated_events_decode_as_sent(stream: tuple[bytes, list[Block]], cuts: list[int]) -> None:
    data, blocks_sent = stream
    decoded = decode(split(data, cuts))
    assert [(event.event, event.data) for event in decoded] == [block.expected for block in blocks_sent]


@settings(max_examples=150, deadline=None)
@given(stream=streams(eol=None), cuts=cut_lists)
def test_mixed_line_endings_decode_as_sent(stream: tuple[bytes, list[Block]], cuts: list[int]) -> None:
    data, blocks_sent = stream
    decoded = decode(split(data, cuts))
    assert [(event.event, event.data) for event in decoded] == [block.expected for block in blocks_sent]


@settings(max_examples=300, deadline=None)
@given(
    data=st.lists(st.sampled_from([b"\r", b"\n", b"\r\n", b"data:", b" ", b"x", b":", b"event: e"]), max_size=40).map(
        b"".join
    ),
    cuts=st.lists(st.integers(0, 200), max_size=15),
)
@example(data=b"data: a\r\r\n\r\n", cuts=[8])
@example(data=b"data: a\n\r\n", cuts=[9])
def test_arbitrary_bytes_split_anywhere(data: bytes, cuts: list[int]) -> None:
    assert decode(split(data, cuts)) == decode([data])
    assert b"".join(event.raw for event in decode(split(data, cuts))) == data


# -- examples ---------------------------------------------------------------------------------


def test_cr_at_chunk_end_waits_for_a_possible_lf() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r\n\r") == []  # "\r" may be half of "\r\n"
    assert decoder.pending == b"data: a\r\n\r"
    assert decoder.feed(b"\ndata: b") == [SSEEvent("", b"a", b"data: a\r\n\r\n")]
    assert decoder.pending == b"data: b"


def test_lone_cr_ends_lines_once_the_next_byte_shows_it() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r\r") == []
    assert decoder.feed(b"data: b\r\r") == [SSEEvent("", b"a", b"data: a\r\r")]
    assert decoder.flush() == [SSEEvent("", b"b", b"data: b\r\r")]


def test_comments_and_keepalives_carry_no_data() -> None:
    events = decode([b": keep-alive\n\n", b"data: x\n: note\n\n"])
    assert [(e.event, e.data, e.raw) for e in events] == [
        ("", b"", b": keep-alive\n\n"),
        ("", b"x", b"data: x\n: note\n\n"),
    ]


def test_multi_line_data_is_joined_with_lf() -> None:
    (event,) = decode([b"event: message_delta\r\ndata: {\r\ndata:  \"a\": 1\r\ndata:}\r\n\r\n"])
    assert (event.event, event.data) == ("message_delta", b'{\n "a": 1\n}')


def test_field_spellings() -> None:
    events = decode([b"data:x\n\ndata\n\ndata:  two spaces\n\nid: 7\nretry: 10\ndata: y\n\n"])
    assert [e.data for e in events] == [b"x", b"", b" two spaces", b"y"]


def test_flush_returns_the_unterminated_last_event() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b'data: {"a": 1}\n\ndata: [DO') == [SSEEvent("", b'{"a": 1}', b'data: {"a": 1}\n\n')]
    assert decoder.feed(b"NE]\n") == []
    assert decoder.flush() == [SSEEvent("", b"[DONE]", b"data: [DONE]\n")]
    assert decoder.pending == b""
    assert decoder.flush() == []


def test_flush_of_a_trailing_cr() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: x\r") == []
    assert decoder.flush() == [SSEEvent("", b"x", b"data: x\r")]


# -- one large event in many chunks -------------------------------------------------------------


class CountingBoundary:
    """Stands in for the decoder's boundary pattern and counts the bytes each search is given."""

    def __init__(self, pattern: re.Pattern[bytes]) -> None:
        self.pattern = pattern
        self.scanned = 0
        self.searches = 0

    def search(self, data: bytes, pos: int, endpos: int) -> re.Match[bytes] | None:
        self.searches += 1
        self.scanned += max(0, endpos - pos)
        return self.pattern.search(data, pos, endpos)


@pytest.mark.parametrize("eol", sorted(EOLS))
def test_a_large_event_in_many_chunks_is_searched_once(monkeypatch: pytest.MonkeyPatch, eol: str) -> None:
    """8 MiB in 16 KiB chunks: each chunk's search resumes where the last stopped, so the bytes
    searched stay about the stream's size (searching all the held bytes again on every chunk,
    as the decoder once did, is 512 chunks x 4 MiB on average: 2 GiB, and 13 s)."""
    counter = CountingBoundary(sse._BOUNDARY)
    monkeypatch.setattr(sse, "_BOUNDARY", counter)
    ending = EOLS[eol]
    body = b"data: " + b"x" * (8 << 20)
    stream = body + ending + ending + b"data: next" + ending + ending
    decoder = SSEDecoder()
    events = [event for chunk in split(stream, list(range(16384, len(stream), 16384))) for event in decoder.feed(chunk)]
    events += decoder.flush()  # a last CR waits for the byte that shows it is no CRLF
    assert [(event.data[:8], len(event.data), len(event.raw)) for event in events] == [
        (b"x" * 8, 8 << 20, len(body) + 2 * len(ending)), (b"next", 4, 4 + 6 + 2 * len(ending))]
    assert counter.scanned <= len(stream) + counter.searches * (sse._SPAN + 1)  # a few bytes again per chunk


@settings(max_examples=100, deadline=None)
@given(stream=streams())
def test_a_stream_fed_byte_by_byte_decodes_as_fed_whole(stream: tuple[bytes, list[Block]]) -> None:
    data, _ = stream
    assert decode([data[i:i + 1] for i in range(len(data))]) == decode([data])


@pytest.mark.parametrize("data", [b"data: a\r\n\r\ndata: b\r\rdata: c\n\r\ndata: d\r\n\n: e\n\r\r\n\r\n",
                                  b"data: " + b"y" * 50 + b"\r\r\n\r\n\n\r\ndata: z\r"])
def test_every_split_point_and_every_chunk_size_gives_the_same_events(data: bytes) -> None:
    whole = decode([data])
    for cut in range(len(data) + 1):
        assert decode([data[:cut], data[cut:]]) == whole
    for size in range(1, 9):
        assert decode([data[i:i + size] for i in range(0, len(data), size)]) == whole


# -- a byte order mark ----------------------------------------------------------------------------

BOM = b"\xef\xbb\xbf"


@pytest.mark.parametrize("cuts", [[], [1], [2], [3], [5], [1, 2, 3]])
def test_a_bom_opening_the_stream_is_not_part_of_the_first_field(cuts: list[int]) -> None:
    """The SSE specification ignores one leading U+FEFF: the first event, often the one with
    usage or ``message_start``, is read; its raw bytes keep the mark, passing on as received."""
    data = BOM + b'event: message_start\ndata: {"usage": 1}\n\ndata: x\n\n'
    events = decode(split(data, cuts))
    assert [(event.event, event.data) for event in events] == [("message_start", b'{"usage": 1}'), ("", b"x")]
    assert events[0].json() == {"usage": 1}
    assert b"".join(event.raw for event in events) == data


def test_a_bom_is_ignored_at_the_start_only() -> None:
    assert [e.data for e in decode([BOM + b"data: a\n\n" + BOM + b"data: b\n\n"])] == [b"a", b""]
    assert [e.data for e in decode([b"data: a\n\n", BOM + b"data: b\n\n"])] == [b"a", b""]
    assert [e.data for e in decode([BOM + BOM + b"data: a\n\n"])] == [b""]  # one mark, not two


def test_a_bom_before_an_unterminated_last_event() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(BOM + b"data: [DONE]") == []
    assert decoder.flush() == [SSEEvent("", b"[DONE]", BOM + b"data: [DONE]")]
