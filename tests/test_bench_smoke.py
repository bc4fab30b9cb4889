"""The latency benchmark end to end on its shortest scenario, and the pieces it relies on."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from daemon.__main__ import build_parser
from daemon.clients.asr import FunAsrClient
from daemon.config import AsrSettings
from daemon.tools.bench.latency import chosen_scenarios, run, speculation_points, speculation_problem, write_outputs
from daemon.tools.bench.report import render_speculation
from daemon.tools.bench.scenarios import DEFAULT_SCENARIOS, SCENARIOS, first_clause, limit_for, make_answer, target_ms
from daemon.tools.bench.timeline import reply_after
from daemon.tools.stubs.funasr import FunAsrBehaviour, FunAsrStub
from daemon.tools.stubs.openai import tokenize

FIGURES = ("first_audio_ms", "first_sound_ms", "overhead_ms", "longest_gap_ms")


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The options of ``moss-voice bench latency``, as the CLI parses them."""
    return build_parser().parse_args(["bench", "latency", *argv])


@dataclass(frozen=True)
class SmokeRun:
    args: argparse.Namespace
    results: dict[str, Any]
    printed: str
    seconds: float


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> SmokeRun:
    """One turn of the smoke scenario with speculation off, one at 250 ms, one sequential (run once
    for the module: a few daemon turns)."""
    folder = tmp_path_factory.mktemp("smoke")
    argv = ["-n", "1", "--scenario", "smoke", "--speculate-after-ms", "250"]
    args = parse_args([*argv, "--json", str(folder / "latency.json"), "--png", str(folder / "latency.png")])
    started = time.monotonic()
    results = asyncio.run(asyncio.wait_for(run(args), 90))
    seconds = time.monotonic() - started
    return SmokeRun(args, results, write_outputs(results, args), seconds)


@pytest.mark.slow
def test_one_smoke_turn_gives_plausible_figures(smoke_run: SmokeRun) -> None:
    printed, out, png = smoke_run.printed, smoke_run.args.json, smoke_run.args.png
    assert smoke_run.seconds < 90
    assert "smoke" in printed and "first audio" in printed
    assert "where the overhead goes" in printed and "targets:" in printed and "<= 50: " in printed
    assert png.exists() or "matplotlib is not installed" in printed

    results = json.loads(out.read_text())
    assert results["n"] == 1
    smoke = results["scenarios"]["smoke"]
    assert set(smoke["limit_ms"]) == {"end_silence", "asr", "ttft", "first_clause", "tts", "total"}
    assert smoke["limit_ms"]["total"] >= 700 + 50 + 100 + 50  # end silence + ASR + TTFT + TTS at least
    (turn,) = smoke["turns"]
    (seq,) = smoke["sequential_turns"]
    for key in FIGURES:
        assert turn[key] is not None, key
    # what the user waits for is at least what the services cost, and not absurdly more
    assert smoke["limit_ms"]["total"] * 0.8 <= turn["first_audio_ms"] < 5000
    assert turn["longest_gap_ms"] >= 0
    assert turn["first_sound_ms"] >= turn["first_audio_ms"]
    assert seq["first_audio_ms"] is not None and 0 < seq["first_audio_ms"] < 10_000
    summary = smoke["summary"]
    for key in (*FIGURES, "sequential_first_audio_ms"):
        assert set(summary[key]) == {"median", "p90", "max"}
    assert summary["first_audio_ms"]["median"] == turn["first_audio_ms"]
    assert summary["ratio_sequential_to_streaming"] > 0
    daemon = turn["daemon"]  # the daemon's own clock agrees that the VAD ended the utterance after the speech
    assert daemon["vad_decided_ms"] is not None and 0 < daemon["vad_decided_ms"] < turn["first_audio_ms"]


@pytest.mark.slow
def test_the_stand_ins_own_handling_is_measured_and_left_out_of_the_own_overhead(smoke_run: SmokeRun) -> None:
    smoke = smoke_run.results["scenarios"]["smoke"]
    (calibration,) = smoke["calibration_rounds"]  # one round per turn
    assert set(calibration) == {"asr", "llm", "tts"} and all(ms > 0 for ms in calibration.values())
    stand_ins = smoke["stand_ins_ms"]
    assert stand_ins["total"] == pytest.approx(sum(calibration.values()), abs=0.2)
    (turn,) = smoke["turns"]
    assert turn["overhead_own_ms"] == pytest.approx(turn["overhead_ms"] - stand_ins["total"], abs=0.2)
    assert smoke["summary"]["overhead_own_ms"]["median"] == turn["overhead_own_ms"]
    assert "own overhead median" in smoke_run.printed and "of it stand-ins" in smoke_run.printed


