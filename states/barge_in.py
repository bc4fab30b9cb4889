"""Hear the user cut in while the robot thinks or speaks.

The microphone goes through the echo canceller (the speaker's output as reference, aligned by
time), then the VAD; speech that lasts ``min_speech_ms`` is an interruption. The audio captured
so far, pre-roll included, is handed to LISTENING as the start of the next utterance, so nothing
the user said is lost.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from states.double_talk import FAR_ACTIVE_RMS, DoubleTalkGate, rms
from states.endpointer import Endpointer, EndpointerSettings, Framer, SpeechStarted
from states.mic_feed import BYTES_PER_SECOND, MicFeed
from states.ports import EchoCanceller, EchoReferenceSource, Vad
from states.settings import Checked, setting

log = structlog.get_logger()

STOP_WORDS = ("停", "停一下", "停下", "别说了", "不要说了", "闭嘴", "stop", "stop it", "stop talking", "be quiet")
FILLERS = ("嗯", "啊", "呃", "哦", "唔", "额", "uh", "um", "umm", "hmm", "mm", "mhm", "er", "ah", "oh", "eh")
MODES = ("pause", "cancel")


@dataclass(frozen=True)
class BargeInSettings(Checked):
    """The user cutting in while the robot thinks or speaks (the ``[barge_in]`` table). The pre-roll
    is the listening endpointer's (``vad.pre_roll_ms``): see :func:`barge_in_endpointer`."""

    enabled: bool = True
    """False: half-duplex, the microphone is ignored while the robot thinks and speaks."""
    min_speech_ms: int = setting(150, gt=0)
    """User speech this long (after echo cancellation) is an interruption."""
    duck_after_ms: int = setting(32, ge=0)
    """Playback pauses as soon as this much speech is heard, and plays on at once if it does not
    last ``min_speech_ms``: the robot stops as fast as a person would. 0: wait for min_speech_ms."""
    mode: str = setting("pause", one_of=MODES)
    """cancel: close the LLM and TTS connections at once. pause: hold the rest of the answer and
    resume it if the interruption turns out false (no words, or only a filler) in time."""
    resume_after_ms: int = setting(2000, gt=0)
    """pause mode: how long a held answer waits for the interruption to prove real."""
    stop_words: tuple[str, ...] = STOP_WORDS
    """An interruption that says only one of these ends the answer without a new question."""
    fillers: tuple[str, ...] = FILLERS
    """Utterances made only of these do not count as an interruption (pause mode resumes)."""
    aec_warmup_s: float = setting(6.0, ge=0)
    """The echo canceller learns the room from the robot's own speech: until it has heard this
    much of it (once per daemon start), its residue can pass for a user, so an interruption must
    be clearly louder than the echo to be expected (``aec_double_talk``), or is not heard at all."""
    aec_double_talk: bool = True
    """While the canceller learns, hear the user when clearly louder than the expected echo
    (states/double_talk.py). False: barge-in waits out the warm-up (deaf to the first answers)."""


def barge_in_endpointer(listening: EndpointerSettings, settings: BargeInSettings) -> EndpointerSettings:
    """The endpointer that decides an interruption: the listening one's settings (its pre-roll
    above all: the interruption's audio starts the next utterance), except that speech must last
    ``min_speech_ms`` without a gap, and there is no timeout (the watch runs as long as the reply)."""
    return dataclasses.replace(
        listening, speech_start_ms=settings.min_speech_ms, speech_start_ratio=1.0, no_speech_timeout_s=None
    )


@dataclass
class EchoTraining:
    """How much robot speech the echo canceller has learned from (kept for the daemon's life)."""

    far_s: float = 0.0
    gate: DoubleTalkGate | None = None
    """What the double-talk rule learnt of the echo (made by the first watch)."""

    def ready(self, settings: BargeInSettings) -> bool:
        return self.far_s >= settings.aec_warmup_s


LEARNING_PRE_ROLL_BYTES = 2 * 16 * 64
"""64 ms: the pre-roll of an interruption heard while the canceller learns. The listening
pre-roll (300 ms) would hand the ASR that much of a cold canceller's residue of the robot's
voice before the user's first word, and the stand-in's recogniser took it for other words."""


@dataclass(frozen=True)
class Heard:
    """One VAD frame of cleaned microphone and how the barge-in watch judged it."""

    frame: bytes
    speech: bool
    """The verdict: speech that may be the user."""
    vad: bool
    louder: bool
    """Clearly louder than the echo to be expected (the double-talk gate; judged only while
    the canceller learns)."""
    learning: bool
    """The canceller was still learning (the gate decided, or nothing was heard)."""


