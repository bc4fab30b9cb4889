"""Real sound cards through PyAudio (PortAudio): a microphone, a speaker, and a device lister.

Each adapter owns one long-lived PortAudio *callback* stream, opened by ``open()`` and kept until
``aclose()``. The callback runs on PortAudio's thread and does almost nothing: the microphone posts
the captured buffer to the event loop with ``loop.call_soon_threadsafe``; the speaker takes whole
frames out of a locked ring buffer (silence when it is empty) and posts a report of what it played.
Conversion (downmix, soxr resampling), queues, timing and error checks all happen on the loop
thread, and every PortAudio set-up call (init, open, close, terminate) runs in a worker thread, so
the loop is never blocked.

The device format is negotiated: the rate the caller wants in mono first, then the device's own
default rate, with 1, 2 (or all) channels. The microphone mixes to mono and resamples to 16 kHz;
the speaker resamples to the device rate and copies the sample to every channel.

Times are ``clock()`` (monotonic) seconds. A captured buffer's first sample is dated one buffer
before its callback ran; a played buffer is dated by PortAudio's ``outputBufferDacTime`` (mapped
onto ``clock()`` through the callback's ``currentTime``; the stream's output latency if the host
API gives none). A small tracker keeps the per-buffer times continuous (sample counting, slowly
corrected towards the measured times, re-anchored after a gap such as an overflow). Through
PulseAudio the two agree within about 10 ms: a tone played by the speaker into a loopback is
captured by the microphone at the time ``wait_audible()`` reports.

Usage::

    print(format_devices(list_devices()))          # `moss-voice devices`

    mic = PyAudioMicrophone("default")             # or "USB", "pulse", 3, "3"
    await mic.open()
    pcm = await mic.read()                         # 20 ms of 16 kHz mono int16
    pcm, t = await mic.read_timed()                # ... and the clock() time of its first sample

    spk = PyAudioSpeaker("default", sample_rate=24000, on_played=aec.add_reference)
    await spk.open()
    await spk.write(pcm24k); t = await spk.wait_audible(); await spk.drain(); await spk.aclose()

The playback tap (``on_played``) is for echo cancellation: it is called on the event loop thread
with every buffer handed to the device, silence included, as 16 kHz mono int16 together with the
clock() time its first sample is heard. Consecutive calls are contiguous audio. A tap that raises
is logged (``audio_tap_failed``) and removed.

Failures never hang: a stream that stops (device unplugged, sound server gone) or delivers nothing
for ``stall_timeout_s`` makes ``read()``/``write()``/``drain()``/``wait_audible()`` raise
HardwareError, and keeps raising it; reopen with a new object. Log events: ``audio_device_opened``
(device, index, rate, channels, frames_per_buffer, latency_ms), ``audio_device_closed``,
``audio_overflow`` (warning, ``source`` "queue" or "device", at most every 5 s), ``audio_underrun``
(debug), ``audio_device_failed`` (error, ``reason``).
"""

from __future__ import annotations

import asyncio
import importlib
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, TypeVar

import numpy as np
import structlog

from hardware.errors import HardwareError
from hardware.pcm import PcmFramer
from hardware.wavfile import MIC_RATE

log = structlog.get_logger()

Clock = Callable[[], float]
Kind = Literal["input", "output"]
PlaybackListener = Callable[[bytes, float], None]
"""``on_played(pcm_16k_mono_int16, time_first_sample_is_heard)``, called on the event loop thread."""

T = TypeVar("T")

INSTALL_HINT = "pip install pyaudio (it builds against PortAudio: apt-get install portaudio19-dev)"

_PA_LOCK = threading.Lock()
"""PortAudio's set-up calls are not thread safe; the microphone and the speaker share the library."""

_OPEN_TIMEOUT_S = 10.0
_CLOSE_TIMEOUT_S = 5.0
_WATCH_INTERVAL_S = 0.25  # how often a waiting read/write checks that the stream is still alive
_LOG_EVERY_S = 5.0  # overflow and underrun events are logged at most this often

# PortAudio's PaStreamCallbackFlags and PaStreamCallbackResult (portaudio.h; a stable ABI).
_INPUT_OVERFLOW = 0x2
_OUTPUT_UNDERFLOW = 0x4
_PA_CONTINUE, _PA_COMPLETE, _PA_ABORT = 0, 1, 2


def _load_pyaudio() -> Any:
    """Import PyAudio on first use (an optional extra). Through importlib: it ships no type hints."""
    try:
        return importlib.import_module("pyaudio")
    except ImportError as exc:
        raise HardwareError(f"PyAudio is not installed: {INSTALL_HINT}") from exc


# --------------------------------------------------------------------------- devices


@dataclass(frozen=True)
class DeviceInfo:
    """One PortAudio device as PyAudio lists it."""

    index: int
    name: str
    max_input_channels: int
    max_output_channels: int
    default_sample_rate: int
    host_api: str
    is_default_input: bool = False
    is_default_output: bool = False

    def channels(self, kind: Kind) -> int:
        return self.max_input_channels if kind == "input" else self.max_output_channels

    def is_default(self, kind: Kind) -> bool:
        return self.is_default_input if kind == "input" else self.is_default_output


