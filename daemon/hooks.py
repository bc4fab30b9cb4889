"""``[hooks]``: the user's commands, run on the conversation's events.

Each hook is an argument list, run with ``asyncio.create_subprocess_exec`` (never through a shell),
with the event as one JSON object on stdin (``Event.as_dict()``, one line), in the daemon's
environment without its secrets (``daemon.secrets.child_environment``). A run never blocks the
daemon or another run: each is a task of its own, killed (with the process group it started) after
``timeout_s``. At most ``max_running`` runs of one hook at a time; an event that finds its hook busy
is dropped and counted, so a hung hook cannot pile up processes.

Which event runs which hook (``hook_for``): ``wake`` -> on_wake; ``state_changed`` into listening
(or listening_held) -> on_listening, thinking -> on_thinking, speaking -> on_speaking, idle ->
on_idle; ``turn_failed`` -> on_error; ``turn_finished`` -> on_turn_finished. A move between
listening and listening_held is not a new start of listening and runs nothing.

Log events: ``hook_done`` (debug), ``hook_failed`` (warning: hook, code, stderr's tail),
``hook_timeout`` (warning), ``hook_cannot_start`` (error, once per hook: no such executable, not
executable), ``hook_dropped`` (warning: hook, dropped so far), ``hook_killed`` (at shutdown).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import fields
from functools import partial
from typing import Any

import structlog

from daemon.config import HooksSettings
from daemon.event_bus import Event, EventBus
from daemon.secrets import child_environment

log = structlog.get_logger()

HOOK_NAMES = tuple(f.name for f in fields(HooksSettings) if f.name.startswith("on_"))
EVENT_HOOKS = {"wake": "on_wake", "turn_failed": "on_error", "turn_finished": "on_turn_finished"}
STATE_HOOKS = {
    "listening": "on_listening",
    "listening_held": "on_listening",
    "thinking": "on_thinking",
    "speaking": "on_speaking",
    "idle": "on_idle",
}
MAX_RUNNING = 4
"""Runs of one hook at a time; more events for it are dropped."""
CLOSE_GRACE_S = 1.0
"""At shutdown, how long running hooks may still take before they are killed."""
REAP_S = 1.0
"""After a kill, how long to wait for the process (a child that left the process group may hold its pipes)."""
TAIL_BYTES = 2000
"""How much of a hook's stdout and stderr is kept (the end)."""


def hook_for(event: Event) -> str | None:
    """The hook that ``event`` runs, if any (see the module's docstring)."""
    if event.name != "state_changed":
        return EVENT_HOOKS.get(event.name)
    dst = STATE_HOOKS.get(str(event.fields.get("dst")))
    return None if dst == STATE_HOOKS.get(str(event.fields.get("src"))) else dst


def check_hooks(settings: HooksSettings) -> list[str]:
    """Configuration problems, one line each: ``hooks.on_wake[1]: must not be empty``.

    A command with a ``/`` must be an executable file; a bare name must be found on PATH (that is
    where the daemon's exec looks for it; not in the current directory).
    """
    problems: list[str] = []
    for name in HOOK_NAMES:
        argv: Sequence[str] = getattr(settings, name)
        if not argv:
            continue
        key = f"hooks.{name}"
        problems.extend(f"{key}[{i}]: must not be empty" for i, arg in enumerate(argv) if not arg)
        command = argv[0]
        if not command:
            continue
        if "/" not in command:
            if shutil.which(command) is None:
                problems.append(f"{key}: {command!r} is not found on PATH ({os.environ.get('PATH', '')})")
        elif not os.path.isfile(command):
            problems.append(f"{key}: {command!r}: no such file")
        elif not os.access(command, os.X_OK):
            problems.append(f"{key}: {command!r} is not executable (chmod +x)")
    return problems


async def _tail(stream: asyncio.StreamReader | None) -> bytes:
    kept = bytearray()
    while stream is not None and (chunk := await stream.read(65536)):
        kept += chunk
        del kept[:-TAIL_BYTES]
    return bytes(kept)


async def _feed(stdin: asyncio.StreamWriter | None, payload: bytes) -> None:
    if stdin is None:
        return
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the hook need not read it
        stdin.write(payload)
        await stdin.drain()
    stdin.close()


def _text(tail: bytes) -> str:
    return tail.decode("utf-8", errors="replace").strip()


