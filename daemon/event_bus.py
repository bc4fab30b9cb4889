"""The daemon's events, fanned out to whoever listens: /events (SSE), hooks, metrics, LEDs.

The conversation emits events (``states.ports.EventSink``); each subscriber reads them from its own
bounded queue, so a slow subscriber (a stalled HTTP client) never slows the conversation or the
others: when its queue is full, its oldest events are dropped and counted. Event names and fields
are listed in the README ("Events").
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import structlog

log = structlog.get_logger()

DEFAULT_QUEUE = 256


@dataclass(frozen=True)
class Event:
    name: str
    fields: dict[str, Any]
    seq: int
    """1, 2, 3 ... in the order emitted, across all events of this daemon's life."""
    time: float
    """Wall-clock Unix time (seconds) it was emitted."""

    def as_dict(self) -> dict[str, Any]:
        """The JSON form: ``{"event": name, "seq": n, "time": t, **fields}``."""
        return {"event": self.name, "seq": self.seq, "time": round(self.time, 3), **self.fields}


@dataclass
class Subscription:
    """One subscriber's queue. Iterate it (async) for events; ``dropped`` counts those lost to overflow."""

    maxsize: int
    _events: deque[Event] = field(default_factory=deque)
    _ready: asyncio.Event = field(default_factory=asyncio.Event)
    _closed: bool = False
    dropped: int = 0

    def put(self, event: Event) -> None:
        if len(self._events) >= self.maxsize:
            self._events.popleft()
            self.dropped += 1
        self._events.append(event)
        self._ready.set()

    def close(self) -> None:
        self._closed = True
        self._ready.set()

    async def get(self) -> Event | None:
        """The next event; None once closed (and drained)."""
        while not self._events:
            if self._closed:
                return None
            self._ready.clear()
            await self._ready.wait()
        return self._events.popleft()

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Event]:
        while (event := await self.get()) is not None:
            yield event


class EventBus:
    """An ``EventSink`` with subscribers. Emitting costs one append per subscriber."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._subscribers: list[Subscription] = []
        self._seq = itertools.count(1)
        self._clock = clock
        self.last: dict[str, Event] = {}
        """The latest event of each name (GET /status)."""

    def emit(self, event: str, /, **fields: object) -> None:
        item = Event(event, dict(fields), next(self._seq), self._clock())
        self.last[event] = item
        for subscriber in self._subscribers:
            subscriber.put(item)

    def subscribe(self, *, maxsize: int = DEFAULT_QUEUE) -> Subscription:
        subscription = Subscription(maxsize=maxsize)
        self._subscribers.append(subscription)
        return subscription

    def follow(self, handle: Callable[[Event], None]) -> Coroutine[Any, Any, None]:
        """A coroutine that hands every event to ``handle`` until the bus closes (or the task
        running it is cancelled). It subscribes when called, not when first awaited, so that no
        event emitted between ``asyncio.create_task(bus.follow(...))`` and the task's start is
        missed."""
        return self._follow(self.subscribe(), handle)

    async def _follow(self, subscription: Subscription, handle: Callable[[Event], None]) -> None:
        try:
            async for event in subscription:
                handle(event)
        finally:
            self.unsubscribe(subscription)

    def unsubscribe(self, subscription: Subscription) -> None:
        subscription.close()
        if subscription in self._subscribers:
            self._subscribers.remove(subscription)
            if subscription.dropped:
                log.warning("events_dropped", count=subscription.dropped)

    def close(self) -> None:
        """Shutdown: every subscriber's iteration ends once it has read what is queued."""
        for subscription in list(self._subscribers):
            subscription.close()
        self._subscribers.clear()
