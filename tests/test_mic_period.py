"""The microphone's period apart from the speaker's (``audio.mic_block_ms``): the end of speech is
decided up to one microphone period late, and a short capture period does not make the speaker's
callbacks any more frequent."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import AsyncExitStack
from pathlib import Path

import numpy as np
import pytest

from daemon.config import AecSettings, AudioSettings
from daemon.devices import open_devices
from hardware.pyaudio_mic import PyAudioMicrophone
from hardware.pyaudio_speaker import PyAudioSpeaker
from hardware.wav_mic import WavMicrophone
from hardware.wav_speaker import WavSpeaker
from hardware.wavfile import write_wav
from tests.pulse import PulseServer, pulse_server

RATE = 16000


def test_the_microphone_runs_shorter_than_the_speaker_by_default() -> None:
    audio = AudioSettings()
    assert audio.mic_block_ms < audio.block_ms


@pytest.mark.parametrize("mic_ms", [5, 10, 20])
async def test_wav_devices_take_their_own_periods(tmp_path: Path, mic_ms: int) -> None:
    question = write_wav(tmp_path / "q.wav", np.zeros(RATE // 10, dtype="<i2"), RATE)
    audio = AudioSettings(input=f"wav:{question}", output=f"wav:{tmp_path / 'out.wav'}", mic_block_ms=mic_ms)
    async with AsyncExitStack() as stack:
        devices = await open_devices(stack, audio, AecSettings(engine="off"), output_rate=24000)
        assert isinstance(devices.mic, WavMicrophone) and isinstance(devices.speaker, WavSpeaker)
        assert devices.mic.block_ms == mic_ms
        assert devices.speaker.block_ms == audio.block_ms == 20
        block = await asyncio.wait_for(devices.mic.read(), 5)
    assert len(block) == RATE * mic_ms // 1000 * 2


@pytest.fixture
def pulse() -> Iterator[PulseServer]:
    with pulse_server() as server:
        yield server


async def test_pyaudio_devices_take_their_own_periods(pulse: PulseServer) -> None:
    audio = AudioSettings(input="pyaudio:default", output="pyaudio:default", mic_block_ms=10)
    async with AsyncExitStack() as stack:
        devices = await open_devices(stack, audio, AecSettings(engine="off"), output_rate=24000)
        mic = devices.mic
        assert isinstance(mic, PyAudioMicrophone)
        blocks = [await asyncio.wait_for(mic.read_timed(), 5) for _ in range(30)]
        await asyncio.wait_for(devices.speaker.write(bytes(4800)), 5)
        await asyncio.wait_for(devices.speaker.drain(), 5)
        card = getattr(devices.speaker, "_inner", None)
    assert all(len(pcm) == 320 for pcm, _ in blocks)  # 10 ms of 16 kHz mono int16
    starts = np.array([t for _, t in blocks])
    # Contiguous 10 ms blocks: each dated about 10 ms after the one before (PortAudio's times jitter).
    assert abs(float(np.median(np.diff(starts))) - 0.01) < 0.001
    assert abs((starts[-1] - starts[0]) - 0.01 * (len(starts) - 1)) < 0.01
    assert isinstance(card, PyAudioSpeaker) and card.block_ms == 20  # the speaker keeps audio.block_ms


def test_the_latency_benchmark_spreads_the_end_of_speech_over_one_speaker_period() -> None:
    from daemon.tools.bench.latency import LEAD_IN_S, lead_in_s

    offsets = [lead_in_s(i, 5, 20) - LEAD_IN_S for i in range(5)]
    assert offsets == pytest.approx([0.0, 0.004, 0.008, 0.012, 0.016])
