"""End-of-speech detection: turns per-frame VAD decisions into one utterance's audio and its end.

Pure logic, no I/O. Feed it every VAD frame of the microphone, in order, with the VAD's verdict::

    ep = Endpointer(EndpointerSettings(), frame_bytes=vad.frame_bytes)
    for event in ep.push(frame, vad.is_speech(frame)):
        ...  # SpeechStarted -> open ASR, send .audio; SpeechAudio -> send; SpeechEnded/NoSpeech -> finish

Guarantee (audio conservation): the bytes of ``SpeechStarted.audio`` followed by every
``SpeechAudio.audio`` are exactly the input frames from the start of the pre-roll to the frame
on which the end was decided, each once and in order.

With ``speculate_after_ms`` set, two more events mark a pause inside the utterance, carrying no
audio (the guarantee above is unchanged): ``SpeechPaused`` once the silence reaches
``speculate_after_ms`` (once per pause; not on the frame that ends the utterance) and
``SpeechResumed`` when the voice comes back after a ``SpeechPaused``. A frame's ``SpeechAudio``
comes before the pause or resume it caused. ``pause_early`` decides the pause inside a frame still
being filled, as ``end_early`` does the end; ``end_sooner`` shortens the end of the current pause
(a transcript that ends a sentence).

The end of an utterance is measured from where the voice stopped, not from where the VAD
noticed: a neural VAD keeps saying "speech" for a few frames after the voice stops (Silero:
about 100 ms, and it may flicker back for a frame), and that hangover would add straight to the
reply latency. So silence is counted from the last loud 2 ms of a speech frame (loud against the
room's noise floor): the quiet audio the VAD still calls speech after it counts as silence, up to
``end_trim_ms`` (a longer quiet run is a soft voice, not a hangover). The end is still decided
only once the VAD says non-speech, and ``end_early`` may then end the utterance inside a VAD
frame that is still being filled, as soon as the silence is long enough.

Durations other than the end silence are converted to whole frames, rounding up
(``ceil(ms / frame_ms)``). One ``Endpointer`` handles one utterance; after ``SpeechEnded`` or
``NoSpeech`` it is ``done`` and ``push`` returns ``[]`` until ``reset()``.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Literal, TypeAlias

import numpy as np

from states.settings import Checked, SettingsError, problems, setting

_EPS = 1e-9

LEVEL_BLOCK = 32
"""Loudness is judged on 2 ms blocks (32 samples at 16 kHz): fine enough to find where a voice stopped."""
MIN_GATE_RMS = 30.0
"""A block quieter than this (int16 RMS, about -60 dBFS) is silence in any room."""
GATE_OVER_FLOOR = 2.0
"""A block is voice only when it is louder than the room's noise floor by this factor (6 dB)."""
FLOOR_RISE = 0.05
"""How fast the noise floor follows a louder room, per non-speech frame (it drops at once)."""


