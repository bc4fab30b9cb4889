"""Deadlines per stage and caps on what a server sends (issue 11, "Turns that never end", "Unbounded
input"): servers that keep the connection alive without ever finishing must hit a deadline that
names its stage and its configuration key, not reset a per-read timeout."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import socket
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
from structlog.testing import capture_logs

from daemon.app import EXIT_ANSWERED, EXIT_FAILED
from daemon.clients.asr import FunAsrClient
from daemon.clients.asr_text import TranscriptAssembler
from daemon.clients.llm import LlmStream, OpenAiCompatibleLlm
from daemon.clients.tts import PaddleSpeechHttpTts, PaddleSpeechWsTts
from daemon.config import AsrSettings, LlmSettings, TtsSettings
from daemon.errors import AsrError, LlmError, LlmTimeout, TtsError, TtsTimeout
from daemon.logs import MAX_FIELD_CHARS, configure_logging
from daemon.tools.stubs.funasr import FunAsrBehaviour, FunAsrStub
from daemon.tools.stubs.openai import OpenAiBehaviour, OpenAiStub
from daemon.tools.stubs.paddlespeech import PaddleSpeechBehaviour, PaddleSpeechStub
from daemon.tools.stubs.runner import demo_llm_behaviour, start_stubs
from states.answer import answer_question
from states.events import ChatMessage, TurnTimes
from states.history import Conversation
from states.ports import TtsClient
from states.reply import ReplyTimeout, speak_reply
from states.speech_text import SpeechText, SpeechTextSettings
from states.turn import Turn
from tests.fakes import FakeLlm, FakeSpeaker, FakeTts
from tests.test_daemon_turn import events, question_wav, run_once, settings_for

T = 5.0  # generous bound on anything that could hang
QUESTION = [ChatMessage("user", "你好")]


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(trust_env=False) as client:
        yield client


def llm_settings(url: str, **overrides: Any) -> LlmSettings:
    values: dict[str, Any] = {
        "url": url,
        "connect_timeout_s": 2.0,
        "first_token_timeout_s": 5.0,
        "read_timeout_s": 5.0,
        "reply_timeout_s": 5.0,
    }
    return LlmSettings(**{**values, **overrides})


async def llm_collect(llm: OpenAiCompatibleLlm) -> tuple[list[str], LlmStream | None, LlmError | None]:
    """Every delta, the stream, and the LlmError that ended it (None when it ended cleanly)."""
    deltas: list[str] = []
    stream: LlmStream | None = None
    error: LlmError | None = None

    async def run() -> None:
        nonlocal stream, error
        try:
            async with llm.stream_chat(QUESTION) as stream:
                async for delta in stream:
                    deltas.append(delta)
        except LlmError as exc:
            error = exc

    await asyncio.wait_for(run(), T)
    return deltas, stream, error


# -- LLM -------------------------------------------------------------------------------------


@pytest.mark.parametrize("style", ["vllm", "llama_cpp"])
async def test_llm_sending_only_pings_hits_the_first_token_deadline(http: httpx.AsyncClient, style: str) -> None:
    behaviour = OpenAiBehaviour(misbehave="ping_only", ping_interval_s=0.02, style=style)
    async with OpenAiStub(behaviour=behaviour) as stub:
        llm = OpenAiCompatibleLlm(llm_settings(stub.url, first_token_timeout_s=0.5), http)
        deltas, _, error = await llm_collect(llm)
        assert deltas == []
        assert isinstance(error, LlmTimeout)
        assert "first token" in str(error) and "llm.first_token_timeout_s" in str(error)
        assert await stub.wait_for_disconnects(1, timeout=T)  # the client hung up


async def test_llm_trickling_bytes_hits_the_reply_deadline(http: httpx.AsyncClient) -> None:
    behaviour = OpenAiBehaviour(misbehave="trickle", trickle_interval_s=0.002, first_token_delay_s=0)
    async with OpenAiStub(behaviour=behaviour) as stub:
        llm = OpenAiCompatibleLlm(llm_settings(stub.url, reply_timeout_s=0.8), http)
        deltas, stream, error = await llm_collect(llm)
        assert isinstance(error, LlmTimeout)
        assert "LLM reply" in str(error) and "llm.reply_timeout_s" in str(error)
        assert stream is not None and stream.text == "".join(deltas)  # what came is kept
        assert await stub.wait_for_disconnects(1, timeout=T)


async def test_llm_pings_between_tokens_do_not_reset_the_stall_deadline(http: httpx.AsyncClient) -> None:
    # llama.cpp pings while it is quiet; a token every 5 s with pings in between is a stall.
    behaviour = OpenAiBehaviour(style="llama_cpp", first_token_delay_s=0, tokens_per_s=0.2, ping_interval_s=0.02)
    async with OpenAiStub(behaviour=behaviour) as stub:
        llm = OpenAiCompatibleLlm(llm_settings(stub.url, read_timeout_s=0.4), http)
        deltas, _, error = await llm_collect(llm)
        assert len(deltas) == 1
        assert isinstance(error, LlmTimeout)
        assert "stalled" in str(error) and "llm.read_timeout_s" in str(error)


async def test_llm_reply_deadline_bounds_a_slow_but_steady_stream(http: httpx.AsyncClient) -> None:
    # Each token comes well within the stall deadline, but the whole answer takes too long.
    behaviour = OpenAiBehaviour(first_token_delay_s=0, tokens_per_s=10, default_answer="一二三四五六七八九十" * 5)
    async with OpenAiStub(behaviour=behaviour) as stub:
        llm = OpenAiCompatibleLlm(llm_settings(stub.url, read_timeout_s=2.0, reply_timeout_s=0.6), http)
        deltas, _, error = await llm_collect(llm)
        assert 1 <= len(deltas) < 50
        assert isinstance(error, LlmTimeout) and "llm.reply_timeout_s" in str(error)


async def test_llm_hanging_server_names_the_first_token_deadline(http: httpx.AsyncClient) -> None:
    async with OpenAiStub(behaviour=OpenAiBehaviour(misbehave="hang")) as stub:
        llm = OpenAiCompatibleLlm(llm_settings(stub.url, first_token_timeout_s=0.3), http)
        _, _, error = await llm_collect(llm)
        assert isinstance(error, LlmTimeout) and "llm.first_token_timeout_s" in str(error)


async def test_llm_answer_past_max_tokens_is_an_error(http: httpx.AsyncClient) -> None:
    event = b'data: {"choices":[{"index":0,"delta":{"content":"' + b"x" * 1000 + b'"},"finish_reason":null}]}\n\n'
    behaviour = OpenAiBehaviour(raw_chunks=[event] * 100, raw_chunk_delay_s=0)
    async with OpenAiStub(behaviour=behaviour) as stub:
        llm = OpenAiCompatibleLlm(llm_settings(stub.url, max_tokens=100), http)
        deltas, stream, error = await llm_collect(llm)
        assert isinstance(error, LlmError) and "longer than 6400 characters" in str(error)
        assert stream is not None and len(stream.text) == 6000 and len(deltas) == 6


def test_llm_defaults_suit_a_talking_robot() -> None:
    s = LlmSettings()
    assert s.connect_timeout_s <= 3 and s.first_token_timeout_s <= 10 and s.read_timeout_s <= 10
    assert s.first_token_timeout_s < s.reply_timeout_s <= 60


# -- TTS -------------------------------------------------------------------------------------

PCM = bytes(range(256)) * 192  # 49 152 bytes, about 1 s at 24 kHz, in three stub chunks
PROTOCOLS = ["http", "websocket"]


def tts_settings(url: str, **overrides: Any) -> TtsSettings:
    values: dict[str, Any] = {"url": url, "connect_timeout_s": 2.0, "read_timeout_s": 3.0, "clause_timeout_s": 5.0}
    return TtsSettings(**{**values, **overrides})


def make_tts(stub: PaddleSpeechStub, protocol: str, http: httpx.AsyncClient, **overrides: Any) -> TtsClient:
    settings = tts_settings(stub.url, **overrides)
    if protocol == "websocket":
        return PaddleSpeechWsTts(settings, http)
    return PaddleSpeechHttpTts(settings, http)


async def tts_collect(tts: TtsClient, text: str, *, hold_s: float = 0.0) -> tuple[bytes, TtsError | None]:
    """The audio and the TtsError that ended it; ``hold_s``: the caller's pause after each chunk
    (a speaker playing it)."""
    audio = bytearray()
    error: TtsError | None = None

    async def run() -> None:
        nonlocal error
        try:
            async with tts.synthesize(text) as chunks:
                async for chunk in chunks:
                    audio.extend(chunk)
                    if hold_s:
                        await asyncio.sleep(hold_s)
        except TtsError as exc:
            error = exc

    await asyncio.wait_for(run(), T)
    return bytes(audio), error


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_tts_trickling_server_hits_the_clause_deadline(http: httpx.AsyncClient, protocol: str) -> None:
    behaviour = PaddleSpeechBehaviour(pcm_override=PCM, misbehave="trickle", trickle_interval_s=0.005)
    async with PaddleSpeechStub(behaviour=behaviour, protocol=protocol) as stub:  # type: ignore[arg-type]
        tts = make_tts(stub, protocol, http, clause_timeout_s=0.6)
        _, error = await tts_collect(tts, "你好。")
        assert isinstance(error, TtsTimeout)
        assert "TTS clause" in str(error) and "tts.clause_timeout_s" in str(error)
        await stub.wait_for_disconnects(1, timeout=T)  # the client hung up


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_tts_time_the_caller_holds_the_stream_is_not_charged(http: httpx.AsyncClient, protocol: str) -> None:
    # Three chunks, each held 0.25 s by the "speaker": 0.75 s in all, over a 0.5 s budget.
    behaviour = PaddleSpeechBehaviour(pcm_override=PCM)
    async with PaddleSpeechStub(behaviour=behaviour, protocol=protocol) as stub:  # type: ignore[arg-type]
        tts = make_tts(stub, protocol, http, clause_timeout_s=0.5)
        audio, error = await tts_collect(tts, "你好。", hold_s=0.25)
        assert error is None and audio == PCM


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_tts_endless_audio_is_cut_at_the_cap(http: httpx.AsyncClient, protocol: str) -> None:
    behaviour = PaddleSpeechBehaviour(pcm_override=PCM, misbehave="endless")
    async with PaddleSpeechStub(behaviour=behaviour, protocol=protocol) as stub:  # type: ignore[arg-type]
        tts = make_tts(stub, protocol, http, audio_cap_min_s=2.0, audio_cap_s_per_char=0.1)
        assert await tts.sample_rate() == 24000
        with capture_logs() as logs:
            audio, error = await tts_collect(tts, "你好。")
        assert error is None
        assert len(audio) == 2 * 24000 * 2  # max(2 s, 0.1 s x 3 chars) at 24 kHz
        assert audio.startswith(PCM)
        cut = [e for e in logs if e["event"] == "tts_clause_too_long"]
        assert len(cut) == 1 and cut[0]["chars"] == 3
        await stub.wait_for_disconnects(1, timeout=T)


async def test_tts_cap_without_a_known_rate_assumes_the_highest(http: httpx.AsyncClient) -> None:
    behaviour = PaddleSpeechBehaviour(pcm_override=PCM, misbehave="endless")
    async with PaddleSpeechStub(behaviour=behaviour) as stub:
        tts = make_tts(stub, "http", http, audio_cap_min_s=0.5, audio_cap_s_per_char=0.1)
        audio, error = await tts_collect(tts, "hi")
        assert error is None and len(audio) == 2 * 48000  # 0.5 s at 96 kHz: never cut early


async def test_reply_goes_on_after_a_clause_cut_at_the_cap(http: httpx.AsyncClient) -> None:
    behaviour = PaddleSpeechBehaviour(pcm_override=PCM, misbehave="endless")
    async with PaddleSpeechStub(behaviour=behaviour) as stub:
        tts = make_tts(stub, "http", http, audio_cap_min_s=1.0, audio_cap_s_per_char=0.1)
        await tts.sample_rate()
        speaker = FakeSpeaker(sample_rate=24000)
        text = SpeechText(SpeechTextSettings(min_clause_weight=1, first_clause_min_weight=1))
        outcome = await asyncio.wait_for(
            speak_reply(
                llm=FakeLlm(["第一句话。", "第二句话。"]),
                tts=tts,
                speaker=speaker,
                text=text,
                messages=QUESTION,
                times=TurnTimes(),
                clock=lambda: 0.0,
                on_audible=_nothing,
            ),
            T,
        )
        assert stub.texts == ["第一句话。", "第二句话。"]
        assert len(speaker.audio) == 2 * (24000 * 2)  # each clause cut at 1 s of 16-bit samples
        assert outcome.spoken == "第一句话。第二句话。" and outcome.failed_clauses == 0


async def _nothing() -> None:
    pass


# -- ASR -------------------------------------------------------------------------------------


def test_transcript_cap_fails_before_the_text_grows_past_it() -> None:
    asm = TranscriptAssembler("cpp-2pass", max_chars=10)
    asm.feed({"mode": "2pass-online", "text": "一二三四五"}, after_end_marker=False)
    asm.feed({"mode": "2pass-offline", "text": "一二三四五六七八九十"}, after_end_marker=False)  # replaces
    assert asm.text == "一二三四五六七八九十"
    with pytest.raises(AsrError, match=r"longer than 10 characters \(asr.max_transcript_chars\)"):
        asm.feed({"mode": "2pass-online", "text": "十一"}, after_end_marker=False)
    assert asm.text == "一二三四五六七八九十"


async def test_asr_flood_fails_the_utterance_without_starving_the_loop() -> None:
    behaviour = FunAsrBehaviour(
        flavour="cpp-2pass", transcript_override="", misbehave="flood", misbehave_after_frames=1
    )
    async with FunAsrStub(behaviour=behaviour) as stub:
        settings = AsrSettings(url=stub.url, final_timeout_s=0.5, burst_ms=60_000, max_transcript_chars=100_000)
        largest_step = 0  # the most transcript characters that arrived between two turns of the loop
        stop = asyncio.Event()
        session = await asyncio.wait_for(FunAsrClient(settings).open_session(), T)

        async def ticker() -> None:  # stands for the speaker and the microphone sharing the loop
            nonlocal largest_step
            seen = 0
            while not stop.is_set():
                largest_step = max(largest_step, len(session.text) - seen)
                seen = len(session.text)
                await asyncio.sleep(0)

        ticking = asyncio.create_task(ticker())
        try:
            await session.send_audio(bytes(1920 * 3))
            with pytest.raises(AsrError, match=r"asr\.max_transcript_chars") as info:
                await asyncio.wait_for(session.finish(), T)
        finally:
            await session.aclose()
            stop.set()
            await ticking
        assert stub.url in str(info.value)
        results = int(str(info.value).split(" after ")[1].split()[0])
        assert results > 300  # 2 + 4 + ... + 2n characters: n(n+1) > 100 000
        # The stand-in sends bursts of 64 results; the client yields after each one it reads.
        assert 0 < largest_step <= 2 * (2 * results)


# -- log fields ------------------------------------------------------------------------------

FLOOD = "洪" * 560_000


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_long_log_fields_are_cut_with_their_length(fmt: str) -> None:
    out = io.StringIO()
    configure_logging("info", fmt, stream=out)
    try:
        structlog.get_logger().info("transcript", text=FLOOD, nested={"reply": [FLOOD]}, short="ok")
        logging.getLogger("httpx").warning("server said %s", FLOOD)
    finally:
        structlog.reset_defaults()
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    for line, length in zip(lines, (560_000, len("server said ") + 560_000), strict=True):
        assert len(line) < 3 * MAX_FIELD_CHARS + 500
        assert f"[cut: {length} chars]" in line
    if fmt == "json":
        event = json.loads(lines[0])
        assert event["short"] == "ok"
        assert event["text"] == "洪" * MAX_FIELD_CHARS + "… [cut: 560000 chars]"
        assert event["nested"]["reply"][0].endswith("[cut: 560000 chars]")
        assert json.loads(lines[1])["event"].startswith("server said 洪")


def test_long_log_fields_are_cut_in_the_journal(tmp_path: Path) -> None:
    path = tmp_path / "journal.socket"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(path))
        server.settimeout(T)
        configure_logging("info", "journal", stream=io.StringIO(), journal_socket=path)
        try:
            structlog.get_logger().info("transcript", text=FLOOD)
        finally:
            structlog.reset_defaults()
        datagram = server.recv(1 << 20)
    assert len(datagram) < 4 * MAX_FIELD_CHARS + 1000
    assert b"[cut: 560000 chars]" in datagram


# -- the whole reply -------------------------------------------------------------------------


async def test_reply_cap_bounds_the_turn_and_the_history() -> None:
    llm = FakeLlm(["这是一句很长的回答。" * 2000])
    conversation = Conversation("", max_turns=3, reset_after_s=60)
    turn = Turn(id="t1")
    await asyncio.wait_for(
        answer_question(
            "你好",
            turn=turn,
            conversation=conversation,
            llm=llm,
            tts=FakeTts(),
            speaker=FakeSpeaker(),
            settings=SpeechTextSettings(max_reply_chars=200),
            clock=lambda: 0.0,
            on_audible=_nothing,
        ),
        T,
    )
    assert 0 < len(turn.reply) <= 200 and turn.truncated
    said = conversation.messages_for("again", 0.0)[-2]
    assert said.role == "assistant" and said.content == turn.reply


FAST_CLAUSES = {"min_clause_weight": 1, "first_clause_min_weight": 1}


@pytest.mark.parametrize("stalled", ["llm", "tts"])
async def test_reply_deadline_ends_the_turn_and_keeps_what_was_heard(stalled: str) -> None:
    llm = FakeLlm(["第一句话。", "第二句话。"])
    if stalled == "llm":
        llm.gate = asyncio.Event()  # the stream never ends: a server that keeps the connection alive
    never = asyncio.Event()

    class StallingTts(FakeTts):
        """Speaks the first clause; the second never comes."""

        def synthesize(self, text: str) -> Any:
            if stalled == "tts" and text.startswith("第二"):
                return _Stall(never)
            return super().synthesize(text)

    speaker = FakeSpeaker()
    conversation = Conversation("", max_turns=3, reset_after_s=60)
    turn = Turn(id="t1")
    with capture_logs() as logs, pytest.raises(ReplyTimeout) as info:
        await asyncio.wait_for(
            answer_question(
                "你好",
                turn=turn,
                conversation=conversation,
                llm=llm,
                tts=StallingTts(),
                speaker=speaker,
                settings=SpeechTextSettings(**FAST_CLAUSES, turn_timeout_s=0.5),
                clock=lambda: 0.0,
                on_audible=_nothing,
            ),
            T,
        )
    assert info.value.service == stalled
    assert "reply.turn_timeout_s" in str(info.value)
    assert turn.reply.startswith("第一句话")  # heard, so kept: in the turn and in the history
    assert len(conversation) == 1
    assert speaker.flushes == 1
    assert [e["service"] for e in logs if e["event"] == "reply_timeout"] == [stalled]


class _Stall:
    """A synthesis that never starts."""

    def __init__(self, never: asyncio.Event) -> None:
        self._never = never

    async def __aenter__(self) -> _Stall:
        await self._never.wait()
        return self

    async def __aexit__(self, *exc: object) -> None:
        pass


# -- whole turns through the daemon ----------------------------------------------------------

ANSWER = {"weather": "It is sunny today. Take a walk!"}


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["llm_ping_only", "asr_flood"])
async def test_a_turn_against_a_server_that_never_finishes_fails_and_ends(tmp_path: Path, fault: str) -> None:
    qwav, _ = question_wav(tmp_path, "what is the weather like today")
    llm = demo_llm_behaviour(answers=ANSWER)
    asr = FunAsrBehaviour(flavour="cpp-2pass")
    if fault == "llm_ping_only":
        llm = replace(llm, misbehave="ping_only", ping_interval_s=0.05)
    else:
        asr = FunAsrBehaviour(flavour="cpp-2pass", misbehave="flood", misbehave_after_frames=3)
    async with AsyncExitStack() as stack:
        stubs = await start_stubs(stack, asr=asr, llm=llm)
        settings = settings_for(stubs, qwav, tmp_path / "reply.wav")
        settings = replace(settings, llm=replace(settings.llm, first_token_timeout_s=1.0))
        code, _, logs = await run_once(settings)
    assert code == EXIT_FAILED
    (failed,) = events(logs, "turn_failed")
    assert failed["service"] == ("llm" if fault == "llm_ping_only" else "asr")
    expected = "llm.first_token_timeout_s" if fault == "llm_ping_only" else "asr.max_transcript_chars"
    assert expected in failed["reason"]
    (finished,) = events(logs, "turn_finished")
    assert finished["outcome"] == "failed" and len(finished["transcript"]) <= 1000
    assert events(logs, "state_changed")[-1]["dst"] == "idle"


@pytest.mark.slow
async def test_a_turn_against_endless_tts_audio_is_answered_clause_by_clause(tmp_path: Path) -> None:
    qwav, _ = question_wav(tmp_path, "what is the weather like today")
    async with AsyncExitStack() as stack:
        stubs = await start_stubs(
            stack, llm=demo_llm_behaviour(answers=ANSWER), tts=PaddleSpeechBehaviour(misbehave="endless")
        )
        settings = settings_for(stubs, qwav, tmp_path / "reply.wav")
        settings = replace(settings, tts=replace(settings.tts, audio_cap_min_s=2.0, audio_cap_s_per_char=0.05))
        code, _, logs = await run_once(settings)
        tts_stub = stubs[2]
    assert code == EXIT_ANSWERED
    assert [r.text for r in tts_stub.requests] == ["It is sunny today.", "Take a walk!"]
    assert [e["chars"] for e in events(logs, "tts_clause_too_long")] == [18, 12]
    (finished,) = events(logs, "turn_finished")
    assert finished["reply"] == "It is sunny today. Take a walk!"
