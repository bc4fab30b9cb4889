"""Getting a device back after it failed: close the old one, then try to open a new one at
intervals until it works (a USB microphone or speaker unplugged and plugged back in).

Pure asyncio, no device code: the caller passes the function that opens a new device. Used by
the microphone feed (``states.mic_feed``) and the daemon's speaker (``daemon.reopening_speaker``).
Log events, named after the device (``mic``, ``speaker``): ``<name>_close_failed`` (debug),
``<name>_reopen_failed`` (warning, ``attempt``, ``error``; the first failure, then at most once a
minute with ``repeats``: see ``states.repeats``), ``<name>_recovered`` (``attempts``, ``failures``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

import structlog

from states.repeats import EVERY_S, RepeatedFault

log = structlog.get_logger()

T = TypeVar("T")


class Closable(Protocol):
    async def aclose(self) -> None: ...


@dataclass(frozen=True)
class Backoff:
    """How long to wait before each attempt: ``every_s`` first, then ``factor`` times longer each
    time, at most ``max_s``. ``factor`` 1 (the default) is a fixed interval."""

    every_s: float = 3.0
    factor: float = 1.0
    max_s: float = 60.0

    def __post_init__(self) -> None:
        if self.every_s < 0 or self.factor < 1.0 or self.max_s < self.every_s:
            raise ValueError(f"reopen backoff needs 0 <= every_s <= max_s and factor >= 1: {self}")

    def delay(self, attempt: int) -> float:
        """Seconds to wait before attempt number ``attempt`` (1, 2, ...)."""
        return min(self.max_s, self.every_s * self.factor ** (attempt - 1))


async def reopen_device(
    old: Closable,
    open_new: Callable[[], Awaitable[T]],
    *,
    name: str,
    backoff: Backoff,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    clock: Callable[[], float] = time.monotonic,
    log_every_s: float = EVERY_S,
) -> T:
    """Close ``old`` (its errors do not matter: it is gone), then call ``open_new`` after each
    ``backoff`` delay until it returns a device. Runs until cancelled. A failed attempt is logged
    the first time and then at most once per ``log_every_s`` (by ``clock``)."""
    try:
        await old.aclose()
    except Exception as exc:  # noqa: BLE001 - the old device is gone anyway
        log.debug(f"{name}_close_failed", error=str(exc))
    faults = RepeatedFault(f"{name}_reopen_failed", every_s=log_every_s, clock=clock)
    attempt = 0
    while True:
        attempt += 1
        await sleep(backoff.delay(attempt))
        try:
            new = await open_new()
        except Exception as exc:  # noqa: BLE001 - keep trying until the device is back
            faults.failed(attempt=attempt, error=str(exc))
            continue
        log.info(f"{name}_recovered", attempts=attempt, failures=faults.total)
        return new
