"""Incremental base64 decoding and whole-sample framing (docs/protocols.md, "PaddleSpeech: base64 in pieces")."""

from __future__ import annotations

import base64
import random
import re
from collections.abc import Callable, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.clients.b64stream import Base64StreamDecoder
from hardware.pcm import PcmFramer


def _pcm(size: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


def _split(data: bytes, cuts: set[int]) -> list[bytes]:
    """``data`` cut at the given offsets (those beyond its length are ignored)."""
    points = sorted(c for c in cuts if 0 < c < len(data))
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


def _fed_in_whole_samples(feed: Callable[[bytes], bytes], pieces: list[bytes]) -> bytes:
    """Feed ``pieces`` one by one; every output must be whole 16-bit samples. Returns them joined."""
    out = []
    for piece in pieces:
        emitted = feed(piece)
        assert len(emitted) % 2 == 0
        out.append(emitted)
    return b"".join(out)


PROPERTY = settings(max_examples=150, deadline=None)
_CUTS = st.sets(st.integers(1, 60_000), max_size=60)


def _decode_all(pieces: Sequence[bytes | str]) -> bytes:
    decoder = Base64StreamDecoder()
    out = b"".join(decoder.feed(p) for p in pieces)
    return out + decoder.close()


def test_whole_paddlespeech_stream_decodes_exactly() -> None:
    chunks = [_pcm(21600, 1), _pcm(21600, 2), _pcm(6000, 3)]
    body = b"".join(base64.b64encode(c) for c in chunks)
    assert _decode_all([body]) == b"".join(chunks)
    assert len(_decode_all([body])) == 49200


_CHUNKS = [_pcm(21602, 4), _pcm(1000, 5), _pcm(7, 6), _pcm(21600, 7)]  # padding mid-stream too
_BODY = b"".join(base64.b64encode(c) for c in _CHUNKS)


@PROPERTY
@given(cuts=_CUTS)
def test_survives_any_rechunking(cuts: set[int]) -> None:
    assert _decode_all(_split(_BODY, cuts)) == b"".join(_CHUNKS)


def test_survives_single_bytes_and_odd_pieces() -> None:
    expected = b"".join(_CHUNKS)
    assert _decode_all([_BODY[i : i + 1] for i in range(4000)] + [_BODY[4000:]]) == expected
    assert _decode_all([_BODY[:1], _BODY[1:8], _BODY[8:4101], _BODY[4101:]]) == expected


@PROPERTY
@given(
    chunks=st.lists(st.binary(max_size=300), min_size=1, max_size=8), cuts=st.sets(st.integers(1, 3000), max_size=30)
)
def test_any_chunk_sizes_with_padding_anywhere_survive_any_rechunking(chunks: list[bytes], cuts: set[int]) -> None:
    """Each chunk encoded on its own, so ``=`` padding can end any of them, then cut anywhere."""
    body = b"".join(base64.b64encode(c) for c in chunks)
    assert _decode_all(_split(body, cuts)) == b"".join(chunks)


def test_output_is_available_as_soon_as_groups_complete() -> None:
    decoder = Base64StreamDecoder()
    encoded = base64.b64encode(b"abcdef")  # YWJjZGVm
    assert decoder.feed(encoded[:3]) == b""
    assert decoder.pending == 3
    assert decoder.feed(encoded[3:6]) == b"abc"
    assert decoder.feed(encoded[6:]) == b"def"
    assert decoder.close() == b""


def test_padding_mid_stream_keeps_every_byte() -> None:
    """21 602 B and 1 000 B chunks put '=' in the middle; a naive decode stops there."""
    first, second = _pcm(21602, 8), _pcm(1000, 9)
    body = base64.b64encode(first) + base64.b64encode(second)
    assert b"=" in body[:-4]
    assert len(base64.b64decode(body)) < 22602  # the pitfall this decoder exists for
    out = _decode_all([body])
    assert out == first + second
    assert len(out) == 22602


def test_padded_groups_split_across_feeds() -> None:
    body = base64.b64encode(b"a") + base64.b64encode(b"bc") + base64.b64encode(b"def")  # YQ==YmM=ZGVm
    for cut in range(1, len(body)):
        assert _decode_all([body[:cut], body[cut:]]) == b"abcdef", cut


def test_whitespace_is_skipped() -> None:
    data = _pcm(3000, 10)
    encoded = base64.encodebytes(data)  # newline every 76 characters
    assert _decode_all([encoded]) == data
    spaced = b" \t".join(base64.b64encode(data)[i : i + 5] for i in range(0, 4000, 5))
    assert _decode_all([spaced]) == data


def test_accepts_str_and_bytes() -> None:
    data = _pcm(99, 11)
    text = base64.b64encode(data).decode("ascii")
    assert _decode_all([text[:10], text[10:].encode("ascii")]) == data


@pytest.mark.parametrize(
    ("pieces", "offset", "what"),
    [
        ([b"AAAA", b"AA!A"], 6, "'!'"),
        ([b"QUJD", b"\n", b"RE*F"], 7, "'*'"),
        (["AAAA", "AAé"], 6, "'é'"),
        ([b"AAAA-_AA"], 4, "'-'"),  # the URL-safe alphabet is not the standard one
        ([b"A\x00AA"], 1, "'\\x00'"),
    ],
)
def test_invalid_characters_name_the_offset(pieces: list[bytes | str], offset: int, what: str) -> None:
    decoder = Base64StreamDecoder()
    with pytest.raises(ValueError, match=rf"invalid base64 character {re.escape(what)} at offset {offset}$"):
        for piece in pieces:
            decoder.feed(piece)


@pytest.mark.parametrize(("body", "offset"), [(b"AAAAA===", 4), (b"AAAA=AAA", 4), (b"AAAAAB=C", 4), (b"AB==", None)])
def test_misplaced_padding_is_rejected(body: bytes, offset: int | None) -> None:
    decoder = Base64StreamDecoder()
    if offset is None:
        assert decoder.feed(body) == b"\x00"
        return
    with pytest.raises(ValueError, match=rf"padding.*offset {offset}\b"):
        decoder.feed(body)


def test_padding_offset_counts_whitespace_and_earlier_feeds() -> None:
    decoder = Base64StreamDecoder()
    decoder.feed(b"AAAA\n")
    with pytest.raises(ValueError, match=r"'AA=C' at offset 5\b"):
        decoder.feed(b"A\nA=C")  # stream offsets: 'A' 5, newline 6, 'A' 7, '=' 8, 'C' 9


def test_leftover_characters_at_close_are_an_error() -> None:
    decoder = Base64StreamDecoder()
    assert decoder.feed(b"QUJDRA") == b"ABC"
    with pytest.raises(ValueError, match=r"2 leftover character\(s\) at offset 4"):
        decoder.close()


def test_wrong_input_type() -> None:
    with pytest.raises(TypeError):
        Base64StreamDecoder().feed(123)  # type: ignore[arg-type]


@PROPERTY
@given(data=st.binary(min_size=1, max_size=2001), cuts=st.sets(st.integers(1, 2000), max_size=40))
def test_pcm_framer_emits_only_whole_samples(data: bytes, cuts: set[int]) -> None:
    framer = PcmFramer()
    whole = len(data) - len(data) % 2
    assert _fed_in_whole_samples(framer.feed, _split(data, cuts)) == data[:whole]
    assert framer.pending == len(data) % 2
    assert framer.close() == data[whole:]
    assert framer.pending == 0


def test_pcm_framer_stereo_frames() -> None:
    framer = PcmFramer(frame_bytes=4)
    assert framer.feed(b"123") == b""
    assert framer.feed(b"45678") == b"12345678"
    assert framer.feed(b"9") == b""
    assert framer.close() == b"9"
    with pytest.raises(ValueError):
        PcmFramer(0)


@PROPERTY
@given(data=st.binary(min_size=1, max_size=1500), cuts=st.sets(st.integers(1, 2000), max_size=40))
def test_decoder_in_frames_returns_only_whole_samples(data: bytes, cuts: set[int]) -> None:
    """What the TTS client relies on: 4 base64 characters make 3 bytes, yet no half sample leaves."""
    decoder = Base64StreamDecoder(frame_bytes=2)
    whole = len(data) - len(data) % 2
    assert _fed_in_whole_samples(decoder.feed, _split(base64.b64encode(data), cuts)) == data[:whole]
    assert decoder.close() == data[whole:]  # a lone last byte: the caller says it dropped it


def test_decoder_refuses_a_frame_size_below_one() -> None:
    with pytest.raises(ValueError, match="frame_bytes"):
        Base64StreamDecoder(frame_bytes=0)
