"""A speaker whose device fails is reopened in the background; the daemon keeps going."""

from __future__ import annotations

import asyncio

import pytest
from structlog.testing import capture_logs

from daemon.reopening_speaker import ReopeningSpeaker
from hardware.errors import HardwareError
from tests.fakes import FakeSpeaker


class DyingSpeaker(FakeSpeaker):
    def __init__(self, writes: int) -> None:
        super().__init__()
        self._left = writes
        self.closed = False

    async def write(self, pcm: bytes) -> None:
        self._left -= 1
        if self._left < 0:
            raise HardwareError("speaker 'pyaudio:USB': the stream stopped (device gone?)")
        await super().write(pcm)

    async def aclose(self) -> None:
        self.closed = True


async def test_a_failed_speaker_is_reopened_and_plays_again() -> None:
    dying = DyingSpeaker(writes=2)
    fresh = FakeSpeaker()
    attempts = 0

    async def reopen() -> FakeSpeaker:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise HardwareError("speaker 'pyaudio:USB': no output device matches 'USB'")  # still unplugged
        return fresh

    speaker = ReopeningSpeaker(dying, reopen, reopen_every_s=0.02)
    with capture_logs() as logs:
        await speaker.write(b"\x01\x00" * 10)
        await speaker.write(b"\x01\x00" * 10)
        with pytest.raises(HardwareError, match="device gone"):
            await speaker.write(b"\x01\x00" * 10)
        with pytest.raises(HardwareError, match="device gone"):  # the turn that follows fails fast too
            await speaker.write(b"\x01\x00" * 10)
        speaker.flush()  # harmless while there is no device
        for _ in range(200):
            if speaker.device is fresh:
                break
            await asyncio.sleep(0.01)
        await speaker.write(b"\x01\x00" * 5)
    assert dying.closed and speaker.device is fresh and attempts == 2
    assert fresh.audio == b"\x01\x00" * 5
    assert speaker.audio_samples_played == 25  # counted across both devices
    events = [e["event"] for e in logs]
    assert events.count("speaker_failed") == 1 and "speaker_reopen_failed" in events and "speaker_recovered" in events
    await speaker.aclose()
