"""Measure echo cancellation for barge-in: echo removed, the user kept, and VAD false triggers.

    python -m daemon.tools.bench.aec                   # 60 s of the robot's own speech as echo
    python -m daemon.tools.bench.aec --seconds 120 --filter-ms 128

Everything is offline, on the simulated room of ``hardware/room.py`` (``RoomAcoustics``: the
speaker's output delayed 40 ms and scaled x0.5, two weaker reflections, noise at rms 10). The far
end is espeak-ng speech, sentences with short pauses, repeated to the length asked for.

* ERLE (echo return loss enhancement): mic energy over output energy on echo only, after the
  first 3 s (the filter starts from nothing), and over the last 10 s (converged).
* Double talk: Mandarin near-end speech over the echo, as loud as the direct echo, starting 10 s
  in (the filter has adapted).
  The correlation of the output with the clean near end says whether the user survives; the
  fraction of near-end frames Silero still calls speech says whether barge-in would still work.
* VAD false triggers, the figure that matters: the robot's own speech as echo through AEC, then
  Silero (``make_vad("silero")``); every run of speech frames lasting >= 150 ms counts, with and
  without AEC. Counted over the whole run and after the first 10 s.
* Reference alignment: ERLE when the reference (``EchoReference.delay_ms``) leads or lags the echo.
  The other figures use ``--reference-delay-ms`` (default 0: the far end as it was played, leading
  the echo by 40 ms).
* CPU per second of audio (process time; one core).
* Barge-in from a cold start (``aec_cold.py``): false triggers on the robot's own voice over the
  whole run from a fresh canceller, the first seconds included, and a user cutting into the
  first speech, with the deaf warm-up of old and with the double-talk gate, side by side.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import structlog

from daemon.logs import configure_logging
from daemon.tools.bench.aec_cold import format_cold_start, measure_cold_start
from daemon.tools.bench.vad import synth_speech
from hardware.aec import NullEchoCanceller, SpeexEchoCanceller
from hardware.errors import HardwareError
from hardware.room import RoomAcoustics
from hardware.vad import make_vad
from hardware.wavfile import load_wav_16k_mono

log = structlog.get_logger()

RATE = 16000
ROBOT_SENTENCES = (
    "Hello, I am the service robot. How can I help you today?",
    "The weather in Shanghai is sunny, with a high of twenty six degrees.",
    "Please follow me. The meeting room is on the second floor, next to the elevator.",
    "I can bring you a cup of tea or coffee. Which one would you like?",
    "Sorry, I did not understand that. Could you say it again, please?",
    "Your package has arrived at the front desk. Shall I bring it to your office?",
)
USER_SENTENCE = "ni hao, ji qi ren. jin tian tian qi zen me yang? qing gei wo dao yi bei cha."
PAUSE_S = 0.3
USER_GAIN = 0.5
"""The user at the microphone as loud as the direct echo (the robot's speaker is closer to it)."""
MIN_TRIGGER_MS = 150.0
SETTLE_S = 3.0
LATE_START_S = 10.0
REFERENCE_DELAYS_MS = (0.0, 20.0, 35.0, 40.0, 45.0, 60.0)


@dataclass(frozen=True)
class VadTriggers:
    total: int
    after_start: int
    """Triggers starting after the first ``LATE_START_S``."""
    speech_fraction: float


@dataclass(frozen=True)
class AecReport:
    seconds: float
    frame_ms: int
    filter_ms: int
    reference_delay_ms: float
    acoustics: RoomAcoustics
    erle_db: float
    erle_converged_db: float
    double_talk_corr_raw: float
    double_talk_corr_aec: float
    near_vad_raw: float
    near_vad_aec: float
    triggers_raw: VadTriggers
    triggers_aec: VadTriggers
    cpu_ms_per_s: float
    vad_cpu_ms_per_s: float
    alignment_erle_db: tuple[tuple[float, float], ...]
    """``(reference delay_ms, ERLE dB)``: the far end delayed by that much, against the room's echo delay."""


# --------------------------------------------------------------------------- signals


def robot_speech(folder: Path, seconds: float) -> np.ndarray:
    """``seconds`` of espeak-ng robot speech, sentences with pauses, as int16 at 16 kHz."""
    pause = np.zeros(int(PAUSE_S * RATE), dtype="<i2")
    parts = []
    for i, text in enumerate(ROBOT_SENTENCES):
        parts += [load_wav_16k_mono(synth_speech(folder / f"robot{i}.wav", text, "en-us")), pause]
    once = np.concatenate(parts)
    reps = int(np.ceil(seconds * RATE / len(once)))
    return np.tile(once, reps)[: int(seconds * RATE)]


def user_speech(folder: Path) -> np.ndarray:
    return load_wav_16k_mono(synth_speech(folder / "user.wav", USER_SENTENCE, "cmn-latn-pinyin"))


# --------------------------------------------------------------------------- measuring


def cancel(aec: SpeexEchoCanceller | NullEchoCanceller, mic: np.ndarray, far: np.ndarray) -> tuple[np.ndarray, float]:
    """Run ``aec`` over whole signals frame by frame; the output and the CPU seconds it took."""
    fb = aec.frame_bytes
    near_b, far_b = mic.astype("<i2").tobytes(), far.astype("<i2").tobytes()
    usable = len(near_b) - len(near_b) % fb
    start = time.process_time()
    out = b"".join(aec.process(near_b[i : i + fb], far_b[i : i + fb]) for i in range(0, usable, fb))
    cpu = time.process_time() - start
    return np.frombuffer(out, "<i2"), cpu


def erle_db(mic: np.ndarray, out: np.ndarray) -> float:
    m = float(np.sum(mic[: len(out)].astype(np.float64) ** 2))
    o = float(np.sum(out.astype(np.float64) ** 2))
    return 10 * np.log10(max(m, 1.0) / max(o, 1.0))


def correlation(x: np.ndarray, y: np.ndarray) -> float:
    a, b = x.astype(np.float64), y.astype(np.float64)
    return float(np.dot(a, b) / max(np.sqrt(np.dot(a, a) * np.dot(b, b)), 1e-9))


def vad_verdicts(pcm: np.ndarray) -> tuple[list[bool], float, float]:
    """Silero's per-frame verdicts, its frame length in s and its CPU seconds."""
    vad = make_vad("silero")
    data = pcm.astype("<i2").tobytes()
    fb = vad.frame_bytes
    start = time.process_time()
    verdicts = [vad.is_speech(data[i : i + fb]) for i in range(0, len(data) - fb + 1, fb)]
    return verdicts, fb / 2 / RATE, time.process_time() - start


def count_triggers(verdicts: Sequence[bool], frame_s: float, *, min_ms: float = MIN_TRIGGER_MS) -> list[float]:
    """Start times (s) of every run of speech frames lasting at least ``min_ms``."""
    starts, run = [], 0
    for i, speech in enumerate([*verdicts, False]):
        if speech:
            run += 1
            continue
        if run and run * frame_s * 1000 >= min_ms:
            starts.append((i - run) * frame_s)
        run = 0
    return starts


def triggers(pcm: np.ndarray) -> tuple[VadTriggers, float]:
    verdicts, frame_s, cpu = vad_verdicts(pcm)
    starts = count_triggers(verdicts, frame_s)
    fraction = sum(verdicts) / len(verdicts) if verdicts else 0.0
    late = sum(1 for s in starts if s >= LATE_START_S)
    log.debug("vad_triggers", starts=[round(s, 2) for s in starts])
    return VadTriggers(len(starts), late, fraction), cpu


def delayed(x: np.ndarray, samples: int) -> np.ndarray:
    """``x`` delayed by ``samples`` (>= 0), same length, silence first."""
    out = np.zeros_like(x)
    out[samples:] = x[: len(x) - samples]
    return out


def measure(
    far: np.ndarray,
    near: np.ndarray,
    *,
    acoustics: RoomAcoustics | None = None,
    frame_ms: int = 10,
    filter_ms: int = 256,
    reference_delay_ms: float = 0.0,
) -> AecReport:
    """All the figures, for far-end speech ``far`` and near-end speech ``near`` (int16, 16 kHz).

    The echo canceller's reference is ``far`` delayed by ``reference_delay_ms`` (as
    ``EchoReference(delay_ms=...)`` would give it), except in the alignment sweep.
    """
    room = acoustics or RoomAcoustics()
    reference = delayed(far, round(reference_delay_ms * RATE / 1000))
    seconds = len(far) / RATE

    def speex() -> SpeexEchoCanceller:
        return SpeexEchoCanceller(frame_ms=frame_ms, filter_ms=filter_ms)

    # Echo only, for the whole run: ERLE, CPU, and the VAD with and without AEC.
    mic = room.render(far, seed=1)
    out, cpu = cancel(speex(), mic, reference)
    settle = int(SETTLE_S * RATE)
    erle = erle_db(mic[settle : len(out)], out[settle:])
    tail = max(settle, len(out) - 10 * RATE)
    erle_converged = erle_db(mic[tail : len(out)], out[tail:])
    raw_triggers, vad_cpu = triggers(mic)
    aec_triggers, _ = triggers(out)

    # Double talk: the user starts LATE_START_S into a stretch of echo.
    dt_len = int(LATE_START_S * RATE) + len(near) + RATE
    far_dt = far[:dt_len]
    ref_dt = reference[:dt_len]
    start = int(LATE_START_S * RATE)
    near_track = np.zeros(len(far_dt))
    near_track[start : start + len(near)] = USER_GAIN * near[: max(0, len(far_dt) - start)]
    mic_dt = room.render(far_dt, near_track, seed=2)
    out_dt, _ = cancel(speex(), mic_dt, ref_dt)
    seg = slice(start, min(start + len(near), len(out_dt)))
    corr_raw = correlation(mic_dt[seg], near_track[seg])
    corr_aec = correlation(out_dt[seg], near_track[seg])
    near_vad_raw = _speech_fraction(mic_dt[seg])
    near_vad_aec = _speech_fraction(out_dt[seg])

    # Alignment: the same 20 s of echo, the reference delayed as EchoReference(delay_ms=...) would.
    align_len = min(len(far), 20 * RATE)
    mic_al = mic[:align_len]
    alignment = []
    for delay_ms in REFERENCE_DELAYS_MS:
        ref = delayed(far[:align_len], round(delay_ms * RATE / 1000))
        out_al, _ = cancel(speex(), mic_al, ref)
        alignment.append((delay_ms, erle_db(mic_al[settle : len(out_al)], out_al[settle:])))

    return AecReport(
        seconds=seconds,
        frame_ms=frame_ms,
        filter_ms=filter_ms,
        reference_delay_ms=reference_delay_ms,
        acoustics=room,
        erle_db=erle,
        erle_converged_db=erle_converged,
        double_talk_corr_raw=corr_raw,
        double_talk_corr_aec=corr_aec,
        near_vad_raw=near_vad_raw,
        near_vad_aec=near_vad_aec,
        triggers_raw=raw_triggers,
        triggers_aec=aec_triggers,
        cpu_ms_per_s=cpu * 1000 / seconds,
        vad_cpu_ms_per_s=vad_cpu * 1000 / seconds,
        alignment_erle_db=tuple(alignment),
    )


def _speech_fraction(pcm: np.ndarray) -> float:
    verdicts, _, _ = vad_verdicts(pcm)
    return sum(verdicts) / len(verdicts) if verdicts else 0.0


# --------------------------------------------------------------------------- report


def format_report(r: AecReport) -> str:
    a = r.acoustics
    refl = ", ".join(f"+{d:g} ms x{g:g}" for d, g in a.reflections) or "none"
    rows = [
        ("", "no AEC", "speex AEC"),
        ("ERLE, echo only, after the first 3 s", "0.0 dB", f"{r.erle_db:.1f} dB"),
        ("ERLE, echo only, last 10 s (converged)", "0.0 dB", f"{r.erle_converged_db:.1f} dB"),
        (
            "double talk: correlation with the user",
            f"{r.double_talk_corr_raw:.2f}",
            f"{r.double_talk_corr_aec:.2f}",
        ),
        ("double talk: user frames Silero calls speech", f"{r.near_vad_raw:.0%}", f"{r.near_vad_aec:.0%}"),
        (
            f"VAD false triggers (>= {MIN_TRIGGER_MS:g} ms) in {r.seconds:g} s of echo",
            str(r.triggers_raw.total),
            str(r.triggers_aec.total),
        ),
        (
            f"  of which after the first {LATE_START_S:g} s",
            str(r.triggers_raw.after_start),
            str(r.triggers_aec.after_start),
        ),
        (
            "echo frames Silero calls speech",
            f"{r.triggers_raw.speech_fraction:.0%}",
            f"{r.triggers_aec.speech_fraction:.0%}",
        ),
        ("CPU per second of audio", "0 ms", f"{r.cpu_ms_per_s:.1f} ms"),
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [
        f"room: echo {a.echo_delay_ms:g} ms x{a.echo_gain:g}, reflections {refl}, noise rms {a.noise_rms:g}; "
        f"speex: {r.frame_ms} ms frames, {r.filter_ms} ms filter; reference delay_ms {r.reference_delay_ms:g}",
        "",
    ]
    for i, row in enumerate(rows):
        lines.append(
            "  ".join(c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(row, widths, strict=True)))
        )
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append(f"(Silero VAD itself: {r.vad_cpu_ms_per_s:.1f} ms CPU per second of audio)")
    lines.append("")
    lines.append(f"reference delay_ms (the echo arrives after {a.echo_delay_ms:g} ms) -> ERLE after 3 s of 20 s:")
    lines.append("  " + "   ".join(f"{d:g} ms: {db:.1f} dB" for d, db in r.alignment_erle_db))
    return "\n".join(lines)


def command(args: argparse.Namespace) -> int:
    """``moss-voice bench aec`` with its parsed options (``bench/cli.py``)."""
    configure_logging("warning", "auto", stream=sys.stderr)
    acoustics = RoomAcoustics(echo_delay_ms=args.echo_delay_ms, echo_gain=args.echo_gain)
    try:
        with tempfile.TemporaryDirectory(prefix="moss-aec-") as tmp:
            far = robot_speech(Path(tmp), args.seconds)
            near = user_speech(Path(tmp))
        report = measure(
            far,
            near,
            acoustics=acoustics,
            frame_ms=args.frame_ms,
            filter_ms=args.filter_ms,
            reference_delay_ms=args.reference_delay_ms,
        )
        cold = measure_cold_start(far, near, acoustics=acoustics)
    except (HardwareError, subprocess.CalledProcessError, ValueError) as exc:
        sys.stderr.write(f"aec_eval: {exc}\n")
        return 1
    sys.stdout.write(format_report(report) + "\n\n" + format_cold_start(cold) + "\n")
    return 0


if __name__ == "__main__":  # python -m daemon.tools.bench.aec: the same as moss-voice bench aec
    from daemon.__main__ import main

    sys.exit(main(["bench", "aec", *sys.argv[1:]]))
