"""One wake-to-idle exchange, and its report (``turn_failed``, ``turn_finished``, ``on_turn_end``)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import structlog

from states.events import TurnTimes
from states.ports import EventSink

log = structlog.get_logger()


@dataclass
class Turn:
    """One wake-to-idle exchange, as ``turn_finished`` reports it."""

    id: str
    times: TurnTimes = field(default_factory=TurnTimes)
    transcript: str = ""
    reply: str = ""
    outcome: str = "open"
    """answered | no_speech | failed | interrupted | stop_word | stopped | listened | said"""
    kind: str = "question"
    """question (heard, then answered) | listen (GET /listen: heard, not answered) | say (a given text spoken)"""
    wake_source: str | None = None
    """hotword | button | control | always | on_start | follow_up | listen | say | barge_in"""
    wake_word: str | None = None
    barge_in_ms: int | None = None
    """From the onset of the user's interrupting speech to the answer falling silent."""
    waiter: asyncio.Future[Turn] | None = field(default=None, repr=False, compare=False)
    """Resolved with the turn when it finishes (a control call waiting for it)."""
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
    speculations: int = 0
    """Answers started speculatively in this turn, on a pause of the user (states/speculation.py)."""
    speculation_played_first: bool | None = None
    """The answer played was speculative: True when it was the turn's first speculation (none was
    dropped before it). None: the answer played, if any, was not speculative."""

    @property
    def ok(self) -> bool:
        return self.outcome in ("answered", "no_speech", "interrupted", "stop_word", "listened", "said")


def decide_cancel(turn: Turn, at: float, reason: str) -> None:
    """Record the decision to cut ``turn``'s running answer (the first one counts)."""
    if turn.cancelled_at is None:
        turn.cancelled_at, turn.cancel_reason = at, reason
        log.debug("reply_cancel_decided", turn_id=turn.id, reason=reason)


class TurnReport:
    """Closes turns: logs them and hands them to ``on_turn_end`` (the daemon's exit code, tests)."""

    def __init__(
        self, on_turn_end: Callable[[Turn], Awaitable[None] | None] | None, events: EventSink | None = None
    ) -> None:
        self._on_turn_end = on_turn_end
        self._events = events
        self.last: Turn | None = None
        """The last finished turn (GET /status)."""

    def failed(self, turn: Turn, error: BaseException | None) -> None:
        """Record why ``turn`` failed (``finished(turn, "failed")`` closes it)."""
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
        if self._events is not None:
            self._events.emit("turn_failed", turn_id=turn.id, service=turn.failed_service, reason=turn.failure)

    async def finished(self, turn: Turn, outcome: str, *, interrupted: bool = False) -> None:
        turn.outcome, turn.interrupted = outcome, interrupted
        self.last = turn
        fields = report_fields(turn)
        log.info("turn_finished", **fields)
        if self._events is not None:
            self._events.emit("turn_finished", **fields)
        if turn.waiter is not None and not turn.waiter.done():
            turn.waiter.set_result(turn)
        if self._on_turn_end is not None:
            result = self._on_turn_end(turn)
            if result is not None:
                await result


def report_fields(turn: Turn) -> dict[str, object]:
    """What ``turn_finished`` says of a turn (the log line, the event, GET /status)."""
    return {
        "turn_id": turn.id,
        "outcome": turn.outcome,
        "transcript": turn.transcript,
        "reply": turn.reply,
        "interrupted": turn.interrupted,
        "truncated": turn.truncated,
        "finish_reason": turn.finish_reason,
        "wake_source": turn.wake_source,
        **turn.times.latencies_ms(),
        "barge_in_ms": turn.barge_in_ms,
        "speculations": turn.speculations,
        "speculation_played_first": turn.speculation_played_first,
    }
