"""The simulated room: the microphone hears the user on time and the speaker's echo delayed and
scaled; the echo reference fed by the tapped speaker lines up with that echo to the sample, so
the echo canceller on the room microphone removes it.

Exact tests run on a FakeClock (time moves only when the test says so); one runs on the wall clock.
"""

from __future__ import annotations

import asyncio
import wave
from pathlib import Path

import numpy as np
import pytest
import soxr

from daemon.tools.bench.aec import erle_db
from daemon.tools.bench.vad import synth_speech
from hardware import wavfile
from hardware.aec import SpeexEchoCanceller
from hardware.errors import HardwareError
from hardware.room import RoomAcoustics, RoomMicrophone
from hardware.speaker_tap import TappedSpeaker
from hardware.wav_speaker import WavSpeaker
from hardware.wavfile import load_wav_16k_mono
from states.echo_reference import EchoReference
from states.ports import Microphone, Speaker

RATE = 16000
TIMEOUT = 20.0
DIRECT = RoomAcoustics(echo_delay_ms=40.0, echo_gain=0.5, reflections=(), noise_rms=0.0)


class FakeClock:
    """A monotonic clock and a matching sleep; time moves only in ``advance``."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        if delay <= 1e-9:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sleepers.append((self.now + delay, fut))
        await fut

    async def advance(self, seconds: float) -> None:
        """Move time forward, waking each sleeper at its own deadline, in order."""
        target = self.now + seconds
        await settle()
        while True:
            self._sleepers = [(t, f) for t, f in self._sleepers if not f.done()]
            due = [t for t, _ in self._sleepers if t <= target + 1e-9]
            if not due:
                break
            self.now = max(self.now, min(due))
            for t, f in self._sleepers:
                if t <= self.now + 1e-9:
                    f.set_result(None)
            await settle()
        self.now = target
        await settle()


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def write_wav(path: Path, pcm: np.ndarray, rate: int = RATE) -> Path:
    return wavfile.write_wav(path, pcm, rate)


def file_samples(path: Path) -> np.ndarray:
    with wave.open(str(path), "rb") as w:
        return np.frombuffer(w.readframes(w.getnframes()), "<i2")


def noise(n: int, seed: int, level: int = 8000) -> np.ndarray:
    return np.random.default_rng(seed).integers(-level, level, n).astype("<i2")


def delayed(x: np.ndarray, samples: int, n: int) -> np.ndarray:
    """``x`` delayed by ``samples``, cut or padded to ``n``, as float64."""
    out = np.zeros(n)
    body = x[: max(0, n - samples)].astype(np.float64)
    out[samples : samples + len(body)] = body
    return out


async def read_blocks(mic: RoomMicrophone, count: int, ref: EchoReference | None = None) -> tuple[bytes, bytes]:
    """``count`` mic blocks, and the far end the reference gives for each (if a reference is given)."""
    near, far = bytearray(), bytearray()
    for _ in range(count):
        block = await mic.read()
        near += block
        if ref is not None:
            t = mic.last_capture_time
            assert t is not None
            far += ref.far_for(t, len(block))
    return bytes(near), bytes(far)


async def run_fake(clock: FakeClock, reader: asyncio.Task[tuple[bytes, bytes]]) -> tuple[bytes, bytes]:
    while not reader.done():
        await clock.advance(0.02)
    return await asyncio.wait_for(reader, TIMEOUT)


# --------------------------------------------------------------------------- the room microphone


@pytest.mark.parametrize("speaker_rate", [16000, 24000])
async def test_room_hears_the_user_on_time_and_the_speaker_delayed_and_scaled(
    tmp_path: Path, speaker_rate: int
) -> None:
    user = noise(RATE // 10, seed=1)  # 100 ms, over before the echo arrives
    user_wav = write_wav(tmp_path / "user.wav", user)
    clock = FakeClock()
    inner = WavSpeaker(tmp_path / "out.wav", sample_rate=speaker_rate, clock=clock, sleep=clock.sleep)
    spk = TappedSpeaker(inner, clock=clock, sleep=clock.sleep)
    mic = RoomMicrophone(user_wav, speaker=spk, acoustics=DIRECT, clock=clock, sleep=clock.sleep)
    async with spk, mic:  # opened at the same clock time: file offsets line up
        reader = asyncio.create_task(read_blocks(mic, 50))
        await clock.advance(0.1)
        await spk.write(noise(speaker_rate * 3 // 10, seed=2).tobytes())
        near_b, _ = await run_fake(clock, reader)
        assert mic.last_capture_time == pytest.approx(1000.0 + 49 * 0.02)
    near = np.frombuffer(near_b, "<i2")
    played = file_samples(tmp_path / "out.wav")
    assert inner.first_audio_offset == speaker_rate * 12 // 100  # written at 100 ms: the burst starts in the next block
    if speaker_rate == RATE:
        expect = np.rint(delayed(user, 0, len(near)) + 0.5 * delayed(played, 640, len(near)))
        assert np.array_equal(near, expect.astype("<i2"))
    else:  # the tap's resampler against an offline one: the same sound, 40 ms later, halved
        played16 = soxr.resample(played.astype(np.float32), speaker_rate, RATE, quality="QQ")
        echo = near - delayed(user, 0, len(near))
        expect = 0.5 * delayed(played16, 640, len(near))
        assert np.corrcoef(echo, expect)[0, 1] > 0.999
        assert np.sqrt(np.mean((echo - expect) ** 2)) < 0.02 * np.sqrt(np.mean(expect**2))
    echo_at = RATE * 12 // 100 + 640
    assert np.abs(near[echo_at : echo_at + RATE * 3 // 10]).max() > 2000
    assert not np.any(near[RATE // 10 : echo_at - 2])  # between the user and the echo: nothing


async def test_room_without_a_speaker_is_a_wav_microphone(tmp_path: Path) -> None:
    user = noise(1000, seed=3)
    clock = FakeClock()
    quiet = RoomAcoustics(noise_rms=0.0)
    user_wav = write_wav(tmp_path / "u.wav", user)
    async with RoomMicrophone(user_wav, acoustics=quiet, clock=clock, sleep=clock.sleep) as mic:
        assert isinstance(mic, Microphone) and mic.duration_s == pytest.approx(1000 / RATE)
        reader = asyncio.create_task(read_blocks(mic, 5))
        near, _ = await run_fake(clock, reader)
    assert near == user.tobytes() + bytes(2 * (1600 - 1000))  # the file, then silence
    async with RoomMicrophone(None, clock=clock, sleep=clock.sleep) as hiss:  # nobody, default room noise
        reader = asyncio.create_task(read_blocks(hiss, 50))
        room, _ = await run_fake(clock, reader)
    assert 8 < np.sqrt(np.mean(np.frombuffer(room, "<i2").astype(float) ** 2)) < 12


async def test_room_errors_are_clear(tmp_path: Path) -> None:
    mic = RoomMicrophone(tmp_path / "missing.wav")
    with pytest.raises(HardwareError, match="before open"):
        await mic.read()
    with pytest.raises(HardwareError, match=r"room:.*missing\.wav.*file not found"):
        await mic.open()
    with pytest.raises(ValueError, match="block_ms"):
        RoomMicrophone(block_ms=0)
    with pytest.raises(ValueError, match=">= 0"):
        RoomAcoustics(echo_delay_ms=-1.0)
    with pytest.raises(ValueError, match="finite"):
        RoomAcoustics(reflections=((float("nan"), 0.1),))
    closed = RoomMicrophone()
    await closed.open()
    await closed.aclose()
    with pytest.raises(HardwareError, match="after close"):
        await closed.read()


def test_offline_render_matches_the_acoustics() -> None:
    far = noise(4000, seed=4)
    near = noise(1000, seed=5)
    room = RoomAcoustics(echo_delay_ms=10.0, echo_gain=0.5, reflections=((5.0, -0.25),), noise_rms=0.0)
    assert room.taps() == ((160, 0.5), (240, -0.25))
    mic = room.render(far, near)
    expect = delayed(near, 0, 4000) + 0.5 * delayed(far, 160, 4000) - 0.25 * delayed(far, 240, 4000)
    assert np.array_equal(mic, np.clip(np.rint(expect), -32768, 32767).astype("<i2"))


# --------------------------------------------------------------------------- the tapped speaker


async def test_tapped_speaker_forwards_the_speaker_port(tmp_path: Path) -> None:
    clock = FakeClock()
    inner = WavSpeaker(tmp_path / "o.wav", sample_rate=24000, clock=clock, sleep=clock.sleep)
    ref = EchoReference()
    spk = TappedSpeaker(inner, reference=ref, clock=clock, sleep=clock.sleep)
    assert isinstance(spk, Speaker) and spk.sample_rate == 24000
    await spk.open()
    await clock.advance(0.04)
    await spk.write(np.full(2400, 1000, dtype="<i2").tobytes())  # 100 ms
    audible = asyncio.create_task(spk.wait_audible())
    drained = asyncio.create_task(spk.drain())
    await clock.advance(0.2)
    assert await asyncio.wait_for(audible, TIMEOUT) == pytest.approx(1000.06)  # the tick after the write
    await asyncio.wait_for(drained, TIMEOUT)
    await spk.write(np.full(24000, 1000, dtype="<i2").tobytes())
    await clock.advance(0.04)
    spk.flush()
    await clock.advance(0.1)
    assert inner.audio_samples_played == 2400 + 960  # two blocks of the second write, then the flush
    known = spk.known_until()  # polls the file first
    assert spk.samples_16k > 0 and ref.end_time == pytest.approx(known, abs=0.001)
    played = spk.played_between(1000.06, 1000.16)  # the 100 ms tone, at 16 kHz
    assert len(played) == 1600 and np.abs(played[8:-8].astype(int) - 1000).max() < 30
    assert ref.far_for(1000.06, 3200) == played.tobytes()  # the reference got the same samples
    assert not spk.played_between(999.0, 1000.0).any()  # before open: silence
    await spk.aclose()
    with pytest.raises(HardwareError, match="after close"):
        await inner.write(b"\0\0")
    assert spk.known_until() == float("inf")


# --------------------------------------------------------------------------- reference + room + AEC


async def test_reference_lines_up_with_the_room_echo_and_aec_removes_it(tmp_path: Path) -> None:
    """The daemon's path: speaker (TTS rate) -> tap -> EchoReference; room mic -> far_for -> AEC."""
    text = "Hello, I am the service robot. The meeting room is on the second floor, next to the elevator."
    speech16 = load_wav_16k_mono(synth_speech(tmp_path / "robot.wav", text, "en-us"))
    speech24 = soxr.resample(speech16, RATE, 24000)  # PaddleSpeech's rate
    clock = FakeClock(start=2345.678)
    ref = EchoReference(delay_ms=40.0)
    inner = WavSpeaker(tmp_path / "reply.wav", sample_rate=24000, clock=clock, sleep=clock.sleep)
    spk = TappedSpeaker(inner, reference=ref, clock=clock, sleep=clock.sleep)
    room = RoomAcoustics(noise_rms=0.0)  # direct echo 40 ms x0.5, reflections +13 ms x0.2, +29 ms x-0.12
    mic = RoomMicrophone(speaker=spk, acoustics=room, clock=clock, sleep=clock.sleep)
    await spk.open()
    await clock.advance(0.013)  # the mic opens later: the shared sample grid still lines them up
    await mic.open()
    seconds = len(speech24) / 24000 + 0.2
    blocks = int(seconds / 0.02)
    try:
        reader = asyncio.create_task(read_blocks(mic, blocks, ref))
        await spk.write(speech24.tobytes())
        near_b, far_b = await run_fake(clock, reader)
    finally:
        await mic.aclose()
        await spk.aclose()
    near = np.frombuffer(near_b, "<i2")
    far = np.frombuffer(far_b, "<i2")
    assert np.abs(far).max() > 5000
    # Sample-exact: what the room mixed is the reference's far end through the room's paths.
    mixed = np.zeros(len(far))
    for lag, gain in room.taps():
        mixed += gain * delayed(far, lag - 640, len(far))  # far_for already took off the 40 ms
    assert np.array_equal(near, np.clip(np.rint(mixed), -32768, 32767).astype("<i2"))
    # ... so the echo canceller, fed block by block as the daemon would, removes most of it.
    aec = SpeexEchoCanceller()
    out = np.frombuffer(
        b"".join(aec.process_block(near_b[i : i + 640], far_b[i : i + 640]) for i in range(0, len(near_b), 640)), "<i2"
    )
    settled = 3 * RATE
    assert erle_db(near[settled:], out[settled:]) > 15.0


