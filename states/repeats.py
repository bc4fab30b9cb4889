"""A fault that recurs every few seconds (a microphone unplugged, a wait that keeps failing) is
logged once, then at most once per ``every_s`` with ``repeats=N``, and once more when it ends.

Usage::

    faults = RepeatedFault("mic_reopen_failed")
    faults.failed(error=str(exc))             # the first time, and then once a minute
    faults.recovered("mic_recovered")         # failures=<total>, only if anything failed
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import structlog

log = structlog.get_logger()

EVERY_S = 60.0
_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}


class RepeatedFault:
    """The log lines of one recurring fault: ``event`` at warning (or ``level``)."""

    def __init__(
        self,
        event: str,
        *,
        every_s: float = EVERY_S,
        level: str = "warning",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if every_s < 0:
            raise ValueError(f"RepeatedFault({event!r}) needs every_s >= 0, not {every_s}")
        if level not in _LEVELS:
            raise ValueError(f"RepeatedFault({event!r}): level {level!r} is not one of {sorted(_LEVELS)}")
        self.event = event
        self.every_s = every_s
        self._level = level
        self._clock = clock
        self._logged_at: float | None = None
        self.total = 0
        """Failures since the last recovery."""
        self.unlogged = 0
        """Failures since the last line written."""

    def failed(self, **fields: Any) -> bool:
        """Count one failure; log it if it is the first or ``every_s`` has passed since the last
        line (with ``repeats``: the failures that line stands for). True when a line was written."""
        self.total += 1
        self.unlogged += 1
        now = self._clock()
        if self._logged_at is not None and now - self._logged_at < self.every_s:
            return False
        if self._logged_at is not None:
            fields["repeats"] = self.unlogged
        log.log(_LEVELS[self._level], self.event, **fields)
        self._logged_at = now
        self.unlogged = 0
        return True

    def recovered(self, event: str, **fields: Any) -> None:
        """The fault is over: log ``event`` (info) with ``failures`` (the total), if anything
        failed, and start afresh."""
        if self.total:
            log.info(event, failures=self.total, **fields)
        self.total = 0
        self.unlogged = 0
        self._logged_at = None
