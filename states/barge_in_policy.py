"""What the assistant does about a barge-in: duck the answer on a suspicion, and in pause mode hold
a cut answer (State.LISTENING_HELD) until the interruption proves real or false.

The detection itself (VAD, echo, thresholds) is in states/barge_in.py; the transitions are rows of
states/machine.py.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import structlog

from states.barge_in import BargeInSettings, Interruption, is_filler
from states.ports import Speaker
from states.state_tasks import Trigger
from states.turn import Turn

log = structlog.get_logger()


@dataclass
class HeldReply:
    """pause mode: an answer stopped by a barge-in that may still turn out false."""

    task: asyncio.Task[None]
    turn: Turn
    trigger: Trigger | None = None
    """What the reply task returned while held (it can only end by failing: playback is paused)."""

    def keep(self, trigger: Trigger) -> None:
        self.trigger = trigger


def can_hold(settings: BargeInSettings, interruption: Interruption | None) -> bool:
    """pause mode holds an answer cut by speech the microphone heard; a barge-in without an
    interruption (a button, an API call) has no speech to judge, so it cancels."""
    return interruption is not None and settings.mode == "pause"


def is_false_interruption(text: str, settings: BargeInSettings) -> bool:
    """A cough, "嗯", or nothing at all: the held answer goes on."""
    return is_filler(text, settings.fillers)


def duck_on_suspicion(speaker: Speaker, speech: bool, *, holding: bool) -> None:
    """Someone may be cutting in: stop the sound now, play on if it was nothing (unless an answer
    is held: then the barge-in decides)."""
    if speech:
        speaker.pause()
        log.info("barge_in_suspected")
    elif not holding:
        speaker.resume()
        log.info("barge_in_dismissed")
