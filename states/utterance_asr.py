"""The ASR side of one utterance, with the speculative turn end (``vad.speculate_after_ms``).

Without speculation it is a plain session: audio in, ``end()`` finishes it. With speculation the
listening task tells it where the user paused and spoke again:

- ``pause()``: finish the session in a background task (the end marker goes now; the microphone
  and the endpointer keep running) and, when its transcript has words and the pause still holds,
  hand it to ``Speculation.paused``.
- ``resume()``: void that finish (cancel it, close its session; ``Speculation.resumed`` if
  ``paused`` was called), open a new session and send it everything kept so far at once, faster
  than real time; live audio follows.
- ``end()``: the transcript of the last pass: the speculative one when no speech came since (the
  very object ``paused`` got), else the live session's, finished now.

Every sample of the utterance is kept from its start (pre-roll included), so a new session hears
all of it. One session is open at a time, and ``aclose()`` leaves no session or task behind.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

import structlog

from states.events import Transcript, TurnTimes
from states.ports import AsrClient, AsrSession

log = structlog.get_logger()

SPECULATED_AT = "speculated_at"
"""``TurnTimes.extra`` key: clock time ``Speculation.paused`` got the transcript the utterance
ended with (absent when the utterance did not end on a speculation)."""


class Speculation(Protocol):
    """What the listening task tells whoever prepares answers ahead of the end of the utterance
    (``EndpointerSettings.speculate_after_ms``). Both are called from the listening task and must
    not block it."""

    def paused(self, transcript: Transcript) -> None:
        """The user has been quiet for ``speculate_after_ms`` and the ASR has given ``transcript``
        for everything said so far: an answer to it may be prepared, not played."""

    def resumed(self) -> None:
        """The user spoke again after ``paused``: whatever was prepared for it is void. Also
        called when listening stops without returning the transcript ``paused`` got (cancelled,
        or the microphone failed), so that every ``paused`` is either voided or returned."""


def has_words(text: str) -> bool:
    """Anything to answer: a letter or a digit (punctuation or spaces alone are no transcript)."""
    return any(ch.isalnum() for ch in text)


class UtteranceAsr:
    """The ASR sessions of one utterance (see the module docstring)."""

    def __init__(
        self,
        asr: AsrClient,
        session: AsrSession,
        *,
        speculation: Speculation | None,
        times: TurnTimes,
        clock: Callable[[], float],
    ) -> None:
        """``session``: already open, nothing sent yet. ``speculation`` None: ``pause`` and
        ``resume`` must not be called, and no audio is kept."""
        self._asr = asr
        self._session = session
        self._speculation = speculation
        self._times = times
        self._clock = clock
        self._kept = bytearray()
        self._finishing: asyncio.Task[Transcript] | None = None
        """The speculative finish of ``_session``, from the pause until the voice comes back."""
        self._paused_at: float | None = None
        self._speculated: Transcript | None = None
        """What ``Speculation.paused`` got, until the voice comes back."""
        self._ending = False
        self._returned: Transcript | None = None

    @property
    def speculated(self) -> Transcript | None:
        """The transcript ``Speculation.paused`` got for the current pause, if it did."""
        return self._speculated

    async def send(self, pcm: bytes) -> None:
        """The next audio of the utterance: kept, and sent live unless the session is finishing."""
        if self._speculation is not None:
            self._kept += pcm
        if self._finishing is None:
            await self._session.send_audio(pcm)

    def pause(self, *, trailing_silence_ms: float | None = None) -> None:
        """The user is quiet: finish the session in the background (once per pause).
        ``trailing_silence_ms``: as for ``AsrSession.finish``."""
        assert self._speculation is not None, "pause() without a Speculation"
        if self._finishing is not None:
            return
        self._paused_at = self._clock()
        self._finishing = asyncio.create_task(
            self._speculate(self._speculation, trailing_silence_ms), name="asr-speculate"
        )

    async def _speculate(self, speculation: Speculation, trailing_silence_ms: float | None) -> Transcript:
        transcript = await self._session.finish(trailing_silence_ms=trailing_silence_ms)
        now = self._clock()
        log.info("speculation_asr", ms=round((now - (self._paused_at or now)) * 1000), text=transcript.text)
        # Cancelled by resume() if the voice came back first; after the end there is nothing to prepare.
        if has_words(transcript.text) and not self._ending:
            self._speculated = transcript
            self._times.extra[SPECULATED_AT] = now
            speculation.paused(transcript)
        return transcript

    async def resume(self) -> None:
        """The user speaks again: void the speculative finish and hear the whole utterance anew."""
        assert self._speculation is not None, "resume() without a Speculation"
        task, self._finishing = self._finishing, None
        if task is None:
            return
        task.cancel()
        if self._speculated is not None:
            self._speculated = None
            self._times.extra.pop(SPECULATED_AT, None)
            self._speculation.resumed()
        now = self._clock()
        log.info("speech_resumed", after_pause_ms=round((now - (self._paused_at or now)) * 1000))
        await _settle(task)
        await self._session.aclose()
        self._session = await self._asr.open_session()
        await self._session.send_audio(bytes(self._kept), at_once=True)

    async def end(self, *, trailing_silence_ms: float | None = None) -> Transcript:
        """The transcript of the whole utterance; an error of the speculative finish is raised here.
        ``trailing_silence_ms``: as for ``AsrSession.finish`` (used when no speculative pass is out)."""
        self._ending = True
        task, self._finishing = self._finishing, None
        if task is None:
            self._returned = await self._session.finish(trailing_silence_ms=trailing_silence_ms)
            return self._returned
        try:
            self._returned = await task
            return self._returned
        finally:
            if not task.done():  # this task was cancelled: so is the finish it waited for
                task.cancel()
                await _settle(task)

    async def aclose(self) -> None:
        """Stop a finish still under way and close the session; void a speculation that was not
        returned by ``end()``. Idempotent."""
        task, self._finishing = self._finishing, None
        if task is not None:
            task.cancel()
        speculated, self._speculated = self._speculated, None
        if speculated is not None and speculated is not self._returned and self._speculation is not None:
            self._speculation.resumed()
        if task is not None:
            await _settle(task)
        await self._session.aclose()


async def _settle(task: asyncio.Task[Transcript]) -> None:
    """Wait for a cancelled task to wind down; its error, if it failed first, is dropped (the
    speculative finish it was is void)."""
    await asyncio.wait({task})
    if not task.cancelled() and task.exception() is not None:
        log.debug("speculation_asr_dropped", error=str(task.exception()))
