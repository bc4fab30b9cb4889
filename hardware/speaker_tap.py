"""What a speaker played, read back at 16 kHz on the shared clock: for the simulated room
(``room.RoomMicrophone``) and for an echo reference, when the speaker is a WAV file.

Usage::

    reference = EchoReference(delay_ms=40)                       # states.echo_reference: the AEC far end
    spk = TappedSpeaker(WavSpeaker("reply.wav", sample_rate=24000), reference=reference)
    await spk.open()
    played = spk.played_between(t0, t1)                          # int16 at 16 kHz, silence where nothing was

How the speaker's output is observed: ``TappedSpeaker`` wraps a ``WavSpeaker``, forwards the
Speaker port to it, and reads back the WAV file it writes. That file *is* what was played, on the
wall clock: ``WavSpeaker`` writes block ``k`` at ``opened_at + k*block`` (data first, then the
header sizes), so data sample ``j`` plays at ``opened_at + j/rate``. Reading it back needs nothing
private, and stays right through flushes, underruns and late ticks (a late tick writes the blocks
it missed; the file keeps the time line). The tap resamples it to 16 kHz with soxr's quick
quality in float (cubic: one sample of look-ahead, so a block is known as soon as it is written,
where HQ holds back 20-40 ms; the room and the reference hear the same resampled signal, so its
imaging above 8 kHz costs nothing here), keeps the last ``history_s`` for the room, and pushes it
to an ``EchoReference``-shaped sink.

The tap polls the file just after each speaker block is due, and again whenever the room asks.
Both objects work on one 16 kHz sample grid, ``index = round(t * 16000)``, like the reference.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from typing import Any, Protocol

import numpy as np
import structlog

from hardware.errors import HardwareError
from hardware.pcm import MIC_RATE, to_int16
from hardware.stream import Clock, DeviceStream, Sleep
from hardware.wav_speaker import WavSpeaker
from hardware.wavfile import HEADER_BYTES

log = structlog.get_logger()

_POLL_AFTER_TICK_S = 0.001
"""The tap polls this long after each speaker tick, so it reads a block right after it is written."""


class PlayedAudio(Protocol):
    """Something that knows what a speaker played, at 16 kHz, on the shared clock."""

    def played_between(self, t0: float, t1: float) -> np.ndarray:
        """int16 samples played over ``[t0, t1)`` (grid ``round(t * 16000)``); silence where nothing was."""
        ...

    def known_until(self) -> float:
        """Clock time up to which the output is known (written); ``inf`` when not following a speaker."""
        ...


class ReferenceSink(Protocol):
    """Where the tap sends what was played: ``states.echo_reference.EchoReference`` has this shape."""

    def push(self, pcm_16k: bytes, play_time: float) -> None: ...


class TappedSpeaker(DeviceStream):
    """A ``WavSpeaker`` that also reports what it played, at 16 kHz: to the room and to an echo reference.

    Forwards the whole Speaker port to ``inner`` (its other observation properties: ``.inner``).
    ``clock`` and ``sleep`` only pace the tap's polling and must be the ones ``inner`` uses.
    """

    def __init__(
        self,
        inner: WavSpeaker,
        *,
        reference: ReferenceSink | None = None,
        history_s: float = 5.0,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if history_s <= 0:
            raise ValueError(f"history_s must be positive, got {history_s}")
        super().__init__()
        self.inner = inner
        self.sample_rate = inner.sample_rate
        self.reference = reference
        """Receives every new stretch of played audio (silence included) as it is read; may be set later."""
        self._capacity = round(history_s * MIC_RATE)
        self._clock = clock
        self._sleep = sleep
        self._fd = -1
        self._consumed = 0  # data bytes of the file read so far
        self._resampler: Any = None
        self._origin = 0  # 16 kHz grid index of the file's first sample
        self._produced = 0  # 16 kHz samples produced so far
        self._history = bytearray()  # the newest produced samples, ending at _origin + _produced
        self._poller: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        return f"tapped {self.inner.name}"

    @property
    def is_open(self) -> bool:
        return self._fd >= 0

    # -- lifecycle

    async def _open(self) -> None:
        """Open the inner speaker, then follow its file."""
        await self.inner.open()
        opened_at = self.inner.opened_at
        assert opened_at is not None
        try:
            fd = os.open(self.inner.path, os.O_RDONLY)
        except OSError as exc:
            raise HardwareError(f"{self.name}: cannot read back its file: {exc.strerror or exc}") from exc
        try:
            header = os.pread(fd, HEADER_BYTES, 0)
        except OSError as exc:
            os.close(fd)
            raise HardwareError(f"{self.name}: cannot read back its file: {exc.strerror or exc}") from exc
        if len(header) < HEADER_BYTES or header[:4] != b"RIFF" or header[36:40] != b"data":
            os.close(fd)
            raise HardwareError(f"{self.name}: its file does not start with a plain 44-byte WAV header")
        self._fd = fd
        self._origin = math.floor(opened_at * MIC_RATE + 0.5)
        if self.sample_rate != MIC_RATE:
            import soxr  # a project dependency, imported lazily like the other vendor libraries

            # float32: soxr dithers int16 output, which would turn silence into +-1 noise.
            self._resampler = soxr.ResampleStream(self.sample_rate, MIC_RATE, 1, dtype="float32", quality="QQ")
        self._poller = asyncio.create_task(self._poll_forever(opened_at), name="speaker-tap")
        log.info("speaker_tap_opened", path=str(self.inner.path), sample_rate=self.sample_rate)

    async def _close(self) -> None:
        """Stop following the file and close the inner speaker."""
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.wait([self._poller])
            self._poller = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -2  # closed: open() will not reopen
        await self.inner.aclose()

    # -- the Speaker port, forwarded

    async def write(self, pcm: bytes) -> None:
        await self.inner.write(pcm)

    async def drain(self) -> None:
        await self.inner.drain()

    def flush(self) -> None:
        self.inner.flush()

    def pause(self) -> None:
        self.inner.pause()

    def resume(self) -> None:
        self.inner.resume()

    async def wait_audible(self) -> float:
        return await self.inner.wait_audible()

    @property
    def audio_samples_played(self) -> int:
        return self.inner.audio_samples_played

    # -- what was played

    def poll(self) -> int:
        """Read what the inner speaker wrote since the last poll; returns how many 16 kHz samples that made."""
        if self._failure is not None:
            raise self._failure
        if self._fd < 0:
            return 0
        try:
            available = os.fstat(self._fd).st_size - HEADER_BYTES - self._consumed
            available -= available % 2
            data = os.pread(self._fd, available, HEADER_BYTES + self._consumed) if available > 0 else b""
        except OSError as exc:
            self._failure = HardwareError(f"{self.name}: cannot read back its file: {exc.strerror or exc}")
            raise self._failure from exc
        if not data:
            return 0
        self._consumed += len(data)
        samples = np.frombuffer(data, "<i2")
        if self._resampler is not None:
            resampled = self._resampler.resample_chunk(samples.astype(np.float32) / 32768.0, last=False)
            samples = to_int16(resampled.astype(np.float64))
        if not len(samples):
            return 0
        pcm = samples.astype("<i2").tobytes()
        first = self._origin + self._produced
        self._produced += len(samples)
        self._history += pcm
        excess = len(self._history) // 2 - self._capacity
        if excess > 0:
            del self._history[: 2 * excess]
        if self.reference is not None:
            self.reference.push(pcm, first / MIC_RATE)
        return len(samples)

    def played_between(self, t0: float, t1: float) -> np.ndarray:
        """int16 samples at 16 kHz played over ``[t0, t1)``; silence before open, after the newest
        block written, and further back than ``history_s``."""
        self.poll()
        first = math.floor(t0 * MIC_RATE + 0.5)
        n = max(0, math.floor(t1 * MIC_RATE + 0.5) - first)
        out = np.zeros(n, dtype="<i2")
        end = self._origin + self._produced
        start = end - len(self._history) // 2
        lo, hi = max(first, start), min(first + n, end)
        if lo < hi:
            held = np.frombuffer(self._history, "<i2")
            out[lo - first : hi - first] = held[lo - start : hi - start]
        return out

    def known_until(self) -> float:
        """Clock time up to which the speaker has written its output (``inf`` unless open and following)."""
        try:
            self.poll()
        except HardwareError:
            return math.inf  # played_between reports it
        if self._fd < 0:
            return math.inf
        return self._origin / MIC_RATE + self._consumed / 2 / self.sample_rate

    @property
    def opened_at(self) -> float | None:
        return self.inner.opened_at

    @property
    def samples_16k(self) -> int:
        """16 kHz samples of output (audio and silence) read back so far."""
        return self._produced

    async def _poll_forever(self, opened_at: float) -> None:
        block_s = self.inner.block_samples / self.sample_rate
        try:
            while True:
                self.poll()
                now = self._clock()
                k = math.floor((now - opened_at - _POLL_AFTER_TICK_S) / block_s) + 1
                await self._sleep(max(0.0, opened_at + k * block_s + _POLL_AFTER_TICK_S - now))
        except HardwareError as exc:
            log.error("speaker_tap_failed", path=str(self.inner.path), error=str(exc))
