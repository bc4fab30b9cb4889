"""The status LEDs follow the conversation's state (``state_changed`` events on the bus)."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, Protocol

from daemon.event_bus import Event, EventBus


class StateLights(Protocol):
    """What shows the state: ``hardware.gpio.StatusLeds``."""

    def show(self, state: str) -> None: ...


def drive_leds(bus: EventBus, leds: StateLights) -> Coroutine[Any, Any, None]:
    """Show ``idle``, then each ``state_changed`` event's ``dst``, until the bus closes (it
    subscribes when called: see ``EventBus.follow``)."""

    def show(event: Event) -> None:
        if event.name == "state_changed":
            leds.show(str(event.fields.get("dst")))

    leds.show("idle")
    return bus.follow(show)
