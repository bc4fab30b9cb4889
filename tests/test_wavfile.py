"""WAV microphone and speaker: exact samples, the wall-clock schedule, queueing, and kill-safety.

Exact-position tests run on a FakeClock (time moves only when the test says so); a few tests use
the real clock with generous bounds to show the schedule holds on a real event loop.
"""

from __future__ import annotations

import asyncio
import os
import signal
import struct
import subprocess
import sys
import time
import wave
from pathlib import Path

import numpy as np
import pytest
import soxr

from hardware.errors import HardwareError
from hardware.wav_mic import WavMicrophone
from hardware.wav_speaker import WavSpeaker
from hardware.wavfile import load_wav_16k_mono, read_wav

TIMEOUT = 10.0
REPO = Path(__file__).resolve().parents[1]


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
            pending = [(t, f) for t, f in self._sleepers if not f.done()]
            self._sleepers = pending
            due = [t for t, _ in pending if t <= target + 1e-9]
            if not due:
                break
            self.now = max(self.now, min(due))
            for t, f in pending:
                if t <= self.now + 1e-9:
                    f.set_result(None)
            await settle()
        self.now = target
        await settle()


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def write_wav(path: Path, data: bytes, *, rate: int, channels: int = 1, bits: int = 16, tag: int = 1) -> Path:
    """A RIFF/WAVE file written by hand, so every format the reader claims can be produced."""
    align = channels * bits // 8
    fmt = struct.pack("<HHIIHH", tag, channels, rate, rate * align, align, bits)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body + (b"\0" if len(data) % 2 else b""))
    return path


def ramp(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(-20000, 20000, n).astype("<i2")


def file_samples(path: Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path), "rb") as w:
        assert (w.getnchannels(), w.getsampwidth()) == (1, 2)
        return np.frombuffer(w.readframes(w.getnframes()), "<i2"), w.getframerate()


# --------------------------------------------------------------------------- reading files


def test_mono_16k_is_bit_exact(tmp_path: Path) -> None:
    pcm = ramp(4000)
    out = load_wav_16k_mono(write_wav(tmp_path / "a.wav", pcm.tobytes(), rate=16000))
    assert np.array_equal(out, pcm)


def test_stereo_44k_is_mixed_and_resampled(tmp_path: Path) -> None:
    t = np.arange(44100) / 44100
    left = (0.5 * np.sin(2 * np.pi * 440 * t) * 32767).astype("<i2")
    right = (0.3 * np.sin(2 * np.pi * 440 * t) * 32767).astype("<i2")
    stereo = np.stack([left, right], axis=1).tobytes()
    out = load_wav_16k_mono(write_wav(tmp_path / "s.wav", stereo, rate=44100, channels=2))
    mono = ((left.astype(np.float32) + right.astype(np.float32)) / 2 / 32768).astype(np.float32)
    expected = np.clip(np.rint(soxr.resample(mono, 44100, 16000).astype(np.float64) * 32768), -32768, 32767)
    assert np.array_equal(out, expected.astype("<i2"))
    assert len(out) == 16000
    spectrum = np.abs(np.fft.rfft(out.astype(np.float64)))
    assert abs(np.argmax(spectrum) - 440) <= 1  # 1 s of audio: bin index == Hz
    assert 0.35 < np.abs(out).max() / 32768 < 0.45  # the mean of 0.5 and 0.3


@pytest.mark.parametrize("bits", [8, 24, 32])
def test_other_sample_widths(tmp_path: Path, bits: int) -> None:
    pcm16 = ramp(1600).astype(np.int32)
    if bits == 8:
        data = ((pcm16 >> 8) + 128).astype(np.uint8).tobytes()
        expected = ((pcm16 >> 8) << 8).astype("<i2")
    elif bits == 24:
        wide = pcm16 << 8
        data = b"".join(int(v).to_bytes(3, "little", signed=True) for v in wide)
        expected = pcm16.astype("<i2")
    else:
        data = (pcm16 << 16).astype("<i4").tobytes()
        expected = pcm16.astype("<i2")
    out = load_wav_16k_mono(write_wav(tmp_path / f"{bits}.wav", data, rate=16000, bits=bits))
    assert np.array_equal(out, expected)


