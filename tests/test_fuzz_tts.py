"""Fuzzing the TTS side: mutated base64 bodies through the decoder and a whole HTTP audio stream,
mutated websocket messages through a whole websocket audio stream, error bodies of any shape.
Only ValueError (the decoder) and TtsError (the clients) come out; valid base64 cut anywhere
decodes to the same samples."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from typing import Any, cast

import httpx
from hypothesis import example, given
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed

from daemon.clients.b64stream import Base64StreamDecoder
from daemon.clients.tts_common import ClauseBudget, TtsAudioStream, audio_cap_bytes, error_detail
from daemon.clients.tts_http import _HttpAudioStream
from daemon.clients.tts_websocket import _WsAudioStream
from daemon.config import TtsSettings
from daemon.errors import TtsError
from tests.fuzzing import FUZZ, JSON_VALUES, chunked, fuzz, mutated, mutated_object

PCM = bytes(range(256)) * 3
"""384 samples: two PaddleSpeech-like pieces, the second shorter."""
PIECES = [base64.b64encode(PCM[:512]), base64.b64encode(PCM[512:])]
BODY = b"".join(PIECES)  # the HTTP body: base64 strings glued together, a "=" group between them
SETTINGS = TtsSettings(url="http://tts/paddlespeech/tts/streaming", read_timeout_s=1.0)


def _decode(pieces: list[bytes]) -> bytes:
    """Whole samples only; the odd byte an odd stream ends with is what ``close`` returns."""
    decoder = Base64StreamDecoder(frame_bytes=2)
    samples = b"".join(decoder.feed(p) for p in pieces)
    assert len(samples) % 2 == 0 and len(decoder.close()) < 2
    return samples


@FUZZ
@given(data=st.data())
def test_valid_base64_cut_anywhere_decodes_to_the_same_samples(data: st.DataObject) -> None:
    assert _decode(data.draw(chunked(BODY, max_cuts=30))) == PCM


@FUZZ
@given(data=st.data(), body=mutated(BODY, max_edits=6))
@example(data=None, body=b"AAA=A")
@example(data=None, body=b"\tAAEC")  # three bytes: one sample, and the odd byte left to close()
def test_mutated_base64_gives_bytes_or_a_value_error(data: Any, body: bytes) -> None:
    pieces = [body] if data is None else data.draw(chunked(body))
    try:
        whole = _decode([body])
    except ValueError:
        whole = None
    try:
        cut = _decode(pieces)
    except ValueError:
        cut = None
    assert cut == whole  # the same verdict however the network cut it


async def _drain(stream: TtsAudioStream) -> bytes:
    out = b""
    try:
        async for pcm in stream:
            assert len(pcm) % 2 == 0
            out += pcm
    except TtsError:
        pass
    finally:
        await stream.aclose()
    return out


def _limits() -> dict[str, Any]:
    """The clause's time budget and audio cap, as the clients give them (the fuzzed bodies are small)."""
    return {"budget": ClauseBudget(SETTINGS, "你好。"), "max_pcm_bytes": audio_cap_bytes(SETTINGS, "你好。", None)}


def _http_stream(pieces: list[bytes]) -> _HttpAudioStream:
    async def body() -> AsyncIterator[bytes]:
        for piece in pieces:
            yield piece

    response = httpx.Response(200, content=body())
    return _HttpAudioStream("你好。", SETTINGS, time.monotonic, response, time.monotonic(), **_limits())


@fuzz(200)
@given(data=st.data(), body=mutated(BODY, max_edits=6))
def test_a_mutated_http_body_gives_whole_samples_or_a_tts_error(data: st.DataObject, body: bytes) -> None:
    pieces = data.draw(chunked(body))
    pcm = asyncio.run(_drain(_http_stream(pieces)))
    assert len(pcm) % 2 == 0


READY = {"status": 0, "signal": "server ready", "session": "e7f1"}
AUDIO = [{"status": 1, "audio": piece.decode()} for piece in PIECES]
FINISH = {"status": 2, "audio": ""}
CLOSING = {"status": 0, "signal": "connection will be closed", "session": "e7f1"}
REAL_WS = [READY, *AUDIO, FINISH, CLOSING]


class FakeTtsWebsocket:
    """Answers ``recv`` with given frames in order, then closes (ConnectionClosed)."""

    close_timeout = 1.0

    def __init__(self, frames: list[str | bytes]) -> None:
        self.frames = list(frames)
        self.sent: list[str] = []
        self.closed = False

    async def send(self, message: str) -> None:
        if self.closed:
            raise ConnectionClosed(None, None)
        self.sent.append(message)

    async def recv(self) -> str | bytes:
        if not self.frames:
            raise ConnectionClosed(None, None)
        return self.frames.pop(0)

    async def close(self) -> None:
        self.closed = True


async def _ws_session(frames: list[str | bytes]) -> tuple[bytes, FakeTtsWebsocket]:
    ws = FakeTtsWebsocket(frames)
    stream = _WsAudioStream("你好。", SETTINGS, time.monotonic, cast(Any, ws), time.monotonic(), **_limits())
    try:
        await stream.handshake({"text": "你好。", "spk_id": 0})
    except TtsError:
        await stream.aclose()
        return b"", ws
    return await _drain(stream), ws


def _frame(message: Any, raw: bool) -> str | bytes:
    text = json.dumps(message, ensure_ascii=False)
    return text.encode() if raw else text


ws_frames = st.one_of(
    st.sampled_from(REAL_WS).flatmap(mutated_object).map(lambda m: _frame(m, False)),
    st.sampled_from(REAL_WS).map(lambda m: json.dumps(m).encode()).flatmap(mutated).map(lambda b: b.decode("latin-1")),
    JSON_VALUES.map(lambda v: _frame(v, False)),
    st.binary(max_size=8),
)


@fuzz(200)
@given(frames=st.lists(ws_frames, max_size=6), keep=st.integers(0, len(REAL_WS)))
@example(frames=["[" * 5000], keep=0)  # nested deeper than json follows: was a RecursionError
def test_mutated_websocket_messages_give_whole_samples_or_a_tts_error(frames: list[str | bytes], keep: int) -> None:
    """The real exchange up to ``keep`` messages, then fuzzed ones."""
    real: list[str | bytes] = [_frame(m, False) for m in REAL_WS[:keep]]
    pcm, ws = asyncio.run(_ws_session(real + frames))
    assert len(pcm) % 2 == 0
    assert ws.closed


def test_the_real_websocket_exchange_gives_the_samples() -> None:
    pcm, ws = asyncio.run(_ws_session([_frame(m, False) for m in REAL_WS]))
    assert pcm == PCM and ws.closed


@FUZZ
@given(body=st.one_of(JSON_VALUES.map(lambda v: json.dumps(v).encode()), st.binary(max_size=64)))
@example(body=b'{"detail": [{"loc": 5, "msg": "x"}]}')
@example(body=b"[" * 5000)
def test_an_error_body_of_any_shape_becomes_text(body: bytes) -> None:
    assert isinstance(error_detail(body), str)


def test_the_real_http_body_gives_the_samples() -> None:
    assert asyncio.run(_drain(_http_stream([BODY[:7], BODY[7:]]))) == PCM
