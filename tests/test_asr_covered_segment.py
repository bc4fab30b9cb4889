"""A classic Python FunASR server that stays silent after the end marker because its own VAD had
already closed the segment (docs/protocols.md "FunASR: when is the utterance final"): the client
takes the transcript at once when that segment covered all the voice, and waits for the flush
when speech came after it."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from structlog.testing import capture_logs

from daemon.clients.asr import FunAsrClient
from daemon.config import AsrSettings
from daemon.tools.stubs.funasr import FunAsrBehaviour, FunAsrStub, ScriptStep
from states.endpointer import EndpointerSettings
from states.events import Transcript, TurnTimes
from states.listen import listen_for_utterance
from states.mic_feed import MicFeed
from tests.fakes import FakeAsr, FakeMic, FakeVad

TIMEOUT = 10.0
FINAL_TIMEOUT_S = 5.0
"""Long, so that a transcript taken without waiting for it is told apart without a tight limit."""
RATE = 16000


def loud(ms: int) -> bytes:
    t = np.arange(RATE * ms // 1000) / RATE
    return (3000 * np.sin(2 * np.pi * 220 * t)).astype("<i2").tobytes()


def quiet(ms: int) -> bytes:
    return bytes(RATE * ms // 1000 * 2)


def classic(url: str, **overrides: Any) -> AsrSettings:
    """Paced at real time (a 60 ms burst), as a live microphone feeds it."""
    base = AsrSettings(
        url=url, flavour="python-classic", final_timeout_s=FINAL_TIMEOUT_S, connect_timeout_s=2.0, burst_ms=60
    )
    return replace(base, **overrides)


async def utterance(settings: AsrSettings, pcm: bytes, trailing_silence_ms: float | None) -> tuple[Transcript, float]:
    """One session; returns the transcript and the seconds from the end marker to it (its log)."""
    session = await asyncio.wait_for(FunAsrClient(settings).open_session(), TIMEOUT)
    try:
        await session.send_audio(pcm)
        with capture_logs() as logs:
            transcript = await asyncio.wait_for(session.finish(trailing_silence_ms=trailing_silence_ms), TIMEOUT)
    finally:
        await session.aclose()
    final = next(e for e in logs if e["event"] == "asr_final")
    return transcript, final["ms"] / 1000


async def test_a_segment_closed_after_the_voice_ends_the_wait_at_once() -> None:
    behaviour = FunAsrBehaviour(flavour="python-classic", transcript_override="打开灯", server_vad_end_ms=300)
    async with FunAsrStub(behaviour=behaviour) as stub:
        transcript, waited = await utterance(classic(stub.url), loud(600) + quiet(700), trailing_silence_ms=700)
        await asyncio.wait_for(stub.sessions[-1].done.wait(), TIMEOUT)
    seen = stub.sessions[-1]
    assert seen.segments == ["打开灯", ""]  # closed by the server VAD; the flush had nothing left
    assert seen.end_marker is not None
    assert [m for m in seen.sent if isinstance(m, dict) and m.get("mode") == "2pass-offline"] == [
        {"mode": "2pass-offline", "text": "打开灯", "wav_name": "moss-voice", "is_final": True}
    ]  # and nothing after the end marker: the pre-fix classic server
    assert transcript == Transcript("打开灯", answered=True)
    assert waited < FINAL_TIMEOUT_S / 2


async def test_without_knowing_where_the_voice_ended_the_client_waits_as_before() -> None:
    behaviour = FunAsrBehaviour(flavour="python-classic", transcript_override="打开灯", server_vad_end_ms=300)
    async with FunAsrStub(behaviour=behaviour) as stub:
        settings = classic(stub.url, final_timeout_s=0.5)
        with capture_logs() as logs:
            transcript, waited = await utterance(settings, loud(600) + quiet(700), trailing_silence_ms=None)
    assert transcript == Transcript("打开灯", answered=False)
    assert waited >= 0.5
    assert not any(e["event"] == "asr_segment_covered" for e in logs)


async def test_speech_after_a_mid_utterance_segment_still_waits_for_the_flush() -> None:
    # The pause closes the first segment; the last words and their short silence are not closed
    # by the server VAD, so only the (slow) flush has them.
    behaviour = FunAsrBehaviour(
        flavour="python-classic",
        transcript_override="打开灯谢谢",
        segment_texts=("打开灯", "谢谢"),
        server_vad_end_ms=300,
        final_delay_s=0.4,
        partial_every_frames=1000,  # no online delta: the voice's end alone must tell
    )
    async with FunAsrStub(behaviour=behaviour) as stub:
        pcm = loud(500) + quiet(500) + loud(300) + quiet(200)
        transcript, waited = await utterance(classic(stub.url), pcm, trailing_silence_ms=200)
    assert stub.sessions[-1].segments == ["打开灯", "谢谢"]
    assert transcript == Transcript("打开灯谢谢", answered=True)
    assert waited >= 0.4  # the flush's delay: it was waited for


async def test_an_earlier_segment_reported_late_does_not_cover_the_last_words() -> None:
    # A busy server delivers the first segment's result only once the last words have been sent:
    # after the voice's end, but too soon after it to be the segment that holds it.
    frames_to_voice_end = (500 + 500 + 300) // 60 + 1
    behaviour = FunAsrBehaviour(
        flavour="python-classic",
        script=[
            ScriptStep({"mode": "2pass-offline", "text": "打开灯", "is_final": True}, after_frames=frames_to_voice_end),
            ScriptStep({"mode": "2pass-offline", "text": "谢谢", "is_final": False}, after_end=True, delay_s=0.4),
        ],
    )
    async with FunAsrStub(behaviour=behaviour) as stub:
        pcm = loud(500) + quiet(500) + loud(300) + quiet(200)
        transcript, waited = await utterance(classic(stub.url), pcm, trailing_silence_ms=200)
    assert transcript == Transcript("打开灯谢谢", answered=True)
    assert waited >= 0.4


async def test_an_online_delta_after_the_segment_voids_it() -> None:
    behaviour = FunAsrBehaviour(
        flavour="python-classic",
        script=[
            ScriptStep({"mode": "2pass-offline", "text": "打开灯", "is_final": True}, after_frames=15),
            ScriptStep({"mode": "2pass-online", "text": "谢", "is_final": True}, after_frames=18),
            ScriptStep({"mode": "2pass-offline", "text": "谢谢", "is_final": False}, after_end=True, delay_s=0.3),
        ],
    )
    async with FunAsrStub(behaviour=behaviour) as stub:
        # The voice ends at 600 ms (frame 10); both results come well after it.
        transcript, waited = await utterance(classic(stub.url), loud(600) + quiet(700), trailing_silence_ms=700)
    assert transcript == Transcript("打开灯谢谢", answered=True)
    assert waited >= 0.3


@pytest.mark.parametrize("flavour", ["cpp-2pass", "python-2026"])
async def test_only_the_classic_server_gets_the_shortcut(flavour: str) -> None:
    behaviour = FunAsrBehaviour(flavour=flavour, transcript_override="打开灯", final_delay_s=0.3)
    async with FunAsrStub(behaviour=behaviour) as stub:
        settings = replace(classic(stub.url), flavour=flavour)
        transcript, waited = await utterance(settings, loud(600) + quiet(700), trailing_silence_ms=700)
    assert transcript.text == "打开灯"
    assert waited >= 0.3  # the flush, as always


async def test_listening_tells_the_session_how_much_silence_ends_the_audio() -> None:
    asr = FakeAsr("hello")
    mic = MicFeed(FakeMic([(0.5, True), (1.0, False)]))
    settings = EndpointerSettings(end_silence_ms=300, speech_start_ms=60, end_trim_ms=0)
    started = time.monotonic()
    transcript = await listen_for_utterance(
        mic=mic, vad=FakeVad(), asr=asr, settings=settings, times=TurnTimes(), clock=time.monotonic
    )
    await mic.aclose()
    assert transcript == Transcript("hello")
    silence = asr.sessions[0].trailing_silence_ms
    assert silence is not None and 300 <= silence < 320  # the end silence, in whole 20 ms frames
    assert time.monotonic() - started < TIMEOUT


async def test_the_asr_end_benchmark_takes_the_covered_segment() -> None:
    from daemon.__main__ import build_parser
    from daemon.tools.bench import asr_end

    args = build_parser().parse_args(["bench", "asr-end", "-n", "1", "--end-silence-ms", "500"])
    results = await asr_end.run(args)
    assert len(results["turns"]) == 1
    request = results["median_end_to_llm_request_ms"]
    assert request is not None and request < 1000 * FINAL_TIMEOUT_S / 5  # not the 2 s quiet timeout
    assert "end of speech decided -> LLM request" in asr_end.render(results)
