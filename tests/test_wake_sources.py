"""The wake sources as the daemon wires them (daemon/wake_sources.py): the button and the LEDs on
gpiozero's mock pins, a hook and the control API on a Unix socket, all around one conversation."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
from gpiozero.pins.mock import MockFactory

from daemon.config import ButtonSettings, ControlSettings, HooksSettings, LedSettings, Settings, WakeSettings
from daemon.event_bus import EventBus
from daemon.health import Health
from daemon.wake_sources import Listeners
from states.endpointer import EndpointerSettings
from states.history import Conversation
from states.model import Assistant, AssistantSettings
from tests.fakes import FakeAsr, FakeLlm, FakeMic, FakeSpeaker, FakeTts, FakeVad

TIMEOUT = 10
BUTTON, LISTENING_LED, IDLE_LED = 17, 22, 23


async def state(events: Any, dst: str) -> dict[str, Any]:
    async for event in events:
        if event.name == "state_changed" and event.fields["dst"] == dst:
            return event.fields
    raise AssertionError(f"the bus closed before {dst}")


async def test_button_leds_hook_and_control_api_drive_one_conversation(tmp_path: Path) -> None:
    fifo = tmp_path / "hook.fifo"
    os.mkfifo(fifo)
    hook = [sys.executable, "-c", f"import sys; open({str(fifo)!r}, 'w').write(sys.stdin.read())"]
    socket = tmp_path / "control.sock"
    settings = Settings(
        wake=WakeSettings(button=ButtonSettings(pin=BUTTON, bounce_ms=0, hold_s=0.2)),
        leds=LedSettings(listening=LISTENING_LED, idle=IDLE_LED),
        hooks=HooksSettings(on_wake=tuple(hook)),
        control=ControlSettings(listen=f"unix:{socket}"),
    )
    bus = EventBus()
    assistant = Assistant(
        mic=FakeMic([(30.0, False)]),
        speaker=FakeSpeaker(),
        vad=FakeVad(),
        asr=FakeAsr("unused"),
        llm=FakeLlm(),
        tts=FakeTts(),
        conversation=Conversation("be brief", max_turns=3, reset_after_s=60),
        settings=AssistantSettings(endpointer=EndpointerSettings(no_speech_timeout_s=30)),
        events=bus,
    )
    factory = MockFactory()
    events = bus.subscribe()
    async with AsyncExitStack() as stack:
        stack.push_async_callback(assistant.aclose)
        await Listeners(settings, assistant, bus, Health(assistant.feed), pin_factory=factory).start(stack)
        await assistant.ready()
        hook_input = asyncio.create_task(asyncio.to_thread(fifo.read_text))
        button, led, idle_led = factory.pin(BUTTON), factory.pin(LISTENING_LED), factory.pin(IDLE_LED)

        button.drive_low()  # a press while idle wakes
        button.drive_high()  # a tap: released before the hold time, however slow the machine
        await asyncio.wait_for(state(events, "listening"), TIMEOUT)
        assert assistant.turn is not None and assistant.turn.wake_source == "button"
        woke = json.loads(await asyncio.wait_for(hook_input, TIMEOUT))
        assert woke["event"] == "wake" and woke["source"] == "button" and woke["turn_id"] == assistant.turn.id
        client = await stack.enter_async_context(
            httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=str(socket)), timeout=TIMEOUT)
        )
        status = (await client.get("http://daemon/status")).json()
        assert status["state"] == "listening" and status["turn"]["wake_source"] == "button"
        assert led.state and not idle_led.state  # the LED of the state is lit (drive_leds followed it)

        # held: a long press cancels everything, back to idle (a press while listening does nothing else)
        button.drive_low()
        await asyncio.wait_for(state(events, "idle"), TIMEOUT)
        button.drive_high()
        assert (await client.get("http://daemon/status")).json()["state"] == "idle"
        assert idle_led.state and not led.state
    factory.reset()


def test_a_control_api_that_cannot_listen_stops_the_daemon_with_a_clear_line(tmp_path: Path) -> None:
    import subprocess

    from hardware.wavfile import write_wav

    write_wav(tmp_path / "question.wav", bytes(3200), 16000)
    config = tmp_path / "moss.toml"
    config.write_text(
        '[control]\nlisten = "unix:/nonexistent/moss-voice/control.sock"\n[wake]\non_start = false\n'
        '[wake.hotword]\nengine = "off"\n[log]\nformat = "json"\n',
        encoding="utf-8",
    )
    done = subprocess.run(
        [sys.executable, "-m", "daemon", "run", "--config", str(config)],
        cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr[-2000:]
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    (error,) = [e for e in lines if e["event"] == "control_error"]
    assert "the directory /nonexistent/moss-voice does not exist" in error["error"]
    assert "Traceback" not in done.stderr
