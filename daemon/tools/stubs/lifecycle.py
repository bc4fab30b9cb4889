"""What every stand-in is: something started and stopped, usable as ``async with stub:``."""

from __future__ import annotations

from typing import Self


class StartStop:
    """``async with`` calls ``start()`` on entry and ``stop()`` on exit; subclasses define both."""

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()