async def test_room_and_reference_on_the_wall_clock(tmp_path: Path) -> None:
    user = noise(RATE // 2, seed=6, level=3000)
    ref = EchoReference(delay_ms=40.0)
    spk = TappedSpeaker(WavSpeaker(tmp_path / "out.wav", sample_rate=22050), reference=ref)
    mic = RoomMicrophone(write_wav(tmp_path / "user.wav", user), speaker=spk, acoustics=DIRECT)
    await spk.open()
    await mic.open()
    try:
        reader = asyncio.create_task(read_blocks(mic, 60, ref))  # 1.2 s
        await asyncio.sleep(0.1)
        await spk.write(noise(22050 * 3 // 10, seed=7).tobytes())
        near_b, far_b = await asyncio.wait_for(reader, TIMEOUT)
    finally:
        await mic.aclose()
        await spk.aclose()
    near = np.frombuffer(near_b, "<i2")
    far = np.frombuffer(far_b, "<i2")
    expect = np.rint(delayed(user, 0, len(near)) + 0.5 * far.astype(np.float64))
    assert np.array_equal(near, expect.astype("<i2"))  # user on time, echo exactly the reference's
    echo_start = int(np.flatnonzero(far)[0])
    assert mic.opened_at is not None and spk.opened_at is not None
    first_audio = (spk.opened_at - mic.opened_at) * RATE + (spk.inner.first_audio_offset or 0) * RATE / 22050
    assert abs(echo_start - (first_audio + 640)) <= 3  # 40 ms after the speaker played it
