"""``moss-voice bench idle``: what the daemon costs while it waits for a wake word (issue 4).

Targets: under 0.05 CPU seconds per second of audio, peak RSS under 120 MB, start to ready
under 1.5 s.

* Start to ready: the real daemon (``python -m daemon run --config FILE``) is spawned ``n`` times
  against the loopback stand-ins, idle (``wake.on_start = false``), with a WAV microphone (quiet
  room noise) and a WAV speaker: from just before the spawn to its ``daemon_ready`` line on
  stdout. One start under ``python -X importtime`` runs first (it also warms the file cache) and
  says which imports the start spends its time on.
* Idle CPU and memory: the last daemon, after ready, over ``--window`` seconds, from
  ``/proc/PID/stat`` (utime + stime) and ``/proc/PID/status`` (VmHWM, VmRSS); then SIGTERM,
  which must end it with exit status 0. The WAV microphone's file is loaded whole, which the daemon
  on a sound card does not do: one more start with a 1 s file gives the peak RSS without it.
* The wake-wait pipeline: while idle the daemon reads the microphone through the echo canceller
  and the VAD into the hotword engine (the default, microWakeWord "hey_mycroft"), so its idle
  figure includes them, on quiet room noise. The echo canceller and VAD's cost is also measured
  apart in this process, on room noise and on speech, through the path barge-in runs
  (``watch_for_barge_in``: the microphone feed, the SpeexDSP echo canceller, the Silero VAD, the
  endpointer), on a virtual clock, with ``time.process_time``: what speech costs the VAD more
  than room noise, added to the daemon's idle figure, is the projection for a room where people
  talk all the time.

The daemon process and ``/proc`` are in ``daemon_process.py``, the wake-wait pipeline in
``wake_pipeline.py``; this module puts the figures together and reports them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import statistics
import subprocess
import sys
import tempfile
from contextlib import AsyncExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from daemon.tools.bench.daemon_process import (
    SAMPLE_EVERY_S,
    STOP_TIMEOUT_S,
    BenchError,
    Idle,
    ImportCost,
    Start,
    import_costs,
    one_start,
    write_config,
)
from daemon.tools.bench.wake_pipeline import LoadCost, PipelineCost, load_cost, pipeline_cost
from hardware.wavfile import write_wav

RATE = 16000
TARGET_CPU_S_PER_S = 0.05
TARGET_PEAK_RSS_MB = 120.0
TARGET_READY_MS = 1500.0
ROOM_NOISE_DBFS = -60.0
SPEECH_QUESTIONS = 6
"""Questions spoken with espeak-ng for the "speech" audio (a conversation near the robot)."""


# --------------------------------------------------------------------------- figures


@dataclass(frozen=True)
class IdleReport:
    starts: list[Start]
    idle: Idle
    pipeline: list[PipelineCost]
    load: LoadCost | None
    imports: list[ImportCost] = field(default_factory=list)
    """The top-level imports of one start, slowest first (under ``-X importtime``, which slows them)."""
    imports_total_ms: float = 0.0
    short_input: Start | None = None
    """One more start, with a WAV microphone 1 s long: the long file, loaded whole, is the stand-in's
    memory, not the daemon's (None: a ``--input`` was given)."""

    @property
    def ready_median_ms(self) -> float:
        return statistics.median(s.ready_ms for s in self.starts)

    @property
    def ready_worst_ms(self) -> float:
        return max(s.ready_ms for s in self.starts)

    @property
    def daemon_median_ms(self) -> float | None:
        own = [s.daemon_ms for s in self.starts if s.daemon_ms is not None]
        return statistics.median(own) if own else None

    @property
    def clean_stops(self) -> bool:
        every = [*self.starts, *([self.short_input] if self.short_input else [])]
        return all(s.exit_code == 0 and s.stop_ms <= STOP_TIMEOUT_S * 1000 for s in every)

    def projected(self, audio: str) -> float:
        """The daemon idle (on room noise, its wake watch included) plus what the pipeline costs
        more on ``audio`` than on room noise: CPU s per s."""
        cost = next(p for p in self.pipeline if p.audio == audio)
        quiet = next(p for p in self.pipeline if p.audio == "room noise")
        return self.idle.cpu_s_per_s + cost.cpu_s_per_s - quiet.cpu_s_per_s

    def to_json(self) -> dict[str, Any]:
        raw = asdict(self)
        raw["summary"] = {
            "ready_median_ms": self.ready_median_ms,
            "ready_worst_ms": self.ready_worst_ms,
            "daemon_median_ms": self.daemon_median_ms,
            "idle_cpu_s_per_s": self.idle.cpu_s_per_s,
            "projected_cpu_s_per_s": {p.audio: self.projected(p.audio) for p in self.pipeline},
            "peak_rss_mb": self.idle.peak_rss_mb,
            "short_input_peak_rss_mb": self.short_input.peak_rss_mb if self.short_input else None,
            "clean_stops": self.clean_stops,
            "targets": {
                "cpu_s_per_s": TARGET_CPU_S_PER_S,
                "peak_rss_mb": TARGET_PEAK_RSS_MB,
                "ready_ms": TARGET_READY_MS,
            },
        }
        return raw