class Hooks:
    """Runs ``[hooks]`` on the bus's events. ``run(bus)`` consumes them until cancelled (or the bus
    closes); ``aclose()`` at shutdown lets running hooks finish briefly and kills the rest."""

    def __init__(self, settings: HooksSettings, *, max_running: int = MAX_RUNNING) -> None:
        if max_running < 1:
            raise ValueError(f"hooks: max_running must be >= 1, got {max_running}")
        self._argv: dict[str, tuple[str, ...]] = {name: getattr(settings, name) for name in HOOK_NAMES}
        self._timeout_s = settings.timeout_s
        self._max_running = max_running
        self._running = dict.fromkeys(HOOK_NAMES, 0)
        self.dropped = dict.fromkeys(HOOK_NAMES, 0)
        """Events not run because their hook already had ``max_running`` runs."""
        self._tasks: set[asyncio.Task[None]] = set()
        self._processes: set[asyncio.subprocess.Process] = set()
        self._killed: set[asyncio.subprocess.Process] = set()
        self._unstartable: set[str] = set()
        self._closing = False

    @property
    def configured(self) -> bool:
        """Whether any hook has a command."""
        return any(self._argv.values())

    def run(self, bus: EventBus) -> Coroutine[Any, Any, None]:
        """Consume the bus's events, running hooks, until cancelled or the bus closes (it
        subscribes when called: see ``EventBus.follow``)."""
        return bus.follow(self.fire)

    def fire(self, event: Event) -> None:
        """Start the run of ``event``'s hook, if it has one, in the background."""
        hook = hook_for(event)
        if hook is None or not self._argv[hook] or self._closing:
            return
        if self._running[hook] >= self._max_running:
            self.dropped[hook] += 1
            log.warning(
                "hook_dropped", hook=hook, seq=event.seq, running=self._running[hook], dropped=self.dropped[hook]
            )
            return
        self._running[hook] += 1
        task = asyncio.get_running_loop().create_task(self._run(hook, self._argv[hook], event))
        self._tasks.add(task)
        task.add_done_callback(lambda t: self._done(hook, t))

    def _done(self, hook: str, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("hook_crashed", hook=hook, error=f"{type(exc).__name__}: {exc}")

    async def _run(self, hook: str, argv: tuple[str, ...], event: Event) -> None:
        try:
            outcome = await self._execute(hook, argv, event)
        finally:
            # The slot is free before the outcome is logged: whoever reads ``hook_done`` may fire again.
            self._running[hook] -= 1
        if outcome is not None:
            outcome()

    async def _execute(self, hook: str, argv: tuple[str, ...], event: Event) -> Callable[[], None] | None:
        """Run one hook to its end; what to log about it (``None``: logged already)."""
        payload = (json.dumps(event.as_dict(), ensure_ascii=False, default=str) + "\n").encode()
        started = time.monotonic()
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,  # its own process group: a kill takes its children too
                env=child_environment(os.environ),  # the daemon's secrets stay with the daemon
            )
        except OSError as exc:
            self._cannot_start(hook, argv, exc)
            return None
        self._processes.add(process)
        try:
            async with asyncio.timeout(self._timeout_s):
                _, _, stderr, code = await asyncio.gather(
                    _feed(process.stdin, payload), _tail(process.stdout), _tail(process.stderr), process.wait()
                )
        except TimeoutError:
            if process.stdin is not None:
                process.stdin.close()
            self._kill(process)
            await self._reap(hook, process)
            return partial(
                log.warning, "hook_timeout", hook=hook, seq=event.seq, argv=list(argv), timeout_s=self._timeout_s
            )
        finally:
            self._processes.discard(process)
        ms = round((time.monotonic() - started) * 1000)
        if process in self._killed:
            return partial(
                log.warning, "hook_killed", hook=hook, seq=event.seq, argv=list(argv), ms=ms, reason="daemon stopping"
            )
        if code != 0:
            return partial(
                log.warning,
                "hook_failed",
                hook=hook,
                seq=event.seq,
                argv=list(argv),
                code=code,
                ms=ms,
                stderr=_text(stderr),
            )
        return partial(log.debug, "hook_done", hook=hook, seq=event.seq, event_name=event.name, ms=ms)

    def _cannot_start(self, hook: str, argv: tuple[str, ...], exc: OSError) -> None:
        if hook in self._unstartable:
            log.debug("hook_cannot_start", hook=hook, executable=argv[0], error=str(exc))
            return
        self._unstartable.add(hook)
        reason = "no such executable" if isinstance(exc, FileNotFoundError) else str(exc)
        log.error("hook_cannot_start", hook=hook, executable=argv[0], error=reason, note="logged once per hook")

    def _kill(self, process: asyncio.subprocess.Process) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)

    async def _reap(self, hook: str, process: asyncio.subprocess.Process) -> None:
        try:
            async with asyncio.timeout(REAP_S):
                await process.wait()
        except TimeoutError:
            log.warning("hook_unreaped", hook=hook, pid=process.pid, reason="a child outside its group holds its pipes")

    async def aclose(self, grace_s: float = CLOSE_GRACE_S) -> None:
        """Stop starting hooks; let running ones finish for ``grace_s``, then kill them and wait."""
        self._closing = True
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=grace_s)
        if not pending:
            return
        for process in list(self._processes):
            self._killed.add(process)
            self._kill(process)
        await asyncio.wait(pending)
