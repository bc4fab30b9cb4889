"""The speculation benchmark's inputs: questions with a pause in the middle that the stand-in
still recognises whole, and the FunASR stand-in's punctuated finals."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from daemon.clients.asr import FunAsrClient
from daemon.config import AsrSettings
from daemon.tools.bench.timeline import LOUD, read_pcm
from daemon.tools.stubs.funasr import FunAsrBehaviour, FunAsrStub
from daemon.tools.stubs.punctuation import punctuate
from daemon.tools.stubs.questions import (
    PAUSED_SPLITS,
    QUESTIONS,
    Recogniser,
    make_paused_question_wav,
    read_wav_pcm,
)

TIMEOUT = 10.0


def test_punctuation_ends_a_segment_like_a_punctuation_model() -> None:
    assert punctuate("what is the weather like today") == "what is the weather like today?"
    assert punctuate("Who are you") == "Who are you?"
    assert punctuate("turn on the kitchen light") == "turn on the kitchen light."
    assert punctuate("tell me ") == "tell me."
    assert punctuate("今天天气怎么样") == "今天天气怎么样。"  # the question word is not at the start
    assert punctuate("什么时候下雨") == "什么时候下雨？"
    assert punctuate("hello.") == "hello."
    assert punctuate("你好！") == "你好！"
    assert punctuate("") == "" and punctuate("  ") == "  "


def test_every_paused_question_is_a_grammar_question() -> None:
    for question, words in PAUSED_SPLITS.items():
        assert question in QUESTIONS
        assert 0 < words < len(question.split())


def longest_pause(samples: np.ndarray) -> tuple[int, int]:
    """Where the longest quiet run between the first and the last loud sample starts, and its length."""
    loud = np.flatnonzero(np.abs(samples.astype(np.int32)) > LOUD)
    gaps = np.diff(loud) - 1
    i = int(np.argmax(gaps))
    return int(loud[i]) + 1, int(gaps[i])


@pytest.mark.parametrize("pause_ms", [150, 600])
def test_a_paused_question_is_recognised_whole_and_its_opening_alone(tmp_path: Path, pause_ms: int) -> None:
    recogniser = Recogniser()
    question = "what is the weather like today"
    path = make_paused_question_wav(question, tmp_path / "q.wav", pause_ms)
    samples, rate = read_pcm(path)
    start, length = longest_pause(samples)
    assert length == rate * pause_ms // 1000
    assert recogniser.recognise(read_wav_pcm(path)) == question
    # what is said before the pause, alone: the stand-in hears the opening, not the question
    opening = np.concatenate([samples[:start], np.zeros(3200, dtype="<i2")])
    heard = recogniser.recognise(opening.tobytes())
    assert heard and heard != question and question.startswith(heard)
    assert not (tmp_path / "q.part0.wav").exists()


def test_a_pause_needs_words_on_both_sides(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="after 4 words"):
        make_paused_question_wav("what time is it", tmp_path / "q.wav", 300, split=4)
    with pytest.raises(ValueError, match="pause_ms"):
        make_paused_question_wav("what time is it", tmp_path / "q.wav", -1)


@pytest.mark.parametrize("flavour", ["cpp-2pass", "python-2026", "python-classic", "cpp-offline"])
async def test_the_stand_in_punctuates_its_final_when_asked(flavour: str) -> None:
    for punctuated, expected in ((False, "what time is it"), (True, "what time is it?")):
        behaviour = FunAsrBehaviour(flavour=flavour, transcript_override="what time is it", punctuate=punctuated)
        async with FunAsrStub(behaviour=behaviour) as stub:
            settings = AsrSettings(url=stub.url, final_timeout_s=0.5, connect_timeout_s=5.0, flavour=flavour)
            session = await asyncio.wait_for(FunAsrClient(settings).open_session(), TIMEOUT)
            try:
                await session.send_audio(bytes(1920 * 12))  # past one online partial: the final still ends marked
                transcript = await asyncio.wait_for(session.finish(), TIMEOUT)
            finally:
                await session.aclose()
        assert transcript.text == expected, (flavour, punctuated)


@pytest.fixture(scope="module")
def recogniser() -> Recogniser:
    return Recogniser()


@pytest.mark.parametrize("question", list(PAUSED_SPLITS))
def test_every_paused_question_is_heard_whole_at_the_shortest_and_longest_pause(
    tmp_path: Path, question: str, recogniser: Recogniser
) -> None:
    for pause_ms in (150, 600):
        path = make_paused_question_wav(question, tmp_path / f"q{pause_ms}.wav", pause_ms)
        assert recogniser.recognise(read_wav_pcm(path)) == question, pause_ms
