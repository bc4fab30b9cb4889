"""FunAsrClient against the real FunASR stand-in on 127.0.0.1: the cases of docs/protocols.md "FunASR: tested cases"."""

from __future__ import annotations

import asyncio
import inspect
import json
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from daemon.clients.asr import FunAsrClient, FunAsrSession, build_config_message
from daemon.clients.tidying import Tidying
from daemon.config import AsrSettings
from daemon.errors import AsrError, AsrTimeout
from daemon.tools.stubs.funasr import FunAsrBehaviour, FunAsrStub, ScriptStep
from daemon.tools.stubs.questions import make_question_wav, read_wav_pcm
from states.events import Transcript
from states.ports import AsrClient, AsrSession

TIMEOUT = 10.0
FRAME = 1920
SILENCE_1S = bytes(32000)


def settings_for(url: str, **overrides: Any) -> AsrSettings:
    base = AsrSettings(url=url, final_timeout_s=TIMEOUT, connect_timeout_s=2.0, burst_ms=60_000, wav_name="x")
    return replace(base, **overrides)


@pytest.fixture
async def stub() -> AsyncIterator[FunAsrStub]:
    async with FunAsrStub(behaviour=FunAsrBehaviour(flavour="cpp-2pass", transcript_override="")) as server:
        yield server


