"""LISTENING: read the microphone, find the utterance with the VAD, stream it to the ASR."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog

from states.endpointer import (
    Endpointer,
    EndpointerSettings,
    Framer,
    LoudnessGate,
    NoSpeech,
    SpeechAudio,
    SpeechEnded,
    SpeechPaused,
    SpeechResumed,
    SpeechStarted,
)
from states.events import Transcript, TurnTimes
from states.mic_feed import MicFeed
from states.ports import AsrClient, AsrSession, Vad
from states.utterance_asr import Speculation, UtteranceAsr, has_words

__all__ = ["NoTranscript", "Speculation", "ends_sentence", "has_words", "listen_for_utterance"]

SENTENCE_ENDS = "。？！.?!"
"""A transcript ending in one of these may end the utterance after ``end_silence_short_ms``."""

log = structlog.get_logger()


class NoTranscript(Exception):
    """The VAD heard the user speak, and the ASR gave no text: its server stayed silent (however
    short the speech), or sent only empty results for speech long enough to be a question. A
    failure of the ASR, not "nobody spoke"."""

    service = "asr"

    def __init__(self, voiced_ms: int) -> None:
        self.voiced_ms = voiced_ms
        super().__init__(f"speech was heard for {voiced_ms / 1000:.1f} s but the ASR gave no transcript")


def ends_sentence(text: str) -> bool:
    """The transcript ends a sentence (a full stop, a question or an exclamation mark)."""
    stripped = text.rstrip()
    return bool(stripped) and stripped[-1] in SENTENCE_ENDS


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
    speculation: Speculation | None = None,
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

    ``speculation`` (with ``settings.speculate_after_ms``): the speculative turn end. When the
    user pauses, the ASR is finished in the background and its transcript handed to
    ``speculation.paused``; if the user speaks again, ``speculation.resumed`` is called and a new
    ASR session hears the whole utterance again (states/utterance_asr.py). At the end, the
    transcript ``paused`` got is returned (the same object) when no speech came since, with no new
    round trip; with ``settings.end_silence_short_ms`` it ends the utterance after that shorter
    silence when it ends a sentence. ``times.extra["speculated_at"]``: when ``paused`` got it.
    None (or no ``speculate_after_ms``): no pauses, one session, as without speculation.
    """
    vad.reset()
    endpointer = Endpointer(settings, vad.frame_bytes, mic.sample_rate, gate=loudness)
    frames = Framer(vad.frame_bytes)
    frame_ms = vad.frame_bytes / 2 / mic.sample_rate * 1000
    voiced_frames = 0
    if settings.speculate_after_ms is None:
        speculation = None
    short_end_ms = settings.end_silence_short_ms if speculation is not None else None
    opening = asyncio.create_task(asr.open_session(), name="asr-connect")
    session: AsrSession | None = None
    utterance: UtteranceAsr | None = None
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
            speculated = utterance.speculated if utterance is not None else None
            if short_end_ms is not None and speculated is not None and ends_sentence(speculated.text):
                endpointer.end_sooner(short_end_ms)  # a question asked: the user is probably done
            events = []
            for frame in frames.push(block):
                speech = vad.is_speech(frame)
                if speech and endpointer.in_speech:
                    voiced_frames += 1
                events.extend(endpointer.push(frame, speech))
            events.extend(endpointer.end_early(frames.pending) or endpointer.pause_early(frames.pending))
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
                    utterance = UtteranceAsr(asr, session, speculation=speculation, times=times, clock=clock)
                    await utterance.send(event.audio)
                elif isinstance(event, SpeechAudio):
                    assert utterance is not None
                    await utterance.send(event.audio)
                elif isinstance(event, SpeechPaused):
                    if utterance is not None and speculation is not None:
                        log.debug("speech_paused", silence_ms=event.silence_ms)
                        utterance.pause(trailing_silence_ms=endpointer.silence_ms)
                elif isinstance(event, SpeechResumed):
                    if utterance is not None and speculation is not None:
                        await utterance.resume()
                elif isinstance(event, SpeechEnded):
                    assert utterance is not None
                    times.speech_end = clock()
                    if on_speech_end is not None:
                        on_speech_end()
                    log.info(
                        "speech_ended",
                        reason=event.reason,
                        speech_ms=round((times.speech_end - (times.speech_start or times.speech_end)) * 1000),
                        voiced_ms=round(voiced_frames * frame_ms),
                    )
                    transcript = await utterance.end(trailing_silence_ms=endpointer.silence_ms)
                    times.asr_final = clock()
                    voiced_ms = round(voiced_frames * frame_ms)
                    # A server that stayed silent failed, however short the speech; one that
                    # answered "nothing" to a short noise (a cough) is right: nobody asked.
                    silent_or_long = not transcript.answered or (min_voiced_ms or 0) <= voiced_ms
                    if min_voiced_ms is not None and not has_words(transcript.text) and silent_or_long:
                        raise NoTranscript(voiced_ms)
                    return transcript
    finally:
        if utterance is not None:
            await utterance.aclose()
        else:
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
