"""PaddleSpeech TTS clients against the loopback stand-in.

The cases of docs/protocols.md "PaddleSpeech: tested cases".
"""

from __future__ import annotations

import asyncio
import base64
import random
import socket
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from structlog.testing import capture_logs

from daemon.clients.http_pool import make_http_client
from daemon.clients.tts import (
    PaddleSpeechHttpTts,
    PaddleSpeechWsTts,
    build_http_request,
    make_tts,
)
from daemon.config import TtsSettings
from daemon.errors import TtsError, TtsTimeout
from daemon.tools.stubs.paddlespeech import PaddleSpeechBehaviour, PaddleSpeechStub
from states.ports import TtsClient

TIMEOUT = 10.0
FULL = 21600

PCM = random.Random(2026).randbytes(2 * FULL + 6000)
"""The happy path of "PaddleSpeech: tested cases": 21 600 + 21 600 + 6 000 = 49 200 bytes."""
BODY = b"".join(base64.b64encode(PCM[i : i + FULL]) for i in range(0, len(PCM), FULL))


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


@pytest.fixture
async def stub() -> AsyncIterator[PaddleSpeechStub]:
    async with PaddleSpeechStub(behaviour=PaddleSpeechBehaviour(pcm_override=PCM)) as server:
        yield server


@pytest.fixture
async def ws_stub() -> AsyncIterator[PaddleSpeechStub]:
    behaviour = PaddleSpeechBehaviour(pcm_override=PCM)
    async with PaddleSpeechStub(behaviour=behaviour, protocol="websocket") as server:
        yield server


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port bound but not listening: connecting to it is refused."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


def _settings(url: str, **kwargs: float | int) -> TtsSettings:
    values: dict[str, float | int] = {"connect_timeout_s": 2.0, "read_timeout_s": 3.0, **kwargs}
    return TtsSettings(url=url, **values)  # type: ignore[arg-type]


async def _collect(tts: TtsClient, text: str) -> list[bytes]:
    async def run() -> list[bytes]:
        async with tts.synthesize(text) as audio:
            return [chunk async for chunk in audio]

    return await asyncio.wait_for(run(), TIMEOUT)


async def _collect_until_error(tts: TtsClient, text: str) -> tuple[list[bytes], BaseException | None]:
    chunks: list[bytes] = []

    async def run() -> None:
        async with tts.synthesize(text) as audio:
            async for chunk in audio:
                chunks.append(chunk)

    try:
        await asyncio.wait_for(run(), TIMEOUT)
    except TtsError as exc:
        return chunks, exc
    return chunks, None


def _assert_whole_samples(chunks: list[bytes]) -> None:
    assert all(len(c) % 2 == 0 and c for c in chunks), [len(c) for c in chunks]


# -- decoding -----------------------------------------------------


async def test_http_happy_path(stub: PaddleSpeechStub, http: httpx.AsyncClient) -> None:
    tts = PaddleSpeechHttpTts(_settings(stub.url), http)
    chunks = await _collect(tts, "你好，我是机器人。")
    assert b"".join(chunks) == PCM
    assert len(PCM) == 49200
    _assert_whole_samples(chunks)
    assert await tts.sample_rate() == 24000
    assert stub.completed == 1


@pytest.mark.parametrize(
    "cuts",
    [
        [1, 8, 4101],  # pieces of 1, 7 and 4093 bytes, then the rest
        [3, 28800 - 5, 28800 + 9, 2 * 28800 + 1],  # borders moved off the chunk boundaries
        [28800 * 2],  # two chunks merged into one piece
        sorted(random.Random(5).sample(range(1, len(BODY)), 40)),
    ],
)
async def test_rechunked_body_is_byte_identical(
    stub: PaddleSpeechStub, http: httpx.AsyncClient, cuts: list[int]
) -> None:
    pieces = tuple(BODY[a:b] for a, b in zip([0, *cuts], [*cuts, len(BODY)], strict=True))
    stub.behaviour = PaddleSpeechBehaviour(raw_body_pieces=pieces)
    chunks = await _collect(PaddleSpeechHttpTts(_settings(stub.url), http), "text")
    assert b"".join(chunks) == PCM
    _assert_whole_samples(chunks)


async def test_padding_inside_the_stream(stub: PaddleSpeechStub, http: httpx.AsyncClient) -> None:
    first, second = PCM[:21602], PCM[21602 : 21602 + 1000]
    stub.behaviour = PaddleSpeechBehaviour(raw_body_pieces=(base64.b64encode(first), base64.b64encode(second)))
    chunks = await _collect(PaddleSpeechHttpTts(_settings(stub.url), http), "text")
    assert b"".join(chunks) == first + second
    assert sum(map(len, chunks)) == 22602


