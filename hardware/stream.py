"""The lifecycle every device adapter shares: ``open()`` once, use, ``aclose()`` once, and the
HardwareError that names the device when it is used out of turn or has failed; and the wake-up
that lets callers wait for a device's state to change."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Self

from hardware.errors import HardwareError

Clock = Callable[[], float]
"""Monotonic seconds: ``time.monotonic`` unless a test drives time."""
Sleep = Callable[[float], Awaitable[None]]


class DeviceStream:
    """Base of the microphones and speakers: idempotent ``open``/``aclose``, ``async with``, checks.

    A subclass gives ``name`` (``"microphone 'wav:q.wav'"``), ``is_open`` (its device is running),
    ``_open()`` and ``_close()``. ``_failure``, once set, is raised by every later use. ``_use``
    is the verb of the errors (``"read after close"``, ``"used before open()"``).
    """

    _use = "used"

    def __init__(self) -> None:
        self._closed = False
        self._failure: HardwareError | None = None

    @property
    def name(self) -> str:
        raise NotImplementedError

    @property
    def is_open(self) -> bool:
        raise NotImplementedError

    async def _open(self) -> None:
        raise NotImplementedError

    async def _close(self) -> None:
        raise NotImplementedError

    async def open(self) -> None:
        """Start the device. Idempotent; an error after ``aclose()``."""
        if self._closed:
            raise HardwareError(f"{self.name}: already closed")
        if self.is_open:
            return
        await self._open()

    async def aclose(self) -> None:
        """Stop the device. Idempotent."""
        if self._closed:
            return
        self._closed = True
        await self._close()

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def _check_usable(self) -> None:
        if self._failure is not None:
            raise self._failure
        if self._closed:
            raise HardwareError(f"{self.name}: {self._use} after close")
        if not self.is_open:
            raise HardwareError(f"{self.name}: {self._use} before open()")


class Changes:
    """Wakes everyone waiting in ``wait_until`` whenever the state they watch may have changed."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        """Wake every waiter; each re-checks its condition."""
        self._event.set()
        self._event = asyncio.Event()

    async def wait_until(
        self,
        ready: Callable[[], bool],
        check: Callable[[], None],
        *,
        watch_s: float | None = None,
        on_quiet: Callable[[], None] | None = None,
    ) -> None:
        """Return once ``ready()``; ``check()`` (which raises) before each wait. With ``watch_s``,
        ``on_quiet()`` runs after every ``watch_s`` without a change (a device that fell silent)."""
        while not ready():
            check()
            event = self._event
            if watch_s is None:
                await event.wait()
                continue
            try:
                async with asyncio.timeout(watch_s):  # not wait_for: in 3.11 it can swallow a cancel
                    await event.wait()
            except TimeoutError:
                if on_quiet is not None:
                    on_quiet()  # only after a quiet wait: a busy loop is not a stalled device


class ClockedStream(DeviceStream):
    """A stand-in device on the wall clock (a WAV file, the simulated room): its time line starts
    when it is opened, at ``opened_at`` (file offset 0), and runs on ``clock``/``sleep``."""

    def __init__(self, *, clock: Clock, sleep: Sleep) -> None:
        super().__init__()
        self._clock = clock
        self._sleep = sleep
        self._t0: float | None = None

    @property
    def is_open(self) -> bool:
        return self._t0 is not None

    @property
    def opened_at(self) -> float | None:
        """Clock time of ``open()``: file offset 0."""
        return self._t0
