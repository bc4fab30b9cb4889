"""A speaker that survives its device: when the sound card fails (a USB speaker unplugged), the
turn ends with the error, and the device is reopened every few seconds until it is back."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog

from hardware.errors import HardwareError
from states.ports import Speaker
from states.reopen import Backoff, reopen_device

log = structlog.get_logger()

T = TypeVar("T")


class ReopeningSpeaker:
    """Forwards the Speaker port to the current device; replaces the device when it fails."""

    def __init__(
        self, first: Speaker, reopen: Callable[[], Awaitable[Speaker]], *, reopen_every_s: float = 3.0
    ) -> None:
        self._inner: Speaker | None = first
        self._reopen = reopen
        self._backoff = Backoff(every_s=reopen_every_s)
        self.sample_rate = first.sample_rate
        self._played_before = 0  # samples heard on devices that are gone
        self._task: asyncio.Task[None] | None = None
        self._error: HardwareError | None = None

    @property
    def device(self) -> Speaker | None:
        return self._inner

    def _current(self) -> Speaker:
        if self._inner is None:
            raise self._error or HardwareError("speaker: being reopened")
        return self._inner

    def _failed(self, exc: HardwareError) -> None:
        if self._inner is None:
            return
        log.error("speaker_failed", error=str(exc))
        self._played_before += self._inner.audio_samples_played
        old, self._inner, self._error = self._inner, None, exc
        self._task = asyncio.create_task(self._recover(old), name="speaker-reopen")

    async def _recover(self, old: Speaker) -> None:
        self._inner = await reopen_device(old, self._reopen, name="speaker", backoff=self._backoff)
        self._error = None

    async def _on_device(self, call: Callable[[Speaker], Awaitable[T]]) -> T:
        """``call`` on the current device; a HardwareError from it starts the reopening."""
        inner = self._current()
        try:
            return await call(inner)
        except HardwareError as exc:
            self._failed(exc)
            raise

    async def write(self, pcm: bytes) -> None:
        await self._on_device(lambda inner: inner.write(pcm))

    async def drain(self) -> None:
        await self._on_device(lambda inner: inner.drain())

    async def wait_audible(self) -> float:
        return await self._on_device(lambda inner: inner.wait_audible())

    def flush(self) -> None:
        if self._inner is not None:
            self._inner.flush()

    def pause(self) -> None:
        if self._inner is not None:
            self._inner.pause()

    def resume(self) -> None:
        if self._inner is not None:
            self._inner.resume()

    @property
    def audio_samples_played(self) -> int:
        return self._played_before + (self._inner.audio_samples_played if self._inner is not None else 0)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task})
        if self._inner is not None:
            await self._inner.aclose()
