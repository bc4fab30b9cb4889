"""Incremental base64 decoding and whole-sample framing (docs/protocols.md, "PaddleSpeech: base64 in pieces")."""

from __future__ import annotations

import base64
import random
import re
from collections.abc import Sequence

import pytest

from daemon.clients.b64stream import Base64StreamDecoder
from hardware.pcm import PcmFramer


def _pcm(size: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


def _split(data: bytes, rng: random.Random, pieces: int) -> list[bytes]:
    cuts = sorted(rng.sample(range(1, len(data)), min(pieces, len(data) - 1)))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


def _decode_all(pieces: Sequence[bytes | str]) -> bytes:
    decoder = Base64StreamDecoder()
    out = b"".join(decoder.feed(p) for p in pieces)
    return out + decoder.close()


def test_whole_paddlespeech_stream_decodes_exactly() -> None:
    chunks = [_pcm(21600, 1), _pcm(21600, 2), _pcm(6000, 3)]
    body = b"".join(base64.b64encode(c) for c in chunks)
    assert _decode_all([body]) == b"".join(chunks)
    assert len(_decode_all([body])) == 49200


def test_survives_any_rechunking() -> None:
    """Property-style: many random split points, also single bytes, give identical output."""
    rng = random.Random(20261124)
    chunks = [_pcm(21602, 4), _pcm(1000, 5), _pcm(7, 6), _pcm(21600, 7)]  # padding mid-stream too
    body = b"".join(base64.b64encode(c) for c in chunks)
    expected = b"".join(chunks)
    for trial in range(200):
        pieces = _split(body, rng, rng.randint(1, 60))
        assert _decode_all(pieces) == expected, f"trial {trial}"
    assert _decode_all([body[i : i + 1] for i in range(4000)] + [body[4000:]]) == expected
    assert _decode_all([body[:1], body[1:8], body[8:4101], body[4101:]]) == expected


def test_output_is_available_as_soon_as_groups_complete() -> None:
    decoder = Base64StreamDecoder()
    encoded = base64.b64encode(b"abcdef")  # YWJjZGVm
    assert decoder.feed(encoded[:3]) == b""
    assert decoder.pending == 3
    assert decoder.feed(encoded[3:6]) == b"abc"
    assert decoder.feed(encoded[6:]) == b"def"
    assert decoder.close() == b""


def test_padding_mid_stream_keeps_every_byte() -> None:
    """2.8.3: 21 602 B and 1 000 B chunks put '=' in the middle; a naive decode stops there."""
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


def test_pcm_framer_emits_only_whole_samples() -> None:
    rng = random.Random(7)
    data = _pcm(10001, 12)
    for _ in range(50):
        framer = PcmFramer()
        out = []
        for piece in _split(data, rng, rng.randint(1, 40)):
            emitted = framer.feed(piece)
            assert len(emitted) % 2 == 0
            out.append(emitted)
        assert b"".join(out) == data[:10000]
        assert framer.pending == 1
        assert framer.close() == data[10000:]
        assert framer.pending == 0


def test_pcm_framer_stereo_frames() -> None:
    framer = PcmFramer(frame_bytes=4)
    assert framer.feed(b"123") == b""
    assert framer.feed(b"45678") == b"12345678"
    assert framer.feed(b"9") == b""
    assert framer.close() == b"9"
    with pytest.raises(ValueError):
        PcmFramer(0)
