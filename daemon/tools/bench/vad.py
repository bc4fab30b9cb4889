"""Measure the VAD engines: how much of each test sound they call speech, and their CPU cost.

    python -m daemon.tools.bench.vad                 # generated sounds (espeak-ng, numpy), both engines
    python -m daemon.tools.bench.vad a.wav b.wav     # your own recordings (any rate/channels)

The generated sounds are English and Mandarin speech from espeak-ng (``-v cmn-latn-pinyin``:
Debian's ``-v cmn`` reads hanzi as English), digital silence, quiet room tone, white noise, and
a steady "motor": 50 Hz hum with harmonics over low-passed noise, like a robot's drive. A good
VAD marks the speech files mostly speech and the rest (almost) never.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import structlog

from daemon.logs import configure_logging
from hardware.errors import HardwareError
from hardware.vad import ENGINES, make_vad
from hardware.wavfile import load_wav_16k_mono, write_wav

log = structlog.get_logger()

RATE = 16000
SPEECH_EN = "Hello robot. What is the weather like in Shanghai today? Please bring me a cup of tea."
SPEECH_ZH = "你好，机器人。今天上海的天气怎么样？请给我倒一杯茶。"


@dataclass(frozen=True)
class VadResult:
    sound: str
    engine: str
    frames: int
    speech_fraction: float
    """Fraction of frames the engine marked as speech."""
    cpu_us_per_frame: float
    """Process CPU time per ``is_speech`` call, microseconds."""
    frame_ms: float


# --------------------------------------------------------------------------- test sounds


def write_wav16(path: Path, samples: np.ndarray, rate: int = RATE) -> Path:
    """Write float samples in [-1, 1] as a 16-bit mono WAV."""
    pcm = np.clip(np.rint(np.asarray(samples, dtype=np.float64) * 32767), -32768, 32767).astype("<i2")
    return write_wav(path, pcm, rate)


def synth_speech(path: Path, text: str, voice: str = "en-us") -> Path:
    """espeak-ng ``text`` into a 16 kHz 16-bit mono WAV at ``path`` (resampled by sox)."""
    for tool in ("espeak-ng", "sox"):
        if shutil.which(tool) is None:
            raise HardwareError(f"{tool} is not installed (apt-get install espeak-ng sox)")
    raw = path.with_suffix(".espeak.wav")
    subprocess.run(["espeak-ng", "-v", voice, "-w", str(raw), text], check=True, capture_output=True, timeout=60)
    convert = ["sox", str(raw), "-r", str(RATE), "-c", "1", "-b", "16", str(path)]
    subprocess.run(convert, check=True, capture_output=True, timeout=60)
    raw.unlink()
    return path


def white_noise(seconds: float, rms: float = 0.1, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(rng.normal(0.0, rms, int(seconds * RATE)), -1.0, 1.0)


def motor_noise(seconds: float, seed: int = 2) -> np.ndarray:
    """Steady 50 Hz hum with harmonics, plus noise low-passed at about 300 Hz."""
    n = int(seconds * RATE)
    t = np.arange(n) / RATE
    partials = ((50, 0.08, 0.0), (100, 0.05, 1.0), (150, 0.03, 2.0), (300, 0.015, 0.5))  # Hz, amplitude, phase
    hum = sum(a * np.sin(2 * np.pi * f * t + p) for f, a, p in partials)
    rng = np.random.default_rng(seed)
    noise = rng.normal(0.0, 1.0, n)
    kernel = np.ones(27) / 27  # moving average: a crude low-pass near 300 Hz at 16 kHz
    rumble = np.convolve(noise, kernel, mode="same") * 0.15
    return np.clip(hum + rumble, -1.0, 1.0)


def make_test_sounds(folder: Path, seconds: float = 5.0) -> dict[str, Path]:
    """The standard sound set, as 16 kHz mono WAV files in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    en = synth_speech(folder / "speech_en.wav", SPEECH_EN, "en-us")
    speech = load_wav_16k_mono(en).astype(np.float64) / 32768
    over_motor = speech + motor_noise(len(speech) / RATE)[: len(speech)]  # about 1 dB SNR
    return {
        "speech_en": en,
        "speech_zh": synth_speech(folder / "speech_zh.wav", SPEECH_ZH, "cmn-latn-pinyin"),
        "speech_en+motor": write_wav16(folder / "speech_en_motor.wav", over_motor),
        "silence": write_wav16(folder / "silence.wav", np.zeros(int(seconds * RATE))),
        "room_tone": write_wav16(folder / "room_tone.wav", white_noise(seconds, rms=0.001, seed=3)),
        "white_noise": write_wav16(folder / "white_noise.wav", white_noise(seconds)),
        "motor": write_wav16(folder / "motor.wav", motor_noise(seconds)),
    }


