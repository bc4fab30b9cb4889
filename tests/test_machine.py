"""The conversation machine itself, table-driven: every trigger from every state goes where the
spec below says, or is ignored and logged at debug; and the rows run the callbacks they must."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from typing import Any

import pytest
from structlog.testing import capture_logs
from transitions.core import EventData

from states.history import Conversation
from states.machine import TRANSITIONS, TRIGGERS, State, Triggers, build_machine
from states.model import Assistant, AssistantSettings
from tests.fakes import FakeAsr, FakeLlm, FakeMic, FakeSpeaker, FakeTts, FakeVad

IDLE, LISTENING, HELD = State.IDLE, State.LISTENING, State.LISTENING_HELD
THINKING, SPEAKING = State.THINKING, State.SPEAKING
ACTIVE = [LISTENING, HELD, THINKING, SPEAKING]

# The spec, written out by hand: (state, trigger) -> where it goes. Anything else is ignored.
GOES: dict[tuple[State, str], State] = {
    (IDLE, "ready"): IDLE,  # an internal transition: IDLE starts listening for a wake
    (IDLE, "wake"): LISTENING,
    (IDLE, "say"): THINKING,
    (LISTENING, "heard"): THINKING,
    (LISTENING, "speculate"): LISTENING,  # internal: a speculative answer starts, unplayed
    (LISTENING, "speculation_void"): LISTENING,  # internal: it is dropped
    (HELD, "heard"): THINKING,
    (LISTENING, "no_speech"): IDLE,
    (HELD, "no_speech"): IDLE,
    (THINKING, "start_speaking"): SPEAKING,
    (THINKING, "done"): IDLE,
    (SPEAKING, "done"): IDLE,
    (THINKING, "barge_in"): LISTENING,  # when the answer cannot be held: see the held cases below
    (SPEAKING, "barge_in"): LISTENING,
    (HELD, "resume"): SPEAKING,
    (HELD, "resume_deadline"): LISTENING,
    **{(state, "stop"): IDLE for state in ACTIVE},
    **{(state, "fail"): IDLE for state in ACTIVE},
}

INTERNAL = {
    (IDLE, "ready"): ["start_waiting"],
    (LISTENING, "speculate"): ["start_speculation"],
    (LISTENING, "speculation_void"): ["drop_speculation"],
}
CONDITIONS = {
    "answer_can_be_held",
    "said_by_user",
    "listen_only",
    "saying",
    "follow_up_open",
    "pause_is_a_question",
    "speculation_matches",
}
TURN_CLOSERS = {
    "end_turn_answered",
    "end_turn_listened",
    "end_turn_said",
    "end_turn_no_speech",
    "end_turn_stop_word",
    "end_turn_stopped",
    "end_interrupted_turn",
    "fail_turn",
}
HELD_ENDERS = {"drop_held_as_real", "drop_held_answer", "resume_answer"}


def _names(row: dict[str, Any], key: str) -> list[str]:
    value = row.get(key, [])
    return [value] if isinstance(value, str) else list(value)


CALLBACKS = {name for row in TRANSITIONS for key in ("before", "after") for name in _names(row, key)}


class RecordingModel(Triggers):
    """Stands in for the Assistant: records the callbacks the rows run, in order, and answers the
    conditions as told."""

    def __init__(self, state: State, *, can_hold: bool = False, **conditions: bool) -> None:
        self.calls: list[str] = []
        self.can_hold = can_hold
        self.conditions = conditions
        self.machine = build_machine(self)
        self.machine.set_state(state, model=self)

    def answer_can_be_held(self, event: EventData) -> bool:
        return self.can_hold

    def said_by_user(self, event: EventData) -> bool:
        return bool(event.kwargs.get("by_user"))

    def listen_only(self, event: EventData) -> bool:
        return self.conditions.get("listen_only", False)

    def saying(self, event: EventData) -> bool:
        return self.conditions.get("saying", False)

    def follow_up_open(self, event: EventData) -> bool:
        return self.conditions.get("follow_up_open", False)

    def pause_is_a_question(self, event: EventData) -> bool:
        return self.conditions.get("pause_is_a_question", True)

    def speculation_matches(self, event: EventData) -> bool:
        return self.conditions.get("speculation_matches", False)

    def remember_turn(self, event: EventData) -> None:
        pass

    def forget_turn(self, event: EventData) -> None:
        pass

    def handle_error(self, event: EventData) -> None:
        raise AssertionError(f"a callback raised: {event.error!r}")

    def __getattr__(self, name: str) -> Callable[[EventData], None]:
        if name not in CALLBACKS:
            raise AttributeError(name)
        return lambda event: self.calls.append(name)


async def fire(state: State, trigger: str, **kwargs: Any) -> tuple[RecordingModel, list[dict[str, Any]]]:
    names = ("listen_only", "saying", "follow_up_open", "pause_is_a_question", "speculation_matches")
    conditions = {name: kwargs.pop(name) for name in names if name in kwargs}
    model = RecordingModel(state, can_hold=kwargs.pop("can_hold", False), **conditions)
    with capture_logs() as logs:
        await model.trigger(trigger, **kwargs)
    return model, logs


@pytest.mark.parametrize(("state", "trigger"), list(itertools.product(State, TRIGGERS)))
async def test_every_trigger_from_every_state_goes_where_the_spec_says_or_is_ignored_and_logged(
    state: State, trigger: str
) -> None:
    model, logs = await fire(state, trigger)
    ignored = [e for e in logs if e["event"] == "trigger_ignored"]
    if (state, trigger) in INTERNAL:
        assert model.state is state and model.calls == INTERNAL[state, trigger]
    elif (state, trigger) in GOES:
        assert model.state is GOES[state, trigger]
        assert model.calls.count("log_state_changed") == 1
        assert ignored == []
    else:
        assert model.state is state and model.calls == []
        assert ignored == [{"event": "trigger_ignored", "trigger": trigger, "state": state.value, "log_level": "debug"}]


def test_the_spec_names_every_trigger_of_the_table() -> None:
    assert {trigger for _, trigger in GOES} == set(TRIGGERS)


@pytest.mark.parametrize("state", [THINKING, SPEAKING])
async def test_a_barge_in_that_can_hold_the_answer_listens_with_it_held(state: State) -> None:
    model, _ = await fire(state, "barge_in", can_hold=True)
    assert model.state is HELD
    assert model.calls == [
        "hold_answer",
        "cancel_state_tasks",
        "start_listening",
        "start_resume_deadline",
        "log_state_changed",
    ]


@pytest.mark.parametrize("state", [THINKING, SPEAKING])
async def test_a_barge_in_that_cannot_hold_the_answer_cancels_it_and_closes_its_turn(state: State) -> None:
    model, _ = await fire(state, "barge_in")
    assert model.calls == [
        "cancel_state_tasks",
        "flush_speaker",
        "start_listening",
        "log_state_changed",
        "end_interrupted_turn",
    ]


@pytest.mark.parametrize("state", ACTIVE)
@pytest.mark.parametrize(("by_user", "closer"), [(True, "end_turn_stop_word"), (False, "end_turn_stopped")])
async def test_stop_says_whether_the_user_said_it(state: State, by_user: bool, closer: str) -> None:
    model, _ = await fire(state, "stop", by_user=by_user)
    assert model.state is IDLE and model.calls[-3:] == ["log_state_changed", closer, "start_waiting"]
    assert "flush_speaker" in model.calls


@pytest.mark.parametrize(("state", "trigger"), sorted(set(GOES) - set(INTERNAL), key=str))
async def test_every_move_leaves_the_state_cleanly_and_logs_before_it_closes_a_turn(state: State, trigger: str) -> None:
    model, _ = await fire(state, trigger, can_hold=False)
    calls = model.calls
    handover = (state, trigger) in {(THINKING, "start_speaking"), (HELD, "resume_deadline")}
    assert ("cancel_state_tasks" in calls) is not handover
    assert (calls[-1] == "start_waiting") is (GOES[state, trigger] is IDLE)  # IDLE listens for a wake
    if state is HELD:  # leaving the held state ends the held answer, one way or another
        assert len(HELD_ENDERS & set(calls)) == 1
    closers = [c for c in calls if c in TURN_CLOSERS]
    assert len(closers) == (GOES[state, trigger] is IDLE or trigger == "barge_in")
    if closers:
        assert calls.index(closers[0]) > calls.index("log_state_changed")


@pytest.mark.parametrize("state", [THINKING, SPEAKING])
async def test_an_answer_followed_by_the_follow_up_window_closes_its_turn_and_listens_again(state: State) -> None:
    model, _ = await fire(state, "done", follow_up_open=True)
    assert model.state is LISTENING
    assert model.calls == ["cancel_state_tasks", "end_turn_answered", "start_follow_up", "log_state_changed"]


async def test_a_said_text_ends_as_said_and_never_opens_the_follow_up_window() -> None:
    model, _ = await fire(SPEAKING, "done", saying=True, follow_up_open=True)
    assert model.state is IDLE
    assert model.calls == ["cancel_state_tasks", "log_state_changed", "end_turn_said", "start_waiting"]


async def test_a_listen_only_turn_goes_idle_with_what_it_heard_unanswered() -> None:
    model, _ = await fire(LISTENING, "heard", listen_only=True)
    assert model.state is IDLE
    assert model.calls == ["cancel_state_tasks", "log_state_changed", "end_turn_listened", "start_waiting"]


async def test_a_pause_starts_a_speculative_answer_only_when_it_may() -> None:
    model, _ = await fire(LISTENING, "speculate", pause_is_a_question=False)
    assert model.state is LISTENING and model.calls == []


async def test_a_commit_that_matches_the_speculation_keeps_its_task_and_plays_it() -> None:
    model, _ = await fire(LISTENING, "heard", speculation_matches=True)
    assert model.state is THINKING
    # the state change is logged before playing releases the clauses already spoken (reply_clause)
    assert model.calls == ["keep_speculation", "cancel_state_tasks", "log_state_changed", "play_speculation"]


async def test_a_commit_that_does_not_match_cancels_the_speculation_and_answers_anew() -> None:
    model, _ = await fire(LISTENING, "heard", speculation_matches=False)
    assert model.calls == ["cancel_state_tasks", "start_answer", "log_state_changed"]


async def test_wake_and_say_cancel_the_idle_states_wake_watch() -> None:
    for trigger, starter in (("wake", "start_listening"), ("say", "start_saying")):
        model, _ = await fire(IDLE, trigger)
        assert model.calls == ["cancel_state_tasks", starter, "log_state_changed"]


def test_no_name_in_the_table_is_one_transitions_gives_the_model_itself() -> None:
    """transitions adds ``may_<trigger>``, ``is_<state>`` and ``to_<state>`` to the model: a
    condition of that name would call the machine's check, which calls the condition..."""
    named = CALLBACKS | {name for row in TRANSITIONS for name in _names(row, "conditions")}
    reserved = {f"may_{t}" for t in TRIGGERS} | {f"{p}_{s.name}" for s in State for p in ("is", "to")}
    assert named & reserved == set()


