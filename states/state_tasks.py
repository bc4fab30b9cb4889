"""The tasks a state owns: started on entering it, cancelled on leaving it.

A task ends by *returning* the next trigger, which its runner fires after detaching itself, so a
task never cancels itself. A task the state no longer owns (the state was left while it was
finishing) fires nothing: its trigger is stale. A released task (pause mode's held answer) keeps
running unowned; what it returns goes to its keeper instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import structlog

log = structlog.get_logger()

Trigger = tuple[str, dict[str, Any]]
NO_TRIGGER: Trigger = ("", {})
"""A task that ends without moving the machine."""
TASK_CANCEL_TIMEOUT_S = 2.0


class StateTasks:
    def __init__(self, fire: Callable[..., Awaitable[object]]) -> None:
        """``fire(name, **kwargs)`` fires a trigger on the machine."""
        self._fire = fire
        self._owned: set[asyncio.Task[None]] = set()
        self._running: set[asyncio.Task[None]] = set()
        self._keepers: dict[asyncio.Task[None], Callable[[Trigger], None]] = {}

    def spawn(
        self, work: Coroutine[Any, Any, Trigger], name: str, turn_id: str | None, *, waits: bool = False
    ) -> asyncio.Task[None]:
        """Run ``work`` as a task of the current state; fire the trigger it returns. A task that
        ``waits`` (IDLE's wait for a wake) may never end: ``settle`` does not wait for it."""

        async def runner() -> None:
            structlog.contextvars.bind_contextvars(turn_id=turn_id)
            try:
                trigger = await work
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure of a turn ends that turn, not the daemon
                trigger = ("fail", {"error": exc})
            me = asyncio.current_task()
            assert me is not None
            keep = self._keepers.pop(me, None)
            if keep is not None:
                keep(trigger)  # released: acted on if the keeper adopts it again
                return
            if me not in self._owned or trigger[0] == NO_TRIGGER[0]:
                self._owned.discard(me)
                return  # the state was left while this task was finishing: its trigger is stale
            self._owned.discard(me)  # detach: the trigger must not cancel its caller
            await self._fire(trigger[0], **trigger[1])

        task = asyncio.create_task(runner(), name=f"{name}-{turn_id}")
        task.add_done_callback(lambda _: work.close())  # cancelled before it began: never awaited
        self._owned.add(task)
        if not waits:
            self._running.add(task)
            task.add_done_callback(self._running.discard)
        return task

    def owns(self, task: asyncio.Task[None] | None) -> bool:
        return task is not None and task in self._owned

    def release(self, task: asyncio.Task[None], keep: Callable[[Trigger], None]) -> None:
        """Stop owning ``task`` without cancelling it: leaving the state leaves it running, and
        the trigger it returns goes to ``keep`` instead of the machine."""
        self._owned.discard(task)
        self._keepers[task] = keep

    def adopt(self, task: asyncio.Task[None]) -> None:
        """Own a released task again: its trigger fires as if it had never been released."""
        self._keepers.pop(task, None)
        self._owned.add(task)

    def forget(self, task: asyncio.Task[None]) -> None:
        """A released task is being dropped: whatever it returns goes nowhere."""
        self._keepers.pop(task, None)

    async def cancel_all(self) -> None:
        """Cancel the state's tasks (all but the caller's own) and wait for them, a while."""
        tasks = {t for t in self._owned if t is not asyncio.current_task() and not t.done()}
        self._owned.clear()
        if not tasks:
            return
        for task in tasks:
            task.cancel()
        done, pending = await asyncio.wait(tasks, timeout=TASK_CANCEL_TIMEOUT_S)
        for task in pending:
            log.warning("task_cancel_slow", task=task.get_name(), waited_s=TASK_CANCEL_TIMEOUT_S)
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                log.warning("task_failed_while_cancelled", task=task.get_name(), error=repr(task.exception()))

    async def settle(self) -> None:
        """Wait until no task is running but a waiting one (tests, shutdown): the last trigger
        has been fired."""
        while others := [t for t in self._running if t is not asyncio.current_task()]:
            await asyncio.wait(others)