async def test_every_chunk_is_whole_samples_whatever_the_decode_boundaries(
    stub: PaddleSpeechStub, http: httpx.AsyncClient
) -> None:
    """Pieces of 4 base64 characters decode to 3 bytes each: odd sizes must not reach the caller."""
    encoded = base64.b64encode(PCM[:6000])
    pieces = (*(encoded[i : i + 4] for i in range(0, 400, 4)), encoded[400:])
    stub.behaviour = PaddleSpeechBehaviour(raw_body_pieces=pieces, chunk_delay_s=0.001)
    chunks = await _collect(PaddleSpeechHttpTts(_settings(stub.url), http), "text")
    assert b"".join(chunks) == PCM[:6000]
    _assert_whole_samples(chunks)


async def test_audio_is_yielded_before_the_sentence_is_finished(
    stub: PaddleSpeechStub, http: httpx.AsyncClient
) -> None:
    stub.behaviour = PaddleSpeechBehaviour(pcm_override=PCM, chunk_delay_s=0.3)
    tts = PaddleSpeechHttpTts(_settings(stub.url), http)

    async def run() -> None:
        async with tts.synthesize("text") as audio:
            first = await anext(audio)
            assert first == PCM[:FULL]
            assert stub.completed == 0  # the server is still synthesizing
            assert audio.first_audio_at is not None and audio.first_audio_at >= audio.started_at
            rest = [chunk async for chunk in audio]
        assert first + b"".join(rest) == PCM

    await asyncio.wait_for(run(), TIMEOUT)
    assert stub.completed == 1


# -- samplerate ------------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [24000, 16000])
async def test_sample_rate_discovery(stub: PaddleSpeechStub, http: httpx.AsyncClient, rate: int) -> None:
    stub.behaviour = PaddleSpeechBehaviour(sample_rate=rate)
    tts = PaddleSpeechHttpTts(_settings(stub.url), http)
    assert await asyncio.wait_for(tts.sample_rate(), TIMEOUT) == rate
    assert await asyncio.wait_for(tts.sample_rate(), TIMEOUT) == rate
    assert stub.samplerate_requests == 1  # cached after the first success


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"sample_rate": "24000"}, "no integer 'sample_rate'"),
        ({"sample_rate": True}, "no integer 'sample_rate'"),
        ({"rate": 24000}, "no integer 'sample_rate'"),
        ([24000], "no integer 'sample_rate'"),
        ({"sample_rate": 1234567}, "outside 8000..96000"),
        ({"sample_rate": 0}, "outside 8000..96000"),
    ],
)
async def test_bad_sample_rate_is_a_clear_error(
    stub: PaddleSpeechStub, http: httpx.AsyncClient, override: object, message: str
) -> None:
    stub.behaviour = PaddleSpeechBehaviour(samplerate_override=override)
    tts = PaddleSpeechHttpTts(_settings(stub.url), http)
    with pytest.raises(TtsError, match=message):
        await asyncio.wait_for(tts.sample_rate(), TIMEOUT)
    stub.behaviour = PaddleSpeechBehaviour()
    assert await asyncio.wait_for(tts.sample_rate(), TIMEOUT) == 24000  # errors are not cached


async def test_sample_rate_server_error(stub: PaddleSpeechStub, http: httpx.AsyncClient) -> None:
    stub.behaviour = PaddleSpeechBehaviour(misbehave="error_500")
    with pytest.raises(TtsError, match="HTTP 500"):
        await asyncio.wait_for(PaddleSpeechHttpTts(_settings(stub.url), http).sample_rate(), TIMEOUT)


async def test_sample_rate_refused_names_the_url(http: httpx.AsyncClient, closed_port: int) -> None:
    settings = _settings(f"http://127.0.0.1:{closed_port}/paddlespeech/tts/streaming")
    with pytest.raises(TtsError, match=f"127.0.0.1:{closed_port}/paddlespeech/tts/streaming/samplerate"):
        await asyncio.wait_for(PaddleSpeechHttpTts(settings, http).sample_rate(), TIMEOUT)


# -- failures ----------------------------------------------------------------


async def test_truncated_stream_yields_the_chunk_then_fails(stub: PaddleSpeechStub, http: httpx.AsyncClient) -> None:
    stub.behaviour = PaddleSpeechBehaviour(pcm_override=PCM, misbehave="truncate")
    chunks, error = await _collect_until_error(PaddleSpeechHttpTts(_settings(stub.url), http), "text")
    assert b"".join(chunks) == PCM[:FULL]
    assert isinstance(error, TtsError) and not isinstance(error, TtsTimeout)
    assert "cut" in str(error)


