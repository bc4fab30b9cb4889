"""The latency benchmark end to end on its shortest scenario, and the pieces it relies on."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

import pytest

from daemon.__main__ import build_parser
from daemon.clients.asr import FunAsrClient
from daemon.config import AsrSettings
from daemon.tools.bench.latency import run, write_outputs
from daemon.tools.bench.scenarios import SCENARIOS, first_clause, limit_for, make_answer
from daemon.tools.bench.timeline import reply_after
from daemon.tools.stubs.funasr import FunAsrBehaviour, FunAsrStub
from daemon.tools.stubs.openai import tokenize

FIGURES = ("first_audio_ms", "first_sound_ms", "overhead_ms", "longest_gap_ms")


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The options of ``moss-voice bench latency``, as the CLI parses them."""
    return build_parser().parse_args(["bench", "latency", *argv])


@pytest.mark.slow
async def test_one_smoke_turn_gives_plausible_figures(tmp_path: Path) -> None:
    out = tmp_path / "latency.json"
    png = tmp_path / "latency.png"
    args = parse_args(["-n", "1", "--scenario", "smoke", "--json", str(out), "--png", str(png)])
    started = time.monotonic()
    results = await asyncio.wait_for(run(args), 60)
    assert time.monotonic() - started < 60
    printed = write_outputs(results, args)
    assert "smoke" in printed and "first audio" in printed
    assert "where the overhead goes" in printed and "targets:" in printed and "<= 50: " in printed
    assert png.exists() or "matplotlib is not installed" in printed

    results = json.loads(out.read_text())
    assert results["n"] == 1
    smoke = results["scenarios"]["smoke"]
    assert set(smoke["limit_ms"]) == {"end_silence", "asr", "ttft", "first_clause", "tts", "total"}
    assert smoke["limit_ms"]["total"] >= 500 + 50 + 100 + 50  # end silence + ASR + TTFT + TTS at least
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
    assert limit.total_s == pytest.approx(0.5 + 0.2 + 0.35 + index / 25 + 0.15 + 0.01)


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
