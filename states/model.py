"""The Assistant: the model the conversation machine runs on. It owns each state's tasks.

Each active state starts its tasks (LISTENING: hear the question; THINKING: stream, synthesise
and play the answer, and watch the microphone for a barge-in). A task ends by *returning* the
next trigger, which its runner fires after detaching itself, so a task never cancels itself.
Leaving a state cancels its tasks, except on the hand-over from THINKING to SPEAKING (one reply
spans both). The microphone is read all the time by a MicFeed, so no audio is lost between
states. Nothing here does I/O: the ports do.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import structlog
from transitions.core import EventData

from states.barge_in import (
    BargeInSettings,
    EchoTraining,
    Interruption,
    is_filler,
    is_stop_command,
    watch_for_barge_in,
)
from states.endpointer import EndpointerSettings, LoudnessGate
from states.events import Transcript, TurnTimes
from states.history import Conversation
from states.listen import listen_for_utterance
from states.machine import HANDOVER_TRIGGERS, State, build_machine
from states.mic_feed import MicFeed
from states.ports import (
    AsrClient,
    EchoCanceller,
    EchoReferenceSource,
    LlmClient,
    Microphone,
    Speaker,
    TtsClient,
    Vad,
)
from states.reply import ReplyProgress, speak_reply
from states.speech_text import SpeechText, SpeechTextSettings

log = structlog.get_logger()

Trigger = tuple[str, dict[str, Any]]
NO_TRIGGER: Trigger = ("", {})
"""A task that ends without moving the machine."""
TASK_CANCEL_TIMEOUT_S = 2.0
EARCON_ECHO_MARGIN_S = 0.1
"""After the listening earcon: one speaker block of delay and the room's echo."""


@dataclass(frozen=True)
class AssistantSettings:
    endpointer: EndpointerSettings = field(default_factory=EndpointerSettings)
    speech_text: SpeechTextSettings = field(default_factory=SpeechTextSettings)
    barge_in: BargeInSettings = field(default_factory=BargeInSettings)


@dataclass(frozen=True)
class Earcons:
    """Short sounds, each a function of the speaker's sample rate; None: no sound."""

    listening: Callable[[int], bytes] | None = None
    error: Callable[[int], bytes] | None = None


@dataclass
class HeldReply:
    """pause mode: an answer stopped by a barge-in that may still turn out false."""

    task: asyncio.Task[None]
    turn: Turn
    trigger: Trigger | None = None
    """What the reply task returned while held (it can only end by failing: playback is paused)."""


@dataclass
class Turn:
    """One wake-to-idle exchange, as ``turn_finished`` reports it."""

    id: str
    times: TurnTimes = field(default_factory=TurnTimes)
    transcript: str = ""
    reply: str = ""
    outcome: str = "open"
    """answered | no_speech | failed | interrupted | stop_word | stopped"""
    interrupted: bool = False
    truncated: bool = False
    finish_reason: str | None = None
    failed_service: str | None = None
    failure: str | None = None
    cancelled_at: float | None = None
    """Clock time the assistant decided to cancel this turn's answer while it was still running
    (streaming, synthesising or held): what cancel propagation is measured from. None: never cut."""
    cancel_reason: str | None = None
    """Why: ``barge_in`` (cancel mode: the interruption was confirmed), ``interruption_real`` or
    ``resume_deadline`` (pause mode: the held answer is dropped), or the trigger that left the state."""

    @property
    def ok(self) -> bool:
        return self.outcome in ("answered", "no_speech", "interrupted", "stop_word")


