"""A given text as an ``LlmClient``: /say and /display are spoken through the same pipeline as an
answer (cleaned, split into clauses, synthesised clause by clause, cut by a barge-in)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

from states.events import ChatMessage, LlmResult


class FixedText:
    """Streams ``text`` as one delta, whatever the messages."""

    def __init__(self, text: str) -> None:
        self._text = text

    def stream_chat(self, messages: Sequence[ChatMessage]) -> Any:
        return _Stream(self._text)

    async def warm_up(self) -> None:
        pass


class _Stream:
    def __init__(self, text: str) -> None:
        self._text = text
        self.result: LlmResult | None = None

    async def __aenter__(self) -> _Stream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        pass

    def __aiter__(self) -> AsyncIterator[str]:
        return self._deltas()

    async def _deltas(self) -> AsyncIterator[str]:
        yield self._text
        self.result = LlmResult(finish_reason="stop")
