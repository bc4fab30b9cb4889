"""The reply task's job for one turn: speak the answer to a question and keep the conversation's
history true to what the user heard."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from states.events import TurnTimes
from states.history import Conversation
from states.ports import LlmClient, Speaker, TtsClient
from states.reply import ReplyProgress, speak_reply
from states.speech_text import SpeechText, SpeechTextSettings
from states.turn import Turn


async def answer_question(
    question: str,
    *,
    turn: Turn,
    conversation: Conversation,
    llm: LlmClient,
    tts: TtsClient,
    speaker: Speaker,
    settings: SpeechTextSettings,
    clock: Callable[[], float],
    on_audible: Callable[[], Awaitable[None]],
    on_clause: Callable[[str], None] | None = None,
    times: TurnTimes | None = None,
) -> None:
    """Speak the answer; fill in ``turn.reply`` and the history. Cancelled, or failing part-way (a
    failing service raises after what arrived was spoken), it records only what was played, marked
    as cut off. ``times``: where the answer's moments are recorded (default ``turn.times``; a
    speculative answer keeps its own until it is played)."""
    messages = conversation.messages_for(question, clock())
    progress = ReplyProgress()
    played_before = speaker.audio_samples_played
    try:
        outcome = await speak_reply(
            llm=llm,
            tts=tts,
            speaker=speaker,
            text=SpeechText(settings),
            messages=messages,
            times=turn.times if times is None else times,
            clock=clock,
            on_audible=on_audible,
            progress=progress,
            on_clause=on_clause,
        )
    except BaseException:
        # Interrupted, or a service failed part-way: what the user heard is the reply, whatever
        # ended the turn. The model should know it was cut off, not that it said all it meant to.
        turn.reply = progress.heard(speaker.audio_samples_played - played_before)
        if turn.reply:
            said = turn.reply if turn.reply.endswith("…") else turn.reply + "…"
            conversation.record(question, said, clock())
        raise
    turn.reply, turn.truncated, turn.finish_reason = outcome.spoken, outcome.truncated, outcome.finish_reason
    conversation.record(question, outcome.spoken, clock())
