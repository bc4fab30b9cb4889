"""``moss-voice bench asr-end``: the end of speech to the LLM request, against a FunASR server
that stays silent after the end marker.

The stand-in plays a classic Python server from before its autumn 2024 fix with its own VAD on
(``server_vad_end_ms``): the segment's offline result comes during the trailing silence, and the
end marker gets no answer at all. ``n`` fresh daemon turns (the latency benchmark's question, WAV
devices, the stand-ins in a process of their own); for each, on the daemon's own clock, the end of
speech decided (the end marker leaves at once) to the final transcript and to the LLM request.
Before the covered-segment rule (docs/protocols.md "FunASR: when is the utterance final") this
was ``asr.final_timeout_s`` (2 s) and more.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

import structlog

from daemon.config import Settings, VadSettings
from daemon.logs import configure_logging
from daemon.tools.bench.latency import make_input, streaming_turn
from daemon.tools.bench.scenarios import QUESTION
from daemon.tools.bench.stub_process import StubProcess, StubUrls
from daemon.tools.bench.wav_daemon import wav_daemon_settings
from daemon.tools.stubs.funasr_behaviour import FunAsrBehaviour
from daemon.tools.stubs.paddlespeech import PaddleSpeechBehaviour
from daemon.tools.stubs.runner import demo_llm_behaviour

log = structlog.get_logger()

SERVER_VAD_END_MS = 300
"""The stand-in's VAD closes the segment after this much silence: before our end silence."""
TARGET_MS = 100.0
"""Issue 12: end marker -> LLM request under 100 ms."""


def _settings(urls: StubUrls, qwav: Path, out: Path, end_silence_ms: int, final_timeout_s: float) -> Settings:
    # no speculation: the end marker leaves at the end of speech, the moment this measures from
    vad = VadSettings(end_silence_ms=end_silence_ms, speculate_after_ms=0)
    asr = {"flavour": "python-classic", "final_timeout_s": final_timeout_s}
    return wav_daemon_settings(urls, qwav, out, vad=vad, asr=asr)


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 1) if values else None


async def run(args: argparse.Namespace) -> dict[str, Any]:
    turns: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="moss-bench-asr-end-")))
        qwav, speech_end_s = await asyncio.to_thread(make_input, workdir)
        async with StubProcess(
            asr=FunAsrBehaviour(
                flavour="python-classic", transcript_override=QUESTION, server_vad_end_ms=SERVER_VAD_END_MS
            ),
            llm=demo_llm_behaviour(answers={}, default_answer="It is sunny.", first_token_delay_s=0.05),
            tts=PaddleSpeechBehaviour(),
        ) as stubs:
            for i in range(args.n):
                out = workdir / f"turn-{i}.wav"
                settings = _settings(stubs.urls, qwav, out, args.end_silence_ms, args.final_timeout_s)
                _, times = await streaming_turn(settings, out, speech_end_s, 0.5)
                asr_ms, to_llm_ms = times.get("step_asr_ms"), times.get("step_to_llm_ms")
                to_request = None if asr_ms is None or to_llm_ms is None else round(asr_ms + to_llm_ms, 1)
                turn = {"end_to_final_ms": asr_ms, "end_to_llm_request_ms": to_request}
                turns.append(turn)
                log.warning("bench_turn", turn=i, **turn)
    finals = [t["end_to_final_ms"] for t in turns if t["end_to_final_ms"] is not None]
    requests = [t["end_to_llm_request_ms"] for t in turns if t["end_to_llm_request_ms"] is not None]
    return {
        "n": args.n,
        "end_silence_ms": args.end_silence_ms,
        "final_timeout_s": args.final_timeout_s,
        "server_vad_end_ms": SERVER_VAD_END_MS,
        "turns": turns,
        "median_end_to_final_ms": _median(finals),
        "median_end_to_llm_request_ms": _median(requests),
        "max_end_to_llm_request_ms": max(requests) if requests else None,
    }


def render(results: dict[str, Any]) -> str:
    median = results["median_end_to_llm_request_ms"]
    verdict = "no turn reached the LLM" if median is None else ("met" if median < TARGET_MS else "NOT met")
    lines = [
        f"silent classic FunASR (server VAD closes the segment after {results['server_vad_end_ms']} ms; "
        f"asr.final_timeout_s = {results['final_timeout_s']:g}), {results['n']} turns:",
        f"  end of speech decided -> final transcript: median {results['median_end_to_final_ms']} ms",
        f"  end of speech decided -> LLM request: median {median} ms, worst {results['max_end_to_llm_request_ms']} ms"
        f" (target < {TARGET_MS:g}: {verdict})",
        "  per turn: " + ", ".join(str(t["end_to_llm_request_ms"]) for t in results["turns"]),
    ]
    return "\n".join(lines)


def command(args: argparse.Namespace) -> int:
    """``moss-voice bench asr-end`` with its parsed options (``bench/cli.py``)."""
    configure_logging("warning", "console")
    results = asyncio.run(run(args))
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    print(render(results))
    return 0
