"""16-bit PCM helpers shared by the hardware adapters: the microphone rate, whole samples out of
a byte stream cut anywhere, float <-> int16 conversion and stream resampling."""

from __future__ import annotations

from typing import Any

import numpy as np

MIC_RATE = 16000
"""The rate every microphone delivers (the Microphone port's contract): hardware's one 16 kHz."""


class PcmFramer:
    """Cut a byte stream into whole frames (2 bytes for 16-bit mono, 4 for stereo).

    The bytes of a frame split across two pieces are held back until the rest arrives, so a
    sound card never receives half a sample (docs/protocols.md "PaddleSpeech: audio to the speaker").
    """

    def __init__(self, frame_bytes: int = 2) -> None:
        if frame_bytes < 1:
            raise ValueError(f"frame_bytes must be positive, got {frame_bytes}")
        self.frame_bytes = frame_bytes
        self._rest = b""

    @property
    def pending(self) -> int:
        """Bytes held back because they are not a whole frame yet."""
        return len(self._rest)

    def feed(self, data: bytes) -> bytes:
        """Return the whole frames of the held-back bytes plus ``data``; keep the remainder."""
        if self._rest:
            data = self._rest + data
        cut = len(data) - len(data) % self.frame_bytes
        self._rest = data[cut:]
        return data[:cut]

    def close(self) -> bytes:
        """End of the stream: return (and forget) the incomplete frame, usually b""."""
        rest, self._rest = self._rest, b""
        return rest


def to_int16(x: np.ndarray) -> np.ndarray:
    """Float samples in [-1, 1) to little-endian int16, rounded and clipped."""
    return np.clip(np.rint(x * 32768.0), -32768, 32767).astype("<i2")


def stream_resampler(in_rate: int, out_rate: int) -> Any:
    """A soxr streaming resampler for float32 mono, high quality."""
    import soxr  # a project dependency; imported here like the other vendor libraries

    return soxr.ResampleStream(in_rate, out_rate, 1, dtype="float32", quality="HQ")
