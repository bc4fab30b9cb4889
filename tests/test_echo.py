"""Echo: in a simulated room the microphone hears the robot's own voice (40 ms later, half as loud,
with reflections and noise). The echo canceller keeps it from passing for a user cutting in,
while a user who does cut in is still heard."""

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
    AsrSettings,
    AudioSettings,
    BargeInSettings,
    LlmSettings,
    Settings,
    TtsSettings,
    VadSettings,
    WakeSettings,
)
from daemon.tools.bench.barge_in import LONG_ANSWER
from daemon.tools.stubs.funasr import make_question_wav
from daemon.tools.stubs.runner import demo_llm_behaviour, start_stubs
from states.model import Turn

pytestmark = pytest.mark.slow
RATE = 16000


def _pcm(path: Path) -> np.ndarray:
    with wave.open(str(path), "rb") as w:
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")


def _session(tmp_path: Path, cut_in_at: float | None) -> Path:
    """The user's side of the room: a question, then silence, and maybe a cut-in at ``cut_in_at`` s."""
    q = _pcm(make_question_wav("who are you", tmp_path / "q.wav"))
    parts = [np.zeros(int(0.4 * RATE), dtype="<i2"), q]
    length = 0.4 + len(q) / RATE
    if cut_in_at is not None:
        parts.append(np.zeros(int((cut_in_at - length) * RATE), dtype="<i2"))
        parts.append(_pcm(make_question_wav("tell me a joke", tmp_path / "cut.wav")))
    path = tmp_path / "user.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(np.concatenate(parts).tobytes())
    return path


async def _run(tmp_path: Path, user: Path, turns_wanted: int) -> tuple[list[Turn], list[dict]]:
    turns: list[Turn] = []
    stop = asyncio.Event()

    async def ended(turn: Turn) -> None:
        turns.append(turn)
        if len(turns) == turns_wanted:
            stop.set()

    async with AsyncExitStack() as stack:
        asr, llm, tts = await start_stubs(stack, llm=demo_llm_behaviour(answers={"who": LONG_ANSWER}))
        settings = Settings(
            asr=AsrSettings(url=asr.url, final_timeout_s=1.0),
            llm=LlmSettings(url=llm.url),
            tts=TtsSettings(url=tts.url),
            audio=AudioSettings(input=f"room:{user}", output=f"wav:{tmp_path / 'out.wav'}"),
            vad=VadSettings(end_silence_ms=500),
            barge_in=BargeInSettings(mode="cancel"),
            wake=WakeSettings(follow_up_s=0),  # no follow-up turn: tests/test_wake.py has those
        )
        with capture_logs() as logs:
            await asyncio.wait_for(App(settings, on_turn_end=ended).run(stop), 90)
    return turns, logs


async def test_the_robots_own_voice_does_not_interrupt_it(tmp_path: Path) -> None:
    turns, logs = await _run(tmp_path, _session(tmp_path, cut_in_at=None), turns_wanted=1)
    (turn,) = turns
    assert turn.outcome == "answered" and not turn.interrupted
    assert turn.reply == LONG_ANSWER
    assert [e for e in logs if e["event"] == "barge_in_detected"] == []
    assert [e for e in logs if e["event"] == "aec_trained"], "the canceller never finished learning"


async def test_a_user_speaking_over_the_echo_still_cuts_in(tmp_path: Path) -> None:
    # the answer starts about 2.5 s in and lasts over 10 s; cut in well after the canceller learned
    turns, logs = await _run(tmp_path, _session(tmp_path, cut_in_at=11.0), turns_wanted=2)
    first, second = turns
    assert first.outcome == "interrupted"
    assert len([e for e in logs if e["event"] == "barge_in_detected"]) == 1
    assert second.transcript == "tell me a joke"


async def test_a_user_cutting_into_the_first_answer_after_start_is_heard(tmp_path: Path) -> None:
    # a fresh daemon, its canceller untrained: the answer starts about 2.5 s in, the user cuts in
    # about 1 s into it, long before the canceller has heard barge_in.aec_warmup_s (6 s) of it
    turns, logs = await _run(tmp_path, _session(tmp_path, cut_in_at=3.5), turns_wanted=2)
    first, second = turns
    assert first.outcome == "interrupted"
    assert first.reply and first.reply != LONG_ANSWER  # cut while it was being heard
    (detected,) = [e for e in logs if e["event"] == "barge_in_detected"]
    assert detected["learning"] is True  # heard during the warm-up, by the double-talk rule
    assert not [e for e in logs if e["event"] == "aec_trained"]
    # the whole question is heard; the stand-in's grammar may turn the cold canceller's residue
    # in the 64 ms pre-roll into a leading "hey robot" (about one run in two): README "Not done yet"
    assert second.transcript.endswith("tell me a joke")
