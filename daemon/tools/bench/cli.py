"""``moss-voice bench ...``: the benchmarks' and evaluations' options, each declared once, here.

This module stays light (argparse and constants): the CLI builds every command's parser for any
command, ``moss-voice config check`` included. Each ``_run_*`` imports its benchmark (numpy, the
App, the stand-ins' servers) only when that benchmark runs.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from daemon.tools.bench.scenarios import BLOCK_MS, DEFAULT_SCENARIOS, MIC_BLOCK_MS, SCENARIOS, WINDOW_S

RATE = 16000
HOTWORD_CORPUS = Path(tempfile.gettempdir()) / "moss-voice-hotword-corpus"
"""Where ``bench hotword`` caches its espeak-ng and sox recordings."""


def register(subparsers: Any) -> None:
    bench = subparsers.add_parser("bench", help="measurements")
    sub = bench.add_subparsers(dest="bench_command", required=True, metavar="WHAT")
    _register_vad(sub)
    _register_aec(sub)
    _register_idle(sub)
    _register_latency(sub)
    _register_barge_in(sub)
    _register_speculation(sub)
    _register_hotword(sub)
    wake = sub.add_parser("wake", help="wake word end -> listening, button press -> listening earcon")
    wake.add_argument("-n", type=_at_least_1, default=20, help="recordings and presses (default 20)")
    wake.add_argument("--json", type=Path, metavar="PATH", help="write the raw figures here")
    wake.set_defaults(func=_run_wake)
    asr_wake = sub.add_parser("asr-wake", help="the asr wake engine against the FunASR stand-in, in real time")
    asr_wake.add_argument("--flavour", action="append", help="repeatable; default: every flavour with partials")
    asr_wake.set_defaults(func=_run_asr_wake)
    _register_faults(sub)
    _register_soak(sub)
    _register_asr_end(sub)


def _register_vad(sub: Any) -> None:
    vad = sub.add_parser("vad", help="both VADs on speech, silence, noise and motor hum")
    vad.add_argument("wavs", nargs="*", type=Path, help="WAV files to measure instead of the generated set")
    vad.set_defaults(func=_run_vad)


def _register_aec(sub: Any) -> None:
    aec = sub.add_parser("aec", help="echo cancellation: echo removed, double talk, VAD false triggers")
    aec.add_argument("--seconds", type=_at_least_20, default=60.0, help="seconds of robot speech fed back (default 60)")
    aec.add_argument("--frame-ms", type=int, default=10)
    aec.add_argument("--filter-ms", type=int, default=256)
    aec.add_argument("--echo-delay-ms", type=float, default=40.0)
    aec.add_argument("--echo-gain", type=float, default=0.5)
    aec.add_argument("--reference-delay-ms", type=float, default=0.0, help="EchoReference.delay_ms (default 0)")
    aec.set_defaults(func=_run_aec)


def _register_idle(sub: Any) -> None:
    idle = sub.add_parser("idle", help="cost while waiting for a wake word: start to ready, idle CPU, peak RSS")
    idle.add_argument("-n", type=int, default=5, help="daemon starts to time (default 5)")
    idle.add_argument("--window", type=float, default=20.0, metavar="SECONDS", help="idle window (default 20)")
    idle.add_argument("--pipeline-seconds", type=float, default=30.0, metavar="SECONDS", help="default 30")
    idle.add_argument("--input", metavar="SPEC", help="daemon microphone (default: a room-noise WAV)")
    idle.add_argument("--output", metavar="SPEC", help="daemon speaker (default: a WAV file)")
    idle.add_argument("--no-importtime", action="store_true", help="skip the start under -X importtime")
    idle.add_argument("--json", type=Path, metavar="PATH", help="write the raw figures here")
    idle.set_defaults(func=_run_idle)


def _register_latency(sub: Any) -> None:
    latency = sub.add_parser(
        "latency",
        help="first-audio latency at the output, against the stand-ins, with injected service delays",
        description="``moss-voice bench latency``: what the user feels, measured at the audio output.",
    )
    latency.add_argument("-n", type=_at_least_1, default=5, help="turns per scenario (default 5)")
    latency.add_argument(
        "--scenario",
        action="append",
        choices=sorted(SCENARIOS),
        help=f"repeatable; default: {', '.join(DEFAULT_SCENARIOS)}",
    )
    latency.add_argument("--json", type=Path, metavar="PATH", help="write the raw figures here")
    latency.add_argument("--png", type=Path, metavar="PATH", help="latency breakdown chart (needs matplotlib)")
    latency.add_argument("--no-sequential", action="store_true", help="skip the sequential comparison")
    latency.add_argument("--window", type=_positive, default=WINDOW_S, help="seconds of each answer to play (gaps)")
    latency.add_argument(
        "--block-ms",
        type=_block_ms,
        default=BLOCK_MS,
        help=f"the devices' period, audio.block_ms (default {BLOCK_MS}): the output device adds up to one",
    )
    latency.add_argument(
        "--speculate-after-ms",
        type=_ms_list,
        action="append",
        metavar="MS[,MS...]",
        help="also measure with vad.speculate_after_ms = each of these, side by side with speculation off",
    )
    latency.add_argument(
        "--end-silence-ms", type=_at_least_1, metavar="MS", help="vad.end_silence_ms (default: the daemon's, 700)"
    )
    latency.add_argument(
        "--mic-block-ms",
        type=int,
        choices=(5, 10, 20, 30, 40, 50, 60, 80, 100),
        default=MIC_BLOCK_MS,
        help=f"the microphone's period, audio.mic_block_ms (default {MIC_BLOCK_MS}): the VAD decides up to one late",
    )
    latency.add_argument("--keep", type=Path, metavar="DIR", help="keep the WAV files here")
    latency.set_defaults(func=_run_latency)


def _register_speculation(sub: Any) -> None:
    spec = sub.add_parser(
        "speculation",
        help="speculative turn end on questions with a pause: LLM requests wasted, wrong answers, cut-offs",
        description="``moss-voice bench speculation``: each stand-in question said with a pause in the middle.",
    )
    spec.add_argument("-n", type=_at_least_1, default=1, help="turns per question and pause (default 1)")
    spec.add_argument(
        "--pause-ms", type=_ms_list, action="append", metavar="MS[,MS...]", help="default 150,300,450,600"
    )
    spec.add_argument("--question", action="append", help="repeatable; default: every question of the grammar")
    spec.add_argument("--speculate-after-ms", type=_at_least_1, default=250, help="vad.speculate_after_ms (250)")
    spec.add_argument("--end-silence-ms", type=_at_least_1, default=700, help="vad.end_silence_ms (700)")
    spec.add_argument(
        "--end-silence-short-ms",
        type=_at_least_1,
        default=300,
        help="vad.end_silence_short_ms of the cut-off pass (default 300)",
    )
    spec.add_argument("--no-cut-offs", action="store_true", help="skip the pass with vad.end_silence_short_ms")
    spec.add_argument("--json", type=Path, metavar="PATH", help="write the raw figures here")
    spec.add_argument("--keep", type=Path, metavar="DIR", help="keep the WAV files here")
    spec.set_defaults(func=_run_speculation)


def _run_speculation(args: argparse.Namespace) -> int:
    from daemon.tools.bench import speculation

    return speculation.command(args)


def _register_barge_in(sub: Any) -> None:
    barge = sub.add_parser("barge-in", help="reaction to a user cutting in, over n interruptions")
    barge.add_argument("-n", type=_at_least_1, default=20, help="interruptions (default 20)")
    barge.add_argument("--mode", choices=("pause", "cancel"), default="pause")
    barge.add_argument("--tts-protocol", choices=("http", "websocket"), default="http")
    barge.add_argument(
        "--first-answer",
        type=int,
        default=10,
        metavar="N",
        help="then N fresh starts cut into about 1 s into their first answer, old rule and new (default 10; 0: skip)",
    )
    barge.add_argument("--json", type=Path, metavar="PATH", help="also write the raw figures here")
    barge.set_defaults(func=_run_barge_in)


def _register_hotword(sub: Any) -> None:
    hotword = sub.add_parser(
        "hotword",
        help="hotword engines: detections, false wakes on other speech and noise, CPU, wake word end -> detection",
    )
    hotword.add_argument(
        "--engine", help="microwakeword, pocketsphinx or sherpa-onnx (default: microwakeword and pocketsphinx)"
    )
    hotword.add_argument("--phrase", action="append", help="repeatable; the recordings say the first one")
    hotword.add_argument("--say", metavar="TEXT", help="what the recordings of the phrase say (default: the phrase)")
    hotword.add_argument("--model-dir", metavar="DIR")
    hotword.add_argument("--threshold", type=_positive)
    hotword.add_argument("-n", type=_at_least_1, default=20, help="recordings of the phrase (default 20)")
    hotword.add_argument("--minutes", type=_positive, default=10.0, help="minutes of other speech (default 10)")
    hotword.add_argument(
        "--noise-seconds", type=_positive, default=36.0, help="seconds of each of the 5 noises (default 36)"
    )
    hotword.add_argument("--quick", action="store_true", help="5 recordings, 30 s of speech, 15 s of noise")
    hotword.add_argument(
        "--corpus", type=Path, default=HOTWORD_CORPUS, metavar="DIR", help="where the recordings are cached"
    )
    hotword.add_argument("--json", type=Path, metavar="PATH", help="write the raw figures here")
    hotword.set_defaults(func=_run_hotword)


def _register_faults(sub: Any) -> None:
    faults = sub.add_parser(
        "faults", help="the fault matrix: each service times each fault, the faulty turn and the next one"
    )
    faults.add_argument("--cell", action="append", metavar="SERVICE:FAULT", help="repeatable, e.g. llm:cut")
    faults.add_argument(
        "--extra", action="store_true", help="also asr:mute, llm:ping_only, tts:endless, the TTS websocket's tts:ws-*"
    )
    faults.add_argument("--keep", type=Path, metavar="DIR", help="keep the WAV files here")
    faults.add_argument("--json", type=Path, metavar="PATH", help="write the raw figures here")
    faults.set_defaults(func=_run_faults)


def _register_asr_end(sub: Any) -> None:
    asr_end = sub.add_parser(
        "asr-end", help="end of speech -> LLM request against a classic FunASR server silent after the end marker"
    )
    asr_end.add_argument("-n", type=_at_least_1, default=5, help="turns (default 5)")
    asr_end.add_argument("--end-silence-ms", type=_at_least_1, default=700, help="vad.end_silence_ms (default 700)")
    asr_end.add_argument("--final-timeout-s", type=_positive, default=2.0, help="asr.final_timeout_s (default 2)")
    asr_end.add_argument("--json", type=Path, metavar="PATH", help="write the raw figures here")
    asr_end.set_defaults(func=_run_asr_end)


def _run_asr_end(args: argparse.Namespace) -> int:
    from daemon.tools.bench import asr_end

    return asr_end.command(args)


def _run_faults(args: argparse.Namespace) -> int:
    from daemon.tools.bench import faults

    return faults.command(args)


def _register_soak(sub: Any) -> None:
    soak = sub.add_parser(
        "soak", help="N turns back to back with random faults: crashes, lost turn ends, leaked tasks, fds, memory"
    )
    soak.add_argument("--turns", type=_at_least_1, default=1000, help="turns after the warm-up (default 1000)")
    soak.add_argument("--seed", type=int, default=1, help="seeds the faults and how turns start (default 1)")
    soak.add_argument(
        "--fault-rate", type=_fraction, default=0.3, help="share of turns with a misbehaving service (default 0.3)"
    )
    soak.add_argument(
        "--sample-every", type=_at_least_1, default=50, metavar="TURNS", help="RSS/fds/tasks (default 50)"
    )
    soak.add_argument("--json", type=Path, metavar="PATH", help="write the raw figures here")
    soak.set_defaults(func=_run_soak)


def _run_soak(args: argparse.Namespace) -> int:
    from daemon.tools.bench import soak

    return soak.command(args)


def _run_vad(args: argparse.Namespace) -> int:
    from daemon.tools.bench import vad

    return vad.command(args)


def _run_aec(args: argparse.Namespace) -> int:
    from daemon.tools.bench import aec

    return aec.command(args)


def _run_idle(args: argparse.Namespace) -> int:
    from daemon.tools.bench import idle

    return idle.command(args)


def _run_latency(args: argparse.Namespace) -> int:
    from daemon.tools.bench import latency

    return latency.command(args)


def _run_barge_in(args: argparse.Namespace) -> int:
    from daemon.tools.bench import barge_in

    return barge_in.command(args)


def _run_asr_wake(args: argparse.Namespace) -> int:
    from daemon.tools.bench import asr_wake

    return asr_wake.main([f"--flavour={f}" for f in args.flavour or ()])


def _run_wake(args: argparse.Namespace) -> int:
    from daemon.tools.bench import wake

    return wake.command(args)


def _run_hotword(args: argparse.Namespace) -> int:
    from daemon.tools.bench import hotword

    return hotword.command(args)


def _checked(kind: type[float] | type[int], ok: Callable[[float], bool], problem: str) -> Callable[[str], Any]:
    """An argparse type: ``kind`` of the text, refused with ``problem`` unless ``ok`` of it."""

    def parse(text: str) -> Any:
        value = kind(text)
        if not ok(value):
            raise argparse.ArgumentTypeError(problem)
        return value

    parse.__name__ = kind.__name__  # argparse names it in "invalid int value: 'x'"
    return parse


_at_least_1 = _checked(int, lambda v: v >= 1, "must be at least 1")
_at_least_20 = _checked(float, lambda v: v >= 20, "must be at least 20")
_fraction = _checked(float, lambda v: 0 <= v <= 1, "must be between 0 and 1")
_positive = _checked(float, lambda v: v > 0, "must be positive")
_block_ms = _checked(int, lambda v: v > 0 and RATE * v % 1000 == 0, "must be a positive whole number of 16 kHz samples")


def _ms_list(text: str) -> list[int]:
    """An argparse type: ``250`` or ``200,250,300``, each a positive whole number of ms."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected whole milliseconds separated by commas, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive milliseconds, got {text!r}")
    return values
