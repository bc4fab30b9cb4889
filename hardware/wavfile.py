"""WAV files standing in for the sound card: a microphone that plays a file on the wall clock,
and a speaker that records what it is given, block by block, on the wall clock.

Both match the ``Microphone`` / ``Speaker`` ports of ``states.ports`` by shape (hardware does not
import states). Time in both is an absolute schedule from the moment they are opened: block ``n``
belongs to ``[t0 + n*block, t0 + (n+1)*block)``, so a late event loop never makes them drift, and a
microphone and a speaker opened together share one time line (file offset == seconds since open).

Usage::

    mic = WavMicrophone("question.wav")
    await mic.open()                  # loads, mixes to mono, resamples to 16 kHz; the clock starts
    pcm = await mic.read()            # 20 ms blocks in real time, then silence forever

    spk = WavSpeaker("reply.wav", sample_rate=24000)
    await spk.open()                  # the file exists from here on, silence until audio is queued
    await spk.write(pcm); await spk.drain(); await spk.aclose()
"""

from __future__ import annotations

import asyncio
import math
import os
import struct
import time
import wave
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import TracebackType

import numpy as np
import structlog

from hardware.errors import HardwareError
from hardware.pcm import PcmFramer

log = structlog.get_logger()

MIC_RATE = 16000
"""The rate every microphone delivers (the Microphone port's contract)."""

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

_FORMAT_PCM = 0x0001
_FORMAT_FLOAT = 0x0003
_FORMAT_EXTENSIBLE = 0xFFFE
_HEADER_BYTES = 44
_MAX_DATA_BYTES = 0xFFFFFFFF - 36


# --------------------------------------------------------------------------- reading WAV files


class _WavProblem(Exception):
    """Why a WAV file cannot be used; callers add the device or file name."""


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """Decode a RIFF/WAVE file into float32 samples in [-1, 1), shape ``(frames, channels)``.

    Supports integer PCM of 8, 16, 24 and 32 bits and IEEE float of 32 and 64 bits, plain or
    WAVE_FORMAT_EXTENSIBLE. A data size larger than the file (a WAV streamed to a pipe, or one
    whose writer was killed) means "up to the end of the file". Raises HardwareError naming the
    path and the reason.
    """
    try:
        return _decode_wav(path)
    except _WavProblem as exc:
        raise HardwareError(f"WAV file '{path}': {exc}") from exc


def write_wav(path: str | Path, samples: np.ndarray | bytes, rate: int) -> Path:
    """Write int16 mono samples (an array, or little-endian bytes) as a 16-bit mono WAV file."""
    pcm = samples if isinstance(samples, bytes) else np.asarray(samples).astype("<i2").tobytes()
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm)
    return Path(path)