def test_float_and_extensible_and_streamed_headers(tmp_path: Path) -> None:
    x = np.array([0.0, 0.5, -0.5, 0.25], dtype="<f4")
    samples, rate = read_wav(write_wav(tmp_path / "f.wav", x.tobytes(), rate=16000, bits=32, tag=3))
    assert rate == 16000 and np.array_equal(samples[:, 0], x)

    # WAVE_FORMAT_EXTENSIBLE with the PCM sub-format, as sox writes for 24-bit or many channels.
    pcm = ramp(100)
    fmt = struct.pack("<HHIIHHHHI", 0xFFFE, 1, 16000, 32000, 2, 16, 22, 16, 4) + struct.pack("<H", 1) + bytes(14)
    body = b"WAVEfmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", 200) + pcm.tobytes()
    (tmp_path / "x.wav").write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    assert np.array_equal(load_wav_16k_mono(tmp_path / "x.wav"), pcm)

    # espeak-ng --stdout style: sizes of 0x7fffffff, data runs to the end of the file.
    streamed = bytearray(write_wav(tmp_path / "p.wav", pcm.tobytes(), rate=16000).read_bytes())
    streamed[4:8] = streamed[40:44] = struct.pack("<I", 0x7FFFFFFF)
    (tmp_path / "p.wav").write_bytes(bytes(streamed))
    assert np.array_equal(load_wav_16k_mono(tmp_path / "p.wav"), pcm)


async def test_missing_and_bad_files_name_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.wav"
    with pytest.raises(HardwareError, match=r"nope\.wav.*not found"):
        await WavMicrophone(missing).open()
    (tmp_path / "junk.wav").write_bytes(b"hello, not a wav file")
    with pytest.raises(HardwareError, match=r"junk\.wav.*RIFF"):
        await WavMicrophone(tmp_path / "junk.wav").open()
    write_wav(tmp_path / "alaw.wav", b"\0" * 100, rate=8000, bits=8, tag=6)
    with pytest.raises(HardwareError, match=r"alaw\.wav.*unsupported"):
        read_wav(tmp_path / "alaw.wav")
    with pytest.raises(HardwareError, match="before open"):
        await WavMicrophone(missing).read()


# --------------------------------------------------------------------------- microphone


async def test_mic_delivers_the_file_then_silence_on_the_wall_clock(tmp_path: Path) -> None:
    pcm = ramp(16000)  # 1 s
    mic = WavMicrophone(write_wav(tmp_path / "q.wav", pcm.tobytes(), rate=16000))
    await mic.open()
    started = time.monotonic()
    blocks = [await asyncio.wait_for(mic.read(), TIMEOUT) for _ in range(50)]
    elapsed = time.monotonic() - started
    assert 0.8 < elapsed < 3.0
    assert all(len(b) == 640 for b in blocks)
    assert b"".join(blocks) == pcm.tobytes()
    assert mic.finished and mic.delivered_s == 1.0
    assert mic.file_end_time == pytest.approx(mic.opened_at + 1.0)
    after = [await asyncio.wait_for(mic.read(), TIMEOUT) for _ in range(3)]
    assert after == [bytes(640)] * 3
    await mic.aclose()
    with pytest.raises(HardwareError):
        await mic.read()