@pytest.mark.parametrize("behaviour", [PaddleSpeechBehaviour(misbehave="empty"), PaddleSpeechBehaviour()])
async def test_no_audio_is_an_error_and_the_next_sentence_works(
    stub: PaddleSpeechStub, http: httpx.AsyncClient, behaviour: PaddleSpeechBehaviour
) -> None:
    """misbehave=empty, and real espeak synthesis of text with nothing to say."""
    stub.behaviour = behaviour
    tts = PaddleSpeechHttpTts(_settings(stub.url), http)
    chunks, error = await _collect_until_error(tts, "。！")
    assert chunks == []
    assert isinstance(error, TtsError)
    assert "no audio for '。！'" in str(error)
    stub.behaviour = PaddleSpeechBehaviour(pcm_override=PCM)
    assert b"".join(await _collect(tts, "下一句。")) == PCM


async def test_request_body_always_has_text_and_int_spk_id(stub: PaddleSpeechStub, http: httpx.AsyncClient) -> None:
    await _collect(PaddleSpeechHttpTts(_settings(stub.url, spk_id=3), http), "hello")
    await _collect(PaddleSpeechHttpTts(_settings(stub.url), http), "")  # even empty text is sent as text
    assert [r.body for r in stub.requests] == [{"text": "hello", "spk_id": 3}, {"text": "", "spk_id": 0}]
    assert all(type(r.body["spk_id"]) is int for r in stub.requests)
    assert build_http_request("x", 0) == {"text": "x", "spk_id": 0}
    with pytest.raises(TypeError):
        build_http_request(None, 0)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        build_http_request("x", "0")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        build_http_request("x", True)


async def test_server_error_status_is_reported(stub: PaddleSpeechStub, http: httpx.AsyncClient) -> None:
    stub.behaviour = PaddleSpeechBehaviour(misbehave="error_500")
    chunks, error = await _collect_until_error(PaddleSpeechHttpTts(_settings(stub.url), http), "text")
    assert chunks == []
    assert isinstance(error, TtsError)
    assert "HTTP 500" in str(error) and "Internal Server Error" in str(error)


async def test_garbage_body_is_reported(stub: PaddleSpeechStub, http: httpx.AsyncClient) -> None:
    stub.behaviour = PaddleSpeechBehaviour(misbehave="garbage")
    _, error = await _collect_until_error(PaddleSpeechHttpTts(_settings(stub.url), http), "text")
    assert isinstance(error, TtsError)
    assert "not base64" in str(error) and "offset 0" in str(error)


async def test_unpadded_tail_is_reported(stub: PaddleSpeechStub, http: httpx.AsyncClient) -> None:
    stub.behaviour = PaddleSpeechBehaviour(raw_body_pieces=(base64.b64encode(PCM[:600]), b"QUJ"))
    chunks, error = await _collect_until_error(PaddleSpeechHttpTts(_settings(stub.url), http), "text")
    assert b"".join(chunks) == PCM[:600]
    assert isinstance(error, TtsError) and "leftover" in str(error)


async def test_refused_connection_names_the_url(http: httpx.AsyncClient, closed_port: int) -> None:
    url = f"http://127.0.0.1:{closed_port}/paddlespeech/tts/streaming"
    _, error = await _collect_until_error(PaddleSpeechHttpTts(_settings(url), http), "text")
    assert isinstance(error, TtsError) and url in str(error)


async def test_connection_dropped_at_once(stub: PaddleSpeechStub, http: httpx.AsyncClient) -> None:
    stub.behaviour = PaddleSpeechBehaviour(misbehave="refuse")
    _, error = await _collect_until_error(PaddleSpeechHttpTts(_settings(stub.url), http), "text")
    assert isinstance(error, TtsError) and stub.url in str(error)
    assert stub.refused >= 1


async def test_hanging_server_times_out(stub: PaddleSpeechStub, http: httpx.AsyncClient) -> None:
    stub.behaviour = PaddleSpeechBehaviour(misbehave="hang")
    _, error = await _collect_until_error(PaddleSpeechHttpTts(_settings(stub.url, read_timeout_s=0.3), http), "x")
    assert isinstance(error, TtsTimeout)


