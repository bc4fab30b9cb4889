"""The Speaker port on a PortAudio output device (see ``pyaudio_stream`` for the stream's life, and
``playback`` for the queue, audible periods, pause and flush it shares with the WAV speaker).

One callback stream runs from ``open()`` to ``aclose()``, playing silence when nothing is queued,
so sentences never reopen the device (no clicks). ``write()`` converts to the device format at
once (soxr stream resampling, the sample copied to every channel) and queues it; the callback
takes whole frames out of the queue and posts a report of what it played.

A played buffer is dated by PortAudio's ``outputBufferDacTime`` (mapped onto ``clock()`` through
the callback's ``currentTime``; the stream's output latency if the host API gives none), kept
continuous by a ``Timeline``. Through PulseAudio a tone played into a loopback is captured by the
microphone at the time ``wait_audible()`` reports, within about 10 ms.

Usage::

    spk = PyAudioSpeaker("default", sample_rate=24000, on_played=aec.add_reference)
    await spk.open()
    await spk.write(pcm24k); t = await spk.wait_audible(); await spk.drain(); await spk.aclose()

The playback tap (``on_played``) is for echo cancellation: it is called on the event loop thread
with every buffer handed to the device, silence included, as 16 kHz mono int16 together with the
clock() time its first sample is heard. Consecutive calls are contiguous audio. A tap that raises
is logged (``audio_tap_failed``) and removed. Log events besides the stream's: ``audio_underrun``
(debug, at most every 5 s), ``speaker_flushed`` (debug).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import structlog

from hardware.pcm import MIC_RATE, stream_resampler, to_int16
from hardware.playback import Playback, PlaybackControls
from hardware.pyaudio_devices import StreamFormat
from hardware.pyaudio_stream import (
    LOG_EVERY_S,
    OUTPUT_UNDERFLOW,
    PA_COMPLETE,
    PyAudioStream,
    dac_ahead,
)
from hardware.stream import Clock

log = structlog.get_logger()

PlaybackListener = Callable[[bytes, float], None]
"""``on_played(pcm_16k_mono_int16, time_first_sample_is_heard)``, called on the event loop thread."""


class PyAudioSpeaker(PlaybackControls, PyAudioStream):
    """The Speaker port on a PortAudio output device.

    Callers write int16 mono at ``sample_rate`` (the TTS rate). ``on_played`` (optional, settable
    later) is the echo-cancellation tap: see the module docstring. ``write``/``drain``/
    ``wait_audible`` raise HardwareError when the stream stops or makes no progress for
    ``stall_timeout_s``.
    """

    _kind = "output"
    _stall_reason = "the device has taken no audio for {seconds:.1f} s"

    def __init__(
        self,
        device: str | int = "default",
        *,
        sample_rate: int,
        block_ms: int = 20,
        clock: Clock = time.monotonic,
        device_rate: int | None = None,
        device_channels: int | None = None,
        max_queue_s: float = 60.0,
        stall_timeout_s: float = 2.0,
        on_played: PlaybackListener | None = None,
    ) -> None:
        if sample_rate <= 0 or block_ms <= 0:
            raise ValueError(f"sample_rate and block_ms must be positive, got {sample_rate}, {block_ms}")
        super().__init__(device, block_ms, clock, device_rate, device_channels, stall_timeout_s)
        self.sample_rate = sample_rate
        self._preferred_rate = sample_rate
        self.on_played = on_played
        self._max_queue_s = max_queue_s
        self._output_latency = 0.0
        self._playback = Playback(clock=clock)
        self._changes = self._playback.changes
        self._resample: Any = None  # sample_rate -> device rate
        self._tap_resample: Any = None  # device rate -> 16 kHz
        self.underruns = 0
        self._quiet_buffers = 0
        """Callbacks in a row that played no queued audio (silence is not tapped after the first)."""
        self._last_underrun_log = -1e9

    def _started(self, stream: Any, fmt: StreamFormat) -> float:
        self._output_latency = float(stream.get_output_latency())
        self._playback.bytes_per_s = fmt.rate * fmt.frame_bytes
        if fmt.rate != self.sample_rate:
            self._resample = stream_resampler(self.sample_rate, fmt.rate)
        return self._output_latency

    def _opened_fields(self) -> dict[str, Any]:
        return {"source_rate": self.sample_rate}

    def _closed_fields(self) -> dict[str, Any]:
        return {"underruns": self.underruns}

    async def _close(self) -> None:
        """Stop at once: queued audio is dropped (``drain()`` first to finish it)."""
        self._playback.clear()
        await super()._close()

    # -- the Speaker port

    async def write(self, pcm: bytes) -> None:
        """Queue int16 mono PCM at ``sample_rate``. An odd trailing byte waits for its partner.
        Waits only while more than ``max_queue_s`` is queued."""
        self._check_usable()
        self._check_active()
        data = self._playback.samples.feed(bytes(pcm))
        if data:
            samples = np.frombuffer(data, "<i2")
            if self._resample is not None:
                samples = to_int16(self._resample.resample_chunk(samples.astype(np.float32) / 32768.0))
            self._enqueue(samples)
        await self._wait_until(lambda: self.queued_seconds <= self._max_queue_s)

    async def drain(self) -> None:
        """Return once everything queued so far has been played to its last sample."""
        self._check_usable()
        if self._resample is not None:  # push out what the resampler still holds back
            tail = self._resample.resample_chunk(np.zeros(0, np.float32), last=True)
            self._resample.clear()
            self._enqueue(to_int16(tail))
        await self._playback.drain(self._wait_until)

    @property
    def audio_samples_played(self) -> int:
        """Samples (at ``sample_rate``) of queued audio handed to the device: what was heard."""
        fmt = self.stream_format
        if fmt is None:
            return 0
        return round(self._playback.audio_bytes_played / fmt.frame_bytes * self.sample_rate / fmt.rate)

    def flush(self) -> None:
        """Drop everything queued and not yet handed to the device (barge-in). What the device
        already holds (its latency, tens of ms) still plays."""
        dropped = self._playback.flush()
        if self._resample is not None:
            self._resample.clear()
        if dropped and self.stream_format is not None:
            seconds = dropped / self.stream_format.frame_bytes / self.stream_format.rate
            log.debug("speaker_flushed", device=self._device_name, dropped_s=round(seconds, 3))

    async def wait_audible(self) -> float:
        """clock() time at which the first sample queued since the last idle/flush is heard.

        Resolves once that time has come (the device was given the sample one output latency
        earlier); waits for the next audio after a flush, or after the queue ran dry.
        """
        self._check_usable()
        audible_at = await self._playback.audible(self._wait_until)
        await self._playback.sleep_until(audible_at)
        return audible_at

    # -- observation

    @property
    def queued_seconds(self) -> float:
        """Audio queued and not yet handed to the device."""
        fmt = self.stream_format
        if fmt is None:
            return 0.0
        return self._playback.queued_bytes / fmt.frame_bytes / fmt.rate

    @property
    def output_latency(self) -> float:
        """PortAudio's estimate of the time from the callback to the speaker, in seconds."""
        return self._output_latency

    # -- internals

    def _enqueue(self, samples: np.ndarray) -> None:
        fmt = self.stream_format
        if fmt is None or not len(samples):
            return
        if fmt.channels > 1:
            samples = np.repeat(samples, fmt.channels)  # the same sample on every channel
        self._playback.enqueue(samples.astype("<i2", copy=False).tobytes())

    def _make_callback(self, fmt: StreamFormat) -> Callable[..., tuple[bytes | None, int]]:
        loop = self._loop
        assert loop is not None
        clock = self._clock
        take = self._playback.take
        post = self._post

        def callback(_in: bytes | None, frame_count: int, time_info: Any, status: int) -> tuple[bytes, int]:
            # PortAudio's thread: whole frames out of the queue, silence for the rest. Must
            # return exactly frame_count frames (fewer ends the stream) and never raise.
            need = frame_count * fmt.frame_bytes
            if self._closing:
                return bytes(need), PA_COMPLETE
            chunk, start = take(need)
            n = len(chunk)
            out = chunk + bytes(need - n) if n < need else chunk
            return out, post(loop, fmt, out, start, n, frame_count, clock(), time_info, status)

        return callback

    def _on_buffer(self, fmt: StreamFormat, *args: Any) -> None:
        """The callback handed ``out`` to the device; bytes [start, start+n) of it were queued audio."""
        out, start, n, frames, now, time_info, status = args
        if status & OUTPUT_UNDERFLOW:
            self.underruns += 1
            if self._last_callback - self._last_underrun_log >= LOG_EVERY_S:
                self._last_underrun_log = self._last_callback
                log.debug("audio_underrun", device=self._device_name, underruns=self.underruns)
        ahead = dac_ahead(time_info)
        t = self._place(fmt, now + (ahead if ahead is not None else self._output_latency), frames)
        self._playback.played(start, n, t)
        quiet = n == 0 and self._quiet_buffers >= 1  # the one before flushed the resampler's tail
        self._quiet_buffers = self._quiet_buffers + 1 if n == 0 else 0
        if self.on_played is not None and not quiet:
            self._tap(fmt, out, frames, t)  # the echo reference takes a gap for silence

    def _tap(self, fmt: StreamFormat, out: bytes, frames: int, t: float) -> None:
        assert self.on_played is not None
        if fmt.rate == MIC_RATE and fmt.channels == 1:
            pcm, t_first = out, t
        else:
            x = np.frombuffer(out, "<i2").reshape(-1, fmt.channels)[:, 0].astype(np.float32) / 32768.0
            held_back = 0.0
            if fmt.rate != MIC_RATE:
                if self._tap_resample is None:
                    self._tap_resample = stream_resampler(fmt.rate, MIC_RATE)
                x = self._tap_resample.resample_chunk(x)
                held_back = float(self._tap_resample.delay()) / MIC_RATE
            pcm = to_int16(x).tobytes()
            t_first = t + frames / fmt.rate - held_back - len(pcm) / 2 / MIC_RATE
        if pcm:
            try:
                self.on_played(pcm, t_first)
            except Exception:
                log.exception("audio_tap_failed", device=self._device_name)
                self.on_played = None  # removed: logged once, not fifty times a second
