"""The one reopen loop: close the old device, wait, try, log, until a new device opens."""

from __future__ import annotations

import pytest
from structlog.testing import capture_logs

from states.reopen import Backoff, reopen_device


class Device:
    def __init__(self, *, close_fails: bool = False) -> None:
        self.closed = False
        self._close_fails = close_fails

    async def aclose(self) -> None:
        self.closed = True
        if self._close_fails:
            raise OSError("already gone")


async def test_the_old_device_is_closed_and_attempts_repeat_until_one_opens() -> None:
    waits: list[float] = []
    attempts = 0
    fresh = Device()

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    async def open_new() -> Device:
        nonlocal attempts
        attempts += 1
        if attempts < 4:
            raise OSError("no device matches 'USB'")
        return fresh

    old = Device(close_fails=True)
    with capture_logs() as logs:
        new = await reopen_device(
            old, open_new, name="mic", backoff=Backoff(every_s=0.5, factor=2.0, max_s=1.5), sleep=sleep
        )
    assert new is fresh and old.closed
    assert waits == [0.5, 1.0, 1.5, 1.5]  # doubled each time, capped
    events = [(e["event"], e.get("attempt", e.get("attempts"))) for e in logs]
    # The attempts follow each other within the minute: only the first failure is a line.
    assert events == [("mic_close_failed", None), ("mic_reopen_failed", 1), ("mic_recovered", 4)]
    assert logs[-1]["failures"] == 3


def test_the_default_backoff_is_a_fixed_interval_and_bad_ones_are_refused() -> None:
    assert [Backoff(every_s=3.0).delay(n) for n in (1, 2, 10)] == [3.0, 3.0, 3.0]
    with pytest.raises(ValueError):
        Backoff(every_s=1.0, factor=0.5)
    with pytest.raises(ValueError):
        Backoff(every_s=10.0, max_s=1.0)
