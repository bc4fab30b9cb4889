"""states.cjk.is_cjk: the one test for "no space between words", used by ASR and speech text alike."""

from __future__ import annotations

import pytest

from daemon.clients.asr_text import join_segments
from states.cjk import is_cjk
from states.speech_text import join_clauses

CJK = ["你", "。", "，", "？", "」", "か", "カ", "한", "！", "｡", "豈", "\U00020000", "\U00030000"]


@pytest.mark.parametrize("char", CJK)
def test_cjk_characters(char: str) -> None:
    assert is_cjk(char)


@pytest.mark.parametrize("char", ["a", "Z", "1", " ", ".", "…", "”", "é", "Ж", "α", "😀", "→"])
def test_other_characters(char: str) -> None:
    assert not is_cjk(char)


def test_both_layers_space_the_same_way() -> None:
    for left, right in [("你好", "世界"), ("hello", "world"), ("你好", "world"), ("hello", "世界")]:
        assert join_segments(left, right) == join_clauses([left, right])
