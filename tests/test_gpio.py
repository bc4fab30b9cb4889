"""The wake button and the status LEDs on gpiozero's mock pins (no GPIO hardware here).

MockFactory pins call gpiozero back synchronously in the thread that drives them; the hold
timer runs in gpiozero's own thread. The tests wait on what the button hands to the loop.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from gpiozero.pins.mock import MockFactory

from daemon.event_bus import EventBus
from daemon.status_leds import drive_leds
from hardware.errors import HardwareError
from hardware.gpio import StatusLeds, WakeButton

ROOT = Path(__file__).resolve().parents[1]
PIN = 17
LED_PINS = {"idle": 5, "listening": 6, "thinking": 13, "speaking": 19}


@pytest.fixture
def factory() -> Iterator[MockFactory]:
    pins = MockFactory()
    yield pins
    pins.reset()


class Calls:
    """Counts a callback's calls, remembers the thread of each, and can be awaited."""

    def __init__(self) -> None:
        self.threads: list[int] = []
        self._queue: asyncio.Queue[None] = asyncio.Queue()

    def __call__(self) -> None:
        self.threads.append(threading.get_ident())
        self._queue.put_nowait(None)

    async def next(self) -> None:
        await asyncio.wait_for(self._queue.get(), 10)

    @property
    def count(self) -> int:
        return len(self.threads)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def drain(loop: asyncio.AbstractEventLoop) -> None:
    """Run every callback already handed to the loop (the loop runs them in order)."""
    done = loop.create_future()
    loop.call_soon_threadsafe(done.set_result, None)
    await done


def make_button(
    factory: MockFactory,
    press: Calls,
    long_press: Calls,
    *,
    pull_up: bool = True,
    bounce_ms: int = 20,
    hold_s: float = 30.0,
    clock: Callable[[], float] | None = None,
) -> WakeButton:
    extra: dict[str, Any] = {} if clock is None else {"clock": clock}
    return WakeButton(
        PIN,
        pull_up=pull_up,
        bounce_ms=bounce_ms,
        hold_s=hold_s,
        on_press=press,
        on_long_press=long_press,
        loop=asyncio.get_running_loop(),
        pin_factory=factory,
        **extra,
    )


async def test_a_press_calls_on_press_in_the_loop_thread_not_in_gpiozeros(factory: MockFactory) -> None:
    press, long_press = Calls(), Calls()
    button = make_button(factory, press, long_press)
    pin = factory.pin(PIN)
    driver: list[int] = []

    def push() -> None:
        driver.append(threading.get_ident())
        pin.drive_low()

    await asyncio.to_thread(push)
    await press.next()
    assert press.threads == [threading.get_ident()]
    assert driver[0] != threading.get_ident()
    button.close()
    assert long_press.count == 0


async def test_the_press_is_handed_over_not_called_in_the_driving_thread(factory: MockFactory) -> None:
    press, long_press = Calls(), Calls()
    button = make_button(factory, press, long_press)
    factory.pin(PIN).drive_low()  # from the loop's own thread: still posted, never called inline
    assert press.count == 0
    await press.next()
    assert press.count == 1
    button.close()


async def test_pull_down_wiring_presses_on_a_high_level(factory: MockFactory) -> None:
    press, long_press = Calls(), Calls()
    button = make_button(factory, press, long_press, pull_up=False)
    pin = factory.pin(PIN)
    pin.drive_low()
    await drain(asyncio.get_running_loop())
    assert press.count == 0
    pin.drive_high()
    await press.next()
    assert press.count == 1
    button.close()


async def test_a_long_press_calls_on_press_then_on_long_press_once(factory: MockFactory) -> None:
    press, long_press = Calls(), Calls()
    button = make_button(factory, press, long_press, hold_s=0.05)
    factory.pin(PIN).drive_low()
    await long_press.next()
    assert press.count == 1
    factory.pin(PIN).drive_high()
    await drain(asyncio.get_running_loop())
    assert (press.count, long_press.count) == (1, 1)
    button.close()


async def later_than(delay: float) -> None:
    """Wait until the loop has run every timer due within ``delay`` s from now (it runs them by due time)."""
    passed = asyncio.Event()
    asyncio.get_running_loop().call_later(delay, passed.set)
    await passed.wait()


