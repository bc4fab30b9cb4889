"""The microphone, read all the time, so that nothing is lost between states and barge-in can hear.

One task reads the device and queues timestamped blocks; whoever listens now (the LISTENING task,
or the barge-in detector while the robot thinks and speaks) reads them in order. Only one reader
at a time, never two: the states take turns, and a hand-over loses no audio because the queue
keeps it. A device that fails is reported to the reader and reopened in the background.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import cast

import structlog

from states.ports import MIC_RATE, Microphone, TimedMicrophone
from states.reopen import Backoff, reopen_device

log = structlog.get_logger()

BYTES_PER_SECOND = MIC_RATE * 2


@dataclass(frozen=True)
class Block:
    pcm: bytes
    end_time: float
    """Monotonic time at which the block's last sample was captured."""

    @property
    def start_time(self) -> float:
        return self.end_time - len(self.pcm) / BYTES_PER_SECOND


class MicFeed:
    """Reads ``mic`` continuously. Behaves itself like a Microphone (``read()`` gives bytes)."""

    sample_rate = MIC_RATE

    def __init__(
        self,
        mic: Microphone,
        *,
        reopen: Callable[[], Awaitable[Microphone]] | None = None,
        reopen_every_s: float = 3.0,
        max_buffer_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.mic = mic
        self._reopen = reopen
        self._backoff = Backoff(every_s=reopen_every_s)
        self._max_bytes = int(max_buffer_s * BYTES_PER_SECOND)
        self._clock = clock
        self._blocks: deque[Block] = deque()
        self._bytes = 0
        self._ready = asyncio.Event()
        self._error: BaseException | None = None
        self._task: asyncio.Task[None] | None = None
        self._checked_mic: Microphone | None = None
        self._mic_is_timed = False
        self.dropped_bytes = 0
        self.last_error: str | None = None
        """The device's last failure, until it delivers audio again (GET /status)."""
        self.last_block_at: float | None = None
        """Monotonic time (``clock``) the device last delivered a block: None before the first.
        The systemd watchdog is fed only while this is recent (a hung microphone stops it)."""

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="mic-feed")

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait({task})
        await self.mic.aclose()

    def keep_recent(self, seconds: float) -> None:
        """Drop queued audio older than the last ``seconds`` (stale audio from before a wake)."""
        keep = int(seconds * BYTES_PER_SECOND)
        while self._blocks and self._bytes - len(self._blocks[0].pcm) >= keep:
            self._bytes -= len(self._blocks.popleft().pcm)

    @property
    def queued_blocks(self) -> int:
        """Blocks heard and not yet read: the next ``read_block`` returns without suspending."""
        return len(self._blocks)

    async def read_block(self) -> Block:
        """The next block; raises the device's error if it failed since the last read."""
        self.start()
        while not self._blocks:
            if self._error is not None:
                error, self._error = self._error, None
                raise error
            self._ready.clear()
            await self._ready.wait()
        block = self._blocks.popleft()
        self._bytes -= len(block.pcm)
        return block

    async def read(self) -> bytes:
        return (await self.read_block()).pcm

    async def _run(self) -> None:
        while True:
            try:
                pcm, start = await self._read_timed()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a device error ends the turn, not the daemon
                log.error("mic_failed", error=str(exc), error_type=type(exc).__name__)
                self._error = exc
                self.last_error = str(exc) or type(exc).__name__
                self._ready.set()
                if self._reopen is None:
                    return
                self.mic = await reopen_device(self.mic, self._reopen, name="mic", backoff=self._backoff)
                continue
            self.last_error = None
            self.last_block_at = self._clock()
            self._push(Block(pcm, start + len(pcm) / BYTES_PER_SECOND))

    async def _read_timed(self) -> tuple[bytes, float]:
        """A block and its capture time: the device's own when it tells (echo cancellation needs
        it to the millisecond), else the time it arrived less its duration."""
        mic = self.mic
        if mic is not self._checked_mic:
            # A Protocol isinstance check costs tens of microseconds: once per device, not per block.
            self._checked_mic, self._mic_is_timed = mic, isinstance(mic, TimedMicrophone)
        if self._mic_is_timed:
            return await cast(TimedMicrophone, mic).read_timed()
        pcm = await mic.read()
        return pcm, self._clock() - len(pcm) / BYTES_PER_SECOND

    def _push(self, block: Block) -> None:
        self._blocks.append(block)
        self._bytes += len(block.pcm)
        while self._bytes > self._max_bytes:
            old = self._blocks.popleft()
            self._bytes -= len(old.pcm)
            self.dropped_bytes += len(old.pcm)
        self._ready.set()
