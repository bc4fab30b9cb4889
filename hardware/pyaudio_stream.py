"""What the PortAudio microphone and speaker share: one long-lived callback stream per object,
opened by ``open()`` and kept until ``aclose()``, with every blocking PortAudio call in a worker
thread so that the event loop is never blocked.

The callback runs on PortAudio's thread and does almost nothing: it posts what it got or gave to
the loop with ``loop.call_soon_threadsafe``. Everything else (conversion, queues, timing, error
checks) happens on the loop thread, in the subclass's ``_on_buffer``.

Failures never hang: a stream that stops (device unplugged, sound server gone) or makes no progress
for ``stall_timeout_s`` makes every later use raise HardwareError; reopen with a new object. Log
events: ``audio_device_opened`` (device, index, rate, channels, frames_per_buffer, latency_ms),
``audio_device_closed``, ``audio_device_failed`` (error, ``reason``), ``audio_close_timeout``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import structlog

from hardware.errors import HardwareError
from hardware.pyaudio_devices import (
    PA_LOCK,
    DeviceInfo,
    Kind,
    StreamFormat,
    devices_of,
    format_candidates,
    new_portaudio,
    open_stream,
    select_device,
    terminate_portaudio,
)
from hardware.stream import Changes, Clock, DeviceStream

log = structlog.get_logger()

T = TypeVar("T")

OPEN_TIMEOUT_S = 10.0
CLOSE_TIMEOUT_S = 5.0
WATCH_INTERVAL_S = 0.25  # how often a waiting read/write checks that the stream is still alive
LOG_EVERY_S = 5.0  # overflow and underrun events are logged at most this often

# PortAudio's PaStreamCallbackFlags and PaStreamCallbackResult (portaudio.h; a stable ABI).
INPUT_OVERFLOW = 0x2
OUTPUT_UNDERFLOW = 0x4
PA_CONTINUE, PA_COMPLETE, PA_ABORT = 0, 1, 2


async def in_thread(fn: Callable[[], T], *, name: str, timeout: float, discard: Callable[[T], None] | None = None) -> T:
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


class Timeline:
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


def dac_ahead(time_info: Any) -> float | None:
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


async def open_in_thread(name: str, open_blocking: Callable[[], Any], thread_name: str) -> Any:
    """Run a device's blocking open off the loop, bounded in time, every failure a HardwareError."""
    try:
        return await in_thread(open_blocking, name=thread_name, timeout=OPEN_TIMEOUT_S, discard=discard_opened)
    except TimeoutError as exc:
        raise HardwareError(f"{name}: opening the device took longer than {OPEN_TIMEOUT_S:.0f} s") from exc
    except HardwareError as exc:
        raise HardwareError(f"{name}: {exc}") from exc
    except Exception as exc:  # PortAudio failing to initialise (OSError) and the like
        raise HardwareError(f"{name}: cannot open: {exc!r}") from exc


def discard_opened(opened: tuple[Any, Any, DeviceInfo, StreamFormat]) -> None:
    pa, stream, _device, _fmt = opened
    terminate_portaudio(pa, stream)


