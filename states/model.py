"""The Assistant: the model the conversation machine runs on; its methods are the callbacks that
the rows of states/machine.py name.

Each active state runs tasks (LISTENING and LISTENING_HELD: hear the question; THINKING and
SPEAKING: stream, synthesise and play the answer, and watch the microphone for a barge-in), owned
by a StateTasks (states/state_tasks.py). The microphone is read all the time by a MicFeed, so no
audio is lost between states. The turn and its report are in states/turn.py, what a barge-in
does to the answer in states/barge_in_policy.py. Nothing here does I/O: the ports do.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import structlog
from transitions.core import EventData

from states.answer import answer_question
from states.apology import Apology
from states.barge_in import BargeInSettings, EchoTraining, Interruption, is_stop_command, watch_for_barge_in
from states.barge_in_policy import HeldReply, can_hold, duck_on_suspicion, is_false_interruption
from states.cues import CueSettings
from states.endpointer import EndpointerSettings, LoudnessGate
from states.events import Transcript
from states.history import Conversation
from states.listen import NoTranscript, has_words, listen_for_utterance
from states.machine import State, Triggers, build_machine, state_name
from states.mic_feed import MicFeed
from states.ports import (
    AsrClient,
    EchoCanceller,
    EchoReferenceSource,
    EventSink,
    HotwordEngine,
    LlmClient,
    Microphone,
    Speaker,
    TtsClient,
    Vad,
)
from states.repeats import RepeatedFault
from states.reply import speak_reply
from states.say import FixedText
from states.speculation import HeldSpeaker, SpeculationSignals, SpeculativeAnswer, join_times
from states.speech_text import SpeechText, SpeechTextSettings
from states.state_tasks import NO_TRIGGER, TASK_CANCEL_TIMEOUT_S, StateTasks, Trigger
from states.thinking_cue import AnswerSpeaker, ThinkingCue
from states.turn import Turn, TurnReport, decide_cancel
from states.wake_watch import EchoCleaner, Wake, watch_for_wake

__all__ = ["TASK_CANCEL_TIMEOUT_S", "Assistant", "AssistantSettings", "Earcons", "Turn"]

log = structlog.get_logger()

WAKE_RETRY_S = 1.0
"""After the wait for a wake failed, it starts again this much later."""
EARCON_ECHO_MARGIN_S = 0.1
"""After the listening earcon: one speaker block of delay and the room's echo."""

Listen = Callable[..., Awaitable[Transcript | None]]
"""The listening task's work: ``listen_for_utterance`` (states/listen.py) or a stand-in with its
keyword arguments; ``speculation=`` is passed only when speculation is on."""


@dataclass(frozen=True)
class AssistantSettings:
    endpointer: EndpointerSettings = field(default_factory=EndpointerSettings)
    speech_text: SpeechTextSettings = field(default_factory=SpeechTextSettings)
    barge_in: BargeInSettings = field(default_factory=BargeInSettings)
    follow_up_s: float = 0.0
    """After an answer, listen this long without a wake word; 0: back to idle."""
    always: bool = False
    """IDLE: speech alone starts a turn (no wake word)."""
    refractory_s: float = 2.0
    """After a wake heard in the audio, the same utterance does not wake again."""
    cues: CueSettings = field(default_factory=lambda: CueSettings(apology=""))
    """The thinking cue's timing and the apology (none unless given: the daemon's config has one)."""
    apology_prepare_idle_s: float = 10.0
    """Idle this long with the apology not yet synthesised: have the TTS synthesise it now, so
    that the next failure says it at once (not sooner: a busy start, a run of turns need the TTS)."""
    no_transcript_fails_ms: int = 800
    """The VAD heard at least this much speech and the ASR gave no words: the ASR failed (the
    turn fails, the user hears so). Shorter speech with no words is a cough, a knock, a word
    half-said: nobody asked anything (``no_speech``)."""


@dataclass(frozen=True)
class Earcons:
    """Short sounds, each a function of the speaker's sample rate; None: no sound."""

    listening: Callable[[int], bytes] | None = None
    error: Callable[[int], bytes] | None = None
    thinking: Callable[[int], bytes] | None = None
    """While the answer is slow to start (``AssistantSettings.cues``)."""


