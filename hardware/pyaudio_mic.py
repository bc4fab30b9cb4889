"""The Microphone port on a PortAudio input device (see ``pyaudio_stream`` for the stream's life).

The callback posts each captured buffer to the event loop; there it is mixed to mono, resampled
to 16 kHz (soxr) unless the device already gives 16 kHz mono (then bit-exact), cut into blocks and
queued with the ``clock()`` time of each block's first sample.

A captured buffer's first sample is dated one buffer before its callback ran; a small tracker
(``Timeline``) keeps the per-buffer times continuous. Through PulseAudio this agrees with the
speaker's times within about 10 ms.

Usage::

    mic = PyAudioMicrophone("default")             # or "USB", "pulse", 3, "3"
    await mic.open()
    pcm = await mic.read()                         # 20 ms of 16 kHz mono int16
    pcm, t = await mic.read_timed()                # ... and the clock() time of its first sample

Log events besides the stream's: ``audio_overflow`` (warning, ``source`` "queue" or "device", at
most every 5 s).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np
import structlog

from hardware.errors import HardwareError
from hardware.pcm import MIC_RATE, PcmFramer, stream_resampler, to_int16
from hardware.pyaudio_devices import StreamFormat
from hardware.pyaudio_stream import INPUT_OVERFLOW, LOG_EVERY_S, PA_COMPLETE, PyAudioStream
from hardware.stream import Clock

log = structlog.get_logger()


class PyAudioMicrophone(PyAudioStream):
    """The Microphone port on a PortAudio input device: 16 kHz mono int16 blocks of ``block_ms``.

    ``device``: ``"default"``, an index, or a name (see ``select_device``). ``device_rate`` and
    ``device_channels`` force the device format instead of negotiating it. Captured blocks wait in a
    queue of ``max_queue_s``; when the reader falls further behind, the oldest are dropped (counted
    in ``dropped_blocks``, logged as ``audio_overflow``). ``read()`` raises HardwareError when the
    stream stops or no audio arrives for ``stall_timeout_s``.
    """

    sample_rate: int = MIC_RATE
    _kind = "input"
    _preferred_rate = MIC_RATE
    _use = "read"
    _stall_reason = "no audio from {name} for {seconds:.1f} s"

    def __init__(
        self,
        device: str | int = "default",
        *,
        block_ms: int = 20,
        clock: Clock = time.monotonic,
        device_rate: int | None = None,
        device_channels: int | None = None,
        max_queue_s: float = 2.0,
        stall_timeout_s: float = 2.0,
    ) -> None:
        if block_ms <= 0 or MIC_RATE * block_ms % 1000:
            raise ValueError(f"block_ms must be a positive whole number of 16 kHz samples, got {block_ms}")
        super().__init__(device, block_ms, clock, device_rate, device_channels, stall_timeout_s)
        self.block_samples = MIC_RATE * block_ms // 1000

        self._queue: deque[tuple[bytes, float]] = deque(maxlen=max(1, round(max_queue_s * 1000 / block_ms)))
        self._blocks = PcmFramer(self.block_samples * 2)  # 16 kHz audio cut into whole blocks
        self._resample: Any = None

        self.last_block_time: float | None = None
        """clock() time of the first sample of the block ``read()`` returned last."""
        self.dropped_blocks = 0
        self.device_overflows = 0
        self._last_overflow_log = -1e9

    def _started(self, stream: Any, fmt: StreamFormat) -> float:
        return float(stream.get_input_latency())

    def _closed_fields(self) -> dict[str, Any]:
        return {"dropped_blocks": self.dropped_blocks}

    # -- the Microphone port

    async def read(self) -> bytes:
        """The next ``block_ms`` of 16 kHz mono int16, waiting for it in real time."""
        block, _t = await self.read_timed()
        return block

    async def read_timed(self) -> tuple[bytes, float]:
        """The next block and the clock() time its first sample was captured."""
        await self._wait_until(lambda: self._closed or bool(self._queue))
        if self._closed:
            raise HardwareError(f"{self.name}: read after close")
        block, t = self._queue.popleft()
        self.last_block_time = t
        return block, t

    # -- observation

    @property
    def queued_blocks(self) -> int:
        return len(self._queue)

    # -- internals

    def _make_callback(self, fmt: StreamFormat) -> Callable[..., tuple[bytes | None, int]]:
        loop = self._loop
        assert loop is not None
        clock = self._clock
        post = self._post

        def callback(in_data: bytes | None, frame_count: int, _time_info: Any, status: int) -> tuple[None, int]:
            # PortAudio's thread. An exception here would be raised asynchronously in the main
            # thread by PyAudio, so nothing may escape.
            if self._closing:
                return None, PA_COMPLETE
            return None, post(loop, fmt, in_data, frame_count, clock(), status)

        return callback

    def _on_buffer(self, fmt: StreamFormat, *args: Any) -> None:
        """One captured device buffer, on the loop thread: convert, cut into blocks, queue."""
        data, frames, now, status = args
        if status & INPUT_OVERFLOW:
            self.device_overflows += 1
            self._log_overflow("device")
        # The block's first sample was captured one block before the callback (at the latest).
        # PortAudio's inputBufferAdcTime is not used: over ALSA's pulse plugin it claims capture
        # less than one block before the callback, and drifts by milliseconds per second.
        t_first = self._place(fmt, now - frames / fmt.rate, frames)

        raw = data if data is not None else bytes(frames * fmt.frame_bytes)
        if fmt.rate == MIC_RATE and fmt.channels == 1:
            pcm, held_back = raw, 0.0  # bit-exact pass-through
        else:
            x = np.frombuffer(raw, "<i2").astype(np.float32).reshape(-1, fmt.channels) / 32768.0
            mono = x.mean(axis=1) if fmt.channels > 1 else x[:, 0]
            if fmt.rate != MIC_RATE:
                if self._resample is None:
                    self._resample = stream_resampler(fmt.rate, MIC_RATE)
                mono = self._resample.resample_chunk(mono)
                held_back = float(self._resample.delay()) / MIC_RATE
            else:
                held_back = 0.0
            pcm = to_int16(mono).tobytes()
        blocks = self._blocks.feed(pcm)
        # Capture time just after the last sample converted, less what waits for the next block.
        blocks_end = t_first + frames / fmt.rate - held_back - self._blocks.pending / 2 / MIC_RATE

        size = self._blocks.frame_bytes
        for i in range(0, len(blocks), size):
            t_block = blocks_end - (len(blocks) - i) / 2 / MIC_RATE
            block = blocks[i : i + size]
            if len(self._queue) == self._queue.maxlen:
                self.dropped_blocks += 1
                self._log_overflow("queue")
            self._queue.append((block, t_block))
        self._changes.notify()

    def _log_overflow(self, source: str) -> None:
        assert self._loop is not None
        now = self._loop.time()
        if now - self._last_overflow_log >= LOG_EVERY_S:
            self._last_overflow_log = now
            log.warning(
                "audio_overflow",
                kind="input",
                device=self._device_name,
                source=source,
                dropped_blocks=self.dropped_blocks,
                device_overflows=self.device_overflows,
            )