async def test_mic_block_waits_for_its_end_time_and_keeps_an_absolute_schedule(tmp_path: Path) -> None:
    clock = FakeClock()
    pcm = ramp(800)  # 50 ms: 2.5 blocks
    path = write_wav(tmp_path / "q.wav", pcm.tobytes(), rate=16000)
    async with WavMicrophone(path, clock=clock, sleep=clock.sleep) as mic:
        first = asyncio.create_task(mic.read())
        await clock.advance(0.019)
        assert not first.done()
        await clock.advance(0.001)
        assert first.done() and first.result() == pcm[:320].tobytes()
        # A reader 40 ms late gets the two missed blocks at once, the partial one padded.
        await clock.advance(0.040)
        assert await asyncio.wait_for(mic.read(), 1) == pcm[320:640].tobytes()
        assert await asyncio.wait_for(mic.read(), 1) == pcm[640:].tobytes() + bytes(320)
        assert mic.finished and mic.delivered_s == pytest.approx(0.05)
        nxt = asyncio.create_task(mic.read())
        await settle()
        assert not nxt.done()  # block 3 ends at t0 + 80 ms, not 20 ms after the late read
        await clock.advance(0.020)
        assert nxt.done() and nxt.result() == bytes(640)


async def test_looping_mic_plays_the_file_again_across_block_edges(tmp_path: Path) -> None:
    clock = FakeClock()
    pcm = ramp(800)  # 50 ms: 2.5 blocks, so the repeats straddle block edges
    path = write_wav(tmp_path / "q.wav", pcm.tobytes(), rate=16000)
    async with WavMicrophone(path, loop=True, clock=clock, sleep=clock.sleep) as mic:
        await clock.advance(0.100)  # five blocks are due
        got = b"".join([await asyncio.wait_for(mic.read(), 1) for _ in range(5)])
        assert got == (pcm.tobytes() * 2)[: 5 * 640]
        assert not mic.finished and "wavloop:" in mic.name


async def test_looping_mic_refuses_an_empty_file(tmp_path: Path) -> None:
    path = write_wav(tmp_path / "empty.wav", b"", rate=16000)
    with pytest.raises(HardwareError, match="no audio to loop"):
        await WavMicrophone(path, loop=True).open()


# --------------------------------------------------------------------------- speaker


async def test_speaker_file_length_follows_the_wall_clock_and_is_silent_when_idle(tmp_path: Path) -> None:
    path = tmp_path / "out.wav"
    spk = WavSpeaker(path, sample_rate=24000)
    await spk.open()
    await asyncio.sleep(0.5)
    elapsed = time.monotonic() - spk.opened_at
    await spk.aclose()
    samples, rate = file_samples(path)
    assert rate == 24000
    assert abs(len(samples) / rate - elapsed) < 0.25
    assert not samples.any()
    assert spk.audio_samples_played == 0 and spk.first_audio_offset is None


async def test_speaker_catches_up_after_a_blocked_event_loop(tmp_path: Path) -> None:
    path = tmp_path / "out.wav"
    async with WavSpeaker(path, sample_rate=16000) as spk:
        await asyncio.sleep(0.05)
        time.sleep(0.4)  # noqa: ASYNC251 - on purpose: the loop is stuck, no ticks for 400 ms
        await asyncio.sleep(0.05)
        elapsed = time.monotonic() - spk.opened_at
        written = spk.samples_written / 16000
    assert abs(written - elapsed) < 0.2
    samples, _ = file_samples(path)
    assert len(samples) == spk.samples_written


async def test_queued_audio_lands_where_the_clock_says(tmp_path: Path) -> None:
    clock = FakeClock()
    path = tmp_path / "out.wav"
    spk = WavSpeaker(path, sample_rate=16000, clock=clock, sleep=clock.sleep)
    await spk.open()
    await clock.advance(0.1)  # blocks 0..5 written (ticks at 0, 20, ..., 100 ms)
    assert spk.blocks_written == 6
    audio = ramp(1000, seed=5)
    await spk.write(audio.tobytes())
    audible = asyncio.create_task(spk.wait_audible())
    await clock.advance(0.02)
    assert audible.done() and audible.result() == pytest.approx(spk.opened_at + 0.12)
    assert await spk.wait_audible() == audible.result()  # already audible: at once
    await clock.advance(0.2)
    await spk.aclose()

    samples, _ = file_samples(path)
    start = 6 * 320
    assert not samples[:start].any()
    assert np.array_equal(samples[start : start + 1000], audio)
    assert not samples[start + 1000 :].any()
    assert spk.played_audio_spans == [(start, start + 1000)]
    assert spk.audio_samples_played == 1000
    assert len(samples) == spk.samples_written == spk.blocks_written * 320