class Assistant(Triggers):
    """The conversation. Build it with its ports, then fire ``wake()``."""

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
        hotword: HotwordEngine | None = None,
        events: EventSink | None = None,
        on_turn_end: Callable[[Turn], Awaitable[None] | None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        new_turn_id: Callable[[], str] = lambda: uuid.uuid4().hex[:12],
        listen: Listen = listen_for_utterance,
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
        self.hotword = hotword
        self.events = events
        self._cleaner = EchoCleaner(aec, echo_reference)
        self._ignore_wakes_until = 0.0
        self._wake_faults = RepeatedFault("wake_watch_failed", level="error", clock=clock)
        """Logs a wait for the wake that keeps failing (every WAKE_RETRY_S) once a minute."""
        self._pending: deque[Trigger] = deque()
        """Control calls waiting for IDLE (a /say queued after the current answer), in order."""
        self._closing = False
        self._report = TurnReport(on_turn_end, events)
        self._clock = clock
        self._new_turn_id = new_turn_id
        self._tasks = StateTasks(lambda name, **kwargs: self.trigger(name, **kwargs))  # the machine's, once built
        self._warm_ups: set[asyncio.Task[None]] = set()
        self._reply_task: asyncio.Task[None] | None = None
        self._apology = Apology(clock)
        self._preparing_apology: asyncio.Task[None] | None = None
        self._ducked = False
        """The last barge-in suspicion paused playback (and nothing resumed it since)."""
        self._sorry_until = 0.0
        """Clock time until which the last failed turn's apology or earcon plays."""
        self._held: HeldReply | None = None
        """The held answer: set exactly while the state is LISTENING_HELD."""
        self._listen_for_utterance = listen
        self._speculation: SpeculativeAnswer | None = None
        """The answer being prepared, unplayed, while the user pauses (a task of LISTENING)."""
        self._kept: SpeculativeAnswer | None = None
        """The speculative answer between the commit's ``before`` (kept) and ``after`` (played)."""
        self._answer_speaker: HeldSpeaker | None = None
        """The speaker of the answer being played, when it was speculative."""
        self._signals: set[asyncio.Task[bool]] = set()
        """Triggers the listening task's Speculation port fired, still being processed."""
        self.turn: Turn | None = None
        self._event_turn: Turn | None = None
        """The turn current when the event being processed began (the one a row may close)."""
        self.machine = build_machine(self)

    @property
    def mic(self) -> Microphone:
        return self.feed.mic

    @mic.setter
    def mic(self, mic: Microphone) -> None:
        """Swap the device (tests, and the feed itself when it reopens a lost device)."""
        self.feed.mic = mic

    # -- every event (prepare_event / finalize_event) ----------------------------------------

    def remember_turn(self, event: EventData) -> None:
        self._event_turn = self.turn

    def forget_turn(self, event: EventData) -> None:
        self._event_turn = None

    def log_state_changed(self, event: EventData) -> None:
        shown = self._event_turn or self.turn
        transition = event.transition
        fields = {
            "src": state_name(transition.source if transition else None),
            "dst": state_name(transition.dest if transition else self.state),
            "trigger": event.event.name,
            "turn_id": shown.id if shown else None,
        }
        log.info("state_changed", **fields)
        self._emit("state_changed", **fields)

    async def handle_error(self, event: EventData) -> None:
        """An exception inside a callback (a bug, or a port that raised): back to idle."""
        if isinstance(event.error, asyncio.CancelledError):
            raise event.error  # shutdown, not a failure
        log.error(
            "machine_error",
            error=repr(event.error),
            trigger=event.event.name,
            state=state_name(self.state),
            exc_info=event.error,
        )
        await self._tasks.cancel_all()
        if self.state is not State.IDLE:
            await self.fail(error=event.error)

    # -- conditions --------------------------------------------------------------------------

    def answer_can_be_held(self, event: EventData) -> bool:
        interruption: Interruption | None = event.kwargs.get("interruption")
        return can_hold(self.settings.barge_in, interruption) and self._tasks.owns(self._reply_task)

    def listen_only(self, event: EventData) -> bool:
        """GET /listen: the turn hears, and the caller decides what the robot says."""
        return self.turn is not None and self.turn.kind == "listen"

    def saying(self, event: EventData) -> bool:
        return self.turn is not None and self.turn.kind == "say"

    def follow_up_open(self, event: EventData) -> bool:
        """After an answer, listen on without a wake word, unless a control call is waiting."""
        return self.settings.follow_up_s > 0 and not self._pending and not self._closing

    def said_by_user(self, event: EventData) -> bool:
        """A stop word, as opposed to a stop from the daemon (a control call, shutdown)."""
        return bool(event.kwargs.get("by_user"))

    def pause_is_a_question(self, event: EventData) -> bool:
        """A pause of this turn's user, in a question (not GET /listen), with words that are not
        a stop word, speculation on, and the daemon not closing."""
        transcript: Transcript | None = event.kwargs.get("transcript")
        turn = self.turn
        signalled: Turn | None = event.kwargs.get("turn")
        if turn is None or signalled is not turn:
            return False  # a late signal of a turn that is over
        return (
            turn.kind == "question"
            and self.settings.endpointer.speculate_after_ms is not None
            and not self._closing
            and transcript is not None
            and has_words(transcript.text)
            and not is_stop_command(transcript.text.strip(), self.settings.barge_in.stop_words)
        )

    def speculation_matches(self, event: EventData) -> bool:
        """The utterance ended with the transcript the held answer was prepared for (and that
        answer has not failed)."""
        spec = self._speculation
        transcript: Transcript | None = event.kwargs.get("transcript")
        return (
            spec is not None
            and spec.failed is None
            and spec.task is not None
            and self._tasks.owns(spec.task)
            and not spec.task.done()
            and transcript is not None
            and spec.answers(transcript)
        )

    # -- leaving a state (before) ------------------------------------------------------------

    async def cancel_state_tasks(self, event: EventData) -> None:
        """Cancel the tasks of the state being left; a running answer is cut, and says why."""
        reply = self._reply_task
        if self._tasks.owns(reply) and reply is not None and not reply.done() and self.turn is not None:
            interruption: Interruption | None = event.kwargs.get("interruption")
            at = interruption.detected if interruption is not None else self._clock()
            decide_cancel(self.turn, at, event.event.name)
        spec, self._speculation = self._speculation, None
        if spec is not None:  # a task of LISTENING: cancelled with the rest
            reason = "failed" if spec.failed is not None else event.event.name
            self._log_speculation_dropped(spec, "mismatch" if reason == "heard" else reason)
        await self._tasks.cancel_all()

    def hold_answer(self, event: EventData) -> None:
        """pause mode: silence the answer at once and keep its task running, unowned."""
        reply = self._reply_task
        assert reply is not None and self.turn is not None
        self.speaker.pause()
        self._note_barge_in(event)
        self._held = HeldReply(reply, self.turn)
        self._tasks.release(reply, keep=self._held.keep)

    def flush_speaker(self, event: EventData) -> None:
        self.speaker.flush()
        self._note_barge_in(event)

    def _note_barge_in(self, event: EventData) -> None:
        """The answer has just fallen silent because the user cut in: how long after they began."""
        interruption: Interruption | None = event.kwargs.get("interruption")
        if interruption is not None and self.turn is not None and self.turn.barge_in_ms is None:
            self.turn.barge_in_ms = round((self._clock() - interruption.onset) * 1000)

    async def drop_held_as_real(self, event: EventData) -> None:
        """The listening task heard real words: the held answer is over."""
        await self._drop_held("interruption_real")

    async def drop_held_answer(self, event: EventData) -> None:
        await self._drop_held(event.event.name)

    def keep_speculation(self, event: EventData) -> None:
        """The commit: the held answer's task survives leaving LISTENING (``play_speculation``
        adopts it again)."""
        spec, self._speculation = self._speculation, None
        assert spec is not None and spec.task is not None
        self._kept = spec
        self._tasks.release(spec.task, keep=spec.keep)

    # -- entering a state (after) ------------------------------------------------------------

    async def start_waiting(self, event: EventData) -> None:
        """IDLE: start a control call that waited for the current turn, else listen for a wake
        (the microphone, the echo canceller and the VAD run from start-up, engine or not)."""
        if self._closing:
            return
        if self._pending:
            name, kwargs = self._pending.popleft()
            await self.trigger(name, **kwargs)  # queued: it runs once this event is over
            return
        # with no engine, it keeps the echo canceller learning
        self._tasks.spawn(self._wait_for_wake(), "wake-watch", None, waits=True)
        apology = self.settings.cues.apology
        preparing = self._preparing_apology is not None and not self._preparing_apology.done()
        if apology and self._apology.cached(apology) is None and not preparing:
            # one at a time: IDLE's wait restarts every second while the microphone is gone
            self._preparing_apology = self._tasks.spawn(self._prepare_apology(apology), "apology", None, waits=True)

    async def start_listening(self, event: EventData) -> None:
        """A new turn listens: after the earcon, or with the audio already heard (a barge-in, a
        wake word said in the same breath as the question, speech in ``always`` mode)."""
        interruption: Interruption | None = event.kwargs.get("interruption")
        wake: Wake = event.kwargs.get("wake") or Wake("control")
        heard_in_audio = interruption is not None or wake.source in ("hotword", "always")
        if not heard_in_audio:  # what the microphone heard before is stale, but for a pre-roll
            self.feed.keep_recent(self.settings.endpointer.pre_roll_ms / 1000)
        self._stop_failure_sound()
        self._new_turn()
        turn = self.turn
        assert turn is not None
        turn.waiter = event.kwargs.get("waiter")
        if event.kwargs.get("listen_only"):
            turn.kind = "listen"
        if interruption is not None:
            turn.wake_source = "barge_in"
        else:
            turn.wake_source, turn.wake_word = wake.source, wake.word
            self._emit("wake", turn_id=turn.id, source=wake.source, word=wake.word)
        if wake.at is not None:
            self._ignore_wakes_until = wake.at + self.settings.refractory_s
        deaf_until = None
        audio = wake.audio
        if interruption is not None:
            turn.times.speech_start, audio = interruption.onset, interruption.audio
        elif self.earcons.listening is not None and not wake.speaking:
            deaf_until = await self._play_listening_earcon()  # the audio handed over is not deafened
        self._spawn(self._listen(turn, audio, deaf_until), "listen")

    async def start_follow_up(self, event: EventData) -> None:
        """The follow-up window: a new turn listens at once, quietly (no earcon), for follow_up_s."""
        self._new_turn()
        assert self.turn is not None
        self.turn.wake_source = "follow_up"
        settings = dataclasses.replace(self.settings.endpointer, no_speech_timeout_s=self.settings.follow_up_s)
        self._spawn(self._listen(self.turn, b"", None, settings), "listen")

    async def start_saying(self, event: EventData) -> None:
        """/say, /display: a turn that speaks the given text (barge-in works as in an answer)."""
        self._new_turn()
        assert self.turn is not None
        self.turn.kind, self.turn.wake_source = "say", "say"
        self.turn.waiter = event.kwargs.get("waiter")
        self._answer_speaker = None
        self._reply_task = self._spawn(self._say(self.turn, event.kwargs["text"]), "say")
        self._start_watching()

    def start_resume_deadline(self, event: EventData) -> None:
        self._spawn(self._resume_deadline(), "resume-deadline")

    def start_answer(self, event: EventData) -> None:
        transcript = event.kwargs["transcript"]
        assert self.turn is not None
        cue = self._thinking_cue(self.turn)
        self._ducked = False
        self._answer_speaker = None
        self._reply_task = self._spawn(self._reply(self.turn, transcript.text, cue), "reply")
        if cue is not None:
            cue.task = self._spawn(cue.run(), "thinking-cue")
        self._start_watching()

    async def start_speculation(self, event: EventData) -> None:
        """LISTENING, the user paused: answer what they said so far, unplayed (LLM and TTS run,
        the audio is held; no thinking cue, no barge-in watch, no ``reply_clause`` yet)."""
        transcript: Transcript = event.kwargs["transcript"]
        turn = self.turn
        assert turn is not None
        if self._speculation is not None:
            if self._speculation.answers(transcript):
                return  # the same words: the answer being prepared still fits
            await self._drop_speculation("replaced")
        turn.speculations += 1
        spec = SpeculativeAnswer(turn.id, turn.speculations, transcript, self.speaker.sample_rate)
        self._speculation = spec
        log.info("speculation_started", turn_id=turn.id, n=spec.n, text=transcript.text.strip())
        spec.task = self._spawn(self._speculate(turn, spec), "speculation")

    async def drop_speculation(self, event: EventData) -> None:
        """The user spoke again: the answer prepared for the pause is void."""
        if event.kwargs.get("turn") is self.turn:
            await self._drop_speculation("resumed")

    async def play_speculation(self, event: EventData) -> None:
        """THINKING, at the commit: the kept answer plays at once (its held audio first), with
        the thinking cue and the barge-in watch as in ``start_answer``."""
        spec, self._kept = self._kept, None
        turn = self.turn
        assert spec is not None and spec.task is not None and turn is not None
        self._tasks.adopt(spec.task)
        if spec.task.done():  # it ended while released: act on what it returned
            if spec.trigger is not None:
                await self.trigger(spec.trigger[0], **spec.trigger[1])
            return
        self._reply_task, self._answer_speaker = spec.task, spec.speaker
        turn.times = join_times(turn.times, spec.times)
        turn.speculation_played_first = spec.n == 1
        cue = self._thinking_cue(turn)
        self._ducked = False
        if cue is not None:
            cue.task = self._spawn(cue.run(), "thinking-cue")
        log.info("speculation_played", turn_id=turn.id, n=spec.n, ready_ms=spec.speaker.held_ms)
        spec.speaker.open(self.speaker if cue is None else AnswerSpeaker(self.speaker, cue, self._cue_may_flush))
        self._spawn(self._play_held(spec.speaker), "speculation-playback")
        self._start_watching()

    async def resume_answer(self, event: EventData) -> None:
        """The interruption was false: the held answer plays on (the listening turn is dropped)."""
        held, self._held = self._held, None
        assert held is not None
        self.turn = held.turn
        self.speaker.resume()
        log.info("barge_in_resumed", turn_id=held.turn.id)
        if held.task.done():  # it failed while held: act on it now
            if held.trigger is not None:
                await self.trigger(held.trigger[0], **held.trigger[1])
            return
        self._tasks.adopt(held.task)
        self._reply_task = held.task
        if self._answer_speaker is not None and self._answer_speaker.holds_audio:
            # a speculative answer cut while its held audio was still being written
            self._spawn(self._play_held(self._answer_speaker), "speculation-playback")
        self._start_watching()

    # -- closing the turn (after) ------------------------------------------------------------

    async def end_turn_answered(self, event: EventData) -> None:
        await self._end_current_turn("answered")

    async def end_turn_listened(self, event: EventData) -> None:
        await self._end_current_turn("listened")

    async def end_turn_said(self, event: EventData) -> None:
        await self._end_current_turn("said")

    async def end_turn_no_speech(self, event: EventData) -> None:
        await self._end_current_turn("no_speech")

    async def end_turn_stop_word(self, event: EventData) -> None:
        await self._end_current_turn("stop_word")

    async def end_turn_stopped(self, event: EventData) -> None:
        await self._end_current_turn("stopped", interrupted=True)

    async def end_interrupted_turn(self, event: EventData) -> None:
        """Cancel mode: the turn the barge-in cut is over; the new one listens."""
        if self._event_turn is not None:
            await self._report.finished(self._event_turn, "interrupted", interrupted=True)

    async def fail_turn(self, event: EventData) -> None:
        turn, self.turn = self.turn, None
        if turn is None:
            return
        error: BaseException | None = event.kwargs.get("error")
        self._report.failed(turn, error)
        await self._say_sorry(turn)
        await self._report.finished(turn, "failed")

    async def _say_sorry(self, turn: Turn) -> None:
        """The apology when the TTS still works (the ASR, the LLM or a device failed) and it can
        be had in time; else the error earcon."""
        pcm, sound = None, "apology"
        cues = self.settings.cues
        if cues.apology and turn.failed_service != "tts":
            pcm = await self._apology.audio(
                cues.apology, self.tts, sample_rate=self.speaker.sample_rate, timeout_s=cues.apology_timeout_s
            )
        if pcm is None and self.earcons.error is not None:
            pcm, sound = self.earcons.error(self.speaker.sample_rate), "earcon"
        if pcm is None:
            return
        try:
            await self.speaker.write(pcm)
        except Exception as exc:  # noqa: BLE001 - the speaker itself may be what failed
            log.warning("earcon_failed", sound=sound, error=str(exc))
        else:
            self._sorry_until = self._clock() + len(pcm) / 2 / self.speaker.sample_rate
            log.info("failure_announced", turn_id=turn.id, sound=sound, service=turn.failed_service)

    def _stop_failure_sound(self) -> None:
        """A new turn cuts what is left of the last failure's apology: the user is speaking (and
        the listening earcon must not wait behind it)."""
        if self._clock() < self._sorry_until:
            self.speaker.flush()
            log.info("failure_sound_cut")
        self._sorry_until = 0.0

    async def _end_current_turn(self, outcome: str, *, interrupted: bool = False) -> None:
        turn, self.turn = self.turn, None
        if turn is not None:
            await self._report.finished(turn, outcome, interrupted=interrupted)

    # -- the tasks ---------------------------------------------------------------------------

    async def _play_listening_earcon(self) -> float:
        """Play the earcon; return until when the microphone must not count as the user (it hears
        the earcon itself)."""
        assert self.earcons.listening is not None
        pcm = self.earcons.listening(self.speaker.sample_rate)
        await self.speaker.write(pcm)
        return self._clock() + len(pcm) / 2 / self.speaker.sample_rate + EARCON_ECHO_MARGIN_S

    async def _listen(
        self,
        turn: Turn,
        initial_audio: bytes,
        deaf_until: float | None,
        settings: EndpointerSettings | None = None,
    ) -> Trigger:
        speculation = self._speculation_port(turn)
        extra: dict[str, Any] = {} if speculation is None else {"speculation": speculation}
        try:
            transcript = await self._listen_for_utterance(
                mic=self.feed,
                vad=self.vad,
                asr=self.asr,
                settings=settings or self.settings.endpointer,
                times=turn.times,
                clock=self._clock,
                initial_audio=initial_audio,
                deaf_until=deaf_until,
                loudness=self.loudness,
                on_speech_end=self._warm_up_services,
                min_voiced_ms=self.settings.no_transcript_fails_ms,
                **extra,
            )
        except NoTranscript:
            if self.state is State.LISTENING_HELD:  # no words over a held answer: it goes on
                log.info("barge_in_false", text="")
                return "resume", {}
            raise  # the user spoke and the ASR gave nothing: the turn fails (service asr)
        text = transcript.text.strip() if transcript is not None else ""
        if self.state is State.LISTENING_HELD and is_false_interruption(text, self.settings.barge_in):
            log.info("barge_in_false", text=text)  # a cough, "嗯": the answer goes on
            return "resume", {}
        if transcript is None:
            return "no_speech", {}
        turn.transcript = text
        log.info("transcript", text=turn.transcript, asr_final_ms=turn.times.latencies_ms()["asr_final_ms"])
        if not has_words(turn.transcript):
            log.info("asr_empty", text=turn.transcript)  # a short noise: nobody asked anything
            turn.transcript = ""
            return "no_speech", {}
        self._emit("transcript", turn_id=turn.id, text=turn.transcript)
        if turn.kind == "listen":
            return "heard", {"transcript": transcript}
        if is_stop_command(turn.transcript, self.settings.barge_in.stop_words):
            log.info("stop_word", text=turn.transcript)
            return "stop", {"by_user": True}
        return "heard", {"transcript": transcript}

    async def _resume_deadline(self) -> Trigger:
        """pause mode: an interruption still going on after resume_after_ms is real."""
        await asyncio.sleep(self.settings.barge_in.resume_after_ms / 1000)
        return "resume_deadline", {}

    def _speculation_port(self, turn: Turn) -> SpeculationSignals | None:
        """What the listening task tells of the user's pauses; None when speculation is off or
        the turn is not a question (GET /listen)."""
        if self.settings.endpointer.speculate_after_ms is None or turn.kind != "question":
            return None
        return SpeculationSignals(turn, self._fire_soon)

    def _fire_soon(self, name: str, **kwargs: Any) -> None:
        """Fire a trigger without waiting for the machine (the caller is the listening task)."""
        task = asyncio.create_task(self.trigger(name, **kwargs), name=f"{name}-signal")
        self._signals.add(task)
        task.add_done_callback(self._signals.discard)

    async def _speculate(self, turn: Turn, spec: SpeculativeAnswer) -> Trigger:
        """The speculative answer's task. Failing before it is played, it is only void: it waits
        to be dropped (the commit does not play it, and answers afresh)."""
        try:
            await answer_question(
                spec.transcript.text,
                turn=turn,
                times=spec.times,
                conversation=self.conversation,
                llm=self.llm,
                tts=self.tts,
                speaker=spec.speaker,
                settings=self.settings.speech_text,
                clock=self._clock,
                on_audible=self._audible,
                on_clause=spec.speaker.when_open(self._clause_spoken(turn)),
            )
        except Exception as exc:
            if spec.speaker.is_open:
                raise
            spec.failed = exc
            log.info("speculation_failed", turn_id=turn.id, n=spec.n, error=str(exc), error_type=type(exc).__name__)
            await asyncio.Event().wait()  # until the commit or the user's next words drop it
            raise
        return "done", {}

    async def _play_held(self, speaker: HeldSpeaker) -> Trigger:
        await speaker.play_held()
        return NO_TRIGGER

    async def _drop_speculation(self, reason: str) -> None:
        """Cancel the speculative answer now (its LLM stream and TTS connection close)."""
        spec, self._speculation = self._speculation, None
        if spec is None or spec.task is None:
            return
        self._tasks.release(spec.task, keep=spec.keep)
        self._tasks.forget(spec.task)  # disowned: whatever it returns goes nowhere
        spec.task.cancel()
        self._log_speculation_dropped(spec, reason)
        await asyncio.wait({spec.task}, timeout=TASK_CANCEL_TIMEOUT_S)

    def _log_speculation_dropped(self, spec: SpeculativeAnswer, reason: str) -> None:
        log.info("speculation_dropped", turn_id=spec.turn_id, n=spec.n, reason=reason)

    async def _drop_held(self, reason: str) -> None:
        """Cancel a held answer: what was heard goes to history, the rest is dropped."""
        held, self._held = self._held, None
        if held is None:
            return
        self._tasks.forget(held.task)
        if not held.task.done():
            decide_cancel(held.turn, self._clock(), reason)
        held.task.cancel()
        await asyncio.wait({held.task}, timeout=TASK_CANCEL_TIMEOUT_S)
        self.speaker.flush()
        await self._report.finished(held.turn, "interrupted", interrupted=True)

    def _start_watching(self) -> None:
        if self.settings.barge_in.enabled:
            self._spawn(self._watch(), "barge-in")

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

    def _suspect(self, speech: bool) -> None:
        duck_on_suspicion(self.speaker, speech, holding=self._held is not None)
        self._ducked = speech

    def _cue_may_flush(self) -> bool:
        """The answer's first audio may drop the rest of the thinking cue: not while playback is
        paused (ducked for a suspected barge-in, or the answer held), which a flush would end."""
        return self.state is State.THINKING and not self._ducked

    def _thinking_cue(self, turn: Turn) -> ThinkingCue | None:
        """The cue for an answer about to be asked for; None when ``earcons.thinking`` is off."""
        if self.earcons.thinking is None:
            return None
        cues = self.settings.cues
        return ThinkingCue(
            self.speaker,
            self.earcons.thinking(self.speaker.sample_rate),
            after_s=cues.thinking_cue_after_s,
            every_s=cues.thinking_cue_every_s,
            turn_id=turn.id,
        )

    async def _prepare_apology(self, text: str) -> Trigger:
        """IDLE's task while the apology is not synthesised: after a quiet while, synthesise it."""
        await asyncio.sleep(self.settings.apology_prepare_idle_s)
        await self._apology.audio(
            text, self.tts, sample_rate=self.speaker.sample_rate, timeout_s=self.settings.cues.apology_timeout_s
        )
        return NO_TRIGGER

    async def _reply(self, turn: Turn, question: str, cue: ThinkingCue | None = None) -> Trigger:
        await answer_question(
            question,
            turn=turn,
            conversation=self.conversation,
            llm=self.llm,
            tts=self.tts,
            speaker=self.speaker if cue is None else AnswerSpeaker(self.speaker, cue, self._cue_may_flush),
            settings=self.settings.speech_text,
            clock=self._clock,
            on_audible=self._audible,
            on_clause=self._clause_spoken(turn),
        )
        return "done", {}

    def _clause_spoken(self, turn: Turn) -> Callable[[str], None]:
        return lambda clause: self._emit("reply_clause", turn_id=turn.id, text=clause)

    async def _say(self, turn: Turn, text: str) -> Trigger:
        outcome = await speak_reply(
            llm=FixedText(text),
            tts=self.tts,
            speaker=self.speaker,
            text=SpeechText(self.settings.speech_text),
            messages=[],
            times=turn.times,
            clock=self._clock,
            on_audible=self._audible,
            on_clause=self._clause_spoken(turn),
        )
        turn.reply = outcome.spoken
        return "done", {}

    async def _wait_for_wake(self) -> Trigger:
        """IDLE's task. A failure here (the microphone unplugged, an engine that raised) has no
        turn to fail: it is logged, and the wait starts again after a pause (the feed reopens a
        lost microphone meanwhile), so the daemon never stops hearing its wake word for good."""
        try:
            wake = await watch_for_wake(
                feed=self.feed,
                vad=self.vad,
                engine=self.hotword,
                always=self.settings.always,
                listening=self.settings.endpointer,
                cleaner=self._cleaner,
                ignore_until=self._ignore_wakes_until,
            )
        except Exception as exc:  # noqa: BLE001 - idle must outlive any failure
            self._wake_faults.failed(error=str(exc), error_type=type(exc).__name__, retry_s=WAKE_RETRY_S)
            await asyncio.sleep(WAKE_RETRY_S)
            return "ready", {}
        self._wake_faults.recovered("wake_watch_recovered")
        return "wake", {"wake": wake}

    async def _audible(self) -> None:
        await self.start_speaking()

    # -- task ownership, shutdown ------------------------------------------------------------

    def _spawn(self, work: Coroutine[Any, Any, Trigger], name: str) -> asyncio.Task[None]:
        return self._tasks.spawn(work, name, self.turn.id if self.turn else None)

    async def settle(self) -> None:
        """Wait until no state task is running (tests, shutdown): the last trigger has been fired."""
        await self._tasks.settle()

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
        self._closing = True
        for _, kwargs in self._pending:
            if kwargs.get("waiter") is not None:
                kwargs["waiter"].cancel()
        self._pending.clear()
        for task in self._warm_ups:
            task.cancel()
        if self._warm_ups:
            await asyncio.wait(self._warm_ups)
        if self._signals:  # triggers the listening task fired: let the machine finish them
            await asyncio.wait(set(self._signals))
        if self.state is not State.IDLE:
            await self.stop()
        await self._tasks.cancel_all()
        await self._drop_held("shutdown")
        await self.settle()
        await self.feed.aclose()

    @property
    def last_turn(self) -> Turn | None:
        """The last finished turn (GET /status)."""
        return self._report.last

    # -- other wake sources and control calls (the button, the control API) --------------------

    async def press(self) -> None:
        """The button: idle, wake; thinking or speaking, stop the answer and listen (a barge-in
        by hand); listening already, nothing."""
        if self.state is State.IDLE:
            await self.wake(wake=Wake("button"))
        elif self.state in (State.THINKING, State.SPEAKING):
            await self.barge_in()

    async def long_press(self) -> None:
        """The button held: cancel everything (queued calls too), go idle."""
        await self.cancel_everything()

    async def cancel_everything(self) -> None:
        for _, kwargs in self._pending:
            if kwargs.get("waiter") is not None:
                kwargs["waiter"].cancel()
        self._pending.clear()
        await self.stop()

    async def request(self, trigger: str, *, interrupt: bool, **kwargs: Any) -> asyncio.Future[Turn]:
        """A control call that starts a turn (``wake`` with listen_only, ``say``): now when idle;
        with ``interrupt`` after stopping what runs; else once the current turn is over. The
        future is the finished turn."""
        waiter: asyncio.Future[Turn] = asyncio.get_running_loop().create_future()
        kwargs["waiter"] = waiter
        if self.state is State.IDLE and not self._pending:
            await self.trigger(trigger, **kwargs)
        elif interrupt:
            self._pending.appendleft((trigger, kwargs))
            await self.stop()
        else:
            self._pending.append((trigger, kwargs))
        return waiter

    def _emit(self, name: str, **fields: object) -> None:
        if self.events is not None:
            self.events.emit(name, **fields)

    def _new_turn(self) -> None:
        self._speculation = None  # a last turn's, if any, was cancelled with its state's tasks
        self.turn = Turn(id=self._new_turn_id())
        self.turn.times.woke = self._clock()
