"""IDLE: listen for a wake. The microphone runs from start-up, through the echo canceller and the
VAD, into the hotword engine; in ``always`` mode speech alone wakes.

The engines hear the echo canceller's output, so the robot's own voice (an answer's tail, a
``say``) does not wake it. A wake returns at once; the audio after it stays queued in the
microphone feed, so a question said in the same breath as the wake word is the start of the
utterance the next state hears.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, replace

import structlog

from states.endpointer import Endpointer, EndpointerSettings, Framer, SpeechStarted
from states.mic_feed import BYTES_PER_SECOND, Block, MicFeed
from states.ports import EchoCanceller, EchoReferenceSource, HotwordEngine, Vad

log = structlog.get_logger()

RECENT_S = 1.0
"""Raw microphone audio kept while waiting, to hand over what followed the wake word."""


@dataclass(frozen=True)
class Wake:
    """Why a turn starts, and what was heard with it."""

    source: str
    """hotword | always (heard here); button | control | on_start | listen (from outside)."""
    word: str | None = None
    """The wake phrase that fired (hotword)."""
    audio: bytes = b""
    """What the next state hears first: ``always``, the speech so far from its pre-roll;
    ``hotword``, the audio since the wake word ended (the question, if said in the same breath)."""
    onset: float | None = None
    """Monotonic capture time of the first sample of ``audio`` (``always``)."""
    speaking: bool = False
    """The user was speaking as it fired: no listening earcon."""
    at: float | None = None
    """Monotonic capture time of the audio that woke it (refractory period, latency)."""


FAR_QUIET_S = 1.0
"""Once the speaker has played nothing for this long (longer than any echo tail the canceller
models), the microphone needs no cancelling: idle costs no canceller."""


class EchoCleaner:
    """Microphone blocks through the echo canceller, in its frame size, with their capture times."""

    def __init__(self, aec: EchoCanceller | None, reference: EchoReferenceSource | None) -> None:
        self._aec, self._reference = aec, reference
        self._frames = Framer(aec.frame_bytes) if aec is not None else None
        self._far_heard: float | None = None
        """Capture time of the last frame with the robot's voice in it."""

    def clean(self, pcm: bytes, start: float) -> bytes:
        """The echo-cancelled audio of ``pcm`` captured from ``start``; a partial frame waits for the next block."""
        if self._aec is None or self._frames is None:
            return pcm
        t = start - self._frames.pending_bytes / BYTES_PER_SECOND
        out = []
        for near in self._frames.push(pcm):
            far = self._reference.far_for(t, len(near)) if self._reference is not None else bytes(len(near))
            if far != bytes(len(far)):
                self._far_heard = t
            if self._far_heard is not None and t - self._far_heard < FAR_QUIET_S:
                near = self._aec.process(near, far)
            out.append(near)
            t += len(near) / BYTES_PER_SECOND
        return b"".join(out)


async def watch_for_wake(
    *,
    feed: MicFeed,
    vad: Vad,
    engine: HotwordEngine | None,
    always: bool,
    listening: EndpointerSettings,
    cleaner: EchoCleaner,
    ignore_until: float = 0.0,
) -> Wake:
    """Return the first wake heard; runs until cancelled otherwise (another source woke it).

    Detections from audio captured before ``ignore_until`` are ignored (the refractory period
    after the last wake). An engine fires a little after its wake word ends (its ``lag_s``, if
    it declares one): the audio from there on is handed over with the wake, so the question's
    first syllables, heard while the engine made up its mind, are not lost.
    """
    lag_s = float(getattr(engine, "lag_s", 0.0))
    recent: deque[Block] = deque(maxlen=max(1, round(RECENT_S * BYTES_PER_SECOND / 640)))
    vad.reset()
    if engine is not None:
        engine.reset()
    frames = Framer(vad.frame_bytes)
    speech_start = replace(listening, no_speech_timeout_s=None)
    endpointer = Endpointer(speech_start, vad.frame_bytes) if always else None
    speaking = False
    """The latest VAD frame is speech: a wake now finds the user still talking (the question said
    in the same breath as the wake word), and the listening earcon would talk over them."""
    while True:
        block = await feed.read_block()
        recent.append(block)
        clean = cleaner.clean(block.pcm, block.start_time)
        speech_in_block = False
        for frame in frames.push(clean):
            speech = vad.is_speech(frame)
            speech_in_block |= speech
            speaking = speech
            if endpointer is not None:
                for event in endpointer.push(frame, speech):
                    if isinstance(event, SpeechStarted):
                        onset = block.end_time - len(event.audio) / BYTES_PER_SECOND
                        log.info("wake_heard", source="always")
                        return Wake("always", audio=event.audio, onset=onset, speaking=True, at=block.end_time)
        if engine is None or not clean:
            continue
        word = engine.process(clean, speech_in_block)
        if word is None:
            continue
        if block.end_time < ignore_until:
            log.debug("hotword_refractory", word=word)
            continue
        engine.reset()
        drain = getattr(engine, "drain", None)  # a remote engine: its session closes first
        if drain is not None:
            await drain()
        log.info("wake_heard", source="hotword", word=word)
        after = _tail(recent, round(lag_s * BYTES_PER_SECOND))
        return Wake(
            "hotword",
            word=word,
            audio=b"".join(b.pcm for b in after),
            onset=after[0].start_time if after else None,
            speaking=speaking,
            at=block.end_time,
        )


def _tail(blocks: deque[Block], n_bytes: int) -> list[Block]:
    """The latest blocks that hold ``n_bytes`` of audio (counted in audio, not in timestamps:
    blocks that queued up arrive together)."""
    tail: list[Block] = []
    for b in reversed(blocks):
        if n_bytes <= 0:
            break
        tail.append(b)
        n_bytes -= len(b.pcm)
    return tail[::-1]
