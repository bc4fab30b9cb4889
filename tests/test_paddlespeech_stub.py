"""The PaddleSpeech stand-in itself: the espeak voice and the real server's wire format.

See docs/protocols.md, "PaddleSpeech streaming TTS".
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import numpy as np
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from daemon.tools.stubs.paddlespeech import PaddleSpeechBehaviour, PaddleSpeechStub, espeak_pcm

TIMEOUT = 10.0


@dataclass
class RawResponse:
    status_line: str
    headers: dict[str, str]
    chunks: list[bytes]
    """The HTTP/1.1 chunks as framed on the wire."""
    complete: bool
    """The terminating zero-length chunk arrived."""


async def _raw_post(port: int, body: bytes) -> RawResponse:
    """POST over a plain socket and parse the chunked framing by hand (no client library in between)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            b"POST /paddlespeech/tts/streaming HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nConnection: close\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)).decode("latin-1")
        status_line, *lines = head.strip().split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
        chunks: list[bytes] = []
        complete = False
        if headers.get("transfer-encoding") == "chunked":
            while True:
                size_line = await asyncio.wait_for(reader.readline(), TIMEOUT)
                if not size_line:
                    break  # connection closed without the final chunk
                size = int(size_line.strip(), 16)
                if size == 0:
                    complete = True
                    break
                chunks.append(await asyncio.wait_for(reader.readexactly(size), TIMEOUT))
                assert await reader.readexactly(2) == b"\r\n"
        return RawResponse(status_line, headers, chunks, complete)
    finally:
        writer.close()
        await writer.wait_closed()


@pytest.fixture
async def stub() -> AsyncIterator[PaddleSpeechStub]:
    async with PaddleSpeechStub() as server:
        yield server


@pytest.fixture
async def ws_stub() -> AsyncIterator[PaddleSpeechStub]:
    async with PaddleSpeechStub(protocol="websocket") as server:
        yield server


def _rms(pcm: bytes) -> float:
    return float(np.sqrt(np.mean(np.frombuffer(pcm, dtype="<i2").astype(np.float64) ** 2)))


# -- the voice -------------------------------------------------------------------------------------


async def test_espeak_voice_is_real_speech_at_24k(stub: PaddleSpeechStub) -> None:
    response = await _raw_post(stub.port, json.dumps({"text": "Hello robot, how are you today?", "spk_id": 0}).encode())
    pcm = b"".join(base64.b64decode(chunk) for chunk in response.chunks)  # one base64 string per chunk
    seconds = len(pcm) / 2 / 24000
    assert 1.0 < seconds < 6.0
    assert _rms(pcm) > 300  # not silence
    assert response.complete
    async with httpx.AsyncClient() as http:
        assert (await http.get(stub.samplerate_url)).json() == {"sample_rate": 24000}


async def test_chinese_text_uses_the_pinyin_voice() -> None:
    pcm = await asyncio.wait_for(espeak_pcm("你好，我是机器人。", 24000), TIMEOUT)
    assert 0.8 < len(pcm) / 2 / 24000 < 8.0
    assert _rms(pcm) > 300


async def test_sample_rate_changes_the_audio_rate() -> None:
    """The same words last as long at 16 kHz as at 24 kHz: the audio is really resampled."""
    at_24k = await asyncio.wait_for(espeak_pcm("turn on the kitchen light", 24000), TIMEOUT)
    at_16k = await asyncio.wait_for(espeak_pcm("turn on the kitchen light", 16000), TIMEOUT)
    assert abs(len(at_24k) / 48000 - len(at_16k) / 32000) < 0.01


# -- HTTP wire format ------------------------------------------------------------------------------


async def test_http_wire_format_matches_paddlespeech(stub: PaddleSpeechStub) -> None:
    text = "Good morning. This is the robot speaking, and this answer has a few sentences! Is that clear?"
    response = await _raw_post(stub.port, json.dumps({"text": text, "spk_id": 0}).encode())
    assert response.status_line == "HTTP/1.1 200 OK"
    assert "content-type" not in response.headers
    assert "content-length" not in response.headers
    assert response.headers["transfer-encoding"] == "chunked"
    assert response.complete
    sizes = [len(base64.b64decode(chunk, validate=True)) for chunk in response.chunks]
    assert len(sizes) >= 4  # several sentences, at least one of them longer than 0.45 s
    assert 21600 in sizes
    assert all(size % 600 == 0 and 0 < size <= 21600 for size in sizes), sizes
    assert all(b"=" not in chunk and b"\n" not in chunk for chunk in response.chunks)