@pytest.mark.slow
def test_speculation_is_measured_side_by_side_with_it_off(smoke_run: SmokeRun) -> None:
    smoke = smoke_run.results["scenarios"]["smoke"]
    assert smoke_run.results["speculate_after_ms"] == [250] and smoke_run.results["end_silence_ms"] == [700]
    assert smoke_run.results["warm_up_turns"] == 1
    (on,) = smoke["speculation"].values()
    (turn,) = on["turns"]
    for key in FIGURES:
        assert turn[key] is not None, key
    # the speculative limit: the services start 250 ms into the silence, the answer plays at 700 at the earliest
    assert on["limit_ms"] == pytest.approx(max(700, 250 + smoke["services_ms"]), abs=1)
    assert on["target_ms"] == pytest.approx(on["limit_ms"] + 60, abs=1)
    assert smoke["target_ms"] == pytest.approx(smoke["limit_ms"]["total"] + 30, abs=1)
    assert turn["first_audio_ms"] >= 700 * 0.8  # never before the end silence
    assert on["sooner_by_ms"] == pytest.approx(smoke["turns"][0]["first_audio_ms"] - turn["first_audio_ms"], abs=0.2)
    assert turn["llm_requests"] >= 1 and smoke["turns"][0]["llm_requests"] == 1
    assert set(turn["daemon"]) >= {"speculations", "speculation_played_first"}
    printed = smoke_run.printed
    assert "speculation off and on, side by side (vad.end_silence_ms = 700)" in printed
    assert "250 ms" in printed and "sooner by" in printed


@pytest.mark.slow
def test_the_speculative_turn_reports_one_speculation_played(smoke_run: SmokeRun) -> None:
    (on,) = smoke_run.results["scenarios"]["smoke"]["speculation"].values()
    (turn,) = on["turns"]
    assert turn["daemon"]["speculations"] == 1  # no pause inside the question: one speculation, played
    assert turn["daemon"]["speculation_played_first"] is True
    assert turn["llm_requests"] == 1
    assert on["summary"]["daemon"]["speculations"]["median"] == 1


def test_speculation_points_are_parsed_and_checked_against_the_end_silence() -> None:
    args = parse_args(["--speculate-after-ms", "300,200", "--speculate-after-ms", "250", "--speculate-after-ms", "200"])
    assert speculation_points(args) == [200, 250, 300]
    assert speculation_problem(args) is None
    assert speculation_points(parse_args([])) == []
    assert [s.end_silence_ms for s in chosen_scenarios(parse_args([]))] == [700] * len(DEFAULT_SCENARIOS)
    late = parse_args(["--speculate-after-ms", "250", "--end-silence-ms", "250"])
    assert [s.end_silence_ms for s in chosen_scenarios(late)] == [250] * len(DEFAULT_SCENARIOS)
    assert speculation_problem(late) == "--speculate-after-ms 250 is not shorter than the end silence (250 ms)"
    for argv in (["--speculate-after-ms", "0"], ["--speculate-after-ms", "x"], ["--speculate-after-ms", ","]):
        with pytest.raises(SystemExit):
            parse_args(argv)


def test_speculation_moves_the_limit_to_the_speculation_point_plus_the_services() -> None:
    slow = SCENARIOS["slow-services"]
    limit = limit_for(slow, tts_synth_s=0.05)
    assert slow.end_silence_ms == 700 and limit.services_s > limit.end_silence_s  # slower than the silence
    assert limit.with_speculation_s(None) == pytest.approx(limit.total_s)
    assert limit.with_speculation_s(250) == pytest.approx(0.25 + limit.services_s)
    assert target_ms(limit, None) == pytest.approx(limit.total_s * 1000 + 30)
    assert target_ms(limit, 250) == pytest.approx((0.25 + limit.services_s) * 1000 + 60)
    # the promise: with services slower than the silence, at least 400 ms sooner
    assert target_ms(limit, None) - target_ms(limit, 250) >= 400
    quick = limit_for(SCENARIOS["smoke"], tts_synth_s=0.01)
    assert quick.services_s + 0.25 < 0.7
    assert quick.with_speculation_s(250) == pytest.approx(0.7)  # quick services: the silence is the limit


