from __future__ import annotations

from states.events import ChatMessage
from states.history import Conversation


def test_messages_carry_system_prompt_history_and_question() -> None:
    c = Conversation("sys", max_turns=2, reset_after_s=60)
    assert c.messages_for("q1", now=0) == [ChatMessage("system", "sys"), ChatMessage("user", "q1")]
    c.record("q1", "a1", now=1)
    c.record("q2", "a2", now=2)
    c.record("q3", "a3", now=3)
    roles = [(m.role, m.content) for m in c.messages_for("q4", now=4)]
    assert roles == [
        ("system", "sys"),
        ("user", "q2"),
        ("assistant", "a2"),
        ("user", "q3"),
        ("assistant", "a3"),
        ("user", "q4"),
    ]


def test_history_is_forgotten_after_an_idle_period() -> None:
    c = Conversation("sys", max_turns=5, reset_after_s=60)
    c.record("q1", "a1", now=0)
    assert len(c.messages_for("q2", now=59)) == 4
    assert [m.content for m in c.messages_for("q2", now=61)] == ["sys", "q2"]


def test_nothing_spoken_records_nothing_and_zero_turns_sends_none() -> None:
    c = Conversation("", max_turns=0, reset_after_s=60)
    c.record("q1", "", now=0)
    c.record("q2", "a2", now=0)
    assert c.messages_for("q3", now=1) == [ChatMessage("user", "q3")]
