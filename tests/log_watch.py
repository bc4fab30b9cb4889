"""Captured logs that a test can await: synchronise on what the code under test reports, not on sleeps."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import structlog
from structlog.testing import LogCapture


class LogWatch(LogCapture):
    """structlog's LogCapture that a test can also await: ``await logs.wait_for("barge_in_resumed")``
    returns the first such entry, already logged or still to come (no polling)."""

    def __init__(self) -> None:
        super().__init__()
        self._waiters: list[tuple[Callable[[dict[str, Any]], bool], asyncio.Future[dict[str, Any]]]] = []

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.entries)

    def __call__(self, logger: Any, method_name: str, event_dict: Any) -> Any:
        try:
            return super().__call__(logger, method_name, event_dict)
        finally:
            entry = self.entries[-1]
            for matches, waiter in self._waiters:
                if not waiter.done() and matches(entry):
                    waiter.set_result(entry)

    async def wait_for(self, event: str, **fields: Any) -> dict[str, Any]:
        def matches(entry: dict[str, Any]) -> bool:
            return entry["event"] == event and all(entry.get(k) == v for k, v in fields.items())

        for entry in self.entries:
            if matches(entry):
                return entry
        waiter: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiters.append((matches, waiter))
        try:
            return await waiter
        finally:
            self._waiters.remove((matches, waiter))


@contextmanager
def watch_logs() -> Iterator[LogWatch]:
    """Like structlog.testing.capture_logs, with a LogWatch: ``with watch_logs() as logs:``."""
    watch = LogWatch()
    processors = structlog.get_config()["processors"]
    old = processors.copy()
    try:
        processors.clear()
        processors.append(watch)
        structlog.configure(processors=processors)
        yield watch
    finally:
        processors.clear()
        processors.extend(old)
        structlog.configure(processors=processors)