async def test_pcm_override_is_cut_like_the_real_server(stub: PaddleSpeechStub) -> None:
    stub.behaviour = PaddleSpeechBehaviour(pcm_override=bytes(range(256)) * 192 + bytes(1200))  # 50 352 bytes
    response = await _raw_post(stub.port, b'{"text": "x"}')
    assert [len(base64.b64decode(c)) for c in response.chunks] == [21600, 21600, 7152]
    assert b"".join(base64.b64decode(c) for c in response.chunks) == stub.behaviour.pcm_override


async def test_raw_body_pieces_are_sent_verbatim(stub: PaddleSpeechStub) -> None:
    stub.behaviour = PaddleSpeechBehaviour(raw_body_pieces=(b"Q", b"UJD", b"RA=="))
    response = await _raw_post(stub.port, b'{"text": "x"}')
    assert response.chunks == [b"Q", b"UJD", b"RA=="]


@pytest.mark.parametrize(
    ("body", "loc", "msg"),
    [
        (b'{"spk_id": 0}', ["body", "text"], "field required"),
        (b'{"text": 5}', ["body", "text"], "str type expected"),
        (b'{"text": "hi", "spk_id": "zero"}', ["body", "spk_id"], "value is not a valid integer"),
        (b"not json", ["body", 0], None),
    ],
)
async def test_validation_errors_are_422_with_detail(
    stub: PaddleSpeechStub, body: bytes, loc: list[object], msg: str | None
) -> None:
    async with httpx.AsyncClient() as http:
        response = await http.post(stub.url, content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert detail[0]["loc"] == loc
    if msg is not None:
        assert detail[0]["msg"] == msg


async def test_text_without_audio_is_200_then_an_abrupt_close(stub: PaddleSpeechStub) -> None:
    response = await _raw_post(stub.port, json.dumps({"text": "。！", "spk_id": 0}).encode())
    assert response.status_line == "HTTP/1.1 200 OK"
    assert response.chunks == []
    assert not response.complete


async def test_truncate_drops_the_connection_after_one_chunk(stub: PaddleSpeechStub) -> None:
    stub.behaviour = PaddleSpeechBehaviour(pcm_override=bytes(48000), misbehave="truncate")
    response = await _raw_post(stub.port, b'{"text": "x"}')
    assert [len(base64.b64decode(c)) for c in response.chunks] == [21600]
    assert not response.complete


async def test_requests_are_recorded_and_behaviour_can_be_swapped(stub: PaddleSpeechStub) -> None:
    stub.behaviour = PaddleSpeechBehaviour(pcm_override=bytes(600))
    await _raw_post(stub.port, b'{"text": "first", "spk_id": 1}')
    stub.behaviour = PaddleSpeechBehaviour(misbehave="error_500")
    async with httpx.AsyncClient() as http:
        response = await http.post(stub.url, json={"text": "second"})
    assert response.status_code == 500
    assert stub.texts == ["first", "second"]
    assert stub.requests[0].body == {"text": "first", "spk_id": 1}
    assert stub.completed == 1


async def test_stop_does_not_wait_for_a_hanging_request(stub: PaddleSpeechStub) -> None:
    stub.behaviour = PaddleSpeechBehaviour(misbehave="hang")
    _reader, writer = await asyncio.open_connection("127.0.0.1", stub.port)
    writer.write(b'POST /paddlespeech/tts/streaming HTTP/1.1\r\nHost: x\r\nContent-Length: 12\r\n\r\n{"text":"x"}')
    await writer.drain()
    for _ in range(200):
        if stub.requests:
            break
        await asyncio.sleep(0.01)
    assert stub.texts == ["x"]
    await asyncio.wait_for(stub.stop(), 5.0)
    writer.close()
    await writer.wait_closed()


async def test_a_client_leaving_mid_stream_is_timed(stub: PaddleSpeechStub) -> None:
    stub.behaviour = PaddleSpeechBehaviour(chunk_delay_s=0.5)  # a long sentence, slowly
    async with httpx.AsyncClient() as http:
        request = http.build_request("POST", stub.url, json={"text": "One. Two. Three. Four. Five."})
        response = await asyncio.wait_for(http.send(request, stream=True), TIMEOUT)
        chunks = response.aiter_raw()
        assert await asyncio.wait_for(anext(chunks), TIMEOUT)
        await chunks.aclose()  # type: ignore[attr-defined]
        closed_at = time.monotonic()
        await response.aclose()
    await stub.wait_for_disconnects(1, timeout=TIMEOUT)
    assert stub.disconnects == 1 and stub.completed == 0
    (seen,) = stub.disconnect_times
    assert closed_at <= seen < closed_at + 2.0


async def test_a_finished_stream_is_no_disconnect(stub: PaddleSpeechStub) -> None:
    async with httpx.AsyncClient() as http:
        response = await http.post(stub.url, json={"text": "Hello."}, timeout=TIMEOUT)
    assert response.status_code == 200 and response.content
    assert stub.completed == 1 and stub.disconnects == 0 and stub.disconnect_times == []


# -- websocket -------------------------------------------------------------------------------------


async def _recv(ws: ClientConnection) -> dict[str, object]:
    message: dict[str, object] = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
    return message


async def test_ws_message_sequence(ws_stub: PaddleSpeechStub) -> None:
    async with connect(ws_stub.url, proxy=None) as ws:
        await ws.send(json.dumps({"task": "tts", "signal": "start"}))
        ready = await _recv(ws)
        assert ready["status"] == 0 and ready["signal"] == "server ready"
        session = ready["session"]
        assert isinstance(session, str) and len(session) == 32 and int(session, 16) >= 0

        await ws.send(json.dumps({"task": "tts", "signal": "pause"}))
        assert await _recv(ws) == {"status": 0, "signal": "no valid json data"}
        await ws.send(json.dumps({"hello": "nothing to do"}))  # neither signal nor text: no reply

        await ws.send(json.dumps({"text": "Hello there.", "spk_id": 0}))
        audio = []
        while (message := await _recv(ws))["status"] == 1:
            audio.append(base64.b64decode(str(message["audio"]), validate=True))
        assert message == {"status": 2, "audio": ""}
        assert audio and all(len(a) % 600 == 0 for a in audio)
        assert _rms(b"".join(audio)) > 300

        await ws.send(json.dumps({"text": "。", "spk_id": 0}))  # no audio: status -1, session goes on
        assert await _recv(ws) == {"status": -1, "audio": ""}

        await ws.send(json.dumps({"task": "tts", "signal": "end", "session": session}))
        assert await _recv(ws) == {"status": 0, "signal": "connection will be closed", "session": session}
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), TIMEOUT)
    assert ws_stub.texts == ["Hello there.", "。"]
    async with httpx.AsyncClient() as http:
        assert (await http.get(ws_stub.samplerate_url)).json() == {"sample_rate": 24000}


