"""LISTENING: read the microphone, find the utterance with the VAD, stream it to the ASR."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

import structlog

from states.endpointer import (
    Endpointer,
    EndpointerSettings,
    Framer,
    LoudnessGate,
    NoSpeech,
    SpeechAudio,
    SpeechEnded,
    SpeechStarted,
)
from states.events import Transcript, TurnTimes
from states.mic_feed import MicFeed
from states.ports import AsrClient, AsrSession, Vad

log = structlog.get_logger()


class NoTranscript(Exception):
    """The VAD heard the user speak, and the ASR gave no text: its server stayed silent (however
    short the speech), or sent only empty results for speech long enough to be a question. A
    failure of the ASR, not "nobody spoke"."""

    service = "asr"

    def __init__(self, voiced_ms: int) -> None:
        self.voiced_ms = voiced_ms
        super().__init__(f"speech was heard for {voiced_ms / 1000:.1f} s but the ASR gave no transcript")


class Speculation(Protocol):
    """What the listening task tells whoever prepares answers ahead of the end of the utterance
    (``EndpointerSettings.speculate_after_ms``). Both are called from the listening task and must
    not block it."""

    def paused(self, transcript: Transcript) -> None:
        """The user has been quiet for ``speculate_after_ms`` and the ASR has given ``transcript``
        for everything said so far: an answer to it may be prepared, not played."""

    def resumed(self) -> None:
        """The user spoke again after ``paused``: whatever was prepared for it is void."""


def has_words(text: str) -> bool:
    """Anything to answer: a letter or a digit (punctuation or spaces alone are no transcript)."""
    return any(ch.isalnum() for ch in text)


async def listen_for_utterance(
    *,
    mic: MicFeed,
    vad: Vad,
    asr: AsrClient,
    settings: EndpointerSettings,
    times: TurnTimes,
    clock: Callable[[], float],
    initial_audio: bytes = b"",
    deaf_until: float | None = None,
    loudness: LoudnessGate | None = None,
    on_speech_end: Callable[[], None] | None = None,
    min_voiced_ms: int | None = None,
) -> Transcript | None:
    """Return what the user said, or None when nobody spoke before the no-speech timeout.

    The ASR connection is opened at once, in parallel with waiting for speech, so its handshake
    (and TLS) is not on the latency path. Audio before the speech start is never sent, except the
    pre-roll the endpointer keeps. ``initial_audio`` (what a barge-in already captured) is heard
    first, then the live microphone. Audio captured before ``deaf_until`` is dropped (the
    microphone hears the listening earcon). ``loudness``: the room's noise floor, kept from one
    utterance to the next (the end of speech is measured against it). ``on_speech_end`` is
    called as soon as the end of the utterance is decided, before the ASR's final result (the
    replying services can get ready meanwhile).

    ``min_voiced_ms``: when the transcript has no words and the server stayed silent, or the VAD
    heard at least this much speech (the frames it called speech, from the onset of the
    utterance), raise NoTranscript instead of returning it; shorter speech the server answered
    with no words (a cough, a door) is returned as it is. None: never raise.
    """
    vad.reset()
    endpointer = Endpointer(settings, vad.frame_bytes, mic.sample_rate, gate=loudness)
    frames = Framer(vad.frame_bytes)
    frame_ms = vad.frame_bytes / 2 / mic.sample_rate * 1000
    voiced_frames = 0
    opening = asyncio.create_task(asr.open_session(), name="asr-connect")
    session: AsrSession | None = None
    try:
        pending = initial_audio
        while True:
            if pending:
                block, pending = pending, b""
            else:
                captured = await mic.read_block()
                if deaf_until is not None and captured.end_time <= deaf_until:
                    continue
                block = captured.pcm
            if session is None and opening.done():
                session = opening.result()  # a dead ASR fails the turn now, not when speech starts
            events = []
            for frame in frames.push(block):
                speech = vad.is_speech(frame)
                if speech and endpointer.in_speech:
                    voiced_frames += 1
                events.extend(endpointer.push(frame, speech))
            events.extend(endpointer.end_early(frames.pending))
            for event in events:
                if isinstance(event, NoSpeech):
                    log.info("no_speech", waited_s=settings.no_speech_timeout_s)
                    return None
                if isinstance(event, SpeechStarted):
                    voiced_frames += endpointer.start_required  # the window that confirmed it
                    times.speech_start = clock()
                    log.info("speech_started")
                    if session is None:
                        session = await opening
                    await session.send_audio(event.audio)
                elif isinstance(event, SpeechAudio):
                    assert session is not None
                    await session.send_audio(event.audio)
                elif isinstance(event, SpeechEnded):
                    assert session is not None
                    times.speech_end = clock()
                    if on_speech_end is not None:
                        on_speech_end()
                    log.info(
                        "speech_ended",
                        reason=event.reason,
                        speech_ms=round((times.speech_end - (times.speech_start or times.speech_end)) * 1000),
                        voiced_ms=round(voiced_frames * frame_ms),
                    )
                    transcript = await session.finish(trailing_silence_ms=endpointer.silence_ms)
                    times.asr_final = clock()
                    voiced_ms = round(voiced_frames * frame_ms)
                    # A server that stayed silent failed, however short the speech; one that
                    # answered "nothing" to a short noise (a cough) is right: nobody asked.
                    silent_or_long = not transcript.answered or (min_voiced_ms or 0) <= voiced_ms
                    if min_voiced_ms is not None and not has_words(transcript.text) and silent_or_long:
                        raise NoTranscript(voiced_ms)
                    return transcript
    finally:
        if session is None:
            session = _take_result(opening)
        if session is not None:
            await session.aclose()


def _take_result(task: asyncio.Task[AsrSession]) -> AsrSession | None:
    """The session if the connect already succeeded; otherwise stop it without waiting."""
    if not task.done():
        task.cancel()
        return None
    if task.cancelled() or task.exception() is not None:
        return None  # the error was retrieved, so asyncio does not warn about it
    return task.result()
