"""``moss-voice bench barge-in``: a short session in cancel mode gives real reaction and cancel
propagation figures, and the pieces that turn stand-in observations into figures."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from daemon.tools.bench.barge_in import (
    MATCH_WINDOW_S,
    Propagation,
    Reaction,
    Session,
    match_closes,
    measure,
    report,
    to_json,
)
from daemon.tools.bench.barge_in_first import (
    Start,
    first_answer_json,
    report_first_answer,
    start_from_timelines,
    user_wav,
)


@pytest.mark.slow
async def test_two_interruptions_in_cancel_mode(tmp_path: Path) -> None:
    session = await asyncio.wait_for(measure(2, "cancel", tmp_path), 60)

    assert len(session.reactions) == 2
    for reaction in session.reactions:
        assert reaction.ms is not None, "the robot was not speaking when the user cut in"
        assert 0 < reaction.ms < 5000

    assert len(session.propagations) == 2  # one decision per interrupted answer
    assert [p.reason for p in session.propagations] == ["barge_in", "barge_in"]
    decided = [p.decided_at for p in session.propagations]
    assert decided == sorted(decided) and decided[1] - decided[0] > 1.0  # two separate interruptions
    for p in session.propagations:
        # the answer is long and slow enough that the LLM is still generating when the user cuts in
        assert p.llm_closed_at is not None and p.llm_ms is not None
        assert p.decided_at <= p.llm_closed_at and 0 <= p.llm_ms < 5000
        if p.tts_closed_at is not None:  # a sentence may have been synthesised to its end already
            assert p.tts_ms is not None and 0 <= p.tts_ms < 5000
    # every close either stand-in saw came after a decision: nothing closed on its own
    assert session.unmatched_llm == 0 and session.unmatched_tts == 0

    text = report(session)
    assert "mode cancel: 2 of 2 interruptions came while speaking" in text
    assert "LLM closed: median" in text and "2 of 2 had an open stream" in text
    assert "target < 150 ms" in text and "target < 50 ms" in text
    raw = json.loads(json.dumps(to_json(session)))
    assert raw["mode"] == "cancel" and raw["targets_ms"] == {"reaction": 150.0, "propagation": 50.0}
    assert raw["summary"]["llm_closed"]["count"] == 2
    assert raw["propagations"][0]["llm_ms"] == session.propagations[0].llm_ms


def test_each_close_is_matched_to_the_decision_before_it() -> None:
    decisions = [10.0, 20.0, 30.0]
    closes = [9.5, 10.002, 20.004, 20.1, 30.0 + MATCH_WINDOW_S + 1]
    matched, unmatched = match_closes(decisions, closes)
    assert matched == [10.002, 20.004, None]  # the first close after each; none within reach of the last
    assert unmatched == 2  # one before any decision, one too late
    assert match_closes([], [1.0]) == ([], 1)


def test_an_answer_with_nothing_left_to_close_has_no_figure_and_says_so() -> None:
    session = Session(
        mode="pause",
        reactions=[Reaction(1.0, 1.12), Reaction(5.0, None)],
        propagations=[
            Propagation("a", "interruption_real", 100.0, 100.004, None),
            Propagation("b", "resume_deadline", 200.0, 200.080, None),
        ],
        unmatched_llm=0,
        unmatched_tts=0,
    )
    text = report(session)
    assert "1 of 2 interruptions came while speaking" in text
    assert "LLM closed: median 42 ms, worst 80 ms (2 of 2 had an open stream); target < 50 ms: met by 1 of 2" in text
    assert "TTS closed: no figure (0 of 2 had an open stream" in text
    assert "interruption_real 1, resume_deadline 1" in text
    raw = to_json(session)
    assert raw["summary"]["tts_closed"] == {"count": 0, "of": 2, "median_ms": None, "worst_ms": None, "best_ms": None}


def test_first_answer_figures_come_from_the_timelines(tmp_path: Path) -> None:
    user, onset = user_wav(tmp_path, cut_in_at_s=3.0)
    assert onset == pytest.approx(3.0, abs=0.01)  # the cut-in's first loud sample where it was asked for
    # the listening earcon, the answer from 2.0 s, a pause the robot's own voice caused, the stop
    spans = [(0.0, 0.2), (2.0, 2.5), (2.6, onset + 0.09), (5.0, 6.0)]
    start = start_from_timelines(spans, user, heard=True)
    assert start.answer_at_s == 2.0
    assert start.into_answer_s == pytest.approx(1.0, abs=0.01)
    assert start.reaction_ms == pytest.approx(90, abs=1)
    assert start.false_pauses == 1
    deaf = Start(answer_at_s=2.0, onset_s=3.0, stopped_s=7.1, heard=False)
    text = report_first_answer({"deaf warm-up (before)": [deaf], "double-talk gate (now)": [start]})
    assert "deaf warm-up (before): 1 starts, cut in 1.00-1.00 s into the answer" in text
    assert "median 4100 ms" in text and "under 150 ms: 0 of 1" in text
    assert "median 90 ms" in text and "under 150 ms: 1 of 1" in text
    assert "answered as the next question: 1 of 1" in text
    assert "stopped by the robot's own voice before the cut-in: 1 times" in text
    raw = json.loads(json.dumps(first_answer_json({"now": [start]})))
    assert raw["now"][0]["false_pauses"] == 1 and raw["now"][0]["heard"] is True
