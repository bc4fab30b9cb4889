"""The far-end reference for echo cancellation: what the speaker played, on the microphone's time line.

The speaker side pushes every piece of audio it has actually played (16 kHz mono int16) with the
clock time of its first sample. The microphone side asks, for a frame captured at time ``t``, for
the samples played at ``t - delay``: the sound that reaches the microphone during that frame.
``delay`` is the acoustic path plus whatever device latency the play and capture times leave out.

Times become sample indices on one absolute grid, ``index = round(t * sample_rate)``. Pushes sit
exactly where their times say (nothing is snapped to the previous push, so clock drift never
accumulates into a misalignment), and a query returns exactly the samples its time names, with
silence wherever nothing was played. Only the newest ``history_s`` are kept: memory is bounded
whatever the speaker does.

Choose ``delay_ms`` on the low side. An adaptive echo canceller models echo that arrives up to its
filter length *after* the reference, never before it: a reference that is early by tens of ms costs
little, one that is late by a few ms loses the echo it should cancel.
"""

from __future__ import annotations

import math

import structlog

log = structlog.get_logger()


class EchoReference:
    """A bounded, time-indexed record of played audio that hands out far-end frames aligned to mic frames.

    Pure bookkeeping: no clock, no I/O, no locks (use it from one event loop).
    """

    def __init__(self, *, sample_rate: int = 16000, delay_ms: float = 0.0, history_s: float = 2.0) -> None:
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {sample_rate}")
        if history_s <= 0:
            raise ValueError(f"history_s must be positive, got {history_s}")
        self.sample_rate = sample_rate
        self.delay_ms = delay_ms
        self.history_s = history_s
        self._capacity = max(1, round(history_s * sample_rate))
        self._buf = bytearray()  # samples [_start, _start + len(_buf) // 2) of the absolute grid
        self._start = 0

    @property
    def delay_ms(self) -> float:
        """Extra delay between a sample's play time and its arrival at the microphone."""
        return self._delay_ms

    @delay_ms.setter
    def delay_ms(self, value: float) -> None:
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"delay_ms must be a finite number >= 0, got {value}")
        self._delay_ms = float(value)

    # -- the speaker side

    def push(self, pcm_16k: bytes, play_time: float) -> None:
        """Record ``pcm_16k`` (int16 mono at ``sample_rate``) as played from ``play_time`` on.

        A gap since the previous push is silence; audio pushed over a stretch already recorded
        replaces it (the newest push wins).
        """
        if len(pcm_16k) % 2:
            raise ValueError(f"pcm must be whole int16 samples, got {len(pcm_16k)} bytes")
        if not pcm_16k:
            return
        first = self._index(play_time)
        data = bytes(pcm_16k)
        n = len(data) // 2
        if n > self._capacity:  # only the newest part can be kept anyway
            data = data[-2 * self._capacity :]
            first += n - self._capacity
            n = self._capacity
        end = self._end
        if self._buf and first + n <= self._start:
            log.debug("echo_reference_push_too_old", first=first, start=self._start)
            return
        if not self._buf or first >= end + self._capacity:
            self._buf = bytearray(data)  # nothing recorded yet, or a gap longer than the history
            self._start = first
        elif first >= end:
            self._buf += bytes(2 * (first - end)) + data
        else:
            if first < self._start:  # overlaps the oldest kept sample: drop what is older
                data = data[2 * (self._start - first) :]
                first = self._start
            offset = 2 * (first - self._start)
            self._buf[offset : offset + len(data)] = data
        self._trim()

    def flush(self, from_time: float | None = None) -> None:
        """Forget what was pushed: everything, or only what plays at or after ``from_time``.

        The second form is for a speaker that pushes audio ahead of playing it and then drops its
        queue. Do not flush on barge-in what was really played: the room still echoes it.
        """
        if from_time is None:
            self._buf.clear()
            return
        cut = self._index(from_time)
        if cut <= self._start:
            self._buf.clear()
        elif cut < self._end:
            del self._buf[2 * (cut - self._start) :]

    # -- the microphone side

    def far_for(self, t_capture: float, n_bytes: int) -> bytes:
        """The ``n_bytes`` of far end for a mic frame whose first sample was captured at ``t_capture``.

        Sample ``i`` of the result is what was played at ``t_capture - delay + i / sample_rate``;
        silence where nothing was played or the history no longer reaches.
        """
        if n_bytes < 0 or n_bytes % 2:
            raise ValueError(f"n_bytes must be a non-negative whole number of int16 samples, got {n_bytes}")
        first = self._index(t_capture - self._delay_ms / 1000.0)
        n = n_bytes // 2
        out = bytearray(n_bytes)
        lo = max(first, self._start)
        hi = min(first + n, self._end)
        if self._buf and lo < hi:
            src = 2 * (lo - self._start)
            dst = 2 * (lo - first)
            out[dst : dst + 2 * (hi - lo)] = self._buf[src : src + 2 * (hi - lo)]
        return bytes(out)

    # -- observation

    @property
    def buffered_samples(self) -> int:
        """Samples held now (at most ``history_s * sample_rate``)."""
        return len(self._buf) // 2

    @property
    def end_time(self) -> float | None:
        """Play time just after the newest sample pushed, or None when empty."""
        return self._end / self.sample_rate if self._buf else None

    # -- internals

    @property
    def _end(self) -> int:
        return self._start + len(self._buf) // 2

    def _index(self, t: float) -> int:
        if not math.isfinite(t):
            raise ValueError(f"time must be finite, got {t}")
        return math.floor(t * self.sample_rate + 0.5)

    def _trim(self) -> None:
        excess = len(self._buf) // 2 - self._capacity
        if excess > 0:
            del self._buf[: 2 * excess]
            self._start += excess
