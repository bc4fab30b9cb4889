"""The wake sources and listeners the configuration asks for, each built only when configured
(its library is imported then): the hotword engine, the button, the status LEDs, the hooks and
the control API."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import AsyncExitStack
from typing import Any

import structlog

from daemon.config import Settings
from daemon.event_bus import EventBus
from daemon.health import Health
from daemon.hooks import HOOK_NAMES, Hooks
from hardware.gpio import LED_STATES
from states.model import Assistant
from states.ports import HotwordEngine

log = structlog.get_logger()


def make_wake_engine(s: Settings) -> HotwordEngine | None:
    """``[wake.hotword]``: a local engine (hardware/hotword/), the remote ASR, or none."""
    h = s.wake.hotword
    if h.engine == "off":
        return None
    if h.engine == "asr":
        from daemon.clients.asr_wake import AsrWakeSpotter

        return AsrWakeSpotter(s.asr, h.phrases)
    from hardware.hotword import make_hotword

    return make_hotword(h.engine, h.phrases, threshold=h.threshold, model_dir=h.model_dir)


def wake_summary(s: Settings) -> dict[str, Any]:
    """What can wake the daemon (``daemon_ready``, GET /status)."""
    h = s.wake.hotword
    return {
        "hotword": None if h.engine == "off" else {"engine": h.engine, "phrases": list(h.phrases)},
        "always": s.wake.always,
        "button": s.wake.button.pin,
        "control": s.control.listen,
        "follow_up_s": s.wake.follow_up_s,
    }


class Listeners:
    """The background work beside the conversation: button, LEDs, hooks, control API. ``health``
    is read by the control API's /status; whoever builds it feeds it the bus's events."""

    def __init__(
        self, settings: Settings, assistant: Assistant, bus: EventBus, health: Health, *, pin_factory: Any = None
    ) -> None:
        """``pin_factory``: gpiozero's (tests pass its MockFactory); None: gpiozero's own choice."""
        self.settings, self.assistant, self.bus, self.health = settings, assistant, bus, health
        self._pin_factory = pin_factory
        self._tasks: set[asyncio.Task[Any]] = set()
        self._after_cancel: list[Callable[[], Awaitable[None]]] = []

    def _spawn(self, work: Coroutine[Any, Any, Any], name: str) -> None:
        task = asyncio.create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background_task_failed", task=task.get_name(), error=repr(task.exception()))

    def _later(self, make: Callable[[], Coroutine[Any, Any, Any]], name: str) -> Callable[[], None]:
        """A callback for the event loop's thread that starts ``make()`` as a task."""
        return lambda: self._spawn(make(), name)

    async def start(self, stack: AsyncExitStack) -> None:
        s = self.settings
        stack.push_async_callback(self._cancel_all)
        if any(getattr(s.hooks, name) for name in HOOK_NAMES):
            hooks = Hooks(s.hooks)
            stack.push_async_callback(hooks.aclose)  # after the run task is cancelled (below)
            self._spawn(hooks.run(self.bus), "hooks")
        pins = {
            state: pin for state, pin in dataclasses.asdict(s.leds).items() if state in LED_STATES and pin is not None
        }
        if pins:
            from daemon.status_leds import drive_leds
            from hardware.gpio import StatusLeds

            leds = StatusLeds(pins, active_high=s.leds.active_high, pin_factory=self._pin_factory)
            stack.callback(leds.close)
            self._spawn(drive_leds(self.bus, leds), "leds")
        b = s.wake.button
        if b.pin is not None:
            from hardware.gpio import WakeButton

            button = WakeButton(
                b.pin,
                pull_up=b.pull_up,
                bounce_ms=b.bounce_ms,
                hold_s=b.hold_s,
                on_press=self._later(self.assistant.press, "button-press"),
                on_long_press=self._later(self.assistant.long_press, "button-hold"),
                loop=asyncio.get_running_loop(),
                pin_factory=self._pin_factory,
            )
            stack.callback(button.close)
        if s.control.listen is not None:
            from daemon.control.server import control_api
            from daemon.voice_control import AssistantControl

            control = AssistantControl(self.assistant, self.bus, self.health, wake_sources=wake_summary(s))
            await stack.enter_async_context(control_api(s.control, control))

    async def _cancel_all(self) -> None:
        self.bus.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=2.0)
        for close in self._after_cancel:
            await close()