class PyAudioStream(DeviceStream):
    """One PortAudio callback stream of ``kind``, from ``open()`` to ``aclose()``.

    A subclass gives ``_preferred_rate`` (what to ask the device for first), ``_make_callback``
    (the PortAudio-thread function, which hands its buffer to ``_post``), ``_on_buffer`` (the same
    buffer on the loop thread) and ``_stall_reason``; it may add fields to the open and close logs.
    """

    _kind: Kind
    _preferred_rate: int
    _stall_reason: str
    """Why the stream failed when it made no progress: a format of ``name`` and ``seconds``."""

    def __init__(
        self,
        device: str | int,
        block_ms: int,
        clock: Clock,
        device_rate: int | None,
        device_channels: int | None,
        stall_timeout_s: float,
    ) -> None:
        super().__init__()
        self.device = device
        self.block_ms = block_ms
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
        self._changes = Changes()
        self._last_callback = 0.0  # loop time
        self._timeline: Timeline | None = None

    @property
    def name(self) -> str:
        return f"{'microphone' if self._kind == 'input' else 'speaker'} '{self.device}'"

    @property
    def is_open(self) -> bool:
        return self._stream is not None

    @property
    def _thread_name(self) -> str:
        return "mic" if self._kind == "input" else "speaker"

    # -- lifecycle

    async def _open(self) -> None:
        """Find the device, negotiate its format and start the stream."""
        self._loop = asyncio.get_running_loop()
        pa, stream, device, fmt = await open_in_thread(self.name, self._open_blocking, f"{self._thread_name}-open")
        self._pa, self._stream, self.device_info, self.stream_format = pa, stream, device, fmt
        self._last_callback = self._loop.time()
        latency = self._started(stream, fmt)
        if self._closed:  # closed while opening
            await self._close_stream()
            raise HardwareError(f"{self.name}: closed while opening")
        log.info(
            "audio_device_opened",
            kind=self._kind,
            device=device.name,
            index=device.index,
            rate=fmt.rate,
            channels=fmt.channels,
            frames_per_buffer=fmt.frames_per_buffer,
            latency_ms=round(latency * 1000, 1),
            **self._opened_fields(),
        )

    def _open_blocking(self) -> tuple[Any, Any, DeviceInfo, StreamFormat]:
        pa = new_portaudio()
        try:
            with PA_LOCK:
                device = select_device(devices_of(pa), self.device, self._kind)
                candidates = format_candidates(
                    self._preferred_rate, device, self._kind, rate=self._force_rate, channels=self._force_channels
                )
                stream, fmt = open_stream(pa, device, self._kind, candidates, self.block_ms, self._make_callback)
        except BaseException:
            terminate_portaudio(pa)
            raise
        return pa, stream, device, fmt

    async def _close(self) -> None:
        """Stop the stream and release PortAudio; waiters raise."""
        self._closing = True
        self._changes.notify()
        if self._stream is not None:
            await self._close_stream()
            log.info("audio_device_closed", kind=self._kind, device=self._device_name, **self._closed_fields())

    async def _close_stream(self) -> None:
        pa, stream = self._pa, self._stream
        self._pa = self._stream = None
        if pa is None:
            return
        try:
            await in_thread(
                lambda: terminate_portaudio(pa, stream), name=f"{self._thread_name}-close", timeout=CLOSE_TIMEOUT_S
            )
        except TimeoutError:
            log.warning("audio_close_timeout", kind=self._kind, device=self._device_name)

    # -- subclass hooks

    def _started(self, stream: Any, fmt: StreamFormat) -> float:
        """The stream runs in ``fmt``: set up conversions; return the device latency in seconds."""
        raise NotImplementedError

    def _opened_fields(self) -> dict[str, Any]:
        return {}

    def _closed_fields(self) -> dict[str, Any]:
        return {}

    def _make_callback(self, fmt: StreamFormat) -> Callable[..., tuple[bytes | None, int]]:
        raise NotImplementedError

    def _on_buffer(self, fmt: StreamFormat, *args: Any) -> None:
        raise NotImplementedError

    # -- from the PortAudio thread to the loop

    def _post(self, loop: asyncio.AbstractEventLoop, *args: Any) -> int:
        """Hand one buffer to the loop thread (called on PortAudio's thread, so it never raises);
        returns the callback result: go on, or abort when the loop is gone."""
        try:
            loop.call_soon_threadsafe(self._on_callback, *args)
        except Exception:  # noqa: BLE001 - the loop is closed: nobody is listening any more
            return PA_ABORT
        return PA_CONTINUE

    def _on_callback(self, *args: Any) -> None:
        if self._closed or self._loop is None or self._failure is not None:
            return
        self._last_callback = self._loop.time()
        try:
            self._on_buffer(*args)
        except Exception as exc:  # noqa: BLE001 - reported to the caller, which raises it
            self._set_failure(
                f"cannot {'process captured' if self._kind == 'input' else 'account for played'} audio: {exc!r}"
            )

    def _place(self, fmt: StreamFormat, measured: float, frames: int) -> float:
        """The clock() time of a device buffer's first frame, from the time measured for it."""
        if self._timeline is None:
            self._timeline = Timeline(fmt.rate)
        return self._timeline.place(measured, frames)

    # -- failures

    @property
    def _device_name(self) -> str:
        return self.device_info.name if self.device_info else str(self.device)

    def _check_active(self) -> None:
        try:
            active = bool(self._stream.is_active())
        except OSError as exc:
            self._fail(f"stream error: {exc}")
        if not active:
            self._fail(f"the {self._kind} stream stopped (device gone or failed)")

    def _check_alive(self) -> None:
        assert self._loop is not None
        self._check_active()
        stalled = self._loop.time() - self._last_callback
        if stalled > self._stall_timeout_s:
            self._fail(self._stall_reason.format(name=self.name, seconds=stalled))

    def _fail(self, reason: str) -> None:
        self._set_failure(reason)
        assert self._failure is not None
        raise self._failure

    def _set_failure(self, reason: str) -> None:
        if self._failure is None:
            self._failure = HardwareError(f"{self.name}: {reason}")
            log.error("audio_device_failed", kind=self._kind, device=self._device_name, reason=reason)
        self._changes.notify()

    async def _wait_until(self, ready: Callable[[], bool]) -> None:
        """Wait for ``ready()``, raising the stream's failure, and checking it is alive when quiet."""
        await self._changes.wait_until(ready, self._check_usable, watch_s=WATCH_INTERVAL_S, on_quiet=self._check_alive)
