"""The conversation as data: the states, the transitions table, and the machine built from them."""

from __future__ import annotations

from enum import Enum
from typing import Any

from transitions.extensions.asyncio import AsyncMachine


class State(Enum):
    IDLE = "idle"
    LISTENING = "listening"
    THINKING = "thinking"
    SPEAKING = "speaking"


ACTIVE = [State.LISTENING, State.THINKING, State.SPEAKING]

TRANSITIONS: list[dict[str, Any]] = [
    # trigger          source                             dest
    {"trigger": "wake", "source": State.IDLE, "dest": State.LISTENING},
    {"trigger": "heard", "source": State.LISTENING, "dest": State.THINKING},
    {"trigger": "no_speech", "source": State.LISTENING, "dest": State.IDLE},
    # The reply task of THINKING fires this itself when the first answer audio is audible and
    # keeps running in SPEAKING (see HANDOVER_TRIGGERS).
    {"trigger": "start_speaking", "source": State.THINKING, "dest": State.SPEAKING},
    {"trigger": "done", "source": [State.THINKING, State.SPEAKING], "dest": State.IDLE},
    {"trigger": "fail", "source": ACTIVE, "dest": State.IDLE},
    # Barge-in: the user cuts in and the robot listens again. The reply is cancelled, or, in
    # pause mode, held until the interruption proves real; a false one (a cough, "嗯") resumes it.
    {"trigger": "barge_in", "source": [State.THINKING, State.SPEAKING], "dest": State.LISTENING},
    {"trigger": "resume", "source": State.LISTENING, "dest": State.SPEAKING},
    {"trigger": "stop", "source": ACTIVE, "dest": State.IDLE},
]

HANDOVER_TRIGGERS = frozenset({"start_speaking"})
"""Transitions that hand the running task to the next state instead of cancelling it: one reply
streams LLM text, synthesises and plays across THINKING and SPEAKING."""


def build_machine(model: Any) -> AsyncMachine:
    """Attach the conversation machine to ``model``.

    ``queued=True`` keeps the order of triggers fired from inside callbacks deterministic; the
    long work runs in tasks the model owns, so a queued trigger never waits behind audio.
    Triggers that do not apply in the current state are ignored (a late ``done`` after a
    barge-in, say), and exceptions in callbacks go to ``model.handle_error``.
    """
    return AsyncMachine(
        model=model,
        states=State,
        transitions=TRANSITIONS,
        initial=State.IDLE,
        queued=True,
        send_event=True,
        ignore_invalid_triggers=True,
        model_override=True,
        before_state_change="before_state_change",
        after_state_change="after_state_change",
        on_exception="handle_error",
        auto_transitions=False,
    )
