"""``bench latency``'s calibration: the stand-ins' own handling, and the overhead without it."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from daemon.tools.bench.calibration import HOPS, apply_calibration, handling_medians, own_overhead_ms
from daemon.tools.bench.latency import calibration_round, make_input, scenario_stubs
from daemon.tools.bench.report import render_breakdown, render_table, render_targets
from daemon.tools.bench.scenarios import SCENARIOS


async def test_the_calibration_measures_each_stand_in_beyond_its_configured_delays(tmp_path: Path) -> None:
    smoke = SCENARIOS["smoke"]
    qwav, _ = make_input(tmp_path)
    async with scenario_stubs(smoke) as stubs:
        rounds = [await calibration_round(stubs, smoke, qwav) for _ in range(2)]
        asked = await stubs.llm_requests()
        synthesized = await stubs.synth_log()
    for figures in rounds:
        assert set(figures) == set(HOPS)
        for hop, ms in figures.items():
            assert math.isfinite(ms) and ms > 0, (hop, ms)
            # the configured delays are out: what is left is far below any of them plus a second
            assert ms < 1000, (hop, ms)
    assert len(asked) == 2 and asked[0].question == "what is the weather like today"
    assert len(synthesized) == 2  # one sentence per round: the first clause


def stats(median: float | None) -> dict[str, float | None]:
    return {"median": median, "p90": median, "max": median}


def test_the_own_overhead_subtracts_the_median_of_each_stand_in() -> None:
    rounds = [
        {"asr": 2.0, "llm": 30.0, "tts": 3.0},  # a slow first answer: the median ignores it
        {"asr": 1.0, "llm": 4.0, "tts": 3.5},
        {"asr": 3.0, "llm": 5.0, "tts": 2.5},
    ]
    assert handling_medians(rounds) == {"asr": 2.0, "llm": 5.0, "tts": 3.0, "total": 10.0}
    assert handling_medians([]) == {"asr": None, "llm": None, "tts": None, "total": None}

    turns: list[dict[str, Any]] = [
        {"first_audio_ms": 1030.0, "limit_ms": 1000.0},
        {"first_audio_ms": 1045.5, "limit_ms": 1010.0},
        {"first_audio_ms": None, "limit_ms": 1000.0},  # no reply
    ]
    medians = apply_calibration(turns, rounds)
    assert medians["total"] == 10.0
    assert [t["overhead_own_ms"] for t in turns] == [20.0, 25.5, None]
    assert own_overhead_ms(1030.0, 1000.0, None) is None


def results_with(overhead: float, own: float, stand_ins: dict[str, float | None]) -> dict[str, Any]:
    daemon = {
        "vad_decided_ms": stats(712.0),
        "step_asr_ms": stats(55.0),
        "step_to_llm_ms": stats(1.0),
        "step_llm_ms": stats(104.0),
        "step_to_tts_ms": stats(300.0),
        "step_tts_ms": stats(60.0),
        "step_to_speaker_ms": stats(10.0),
    }
    return {
        "n": 5,
        "block_ms": 20,
        "scenarios": {
            "fast": {
                "first_clause": "Let me tell you about this building.",
                "limit_ms": {
                    "end_silence": 700.0,
                    "asr": 50.0,
                    "ttft": 100.0,
                    "first_clause": 290.0,
                    "tts": 55.0,
                    "total": 1195.0,
                },
                "stand_ins_ms": stand_ins,
                "summary": {
                    "first_audio_ms": stats(1195.0 + overhead),
                    "first_sound_ms": stats(1200.0 + overhead),
                    "overhead_ms": stats(overhead),
                    "overhead_own_ms": stats(own),
                    "longest_gap_ms": stats(20.0),
                    "daemon": daemon,
                },
            }
        },
    }


def test_the_target_is_judged_on_the_own_overhead_and_the_old_figure_still_shown() -> None:
    results = results_with(28.0, 16.0, {"asr": 3.0, "llm": 5.0, "tts": 4.0, "total": 12.0})
    (line,) = [line for line in render_targets(results) if line.strip().startswith("fast:")]
    assert "own overhead median 16 ms < 20: met" in line
    assert "overhead 28 ms with the stand-ins' own handling, 12 ms" in line
    # VAD 12 + output device 10 of the 16: the rest is -6
    assert "12 waiting for the microphone block" in line and "the rest -6" in line

    over = results_with(40.0, 28.0, {"asr": 3.0, "llm": 5.0, "tts": 4.0, "total": 12.0})
    assert "own overhead median 28 ms < 20: NOT met" in "\n".join(render_targets(over))


def test_the_tables_show_the_stand_ins_share_beside_the_overhead() -> None:
    results = results_with(28.0, 16.0, {"asr": 3.0, "llm": 5.0, "tts": 4.0, "total": 12.0})
    breakdown = render_breakdown(results).splitlines()
    header = breakdown[1]
    assert header.split()[-6:] == ["overhead", "of", "it", "stand-ins", "own", "overhead"]
    (row,) = [line for line in breakdown if line.startswith("fast ")]
    assert row.split()[-3:] == ["28.0", "12.0", "16.0"]
    assert "  fast: ASR 3.0 (in 'ASR hop'), LLM 5.0" in "\n".join(breakdown)

    table = render_table(results).splitlines()
    assert "own overhead" in table[1]
    (row,) = [line for line in table if line.startswith("fast ")]
    assert "28 / 28" in row and "16 / 16" in row


def test_without_a_calibration_the_figures_say_not_measured() -> None:
    results = results_with(28.0, 16.0, {"asr": None, "llm": None, "tts": None, "total": None})
    results["scenarios"]["fast"]["summary"]["overhead_own_ms"] = stats(None)
    text = "\n".join(render_targets(results))
    assert "own overhead median - ms < 20: not measured" in text and "overhead 28 ms" in text
    (row,) = [line for line in render_breakdown(results).splitlines() if line.startswith("fast ")]
    assert row.split()[-3:] == ["28.0", "-", "-"]
