"""Each service's and device's health, as GET /status and systemd's STATUS line show it: the
start-up probes, then the turns' events (a failure names its service; an answered turn proves all
three services), a service marked down or back up (``service_down``/``service_up``, from its
guard: daemon/clients/guarded.py), and the devices. One instance, fed by one follower of the
bus, serves both. With the guards, a service's entry also shows since when it is down and each
of its endpoints."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from daemon.clients.guarded import ServiceGuard
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
    def __init__(
        self,
        feed: MicFeed | None = None,
        *,
        guards: Mapping[str, ServiceGuard] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._feed = feed
        self._guards = dict(guards or {})
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
        elif event.name in ("service_down", "service_up"):
            service = self.services.setdefault(str(event.fields.get("service")), ServiceHealth())
            if event.name == "service_down":
                service.ok, service.last_error = False, str(event.fields.get("error"))
                service.last_error_time = event.time
            else:
                service.ok, service.last_ok_time = True, event.time
        elif event.name == "turn_finished":
            for name in PROVEN_BY.get(str(event.fields.get("outcome")), ()):
                service = self.services[name]
                service.ok, service.last_ok_time = True, event.time

    def endpoints_up(self, name: str) -> tuple[int, int] | None:
        """(endpoints up, endpoints) of a guarded service with several endpoints; else None."""
        guard = self._guards.get(name)
        if guard is None or len(guard.endpoints) < 2:
            return None
        return sum(e.up for e in guard.endpoints), len(guard.endpoints)

    def snapshot(self) -> dict[str, Any]:
        out: dict[str, Any] = {name: vars(health).copy() for name, health in self.services.items()}
        for name, guard in self._guards.items():
            out.setdefault(name, {}).update(guard.snapshot())
        if self._feed is not None:
            out["microphone"] = {
                "ok": self._feed.last_error is None,
                "last_error": self._feed.last_error,
                "dropped_s": round(self._feed.dropped_bytes / 32000, 2),
            }
        return out
