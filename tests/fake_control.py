"""A VoiceControl for the control API's tests: records its calls, answers what it is told."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from daemon.event_bus import EventBus, Subscription


class WatchedBus(EventBus):
    """An EventBus that tells when someone subscribes: a test emits once a stream is open."""

    def __init__(self) -> None:
        super().__init__()
        self.subscribed = asyncio.Event()

    def subscribe(self, *, maxsize: int = 256) -> Subscription:
        subscription = super().subscribe(maxsize=maxsize)
        self.subscribed.set()
        return subscription


@dataclass
class FakeControl:
    """A VoiceControl that records its calls; ``listen`` answers ``heard``; ``fail`` is raised by every call."""

    bus: WatchedBus = field(default_factory=WatchedBus)
    calls: list[tuple[Any, ...]] = field(default_factory=list)
    heard: str = "what time is it"
    fail: BaseException | None = None

    def _call(self, *call: Any) -> None:
        self.calls.append(call)
        if self.fail is not None:
            raise self.fail

    async def wake(self) -> None:
        self._call("wake")

    async def listen(self) -> str:
        self._call("listen")
        return self.heard

    async def say(self, text: str, *, interrupt: bool = False, wait: bool = False) -> None:
        self._call("say", text, interrupt, wait)

    async def stop(self) -> None:
        self._call("stop")

    def status(self) -> dict[str, Any]:
        self._call("status")
        return {"state": "idle", "turn": None, "last_turn": {"outcome": "answered", "first_audio_ms": 412}}
