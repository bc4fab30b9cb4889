"""``moss-voice bench hotword``: each hotword engine on espeak-ng recordings.

Per engine and phrase:
- detections on n recordings of the phrase (five voices, four speeds, 0.5 s of silence around),
  each fed to a freshly reset engine, counted when the right phrase is reported;
- false wakes on at least ``--minutes`` of other speech (many sentences, five voices) and on sox
  noise (white, pink, brown at several levels), fed as one continuous stream; after a wake the
  engine is reset, as the daemon does;
- CPU seconds per second of audio (``time.process_time`` around ``process()``);
- wake word end -> detection in ms: the phrase ends where its recording's speech ends (known,
  since the benchmark made it); the detection is the end of the 20 ms block that reported it.

Everything is fed in 20 ms blocks, as the daemon feeds it, with ``speech=True`` (the local
engines do not use the VAD's verdict; an engine that did would be measured at its busiest). The recordings are cached in
``--corpus`` (default: a folder in the system's temp dir), so a second run starts at once.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import structlog

from daemon.logs import configure_logging
from daemon.tools.bench.hotword_corpus import SPOKEN, Clip, noise_clips, other_speech, phrase_clips
from hardware.errors import HardwareError
from hardware.hotword import Hotword, make_hotword

log = structlog.get_logger(__name__)

RATE = 16000
BLOCK_BYTES = 640
"""20 ms of 16 kHz int16: the daemon's block."""
DEFAULTS = (("microwakeword", ("hey_mycroft",)), ("pocketsphinx", ("hello robot",)))
"""What ``moss-voice bench hotword`` measures with no ``--engine``."""
DEFAULT_PHRASE = {"microwakeword": "hey_mycroft", "pocketsphinx": "hello robot"}


@dataclass
class EngineResult:
    engine: str
    phrases: list[str]
    said: str
    """What the recordings of the phrase say."""
    threshold: float | None
    load_ms: float
    recordings: int = 0
    detected: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    """Wake word end -> detection, per detected recording."""
    missed: list[str] = field(default_factory=list)
    speech_s: float = 0.0
    noise_s: float = 0.0
    false_wakes: list[str] = field(default_factory=list)
    """The recordings (voice: sentence, or noise) that woke the engine."""
    audio_s: float = 0.0
    cpu_s: float = 0.0

    @property
    def cpu_per_s(self) -> float:
        return self.cpu_s / self.audio_s if self.audio_s else 0.0

    def summary(self) -> dict[str, object]:
        lat = sorted(self.latencies_ms)
        hours = (self.speech_s + self.noise_s) / 3600
        return {
            **asdict(self),
            "cpu_s_per_s": self.cpu_per_s,
            "false_wakes_per_hour": len(self.false_wakes) / hours if hours else None,
            "latency_ms": {
                "median": statistics.median(lat) if lat else None,
                "p90": lat[min(len(lat) - 1, int(0.9 * len(lat)))] if lat else None,
                "max": lat[-1] if lat else None,
            },
        }


class _Meter:
    """Feeds audio to an engine in 20 ms blocks and keeps its CPU time."""

    def __init__(self, engine: Hotword, result: EngineResult) -> None:
        self.engine = engine
        self.result = result

    def feed(self, clip: Clip) -> list[tuple[str, float]]:
        """(phrase, seconds into the clip) of each detection; the engine is reset after each."""
        pcm = clip.samples.astype("<i2").tobytes()
        found = []
        for start in range(0, len(pcm), BLOCK_BYTES):
            block = pcm[start : start + BLOCK_BYTES]
            before = time.process_time()
            phrase = self.engine.process(block, True)
            self.result.cpu_s += time.process_time() - before
            if phrase is not None:
                found.append((phrase, (start + len(block)) / 2 / RATE))
                self.engine.reset()
        self.result.audio_s += clip.seconds
        return found


def spoken_text(engine: str, phrase: str) -> str:
    """What a person says to wake ``engine`` listening for ``phrase``."""
    if engine == "microwakeword":
        if phrase in SPOKEN:
            return SPOKEN[phrase]
        if phrase.endswith(".json"):
            return str(json.loads(Path(phrase).read_text(encoding="utf-8")).get("wake_word", phrase)).lower()
    return phrase


