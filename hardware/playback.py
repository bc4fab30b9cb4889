"""The part of a speaker that is the same whatever the device: a queue of audio in the device's
format, audible periods, pause, flush, and waiting for the audio to be heard.

The device side (PortAudio's callback thread, or the WAV speaker's ticker) calls ``take(n)`` for
the next bytes to play (none while paused) and, once it knows when they are heard, ``played``.
The writer's side (``write``/``drain``/``wait_audible``/``flush``/``pause``) is on the event loop.

An *audible period* starts with the first audio queued after the queue ran dry (or after a
flush); ``audible_at`` is the clock time its first sample is heard, ``wait_audible()`` waits for
it. Offsets are absolute byte counts since the speaker opened, so a flush never renumbers them.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable

from hardware.pcm import PcmFramer
from hardware.stream import Changes, Clock, Sleep

_MAX_WAIT_S = 2.0


class Playback:
    """Queued audio and its audible periods, for one speaker (``bytes_per_s`` of device format).

    ``drain`` and ``audible`` wait through the speaker's own ``wait_until``, which raises the
    speaker's failure and may check that the device is alive (see ``Changes.wait_until``). A
    period ends once all its audio has been handed to the device, paused or not.
    """

    def __init__(self, *, clock: Clock, sleep: Sleep = asyncio.sleep, bytes_per_s: int = 0) -> None:
        self.bytes_per_s = bytes_per_s
        """Of the device format; a PortAudio speaker learns it when the device is open."""
        self._clock = clock
        self._sleep = sleep
        self.changes = Changes()
        self.samples = PcmFramer(2)  # the writer's int16 stream: an odd trailing byte waits

        # Shared with the device thread, under _lock.
        self._lock = threading.Lock()
        self._buf = bytearray()
        self.queued_total = 0  # bytes ever queued
        self._consumed_total = 0  # bytes ever taken by the device or dropped by flush()
        self.paused = False  # read by the device thread: while set, it plays silence

        # Loop thread only.
        self.played_total = 0  # end offset of the audio the device has been given
        self.audio_bytes_played = 0  # queued audio (not silence, not flushed) the device was given
        self._period_open = False
        self._period_start = 0
        self.audible_at: float | None = None
        self.last_audio_end: float | None = None
        self.flushes = 0

    @property
    def queued_bytes(self) -> int:
        """Bytes queued and not yet taken by the device."""
        with self._lock:
            return len(self._buf)

    # -- the writer's side

    def enqueue(self, data: bytes) -> None:
        """Queue device-format bytes; the first after idle or a flush opens an audible period."""
        if not data:
            return
        with self._lock:
            if not self._period_open:
                self._period_open = True
                self.audible_at = None
                self._period_start = self.queued_total
            self._buf += data
            self.queued_total += len(data)

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False
        self.changes.notify()

    def flush(self) -> int:
        """Drop what is queued and not yet taken; returns how many bytes that was."""
        self.paused = False
        with self._lock:
            dropped = len(self._buf)
            self._buf.clear()
            self._consumed_total = self.queued_total
        self.played_total = max(self.played_total, self.queued_total)
        self.samples.close()
        self._period_open = False
        self.audible_at = None
        self.last_audio_end = None
        self.flushes += 1
        self.changes.notify()
        return dropped

    def clear(self) -> None:
        """Forget the queue (the speaker is closing)."""
        with self._lock:
            self._buf.clear()

    async def drain(self, wait_until: Callable[[Callable[[], bool]], Awaitable[None]]) -> None:
        """Return once everything queued so far has been heard to its last sample (or was flushed)."""
        target, flushes = self.queued_total, self.flushes
        await wait_until(lambda: self.played_total >= target or self.flushes != flushes)
        if self.flushes == flushes and self.last_audio_end is not None:
            await self.sleep_until(self.last_audio_end)

    async def audible(self, wait_until: Callable[[Callable[[], bool]], Awaitable[None]]) -> float:
        """The clock time at which the current audible period's first sample is heard, once known."""
        await wait_until(lambda: self.audible_at is not None)
        audible_at = self.audible_at
        assert audible_at is not None
        return audible_at

    async def sleep_until(self, t: float) -> None:
        """Sleep until clock time ``t`` (at most two seconds: a wrong latency never hangs a caller)."""
        delay = t - self._clock()
        if delay > 0:
            await self._sleep(min(delay, _MAX_WAIT_S))

    # -- the device's side

    def take(self, size: int) -> tuple[bytes, int]:
        """Up to ``size`` queued bytes for the device (none while paused), and their offset.
        Safe on any thread."""
        with self._lock:
            n = 0 if self.paused else min(len(self._buf), size)
            chunk = bytes(self._buf[:n])
            del self._buf[:n]
            start = self._consumed_total
            self._consumed_total += n
        return chunk, start

    def played(self, start: int, n: int, t: float) -> None:
        """The device was given bytes ``[start, start+n)`` of the queue in a buffer heard from
        clock time ``t`` on (the queued bytes first). On the loop thread."""
        end = start + n
        if n:
            self.audio_bytes_played += n
            if self._period_open and self.audible_at is None and start <= self._period_start < end:
                self.audible_at = t + (self._period_start - start) / self.bytes_per_s
            self.played_total = max(self.played_total, end)
            self.last_audio_end = t + n / self.bytes_per_s
        if self._period_open and self.audible_at is not None and end >= self.queued_total:
            self._period_open = False  # ran dry: the next write starts a new audible period
        self.changes.notify()


class PlaybackControls:
    """The Speaker port's pause and resume, for a speaker built on a ``Playback``."""

    _playback: Playback

    def pause(self) -> None:
        """Play silence from the next device buffer on, keeping the queue (a barge-in that may be false)."""
        self._playback.pause()

    def resume(self) -> None:
        """Play the queue on from where ``pause`` stopped it."""
        self._playback.resume()

    @property
    def paused(self) -> bool:
        return self._playback.paused
