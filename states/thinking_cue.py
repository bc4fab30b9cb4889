"""THINKING: a soft sound while the answer is slow to come, so that the user knows the robot heard
them and is working on it (a busy GPU, a slow or dead LLM), silenced the moment the answer speaks.

The cue is a task of the answering states. The answer writes through an ``AnswerSpeaker``: its
first write stops the cue and drops what is left of it from the speaker's queue, so the cue
never delays the answer nor plays over it, and the speaker's "first audible" moment and its count
of samples played are the answer's own. Not while playback is paused (a user cutting in): a flush
would also end the pause, so the rest of the cue, a fraction of a second, then plays first.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog

from states.ports import Speaker
from states.state_tasks import NO_TRIGGER, Trigger

log = structlog.get_logger()


class ThinkingCue:
    """Plays ``sound`` after ``after_s``, then every ``every_s`` (0: once), until ``stop``."""

    def __init__(self, speaker: Speaker, sound: bytes, *, after_s: float, every_s: float, turn_id: str) -> None:
        self._speaker = speaker
        self._sound = sound
        self._after_s, self._every_s = after_s, every_s
        self._turn_id = turn_id
        self.task: asyncio.Task[None] | None = None
        """The task running ``run`` (set by whoever spawns it): ``stop`` cancels it."""
        self.played = 0
        """How many times the sound was queued (counted before the write: a write cut by ``stop``
        may have queued part of it)."""

    async def run(self) -> Trigger:
        await asyncio.sleep(self._after_s)
        while True:
            self.played += 1
            log.info("thinking_cue", turn_id=self._turn_id, n=self.played)
            await self._speaker.write(self._sound)
            if self._every_s <= 0:
                return NO_TRIGGER
            await asyncio.sleep(self._every_s)

    def stop(self) -> bool:
        """Stop at once (a write in progress too); True when some of the sound was queued."""
        if self.task is not None:
            self.task.cancel()
        return self.played > 0


class AnswerSpeaker:
    """The speaker as the answer sees it: the first write stops ``cue`` and flushes what is left
    of it when ``may_flush()`` (the speaker is not paused); ``audio_samples_played`` leaves out
    the cue's samples (what the user heard of the answer is measured with it)."""

    def __init__(self, inner: Speaker, cue: ThinkingCue, may_flush: Callable[[], bool] = lambda: True) -> None:
        self.inner = inner
        self.cue = cue
        self._may_flush = may_flush
        self.sample_rate = inner.sample_rate
        self._before = inner.audio_samples_played
        self._cue_samples = 0
        self._started = False

    async def write(self, pcm: bytes) -> None:
        if not self._started:
            self._started = True
            if self.cue.stop() and self._may_flush():
                self.inner.flush()  # before the answer's audio: its audible moment is its own
            self._cue_samples = self.inner.audio_samples_played - self._before
        await self.inner.write(pcm)

    async def drain(self) -> None:
        await self.inner.drain()

    def flush(self) -> None:
        self.inner.flush()

    def pause(self) -> None:
        self.inner.pause()

    def resume(self) -> None:
        self.inner.resume()

    async def wait_audible(self) -> float:
        return await self.inner.wait_audible()

    @property
    def audio_samples_played(self) -> int:
        return self.inner.audio_samples_played - self._cue_samples

    async def aclose(self) -> None:
        await self.inner.aclose()
