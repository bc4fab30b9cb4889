"""End-of-speech detection: turns per-frame VAD decisions into one utterance's audio and its end.

Pure logic, no I/O. Feed it every VAD frame of the microphone, in order, with the VAD's verdict::

    ep = Endpointer(EndpointerSettings(), frame_bytes=vad.frame_bytes)
    for event in ep.push(frame, vad.is_speech(frame)):
        ...  # SpeechStarted -> open ASR, send .audio; SpeechAudio -> send; SpeechEnded/NoSpeech -> finish

Guarantee (audio conservation): the bytes of ``SpeechStarted.audio`` followed by every
``SpeechAudio.audio`` are exactly the input frames from the start of the pre-roll to the frame
on which the end was decided, each once and in order.

All durations are converted to whole frames, rounding up (``ceil(ms / frame_ms)``).
One ``Endpointer`` handles one utterance; after ``SpeechEnded`` or ``NoSpeech`` it is ``done``
and ``push`` returns ``[]`` until ``reset()``.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Literal, TypeAlias

_EPS = 1e-9


@dataclass(frozen=True)
class EndpointerSettings:
    """When an utterance starts and ends. Defaults suit a robot answering spoken questions."""

    speech_start_ms: int = 120
    """Speech must last this long (a window of frames, mostly speech) before it counts: shorter
    blips (a cough, a door, a click) are ignored."""
    speech_start_ratio: float = 0.8
    """Fraction of the frames in the ``speech_start_ms`` window that must be speech (rounded up);
    1.0 means strictly consecutive. With 30 ms frames and 120 ms every frame must be speech;
    longer windows tolerate a dropped frame."""
    end_silence_ms: int = 700
    """Consecutive non-speech that ends the utterance. Shorter cuts people off at a comma;
    longer adds directly to the reply latency."""
    pre_roll_ms: int = 300
    """Audio kept from before the speech onset and sent first, so the VAD's late reaction
    does not cut off the first syllable (plosives and fricatives read as non-speech)."""
    max_utterance_s: float = 15.0
    """Hard cap on one utterance from its onset (someone talking on and on, or a TV): the
    utterance is cut and answered."""
    no_speech_timeout_s: float | None = 8.0
    """Give up when no speech starts within this time of the first frame (woken by mistake).
    None waits forever."""


@dataclass(frozen=True)
class SpeechStarted:
    """Speech confirmed. ``audio`` = pre-roll + the frames from the onset up to this one."""

    audio: bytes


@dataclass(frozen=True)
class SpeechAudio:
    """One more frame of the utterance (speech, or silence that has not yet ended it)."""

    audio: bytes


@dataclass(frozen=True)
class SpeechEnded:
    """The utterance is over: after ``end_silence_ms`` of silence, or cut at ``max_utterance_s``."""

    reason: Literal["silence", "max_length"]


@dataclass(frozen=True)
class NoSpeech:
    """Nobody spoke within ``no_speech_timeout_s`` of the first frame."""


EndpointerEvent: TypeAlias = SpeechStarted | SpeechAudio | SpeechEnded | NoSpeech


def _frames(ms: float, frame_ms: float) -> int:
    return max(0, math.ceil(ms / frame_ms - _EPS))


class Endpointer:
    """Finds one utterance in a stream of VAD-labelled frames (see the module docstring)."""

    def __init__(self, settings: EndpointerSettings, frame_bytes: int, sample_rate: int = 16000) -> None:
        if frame_bytes <= 0 or frame_bytes % 2:
            raise ValueError(f"frame_bytes must be a positive whole number of int16 samples, got {frame_bytes}")
        if not 0.0 < settings.speech_start_ratio <= 1.0:
            raise ValueError(f"speech_start_ratio must be in (0, 1], got {settings.speech_start_ratio}")
        self.settings = settings
        self.frame_bytes = frame_bytes
        self.frame_ms = frame_bytes / 2 / sample_rate * 1000
        self.start_frames = max(1, _frames(settings.speech_start_ms, self.frame_ms))
        """Length of the window that decides a speech start."""
        self.start_required = max(1, math.ceil(settings.speech_start_ratio * self.start_frames - _EPS))
        """Speech frames needed in that window."""
        self.end_frames = max(1, _frames(settings.end_silence_ms, self.frame_ms))
        self.pre_roll_frames = _frames(settings.pre_roll_ms, self.frame_ms)
        self.max_frames = max(self.start_frames, _frames(settings.max_utterance_s * 1000, self.frame_ms))
        timeout = settings.no_speech_timeout_s
        self.no_speech_frames = None if timeout is None else max(1, _frames(timeout * 1000, self.frame_ms))
        self.reset()

    def reset(self) -> None:
        """Start listening for a new utterance."""
        self._history: deque[tuple[bytes, bool]] = deque(maxlen=self.pre_roll_frames + self.start_frames)
        self._in_speech = False
        self._done = False
        self._frames_seen = 0
        self._speech_frames = 0
        self._silence_run = 0

    @property
    def in_speech(self) -> bool:
        return self._in_speech

    @property
    def done(self) -> bool:
        """True after SpeechEnded or NoSpeech, until ``reset()``."""
        return self._done

    @property
    def frames_seen(self) -> int:
        return self._frames_seen

    def push(self, frame: bytes, is_speech: bool) -> list[EndpointerEvent]:
        """One frame and the VAD's verdict on it; returns what that frame caused, in order."""
        if len(frame) != self.frame_bytes:
            raise ValueError(f"endpointer wants frames of {self.frame_bytes} bytes, got {len(frame)}")
        if self._done:
            return []
        self._frames_seen += 1
        if self._in_speech:
            return self._push_in_speech(frame, is_speech)
        return self._push_waiting(frame, is_speech)

    def _push_waiting(self, frame: bytes, is_speech: bool) -> list[EndpointerEvent]:
        history = self._history
        history.append((frame, is_speech))
        window_start = max(0, len(history) - self.start_frames)
        window = [s for _, s in list(history)[window_start:]]
        if is_speech and sum(window) >= self.start_required:
            onset = window_start + window.index(True)
            frames = list(history)
            pre_roll = frames[max(0, onset - self.pre_roll_frames) : onset]
            audio = b"".join(f for f, _ in pre_roll) + b"".join(f for f, _ in frames[onset:])
            self._in_speech = True
            self._speech_frames = len(frames) - onset
            self._silence_run = 0
            history.clear()
            events: list[EndpointerEvent] = [SpeechStarted(audio)]
            if self._speech_frames >= self.max_frames:
                events.append(self._end("max_length"))
            return events
        if self.no_speech_frames is not None and self._frames_seen >= self.no_speech_frames:
            self._done = True
            history.clear()
            return [NoSpeech()]
        return []

    def _push_in_speech(self, frame: bytes, is_speech: bool) -> list[EndpointerEvent]:
        self._speech_frames += 1
        self._silence_run = 0 if is_speech else self._silence_run + 1
        events: list[EndpointerEvent] = [SpeechAudio(frame)]
        if self._silence_run >= self.end_frames:
            events.append(self._end("silence"))
        elif self._speech_frames >= self.max_frames:
            events.append(self._end("max_length"))
        return events

    def _end(self, reason: Literal["silence", "max_length"]) -> SpeechEnded:
        self._in_speech = False
        self._done = True
        return SpeechEnded(reason)


class Framer:
    """Cuts a stream of PCM chunks of any size into VAD frames of exactly ``frame_bytes``.

    The microphone delivers 20 ms blocks; silero wants 32 ms frames and webrtc 30 ms.
    """

    def __init__(self, frame_bytes: int) -> None:
        if frame_bytes <= 0:
            raise ValueError(f"frame_bytes must be positive, got {frame_bytes}")
        self.frame_bytes = frame_bytes
        self._pending = bytearray()

    def push(self, pcm: bytes) -> list[bytes]:
        """The whole frames now available, oldest first; the remainder waits for more."""
        self._pending += pcm
        n = len(self._pending) // self.frame_bytes * self.frame_bytes
        if n == 0:
            return []
        out = bytes(self._pending[:n])
        del self._pending[:n]
        return [out[i : i + self.frame_bytes] for i in range(0, n, self.frame_bytes)]

    @property
    def pending_bytes(self) -> int:
        return len(self._pending)

    def clear(self) -> None:
        self._pending.clear()