async def test_a_short_press_is_not_a_long_press(factory: MockFactory) -> None:
    press, long_press = Calls(), Calls()
    button = make_button(factory, press, long_press, hold_s=0.05, bounce_ms=0)
    pin = factory.pin(PIN)
    pin.drive_low()
    pin.drive_high()  # released before hold_s
    await later_than(0.1)  # the hold timer, had it not been cancelled, was due before this
    assert (press.count, long_press.count) == (1, 0)
    pin.drive_low()  # this one is held
    await long_press.next()
    assert (press.count, long_press.count) == (2, 1)
    button.close()


async def test_closing_a_held_button_is_immediate_and_ends_its_hold(factory: MockFactory) -> None:
    press, long_press = Calls(), Calls()
    button = make_button(factory, press, long_press, hold_s=0.05)
    factory.pin(PIN).drive_low()
    await press.next()
    button.close()
    await later_than(0.1)
    await asyncio.to_thread(factory.pin(PIN).drive_high)
    factory.pin(PIN).drive_low()
    await drain(asyncio.get_running_loop())
    assert (press.count, long_press.count) == (1, 0)


async def test_contact_bounce_at_press_and_release_is_one_press(factory: MockFactory) -> None:
    press, long_press = Calls(), Calls()
    clock = FakeClock()
    button = make_button(factory, press, long_press, bounce_ms=20, clock=clock)
    pin = factory.pin(PIN)
    # (seconds after the previous edge, level): a press that chatters, a release that chatters,
    # then a clean second press 300 ms later.
    edges = [(0.0, False), (0.002, True), (0.003, False), (0.4, True), (0.005, False), (0.004, True)]
    edges += [(0.3, False), (0.1, True)]
    for step, level in edges:
        clock.now += step
        pin.drive_high() if level else pin.drive_low()
    await drain(asyncio.get_running_loop())
    assert (press.count, button.presses, button.bounces) == (2, 2, 2)
    button.close()


async def test_without_bounce_time_every_press_counts(factory: MockFactory) -> None:
    press, long_press = Calls(), Calls()
    clock = FakeClock()
    button = make_button(factory, press, long_press, bounce_ms=0, clock=clock)
    pin = factory.pin(PIN)
    for _ in range(3):
        clock.now += 0.001
        pin.drive_low()
        clock.now += 0.001
        pin.drive_high()
    await drain(asyncio.get_running_loop())
    assert press.count == 3
    button.close()


async def test_nothing_is_called_after_close(factory: MockFactory) -> None:
    press, long_press = Calls(), Calls()
    button = make_button(factory, press, long_press)
    button.close()
    pin = factory.pin(PIN)
    pin.drive_low()
    pin.drive_high()
    await drain(asyncio.get_running_loop())
    assert press.count == 0


async def test_a_button_pin_in_use_or_invalid_is_a_hardware_error_naming_it(factory: MockFactory) -> None:
    press, long_press = Calls(), Calls()
    button = make_button(factory, press, long_press)
    with pytest.raises(HardwareError, match=r"button on GPIO17: cannot open the pin: GPIOPinInUse"):
        make_button(factory, press, long_press)
    button.close()
    loop = asyncio.get_running_loop()
    with pytest.raises(HardwareError, match=r"button on GPIO99: cannot open the pin"):
        WakeButton(
            99,
            pull_up=True,
            bounce_ms=20,
            hold_s=1.0,
            on_press=press,
            on_long_press=press,
            loop=loop,
            pin_factory=factory,
        )


async def test_settings_out_of_range_are_refused(factory: MockFactory) -> None:
    press, long_press = Calls(), Calls()
    with pytest.raises(ValueError, match="bounce_ms"):
        make_button(factory, press, long_press, bounce_ms=-1)
    with pytest.raises(ValueError, match="hold_s"):
        make_button(factory, press, long_press, hold_s=0)


def test_without_gpiozero_the_button_and_leds_are_a_hardware_error_naming_the_pin() -> None:
    code = """
import asyncio, sys
sys.modules["gpiozero"] = None  # as if not installed
from hardware.errors import HardwareError
from hardware.gpio import StatusLeds, WakeButton
try:
    WakeButton(4, pull_up=True, bounce_ms=20, hold_s=1.0, on_press=print, on_long_press=print,
               loop=asyncio.new_event_loop())
except HardwareError as exc:
    print(exc)
try:
    StatusLeds({"idle": 5}, active_high=True)
except HardwareError as exc:
    print(exc)
print(StatusLeds({}, active_high=True).lit)  # no LEDs configured: gpiozero is not needed
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.splitlines() == [
        "button on GPIO4: gpiozero is missing: pip install gpiozero",
        "status LEDs: gpiozero is missing: pip install gpiozero",
        "None",
    ]


def lit(factory: MockFactory, pins: dict[str, int] = LED_PINS, *, active_high: bool = True) -> set[str]:
    """The states whose LED is on, read from the mock pins' levels."""
    return {state for state, pin in pins.items() if factory.pin(pin).state == active_high}


