"""``moss-voice bench latency``: what the user feels, measured at the audio output.

For each scenario (service latencies injected into the stand-ins), ``n`` fresh daemon turns with
a WAV microphone and a WAV speaker: the latency is read off the two timelines, from the last loud
sample of the question in the input to the first reply sample in the output. The limit the
services set (end silence + ASR + time to first token + first clause + TTS first chunk) is
subtracted: the rest is the overhead. After each turn, bare clients make the daemon's requests to
the same stand-ins (``calibration``): what they take beyond the configured delays is the
stand-ins' own handling, and the overhead without it (``overhead_own_ms``) is moss-voice's. The
same turns through a sequential controller (whole transcript, whole answer, whole TTS, then play)
give the ratio streaming saves. The stand-ins run in a process of their own (``stub_process``),
as the services run on another machine.

With ``--speculate-after-ms``, each turn is followed by one turn per speculation point
(``vad.speculate_after_ms``) against the same stand-ins, so that the two are compared in one run:
the limit becomes max(end silence, speculation point + the services), and "sooner by" is the
difference of the medians. The end silence is the daemon's default (700 ms) unless
``--end-silence-ms`` says otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from daemon.app import App
from daemon.config import AsrSettings, LlmSettings, Settings, TtsSettings, VadSettings
from daemon.logs import configure_logging
from daemon.tools.bench.calibration import Configured, apply_calibration, calibrate
from daemon.tools.bench.report import render_breakdown, render_png, render_speculation, render_table
from daemon.tools.bench.scenarios import (
    BLOCK_MS,
    DEFAULT_SCENARIOS,
    MIC_BLOCK_MS,
    QUESTION,
    SCENARIOS,
    WINDOW_S,
    Limit,
    Scenario,
    first_clause,
    limit_for,
    target_ms,
)
from daemon.tools.bench.sequential import run_sequential
from daemon.tools.bench.stub_process import StubProcess, StubUrls
from daemon.tools.bench.timeline import Reply, last_loud_s, read_pcm, reply_after
from daemon.tools.bench.wav_daemon import wav_daemon_settings
from daemon.tools.stubs.funasr_behaviour import FunAsrBehaviour
from daemon.tools.stubs.paddlespeech import PaddleSpeechBehaviour
from daemon.tools.stubs.questions import make_question_wav
from daemon.tools.stubs.runner import demo_llm_behaviour
from daemon.tools.stubs.tokens import tokenize
from hardware.wav_mic import WavMicrophone
from hardware.wav_speaker import WavSpeaker
from hardware.wavfile import write_wav
from states.turn import report_fields

log = structlog.get_logger()

RATE = 16000
LEAD_IN_S = 0.5
TURN_TIMEOUT_S = 90.0


def make_input(workdir: Path, lead_in_s: float = LEAD_IN_S, name: str = "question") -> tuple[Path, float]:
    """The question after ``lead_in_s`` of silence; returns the path and where the speech ends (s)."""
    raw = make_question_wav(QUESTION, workdir / "question-raw.wav")
    pcm, rate = read_pcm(raw)
    samples = np.concatenate([np.zeros(int(lead_in_s * rate), dtype="<i2"), pcm])
    path = write_wav(workdir / f"{name}.wav", samples, rate)
    return path, last_loud_s(samples, rate)


def lead_in_s(turn: int, n: int, block_ms: int) -> float:
    """Turn ``turn`` of ``n`` starts the question a further ``turn / n`` of a speaker period late.

    Where the end of speech falls within the devices' periods decides how long the VAD waits for
    the block that completes the silence and the first audio for the speaker's next period; a
    user's speech ends anywhere. With one fixed input every turn would land on the same spot, and
    the medians would say more about that spot than about the periods."""
    return LEAD_IN_S + turn / n * block_ms / 1000


def _settings(
    urls: StubUrls,
    scenario: Scenario,
    qwav: Path,
    out: Path,
    block_ms: int = BLOCK_MS,
    speculate_after_ms: int | None = None,
    mic_block_ms: int = MIC_BLOCK_MS,
) -> Settings:
    return wav_daemon_settings(
        urls,
        qwav,
        out,
        vad=VadSettings(end_silence_ms=scenario.end_silence_ms, speculate_after_ms=speculate_after_ms),
        audio={"block_ms": block_ms, "mic_block_ms": mic_block_ms},
    )


def _reply(mic: WavMicrophone, speaker: WavSpeaker, out: Path, speech_end_s: float) -> Reply | None:
    assert mic.opened_at is not None and speaker.opened_at is not None
    shift = speaker.opened_at - mic.opened_at
    return reply_after(speaker.played_audio_spans, speaker.sample_rate, out, shift_s=shift, after_s=speech_end_s)


async def streaming_turn(
    settings: Settings, out: Path, speech_end_s: float, window_s: float
) -> tuple[Reply | None, dict[str, Any]]:
    """One fresh daemon run (``once``), stopped ``window_s`` after the reply started."""
    stop = asyncio.Event()
    app = App(settings, once=True)

    async def watch() -> None:
        while not stop.is_set():
            await asyncio.sleep(0.05)
            assistant = app.assistant
            if assistant is None:
                continue
            mic, speaker = assistant.mic, assistant.speaker
            if not isinstance(mic, WavMicrophone) or not isinstance(speaker, WavSpeaker):
                continue
            if mic.opened_at is None or speaker.opened_at is None:
                continue
            shift = speaker.opened_at - mic.opened_at
            started = [a / speaker.sample_rate + shift for a, _ in speaker.played_audio_spans]
            started = [t for t in started if t >= speech_end_s]
            if started and time.monotonic() - mic.opened_at > started[0] + window_s:
                stop.set()

    watcher = asyncio.create_task(watch(), name="bench-watch")
    try:
        await asyncio.wait_for(app.run(stop), TURN_TIMEOUT_S)
    finally:
        watcher.cancel()
        await asyncio.wait([watcher])
    assert app.assistant is not None
    mic, speaker = app.assistant.mic, app.assistant.speaker
    assert isinstance(mic, WavMicrophone) and isinstance(speaker, WavSpeaker)
    return _reply(mic, speaker, out, speech_end_s), {
        **_daemon_times(app, mic, speech_end_s),
        **speculation_fields(app),
    }


def speculation_fields(app: App) -> dict[str, Any]:
    """What ``turn_finished`` says of the last turn's speculations (None before parts A1+A2 report them)."""
    if not app.turns:
        return {}
    fields = report_fields(app.turns[-1])
    return {key: fields.get(key) for key in SPECULATION_FIELDS}