def test_the_side_by_side_table_says_how_much_sooner_and_whether_targets_are_met() -> None:
    def stats(median: float | None) -> dict[str, float | None]:
        return {"median": median, "p90": median, "max": median}

    def mode(first: float, overhead: float, speculations: float | None) -> dict[str, Any]:
        return {
            "first_audio_ms": stats(first),
            "overhead_ms": stats(overhead),
            "llm_requests": stats(1),
            "daemon": {"speculations": stats(speculations)},
        }

    results = {
        "n": 3,
        "end_silence_ms": [700],
        "speculate_after_ms": [250],
        "scenarios": {
            "slow-services": {
                "limit_ms": {"end_silence": 700.0, "total": 1900.0},
                "services_ms": 1200.0,
                "target_ms": 1930.0,
                "summary": mode(1925, 25, None),
                "speculation": {
                    "250": {
                        "limit_ms": 1450.0,
                        "target_ms": 1510.0,
                        "summary": mode(1530, 80, 1),
                        "sooner_by_ms": 395.0,
                    }
                },
            }
        },
    }
    text = render_speculation(results)
    lines = text.splitlines()
    off = next(line for line in lines if line.startswith("slow-services"))
    on = lines[lines.index(off) + 1]
    assert off.split()[-1] == "met" and "1925 / 1925" in off
    assert on.split()[:4] == ["250", "ms", "1450", "1510"] and on.endswith("NOT met") and " 395 " in on
    assert "sooner by 395 >= 400: NOT met" in text


def test_bad_arguments_are_refused() -> None:
    for argv in (["-n", "0"], ["--scenario", "nope"], ["--window", "0"], ["--block-ms", "0"]):
        with pytest.raises(SystemExit):
            parse_args(argv)
    args = parse_args([])
    assert args.n == 5 and args.scenario is None and args.json is None
    assert args.func.__module__ == "daemon.tools.bench.cli"


def test_the_limit_adds_the_stages_and_counts_first_clause_tokens() -> None:
    typical = SCENARIOS["typical"]
    answer = make_answer(150)
    assert 120 <= len(tokenize(answer)) <= 150
    clause, index = first_clause(answer)
    assert answer.startswith(clause) and clause.endswith(".")
    assert index >= len(tokenize(clause)) - 1  # the boundary may need the next token
    limit = limit_for(typical, tts_synth_s=0.01)
    assert limit.first_clause_s == pytest.approx(index / 25)
    assert limit.total_s == pytest.approx(0.7 + 0.2 + 0.35 + index / 25 + 0.15 + 0.01)


def test_the_reply_is_read_after_the_question_and_its_gaps_found(tmp_path: Path) -> None:
    import wave

    rate = 1000
    samples = bytearray(2 * 5000)
    for start, end in ((100, 200), (3000, 3500), (3700, 4000)):  # earcon, then a reply with a gap
        for i in range(start, end):
            samples[2 * i : 2 * i + 2] = (1000).to_bytes(2, "little", signed=True)
    path = tmp_path / "out.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(bytes(samples))
    spans = [(100, 200), (3000, 3500), (3700, 4000)]
    reply = reply_after(spans, rate, path, shift_s=0.5, after_s=2.0)  # output opened 0.5 s after the input
    assert reply is not None
    assert reply.first_audio_s == pytest.approx(3.5)
    assert reply.first_sound_s == pytest.approx(3.5)
    assert reply.longest_gap_s == pytest.approx(0.2)
    assert reply.audio_s == pytest.approx(0.8)
    assert reply_after(spans, rate, path, shift_s=0.5, after_s=5.0) is None


async def test_the_asr_stand_in_delays_its_final_result() -> None:
    behaviour = FunAsrBehaviour(transcript_override="hello there", final_delay_s=0.4)
    async with FunAsrStub(behaviour=behaviour) as stub:
        settings = AsrSettings(url=stub.url, final_timeout_s=3.0, connect_timeout_s=2.0)
        session = await asyncio.wait_for(FunAsrClient(settings).open_session(), 10)
        try:
            await session.send_audio(bytes(1920 * 3))
            t0 = time.monotonic()
            transcript = await asyncio.wait_for(session.finish(), 10)
            waited = time.monotonic() - t0
        finally:
            await session.aclose()
    assert transcript.text == "hello there"
    assert 0.4 <= waited < 3.0
    with pytest.raises(ValueError, match="final_delay_s"):
        FunAsrBehaviour(final_delay_s=-1)
