"""The PyAudio microphone and speaker on the real PortAudio path, against a private PulseAudio
(tests/pulse.py): PyAudio -> PortAudio -> ALSA pulse plugin -> null sinks. No sound card needed."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import TypeVar

import numpy as np
import pytest
from structlog.testing import capture_logs

from hardware.errors import HardwareError
from hardware.pyaudio_devices import DeviceInfo, format_candidates, format_devices, list_devices, select_device
from hardware.pyaudio_mic import PyAudioMicrophone
from hardware.pyaudio_speaker import PyAudioSpeaker
from hardware.wavfile import load_wav_16k_mono
from tests.pulse import PulseServer, pulse_server

T = TypeVar("T")
RATE = 16000
LOUD = 500  # int16 threshold between silence and our test signals


async def within(aw: Awaitable[T], seconds: float = 10.0) -> T:
    return await asyncio.wait_for(aw, seconds)


@pytest.fixture
def pulse() -> Iterator[PulseServer]:
    with pulse_server() as server:
        yield server


@pytest.fixture(scope="module")
def speech_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("espeak-ng") is None or shutil.which("sox") is None:
        pytest.skip("espeak-ng and sox are needed to make test speech")
    path = tmp_path_factory.mktemp("speech") / "speech.wav"
    espeak = subprocess.run(
        ["espeak-ng", "-v", "en-us", "--stdout", "turn on the kitchen light"], capture_output=True, check=True
    )
    subprocess.run(
        ["sox", "-t", "wav", "-", "-r", "16000", "-c", "1", "-b", "16", str(path)], input=espeak.stdout, check=True
    )
    return path


def tone(freq: float, seconds: float, rate: int, amplitude: float = 0.5) -> bytes:
    t = np.arange(round(seconds * rate)) / rate
    return (np.sin(2 * np.pi * freq * t) * amplitude * 32767).astype("<i2").tobytes()


def loud_span(x: np.ndarray) -> tuple[int, int]:
    """[first, last] index of the samples above LOUD."""
    idx = np.flatnonzero(np.abs(x.astype(np.int32)) > LOUD)
    assert len(idx), "no signal recorded"
    return int(idx[0]), int(idx[-1])


def dominant_hz(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x.astype(np.float64) * np.hanning(len(x))))
    return float(np.argmax(spectrum)) * rate / len(x)


class Capture:
    """Reads a microphone in a task, keeping (block, capture time) pairs."""

    def __init__(self, mic: PyAudioMicrophone) -> None:
        self.mic = mic
        self.blocks: list[tuple[bytes, float]] = []
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            self.blocks.append(await self.mic.read_timed())

    async def stop(self) -> np.ndarray:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        return self.samples

    @property
    def samples(self) -> np.ndarray:
        return np.frombuffer(b"".join(b for b, _ in self.blocks), "<i2")

    def time_of(self, index: int) -> float:
        """clock() capture time of sample ``index`` of ``samples``."""
        per_block = self.mic.block_samples
        block, offset = divmod(index, per_block)
        return self.blocks[block][1] + offset / RATE


async def play_into_mic(pulse: PulseServer, wav: Path) -> float:
    """Play ``wav`` into the virtual microphone; returns the clock time paplay was started."""
    started = time.monotonic()
    player = pulse.play_into_mic(wav)
    try:
        await within(asyncio.to_thread(player.wait, 10))
    finally:
        if player.poll() is None:
            player.kill()
            player.wait()
    return started


# --------------------------------------------------------------------------- device selection (no server needed)

DEVICES = [
    DeviceInfo(0, "HDA Intel PCH: ALC892 Analog (hw:0,0)", 2, 8, 44100, "ALSA"),
    DeviceInfo(1, "USB Audio Device: - (hw:1,0)", 1, 2, 48000, "ALSA"),
    DeviceInfo(2, "HDMI 0 (hw:0,3)", 0, 8, 48000, "ALSA"),
    DeviceInfo(3, "pulse", 32, 32, 44100, "ALSA"),
    DeviceInfo(4, "default", 32, 32, 44100, "ALSA", is_default_input=True, is_default_output=True),
]


@pytest.mark.parametrize(
    ("spec", "kind", "index"),
    [
        ("default", "input", 4),
        ("DEFAULT", "output", 4),
        ("usb", "input", 1),
        ("hdmi", "output", 2),
        ("PULSE", "input", 3),
        (3, "output", 3),
        ("1", "input", 1),
        (" alc892 ", "output", 0),
    ],
)
def test_select_device_by_name_index_or_default(spec: str | int, kind: str, index: int) -> None:
    assert select_device(DEVICES, spec, kind).index == index  # type: ignore[arg-type]


def test_select_device_errors_name_the_request_and_the_choices() -> None:
    with pytest.raises(HardwareError, match=r"no input device matches 'Respeaker'") as info:
        select_device(DEVICES, "Respeaker", "input")
    assert "'pulse'" in str(info.value) and "'USB Audio Device: - (hw:1,0)'" in str(info.value)
    assert "HDMI" not in str(info.value)  # it has no inputs
    with pytest.raises(HardwareError, match="no input device with index 2"):
        select_device(DEVICES, "2", "input")
    with pytest.raises(HardwareError, match="ambiguous"):
        select_device(DEVICES, "hw:0", "output")
    with pytest.raises(HardwareError, match=r"no default output device.*no output devices at all"):
        select_device([], "default", "output")


def test_format_candidates_prefer_the_wanted_rate_in_mono() -> None:
    usb = DEVICES[1]
    assert format_candidates(16000, usb, "input") == [(16000, 1), (48000, 1)]
    assert format_candidates(24000, usb, "output") == [(24000, 1), (24000, 2), (48000, 1), (48000, 2)]
    assert format_candidates(24000, usb, "output", rate=44100, channels=2) == [(44100, 2)]
    assert format_candidates(16000, DEVICES[0], "output")[:3] == [(16000, 1), (16000, 2), (16000, 8)]


def test_format_devices_is_a_table_marking_the_defaults() -> None:
    text = format_devices(DEVICES)
    lines = text.splitlines()
    assert lines[0].split() == ["index", "in", "out", "rate", "api", "name"]
    assert lines[-1].split()[:6] == ["4", "32", "32", "44100", "ALSA", "default"]
    assert "(default input, default output)" in lines[-1]
    assert "no audio devices" in format_devices([])


async def test_unopened_devices_refuse_io() -> None:
    mic = PyAudioMicrophone()
    with pytest.raises(HardwareError, match="before open"):
        await mic.read()
    await mic.aclose()
    with pytest.raises(HardwareError, match="already closed"):
        await mic.open()
    speaker = PyAudioSpeaker(sample_rate=24000)
    with pytest.raises(HardwareError, match="before open"):
        await speaker.write(b"\0\0")
    with pytest.raises(ValueError, match="block_ms"):
        PyAudioMicrophone(block_ms=0)


# --------------------------------------------------------------------------- real PortAudio, private PulseAudio


def test_list_devices_sees_the_private_server(pulse: PulseServer) -> None:
    devices = list_devices()
    names = {d.name for d in devices}
    assert {"pulse", "default"} <= names, format_devices(devices)
    default = select_device(devices, "default", "input")
    assert default.is_default_input and default.max_input_channels >= 1
    assert select_device(devices, "default", "output").is_default_output
    assert "pulse" in format_devices(devices)


async def test_microphone_hears_the_played_file_exactly(pulse: PulseServer, speech_wav: Path) -> None:
    reference = load_wav_16k_mono(speech_wav)
    async with PyAudioMicrophone("default") as mic:
        assert mic.stream_format is not None
        assert (mic.stream_format.rate, mic.stream_format.channels) == (16000, 1)  # no conversion needed
        capture = Capture(mic)
        await asyncio.sleep(0.2)
        started = await play_into_mic(pulse, speech_wav)
        await asyncio.sleep(0.3)
        got = await capture.stop()
    assert all(len(b) == 640 for b, _ in capture.blocks)
    times = np.array([t for _, t in capture.blocks])
    assert np.allclose(np.diff(times), 0.02, atol=0.005)  # continuous 20 ms blocks
    first, _ = loud_span(got)
    ref_first, _ = loud_span(reference)
    aligned = got[first - ref_first : first - ref_first + len(reference)]
    assert np.array_equal(aligned, reference)  # 16 kHz mono all the way: bit-exact
    speech_heard_at = capture.time_of(first) - ref_first / RATE  # when the file's first sample was captured
    assert -0.05 < speech_heard_at - started < 1.0


async def test_microphone_resamples_and_downmixes_a_48k_stereo_device(pulse: PulseServer, speech_wav: Path) -> None:
    reference = load_wav_16k_mono(speech_wav).astype(np.float64)
    async with PyAudioMicrophone("pulse", device_rate=48000, device_channels=2) as mic:
        assert mic.stream_format is not None
        assert (mic.stream_format.rate, mic.stream_format.channels) == (48000, 2)
        capture = Capture(mic)
        await asyncio.sleep(0.2)
        await play_into_mic(pulse, speech_wav)
        await asyncio.sleep(0.3)
        got = (await capture.stop()).astype(np.float64)
    assert all(len(b) == 640 for b, _ in capture.blocks)
    # Align by cross-correlation, then compare: the same speech at 16 kHz, same length.
    corr = np.correlate(got, reference, mode="valid")
    lag = int(np.argmax(corr))
    segment = got[lag : lag + len(reference)]
    similarity = float(np.dot(segment, reference) / np.sqrt(np.dot(segment, segment) * np.dot(reference, reference)))
    assert similarity > 0.99
    got_first, got_last = loud_span(got)
    ref_first, ref_last = loud_span(reference)
    assert abs((got_last - got_first) - (ref_last - ref_first)) < 0.01 * RATE


async def test_speaker_plays_a_24k_tone_at_its_pitch_and_length(pulse: PulseServer) -> None:
    pcm = tone(1000, 1.0, 24000)
    async with PyAudioSpeaker("default", sample_rate=24000) as speaker:
        assert speaker.stream_format is not None
        assert (speaker.stream_format.rate, speaker.stream_format.channels) == (24000, 1)
        with pulse.record_speaker() as recording:
            started = time.monotonic()
            for i in range(0, len(pcm), 777):  # odd sizes: samples split across writes
                await within(speaker.write(pcm[i : i + 777]))
            audible = await within(speaker.wait_audible())
            await within(speaker.drain())
            drained = time.monotonic()
            await asyncio.sleep(0.1)
    x = recording.samples
    first, last = loud_span(x)
    assert abs((last - first + 1) / RATE - 1.0) < 0.01
    assert abs(dominant_hz(x[first:last], RATE) - 1000) < 5
    assert np.sqrt(np.mean(x[first:last].astype(np.float64) ** 2)) / 32767 == pytest.approx(0.5 / np.sqrt(2), rel=0.05)
    assert started < audible < started + 1.0
    assert drained - started >= 0.95  # drain waited for the whole second to play


async def test_speaker_resamples_and_feeds_both_channels_of_a_stereo_device(pulse: PulseServer) -> None:
    async with PyAudioSpeaker("pulse", sample_rate=24000, device_rate=48000, device_channels=2) as speaker:
        assert speaker.stream_format is not None
        assert (speaker.stream_format.rate, speaker.stream_format.channels) == (48000, 2)
        with pulse.record_speaker() as recording:
            pcm = tone(700, 0.8, 24000)
            await within(speaker.write(pcm[:1001]))  # an odd byte carried to the next write
            await within(speaker.write(pcm[1001:]))
            await within(speaker.drain())
            await asyncio.sleep(0.1)
    x = recording.samples
    first, last = loud_span(x)
    assert abs((last - first + 1) / RATE - 0.8) < 0.01
    assert abs(dominant_hz(x[first:last], RATE) - 700) < 5
    # The mono sink averages the two channels: full level only if both carry the tone.
    assert np.sqrt(np.mean(x[first:last].astype(np.float64) ** 2)) / 32767 == pytest.approx(0.5 / np.sqrt(2), rel=0.05)


async def test_flush_stops_playback_quickly_and_the_speaker_plays_on(pulse: PulseServer) -> None:
    async with PyAudioSpeaker("default", sample_rate=24000) as speaker:
        with pulse.record_speaker() as recording:
            await within(speaker.write(tone(500, 10.0, 24000)))
            audible = await within(speaker.wait_audible())
            await asyncio.sleep(0.5)
            flushed_at = time.monotonic()
            speaker.flush()
            assert speaker.queued_seconds == 0
            await within(speaker.drain(), 2)  # nothing left to play
            await asyncio.sleep(0.5)
            played = recording.samples.copy()
            # Usable again at once: the new audio opens a new audible period.
            await within(speaker.write(tone(900, 0.3, 24000)))
            again = await within(speaker.wait_audible())
            await within(speaker.drain())
            await asyncio.sleep(0.1)
    first, last = loud_span(played)
    after_flush = (last - first + 1) / RATE - (flushed_at - audible)
    assert after_flush < 0.5  # the device's own buffer (tens of ms here), never the queued 9.5 s
    assert again > flushed_at
    x = recording.samples[len(played) :]
    first, last = loud_span(x)
    assert abs(dominant_hz(x[first:last], RATE) - 900) < 5


async def test_capture_time_playback_time_and_tap_agree_through_a_loopback(pulse: PulseServer) -> None:
    """Speaker -> micfeed -> mic: the mic's capture time of a beep matches wait_audible and the tap."""
    pulse.pactl("set-default-sink", "micfeed")
    tapped: list[tuple[bytes, float]] = []
    async with (
        PyAudioSpeaker("default", sample_rate=24000, on_played=lambda pcm, t: tapped.append((pcm, t))) as speaker,
        PyAudioMicrophone("default") as mic,
    ):
        capture = Capture(mic)
        await asyncio.sleep(0.3)
        await within(speaker.write(bytes(4800) + tone(800, 0.3, 24000)))  # 100 ms of silence first
        audible = await within(speaker.wait_audible())
        await within(speaker.drain())
        await asyncio.sleep(0.3)
        heard = await capture.stop()
    beep_audible = audible + 0.1
    beep_heard = capture.time_of(loud_span(heard)[0])
    assert abs(beep_heard - beep_audible) < 0.15

    # The tap: contiguous 16 kHz audio (silence included) whose times match the device's.
    tap = np.frombuffer(b"".join(p for p, _ in tapped), "<i2")
    starts = np.array([t for _, t in tapped])
    lengths = np.array([len(p) // 2 for p, _ in tapped])
    assert np.all(np.abs(starts[1:] - (starts[:-1] + lengths[:-1] / RATE)) < 0.005)
    onset = loud_span(tap)[0]
    k = int(np.searchsorted(np.cumsum(lengths), onset, side="right"))
    tap_time = starts[k] + (onset - int(np.sum(lengths[:k]))) / RATE
    assert abs(tap_time - beep_audible) < 0.02
    assert abs(dominant_hz(tap[onset : onset + 4000], RATE) - 800) < 5


async def test_unknown_device_is_an_error_listing_the_devices(pulse: PulseServer) -> None:
    with pytest.raises(HardwareError, match=r"microphone 'Respeaker 4-mic'.*no input device matches") as info:
        await within(PyAudioMicrophone("Respeaker 4-mic").open())
    assert "'pulse'" in str(info.value) and "'default'" in str(info.value)
    speaker = PyAudioSpeaker(99, sample_rate=16000)
    with pytest.raises(HardwareError, match=r"speaker '99'.*no output device with index 99.*'pulse'"):
        await within(speaker.open())
    await speaker.aclose()


async def test_negotiation_falls_back_to_the_device_rate_or_names_what_it_tried(pulse: PulseServer) -> None:
    # PortAudio's pulse device refuses 500 kHz: the speaker falls back to the device's default
    # rate (44.1 kHz, mono) and resamples to it.
    async with PyAudioSpeaker("pulse", sample_rate=500_000) as speaker:
        assert speaker.stream_format is not None
        assert (speaker.stream_format.rate, speaker.stream_format.channels) == (44100, 1)
        with pulse.record_speaker() as recording:
            await within(speaker.write(tone(1000, 0.3, 500_000)))
            await within(speaker.drain())
            await asyncio.sleep(0.1)
    x = recording.samples
    first, last = loud_span(x)
    assert abs(dominant_hz(x[first:last], RATE) - 1000) < 5
    with pytest.raises(HardwareError, match=r"microphone 'pulse': cannot open input device 0 'pulse': 16000 Hz x64"):
        await within(PyAudioMicrophone("pulse", device_channels=64).open())


async def test_a_vanished_sound_server_fails_reads_and_writes(pulse: PulseServer) -> None:
    with capture_logs() as logs:
        async with (
            PyAudioMicrophone("default") as mic,
            PyAudioSpeaker("default", sample_rate=16000) as speaker,
        ):
            await within(mic.read())
            await within(speaker.write(tone(440, 5.0, 16000)))
            pulse.kill()
            with pytest.raises(HardwareError, match="microphone 'default'"):
                for _ in range(500):  # what was captured before, then the failure: never a hang
                    await within(mic.read(), 5)
            with pytest.raises(HardwareError, match="speaker 'default'"):
                await within(speaker.drain(), 5)
            with pytest.raises(HardwareError, match="speaker 'default'"):
                await within(speaker.write(b"\0\0"), 5)
    failed = [e for e in logs if e["event"] == "audio_device_failed"]
    assert {e["kind"] for e in failed} == {"input", "output"}


async def test_a_reader_that_falls_behind_loses_the_oldest_blocks(pulse: PulseServer) -> None:
    with capture_logs() as logs:
        async with PyAudioMicrophone("default", max_queue_s=0.2) as mic:
            await within(mic.read())
            await asyncio.sleep(0.6)  # 30 blocks arrive, 10 fit
            assert mic.queued_blocks == 10
            assert mic.dropped_blocks >= 15
            _, t = await within(mic.read_timed())
            assert time.monotonic() - t < 0.35  # the newest audio was kept
    assert any(e["event"] == "audio_overflow" and e["source"] == "queue" for e in logs)
