"""What the robot remembers of the conversation: the last N exchanges, forgotten after a quiet spell."""

from __future__ import annotations

from collections import deque

from states.events import ChatMessage


class Conversation:
    """The messages sent to the LLM: system prompt, the last ``max_turns`` exchanges, the question.

    An exchange records what the robot actually said, not what the LLM wrote: if the reply was
    cut (barge-in, length cap), the model must not believe the user heard the rest.
    """

    def __init__(self, system_prompt: str, *, max_turns: int, reset_after_s: float) -> None:
        self._system = system_prompt
        self._max_turns = max_turns
        self._reset_after_s = reset_after_s
        self._exchanges: deque[tuple[str, str]] = deque(maxlen=max(max_turns, 1))
        self._last_at: float | None = None

    def messages_for(self, question: str, now: float) -> list[ChatMessage]:
        if self._last_at is not None and now - self._last_at > self._reset_after_s:
            self._exchanges.clear()
        messages = [ChatMessage("system", self._system)] if self._system else []
        if self._max_turns > 0:
            for asked, said in self._exchanges:
                messages.append(ChatMessage("user", asked))
                messages.append(ChatMessage("assistant", said))
        messages.append(ChatMessage("user", question))
        return messages

    def record(self, question: str, spoken: str, now: float) -> None:
        self._last_at = now
        if spoken.strip():
            self._exchanges.append((question, spoken))

    def __len__(self) -> int:
        return len(self._exchanges)
