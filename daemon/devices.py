"""Open the microphone and speaker named in the config (``wav:PATH`` today)."""

from __future__ import annotations

from hardware.errors import HardwareError
from hardware.wavfile import WavMicrophone, WavSpeaker


async def open_microphone(spec: str, *, block_ms: int) -> WavMicrophone:
    scheme, _, target = spec.partition(":")
    if scheme == "wav":
        mic = WavMicrophone(target, block_ms=block_ms)
        await mic.open()
        return mic
    raise HardwareError(f"microphone {spec!r}: unknown kind {scheme!r} (supported: wav:PATH)")


async def open_speaker(spec: str, *, sample_rate: int, block_ms: int) -> WavSpeaker:
    scheme, _, target = spec.partition(":")
    if scheme == "wav":
        speaker = WavSpeaker(target, sample_rate=sample_rate, block_ms=block_ms)
        await speaker.open()
        return speaker
    raise HardwareError(f"speaker {spec!r}: unknown kind {scheme!r} (supported: wav:PATH)")