SPECULATION_FIELDS = ("speculations", "speculation_played_first")


def _daemon_times(app: App, mic: WavMicrophone, speech_end_s: float) -> dict[str, float | None]:
    """Where the daemon's own clock says the time went: ``vad_decided_ms`` is when the VAD ended
    the utterance (after the real end of speech, end silence included), then the daemon's stages."""
    if not app.turns or mic.opened_at is None:
        return {}
    times = app.turns[-1].times
    figures: dict[str, float | None] = {
        key: None if value is None else float(value) for key, value in times.latencies_ms().items()
    }
    decided = None if times.speech_end is None else (times.speech_end - mic.opened_at - speech_end_s) * 1000
    figures["vad_decided_ms"] = None if decided is None else round(decided, 1)
    for name, a, b in STEPS:
        start, end = getattr(times, a), getattr(times, b)
        figures[name] = None if start is None or end is None else round((end - start) * 1000, 1)
    return figures


STEPS = (
    ("step_asr_ms", "speech_end", "asr_final"),
    ("step_to_llm_ms", "asr_final", "llm_request"),
    ("step_llm_ms", "llm_request", "llm_first_token"),
    ("step_to_tts_ms", "llm_first_token", "tts_request"),
    ("step_tts_ms", "tts_request", "tts_first_audio"),
    ("step_to_speaker_ms", "tts_first_audio", "first_audio"),
)
"""The daemon's own clock, stage by stage from the end of speech to the first audio."""


async def sequential_turn(settings: Settings, qwav: Path, out: Path, speech_end_s: float) -> Reply | None:
    mic, speaker = await asyncio.wait_for(run_sequential(settings, qwav, out), TURN_TIMEOUT_S)
    return _reply(mic, speaker, out, speech_end_s)


