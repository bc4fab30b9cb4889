"""Work that only tidies up, kept off the critical path.

After the ASR's final result, the websocket's close handshake is owed to the server, but the
user is waiting for the answer: a busy FunASR server (the classic Python one while it decodes)
answers a close frame up to seconds late. Such work runs in its own task, bounded by its own
timeout, and shutdown waits for what is still running.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import structlog

log = structlog.get_logger()


class Tidying:
    """A set of background tidy-up tasks (close handshakes). Each must bound its own duration."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def run(self, work: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(self._quietly(work, name), name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @property
    def pending(self) -> int:
        return len(self._tasks)

    async def wait(self) -> None:
        """Until every tidy-up started so far has finished (shutdown, tests)."""
        while self._tasks:
            await asyncio.wait(set(self._tasks))

    @staticmethod
    async def _quietly(work: Coroutine[Any, Any, None], name: str) -> None:
        try:
            await work
        except Exception as exc:  # noqa: BLE001 - tidying never fails anything
            log.debug("tidy_up_failed", task=name, error=repr(exc))
