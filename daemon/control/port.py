"""What the control API asks of the daemon: the one seam between the HTTP server and the
conversation. ``daemon.voice_control`` implements it; tests use a fake."""

from __future__ import annotations

from typing import Any, Protocol

from daemon.event_bus import EventBus


class Busy(Exception):
    """The call cannot be served now (the daemon is shutting down); the API answers 409."""


class VoiceControl(Protocol):
    bus: EventBus
    """Subscribe for GET /events; metrics subscribe too."""

    async def wake(self) -> None:
        """POST /wake: idle: start listening (no wake word). Thinking or speaking: stop the answer
        and listen (a barge-in by hand). Already listening: nothing."""
        ...

    async def listen(self) -> str:
        """GET /listen: stop whatever runs, listen at once, return the recognised text without
        answering it ("" when nobody spoke or nothing was recognised). Raises on a failed turn."""
        ...

    async def say(self, text: str, *, interrupt: bool = False, wait: bool = False) -> None:
        """POST /say and POST /display: speak ``text`` through the TTS (not the LLM). Not
        ``interrupt``: after the current answer; ``interrupt``: cut in now. ``wait``: return once it
        has been spoken (or was cut), else once queued."""
        ...

    async def stop(self) -> None:
        """POST /stop: cancel everything, go idle."""
        ...

    def status(self) -> dict[str, Any]:
        """GET /status: JSON-ready ``{"state", "turn", "last_turn", "health", "wake", "uptime_s"}``."""
        ...