async def test_flush_drops_the_queue_and_resets_audible(tmp_path: Path) -> None:
    clock = FakeClock()
    path = tmp_path / "out.wav"
    async with WavSpeaker(path, sample_rate=16000, clock=clock, sleep=clock.sleep) as spk:
        await clock.advance(0.0)
        await spk.write(ramp(16000).tobytes())  # 1 s
        audible = asyncio.create_task(spk.wait_audible())
        await clock.advance(0.1)
        first = await asyncio.wait_for(audible, 1)
        assert first == pytest.approx(spk.opened_at + 0.02)
        played = spk.audio_samples_played
        assert 0 < played < 16000
        spk.flush()
        assert spk.queued_samples == 0
        waiting = asyncio.create_task(spk.wait_audible())
        await clock.advance(0.1)
        assert not waiting.done()  # nothing audible since the flush
        assert spk.audio_samples_played == played
        await spk.write(ramp(320, seed=9).tobytes())
        await clock.advance(0.02)
        assert waiting.done() and waiting.result() > first
        drained = asyncio.create_task(spk.drain())
        await clock.advance(0.02)
        await asyncio.wait_for(drained, 1)
    samples, _ = file_samples(path)
    assert int(np.count_nonzero(samples)) <= played + 320
    assert len(spk.played_audio_spans) == 2


async def test_drain_waits_until_the_last_sample_has_played(tmp_path: Path) -> None:
    clock = FakeClock()
    async with WavSpeaker(tmp_path / "o.wav", sample_rate=16000, clock=clock, sleep=clock.sleep) as spk:
        await clock.advance(0.0)
        await spk.drain()  # nothing queued: at once
        await spk.write(ramp(1600).tobytes())  # 100 ms
        drained = asyncio.create_task(spk.drain())
        await clock.advance(0.09)
        assert not drained.done()
        await clock.advance(0.03)
        assert drained.done()
        await drained


async def test_audible_resets_only_after_the_queue_ran_dry(tmp_path: Path) -> None:
    clock = FakeClock()
    async with WavSpeaker(tmp_path / "o.wav", sample_rate=16000, clock=clock, sleep=clock.sleep) as spk:
        await clock.advance(0.0)
        await spk.write(ramp(100).tobytes())  # shorter than a block
        await clock.advance(0.02)
        first = await asyncio.wait_for(spk.wait_audible(), 1)  # played and dry: still answers
        await clock.advance(0.1)
        await spk.write(ramp(100).tobytes())  # a new period after idle
        second = asyncio.create_task(spk.wait_audible())
        await clock.advance(0.02)
        assert second.done() and second.result() == pytest.approx(first + 0.12)


async def test_odd_byte_writes_keep_whole_samples(tmp_path: Path) -> None:
    clock = FakeClock()
    path = tmp_path / "o.wav"
    async with WavSpeaker(path, sample_rate=16000, clock=clock, sleep=clock.sleep) as spk:
        await clock.advance(0.0)
        await spk.write(b"\x01")
        assert spk.queued_samples == 0
        await spk.write(b"\x02\x03")
        await spk.write(b"\x04\x05")
        assert spk.queued_samples == 2
        await clock.advance(0.04)
    samples, _ = file_samples(path)
    assert samples[samples != 0].tolist() == [0x0201, 0x0403]


