"""Earcons: the short sounds that tell a person near the robot what it is doing.

Built-in tones by default (a rising pair when the robot starts listening, a falling pair when a
turn fails, a soft low pair while a slow answer is awaited), a WAV file of your own by config, or
none.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

import numpy as np
import soxr

from hardware.wavfile import read_wav

Earcon = Callable[[int], bytes]
"""Sample rate -> int16 mono PCM at that rate."""

FADE_S = 0.01


def _tones(hz: tuple[float, ...], sample_rate: int, level: float, note_s: float = 0.12, gap_s: float = 0.03) -> bytes:
    n = int(note_s * sample_rate)
    t = np.arange(n) / sample_rate
    fade = np.minimum(1.0, np.minimum(t, t[::-1]) / FADE_S)  # soft edges: no clicks
    parts = []
    for f in hz:
        parts.append(np.sin(2 * np.pi * f * t) * fade * level)
        parts.append(np.zeros(int(gap_s * sample_rate)))
    return (np.concatenate(parts) * 32767).astype("<i2").tobytes()


def failure_earcon(sample_rate: int) -> bytes:
    """Falling 660 -> 440 Hz, about 0.3 s: reads as "no" without words, in any language."""
    return _tones((660.0, 440.0), sample_rate, 0.25)


def listening_earcon(sample_rate: int) -> bytes:
    """Rising 880 -> 1320 Hz, quieter and short (0.18 s): "I am listening", and the user can start."""
    return _tones((880.0, 1320.0), sample_rate, 0.15, note_s=0.07, gap_s=0.02)


def thinking_earcon(sample_rate: int) -> bytes:
    """Two soft low notes, 523 -> 587 Hz, about 0.2 s, much quieter than the others: "still
    working on it", heard over a fan without sounding like an answer or an alarm."""
    return _tones((523.0, 587.0), sample_rate, 0.06, note_s=0.08, gap_s=0.02)


def wav_earcon(path: str) -> Earcon:
    """An earcon from a WAV file (any rate and channels), read once and resampled per rate.
    Raises HardwareError naming the file when it cannot be read."""
    samples, rate = read_wav(path)
    mono = samples.mean(axis=1).astype(np.float32)

    @cache
    def at(sample_rate: int) -> bytes:
        out = mono if sample_rate == rate else soxr.resample(mono, rate, sample_rate)
        return (np.clip(out, -1.0, 1.0) * 32767).astype("<i2").tobytes()

    return at


def earcon_from_setting(value: str, builtin: Earcon) -> Earcon | None:
    """``"builtin"``, ``"off"``, or a path to a WAV file."""
    if value == "off":
        return None
    if value == "builtin":
        return builtin
    return wav_earcon(value)
