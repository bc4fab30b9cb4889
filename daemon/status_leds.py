"""The status LEDs follow the conversation's state (``state_changed`` events on the bus)."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, Protocol

from daemon.event_bus import EventBus, Subscription


class StateLights(Protocol):
    """What shows the state: ``hardware.gpio.StatusLeds``."""

    def show(self, state: str) -> None: ...


def drive_leds(bus: EventBus, leds: StateLights) -> Coroutine[Any, Any, None]:
    """Show ``idle``, then each ``state_changed`` event's ``dst``, until the bus closes.

    It subscribes and shows idle when called, not when first awaited, so that no event emitted
    between ``asyncio.create_task(drive_leds(...))`` and the task's start is missed.
    """
    subscription = bus.subscribe()
    leds.show("idle")
    return _follow(bus, subscription, leds)


async def _follow(bus: EventBus, subscription: Subscription, leds: StateLights) -> None:
    try:
        async for event in subscription:
            if event.name == "state_changed":
                leds.show(str(event.fields.get("dst")))
    finally:
        bus.unsubscribe(subscription)
