"""The doctor's audio checks: the sound cards PortAudio sees, one second from the microphone
(its level), and the speaker opened (a short tone only when asked: ``--play``)."""

from __future__ import annotations

import asyncio
import math
import os
from pathlib import Path

import numpy as np

from daemon.config import AudioSettings
from daemon.devices import new_microphone
from daemon.doctor import Finding
from hardware.errors import HardwareError
from states.ports import Speaker

RECORD_S = 1.0
SILENT_DBFS = -70.0
"""Below this RMS level a second of microphone is called silent (a muted or unplugged input)."""
TONE_HZ = 440.0
TONE_S = 0.3
DEFAULT_OUTPUT_RATE = 24000


async def check_device_list(audio: AudioSettings) -> list[Finding]:
    """What PortAudio lists; only a FAIL when the config names a sound card and there is none."""
    from hardware.pyaudio_devices import list_devices  # PyAudio only when asked

    uses_card = audio.input.startswith("pyaudio:") or audio.output.startswith("pyaudio:")
    try:
        devices = await asyncio.to_thread(list_devices)
    except HardwareError as exc:
        return [Finding("audio devices", "FAIL" if uses_card else "warn", str(exc), "see `moss-voice devices`")]
    inputs = [d.name for d in devices if d.max_input_channels > 0]
    outputs = [d.name for d in devices if d.max_output_channels > 0]
    detail = f"{len(inputs)} input(s): {', '.join(inputs) or 'none'}; "
    detail += f"{len(outputs)} output(s): {', '.join(outputs) or 'none'}"
    if uses_card and not (inputs and outputs):
        return [Finding("audio devices", "FAIL", detail, "plug in the sound card; check the groups and /dev/snd below")]
    return [Finding("audio devices", "ok", detail)]


def level_dbfs(pcm: bytes) -> float:
    """RMS level of int16 PCM relative to full scale; -inf for digital silence."""
    samples = np.frombuffer(pcm, dtype=np.int16).astype(np.float64)
    if samples.size == 0:
        return -math.inf
    rms = float(np.sqrt(np.mean(samples * samples)))
    return 20 * math.log10(rms / 32768) if rms > 0 else -math.inf


async def check_microphone(audio: AudioSettings) -> list[Finding]:
    """Open ``audio.input``, record a second, report its level."""
    name = f"microphone {audio.input}"
    mic = new_microphone(audio)
    try:
        await mic.open()  # type: ignore[attr-defined]
    except HardwareError as exc:
        return [Finding("microphone", "FAIL", f"{name}: {exc}", "fix audio.input (see `moss-voice devices`)")]
    try:
        pcm = bytearray()
        while len(pcm) < int(mic.sample_rate * RECORD_S) * 2:
            pcm += await mic.read()
    except HardwareError as exc:
        return [Finding("microphone", "FAIL", f"{name}: opened but {exc}", "check the card and its cable")]
    finally:
        await mic.aclose()
    level = level_dbfs(bytes(pcm))
    shown = "digital silence" if math.isinf(level) else f"{level:.1f} dBFS"
    if level < SILENT_DBFS and audio.input.startswith("pyaudio:"):
        fix = "unmute the input and raise its gain (alsamixer), or check that the right card is configured"
        return [Finding("microphone", "warn", f"{name}: silent for {RECORD_S:g} s ({shown})", fix)]
    if level < SILENT_DBFS:  # a file may well start with silence: not a fault
        return [Finding("microphone", "ok", f"{name}: its first {RECORD_S:g} s are silent ({shown})")]
    return [Finding("microphone", "ok", f"{name}: {RECORD_S:g} s recorded, level {shown}")]


def tone(rate: int, seconds: float = TONE_S, hz: float = TONE_HZ) -> bytes:
    """A sine at -12 dBFS with 10 ms fades (no click)."""
    t = np.arange(int(rate * seconds)) / rate
    wave = 0.25 * np.sin(2 * np.pi * hz * t)
    fade = min(len(t) // 2, int(rate * 0.01))
    if fade:
        ramp = np.linspace(0.0, 1.0, fade)
        wave[:fade] *= ramp
        wave[-fade:] *= ramp[::-1]
    return (wave * 32767).astype(np.int16).tobytes()


async def check_speaker(audio: AudioSettings, *, play: bool) -> list[Finding]:
    """Open ``audio.output``; play a short tone only when ``play``. A ``wav:`` output is not
    written (that would replace the file) unless ``play``: its directory must be writable."""
    kind, _, target = audio.output.partition(":")
    name = f"speaker {audio.output}"
    rate = audio.output_rate or DEFAULT_OUTPUT_RATE
    if kind == "wav" and not play:
        folder = (Path.cwd() / target).parent
        if not await asyncio.to_thread(os.access, folder, os.W_OK):
            return [Finding("speaker", "FAIL", f"{name}: cannot write in {folder}", "fix audio.output")]
        return [Finding("speaker", "ok", f"{name}: {folder} is writable (nothing played; --play writes a tone)")]
    speaker: Speaker
    if kind == "wav":
        from hardware.wav_speaker import WavSpeaker

        speaker = WavSpeaker(target, sample_rate=rate, block_ms=audio.block_ms)
    else:
        from hardware.pyaudio_speaker import PyAudioSpeaker

        speaker = PyAudioSpeaker(target, sample_rate=rate, block_ms=audio.block_ms)
    try:
        await speaker.open()
    except HardwareError as exc:
        return [Finding("speaker", "FAIL", f"{name}: {exc}", "fix audio.output (see `moss-voice devices`)")]
    try:
        if play:
            await speaker.write(tone(rate))
            await speaker.drain()
    except HardwareError as exc:
        return [Finding("speaker", "FAIL", f"{name}: opened but {exc}", "check the card and its cable")]
    finally:
        await speaker.aclose()
    did = f"played a {TONE_S:g} s {TONE_HZ:g} Hz tone" if play else "opened (nothing played; --play plays a tone)"
    return [Finding("speaker", "ok", f"{name} at {rate} Hz: {did}")]