class Assistant:
    """The conversation. Build it with its ports, then fire ``wake()``."""

    state: State

    # Triggers: transitions replaces these stubs (model_override=True keeps them typed).
    async def wake(self, **kwargs: Any) -> bool:
        raise NotImplementedError

    async def heard(self, **kwargs: Any) -> bool:
        raise NotImplementedError

    async def no_speech(self, **kwargs: Any) -> bool:
        raise NotImplementedError

    async def start_speaking(self, **kwargs: Any) -> bool:
        raise NotImplementedError

    async def done(self, **kwargs: Any) -> bool:
        raise NotImplementedError

    async def fail(self, **kwargs: Any) -> bool:
        raise NotImplementedError

    async def barge_in(self, **kwargs: Any) -> bool:
        raise NotImplementedError

    async def resume(self, **kwargs: Any) -> bool:
        raise NotImplementedError

    async def stop(self, **kwargs: Any) -> bool:
        raise NotImplementedError

    async def trigger(self, name: str, **kwargs: Any) -> bool:
        raise NotImplementedError

    def __init__(
        self,
        *,
        mic: Microphone | MicFeed,
        speaker: Speaker,
        vad: Vad,
        asr: AsrClient,
        llm: LlmClient,
        tts: TtsClient,
        conversation: Conversation,
        settings: AssistantSettings,
        aec: EchoCanceller | None = None,
        echo_reference: EchoReferenceSource | None = None,
        earcons: Earcons | None = None,
        on_turn_end: Callable[[Turn], Awaitable[None] | None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        new_turn_id: Callable[[], str] = lambda: uuid.uuid4().hex[:12],
    ) -> None:
        self.feed = mic if isinstance(mic, MicFeed) else MicFeed(mic, clock=clock)
        self.speaker, self.vad = speaker, vad
        self.aec, self.echo_reference = aec, echo_reference
        self.echo_training = EchoTraining()
        self.loudness = LoudnessGate()
        """The room's noise floor, learnt by the endpointer across utterances."""
        self.asr, self.llm, self.tts = asr, llm, tts
        self.conversation = conversation
        self.settings = settings
        self.earcons = earcons or Earcons()
        self._on_turn_end = on_turn_end
        self._clock = clock
        self._new_turn_id = new_turn_id
        self._owned: set[asyncio.Task[None]] = set()
        """The tasks of the current state(s): cancelled when the state is left."""
        self._runners: set[asyncio.Task[None]] = set()
        self._warm_ups: set[asyncio.Task[None]] = set()
        self._reply_task: asyncio.Task[None] | None = None
        self._held: HeldReply | None = None
        self.turn: Turn | None = None
        self._leaving_turn: Turn | None = None
        self.machine = build_machine(self)

    # -- machine callbacks -------------------------------------------------------------------

    @property
    def mic(self) -> Microphone:
        return self.feed.mic

    @mic.setter
    def mic(self, mic: Microphone) -> None:
        """Swap the device (tests, and the feed itself when it reopens a lost device)."""
        self.feed.mic = mic

    async def before_state_change(self, event: EventData) -> None:
        name = event.event.name
        reply = self._reply_task
        heard = event.kwargs.get("interruption") is not None  # a button or an API call: no speech to judge
        if name == "barge_in" and heard and self.settings.barge_in.mode == "pause" and reply in self._owned:
            assert reply is not None and self.turn is not None
            self.speaker.pause()  # at once; the answer is held, not lost
            self._owned.discard(reply)
            self._held = HeldReply(reply, self.turn)
        if name not in HANDOVER_TRIGGERS:
            if reply in self._owned and reply is not None and not reply.done() and self.turn is not None:
                interruption: Interruption | None = event.kwargs.get("interruption")
                at = interruption.detected if interruption is not None else self._clock()
                _decide_cancel(self.turn, at, name)
            await self._cancel_tasks()
        self._leaving_turn = self.turn

    async def on_enter_LISTENING(self, event: EventData) -> None:
        interruption: Interruption | None = event.kwargs.get("interruption")
        if event.event.name == "barge_in" and self._held is None:  # cancel mode: the reply is over
            self.speaker.flush()
        if interruption is None:  # what the microphone heard before is stale, but for a pre-roll
            self.feed.keep_recent(self.settings.endpointer.pre_roll_ms / 1000)
        self._new_turn()
        assert self.turn is not None
        deaf_until = None
        if interruption is not None:
            self.turn.times.speech_start = interruption.onset
        elif self.earcons.listening is not None:
            deaf_until = await self._play_listening_earcon()
        self._spawn(self._listen(self.turn, interruption.audio if interruption else b"", deaf_until), "listen")
        if self._held is not None:
            self._spawn(self._resume_deadline(), "resume-deadline")

    async def on_enter_THINKING(self, event: EventData) -> None:
        transcript: Transcript = event.kwargs["transcript"]
        assert self.turn is not None
        self._reply_task = self._spawn(self._reply(self.turn, transcript.text), "reply")
        if self.settings.barge_in.enabled:
            self._spawn(self._watch(), "barge-in")

    async def on_enter_SPEAKING(self, event: EventData) -> None:
        if event.event.name != "resume":
            return
        held, self._held = self._held, None
        assert held is not None
        self.turn = held.turn
        self.speaker.resume()
        log.info("barge_in_resumed", turn_id=held.turn.id)
        if held.task.done():  # it failed while held: act on it now
            if held.trigger is not None:
                await self.trigger(held.trigger[0], **held.trigger[1])
            return
        self._owned.add(held.task)
        self._reply_task = held.task
        if self.settings.barge_in.enabled:
            self._spawn(self._watch(), "barge-in")

    async def on_enter_IDLE(self, event: EventData) -> None:
        await self._drop_held(event.event.name)
        if event.event.name == "stop":
            self.speaker.flush()

    async def after_state_change(self, event: EventData) -> None:
        """Log the change, then close the turn it ended (so ``turn_finished`` comes last)."""
        ended = self._leaving_turn if self._leaving_turn is not self.turn else None
        shown = self._leaving_turn or self.turn
        transition = event.transition
        log.info(
            "state_changed",
            src=_name(transition.source if transition else None),
            dst=_name(transition.dest if transition else self.state),
            trigger=event.event.name,
            turn_id=shown.id if shown else None,
        )
        self._leaving_turn = None
        name = event.event.name
        if name == "barge_in" and ended is not None and self._held is None:
            await self._end_turn(ended, "interrupted", interrupted=True)
        elif self.state is State.IDLE and self.turn is not None:
            turn, self.turn = self.turn, None
            if name == "fail":
                await self._fail_turn(turn, event.kwargs.get("error"))
            elif name == "no_speech":
                await self._end_turn(turn, "no_speech")
            elif name == "stop" and event.kwargs.get("by_user"):
                await self._end_turn(turn, "stop_word")
            elif name == "stop":
                await self._end_turn(turn, "stopped", interrupted=True)
            else:
                await self._end_turn(turn, "answered")

    async def handle_error(self, event: EventData) -> None:
        """An exception inside a callback (a bug, or a port that raised): back to idle."""
        if isinstance(event.error, asyncio.CancelledError):
            raise event.error  # shutdown, not a failure
        log.error(
            "machine_error",
            error=repr(event.error),
            trigger=event.event.name,
            state=_name(self.state),
            exc_info=event.error,
        )
        await self._cancel_tasks()
        if self.state is not State.IDLE:
            await self.fail(error=event.error)

    # -- the tasks ---------------------------------------------------------------------------

    async def _play_listening_earcon(self) -> float:
        """Play the earcon; return until when the microphone must not count as the user (it hears
        the earcon itself)."""
        assert self.earcons.listening is not None
        pcm = self.earcons.listening(self.speaker.sample_rate)
        await self.speaker.write(pcm)
        return self._clock() + len(pcm) / 2 / self.speaker.sample_rate + EARCON_ECHO_MARGIN_S

    async def _listen(self, turn: Turn, initial_audio: bytes, deaf_until: float | None) -> Trigger:
        transcript = await listen_for_utterance(
            mic=self.feed,
            vad=self.vad,
            asr=self.asr,
            settings=self.settings.endpointer,
            times=turn.times,
            clock=self._clock,
            initial_audio=initial_audio,
            deaf_until=deaf_until,
            loudness=self.loudness,
            on_speech_end=self._warm_up_services,
        )
        text = transcript.text.strip() if transcript is not None else ""
        if self._held is not None and is_filler(text, self.settings.barge_in.fillers):
            log.info("barge_in_false", text=text)  # a cough, "嗯": the answer goes on
            return "resume", {}
        await self._drop_held("interruption_real")
        if transcript is None:
            return "no_speech", {}
        turn.transcript = text
        log.info("transcript", text=turn.transcript, asr_final_ms=turn.times.latencies_ms()["asr_final_ms"])
        if not turn.transcript:
            log.info("asr_empty")
            return "no_speech", {}
        if is_stop_command(turn.transcript, self.settings.barge_in.stop_words):
            log.info("stop_word", text=turn.transcript)
            return "stop", {"by_user": True}
        return "heard", {"transcript": transcript}

    def _suspect(self, speech: bool) -> None:
        """Someone may be cutting in: stop the sound now, play on if it was nothing."""
        if speech:
            self.speaker.pause()
            log.info("barge_in_suspected")
        elif self._held is None:
            self.speaker.resume()
            log.info("barge_in_dismissed")

    async def _resume_deadline(self) -> Trigger:
        """pause mode: an interruption still going on after resume_after_ms is real."""
        await asyncio.sleep(self.settings.barge_in.resume_after_ms / 1000)
        await self._drop_held("resume_deadline")
        return NO_TRIGGER

    async def _drop_held(self, reason: str) -> None:
        """Cancel a held answer: what was heard goes to history, the rest is dropped."""
        held, self._held = self._held, None
        if held is None:
            return
        if not held.task.done():
            _decide_cancel(held.turn, self._clock(), reason)
        held.task.cancel()
        await asyncio.wait({held.task}, timeout=TASK_CANCEL_TIMEOUT_S)
        self.speaker.flush()
        await self._end_turn(held.turn, "interrupted", interrupted=True)

    async def _watch(self) -> Trigger:
        # Let the reply put its LLM request on the wire first: the microphone's backlog (the
        # blocks heard while the ASR finished) costs a millisecond or two of VAD, off the
        # critical path.
        await asyncio.sleep(0)
        interruption = await watch_for_barge_in(
            feed=self.feed,
            vad=self.vad,
            aec=self.aec,
            reference=self.echo_reference,
            settings=self.settings.barge_in,
            listening=self.settings.endpointer,
            clock=self._clock,
            training=self.echo_training,
            on_suspect=self._suspect,
        )
        return "barge_in", {"interruption": interruption}

    async def _reply(self, turn: Turn, question: str) -> Trigger:
        messages = self.conversation.messages_for(question, self._clock())
        progress = ReplyProgress()
        played_before = self.speaker.audio_samples_played
        try:
            outcome = await speak_reply(
                llm=self.llm,
                tts=self.tts,
                speaker=self.speaker,
                text=SpeechText(self.settings.speech_text),
                messages=messages,
                times=turn.times,
                clock=self._clock,
                on_audible=self._audible,
                progress=progress,
            )
        except asyncio.CancelledError:
            # Interrupted: remember only what the user actually heard.
            turn.reply = progress.heard(self.speaker.audio_samples_played - played_before)
            if turn.reply:  # the model should know it was cut off, not that it said all it meant to
                said = turn.reply if turn.reply.endswith("…") else turn.reply + "…"
                self.conversation.record(question, said, self._clock())
            raise
        turn.reply, turn.truncated, turn.finish_reason = outcome.spoken, outcome.truncated, outcome.finish_reason
        self.conversation.record(question, outcome.spoken, self._clock())
        return "done", {}

    async def _audible(self) -> None:
        await self.start_speaking()

    # -- task ownership ----------------------------------------------------------------------

    def _spawn(self, work: Coroutine[Any, Any, Trigger], name: str) -> asyncio.Task[None]:
        turn_id = self.turn.id if self.turn else None

        async def runner() -> None:
            structlog.contextvars.bind_contextvars(turn_id=turn_id)
            try:
                trigger, kwargs = await work
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure of a turn ends that turn, not the daemon
                trigger, kwargs = "fail", {"error": exc}
            me = asyncio.current_task()
            if self._held is not None and me is self._held.task:
                self._held.trigger = (trigger, kwargs)  # acted on if the answer resumes
                return
            if me not in self._owned or trigger == NO_TRIGGER[0]:
                self._owned.discard(me)
                return  # the state was left while this task was finishing: its trigger is stale
            self._owned.discard(me)  # detach: the trigger must not cancel its caller
            await self.trigger(trigger, **kwargs)

        task = asyncio.create_task(runner(), name=f"{name}-{turn_id}")
        self._owned.add(task)
        self._runners.add(task)
        task.add_done_callback(self._runners.discard)
        return task

    async def settle(self) -> None:
        """Wait until no state task is running (tests, shutdown): the last trigger has been fired."""
        while others := [t for t in self._runners if t is not asyncio.current_task()]:
            await asyncio.wait(others)

    async def _cancel_tasks(self) -> None:
        tasks = {t for t in self._owned if t is not asyncio.current_task() and not t.done()}
        self._owned.clear()
        if not tasks:
            return
        for task in tasks:
            task.cancel()
        done, pending = await asyncio.wait(tasks, timeout=TASK_CANCEL_TIMEOUT_S)
        for task in pending:
            log.warning("task_cancel_slow", task=task.get_name(), waited_s=TASK_CANCEL_TIMEOUT_S)
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                log.warning("task_failed_while_cancelled", task=task.get_name(), error=repr(task.exception()))

    def _warm_up_services(self) -> None:
        """The user has finished speaking: open the LLM and TTS connections while the ASR
        finishes, so the requests do not wait for TCP and TLS handshakes (an idle connection is
        closed after a few seconds, so earlier would be too early for a long question). Not a
        state's task: it may outlive LISTENING, and it never fails."""
        task = asyncio.create_task(self._warm_up(), name="warm-up")
        self._warm_ups.add(task)
        task.add_done_callback(self._warm_ups.discard)

    async def _warm_up(self) -> None:
        await asyncio.gather(self.llm.warm_up(), self.tts.warm_up())

    async def aclose(self) -> None:
        """Stop whatever runs (daemon shutdown). The current turn ends as ``stopped``."""
        for task in self._warm_ups:
            task.cancel()
        if self._warm_ups:
            await asyncio.wait(self._warm_ups)
        if self.state is not State.IDLE:
            await self.stop()
        await self._cancel_tasks()
        await self._drop_held("shutdown")
        await self.settle()
        await self.feed.aclose()

    # -- turn bookkeeping --------------------------------------------------------------------

    def _new_turn(self) -> None:
        self.turn = Turn(id=self._new_turn_id())
        self.turn.times.woke = self._clock()

    async def _fail_turn(self, turn: Turn, error: BaseException | None) -> None:
        turn.failed_service = getattr(error, "service", None) or "daemon"
        turn.failure = str(error) or type(error).__name__
        log.error(
            "turn_failed",
            turn_id=turn.id,
            service=turn.failed_service,
            reason=turn.failure,
            error_type=type(error).__name__,
            transcript=turn.transcript,
        )
        if self.earcons.error is not None:
            try:
                await self.speaker.write(self.earcons.error(self.speaker.sample_rate))
            except Exception as exc:  # noqa: BLE001 - the speaker itself may be what failed
                log.warning("earcon_failed", error=str(exc))
        await self._end_turn(turn, "failed")

    async def _end_turn(self, turn: Turn, outcome: str, *, interrupted: bool = False) -> None:
        turn.outcome, turn.interrupted = outcome, interrupted
        log.info(
            "turn_finished",
            turn_id=turn.id,
            outcome=outcome,
            transcript=turn.transcript,
            reply=turn.reply,
            interrupted=interrupted,
            truncated=turn.truncated,
            finish_reason=turn.finish_reason,
            **turn.times.latencies_ms(),
        )
        if self._on_turn_end is not None:
            result = self._on_turn_end(turn)
            if result is not None:
                await result


def _decide_cancel(turn: Turn, at: float, reason: str) -> None:
    """Record the decision to cut ``turn``'s running answer (the first one counts)."""
    if turn.cancelled_at is None:
        turn.cancelled_at, turn.cancel_reason = at, reason
        log.debug("reply_cancel_decided", turn_id=turn.id, reason=reason)


def _name(state: Any) -> str:
    """transitions hands over state names ("SPEAKING"); logs use the values ("speaking")."""
    if isinstance(state, State):
        return state.value
    return State[state].value if state in State.__members__ else str(state)