async def test_silence_between_chunks_times_out(stub: PaddleSpeechStub, http: httpx.AsyncClient) -> None:
    stub.behaviour = PaddleSpeechBehaviour(pcm_override=PCM, chunk_delay_s=3.0)
    tts = PaddleSpeechHttpTts(_settings(stub.url, read_timeout_s=0.3), http)
    chunks, error = await _collect_until_error(tts, "text")
    assert b"".join(chunks) == PCM[:FULL]
    assert isinstance(error, TtsTimeout)


# -- barge-in --------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["break", "cancel"])
async def test_http_barge_in_closes_the_connection(stub: PaddleSpeechStub, http: httpx.AsyncClient, how: str) -> None:
    stub.behaviour = PaddleSpeechBehaviour(pcm_override=PCM * 4, chunk_delay_s=0.2)
    tts = PaddleSpeechHttpTts(_settings(stub.url), http)
    got_audio = asyncio.Event()

    async def speak() -> None:
        async with tts.synthesize("a long answer") as audio:
            async for _chunk in audio:
                got_audio.set()
                if how == "break":
                    break

    task = asyncio.create_task(speak())
    await asyncio.wait_for(got_audio.wait(), TIMEOUT)
    if how == "cancel":
        task.cancel()
    with pytest.raises(asyncio.CancelledError) if how == "cancel" else _no_error():
        await asyncio.wait_for(task, TIMEOUT)
    await stub.wait_for_disconnects(1, timeout=2.0)
    assert stub.completed == 0

    stub.behaviour = PaddleSpeechBehaviour(pcm_override=PCM)
    assert b"".join(await _collect(tts, "next")) == PCM
    first, second = stub.requests[0].peer, stub.requests[1].peer
    assert first is not None and second is not None and first[1] != second[1]  # a new connection


class _no_error:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc_info: object) -> None:
        return None


# -- logging ---------------------------------------------------------------------------------------


async def test_logs_request_first_audio_and_finish(stub: PaddleSpeechStub, http: httpx.AsyncClient) -> None:
    with capture_logs() as logs:
        await _collect(PaddleSpeechHttpTts(_settings(stub.url), http), "hello")
    events = {e["event"]: e for e in logs}
    assert events["tts_request"]["chars"] == 5
    assert events["tts_first_audio"]["ms"] >= 0
    assert events["tts_finished"]["bytes"] == len(PCM)


# -- websocket -------------------------------------------------------------------------------


async def test_ws_full_sequence(ws_stub: PaddleSpeechStub, http: httpx.AsyncClient) -> None:
    tts = PaddleSpeechWsTts(_settings(ws_stub.url, spk_id=2), http=http)
    chunks = await _collect(tts, "你好。")
    assert b"".join(chunks) == PCM
    _assert_whole_samples(chunks)
    start, text, end = ws_stub.ws_messages
    assert start == {"task": "tts", "signal": "start"}
    assert text == {"text": "你好。", "spk_id": 2}
    assert end["signal"] == "end" and isinstance(end["session"], str) and len(end["session"]) == 32
    assert ws_stub.completed == 1
    assert await tts.sample_rate() == 24000


async def test_ws_one_connection_per_sentence(ws_stub: PaddleSpeechStub) -> None:
    tts = PaddleSpeechWsTts(_settings(ws_stub.url))  # no http client: one is made for the samplerate GET
    for text in ("one.", "two."):
        assert b"".join(await _collect(tts, text)) == PCM
    assert [m.get("signal") for m in ws_stub.ws_messages] == ["start", None, "end", "start", None, "end"]
    assert ws_stub.requests[0].peer != ws_stub.requests[1].peer
    assert await asyncio.wait_for(tts.sample_rate(), TIMEOUT) == 24000


async def test_ws_padding_and_rechunked_audio(ws_stub: PaddleSpeechStub) -> None:
    pieces = (base64.b64encode(PCM[:21602]) + base64.b64encode(PCM[21602:22602]),)
    ws_stub.behaviour = PaddleSpeechBehaviour(raw_body_pieces=(pieces[0][:7], pieces[0][7:4100], pieces[0][4100:]))
    chunks = await _collect(PaddleSpeechWsTts(_settings(ws_stub.url)), "text")
    assert b"".join(chunks) == PCM[:22602]
    _assert_whole_samples(chunks)