def _default_index(get_info: Callable[[], dict[str, Any]]) -> int:
    try:
        return int(get_info()["index"])
    except (OSError, KeyError):  # PyAudio raises IOError (== OSError) when there is no default
        return -1


def _devices_of(pa: Any) -> list[DeviceInfo]:
    default_in = _default_index(pa.get_default_input_device_info)
    default_out = _default_index(pa.get_default_output_device_info)
    devices = []
    for i in range(pa.get_device_count()):
        info = pa.get_device_info_by_index(i)
        try:
            api = str(pa.get_host_api_info_by_index(info["hostApi"])["name"])
        except (OSError, KeyError):
            api = "?"
        name = info["name"]
        devices.append(
            DeviceInfo(
                index=int(info["index"]),
                name=name.decode(errors="replace") if isinstance(name, bytes) else str(name),
                max_input_channels=int(info["maxInputChannels"]),
                max_output_channels=int(info["maxOutputChannels"]),
                default_sample_rate=round(float(info["defaultSampleRate"])),
                host_api=api,
                is_default_input=int(info["index"]) == default_in,
                is_default_output=int(info["index"]) == default_out,
            )
        )
    return devices


def _new_portaudio() -> Any:
    pyaudio = _load_pyaudio()
    with _PA_LOCK:
        return pyaudio.PyAudio()


def _terminate_portaudio(pa: Any, stream: Any = None) -> None:
    """Stop and close ``stream`` (its callback must already answer paComplete), then release PortAudio.

    Stop before close: closing an active stream aborts it, and PortAudio's ALSA host API aborts by
    ``pthread_cancel``-ing the callback thread, which is unsafe while that thread waits for the GIL.
    A stop lets the thread end by itself after its next buffer.
    """
    with _PA_LOCK:
        if stream is not None:
            for step in (stream.stop_stream, stream.close):
                try:
                    step()
                except OSError as exc:  # a device that is gone already
                    log.debug("audio_close_error", error=str(exc))
        pa.terminate()


def list_devices() -> list[DeviceInfo]:
    """Every device PortAudio sees (initialises and terminates PortAudio; blocking, for the CLI)."""
    pa = _new_portaudio()
    try:
        return _devices_of(pa)
    finally:
        _terminate_portaudio(pa)


