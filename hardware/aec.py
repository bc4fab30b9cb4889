"""Acoustic echo cancellation: remove what the speaker played from what the microphone hears.

While the robot speaks the microphone stays open for barge-in. Its signal goes through the echo
canceller, with what the speaker actually played as the far-end reference, before the VAD: the
robot's own voice should not look like a user talking over it.

* ``SpeexEchoCanceller``: SpeexDSP's adaptive filter (MDF), through the ``speexaec`` binding
  (Debian's ``libspeexdsp``). About 0.05 ms of CPU per 10 ms frame; 30-40 dB less echo once it has
  converged (a few seconds of far-end speech); near-end speech passes (``daemon/tools/bench/aec.py``).
* ``NullEchoCanceller``: passes the microphone through, for when AEC is off.

Both take one frame of near end (microphone) and one of far end (reference) at a time, int16 mono,
same length, the far frame aligned to the near one (``states.echo_reference`` does that).
Keep one instance running for the life of the microphone, across turns: the filter then stays
converged to the room. The filter models echo arriving up to ``filter_ms`` after the reference, so
the reference may lead the echo by a lot but must not lag it.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable
from typing import Any

import structlog

from hardware.errors import HardwareError

log = structlog.get_logger()

ENGINES = ("speex", "off")
_INSTALL_HINT = "apt-get install libspeexdsp-dev && pip install speexaec"


def _frame_samples(sample_rate: int, frame_ms: int) -> int:
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    if frame_ms <= 0 or sample_rate * frame_ms % 1000:
        raise ValueError(f"frame_ms must give a whole number of samples at {sample_rate} Hz, got {frame_ms}")
    return sample_rate * frame_ms // 1000


def _check(name: str, near: bytes, far: bytes, frame_bytes: int) -> None:
    if len(near) != frame_bytes or len(far) != frame_bytes:
        raise ValueError(
            f"{name} wants near and far frames of {frame_bytes} bytes each, got {len(near)} and {len(far)}"
        )


class SpeexEchoCanceller:
    """SpeexDSP echo canceller: ``process(near, far)`` on frames of ``frame_ms``, a ``filter_ms`` echo tail.

    The default 256 ms tail covers a room's main reflections; a 64 ms tail was measured too short
    for a 40 ms direct path plus reflections, and 512 ms converges more slowly.
    """

    def __init__(self, *, sample_rate: int = 16000, frame_ms: int = 10, filter_ms: int = 256) -> None:
        self.frame_samples = _frame_samples(sample_rate, frame_ms)
        if filter_ms < frame_ms:
            raise ValueError(f"filter_ms must be at least frame_ms ({frame_ms}), got {filter_ms}")
        self.sample_rate = sample_rate
        self.frame_ms = frame_ms
        self.filter_ms = filter_ms
        self.frame_bytes = self.frame_samples * 2
        self.filter_samples = sample_rate * filter_ms // 1000
        self._cls = self._load_vendor()
        self._ec = self._new_state()
        log.info("aec_created", engine="speex", sample_rate=sample_rate, frame_ms=frame_ms, filter_ms=filter_ms)

    @staticmethod
    def _load_vendor() -> Any:
        try:
            with warnings.catch_warnings():
                # speexaec warns (instead of failing) when its compiled part does not load.
                warnings.simplefilter("ignore")
                module = importlib.import_module("speexaec")
        except ImportError as exc:
            raise HardwareError(f"echo canceller 'speex': speexaec is missing: {_INSTALL_HINT}") from exc
        cls = getattr(module, "EchoCanceller", None)
        if cls is None:
            raise HardwareError(
                "echo canceller 'speex': speexaec is installed but its compiled extension does not load "
                f"(is libspeexdsp1 installed?): {_INSTALL_HINT}"
            )
        return cls

    def _new_state(self) -> Any:
        try:
            return self._cls(self.frame_samples, self.filter_samples, self.sample_rate)
        except (MemoryError, RuntimeError, ValueError) as exc:
            raise HardwareError(f"echo canceller 'speex': cannot create the filter: {exc}") from exc

    def process(self, near: bytes, far: bytes) -> bytes:
        """One frame of microphone minus its estimated echo of ``far`` (int16 mono, ``frame_bytes`` each)."""
        _check("speex echo canceller", near, far, self.frame_bytes)
        out: bytes = self._ec.process_bytes(bytes(near), bytes(far))
        return out

    def process_block(self, near: bytes, far: bytes) -> bytes:
        """``process`` over a block of whole frames (a 20 ms mic block is two 10 ms frames)."""
        return _per_frame(self.process, near, far, self.frame_bytes)

    def reset(self) -> None:
        """Forget the learned echo path (a new filter; it re-converges on the next far-end speech)."""
        self._ec = self._new_state()
        log.info("aec_reset", engine="speex")


class NullEchoCanceller:
    """No echo cancellation: ``process`` returns the near frame as it is (same checks as the real one)."""

    def __init__(self, *, sample_rate: int = 16000, frame_ms: int = 10) -> None:
        self.frame_samples = _frame_samples(sample_rate, frame_ms)
        self.sample_rate = sample_rate
        self.frame_ms = frame_ms
        self.frame_bytes = self.frame_samples * 2

    def process(self, near: bytes, far: bytes) -> bytes:
        _check("null echo canceller", near, far, self.frame_bytes)
        return bytes(near)

    def process_block(self, near: bytes, far: bytes) -> bytes:
        return _per_frame(self.process, near, far, self.frame_bytes)

    def reset(self) -> None:
        """Nothing to forget."""


def _per_frame(process: Callable[[bytes, bytes], bytes], near: bytes, far: bytes, frame_bytes: int) -> bytes:
    if len(near) != len(far) or len(near) % frame_bytes:
        raise ValueError(
            f"near and far blocks must be the same whole number of {frame_bytes}-byte frames, "
            f"got {len(near)} and {len(far)} bytes"
        )
    return b"".join(
        process(near[i : i + frame_bytes], far[i : i + frame_bytes]) for i in range(0, len(near), frame_bytes)
    )


def make_echo_canceller(engine: str, **opts: Any) -> SpeexEchoCanceller | NullEchoCanceller:
    """Build an echo canceller by name: ``"speex"`` (``frame_ms``, ``filter_ms``) or ``"off"``."""
    if engine == "speex":
        return SpeexEchoCanceller(**opts)
    if engine == "off":
        opts.pop("filter_ms", None)
        return NullEchoCanceller(**opts)
    raise ValueError(f"unknown echo canceller {engine!r}: use one of {', '.join(ENGINES)}")