@pytest.mark.parametrize(
    ("behaviour", "error_type", "message"),
    [
        (PaddleSpeechBehaviour(misbehave="ws_error"), TtsError, "status -1"),
        (PaddleSpeechBehaviour(), TtsError, "status -1"),  # real synthesis of text that gives no audio
        (PaddleSpeechBehaviour(misbehave="empty"), TtsError, "closed the connection with no reply"),
        (PaddleSpeechBehaviour(misbehave="garbage"), TtsError, "not base64"),
        (PaddleSpeechBehaviour(misbehave="hang"), TtsTimeout, "no message within"),
        (PaddleSpeechBehaviour(misbehave="error_500"), TtsError, "HTTP 500"),
        (PaddleSpeechBehaviour(misbehave="refuse"), TtsError, "cannot connect"),
    ],
)
async def test_ws_failures(
    ws_stub: PaddleSpeechStub, behaviour: PaddleSpeechBehaviour, error_type: type[TtsError], message: str
) -> None:
    ws_stub.behaviour = behaviour
    tts = PaddleSpeechWsTts(_settings(ws_stub.url, read_timeout_s=0.5))
    chunks, error = await _collect_until_error(tts, "。")
    assert chunks == []
    assert isinstance(error, error_type), error
    assert message in str(error) and ws_stub.url in str(error)
    ws_stub.behaviour = PaddleSpeechBehaviour(pcm_override=PCM)
    assert b"".join(await _collect(tts, "next")) == PCM


async def test_ws_truncated_stream(ws_stub: PaddleSpeechStub) -> None:
    ws_stub.behaviour = PaddleSpeechBehaviour(pcm_override=PCM, misbehave="truncate")
    chunks, error = await _collect_until_error(PaddleSpeechWsTts(_settings(ws_stub.url)), "text")
    assert b"".join(chunks) == PCM[:FULL]
    assert isinstance(error, TtsError) and "closed the connection" in str(error)


async def test_ws_refused(closed_port: int) -> None:
    url = f"ws://127.0.0.1:{closed_port}/paddlespeech/tts/streaming"
    _, error = await _collect_until_error(PaddleSpeechWsTts(_settings(url)), "text")
    assert isinstance(error, TtsError) and url in str(error)


@pytest.mark.parametrize("how", ["break", "cancel"])
async def test_ws_barge_in_closes_the_connection(ws_stub: PaddleSpeechStub, how: str) -> None:
    ws_stub.behaviour = PaddleSpeechBehaviour(pcm_override=PCM * 4, chunk_delay_s=0.2)
    tts = PaddleSpeechWsTts(_settings(ws_stub.url))
    got_audio = asyncio.Event()

    async def speak() -> None:
        async with tts.synthesize("a long answer") as audio:
            async for _chunk in audio:
                got_audio.set()
                if how == "break":
                    break

    task = asyncio.create_task(speak())
    await asyncio.wait_for(got_audio.wait(), TIMEOUT)
    if how == "cancel":
        task.cancel()
    with pytest.raises(asyncio.CancelledError) if how == "cancel" else _no_error():
        await asyncio.wait_for(task, TIMEOUT)
    await ws_stub.wait_for_disconnects(1, timeout=2.0)
    assert ws_stub.completed == 0

    ws_stub.behaviour = PaddleSpeechBehaviour(pcm_override=PCM)
    assert b"".join(await _collect(tts, "next")) == PCM


# -- factory ---------------------------------------------------------------------------------------


async def test_make_tts_picks_the_protocol_from_the_url(http: httpx.AsyncClient) -> None:
    http_tts: TtsClient = make_tts(TtsSettings(url="http://h:8092/paddlespeech/tts/streaming"), http)
    ws_tts: TtsClient = make_tts(TtsSettings(url="wss://h:8092/paddlespeech/tts/streaming"), http)
    assert isinstance(http_tts, PaddleSpeechHttpTts)
    assert isinstance(ws_tts, PaddleSpeechWsTts)


async def test_warm_up_asks_the_sample_rate_and_the_sentence_follows(stub: PaddleSpeechStub) -> None:
    async with make_http_client() as http:
        tts = PaddleSpeechHttpTts(_settings(stub.url), http)
        await asyncio.wait_for(tts.warm_up(), TIMEOUT)
        assert stub.samplerate_requests == 1
        assert b"".join(await _collect(tts, "你好。")) == PCM


async def test_warm_up_against_a_dead_server_is_quiet(http: httpx.AsyncClient, closed_port: int) -> None:
    tts = PaddleSpeechHttpTts(_settings(f"http://127.0.0.1:{closed_port}/paddlespeech/tts/streaming"), http)
    await asyncio.wait_for(tts.warm_up(), TIMEOUT)
    await asyncio.wait_for(PaddleSpeechWsTts(_settings("ws://127.0.0.1:9/x")).warm_up(), TIMEOUT)  # a no-op
