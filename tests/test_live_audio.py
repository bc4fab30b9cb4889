"""The daemon on the live audio path: PyAudio against a private PulseAudio server whose virtual
microphone the test talks into and whose virtual speaker it records. No sound card needed."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from contextlib import AsyncExitStack
from pathlib import Path

import numpy as np
import pytest
from structlog.testing import capture_logs

from daemon.app import App
from daemon.config import AsrSettings, AudioSettings, LlmSettings, Settings, TtsSettings, VadSettings
from daemon.tools.stubs.funasr import make_question_wav
from daemon.tools.stubs.runner import demo_llm_behaviour, start_stubs
from tests.pulse import PulseServer, pulse_server

pytestmark = pytest.mark.slow
ANSWER = "It is sunny today. Take a walk!"


@pytest.fixture
def pulse() -> Iterator[PulseServer]:
    with pulse_server() as server:
        yield server


async def test_a_question_into_the_microphone_is_answered_on_the_speaker(pulse: PulseServer, tmp_path: Path) -> None:
    question = make_question_wav("what is the weather like today", tmp_path / "q.wav")
    async with AsyncExitStack() as stack:
        asr, llm, tts = await start_stubs(stack, llm=demo_llm_behaviour(answers={"weather": ANSWER}))
        settings = Settings(
            asr=AsrSettings(url=asr.url, final_timeout_s=1.0),
            llm=LlmSettings(url=llm.url),
            tts=TtsSettings(url=tts.url),
            audio=AudioSettings(input="pyaudio:default", output="pyaudio:default"),
            vad=VadSettings(end_silence_ms=500, no_speech_timeout_s=10),
        )
        app = App(settings, once=True)
        with pulse.record_speaker() as recording, capture_logs() as logs:
            run = asyncio.create_task(app.run())
            while not any(e["event"] == "state_changed" for e in logs):  # noqa: ASYNC110 - no hook to wait on
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)  # after the listening earcon
            player = pulse.play_into_mic(question)
            code = await asyncio.wait_for(run, 60)
            await asyncio.to_thread(player.wait, 10)
            heard = recording.stop()
    assert code == 0
    (finished,) = [e for e in logs if e["event"] == "turn_finished"]
    assert finished["transcript"] == "what is the weather like today"
    assert finished["reply"] == ANSWER
    assert isinstance(finished["first_audio_ms"], int)
    opened = [e for e in logs if e["event"] == "audio_device_opened"]
    assert len(opened) == 2  # one long-lived stream each way
    loud = np.flatnonzero(np.abs(heard.astype(np.int32)) > 1000)
    assert len(loud) and (loud[-1] - loud[0]) / 16000 > 1.0  # the spoken answer reached the speaker


def test_devices_command_lists_the_cards(pulse: PulseServer) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "daemon", "devices"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "pulse" in result.stdout and "default" in result.stdout
