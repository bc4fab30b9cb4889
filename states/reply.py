"""THINKING and SPEAKING: stream the LLM answer, clause by clause, through the TTS to the speaker.

Three things run at once, so that none waits for another:

    LLM deltas ──► SpeechText (clean, split) ──► clause queue ──► TTS ──► speaker queue ──► sound
       (producer: never blocked by playback)        (consumer: synthesises clause n+1 while n plays)

The first clause goes to the TTS the moment it is complete. The speaker's own queue is what lets
synthesis run ahead of playback.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import structlog

from states.events import ChatMessage, TurnTimes
from states.ports import LlmClient, Speaker, TtsClient
from states.speech_text import SpeechText, join_clauses

log = structlog.get_logger()

MAX_FAILED_CLAUSES_IN_A_ROW = 2
"""One bad sentence is skipped; two in a row means the TTS is down and the reply is abandoned."""


class ReplyTimeout(Exception):
    """The whole reply ran past ``reply.turn_timeout_s``. ``service`` is the stage still running
    then: "llm" while the answer was still streaming, else "tts" (synthesis or playback)."""

    def __init__(self, message: str, *, service: str) -> None:
        super().__init__(message)
        self.service = service


@dataclass
class ReplyProgress:
    """Which clause's audio ends where, in samples written to the speaker: with the speaker's
    count of samples played, it tells what the user actually heard when the reply is cut."""

    clauses: list[tuple[str, int, int]] = field(default_factory=list)
    """(clause, first sample, end sample) for every clause with audio, in order."""
    written: int = 0

    def heard(self, played: int) -> str:
        """The text whose audio was played: whole clauses, then the cut one up to where it stopped."""
        parts: list[str] = []
        for clause, start, end in self.clauses:
            if end <= played:
                parts.append(clause)
            elif start < played:
                cut = round(len(clause) * (played - start) / max(1, end - start))
                prefix = clause[:cut]
                if " " in prefix and not prefix.endswith(" "):
                    prefix = prefix[: prefix.rfind(" ")]  # a word half heard is not heard
                if prefix.strip():
                    parts.append(prefix.rstrip() + "…")
                break
        return join_clauses(parts)


@dataclass(frozen=True)
class ReplyOutcome:
    spoken: str
    """The text whose audio reached the speaker, clause by clause: what history records."""
    finish_reason: str | None
    truncated: bool
    """The answer was longer than what we speak (reply.max_reply_chars, or the LLM's own length cap)."""
    failed_clauses: int


async def speak_reply(
    *,
    llm: LlmClient,
    tts: TtsClient,
    speaker: Speaker,
    text: SpeechText,
    messages: Sequence[ChatMessage],
    times: TurnTimes,
    clock: Callable[[], float],
    on_audible: Callable[[], Awaitable[None]],
    progress: ReplyProgress | None = None,
    on_clause: Callable[[str], None] | None = None,
) -> ReplyOutcome:
    """Speak the answer to ``messages``. Raises the LLM or TTS error after speaking what arrived.

    ``on_audible`` is awaited once, when the first answer sample has been played. ``on_clause``
    is called with each clause as its first audio goes to the speaker. The whole of it is bounded
    by ``text.settings.turn_timeout_s``: past it the speaker is flushed and :class:`ReplyTimeout`
    raised (``progress`` then tells what was heard).
    """
    progress = progress if progress is not None else ReplyProgress()
    clauses: asyncio.Queue[str | None] = asyncio.Queue()
    spoken: list[str] = []
    llm_error: Exception | None = None
    finish_reason: str | None = None
    failed = 0
    llm_running = True

    async def produce() -> None:
        nonlocal llm_error, finish_reason, llm_running
        times.llm_request = clock()
        try:
            async with llm.stream_chat(messages) as stream:
                async for delta in stream:
                    if times.llm_first_token is None:
                        times.llm_first_token = clock()
                    for clause in text.feed(delta):
                        clauses.put_nowait(clause)
                    if text.done:  # the reply cap, or an end-of-turn token the server did not stop at
                        log.info("reply_cut", truncated=text.truncated)
                        break  # leaving the context closes the connection: the server stops generating
                if not text.done and stream.result is not None:
                    finish_reason = stream.result.finish_reason
            llm_running = False
        except Exception as exc:  # noqa: BLE001 - kept, and raised once the partial answer has been spoken
            llm_error = exc
            llm_running = False
        finally:
            for clause in text.finish():
                clauses.put_nowait(clause)
            clauses.put_nowait(None)

    async def watch_first_audio() -> None:
        times.first_audio = await speaker.wait_audible()
        await on_audible()

    async def synthesise(group: asyncio.TaskGroup) -> None:
        nonlocal failed
        in_a_row = 0
        last_error: Exception | None = None
        while (clause := await clauses.get()) is not None:
            got_audio = False
            clause_start = progress.written
            if times.tts_request is None:
                times.tts_request = clock()
            try:
                async with tts.synthesize(clause) as audio:
                    async for pcm in audio:
                        if not pcm:
                            continue
                        if times.tts_first_audio is None:
                            times.tts_first_audio = clock()
                            group.create_task(watch_first_audio(), name="first-audio")
                        if not got_audio:
                            progress.clauses.append((clause, clause_start, clause_start))
                            if on_clause is not None:
                                on_clause(clause)
                        got_audio = True
                        await speaker.write(pcm)
                        progress.written += len(pcm) // 2
                        progress.clauses[-1] = (clause, clause_start, progress.written)
            except Exception as exc:
                failed += 1
                in_a_row += 1
                last_error = exc
                if in_a_row >= MAX_FAILED_CLAUSES_IN_A_ROW:
                    raise  # the reply is abandoned: turn_failed names the error (one line, not two)
                log.warning("tts_clause_failed", clause=clause, error=str(exc), error_type=type(exc).__name__)
            else:
                in_a_row = 0
            if got_audio:  # a sentence cut short by the TTS was still partly heard
                spoken.append(clause)
        await speaker.drain()
        if last_error is not None and not spoken:
            raise last_error

    limit_s = text.settings.turn_timeout_s
    deadline = asyncio.timeout(limit_s)
    try:
        async with deadline, asyncio.TaskGroup() as group:
            group.create_task(produce(), name="llm")
            group.create_task(synthesise(group), name="tts")
    except ExceptionGroup as group_error:
        # produce() keeps its own error, so this is the TTS side (or a bug): surface it plainly.
        raise group_error.exceptions[0] from None
    except TimeoutError:
        if not deadline.expired():
            raise
        speaker.flush()  # the robot stops talking now; what was played stays heard
        service = "llm" if llm_running else "tts"
        log.warning("reply_timeout", limit_s=limit_s, service=service, clauses=len(progress.clauses))
        raise ReplyTimeout(
            f"reply not finished within {limit_s:g} s (reply.turn_timeout_s); {service} was still running",
            service=service,
        ) from None

    if llm_error is not None:
        raise llm_error
    return ReplyOutcome(
        spoken=join_clauses(spoken),
        finish_reason=finish_reason,
        truncated=text.truncated or finish_reason == "length",
        failed_clauses=failed,
    )
