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
    SpeechStarted,
)
from states.events import Transcript, TurnTimes
from states.mic_feed import MicFeed
from states.ports import AsrClient, AsrSession, Vad

log = structlog.get_logger()


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
    """
    vad.reset()
    endpointer = Endpointer(settings, vad.frame_bytes, mic.sample_rate, gate=loudness)
    frames = Framer(vad.frame_bytes)
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
            events = [event for frame in frames.push(block) for event in endpointer.push(frame, vad.is_speech(frame))]
            events.extend(endpointer.end_early(frames.pending))
            for event in events:
                if isinstance(event, NoSpeech):
                    log.info("no_speech", waited_s=settings.no_speech_timeout_s)
                    return None
                if isinstance(event, SpeechStarted):
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
                    )
                    transcript = await session.finish()
                    times.asr_final = clock()
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