@dataclass(frozen=True)
class EndpointerSettings(Checked):
    """When an utterance starts and ends. Defaults suit a robot answering spoken questions."""

    speech_start_ms: int = setting(120, gt=0)
    """Speech must last this long (a window of frames, mostly speech) before it counts: shorter
    blips (a cough, a door, a click) are ignored."""
    speech_start_ratio: float = setting(0.8, gt=0, le=1, in_file=False)
    """Fraction of the frames in the ``speech_start_ms`` window that must be speech (rounded up);
    1.0 means strictly consecutive. With 30 ms frames and 120 ms every frame must be speech;
    longer windows tolerate a dropped frame."""
    end_silence_ms: int = setting(700, gt=0)
    """Consecutive non-speech that ends the utterance. Shorter cuts people off at a comma;
    longer adds directly to the reply latency."""
    speculate_after_ms: int | None = setting(None, ge=0)
    """Speculative turn end: after this much silence the ASR is finished and the answer is
    prepared (LLM and TTS) but not played; it plays the moment the silence reaches
    ``end_silence_ms``, and is dropped if the user speaks again first. None or 0: off (0 is
    how the TOML file says it, and becomes None). The daemon's default is on (``VadSettings``)."""
    end_silence_short_ms: int | None = setting(None, ge=0)
    """With speculation: a transcript that ends a sentence (。？！.?!) ends the utterance after
    this much silence instead of ``end_silence_ms``. None or 0: off."""
    pre_roll_ms: int = setting(300, ge=0)
    """Audio kept from before the speech onset and sent first, so the VAD's late reaction
    does not cut off the first syllable (plosives and fricatives read as non-speech)."""
    end_trim_ms: int = setting(200, ge=0)
    """At most this much quiet audio at the end of the frames the VAD still calls speech counts
    towards ``end_silence_ms`` (the VAD's hangover). 0 trusts the VAD's verdicts alone."""
    max_utterance_s: float = setting(15.0, gt=0)
    """Hard cap on one utterance from its onset (someone talking on and on, or a TV): the
    utterance is cut and answered."""
    no_speech_timeout_s: float | None = setting(8.0, gt=0)
    """Give up when no speech starts within this time of the first frame (woken by mistake).
    None waits forever."""

    def __post_init__(self) -> None:
        """Each field against its own rule, then the silences against each other: a pause that
        speculates must come before the end it anticipates, and the short end is an end sooner."""
        found = list(problems(self))
        for key in ("speculate_after_ms", "end_silence_short_ms"):
            value = getattr(self, key)
            if value == 0:
                object.__setattr__(self, key, None)  # off, as the file can say it (TOML has no null)
            elif (
                isinstance(value, int)
                and value >= self.end_silence_ms
                and not any(k in (key, "end_silence_ms") for k, _ in found)
            ):
                why = f"must be less than end_silence_ms ({self.end_silence_ms}), got {value}; 0 turns it off"
                found.append((key, why))
        if found:
            raise SettingsError(found)


@dataclass(frozen=True)
class SpeechStarted:
    """Speech confirmed. ``audio`` = pre-roll + the frames from the onset up to this one."""

    audio: bytes


@dataclass(frozen=True)
class SpeechAudio:
    """One more frame of the utterance (speech, or silence that has not yet ended it)."""

    audio: bytes


@dataclass(frozen=True)
class SpeechPaused:
    """The silence reached ``speculate_after_ms``: the user may be done (the answer can be prepared)."""

    silence_ms: int
    """The silence counted so far (heard silence and trimmed hangover), in whole ms."""


@dataclass(frozen=True)
class SpeechResumed:
    """The voice came back after a ``SpeechPaused``: the utterance goes on."""

    silence_ms: int
    """How long the pause was, from where the voice stopped (in whole ms, at most to the start
    of the frame that brought the voice back)."""


@dataclass(frozen=True)
class SpeechEnded:
    """The utterance is over: after ``end_silence_ms`` of silence, or cut at ``max_utterance_s``."""

    reason: Literal["silence", "max_length"]


@dataclass(frozen=True)
class NoSpeech:
    """Nobody spoke within ``no_speech_timeout_s`` of the first frame."""


EndpointerEvent: TypeAlias = SpeechStarted | SpeechAudio | SpeechPaused | SpeechResumed | SpeechEnded | NoSpeech


class LoudnessGate:
    """Tells a voice from the room's noise by loudness alone.

    The noise floor is learnt from the frames the VAD calls non-speech: it drops at once to a
    quieter frame and rises slowly. Before it has heard any, only ``MIN_GATE_RMS`` counts, so
    an unknown room makes the gate call more audio loud, which trims less, never more.

    Not the same tracker as the Silero VAD's ``NoiseFloor`` (hardware/vad.py), on purpose: that
    one sees every frame before any verdict, so it may only creep up (1 dB/s) or speech would lift
    it; this one sees only frames already called non-speech, so it can follow a louder room
    within a second, which the end trim needs. It also serves the WebRTC VAD, which has no floor.
    """

    def __init__(self) -> None:
        self.floor: float | None = None
        """Int16 RMS of the room's noise, once heard."""

    @property
    def threshold(self) -> float:
        if self.floor is None:
            return MIN_GATE_RMS
        return max(MIN_GATE_RMS, self.floor * GATE_OVER_FLOOR)

    def learn(self, samples: np.ndarray) -> None:
        """One frame the VAD called non-speech."""
        if not len(samples):
            return
        rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))
        if self.floor is None or rms < self.floor:
            self.floor = rms
        else:
            self.floor += (rms - self.floor) * FLOOR_RISE

    def quiet_tail(self, samples: np.ndarray) -> int:
        """How many samples at the end of ``samples`` come after its last loud block (all of
        them when none is loud)."""
        n = len(samples)
        if n == 0:
            return 0
        starts = np.arange(0, n, LEVEL_BLOCK)
        energy = np.add.reduceat(np.square(samples, dtype=np.float64), starts)
        lengths = np.diff(np.append(starts, n))
        loud = np.flatnonzero(energy > self.threshold**2 * lengths)
        if not len(loud):
            return n
        last = int(loud[-1])
        return n - int(starts[last] + lengths[last])


