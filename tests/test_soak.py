"""A short soak (``moss-voice bench soak``): a daemon process takes turns back to back through the
control API while the stand-ins misbehave at random; every turn ends exactly once, the daemon
neither dies nor leaks tasks, file descriptors or memory, and answers once the services behave.
And the report's own rules, on made-up runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.app import KEPT_TURNS, App
from daemon.config import Settings
from daemon.tools.bench.soak import Sample, SoakReport, TurnRecord, fault_modes, soak, summary
from daemon.tools.stubs import funasr_behaviour
from states.turn import Turn

TURNS = 20
SEED = 3
"""Draws faults of all three services in 20 turns, and all three ways of starting a turn."""


@pytest.mark.slow
async def test_a_short_soak_keeps_every_invariant(tmp_path: Path) -> None:
    report = await soak(TURNS, seed=SEED, fault_rate=0.5, warmup=2, sample_every=10, workdir=tmp_path)
    print(summary(report))  # the figures, when the test fails
    assert not report.crashed and report.exit_code == 0
    assert [r.finished for r in report.records] == [1] * TURNS
    assert report.turn_finished_logged == report.turns_started == 2 + TURNS + report.final_tries  # warm-up, run, after
    assert report.duplicate_turn_ids == 0
    assert not any(r.stuck for r in report.records)
    assert {r.status for r in report.records} <= {200, 202, 502}  # 502: GET /listen when the ASR failed
    assert report.tracebacks == 0
    assert {f.split(":")[0] for f in report.faults} == {"asr", "llm", "tts"}
    assert set(report.actions) == {"wake", "listen", "say"}
    assert report.outcomes["answered"] > 0 and report.outcomes["failed"] > 0
    assert report.final_outcome == "answered"
    assert report.start is not None and report.end is not None
    assert report.end.fds <= report.start.fds + 2
    assert 0 < report.end.tasks <= report.start.tasks + 2
    assert report.rss_growth_mb is not None and report.rss_growth_mb < 10
    assert report.problems() == []


def test_every_misbehaviour_a_request_can_meet_is_drawn_from() -> None:
    modes = fault_modes()
    assert modes["asr"] == funasr_behaviour.MISBEHAVIOURS
    assert "cut" in modes["llm"] and "starting" not in modes["llm"] and None not in modes["llm"]
    assert set(modes["tts"]) == {
        *("refuse", "hang", "error_500", "truncate", "empty", "garbage", "ws_error"),
        *("endless", "trickle", "flood"),
    }


def _clean_report() -> SoakReport:
    report = SoakReport(turns=2, seed=1, fault_rate=0.5, exit_code=0, final_outcome="answered", final_tries=1)
    report.records = [
        TurnRecord(0, "wake", "llm:cut", 202, finished=1, outcome="failed"),
        TurnRecord(1, "say", None, 202, finished=1, outcome="said"),
    ]
    report.turns_started = report.turn_finished_logged = 4
    report.start = Sample(turn=0, rss_kb=70_000, fds=11, tasks=9)
    report.end = Sample(turn=2, rss_kb=71_000, fds=12, tasks=9)
    return report


def test_a_clean_report_has_no_problems_and_says_so() -> None:
    report = _clean_report()
    assert report.problems() == []
    text = summary(report)
    assert "problems: none" in text and "'llm:cut': 1" in text and "fds 11 -> 12" in text


def test_each_broken_invariant_is_named() -> None:
    report = _clean_report()
    report.records[1].finished = 2
    report.records[0].status = 500
    report.turn_finished_logged = 5
    report.end = Sample(turn=2, rss_kb=90_000, fds=20, tasks=30)
    report.final_outcome = "failed"
    report.tracebacks = 1
    problems = "\n".join(report.problems())
    for words in (
        "4 turns started, 5 turn_finished logged",
        "exactly one turn_finished: [1]",
        "control API answers",
        "1 tracebacks",
        "1 clean turns after the run: the last ended 'failed'",
        "file descriptors grew from 11 to 20",
        "tasks grew from 9 to 30",
        "RSS grew 19.5 MB",
    ):
        assert words in problems


async def test_the_daemon_keeps_only_its_last_turns() -> None:
    """Found by the soak: every finished turn stayed in ``App.turns`` (about 1.8 kB a turn)."""
    app = App(Settings())
    for i in range(KEPT_TURNS + 50):
        await app._turn_ended(Turn(id=str(i), outcome="answered"))
    assert len(app.turns) == KEPT_TURNS and app.turns[-1].id == str(KEPT_TURNS + 49)
