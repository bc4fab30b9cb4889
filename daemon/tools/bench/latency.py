"""``moss-voice bench latency``: what the user feels, measured at the audio output.

For each scenario (service latencies injected into the stand-ins), ``n`` fresh daemon turns with
a WAV microphone and a WAV speaker: the latency is read off the two timelines, from the last loud
sample of the question in the input to the first reply sample in the output. The limit the
services set (end silence + ASR + time to first token + first clause + TTS first chunk) is
subtracted: the rest is moss-voice's overhead. The same turns through a sequential controller
(whole transcript, whole answer, whole TTS, then play) give the ratio streaming saves. The
stand-ins run in a process of their own (``stub_process``), as the services run on another machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from daemon.app import App
from daemon.config import (
    AecSettings,
    AsrSettings,
    AudioSettings,
    EarconSettings,
    LlmSettings,
    Settings,
    TtsSettings,
    VadSettings,
)
from daemon.logs import configure_logging
from daemon.tools.bench.report import render_breakdown, render_png, render_table
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
)
from daemon.tools.bench.sequential import run_sequential
from daemon.tools.bench.stub_process import StubProcess, StubUrls
from daemon.tools.bench.timeline import Reply, last_loud_s, read_pcm, reply_after
from daemon.tools.stubs.funasr_behaviour import FunAsrBehaviour
from daemon.tools.stubs.paddlespeech import PaddleSpeechBehaviour
from daemon.tools.stubs.questions import make_question_wav
from daemon.tools.stubs.runner import demo_llm_behaviour
from daemon.tools.stubs.tokens import tokenize
from hardware.wav_mic import WavMicrophone
from hardware.wav_speaker import WavSpeaker
from hardware.wavfile import write_wav

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
    mic_block_ms: int = MIC_BLOCK_MS,
) -> Settings:
    return Settings(
        asr=AsrSettings(url=urls.asr),
        llm=LlmSettings(url=urls.llm),
        tts=TtsSettings(url=urls.tts),
        audio=AudioSettings(input=f"wav:{qwav}", output=f"wav:{out}", block_ms=block_ms, mic_block_ms=mic_block_ms),
        vad=VadSettings(end_silence_ms=scenario.end_silence_ms),
        aec=AecSettings(engine="off"),  # WAV devices: no echo path
        earcons=EarconSettings(thinking="off"),  # the output's first sound after the question is the answer's
    )


def _reply(mic: WavMicrophone, speaker: WavSpeaker, out: Path, speech_end_s: float) -> Reply | None:
    assert mic.opened_at is not None and speaker.opened_at is not None
    shift = speaker.opened_at - mic.opened_at
    return reply_after(speaker.played_audio_spans, speaker.sample_rate, out, shift_s=shift, after_s=speech_end_s)


async def streaming_turn(
    settings: Settings, out: Path, speech_end_s: float, window_s: float
) -> tuple[Reply | None, dict[str, float | None]]:
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
    return _reply(mic, speaker, out, speech_end_s), _daemon_times(app, mic, speech_end_s)


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


async def measure_scenario(
    scenario: Scenario,
    n: int,
    workdir: Path,
    *,
    sequential: bool = True,
    window_s: float = WINDOW_S,
    block_ms: int = BLOCK_MS,
    mic_block_ms: int = MIC_BLOCK_MS,
) -> dict[str, Any]:
    clause, index = first_clause(scenario.answer)
    limits: list[Limit] = []
    synths: list[float] = []
    turns: list[dict[str, Any]] = []
    seq_turns: list[dict[str, Any]] = []
    async with StubProcess(
        asr=FunAsrBehaviour(transcript_override=QUESTION, final_delay_s=scenario.asr_final_delay_s),
        llm=demo_llm_behaviour(
            answers={},
            default_answer=scenario.answer,
            first_token_delay_s=scenario.llm_ttft_s,
            tokens_per_s=scenario.llm_tokens_per_s,
        ),
        tts=PaddleSpeechBehaviour(first_chunk_delay_s=scenario.tts_first_chunk_s, realtime_factor=scenario.tts_rtf),
    ) as stubs:
        for i in range(n):
            lead_in = lead_in_s(i, n, block_ms)
            qwav, speech_end_s = await asyncio.to_thread(make_input, workdir, lead_in, f"question-{i}")
            out = workdir / f"{scenario.name}-stream-{i}.wav"
            synthesized = len(await stubs.synth_log())
            reply, daemon_times = await streaming_turn(
                _settings(stubs.urls, scenario, qwav, out, block_ms, mic_block_ms), out, speech_end_s, window_s
            )
            # The stand-in's own time for the first sentence of this answer (espeak-ng), from its log.
            synth_log = await stubs.synth_log()
            synth = synth_log[synthesized][1] if len(synth_log) > synthesized else 0.0
            synths.append(synth)
            limits.append(limit_for(scenario, tts_synth_s=synth))
            turns.append(
                {
                    **_turn_figures(reply, speech_end_s, limits[-1].total_s),
                    "limit_ms": round(limits[-1].total_s * 1000, 1),
                    "daemon": daemon_times,
                }
            )
            log.warning("bench_turn", scenario=scenario.name, mode="streaming", turn=i, **turns[-1])
            if sequential:
                out = workdir / f"{scenario.name}-seq-{i}.wav"
                reply = await sequential_turn(
                    _settings(stubs.urls, scenario, qwav, out, block_ms, mic_block_ms), qwav, out, speech_end_s
                )
                seq_turns.append(_turn_figures(reply, speech_end_s, None))
                log.warning("bench_turn", scenario=scenario.name, mode="sequential", turn=i, **seq_turns[-1])
    summary: dict[str, Any] = {
        key: _stats([t.get(key) for t in turns])
        for key in ("first_audio_ms", "first_sound_ms", "overhead_ms", "longest_gap_ms")
    }
    summary["daemon"] = {
        key: _stats([t["daemon"].get(key) for t in turns if isinstance(t.get("daemon"), dict)])
        for key in (
            "vad_decided_ms",
            "asr_final_ms",
            "llm_first_token_ms",
            "tts_first_audio_ms",
            "first_audio_ms",
            *(name for name, _, _ in STEPS),
        )
    }
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
        "turns": turns,
        "sequential_turns": seq_turns,
        "summary": summary,
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Measure what ``args`` asks for; the WAV files go to ``--keep`` or a temporary folder."""
    names = args.scenario or list(DEFAULT_SCENARIOS)
    results: dict[str, Any] = {
        "n": args.n,
        "window_s": args.window,
        "block_ms": args.block_ms,
        "mic_block_ms": args.mic_block_ms,
        "scenarios": {},
    }
    with contextlib.ExitStack() as stack:
        if args.keep is not None:
            workdir = args.keep
        else:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="moss-bench-")))
        for name in names:
            sdir = workdir / name
            await asyncio.to_thread(sdir.mkdir, parents=True, exist_ok=True)
            results["scenarios"][name] = await measure_scenario(
                SCENARIOS[name],
                args.n,
                sdir,
                sequential=not args.no_sequential,
                window_s=args.window,
                block_ms=args.block_ms,
                mic_block_ms=args.mic_block_ms,
            )
    return results


def write_outputs(results: dict[str, Any], args: argparse.Namespace) -> str:
    """Write ``--json`` and ``--png``; return the text to print (the table and where things went)."""
    lines = [render_table(results), "", render_breakdown(results)]
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
    results = asyncio.run(run(args))
    print(write_outputs(results, args))
    return 0
