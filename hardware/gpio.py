"""A wake button and status LEDs on GPIO pins, through gpiozero.

gpiozero is imported inside the constructors, so a daemon without a button never loads it.
``pin_factory`` is gpiozero's pin factory: None lets gpiozero choose (``GPIOZERO_PIN_FACTORY``, else
lgpio, RPi.GPIO, pigpio, native); tests pass a ``gpiozero.pins.mock.MockFactory``.

gpiozero calls back in a thread of its own (the pin library's); ``WakeButton`` hands every event
to the asyncio loop with ``loop.call_soon_threadsafe`` and never runs the daemon's callbacks there.

Debouncing is done here, not by gpiozero: the pin libraries disagree on what ``bounce_time`` means
(lgpio and pigpio report an edge only once the level has been stable that long, which delays every
press by the bounce time; RPi.GPIO ignores edges for that long after one). ``WakeButton`` takes
the first press edge at once, for the lowest latency, and ignores a press that follows any edge
of the same button within ``bounce_ms``: the contact's chatter at press and at release.

Log events: ``button_opened``, ``button_pressed``, ``button_long_press`` (info), ``button_bounce``
(debug), ``status_leds_opened`` (info).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping
from typing import Any

import structlog

from hardware.errors import HardwareError

log = structlog.get_logger()

LED_STATES = ("idle", "listening", "thinking", "speaking")
"""The states that can have an LED of their own (``[leds]``)."""
SHARED_LEDS = {"listening_held": "listening"}
"""States shown on another state's LED."""


def _import_gpiozero(what: str) -> Any:
    try:
        import gpiozero
    except ImportError as exc:
        raise HardwareError(f"{what}: gpiozero is missing: pip install gpiozero") from exc
    return gpiozero


def _open_failed(what: str, exc: Exception) -> HardwareError:
    return HardwareError(f"{what}: cannot open the pin: {type(exc).__name__}: {exc}")


class WakeButton:
    """A push button on BCM pin ``pin``.

    ``on_press`` runs in the loop at press-down (each press, long ones too); ``on_long_press`` runs
    in the loop once the button has been held ``hold_s``. ``pull_up``: the button connects the pin
    to ground (pressed reads low); otherwise to 3.3 V (pressed reads high). ``clock`` (seconds,
    monotonic) dates the edges for debouncing.

    The hold is timed in the loop (``loop.call_later``), from the last press edge to the release,
    not by gpiozero's ``Button``: its hold thread cannot be stopped while the button is held, so
    closing a held button would block for up to the hold time.
    """

    def __init__(
        self,
        pin: int,
        *,
        pull_up: bool,
        bounce_ms: int,
        hold_s: float,
        on_press: Callable[[], None],
        on_long_press: Callable[[], None],
        loop: asyncio.AbstractEventLoop,
        pin_factory: Any = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if bounce_ms < 0:
            raise ValueError(f"button bounce_ms must be >= 0, got {bounce_ms}")
        if hold_s <= 0:
            raise ValueError(f"button hold_s must be > 0, got {hold_s}")
        self.name = f"button on GPIO{pin}"
        gpiozero = _import_gpiozero(self.name)
        self._on_press = on_press
        self._on_long_press = on_long_press
        self._loop = loop
        self._bounce_s = bounce_ms / 1000
        self._hold_s = hold_s
        self._clock = clock
        self._last_edge: float | None = None
        self._hold: asyncio.TimerHandle | None = None
        self._closed = False
        self.presses = 0
        """Presses handed to ``on_press`` (bounces not counted)."""
        self.bounces = 0
        """Press edges ignored as contact bounce."""
        try:
            self._input = gpiozero.DigitalInputDevice(pin, pull_up=pull_up, bounce_time=None, pin_factory=pin_factory)
        except Exception as exc:  # gpiozero raises many kinds: bad pin, pin in use, no pin library
            raise _open_failed(self.name, exc) from exc
        self._input.when_activated = self._pressed
        self._input.when_deactivated = self._released
        log.info("button_opened", pin=pin, pull_up=pull_up, bounce_ms=bounce_ms, hold_s=hold_s)

    # gpiozero's thread: date the edge, hand it to the loop --------------------------------

    def _pressed(self) -> None:
        now = self._clock()
        since = None if self._last_edge is None else now - self._last_edge
        self._last_edge = now
        self._post(self._down, since is not None and since < self._bounce_s)

    def _released(self) -> None:
        self._last_edge = self._clock()
        self._post(self._up)

    def _post(self, callback: Callable[..., None], *args: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: the daemon is stopping
            self._loop.call_soon_threadsafe(callback, *args)

    # the loop's thread -------------------------------------------------------------------

    def _down(self, bounce: bool) -> None:
        if self._closed:
            return
        if self._hold is None:
            self._hold = self._loop.call_later(self._hold_s, self._held)
        if bounce:
            self.bounces += 1
            log.debug("button_bounce", button=self.name)
            return
        self.presses += 1
        log.info("button_pressed", button=self.name)
        self._on_press()

    def _up(self) -> None:
        if self._hold is not None:
            self._hold.cancel()
            self._hold = None

    def _held(self) -> None:
        self._hold = None
        log.info("button_long_press", button=self.name, hold_s=self._hold_s)
        self._on_long_press()

    def close(self) -> None:
        """Release the pin. Call it in the loop's thread; no callback runs after it returns."""
        self._closed = True
        self._up()
        self._input.when_activated = None
        self._input.when_deactivated = None
        self._input.close()


class StatusLeds:
    """One LED per state, by BCM pin: ``pins`` maps state names (``LED_STATES``) to pins.

    States may share a pin (one "busy" LED for thinking and speaking). ``show(state)`` lights that
    state's LED and turns the others off; a state without an LED (or an unknown one) turns all off.
    ``active_high``: the pin drives the LED on when high (LED from the pin to ground).
    """

    def __init__(self, pins: Mapping[str, int], *, active_high: bool, pin_factory: Any = None) -> None:
        unknown = sorted(set(pins) - set(LED_STATES))
        if unknown:
            raise ValueError(f"status LEDs: unknown state {', '.join(unknown)}; known: {', '.join(LED_STATES)}")
        self._pin_of = dict(pins)
        self._leds: dict[int, Any] = {}
        self.lit: str | None = None
        """The state last shown, if it has an LED."""
        if not pins:
            return
        gpiozero = _import_gpiozero("status LEDs")
        try:
            for pin in sorted(set(pins.values())):
                try:
                    self._leds[pin] = gpiozero.LED(
                        pin, active_high=active_high, initial_value=False, pin_factory=pin_factory
                    )
                except Exception as exc:  # gpiozero raises many kinds: bad pin, pin in use, no pin library
                    states = "/".join(s for s, p in pins.items() if p == pin)
                    raise _open_failed(f"status LED ({states}) on GPIO{pin}", exc) from exc
        except HardwareError:
            self.close()
            raise
        log.info("status_leds_opened", pins=dict(pins), active_high=active_high)

    def show(self, state: str) -> None:
        pin = self._pin_of.get(SHARED_LEDS.get(state, state))
        for led_pin, led in self._leds.items():
            if led_pin == pin:
                led.on()
            else:
                led.off()
        self.lit = state if pin is not None else None

    def close(self) -> None:
        """Turn every LED off and release the pins."""
        for led in self._leds.values():
            led.off()
            led.close()
        self._leds.clear()
