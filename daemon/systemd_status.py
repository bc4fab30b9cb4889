"""What ``systemctl status`` shows (STATUS=, kept current from the event bus) and the watchdog
that is fed only while the audio loop is alive."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import structlog

from daemon.event_bus import Event
from daemon.health import Health
from daemon.systemd_notify import Notifier
from states.mic_feed import MicFeed

log = structlog.get_logger()

MIC_STALE_S = 2.0
"""A microphone that delivered no block for this long is hung (blocks come every 20-30 ms; a
failed device is retried every 3 s, and a reopen that works within the watchdog interval is fine)."""


class StatusLine:
    """One short line: ``idle | asr up, llm down, tts up 1/2 | last first audio 412 ms`` (1/2:
    one of two endpoints is up).

    The services' states are ``health``'s (the start-up probes, then the turns): whoever feeds
    this line an event has fed it to ``health`` first."""

    def __init__(self, notifier: Notifier, health: Health) -> None:
        self._notifier = notifier
        self._health = health
        self.state = "starting"
        self.first_audio_ms: int | None = None

    def observe(self, event: Event) -> None:
        fields = event.fields
        if event.name == "state_changed":
            self.state = str(fields.get("dst"))
        elif event.name == "turn_finished":
            if isinstance(fields.get("first_audio_ms"), int):
                self.first_audio_ms = int(fields["first_audio_ms"])
        elif event.name not in ("turn_failed", "service_down", "service_up", "endpoint_down", "endpoint_up"):
            return
        self.publish()

    def text(self) -> str:
        parts = []
        for name in ("asr", "llm", "tts"):
            ok = self._health.services[name].ok
            part = f"{name} {'?' if ok is None else 'up' if ok else 'down'}"
            counts = self._health.endpoints_up(name)
            if counts is not None and ok and counts[0] < counts[1]:
                part += f" {counts[0]}/{counts[1]}"  # replicas: some are down
            parts.append(part)
        line = f"{self.state} | {', '.join(parts)}"
        if self.first_audio_ms is not None:
            line += f" | last first audio {self.first_audio_ms} ms"
        return line

    def publish(self) -> None:
        self._notifier.status(self.text())


async def feed_watchdog(
    notifier: Notifier,
    feed: MicFeed,
    interval_s: float,
    *,
    stale_after_s: float = MIC_STALE_S,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Send WATCHDOG=1 every ``interval_s`` while the microphone delivers blocks. This runs on the
    event loop itself, so a blocked loop sends nothing either: systemd then restarts us."""
    alive = True
    while True:
        await asyncio.sleep(interval_s)
        last = feed.last_block_at
        fresh = last is not None and clock() - last < max(stale_after_s, interval_s)
        if fresh:
            notifier.watchdog()
        if fresh != alive:
            alive = fresh
            if fresh:
                log.info("watchdog_resumed")
            else:
                log.error("watchdog_withheld", reason="microphone delivers no audio", silent_s=_ago(last, clock))


def _ago(last: float | None, clock: Callable[[], float]) -> float | None:
    return None if last is None else round(clock() - last, 1)