def _decode_wav(path: str | Path) -> tuple[np.ndarray, int]:
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError as exc:
        raise _WavProblem("file not found") from exc
    except IsADirectoryError as exc:
        raise _WavProblem("is a directory") from exc
    except OSError as exc:
        raise _WavProblem(f"cannot read: {exc.strerror or exc}") from exc
    if len(raw) < 12 or raw[:4] != b"RIFF" or raw[8:12] != b"WAVE":
        raise _WavProblem("not a RIFF/WAVE file")

    fmt: bytes | None = None
    data: bytes | None = None
    pos = 12
    while pos + 8 <= len(raw):
        chunk_id = raw[pos : pos + 4]
        (size,) = struct.unpack_from("<I", raw, pos + 4)
        body = raw[pos + 8 : pos + 8 + size]  # clipped at the end of the file
        if chunk_id == b"fmt ":
            fmt = body
        elif chunk_id == b"data":
            data = body
            break  # data runs to the end when its size is bogus; nothing after it matters
        pos += 8 + size + (size & 1)
    if fmt is None or len(fmt) < 16:
        raise _WavProblem("no valid 'fmt ' chunk")
    if data is None:
        raise _WavProblem("no 'data' chunk")

    tag, channels, rate, _byte_rate, block_align, bits = struct.unpack_from("<HHIIHH", fmt)
    if tag == _FORMAT_EXTENSIBLE:
        if len(fmt) < 40:
            raise _WavProblem("truncated WAVE_FORMAT_EXTENSIBLE header")
        (tag,) = struct.unpack_from("<H", fmt, 24)  # first two bytes of the sub-format GUID
    if channels < 1 or rate < 1:
        raise _WavProblem(f"bad header ({channels} channels at {rate} Hz)")
    sample_bytes = bits // 8
    if bits % 8 or block_align != channels * sample_bytes:
        raise _WavProblem(f"unsupported sample layout ({bits} bits, block_align {block_align})")

    usable = len(data) - len(data) % block_align
    buf = data[:usable]
    if tag == _FORMAT_PCM and bits == 8:
        samples = (np.frombuffer(buf, np.uint8).astype(np.float32) - 128.0) / 128.0
    elif tag == _FORMAT_PCM and bits == 16:
        samples = np.frombuffer(buf, "<i2").astype(np.float32) / 32768.0
    elif tag == _FORMAT_PCM and bits == 24:
        b = np.frombuffer(buf, np.uint8).reshape(-1, 3).astype(np.int32)
        ints = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        ints = np.where(ints >= 1 << 23, ints - (1 << 24), ints)
        samples = ints.astype(np.float32) / float(1 << 23)
    elif tag == _FORMAT_PCM and bits == 32:
        samples = (np.frombuffer(buf, "<i4").astype(np.float64) / float(1 << 31)).astype(np.float32)
    elif tag == _FORMAT_FLOAT and bits in (32, 64):
        samples = np.frombuffer(buf, "<f4" if bits == 32 else "<f8").astype(np.float32)
    else:
        kind = {_FORMAT_PCM: "PCM", _FORMAT_FLOAT: "float"}.get(tag, f"format tag 0x{tag:04x}")
        raise _WavProblem(f"unsupported encoding ({kind}, {bits} bits)")
    return samples.reshape(-1, channels), rate


def to_mono_16k(samples: np.ndarray, rate: int) -> np.ndarray:
    """Mix ``(frames, channels)`` float samples to mono (mean), resample to 16 kHz with soxr (HQ),
    and round to int16 with clipping. 16-bit mono 16 kHz input comes out bit-exact."""
    mono = samples.mean(axis=1, dtype=np.float32) if samples.shape[1] > 1 else samples[:, 0]
    if rate != MIC_RATE and len(mono):
        import soxr  # a project dependency; imported here like the other vendor libraries

        mono = soxr.resample(np.ascontiguousarray(mono, dtype=np.float32), rate, MIC_RATE)
    return np.clip(np.rint(mono.astype(np.float64) * 32768.0), -32768, 32767).astype("<i2")


def load_wav_16k_mono(path: str | Path) -> np.ndarray:
    """The samples a WavMicrophone delivers for ``path``: int16, mono, 16 kHz."""
    samples, rate = read_wav(path)
    return to_mono_16k(samples, rate)


def _load_for_mic(path: Path) -> np.ndarray:
    samples, rate = _decode_wav(path)
    return to_mono_16k(samples, rate)


# --------------------------------------------------------------------------- microphone


