"""A WAV file standing in for the microphone, on the wall clock, and the schedule it shares with
the simulated room's microphone (``room.RoomMicrophone``).

Time is an absolute schedule from the moment the microphone is opened: block ``n`` belongs to
``[t0 + n*block, t0 + (n+1)*block)`` and is returned at its end, so a late event loop never makes
it drift, and a microphone and a ``WavSpeaker`` opened together share one time line (file offset
== seconds since open). Matches the ``Microphone`` port of ``states.ports`` by shape.

Usage::

    mic = WavMicrophone("question.wav")
    await mic.open()                  # loads, mixes to mono, resamples to 16 kHz; the clock starts
    pcm = await mic.read()            # 20 ms blocks in real time, then silence forever

``WavMicrophone(path, loop=True)`` (``wavloop:PATH`` in the config) plays the file over and over
instead: a question that is "said" again and again, so a long soak or demo has speech to hear on
every turn without a file as long as the run.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import structlog

from hardware.errors import HardwareError
from hardware.pcm import MIC_RATE
from hardware.stream import Clock, ClockedStream, Sleep
from hardware.wavfile import WavProblem, decode_wav, to_mono_16k

log = structlog.get_logger()


class ClockedMicrophone(ClockedStream):
    """A microphone whose blocks come on the wall clock from ``open()`` (``_start_clock``) on.

    ``_next_block()`` waits for the end of the next block and returns its index; the subclass
    says what the block holds.
    """

    sample_rate: int = MIC_RATE
    _use = "read"

    def __init__(self, *, block_ms: int, clock: Clock, sleep: Sleep) -> None:
        if block_ms <= 0 or MIC_RATE * block_ms % 1000:
            raise ValueError(f"block_ms must be a positive whole number of 16 kHz samples, got {block_ms}")
        super().__init__(clock=clock, sleep=sleep)
        self.block_ms = block_ms
        self.block_samples = MIC_RATE * block_ms // 1000
        self._block_s = self.block_samples / MIC_RATE
        self._blocks_read = 0

    async def _close(self) -> None:
        pass

    async def _next_block(self) -> int:
        """Wait until the next block has been "captured" (its end time has passed); its index."""
        self._check_usable()
        assert self._t0 is not None
        n = self._blocks_read
        delay = self._t0 + (n + 1) * self._block_s - self._clock()
        if delay > 0:
            await self._sleep(delay)
        if self._closed:
            raise HardwareError(f"{self.name}: closed while reading")
        return n

    @property
    def blocks_read(self) -> int:
        return self._blocks_read


def _load_for_mic(path: Path) -> np.ndarray:
    samples, rate = decode_wav(path)
    return to_mono_16k(samples, rate)


class WavMicrophone(ClockedMicrophone):
    """A microphone that "hears" a WAV file, in real time, from the moment it is opened.

    ``await open()`` loads the file (any rate, any channel count, see ``read_wav``) and starts the
    clock. ``read()`` returns block ``n`` once ``t0 + (n+1)*block`` has passed (a real microphone
    delivers a block when it has been recorded); a reader that falls behind gets the missed blocks
    at once. After the file: silence, forever; or, with ``loop``, the file again from its start
    (with no gap: put the pause between repetitions in the file). Also usable as
    ``async with WavMicrophone(p) as mic``.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        block_ms: int = 20,
        loop: bool = False,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        super().__init__(block_ms=block_ms, clock=clock, sleep=sleep)
        self.path = Path(path)
        self.loop = loop
        self._pcm = b""

    @property
    def name(self) -> str:
        return f"microphone '{'wavloop' if self.loop else 'wav'}:{self.path}'"

    async def _open(self) -> None:
        """Load and convert the file (in a worker thread), then start the clock."""
        try:
            pcm = await asyncio.to_thread(_load_for_mic, self.path)
        except WavProblem as exc:
            raise HardwareError(f"{self.name}: {exc}") from exc
        self._pcm = pcm.tobytes()
        if self.loop and not self._pcm:
            raise HardwareError(f"{self.name}: the file holds no audio to loop")
        self._t0 = self._clock()
        log.info(
            "wav_mic_opened", path=str(self.path), seconds=round(self.duration_s, 3), block_ms=self.block_ms,
            loop=self.loop,
        )  # fmt: skip

    async def read_timed(self) -> tuple[bytes, float]:
        """The next block and the clock time of its first sample (its place on the wall clock)."""
        pcm = await self.read()
        assert self._t0 is not None
        return pcm, self._t0 + (self._blocks_read - 1) * self._block_s

    async def read(self) -> bytes:
        """The next ``block_ms`` of audio (file, then silence), waiting for its end time to pass."""
        n = await self._next_block()
        size = self.block_samples * 2
        block = self._looped(n * size, size) if self.loop else self._pcm[n * size : n * size + size]
        if len(block) < size:
            block += bytes(size - len(block))
        self._blocks_read = n + 1
        return block

    def _looped(self, start: int, size: int) -> bytes:
        """``size`` bytes from offset ``start`` of the file repeated end to end."""
        out = bytearray()
        at = start % len(self._pcm)
        while len(out) < size:
            piece = self._pcm[at : at + size - len(out)]
            out += piece
            at = (at + len(piece)) % len(self._pcm)
        return bytes(out)

    # -- observation, for tests and latency measurements

    @property
    def duration_s(self) -> float:
        """Length of the file after conversion to 16 kHz (0 before open)."""
        return len(self._pcm) / 2 / MIC_RATE

    @property
    def file_end_time(self) -> float | None:
        """Clock time at which the file's last sample is "spoken": ``opened_at + duration_s``."""
        return None if self._t0 is None else self._t0 + self.duration_s

    @property
    def delivered_s(self) -> float:
        """Seconds of the file handed out by ``read()`` so far (at most ``duration_s``)."""
        return min(self._blocks_read * self.block_samples * 2, len(self._pcm)) / 2 / MIC_RATE

    @property
    def finished(self) -> bool:
        """True once every sample of the file has been returned by ``read()`` (never when looping)."""
        return not self.loop and self._t0 is not None and self._blocks_read * self.block_samples * 2 >= len(self._pcm)