def _frames(ms: float, frame_ms: float) -> int:
    return max(0, math.ceil(ms / frame_ms - _EPS))


class Endpointer:
    """Finds one utterance in a stream of VAD-labelled frames (see the module docstring)."""

    def __init__(
        self,
        settings: EndpointerSettings,
        frame_bytes: int,
        sample_rate: int = 16000,
        gate: LoudnessGate | None = None,
    ) -> None:
        if frame_bytes <= 0 or frame_bytes % 2:
            raise ValueError(f"frame_bytes must be a positive whole number of int16 samples, got {frame_bytes}")
        self.settings = settings
        self.frame_bytes = frame_bytes
        self.frame_ms = frame_bytes / 2 / sample_rate * 1000
        self.start_frames = max(1, _frames(settings.speech_start_ms, self.frame_ms))
        """Length of the window that decides a speech start."""
        self.start_required = max(1, math.ceil(settings.speech_start_ratio * self.start_frames - _EPS))
        """Speech frames needed in that window."""
        self.end_frames = max(1, _frames(settings.end_silence_ms, self.frame_ms))
        """Whole non-speech frames that end the utterance when the VAD is trusted alone."""
        self.sample_rate = sample_rate
        self.end_samples = max(1, round(settings.end_silence_ms * sample_rate / 1000))
        self.trim_samples = max(0, round(settings.end_trim_ms * sample_rate / 1000))
        speculate = settings.speculate_after_ms
        self.pause_samples = None if speculate is None else max(1, round(speculate * sample_rate / 1000))
        """Silence that makes a pause (``SpeechPaused``); None: no pause events."""
        self.gate = gate if gate is not None else LoudnessGate()
        """The room's noise floor: kept across ``reset()``, and passed in to outlive this
        endpointer (the next utterance may start before any silence was heard, in a barge-in)."""
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
        self._heard_silence = 0
        """Samples of the frames the VAD called non-speech since the voice was last heard."""
        self._quiet_speech = 0
        """Quiet samples in the frames the VAD called speech since the voice was last heard: its
        hangover, counted as silence."""
        self._last_speech = False
        self._paused = False
        """A SpeechPaused was given and the voice has not come back since."""
        self._end_now = self.end_samples
        """Silence that ends the utterance now: ``end_samples``, or less after ``end_sooner``."""

    @property
    def _silence(self) -> int:
        """Samples of silence since the voice was last heard."""
        return self._heard_silence + self._quiet_speech

    @property
    def in_speech(self) -> bool:
        return self._in_speech

    @property
    def silence_ms(self) -> float:
        """Silence after the voice at the end of the frames pushed so far (its hangover
        included), in ms: where the voice ended in the utterance's audio."""
        return self._silence / (self.frame_bytes / 2) * self.frame_ms

    @property
    def done(self) -> bool:
        """True after SpeechEnded or NoSpeech, until ``reset()``."""
        return self._done

    @property
    def frames_seen(self) -> int:
        return self._frames_seen

    @property
    def paused(self) -> bool:
        """True from a SpeechPaused until the voice comes back (or the utterance ends)."""
        return self._paused

    def end_sooner(self, end_silence_ms: int) -> None:
        """End the current pause once its silence reaches ``end_silence_ms`` (if less than
        ``end_silence_ms`` of the settings): what was said so far ends a sentence. Forgotten when
        the voice comes back; ignored when there is no pause now."""
        if self._paused:
            self._end_now = min(self.end_samples, max(1, round(end_silence_ms * self.sample_rate / 1000)))

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
        if not is_speech:
            self.gate.learn(np.frombuffer(frame, dtype="<i2"))
        if is_speech and sum(window) >= self.start_required:
            onset = window_start + window.index(True)
            frames = list(history)
            pre_roll = frames[max(0, onset - self.pre_roll_frames) : onset]
            audio = b"".join(f for f, _ in pre_roll) + b"".join(f for f, _ in frames[onset:])
            self._in_speech = True
            self._speech_frames = len(frames) - onset
            self._heard_silence = self._quiet_speech = 0
            self._last_speech = True
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
        samples = np.frombuffer(frame, dtype="<i2")
        events: list[EndpointerEvent] = [SpeechAudio(frame)]
        if not is_speech:
            self._heard_silence += len(samples)
            self.gate.learn(samples)
        elif not self.trim_samples:
            events += self._voice_back(0)
        else:
            tail = self.gate.quiet_tail(samples)
            if tail < len(samples):  # the voice: silence starts after its last loud block
                events += self._voice_back(tail)
            else:
                self._quiet_speech += tail
                if self._quiet_speech > self.trim_samples:  # too long for a hangover: a soft voice
                    events += self._voice_back(0)
        self._last_speech = is_speech
        if not is_speech and self._silence >= self._end_now:
            events.append(self._end("silence"))
        elif self._speech_frames >= self.max_frames:
            events.append(self._end("max_length"))
        elif not is_speech:
            events += self._pause_at(self._silence)
        return events

    def _voice_back(self, quiet_tail: int) -> list[EndpointerEvent]:
        """The voice was heard: the silence restarts (from the ``quiet_tail`` samples after it)."""
        before = self._silence
        self._heard_silence, self._quiet_speech = 0, quiet_tail
        self._end_now = self.end_samples
        if not self._paused:
            return []
        self._paused = False
        return [SpeechResumed(self._ms(before))]

    def _pause_at(self, silence: int) -> list[EndpointerEvent]:
        """SpeechPaused if ``silence`` samples make the pause now (once per pause)."""
        if self.pause_samples is None or self._paused or silence < self.pause_samples:
            return []
        self._paused = True
        return [SpeechPaused(self._ms(silence))]

    def _ms(self, samples: int) -> int:
        return round(samples * 1000 / self.sample_rate)

    def pause_early(self, pending: bytes) -> list[EndpointerEvent]:
        """As ``end_early``, for the pause: ``[SpeechPaused]`` when the quiet samples of a VAD
        frame still being filled bring the silence to ``speculate_after_ms``, else ``[]``. Call it
        after ``end_early`` (an utterance that ends has no pause). Off when ``end_trim_ms`` is 0."""
        if not self._in_speech or self._last_speech or not self.trim_samples or self.pause_samples is None:
            return []
        samples = np.frombuffer(pending[: len(pending) // 2 * 2], dtype="<i2")
        if self._silence + len(samples) < self.pause_samples or self.gate.quiet_tail(samples) < len(samples):
            return []
        return self._pause_at(self._silence + len(samples))

    def end_early(self, pending: bytes) -> list[EndpointerEvent]:
        """Audio of a VAD frame still being filled (``Framer.pending``): once the VAD has heard
        silence, the utterance may end inside that frame instead of at its end, when these
        samples are quiet too and bring the silence to ``end_silence_ms`` (or what ``end_sooner``
        set). Returns ``[SpeechEnded]`` or ``[]``. The samples are silence and are not part of the
        utterance. Off when ``end_trim_ms`` is 0."""
        if not self._in_speech or self._last_speech or not self.trim_samples:
            return []
        samples = np.frombuffer(pending[: len(pending) // 2 * 2], dtype="<i2")
        if self._silence + len(samples) < self._end_now or self.gate.quiet_tail(samples) < len(samples):
            return []
        return [self._end("silence")]

    def _end(self, reason: Literal["silence", "max_length"]) -> SpeechEnded:
        self._in_speech = False
        self._done = True
        self._paused = False
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

    @property
    def pending(self) -> bytes:
        """The start of the next frame: the audio that does not make a whole frame yet."""
        return bytes(self._pending)

    def clear(self) -> None:
        self._pending.clear()