class WavMicrophone:
    """A microphone that "hears" a WAV file, in real time, from the moment it is opened.

    ``await open()`` loads the file (any rate, any channel count, see ``read_wav``) and starts the
    clock. ``read()`` returns block ``n`` once ``t0 + (n+1)*block`` has passed (a real microphone
    delivers a block when it has been recorded); a reader that falls behind gets the missed blocks
    at once. After the file: silence, forever. Also usable as ``async with WavMicrophone(p) as mic``.
    """

    sample_rate: int = MIC_RATE

    def __init__(
        self,
        path: str | Path,
        *,
        block_ms: int = 20,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if block_ms <= 0 or MIC_RATE * block_ms % 1000:
            raise ValueError(f"block_ms must be a positive whole number of 16 kHz samples, got {block_ms}")
        self.path = Path(path)
        self.block_ms = block_ms
        self.block_samples = MIC_RATE * block_ms // 1000
        self._block_s = self.block_samples / MIC_RATE
        self._clock = clock
        self._sleep = sleep
        self._pcm = b""
        self._t0: float | None = None
        self._blocks_read = 0
        self._closed = False

    @property
    def name(self) -> str:
        return f"microphone 'wav:{self.path}'"

    async def open(self) -> None:
        """Load and convert the file (in a worker thread), then start the clock."""
        if self._closed:
            raise HardwareError(f"{self.name}: already closed")
        if self._t0 is not None:
            return
        try:
            pcm = await asyncio.to_thread(_load_for_mic, self.path)
        except _WavProblem as exc:
            raise HardwareError(f"{self.name}: {exc}") from exc
        self._pcm = pcm.tobytes()
        self._t0 = self._clock()
        log.info("wav_mic_opened", path=str(self.path), seconds=round(self.duration_s, 3), block_ms=self.block_ms)

    async def read_timed(self) -> tuple[bytes, float]:
        """The next block and the clock time of its first sample (its place on the wall clock)."""
        pcm = await self.read()
        assert self._t0 is not None
        return pcm, self._t0 + (self._blocks_read - 1) * self._block_s

    async def read(self) -> bytes:
        """The next ``block_ms`` of audio (file, then silence), waiting for its end time to pass."""
        if self._closed:
            raise HardwareError(f"{self.name}: read after close")
        if self._t0 is None:
            raise HardwareError(f"{self.name}: read before open()")
        n = self._blocks_read
        delay = self._t0 + (n + 1) * self._block_s - self._clock()
        if delay > 0:
            await self._sleep(delay)
        if self._closed:
            raise HardwareError(f"{self.name}: closed while reading")
        size = self.block_samples * 2
        start = n * size
        block = self._pcm[start : start + size]
        if len(block) < size:
            block += bytes(size - len(block))
        self._blocks_read = n + 1
        return block

    async def aclose(self) -> None:
        self._closed = True

    async def __aenter__(self) -> WavMicrophone:
        await self.open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    # -- observation, for tests and latency measurements

    @property
    def opened_at(self) -> float | None:
        """Clock time of ``open()``: file offset 0."""
        return self._t0

    @property
    def duration_s(self) -> float:
        """Length of the file after conversion to 16 kHz (0 before open)."""
        return len(self._pcm) / 2 / MIC_RATE

    @property
    def file_end_time(self) -> float | None:
        """Clock time at which the file's last sample is "spoken": ``opened_at + duration_s``."""
        return None if self._t0 is None else self._t0 + self.duration_s

    @property
    def blocks_read(self) -> int:
        return self._blocks_read

    @property
    def delivered_s(self) -> float:
        """Seconds of the file handed out by ``read()`` so far (at most ``duration_s``)."""
        return min(self._blocks_read * self.block_samples * 2, len(self._pcm)) / 2 / MIC_RATE

    @property
    def finished(self) -> bool:
        """True once every sample of the file has been returned by ``read()``."""
        return self._t0 is not None and self._blocks_read * self.block_samples * 2 >= len(self._pcm)


# --------------------------------------------------------------------------- speaker


def _wav_header(sample_rate: int, data_bytes: int) -> bytes:
    return b"RIFF" + struct.pack(
        "<I4s4sIHHIIHH4sI",
        36 + data_bytes,
        b"WAVE",
        b"fmt ",
        16,
        _FORMAT_PCM,
        1,
        sample_rate,
        sample_rate * 2,
        2,
        16,
        b"data",
        data_bytes,
    )


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class WavSpeaker:
    """A sound card that records into a 16-bit mono WAV file, on the wall clock.

    From ``await open()`` on, a ticker task writes one block every ``block_ms`` on an absolute
    schedule: block ``k`` is written at ``t0 + k*block`` and holds queued audio if any, else
    silence, so file offset == seconds since open. A late tick writes every block it missed.
    After each block the RIFF and data sizes in the header are patched (``pwrite`` on an
    unbuffered file), so the file is a valid WAV even if the process is killed.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        sample_rate: int,
        block_ms: int = 20,
        max_queue_s: float = 60.0,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if sample_rate <= 0 or block_ms <= 0:
            raise ValueError(f"sample_rate and block_ms must be positive, got {sample_rate}, {block_ms}")
        self.path = Path(path)
        self.sample_rate = sample_rate
        self.block_ms = block_ms
        self.block_samples = max(1, round(sample_rate * block_ms / 1000))
        self._block_s = self.block_samples / sample_rate
        self._max_queue_bytes = int(max_queue_s * sample_rate) * 2
        self._clock = clock
        self._sleep = sleep

        self._fd = -1  # an unbuffered OS file descriptor once open
        self._t0: float | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._closed = False
        self._failure: HardwareError | None = None
        self._wake = asyncio.Event()

        self._queue = bytearray()
        self._samples = PcmFramer(2)  # an odd trailing byte waits for its partner
        self._period_open = False
        self._audible_at: float | None = None
        self._last_audio_end: float | None = None

        self._blocks_written = 0
        self._data_bytes = 0
        self._audio_samples = 0
        self._spans: list[tuple[int, int]] = []
        self._paused = False

    @property
    def name(self) -> str:
        return f"speaker 'wav:{self.path}'"

    # -- lifecycle

    async def open(self) -> None:
        """Create the file (header only) and start the ticker; its first tick writes block 0. Idempotent."""
        if self._closed:
            raise HardwareError(f"{self.name}: already closed")
        if self._t0 is not None:
            return
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        except OSError as exc:
            raise HardwareError(f"{self.name}: cannot create: {exc.strerror or exc}") from exc
        try:
            _write_all(fd, _wav_header(self.sample_rate, 0))
        except OSError as exc:
            os.close(fd)
            raise HardwareError(f"{self.name}: cannot write: {exc.strerror or exc}") from exc
        self._fd = fd
        self._t0 = self._clock()
        self._ticker = asyncio.create_task(self._tick_forever(), name="wav-speaker")
        log.info("wav_speaker_opened", path=str(self.path), sample_rate=self.sample_rate, block_ms=self.block_ms)

    async def aclose(self) -> None:
        """Stop the ticker and close the file (already a valid WAV). Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._ticker is not None:
            self._ticker.cancel()
            await asyncio.wait([self._ticker])  # unlike `await task`, keeps our own cancellation
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._notify()
        log.info(
            "wav_speaker_closed", path=str(self.path), blocks=self._blocks_written, audio_samples=self._audio_samples
        )

    async def __aenter__(self) -> WavSpeaker:
        await self.open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    # -- the Speaker port

    async def write(self, pcm: bytes) -> None:
        """Queue int16 mono PCM at ``sample_rate``. An odd trailing byte waits for its partner.
        Waits only while more than ``max_queue_s`` is queued."""
        self._check_usable()
        data = self._samples.feed(bytes(pcm))
        if not data:
            return
        if not self._period_open:  # the first audio since idle or flush: a new audible period
            self._period_open = True
            self._audible_at = None
        self._queue += data
        await self._wait_until(lambda: len(self._queue) <= self._max_queue_bytes)

    async def drain(self) -> None:
        """Return once everything queued so far has been played to its last sample."""
        self._check_usable()
        await self._wait_until(lambda: not self._queue)
        if self._last_audio_end is not None:
            delay = self._last_audio_end - self._clock()
            if delay > 0:
                await self._sleep(delay)

    def pause(self) -> None:
        """Stop playing at the next block, keeping the queue (a barge-in that may be false)."""
        self._paused = True

    def resume(self) -> None:
        """Play the queue on from where ``pause`` stopped it."""
        self._paused = False
        self._notify()

    @property
    def paused(self) -> bool:
        return self._paused

    def flush(self) -> None:
        """Drop everything queued and not yet played (barge-in). Blocks already written stay."""
        dropped = len(self._queue) // 2
        self._queue.clear()
        self._samples.close()
        self._paused = False
        self._period_open = False
        self._audible_at = None
        self._last_audio_end = None
        self._notify()
        if dropped:
            log.debug("speaker_flushed", path=str(self.path), dropped_samples=dropped)

    async def wait_audible(self) -> float:
        """Clock time at which the first sample queued since the last idle/flush was written.

        That is the nominal tick time ``t0 + k*block`` of its block (the real time unless the loop
        was late). Resolves at once if it has already happened; waits for the next audio after a
        flush, or after the queue ran dry and something new was written.
        """
        self._check_usable()
        await self._wait_until(lambda: self._audible_at is not None)
        assert self._audible_at is not None
        return self._audible_at

    # -- observation, for tests and latency measurements

    @property
    def opened_at(self) -> float | None:
        """Clock time of ``open()``: file offset 0."""
        return self._t0

    @property
    def blocks_written(self) -> int:
        return self._blocks_written

    @property
    def samples_written(self) -> int:
        """Samples in the file's data chunk (audio and silence)."""
        return self._data_bytes // 2

    @property
    def audio_samples_played(self) -> int:
        """Samples of queued audio written to the file (silence padding not counted)."""
        return self._audio_samples

    @property
    def played_audio_spans(self) -> list[tuple[int, int]]:
        """``[start, end)`` sample offsets in the file that hold queued audio, contiguous runs merged."""
        return list(self._spans)

    @property
    def first_audio_offset(self) -> int | None:
        """Sample offset where queued audio first appears in the file, or None."""
        return self._spans[0][0] if self._spans else None

    @property
    def queued_samples(self) -> int:
        return len(self._queue) // 2

    # -- internals

    def _check_usable(self) -> None:
        if self._failure is not None:
            raise self._failure
        if self._closed:
            raise HardwareError(f"{self.name}: used after close")
        if self._t0 is None:
            raise HardwareError(f"{self.name}: used before open()")

    def _notify(self) -> None:
        """Wake everyone in ``_wait_until``; they re-check their condition."""
        self._wake.set()
        self._wake = asyncio.Event()

    async def _wait_until(self, ready: Callable[[], bool]) -> None:
        while not ready():
            self._check_usable()
            await self._wake.wait()

    async def _tick_forever(self) -> None:
        assert self._t0 is not None
        try:
            while True:
                # Blocks whose start time has come (epsilon: a tick exactly on time counts).
                due = math.floor((self._clock() - self._t0) / self._block_s + 1e-9) + 1
                behind = due - self._blocks_written
                if behind > 5:
                    log.warning("speaker_late", path=str(self.path), blocks=behind)
                while self._blocks_written < due:
                    self._write_block()
                self._notify()
                next_tick = self._t0 + self._blocks_written * self._block_s
                await self._sleep(max(0.0, next_tick - self._clock()))
        except OSError as exc:
            self._failure = HardwareError(f"{self.name}: write failed: {exc.strerror or exc}")
            log.error("speaker_failed", path=str(self.path), error=str(exc))
            self._notify()

    def _write_block(self) -> None:
        assert self._t0 is not None
        k = self._blocks_written
        size = self.block_samples * 2
        n_bytes = 0 if self._paused else min(len(self._queue), size)
        block = bytes(self._queue[:n_bytes])
        del self._queue[:n_bytes]
        if n_bytes < size:
            block += bytes(size - n_bytes)
        start = k * self.block_samples
        if n_bytes:
            n = n_bytes // 2
            self._audio_samples += n
            if self._spans and self._spans[-1][1] == start:
                self._spans[-1] = (self._spans[-1][0], start + n)
            else:
                self._spans.append((start, start + n))
            if self._audible_at is None and self._period_open:
                self._audible_at = self._t0 + k * self._block_s
            self._last_audio_end = self._t0 + (start + n) / self.sample_rate
        if not self._queue and not self._paused:
            self._period_open = False

        # Data first, then the sizes: the header never claims bytes that are not there.
        _write_all(self._fd, block)
        self._data_bytes += len(block)
        self._blocks_written = k + 1
        data_size = min(self._data_bytes, _MAX_DATA_BYTES)
        os.pwrite(self._fd, struct.pack("<I", 36 + data_size), 4)
        os.pwrite(self._fd, struct.pack("<I", data_size), 40)