async def run_utterance(settings: AsrSettings, pcm: bytes = SILENCE_1S, *, pieces: int = 1) -> Transcript:
    """One whole session: connect, send ``pcm`` in ``pieces`` calls, finish."""
    session = await asyncio.wait_for(FunAsrClient(settings).open_session(), TIMEOUT)
    try:
        step = -(-len(pcm) // pieces)
        for start in range(0, len(pcm), step):
            await session.send_audio(pcm[start : start + step])
        return await asyncio.wait_for(session.finish(), TIMEOUT)
    finally:
        await session.aclose()


async def session_done(stub: FunAsrStub) -> None:
    await asyncio.wait_for(stub.sessions[-1].done.wait(), TIMEOUT)


def msg(text: str, mode: str | None = "2pass-online", *, is_final: bool = False, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {} if mode is None else {"mode": mode}
    out.update(text=text, wav_name="x", is_final=is_final, **extra)
    return out


CPP_FLUSH = msg("", None, is_final=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- 1. handshake and config ----------------------------------------------------------------


@pytest.mark.parametrize(("cls", "port"), [(FunAsrClient, AsrClient), (FunAsrSession, AsrSession)])
def test_client_and_session_have_the_port_coroutines(cls: type, port: type) -> None:
    members = [name for name in vars(port) if not name.startswith("_")]
    assert members
    for name in members:
        assert inspect.iscoroutinefunction(getattr(cls, name)), f"{cls.__name__}.{name}"


async def test_first_frame_is_the_exact_config_message_with_binary_subprotocol(stub: FunAsrStub) -> None:
    settings = settings_for(stub.url, hotwords={"小明": 20})
    await run_utterance(settings)
    await session_done(stub)
    seen = stub.sessions[-1]
    assert seen.subprotocol == "binary"
    assert seen.violations == []
    first = json.loads(seen.text_frames[0])
    assert first == {
        "mode": "2pass",
        "chunk_size": [5, 10, 5],
        "chunk_interval": 10,
        "encoder_chunk_look_back": 4,
        "decoder_chunk_look_back": 0,
        "wav_name": "x",
        "wav_format": "pcm",
        "audio_fs": 16000,
        "is_speaking": True,
        "hotwords": '{"小明": 20}',
        "itn": True,
    }
    assert json.loads(first["hotwords"]) == {"小明": 20}  # a string holding JSON
    assert seen.end_marker == {"is_speaking": False, "is_end": True}


def test_empty_hotwords_are_an_empty_string() -> None:
    assert build_config_message(AsrSettings())["hotwords"] == ""


async def test_handshake_without_subprotocol(stub: FunAsrStub) -> None:
    await run_utterance(settings_for(stub.url, offer_binary_subprotocol=False))
    await session_done(stub)
    assert stub.sessions[-1].subprotocol is None
    assert stub.sessions[-1].violations == []
    assert stub.sessions[-1].config is not None


# -- 2. frame size and pacing ----------------------------------------------------------------


async def test_every_frame_is_1920_bytes_but_the_last_which_is_even(stub: FunAsrStub) -> None:
    pcm = bytes(range(256)) * 101  # 25856 bytes in odd pieces: not a multiple of 1920
    session = await asyncio.wait_for(FunAsrClient(settings_for(stub.url)).open_session(), TIMEOUT)
    for size in (1, 999, 3001, 5000, 7777):
        pcm_piece, pcm = pcm[:size], pcm[size:]
        await session.send_audio(pcm_piece)
    await session.send_audio(pcm)
    await asyncio.wait_for(session.finish(), TIMEOUT)
    await session_done(stub)
    sizes = stub.sessions[-1].frame_sizes
    assert sizes[:-1] == [FRAME] * (len(sizes) - 1)
    assert 0 < sizes[-1] <= FRAME and sizes[-1] % 2 == 0
    assert sum(sizes) == 25856  # nothing lost (the total is even)
    assert stub.sessions[-1].violations == []


async def test_an_odd_trailing_byte_is_dropped(stub: FunAsrStub) -> None:
    await run_utterance(settings_for(stub.url), bytes(FRAME * 2 + 3))
    await session_done(stub)
    assert stub.sessions[-1].frame_sizes == [FRAME, FRAME, 2]


async def test_audio_is_paced_at_real_time_after_the_burst(stub: FunAsrStub) -> None:
    """1.2 s of audio with a 0.3 s burst allowance cannot reach the server in under ~0.8 s."""
    settings = settings_for(stub.url, burst_ms=300)
    session = await asyncio.wait_for(FunAsrClient(settings).open_session(), TIMEOUT)
    started = time.monotonic()
    await session.send_audio(bytes(FRAME * 20))  # 20 frames = 1.2 s
    assert time.monotonic() - started < 0.5, "send_audio must not block while the sender paces"
    await asyncio.wait_for(session.finish(), TIMEOUT)
    assert time.monotonic() - started >= 19 * 0.06 - 0.3 - 0.05
    await session_done(stub)
    assert stub.sessions[-1].frame_sizes == [FRAME] * 20


async def test_audio_sent_at_once_is_not_paced_and_live_audio_after_it_is(tmp_path: Path) -> None:
    """An utterance heard again after a pause: 4 s of kept audio (silence and the first half of a
    question) go at once, then the rest comes live and is paced from then on; the stand-in
    recognises the whole question, so every byte arrived in order."""
    question = read_wav_pcm(make_question_wav("what is the weather like today", tmp_path / "q.wav"))
    half = len(question) // 4 * 2
    kept = bytes(4 * 32000) + question[:half]
    live = question[half:] + bytes(16000)
    async with FunAsrStub(behaviour=FunAsrBehaviour(flavour="cpp-2pass")) as server:
        await server.warm_up()
        session = await asyncio.wait_for(FunAsrClient(settings_for(server.url, burst_ms=1)).open_session(), TIMEOUT)
        started = time.monotonic()
        await session.send_audio(kept, at_once=True)
        await session.send_audio(live)
        transcript = await asyncio.wait_for(session.finish(), TIMEOUT)
        elapsed = time.monotonic() - started
        await session_done(server)
    live_s = len(live) / 32000
    assert transcript == Transcript("what is the weather like today")
    assert server.sessions[-1].audio == kept + live
    assert server.sessions[-1].violations == []
    assert elapsed >= live_s - 2 * 0.06, "the live audio after the kept audio is still paced"
    assert elapsed < live_s + 2.0, "the kept audio (4 s) must not be paced"


# -- 3./4. partial accumulation and segments -----------------------------------------------


async def test_partial_deltas_are_replaced_by_the_offline_text(stub: FunAsrStub) -> None:
    stub.behaviour = FunAsrBehaviour(
        flavour="cpp-2pass",
        script=[
            ScriptStep(msg("你"), after_frames=2),
            ScriptStep(msg("好"), after_frames=4),
            ScriptStep(msg("你好。", "2pass-offline"), after_frames=6),
            ScriptStep(CPP_FLUSH, after_end=True),
        ],
    )
    assert await run_utterance(settings_for(stub.url), bytes(FRAME * 8)) == Transcript("你好。")


async def test_two_offline_segments_are_concatenated(stub: FunAsrStub) -> None:
    stub.behaviour = FunAsrBehaviour(
        flavour="cpp-2pass",
        script=[
            ScriptStep(msg("打开"), after_frames=1),
            ScriptStep(msg("打开灯。", "2pass-offline"), after_frames=3),
            ScriptStep(msg("谢谢"), after_frames=5),
            ScriptStep(msg("谢谢。", "2pass-offline"), after_frames=7),
            ScriptStep(CPP_FLUSH, after_end=True),
        ],
    )
    assert await run_utterance(settings_for(stub.url), bytes(FRAME * 8)) == Transcript("打开灯。谢谢。")


# -- 5./6./7. the end of the utterance per flavour -----------------------------------------


async def test_cpp_flush_reply_without_mode_ends_at_once(stub: FunAsrStub) -> None:
    stub.behaviour = FunAsrBehaviour(
        flavour="cpp-2pass",
        script=[ScriptStep(msg("打开灯。", "2pass-offline"), after_frames=2), ScriptStep(CPP_FLUSH, after_end=True)],
    )
    started = time.monotonic()
    with capture_logs() as logs:
        text = await run_utterance(settings_for(stub.url, final_timeout_s=10.0), bytes(FRAME * 4))
    assert text == Transcript("打开灯。")
    assert time.monotonic() - started < 5.0  # far below the 10 s quiet timeout
    final = [e for e in logs if e["event"] == "asr_final"]
    assert final and final[0]["text"] == "打开灯。" and final[0]["explicit"] is True and final[0]["ms"] >= 0
    assert next(e for e in logs if e["event"] == "asr_connected")["url"] == stub.url


async def test_silent_flush_finishes_within_the_quiet_timeout(stub: FunAsrStub) -> None:
    stub.behaviour = FunAsrBehaviour(
        flavour="python-classic",
        script=[
            ScriptStep(msg("打开", is_final=True), after_frames=1),
            ScriptStep(msg("打开灯。", "2pass-offline", is_final=True), after_frames=3),
        ],  # and nothing after the end marker
    )
    started = time.monotonic()
    with capture_logs() as logs:
        text = await run_utterance(
            settings_for(stub.url, flavour="python-classic", final_timeout_s=0.5), bytes(FRAME * 4)
        )
    assert text == Transcript("打开灯。", answered=False)  # no final: the text is what came
    assert time.monotonic() - started < 3.0
    assert any(e["event"] == "asr_no_final" and e["reason"] == "quiet_timeout" for e in logs)


async def test_silent_flush_of_the_automatic_classic_stub(stub: FunAsrStub) -> None:
    stub.behaviour = FunAsrBehaviour(flavour="python-classic", transcript_override="打开灯", silent_flush=True)
    started = time.monotonic()
    text = await run_utterance(settings_for(stub.url, flavour="python-classic", final_timeout_s=0.5), bytes(FRAME * 30))
    assert text == Transcript("打开灯", answered=False)  # from the online deltas
    assert time.monotonic() - started < 3.0


async def test_inverted_is_final_does_not_end_the_utterance(stub: FunAsrStub) -> None:
    stub.behaviour = FunAsrBehaviour(
        flavour="python-classic",
        script=[
            ScriptStep(msg("打开", is_final=True), after_frames=2),
            # a streaming segment result that arrives after the end marker, then the flush result
            ScriptStep(msg("打开灯", "2pass-offline", is_final=True), after_end=True, delay_s=0.1),
            ScriptStep(msg("。谢谢。", "2pass-offline", is_final=False), after_end=True, delay_s=0.2),
        ],
    )
    settings = settings_for(stub.url, flavour="python-classic", final_timeout_s=3.0)
    started = time.monotonic()
    assert await run_utterance(settings, bytes(FRAME * 4)) == Transcript("打开灯。谢谢。")
    assert time.monotonic() - started < 2.5  # ended on the flush result, not on the 3 s timeout


async def test_python_2026_ends_on_the_is_end_acknowledgement(stub: FunAsrStub) -> None:
    stub.behaviour = FunAsrBehaviour(flavour="python-2026", transcript_override="今天天气怎么样？")
    settings = settings_for(stub.url, flavour="python-2026", final_timeout_s=10.0)
    started = time.monotonic()
    assert await run_utterance(settings, bytes(FRAME * 25)) == Transcript("今天天气怎么样？")
    assert time.monotonic() - started < 5.0
    await session_done(stub)
    assert stub.sessions[-1].sent[-1] == {"mode": "2pass", "wav_name": "x", "is_final": True, "is_end": True}


async def test_cpp_offline_ends_on_its_single_offline_result(stub: FunAsrStub) -> None:
    stub.behaviour = FunAsrBehaviour(flavour="cpp-offline", transcript_override="你好。")
    settings = settings_for(stub.url, flavour="cpp-offline", final_timeout_s=10.0)
    started = time.monotonic()
    assert await run_utterance(settings, bytes(FRAME * 12)) == Transcript("你好。")
    assert time.monotonic() - started < 5.0


async def test_a_server_that_keeps_talking_is_cut_by_the_hard_cap(stub: FunAsrStub) -> None:
    steps = [ScriptStep(msg("嗯"), after_end=True, delay_s=0.15) for _ in range(60)]  # 9 s of chatter, never final
    stub.behaviour = FunAsrBehaviour(flavour="cpp-2pass", script=steps)
    started = time.monotonic()
    with capture_logs() as logs:
        text = await run_utterance(settings_for(stub.url, final_timeout_s=0.25), bytes(FRAME * 2))
    elapsed = time.monotonic() - started
    assert 0.9 < elapsed < 4.0  # quiet period kept extending; the hard cap (4*0.25+1 s) ended it
    assert text.text.startswith("嗯嗯")
    assert any(e["event"] == "asr_no_final" and e["reason"] == "hard_cap" for e in logs)


# -- 8. tolerance --------------------------------------------------------------------------


@pytest.mark.parametrize("timestamp", ["[[100,200],[200,500]]", 1718000000123, [[100, 200]]])
async def test_timestamps_of_any_type_and_unknown_keys_are_ignored(stub: FunAsrStub, timestamp: object) -> None:
    stub.behaviour = FunAsrBehaviour(
        flavour="cpp-2pass",
        transcript_override="打开厨房的灯。",
        partial_every_frames=2,
        extra_fields={"timestamp": timestamp, "spk_name": "unknown", "slice_type": 2, "stamp_sents": ""},
    )
    assert await run_utterance(settings_for(stub.url), bytes(FRAME * 10)) == Transcript("打开厨房的灯。")
    await session_done(stub)
    assert all(m["timestamp"] == timestamp for m in stub.sessions[-1].sent if isinstance(m, dict))


# -- 9. connection lifecycle ---------------------------------------------------------------


async def test_client_closes_with_a_normal_close_frame_after_the_final(stub: FunAsrStub) -> None:
    await run_utterance(settings_for(stub.url))
    await session_done(stub)
    assert stub.sessions[-1].client_close_code == 1000


@pytest.mark.parametrize("close_code", [None, 1000, 1011])
async def test_server_closing_mid_utterance_is_an_error_and_the_next_session_works(
    stub: FunAsrStub, close_code: int | None
) -> None:
    stub.behaviour = FunAsrBehaviour(flavour="cpp-2pass", misbehave="close_mid_utterance", close_code=close_code)
    # A quiet period long enough for a loaded machine: the stub closes after reading 5 frames, which
    # can come later than 0.5 s after the end marker (the close ends the wait anyway).
    settings = settings_for(stub.url, final_timeout_s=TIMEOUT)
    with pytest.raises(AsrError, match=r"closed the connection .* before the final result") as info:
        await run_utterance(settings, bytes(FRAME * 10), pieces=5)
    assert stub.url in str(info.value)
    if close_code is not None:
        assert f"code {close_code}" in str(info.value)

    stub.behaviour = FunAsrBehaviour(flavour="cpp-2pass", transcript_override="好的。")
    assert await run_utterance(settings, bytes(FRAME * 10)) == Transcript("好的。")


async def test_a_close_the_client_made_is_not_blamed_on_the_server(stub: FunAsrStub) -> None:
    """Invalid UTF-8 in a text frame: websockets closes with 1007. The error says who closed, and why."""
    stub.behaviour = FunAsrBehaviour(script=[ScriptStep(b'{"text": "\xff\xfe"}', after_frames=0, as_text=True)])
    with pytest.raises(AsrError) as info:
        await run_utterance(settings_for(stub.url), bytes(FRAME * 10), pieces=5)
    message = str(info.value)
    assert message.startswith("moss-voice closed the connection to ASR server")
    assert "code 1007" in message and "broke the websocket protocol" in message


async def test_send_audio_raises_once_the_session_failed(stub: FunAsrStub) -> None:
    stub.behaviour = FunAsrBehaviour(flavour="cpp-2pass", misbehave="close_mid_utterance", misbehave_after_frames=1)
    session = await asyncio.wait_for(FunAsrClient(settings_for(stub.url)).open_session(), TIMEOUT)
    try:
        await session.send_audio(bytes(FRAME * 3))
        with pytest.raises(AsrError, match="before the final result"):
            for _ in range(100):
                await asyncio.sleep(0.05)
                await session.send_audio(bytes(FRAME))
        with pytest.raises(AsrError):
            await session.finish()
    finally:
        await session.aclose()


async def test_classic_session_error_close_1000_without_result_is_an_error(stub: FunAsrStub) -> None:
    stub.behaviour = FunAsrBehaviour(flavour="python-classic", misbehave="error")
    with pytest.raises(AsrError, match="code 1000"):
        await run_utterance(settings_for(stub.url, flavour="python-classic", final_timeout_s=3.0))


async def test_finish_is_idempotent_and_aclose_without_finish_closes_cleanly(stub: FunAsrStub) -> None:
    stub.behaviour = FunAsrBehaviour(flavour="cpp-2pass", transcript_override="好。")
    session = await asyncio.wait_for(FunAsrClient(settings_for(stub.url)).open_session(), TIMEOUT)
    await session.send_audio(bytes(FRAME * 3))
    first = await asyncio.wait_for(session.finish(), TIMEOUT)
    assert await session.finish() is first
    with pytest.raises(AsrError, match="finished"):
        await session.send_audio(bytes(FRAME))
    await session.aclose()

    session = await asyncio.wait_for(FunAsrClient(settings_for(stub.url)).open_session(), TIMEOUT)
    await session.send_audio(bytes(FRAME * 3))
    await asyncio.wait_for(session.aclose(), TIMEOUT)  # barge-in: abandon the utterance
    await asyncio.wait_for(session.aclose(), TIMEOUT)
    await session_done(stub)
    assert stub.sessions[-1].client_close_code == 1000
    assert stub.sessions[-1].end_marker is None


async def test_the_close_handshake_is_left_to_the_background_so_the_answer_is_not_held_up(stub: FunAsrStub) -> None:
    """A busy server answers the close frame late; the transcript must not wait for it."""
    stub.behaviour = FunAsrBehaviour(flavour="cpp-2pass", transcript_override="好。", busy_after_final_s=0.5)
    tidying = Tidying()
    session = await asyncio.wait_for(FunAsrClient(settings_for(stub.url), tidying=tidying).open_session(), TIMEOUT)
    await session.send_audio(bytes(FRAME * 3))
    transcript = await asyncio.wait_for(session.finish(), TIMEOUT)
    assert transcript.text == "好。"
    assert tidying.pending == 1  # the handshake is still owed: finish() did not wait for it
    assert not stub.sessions[-1].done.is_set()
    await asyncio.wait_for(tidying.wait(), TIMEOUT)
    await session_done(stub)
    assert stub.sessions[-1].client_close_code == 1000  # still a clean close, only later


# -- server errors and garbage -------------------------------------------------------------


async def test_garbage_is_an_asr_error(stub: FunAsrStub) -> None:
    stub.behaviour = FunAsrBehaviour(flavour="cpp-2pass", misbehave="garbage", misbehave_after_frames=2)
    with pytest.raises(AsrError, match="malformed JSON") as info:
        await run_utterance(settings_for(stub.url), bytes(FRAME * 4))
    assert stub.url in str(info.value)


@pytest.mark.parametrize(
    ("message", "match"),
    [
        ("[1, 2]", "JSON list instead of an object"),
        ('"text"', "JSON str instead of an object"),
        (b"\x00\x01", "binary frame"),
        (json.dumps({"mode": "2pass-online", "text": 42}), "'text' should be a string"),
    ],
)
async def test_non_object_or_wrongly_typed_results_are_asr_errors(
    stub: FunAsrStub, message: str | bytes, match: str
) -> None:
    stub.behaviour = FunAsrBehaviour(flavour="cpp-2pass", script=[ScriptStep(message, after_frames=1)])
    with pytest.raises(AsrError, match=match):
        await run_utterance(settings_for(stub.url), bytes(FRAME * 3))


@pytest.mark.parametrize(
    ("flavour", "match"),
    [("cpp-2pass", "ONLY SUPPORT PCM"), ("python-2026", "stub: inference failed")],
)
async def test_server_reported_errors_are_asr_errors(stub: FunAsrStub, flavour: str, match: str) -> None:
    stub.behaviour = FunAsrBehaviour(flavour=flavour, transcript_override="x", misbehave="error")
    with pytest.raises(AsrError, match=match):
        await run_utterance(settings_for(stub.url, flavour=flavour, final_timeout_s=3.0))


async def test_mute_server_gives_an_empty_transcript_after_the_quiet_timeout(stub: FunAsrStub) -> None:
    stub.behaviour = FunAsrBehaviour(flavour="cpp-2pass", transcript_override="x", misbehave="mute")
    started = time.monotonic()
    assert await run_utterance(settings_for(stub.url, final_timeout_s=0.3)) == Transcript("", answered=False)
    assert time.monotonic() - started < 3.0


# -- connection failures -------------------------------------------------------------------


async def test_refused_connection_names_the_url() -> None:
    url = f"ws://127.0.0.1:{free_port()}"
    with pytest.raises(AsrError, match="refused") as info:
        await asyncio.wait_for(FunAsrClient(settings_for(url)).open_session(), TIMEOUT)
    assert url in str(info.value)


async def test_handshake_rejected_by_http_status(stub: FunAsrStub) -> None:
    stub.behaviour = FunAsrBehaviour(misbehave="refuse")
    with pytest.raises(AsrError, match="HTTP 503"):
        await asyncio.wait_for(FunAsrClient(settings_for(stub.url)).open_session(), TIMEOUT)


async def test_hanging_handshake_times_out_within_the_connect_timeout(stub: FunAsrStub) -> None:
    stub.behaviour = FunAsrBehaviour(misbehave="hang")
    started = time.monotonic()
    with pytest.raises(AsrTimeout, match=r"within 0\.5 s") as info:
        await asyncio.wait_for(FunAsrClient(settings_for(stub.url, connect_timeout_s=0.5)).open_session(), TIMEOUT)
    assert time.monotonic() - started < 3.0
    assert stub.url in str(info.value)


def test_unsupported_scheme_is_refused_by_the_settings() -> None:
    with pytest.raises(ValueError, match="ws:// or wss://"):
        settings_for("http://127.0.0.1:1")


# -- 10. TLS -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, like FunASR's runtime/ssl_key/server.crt."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "server.crt", folder / "server.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    return cert, key


@pytest.fixture
async def tls_stub(certificate: tuple[Path, Path]) -> AsyncIterator[FunAsrStub]:
    cert, key = certificate
    behaviour = FunAsrBehaviour(flavour="cpp-2pass", transcript_override="你好。")
    async with FunAsrStub(behaviour=behaviour, certfile=cert, keyfile=key) as server:
        yield server


async def test_wss_with_verification_off(tls_stub: FunAsrStub) -> None:
    assert tls_stub.url.startswith("wss://127.0.0.1:")
    assert await run_utterance(settings_for(tls_stub.url, tls_verify=False)) == Transcript("你好。")


async def test_wss_with_the_certificate_pinned_as_ca(tls_stub: FunAsrStub, certificate: tuple[Path, Path]) -> None:
    settings = settings_for(tls_stub.url, ca_file=str(certificate[0]))
    assert await run_utterance(settings) == Transcript("你好。")


async def test_wss_with_verification_on_fails_with_a_clear_error(tls_stub: FunAsrStub) -> None:
    with pytest.raises(AsrError, match=r"not trusted.*tls_verify = false") as info:
        await asyncio.wait_for(FunAsrClient(settings_for(tls_stub.url)).open_session(), TIMEOUT)
    assert tls_stub.url in str(info.value)


async def test_missing_ca_file_is_an_asr_error(tls_stub: FunAsrStub, tmp_path: Path) -> None:
    with pytest.raises(AsrError, match="CA file"):
        await FunAsrClient(settings_for(tls_stub.url, ca_file=str(tmp_path / "nope.crt"))).open_session()


async def test_ws_client_on_a_wss_port_fails_quickly_suggesting_wss(tls_stub: FunAsrStub) -> None:
    url = tls_stub.url.replace("wss://", "ws://")
    started = time.monotonic()
    with pytest.raises(AsrError, match="use wss://") as info:
        await asyncio.wait_for(FunAsrClient(settings_for(url, connect_timeout_s=1.0)).open_session(), TIMEOUT)
    assert time.monotonic() - started < 3.0
    assert url in str(info.value)


async def test_wss_client_on_a_plain_port_fails_suggesting_ws(stub: FunAsrStub) -> None:
    url = stub.url.replace("ws://", "wss://")
    started = time.monotonic()
    with pytest.raises(AsrError, match="use ws://") as info:
        await asyncio.wait_for(
            FunAsrClient(settings_for(url, tls_verify=False, connect_timeout_s=1.0)).open_session(), TIMEOUT
        )
    assert time.monotonic() - started < 3.0
    assert url in str(info.value)