def test_every_name_in_the_table_is_a_callback_or_condition_of_the_assistant() -> None:
    named = CALLBACKS | {name for row in TRANSITIONS for name in _names(row, "conditions")}
    assert {name for row in TRANSITIONS for name in _names(row, "conditions")} == CONDITIONS
    assert [name for name in sorted(named) if not callable(getattr(Assistant, name, None))] == []
    assert [t for t in TRIGGERS if t not in vars(Triggers)] == []


async def test_resume_is_ignored_while_listening_with_nothing_held() -> None:
    speaker = FakeSpeaker()
    assistant = Assistant(
        mic=FakeMic([(60.0, False)]),
        speaker=speaker,
        vad=FakeVad(),
        asr=FakeAsr("unused"),
        llm=FakeLlm(),
        tts=FakeTts(),
        conversation=Conversation("be brief", max_turns=3, reset_after_s=60),
        settings=AssistantSettings(),
    )
    await assistant.wake()
    assert assistant.state is State.LISTENING
    with capture_logs() as logs:
        await assistant.resume()
    assert assistant.state is State.LISTENING and speaker.resumes == 0
    assert [e for e in logs if e["event"] in ("trigger_ignored", "state_changed")] == [
        {"event": "trigger_ignored", "trigger": "resume", "state": "listening", "log_level": "debug"}
    ]
    await asyncio.wait_for(assistant.aclose(), 10)
    assert assistant.state is State.IDLE