def measure(
    engine_name: str,
    phrases: Sequence[str],
    *,
    said: str,
    positives: Sequence[Clip],
    speech: Sequence[Clip],
    noise: Sequence[Clip],
    threshold: float | None = None,
    model_dir: str | None = None,
) -> EngineResult:
    started = time.perf_counter()
    engine = make_hotword(engine_name, phrases, threshold=threshold, model_dir=model_dir)
    load_ms = (time.perf_counter() - started) * 1000
    result = EngineResult(engine_name, list(phrases), said, threshold, load_ms)
    meter = _Meter(engine, result)
    for clip in positives:
        engine.reset()
        found = meter.feed(clip)
        result.recordings += 1
        hits = [at for phrase, at in found if phrase == phrases[0]]
        if hits and clip.phrase_end_s is not None:
            result.detected += 1
            result.latencies_ms.append((hits[0] - clip.phrase_end_s) * 1000)
        else:
            result.missed.append(clip.label)
    engine.reset()
    for clips, kind in ((speech, "speech"), (noise, "noise")):
        for clip in clips:
            if meter.feed(clip):
                result.false_wakes.append(clip.label)
            if kind == "speech":
                result.speech_s += clip.seconds
            else:
                result.noise_s += clip.seconds
    return result


def _ms(value: object) -> str:
    return "-" if not isinstance(value, float | int) else f"{value:.0f}"


def render(results: Sequence[EngineResult]) -> str:
    rows = [
        ("engine", "phrase", "detected", "false wakes", "per hour", "CPU-s per s", "end->detect ms (med/p90/max)"),
    ]
    for r in results:
        s = r.summary()
        lat = s["latency_ms"]
        assert isinstance(lat, dict)
        rows.append(
            (
                r.engine,
                ", ".join(r.phrases) + ("" if r.threshold is None else f" (threshold {r.threshold:g})"),
                f"{r.detected}/{r.recordings}",
                f"{len(r.false_wakes)} in {r.speech_s / 60:.1f} min speech + {r.noise_s / 60:.1f} min noise",
                f"{s['false_wakes_per_hour']:.1f}" if s["false_wakes_per_hour"] is not None else "-",
                f"{r.cpu_per_s:.4f}",
                f"{_ms(lat['median'])} / {_ms(lat['p90'])} / {_ms(lat['max'])}",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in results:
        if r.false_wakes:
            lines.append(f"{r.engine} woke on: " + "; ".join(r.false_wakes))
        if r.missed:
            lines.append(f"{r.engine} missed: " + ", ".join(r.missed))
    return "\n".join(lines)


def plan(args: argparse.Namespace) -> list[tuple[str, tuple[str, ...]]]:
    """(engine, phrases) to measure, from the options."""
    if args.engine is None:
        if args.phrase:
            raise HardwareError("--phrase needs --engine")
        return list(DEFAULTS)
    if args.phrase:
        return [(args.engine, tuple(args.phrase))]
    if args.engine not in DEFAULT_PHRASE:
        raise HardwareError(f"--engine {args.engine} needs --phrase")
    return [(args.engine, (DEFAULT_PHRASE[args.engine],))]


def run(args: argparse.Namespace) -> list[EngineResult]:
    n, minutes, noise_s = (5, 0.5, 3.0) if args.quick else (args.n, args.minutes, args.noise_seconds)
    corpus: Path = args.corpus
    noise = noise_clips(corpus, noise_s)
    results = []
    for engine, phrases in plan(args):
        said = args.say or spoken_text(engine, phrases[0])
        positives = phrase_clips(said, corpus, n)
        speech = other_speech(corpus, minutes, avoid=[spoken_text(engine, p) for p in phrases] + [said])
        result = measure(
            engine,
            phrases,
            said=said,
            positives=positives,
            speech=speech,
            noise=noise,
            threshold=args.threshold,
            model_dir=args.model_dir,
        )
        log.info("hotword_bench_engine", engine=engine, detected=result.detected, false_wakes=len(result.false_wakes))
        results.append(result)
    return results


def command(args: argparse.Namespace) -> int:
    """``moss-voice bench hotword`` with its parsed options (``bench/cli.py``)."""
    configure_logging("warning", "auto", stream=sys.stderr)
    try:
        results = run(args)
    except (HardwareError, subprocess.CalledProcessError) as exc:
        sys.stderr.write(f"bench hotword: {exc}\n")
        return 1
    sys.stdout.write(render(results) + "\n")
    if args.json is not None:
        args.json.write_text(json.dumps([r.summary() for r in results], indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":  # python -m daemon.tools.bench.hotword: the same as moss-voice bench hotword
    from daemon.__main__ import main

    sys.exit(main(["bench", "hotword", *sys.argv[1:]]))