def format_devices(devices: Sequence[DeviceInfo]) -> str:
    """A table for ``moss-voice devices``: what ``audio.input``/``audio.output`` can name."""
    if not devices:
        return "no audio devices found (is the sound card connected, or PulseAudio running?)"
    rows = [("index", "in", "out", "rate", "api", "name")]
    for d in devices:
        marks = [m for m, on in (("default input", d.is_default_input), ("default output", d.is_default_output)) if on]
        name = d.name + (f"  ({', '.join(marks)})" if marks else "")
        rows.append(
            (
                str(d.index),
                str(d.max_input_channels),
                str(d.max_output_channels),
                str(d.default_sample_rate),
                d.host_api,
                name,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    aligned = [
        [c.rjust(w) for c, w in zip(r[:4], widths[:4], strict=True)] + [r[4].ljust(widths[4]), r[5]] for r in rows
    ]
    return "\n".join("  ".join(cells).rstrip() for cells in aligned)


def _available(devices: Sequence[DeviceInfo], kind: Kind) -> str:
    usable = [d for d in devices if d.channels(kind) > 0]
    if not usable:
        return f"there are no {kind} devices at all (is the sound card connected, or PulseAudio running?)"
    return f"{kind} devices: " + ", ".join(f"{d.index} '{d.name}'" for d in usable)


def select_device(devices: Sequence[DeviceInfo], spec: str | int, kind: Kind) -> DeviceInfo:
    """The device ``spec`` names among ``devices`` that can do ``kind``.

    ``spec`` is ``"default"`` (PortAudio's default for ``kind``), an index (an int or a string of
    digits), or a name: an exact case-insensitive match wins, else a unique case-insensitive
    substring. Raises HardwareError naming what was asked and listing the available devices.
    """
    usable = [d for d in devices if d.channels(kind) > 0]
    if isinstance(spec, str) and spec.strip().lower() in ("", "default"):
        for d in usable:
            if d.is_default(kind):
                return d
        raise HardwareError(f"no default {kind} device; {_available(devices, kind)}")
    if isinstance(spec, int) or spec.strip().isdigit():
        index = int(spec)
        for d in usable:
            if d.index == index:
                return d
        raise HardwareError(f"no {kind} device with index {index}; {_available(devices, kind)}")
    needle = spec.strip().lower()
    exact = [d for d in usable if d.name.lower() == needle]
    if exact:
        return exact[0]
    partial = [d for d in usable if needle in d.name.lower()]
    if len(partial) == 1:
        return partial[0]
    if partial:
        names = ", ".join(f"{d.index} '{d.name}'" for d in partial)
        raise HardwareError(f"{kind} device name '{spec}' is ambiguous, it matches {names}; use an index")
    raise HardwareError(f"no {kind} device matches '{spec}'; {_available(devices, kind)}")


def format_candidates(
    preferred_rate: int, device: DeviceInfo, kind: Kind, *, rate: int | None = None, channels: int | None = None
) -> list[tuple[int, int]]:
    """(rate, channels) pairs to try, best first: ``preferred_rate`` then the device's default
    rate; mono, then stereo, then all the device's channels. ``rate``/``channels`` force one."""
    rates = [rate] if rate else list(dict.fromkeys([preferred_rate, device.default_sample_rate]))
    most = device.channels(kind)
    counts = [channels] if channels else [c for c in dict.fromkeys([1, 2, most]) if 0 < c <= most]
    return [(r, c) for r in rates if r > 0 for c in counts]


@dataclass(frozen=True)
class StreamFormat:
    """What the device stream was opened with: int16 samples, interleaved channels."""

    rate: int
    channels: int
    frames_per_buffer: int

    @property
    def frame_bytes(self) -> int:
        return 2 * self.channels


def _open_stream(
    pa: Any,
    device: DeviceInfo,
    kind: Kind,
    candidates: Sequence[tuple[int, int]],
    block_ms: int,
    make_callback: Callable[[StreamFormat], Callable[..., tuple[bytes | None, int]]],
) -> tuple[Any, StreamFormat]:
    """Open and start a callback stream with the first candidate format the device accepts."""
    pyaudio = _load_pyaudio()
    tried: list[str] = []
    for rate, channels in candidates:
        fmt = StreamFormat(rate, channels, max(1, round(rate * block_ms / 1000)))
        # No pa.is_format_supported() first: it opens the device while holding the GIL (PyAudio
        # releases it only around Pa_OpenStream), freezing every Python thread meanwhile.
        try:
            stream = pa.open(
                format=pyaudio.paInt16,
                channels=channels,
                rate=rate,
                input=kind == "input",
                output=kind == "output",
                input_device_index=device.index if kind == "input" else None,
                output_device_index=device.index if kind == "output" else None,
                frames_per_buffer=fmt.frames_per_buffer,
                stream_callback=make_callback(fmt),
                start=True,
            )
        except (OSError, ValueError) as exc:
            tried.append(f"{rate} Hz x{channels}: {exc}")
            continue
        return stream, fmt
    raise HardwareError(f"cannot open {kind} device {device.index} '{device.name}': " + "; ".join(tried))


async def _in_thread(
    fn: Callable[[], T], *, name: str, timeout: float, discard: Callable[[T], None] | None = None
) -> T:
    """Run a blocking PortAudio call in a daemon thread (a wedged driver cannot hold up interpreter
    exit, as it would in the default executor). On timeout, a late result is given to ``discard``."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def deliver(ok: bool, value: Any) -> None:
        if future.done():
            if ok and discard is not None:
                threading.Thread(target=discard, args=(value,), name=f"{name}-discard", daemon=True).start()
            return
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)

    def run() -> None:
        try:
            result: Any = fn()
            ok = True
        except BaseException as exc:  # noqa: BLE001 - handed over to the awaiting coroutine
            result, ok = exc, False
        try:
            loop.call_soon_threadsafe(deliver, ok, result)
        except RuntimeError:  # the loop is gone
            if ok and discard is not None:
                discard(result)

    threading.Thread(target=run, name=name, daemon=True).start()
    async with asyncio.timeout(timeout):
        return await future


class _Timeline:
    """Times of consecutive buffers of a sample stream: counted samples, pulled gently towards the
    measured times (which jitter by a millisecond or so), re-anchored on a jump (an overflow, a
    stall, a restarted stream)."""

    def __init__(self, rate: int, *, gain: float = 0.02, tolerance_s: float = 0.05) -> None:
        self._rate = rate
        self._gain = gain
        self._tolerance = tolerance_s
        self._next: float | None = None

    def place(self, measured: float, frames: int) -> float:
        expected = self._next
        if expected is None or abs(measured - expected) > self._tolerance:
            t = measured
        else:
            t = expected + self._gain * (measured - expected)
        self._next = t + frames / self._rate
        return t


def _dac_ahead(time_info: Any) -> float | None:
    """Seconds from the callback to the moment its first frame is heard (``outputBufferDacTime``
    minus ``currentTime``), or None when the host API gives no usable figure."""
    try:
        now = float(time_info["current_time"])
        at = float(time_info["output_buffer_dac_time"])
    except (TypeError, KeyError, ValueError):
        return None
    if now <= 0 or at <= 0:
        return None
    ahead = at - now
    return ahead if 0.0 <= ahead < 2.0 else None


def _to_int16(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x * 32768.0), -32768, 32767).astype("<i2")


def _resampler(in_rate: int, out_rate: int) -> Any:
    import soxr  # a project dependency; imported here like the other vendor libraries

    return soxr.ResampleStream(in_rate, out_rate, 1, dtype="float32", quality="HQ")


# --------------------------------------------------------------------------- microphone


async def _open_in_thread(name: str, open_blocking: Callable[[], Any], thread_name: str) -> Any:
    """Run a device's blocking open off the loop, bounded in time, every failure a HardwareError."""
    try:
        return await _in_thread(open_blocking, name=thread_name, timeout=_OPEN_TIMEOUT_S, discard=_discard_opened)
    except TimeoutError as exc:
        raise HardwareError(f"{name}: opening the device took longer than {_OPEN_TIMEOUT_S:.0f} s") from exc
    except HardwareError as exc:
        raise HardwareError(f"{name}: {exc}") from exc
    except Exception as exc:  # PortAudio failing to initialise (OSError) and the like
        raise HardwareError(f"{name}: cannot open: {exc!r}") from exc


class PyAudioMicrophone:
    """The Microphone port on a PortAudio input device: 16 kHz mono int16 blocks of ``block_ms``.

    ``device``: ``"default"``, an index, or a name (see ``select_device``). ``device_rate`` and
    ``device_channels`` force the device format instead of negotiating it. Captured blocks wait in a
    queue of ``max_queue_s``; when the reader falls further behind, the oldest are dropped (counted
    in ``dropped_blocks``, logged as ``audio_overflow``). ``read()`` raises HardwareError when the
    stream stops or no audio arrives for ``stall_timeout_s``.
    """

    sample_rate: int = MIC_RATE

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
        self.device = device
        self.block_ms = block_ms
        self.block_samples = MIC_RATE * block_ms // 1000
        self._block_bytes = self.block_samples * 2
        self._clock = clock
        self._force_rate = device_rate
        self._force_channels = device_channels
        self._stall_timeout_s = stall_timeout_s

        self.device_info: DeviceInfo | None = None
        self.stream_format: StreamFormat | None = None
        self._pa: Any = None
        self._stream: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False  # read by the PortAudio thread
        self._closed = False
        self._failure: HardwareError | None = None

        self._queue: deque[tuple[bytes, float]] = deque(maxlen=max(1, round(max_queue_s * 1000 / block_ms)))
        self._arrived = asyncio.Event()
        self._pending = bytearray()
        self._resample: Any = None
        self._timeline: _Timeline | None = None
        self._last_audio = 0.0  # loop time of the last callback

        self.last_block_time: float | None = None
        """clock() time of the first sample of the block ``read()`` returned last."""
        self.dropped_blocks = 0
        self.device_overflows = 0
        self._last_overflow_log = -1e9

    @property
    def name(self) -> str:
        return f"microphone '{self.device}'"

    # -- lifecycle

    async def open(self) -> None:
        """Find the device, negotiate its format and start capturing. Idempotent."""
        if self._closed:
            raise HardwareError(f"{self.name}: already closed")
        if self._stream is not None:
            return
        self._loop = asyncio.get_running_loop()
        pa, stream, device, fmt = await _open_in_thread(self.name, self._open_blocking, "mic-open")
        self._pa, self._stream, self.device_info, self.stream_format = pa, stream, device, fmt
        self._last_audio = self._loop.time()
        if self._closed:  # closed while opening
            await self._close_stream()
            raise HardwareError(f"{self.name}: closed while opening")
        log.info(
            "audio_device_opened",
            kind="input",
            device=device.name,
            index=device.index,
            rate=fmt.rate,
            channels=fmt.channels,
            frames_per_buffer=fmt.frames_per_buffer,
            latency_ms=round(float(stream.get_input_latency()) * 1000, 1),
        )

    def _open_blocking(self) -> tuple[Any, Any, DeviceInfo, StreamFormat]:
        pa = _new_portaudio()
        try:
            with _PA_LOCK:
                device = select_device(_devices_of(pa), self.device, "input")
                candidates = format_candidates(
                    MIC_RATE, device, "input", rate=self._force_rate, channels=self._force_channels
                )
                stream, fmt = _open_stream(pa, device, "input", candidates, self.block_ms, self._make_callback)
        except BaseException:
            _terminate_portaudio(pa)
            raise
        return pa, stream, device, fmt

    async def aclose(self) -> None:
        """Stop capturing and release PortAudio. Idempotent; a waiting ``read()`` raises."""
        if self._closed:
            return
        self._closed = True
        self._closing = True
        self._arrived.set()
        if self._stream is not None:
            await self._close_stream()
            log.info("audio_device_closed", kind="input", device=self._device_name, dropped_blocks=self.dropped_blocks)

    async def __aenter__(self) -> PyAudioMicrophone:
        await self.open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    # -- the Microphone port

    async def read(self) -> bytes:
        """The next ``block_ms`` of 16 kHz mono int16, waiting for it in real time."""
        block, _t = await self.read_timed()
        return block

    async def read_timed(self) -> tuple[bytes, float]:
        """The next block and the clock() time its first sample was captured."""
        while True:
            if self._closed:
                raise HardwareError(f"{self.name}: read after close")
            if self._queue:
                block, t = self._queue.popleft()
                self.last_block_time = t
                return block, t
            self._check_usable()
            self._arrived.clear()
            try:
                async with asyncio.timeout(_WATCH_INTERVAL_S):  # not wait_for: in 3.11 it can swallow a cancel
                    await self._arrived.wait()
            except TimeoutError:
                self._check_alive()  # only after a quiet wait: a busy loop is not a silent device

    # -- observation

    @property
    def queued_blocks(self) -> int:
        return len(self._queue)

    # -- internals

    @property
    def _device_name(self) -> str:
        return self.device_info.name if self.device_info else str(self.device)

    def _check_usable(self) -> None:
        if self._failure is not None:
            raise self._failure
        if self._closed:
            raise HardwareError(f"{self.name}: read after close")
        if self._stream is None:
            raise HardwareError(f"{self.name}: read before open()")

    def _check_alive(self) -> None:
        assert self._loop is not None
        try:
            active = bool(self._stream.is_active())
        except OSError as exc:
            self._fail(f"stream error: {exc}")
        if not active:
            self._fail("the input stream stopped (device gone or failed)")
        silent_for = self._loop.time() - self._last_audio
        if silent_for > self._stall_timeout_s:
            self._fail(f"no audio from {self.name} for {silent_for:.1f} s")

    def _fail(self, reason: str) -> None:
        self._set_failure(reason)
        assert self._failure is not None
        raise self._failure

    def _set_failure(self, reason: str) -> None:
        if self._failure is None:
            self._failure = HardwareError(f"{self.name}: {reason}")
            log.error("audio_device_failed", kind="input", device=self._device_name, reason=reason)
        self._arrived.set()

    async def _close_stream(self) -> None:
        pa, stream = self._pa, self._stream
        self._pa = self._stream = None
        if pa is None:
            return
        try:
            await _in_thread(lambda: _terminate_portaudio(pa, stream), name="mic-close", timeout=_CLOSE_TIMEOUT_S)
        except TimeoutError:
            log.warning("audio_close_timeout", kind="input", device=self._device_name)

    def _make_callback(self, fmt: StreamFormat) -> Callable[..., tuple[bytes | None, int]]:
        loop = self._loop
        assert loop is not None
        clock = self._clock
        on_audio = self._on_audio

        def callback(in_data: bytes | None, frame_count: int, _time_info: Any, status: int) -> tuple[None, int]:
            # PortAudio's thread. An exception here would be raised asynchronously in the main
            # thread by PyAudio, so nothing may escape.
            if self._closing:
                return None, _PA_COMPLETE
            try:
                loop.call_soon_threadsafe(on_audio, fmt, in_data, frame_count, clock(), status)
            except Exception:  # noqa: BLE001 - the loop is closed: nobody is listening any more
                return None, _PA_ABORT
            return None, _PA_CONTINUE

        return callback

    def _on_audio(self, fmt: StreamFormat, data: bytes | None, frames: int, now: float, status: int) -> None:
        """One captured device buffer, on the loop thread: convert, cut into blocks, queue."""
        if self._closed or self._loop is None or self._failure is not None:
            return
        self._last_audio = self._loop.time()
        try:
            self._take(fmt, data, frames, now, status)
        except Exception as exc:  # noqa: BLE001 - reported to the reader, which raises it
            self._set_failure(f"cannot process captured audio: {exc!r}")

    def _take(self, fmt: StreamFormat, data: bytes | None, frames: int, now: float, status: int) -> None:
        if status & _INPUT_OVERFLOW:
            self.device_overflows += 1
            self._log_overflow("device")
        if self._timeline is None:
            self._timeline = _Timeline(fmt.rate)
        # The block's first sample was captured one block before the callback (at the latest).
        # PortAudio's inputBufferAdcTime is not used: over ALSA's pulse plugin it claims capture
        # less than one block before the callback, and drifts by milliseconds per second.
        t_first = self._timeline.place(now - frames / fmt.rate, frames)

        raw = data if data is not None else bytes(frames * fmt.frame_bytes)
        if fmt.rate == MIC_RATE and fmt.channels == 1:
            pcm, held_back = raw, 0.0  # bit-exact pass-through
        else:
            x = np.frombuffer(raw, "<i2").astype(np.float32).reshape(-1, fmt.channels) / 32768.0
            mono = x.mean(axis=1) if fmt.channels > 1 else x[:, 0]
            if fmt.rate != MIC_RATE:
                if self._resample is None:
                    self._resample = _resampler(fmt.rate, MIC_RATE)
                mono = self._resample.resample_chunk(mono)
                held_back = float(self._resample.delay()) / MIC_RATE
            else:
                held_back = 0.0
            pcm = _to_int16(mono).tobytes()
        self._pending += pcm
        pending_end = t_first + frames / fmt.rate - held_back  # capture time just after the last pending sample

        size = self._block_bytes
        while len(self._pending) >= size:
            t_block = pending_end - len(self._pending) / 2 / MIC_RATE
            block = bytes(self._pending[:size])
            del self._pending[:size]
            if len(self._queue) == self._queue.maxlen:
                self.dropped_blocks += 1
                self._log_overflow("queue")
            self._queue.append((block, t_block))
        self._arrived.set()

    def _log_overflow(self, source: str) -> None:
        assert self._loop is not None
        now = self._loop.time()
        if now - self._last_overflow_log >= _LOG_EVERY_S:
            self._last_overflow_log = now
            log.warning(
                "audio_overflow",
                kind="input",
                device=self._device_name,
                source=source,
                dropped_blocks=self.dropped_blocks,
                device_overflows=self.device_overflows,
            )


def _discard_opened(opened: tuple[Any, Any, DeviceInfo, StreamFormat]) -> None:
    pa, stream, _device, _fmt = opened
    _terminate_portaudio(pa, stream)


# --------------------------------------------------------------------------- speaker


class PyAudioSpeaker:
    """The Speaker port on a PortAudio output device.

    Callers write int16 mono at ``sample_rate`` (the TTS rate). One callback stream runs from
    ``open()`` to ``aclose()``, playing silence when nothing is queued, so sentences never reopen the
    device (no clicks). ``write()`` converts to the device format at once (soxr stream resampling,
    the sample copied to every channel) and appends to a ring buffer the callback drains.

    ``on_played`` (optional, settable later) is the echo-cancellation tap: see the module docstring.
    ``write``/``drain``/``wait_audible`` raise HardwareError when the stream stops or makes no
    progress for ``stall_timeout_s``.
    """

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
        self.device = device
        self.sample_rate = sample_rate
        self.block_ms = block_ms
        self.on_played = on_played
        self._clock = clock
        self._force_rate = device_rate
        self._force_channels = device_channels
        self._max_queue_s = max_queue_s
        self._stall_timeout_s = stall_timeout_s

        self.device_info: DeviceInfo | None = None
        self.stream_format: StreamFormat | None = None
        self._pa: Any = None
        self._stream: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False  # read by the PortAudio thread
        self._closed = False
        self._failure: HardwareError | None = None
        self._output_latency = 0.0

        # Shared with the PortAudio thread, under _lock: device-format bytes and absolute offsets.
        self._lock = threading.Lock()
        self._buf = bytearray()
        self._queued_total = 0  # bytes ever queued
        self._consumed_total = 0  # bytes ever handed to the device or dropped by flush()

        # Loop thread only.
        self._samples = PcmFramer(2)  # an odd trailing byte waits for its partner
        self._resample: Any = None  # sample_rate -> device rate
        self._tap_resample: Any = None  # device rate -> 16 kHz
        self._timeline: _Timeline | None = None
        self._played_total = 0  # end offset of the audio the device has been given
        self._audio_bytes_played = 0  # queued audio (not silence, not flushed) the device was given
        self._paused = False  # read by the PortAudio thread: while set, it plays silence
        self._period_open = False
        self._period_start = 0
        self._audible_at: float | None = None
        self._last_audio_end: float | None = None
        self._flushes = 0
        self._last_callback = 0.0  # loop time
        self._changed = asyncio.Event()
        self.underruns = 0
        self._last_underrun_log = -1e9

    @property
    def name(self) -> str:
        return f"speaker '{self.device}'"

    # -- lifecycle

    async def open(self) -> None:
        """Find the device, negotiate its format and start the (silent) stream. Idempotent."""
        if self._closed:
            raise HardwareError(f"{self.name}: already closed")
        if self._stream is not None:
            return
        self._loop = asyncio.get_running_loop()
        pa, stream, device, fmt = await _open_in_thread(self.name, self._open_blocking, "speaker-open")
        self._pa, self._stream, self.device_info, self.stream_format = pa, stream, device, fmt
        self._output_latency = float(stream.get_output_latency())
        self._last_callback = self._loop.time()
        if fmt.rate != self.sample_rate:
            self._resample = _resampler(self.sample_rate, fmt.rate)
        if self._closed:
            await self._close_stream()
            raise HardwareError(f"{self.name}: closed while opening")
        log.info(
            "audio_device_opened",
            kind="output",
            device=device.name,
            index=device.index,
            rate=fmt.rate,
            channels=fmt.channels,
            frames_per_buffer=fmt.frames_per_buffer,
            latency_ms=round(self._output_latency * 1000, 1),
            source_rate=self.sample_rate,
        )

    def _open_blocking(self) -> tuple[Any, Any, DeviceInfo, StreamFormat]:
        pa = _new_portaudio()
        try:
            with _PA_LOCK:
                device = select_device(_devices_of(pa), self.device, "output")
                candidates = format_candidates(
                    self.sample_rate, device, "output", rate=self._force_rate, channels=self._force_channels
                )
                stream, fmt = _open_stream(pa, device, "output", candidates, self.block_ms, self._make_callback)
        except BaseException:
            _terminate_portaudio(pa)
            raise
        return pa, stream, device, fmt

    async def aclose(self) -> None:
        """Stop at once (queued audio is dropped: ``drain()`` first to finish it). Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._closing = True
        with self._lock:
            self._buf.clear()
        self._notify()
        if self._stream is not None:
            await self._close_stream()
            log.info("audio_device_closed", kind="output", device=self._device_name, underruns=self.underruns)

    async def __aenter__(self) -> PyAudioSpeaker:
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
        self._check_active()
        data = self._samples.feed(bytes(pcm))
        if data:
            samples = np.frombuffer(data, "<i2")
            if self._resample is not None:
                samples = _to_int16(self._resample.resample_chunk(samples.astype(np.float32) / 32768.0))
            self._enqueue(samples)
        await self._wait_until(lambda: self.queued_seconds <= self._max_queue_s)

    async def drain(self) -> None:
        """Return once everything queued so far has been played to its last sample."""
        self._check_usable()
        if self._resample is not None:  # push out what the resampler still holds back
            tail = self._resample.resample_chunk(np.zeros(0, np.float32), last=True)
            self._resample.clear()
            self._enqueue(_to_int16(tail))
        target, flushes = self._queued_total, self._flushes
        await self._wait_until(lambda: self._played_total >= target or self._flushes != flushes)
        end = self._last_audio_end
        if self._flushes == flushes and end is not None:
            delay = end - self._clock()
            if delay > 0:
                await asyncio.sleep(min(delay, 2.0))

    def pause(self) -> None:
        """Play silence from the next device buffer on, keeping the queue (a barge-in that may be false)."""
        self._paused = True

    def resume(self) -> None:
        """Play the queue on from where ``pause`` stopped it."""
        self._paused = False
        self._notify()

    @property
    def audio_samples_played(self) -> int:
        """Samples (at ``sample_rate``) of queued audio handed to the device: what was heard."""
        fmt = self.stream_format
        if fmt is None:
            return 0
        return round(self._audio_bytes_played / fmt.frame_bytes * self.sample_rate / fmt.rate)

    def flush(self) -> None:
        """Drop everything queued and not yet handed to the device (barge-in). What the device
        already holds (its latency, tens of ms) still plays."""
        self._paused = False
        with self._lock:
            dropped = len(self._buf)
            self._buf.clear()
            self._consumed_total = self._queued_total
        self._played_total = max(self._played_total, self._queued_total)
        self._samples.close()
        if self._resample is not None:
            self._resample.clear()
        self._period_open = False
        self._audible_at = None
        self._last_audio_end = None
        self._flushes += 1
        self._notify()
        if dropped and self.stream_format is not None:
            seconds = dropped / self.stream_format.frame_bytes / self.stream_format.rate
            log.debug("speaker_flushed", device=self._device_name, dropped_s=round(seconds, 3))

    async def wait_audible(self) -> float:
        """clock() time at which the first sample queued since the last idle/flush is heard.

        Resolves once that time has come (the device was given the sample one output latency
        earlier); waits for the next audio after a flush, or after the queue ran dry.
        """
        self._check_usable()
        await self._wait_until(lambda: self._audible_at is not None)
        audible_at = self._audible_at
        assert audible_at is not None
        delay = audible_at - self._clock()
        if delay > 0:
            await asyncio.sleep(min(delay, 2.0))
        return audible_at

    # -- observation

    @property
    def queued_seconds(self) -> float:
        """Audio queued and not yet handed to the device."""
        fmt = self.stream_format
        if fmt is None:
            return 0.0
        with self._lock:
            queued = len(self._buf)
        return queued / fmt.frame_bytes / fmt.rate

    @property
    def output_latency(self) -> float:
        """PortAudio's estimate of the time from the callback to the speaker, in seconds."""
        return self._output_latency

    # -- internals

    @property
    def _device_name(self) -> str:
        return self.device_info.name if self.device_info else str(self.device)

    def _enqueue(self, samples: np.ndarray) -> None:
        fmt = self.stream_format
        if fmt is None or not len(samples):
            return
        if fmt.channels > 1:
            samples = np.repeat(samples, fmt.channels)  # the same sample on every channel
        data = samples.astype("<i2", copy=False).tobytes()
        with self._lock:
            if not self._period_open:  # the first audio since idle or flush: a new audible period
                self._period_open = True
                self._audible_at = None
                self._period_start = self._queued_total
            self._buf += data
            self._queued_total += len(data)

    def _check_usable(self) -> None:
        if self._failure is not None:
            raise self._failure
        if self._closed:
            raise HardwareError(f"{self.name}: used after close")
        if self._stream is None:
            raise HardwareError(f"{self.name}: used before open()")

    def _check_active(self) -> None:
        try:
            active = bool(self._stream.is_active())
        except OSError as exc:
            self._fail(f"stream error: {exc}")
        if not active:
            self._fail("the output stream stopped (device gone or failed)")

    def _check_alive(self) -> None:
        assert self._loop is not None
        self._check_active()
        stalled = self._loop.time() - self._last_callback
        if stalled > self._stall_timeout_s:
            self._fail(f"the device has taken no audio for {stalled:.1f} s")

    def _fail(self, reason: str) -> None:
        self._set_failure(reason)
        assert self._failure is not None
        raise self._failure

    def _set_failure(self, reason: str) -> None:
        if self._failure is None:
            self._failure = HardwareError(f"{self.name}: {reason}")
            log.error("audio_device_failed", kind="output", device=self._device_name, reason=reason)
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _wait_until(self, ready: Callable[[], bool]) -> None:
        while not ready():
            self._check_usable()
            changed = self._changed
            try:
                async with asyncio.timeout(_WATCH_INTERVAL_S):  # not wait_for: in 3.11 it can swallow a cancel
                    await changed.wait()
            except TimeoutError:
                self._check_alive()  # only after a quiet wait: a busy loop is not a stalled device

    async def _close_stream(self) -> None:
        pa, stream = self._pa, self._stream
        self._pa = self._stream = None
        if pa is None:
            return
        try:
            await _in_thread(lambda: _terminate_portaudio(pa, stream), name="speaker-close", timeout=_CLOSE_TIMEOUT_S)
        except TimeoutError:
            log.warning("audio_close_timeout", kind="output", device=self._device_name)

    def _make_callback(self, fmt: StreamFormat) -> Callable[..., tuple[bytes | None, int]]:
        loop = self._loop
        assert loop is not None
        clock = self._clock
        lock = self._lock
        on_played = self._on_played_chunk

        def callback(_in: bytes | None, frame_count: int, time_info: Any, status: int) -> tuple[bytes, int]:
            # PortAudio's thread: whole frames out of the ring buffer, silence for the rest. Must
            # return exactly frame_count frames (fewer ends the stream) and never raise.
            need = frame_count * fmt.frame_bytes
            if self._closing:
                return bytes(need), _PA_COMPLETE
            with lock:
                n = 0 if self._paused else min(len(self._buf), need)
                chunk = bytes(self._buf[:n])
                del self._buf[:n]
                start = self._consumed_total
                self._consumed_total += n
            out = chunk + bytes(need - n) if n < need else chunk
            try:
                loop.call_soon_threadsafe(on_played, fmt, out, start, n, frame_count, clock(), time_info, status)
            except Exception:  # noqa: BLE001 - the loop is closed: nobody is listening any more
                return out, _PA_ABORT
            return out, _PA_CONTINUE

        return callback

    def _on_played_chunk(
        self, fmt: StreamFormat, out: bytes, start: int, n: int, frames: int, now: float, time_info: Any, status: int
    ) -> None:
        """The callback handed ``out`` to the device; bytes [start, start+n) of it were queued audio."""
        if self._closed or self._loop is None or self._failure is not None:
            return
        self._last_callback = self._loop.time()
        try:
            self._account(fmt, out, start, n, frames, now, time_info, status)
        except Exception as exc:  # noqa: BLE001 - reported to the writer, which raises it
            self._set_failure(f"cannot account for played audio: {exc!r}")

    def _account(
        self, fmt: StreamFormat, out: bytes, start: int, n: int, frames: int, now: float, time_info: Any, status: int
    ) -> None:
        if status & _OUTPUT_UNDERFLOW:
            self.underruns += 1
            if self._last_callback - self._last_underrun_log >= _LOG_EVERY_S:
                self._last_underrun_log = self._last_callback
                log.debug("audio_underrun", device=self._device_name, underruns=self.underruns)
        if self._timeline is None:
            self._timeline = _Timeline(fmt.rate)
        ahead = _dac_ahead(time_info)
        t = self._timeline.place(now + (ahead if ahead is not None else self._output_latency), frames)

        bytes_per_s = fmt.rate * fmt.frame_bytes
        end = start + n
        if n:
            self._audio_bytes_played += n
            if self._period_open and self._audible_at is None and start <= self._period_start < end:
                self._audible_at = t + (self._period_start - start) / bytes_per_s
            self._played_total = max(self._played_total, end)
            self._last_audio_end = t + n / bytes_per_s
        if self._period_open and self._audible_at is not None and end >= self._queued_total:
            self._period_open = False  # ran dry: the next write starts a new audible period
        if self.on_played is not None:
            self._tap(fmt, out, frames, t)
        self._notify()

    def _tap(self, fmt: StreamFormat, out: bytes, frames: int, t: float) -> None:
        assert self.on_played is not None
        if fmt.rate == MIC_RATE and fmt.channels == 1:
            pcm, t_first = out, t
        else:
            x = np.frombuffer(out, "<i2").reshape(-1, fmt.channels)[:, 0].astype(np.float32) / 32768.0
            held_back = 0.0
            if fmt.rate != MIC_RATE:
                if self._tap_resample is None:
                    self._tap_resample = _resampler(fmt.rate, MIC_RATE)
                x = self._tap_resample.resample_chunk(x)
                held_back = float(self._tap_resample.delay()) / MIC_RATE
            pcm = _to_int16(x).tobytes()
            t_first = t + frames / fmt.rate - held_back - len(pcm) / 2 / MIC_RATE
        if pcm:
            try:
                self.on_played(pcm, t_first)
            except Exception:
                log.exception("audio_tap_failed", device=self._device_name)
                self.on_played = None  # removed: logged once, not fifty times a second
