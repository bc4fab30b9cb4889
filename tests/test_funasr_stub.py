"""The FunASR stand-in: exact recognition of espeak-ng questions, each flavour's quirks on the wire,
and the checks it makes on clients."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect

from daemon.clients.asr import FunAsrClient, build_config_message
from daemon.config import AsrSettings
from daemon.tools.stubs.funasr import (
    ESPEAK_VOICE,
    GRAMMAR_PATH,
    QUESTIONS,
    FunAsrBehaviour,
    FunAsrStub,
    StubSession,
    make_question_wav,
    read_wav_pcm,
    recognise_wav,
)
from states.events import Transcript

TIMEOUT = 10.0
FRAME = 1920
SPOKEN = (*QUESTIONS, "hello robot what time is it")


@pytest.fixture(scope="module")
def question_wavs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every grammar question spoken by espeak-ng, 16 kHz mono (generated once per module)."""
    folder = tmp_path_factory.mktemp("questions")
    return {text: make_question_wav(text, folder / f"q{index}.wav") for index, text in enumerate(SPOKEN)}


@pytest.fixture
async def stub() -> AsyncIterator[FunAsrStub]:
    async with FunAsrStub(behaviour=FunAsrBehaviour(flavour="cpp-2pass")) as server:
        yield server


def client_settings(url: str, **overrides: Any) -> AsrSettings:
    base = AsrSettings(url=url, final_timeout_s=1.0, burst_ms=60_000, wav_name="q", connect_timeout_s=10.0)
    return replace(base, **overrides)


async def recognise_over_websocket(settings: AsrSettings, pcm: bytes) -> Transcript:
    session = await asyncio.wait_for(FunAsrClient(settings).open_session(), TIMEOUT)
    try:
        await session.send_audio(pcm)
        return await asyncio.wait_for(session.finish(), TIMEOUT)
    finally:
        await session.aclose()


async def last_session(stub: FunAsrStub) -> StubSession:
    await asyncio.wait_for(stub.sessions[-1].done.wait(), TIMEOUT)
    return stub.sessions[-1]


def results(session: StubSession) -> list[dict[str, Any]]:
    return [m for m in session.sent if isinstance(m, dict)]


# -- recognition -----------------------------------------------------------------------------


def test_grammar_file_lists_the_questions() -> None:
    grammar = GRAMMAR_PATH.read_text(encoding="utf-8")
    assert grammar.startswith("#JSGF V1.0;")
    for question in QUESTIONS:
        assert question in grammar
    assert ESPEAK_VOICE == "en-us+klatt4"


def test_recognise_wav_is_exact_for_every_question(question_wavs: dict[str, Path]) -> None:
    assert {text: recognise_wav(path) for text, path in question_wavs.items()} == {t: t for t in question_wavs}


def test_recognise_wav_rejects_other_formats(tmp_path: Path) -> None:
    import wave

    path = tmp_path / "stereo.wav"
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(2)
        wav.setsampwidth(2)
        wav.setframerate(16000)
        wav.writeframes(bytes(6400))
    with pytest.raises(ValueError, match="mono"):
        recognise_wav(path)


async def test_end_to_end_over_websocket_every_question_is_exact(
    stub: FunAsrStub, question_wavs: dict[str, Path]
) -> None:
    await stub.warm_up()
    settings = client_settings(stub.url)
    heard = {}
    for text, path in question_wavs.items():
        heard[text] = (await recognise_over_websocket(settings, read_wav_pcm(path))).text
    assert heard == {text: text for text in question_wavs}
    assert all(s.violations == [] for s in stub.sessions)


async def test_two_clients_at_once_are_both_served(stub: FunAsrStub, question_wavs: dict[str, Path]) -> None:
    """Decoding runs off the event loop, so sessions overlap (like the C++ and 2026 servers)."""
    settings = client_settings(stub.url)
    first, second = "turn on the kitchen light", "please move forward two meters"
    heard = await asyncio.gather(
        recognise_over_websocket(settings, read_wav_pcm(question_wavs[first])),
        recognise_over_websocket(settings, read_wav_pcm(question_wavs[second])),
    )
    assert [t.text for t in heard] == [first, second]


async def test_paced_realtime_session_is_exact(stub: FunAsrStub, question_wavs: dict[str, Path]) -> None:
    """The way the daemon sends: 600 ms burst, then real time (this takes about one second)."""
    question = "who are you"
    settings = client_settings(stub.url, burst_ms=600, flavour="python-classic")
    stub.behaviour = FunAsrBehaviour(flavour="python-classic")
    assert await recognise_over_websocket(settings, read_wav_pcm(question_wavs[question])) == Transcript(question)


# -- each flavour's quirks on the wire -------------------------------------------------------


