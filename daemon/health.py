"""Each service's and device's health, as GET /status and systemd's STATUS line show it: the
start-up probes, then the turns' events (a failure names its service; an answered turn proves all
three services), and the devices. One instance, fed by one follower of the bus, serves both."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from daemon.event_bus import Event
from states.mic_feed import MicFeed

SERVICES = ("asr", "llm", "tts", "audio")
PROVEN_BY = {"answered": ("asr", "llm", "tts", "audio"), "listened": ("asr", "audio"), "said": ("tts", "audio")}


@dataclass
class ServiceHealth:
    ok: bool | None = None
    """None: not used yet."""
    last_error: str | None = None
    last_error_time: float | None = None
    last_ok_time: float | None = None


class Health:
    def __init__(self, feed: MicFeed | None = None, *, clock: Callable[[], float] = time.time) -> None:
        self._feed = feed
        self._clock = clock
        self.services = {name: ServiceHealth() for name in SERVICES}

    def probed(self, name: str, ok: bool) -> None:
        """A start-up probe's verdict on one service."""
        service = self.services.setdefault(name, ServiceHealth())
        service.ok = ok
        if ok:
            service.last_ok_time = self._clock()
        else:
            service.last_error, service.last_error_time = "down at start-up", self._clock()

    def observe(self, event: Event) -> None:
        if event.name == "turn_failed":
            service = self.services.setdefault(str(event.fields.get("service")), ServiceHealth())
            service.ok, service.last_error, service.last_error_time = False, str(event.fields.get("reason")), event.time
        elif event.name == "turn_finished":
            for name in PROVEN_BY.get(str(event.fields.get("outcome")), ()):
                service = self.services[name]
                service.ok, service.last_ok_time = True, event.time

    def snapshot(self) -> dict[str, Any]:
        out: dict[str, Any] = {name: vars(health).copy() for name, health in self.services.items()}
        if self._feed is not None:
            out["microphone"] = {
                "ok": self._feed.last_error is None,
                "last_error": self._feed.last_error,
                "dropped_s": round(self._feed.dropped_bytes / 32000, 2),
            }
        return out
