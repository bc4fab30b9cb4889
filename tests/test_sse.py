"""SseParser: byte-level event splitting, per-event UTF-8 decoding, comments, limits."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.clients.sse import SseError, SseParser
from daemon.tools.stubs.openai import EXAMPLE_STREAM


def parse_in_chunks(stream: bytes, cuts: list[int]) -> list[str]:
    parser = SseParser()
    out: list[str] = []
    last = 0
    for cut in [*cuts, len(stream)]:
        out += parser.feed(stream[last:cut])
        last = cut
    return out + parser.close()


EXPECTED = SseParser().feed(EXAMPLE_STREAM)


def test_example_stream_whole() -> None:
    assert len(EXPECTED) == 5
    assert EXPECTED[-1] == "[DONE]"
    contents = [json.loads(e)["choices"][0]["delta"].get("content") for e in EXPECTED[:3]]
    assert contents == ["", "你好", "！"]
    assert json.loads(EXPECTED[3])["usage"] == {"prompt_tokens": 21, "completion_tokens": 3, "total_tokens": 24}


def test_example_stream_split_at_every_byte_offset() -> None:
    for offset in range(len(EXAMPLE_STREAM) + 1):
        assert parse_in_chunks(EXAMPLE_STREAM, [offset]) == EXPECTED, offset


def test_example_stream_fed_one_byte_at_a_time() -> None:
    assert parse_in_chunks(EXAMPLE_STREAM, list(range(1, len(EXAMPLE_STREAM)))) == EXPECTED


@settings(max_examples=200, deadline=None)
@given(cuts=st.sets(st.integers(1, len(EXAMPLE_STREAM) - 1), min_size=1, max_size=12), crlf=st.booleans())
def test_example_stream_any_chunking(cuts: set[int], crlf: bool) -> None:
    stream = EXAMPLE_STREAM.replace(b"\n", b"\r\n") if crlf else EXAMPLE_STREAM
    assert parse_in_chunks(stream, sorted(c for c in cuts if c < len(stream))) == EXPECTED


def test_split_inside_a_utf8_character_returns_nothing_until_the_event_ends() -> None:
    ni = "你".encode()
    at = EXAMPLE_STREAM.index(ni) + 1
    parser = SseParser()
    first = parser.feed(EXAMPLE_STREAM[:at])
    assert len(first) == 1  # only the role chunk is complete
    rest = parser.feed(EXAMPLE_STREAM[at:])
    assert json.loads(rest[0])["choices"][0]["delta"]["content"] == "你好"


def test_crlf_and_lone_cr_line_endings() -> None:
    crlf = EXAMPLE_STREAM.replace(b"\n", b"\r\n")
    assert SseParser().feed(crlf) == EXPECTED
    for offset in range(len(crlf) + 1):
        assert parse_in_chunks(crlf, [offset]) == EXPECTED, offset
    cr_only = SseParser()
    assert cr_only.feed(b"data: a\r\rdata: b\r\r") == ["a"]  # the last CR may be half of a CRLF
    assert cr_only.feed(b"data: c\r\r") == ["b"]
    assert cr_only.close() == ["c"]
    # A CR at the end of a read may be half of a CRLF: no event, no empty extra line.
    parser = SseParser()
    assert parser.feed(b"data: a\r\n\r") == []
    assert parser.feed(b"\ndata: b\r\n\r\n") == ["a", "b"]


def test_data_with_and_without_space_and_multiline() -> None:
    assert SseParser().feed(b"data:x\n\ndata: y\n\ndata:  z\n\n") == ["x", "y", " z"]
    assert SseParser().feed(b"data: one\ndata: two\ndata\n\n") == ["one\ntwo\n"]


def test_comments_and_other_fields_are_skipped() -> None:
    stream = b": ping - 2024-01-01 00:00:00.000000\r\n\r\nevent: message\nid: 7\nretry: 10\ndata: hi\nfoo: bar\n\n"
    assert SseParser().feed(stream) == ["hi"]


def test_blank_lines_without_data_produce_nothing() -> None:
    assert SseParser().feed(b"\n\n\n: comment\n\n\r\n") == []


def test_close_flushes_an_event_without_its_blank_line() -> None:
    parser = SseParser()
    assert parser.feed(b"data: 1\n\ndata: [DONE]\n") == ["1"]
    assert parser.close() == ["[DONE]"]
    assert parser.close() == []
    no_newline = SseParser()
    assert no_newline.feed(b'data: {"a": 1}') == []
    assert no_newline.pending_bytes > 0
    assert no_newline.close() == ['{"a": 1}']
    assert SseParser().close() == []


def test_feed_after_close_is_an_error() -> None:
    parser = SseParser()
    parser.close()
    with pytest.raises(SseError):
        parser.feed(b"data: x\n\n")


def test_leading_byte_order_mark_is_ignored() -> None:
    parser = SseParser()
    assert parser.feed(b"\xef\xbb") == []
    assert parser.feed(b"\xbfdata: x\n\n") == ["x"]


def test_event_without_separator_is_bounded() -> None:
    parser = SseParser(max_event_bytes=1000)
    parser.feed(b"data: " + b"a" * 500)
    with pytest.raises(SseError, match="1000 bytes"):
        parser.feed(b"a" * 600)
    many_lines = SseParser(max_event_bytes=1000)
    with pytest.raises(SseError):
        for _ in range(100):
            many_lines.feed(b"data: " + b"b" * 20 + b"\n")


def test_default_bound_is_one_mebibyte_and_small_events_never_accumulate() -> None:
    parser = SseParser()
    event = b"data: " + b"x" * 1000 + b"\n\n"
    for _ in range(2000):  # 2 MB in total, in complete events
        assert len(parser.feed(event)) == 1
    with pytest.raises(SseError):
        parser.feed(b"data: " + b"y" * (1024 * 1024 + 1))


def test_invalid_utf8_is_a_clear_error() -> None:
    with pytest.raises(SseError, match="UTF-8"):
        SseParser().feed(b"data: \xff\xfe\n\n")