class BargeInEar:
    """The microphone as the barge-in watch hears it: one canceller frame in, the VAD frames it
    completes out, each with its verdict (speech that may be the user).

    While the canceller learns (``training`` not ready), a frame is speech only if the VAD says so
    and the double-talk gate finds it clearly louder than the echo to be expected; with
    ``aec_double_talk`` off, nothing is speech until then (the old deaf start).
    """

    def __init__(
        self,
        *,
        vad: Vad,
        aec: EchoCanceller | None,
        settings: BargeInSettings,
        training: EchoTraining,
    ) -> None:
        self.vad, self.aec, self.settings, self.training = vad, aec, settings, training
        self.frame_bytes = aec.frame_bytes if aec is not None else vad.frame_bytes
        if training.gate is None:
            training.gate = DoubleTalkGate(frame_s=self.frame_bytes / BYTES_PER_SECOND)
        self.gate = training.gate
        self._vad_frames = Framer(vad.frame_bytes)
        self._near_frames = Framer(vad.frame_bytes)
        """The microphone before the canceller, in the same frames (the gate compares them)."""
        self.learning = False
        """The canceller was still learning at the last frame heard."""

    @property
    def pending_bytes(self) -> int:
        """Cleaned audio waiting for the rest of its VAD frame."""
        return self._vad_frames.pending_bytes

    def hear(self, near: bytes, far: bytes) -> list[tuple[bytes, bool]]:
        """``near``: one canceller frame of microphone; ``far``: what the speaker played, aligned."""
        return [(h.frame, h.speech) for h in self.hear_detailed(near, far)]

    def hear_detailed(self, near: bytes, far: bytes) -> list[Heard]:
        """``hear`` with each part of the verdict (for ``bench aec``)."""
        clean = near
        learning = False
        if self.aec is not None:
            clean = self.aec.process(near, far)
            learning = self._learn(far)
            if learning:  # 3 ms of CPU per second of audio, spared once the canceller has learnt
                self.gate.observe(far, clean)
        self.learning = learning
        out = []
        for frame, raw in zip(self._vad_frames.push(clean), self._near_frames.push(near), strict=True):
            vad = self.vad.is_speech(frame)
            louder = learning and self.gate.user_louder(frame, raw)
            speech = vad and (not learning or (self.settings.aec_double_talk and louder))
            out.append(Heard(frame, speech, vad, louder, learning))
        return out

    def _learn(self, far: bytes) -> bool:
        """Count the robot speech the canceller heard; True while it is still learning."""
        training, settings = self.training, self.settings
        if training.ready(settings):
            return False
        if rms(far) >= FAR_ACTIVE_RMS:
            training.far_s += len(far) / BYTES_PER_SECOND
            if training.ready(settings):
                log.info("aec_trained", far_s=round(training.far_s, 1), ratio_db=round(_db(self.gate.ratio), 1))
        return True


def _db(ratio: float) -> float:
    return 20 * math.log10(ratio) if ratio > 0 else -math.inf


@dataclass(frozen=True)
class Interruption:
    audio: bytes
    """Echo-cancelled audio from the pre-roll to the moment the interruption was confirmed."""
    onset: float
    """Monotonic time the interrupting speech began (as the VAD saw it)."""
    detected: float


async def watch_for_barge_in(
    *,
    feed: MicFeed,
    vad: Vad,
    aec: EchoCanceller | None,
    reference: EchoReferenceSource | None,
    settings: BargeInSettings,
    listening: EndpointerSettings,
    clock: Callable[[], float],
    training: EchoTraining | None = None,
    on_suspect: Callable[[bool], None] | None = None,
) -> Interruption:
    """Return when the user has been speaking for ``min_speech_ms``. Runs until cancelled otherwise.

    With an echo canceller that has not yet learned the room (``training``), speech counts only
    when clearly louder than the echo to be expected (:class:`BargeInEar`).
    ``on_suspect(True)`` is called after ``duck_after_ms`` of speech, ``on_suspect(False)`` if it
    then stops short of an interruption (or the watch ends without one).
    """
    training = training if training is not None else EchoTraining()
    vad.reset()  # the echo canceller is not reset: it keeps what it learned of the room
    ear = BargeInEar(vad=vad, aec=aec, settings=settings, training=training)
    endpointer = Endpointer(barge_in_endpointer(listening, settings), vad.frame_bytes)
    frame_s = vad.frame_bytes / BYTES_PER_SECOND
    duck_frames = math.ceil(settings.duck_after_ms / 1000 / frame_s - 1e-9) if settings.duck_after_ms > 0 else 0
    suspect = Suspicion(on_suspect, duck_frames, clock)
    try:
        return await _watch(feed, reference, settings, clock, ear, endpointer, suspect)
    finally:
        suspect.clear()


