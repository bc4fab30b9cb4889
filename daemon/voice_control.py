"""The control API's view of the running conversation (``daemon.control.port.VoiceControl``)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from daemon.errors import AsrError, HardwareError, ServiceError
from daemon.event_bus import EventBus
from daemon.health import Health
from states.machine import State
from states.model import Assistant
from states.turn import report_fields
from states.wake_watch import Wake


class AssistantControl:
    """Control calls become the conversation's triggers; queued calls wait for IDLE."""

    def __init__(
        self,
        assistant: Assistant,
        bus: EventBus,
        health: Health,
        *,
        wake_sources: dict[str, Any],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.assistant = assistant
        self.bus = bus
        self._health = health
        self._wake_sources = wake_sources
        self._clock = clock
        self._started = clock()

    async def wake(self) -> None:
        a = self.assistant
        if a.state is State.IDLE:
            await a.wake(wake=Wake("control"))
        elif a.state in (State.THINKING, State.SPEAKING):
            await a.barge_in()

    async def listen(self) -> str:
        waiter = await self.assistant.request("wake", interrupt=True, wake=Wake("listen"), listen_only=True)
        turn = await waiter
        if turn.outcome == "failed":  # the API answers 503 for a device, 502 for a service
            message = f"the listening turn failed: {turn.failed_service}: {turn.failure}"
            if turn.failed_service == "audio":
                raise HardwareError(message)
            raise AsrError(message) if turn.failed_service == "asr" else ServiceError(message)
        return turn.transcript if turn.outcome == "listened" else ""

    async def say(self, text: str, *, interrupt: bool = False, wait: bool = False) -> None:
        waiter = await self.assistant.request("say", interrupt=interrupt, text=text)
        if wait:
            await waiter

    async def stop(self) -> None:
        await self.assistant.cancel_everything()

    def status(self) -> dict[str, Any]:
        a = self.assistant
        turn = a.turn
        last = a.last_turn
        return {
            "state": a.state.value,
            "turn": None
            if turn is None
            else {
                "turn_id": turn.id,
                "kind": turn.kind,
                "wake_source": turn.wake_source,
                "transcript": turn.transcript,
            },
            "last_turn": None if last is None else report_fields(last),
            "health": self._health.snapshot(),
            "wake": self._wake_sources,
            "uptime_s": round(self._clock() - self._started, 1),
        }
