"""Hooks: real subprocesses get their events as JSON on stdin; timeouts, failures, missing
executables and the concurrency bound are logged. The tests wait on what the hooks log or do."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from daemon.config import HooksSettings
from daemon.event_bus import Event, EventBus
from daemon.hooks import HOOK_NAMES, Hooks, check_hooks, hook_for
from tests.log_watch import LogWatch, watch_logs

RECORD = """\
import sys
event = sys.stdin.read()
with open(sys.argv[1], "a", encoding="utf-8") as out:
    out.write(event)
"""
"""A hook that appends the event it gets on stdin to the file named by its first argument."""

WAIT = """\
import os, socket, sys
with open(sys.argv[2], "w") as out:
    out.write(str(os.getpid()))
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.recv(1)
"""
"""A hook that writes its pid to argv[2], then waits on the test's Unix socket (argv[1]) for a byte."""

FAIL = "import sys; sys.stdin.read(); print('step 1 ok'); print('boom: no LED here', file=sys.stderr); sys.exit(3)"

SPAWN = """\
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
with open(sys.argv[1], "w") as out:
    out.write(str(child.pid))
time.sleep(60)
"""
"""A hook that starts a child of its own (which inherits its stdout) and hangs."""


def event(name: str, seq: int = 1, **fields: Any) -> Event:
    return Event(name, fields, seq, 1764637200.0)


def state(src: str, dst: str) -> Event:
    return event("state_changed", src=src, dst=dst, trigger="t", turn_id=1)


async def ended(pid: int) -> bool:
    """Wait (5 s at most) until process ``pid`` has ended; whether it did."""
    try:
        fd = os.pidfd_open(pid)  # readable once the process has ended
    except ProcessLookupError:
        return True
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    loop.add_reader(fd, done.set_result, None)
    try:
        await asyncio.wait_for(done, 5)
    except TimeoutError:
        return False
    finally:
        loop.remove_reader(fd)
        os.close(fd)
    return True


@pytest.fixture
def logs() -> Iterator[LogWatch]:
    with watch_logs() as watch:
        yield watch


@pytest.fixture
def record(tmp_path: Path) -> Path:
    script = tmp_path / "record.py"
    script.write_text(RECORD)
    return script