def _turn_figures(reply: Reply | None, speech_end_s: float, limit_s: float | None) -> dict[str, float | None]:
    if reply is None:
        return {"first_audio_ms": None, "first_sound_ms": None, "overhead_ms": None, "longest_gap_ms": None}
    first = (reply.first_audio_s - speech_end_s) * 1000
    sound = None if reply.first_sound_s is None else (reply.first_sound_s - speech_end_s) * 1000
    return {
        "first_audio_ms": round(first, 1),
        "first_sound_ms": None if sound is None else round(sound, 1),
        "overhead_ms": None if limit_s is None else round(first - limit_s * 1000, 1),
        "longest_gap_ms": round(reply.longest_gap_s * 1000, 1),
        "audio_s": round(reply.audio_s, 2),
    }


def _stats(values: Sequence[float | None]) -> dict[str, float | None]:
    valid = [v for v in values if v is not None]
    if not valid:
        return {"median": None, "p90": None, "max": None}
    return {
        "median": round(float(statistics.median(valid)), 1),
        "p90": round(float(np.percentile(valid, 90)), 1),
        "max": round(float(max(valid)), 1),
    }


async def _timed_turn(
    stubs: StubProcess,
    settings: Settings,
    out: Path,
    speech_end_s: float,
    window_s: float,
    scenario: Scenario,
    speculate_after_ms: int | None,
) -> tuple[dict[str, Any], float]:
    """One streaming turn: its figures against its own limit, and the stand-in TTS's own time for
    the first sentence (espeak-ng, from its log). ``llm_requests``: chat requests the LLM
    stand-in received during the turn (speculations included)."""
    synthesized = len(await stubs.synth_log())
    asked = len(await stubs.llm_requests())
    reply, daemon_times = await streaming_turn(settings, out, speech_end_s, window_s)
    synth_log = await stubs.synth_log()
    synth = synth_log[synthesized][1] if len(synth_log) > synthesized else 0.0
    limit = limit_for(scenario, tts_synth_s=synth)
    limit_s = limit.with_speculation_s(speculate_after_ms)
    turn = {
        **_turn_figures(reply, speech_end_s, limit_s),
        "limit_ms": round(limit_s * 1000, 1),
        "target_ms": round(target_ms(limit, speculate_after_ms), 1),
        "llm_requests": len(await stubs.llm_requests()) - asked,
        "daemon": daemon_times,
    }
    return turn, synth