def test_leds_light_one_state_at_a_time(factory: MockFactory) -> None:
    leds = StatusLeds(LED_PINS, active_high=True, pin_factory=factory)
    assert lit(factory) == set()
    for state in ("idle", "listening", "thinking", "speaking"):
        leds.show(state)
        assert lit(factory) == {state}
    leds.show("listening_held")
    assert lit(factory) == {"listening"}
    assert leds.lit == "listening_held"
    leds.show("no_such_state")
    assert lit(factory) == set()
    assert leds.lit is None
    leds.close()


def test_active_low_leds_and_a_pin_shared_by_two_states(factory: MockFactory) -> None:
    pins = {"idle": 5, "thinking": 6, "speaking": 6}
    leds = StatusLeds(pins, active_high=False, pin_factory=factory)
    assert factory.pin(5).state is True  # off: an active-low LED is off when the pin is high
    leds.show("speaking")
    assert (factory.pin(5).state, factory.pin(6).state) == (True, False)
    leds.show("listening")  # no LED of its own: all off
    assert lit(factory, pins, active_high=False) == set()
    leds.show("thinking")
    assert lit(factory, pins, active_high=False) == {"thinking", "speaking"}
    leds.close()


def test_close_turns_the_leds_off_and_frees_the_pins(factory: MockFactory) -> None:
    leds = StatusLeds(LED_PINS, active_high=True, pin_factory=factory)
    leds.show("speaking")
    leds.close()
    assert lit(factory) == set()
    StatusLeds(LED_PINS, active_high=True, pin_factory=factory).close()  # the pins can be opened again


def test_led_pins_that_cannot_be_opened_are_a_hardware_error_naming_them(factory: MockFactory) -> None:
    with pytest.raises(HardwareError, match=r"status LED \(thinking/speaking\) on GPIO99: cannot open the pin"):
        StatusLeds({"idle": 5, "thinking": 99, "speaking": 99}, active_high=True, pin_factory=factory)
    StatusLeds({"idle": 5}, active_high=True, pin_factory=factory).close()  # GPIO5 was released on failure
    with pytest.raises(ValueError, match="unknown state listening_held"):
        StatusLeds({"listening_held": 5}, active_high=True, pin_factory=factory)


class RecordingLeds(StatusLeds):
    """StatusLeds whose ``show`` calls can be awaited."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.shown: asyncio.Queue[str] = asyncio.Queue()

    def show(self, state: str) -> None:
        super().show(state)
        self.shown.put_nowait(state)


async def test_leds_follow_the_state_changed_events(factory: MockFactory) -> None:
    bus = EventBus()
    leds = RecordingLeds(LED_PINS, active_high=True, pin_factory=factory)
    task = asyncio.create_task(drive_leds(bus, leds))
    assert await leds.shown.get() == "idle"  # shown at once, before any event
    assert lit(factory) == {"idle"}
    steps = [("idle", "listening"), ("listening", "listening_held"), ("listening_held", "thinking")]
    steps += [("thinking", "speaking"), ("speaking", "idle")]
    for src, dst in steps:
        bus.emit("wake", turn_id=1, source="button", word=None)  # other events change nothing
        bus.emit("state_changed", src=src, dst=dst, trigger="t", turn_id=1)
        assert await leds.shown.get() == dst
        assert lit(factory) == {"listening" if dst == "listening_held" else dst}
    bus.close()
    await task
    assert leds.shown.empty()
    leds.close()


async def test_drive_leds_misses_no_event_emitted_before_its_task_starts(factory: MockFactory) -> None:
    bus = EventBus()
    leds = RecordingLeds(LED_PINS, active_high=True, pin_factory=factory)
    task = asyncio.create_task(drive_leds(bus, leds))
    bus.emit("state_changed", src="idle", dst="listening", trigger="wake", turn_id=1)
    bus.close()
    await task
    assert lit(factory) == {"listening"}
    leds.close()
