"""``moss-voice bench speculation``: wasted work and cut-offs on questions with a pause."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from daemon.__main__ import build_parser
from daemon.tools.bench.speculation import (
    BENCH_DEFAULT_ANSWER,
    expected_answer,
    first_sentence,
    passes,
    problem,
    run,
    summarise,
    words,
    write_outputs,
)
from daemon.tools.bench.speculation_report import render
from daemon.tools.stubs.questions import GRAMMAR_PATH, PAUSED_SPLITS


def parse_args(argv: list[str]) -> argparse.Namespace:
    return build_parser().parse_args(["bench", "speculation", *argv])


def test_the_opening_of_each_question_gets_another_answer() -> None:
    grammar = GRAMMAR_PATH.read_text(encoding="utf-8")
    for question, split in PAUSED_SPLITS.items():
        opening = " ".join(question.split()[:split])
        assert opening in grammar.split("<opening> =")[1]
        right = expected_answer(question + "?")
        assert right != BENCH_DEFAULT_ANSWER, question  # the stand-in knows the whole question
        assert expected_answer(opening + ".") != right, opening  # a speculation on the opening is wrong


def test_answers_are_compared_word_by_word() -> None:
    assert first_sentence("It is sunny today, with a high of 24 degrees. A light breeze.") == (
        "It is sunny today, with a high of 24 degrees."
    )
    assert first_sentence("No stop") == "No stop"
    assert words("What time is it?") == words("what time  is it")
    assert words("tell me.") != words("tell me a joke")


def test_the_options_and_their_checks() -> None:
    args = parse_args([])
    assert (args.n, args.speculate_after_ms, args.end_silence_ms, args.end_silence_short_ms) == (1, 250, 700, 300)
    assert [p.name for p in passes(args)] == ["wasted", "cut_offs"]
    assert passes(args)[0].end_silence_short_ms is None and passes(args)[1].end_silence_short_ms == 300
    assert problem(args) is None
    assert [p.name for p in passes(parse_args(["--no-cut-offs"]))] == ["wasted"]
    assert problem(parse_args(["--speculate-after-ms", "700"])) == (
        "--speculate-after-ms 700 is not shorter than --end-silence-ms 700"
    )
    assert problem(parse_args(["--end-silence-short-ms", "800"])) == (
        "--end-silence-short-ms 800 is not shorter than --end-silence-ms 700"
    )
    assert problem(parse_args(["--end-silence-short-ms", "800", "--no-cut-offs"])) is None
    assert "no paused version of 'hello robot'" in str(problem(parse_args(["--question", "hello robot"])))
    for argv in (["--pause-ms", "0"], ["-n", "0"], ["--speculate-after-ms", "-5"]):
        with pytest.raises(SystemExit):
            parse_args(argv)


def turn(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "question": "tell me a joke",
        "transcript": "tell me a joke.",
        "whole_question": True,
        "ends_marked": True,
        "reply": "Why did the robot go on holiday?",
        "right_answer": True,
        "llm_requests": 2,
        "llm_streams_closed": 1,
        "speculations": 2,
        "speculation_played_first": False,
        "dropped": 1,
    }
    base.update(overrides)
    return base


def test_the_summary_counts_drops_wrong_answers_and_cut_offs() -> None:
    wrong = turn(reply="Sorry, I did not quite catch that.", right_answer=False, speculation_played_first=True)
    cut = turn(transcript="tell me.", whole_question=False, speculations=1, dropped=0, llm_requests=1)
    s = summarise([turn(), wrong, cut])
    assert s["turns"] == 3 and s["llm_requests_per_turn"] == pytest.approx(5 / 3, abs=0.01)
    assert s["speculations"] == 5 and s["dropped"] == 2 and s["played_first"] == 1
    assert s["wrong_answers"] == 1 and s["right_answers"] == 2 and s["no_answer"] == 0
    assert s["cut_off"] == 1 and s["cut_off_marked"] == 1 and s["whole_question"] == 2
    unreported = summarise([turn(speculations=None, dropped=None, speculation_played_first=None)])
    assert unreported["speculations"] is None and unreported["dropped"] is None and unreported["played_first"] is None


def test_the_tables_say_whether_a_wrong_answer_was_played() -> None:
    ok, wrong = turn(), turn(reply="Sorry, I did not quite catch that.", right_answer=False)
    cut = turn(transcript="tell me.", whole_question=False)
    results = {
        "n": 1,
        "speculate_after_ms": 250,
        "end_silence_ms": 700,
        "end_silence_short_ms": 300,
        "passes": {
            "wasted": {
                "300": {"turns": [ok], "summary": summarise([ok])},
                "450": {"turns": [wrong], "summary": summarise([wrong])},
            },
            "cut_offs": {"450": {"turns": [cut], "summary": summarise([cut])}},
        },
    }
    text = render(results)
    assert "never a wrong answer played: NOT met (1 of 2 turns)" in text
    assert "#### Pause of 300 ms" in text and "#### Pause of 450 ms" in text
    assert "| WRONG: Sorry, I did not quite catch that. |" in text
    assert "| 450 ms | 1 | 1 | 100 % | 1 | 0 | 'tell me.' |" in text
    results["passes"]["wasted"].pop("450")
    assert "never a wrong answer played: met (0 of 1 turns)" in render(results)


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str]:
    """One question with a 450 ms pause, through the daemon: the wasted-work pass and the cut-off pass."""
    out = tmp_path_factory.mktemp("spec") / "speculation.json"
    args = parse_args(["--question", "tell me a joke", "--pause-ms", "450", "--json", str(out)])
    results = asyncio.run(asyncio.wait_for(run(args), 90))
    printed = write_outputs(results, args)
    assert json.loads(Path(out).read_text()) == results
    return results, printed


def only_turn(results: dict[str, Any], name: str) -> dict[str, Any]:
    (pause,) = results["passes"][name].values()
    (one,) = pause["turns"]
    return dict(one)


@pytest.mark.slow
def test_a_paused_question_through_the_daemon(bench_run: tuple[dict[str, Any], str]) -> None:
    results, printed = bench_run
    assert results["pauses_ms"] == [450] and results["questions"] == ["tell me a joke"]
    wasted = only_turn(results, "wasted")
    assert wasted["outcome"] == "answered"
    assert wasted["whole_question"] and wasted["ends_marked"]  # the stand-in punctuated its final
    assert wasted["transcript"] == "tell me a joke."
    assert wasted["right_answer"] and wasted["reply"] == "Why did the robot go on holiday?"
    assert wasted["llm_requests"] >= 1 and wasted["llm_questions"][-1] == "tell me a joke."
    assert "never a wrong answer played: met (0 of 1 turns)" in printed
    assert "### Cut-offs" in printed and "| 450 ms | 1 |" in printed


@pytest.mark.slow
async def test_a_cut_off_is_seen_when_the_pause_outlasts_the_end_silence() -> None:
    """Today's daemon, end silence 400 ms, a 600 ms pause: the utterance ends at the pause, the
    question's turn is the opening's, and the rest of the question interrupts it."""
    args = parse_args(["--question", "tell me a joke", "--pause-ms", "600", "--end-silence-ms", "400", "--no-cut-offs"])
    results = await asyncio.wait_for(run(args), 90)
    cut = only_turn(results, "wasted")
    assert not cut["whole_question"] and "joke" not in cut["transcript"]
    assert cut["llm_questions"][0] == cut["transcript"] and cut["llm_requests"] >= 1
    assert not cut["right_answer"]
    assert cut["outcome"] != "answered" or cut["reply"] != cut["expected_reply"]
    (pause,) = results["passes"]["wasted"].values()
    assert pause["summary"]["cut_off"] == 1 and pause["summary"]["whole_question"] == 0


@pytest.mark.slow
def test_the_speculation_at_the_pause_is_dropped_and_the_whole_question_answered(
    bench_run: tuple[dict[str, Any], str],
) -> None:
    wasted = only_turn(bench_run[0], "wasted")
    assert wasted["speculations"] >= 2 and wasted["dropped"] >= 1  # one at the pause, one at the end
    # the opening alone (the stand-in's grammar may hear "tell me" or "tell me a")
    opening = wasted["llm_questions"][0]
    assert wasted["llm_requests"] >= 2 and opening.startswith("tell me") and "joke" not in opening
    assert wasted["llm_streams_closed"] >= 1  # the dropped one's generation was stopped
    assert wasted["right_answer"] and wasted["speculation_played_first"] is False


@pytest.mark.slow
def test_the_short_silence_cuts_a_user_off_at_a_450_ms_pause(bench_run: tuple[dict[str, Any], str]) -> None:
    cut = only_turn(bench_run[0], "cut_offs")
    assert not cut["whole_question"] and cut["transcript"].startswith("tell me") and "joke" not in cut["transcript"]
