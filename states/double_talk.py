"""Double talk while the echo canceller still learns the room: is the user clearly louder than
the echo the robot's own voice can leave in the microphone?

A fresh canceller removes little echo; its residue is the robot's voice, and a VAD calls it speech.
Instead of ignoring the microphone until the canceller has learnt (a deaf start), every frame is
compared with the echo to be expected from what the speaker played: the loudest far-end frame of
the last ``tail_ms`` (the echo of any of them may be arriving now) times the *residual echo
ratio*, the canceller's output over that far-end level as measured on the robot's own voice. A
frame is the user's only when it is ``margin_db`` louder than that.

The ratio starts at ``prior_db`` (the echo path is assumed no louder than that relative to the
reference) and follows the canceller as it converges: it is the largest measured over the last
``memory_s`` of the robot's speech, and rises no faster than ``creep_db_per_s`` (a user's
syllable grows a few dB a frame, and each step would otherwise be taken for echo by the next).
The canceller's success also varies from one syllable to the next, by 10 dB and more while it
converges, which no estimate from the past can follow; so a frame must also have passed the
canceller mostly untouched, as a user's voice does (``removed_db``). A frame found louder keeps
the gate open for ``hold_ms``: the quieter syllables of the same user stay the user's.

Pure arithmetic on int16 frames: no clock, no I/O.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np

FAR_ACTIVE_RMS = 100.0
"""A far-end level below this (int16 RMS, about -50 dBFS) leaves no echo worth guarding against."""


@dataclass(frozen=True)
class DoubleTalkSettings:
    """How the double-talk rule judges a frame (constants of the design, measured by ``bench aec``)."""

    margin_db: float = 6.0
    """The user must be this much louder than the expected echo."""
    prior_db: float = 6.0
    """The residual echo ratio before anything was measured: echo up to this much louder than the
    reference (+6 dB: a speaker right beside the microphone) is expected from the first frame on."""
    memory_s: float = 0.3
    """The ratio is the largest measured on the echo over this much of the robot's speech."""
    creep_db_per_s: float = 20.0
    """How fast the ratio may rise: echo louder than measured so far is learnt this fast."""
    removed_db: float = 4.0
    """A frame from which the canceller removed more than this (microphone over output) is mostly
    echo whatever its level: a user's voice passes the canceller untouched. This holds when the
    canceller's success varies from one syllable to the next, where the ratio cannot follow."""
    hold_ms: float = 100.0
    """A frame found louder keeps the gate open this long: a user's quieter syllables between
    loud ones stay the user's."""
    tail_ms: float = 300.0
    """How long after a far-end frame its echo may still arrive (the canceller's filter, 256 ms,
    and the direct path)."""

    def __post_init__(self) -> None:
        values = (
            self.margin_db,
            self.memory_s,
            self.creep_db_per_s,
            self.removed_db,
            self.hold_ms,
            self.tail_ms,
        )
        if not all(math.isfinite(v) and v >= 0 for v in values) or not math.isfinite(self.prior_db):
            raise ValueError(f"double-talk settings must be finite and >= 0 (prior_db any finite): {self}")


def rms(pcm: bytes) -> float:
    """Root mean square of int16 PCM (0 for nothing)."""
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float32)
    return float(np.sqrt(np.mean(samples * samples))) if len(samples) else 0.0


class DoubleTalkGate:
    """Feed it every canceller frame (``observe``), ask it about any stretch of the cleaned
    microphone that ends at the newest frame observed (``user_louder``)."""

    def __init__(self, *, frame_s: float, settings: DoubleTalkSettings | None = None) -> None:
        if not (frame_s > 0 and math.isfinite(frame_s)):
            raise ValueError(f"frame_s must be a positive duration, got {frame_s}")
        self.settings = s = settings or DoubleTalkSettings()
        self._hold = math.ceil(s.hold_ms / 1000 / frame_s - 1e-9)
        self._far: deque[float] = deque(maxlen=max(1, math.ceil(s.tail_ms / 1000 / frame_s)))
        memory = max(1, math.ceil(s.memory_s / frame_s))
        self._ratios: deque[float] = deque([10 ** (s.prior_db / 20)] * memory, maxlen=memory)
        self._margin = 10 ** (s.margin_db / 20)
        self._creep = 10 ** (s.creep_db_per_s * frame_s / 20)
        self._removed = 10 ** (-s.removed_db / 20)
        self.ratio = self._ratios[0]
        """The residual echo ratio now: the canceller's output over the far-end level, on echo."""
        self._frames = 0
        self._open_until = -1

    @property
    def far_level(self) -> float:
        """The loudest far-end frame (RMS) whose echo may still be arriving."""
        return max(self._far, default=0.0)

    @property
    def expected_echo(self) -> float:
        """The RMS the echo alone may reach in the cleaned microphone now (0: the speaker is quiet)."""
        level = self.far_level
        return self.ratio * level if level >= FAR_ACTIVE_RMS else 0.0

    def observe(self, far: bytes, clean: bytes) -> None:
        """One canceller frame: its far end (the reference) and its output."""
        self._frames += 1
        self._far.append(rms(far))
        level = self.far_level
        if level < FAR_ACTIVE_RMS:
            return  # nothing to learn the echo from
        # Never faster than creep_db_per_s upwards: a user's syllable rises a few dB a frame,
        # and each step would look like echo to the step before.
        measured = min(rms(clean) / level, self.ratio * self._creep)
        self._ratios.append(measured)
        self.ratio = max(self._ratios)

    def user_louder(self, clean: bytes, near: bytes | None = None) -> bool:
        """Is this stretch of cleaned microphone (ending at the newest frame observed) the user's:
        clearly louder than the echo could be, and (given the microphone before the canceller,
        ``near``) not mostly removed by it? Always true while the speaker is quiet."""
        expected = self.expected_echo
        if expected == 0.0:
            return True  # no hold from here: the robot's first syllable may follow at once
        level = rms(clean)
        if level > self._margin * expected and (near is None or level > self._removed * rms(near)):
            self._open_until = self._frames + self._hold
            return True
        return self._frames <= self._open_until
