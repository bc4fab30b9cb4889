"""One wake-to-idle exchange, and its report (``turn_failed``, ``turn_finished``, ``on_turn_end``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import structlog

from states.events import TurnTimes

log = structlog.get_logger()


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


def decide_cancel(turn: Turn, at: float, reason: str) -> None:
    """Record the decision to cut ``turn``'s running answer (the first one counts)."""
    if turn.cancelled_at is None:
        turn.cancelled_at, turn.cancel_reason = at, reason
        log.debug("reply_cancel_decided", turn_id=turn.id, reason=reason)


class TurnReport:
    """Closes turns: logs them and hands them to ``on_turn_end`` (the daemon's exit code, tests)."""

    def __init__(self, on_turn_end: Callable[[Turn], Awaitable[None] | None] | None) -> None:
        self._on_turn_end = on_turn_end

    @staticmethod
    def failed(turn: Turn, error: BaseException | None) -> None:
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

    async def finished(self, turn: Turn, outcome: str, *, interrupted: bool = False) -> None:
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