# --------------------------------------------------------------------------- measuring


def run_vad(engine: str, pcm: bytes, **opts: object) -> tuple[list[bool], float, float]:
    """Per-frame verdicts of a fresh ``engine`` on ``pcm``, CPU µs per frame, and frame ms."""
    vad = make_vad(engine, **opts)
    step = vad.frame_bytes
    frames = [pcm[i : i + step] for i in range(0, len(pcm) - step + 1, step)]
    start = time.process_time_ns()
    verdicts = [vad.is_speech(f) for f in frames]
    cpu_ns = time.process_time_ns() - start
    return verdicts, cpu_ns / 1000 / max(1, len(frames)), step / 2 / RATE * 1000


def measure(wavs: Mapping[str, str | Path], engines: Sequence[str] = ENGINES) -> list[VadResult]:
    """Run every engine over every WAV (converted to 16 kHz mono like the WAV microphone)."""
    results = []
    for sound, path in wavs.items():
        pcm = load_wav_16k_mono(path).tobytes()
        for engine in engines:
            verdicts, us, frame_ms = run_vad(engine, pcm)
            fraction = sum(verdicts) / len(verdicts) if verdicts else 0.0
            results.append(VadResult(sound, engine, len(verdicts), fraction, us, frame_ms))
            log.debug("vad_measured", sound=sound, engine=engine, speech_fraction=round(fraction, 3), us=round(us, 1))
    return results


def format_table(results: Sequence[VadResult]) -> str:
    """One row per sound, a speech-fraction and a CPU column per engine."""
    engines = list(dict.fromkeys(r.engine for r in results))
    sounds = list(dict.fromkeys(r.sound for r in results))
    by_key = {(r.sound, r.engine): r for r in results}
    header = ["sound"] + [f"{e} speech" for e in engines] + [f"{e} µs/frame" for e in engines]
    rows = [header]
    for s in sounds:
        row = [s]
        row += [f"{by_key[(s, e)].speech_fraction:.0%}" if (s, e) in by_key else "-" for e in engines]
        row += [f"{by_key[(s, e)].cpu_us_per_frame:.0f}" if (s, e) in by_key else "-" for e in engines]
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        for r in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    frame_ms = {e: next(r.frame_ms for r in results if r.engine == e) for e in engines}
    lines.append("frames: " + ", ".join(f"{e} {ms:.0f} ms" for e, ms in frame_ms.items()))
    return "\n".join(lines)


def command(args: argparse.Namespace) -> int:
    """``moss-voice bench vad`` with its parsed options (``bench/cli.py``)."""
    # A command-line report: keep the log quiet so the table stands alone on stdout.
    configure_logging("warning", "auto", stream=sys.stderr)
    try:
        if args.wavs:
            table = format_table(measure({p.stem: p for p in args.wavs}))
        else:
            with tempfile.TemporaryDirectory(prefix="moss-vad-") as tmp:
                table = format_table(measure(make_test_sounds(Path(tmp))))
    except (HardwareError, subprocess.CalledProcessError) as exc:
        sys.stderr.write(f"vad_eval: {exc}\n")
        return 1
    sys.stdout.write(table + "\n")
    return 0


if __name__ == "__main__":  # python -m daemon.tools.bench.vad: the same as moss-voice bench vad
    from daemon.__main__ import main

    sys.exit(main(["bench", "vad", *sys.argv[1:]]))
