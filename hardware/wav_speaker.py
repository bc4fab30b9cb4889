"""A WAV file standing in for the sound card: a speaker that records what it is given, block by
block, on the wall clock (``playback`` holds the queue, audible periods, pause and flush it shares
with the PortAudio speaker). Matches the ``Speaker`` port of ``states.ports`` by shape.

Usage::

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
from collections.abc import Callable
from pathlib import Path

import structlog

from hardware.errors import HardwareError
from hardware.playback import Playback, PlaybackControls
from hardware.stream import Clock, ClockedStream, Sleep
from hardware.wavfile import MAX_DATA_BYTES, wav_header, write_all

log = structlog.get_logger()


class WavSpeaker(PlaybackControls, ClockedStream):
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
        super().__init__(clock=clock, sleep=sleep)
        self.path = Path(path)
        self.sample_rate = sample_rate
        self.block_ms = block_ms
        self.block_samples = max(1, round(sample_rate * block_ms / 1000))
        self._block_s = self.block_samples / sample_rate
        self._max_queue_bytes = int(max_queue_s * sample_rate) * 2

        self._fd = -1  # an unbuffered OS file descriptor once open
        self._ticker: asyncio.Task[None] | None = None
        self._playback = Playback(clock=clock, sleep=sleep, bytes_per_s=sample_rate * 2)

        self._blocks_written = 0
        self._data_bytes = 0
        self._spans: list[tuple[int, int]] = []

    @property
    def name(self) -> str:
        return f"speaker 'wav:{self.path}'"

    # -- lifecycle

    async def _open(self) -> None:
        """Create the file (header only) and start the ticker; its first tick writes block 0."""
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        except OSError as exc:
            raise HardwareError(f"{self.name}: cannot create: {exc.strerror or exc}") from exc
        try:
            write_all(fd, wav_header(self.sample_rate, 0))
        except OSError as exc:
            os.close(fd)
            raise HardwareError(f"{self.name}: cannot write: {exc.strerror or exc}") from exc
        self._fd = fd
        self._t0 = self._clock()
        self._ticker = asyncio.create_task(self._tick_forever(), name="wav-speaker")
        log.info("wav_speaker_opened", path=str(self.path), sample_rate=self.sample_rate, block_ms=self.block_ms)

    async def _close(self) -> None:
        """Stop the ticker and close the file (already a valid WAV)."""
        if self._ticker is not None:
            self._ticker.cancel()
            await asyncio.wait([self._ticker])  # unlike `await task`, keeps our own cancellation
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._playback.changes.notify()
        log.info(
            "wav_speaker_closed",
            path=str(self.path),
            blocks=self._blocks_written,
            audio_samples=self.audio_samples_played,
        )

    # -- the Speaker port

    async def write(self, pcm: bytes) -> None:
        """Queue int16 mono PCM at ``sample_rate``. An odd trailing byte waits for its partner.
        Waits only while more than ``max_queue_s`` is queued."""
        self._check_usable()
        data = self._playback.samples.feed(bytes(pcm))
        if not data:
            return
        self._playback.enqueue(data)
        await self._wait_until(lambda: self._playback.queued_bytes <= self._max_queue_bytes)

    async def drain(self) -> None:
        """Return once everything queued so far has been played to its last sample."""
        self._check_usable()
        await self._playback.drain(self._wait_until)

    def flush(self) -> None:
        """Drop everything queued and not yet played (barge-in). Blocks already written stay."""
        dropped = self._playback.flush() // 2
        if dropped:
            log.debug("speaker_flushed", path=str(self.path), dropped_samples=dropped)

    async def wait_audible(self) -> float:
        """Clock time at which the first sample queued since the last idle/flush was written.

        That is the nominal tick time ``t0 + k*block`` of its block (the real time unless the loop
        was late). Resolves at once if it has already happened; waits for the next audio after a
        flush, or after the queue ran dry and something new was written.
        """
        self._check_usable()
        return await self._playback.audible(self._wait_until)

    # -- observation, for tests and latency measurements

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
        return self._playback.audio_bytes_played // 2

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
        return self._playback.queued_bytes // 2

    # -- internals

    async def _wait_until(self, ready: Callable[[], bool]) -> None:
        await self._playback.changes.wait_until(ready, self._check_usable)

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
                self._playback.changes.notify()
                next_tick = self._t0 + self._blocks_written * self._block_s
                await self._sleep(max(0.0, next_tick - self._clock()))
        except OSError as exc:
            self._failure = HardwareError(f"{self.name}: write failed: {exc.strerror or exc}")
            log.error("speaker_failed", path=str(self.path), error=str(exc))
            self._playback.changes.notify()

    def _write_block(self) -> None:
        assert self._t0 is not None
        k = self._blocks_written
        size = self.block_samples * 2
        chunk, offset = self._playback.take(size)
        block = chunk + bytes(size - len(chunk)) if len(chunk) < size else chunk
        start = k * self.block_samples
        if chunk:
            end = start + len(chunk) // 2
            if self._spans and self._spans[-1][1] == start:
                self._spans[-1] = (self._spans[-1][0], end)
            else:
                self._spans.append((start, end))
        self._playback.played(offset, len(chunk), self._t0 + k * self._block_s)

        # Data first, then the sizes: the header never claims bytes that are not there.
        write_all(self._fd, block)
        self._data_bytes += len(block)
        self._blocks_written = k + 1
        data_size = min(self._data_bytes, MAX_DATA_BYTES)
        os.pwrite(self._fd, struct.pack("<I", 36 + data_size), 4)
        os.pwrite(self._fd, struct.pack("<I", data_size), 40)
