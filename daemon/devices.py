"""Open the microphone and speaker named in the config, and the echo reference between them.

``pyaudio:default``, ``pyaudio:NAME``, ``pyaudio:INDEX`` is a sound card (``moss-voice devices``).
``wav:PATH`` plays or records a file on the wall clock (``wavloop:PATH``, input only: the file
over and over, for soak runs). ``room:PATH`` (input only) is a simulated
room: the file's speech plus the echo of what the speaker plays, for echo and barge-in tests and
benchmarks.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from dataclasses import dataclass

from daemon.config import AecSettings, AudioSettings
from daemon.reopening_speaker import ReopeningSpeaker
from hardware.aec import make_echo_canceller as hardware_echo_canceller
from hardware.errors import HardwareError
from hardware.pyaudio_mic import PyAudioMicrophone
from hardware.pyaudio_speaker import PyAudioSpeaker
from hardware.room import RoomAcoustics, RoomMicrophone
from hardware.speaker_tap import TappedSpeaker
from hardware.wav_mic import WavMicrophone
from hardware.wav_speaker import WavSpeaker
from states.echo_reference import EchoReference
from states.ports import EchoCanceller, Microphone, Speaker

INPUT_KINDS = ("pyaudio", "wav", "wavloop", "room")
OUTPUT_KINDS = ("pyaudio", "wav")


@dataclass
class AudioDevices:
    mic: Microphone
    speaker: Speaker
    reference: EchoReference | None
    """What the speaker played, by play time: the echo canceller's far end (None: no AEC)."""


async def open_devices(
    stack: AsyncExitStack, audio: AudioSettings, aec: AecSettings, *, output_rate: int
) -> AudioDevices:
    """Open both devices (closed by ``stack``). Raises HardwareError naming the device."""
    in_kind, _, in_target = audio.input.partition(":")
    out_kind, _, out_target = audio.output.partition(":")
    if in_kind not in INPUT_KINDS:
        raise HardwareError(
            f"microphone {audio.input!r}: unknown kind {in_kind!r} "
            "(supported: pyaudio:DEVICE, wav:PATH, wavloop:PATH, room:PATH)"
        )
    if out_kind not in OUTPUT_KINDS:
        raise HardwareError(
            f"speaker {audio.output!r}: unknown kind {out_kind!r} (supported: pyaudio:DEVICE, wav:PATH)"
        )
    if in_kind == "room" and out_kind != "wav":
        raise HardwareError(f"microphone {audio.input!r}: a simulated room needs a wav: speaker to echo")
    reference = EchoReference(delay_ms=aec.reference_delay_ms) if aec.engine != "off" else None
    speaker: WavSpeaker | TappedSpeaker | ReopeningSpeaker
    if out_kind == "pyaudio":

        async def reopen() -> Speaker:
            card = PyAudioSpeaker(out_target, sample_rate=output_rate, block_ms=audio.block_ms)
            if reference is not None:
                card.on_played = reference.push  # what the card was handed, with when it is heard
            await card.open()
            return card

        first = await reopen()
        stack.push_async_callback((speaker := ReopeningSpeaker(first, reopen)).aclose)
    else:
        wav_speaker = WavSpeaker(out_target, sample_rate=output_rate, block_ms=audio.block_ms)
        tapped = in_kind == "room" or reference is not None
        speaker = TappedSpeaker(wav_speaker, reference=reference) if tapped else wav_speaker
    mic: Microphone
    if in_kind == "room":
        assert isinstance(speaker, TappedSpeaker)
        mic = RoomMicrophone(in_target, speaker=speaker, acoustics=RoomAcoustics(), block_ms=audio.mic_block_ms)
    else:
        mic = new_microphone(audio)
    await mic.open()  # type: ignore[attr-defined]
    stack.push_async_callback(mic.aclose)
    if not isinstance(speaker, ReopeningSpeaker):
        await speaker.open()
        stack.push_async_callback(speaker.aclose)
    return AudioDevices(mic=mic, speaker=speaker, reference=reference)


def new_microphone(audio: AudioSettings) -> Microphone:
    kind, _, target = audio.input.partition(":")
    if kind == "pyaudio":
        return PyAudioMicrophone(target, block_ms=audio.mic_block_ms)
    return WavMicrophone(target, block_ms=audio.mic_block_ms, loop=kind == "wavloop")


async def reopen_microphone(audio: AudioSettings) -> Microphone:
    """The microphone again, after it failed (a USB microphone unplugged and plugged back)."""
    mic = new_microphone(audio)
    await mic.open()  # type: ignore[attr-defined]
    return mic


def make_echo_canceller(aec: AecSettings) -> EchoCanceller | None:
    """None when off: no canceller, no reference, and barge-in does not wait for one to learn."""
    if aec.engine == "off":
        return None
    return hardware_echo_canceller(aec.engine, frame_ms=aec.frame_ms, filter_ms=aec.filter_ms)