def _summary(turns: list[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {
        key: _stats([t.get(key) for t in turns])
        for key in (
            "first_audio_ms",
            "first_sound_ms",
            "overhead_ms",
            "overhead_own_ms",
            "longest_gap_ms",
            "llm_requests",
        )
    }
    summary["daemon"] = {
        key: _stats([t["daemon"].get(key) for t in turns if isinstance(t.get("daemon"), dict)])
        for key in (
            "vad_decided_ms",
            "asr_final_ms",
            "llm_first_token_ms",
            "tts_first_audio_ms",
            "first_audio_ms",
            "speculations",
            *(name for name, _, _ in STEPS),
        )
    }
    return summary


async def measure_scenario(
    scenario: Scenario,
    n: int,
    workdir: Path,
    *,
    sequential: bool = True,
    window_s: float = WINDOW_S,
    block_ms: int = BLOCK_MS,
    mic_block_ms: int = MIC_BLOCK_MS,
    speculate: Sequence[int] = (),
) -> dict[str, Any]:
    """``n`` turns with speculation off and, side by side (turn by turn, against the same
    stand-ins, after one warm-up turn, the order of the modes rotating), ``n`` with each of
    ``speculate`` (``vad.speculate_after_ms``)."""
    clause, index = first_clause(scenario.answer)
    synths: list[float] = []
    turns: list[dict[str, Any]] = []
    seq_turns: list[dict[str, Any]] = []
    spec_turns: dict[int, list[dict[str, Any]]] = {ms: [] for ms in speculate}
    rounds: list[dict[str, float]] = []
    async with scenario_stubs(scenario) as stubs:
        if speculate:  # compared side by side: the stand-ins' first answers are slower, for nobody
            qwav, speech_end_s = await asyncio.to_thread(make_input, workdir)
            out = workdir / f"{scenario.name}-warm-up.wav"
            await streaming_turn(
                _settings(stubs.urls, scenario, qwav, out, block_ms, mic_block_ms=mic_block_ms),
                out,
                speech_end_s,
                window_s,
            )
        modes: list[int | None] = [None, *speculate]
        for i in range(n):
            lead_in = lead_in_s(i, n, block_ms)
            qwav, speech_end_s = await asyncio.to_thread(make_input, workdir, lead_in, f"question-{i}")
            shift = i % len(modes)  # each mode takes its turn at going first
            for ms in modes[shift:] + modes[:shift]:
                name = "stream" if ms is None else f"speculate{ms}"
                out = workdir / f"{scenario.name}-{name}-{i}.wav"
                settings = _settings(
                    stubs.urls, scenario, qwav, out, block_ms, speculate_after_ms=ms, mic_block_ms=mic_block_ms
                )
                turn, synth = await _timed_turn(stubs, settings, out, speech_end_s, window_s, scenario, ms)
                if ms is None:
                    synths.append(synth)
                    turns.append(turn)
                else:
                    spec_turns[ms].append(turn)
                log.warning("bench_turn", scenario=scenario.name, mode=name, turn=i, **turn)
            if sequential:
                out = workdir / f"{scenario.name}-seq-{i}.wav"
                reply = await sequential_turn(
                    _settings(stubs.urls, scenario, qwav, out, block_ms, mic_block_ms=mic_block_ms),
                    qwav,
                    out,
                    speech_end_s,
                )
                seq_turns.append(_turn_figures(reply, speech_end_s, None))
                log.warning("bench_turn", scenario=scenario.name, mode="sequential", turn=i, **seq_turns[-1])
            rounds.append(await calibration_round(stubs, scenario, qwav))
            log.warning("bench_calibration", scenario=scenario.name, turn=i, **rounds[-1])
    stand_ins = apply_calibration(turns, rounds)
    summary = _summary(turns)
    if sequential:
        summary["sequential_first_audio_ms"] = _stats([t.get("first_audio_ms") for t in seq_turns])
        s, f = summary["sequential_first_audio_ms"]["median"], summary["first_audio_ms"]["median"]
        summary["ratio_sequential_to_streaming"] = None if not s or not f else round(s / f, 2)
    synth = statistics.median(synths)
    limit = limit_for(scenario, tts_synth_s=synth)
    return {
        "scenario": scenario.as_dict(),
        "answer_tokens": len(tokenize(scenario.answer)),
        "first_clause": clause,
        "first_clause_token_index": index,
        "tts_synth_ms": round(synth * 1000, 1),
        "limit_ms": {  # the median turn's; each turn's overhead is against its own limit
            "end_silence": round(limit.end_silence_s * 1000, 1),
            "asr": round(limit.asr_s * 1000, 1),
            "ttft": round(limit.ttft_s * 1000, 1),
            "first_clause": round(limit.first_clause_s * 1000, 1),
            "tts": round(limit.tts_s * 1000, 1),
            "total": round(limit.total_s * 1000, 1),
        },
        "services_ms": round(limit.services_s * 1000, 1),
        "stand_ins_ms": stand_ins,  # their own handling per hop (median), beyond the configured delays
        "calibration_rounds": rounds,
        "target_ms": round(target_ms(limit, None), 1),
        "turns": turns,
        "sequential_turns": seq_turns,
        "summary": summary,
        "speculation": {str(ms): _speculation_result(ms, limit, spec_turns[ms], summary) for ms in speculate},
    }


def scenario_stubs(scenario: Scenario) -> StubProcess:
    """The stand-ins with ``scenario``'s delays, in a process of their own."""
    return StubProcess(
        asr=FunAsrBehaviour(transcript_override=QUESTION, final_delay_s=scenario.asr_final_delay_s),
        llm=demo_llm_behaviour(
            answers={},
            default_answer=scenario.answer,
            first_token_delay_s=scenario.llm_ttft_s,
            tokens_per_s=scenario.llm_tokens_per_s,
        ),
        tts=PaddleSpeechBehaviour(first_chunk_delay_s=scenario.tts_first_chunk_s, realtime_factor=scenario.tts_rtf),
    )


async def calibration_round(stubs: StubProcess, scenario: Scenario, qwav: Path) -> dict[str, float]:
    """The stand-ins' own handling per hop, ms (``calibration.HOPS``), for the requests the daemon
    makes in ``scenario``: the question's audio, the chat request, the first clause."""
    clause, index = first_clause(scenario.answer)
    limit = limit_for(scenario)
    pcm, _ = await asyncio.to_thread(read_pcm, qwav)
    return await calibrate(
        AsrSettings(url=stubs.urls.asr),
        LlmSettings(url=stubs.urls.llm),
        TtsSettings(url=stubs.urls.tts),
        configured=Configured(asr_s=limit.asr_s, llm_s=limit.ttft_s + limit.first_clause_s, tts_s=limit.tts_s),
        pcm=pcm.astype("<i2").tobytes(),
        question=QUESTION,
        clause=clause,
        token_index=index,
        synth_log=stubs.synth_log,
    )


def _speculation_result(
    speculate_after_ms: int, limit: Limit, turns: list[dict[str, Any]], off: dict[str, Any]
) -> dict[str, Any]:
    """One speculation point's turns beside the same scenario's turns with speculation off."""
    summary = _summary(turns)
    on_median, off_median = summary["first_audio_ms"]["median"], off["first_audio_ms"]["median"]
    return {
        "speculate_after_ms": speculate_after_ms,
        "limit_ms": round(limit.with_speculation_s(speculate_after_ms) * 1000, 1),
        "target_ms": round(target_ms(limit, speculate_after_ms), 1),
        "turns": turns,
        "summary": summary,
        "sooner_by_ms": None if on_median is None or off_median is None else round(off_median - on_median, 1),
    }


def speculation_points(args: argparse.Namespace) -> list[int]:
    """``--speculate-after-ms`` (repeatable, each a comma list), sorted, each once."""
    return sorted({ms for group in args.speculate_after_ms or () for ms in group})


def chosen_scenarios(args: argparse.Namespace) -> list[Scenario]:
    """``--scenario`` (default: DEFAULT_SCENARIOS) with ``--end-silence-ms`` applied."""
    names = args.scenario or list(DEFAULT_SCENARIOS)
    if args.end_silence_ms is None:
        return [SCENARIOS[name] for name in names]
    return [replace(SCENARIOS[name], end_silence_ms=args.end_silence_ms) for name in names]


def speculation_problem(args: argparse.Namespace) -> str | None:
    """Why the speculation points cannot be measured (one at or past the end silence), or None."""
    for scenario in chosen_scenarios(args):
        for ms in speculation_points(args):
            if ms >= scenario.end_silence_ms:
                return f"--speculate-after-ms {ms} is not shorter than the end silence ({scenario.end_silence_ms} ms)"
    return None


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Measure what ``args`` asks for; the WAV files go to ``--keep`` or a temporary folder."""
    problem = speculation_problem(args)
    if problem is not None:
        raise ValueError(problem)
    scenarios = chosen_scenarios(args)
    speculate = speculation_points(args)
    results: dict[str, Any] = {
        "n": args.n,
        "window_s": args.window,
        "block_ms": args.block_ms,
        "end_silence_ms": sorted({s.end_silence_ms for s in scenarios}),
        "speculate_after_ms": speculate,
        "warm_up_turns": 1 if speculate else 0,
        "mic_block_ms": args.mic_block_ms,
        "scenarios": {},
    }
    with contextlib.ExitStack() as stack:
        if args.keep is not None:
            workdir = args.keep
        else:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="moss-bench-")))
        for scenario in scenarios:
            sdir = workdir / scenario.name
            await asyncio.to_thread(sdir.mkdir, parents=True, exist_ok=True)
            results["scenarios"][scenario.name] = await measure_scenario(
                scenario,
                args.n,
                sdir,
                sequential=not args.no_sequential,
                window_s=args.window,
                block_ms=args.block_ms,
                speculate=speculate,
                mic_block_ms=args.mic_block_ms,
            )
    return results


def write_outputs(results: dict[str, Any], args: argparse.Namespace) -> str:
    """Write ``--json`` and ``--png``; return the text to print (the table and where things went)."""
    lines = [render_table(results), "", render_breakdown(results)]
    if results.get("speculate_after_ms"):
        lines += ["", render_speculation(results)]
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
        lines.append(f"raw figures: {args.json}")
    if args.png is not None:
        problem = render_png(results, args.png)
        lines.append(problem or f"chart: {args.png}")
    return "\n".join(lines)


def command(args: argparse.Namespace) -> int:
    """``moss-voice bench latency`` with its parsed options (``bench/cli.py``)."""
    configure_logging("warning", "console")
    problem = speculation_problem(args)
    if problem is not None:
        print(f"moss-voice bench latency: {problem}", file=sys.stderr)
        return 2
    results = asyncio.run(run(args))
    print(write_outputs(results, args))
    return 0