async def test_cpp_2pass_on_the_wire(stub: FunAsrStub, question_wavs: dict[str, Path]) -> None:
    question = "what is the weather like today"
    text = await recognise_over_websocket(client_settings(stub.url), read_wav_pcm(question_wavs[question]))
    assert text.text == question
    sent = results(await last_session(stub))
    partials, final = sent[:-1], sent[-1]
    assert partials and all(m["mode"] == "2pass-online" and m["is_final"] is False for m in partials)
    assert "".join(m["text"] for m in partials) == question  # incremental deltas, not cumulative
    assert len(partials) >= 2
    assert final == {"mode": "2pass-offline", "text": question, "wav_name": "q", "is_final": True}


async def test_cpp_2pass_empty_flush_has_no_mode(stub: FunAsrStub) -> None:
    stub.behaviour = FunAsrBehaviour(flavour="cpp-2pass", transcript_override="")
    assert await recognise_over_websocket(
        client_settings(stub.url, final_timeout_s=5.0), bytes(FRAME * 5)
    ) == Transcript("")
    assert results(await last_session(stub)) == [{"text": "", "wav_name": "q", "is_final": True}]


async def test_cpp_2pass_labels_results_2pass_even_for_offline_mode(stub: FunAsrStub) -> None:
    stub.behaviour = FunAsrBehaviour(flavour="cpp-2pass", transcript_override="你好。")
    settings = client_settings(stub.url, mode="offline")
    assert await recognise_over_websocket(settings, bytes(FRAME * 5)) == Transcript("你好。")
    assert results(await last_session(stub))[-1]["mode"] == "2pass-offline"


async def test_cpp_offline_on_the_wire(stub: FunAsrStub, question_wavs: dict[str, Path]) -> None:
    question = "tell me a joke"
    stub.behaviour = FunAsrBehaviour(flavour="cpp-offline")
    settings = client_settings(stub.url, flavour="cpp-offline", mode="offline")
    assert (await recognise_over_websocket(settings, read_wav_pcm(question_wavs[question]))).text == question
    assert results(await last_session(stub)) == [
        {"mode": "offline", "text": question, "wav_name": "q", "is_final": False}
    ]


async def test_python_classic_on_the_wire(stub: FunAsrStub, question_wavs: dict[str, Path]) -> None:
    question = "please move forward two meters"
    stub.behaviour = FunAsrBehaviour(flavour="python-classic")
    settings = client_settings(stub.url, flavour="python-classic", final_timeout_s=5.0)
    assert (await recognise_over_websocket(settings, read_wav_pcm(question_wavs[question]))).text == question
    sent = results(await last_session(stub))
    assert all(m["mode"] == "2pass-online" and m["is_final"] is True for m in sent[:-1])  # inverted quirk
    assert sent[-1] == {"mode": "2pass-offline", "text": question, "wav_name": "q", "is_final": False}


async def test_python_classic_flush_with_empty_text_is_silent(stub: FunAsrStub) -> None:
    stub.behaviour = FunAsrBehaviour(flavour="python-classic")
    settings = client_settings(stub.url, flavour="python-classic", final_timeout_s=0.3)
    assert await recognise_over_websocket(settings, bytes(FRAME * 3)) == Transcript(
        "", answered=False
    )  # 180 ms of silence, no final
    session = await last_session(stub)
    assert session.recognised == "" and session.sent == []


async def test_python_2026_on_the_wire(stub: FunAsrStub, question_wavs: dict[str, Path]) -> None:
    question = "hello robot what time is it"
    stub.behaviour = FunAsrBehaviour(flavour="python-2026")
    settings = client_settings(stub.url, flavour="python-2026", final_timeout_s=5.0)
    assert (await recognise_over_websocket(settings, read_wav_pcm(question_wavs[question]))).text == question
    sent = results(await last_session(stub))
    assert all(m["mode"] == "2pass-online" and m["is_final"] is False for m in sent[:-2])
    assert sent[-2] == {
        "mode": "2pass-offline",
        "text": question,
        "wav_name": "q",
        "is_final": True,
        "spk_name": "unknown",
    }
    assert sent[-1] == {"mode": "2pass", "wav_name": "q", "is_final": True, "is_end": True}  # no text key


async def test_python_2026_sends_no_ack_without_is_end(stub: FunAsrStub) -> None:
    stub.behaviour = FunAsrBehaviour(flavour="python-2026", transcript_override="好")
    async with connect(stub.url, subprotocols=["binary"], ping_interval=None) as ws:  # type: ignore[list-item]
        await ws.send(json.dumps(build_config_message(AsrSettings(wav_name="q"))))
        await ws.send(bytes(FRAME))
        await ws.send(json.dumps({"is_speaking": False}))
        assert json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))["text"] == "好"
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(ws.recv(), 0.3)


