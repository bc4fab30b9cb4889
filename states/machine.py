"""The conversation as data: the states, the transitions table, and the machine built from them.

Read the table row by row: a trigger, where it applies, where it goes, and the model's callbacks
it runs, by name, in the order written. ``before`` runs while the machine is still in the source
state (leaving it: cancel its tasks, hold or drop an answer), ``after`` once it is in the
destination (entering it: start its tasks, then the ``state_changed`` log line, then closing the
turn the row ended, so ``turn_finished`` comes last; a row into IDLE then starts IDLE's wait for a
wake, ``start_waiting``). A row without ``cancel_state_tasks`` hands the running tasks over to the
next state. The callbacks are methods of ``states.model.Assistant``; the conditions too (never
named ``may_<trigger>``: transitions gives the model those).
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from typing import Any

import structlog
from transitions.core import EventData
from transitions.extensions.asyncio import AsyncMachine

log = structlog.get_logger()


class State(Enum):
    IDLE = "idle"
    LISTENING = "listening"
    LISTENING_HELD = "listening_held"
    """Listening while an answer cut by a barge-in is held (pause mode), until the interruption
    proves real (the answer is dropped) or false (``resume``)."""
    THINKING = "thinking"
    SPEAKING = "speaking"


IDLE, LISTENING, HELD = State.IDLE, State.LISTENING, State.LISTENING_HELD
THINKING, SPEAKING = State.THINKING, State.SPEAKING
ACTIVE = [LISTENING, HELD, THINKING, SPEAKING]
NOT_HELD = [LISTENING, THINKING, SPEAKING]
ANSWERING = [THINKING, SPEAKING]
LOG = "log_state_changed"

TRANSITIONS: list[dict[str, Any]] = [
    # -- idle: the state's task listens for a wake word (or, in `always` mode, any speech). Every
    #    row into IDLE ends with start_waiting, which first starts a queued control call, if any.
    {"trigger": "ready", "source": IDLE, "dest": None, "after": ["start_waiting"]},
    # -- wake sources (hotword, always, button, control API, on_start): a new turn listens
    {"trigger": "wake", "source": IDLE, "dest": LISTENING,
     "before": ["cancel_state_tasks"], "after": ["start_listening", LOG]},
    # -- the control API's /say and /display: speak a given text (no question, no LLM)
    {"trigger": "say", "source": IDLE, "dest": THINKING,
     "before": ["cancel_state_tasks"], "after": ["start_saying", LOG]},
    # -- the listening task's verdicts -------------------------------------------------------
    # GET /listen: the text is the caller's; the robot does not answer it
    {"trigger": "heard", "source": LISTENING, "dest": IDLE, "conditions": ["listen_only"],
     "before": ["cancel_state_tasks"], "after": [LOG, "end_turn_listened", "start_waiting"]},
    # speculative turn end (vad.speculate_after_ms): the user paused, so the answer to what they
    # said so far starts now, a task of LISTENING, held unplayed; they spoke again: it is void
    {"trigger": "speculate", "source": LISTENING, "dest": None, "conditions": ["pause_is_a_question"],
     "after": ["start_speculation"]},
    {"trigger": "speculation_void", "source": LISTENING, "dest": None, "after": ["drop_speculation"]},
    # the utterance ended as the held answer guessed: it is kept (released over the cancelling,
    # adopted again) and plays at once; any other transcript drops it (cancel_state_tasks). The
    # state_changed line comes first here: playing releases the clauses already spoken (reply_clause)
    {"trigger": "heard", "source": LISTENING, "dest": THINKING, "conditions": ["speculation_matches"],
     "before": ["keep_speculation", "cancel_state_tasks"], "after": [LOG, "play_speculation"]},
    {"trigger": "heard", "source": LISTENING, "dest": THINKING,
     "before": ["cancel_state_tasks"], "after": ["start_answer", LOG]},
    {"trigger": "heard", "source": HELD, "dest": THINKING,
     "before": ["cancel_state_tasks", "drop_held_as_real"], "after": ["start_answer", LOG]},
    {"trigger": "no_speech", "source": LISTENING, "dest": IDLE,
     "before": ["cancel_state_tasks"], "after": [LOG, "end_turn_no_speech", "start_waiting"]},
    {"trigger": "no_speech", "source": HELD, "dest": IDLE,
     "before": ["cancel_state_tasks", "drop_held_as_real"], "after": [LOG, "end_turn_no_speech", "start_waiting"]},
    # -- answering: one reply task streams, synthesises and plays across THINKING and SPEAKING;
    #    it fires start_speaking itself when the first answer audio is audible (a hand-over).
    {"trigger": "start_speaking", "source": THINKING, "dest": SPEAKING, "after": [LOG]},
    {"trigger": "done", "source": ANSWERING, "dest": IDLE, "conditions": ["saying"],
     "before": ["cancel_state_tasks"], "after": [LOG, "end_turn_said", "start_waiting"]},
    # the follow-up window: after an answer, listen again without a wake word (no earcon); the
    # answered turn closes first, so here turn_finished comes before the state_changed line
    {"trigger": "done", "source": ANSWERING, "dest": LISTENING, "conditions": ["follow_up_open"],
     "before": ["cancel_state_tasks"], "after": ["end_turn_answered", "start_follow_up", LOG]},
    {"trigger": "done", "source": ANSWERING, "dest": IDLE,
     "before": ["cancel_state_tasks"], "after": [LOG, "end_turn_answered", "start_waiting"]},
    # -- barge-in: the user cuts in (by voice, the button or the API) and the robot listens again.
    #    In pause mode an interruption heard by the microphone holds the answer until it proves
    #    real; otherwise it is cancelled.
    {"trigger": "barge_in", "source": ANSWERING, "dest": HELD, "conditions": ["answer_can_be_held"],
     "before": ["hold_answer", "cancel_state_tasks"], "after": ["start_listening", "start_resume_deadline", LOG]},
    {"trigger": "barge_in", "source": ANSWERING, "dest": LISTENING,
     "before": ["cancel_state_tasks", "flush_speaker"], "after": ["start_listening", LOG, "end_interrupted_turn"]},
    # a false interruption (a cough, "嗯"): the held answer plays on
    {"trigger": "resume", "source": HELD, "dest": SPEAKING,
     "before": ["cancel_state_tasks"], "after": ["resume_answer", LOG]},
    # the interruption went on too long to be false: drop the answer, keep listening (hand-over).
    # Nothing runs before, so the state is LISTENING at once: the listening task, judging what it
    # heard, then sees no held answer to resume (the dropping itself awaits, in after).
    {"trigger": "resume_deadline", "source": HELD, "dest": LISTENING, "after": [LOG, "drop_held_answer"]},
    # -- stop: a stop word (by_user), the button held, a control call, or shutdown ------------
    {"trigger": "stop", "source": NOT_HELD, "dest": IDLE, "conditions": ["said_by_user"],
     "before": ["cancel_state_tasks", "flush_speaker"], "after": [LOG, "end_turn_stop_word", "start_waiting"]},
    {"trigger": "stop", "source": HELD, "dest": IDLE, "conditions": ["said_by_user"],
     "before": ["cancel_state_tasks", "drop_held_as_real", "flush_speaker"],
     "after": [LOG, "end_turn_stop_word", "start_waiting"]},
    {"trigger": "stop", "source": NOT_HELD, "dest": IDLE,
     "before": ["cancel_state_tasks", "flush_speaker"], "after": [LOG, "end_turn_stopped", "start_waiting"]},
    {"trigger": "stop", "source": HELD, "dest": IDLE,
     "before": ["cancel_state_tasks", "drop_held_answer", "flush_speaker"],
     "after": [LOG, "end_turn_stopped", "start_waiting"]},
    # -- failure: a task raised, or a callback did (handle_error) ------------------------------
    {"trigger": "fail", "source": NOT_HELD, "dest": IDLE,
     "before": ["cancel_state_tasks"], "after": [LOG, "fail_turn", "start_waiting"]},
    {"trigger": "fail", "source": HELD, "dest": IDLE,
     "before": ["cancel_state_tasks", "drop_held_answer"], "after": [LOG, "fail_turn", "start_waiting"]},
]  # fmt: skip

TRIGGERS = tuple(dict.fromkeys(row["trigger"] for row in TRANSITIONS))


class Triggers:
    """The triggers, typed: the machine replaces these stubs on its model (model_override=True).
    With queued=True a trigger returns True whether or not it applied: look at ``state``."""

    state: State

    async def ready(self, **kwargs: Any) -> bool:
        raise NotImplementedError

    async def wake(self, **kwargs: Any) -> bool:
        raise NotImplementedError

    async def say(self, **kwargs: Any) -> bool:
        raise NotImplementedError

    async def heard(self, **kwargs: Any) -> bool:
        raise NotImplementedError

    async def no_speech(self, **kwargs: Any) -> bool:
        raise NotImplementedError

    async def speculate(self, **kwargs: Any) -> bool:
        raise NotImplementedError

    async def speculation_void(self, **kwargs: Any) -> bool:
        raise NotImplementedError

    async def start_speaking(self, **kwargs: Any) -> bool:
        raise NotImplementedError

    async def done(self, **kwargs: Any) -> bool:
        raise NotImplementedError

    async def barge_in(self, **kwargs: Any) -> bool:
        raise NotImplementedError

    async def resume(self, **kwargs: Any) -> bool:
        raise NotImplementedError

    async def resume_deadline(self, **kwargs: Any) -> bool:
        raise NotImplementedError

    async def stop(self, **kwargs: Any) -> bool:
        raise NotImplementedError

    async def fail(self, **kwargs: Any) -> bool:
        raise NotImplementedError

    async def trigger(self, name: str, **kwargs: Any) -> bool:
        raise NotImplementedError


class InOrderAsyncMachine(AsyncMachine):
    """An AsyncMachine that runs the callbacks of one list one after the other, in the order the
    table gives them (AsyncMachine runs them concurrently, which would let a row's log line
    overtake the task start before it)."""

    async def callbacks(self, funcs: Any, event_data: Any) -> None:  # type: ignore[override]  # the stubs type the sync one
        for func in funcs:
            await self.callback(func, event_data)


def log_ignored_trigger(event: EventData) -> None:
    """``finalize_event``: a trigger that does not apply in the current state (a late ``done``
    after a barge-in, say) is ignored; leave a trace at debug."""
    if event.transition is None and event.error is None:
        log.debug("trigger_ignored", trigger=event.event.name, state=state_name(event.state))


FINALIZE_EVENT: list[str | Callable[[EventData], None]] = [log_ignored_trigger, "forget_turn"]


def build_machine(model: Any) -> AsyncMachine:
    """Attach the conversation machine to ``model``.

    ``queued=True`` keeps the order of triggers fired from inside callbacks deterministic; the
    long work runs in tasks the model owns, so a queued trigger never waits behind audio.
    Triggers that do not apply in the current state are ignored (and logged at debug), and
    exceptions in callbacks go to ``model.handle_error``. ``prepare_event`` / ``finalize_event``
    let the model remember which turn an event started in.
    """
    return InOrderAsyncMachine(
        model=model,
        states=State,
        transitions=TRANSITIONS,
        initial=State.IDLE,
        queued=True,
        send_event=True,
        ignore_invalid_triggers=True,
        model_override=True,
        prepare_event="remember_turn",
        finalize_event=FINALIZE_EVENT,
        on_exception="handle_error",
        auto_transitions=False,
    )


def state_name(state: Any) -> str:
    """transitions hands over states and state names ("SPEAKING"); logs use the values ("speaking")."""
    state = getattr(state, "value", state)  # a transitions State wraps the enum member
    if isinstance(state, State):
        return state.value
    return State[state].value if state in State.__members__ else str(state)