# --------------------------------------------------------------------------- audio


def room_noise(seconds: float, *, dbfs: float = ROOM_NOISE_DBFS, seed: int = 4) -> np.ndarray:
    """Quiet room tone: pink (1/f power) noise at ``dbfs`` RMS, int16 at 16 kHz."""
    n = int(seconds * RATE)
    spectrum = np.fft.rfft(np.random.default_rng(seed).standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / RATE)
    spectrum[0] = 0
    spectrum[1:] /= np.sqrt(freqs[1:] / 100.0)
    noise = np.fft.irfft(spectrum, n)
    noise *= 32768 * 10 ** (dbfs / 20) / max(float(np.sqrt(np.mean(noise**2))), 1e-12)
    return np.clip(np.round(noise), -32768, 32767).astype("<i2")


def speech_audio(seconds: float, folder: Path) -> np.ndarray:
    """Questions spoken by espeak-ng, with pauses, over the room tone, repeated to ``seconds``."""
    from daemon.tools.stubs.questions import QUESTIONS, make_question_wav
    from hardware.wavfile import load_wav_16k_mono

    pause = np.zeros(int(0.6 * RATE), dtype="<i2")
    parts: list[np.ndarray] = []
    for i, text in enumerate(QUESTIONS[:SPEECH_QUESTIONS]):
        parts += [load_wav_16k_mono(make_question_wav(text, folder / f"speech{i}.wav")), pause]
    once = np.concatenate(parts)
    speech = np.tile(once, math.ceil(seconds * RATE / len(once)))[: int(seconds * RATE)]
    mixed = speech.astype(np.int32) + room_noise(seconds, seed=5)
    return np.clip(mixed, -32768, 32767).astype("<i2")


# --------------------------------------------------------------------------- the whole benchmark


async def measure(
    n: int,
    window_s: float,
    workdir: Path,
    *,
    pipeline_s: float = 30.0,
    audio_input: str | None = None,
    audio_output: str | None = None,
    importtime: bool = True,
) -> IdleReport:
    """Every figure: ``n`` starts (the last one watched idle for ``window_s``), the pipeline, memory."""
    from daemon.tools.stubs.runner import start_stubs

    if n < 1 or window_s <= 0 or pipeline_s <= 0:
        raise BenchError("n, the window and the pipeline seconds must be positive")
    mic_spec = audio_input or f"wav:{write_wav(workdir / 'room.wav', room_noise(max(60.0, window_s + 30.0)), RATE)}"
    out_spec = audio_output or f"wav:{workdir / 'out.wav'}"
    starts: list[Start] = []
    idle: Idle | None = None
    imports: list[ImportCost] = []
    imports_total = 0.0
    async with AsyncExitStack() as stack:
        asr, llm, tts = await start_stubs(stack)
        config = write_config(
            workdir / "idle.toml", asr=asr.url, llm=llm.url, tts=tts.url, audio_input=mic_spec, audio_output=out_spec
        )
        if importtime:  # first: it also warms the file cache for the timed starts
            imports, imports_total = await import_costs(config, workdir)
        for i in range(n):
            start, watched = await one_start(config, workdir, window_s=window_s if i == n - 1 else None)
            starts.append(start)
            idle = watched or idle
        short_start = None
        if audio_input is None:
            short = f"wav:{write_wav(workdir / 'short.wav', room_noise(1.0), RATE)}"
            config = write_config(
                workdir / "short.toml", asr=asr.url, llm=llm.url, tts=tts.url, audio_input=short, audio_output=out_spec
            )
            short_start, _ = await one_start(config, workdir)
    assert idle is not None
    try:
        speech = speech_audio(pipeline_s, workdir)
    except (OSError, subprocess.SubprocessError) as exc:
        raise BenchError(f"cannot make the speech audio (espeak-ng and sox are needed): {exc}") from exc
    pipeline = [
        await pipeline_cost(room_noise(pipeline_s, seed=6), "room noise"),
        await pipeline_cost(speech, "speech"),
    ]
    return IdleReport(
        starts=starts,
        idle=idle,
        pipeline=pipeline,
        load=await load_cost(),
        imports=imports,
        imports_total_ms=imports_total,
        short_input=short_start,
    )


class _Rows(list[tuple[str, str, str, str]]):
    """Table rows: figure, value, target, met / NOT MET (blank for figures without a target)."""

    def add(self, figure: str, value: str, target: str = "", ok: bool | None = None) -> None:
        self.append((figure, value, target, "" if ok is None else "met" if ok else "NOT MET"))