async def test_write_waits_only_when_too_much_is_queued(tmp_path: Path) -> None:
    clock = FakeClock()
    spk = WavSpeaker(tmp_path / "o.wav", sample_rate=16000, max_queue_s=0.1, clock=clock, sleep=clock.sleep)
    async with spk:
        await clock.advance(0.0)
        await asyncio.wait_for(spk.write(ramp(800).tobytes()), 1)  # 50 ms: no wait
        writing = asyncio.create_task(spk.write(ramp(3200).tobytes()))  # now 250 ms queued
        await settle()
        assert not writing.done()
        await clock.advance(0.16)
        assert writing.done()
        await writing


async def test_speaker_errors_are_hardware_errors(tmp_path: Path) -> None:
    with pytest.raises(HardwareError, match="no-such-dir"):
        await WavSpeaker(tmp_path / "no-such-dir" / "o.wav", sample_rate=16000).open()
    spk = WavSpeaker(tmp_path / "o.wav", sample_rate=16000)
    with pytest.raises(HardwareError, match="before open"):
        await spk.write(b"\0\0")
    await spk.open()
    pending = asyncio.create_task(spk.wait_audible())
    await settle()
    await spk.aclose()
    with pytest.raises(HardwareError, match="after close"):
        await asyncio.wait_for(pending, 1)
    with pytest.raises(HardwareError):
        await spk.write(b"\0\0")


async def test_reply_starts_after_the_question_on_one_time_line(tmp_path: Path) -> None:
    """Mic and speaker opened together: the reply written after the last question block is
    read lands, in the output file, after the question's end."""
    clock = FakeClock()
    question = write_wav(tmp_path / "q.wav", ramp(8000).tobytes(), rate=16000)  # 0.5 s
    mic = WavMicrophone(question, clock=clock, sleep=clock.sleep)
    spk = WavSpeaker(tmp_path / "a.wav", sample_rate=24000, clock=clock, sleep=clock.sleep)
    await mic.open()
    await spk.open()

    async def listen_then_answer() -> None:
        while not mic.finished:
            await mic.read()
        await spk.write(ramp(2400).tobytes())

    task = asyncio.create_task(listen_then_answer())
    await clock.advance(0.7)
    await asyncio.wait_for(task, 1)
    await spk.aclose()
    await mic.aclose()
    assert spk.first_audio_offset is not None
    assert spk.first_audio_offset / 24000 >= mic.duration_s
    assert spk.audio_samples_played == 2400


KILL_SCRIPT = """
import asyncio, sys
from hardware.wav_speaker import WavSpeaker

async def main():
    spk = WavSpeaker(sys.argv[1], sample_rate=16000, block_ms=10)
    await spk.open()
    await spk.write(bytes(range(256)) * 1000)  # 8 s of a known pattern
    await asyncio.sleep(3600)

asyncio.run(main())
"""


def test_speaker_file_is_valid_after_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "killed.wav"
    with open(tmp_path / "child.log", "wb") as logf:
        proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(path)], cwd=REPO, stdout=logf, stderr=logf)
        try:
            deadline = time.monotonic() + 20
            while not (path.exists() and path.stat().st_size >= 44 + 32000 * 3 // 10):
                assert proc.poll() is None, (tmp_path / "child.log").read_text()
                assert time.monotonic() < deadline, "the speaker did not write 0.3 s of audio in 20 s"
                time.sleep(0.02)
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    size = path.stat().st_size
    with wave.open(str(path), "rb") as w:
        frames = w.getnframes()
        data = w.readframes(frames)
        assert w.getframerate() == 16000
    assert frames >= 16000 * 3 // 10
    # The header counts every block, or all but the one being written when the kill came.
    assert size - 44 - frames * 2 in (0, 320)
    pattern = bytes(range(256)) * 1000
    start = data.find(pattern[:2048])
    assert start >= 0 and start % 2 == 0
    assert data[start:] == pattern[: len(data) - start]