async def test_override_partials_are_character_deltas_with_unicode_escapes(stub: FunAsrStub) -> None:
    stub.behaviour = FunAsrBehaviour(flavour="python-2026", transcript_override="今天天气", partial_every_frames=2)
    async with connect(stub.url, subprotocols=["binary"], ping_interval=None) as ws:  # type: ignore[list-item]
        await ws.send(json.dumps(build_config_message(AsrSettings(wav_name="q"))))
        for _ in range(4):
            await ws.send(bytes(FRAME))
        raw = [await asyncio.wait_for(ws.recv(), TIMEOUT) for _ in range(2)]
    assert all("\\u" in r for r in raw)  # ensure_ascii, like the classic server's json.dumps
    assert [json.loads(r)["text"] for r in raw] == ["今", "天"]


# -- checks on the client --------------------------------------------------------------------


async def raw_session(stub: FunAsrStub, *frames: str | bytes) -> StubSession:
    """Send frames as given with a bare websocket client; return what the stub recorded."""
    async with connect(stub.url, ping_interval=None) as ws:
        for frame in frames:
            await ws.send(frame)
        await asyncio.sleep(0.05)
    return await last_session(stub)


async def test_missing_chunk_size_is_a_violation_and_the_session_is_closed(stub: FunAsrStub) -> None:
    config = build_config_message(AsrSettings())
    del config["chunk_size"]
    async with connect(stub.url, ping_interval=None) as ws:
        await ws.send(json.dumps(config))
        await asyncio.wait_for(ws.wait_closed(), TIMEOUT)
        assert ws.close_code == 1000  # like the classic server: closed with no result
    session = await last_session(stub)
    assert session.violations == ["chunk_size must be a JSON array of 3 ints, got None"]


@pytest.mark.parametrize("chunk_size", ["5,10,5", [5, 10], [5, 0, 5], [5.0, 10, 5]])
async def test_chunk_size_must_be_an_array_of_3_ints(stub: FunAsrStub, chunk_size: object) -> None:
    config = build_config_message(AsrSettings()) | {"chunk_size": chunk_size}
    session = await raw_session(stub, json.dumps(config))
    assert len(session.violations) == 1 and "chunk_size" in session.violations[0]


async def test_audio_before_the_config_is_a_violation(stub: FunAsrStub) -> None:
    session = await raw_session(stub, bytes(FRAME))
    assert session.violations == ["binary frame before the configuration message"]
    assert session.config is None


async def test_is_speaking_must_be_true_in_the_config(stub: FunAsrStub) -> None:
    config = build_config_message(AsrSettings())
    del config["is_speaking"]
    session = await raw_session(stub, json.dumps(config))
    assert session.violations and "is_speaking" in session.violations[0]


async def test_wrong_frame_sizes_and_field_types_are_recorded(stub: FunAsrStub) -> None:
    stub.behaviour = FunAsrBehaviour(flavour="cpp-2pass", transcript_override="x")
    config = build_config_message(AsrSettings()) | {"hotwords": {"a": 1}, "wav_format": "wav"}
    end = json.dumps({"is_speaking": False})
    session = await raw_session(stub, json.dumps(config), bytes(FRAME), bytes(1000), bytes(FRAME), bytes(7), end)
    assert session.frame_sizes == [FRAME, 1000, FRAME, 7]
    assert session.violations == [
        "wav_format should be pcm, got 'wav'",
        "hotwords must be a JSON string (the C++ server throws on an object)",
        "frame 3 has an odd length (7 bytes)",
        "frame 1 has 1000 bytes, expected 1920",
    ]


async def test_free_text_after_the_config_is_a_violation(stub: FunAsrStub) -> None:
    config = json.dumps(build_config_message(AsrSettings()))
    session = await raw_session(stub, config, "hello")
    assert session.violations == ["text frame is not JSON: 'hello'"]


async def test_behaviour_can_be_swapped_between_sessions(stub: FunAsrStub) -> None:
    stub.behaviour = FunAsrBehaviour(flavour="cpp-2pass", transcript_override="一")
    assert (await recognise_over_websocket(client_settings(stub.url), bytes(FRAME))).text == "一"
    stub.behaviour = FunAsrBehaviour(flavour="cpp-offline", transcript_override="二")
    settings = client_settings(stub.url, flavour="cpp-offline")
    assert (await recognise_over_websocket(settings, bytes(FRAME))).text == "二"
    assert len(stub.sessions) == 2


async def test_refuse_and_url_and_port() -> None:
    async with FunAsrStub(behaviour=FunAsrBehaviour(misbehave="refuse")) as server:
        assert server.port > 0 and server.url == f"ws://127.0.0.1:{server.port}"
        with pytest.raises(Exception, match="HTTP 503"):
            async with connect(server.url, ping_interval=None):
                pass
        assert server.handshakes_refused == 1


def test_behaviour_validates_its_fields() -> None:
    with pytest.raises(ValueError, match="flavour"):
        FunAsrBehaviour(flavour="java")
    with pytest.raises(ValueError, match="misbehaviour"):
        FunAsrBehaviour(misbehave="explode")
