"""Reading the figures off the input and output timelines (WAV files on the wall clock)."""

from __future__ import annotations

import itertools
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

LOUD = 300
"""A sample louder than this (int16) is sound, not silence."""


def read_pcm(path: Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path), "rb") as w:
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2"), w.getframerate()


def last_loud_s(samples: np.ndarray, rate: int) -> float:
    """Offset (s) just after the last loud sample: where the user's speech ends."""
    loud = np.flatnonzero(np.abs(samples.astype(np.int32)) > LOUD)
    if not len(loud):
        raise ValueError("no speech in the input")
    return (int(loud[-1]) + 1) / rate


def first_loud_s(samples: np.ndarray, rate: int, after_s: float) -> float | None:
    start = int(after_s * rate)
    loud = np.flatnonzero(np.abs(samples[start:].astype(np.int32)) > LOUD)
    return None if not len(loud) else (start + int(loud[0])) / rate


@dataclass(frozen=True)
class Reply:
    """One answer as heard at the output, on the input's clock (seconds since the mic opened)."""

    first_audio_s: float
    """First reply sample written to the output."""
    first_sound_s: float | None
    """First loud reply sample (the TTS voice may start with a little silence)."""
    longest_gap_s: float
    """Longest silence between two runs of reply audio: the speaker had nothing to play."""
    audio_s: float
    """Reply audio played in the measured window."""


def reply_after(
    spans: list[tuple[int, int]], rate: int, output: Path, *, shift_s: float, after_s: float
) -> Reply | None:
    """The reply in the output: the audio spans starting after ``after_s`` (input clock).

    ``spans`` are the speaker's ``played_audio_spans`` (samples); ``shift_s`` is the output's open
    time minus the input's, so ``input time = output offset + shift_s``. The listening earcon
    plays before the question ends and is skipped.
    """
    reply = [(a / rate + shift_s, b / rate + shift_s) for a, b in spans if a / rate + shift_s >= after_s]
    if not reply:
        return None
    gaps = [b[0] - a[1] for a, b in itertools.pairwise(reply)]
    samples, file_rate = read_pcm(output)
    sound = first_loud_s(samples, file_rate, reply[0][0] - shift_s)
    return Reply(
        first_audio_s=reply[0][0],
        first_sound_s=None if sound is None else sound + shift_s,
        longest_gap_s=max(gaps, default=0.0),
        audio_s=sum(b - a for a, b in reply),
    )
