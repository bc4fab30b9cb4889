"""Barge-in end to end, with WAV devices on the shared wall clock: the user cuts in while the robot
is answering; the answer stops, the stand-ins see their connections closed, and the interruption
is the next question."""

from __future__ import annotations

import asyncio
import wave
from contextlib import AsyncExitStack
from pathlib import Path

import numpy as np
import pytest
from structlog.testing import capture_logs

from daemon.app import App
from daemon.config import (
    AecSettings,
    AsrSettings,
    AudioSettings,
    BargeInSettings,
    LlmSettings,
    Settings,
    TtsSettings,
    VadSettings,
)
from daemon.tools.stubs.funasr import FunAsrBehaviour, make_question_wav
from daemon.tools.stubs.paddlespeech import PaddleSpeechBehaviour
from daemon.tools.stubs.runner import demo_llm_behaviour, start_stubs
from states.model import Turn

pytestmark = pytest.mark.slow
RATE = 16000
LEAD_S = 0.4
ANSWER_HEARD_S = 2.0  # the user lets the robot talk this long after the question


def _pcm(path: Path) -> np.ndarray:
    with wave.open(str(path), "rb") as w:
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")


def _loud(samples: np.ndarray, rate: int, window_s: float = 0.05) -> np.ndarray:
    """Per-window flags: does this 50 ms window hold sound?"""
    n = int(rate * window_s)
    windows = samples[: len(samples) // n * n].reshape(-1, n).astype(np.int32)
    return np.abs(windows).max(axis=1) > 300


@pytest.mark.parametrize("mode", ["cancel", "pause"])
async def test_cutting_in_stops_the_answer_and_is_answered_next(tmp_path: Path, mode: str) -> None:
    q1 = _pcm(make_question_wav("what is the weather like today", tmp_path / "q1.wav"))
    q2 = _pcm(make_question_wav("tell me a joke", tmp_path / "q2.wav"))
    q1_end = LEAD_S + len(q1) / RATE
    # the answer starts about 1 s after the question; cut in ANSWER_HEARD_S into it
    onset = q1_end + 1.0 + ANSWER_HEARD_S
    silence = np.zeros(int((onset - q1_end) * RATE), dtype="<i2")
    qwav = tmp_path / "question.wav"
    with wave.open(str(qwav), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(np.concatenate([np.zeros(int(LEAD_S * RATE), dtype="<i2"), q1, silence, q2]).tobytes())
    q2_end = onset + len(q2) / RATE
    out = tmp_path / "reply.wav"

    turns: list[Turn] = []
    stop = asyncio.Event()

    async def turn_ended(turn: Turn) -> None:
        turns.append(turn)
        if len(turns) == 2:
            stop.set()

    async with AsyncExitStack() as stack:
        asr, llm, tts = await start_stubs(
            stack,
            llm=demo_llm_behaviour(tokens_per_s=8.0),  # still generating when the user cuts in
            tts=PaddleSpeechBehaviour(realtime_factor=1.0),  # and still synthesising
        )
        settings = Settings(
            asr=AsrSettings(url=asr.url, final_timeout_s=1.0),
            llm=LlmSettings(url=llm.url),
            tts=TtsSettings(url=tts.url),
            audio=AudioSettings(input=f"wav:{qwav}", output=f"wav:{out}"),
            vad=VadSettings(end_silence_ms=500),
            barge_in=BargeInSettings(mode=mode),
            aec=AecSettings(engine="off"),  # no echo path here; tests/test_echo.py has one
        )
        app = App(settings, on_turn_end=turn_ended)
        await asyncio.wait_for(app.run(stop), 60)
        llm_disconnects, tts_disconnects = llm.disconnects, tts.disconnects

    first, second = turns[:2]  # a third, the follow-up window, is stopped by the shutdown
    assert first.outcome == "interrupted" and first.interrupted
    assert first.transcript == "what is the weather like today"
    assert first.reply.startswith("It is sunny today")  # what was heard, no more
    assert len(first.reply) < len("It is sunny today, with a high of 24 degrees. A light breeze comes")
    assert second.outcome == "answered" and second.transcript == "tell me a joke"
    assert llm_disconnects >= 1 and tts_disconnects >= 1  # cancel closed both connections

    samples = _pcm(out)
    with wave.open(str(out), "rb") as w:
        rate = w.getframerate()
    loud = _loud(samples, rate)
    window = 0.05
    assert loud[: int(0.3 / window)].any()  # the listening earcon
    after_earcon = int(0.3 / window)
    first_sound = (after_earcon + int(np.argmax(loud[after_earcon:]))) * window
    assert q1_end < first_sound < onset  # the answer played before the interruption ...
    stopped = onset + 0.6
    quiet = loud[int(stopped / window) : int(q2_end / window)]
    assert not quiet.any(), "reply audio went on after the interruption"  # ... and stopped
    assert loud[int(q2_end / window) :].any()  # the joke was answered


async def test_a_false_interruption_pauses_then_the_whole_answer_is_heard(tmp_path: Path) -> None:
    q1 = _pcm(make_question_wav("what is the weather like today", tmp_path / "q1.wav"))
    uh = _pcm(make_question_wav("uh huh", tmp_path / "uh.wav"))
    q1_end = LEAD_S + len(q1) / RATE
    onset = q1_end + 1.0 + ANSWER_HEARD_S
    qwav = tmp_path / "question.wav"
    with wave.open(str(qwav), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        lead = np.zeros(int(LEAD_S * RATE), dtype="<i2")
        w.writeframes(np.concatenate([lead, q1, np.zeros(int((onset - q1_end) * RATE), dtype="<i2"), uh]).tobytes())
    out = tmp_path / "reply.wav"
    answer = "It is sunny today, with a high of 24 degrees. A light breeze comes from the east."

    async with AsyncExitStack() as stack:
        asr, llm, tts = await start_stubs(stack, llm=demo_llm_behaviour(answers={"weather": answer}))

        async def hear_a_filler_next() -> None:  # the stand-in recognises the second utterance as 嗯
            # the first session that hears audio (the daemon's start-up probe sends none)
            while not (heard := [s for s in asr.sessions if s.audio]):  # noqa: ASYNC110 - no event for it
                await asyncio.sleep(0.02)
            await heard[0].done.wait()
            asr.behaviour = FunAsrBehaviour(transcript_override="嗯")

        swapper = asyncio.create_task(hear_a_filler_next())
        settings = Settings(
            asr=AsrSettings(url=asr.url, final_timeout_s=1.0),
            llm=LlmSettings(url=llm.url),
            tts=TtsSettings(url=tts.url),
            audio=AudioSettings(input=f"wav:{qwav}", output=f"wav:{out}"),
            vad=VadSettings(end_silence_ms=500),
            barge_in=BargeInSettings(mode="pause", resume_after_ms=3000),
            aec=AecSettings(engine="off"),
        )
        with capture_logs() as logs:
            app = App(settings, once=True)
            code = await asyncio.wait_for(app.run(), 60)
        swapper.cancel()
        disconnects = llm.disconnects + tts.disconnects
    assert code == 0
    (turn,) = app.turns
    assert turn.outcome == "answered" and not turn.interrupted
    assert turn.reply == answer  # the whole answer was heard
    assert disconnects == 0
    assert [(e["dst"], e["trigger"]) for e in logs if e["event"] == "state_changed"] == [
        ("listening", "wake"),
        ("thinking", "heard"),
        ("speaking", "start_speaking"),
        ("listening_held", "barge_in"),
        ("speaking", "resume"),
        ("idle", "done"),
    ]
    with wave.open(str(out), "rb") as w:
        rate = w.getframerate()
    loud = _loud(_pcm(out), rate)
    window = 0.05
    assert loud[int((onset - 0.6) / window) : int(onset / window)].any()  # speaking when the user went "uh huh"
    assert not loud[int((onset + 0.5) / window) : int((onset + 0.9) / window)].any()  # paused
    assert loud[int((onset + 1.5) / window) :].any()  # and resumed