class Gate:
    """A Unix socket the WAIT hooks connect to; ``connected`` yields as each connects; ``open()`` lets them all end."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.waiting: asyncio.Queue[asyncio.StreamWriter] = asyncio.Queue()
        self._writers: list[asyncio.StreamWriter] = []

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        self.waiting.put_nowait(writer)

    async def connected(self) -> None:
        await asyncio.wait_for(self.waiting.get(), 10)

    async def open(self) -> None:
        for writer in self._writers:
            writer.write(b"x")
            writer.close()
            with contextlib.suppress(ConnectionError):  # that hook is gone already
                await writer.wait_closed()
        self._writers.clear()


@pytest.fixture
async def gate() -> AsyncIterator[Gate]:
    folder = tempfile.mkdtemp(prefix="hooks", dir="/tmp")  # a Unix socket path must be short
    gate = Gate(os.path.join(folder, "gate.sock"))
    server = await asyncio.start_unix_server(gate._accept, gate.path)
    try:
        yield gate
    finally:
        await gate.open()
        server.close()
        await server.wait_closed()
        shutil.rmtree(folder)


def test_each_event_runs_its_hook() -> None:
    assert hook_for(event("wake", turn_id=1, source="button", word=None)) == "on_wake"
    assert hook_for(event("turn_failed", turn_id=1, service="llm", reason="x")) == "on_error"
    assert hook_for(event("turn_finished", turn_id=1, outcome="answered")) == "on_turn_finished"
    assert hook_for(state("idle", "listening")) == "on_listening"
    assert hook_for(state("idle", "listening_held")) == "on_listening"
    assert hook_for(state("listening", "thinking")) == "on_thinking"
    assert hook_for(state("thinking", "speaking")) == "on_speaking"
    assert hook_for(state("speaking", "idle")) == "on_idle"
    assert hook_for(state("speaking", "listening")) == "on_listening"  # barge-in
    # not a new start of listening, and events without a hook
    assert hook_for(state("listening", "listening_held")) is None
    assert hook_for(state("listening_held", "listening")) is None
    assert hook_for(event("transcript", turn_id=1, text="hi")) is None
    assert hook_for(event("reply_clause", turn_id=1, text="hi")) is None
    assert set(HOOK_NAMES) == {
        "on_wake",
        "on_listening",
        "on_thinking",
        "on_speaking",
        "on_idle",
        "on_error",
        "on_turn_finished",
    }


async def test_every_hook_gets_its_event_as_json_on_stdin(tmp_path: Path, record: Path, logs: LogWatch) -> None:
    out = {name: tmp_path / f"{name}.jsonl" for name in HOOK_NAMES}
    settings = HooksSettings(**{name: (sys.executable, str(record), str(out[name])) for name in HOOK_NAMES})
    hooks = Hooks(settings)
    bus = EventBus(clock=lambda: 1764637200.25)
    task = asyncio.create_task(hooks.run(bus))
    bus.emit("wake", turn_id=7, source="hotword", word="hey_mycroft")
    bus.emit("state_changed", src="idle", dst="listening", trigger="wake", turn_id=7)
    bus.emit("state_changed", src="listening", dst="listening_held", trigger="hold", turn_id=7)  # runs nothing
    bus.emit("transcript", turn_id=7, text="你好")  # runs nothing
    bus.emit("state_changed", src="listening_held", dst="thinking", trigger="utterance", turn_id=7)
    bus.emit("state_changed", src="thinking", dst="speaking", trigger="audio", turn_id=7)
    bus.emit("turn_failed", turn_id=7, service="tts", reason="connection refused")
    bus.emit("turn_finished", turn_id=7, outcome="failed", transcript="你好", reply=None, first_audio_ms=412)
    bus.emit("state_changed", src="speaking", dst="idle", trigger="done", turn_id=7)
    for name in HOOK_NAMES:
        await logs.wait_for("hook_done", hook=name)
    got = {name: [json.loads(line) for line in out[name].read_text("utf-8").splitlines()] for name in HOOK_NAMES}
    assert {name: [e["seq"] for e in got[name]] for name in HOOK_NAMES} == {
        "on_wake": [1],
        "on_listening": [2],
        "on_thinking": [5],
        "on_speaking": [6],
        "on_error": [7],
        "on_turn_finished": [8],
        "on_idle": [9],
    }
    assert got["on_wake"][0] == {
        "event": "wake",
        "seq": 1,
        "time": 1764637200.25,
        "turn_id": 7,
        "source": "hotword",
        "word": "hey_mycroft",
    }
    assert got["on_turn_finished"][0]["transcript"] == "你好"
    assert got["on_turn_finished"][0]["first_audio_ms"] == 412
    assert got["on_idle"][0]["dst"] == "idle"
    bus.close()
    await task
    await hooks.aclose()
    assert not [e for e in logs if e["log_level"] in ("warning", "error")]


async def test_an_unconfigured_hook_runs_nothing(logs: LogWatch) -> None:
    hooks = Hooks(HooksSettings())
    assert not hooks.configured
    hooks.fire(event("wake", turn_id=1, source="control", word=None))
    await hooks.aclose()
    assert [e["event"] for e in logs] == []


async def test_a_failing_hook_is_logged_with_its_code_and_stderr(logs: LogWatch) -> None:
    hooks = Hooks(HooksSettings(on_error=(sys.executable, "-c", FAIL)))
    hooks.fire(event("turn_failed", turn_id=1, service="asr", reason="timeout"))
    failed = await logs.wait_for("hook_failed")
    assert failed["hook"] == "on_error"
    assert failed["code"] == 3
    assert failed["stderr"] == "boom: no LED here"
    assert failed["log_level"] == "warning"
    await hooks.aclose()


async def test_a_hook_past_its_timeout_is_killed_with_its_children(tmp_path: Path, logs: LogWatch) -> None:
    child_pid = tmp_path / "child.pid"
    hooks = Hooks(HooksSettings(on_wake=(sys.executable, "-c", SPAWN, str(child_pid)), timeout_s=0.5))
    hooks.fire(event("wake", turn_id=1, source="button", word=None))
    timeout = await logs.wait_for("hook_timeout")
    assert (timeout["hook"], timeout["timeout_s"]) == ("on_wake", 0.5)
    # the hook was reaped, and its child, which held the hook's stdout, is gone too
    assert await ended(int(child_pid.read_text()))
    assert not [e for e in logs if e["event"] == "hook_unreaped"]
    await hooks.aclose()


async def test_a_missing_executable_is_logged_once(tmp_path: Path, logs: LogWatch) -> None:
    missing = str(tmp_path / "no-such-hook")
    hooks = Hooks(HooksSettings(on_wake=(missing, "--flag")))
    hooks.fire(event("wake", 1, turn_id=1, source="button", word=None))
    hooks.fire(event("wake", 2, turn_id=2, source="button", word=None))
    await logs.wait_for("hook_cannot_start", log_level="error")
    await logs.wait_for("hook_cannot_start", log_level="debug")
    errors = [e for e in logs if e["log_level"] == "error"]
    assert len(errors) == 1
    assert (errors[0]["hook"], errors[0]["executable"], errors[0]["error"]) == (
        "on_wake",
        missing,
        "no such executable",
    )
    await hooks.aclose()


async def test_runs_are_concurrent_and_bounded_per_hook(
    tmp_path: Path, gate: Gate, record: Path, logs: LogWatch
) -> None:
    out = tmp_path / "idle.jsonl"
    wait = (sys.executable, "-c", WAIT, gate.path, str(tmp_path / "pid"))
    # A generous timeout: on a loaded machine the default 5 s could kill the waiting runs first.
    settings = HooksSettings(on_wake=wait, on_idle=(sys.executable, str(record), str(out)), timeout_s=60)
    hooks = Hooks(settings, max_running=2)
    for seq in range(1, 6):
        hooks.fire(event("wake", seq, turn_id=seq, source="button", word=None))
    await gate.connected()
    await gate.connected()  # two runs of on_wake at once
    assert hooks.dropped["on_wake"] == 3
    dropped = [e for e in logs if e["event"] == "hook_dropped"]
    assert [(e["hook"], e["seq"], e["dropped"]) for e in dropped] == [
        ("on_wake", 3, 1),
        ("on_wake", 4, 2),
        ("on_wake", 5, 3),
    ]
    hooks.fire(state("speaking", "idle"))  # another hook is not held up by a busy one
    await logs.wait_for("hook_done", hook="on_idle")
    await gate.open()
    await logs.wait_for("hook_done", hook="on_wake", seq=1)
    await logs.wait_for("hook_done", hook="on_wake", seq=2)
    hooks.fire(event("wake", 6, turn_id=6, source="button", word=None))  # room again
    await gate.connected()
    await gate.open()
    await hooks.aclose(grace_s=10)
    assert len([e for e in logs if e["event"] == "hook_done" and e["hook"] == "on_wake"]) == 3
    assert hooks.dropped["on_wake"] == 3


async def test_a_hook_is_free_again_once_its_outcome_is_logged(tmp_path: Path, record: Path, logs: LogWatch) -> None:
    """Whoever reads ``hook_done`` may fire at once: the slot was freed before the line (CI caught the
    reverse order as a dropped event)."""
    out = tmp_path / "idle.jsonl"
    hooks = Hooks(HooksSettings(on_idle=(sys.executable, str(record), str(out))), max_running=1)
    hooks.fire(state("speaking", "idle"))
    await logs.wait_for("hook_done", hook="on_idle")
    hooks.fire(state("speaking", "idle"))  # no await in between
    assert hooks.dropped["on_idle"] == 0
    await hooks.aclose()


async def test_aclose_waits_for_a_quick_hook(tmp_path: Path, record: Path, logs: LogWatch) -> None:
    out = tmp_path / "wake.jsonl"
    hooks = Hooks(HooksSettings(on_wake=(sys.executable, str(record), str(out))))
    hooks.fire(event("wake", turn_id=1, source="button", word=None))
    await hooks.aclose(grace_s=10)
    assert json.loads(out.read_text())["source"] == "button"
    assert [e["event"] for e in logs] == ["hook_done"]
    hooks.fire(event("wake", 2, turn_id=2, source="button", word=None))  # closed: runs nothing
    await asyncio.sleep(0)
    assert [e["event"] for e in logs] == ["hook_done"]


async def test_aclose_kills_hooks_still_running_after_the_grace(tmp_path: Path, gate: Gate, logs: LogWatch) -> None:
    pid = tmp_path / "pid"
    hooks = Hooks(HooksSettings(on_thinking=(sys.executable, "-c", WAIT, gate.path, str(pid)), timeout_s=60))
    hooks.fire(state("listening", "thinking"))
    await gate.connected()
    await hooks.aclose(grace_s=0.05)
    killed = [e for e in logs if e["event"] == "hook_killed"]
    assert [e["hook"] for e in killed] == ["on_thinking"]
    assert await ended(int(pid.read_text()))


async def test_run_ends_when_the_bus_closes_and_misses_nothing_emitted_before_it_starts(
    tmp_path: Path, record: Path, logs: LogWatch
) -> None:
    out = tmp_path / "wake.jsonl"
    hooks = Hooks(HooksSettings(on_wake=(sys.executable, str(record), str(out))))
    bus = EventBus()
    task = asyncio.create_task(hooks.run(bus))
    bus.emit("wake", turn_id=1, source="on_start", word=None)  # before the task has run at all
    bus.close()
    await task
    await hooks.aclose(grace_s=10)
    assert json.loads(out.read_text())["source"] == "on_start"


def test_check_hooks_names_each_problem(tmp_path: Path) -> None:
    not_executable = tmp_path / "led.sh"
    not_executable.write_text("#!/bin/sh\n")
    settings = HooksSettings(
        on_wake=(sys.executable, "-c", ""),
        on_idle=("sh", "-c", "true"),
        on_thinking=("no-such-command-moss",),
        on_speaking=(str(tmp_path / "missing.sh"),),
        on_error=(str(not_executable),),
        on_turn_finished=("",),
    )
    problems = check_hooks(settings)
    assert problems[0] == "hooks.on_wake[2]: must not be empty"
    assert problems[1].startswith("hooks.on_thinking: 'no-such-command-moss' is not found on PATH (")
    assert problems[2:] == [
        f"hooks.on_speaking: '{tmp_path}/missing.sh': no such file",
        f"hooks.on_error: '{not_executable}' is not executable (chmod +x)",
        "hooks.on_turn_finished[0]: must not be empty",
    ]
    assert check_hooks(HooksSettings(on_listening=("sh",), on_idle=(sys.executable, "x"))) == []
    assert check_hooks(HooksSettings()) == []