class Suspicion:
    """Speech heard but not yet an interruption: playback pauses, and plays on if it was nothing."""

    def __init__(self, callback: Callable[[bool], None] | None, frames: int, clock: Callable[[], float]) -> None:
        self._callback = callback if frames > 0 else None
        self._frames = frames
        self._clock = clock
        self.run = 0
        self.active = False
        self.since: float | None = None

    def frame(self, speech: bool, frame_start: float) -> None:
        if self._callback is None:
            return
        if not speech:
            self.run = 0
            self.clear()
            return
        self.run += 1
        if self.run == 1:
            self.since = frame_start
        if self.run >= self._frames and not self.active:
            self.active = True
            self._callback(True)
            log.debug("barge_in_suspected", ms=round((self._clock() - (self.since or 0)) * 1000))

    def clear(self) -> None:
        if self.active and self._callback is not None:
            self.active = False
            self._callback(False)

    def confirm(self) -> None:
        self.active = False  # the interruption takes over from here: no resume


async def _watch(
    feed: MicFeed,
    reference: EchoReferenceSource | None,
    settings: BargeInSettings,
    clock: Callable[[], float],
    ear: BargeInEar,
    endpointer: Endpointer,
    suspect: Suspicion,
) -> Interruption:
    aec_frames = Framer(ear.frame_bytes)
    vad_start: float | None = None
    while True:
        if feed.queued_blocks:
            # A queued block is returned without suspending: catching up on the blocks heard while
            # the ASR finished would hold the loop for a run of VAD frames, and the LLM request (a
            # few awaits in httpx) would leave that much later. A yield per block of the backlog
            # lets it out first (bench latency: the LLM hop fell from 10-18 to 7 ms over the
            # stand-in's first token). In step with the microphone, the read itself suspends.
            await asyncio.sleep(0)
        block = await feed.read_block()
        # The framer may still hold the tail of the previous block: the first frame starts there.
        start = block.start_time - aec_frames.pending_bytes / BYTES_PER_SECOND
        for near in aec_frames.push(block.pcm):
            end = start + len(near) / BYTES_PER_SECOND
            far = bytes(len(near))
            if ear.aec is not None and reference is not None:
                far = reference.far_for(start, len(near))
            if vad_start is None:
                vad_start = start - ear.pending_bytes / BYTES_PER_SECOND
            start = end
            for frame, speech in ear.hear(near, far):
                suspect.frame(speech, vad_start)
                vad_start += len(frame) / BYTES_PER_SECOND
                for event in endpointer.push(frame, speech):
                    if isinstance(event, SpeechStarted):
                        suspect.confirm()
                        now = clock()
                        onset = end - settings.min_speech_ms / 1000
                        audio = event.audio
                        # While the canceller learns and the robot was just speaking, the pre-roll
                        # is mostly the residue of its voice: keep little of it.
                        if ear.learning and ear.gate.expected_echo > 0:
                            keep = endpointer.start_frames * endpointer.frame_bytes + LEARNING_PRE_ROLL_BYTES
                            audio = audio[-keep:]
                        log.info("barge_in_detected", confirmed_ms=round((now - onset) * 1000), learning=ear.learning)
                        return Interruption(audio=audio, onset=onset, detected=now)


def _squash(text: str) -> str:
    return re.sub(r"[\W_]+", "", text.lower())


def is_stop_command(text: str, stop_words: tuple[str, ...]) -> bool:
    """True when the whole utterance is a stop word ("停！", "Stop."), not a sentence containing one."""
    return _squash(text) in {_squash(w) for w in stop_words}


def is_filler(text: str, fillers: tuple[str, ...]) -> bool:
    """True when the utterance has no words but fillers ("嗯", "uh, um", "啊啊"), or nothing at all."""
    words = re.findall(r"[^\W\d_]+", text.lower())
    known = {f.lower() for f in fillers}
    for word in words:
        rest = word
        while rest:  # Chinese fillers come run together: "嗯嗯", "啊呃"
            match = next((f for f in sorted(known, key=len, reverse=True) if rest.startswith(f)), None)
            if match is None:
                return False
            rest = rest[len(match) :]
    return True
