"""Speculative turn end, the answering side: an answer prepared while the user may still go on.

When the listening task reports a pause (``Speculation.paused``, after ``vad.speculate_after_ms``
of silence), the Assistant starts the answer as a task of LISTENING, exactly as it would after
the end of the utterance, but writing to a :class:`HeldSpeaker`: its audio is kept unplayed, the
speaker reports nothing played (so a dropped answer records nothing in the history), and the
callbacks that tell the world the answer is heard (``reply_clause``) wait for it to be played.
If the user speaks again (``resumed``) the task is cancelled, which closes its LLM stream and
TTS connection. If the utterance ends with the transcript the answer was prepared for, the held
audio goes to the speaker at once (``HeldSpeaker.open``). The rows are in states/machine.py
(``speculate``, ``speculation_void``, and the ``heard`` row with ``speculation_matches``).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from states.events import Transcript, TurnTimes
from states.ports import Speaker
from states.state_tasks import Trigger
from states.turn import Turn

log = structlog.get_logger()


class HeldSpeaker:
    """A speaker that keeps what is written until ``open(target)``, then plays it on ``target``.

    Closed, ``write`` queues without waiting (synthesis runs ahead), ``audio_samples_played`` is
    0, and ``wait_audible`` and ``drain`` wait for the opening (the answer is not heard, nor
    over). Open, the held audio goes first (``play_held`` writes it; a later write or drain
    writes what is left, should ``play_held`` have been cancelled), and the samples played are
    counted from the opening.
    """

    def __init__(self, sample_rate: int, *, on_complete: Callable[[], None] | None = None) -> None:
        self.sample_rate = sample_rate
        self._on_complete = on_complete
        self._held: deque[bytes] = deque()
        self._held_bytes = 0
        self._target: Speaker | None = None
        self._base = 0
        self._opened = asyncio.Event()
        self._written = asyncio.Event()
        """Some of the answer has reached the target (what ``wait_audible`` asks it about)."""
        self._order = asyncio.Lock()
        self._deferred: list[Callable[[], None]] = []

    @property
    def is_open(self) -> bool:
        return self._target is not None

    @property
    def holds_audio(self) -> bool:
        return bool(self._held)

    @property
    def held_ms(self) -> int:
        """How much audio is held, unplayed, in ms."""
        return round(self._held_bytes / 2 / self.sample_rate * 1000)

    def when_open(self, call: Callable[[str], None]) -> Callable[[str], None]:
        """``call`` now if open, else once opened (in order): for what must only happen when the
        answer is heard (the ``reply_clause`` event)."""

        def deferred(text: str) -> None:
            if self.is_open:
                call(text)
            else:
                self._deferred.append(lambda: call(text))

        return deferred

    def open(self, target: Speaker) -> None:
        """From now on the answer is played on ``target``; the deferred calls run now. Writing the
        held audio is ``play_held``'s job (a task: the target may make writes wait)."""
        self._target = target
        self._base = target.audio_samples_played
        self._opened.set()
        deferred, self._deferred = self._deferred, []
        for call in deferred:
            call()

    async def play_held(self) -> None:
        """Write the held audio to the target, once open."""
        await self._opened.wait()
        async with self._order:
            await self._write_held()

    async def _write_held(self) -> None:
        assert self._target is not None
        while self._held:
            await self._target.write(self._held[0])
            self._written.set()
            self._held_bytes -= len(self._held.popleft())

    async def write(self, pcm: bytes) -> None:
        if self._target is None:
            self._held.append(pcm)
            self._held_bytes += len(pcm)
            return
        async with self._order:
            await self._write_held()
            await self._target.write(pcm)
            self._written.set()

    async def drain(self) -> None:
        if self._target is None and self._on_complete is not None:
            self._on_complete()  # the whole answer is synthesised and held
        await self._opened.wait()
        assert self._target is not None
        async with self._order:
            await self._write_held()
        await self._target.drain()

    def flush(self) -> None:
        self._held.clear()
        self._held_bytes = 0
        if self._target is not None:
            self._target.flush()

    def pause(self) -> None:
        if self._target is not None:
            self._target.pause()

    def resume(self) -> None:
        if self._target is not None:
            self._target.resume()

    async def wait_audible(self) -> float:
        # Only once the answer's audio is in the target: asked before, a speaker that has played
        # something since it was last idle (the listening earcon) answers with that sound's time.
        await self._opened.wait()
        await self._written.wait()
        assert self._target is not None
        return await self._target.wait_audible()

    @property
    def audio_samples_played(self) -> int:
        return 0 if self._target is None else self._target.audio_samples_played - self._base

    async def aclose(self) -> None:
        """Nothing to close: the device belongs to the Assistant."""


@dataclass
class SpeculativeAnswer:
    """One answer started on a pause, for ``transcript``: the ``n``-th of turn ``turn_id``."""

    turn_id: str
    n: int
    transcript: Transcript
    sample_rate: int
    speaker: HeldSpeaker = field(init=False)
    """Where the answer is written: held until the commit opens it on the real speaker."""
    times: TurnTimes = field(default_factory=TurnTimes)
    """The answer's own timestamps (LLM, TTS, first audio): a dropped one leaves the turn's alone."""
    task: asyncio.Task[None] | None = None
    failed: BaseException | None = None
    """The answer failed before it was played: it is never played (the commit starts afresh)."""
    trigger: Trigger | None = None
    """What the task returned while released (between the commit's ``before`` and ``after``)."""

    def __post_init__(self) -> None:
        self.speaker = HeldSpeaker(self.sample_rate, on_complete=self._ready)

    def _ready(self) -> None:
        log.debug("speculation_ready", turn_id=self.turn_id, n=self.n, audio_ms=self.speaker.held_ms)

    def keep(self, trigger: Trigger) -> None:
        self.trigger = trigger

    def answers(self, transcript: Transcript) -> bool:
        """The final transcript is the one this answer was prepared for."""
        return transcript is self.transcript or transcript.text.strip() == self.transcript.text.strip()


class SpeculationSignals:
    """The listening task's ``Speculation`` port (states/listen.py) for one turn: each call fires
    a machine trigger (``speculate``, ``speculation_void``) through ``fire_soon``, which must not
    wait for the machine (the listening task goes on reading the microphone)."""

    def __init__(self, turn: Turn, fire_soon: Callable[..., None]) -> None:
        self._turn = turn
        self._fire_soon = fire_soon

    def paused(self, transcript: Transcript) -> None:
        self._fire_soon("speculate", transcript=transcript, turn=self._turn)

    def resumed(self) -> None:
        self._fire_soon("speculation_void", turn=self._turn)


def join_times(listened: TurnTimes, answered: TurnTimes) -> TurnTimes:
    """The turn's times once a speculative answer is played: the answer's own, and the listening
    task's for what the answer did not time (the wake, the speech, the ASR's final)."""
    for name in (f.name for f in dataclasses.fields(TurnTimes)):
        if name != "extra" and getattr(answered, name) is None:
            setattr(answered, name, getattr(listened, name))
    answered.extra = {**listened.extra, **answered.extra}
    return answered