def report_table(r: IdleReport) -> str:
    """The figures, each with its target and whether it is met."""
    rows = _Rows()
    ready_target, cpu_target = f"< {TARGET_READY_MS:.0f} ms", f"< {TARGET_CPU_S_PER_S}"
    rows.add("start to ready, median", f"{r.ready_median_ms:.0f} ms", ready_target, r.ready_median_ms < TARGET_READY_MS)
    rows.add("start to ready, worst", f"{r.ready_worst_ms:.0f} ms", ready_target, r.ready_worst_ms < TARGET_READY_MS)
    own = r.daemon_median_ms
    rows.add("  of it, the daemon's own (daemon_ready ms)", "-" if own is None else f"{own:.0f} ms")
    rows.add("  CPU used up to ready, median", f"{statistics.median(s.cpu_s for s in r.starts):.2f} s")
    idle_cpu = r.idle.cpu_s_per_s
    rows.add(
        "daemon idle CPU (its wake watch included)", f"{idle_cpu:.4f} s/s", cpu_target, idle_cpu < TARGET_CPU_S_PER_S
    )
    for p in r.pipeline:
        rows.add(f"AEC + VAD measured apart, {p.audio}", f"{p.cpu_s_per_s:.4f} s/s")
        shares = f"speex AEC {p.aec_cpu_s_per_s:.4f}, Silero VAD {p.vad_cpu_s_per_s:.4f}"
        rows.add(f"  of it: {shares}", f"{p.speech_fraction:.0%} speech")
    for p in r.pipeline:
        projected = r.projected(p.audio)
        ok = projected < TARGET_CPU_S_PER_S
        rows.add(f"projected idle CPU, {p.audio}", f"{projected:.4f} s/s", cpu_target, ok)
    peak = r.idle.peak_rss_mb
    rows.add("peak RSS (VmHWM)", f"{peak:.1f} MB", f"< {TARGET_PEAK_RSS_MB:.0f} MB", peak < TARGET_PEAK_RSS_MB)
    rows.add("  RSS at the end of the window (VmRSS)", f"{r.idle.rss_mb:.1f} MB")
    if r.short_input is not None:
        rows.add("  peak RSS with a 1 s WAV input (at ready)", f"{r.short_input.peak_rss_mb:.1f} MB")
    if r.load is not None:
        rows.add("  of it, Silero VAD + speex AEC (loaded at start)", f"{r.load.vad_mb + r.load.aec_mb:.1f} MB")
    every = [*r.starts, *([r.short_input] if r.short_input else [])]
    codes = ",".join("killed" if s.exit_code is None else str(s.exit_code) for s in every)
    rows.add("SIGTERM: exit status", codes, "0", r.clean_stops)
    rows.add("  SIGTERM to exit, worst", f"{max(s.stop_ms for s in every):.0f} ms")
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    head = ("figure", "value", "target", "")
    lines = [
        f"idle cost: {len(r.starts)} start(s), idle window {r.idle.window_s:.1f} s, "
        f"pipeline {r.pipeline[0].seconds:.0f} s of each audio; CPU in seconds per second of audio"
    ]
    for row in (head, *rows):
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    each = " ".join(f"{s.ready_ms:.0f}" for s in r.starts)
    lines.append(f"start to ready, each (ms): {each}")
    lines.append(
        f"idle: {r.idle.cpu_s:.2f} CPU s over {r.idle.window_s:.1f} s, worst {SAMPLE_EVERY_S:.0f} s "
        f"{r.idle.worst_interval_cpu_s_per_s:.3f} s/s, {r.idle.threads} threads"
    )
    if r.load is not None:
        lines.append(
            f"memory of a fresh interpreter with hardware.vad and hardware.aec imported: {r.load.base_mb:.1f} MB; "
            f"the Silero VAD adds {r.load.vad_mb:.1f} MB, the speex AEC {r.load.aec_mb:.1f} MB"
        )
    if r.imports:
        top = ", ".join(f"{c.module} {c.cumulative_ms:.0f}" for c in r.imports)
        lines.append(f"imports of one start (ms, under -X importtime): all {r.imports_total_ms:.0f}; slowest: {top}")
    return "\n".join(lines)


def command(args: argparse.Namespace) -> int:
    """``moss-voice bench idle`` with its parsed options (``bench/cli.py``)."""
    from daemon.logs import configure_logging

    configure_logging("warning", "console", stream=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="moss-bench-idle-") as tmp:
        try:
            result = asyncio.run(
                measure(
                    args.n,
                    args.window,
                    Path(tmp),
                    pipeline_s=args.pipeline_seconds,
                    audio_input=args.input,
                    audio_output=args.output,
                    importtime=not args.no_importtime,
                )
            )
        except BenchError as exc:
            print(f"moss-voice bench idle: {exc}", file=sys.stderr)
            return 1
    print(report_table(result))
    if args.json is not None:
        args.json.write_text(json.dumps(result.to_json(), indent=2, ensure_ascii=False) + "\n")
        print(f"raw figures: {args.json}")
    return 0 if result.clean_stops else 1
