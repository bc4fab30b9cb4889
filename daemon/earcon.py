"""The short tone a failed turn ends with, so a person near the robot knows it gave up."""

from __future__ import annotations

import numpy as np

EARCON_TONES_HZ = (660.0, 440.0)
"""Falling two-note pattern: reads as "no" without words, in any language."""
NOTE_S = 0.12
GAP_S = 0.03
LEVEL = 0.25


def failure_earcon(sample_rate: int) -> bytes:
    """int16 mono PCM at ``sample_rate``, about 0.3 s, with soft edges (no clicks)."""
    notes = []
    n = int(NOTE_S * sample_rate)
    t = np.arange(n) / sample_rate
    fade = np.minimum(1.0, np.minimum(t, t[::-1]) / 0.01)
    for hz in EARCON_TONES_HZ:
        notes.append(np.sin(2 * np.pi * hz * t) * fade * LEVEL)
        notes.append(np.zeros(int(GAP_S * sample_rate)))
    wave = np.concatenate(notes)
    return (wave * 32767).astype("<i2").tobytes()