@pytest.mark.parametrize(
    "first",
    [
        {"text": "text before start", "spk_id": 0},
        "not json at all",
    ],
)
async def test_ws_bad_session_start_closes_without_a_message(ws_stub: PaddleSpeechStub, first: object) -> None:
    async with connect(ws_stub.url, proxy=None) as ws:
        await ws.send(first if isinstance(first, str) else json.dumps(first))
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), TIMEOUT)
    assert closed.value.rcvd is None  # no close frame, no error message: the socket just closes


async def test_ws_text_without_spk_id_kills_the_session(ws_stub: PaddleSpeechStub) -> None:
    async with connect(ws_stub.url, proxy=None) as ws:
        await ws.send(json.dumps({"task": "tts", "signal": "start"}))
        await _recv(ws)
        await ws.send(json.dumps({"text": "hello"}))
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), TIMEOUT)


async def test_http_mode_has_no_websocket_and_websocket_mode_no_post(
    stub: PaddleSpeechStub, ws_stub: PaddleSpeechStub
) -> None:
    async with httpx.AsyncClient() as http:
        assert (await http.post(ws_stub.url.replace("ws://", "http://"), json={"text": "x"})).status_code in (404, 405)
    with pytest.raises(InvalidStatus) as rejected:
        async with connect(stub.url.replace("http://", "ws://"), proxy=None, open_timeout=TIMEOUT):
            pass
    assert rejected.value.response.status_code == 403


async def test_ws_close_mid_stream_is_timed_when_it_came_not_at_the_next_send(ws_stub: PaddleSpeechStub) -> None:
    # the stand-in, like the real server, only notices at its next send, 2 s after the close
    ws_stub.behaviour = PaddleSpeechBehaviour(chunk_delay_s=2.0)
    async with connect(ws_stub.url, proxy=None) as ws:
        await ws.send(json.dumps({"task": "tts", "signal": "start"}))
        await _recv(ws)
        await ws.send(json.dumps({"text": "One. Two. Three.", "spk_id": 0}))
        assert (await _recv(ws))["status"] == 1
        closed_at = time.monotonic()
    await ws_stub.wait_for_disconnects(1, timeout=TIMEOUT)
    (seen,) = ws_stub.disconnect_times
    assert closed_at <= seen < closed_at + 1.0
