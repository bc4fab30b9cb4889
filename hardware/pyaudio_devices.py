"""PortAudio devices through PyAudio: listing, choosing one by name or index, negotiating a format
and opening a callback stream in it.

The device format is negotiated: the rate the caller wants in mono first, then the device's own
default rate, with 1, 2 (or all) channels (``format_candidates``). Every call here blocks; the
stream classes (``pyaudio_mic``, ``pyaudio_speaker``) run them in a worker thread.

Usage::

    print(format_devices(list_devices()))          # `moss-voice devices`
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import structlog

from hardware.errors import HardwareError

log = structlog.get_logger()

Kind = Literal["input", "output"]

INSTALL_HINT = "pip install pyaudio (it builds against PortAudio: apt-get install portaudio19-dev)"

PA_LOCK = threading.Lock()
"""PortAudio's set-up calls are not thread safe; the microphone and the speaker share the library."""


_FD2_LOCK = threading.Lock()
"""fd 2 is the process's: one capture at a time (taken after PA_LOCK where both are held)."""


@contextlib.contextmanager
def captured_stderr(what: str) -> Iterator[None]:
    """Point fd 2 at a temporary file while PortAudio runs, then put it back and log what was
    caught as one debug line (``portaudio_chatter``).

    PortAudio's ALSA and JACK host APIs print dozens of "ALSA lib ..." / "jack server is not
    running" lines from C straight to fd 2 when they probe the cards: noise in the journal and in
    ``moss-voice devices``. fd 2 is restored even when the call raises. The redirect is
    process-wide, so a line another thread writes to stderr meanwhile is caught too (it is in the
    debug line); the lock keeps two captures from undoing each other.
    """
    with _FD2_LOCK, tempfile.TemporaryFile() as caught:
        with contextlib.suppress(ValueError, OSError):
            sys.stderr.flush()
        saved = os.dup(2)
        try:
            os.dup2(caught.fileno(), 2)
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            lines = caught.read().decode(errors="replace").splitlines()
            if lines:
                log.debug("portaudio_chatter", during=what, lines=len(lines), first=lines[0], last=lines[-1])


def load_pyaudio() -> Any:
    """Import PyAudio on first use (an optional extra). Through importlib: it ships no type hints."""
    try:
        return importlib.import_module("pyaudio")
    except ImportError as exc:
        raise HardwareError(f"PyAudio is not installed: {INSTALL_HINT}") from exc


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


def devices_of(pa: Any) -> list[DeviceInfo]:
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


def new_portaudio() -> Any:
    pyaudio = load_pyaudio()
    with PA_LOCK, captured_stderr("initialise"):
        return pyaudio.PyAudio()


def terminate_portaudio(pa: Any, stream: Any = None) -> None:
    """Stop and close ``stream`` (its callback must already answer paComplete), then release PortAudio.

    Stop before close: closing an active stream aborts it, and PortAudio's ALSA host API aborts by
    ``pthread_cancel``-ing the callback thread, which is unsafe while that thread waits for the GIL.
    A stop lets the thread end by itself after its next buffer.
    """
    with PA_LOCK:
        if stream is not None:
            for step in (stream.stop_stream, stream.close):
                try:
                    step()
                except OSError as exc:  # a device that is gone already
                    log.debug("audio_close_error", error=str(exc))
        pa.terminate()


def list_devices() -> list[DeviceInfo]:
    """Every device PortAudio sees (initialises and terminates PortAudio; blocking, for the CLI)."""
    pa = new_portaudio()
    try:
        return devices_of(pa)
    finally:
        terminate_portaudio(pa)


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


def open_stream(
    pa: Any,
    device: DeviceInfo,
    kind: Kind,
    candidates: Sequence[tuple[int, int]],
    block_ms: int,
    make_callback: Callable[[StreamFormat], Callable[..., tuple[bytes | None, int]]],
) -> tuple[Any, StreamFormat]:
    """Open and start a callback stream with the first candidate format the device accepts."""
    pyaudio = load_pyaudio()
    tried: list[str] = []
    for rate, channels in candidates:
        fmt = StreamFormat(rate, channels, max(1, round(rate * block_ms / 1000)))
        # No pa.is_format_supported() first: it opens the device while holding the GIL (PyAudio
        # releases it only around Pa_OpenStream), freezing every Python thread meanwhile.
        try:
            with captured_stderr("open"):
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
